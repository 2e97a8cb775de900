"""A containment boundary for the TensorFlow child: Landlock (Linux >= 5.13, unprivileged).

Models are programs, and the op/layer allowlists (:mod:`packager.load.safety`) only know the bypasses
found so far. So the child that loads, converts and runs a model (:mod:`packager.contain.isolate`) also
restricts itself, irreversibly and for all its descendants, before any model is read:

* file system: nothing may be created, written, truncated, renamed or removed anywhere except
  below its scratch directory (its ``TMPDIR``, removed by the parent afterwards) and ``/dev/null``;
  reading stays allowed (TensorFlow, the model, the data);
* network (Landlock ABI >= 4): no TCP connect or bind;
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

from ..errors import EnvironmentProblem

_SYS_CREATE_RULESET, _SYS_ADD_RULE, _SYS_RESTRICT_SELF = 444, 445, 446   # same number on every arch
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
_PR_SET_NO_NEW_PRIVS = 38

FS_WRITE_FILE = 1 << 1
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


def status() -> str:
    """One line for `edgepack doctor` and the report."""
    abi = abi_version()
    if mode() == "off":
        return "off (EDGEPACK_SANDBOX=0)"
    if not abi:
        return "unavailable: this kernel has no Landlock; TensorFlow work runs in a plain child process"
    return f"Landlock ABI {abi}: writes only below a scratch dir" + ("; no TCP" if abi >= 4 else "")


def confine(writable: list[str]) -> int:
    """Restrict this process (and all it starts) to writing below ``writable``. Returns the ABI
    used, 0 when not applied (unavailable or EDGEPACK_SANDBOX=0). Raises EnvironmentProblem when
    EDGEPACK_SANDBOX=require and it cannot be applied."""
    if mode() == "off":
        return 0
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
    attr = _RulesetAttr(dir_rights, NET_BIND_TCP | NET_CONNECT_TCP if abi >= 4 else 0,
                        SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0)
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8
    fd = libc.syscall(_SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    if fd < 0:
        return _failed("landlock_create_ruleset", ctypes.get_errno())
    try:
        for path in writable + ["/dev/null"]:
            try:
                pfd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                rights = dir_rights if os.path.isdir(path) else file_rights
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


def _failed(call: str, errno: int) -> int:
    if mode() == "require":
        raise EnvironmentProblem(f"cannot apply the Landlock sandbox: {call} failed ({os.strerror(errno)})",
                                 hint="unset EDGEPACK_SANDBOX=require to run without it")
    return 0
