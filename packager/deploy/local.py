"""Deploy to a directory on this machine (``deploy = "local"``, ``edgepack deploy BUNDLE --local DIR``): a mounted SD
card, an NFS export, a test. The "device" is this machine: scripts run with ``/bin/sh -c`` (cwd ``/``), files are
copied, and the release protocol (staging, sha256 of every file, the atomic switch of ``current``, smoke run with
switch-back, prune) is the very one ssh and adb devices get, so it can be tested without sshd or adb.

``--local DIR`` is the deploy directory itself (absolute after ``~`` and the current directory are applied);
``~`` in remote paths is ``$HOME``.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import IO, Sequence

from ..errors import DeployError, UsageError
from .base import Completed, Transport, run_process


class LocalTransport(Transport):
    """This machine as the device (``deploy = "local"``): ``directory`` is the deploy directory (``--local DIR``),
    or None when every call names its own remote directory."""
    method = "local"
    tool = "sh"
    tool_package = "dash"
    tool_hint = "a POSIX /bin/sh (Debian/Ubuntu: apt-get install dash)"
    address = "--local DIR"
    remote_dir = "~/edgepack/{name}"
    device_tools_hint = "install coreutils (sha256sum) on this machine"
    supports_install = True
    home_expr = '"$HOME"'
    required_tools = ("sha256sum",)
    label = "this machine"
    cli_option = "--local"
    cli_metavar = "DIR"
    cli_verify_help = "The same with the release deployed in DIR on this machine (`edgepack deploy --local DIR`)."
    cli_help = ("Deploy into DIR on this machine (a mounted SD card, a shared folder, a test): the same "
                "releases, checksums and switch as on a device, run by this machine's sh.")
    cli_example = "--local /media/$USER/rootfs/home/pi/edgepack/NAME"

    def __init__(self, directory: str | os.PathLike | None = None, *, timeout: float = 60.0, shell: str = "/bin/sh"):
        super().__init__(timeout)
        if directory is not None:
            text = os.fspath(directory)
            if not text:
                raise UsageError("--local needs a directory", hint="e.g. --local /mnt/sdcard/edgepack/NAME")
            self.directory = os.path.abspath(os.path.expanduser(text))
            self.path_expr(self.directory)   # control characters, '..': one line, before anything runs
        self.shell = shell

    @classmethod
    def from_cli(cls, value: str | None, *, timeout: float, **_) -> "LocalTransport":
        """``--local DIR``: DIR (relative to the current directory, ``~`` expanded) is the deploy directory."""
        if not value:
            raise UsageError("--local needs a directory", hint="e.g. --local /mnt/sdcard/edgepack/NAME")
        return cls(value, timeout=timeout)

    def describe(self) -> str:
        """``local:DIR``, or ``local`` without a directory of its own."""
        return f"local:{self.directory}" if self.directory else "local"

    def connect(self) -> None:
        """Nothing to reach; checks that the shell exists."""
        if not os.access(self.shell, os.X_OK):
            raise DeployError(f"{self.shell} is not an executable shell on this machine", hint=self.tool_hint)

    def sh(self, script: str, *, timeout: float | None = None, stdin: IO[bytes] | None = None) -> Completed:
        """``/bin/sh -c script`` in ``/`` with this process's environment; its real exit status."""
        return run_process([self.shell, "-c", script], timeout=timeout or self.timeout, what=f"sh on {self.describe()}",
                           stdin=stdin, cwd="/", missing_hint=self.tool_hint)

    def upload(self, files: Sequence[tuple[Path, str]], dest_dir: str, *, timeout: float | None = None,
               prepare: str | None = None) -> int:
        """``prepare`` first, then a plain copy of each file to ``dest_dir/<relpath>`` (.py and executables 0755,
        the rest 0644); returns the bytes copied."""
        if prepare:
            res = self.sh(prepare, timeout=timeout)
            if res.rc != 0:
                raise DeployError(f"preparing {dest_dir} on {self.describe()} failed: {res.last_error_line()}")
        sent = 0
        for local, rel in files:
            target = Path(dest_dir) / rel
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(local, target)
                os.chmod(target, 0o755 if os.access(local, os.X_OK) or rel.endswith(".py") else 0o644)
            except OSError as exc:
                raise DeployError(f"copying {rel} to {target.parent} failed: {exc.strerror or exc}",
                                  hint="is the directory writable and its disk not full?") from None
            size = target.stat().st_size
            sent += size
            self.bytes_sent += size
        return sent

    def download(self, remote_path: str, local_path: Path, *, timeout: float | None = None) -> int:
        """Copy ``remote_path`` to ``NAME.part``, renamed to ``local_path``; returns its size."""
        local_path = Path(local_path)
        tmp = local_path.with_name(local_path.name + ".part")
        try:
            shutil.copyfile(remote_path, tmp)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise DeployError(f"cannot read {remote_path} on {self.describe()}: {exc.strerror or exc}") from None
        os.replace(tmp, local_path)
        return local_path.stat().st_size
