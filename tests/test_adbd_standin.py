"""The adbd stand-in, driven by the real adb client (Debian's adb 1.0.41)."""

from __future__ import annotations

import hashlib
import os
import re
import socket
import stat
import struct
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.adbd_standin import (
    A_CLSE, A_CNXN, A_OKAY, A_OPEN, A_VERSION_MIN, A_WRTE, AdbdStandin, pack_message,
)

pytest_plugins = ["tests.adb_fixtures"]

REPO = Path(__file__).resolve().parent.parent
TMP = "/data/local/tmp"


def _write(path: Path, data: bytes, mode: int) -> Path:
    path.write_bytes(data)
    os.chmod(path, mode)
    return path


def _out(p: subprocess.CompletedProcess) -> str:
    return (p.stdout + p.stderr).decode(errors="replace")


# -- connection ---------------------------------------------------------------


def test_connect_lists_device_with_banner(adb_device):
    assert adb_device.serial == "127.0.0.1:%d" % adb_device.standin.port
    assert adb_device.env["ANDROID_ADB_SERVER_PORT"] == str(adb_device.server.port)
    assert adb_device.state() == "device"

    p = subprocess.run([adb_device.adb_path, "devices", "-l"], env=adb_device.env,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=10)
    line = [ln for ln in p.stdout.decode().splitlines()
            if ln.startswith(adb_device.serial)]
    assert line, p.stdout
    assert re.search(r"\sdevice\s", line[0] + " ")
    assert "product:edgepack_standin" in line[0]
    assert "model:standin" in line[0]

    features = adb_device.adb("features", check=True).stdout.decode().split()
    assert "fixed_push_mkdir" in features
    for absent in ("shell_v2", "stat_v2", "ls_v2", "sendrecv_v2", "cmd"):
        assert absent not in features


# -- shell ----------------------------------------------------------------------


def test_shell_echo(adb_device):
    p = adb_device.adb("shell", "echo", "hi")
    assert p.returncode == 0
    assert p.stdout == b"hi\n"
    assert "shell:echo hi" in adb_device.standin.services


def test_shell_single_argument_with_spaces_quotes_semicolons(adb_device):
    cmd = """printf '%s|' "one two" 'it'"'"'s'; echo "semi;colon"; echo done"""
    p = adb_device.adb("shell", cmd)
    assert p.returncode == 0
    assert p.stdout == b"one two|it's|semi;colon\ndone\n"
    # legacy shell: the client forwards the argument verbatim
    assert adb_device.standin.shell_commands[-1] == cmd


def test_shell_cwd_env_and_tools(adb_device):
    tools = ["sha256sum", "mv", "ln", "readlink", "mkdir", "rm", "ls", "cat"]
    p = adb_device.adb("shell", "pwd; for t in %s; do command -v $t || echo MISSING $t; done"
                       % " ".join(tools))
    lines = p.stdout.decode().splitlines()
    assert lines[0] == "/"
    assert not [ln for ln in lines if ln.startswith("MISSING")], lines
    assert len(lines) == 1 + len(tools)


def test_failing_command_still_exits_zero(adb_device):
    # Legacy shell protocol: no exit status on the wire, stderr merged in stdout.
    p = adb_device.adb("shell", "ls /data/local/tmp/does-not-exist")
    assert p.returncode == 0
    assert b"No such file" in p.stdout
    assert adb_device.adb("shell", "exit 3").returncode == 0
    # The usual work-around for old devices does work:
    p = adb_device.adb("shell", "false; echo rc=$?")
    assert p.stdout == b"rc=1\n"


def test_exec_out_and_interactive_shell(adb_device):
    p = adb_device.adb("exec-out", "printf 'a\\0b'")
    assert p.stdout == b"a\0b"
    p = adb_device.adb("shell", input=b"echo interactive $((6*7)); exit\n", timeout=15)
    assert p.returncode == 0
    assert p.stdout == b"interactive 42\n"


# -- file transfer --------------------------------------------------------------


def test_push_small_file(adb_device, tmp_path):
    src = _write(tmp_path / "small.txt", b"hello device\n", 0o640)
    os.utime(src, (1_600_000_000, 1_600_000_000))
    p = adb_device.adb("push", str(src), TMP + "/small.txt")
    assert p.returncode == 0, _out(p)
    dst = adb_device.root / "data/local/tmp/small.txt"
    assert dst.read_bytes() == b"hello device\n"
    st = dst.stat()
    assert stat.S_IMODE(st.st_mode) == 0o640
    assert int(st.st_mtime) == 1_600_000_000
    assert adb_device.path(TMP + "/small.txt") == dst


def test_push_multi_megabyte_file(adb_device, tmp_path):
    data = os.urandom(5 * 1024 * 1024 + 123)
    src = _write(tmp_path / "model.tflite", data, 0o755)
    p = adb_device.adb("push", str(src), TMP + "/models/model.tflite")
    assert p.returncode == 0, _out(p)
    dst = adb_device.root / "data/local/tmp/models/model.tflite"
    assert dst.stat().st_size == len(data)
    assert dst.read_bytes() == data
    assert stat.S_IMODE(dst.stat().st_mode) == 0o755
    rec = adb_device.standin.pushes[-1]
    assert rec["complete"] and rec["size"] == len(data) and rec["fault"] is None


def test_push_replaces_existing_file_and_directory_push(adb_device, tmp_path):
    dst = adb_device.root / "data/local/tmp/f"
    dst.write_bytes(b"old contents that are longer")
    src = _write(tmp_path / "f", b"new", 0o644)
    assert adb_device.adb("push", str(src), TMP + "/f").returncode == 0
    assert dst.read_bytes() == b"new"
    # into an existing directory: the client appends the basename
    (adb_device.root / "data/local/tmp/dir").mkdir()
    assert adb_device.adb("push", str(src), TMP + "/dir/").returncode == 0
    assert (adb_device.root / "data/local/tmp/dir/f").read_bytes() == b"new"
    # into a directory that does not exist: fails, as on a real device
    p = adb_device.adb("push", str(src), TMP + "/nodir/")
    assert p.returncode != 0 and "Is a directory" in _out(p)

    tree = tmp_path / "bundle"
    (tree / "a" / "b").mkdir(parents=True)
    (tree / "a" / "b" / "x.bin").write_bytes(b"x" * 70000)
    (tree / "top.json").write_text("{}")
    p = adb_device.adb("push", str(tree), TMP + "/")
    assert p.returncode == 0, _out(p)
    base = adb_device.root / "data/local/tmp/bundle"
    assert (base / "a/b/x.bin").read_bytes() == b"x" * 70000
    assert (base / "top.json").read_text() == "{}"


def test_push_outside_data_is_refused(adb_device, tmp_path):
    src = _write(tmp_path / "f", b"x", 0o644)
    p = adb_device.adb("push", str(src), "/system/f")
    assert p.returncode != 0
    assert "Read-only file system" in _out(p)
    assert not (adb_device.root / "system").exists()


def test_pull_file_and_directory(adb_device, tmp_path):
    data = os.urandom(300_000)
    d = adb_device.root / "data/local/tmp/out"
    d.mkdir()
    (d / "result.bin").write_bytes(data)
    (d / "log.txt").write_text("ok\n")

    p = adb_device.adb("pull", TMP + "/out/result.bin", str(tmp_path / "r.bin"))
    assert p.returncode == 0, _out(p)
    assert (tmp_path / "r.bin").read_bytes() == data

    p = adb_device.adb("pull", TMP + "/out", str(tmp_path / "outdir"))
    assert p.returncode == 0, _out(p)
    assert sorted(os.listdir(tmp_path / "outdir")) == ["log.txt", "result.bin"]
    assert (tmp_path / "outdir" / "result.bin").read_bytes() == data

    p = adb_device.adb("pull", TMP + "/missing", str(tmp_path / "m"))
    assert p.returncode != 0
    assert "does not exist" in _out(p)


def test_shell_sha256sum_matches_hashlib(adb_device, tmp_path):
    data = os.urandom(2 * 1024 * 1024)
    src = _write(tmp_path / "x", data, 0o644)
    assert adb_device.adb("push", str(src), TMP + "/x").returncode == 0
    p = adb_device.adb("shell", "sha256sum " + TMP + "/x")
    assert p.stdout.decode().split() == [hashlib.sha256(data).hexdigest(), TMP + "/x"]


# -- the device filesystem -----------------------------------------------------


def test_shell_and_push_land_in_sandbox_not_on_host(adb_device, tmp_path):
    tag = uuid.uuid4().hex
    a, b = "a-" + tag, "b-" + tag
    p = adb_device.adb("shell", "echo from-shell > %s/%s" % (TMP, a))
    assert p.returncode == 0 and p.stdout == b""
    src = _write(tmp_path / "b", b"from-push\n", 0o644)
    assert adb_device.adb("push", str(src), "%s/%s" % (TMP, b)).returncode == 0

    sandbox_tmp = adb_device.root / "data/local/tmp"
    assert (sandbox_tmp / a).read_bytes() == b"from-shell\n"
    assert (sandbox_tmp / b).read_bytes() == b"from-push\n"
    # each side sees the other's file
    assert adb_device.adb("shell", "cat %s/%s" % (TMP, b)).stdout == b"from-push\n"
    p = adb_device.adb("pull", "%s/%s" % (TMP, a), str(tmp_path / "a"))
    assert (tmp_path / "a").read_bytes() == b"from-shell\n", _out(p)
    # and nothing reached the host's real /data/local/tmp
    assert not Path("/data/local/tmp", a).exists()
    assert not Path("/data/local/tmp", b).exists()


def test_symlinks_resolve_inside_the_sandbox(adb_device, tmp_path):
    # A deployer's "current -> release" switch: the absolute link target must be
    # followed inside the device's filesystem by the sync service as well.
    p = adb_device.adb("shell", "mkdir -p {t}/rel1 && ln -sfn {t}/rel1 {t}/current && "
                       "readlink {t}/current".format(t=TMP))
    assert p.stdout == (TMP + "/rel1\n").encode()
    src = _write(tmp_path / "m", b"model-bytes", 0o644)
    assert adb_device.adb("push", str(src), TMP + "/current/m").returncode == 0
    assert (adb_device.root / "data/local/tmp/rel1/m").read_bytes() == b"model-bytes"
    assert not Path("/data/local/tmp/rel1/m").exists()
    assert adb_device.adb("shell", "cat %s/current/m" % TMP).stdout == b"model-bytes"


# -- several streams on one connection -------------------------------------------


def test_concurrent_streams_on_one_connection(adb_device, tmp_path):
    slow = subprocess.Popen(adb_device.adb_argv() + ["shell", "sleep 1; echo slow"],
                            env=adb_device.env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while ("shell:sleep 1; echo slow" not in adb_device.standin.services
               and time.monotonic() < deadline):
            time.sleep(0.02)
        data = os.urandom(1024 * 1024)
        src = _write(tmp_path / "c", data, 0o644)
        assert adb_device.adb("push", str(src), TMP + "/c").returncode == 0
        assert adb_device.adb("shell", "echo fast").stdout == b"fast\n"
        out, _ = slow.communicate(timeout=15)
    finally:
        if slow.poll() is None:
            slow.kill()
            slow.wait(5)
    assert out == b"slow\n"
    assert (adb_device.root / "data/local/tmp/c").read_bytes() == data
    assert adb_device.standin.max_open_streams >= 2
    assert adb_device.standin.connection_count == 1


def test_host_closing_a_stream_kills_the_command(adb_device):
    tag = uuid.uuid4().hex[:8]
    p = subprocess.Popen(adb_device.adb_argv() + ["shell", "sleep 30; echo %s" % tag],
                         env=adb_device.env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
    finally:
        p.kill()
        p.wait(5)
    deadline = time.monotonic() + 10
    while adb_device.standin.running_commands and time.monotonic() < deadline:
        time.sleep(0.05)
    assert adb_device.standin.running_commands == 0
    ps = subprocess.run(["ps", "-eo", "args"], stdout=subprocess.PIPE, timeout=10)
    assert ("sleep 30; echo " + tag).encode() not in ps.stdout


# -- fault injection --------------------------------------------------------------


def test_fault_cut_push_after_n_bytes(adb_device, tmp_path):
    data = os.urandom(3 * 1024 * 1024)
    src = _write(tmp_path / "big", data, 0o644)
    adb_device.cut_push_after = 1_000_000
    adb_device.cut_push_times = 1
    p = adb_device.adb("push", str(src), TMP + "/big")
    assert p.returncode != 0
    assert "failed to copy" in _out(p)
    partial = adb_device.root / "data/local/tmp/big"
    assert partial.read_bytes() == data[:1_000_000]   # the partial file remains
    assert adb_device.standin.pushes[-1]["fault"] == "cut"
    assert adb_device.cut_push_times == 0             # disarmed after one use

    adb_device.reconnect()
    p = adb_device.adb("push", str(src), TMP + "/big")
    assert p.returncode == 0, _out(p)
    assert partial.read_bytes() == data


def test_fault_truncate_push_lies(adb_device, tmp_path):
    data = os.urandom(200_000)
    src = _write(tmp_path / "m", data, 0o644)
    adb_device.truncate_push_to = 4096
    p = adb_device.adb("push", str(src), TMP + "/m")
    assert p.returncode == 0, _out(p)               # the device says OK...
    assert "1 file pushed" in _out(p)
    dst = adb_device.root / "data/local/tmp/m"
    assert dst.read_bytes() == data[:4096]           # ...but kept 4 KiB
    digest = adb_device.adb("shell", "sha256sum %s/m" % TMP).stdout.split()[0]
    assert digest.decode() != hashlib.sha256(data).hexdigest()
    assert digest.decode() == hashlib.sha256(data[:4096]).hexdigest()

    adb_device.truncate_push_to = None
    assert adb_device.adb("push", str(src), TMP + "/m").returncode == 0
    assert dst.read_bytes() == data


def test_fault_fail_shell_pattern(adb_device):
    adb_device.fail_shell_pattern = r"sha256sum"
    adb_device.fail_shell_output = "sha256sum: I/O error\n"
    adb_device.fail_shell_times = 1
    p = adb_device.adb("shell", "sha256sum /data/local/tmp/x; echo rc=$?")
    assert p.returncode == 0                          # legacy shell: still 0
    assert p.stdout == b"sha256sum: I/O error\n"      # the command did not run
    assert adb_device.adb("shell", "echo other").stdout == b"other\n"
    # times=1: the next matching command runs for real
    p = adb_device.adb("shell", "sha256sum /dev/null; echo rc=$?")
    assert p.stdout.decode().splitlines() == [
        hashlib.sha256(b"").hexdigest() + "  /dev/null", "rc=0"]


def test_fault_fail_shell_refuse(adb_device):
    adb_device.fail_shell_pattern = r"^mv "
    adb_device.fail_shell_refuse = True
    tmp = adb_device.root / "data/local/tmp"
    (tmp / "a").write_text("a")
    p = adb_device.adb("shell", "mv %s/a %s/b" % (TMP, TMP))
    assert p.returncode == 1
    assert "closed" in _out(p)
    assert (tmp / "a").exists() and not (tmp / "b").exists()
    assert adb_device.adb("shell", "echo still-up").stdout == b"still-up\n"


# -- standalone / raw protocol ---------------------------------------------------------


def test_standalone_cli(adb_server, tmp_path):
    root = tmp_path / "root"
    proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "adbd_standin.py"),
                             "--port", "0", "--root", str(root)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    serial = None
    try:
        line = proc.stdout.readline()
        m = re.search(r"listening on (127\.0\.0\.1:\d+)", line)
        assert m, line
        serial = m.group(1)
        assert "connected" in adb_server.run("connect", serial, timeout=10).stdout.decode()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            st = adb_server.run("-s", serial, "get-state", timeout=10).stdout
            if st.strip() == b"device":
                break
            time.sleep(0.1)
        p = adb_server.run("-s", serial, "shell", "echo hi > /data/local/tmp/cli; cat /data/local/tmp/cli")
        assert p.stdout == b"hi\n"
        assert (root / "data/local/tmp/cli").read_text() == "hi\n"
    finally:
        if serial:
            adb_server.run("disconnect", serial, timeout=10)
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    assert proc.returncode == 0


class _RawHost:
    """A minimal host side, to exercise the old checksummed protocol version."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)

    def send(self, cmd, a0, a1, data=b"", check=None):
        msg = bytearray(pack_message(cmd, a0, a1, data, with_checksum=True))
        if check is not None:
            struct.pack_into("<I", msg, 16, check)
        self.sock.sendall(bytes(msg))

    def recv(self):
        hdr = self._exact(24)
        cmd, a0, a1, n, check, magic = struct.unpack("<6I", hdr)
        assert magic == cmd ^ 0xFFFFFFFF
        data = self._exact(n)
        return cmd, a0, a1, data, check

    def _exact(self, n):
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise EOFError
            buf += chunk
        return buf


def test_old_protocol_version_uses_checksums(tmp_path):
    with AdbdStandin(tmp_path) as dev:
        host = _RawHost(dev.port)
        try:
            host.send(A_CNXN, A_VERSION_MIN, 4096, b"host::\0")
            cmd, version, maxdata, banner, check = host.recv()
            assert (cmd, version) == (A_CNXN, A_VERSION_MIN)
            assert banner.startswith(b"device::ro.product.name=edgepack_standin;")
            assert check == sum(banner)

            host.send(A_OPEN, 7, 0, b"shell:echo hi\0")
            cmd, local, remote, _, _ = host.recv()
            assert (cmd, remote) == (A_OKAY, 7)
            cmd, a0, a1, data, check = host.recv()
            assert (cmd, a0, a1, data) == (A_WRTE, local, 7, b"hi\n")
            assert check == sum(data)                 # old version: checksummed
            host.send(A_OKAY, 7, local)
            assert host.recv()[:3] == (A_CLSE, local, 7)

            # a corrupted checksum makes the device drop the connection
            host.send(A_OPEN, 9, 0, b"shell:echo x\0", check=12345)
            with pytest.raises((EOFError, ConnectionResetError)):
                host.recv()
        finally:
            host.sock.close()


def test_unknown_service_is_refused(tmp_path):
    with AdbdStandin(tmp_path) as dev:
        host = _RawHost(dev.port)
        try:
            host.send(A_CNXN, 0x01000001, 1 << 20, b"host::features=shell_v2\0")
            assert host.recv()[0] == A_CNXN
            host.send(A_OPEN, 5, 0, b"framebuffer:\0")
            assert host.recv()[:3] == (A_CLSE, 0, 5)
        finally:
            host.sock.close()
