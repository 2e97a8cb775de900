"""A small Android device stand-in that speaks the adb wire protocol (adbd side).

The real ``adb`` client/server connects to it with ``adb connect 127.0.0.1:PORT``
exactly as it would connect to a phone in TCP/IP debugging mode.  Only the
device is fake: every byte on the socket is the real adb transport protocol
(CNXN/OPEN/OKAY/WRTE/CLSE messages) and the real v1 sync protocol.

What it serves:

* ``shell:<cmd>`` / ``exec:<cmd>`` -- legacy (pre-shell_v2) shell: ``<cmd>`` is
  run with ``sh -c``, stdout and stderr are streamed back merged, then the
  stream is closed.  There is no exit status on the wire, so the adb client
  exits 0 even when the command failed -- like an old device.
* ``shell:`` (empty) -- a minimal interactive shell without a pty.
* ``sync:`` -- STAT, LIST, SEND, RECV, QUIT (v1; no stat_v2/ls_v2/sendrecv_v2).

The device filesystem is a sandbox directory.  Sync paths are resolved inside
the sandbox (symlinks are followed *within* the sandbox, like a chroot).  Shell
commands run in a private mount namespace in which ``<sandbox>/data`` is
bind-mounted over ``/data``, with ``/`` as the working directory, so
``/data/local/tmp/x`` means the same file for ``adb push`` and ``adb shell``.
If mount namespaces are unavailable, a documented path-rewriting fallback is
used (see docs/adb-standin.md).

Standalone use::

    python tests/adbd_standin.py --port 5599 --root /tmp/device
    adb connect 127.0.0.1:5599

Library use::

    dev = AdbdStandin(root)
    dev.start()            # returns the port; serves from background threads
    dev.cut_push_after = 4096
    ...
    dev.stop()

Stdlib only.
"""

from __future__ import annotations

import argparse
import errno
import os
import posixpath
import re
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

# --------------------------------------------------------------------------
# Wire constants (adb/protocol.txt, adb/SYNC.TXT)
# --------------------------------------------------------------------------

A_SYNC = 0x434E5953
A_CNXN = 0x4E584E43
A_AUTH = 0x48545541
A_OPEN = 0x4E45504F
A_OKAY = 0x59414B4F
A_CLSE = 0x45534C43
A_WRTE = 0x45545257
A_STLS = 0x534C5453

A_VERSION_MIN = 0x01000000
A_VERSION_SKIP_CHECKSUM = 0x01000001
A_VERSION = 0x01000001

MAX_PAYLOAD_V1 = 4 * 1024
MAX_PAYLOAD = 1024 * 1024

SYNC_DATA_MAX = 64 * 1024
SYNC_PATH_MAX = 1024

_HEADER = struct.Struct("<6I")
_SYNC_HDR = struct.Struct("<4sI")

COMMAND_NAMES = {
    A_SYNC: "SYNC", A_CNXN: "CNXN", A_AUTH: "AUTH", A_OPEN: "OPEN",
    A_OKAY: "OKAY", A_CLSE: "CLSE", A_WRTE: "WRTE", A_STLS: "STLS",
}

DEFAULT_FEATURES = ("fixed_push_mkdir",)
DEFAULT_PROPS = (
    ("ro.product.name", "edgepack_standin"),
    ("ro.product.model", "standin"),
    ("ro.product.device", "standin"),
)

SHELL_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Runs inside the private mount namespace: bind the sandbox dirs, cd /, run.
_NS_SCRIPT = r"""
cmd=$1; shift
while [ $# -gt 1 ]; do
  mount --bind "$1" "$2" || { echo "standin: cannot bind $1 on $2" >&2; exit 125; }
  shift 2
done
cd / || exit 125
exec /bin/sh -c "$cmd"
"""


class ProtocolError(Exception):
    pass


def _checksum(data: bytes) -> int:
    return sum(data) & 0xFFFFFFFF


def pack_message(command: int, arg0: int, arg1: int, data: bytes = b"",
                 with_checksum: bool = True) -> bytes:
    """Encode one adb transport message (24-byte header + payload)."""
    check = _checksum(data) if with_checksum else 0
    header = _HEADER.pack(command, arg0 & 0xFFFFFFFF, arg1 & 0xFFFFFFFF,
                          len(data), check, command ^ 0xFFFFFFFF)
    return header + data


# --------------------------------------------------------------------------
# Streams (one per OPEN)
# --------------------------------------------------------------------------


class _Stream:
    """Device end of one adb stream (local_id is ours, remote_id the host's)."""

    def __init__(self, conn: "_Connection", local_id: int, remote_id: int,
                 service: str):
        self.conn = conn
        self.local_id = local_id
        self.remote_id = remote_id
        self.service = service
        self.cond = threading.Condition()
        self.inbuf = bytearray()
        self.pending_ack = False   # host WRTE received, OKAY not yet sent
        self.acked = True          # our last WRTE was OKAYed by the host
        self.closed = False
        self.on_close: List[Callable[[], None]] = []

    # -- called from the connection's reader thread -------------------------
    def _host_data(self, data: bytes) -> None:
        with self.cond:
            if self.closed:
                return
            self.inbuf += data
            self.pending_ack = True
            self.cond.notify_all()

    def _host_okay(self) -> None:
        with self.cond:
            self.acked = True
            self.cond.notify_all()

    # -- called from service threads ------------------------------------------
    def _ack_locked(self) -> None:
        if self.pending_ack and not self.closed:
            self.pending_ack = False
            self.conn.send(A_OKAY, self.local_id, self.remote_id)

    def read_exact(self, n: int) -> Optional[bytes]:
        """n bytes from the host, or None if the stream closed first."""
        with self.cond:
            while len(self.inbuf) < n:
                if self.closed:
                    return None
                # Everything buffered is not enough: let the host send more.
                self._ack_locked()
                self.cond.wait()
            data = bytes(self.inbuf[:n])
            del self.inbuf[:n]
            if not self.inbuf:
                self._ack_locked()
            return data

    def read_some(self) -> Optional[bytes]:
        with self.cond:
            while not self.inbuf:
                if self.closed:
                    return None
                self._ack_locked()
                self.cond.wait()
            data = bytes(self.inbuf)
            self.inbuf.clear()
            self._ack_locked()
            return data

    def write(self, data: bytes) -> bool:
        """Send data as WRTE messages, honouring flow control.

        Returns False if the stream was closed before all data was OKAYed.
        """
        view = memoryview(data)
        while view:
            chunk = bytes(view[: self.conn.max_payload])
            view = view[len(chunk):]
            with self.cond:
                while not self.acked and not self.closed:
                    self.cond.wait()
                if self.closed:
                    return False
                self.acked = False
            if not self.conn.send(A_WRTE, self.local_id, self.remote_id, chunk):
                self._mark_closed()
                return False
        with self.cond:
            while not self.acked and not self.closed:
                self.cond.wait()
            return not self.closed

    def _mark_closed(self) -> bool:
        """Mark closed without telling the host; returns True the first time."""
        with self.cond:
            if self.closed:
                return False
            self.closed = True
            self.cond.notify_all()
        self.conn._forget(self)
        for cb in self.on_close:
            try:
                cb()
            except Exception:  # pragma: no cover - best effort cleanup
                pass
        return True

    def close(self) -> None:
        """Close from the device side: send CLSE to the host (once)."""
        if self._mark_closed():
            self.conn.send(A_CLSE, self.local_id, self.remote_id)


# --------------------------------------------------------------------------
# Connection (one TCP transport)
# --------------------------------------------------------------------------


class _Connection:
    def __init__(self, device: "AdbdStandin", sock: socket.socket, addr):
        self.device = device
        self.sock = sock
        self.addr = addr
        self.send_lock = threading.Lock()
        self.streams: Dict[int, _Stream] = {}
        self.streams_lock = threading.Lock()
        self.next_id = 1
        self.version = A_VERSION_MIN
        self.max_payload = MAX_PAYLOAD_V1
        self.online = False
        self.dead = False
        self.host_banner = b""

    # -- io ---------------------------------------------------------------------
    def send(self, command: int, arg0: int, arg1: int, data: bytes = b"") -> bool:
        msg = pack_message(command, arg0, arg1, data,
                           with_checksum=self.version < A_VERSION_SKIP_CHECKSUM
                           or command == A_CNXN)
        with self.send_lock:
            if self.dead:
                return False
            try:
                self.sock.sendall(msg)
                return True
            except OSError:
                self.dead = True
                return False

    def _recv_exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(min(n - len(buf), 1 << 20))
            if not chunk:
                raise EOFError
            buf += chunk
        return bytes(buf)

    def abort(self) -> None:
        """Drop the TCP connection abruptly (cable pulled / adbd died)."""
        with self.send_lock:
            self.dead = True
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                 struct.pack("ii", 1, 0))  # RST, like a crash
        except OSError:
            pass
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # -- stream table -------------------------------------------------------------
    def _forget(self, stream: _Stream) -> None:
        with self.streams_lock:
            if self.streams.get(stream.local_id) is stream:
                del self.streams[stream.local_id]

    def _close_all_streams(self) -> None:
        with self.streams_lock:
            streams = list(self.streams.values())
        for s in streams:
            s._mark_closed()

    # -- main loop ------------------------------------------------------------------
    def run(self) -> None:
        try:
            while not self.dead:
                header = self._recv_exact(_HEADER.size)
                cmd, arg0, arg1, length, check, magic = _HEADER.unpack(header)
                if magic != cmd ^ 0xFFFFFFFF:
                    raise ProtocolError("bad magic for command 0x%08x" % cmd)
                limit = max(self.max_payload, MAX_PAYLOAD)
                if length > limit:
                    raise ProtocolError("payload too large: %d" % length)
                data = self._recv_exact(length) if length else b""
                if (self.version < A_VERSION_SKIP_CHECKSUM and cmd != A_CNXN
                        and check != _checksum(data)):
                    raise ProtocolError("bad checksum")
                self.device._log("recv %s %d %d len=%d", COMMAND_NAMES.get(cmd, hex(cmd)),
                                 arg0, arg1, length)
                self._dispatch(cmd, arg0, arg1, data)
        except (EOFError, OSError, ProtocolError) as exc:
            self.device._log("connection %s ended: %r", self.addr, exc)
        finally:
            with self.send_lock:
                self.dead = True
            self._close_all_streams()
            try:
                self.sock.close()
            except OSError:
                pass
            self.device._connection_ended(self)

    def _dispatch(self, cmd: int, arg0: int, arg1: int, data: bytes) -> None:
        if cmd == A_CNXN:
            # (Re)connect: drop whatever was open and answer with our banner.
            # No AUTH: like a device with ro.adb.secure=0.
            self._close_all_streams()
            self.host_banner = data
            self.version = max(A_VERSION_MIN, min(arg0, A_VERSION))
            self.max_payload = max(MAX_PAYLOAD_V1, min(arg1, self.device.max_payload))
            self.online = True
            self.send(A_CNXN, self.version, self.device.max_payload,
                      self.device.banner())
            return
        if not self.online:
            # Anything but CNXN before the handshake is ignored, as adbd does.
            return
        if cmd == A_OPEN:
            if arg0 == 0:
                return
            service = data.split(b"\0", 1)[0].decode("utf-8", "replace")
            self._open(arg0, service)
        elif cmd == A_WRTE:
            stream = self._stream(arg1, arg0)
            if stream is not None:
                stream._host_data(data)
        elif cmd == A_OKAY:
            stream = self._stream(arg1, arg0)
            if stream is not None:
                stream._host_okay()
        elif cmd == A_CLSE:
            stream = self._stream(arg1, arg0, allow_zero_remote=True)
            if stream is not None:
                stream.close()  # the peer also answers CLSE with CLSE
        # AUTH/STLS/SYNC and unknown commands are ignored.

    def _stream(self, local_id: int, remote_id: int,
                allow_zero_remote: bool = False) -> Optional[_Stream]:
        with self.streams_lock:
            s = self.streams.get(local_id)
        if s is None:
            return None
        if s.remote_id != remote_id and not (allow_zero_remote and remote_id == 0):
            return None
        return s

    def _open(self, remote_id: int, service: str) -> None:
        handler = self.device._service_handler(service)
        if handler is None:
            self.send(A_CLSE, 0, remote_id)
            return
        with self.streams_lock:
            local_id = self.next_id
            self.next_id += 1
            stream = _Stream(self, local_id, remote_id, service)
            self.streams[local_id] = stream
            self.device.max_open_streams = max(self.device.max_open_streams,
                                               len(self.streams))
        self.send(A_OKAY, local_id, remote_id)
        t = threading.Thread(target=self.device._run_service,
                             args=(handler, stream),
                             name="adbd-standin-%s" % service.split(":", 1)[0],
                             daemon=True)
        t.start()


# --------------------------------------------------------------------------
# The device
# --------------------------------------------------------------------------


class AdbdStandin:
    """An adbd stand-in serving ``root`` as the device filesystem.

    Fault-injection knobs (plain attributes, change them at any time):

    ``cut_push_after`` (int|None)
        During a sync SEND, after this many bytes of file data have been
        written on the device, drop the whole TCP connection.  The partial
        file stays on the device.
    ``truncate_push_to`` (int|None)
        A completed SEND is silently truncated to this many bytes, yet the
        device answers OKAY (a "lying" transfer).
    ``fail_shell_pattern`` (str|None)
        A ``re.search`` pattern; matching shell commands are not run.  Instead
        ``fail_shell_output`` is sent back (legacy shell: adb still exits 0),
        or, if ``fail_shell_refuse`` is true, the OPEN is refused with CLSE
        (the adb client then reports ``error: closed`` and exits 1).
    ``*_times`` (int|None) for each of the three faults
        None = fire every time; N = fire for the next N matching operations
        and then disarm automatically.

    Observations: ``pushes`` (list of dicts: path, size, mode, complete,
    fault), ``shell_commands`` (list of command strings), ``services``
    (list of service names opened), ``max_open_streams`` (most streams open
    at once on one connection).
    """

    def __init__(self, root, host: str = "127.0.0.1", port: int = 0, *,
                 features=DEFAULT_FEATURES, props=DEFAULT_PROPS,
                 mapped_dirs=("data",), isolation: str = "auto",
                 max_payload: int = MAX_PAYLOAD, verbose: bool = False):
        self.root = Path(root).resolve()
        self.host = host
        self.port = port
        self.features = tuple(features)
        self.props = tuple(props)
        self.mapped_dirs = tuple(mapped_dirs)
        self.isolation = isolation
        self.max_payload = max_payload
        self.verbose = verbose

        # fault knobs
        self.cut_push_after: Optional[int] = None
        self.cut_push_times: Optional[int] = None
        self.truncate_push_to: Optional[int] = None
        self.truncate_push_times: Optional[int] = None
        self.fail_shell_pattern: Optional[str] = None
        self.fail_shell_output: str = "standin: injected failure\n"
        self.fail_shell_refuse: bool = False
        self.fail_shell_times: Optional[int] = None

        # observations
        self.pushes: List[dict] = []
        self.shell_commands: List[str] = []
        self.services: List[str] = []
        self.max_open_streams = 0

        self._lock = threading.Lock()
        self._listener: Optional[socket.socket] = None
        self._accept_thread: Optional[threading.Thread] = None
        self._connections: List[_Connection] = []
        self._procs: Dict[int, subprocess.Popen] = {}
        self._stopping = threading.Event()

    # -- lifecycle ------------------------------------------------------------------
    @property
    def serial(self) -> str:
        return "%s:%d" % (self.host, self.port)

    def start(self) -> int:
        (self.root / "data" / "local" / "tmp").mkdir(parents=True, exist_ok=True)
        if self.isolation == "auto":
            self.isolation = "namespace" if self._probe_namespace() else "rewrite"
        elif self.isolation == "namespace" and not self._probe_namespace():
            raise RuntimeError("mount namespaces are not usable here")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.listen(8)
        self.port = sock.getsockname()[1]
        self._listener = sock
        self._stopping.clear()
        self._accept_thread = threading.Thread(target=self._accept_loop,
                                               name="adbd-standin-accept",
                                               daemon=True)
        self._accept_thread.start()
        return self.port

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._listener.close()
        if self._accept_thread is not None:
            self._accept_thread.join(timeout)
        self.drop_connections()
        with self._lock:
            procs = list(self._procs.values())
        for p in procs:
            _kill_group(p)
        deadline = time.monotonic() + timeout
        for p in procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:  # pragma: no cover
                pass

    def drop_connections(self) -> int:
        """Abruptly drop every host connection (like pulling the cable)."""
        with self._lock:
            conns = list(self._connections)
        for c in conns:
            c.abort()
        return len(conns)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    @property
    def connection_count(self) -> int:
        with self._lock:
            return len(self._connections)

    @property
    def running_commands(self) -> int:
        """Number of shell commands currently running on the device."""
        with self._lock:
            return len(self._procs)

    def banner(self) -> bytes:
        props = "".join("%s=%s;" % kv for kv in self.props)
        return ("device::%sfeatures=%s" % (props, ",".join(self.features))).encode()

    def device_path(self, path: str) -> Path:
        """Host path of a device path, resolved inside the sandbox."""
        return self._resolve(path, follow_last=True)

    # -- internals ------------------------------------------------------------------
    def _log(self, fmt: str, *args) -> None:
        if self.verbose:
            sys.stderr.write("[adbd-standin:%d] %s\n" % (self.port, fmt % args))

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                sock, addr = self._listener.accept()
            except OSError:
                break
            if self._stopping.is_set():
                sock.close()
                break
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Connection(self, sock, addr)
            with self._lock:
                self._connections.append(conn)
            threading.Thread(target=conn.run, name="adbd-standin-conn",
                             daemon=True).start()

    def _connection_ended(self, conn: _Connection) -> None:
        with self._lock:
            if conn in self._connections:
                self._connections.remove(conn)

    def _take_fault(self, name: str) -> bool:
        """Consume one use of fault ``name``; disarm it when its count runs out."""
        with self._lock:
            times = getattr(self, name + "_times")
            if times is None:
                return True
            if times <= 0:
                return False
            times -= 1
            setattr(self, name + "_times", times)
            return True

    def _service_handler(self, service: str):
        self.services.append(service)
        if service.startswith("shell:") or service.startswith("exec:"):
            cmd = service.split(":", 1)[1]
            pattern = self.fail_shell_pattern
            if (pattern is not None and cmd and self.fail_shell_refuse
                    and re.search(pattern, cmd) and self._take_fault("fail_shell")):
                self.shell_commands.append(cmd)
                return None
            return lambda stream: self._serve_shell(stream, cmd)
        if service == "sync:":
            return self._serve_sync
        return None

    def _run_service(self, handler, stream: _Stream) -> None:
        try:
            handler(stream)
        except Exception as exc:  # keep the device alive whatever happens
            self._log("service %s crashed: %r", stream.service, exc)
        finally:
            stream.close()

    # -- shell ---------------------------------------------------------------------
    def _probe_namespace(self) -> bool:
        if shutil.which("unshare") is None or shutil.which("mount") is None:
            return False
        try:
            self._ensure_mountpoints()
            p = subprocess.run(self._shell_argv("true"), stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               env=self._shell_env(), timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return False
        return p.returncode == 0

    def _ensure_mountpoints(self) -> None:
        for d in self.mapped_dirs:
            (self.root / d).mkdir(parents=True, exist_ok=True)
            # The host needs an (empty) mount point for the bind mount; it is
            # only ever covered inside the private namespace.
            os.makedirs("/" + d, exist_ok=True)

    def _shell_env(self) -> Dict[str, str]:
        return {"PATH": SHELL_PATH, "HOME": "/", "TMPDIR": "/data/local/tmp",
                "ANDROID_DATA": "/data", "ANDROID_ROOT": "/system",
                "LANG": "C", "TERM": "dumb"}

    def _shell_argv(self, cmd: str) -> List[str]:
        argv = ["unshare", "--mount", "--propagation", "private", "--",
                "/bin/sh", "-c", _NS_SCRIPT, "adbd-standin", cmd]
        for d in self.mapped_dirs:
            argv += [str(self.root / d), "/" + d]
        return argv

    def _rewrite(self, cmd: str) -> str:
        # Fallback only: textual /data -> <sandbox>/data substitution.
        alts = "|".join(re.escape(d) for d in self.mapped_dirs)
        return re.sub(r"(?<![\w./-])/(%s)(?=/|\b|$)" % alts,
                      lambda m: str(self.root) + "/" + m.group(1), cmd)

    def _serve_shell(self, stream: _Stream, cmd: str) -> None:
        interactive = cmd == ""
        if cmd:
            self.shell_commands.append(cmd)
            pattern = self.fail_shell_pattern
            if (pattern is not None and re.search(pattern, cmd)
                    and self._take_fault("fail_shell")):
                stream.write(self.fail_shell_output.encode())
                return
        run = cmd if cmd else "exec /bin/sh"
        if self.isolation == "namespace":
            argv, cwd = self._shell_argv(run), "/"
        else:
            argv, cwd = ["/bin/sh", "-c", self._rewrite(run)], str(self.root)
        proc = subprocess.Popen(argv, cwd=cwd, env=self._shell_env(),
                                stdin=subprocess.PIPE if interactive else subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)
        with self._lock:
            self._procs[proc.pid] = proc
        stream.on_close.append(lambda: _kill_group(proc))
        try:
            if interactive:
                threading.Thread(target=self._pump_stdin, args=(stream, proc),
                                 daemon=True).start()
            fd = proc.stdout.fileno()
            while True:
                try:
                    data = os.read(fd, min(stream.conn.max_payload, 64 * 1024))
                except OSError:
                    break
                if not data or not stream.write(data):
                    break
        finally:
            _kill_group(proc)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:  # pragma: no cover
                pass
            proc.stdout.close()
            if proc.stdin:
                try:
                    proc.stdin.close()
                except OSError:
                    pass
            with self._lock:
                self._procs.pop(proc.pid, None)

    @staticmethod
    def _pump_stdin(stream: _Stream, proc: subprocess.Popen) -> None:
        while True:
            data = stream.read_some()
            if data is None:
                break
            try:
                proc.stdin.write(data)
                proc.stdin.flush()
            except (OSError, ValueError):
                break

    # -- filesystem -------------------------------------------------------------------
    def _resolve(self, path: str, follow_last: bool) -> Path:
        """Map a device path into the sandbox, following symlinks inside it.

        Absolute symlink targets are interpreted relative to the sandbox root,
        so nothing can resolve outside the sandbox.
        """
        if not path.startswith("/"):
            path = "/" + path
        parts = [p for p in path.split("/") if p]
        done: List[str] = []
        hops = 0
        while parts:
            name = parts.pop(0)
            if name == ".":
                continue
            if name == "..":
                if done:
                    done.pop()
                continue
            candidate = self.root.joinpath(*done, name)
            if (parts or follow_last) and candidate.is_symlink():
                hops += 1
                if hops > 40:
                    raise OSError(errno.ELOOP, "Too many levels of symbolic links")
                target = os.readlink(candidate)
                tparts = [p for p in target.split("/") if p]
                if target.startswith("/"):
                    done = []
                parts = tparts + parts
                continue
            done.append(name)
        return self.root.joinpath(*done)

    def _writable(self, path: str) -> bool:
        norm = posixpath.normpath("/" + path.lstrip("/"))
        top = norm.split("/")[1] if norm != "/" else ""
        return top in self.mapped_dirs and norm != "/" + top

    # -- sync ----------------------------------------------------------------------
    def _serve_sync(self, stream: _Stream) -> None:
        out = _SyncWriter(stream)
        while True:
            hdr = stream.read_exact(_SYNC_HDR.size)
            if hdr is None:
                return
            ident, length = _SYNC_HDR.unpack(hdr)
            if ident == b"QUIT":
                out.flush()
                return
            if ident not in (b"STAT", b"LIST", b"RECV", b"SEND"):
                out.fail("unknown sync command %r" % ident)
                out.flush()
                return
            if length > SYNC_PATH_MAX:
                out.fail("path too long")
                out.flush()
                return
            raw = stream.read_exact(length)
            if raw is None:
                return
            arg = raw.decode("utf-8", "surrogateescape")
            if ident == b"STAT":
                self._sync_stat(out, arg)
            elif ident == b"LIST":
                self._sync_list(out, arg)
            elif ident == b"RECV":
                if not self._sync_recv(out, arg):
                    return
            else:
                if not self._sync_send(stream, out, arg):
                    return
            if not out.flush():
                return

    def _sync_stat(self, out: "_SyncWriter", path: str) -> None:
        try:
            st = os.lstat(self._resolve(path, follow_last=False))
            out.put(struct.pack("<4sIII", b"STAT", st.st_mode & 0xFFFFFFFF,
                                st.st_size & 0xFFFFFFFF, int(st.st_mtime) & 0xFFFFFFFF))
        except OSError:
            out.put(struct.pack("<4sIII", b"STAT", 0, 0, 0))

    def _sync_list(self, out: "_SyncWriter", path: str) -> None:
        try:
            host = self._resolve(path, follow_last=True)
            entries = sorted(os.listdir(host))
        except OSError:
            entries = []
            host = None
        for name in entries:
            try:
                st = os.lstat(os.path.join(host, name))
            except OSError:
                continue
            bname = name.encode("utf-8", "surrogateescape")
            out.put(struct.pack("<4sIIII", b"DENT", st.st_mode & 0xFFFFFFFF,
                                st.st_size & 0xFFFFFFFF, int(st.st_mtime) & 0xFFFFFFFF,
                                len(bname)) + bname)
            if not out.flush_if_full():
                return
        out.put(struct.pack("<4sIIII", b"DONE", 0, 0, 0, 0))

    def _sync_recv(self, out: "_SyncWriter", path: str) -> bool:
        try:
            f = open(self._resolve(path, follow_last=True), "rb")
        except OSError as exc:
            out.fail(exc.strerror or str(exc))
            return True
        with f:
            while True:
                try:
                    chunk = f.read(SYNC_DATA_MAX)
                except OSError as exc:
                    out.fail(exc.strerror or str(exc))
                    return True
                if not chunk:
                    break
                out.put(_SYNC_HDR.pack(b"DATA", len(chunk)) + chunk)
                if not out.flush_if_full():
                    return False
        out.put(_SYNC_HDR.pack(b"DONE", 0))
        return True

    def _sync_send(self, stream: _Stream, out: "_SyncWriter", spec: str) -> bool:
        path, sep, mode_s = spec.rpartition(",")
        error: Optional[str] = None
        mode = 0o100644
        if not sep:
            path, error = spec, "missing mode in SEND %r" % spec
        else:
            try:
                mode = int(mode_s)
            except ValueError:
                error = "bad mode in SEND %r" % spec
        is_link = stat.S_ISLNK(mode)
        host: Optional[Path] = None
        fd = -1
        if error is None and not self._writable(path):
            error = "couldn't create file: Read-only file system"
        if error is None and path.endswith("/"):
            error = "couldn't create file: Is a directory"
        if error is None:
            try:
                host = self._resolve(path, follow_last=False)
                host.parent.mkdir(parents=True, exist_ok=True)
                try:
                    st = os.lstat(host)
                    if stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
                        os.unlink(host)
                except FileNotFoundError:
                    pass
                if not is_link:
                    fd = os.open(host, os.O_WRONLY | os.O_CREAT | os.O_EXCL
                                 | os.O_CLOEXEC, mode & 0o7777)
                    os.fchmod(fd, mode & 0o7777)
            except OSError as exc:
                error = "couldn't create file: %s" % (exc.strerror or exc)

        cut = self.cut_push_after
        if cut is not None and error is None and not is_link:
            if not self._take_fault("cut_push"):
                cut = None
        link_target = bytearray()
        written = 0
        record = {"path": path, "mode": mode & 0o7777, "size": 0,
                  "complete": False, "fault": None}
        self.pushes.append(record)
        try:
            while True:
                hdr = stream.read_exact(_SYNC_HDR.size)
                if hdr is None:
                    return False
                ident, length = _SYNC_HDR.unpack(hdr)
                if ident == b"DATA":
                    if length > SYNC_DATA_MAX:
                        out.fail("oversize data message")
                        out.flush()
                        return False
                    data = stream.read_exact(length)
                    if data is None:
                        return False
                    if error is not None:
                        continue  # keep draining until DONE, then report
                    if is_link:
                        link_target += data
                        continue
                    if cut is not None and written + len(data) >= cut:
                        os.write(fd, data[: cut - written])
                        written = cut
                        record.update(size=written, fault="cut")
                        os.close(fd)
                        fd = -1
                        self._log("fault: cutting push of %s after %d bytes", path, cut)
                        stream.conn.abort()
                        return False
                    try:
                        view = memoryview(data)
                        while view:
                            n = os.write(fd, view)
                            view = view[n:]
                        written += len(data)
                    except OSError as exc:
                        error = exc.strerror or str(exc)
                elif ident == b"DONE":
                    mtime = length
                    if error is not None:
                        out.fail(error)
                        out.flush()
                        return False
                    if is_link:
                        os.symlink(bytes(link_target).decode("utf-8", "surrogateescape"),
                                   host)
                        written = len(link_target)
                    else:
                        os.close(fd)
                        fd = -1
                        trunc = self.truncate_push_to
                        if (trunc is not None and trunc < written
                                and self._take_fault("truncate_push")):
                            os.truncate(host, trunc)
                            written = trunc
                            record["fault"] = "truncated"
                        os.utime(host, (mtime, mtime))
                    record.update(size=written, complete=True)
                    out.put(_SYNC_HDR.pack(b"OKAY", 0))
                    return True
                else:
                    out.fail("invalid data message %r" % ident)
                    out.flush()
                    return False
        finally:
            if fd >= 0:
                os.close(fd)


class _SyncWriter:
    """Buffers sync responses and sends them as flow-controlled WRTEs."""

    def __init__(self, stream: _Stream):
        self.stream = stream
        self.buf = bytearray()

    def put(self, data: bytes) -> None:
        self.buf += data

    def fail(self, message: str) -> None:
        msg = message.encode("utf-8", "replace")
        self.put(_SYNC_HDR.pack(b"FAIL", len(msg)) + msg)

    def flush(self) -> bool:
        if not self.buf:
            return True
        data = bytes(self.buf)
        self.buf.clear()
        return self.stream.write(data)

    def flush_if_full(self) -> bool:
        if len(self.buf) >= self.stream.conn.max_payload:
            return self.flush()
        return True


def _kill_group(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="adbd stand-in (device side of the adb protocol)")
    ap.add_argument("--port", type=int, default=0, help="TCP port (0 = pick a free one)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--root", required=True, help="sandbox directory = device filesystem root")
    ap.add_argument("--isolation", choices=["auto", "namespace", "rewrite"], default="auto")
    ap.add_argument("--cut-push-after", type=int, default=None, metavar="N")
    ap.add_argument("--truncate-push-to", type=int, default=None, metavar="N")
    ap.add_argument("--fail-shell-pattern", default=None, metavar="REGEX")
    ap.add_argument("--verbose", "-v", action="store_true")
    args = ap.parse_args(argv)

    dev = AdbdStandin(args.root, host=args.host, port=args.port,
                      isolation=args.isolation, verbose=args.verbose)
    dev.cut_push_after = args.cut_push_after
    dev.truncate_push_to = args.truncate_push_to
    dev.fail_shell_pattern = args.fail_shell_pattern
    port = dev.start()
    print("adbd-standin listening on %s:%d (root=%s, isolation=%s)"
          % (args.host, port, dev.root, dev.isolation), flush=True)
    def _interrupt(*_):
        # Only raise here: taking locks in a signal handler can deadlock.
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        dev.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
