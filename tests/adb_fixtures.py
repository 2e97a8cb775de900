"""pytest plugin: a private adb server plus an adbd stand-in per test.

Load it from conftest.py with ``pytest_plugins = ["tests.adb_fixtures"]``.

Fixtures
--------
``adb_server`` (session)
    Starts the real adb host server on a private port (``ANDROID_ADB_SERVER_PORT``)
    and kills it at the end of the session.  Skips if ``adb`` is not installed.
    Yields an :class:`AdbServer` (``.port``, ``.env``, ``.adb``, ``.run()``).

``adb_device`` (function)
    Starts an :class:`~tests.adbd_standin.AdbdStandin` on a free loopback port
    with a fresh sandbox, ``adb connect``s it and waits for state ``device``.
    Yields an :class:`AdbDevice`; see its docstring for attributes and knobs.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

import pytest

from tests.adbd_standin import AdbdStandin

ADB_TIMEOUT = 30  # seconds, for any single adb invocation made by the fixtures


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AdbServer:
    """The real adb host server, on a private port."""

    def __init__(self, adb: str, port: int, home: Path):
        self.adb = adb
        self.port = port
        self.home = home
        env = dict(os.environ)
        env["ANDROID_ADB_SERVER_PORT"] = str(port)
        env.pop("ANDROID_SERIAL", None)
        env.pop("ANDROID_ADB_SERVER_ADDRESS", None)
        self.env: Dict[str, str] = env

    def run(self, *args: str, timeout: float = ADB_TIMEOUT, check: bool = False,
            env: Optional[Dict[str, str]] = None, **kw) -> subprocess.CompletedProcess:
        return subprocess.run([self.adb, *args], env=env or self.env, timeout=timeout,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              stdin=subprocess.DEVNULL, check=check, **kw)

    def start(self) -> None:
        # The server keeps its keys and log in a private HOME / log path so
        # the user's ~/.android and /tmp/adb.<uid>.log are left alone.
        env = dict(self.env, HOME=str(self.home),
                   ANDROID_ADB_LOG_PATH=str(self.home / "adb-server.log"))
        self.run("start-server", env=env, check=True)

    def kill(self) -> None:
        try:
            self.run("kill-server", timeout=15)
        except subprocess.TimeoutExpired:
            pass


class AdbDevice:
    """What the ``adb_device`` fixture yields.

    Attributes
    ----------
    serial : str            ``"127.0.0.1:PORT"`` (use with ``adb -s``)
    root : Path             sandbox = the device's filesystem root
                            (``/data/local/tmp/x`` is ``root / "data/local/tmp/x"``)
    env : dict              full environment for adb subprocesses
                            (contains ``ANDROID_ADB_SERVER_PORT``)
    adb_path : str          the adb executable
    standin : AdbdStandin   the stand-in itself (``pushes``, ``shell_commands``...)

    Fault knobs (read/write; forwarded to the stand-in, effective immediately)
    -----------------------------------------------------------------------
    cut_push_after : int|None       drop the connection after N bytes of a push
    cut_push_times : int|None       None = every push, N = only the next N pushes
    truncate_push_to : int|None     truncate pushed files to N bytes, report OK
    truncate_push_times : int|None
    fail_shell_pattern : str|None   regex; matching shell commands are not run
    fail_shell_output : str         what a failed command prints instead
    fail_shell_refuse : bool        refuse the shell stream instead (adb exits 1)
    fail_shell_times : int|None
    """

    _KNOBS = ("cut_push_after", "cut_push_times", "truncate_push_to",
              "truncate_push_times", "fail_shell_pattern", "fail_shell_output",
              "fail_shell_refuse", "fail_shell_times")

    def __init__(self, server: AdbServer, standin: AdbdStandin):
        object.__setattr__(self, "server", server)
        object.__setattr__(self, "standin", standin)
        object.__setattr__(self, "serial", standin.serial)
        object.__setattr__(self, "root", standin.root)
        object.__setattr__(self, "env", dict(server.env))
        object.__setattr__(self, "adb_path", server.adb)

    def __getattr__(self, name):
        if name in AdbDevice._KNOBS:
            return getattr(self.standin, name)
        raise AttributeError(name)

    def __setattr__(self, name, value):
        if name in AdbDevice._KNOBS:
            setattr(self.standin, name, value)
        else:
            object.__setattr__(self, name, value)

    # -- helpers --------------------------------------------------------------------
    def adb(self, *args: str, timeout: float = ADB_TIMEOUT, check: bool = False,
            input: Optional[bytes] = None) -> subprocess.CompletedProcess:
        """Run ``adb -s SERIAL ARGS...``; returns CompletedProcess with bytes output."""
        kw = {"input": input} if input is not None else {"stdin": subprocess.DEVNULL}
        return subprocess.run([self.adb_path, "-s", self.serial, *args], env=self.env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              timeout=timeout, check=check, **kw)

    def adb_argv(self) -> List[str]:
        return [self.adb_path, "-s", self.serial]

    def path(self, device_path: str) -> Path:
        """Host path of a device path (``/data/local/tmp/x`` -> sandbox file)."""
        return self.standin.device_path(device_path)

    def state(self) -> str:
        p = self.adb("get-state", timeout=10)
        return p.stdout.decode(errors="replace").strip() if p.returncode == 0 else ""

    def connect(self, timeout: float = 20.0) -> None:
        """``adb connect`` and wait until the device is in state ``device``."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            p = self.server.run("connect", self.serial, timeout=10)
            last = (p.stdout + p.stderr).decode(errors="replace").strip()
            for _ in range(20):
                if self.state() == "device":
                    return
                time.sleep(0.1)
        raise RuntimeError("device %s did not come online: %s" % (self.serial, last))

    reconnect = connect

    def disconnect(self) -> None:
        try:
            self.server.run("disconnect", self.serial, timeout=10)
        except subprocess.TimeoutExpired:
            pass


@pytest.fixture(scope="session")
def adb_server():
    adb = shutil.which("adb")
    if adb is None:
        pytest.skip("adb is not installed (Debian package 'adb'); "
                    "the Android device stand-in tests need the real adb client")
    home = Path(tempfile.mkdtemp(prefix="edgepack-adb-home-"))
    server = AdbServer(adb, _free_port(), home)
    try:
        server.start()
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        server.kill()
        shutil.rmtree(home, ignore_errors=True)
        pytest.fail("could not start the adb server: %r" % (exc,))
    try:
        yield server
    finally:
        server.kill()
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def adb_device(adb_server, tmp_path):
    root = tmp_path / "device-root"
    root.mkdir()
    standin = AdbdStandin(root, port=0)
    standin.start()
    dev = AdbDevice(adb_server, standin)
    try:
        dev.connect()
        yield dev
    finally:
        dev.disconnect()
        standin.stop()
