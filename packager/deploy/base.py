"""The transport interface the release protocol runs over, and the one way edgepack starts a
host process (always with a timeout, always killed with its whole process group on expiry).

A transport runs POSIX-sh scripts on a device and moves files both ways. It knows nothing about
releases; ``releases.py`` knows nothing about ssh or adb. Adding a deploy method = adding a module
with a ``Transport`` subclass and one line in ``packager.deploy.TRANSPORTS``.
"""
from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Sequence

from ..contain import lifecycle
from ..errors import DeployError, EnvironmentProblem, UsageError

DEFAULT_TIMEOUT = 60.0

q = shlex.quote


def transfer_timeout(nbytes: int, base: float) -> float:
    """Seconds allowed to move ``nbytes``: the command timeout plus 1 s per 256 KiB (a slow link)."""
    return base + nbytes / (256 * 1024)


@dataclass(frozen=True)
class Completed:
    """What a remote script did: its exit status and both streams (bytes)."""

    rc: int
    stdout: bytes
    stderr: bytes

    @property
    def out(self) -> str:
        """stdout as text (UTF-8, undecodable bytes replaced, CRLF as LF)."""
        return self.stdout.decode("utf-8", "replace").replace("\r\n", "\n")

    @property
    def err(self) -> str:
        """stderr as text (UTF-8, undecodable bytes replaced, CRLF as LF)."""
        return self.stderr.decode("utf-8", "replace").replace("\r\n", "\n")

    def last_error_line(self) -> str:
        """The last non-blank line of stderr, else of stdout, else ``exit status RC``: the line to quote in an error."""
        for text in (self.err, self.out):
            lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
            if lines:
                return lines[-1]
        return f"exit status {self.rc}"


def _unsafe_path_char(c: str) -> bool:
    """Control characters (C0, DEL, C1 incl. U+0085) and Unicode line/paragraph/record separators:
    shells, ``sh -c`` readers and line-based protocols split or drop them."""
    import unicodedata
    return unicodedata.category(c) in ("Cc", "Zl", "Zp") or c in "\x1c\x1d\x1e\x1f\x85\u2028\u2029"


def run_process(argv: Sequence[str], *, timeout: float, what: str, stdin: bytes | IO[bytes] | None = None,
                env: dict | None = None, hint: str | None = None, missing_hint: str | None = None,
                cwd: str | None = None) -> Completed:
    """Run a host program (in ``cwd``); on timeout kill its whole process group and raise DeployError (``hint``);
    a program that is not installed is an EnvironmentProblem (``missing_hint``: how to install it)."""
    data = stdin if isinstance(stdin, (bytes, bytearray)) else None
    stdin_arg = subprocess.PIPE if data is not None else (stdin if stdin is not None else subprocess.DEVNULL)
    try:
        proc = subprocess.Popen(list(argv), stdin=stdin_arg, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=env, cwd=cwd, start_new_session=True, **lifecycle.popen_kwargs())
    except FileNotFoundError:
        raise EnvironmentProblem(f"{argv[0]} not found on this host (needed for {what})",
                                 hint=missing_hint) from None
    except OSError as exc:
        raise EnvironmentProblem(f"cannot start {argv[0]}: {exc.strerror or exc}") from None
    try:
        out, err = proc.communicate(data, timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        try:
            proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover - a child keeps the pipes open
            pass
        raise DeployError(f"{what} timed out after {timeout:.0f} s; the device may be unreachable or slow",
                          hint=hint or "check the connection, or raise --timeout") from None
    except BaseException:
        _kill_group(proc)
        proc.wait()
        raise
    return Completed(proc.returncode, out or b"", err or b"")


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        try:
            proc.kill()
        except ProcessLookupError:
            pass


def tar_upload(transport: "Transport", files: Sequence[tuple[Path, str]], dest_dir: str, *, timeout: float | None = None,
               prepare: str | None = None) -> int:
    """Upload for transports whose ``sh`` takes stdin: one USTAR stream into ``tar -xf -`` in ``dest_dir``, ``prepare``
    first in the same call; returns the stream's bytes. DeployError when the device's tar fails."""
    import tarfile
    import tempfile
    if not files:
        if prepare:
            res = transport.sh(prepare, timeout=timeout)
            if res.rc != 0:
                raise DeployError(f"preparing {dest_dir} on {transport.describe()} failed: {res.last_error_line()}")
        return 0
    with tempfile.TemporaryFile() as tmp:
        with tarfile.open(fileobj=tmp, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for local, rel in files:
                info = tar.gettarinfo(str(local), arcname=rel)
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                info.mode = 0o755 if os.access(local, os.X_OK) or rel.endswith(".py") else 0o644
                with open(local, "rb") as fh:
                    tar.addfile(info, fh)
            end = tar.offset
        # the two zero blocks end the archive; tarfile's padding to a 10 KiB record is not needed
        size = end + 2 * tarfile.BLOCKSIZE
        tmp.truncate(size)
        tmp.seek(0)
        unpack = f"mkdir -p {q(dest_dir)} && cd {q(dest_dir)} && tar -xf -"
        res = transport.sh(f"{prepare}\n{unpack}" if prepare else unpack, stdin=tmp,
                           timeout=transfer_timeout(size, timeout or transport.timeout))
    transport.bytes_sent += size
    if res.rc != 0:
        raise DeployError(f"upload to {transport.describe()} failed: {res.last_error_line()}",
                          hint="the transfer was cut off or the device's disk is full; run the deploy again")
    return size


class Transport(ABC):
    """A device reached somehow. Scripts are POSIX sh; every value in them is ``shlex.quote``d.

    Everything edgepack says or decides about one way of reaching devices is on its class, so a new
    transport is one subclass plus one entry in :data:`packager.deploy.transports.TRANSPORTS`."""

    method: str = ""                 # target profile ``deploy = "..."``
    tool: str = ""                   # the host program it drives (checked by `edgepack doctor`)
    tool_hint: str = ""              # how to install that program
    tool_package: str = ""           # its Debian package
    address: str = ""                # how the CLI names a device, e.g. "--host USER@HOST" [default: option metavar]
    remote_dir: str = ""             # default bundle directory on the device ({name} = bundle name)
    device_tools_hint: str = ""      # when the device lacks sha256sum/tar
    supports_install: bool = False   # `deploy --install` (a venv from requirements.txt on the device)
    directory: str | None = None     # the deploy directory the address itself names (``--local DIR``), else None

    # How the CLI addresses a device of this transport: `deploy/run/rollback/status/verify` get one option
    # per registered transport, built from these (packager.cli.deploy.device_options).
    label: str = ""                  # in messages: "--host (SSH)"
    cli_option: str = ""             # e.g. "--host"; empty: not reachable from the CLI
    cli_short: str = ""              # e.g. "-s"
    cli_metavar: str = ""            # e.g. "USER@HOST[:PORT]"
    cli_help: str = ""               # the option's help text (deploy, run, rollback, status)
    cli_verify_help: str = ""        # its help in `verify` (the verdict computed on the device) [default: generic]
    cli_example: str = ""            # a full example, for hints: "--host pi@raspberrypi.local"
    cli_value_required: bool = True  # False: the option may be left out when the bundle's target picks this method
    cli_common: tuple[str, ...] = ()  # shared CLI options this transport takes besides timeout (e.g. "ssh_config")

    def __init_subclass__(cls, **kwargs):
        """A subclass that does not set ``address`` is named by its CLI option and metavar (``--copy DIR``), not by
        its base class's (a LocalTransport subclass is not ``--local DIR``); one with its own option does not inherit
        the base's ``cli_verify_help`` either."""
        super().__init_subclass__(**kwargs)
        if "address" not in cls.__dict__ and cls.cli_option:
            cls.address = f"{cls.cli_option} {cls.cli_metavar}".strip()
        if "cli_option" in cls.__dict__ and "cli_verify_help" not in cls.__dict__:
            cls.cli_verify_help = ""       # the base's words name the base's option: the generic sentence names this one

    @classmethod
    def from_cli(cls, value: str | None, *, timeout: float, **common) -> "Transport":
        """The transport the CLI's ``cli_option VALUE`` names (``value`` None: the option was not given but the
        bundle's target deploys this way); ``common``: the shared options listed in ``cli_common``."""
        return cls(value, timeout=timeout, **common)  # type: ignore[call-arg]

    def __init__(self, timeout: float = DEFAULT_TIMEOUT):
        if timeout <= 0:
            raise DeployError("timeout must be positive")
        self.timeout = float(timeout)
        self.bytes_sent = 0

    # ------------------------------------------------------------------ to implement
    @abstractmethod
    def describe(self) -> str:
        """Who the device is, for messages: ``pi@raspberrypi:22`` or ``adb:SERIAL``."""

    @abstractmethod
    def connect(self) -> None:
        """Pick and check the device (host key and login for ssh, the serial for adb). Runs no
        remote command; calling it again on a connected transport is cheap."""

    @abstractmethod
    def sh(self, script: str, *, timeout: float | None = None, stdin: IO[bytes] | None = None) -> Completed:
        """Run ``script`` with the device's sh. Returns its real exit status; raises DeployError only
        when the device could not be reached or the call was cut off."""

    @abstractmethod
    def upload(self, files: Sequence[tuple[Path, str]], dest_dir: str, *, timeout: float | None = None,
               prepare: str | None = None) -> int:
        """Copy local files to ``dest_dir/<relpath>`` (relpaths validated by the caller); returns bytes
        sent. ``prepare`` is a script to run on the device first (in the same round trip where the
        transport can). A failed upload raises DeployError; a 'successful' one is still checksummed
        by the caller."""

    @abstractmethod
    def download(self, remote_path: str, local_path: Path, *, timeout: float | None = None) -> int:
        """Copy one remote file to ``local_path``; returns its size."""

    def cli_address(self) -> str:
        """How the CLI names this device (``--host pi@raspberrypi:22``, ``--local DIR``, ``--serial S``), for hints that
        give a command to run; "" when the CLI cannot reach it."""
        value = next((getattr(self, a, None) for a in ("spec", "directory", "serial") if getattr(self, a, None)), None)
        return f"{self.cli_option} {q(str(value))}" if self.cli_option and value else ""

    def close(self) -> None:  # noqa: B027 - an optional hook, not abstract
        """Release whatever the transport holds (nothing by default)."""

    # ------------------------------------------------------------------ shared
    #: shell expression for where ``~`` and relative remote dirs are anchored
    home_expr: str = "/"
    #: device commands the release protocol needs besides POSIX sh basics
    required_tools: tuple[str, ...] = ("sha256sum",)

    def path_expr(self, remote_path: str) -> str:
        """A shell expression for a remote path as the user wrote it: ``~``, ``~/x`` and relative
        paths are anchored at the device's home; everything else is quoted literally."""
        if not remote_path or any(_unsafe_path_char(c) for c in remote_path):
            raise UsageError(f"invalid remote path {remote_path!r}: control or line/paragraph separator characters",
                             hint="use a plain path such as ~/edgepack/NAME or /opt/models/NAME")
        if ".." in remote_path.split("/"):
            raise UsageError(f"remote path {remote_path!r} must not contain '..'")
        if remote_path == "~":
            return self.home_expr
        if remote_path.startswith("~/"):
            return f"{self.home_expr}/{q(remote_path[2:])}"
        if remote_path.startswith("~"):
            raise UsageError(f"remote path {remote_path!r}: only ~ and ~/ are understood (not ~user)")
        if remote_path.startswith("/"):
            return q(remote_path)
        return f"{self.home_expr}/{q(remote_path)}"

    @staticmethod
    def normalize_dir(resolved: str, home: str, spec: str) -> str:
        """Check the absolute directory the device resolved ``spec`` to."""
        path = re.sub(r"/+", "/", resolved)
        if len(path) > 1:
            path = path.rstrip("/")
        if not path.startswith("/"):
            raise DeployError(f"remote directory {spec!r} resolved to {resolved!r}, not an absolute path",
                              hint="pass an absolute --remote-dir")
        home = re.sub(r"/+", "/", home).rstrip("/") or "/"
        if path in ("/", home):
            raise UsageError(f"remote directory {spec!r} is the device's root or home; use a directory of its own")
        return path

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
