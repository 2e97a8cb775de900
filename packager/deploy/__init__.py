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

from . import ondevice  # noqa: F401 - registers the gates deploy(smoke=..., verify=...) runs (releases.GATES)
from .adb import AdbTransport
from .base import Completed, Transport
from .local import LocalTransport
from .releases import (Bundle, DeployResult, ReleaseInfo, RollbackResult, RunResult, SelfTest, StatusResult,
                       default_remote_dir, deploy, deploy_method, load_bundle, rollback, run, status)
from .ssh import SshTransport
from .transports import TRANSPORTS, make_transport, transport_class

__all__ = [
    "TRANSPORTS", "make_transport", "transport_class", "Transport", "Completed", "SshTransport", "AdbTransport",
    "LocalTransport",
    "deploy", "rollback", "status", "run", "load_bundle", "default_remote_dir", "deploy_method",
    "Bundle", "DeployResult", "RollbackResult", "StatusResult", "ReleaseInfo", "RunResult", "SelfTest",
]
