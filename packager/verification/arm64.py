"""Run Python as aarch64 on an x86-64 host: qemu-user + a Debian arm64 root filesystem + the real
aarch64 wheels.

How it works (docs/arm64.md has the measurements):

1. **Root filesystem, once per (suite, Python).** ``debootstrap --foreign --arch=arm64
   --variant=minbase --include=pythonX.Y,libstdc++6`` downloads and verifies (signed Release, per-deb
   checksums) the Debian packages. The second stage (dpkg + maintainer scripts) would need binfmt_misc,
   which this code does not rely on, so every downloaded ``.deb`` is unpacked with ``dpkg-deb | tar``
   instead. Then: absolute symlinks are made relative (qemu's ``-L`` prefix resolves paths itself, so
   ``/etc/x -> /usr/y`` would otherwise point into the *host*), ``/dev /proc /sys /tmp /home /root
   /run ...`` are removed (those paths then fall through to the host's), ``ldconfig`` runs in a
   ``chroot`` through a copied qemu-aarch64-static, the standard library is byte-compiled by the
   emulated Python, and a Raspberry-Pi-4-like ``/proc/cpuinfo`` plus ``/sys/devices/system/cpu`` is
   written (see "fake CPU description" below).
2. **Packages, once per requirement set.** The host's pip installs ``requirements`` from aarch64
   wheels only (``--platform manylinux_2_17..2_<glibc of the suite>_aarch64 --python-version X.Y
   --implementation cp --abi cpXY --only-binary=:all: --target DIR``); the emulated Python then
   byte-compiles them. Several requirement sets share one root filesystem. With ``wheels`` (the entries of
   ``packager/runtimes.lock.json``) exactly those are installed: ``--require-hashes --no-deps -r FILE`` with one
   ``name==version --hash=sha256:...`` line each, and the site dir records them.
3. **Running.** ``qemu-aarch64-static -L ROOTFS -cpu cortex-a72 -E PYTHONPATH=SITE ...
   ROOTFS/usr/bin/pythonX.Y -s -B script.py ...``. With ``-L`` qemu looks every absolute path up in
   ROOTFS first and falls back to the host's path when it is not there, so the emulated process sees
   aarch64 libraries and the stdlib from ROOTFS and the host's files (bundle, ``--input``, ``--output``,
   ``/tmp``, ``$HOME``) at their usual absolute paths. No chroot, no bind mounts, no binfmt_misc.

Fake CPU description: qemu-user 7.x passes the host's ``/proc/cpuinfo`` and ``/sys/devices/system/cpu``
through. LiteRT's CPU detection reads them at ``Interpreter()`` time and ai-edge-litert 2.3 crashes
(SIGSEGV) on an x86 description. The root filesystem therefore carries an aarch64 description matching
the emulated CPU (Cortex-A72, 4 cores, as on a Raspberry Pi 4), which ``-L`` serves instead of the host's.

Cache layout (``cache_dir`` is owned by this module; everything else in it is left alone)::

    cache_dir/rootfs-<suite>-py<X.Y>-<key>/   root filesystem (key: suite, Python, layout version)
    cache_dir/site-<key>/                       site-packages   (key: rootfs key + requirements)
    cache_dir/.lock-<key>                       flock while building that entry
    cache_dir/.tmp-<kind>-<key>-*/              builds in progress; renamed into place when complete

A build happens in a temporary directory and is ``rename``-d into place only when complete, under an
flock; leftovers of an interrupted build are removed by the next build of the same key.

The library never prints: progress goes to the optional ``progress(message, fraction)`` callback
(``fraction`` in 0..1, or None for a detail line). Every subprocess has a timeout.
"""
from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

from ..errors import EnvironmentProblem, UsageError

Progress = Optional[Callable[[str, Optional[float]], None]]

LAYOUT_VERSION = 1            # bump to invalidate every cached root filesystem and site dir
QEMU_CPU = "cortex-a72"       # Raspberry Pi 4 (ARMv8.0-A + crc32; qemu's model adds the crypto extension)
DEFAULT_MIRROR = "http://deb.debian.org/debian"
EXTRA_DEBS = ("libstdc++6",)  # what the TFLite runtimes need besides Python itself
# Debian suites and the CPython they ship as pythonX.Y (used only for an early, clear error).
SUITE_PYTHON = {"bullseye": "3.9", "bookworm": "3.11", "trixie": "3.13"}


def suite_for(python_version: str) -> str | None:
    """The Debian suite whose arm64 root filesystem ships Python ``python_version`` ("3.11" -> "bookworm"), or None
    when none of :data:`SUITE_PYTHON` does (3.10, 3.12: arm64 emulation cannot run that Python)."""
    return next((s for s, v in SUITE_PYTHON.items() if v == str(python_version)), None)
FAKE_CPUS = 4

QEMU_NAMES = ("qemu-aarch64-static",)
QEMU_FIX = "apt-get install -y qemu-user-static"
DEBOOTSTRAP_FIX = "apt-get install -y debootstrap"
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")

# Timeouts (seconds) of every subprocess this module starts.
T_VERSION = 15
T_DEBOOTSTRAP = 1800
T_EXTRACT = 900
T_LDCONFIG = 120
T_COMPILE = 1800
T_SMOKE = 180
T_PIP = 1800
LOCK_WAIT = 3600

# Removed from the root filesystem so that these paths resolve to the host's (qemu -L falls back).
PRUNE = ("dev", "proc", "sys", "run", "tmp", "home", "root", "mnt", "media", "srv", "boot", "opt",
         "debootstrap", "var/tmp", "var/cache/apt", "var/lib/apt/lists", "usr/share/doc", "usr/share/man",
         "usr/share/info", "usr/share/locale", "usr/share/lintian")
# Guest variables that must not leak from the host into the emulated Python.
GUEST_UNSET = ("PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE", "PYTHONEXECUTABLE", "PYTHONPLATLIBDIR",
               "PYTHONPYCACHEPREFIX", "PYTHONSAFEPATH", "LD_PRELOAD", "LD_LIBRARY_PATH",
               "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "VIRTUAL_ENV")
COMPILE_EXCLUDE = r"[/\\](tests?|idle_test)[/\\]"
ROOTFS_MARKER = ".edgepack-rootfs.json"
SITE_MARKER = ".edgepack-site.json"


# --------------------------------------------------------------------------- public types
@dataclass(frozen=True)
class Arm64Python:
    """A prepared aarch64 Python.

    ``argv`` is self-contained: it sets the guest's environment (PYTHONPATH, no user site, no
    bytecode writes) through qemu's ``-E``/``-U`` and works whatever environment the caller passes.
    ``env`` holds extra variables to merge over the caller's environment; it is currently empty and
    exists so callers need not change if a future version needs one. Iterating an ``Arm64Python``
    yields ``argv``, so ``[*prepared, "script.py", ...]`` works as with a plain list.
    """

    argv: list
    env: dict
    rootfs: Path
    description: str
    site_dir: Optional[Path] = None
    packages: tuple = field(default=())
    wheels: tuple = field(default=(), compare=False)   # the locked wheels installed (runtime_lock entries)

    def __iter__(self) -> Iterator[str]:
        return iter(self.argv)


@dataclass(frozen=True)
class Check:
    """One line of the arm64 part of `edgepack doctor`: ``name``, ``ok``, ``detail``, and the ``fix`` command (None
    when there is nothing to fix)."""
    name: str
    ok: bool
    detail: str
    fix: Optional[str]


# --------------------------------------------------------------------------- keys and paths
def default_cache_dir() -> Path:
    """Where the emulator keeps arm64 environments: ``env_dir()/arm64`` (``$EDGEPACK_ENV_DIR``,
    else ``$EDGEPACK_CACHE_DIR``, default ``~/.cache/edgepack``)."""
    from ..paths import env_dir
    return env_dir() / "arm64"


def normalize_requirements(requirements) -> list:
    """Whitespace-collapsed, de-duplicated, sorted: the order of requirements does not matter to pip."""
    if isinstance(requirements, str):
        raise UsageError("requirements must be a list of requirement strings, not one string",
                         hint='pass e.g. ["ai-edge-litert==2.3.*", "numpy>=1.23,<3"]')
    out = set()
    for req in requirements:
        req = " ".join(str(req).split())
        if not req:
            continue
        if req.startswith("-"):
            raise UsageError(f"pip options are not accepted as requirements: {req!r}",
                             hint="pass only requirement specifiers such as 'numpy<2'")
        out.add(req)
    return sorted(out)


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def rootfs_key(suite: str = "bookworm", python_version: str = "3.11") -> str:
    """Cache key of the root filesystem: it depends on the suite and Python, not on requirements."""
    return _hash({"layout": LAYOUT_VERSION, "arch": "arm64", "suite": suite, "python": python_version,
                  "include": sorted(_include_debs(python_version)), "cpu": QEMU_CPU})


def site_key(requirements, python_version: str = "3.11", suite: str = "bookworm", wheels=()) -> str:
    """Cache key of a site-packages dir: suite + Python (via the rootfs key) + normalized requirements, and the
    sha256s of the locked ``wheels`` when given."""
    key = {"rootfs": rootfs_key(suite, python_version), "requirements": normalize_requirements(requirements)}
    if wheels:
        key["wheels"] = sorted(w["sha256"] for w in wheels)
    return _hash(key)


def cache_paths(requirements, *, cache_dir: Path, python_version: str = "3.11",
                suite: str = "bookworm", wheels=()) -> tuple:
    """(rootfs dir, site-packages dir) that :func:`prepare_arm64_python` uses for these arguments."""
    cache_dir = Path(cache_dir).expanduser().absolute()
    rootfs = cache_dir / f"rootfs-{suite}-py{python_version}-{rootfs_key(suite, python_version)}"
    site = cache_dir / f"site-{site_key(requirements, python_version, suite, wheels)}"
    return rootfs, site


def _include_debs(python_version: str) -> list:
    return [f"python{python_version}", *EXTRA_DEBS]


# --------------------------------------------------------------------------- host tools
def _find_qemu() -> Optional[str]:
    for name in QEMU_NAMES:
        found = shutil.which(name) or (f"/usr/bin/{name}" if os.access(f"/usr/bin/{name}", os.X_OK) else None)
        if found:
            return found
    return None


def _find_tool(name: str) -> Optional[str]:
    return shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)), None)


def _tool_version(argv: list) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=T_VERSION, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc.__class__.__name__})"
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0].strip() if text else "unknown"


def _qemu_version(qemu: str) -> str:
    line = _tool_version([qemu, "--version"])
    m = re.search(r"version\s+(\S+)", line)
    return m.group(1) if m else line


def _require_qemu() -> str:
    qemu = _find_qemu()
    if not qemu:
        raise EnvironmentProblem("qemu-aarch64-static is not installed: cannot run aarch64 code on this host",
                                 hint=QEMU_FIX)
    return qemu


def _dir_size(path: Path) -> int:
    total = 0
    for dirpath, _dirnames, filenames in os.walk(path):
        for name in filenames:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


def _mb(n: int) -> str:
    return f"{n / 1e6:.0f} MB"


# --------------------------------------------------------------------------- subprocess with timeout
def _run(cmd: list, *, timeout: float, what: str, hint: str | None = None, on_line=None,
         check: bool = True, env: dict | None = None) -> tuple:
    """Run ``cmd`` (stdout+stderr merged, streamed to ``on_line``); kill its process group after
    ``timeout`` s. Returns (returncode, last output lines). Raises EnvironmentProblem on timeout, on a
    missing executable and (with ``check``) on a non-zero exit."""
    try:
        proc = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, text=True, errors="replace", env=env,
                                start_new_session=True)
    except FileNotFoundError:
        raise EnvironmentProblem(f"{what}: {cmd[0]} is not installed", hint=hint) from None
    timed_out = threading.Event()

    def kill():
        timed_out.set()
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass

    timer = threading.Timer(timeout, kill)
    timer.daemon = True
    timer.start()
    tail: deque = deque(maxlen=60)
    try:
        for line in proc.stdout or ():
            line = line.rstrip()
            tail.append(line)
            if on_line and line:
                on_line(line)
        rc = proc.wait()
    finally:
        timer.cancel()
        if proc.poll() is None:
            kill()
            proc.wait()
    if timed_out.is_set():
        raise EnvironmentProblem(f"{what} timed out after {int(timeout)} s", hint=hint)
    if check and rc != 0:
        raise EnvironmentProblem(f"{what} failed (exit {rc}): {_last_error(tail)}", hint=hint)
    return rc, list(tail)


def _last_error(lines) -> str:
    for line in reversed(list(lines)):
        if line.strip() and re.match(r"\s*(E:|ERROR|error|Error|FATAL)", line):
            return line.strip()[:300]
    for line in reversed(list(lines)):
        if line.strip():
            return line.strip()[:300]
    return "no output"


class _Reporter:
    def __init__(self, progress: Progress):
        self.progress = progress

    def __call__(self, message: str, fraction: float | None = None) -> None:
        if self.progress is not None:
            self.progress(message, None if fraction is None else max(0.0, min(1.0, float(fraction))))


# --------------------------------------------------------------------------- locking
class _Lock:
    """An exclusive flock on ``path``; waits (reporting once) while another process builds."""

    def __init__(self, path: Path, report: _Reporter, what: str):
        self.path, self.report, self.what = path, report, what
        self.fd = -1

    def __enter__(self):
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + LOCK_WAIT
        told = False
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except BlockingIOError:
                if not told:
                    self.report(f"waiting for another edgepack process preparing the {self.what}", None)
                    told = True
                if time.monotonic() > deadline:
                    os.close(self.fd)
                    raise EnvironmentProblem(f"another process has held {self.path} for over {LOCK_WAIT} s",
                                             hint=f"stop that process, or remove {self.path} if none runs") from None
                time.sleep(1.0)

    def __exit__(self, *exc):
        try:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        finally:
            os.close(self.fd)


def _remove_stale(cache_dir: Path, prefix: str) -> None:
    """Remove leftovers of interrupted builds (only called while holding that key's lock)."""
    for p in cache_dir.glob(prefix + "*"):
        shutil.rmtree(p, ignore_errors=True)


def _read_marker(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_marker(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _rootfs_ready(rootfs: Path, python_version: str) -> Optional[dict]:
    marker = _read_marker(rootfs / ROOTFS_MARKER)
    if marker and (rootfs / "usr" / "bin" / f"python{python_version}").exists():
        return marker
    return None


def _site_ready(site: Path) -> Optional[dict]:
    return _read_marker(site / SITE_MARKER)


# --------------------------------------------------------------------------- public: prepare
def prepare_arm64_python(requirements: list, *, cache_dir: Path, python_version: str = "3.11",
                         suite: str = "bookworm", progress: Progress = None, wheels=()) -> Arm64Python:
    """Prepare (once, cached under ``cache_dir``) an arm64 CPython ``python_version`` from Debian
    ``suite`` with ``requirements`` installed from aarch64 wheels, and return how to run it. ``wheels``: the
    locked aarch64 wheels (dicts with name, version, sha256: :func:`packager.runtime_lock.wheels`); when
    given, exactly those are installed (hash-checked, no dependency resolution) instead of ``requirements``.

    Returns an :class:`Arm64Python`; run a script as ``[*result.argv, "/abs/script.py", ...]``
    (iterating the result yields ``argv`` too). Host paths work unchanged inside the emulated process.
    Raises EnvironmentProblem (with the fix in ``hint``) when the host lacks qemu, debootstrap, root
    for the first preparation, network access to the mirror or index, or aarch64 wheels do not exist.
    """
    report = _Reporter(progress)
    reqs = normalize_requirements(requirements)
    if not re.fullmatch(r"3\.\d{1,2}", str(python_version)):
        raise UsageError(f"python_version must look like '3.11', not {python_version!r}")
    if not re.fullmatch(r"[a-z][a-z0-9-]*", str(suite)):
        raise UsageError(f"not a Debian suite name: {suite!r}")
    shipped = SUITE_PYTHON.get(suite)
    if shipped and shipped != python_version:
        others = [s for s, v in SUITE_PYTHON.items() if v == python_version]
        raise UsageError(f"Debian {suite} ships Python {shipped}, not {python_version}",
                         hint=(f"use suite={others[0]!r} for Python {python_version}" if others else
                               f"use python_version={shipped!r}"))
    qemu = _require_qemu()
    cache_dir = Path(cache_dir).expanduser().absolute()
    wheels = tuple(wheels or ())
    rootfs_dir, site_dir = cache_paths(reqs, cache_dir=cache_dir, python_version=python_version, suite=suite,
                                       wheels=wheels)
    if "," in str(site_dir):
        raise EnvironmentProblem(f"the cache path {cache_dir} contains ',' which qemu's -E cannot pass",
                                 hint="set EDGEPACK_CACHE_DIR to a directory without commas")
    cache_dir.mkdir(parents=True, exist_ok=True)

    rootfs_info = _ensure_rootfs(rootfs_dir, qemu, suite, python_version, report)
    site_info = _ensure_site(site_dir, rootfs_dir, rootfs_info, qemu, reqs, python_version, report, wheels)
    argv = _argv(qemu, rootfs_dir, site_dir, python_version)
    packages = tuple(site_info.get("packages", ()))
    description = (f"CPython {rootfs_info.get('python_full', python_version)} (Debian {suite} arm64) under "
                   f"qemu-aarch64 {_qemu_version(qemu)} -cpu {QEMU_CPU}"
                   + (f" with {', '.join(packages)}" if packages else ""))
    report("arm64 Python ready", 1.0)
    return Arm64Python(argv=argv, env={}, rootfs=rootfs_dir, description=description, site_dir=site_dir,
                       packages=packages, wheels=tuple(site_info.get("wheels", ())))


def _argv(qemu: str, rootfs: Path, site: Optional[Path], python_version: str) -> list:
    argv = [qemu, "-L", str(rootfs), "-cpu", QEMU_CPU]
    for name in GUEST_UNSET:
        argv += ["-U", name]
    if site is not None:
        argv += ["-E", f"PYTHONPATH={site}"]
    argv += ["-E", "PYTHONNOUSERSITE=1", "-E", "PYTHONDONTWRITEBYTECODE=1",
             str(rootfs / "usr" / "bin" / f"python{python_version}"), "-s", "-B"]
    return argv


# --------------------------------------------------------------------------- root filesystem
def _ensure_rootfs(final: Path, qemu: str, suite: str, python_version: str, report: _Reporter) -> dict:
    info = _rootfs_ready(final, python_version)
    if info:
        return info
    key = rootfs_key(suite, python_version)
    debootstrap = _find_tool("debootstrap")
    if not debootstrap:
        raise EnvironmentProblem("debootstrap is not installed: cannot build the arm64 root filesystem",
                                 hint=DEBOOTSTRAP_FIX)
    for tool, pkg in (("dpkg-deb", "dpkg"), ("tar", "tar"), ("chroot", "coreutils")):
        if not _find_tool(tool):
            raise EnvironmentProblem(f"{tool} is not installed", hint=f"apt-get install -y {pkg}")
    if os.geteuid() != 0:
        raise EnvironmentProblem("preparing the arm64 root filesystem needs root (debootstrap, chroot); "
                                 "later runs do not",
                                 hint="run the first preparation once as root, e.g. with sudo -E")
    cache_dir = final.parent
    with _Lock(cache_dir / f".lock-{key}", report, "arm64 root filesystem"):
        info = _rootfs_ready(final, python_version)
        if info:
            return info
        _remove_stale(cache_dir, f".tmp-rootfs-{key}-")
        if final.exists():  # not complete (no marker): cannot come from a rename, remove it
            shutil.rmtree(final)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-rootfs-{key}-", dir=cache_dir))
        try:
            root = tmp / "root"
            started = time.monotonic()
            debs = _debootstrap(debootstrap, root, suite, python_version, report)
            report(f"unpacking {len(debs)} packages", 0.40)
            _extract_debs(root, debs)
            glibc = _glibc_version(debs)
            python_full = _deb_version(debs, f"python{python_version}")
            _prune(root)
            _relativize_symlinks(root)
            _write_fake_cpu(root)
            for d in ("usr/local/lib/python3/dist-packages", f"usr/local/lib/python{python_version}/dist-packages"):
                (root / d).mkdir(parents=True, exist_ok=True)
            report("running ldconfig for the arm64 root filesystem", 0.50)
            _ldconfig(root, qemu)
            report("byte-compiling the arm64 standard library (emulated)", 0.55)
            py = _argv(qemu, root, None, python_version)
            _run([*py, "-m", "compileall", "-q", "-x", COMPILE_EXCLUDE, str(root / "usr" / "lib" / f"python{python_version}")],
                 timeout=T_COMPILE, what="byte-compiling the arm64 standard library", check=False)
            probe = _probe(py, root, python_version)
            info = {"suite": suite, "python": python_version, "python_full": probe["version"],
                    "python_deb": python_full, "glibc": glibc, "key": key, "layout": LAYOUT_VERSION,
                    "packages": sorted(p.name for p in debs), "seconds": round(time.monotonic() - started, 1),
                    "mirror": _mirror(), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            info["size_bytes"] = _dir_size(root)
            _write_marker(root / ROOTFS_MARKER, info)
            os.rename(root, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    report(f"arm64 root filesystem ready ({_mb(info['size_bytes'])})", 0.70)
    return info


def _mirror() -> str:
    return os.environ.get("EDGEPACK_DEBIAN_MIRROR") or DEFAULT_MIRROR


def _debootstrap(debootstrap: str, root: Path, suite: str, python_version: str, report: _Reporter) -> list:
    mirror = _mirror()
    report(f"downloading Debian {suite} arm64 packages with debootstrap from {mirror}", 0.0)
    counter = {"n": 0}

    def on_line(line: str) -> None:
        if line.startswith("I: Retrieving "):
            counter["n"] += 1
            report(line[3:], min(0.35, 0.35 * counter["n"] / 110))
        elif line.startswith(("I: ", "W: ", "E: ")):
            report(line[3:], None)

    cmd = [debootstrap, "--arch=arm64", "--variant=minbase", "--foreign",
           "--include=" + ",".join(_include_debs(python_version)), suite, str(root), mirror]
    rc, tail = _run(cmd, timeout=T_DEBOOTSTRAP, what="debootstrap", on_line=on_line, check=False)
    if rc != 0:
        err = _last_error(tail)
        if "Couldn't find these debs" in err:
            raise EnvironmentProblem(f"Debian {suite} arm64 has no package {_include_debs(python_version)[0]}: {err}",
                                     hint=f"pick a suite that ships Python {python_version} "
                                          f"({', '.join(f'{s}={v}' for s, v in SUITE_PYTHON.items())})")
        if re.search(r"release file|Release|resolv|connect|download|Retriev", err, re.I):
            hint = (f"check access to {mirror} (or set EDGEPACK_DEBIAN_MIRROR to a reachable Debian mirror); "
                    f"apt-get install -y debian-archive-keyring debootstrap")
        else:
            hint = f"apt-get install -y debootstrap debian-archive-keyring; see {root}/debootstrap/debootstrap.log"
        raise EnvironmentProblem(f"debootstrap failed (exit {rc}): {err}", hint=hint)
    debs = sorted((root / "var" / "cache" / "apt" / "archives").glob("*.deb"))
    if not debs:
        raise EnvironmentProblem("debootstrap downloaded no packages", hint=DEBOOTSTRAP_FIX)
    return debs


def _extract_debs(root: Path, debs: list) -> None:
    # --keep-directory-symlink keeps the merged-/usr links (bin -> usr/bin, lib -> usr/lib).
    script = ('set -eo pipefail; root="$1"; shift; for d in "$@"; do '
              'dpkg-deb --fsys-tarfile "$d" | tar -C "$root" --keep-directory-symlink -xf - ; done')
    _run(["bash", "-c", script, "extract", str(root), *map(str, debs)], timeout=T_EXTRACT,
         what="unpacking the arm64 packages", hint="apt-get install -y dpkg tar")


def _deb_version(debs: list, package: str) -> str:
    for deb in debs:
        name, _, rest = deb.name.partition("_")
        if name == package:
            return rest.rsplit("_", 1)[0].replace("%3a", ":")
    return "unknown"


def _glibc_version(debs: list) -> str:
    m = re.match(r"(\d+)\.(\d+)", _deb_version(debs, "libc6"))
    return f"{m.group(1)}.{m.group(2)}" if m else "2.17"


def _prune(root: Path) -> None:
    for rel in PRUNE:
        p = root / rel
        if p.is_symlink() or p.is_file():
            p.unlink()
        elif p.is_dir():
            shutil.rmtree(p)


def _relativize_symlinks(root: Path) -> int:
    """qemu -L resolves a guest path inside ``root`` only if it exists there, which the host kernel
    decides by following symlinks on the host: an absolute link would point out of ``root``."""
    count = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            link = os.path.join(dirpath, name)
            if not os.path.islink(link):
                continue
            target = os.readlink(link)
            if not target.startswith("/"):
                continue
            new = os.path.relpath(os.path.normpath(str(root) + target), dirpath)
            tmp = link + ".edgepack-tmp"
            os.symlink(new, tmp)
            os.replace(tmp, link)
            count += 1
    return count


def _write_fake_cpu(root: Path) -> None:
    """An aarch64 /proc/cpuinfo and /sys/devices/system/cpu like a Raspberry Pi 4's (Cortex-A72)."""
    n = FAKE_CPUS
    block = ("processor\t: {i}\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid\n"
             "CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n")
    cpuinfo = "\n".join(block.format(i=i) for i in range(n))
    cpuinfo += "\nHardware\t: BCM2835\nRevision\t: c03111\nModel\t\t: Raspberry Pi 4 Model B (emulated by edgepack)\n"

    def put(rel: str, text: str) -> None:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text if text.endswith("\n") else text + "\n")

    put("proc/cpuinfo", cpuinfo)
    cpus = f"0-{n - 1}"
    base = "sys/devices/system/cpu"
    for name in ("online", "possible", "present"):
        put(f"{base}/{name}", cpus)
    put(f"{base}/offline", "\n")
    put(f"{base}/kernel_max", "255")
    for i in range(n):
        c = f"{base}/cpu{i}"
        put(f"{c}/online", "1")
        put(f"{c}/regs/identification/midr_el1", "0x00000000410fd083")
        put(f"{c}/regs/identification/revidr_el1", "0x0000000000000000")
        put(f"{c}/cpufreq/cpuinfo_max_freq", "1800000")
        put(f"{c}/cpufreq/cpuinfo_min_freq", "600000")
        topo = {"physical_package_id": "0", "core_id": str(i), "cluster_id": "0", "cluster_cpus_list": cpus,
                "core_siblings_list": cpus, "package_cpus_list": cpus, "thread_siblings_list": str(i),
                "core_cpus_list": str(i)}
        for k, v in topo.items():
            put(f"{c}/topology/{k}", v)
        caches = [(1, "Data", "32K", str(i)), (1, "Instruction", "48K", str(i)), (2, "Unified", "1024K", cpus)]
        for idx, (level, kind, size, shared) in enumerate(caches):
            d = f"{c}/cache/index{idx}"
            for k, v in {"level": str(level), "type": kind, "size": size, "shared_cpu_list": shared,
                         "coherency_line_size": "64"}.items():
                put(f"{d}/{k}", v)


def _ldconfig(root: Path, qemu: str) -> None:
    """Build the rootfs's own /etc/ld.so.cache (otherwise the guest's ld.so reads the host's).
    Runs the arm64 ldconfig in a chroot through a copied static qemu: no binfmt_misc needed."""
    copied = root / ".edgepack-qemu-aarch64-static"
    shutil.copy2(qemu, copied)
    try:
        _run(["chroot", str(root), "/" + copied.name, "-cpu", QEMU_CPU, "/sbin/ldconfig"], timeout=T_LDCONFIG,
             what="ldconfig in the arm64 root filesystem", hint="run as root (chroot needs it)")
    finally:
        copied.unlink(missing_ok=True)


def _probe(py: list, root: Path, python_version: str) -> dict:
    code = ("import json, platform, sys; print(json.dumps({'machine': platform.machine(), "
            "'version': platform.python_version(), 'prefix': sys.prefix}))")
    _, tail = _run([*py, "-c", code], timeout=T_SMOKE, what="starting the arm64 Python under qemu",
                   hint=QEMU_FIX)
    try:
        probe = json.loads(tail[-1])
    except (IndexError, ValueError):
        raise EnvironmentProblem(f"the arm64 Python printed no probe result: {_last_error(tail)}") from None
    if probe["machine"] != "aarch64" or not probe["version"].startswith(python_version + "."):
        raise EnvironmentProblem(f"unexpected emulated Python: {probe}")
    if not os.path.realpath(probe["prefix"]).startswith(os.path.realpath(root)):
        # Its stdlib would then come from the host, not from the arm64 root filesystem.
        raise EnvironmentProblem(f"the arm64 Python's prefix {probe['prefix']} is outside {root}")
    return probe


# --------------------------------------------------------------------------- site-packages
def _platform_tags(glibc: str) -> list:
    major, minor = (int(x) for x in glibc.split(".")[:2])
    tags = ["manylinux2014_aarch64"]
    if major == 2:
        tags += [f"manylinux_2_{m}_aarch64" for m in range(17, minor + 1)]
    return tags


def _pip_command(target: Path, reqs: list, python_version: str, glibc: str, requirements_file: Path | None = None) -> list:
    nodot = python_version.replace(".", "")
    cmd = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--no-input",
           "--no-compile", "--no-warn-script-location", "--target", str(target), "--only-binary=:all:",
           "--implementation", "cp", "--python-version", python_version, "--abi", f"cp{nodot}"]
    for tag in _platform_tags(glibc):
        cmd += ["--platform", tag]
    if requirements_file is not None:
        return cmd + ["--require-hashes", "--no-deps", "-r", str(requirements_file)]
    return cmd + list(reqs)


def _locked_lines(wheels) -> list:
    """``name==version --hash=sha256:...`` per locked wheel (the same text :mod:`packager.runtime_lock` writes)."""
    from ..runtime_lock import requirement_lines
    return requirement_lines([wheels])


def _ensure_site(final: Path, rootfs: Path, rootfs_info: dict, qemu: str, reqs: list, python_version: str,
                 report: _Reporter, wheels: tuple = ()) -> dict:
    info = _site_ready(final)
    if info:
        return info
    if importlib.util.find_spec("pip") is None:
        raise EnvironmentProblem("pip is not available in the Python running edgepack",
                                 hint=f"{sys.executable} -m ensurepip --upgrade")
    key = final.name.split("-", 1)[1]
    cache_dir = final.parent
    with _Lock(cache_dir / f".lock-{key}", report, "arm64 packages"):
        info = _site_ready(final)
        if info:
            return info
        _remove_stale(cache_dir, f".tmp-site-{key}-")
        if final.exists():
            shutil.rmtree(final)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-site-{key}-", dir=cache_dir))
        try:
            site = tmp / "site"
            site.mkdir()
            started = time.monotonic()
            if reqs or wheels:
                req_file = None
                if wheels:
                    req_file = tmp / "requirements.txt"
                    req_file.write_text("\n".join(_locked_lines(wheels)) + "\n")
                    report("installing the locked aarch64 wheels: "
                           + " ".join(f"{w['name']}=={w['version']}" for w in wheels), 0.72)
                else:
                    report(f"installing aarch64 wheels: {' '.join(reqs)}", 0.72)
                env = {k: v for k, v in os.environ.items()
                       if k not in ("PIP_TARGET", "PIP_PREFIX", "PIP_USER", "PIP_REQUIRE_VIRTUALENV")}
                rc, tail = _run(_pip_command(site, reqs, python_version, rootfs_info.get("glibc", "2.17"), req_file),
                                timeout=T_PIP, what="pip", check=False, env=env,
                                on_line=lambda line: report(line.strip(), None)
                                if line.startswith(("Collecting", "Downloading", "Installing")) else None)
                if rc != 0:
                    err = _last_error(tail)
                    raise EnvironmentProblem(
                        f"cannot install aarch64 wheels for Python {python_version}: {err}",
                        hint=("only wheels are used (no builds from source): check that every requirement has a "
                              f"manylinux aarch64 wheel for CPython {python_version}, and that the package "
                              "index is reachable (pip config / PIP_INDEX_URL)"))
                report("byte-compiling the aarch64 packages (emulated)", 0.85)
                py = _argv(qemu, rootfs, None, python_version)
                _run([*py, "-m", "compileall", "-q", "-x", COMPILE_EXCLUDE, str(site)], timeout=T_COMPILE,
                     what="byte-compiling the aarch64 packages", check=False)
            packages = sorted(_installed_dists(site))
            if wheels:
                held = {re.sub(r"[-_.]+", "-", p.split("==")[0]).lower(): p.split("==", 1)[1] for p in packages}
                wrong = [f"{w['name']} {w['version']}" for w in wheels
                         if held.get(re.sub(r"[-_.]+", "-", w["name"]).lower()) != w["version"]]
                if wrong:
                    raise EnvironmentProblem("the arm64 packages do not hold the locked wheels: " + ", ".join(wrong))
            info = {"requirements": reqs, "packages": packages, "python": python_version, "wheels": list(wheels),
                    "rootfs": rootfs.name, "seconds": round(time.monotonic() - started, 1),
                    "size_bytes": _dir_size(site), "layout": LAYOUT_VERSION,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            _write_marker(site / SITE_MARKER, info)
            os.rename(site, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    report(f"aarch64 packages ready ({_mb(info['size_bytes'])})", 0.98)
    return info


def _installed_dists(site: Path) -> list:
    out = []
    for meta in site.glob("*.dist-info/METADATA"):
        name = version = None
        with open(meta, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("Name:"):
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("Version:"):
                    version = line.split(":", 1)[1].strip()
                elif not line.strip():
                    break
        if name:
            out.append(f"{name}=={version}")
    return out


# --------------------------------------------------------------------------- doctor
def _binfmt_state() -> tuple:
    base = Path("/proc/sys/fs/binfmt_misc")
    entry = base / "qemu-aarch64"
    try:
        if entry.exists():
            text = entry.read_text()
            return True, ("registered and " + ("enabled" if text.startswith("enabled") else "disabled"))
        if not (base / "status").exists():
            return False, "binfmt_misc is not mounted on this host"
        return False, "binfmt_misc is mounted but qemu-aarch64 is not registered"
    except OSError as exc:
        return False, f"cannot read binfmt_misc: {exc}"


def doctor(cache_dir: Path | None = None) -> list:
    """What this host can emulate, and the command that fixes what is missing."""
    cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    checks = []
    qemu = _find_qemu()
    if qemu:
        checks.append(Check("qemu-aarch64-static", True, f"{qemu}, version {_qemu_version(qemu)}", None))
    else:
        checks.append(Check("qemu-aarch64-static", False, "not installed: aarch64 code cannot run", QEMU_FIX))
    registered, detail = _binfmt_state()
    checks.append(Check("binfmt_misc", True,
                        f"{detail} (optional: edgepack starts qemu-aarch64-static itself)", None))

    cached = []
    if cache_dir.is_dir():
        for p in sorted(cache_dir.glob("rootfs-*")):
            marker = _read_marker(p / ROOTFS_MARKER)
            if marker:
                cached.append((p, marker))

    debootstrap = _find_tool("debootstrap")
    if debootstrap:
        checks.append(Check("debootstrap", True, f"{debootstrap}, {_tool_version([debootstrap, '--version'])}", None))
    else:
        checks.append(Check("debootstrap", False, "not installed: no new arm64 root filesystem can be built"
                            + (" (the cached ones still work)" if cached else ""), DEBOOTSTRAP_FIX))
    missing = [t for t in ("dpkg-deb", "tar", "chroot") if not _find_tool(t)]
    checks.append(Check("unpack tools", not missing,
                        "dpkg-deb, tar and chroot present" if not missing else f"missing: {', '.join(missing)}",
                        None if not missing else "apt-get install -y dpkg tar coreutils"))
    checks.append(Check("debian keyring", KEYRING.is_file(),
                        str(KEYRING) if KEYRING.is_file() else f"{KEYRING} missing: debootstrap cannot verify packages",
                        None if KEYRING.is_file() else "apt-get install -y debian-archive-keyring"))
    is_root = os.geteuid() == 0
    checks.append(Check("root", is_root or bool(cached),
                        "running as root" if is_root else
                        ("not root; a prepared root filesystem is cached" if cached else
                         "not root: the first preparation needs root (debootstrap, chroot)"),
                        None if (is_root or cached) else "run the first preparation once as root, e.g. with sudo -E"))
    has_pip = importlib.util.find_spec("pip") is not None
    checks.append(Check("pip", has_pip, f"pip for {sys.executable}" if has_pip else "pip is not importable",
                        None if has_pip else f"{sys.executable} -m ensurepip --upgrade"))

    sites = [p for p in sorted(cache_dir.glob("site-*")) if (p / SITE_MARKER).is_file()] if cache_dir.is_dir() else []
    if cached:
        parts = [f"{m.get('suite')}/Python {m.get('python_full', m.get('python'))}: {_mb(_dir_size(p))}"
                 for p, m in cached]
        site_bytes = sum(_dir_size(p) for p in sites)
        detail = (f"{len(cached)} root filesystem(s) ({'; '.join(parts)}), {len(sites)} package set(s) "
                  f"({_mb(site_bytes)}) in {cache_dir}")
    else:
        detail = (f"no arm64 root filesystem cached in {cache_dir} yet; the first use prepares one "
                  "(about a minute and ~200 MB, plus ~60-100 MB per runtime)")
    checks.append(Check("arm64 cache", True, detail, None))
    return checks
