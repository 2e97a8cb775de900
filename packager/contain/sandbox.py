"""A containment boundary for the TensorFlow child: Landlock (Linux >= 5.13, unprivileged).

Models are programs, and the op/layer allowlists (:mod:`packager.load.safety`) only know the bypasses
found so far. So the child that loads, converts and runs a model (:mod:`packager.contain.isolate`) also
restricts itself, irreversibly and for all its descendants, before any model is read:

* file system: nothing may be created, written, truncated, renamed or removed anywhere except
  below its scratch directory (its ``TMPDIR``, removed by the parent afterwards) and ``/dev/null``;
  with ``readable`` given, nothing may be read (or executed) outside it and :func:`system_reads` either:
  the Python installation and its packages, edgepack itself, the model and data passed to the job,
  shared libraries, and the few files of ``/proc``, ``/sys`` and ``/etc`` that TensorFlow asks for;
  not ``~/.ssh``, ``/etc/shadow`` or another process's ``/proc/PID/environ``;
* network: no socket of any family (IP, UDP, unix, netlink: a seccomp filter on ``socket`` and
  ``io_uring_setup``, through libseccomp's Python binding or pyseccomp; the pre-existing pipe to the
  parent is not a socket); Landlock ABI >= 4 also refuses TCP connect/bind;
* scope (ABI >= 6): no signals to processes outside the sandbox, no abstract unix sockets.

Why Landlock rather than user+mount+network namespaces: it needs no privileges and no
``unshare`` support (often disabled in containers and hardened distributions), it keeps the
file system view unchanged (TensorFlow, site-packages and the data are read where they are), and
it is inherited and cannot be lifted. Where the kernel lacks it, the child runs as before and
:func:`status` says so; ``EDGEPACK_SANDBOX=0`` turns it off (e.g. to debug), ``EDGEPACK_SANDBOX=require``
makes its absence an error.
"""
from __future__ import annotations

import ctypes
import os
import sys

from ..errors import EnvironmentProblem, UsageError

_SYS_CREATE_RULESET, _SYS_ADD_RULE, _SYS_RESTRICT_SELF = 444, 445, 446   # same number on every arch
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
_PR_SET_NO_NEW_PRIVS = 38

FS_EXECUTE = 1 << 0
FS_WRITE_FILE = 1 << 1
FS_READ_FILE = 1 << 2
FS_READ_DIR = 1 << 3
FS_REMOVE_DIR = 1 << 4
FS_REMOVE_FILE = 1 << 5
FS_MAKE_CHAR = 1 << 6
FS_MAKE_DIR = 1 << 7
FS_MAKE_REG = 1 << 8
FS_MAKE_SOCK = 1 << 9
FS_MAKE_FIFO = 1 << 10
FS_MAKE_BLOCK = 1 << 11
FS_MAKE_SYM = 1 << 12
FS_REFER = 1 << 13          # ABI 2
FS_TRUNCATE = 1 << 14       # ABI 3
NET_BIND_TCP = 1 << 0       # ABI 4
NET_CONNECT_TCP = 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0   # ABI 6
SCOPE_SIGNAL = 1 << 1


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


def abi_version() -> int:
    """Landlock ABI version of the running kernel (0: not available)."""
    if not sys.platform.startswith("linux"):
        return 0
    try:
        value = _libc().syscall(_SYS_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(_CREATE_RULESET_VERSION))
    except (OSError, AttributeError):
        return 0
    return int(value) if value > 0 else 0


def mode() -> str:
    """``EDGEPACK_SANDBOX`` as ``off`` (0, off, no, false), ``require``, or ``auto`` (anything else, unset included)."""
    value = os.environ.get("EDGEPACK_SANDBOX", "").strip().lower()
    if value in ("0", "off", "no", "false"):
        return "off"
    return "require" if value == "require" else "auto"


def unconfined_reason(in_process: bool = False) -> str | None:
    """Why a model loaded now would run unconfined (``EDGEPACK_SANDBOX=0``, no Landlock in this kernel,
    ``EDGEPACK_IN_PROCESS``), or None when the sandbox applies."""
    if in_process:
        return "EDGEPACK_IN_PROCESS=1 loads it in the edgepack process"
    if mode() == "off":
        return "EDGEPACK_SANDBOX=0"
    if not abi_version():
        return "this kernel has no Landlock"
    return None


def check_trust(trust_model: bool, in_process: bool = False) -> str | None:
    """The one-line warning for a model loaded unconfined (None when confined). ``--trust-model`` where the
    sandbox is missing (not turned off by the user) is refused: the user must say ``EDGEPACK_SANDBOX=0``."""
    reason = unconfined_reason(in_process)
    if reason is None:
        return None
    if trust_model and reason == "this kernel has no Landlock":
        raise UsageError("--trust-model needs the sandbox, and this kernel has no Landlock: the model's code would "
                         "run unconfined, able to read and write anything you can",
                         hint="set EDGEPACK_SANDBOX=0 to load it unconfined anyway (only for a model you trust), "
                              "or build on Linux >= 5.13 with Landlock enabled")
    return (f"the model was loaded without the sandbox ({reason}): its code could read and write anything this "
            "user can")


def status() -> str:
    """One line for `edgepack doctor` and the report."""
    abi = abi_version()
    if mode() == "off":
        return "off (EDGEPACK_SANDBOX=0)"
    if not abi:
        return "unavailable: this kernel has no Landlock; TensorFlow work runs in a plain child process"
    return (f"Landlock ABI {abi}: writes only below a scratch dir, reads only the Python installation, the model "
            "and its data" + ("; no socket of any family (seccomp)" if sockets_deniable() else
                              "; no TCP" if abi >= 4 else ""))


#: What any confined Python process reads besides its own paths (globs are not used: each must exist).
SYSTEM_READS = ("/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin", "/opt", "/etc/ld.so.cache", "/etc/ld.so.conf",
                "/etc/ld.so.conf.d", "/etc/localtime", "/etc/nsswitch.conf", "/etc/passwd", "/etc/group",
                "/etc/hosts", "/etc/host.conf", "/etc/resolv.conf", "/etc/os-release", "/etc/ssl", "/etc/pki",
                "/etc/alternatives", "/etc/mime.types", "/etc/debian_version",
                "/proc/self", "/proc/thread-self", "/proc/cpuinfo", "/proc/meminfo", "/proc/stat",
                "/proc/sys/kernel", "/proc/sys/vm/overcommit_memory", "/sys/devices/system/cpu",
                "/sys/devices/system/node", "/sys/fs/cgroup", "/dev/null", "/dev/zero", "/dev/urandom",
                "/dev/random")


def system_reads() -> list[str]:
    """Paths any confined Python may read: :data:`SYSTEM_READS`, this interpreter's installation
    (``sys.prefix``, ``sys.base_prefix``) and the entries of ``sys.path`` inside it, and the directory holding
    edgepack's ``packager`` and ``device_runtime``."""
    import sysconfig
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    prefixes = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix]
    paths = list(SYSTEM_READS) + prefixes + [here]
    # sys.path entries inside the installation only: `python -m` puts the working directory first, and a
    # working directory of $HOME would open ~/.ssh
    inside = [os.path.realpath(p) + os.sep for p in prefixes]
    paths += [p for p in sys.path if p and any((os.path.realpath(p) + os.sep).startswith(i) for i in inside)]
    paths += [v for v in sysconfig.get_paths().values() if v]
    return [os.path.realpath(p) for p in dict.fromkeys(paths)] + [p for p in dict.fromkeys(paths)]


def confine(writable: list[str], readable: list[str] | None = None, system: bool = True) -> int:
    """Restrict this process (and all it starts) to writing below ``writable`` and, with ``readable``,
    to reading and executing below ``readable``, ``writable`` and (``system``) :func:`system_reads` (a caller
    in a forked child passes them in ``readable``, computed before the fork, and ``system=False``); and to
    opening no socket (:func:`deny_sockets`). Returns the Landlock ABI used, 0 when not applied (unavailable or
    EDGEPACK_SANDBOX=0). Raises EnvironmentProblem when EDGEPACK_SANDBOX=require and it cannot be applied."""
    if mode() == "off":
        return 0
    deny_sockets()
    abi = abi_version()
    if not abi:
        if mode() == "require":
            raise EnvironmentProblem("EDGEPACK_SANDBOX=require, but this kernel has no Landlock",
                                     hint="Linux >= 5.13 with Landlock enabled (lsm=...,landlock), or unset it")
        return 0
    libc = _libc()
    dir_rights = (FS_WRITE_FILE | FS_REMOVE_DIR | FS_REMOVE_FILE | FS_MAKE_CHAR | FS_MAKE_DIR | FS_MAKE_REG
                  | FS_MAKE_SOCK | FS_MAKE_FIFO | FS_MAKE_BLOCK | FS_MAKE_SYM)
    file_rights = FS_WRITE_FILE
    if abi >= 2:
        dir_rights |= FS_REFER
    if abi >= 3:
        dir_rights |= FS_TRUNCATE
        file_rights |= FS_TRUNCATE
    read_rights = FS_READ_FILE | FS_READ_DIR | FS_EXECUTE
    handled = dir_rights | (read_rights if readable is not None else 0)
    attr = _RulesetAttr(handled, NET_BIND_TCP | NET_CONNECT_TCP if abi >= 4 else 0,
                        SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0)
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8
    fd = libc.syscall(_SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    if fd < 0:
        return _failed("landlock_create_ruleset", ctypes.get_errno())
    reads = [] if readable is None else list(readable) + (system_reads() if system else [])
    rules = [(p, True) for p in writable + ["/dev/null"]] + [(p, False) for p in reads]
    try:
        for path, write in rules:
            try:
                pfd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                is_dir = os.path.isdir(path)
                rights = (dir_rights if is_dir else file_rights) if write else 0
                if readable is not None:
                    rights |= read_rights if is_dir else FS_READ_FILE | FS_EXECUTE
                rule = _PathBeneathAttr(rights, pfd)
                if libc.syscall(_SYS_ADD_RULE, ctypes.c_int(fd), ctypes.c_int(_RULE_PATH_BENEATH),
                                ctypes.byref(rule), ctypes.c_uint32(0)) != 0:
                    return _failed("landlock_add_rule", ctypes.get_errno())
            finally:
                os.close(pfd)
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            return _failed("prctl(PR_SET_NO_NEW_PRIVS)", ctypes.get_errno())
        if libc.syscall(_SYS_RESTRICT_SELF, ctypes.c_int(fd), ctypes.c_uint32(0)) != 0:
            return _failed("landlock_restrict_self", ctypes.get_errno())
    finally:
        os.close(fd)
    return abi


def _seccomp():
    """libseccomp's own Python binding where installed, else pyseccomp (the same API over ctypes), else None."""
    try:
        import seccomp
        return seccomp
    except ImportError:
        pass
    try:
        import pyseccomp
        return pyseccomp
    except (ImportError, OSError):   # pyseccomp without libseccomp.so.2 raises OSError
        return None


def sockets_deniable() -> bool:
    """Whether :func:`deny_sockets` can work here (Linux with libseccomp and a binding for it)."""
    return sys.platform.startswith("linux") and _seccomp() is not None


def deny_sockets() -> bool:
    """Install a seccomp filter in this process (inherited by all it starts, kept across exec): ``socket``
    and ``io_uring_setup`` fail with EACCES, whatever the family: no IP, UDP, unix or netlink socket can be
    opened, so nothing reaches the network, an ssh ControlMaster socket or a local daemon. Returns False
    when not possible (no libseccomp); raises EnvironmentProblem then under EDGEPACK_SANDBOX=require."""
    lib = _seccomp()
    if lib is None:
        if mode() == "require":
            raise EnvironmentProblem("EDGEPACK_SANDBOX=require, but seccomp is not available (libseccomp.so.2 and "
                                     "pyseccomp are needed to refuse sockets)",
                                     hint="install libseccomp2 (Debian) and pyseccomp, or unset it")
        return False
    import errno as errnos
    try:
        f = lib.SyscallFilter(defaction=lib.ALLOW)
        for call in ("socket", "io_uring_setup"):
            try:
                f.add_rule(lib.ERRNO(errnos.EACCES), call)
            except (OSError, ValueError, RuntimeError):
                if call == "socket":
                    raise
        f.load()
    except (OSError, ValueError, RuntimeError) as exc:
        if mode() == "require":
            raise EnvironmentProblem(f"cannot apply the seccomp filter: {exc}",
                                     hint="unset EDGEPACK_SANDBOX=require to run without it") from None
        return False
    return True


def _failed(call: str, errno: int) -> int:
    if mode() == "require":
        raise EnvironmentProblem(f"cannot apply the Landlock sandbox: {call} failed ({os.strerror(errno)})",
                                 hint="unset EDGEPACK_SANDBOX=require to run without it")
    return 0
