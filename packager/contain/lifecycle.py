"""Nothing outlives edgepack: child processes die with it and its temp dirs go, whatever ends it.

A ``finally`` block covers normal exits, errors and Ctrl-C, but not SIGKILL (or an OOM kill).
Two mechanisms cover that too:

* ``die_with_parent()`` (``PR_SET_PDEATHSIG``, Linux): called in a child, the kernel signals it
  when edgepack dies. Used by the TensorFlow child (:mod:`packager.contain.isolate`) and, through
  ``preexec``, by the device-script runs of the host emulator.
* a *reaper*: one tiny stdlib-only Python process per edgepack process, in its own session (so a
  Ctrl-C to the terminal's process group does not reach it), reading registrations from a pipe.
  When the pipe reaches end-of-file, i.e. when edgepack has exited for whatever reason, it kills
  the process groups and removes the directories still registered, then exits. Work that ends
  normally unregisters what it cleaned up itself.

Temp dirs are created with :func:`temp_dir` (registered at once). The reaper starts lazily, on
the first registration, and is skipped where there is no ``fork`` (then only ``finally`` counts).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading

PR_SET_PDEATHSIG = 1

_REAPER_CODE = r"""
import json, os, shutil, signal, sys
for s in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM, signal.SIGPIPE):
    signal.signal(s, signal.SIG_IGN)
os.chdir("/")
live = {}
for line in sys.stdin.buffer:
    try:
        op, kind, value = json.loads(line)
    except ValueError:
        continue
    if op == "+":
        live[(kind, value)] = True
    else:
        live.pop((kind, value), None)
for (kind, value) in list(live):
    try:
        if kind == "pgid":
            os.killpg(int(value), signal.SIGKILL)
        elif kind == "pid":
            os.kill(int(value), signal.SIGKILL)
    except OSError:
        pass
for (kind, value) in list(live):
    if kind == "dir":
        shutil.rmtree(value, ignore_errors=True)
"""

_lock = threading.Lock()
_reaper: subprocess.Popen | None = None
_reaper_pid_owner: int | None = None


def _libc_prctl():
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _libc_prctl()


def die_with_parent(sig: int = signal.SIGKILL, parent: int | None = None) -> bool:
    """In a child: ask the kernel for ``sig`` when the parent dies. If ``parent`` is given and it
    is already gone (it died before this call), exit at once."""
    if _PRCTL is None:
        return False
    ok = _PRCTL(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    if parent is not None and os.getppid() != parent:
        os._exit(1)
    return ok


def preexec() -> None:
    """``preexec_fn`` for subprocess: the program dies with edgepack (SIGKILL)."""
    if _PRCTL is not None:
        _PRCTL(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)


def popen_kwargs(confine_to: list | None = None, readable: list | None = None) -> dict:
    """Keyword arguments for subprocess.run/Popen that tie the child to this process, and with
    ``confine_to`` also let it write only below those directories, read only below ``readable`` (and the
    system's libraries, :func:`packager.contain.sandbox.system_reads`) and open no socket
    (:mod:`packager.contain.sandbox`)."""
    if confine_to is None:
        return {"preexec_fn": preexec} if _PRCTL is not None else {}
    from . import sandbox
    dirs = [os.fspath(d) for d in confine_to]
    reads = None if readable is None else [os.fspath(d) for d in readable] + sandbox.system_reads()
    sandbox.abi_version()  # resolve libc, the syscall and libseccomp before fork, not in the child
    sandbox.sockets_deniable()

    def preexec_confined() -> None:
        preexec()
        try:
            sandbox.confine(dirs, reads, system=False)
        except Exception:  # noqa: BLE001 - EDGEPACK_SANDBOX=require: do not run unconfined
            os._exit(126)
    return {"preexec_fn": preexec_confined}


def _send(op: str, kind: str, value) -> None:
    global _reaper, _reaper_pid_owner
    if os.environ.get("EDGEPACK_NO_REAPER") or not hasattr(os, "fork"):
        return
    with _lock:
        if _reaper is not None and _reaper_pid_owner != os.getpid():  # inherited across fork: not ours
            _reaper = None
        if _reaper is None or _reaper.poll() is not None:
            if op == "-":
                return
            try:
                _reaper = subprocess.Popen([sys.executable, "-S", "-E", "-c", _REAPER_CODE], stdin=subprocess.PIPE,
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                           start_new_session=True, close_fds=True)
                _reaper_pid_owner = os.getpid()
            except OSError:
                _reaper = None
                return
        try:
            _reaper.stdin.write((json.dumps([op, kind, value]) + "\n").encode())
            _reaper.stdin.flush()
        except (OSError, ValueError):
            pass


def register_dir(path) -> None:
    """Have the reaper remove directory ``path`` if edgepack dies before :func:`unregister_dir` (starts the reaper on
    first use)."""
    _send("+", "dir", os.fspath(path))


def unregister_dir(path) -> None:
    """Forget directory ``path``: it was removed normally."""
    _send("-", "dir", os.fspath(path))


def register_process(pid: int, group: bool = False) -> None:
    """Have the reaper SIGKILL process ``pid`` (its process group with ``group``) if edgepack dies before
    :func:`unregister_process`."""
    _send("+", "pgid" if group else "pid", int(pid))


def unregister_process(pid: int, group: bool = False) -> None:
    """Forget process ``pid`` (process group with ``group``): it ended normally."""
    _send("-", "pgid" if group else "pid", int(pid))


@contextlib.contextmanager
def temp_dir(prefix: str, dir: str | None = None):
    """``tempfile.TemporaryDirectory`` that is also removed when edgepack is killed."""
    path = tempfile.mkdtemp(prefix=prefix, dir=dir)
    register_dir(path)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        unregister_dir(path)


@contextlib.contextmanager
def exclusive(lock: "os.PathLike | str", what: str, progress=None):
    """Hold an exclusive lock (``flock`` on the file ``lock``, created if missing) for the ``with`` block; it goes
    with the process, however that ends. When another process holds it, ``progress`` is told who (pid, since)
    and this one waits: two builds to one ``-o``, or two creations of one runtime environment, run one after
    the other instead of replacing each other's work."""
    import fcntl
    import time
    path = os.fspath(lock)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another edgepack"
            if progress:
                progress(f"waiting: {holder} is {what}")
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"edgepack pid {os.getpid()} since {time.strftime('%H:%M:%S')}".encode(), 0)
        yield
    finally:
        os.close(fd)
