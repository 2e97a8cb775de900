"""Run TensorFlow work (loading a model, converting it, computing reference outputs) in a child
process with an address-space limit and a timeout. Models are programs: a hostile or broken one
ends as an edgepack error, never as a hung or crashed edgepack. The parent never imports
TensorFlow.

The child confines itself with Landlock where the kernel has it (:mod:`packager.contain.sandbox`): it can
write only below a scratch directory (its TMPDIR, removed afterwards), open no TCP connection
and signal no process outside it, so a hostile model that gets past the checks in
:mod:`packager.load.safety` still cannot write a file elsewhere.

Limits: ``EDGEPACK_MEMORY_MB`` (default 8192, address space of the child) and
``EDGEPACK_TIMEOUT`` (seconds, default 1800). ``EDGEPACK_IN_PROCESS=1`` runs jobs in the calling
process instead (faster for tests and debugging; no containment).
"""
from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import traceback

from ..errors import ConversionError, EdgepackError
from . import wire

DEFAULT_MEMORY_MB = 8192
DEFAULT_TIMEOUT = 1800


def _limits() -> tuple[int, float]:
    try:
        memory = int(os.environ.get("EDGEPACK_MEMORY_MB", DEFAULT_MEMORY_MB))
        timeout = float(os.environ.get("EDGEPACK_TIMEOUT", DEFAULT_TIMEOUT))
    except ValueError:
        raise ConversionError("EDGEPACK_MEMORY_MB / EDGEPACK_TIMEOUT must be numbers") from None
    return memory, timeout


_STAGE: dict = {"conn": None, "local": None}


def crash_seam(point: str) -> None:
    """Test seam: ``EDGEPACK_CRASH_AT=<point>`` crashes this process there with SIGSEGV, as TensorFlow's
    converter does on some models, so tests can show that one recipe's crash stays that recipe's."""
    if os.environ.get("EDGEPACK_CRASH_AT") == point and not in_process():
        os.kill(os.getpid(), signal.SIGSEGV)


def stage(message: str, path: str | None = None) -> None:
    """Called by jobs: tell the parent what is running now (shown as progress, and named if the
    child dies there); ``path`` names the conversion path being tried, so a crash on one path
    lets the parent try the others. In-process, it goes straight to the progress callback. Only the main thread
    reports: a stage is what a crash is blamed on, and the reference run beside a conversion
    (:class:`packager.convert.jobs.Later`) must not take that from the conversion (nor interleave on the pipe)."""
    import threading
    if threading.current_thread() is not threading.main_thread():
        return
    conn = _STAGE["conn"]
    if conn is not None:
        try:
            conn.send_bytes(wire.encode(("stage", str(message), None if path is None else str(path))))
        except Exception:  # noqa: BLE001, S110 - progress is best effort
            pass
    elif _STAGE["local"] is not None:
        _STAGE["local"](message)


def _silence_stdio() -> None:
    """TensorFlow, absl and Keras write to fds 1 and 2 ("Saved artifact at ...", oneDNN banners):
    the child's stdout/stderr go to /dev/null so the parent's --json stays one document."""
    if os.environ.get("EDGEPACK_DEBUG"):
        return
    import sys
    sys.stdout.flush()
    sys.stderr.flush()
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.dup2(null, 2)
    os.close(null)


def _child(conn, func, args, memory_mb: int, parent: int | None = None, scratch: str | None = None) -> None:
    from . import lifecycle
    lifecycle.die_with_parent(parent=parent)  # a killed edgepack takes TensorFlow with it
    if scratch:  # every temp file TensorFlow or a loader makes goes where the parent removes it
        import tempfile
        os.environ["TMPDIR"] = scratch
        os.environ["KERAS_HOME"] = scratch   # not ~/.keras: the home directory is not readable in the sandbox
        tempfile.tempdir = scratch
    _silence_stdio()
    try:
        import resource
        limit = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ImportError, ValueError, OSError):
        pass
    _STAGE["conn"] = conn
    confined = 0
    try:
        if scratch:  # from here on this process writes only below scratch (packager.contain.sandbox)
            from . import sandbox
            confined = sandbox.confine([scratch], readable=paths_in(args))
        result = ("ok", func(*args))
    except EdgepackError as exc:
        result = ("error", exc)
    except OSError as exc:
        from ..errors import disk_full
        problem = disk_full(exc)
        result = ("error", problem) if problem is not None else \
            ("crash", f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}",
             traceback.format_exc()[-4000:])
    except MemoryError:
        result = ("error", ConversionError(f"the model needed more than {memory_mb} MiB",
                                           hint="raise EDGEPACK_MEMORY_MB if the model is really that large"))
    except BaseException as exc:  # noqa: BLE001 - reported as one line by the parent
        line = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
        result = ("crash", line, traceback.format_exc()[-4000:])
        if confined and ("Permission denied" in str(exc) or isinstance(exc, PermissionError)):
            result = ("error", ConversionError(
                f"the model tried to write outside edgepack's scratch directory, which the sandbox blocked ({line})",
                hint="a model that writes files while loading or running is hostile or broken; "
                     "EDGEPACK_SANDBOX=0 lifts the sandbox, only for a model you trust"))
    try:
        message = wire.encode(result)
    except (TypeError, ValueError) as exc:  # a result that is not plain data: a bug of the job
        message = wire.encode(("crash", f"cannot return the result: {exc}", ""))
    conn.send_bytes(message)
    conn.close()


def _receive(conn) -> tuple:
    """One message from the child, as plain data only (:mod:`packager.contain.wire`; never a pickle):
    ``("stage", message, path)``, ``("ok", value)``, ``("error", EdgepackError)`` or ``("crash", line, trace)``.
    Anything else ends the job as a ConversionError (exit 3): the child runs the user's model, so what it
    sends is hostile input."""
    try:
        data = conn.recv_bytes(wire.MAX_MESSAGE)
    except OSError as exc:  # longer than the cap, or a broken pipe
        raise _garbage(f"unreadable ({exc})") from None
    try:
        msg = wire.decode(data)
    except wire.WireError as exc:
        raise _garbage(str(exc)) from None
    shapes = {"stage": (str, (str, type(None))), "ok": (object,), "error": (EdgepackError,), "crash": (str, str)}
    if not (isinstance(msg, tuple) and msg and msg[0] in shapes and len(msg) == len(shapes[msg[0]]) + 1
            and all(isinstance(x, t) for x, t in zip(msg[1:], shapes[msg[0]]))):
        raise _garbage("not one of stage/ok/error/crash")
    return msg


def _garbage(why: str) -> ConversionError:
    return ConversionError(f"the TensorFlow process sent something that is not edgepack's plain data: {why[:200]}",
                           hint="the model (or a library it loads) wrote to edgepack's channel; nothing it sent was "
                                "run. A model that does this is hostile or broken: do not use --trust-model on it")


def paths_in(args) -> list[str]:
    """The existing files and directories named by a job's arguments (strings and paths, in lists, tuples and dict
    values too): the model, the data, the calibration set, a .tflite's reference; what the sandbox lets the job read besides the Python
    installation (:func:`packager.contain.sandbox.system_reads`)."""
    found = []
    for a in args:
        if isinstance(a, (list, tuple)):
            found += paths_in(a)
        elif isinstance(a, dict):
            found += paths_in(list(a.values()))
        elif isinstance(a, (str, os.PathLike)) and str(a) and os.path.exists(a):
            found += [os.path.abspath(a), os.path.realpath(a)]
    return list(dict.fromkeys(found))


def _died(code, stage: str, memory_mb: int) -> ConversionError:
    """The child ended without an answer: say where, and the way out that fits how it died."""
    if code is not None and code < 0:
        name = signal.Signals(-code).name
        if -code == signal.SIGKILL:
            return ConversionError(f"the TensorFlow process was killed while {stage} (SIGKILL, often the kernel's "
                                   "out-of-memory killer)",
                                   hint=f"free memory or lower EDGEPACK_MEMORY_MB (now {memory_mb} MiB) so the limit "
                                        "is hit first")
        return ConversionError(f"TensorFlow crashed ({name}) while {stage}",
                               hint="a crash inside TensorFlow's converter, not an edgepack check: try another "
                                    "--quantize recipe (dynamic and float16 avoid calibration), and report it with "
                                    "EDGEPACK_DEBUG=1 output")
    return ConversionError(f"the TensorFlow process exited (code {code}) while {stage}",
                           hint="rerun with EDGEPACK_DEBUG=1 to see its output")


@contextlib.contextmanager
def _main_hidden():
    """A spawned child re-imports the caller's ``__main__`` script unless it is guarded by
    ``if __name__ == "__main__"``: a plain script calling ``packager.build()`` would then run
    again in the child and die. The job needs nothing from ``__main__`` (it is a function of
    this package), so the child is started while ``__main__`` looks like an interactive session."""
    import sys
    import types
    main = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        if main is not None:
            sys.modules["__main__"] = main


def in_process() -> bool:
    """True when ``EDGEPACK_IN_PROCESS`` is set and not 0: :func:`run` then calls the job in this process instead of
    a spawned child."""
    return os.environ.get("EDGEPACK_IN_PROCESS", "") not in ("", "0")


def run(func, *args, what: str = "loading and converting the model", progress=None):
    """``func(*args)`` in a spawned child (module-level function, picklable args; the result must be plain data, :mod:`packager.contain.wire`).
    ``progress(message)`` receives the stages the child announces with :func:`stage`."""
    if in_process():
        _STAGE["local"] = progress
        try:
            return func(*args)
        finally:
            _STAGE["local"] = None
    memory_mb, timeout = _limits()
    from . import lifecycle
    with lifecycle.temp_dir("edgepack-tf-") as scratch:
        return _run(func, args, what, memory_mb, timeout, scratch, progress)


def _run(func, args, what, memory_mb, timeout, scratch, progress=None):
    from . import lifecycle
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(child, func, args, memory_mb, os.getpid(), scratch), daemon=True)
    with _main_hidden():
        proc.start()
    lifecycle.register_process(proc.pid)
    child.close()
    import time
    deadline = time.monotonic() + timeout
    current, path = what, None
    try:
        while True:
            if not parent.poll(max(0.0, deadline - time.monotonic())):
                raise ConversionError(f"{current} took longer than {timeout:.0f} s in all; stopped",
                                      hint="raise EDGEPACK_TIMEOUT if the model is really that slow")
            try:
                result = _receive(parent)
            except EOFError:
                proc.join(10)
                error = _died(proc.exitcode, current, memory_mb)
                error.path = path
                raise error from None
            if result[0] != "stage":
                break
            current, path = result[1], result[2]
            if progress:
                progress(current)
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join(10)
        parent.close()
        lifecycle.unregister_process(proc.pid)
    if result[0] == "ok":
        return result[1]
    if result[0] == "error":
        raise result[1]
    if os.environ.get("EDGEPACK_DEBUG"):
        raise RuntimeError(result[2])
    raise ConversionError(f"{what} failed: {result[1]}",
                          hint="rerun with EDGEPACK_DEBUG=1 for the traceback and report it if the model is valid")
