"""Deploy over ADB with the real ``adb`` client; ``adb -s SERIAL`` on every device call.

* ``adb shell`` joins its arguments into one string for the device's shell, so each script is
  assembled from ``shlex.quote``d tokens and passed as ONE argument.
* Old devices (no shell protocol v2) make ``adb shell`` exit 0 whatever happened, and merge stderr
  into stdout: every script ends with ``echo __EDGEPACK_RC__=$?`` and that sentinel is the exit
  status. A missing sentinel means the call was cut off.
* ``adb push`` can be cut off half-way or lie about success: the release protocol checksums every
  pushed file with the device's ``sha256sum`` before trusting it.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import IO, Sequence

from ..errors import DeployError, UsageError
from .base import Completed, Transport, q, run_process, transfer_timeout

SENTINEL = b"__EDGEPACK_RC__="
_SENTINEL_LINE = re.compile(rb"__EDGEPACK_RC__=(\d+)\r?\n?")
_SERIAL = re.compile(r"^[A-Za-z0-9._:\[\]-]+\Z")


class AdbTransport(Transport):
    """Android devices through the ``adb`` client (``deploy = "adb"``): the device named by ``serial``, or the only
    one attached; no ``--install``, no stdin to scripts."""
    method = "adb"
    tool = "adb"
    tool_package = "adb"
    tool_hint = "install Android platform-tools (Debian/Ubuntu: apt-get install adb) or put adb on PATH"
    address = "--serial SERIAL"
    remote_dir = "/data/local/tmp/edgepack/{name}"
    device_tools_hint = "Android 8+ ships sha256sum in toybox; older devices are not supported"
    home_expr = "/data/local/tmp"
    supports_install = False
    label = "ADB"
    cli_option = "--serial"
    cli_short = "-s"
    cli_metavar = "SERIAL"
    cli_verify_help = "The same on an Android device over ADB (see `adb devices`)."
    cli_help = ("Deploy over ADB to this device (see `adb devices`). Without --host/--serial the bundle's "
                "target decides; with one Android device attached it is used.")
    cli_example = "--serial R58M123"
    cli_value_required = False

    @classmethod
    def from_cli(cls, value: str | None, *, timeout: float, **_) -> "AdbTransport":
        """``--serial SERIAL``, or None: the one Android device attached."""
        return cls(value, timeout=timeout)

    def __init__(self, serial: str | None = None, *, timeout: float = 60.0, adb_bin: str = "adb",
                 env: dict | None = None):
        super().__init__(timeout)
        if serial is not None and (not _SERIAL.match(serial) or serial.startswith("-")):
            raise UsageError(f"--serial {serial!r} is not an adb serial", hint="see: adb devices")
        self.serial = serial
        self.adb_bin = adb_bin
        self.env = {**os.environ, **env} if env else None

    def describe(self) -> str:
        """``adb:SERIAL``, or ``adb`` before a device is picked."""
        return f"adb:{self.serial}" if self.serial else "adb"

    # ------------------------------------------------------------------ devices
    def devices(self) -> list[tuple[str, str]]:
        """``adb devices``: [(serial, state)] with state device/offline/unauthorized/..."""
        res = run_process([self.adb_bin, "devices"], timeout=30, what="adb devices", env=self.env,
                          missing_hint=self.tool_hint)
        if res.rc != 0:
            raise DeployError(f"adb devices failed: {res.last_error_line()}",
                              hint="is the adb server able to start? try: adb kill-server; adb devices")
        found = []
        for line in res.out.splitlines():
            if "\t" in line and not line.startswith("*"):
                serial, state = line.split("\t", 1)
                found.append((serial.strip(), state.strip()))
        return found

    def _adb(self, *args: str, timeout: float, what: str) -> Completed:
        return run_process([self.adb_bin, "-s", self.serial, *args], timeout=timeout, what=what, env=self.env,
                           missing_hint=self.tool_hint)

    def connect(self) -> None:
        """Pick the device from ``adb devices`` (without a serial: the only ready one); DeployError unless ready."""
        found = self.devices()
        if self.serial is None:
            ready = [s for s, state in found if state == "device"]
            if len(ready) == 1:
                self.serial = ready[0]
            elif not found:
                raise DeployError("no Android device is attached",
                                  hint="plug it in with USB debugging on (or adb connect HOST:PORT), then check: adb devices")
            else:
                listing = ", ".join(f"{s} ({state})" for s, state in found)
                if not ready:
                    raise DeployError("no attached Android device is ready",
                                      hint=f"attached: {listing}; accept the 'Allow USB debugging' prompt, or adb reconnect")
                raise DeployError(f"{len(ready)} devices are ready; say which one with --serial",
                                  hint=f"attached: {listing}")
        states = dict(found)
        state = states.get(self.serial)
        if state is None:
            listing = ", ".join(f"{s} ({st})" for s, st in found) or "none"
            raise DeployError(f"device {self.serial} is not attached", hint=f"attached: {listing}")
        if state != "device":
            hint = ("accept the 'Allow USB debugging' prompt on the device" if state == "unauthorized"
                    else "reconnect it (adb reconnect) or restart adb (adb kill-server)")
            raise DeployError(f"device {self.serial} is {state}", hint=hint)

    # ------------------------------------------------------------------ commands
    def sh(self, script: str, *, timeout: float | None = None, stdin: IO[bytes] | None = None) -> Completed:
        """Via ``adb shell``; status from a sentinel line, stderr merged into stdout; no ``stdin``."""
        if stdin is not None:
            raise DeployError("adb shell input streaming is not supported; use upload()")
        if self.serial is None:
            raise DeployError("adb transport used before connect()")
        command = f"( {script}\n) 2>&1; echo \"__EDGEPACK_RC__=$?\""
        res = self._adb("shell", command, timeout=timeout or self.timeout, what=f"adb shell on {self.serial}")
        out = res.stdout
        matches = list(_SENTINEL_LINE.finditer(out))
        if not matches:
            detail = res.last_error_line()
            if res.rc != 0 or "error:" in detail:
                raise DeployError(f"adb shell on {self.serial} failed: {detail}",
                                  hint="is the device still attached? check: adb devices")
            raise DeployError(f"adb shell on {self.serial} was cut off (no exit status came back)",
                              hint="check the connection and run again")
        last = matches[-1]
        rc = int(last.group(1))
        body = out[: last.start()] + out[last.end():]
        # stderr was merged into stdout on the device (old devices do that anyway); keep it in both
        # so callers find error lines wherever they look.
        return Completed(rc, body, res.stderr)

    def upload(self, files: Sequence[tuple[Path, str]], dest_dir: str, *, timeout: float | None = None,
               prepare: str | None = None) -> int:
        """One ``adb push`` per file, then chmod 755 on the .py files; returns the file bytes."""
        if prepare:
            res = self.sh(prepare, timeout=timeout)
            if res.rc != 0:
                raise DeployError(f"preparing {dest_dir} on {self.serial} failed: {res.last_error_line()}")
        sent = 0
        for local, rel in files:
            size = Path(local).stat().st_size
            remote = f"{dest_dir}/{rel}"
            res = self._adb("push", str(local), remote, timeout=transfer_timeout(size, timeout or self.timeout),
                            what=f"adb push {Path(local).name}")
            self.bytes_sent += size
            sent += size
            text = res.out + res.err
            if res.rc != 0 or re.search(r"^adb: error|: error:|failed to copy|remote ", text, re.M):
                why = next((ln.strip() for ln in text.splitlines() if re.search(r"error|fail|couldn't", ln)),
                           res.last_error_line())
                raise DeployError(f"adb push of {rel} to {self.serial} failed: {why}",
                                  hint="the transfer was cut off; check the cable/connection and run again")
        if any(rel.endswith(".py") for _, rel in files):
            self.sh("chmod 755 " + " ".join(q(f"{dest_dir}/{rel}") for _, rel in files if rel.endswith(".py")))
        return sent

    def download(self, remote_path: str, local_path: Path, *, timeout: float | None = None) -> int:
        """``adb pull`` to ``NAME.part``, renamed to ``local_path`` once complete."""
        local_path = Path(local_path)
        tmp = local_path.with_name(local_path.name + ".part")
        res = self._adb("pull", remote_path, str(tmp), timeout=timeout or self.timeout, what="adb pull")
        if res.rc != 0 or not tmp.is_file():
            tmp.unlink(missing_ok=True)
            raise DeployError(f"adb pull of {remote_path} from {self.serial} failed: {res.last_error_line()}")
        os.replace(tmp, local_path)
        return local_path.stat().st_size
