"""The transports by deploy method: a target profile's ``deploy = "..."`` names one. Adding a way to
reach devices = a :class:`~packager.deploy.base.Transport` subclass (its class attributes say what
edgepack needs to know: host tool, CLI address, default directory, --install support) and one entry
in :data:`TRANSPORTS`."""
from __future__ import annotations

from ..errors import UsageError
from .adb import AdbTransport
from .base import Transport
from .local import LocalTransport
from .ssh import SshTransport

#: deploy method (target profile ``deploy = "..."``) -> Transport class; the CLI's device options
#: (``--host``, ``--serial``, ``--local``) are built from these classes in this order
TRANSPORTS: dict[str, type[Transport]] = {cls.method: cls for cls in (SshTransport, AdbTransport, LocalTransport)}


def transport_class(method: str) -> type[Transport]:
    """The Transport class of deploy method ``method``. Raises UsageError naming the known methods."""
    try:
        return TRANSPORTS[method]
    except KeyError:
        raise UsageError(f"unknown deploy method {method!r}", hint="choose from: " + ", ".join(sorted(TRANSPORTS))) from None


def make_transport(method: str, **options) -> Transport:
    """Build the transport for ``method`` with its own options (ssh: host, ssh_config, timeout;
    adb: serial, timeout; local: directory, timeout)."""
    return transport_class(method)(**options)
