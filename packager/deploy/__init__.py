"""Deploy bundles to devices: one release protocol (``releases.py``) over small transports.

    from packager.deploy import deploy, rollback, status, run, make_transport
    t = make_transport("ssh", host="pi@raspberrypi.local")        # or make_transport("adb", serial=None)
    #   or make_transport("local", directory="/mnt/sd/edgepack/mnist") (a directory on this machine)
    result = deploy("dist/mnist-rpi", t, keep=3, smoke=True)       # -> DeployResult
    rollback(t, result.remote_dir)                                  # -> RollbackResult
    status(t, result.remote_dir)                                    # -> StatusResult
    run(t, result.remote_dir, input="x.npz", output="y.npz")        # -> RunResult
    # the verdict on the device: packager.api.verify_on_device(BUNDLE, t, reference=..., data=...)

Transports are registered in ``transports.TRANSPORTS`` under the target profile's ``deploy`` value,
so adding a deploy method = adding a module with a ``Transport`` subclass and one entry there. Errors are
``EdgepackError`` subclasses (``DeployError`` for anything on the device); nothing here prints.
"""
from __future__ import annotations

import importlib

# Each name is imported from its module when first used (PEP 562): the CLI registers its device options from
# TRANSPORTS without importing numpy (ondevice) or the release protocol, so an unchanged `edgepack build` stays
# a fraction of a second (BENCHMARKS.md, issue 23).
_WHERE = {
    "TRANSPORTS": "transports", "make_transport": "transports", "transport_class": "transports",
    "Transport": "base", "Completed": "base", "SshTransport": "ssh", "AdbTransport": "adb", "LocalTransport": "local",
    **{name: "releases" for name in (
        "Bundle", "DeployResult", "ReleaseInfo", "RollbackResult", "RunResult", "SelfTest", "StatusResult",
        "default_remote_dir", "deploy", "deploy_method", "load_bundle", "rollback", "run", "status")},
}


def __getattr__(name):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if module == "releases":
        importlib.import_module(".ondevice", __name__)  # registers the gates deploy(smoke=..., verify=...) runs
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_WHERE))


__all__ = [
    "TRANSPORTS", "make_transport", "transport_class", "Transport", "Completed", "SshTransport", "AdbTransport",
    "LocalTransport",
    "deploy", "rollback", "status", "run", "load_bundle", "default_remote_dir", "deploy_method",
    "Bundle", "DeployResult", "RollbackResult", "StatusResult", "ReleaseInfo", "RunResult", "SelfTest",
]
