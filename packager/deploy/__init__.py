"""Deploy bundles to devices: one release protocol (``releases.py``) over small transports.

    from packager.deploy import deploy, rollback, status, run, make_transport
    t = make_transport("ssh", host="pi@raspberrypi.local")        # or make_transport("adb", serial=None)
    result = deploy("dist/mnist-rpi", t, keep=3, smoke=True)       # -> DeployResult
    rollback(t, result.remote_dir)                                  # -> RollbackResult
    status(t, result.remote_dir)                                    # -> StatusResult
    run(t, result.remote_dir, input="x.npz", output="y.npz")        # -> RunResult

Transports are registered in ``TRANSPORTS`` under the target profile's ``deploy`` value, so adding
a deploy method = adding a module with a ``Transport`` subclass and one entry here. Errors are
``EdgepackError`` subclasses (``DeployError`` for anything on the device); nothing here prints.
"""
from __future__ import annotations

from ..errors import UsageError
from .adb import AdbTransport
from .base import Completed, Transport
from .releases import (Bundle, DeployResult, ReleaseInfo, RollbackResult, RunResult, SelfTest, StatusResult,
                       default_remote_dir, deploy, deploy_method, load_bundle, rollback, run, status)
from .ssh import SshTransport

#: deploy method (target profile ``deploy = "..."``) -> Transport class
TRANSPORTS: dict[str, type[Transport]] = {
    "ssh": SshTransport,
    "adb": AdbTransport,
}


def make_transport(method: str, **options) -> Transport:
    """Build the transport for ``method`` with its own options (ssh: host, ssh_config, timeout;
    adb: serial, timeout)."""
    try:
        cls = TRANSPORTS[method]
    except KeyError:
        raise UsageError(f"unknown deploy method {method!r}", hint="choose from: " + ", ".join(sorted(TRANSPORTS))) from None
    return cls(**options)


__all__ = [
    "TRANSPORTS", "make_transport", "Transport", "Completed", "SshTransport", "AdbTransport",
    "deploy", "rollback", "status", "run", "load_bundle", "default_remote_dir", "deploy_method",
    "Bundle", "DeployResult", "RollbackResult", "StatusResult", "ReleaseInfo", "RunResult", "SelfTest",
]
