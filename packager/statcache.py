"""Stat cache: a file's sha256 remembered by its stat (size, mtime_ns, ctime_ns, inode, device), as git's index
does, so an unchanged rebuild neither re-hashes the model nor re-reads the bundle (BENCHMARKS.md, issue 23).

- An entry is trusted only when every one of those five fields is the same as when the file was read; any write,
  chmod, rename over it, ``touch`` (even ``touch -d`` back to the old mtime: the ctime moves) makes it be read and
  hashed again.
- Racy writes: an entry is stored only when the file's mtime is older than the moment its read began by more than
  the file system's timestamp granularity (:data:`RACY_NS`; 2 s for whole-second timestamps), so a write in the same
  clock tick as the read can never hide behind an unchanged mtime.
- Only what this process read and hashed itself is stored (never a digest a manifest claims). A bundle's tar
  stream is remembered by its *tree signature* (name, then each entry's path, kind, executable bit and sha256) ->
  the gzip trailer (CRC-32, length) of the archive written or checked from exactly those bytes.
- One JSON file in the conversion cache dir (``stat-cache.json``), written atomically and only when something
  new was learnt (a no-op build writes nothing); bounded; ``EDGEPACK_NO_CACHE`` bypasses it (everything is read).
  A lost or corrupt file only means hashing again. Network file systems whose server clock is skewed against this
  host weaken the racy-write rule (as they do git's).

Imports nothing heavy: the no-op build runs before numpy or TensorFlow is imported.
"""
from __future__ import annotations

import hashlib
import json
import os
import stat as statmod
import tempfile
import time
from pathlib import Path

FILE = "stat-cache.json"
VERSION = 1
RACY_NS = 20_000_000            # file timestamps come from the kernel's coarse clock (1 jiffy, <= 10 ms)
COARSE_RACY_NS = 2_000_000_000  # whole-second (or 2 s) timestamps: FAT, some network file systems
MAX_FILES = 4096
MAX_TREES = 256

_state: dict | None = None      # {"path": Path, "files": {...}, "trees": {...}, "dirty": bool}


def enabled() -> bool:
    """False with ``EDGEPACK_NO_CACHE`` (as the conversion cache): every file is read and hashed."""
    return os.environ.get("EDGEPACK_NO_CACHE", "") in ("", "0")


def _cache() -> dict:
    global _state
    from .paths import cache_dir
    path = cache_dir() / FILE
    if _state is not None and _state["path"] == path:
        return _state
    files, trees = {}, {}
    try:
        raw = json.loads(path.read_text())
        if raw.get("version") == VERSION:
            files = {k: v for k, v in raw.get("files", {}).items() if isinstance(v, list) and len(v) == 6}
            trees = {k: v for k, v in raw.get("trees", {}).items() if isinstance(v, list) and len(v) == 2}
    except (OSError, ValueError, AttributeError):
        pass
    _state = {"path": path, "files": files, "trees": trees, "dirty": False}
    return _state


def save() -> None:
    """Write what was learnt (nothing when nothing was): atomically, newest entries kept."""
    st = _state
    if st is None or not st["dirty"] or not enabled():
        return
    files = dict(list(st["files"].items())[-MAX_FILES:])
    trees = dict(list(st["trees"].items())[-MAX_TREES:])
    path = st["path"]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{FILE}.")
        with os.fdopen(fd, "w") as fh:
            json.dump({"version": VERSION, "files": files, "trees": trees}, fh, separators=(",", ":"))
        os.replace(tmp, path)
        st["dirty"] = False
    except OSError:
        try:
            os.unlink(tmp)
        except (OSError, UnboundLocalError):
            pass


def _key(st: os.stat_result) -> list:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


def _settled(st: os.stat_result, read_started_ns: int) -> bool:
    """The file's last write is certainly before ``read_started_ns`` (outside the timestamps' granularity)."""
    racy = COARSE_RACY_NS if st.st_mtime_ns % 1_000_000_000 == 0 else RACY_NS
    return max(st.st_mtime_ns, st.st_ctime_ns) + racy < read_started_ns


def known(path, st: os.stat_result | None = None) -> str | None:
    """The sha256 (hex) remembered for ``path`` with exactly this stat, else None."""
    if not enabled():
        return None
    try:
        st = st or os.stat(path)
    except OSError:
        return None
    entry = _cache()["files"].get(os.path.abspath(path))
    return entry[5] if entry is not None and entry[:5] == _key(st) else None


def remember(path, st: os.stat_result, sha256_hex: str, read_started_ns: int) -> None:
    """Store ``path`` -> sha256 for stat ``st`` (taken before the read that gave the digest), unless racy."""
    if not enabled() or not statmod.S_ISREG(st.st_mode) or not _settled(st, read_started_ns):
        return
    files = _cache()["files"]
    key = os.path.abspath(path)
    entry = _key(st) + [sha256_hex]
    if files.get(key) != entry:
        files.pop(key, None)
        files[key] = entry
        _cache()["dirty"] = True


def sha256_file(path) -> str:
    """Hex sha256 of the file at ``path``: remembered when its stat is unchanged, else read (and remembered)."""
    st = os.stat(path)
    hit = known(path, st)
    if hit is not None:
        return hit
    started = time.time_ns()
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    digest = h.hexdigest()
    try:
        if _key(os.stat(path)) == _key(st):      # not written while it was read
            remember(path, st, digest, started)
    except OSError:
        pass
    return digest


def sha256_tree(path: Path, file_hash=None) -> str:
    """Content hash of a file or a directory (relative names + each file's sha256), for source identity: each file
    through ``file_hash`` (default :func:`sha256_file`, this cache's); :func:`packager.bundle.files.sha256_tree` is
    the same digest with plain hashing."""
    path = Path(path)
    file_hash = file_hash or sha256_file
    if path.is_file():
        return file_hash(path)
    h = hashlib.sha256()
    for p in sorted(q for q in path.rglob("*") if q.is_file()):
        h.update(str(p.relative_to(path)).encode() + b"\0" + file_hash(p).encode() + b"\0")
    return h.hexdigest()


# --------------------------------------------------------------------------- bundle trees and their archives
def snapshot(bundle: Path) -> dict | None:
    """{relative posix path: lstat} of every entry under ``bundle``, None when one is neither a regular file nor a
    directory (a symbolic link: no shortcut for such a tree) or the tree cannot be listed."""
    bundle = Path(bundle)
    out = {}
    try:
        for p in bundle.rglob("*"):
            st = os.lstat(p)
            if not (statmod.S_ISREG(st.st_mode) or statmod.S_ISDIR(st.st_mode)):
                return None
            out[p.relative_to(bundle).as_posix()] = st
    except OSError:
        return None
    return out


def settled_start(snap: dict | None, wait_ns: int = 3 * RACY_NS) -> int:
    """A read start time after which the files of ``snap`` count as settled: waits (at most ``wait_ns``) for files
    written within the timestamps' granularity, such as the manifest a build writes just before its archive, so
    that the build can remember them (an unchanged rebuild right after then reads nothing)."""
    now = time.time_ns()
    if enabled() and snap:
        latest = max(max(st.st_mtime_ns, st.st_ctime_ns) for st in snap.values())
        wait = latest + RACY_NS + 1_000_000 - now
        if 0 < wait <= wait_ns:
            time.sleep(wait / 1e9)
            now = time.time_ns()
    return now


def _signature(bundle: Path, snap: dict, digests: dict) -> str:
    """What the tar stream of :func:`packager.bundle.files._tar_bytes` is a function of: the bundle's name and,
    in its order, each entry's path, kind, executable bit and content digest."""
    parts = [bundle.name]
    for rel in sorted(snap):
        st = snap[rel]
        if statmod.S_ISDIR(st.st_mode):
            parts.append([rel, "d"])
        else:
            parts.append([rel, "f", os.access(bundle / rel, os.X_OK), digests[rel]])
    return hashlib.sha256(json.dumps(parts, separators=(",", ":")).encode()).hexdigest()


def known_tree(bundle: Path) -> tuple[dict, tuple[int, int] | None] | None:
    """({relative path: "sha256:..."}, the remembered (CRC-32, length) of its tar stream or None) when every file
    of ``bundle`` is remembered with its current stat; None otherwise (read it)."""
    if not enabled():
        return None
    bundle = Path(bundle)
    snap = snapshot(bundle)
    if snap is None:
        return None
    digests = {}
    for rel, st in snap.items():
        if statmod.S_ISREG(st.st_mode):
            hit = known(bundle / rel, st)
            if hit is None:
                return None
            digests[rel] = "sha256:" + hit
    trailer = _cache()["trees"].get(_signature(bundle, snap, digests))
    return digests, (tuple(trailer) if trailer else None)


def remember_tree(bundle: Path, before: dict | None, digests: dict, read_started_ns: int,
                  trailer: tuple[int, int] | None) -> None:
    """After reading every file of ``bundle`` (``digests``, as :func:`_tar_bytes` fills them) between the stat
    snapshot ``before`` and now: remember each file whose stat did not move meanwhile, and, when none moved, the
    gzip trailer of the archive made from those bytes."""
    if not enabled() or before is None:
        return
    bundle = Path(bundle)
    after = snapshot(bundle)
    if after is None:
        return
    steady = set(before) == set(after) and all(_key(before[r]) == _key(after[r]) for r in before)
    for rel, digest in digests.items():
        st = before.get(rel)
        if st is not None and rel in after and _key(after[rel]) == _key(st):
            remember(bundle / rel, st, digest.removeprefix("sha256:"), read_started_ns)
    if steady and trailer is not None and set(digests) == {r for r, s in before.items() if statmod.S_ISREG(s.st_mode)} \
            and all(_settled(s, read_started_ns) for s in before.values() if statmod.S_ISREG(s.st_mode)):
        trees = _cache()["trees"]
        sig = _signature(bundle, before, digests)
        if trees.get(sig) != list(trailer):
            trees.pop(sig, None)
            trees[sig] = list(trailer)
            _cache()["dirty"] = True
