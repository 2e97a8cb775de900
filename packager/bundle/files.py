"""Bundle assembly: stage everything in a sibling temp dir, write manifest.json last, verify,
then move into place; a deterministic .tar.gz of the same tree goes beside it."""
from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import os
import re
import shutil
import sys
import tarfile
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from ..lazynp import np

from ..errors import DeployError, UsageError

ENTRYPOINT_SOURCE = Path(__file__).resolve().parents[2] / "device_runtime" / "edgepack_run.py"
ENTRYPOINT = "edgepack_run.py"
MODEL = "model.tflite"
MANIFEST = "manifest.json"
PART_RE = re.compile(r"^[A-Za-z0-9._][A-Za-z0-9._-]*\Z")
from .manifest import FORMAT, Manifest, check_name, manifest_bytes, parse  # noqa: E402,F401 - one source of the format number, name rule and writer


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """Hex sha256 of the file at ``path``, read in 1 MiB blocks. OSError when it cannot be read."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_tree(path: Path) -> str:
    """Content hash of a file or a directory (relative names + bytes), for source identity (read afresh: no stat
    cache)."""
    from .. import statcache
    return statcache.sha256_tree(Path(path), file_hash=sha256_file)


def atomic_write(path: Path, data: bytes) -> None:
    """temp file in the same directory, fsync, rename, fsync the directory."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    """fsync the directory ``path`` so renames and new entries in it are durable; does nothing when it cannot be
    opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def npz_bytes(arrays: dict) -> bytes:
    """A byte-reproducible .npz (fixed zip timestamps), so archives of equal inputs are equal."""
    buf = io.BytesIO()
    import zipfile
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key in sorted(arrays):
            item = io.BytesIO()
            np.lib.format.write_array(item, np.ascontiguousarray(arrays[key]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, item.getvalue())
    return buf.getvalue()


def npz_stored(arrays: dict) -> bytes:
    """An uncompressed .npz (fixed zip timestamps) for files edgepack writes for itself: the device
    script's input file and the conversion cache. Deflating 38 MB of float inputs (64 MobileNetV2
    samples) took ~1.2 s at a time for ~7% of size (issue 15)."""
    import zipfile
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for key in sorted(arrays):
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            with zf.open(info, "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, np.ascontiguousarray(arrays[key]), allow_pickle=False)
    return buf.getvalue()


def _replaceable(path: Path) -> bool:
    """An existing -o may be replaced when it is an empty dir or an earlier bundle."""
    return path.is_dir() and not path.is_symlink() and (
        (path / MANIFEST).is_file() or not any(path.iterdir()))


def fault(point: str) -> None:
    """Test seam: EDGEPACK_FAULT_AT=<point> kills this process there (SIGKILL), so tests can prove
    that an interrupted build leaves either nothing or a complete bundle at -o."""
    if os.environ.get("EDGEPACK_FAULT_AT") == point:
        import signal
        os.kill(os.getpid(), signal.SIGKILL)


def _exchange(a: Path, b: Path) -> bool:
    """renameat2(RENAME_EXCHANGE) where the kernel and filesystem have it (Linux >= 3.15)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    AT_FDCWD, RENAME_EXCHANGE = -100, 2
    return fn(AT_FDCWD, os.fsencode(str(a)), AT_FDCWD, os.fsencode(str(b)), RENAME_EXCHANGE) == 0


def _remove_stale(output: Path) -> None:
    """Staging/old dirs left by a build that was killed (its pid is gone) are removed."""
    for p in output.parent.glob(f".{output.name}.staging-*"):
        pid = p.name.split(".staging-", 1)[1].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)
    for p in output.parent.glob(f".{output.name}.old-*"):
        pid = p.name.rsplit("-", 1)[1]
        if pid.isdigit() and not _alive(int(pid)):
            if not output.exists() and (p / MANIFEST).is_file():
                os.replace(p, output)      # killed between the two renames: put the old bundle back
            else:
                shutil.rmtree(p, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Staging:
    """A bundle being assembled next to its final place (same filesystem, so the move is a rename)."""

    def __init__(self, output: Path):
        self.output = Path(output).absolute()
        if self.output.exists() and not _replaceable(self.output):
            raise UsageError(f"{self.output} exists and is not an edgepack bundle; refusing to overwrite it",
                             hint="choose another -o directory or remove it")
        self.output.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale(self.output)
        self.dir = Path(tempfile.mkdtemp(dir=self.output.parent,
                                         prefix=f".{self.output.name}.staging-{os.getpid()}-"))
        os.chmod(self.dir, 0o755)  # noqa: S103 - a bundle is meant to be readable, like any release dir
        self.files: dict[str, str] = {}

    def write(self, rel: str, data: bytes, mode: int = 0o644) -> str:
        """Write ``data`` to ``rel`` in the staging dir (fsynced, chmod ``mode``) and record it for the manifest's
        ``files``; returns its hex sha256."""
        path = self.dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(path, mode)
        digest = sha256_bytes(data)
        self.files[rel] = "sha256:" + digest
        return digest

    def write_manifest(self, manifest: Manifest) -> Manifest:
        """``manifest`` with its ``files`` set to every file written so far (sorted, ``sha256:HEX``), written as
        manifest.json atomically, last (:meth:`Manifest.to_bytes`, the one writer). Returns what was written."""
        manifest = manifest.replace(files=dict(sorted(self.files.items())))
        fault("before-manifest")
        atomic_write(self.dir / MANIFEST, manifest.to_bytes())
        return manifest

    def commit(self) -> Path:
        """Move the staged bundle to ``output``; an older bundle there is replaced."""
        for p in self.dir.rglob("*"):
            if p.is_dir():
                fsync_dir(p)
        fsync_dir(self.dir)
        fault("before-commit")
        # The archive beside -o describes the bundle there: removed before the swap (and written
        # after it), so a kill in between leaves a bundle without archive, never a stale pair.
        stale = self.output.with_name(self.output.name + ".tar.gz")
        if stale.is_file() and not stale.is_symlink():
            stale.unlink()
            fsync_dir(self.output.parent)
            fault("archive-removed")
        if self.output.exists():
            if _exchange(self.dir, self.output):        # atomic swap: -o is never missing
                fsync_dir(self.output.parent)
                fault("after-exchange")
                shutil.rmtree(self.dir, ignore_errors=True)
                fault("after-commit")
                return self.output
            old = self.output.parent / f".{self.output.name}.old-{os.getpid()}"
            os.replace(self.output, old)
            fault("between-renames")
            os.replace(self.dir, self.output)
            fsync_dir(self.output.parent)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(self.dir, self.output)
            fsync_dir(self.output.parent)
        fault("after-commit")
        return self.output

    def discard(self) -> None:
        """Remove the staging directory; whatever is at ``output`` is left as it was."""
        shutil.rmtree(self.dir, ignore_errors=True)


ARCHIVE_LEVEL = 9
STORED_SUFFIXES = (".tflite",)
"""The archive deflates text at level :data:`ARCHIVE_LEVEL` and stores the ``.tflite`` members as they are (deflate
"stored" blocks inside the one gzip member): float and int8 weights barely compress (ResNet50's 102 MB model: 0.92
at level 9, 0.923 at level 1) and deflating them took 2.4-2.7 s even at level 1 (BENCHMARKS.md, issue 23)."""


def _tar_bytes(bundle: Path, digests: dict | None = None, stored: list | None = None) -> bytes:
    """The uncompressed tar stream of ``bundle`` that :func:`write_archive` compresses: sorted entries, mtime 0,
    root-owned, fixed modes. ``digests``: filled with ``{relative path: "sha256:..."}`` of each regular file;
    ``stored``: filled with the (start, end) spans of the stream that hold :data:`STORED_SUFFIXES` members."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        paths = sorted(bundle.rglob("*"), key=lambda p: p.relative_to(bundle).as_posix())
        for p in [bundle] + paths:
            rel = p.relative_to(bundle).as_posix()
            arcname = bundle.name if rel == "." else f"{bundle.name}/{rel}"
            info = tarfile.TarInfo(arcname)
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            if p.is_dir():
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            elif p.is_file() and not p.is_symlink():
                data = p.read_bytes()
                if digests is not None:
                    digests[rel] = "sha256:" + sha256_bytes(data)
                info.size = len(data)
                info.mode = 0o755 if os.access(p, os.X_OK) else 0o644
                start = raw.tell()
                tar.addfile(info, io.BytesIO(data))
                if stored is not None and rel.endswith(STORED_SUFFIXES):
                    stored.append((start, raw.tell()))
    return raw.getvalue()


def _gzip(data: bytes, stored: list) -> bytes:
    """One gzip member (no name, mtime 0) of ``data``: the ``stored`` spans as deflate stored blocks, the rest at
    :data:`ARCHIVE_LEVEL`. Each span is its own raw deflate run ended by a full flush (byte-aligned, no reference
    back across it), so the concatenation is one valid deflate stream; the same input gives the same bytes."""
    import struct
    import zlib
    out = [b"\x1f\x8b\x08\x00\x00\x00\x00\x00" + (b"\x02" if ARCHIVE_LEVEL == 9 else b"\x00") + b"\xff"]
    spans, at = [], 0
    for start, end in sorted(stored):
        spans += [(at, start, ARCHIVE_LEVEL), (start, end, 0)]
        at = end
    spans.append((at, len(data), ARCHIVE_LEVEL))
    view = memoryview(data)
    spans = [s for s in spans if s[1] > s[0]] or [(0, 0, ARCHIVE_LEVEL)]
    for k, (start, end, level) in enumerate(spans):
        z = zlib.compressobj(level, zlib.DEFLATED, -15, 9)
        out.append(z.compress(view[start:end]))
        out.append(z.flush(zlib.Z_FINISH if k == len(spans) - 1 else zlib.Z_FULL_FLUSH))
    out.append(struct.pack("<II", zlib.crc32(data) & 0xFFFFFFFF, len(data) & 0xFFFFFFFF))
    return b"".join(out)


def write_archive(bundle: Path, archive: Path | None = None) -> Path:
    """Deterministic .tar.gz: sorted entries, mtime 0, root-owned, fixed modes, no gzip name/time; text deflated,
    the model stored (:data:`STORED_SUFFIXES`): the same bytes for the same bundle, every time."""
    bundle = Path(bundle)
    archive = Path(archive) if archive else bundle.with_name(bundle.name + ".tar.gz")
    import struct
    from .. import statcache
    stored: list = []
    before, digests = statcache.snapshot(bundle), {}
    started = statcache.settled_start(before)
    data = _tar_bytes(bundle, digests, stored=stored)
    gz = _gzip(data, stored)
    atomic_write(archive, gz)
    # remembered (stat -> sha256, tree -> trailer) so that an unchanged rebuild reads neither (packager.statcache)
    statcache.remember_tree(bundle, before, digests, started, struct.unpack("<II", gz[-8:]))
    statcache.save()
    return archive


def archive_matches(bundle: Path, archive: Path, manifest: Manifest | None = None) -> bool:
    """``archive`` (a regular file) ends with the gzip trailer of the tar stream :func:`write_archive` makes of
    ``bundle`` now: its CRC-32 and length. A cheap check that the archive beside a bundle still describes it
    (nothing is decompressed or recompressed); a truncated, replaced or stale archive fails it. With ``manifest``,
    the bundle must also be intact (:func:`check_files`, from the same one read of each file)."""
    import struct
    from .. import statcache
    archive = Path(archive)
    if archive.is_symlink() or not archive.is_file():
        return False
    try:
        with open(archive, "rb") as fh:
            head = fh.read(2)
            fh.seek(-8, os.SEEK_END)
            crc, size = struct.unpack("<II", fh.read(8))
        # every file's stat as when it was last read here: its digests and the trailer of its tar stream, unread
        known = statcache.known_tree(Path(bundle))
        if known is not None and known[1] is not None:
            digests, (want_crc, want_size) = known
        else:
            started, before, digests = time.time_ns(), statcache.snapshot(Path(bundle)), {}
            data = _tar_bytes(Path(bundle), digests)
            want_crc, want_size = zlib.crc32(data) & 0xFFFFFFFF, len(data) & 0xFFFFFFFF
            statcache.remember_tree(Path(bundle), before, digests, started, (want_crc, want_size))
            statcache.save()
    except OSError:
        return False
    if manifest is not None:
        files = manifest.files
        root = Path(bundle)
        if any(digests.get(rel) != digest or _under_link(root, rel) for rel, digest in files.items()) \
                or requirement_problems(root):
            return False
    return head == b"\x1f\x8b" and crc == want_crc and size == want_size


ENTRYPOINT_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}\.py")


def host_entrypoint(bundle: Path, manifest: Manifest) -> tuple[Path, str | None]:
    """The device script to run *on this host* for ``bundle``: the bundle's own file only when it
    is byte for byte the one this edgepack ships; otherwise this edgepack's copy (pointed at the
    bundle with ``--bundle``), with a note naming the edgepack the bundle says wrote it. A bundle
    edgepack did not write is untrusted: its Python never runs here."""
    entry = manifest.entrypoint
    if not isinstance(entry, str) or not ENTRYPOINT_NAME_RE.fullmatch(entry):
        raise UsageError(f"the manifest's entrypoint {entry!r} is not a plain .py file name of the bundle",
                         hint="only bundles written by `edgepack build` are accepted")
    path = Path(bundle) / entry
    if path.is_symlink() or not path.is_file() or entry not in manifest.files:
        raise UsageError(f"the manifest's entrypoint {entry!r} is not a regular file listed in the bundle",
                         hint="only bundles written by `edgepack build` are accepted")
    if sha256_file(path) == sha256_file(ENTRYPOINT_SOURCE):
        return path, None
    written_by = manifest.versions.get("edgepack")
    from ..version import __version__
    return ENTRYPOINT_SOURCE, (f"the bundle's {entry} differs from the one edgepack {__version__} ships "
                               f"(bundle written by edgepack {written_by if isinstance(written_by, str) else 'unknown'}); "
                               "verified with this edgepack's device script, not the bundle's")


def read_manifest(bundle: Path):
    """The bundle's validated :class:`packager.bundle.manifest.Manifest`. Raises UsageError when there is none or
    it is invalid."""
    return Manifest.read(Path(bundle))


def _under_link(root: Path, rel: str) -> bool:
    """``root/rel`` is, or lies under, a symbolic link (a bundle holds regular files only)."""
    parts = rel.split("/")
    return any(root.joinpath(*parts[:i]).is_symlink() for i in range(1, len(parts) + 1))


def allowed_requirements() -> set[str]:
    """Project names a bundle's requirements may name: those of the runtime registry and of every target
    profile's runtimes, and the dependencies the runtime lock pins (canonical form, ``ai-edge-litert``,
    ``numpy``, ``protobuf``)."""
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name
    from .. import runtime_lock
    from ..targets import list_runtimes, list_targets
    lines = [r for rt in list_runtimes().values() for r in rt.requirements]
    lines += [r for t in list_targets().values() for rt in t.runtimes for r in rt.requirements]
    lines += [w["name"] for entry in runtime_lock.load().get("runtimes", {}).values()
              for by_arch in entry.get("environments", {}).values() for ws in by_arch.values() for w in ws]
    names = set()
    for line in lines:
        try:
            names.add(canonicalize_name(Requirement(line).name))
        except InvalidRequirement:
            continue
    return names


_HASH_OPTION = re.compile(r"--hash=sha256:([0-9a-f]{64})\Z")


def split_requirement(line: str) -> tuple[str, list[str]]:
    """A bundle's requirement line as (requirement text, sha256 hashes): ``NAME==VERSION --hash=sha256:HEX ...``
    (the form edgepack writes from the runtime lock) or a bare requirement. ValueError naming the problem for any
    other option (``-i``, ``--index-url``, ``--hash=md5:``), a URL or a path."""
    line = line.split(" #")[0].strip()
    if line.startswith("-") or "://" in line or line.startswith((".", "/", "~")) or line.endswith("\\"):
        raise ValueError("a pip option, URL or path (a bundle's requirements name packages only)")
    words = line.split()
    first = next((i for i, w in enumerate(words) if w.startswith("-")), len(words))
    hashes = []
    for word in words[first:]:
        m = _HASH_OPTION.match(word)
        if not m:
            raise ValueError(f"{word[:40]!r} is a pip option other than --hash=sha256:HEX "
                             "(a bundle's requirements name packages and their wheels' hashes only)")
        hashes.append(m.group(1))
    return " ".join(words[:first]), hashes


def requirement_problems(bundle: Path) -> list[str]:
    """Lines of the bundle's ``requirements*.txt`` that edgepack did not write: anything but ``NAME[SPEC][;
    MARKER]`` for a project of the runtime registry or the runtime lock (:func:`allowed_requirements`), optionally
    followed by ``--hash=sha256:HEX`` options (:func:`split_requirement`): a URL or path, an index or other pip
    option (``-i``, ``--extra-index-url``, ``-e``, ``-r``, ``-f``), a direct reference (``name @ url``), another
    package. ``deploy --install`` would have run it as the device's user."""
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name
    problems, allowed = [], None
    for path in sorted(Path(bundle).glob("requirements*.txt")):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            problems.append(f"{path.name}: unreadable")
            continue
        for n, raw in enumerate(text.splitlines(), 1):
            line = raw.split(" #")[0].strip()
            if not line or line.startswith("#"):
                continue
            where = f"{path.name} line {n} {raw.strip()[:80]!r}"
            try:
                line, hashes = split_requirement(line)
            except ValueError as exc:
                problems.append(f"{where}: {exc}")
                continue
            if hashes and not re.fullmatch(r"[A-Za-z0-9._-]+==[A-Za-z0-9.+!_-]+", line):
                problems.append(f"{where}: hashes pin one exact version (NAME==VERSION)")
                continue
            try:
                req = Requirement(line)
            except InvalidRequirement:
                problems.append(f"{where}: not a requirement")
                continue
            allowed = allowed if allowed is not None else allowed_requirements()
            if req.url:
                problems.append(f"{where}: a direct reference (name @ URL)")
            elif canonicalize_name(req.name) not in allowed:
                problems.append(f"{where}: {req.name} is not a runtime package edgepack installs "
                                f"({', '.join(sorted(allowed))})")
    return problems


@dataclass(frozen=True)
class Problem:
    """One way a bundle's files differ from its manifest (:func:`integrity`): the file ``rel`` (or
    requirements*.txt, manifest.json), what is wrong (``detail``), and the ``error`` class a refusal raises
    (UsageError: the bundle is malformed; DeployError: a file is missing or was changed)."""
    rel: str
    detail: str
    error: type = UsageError
    message: str = ""              # the refusal's sentence (load_bundle), when it is more than "rel: detail"
    hint: str = "rebuild the bundle with edgepack build"

    def __str__(self) -> str:
        return f"{self.rel}: {self.detail}"


def integrity(bundle: Path, manifest: Manifest) -> tuple[list[Problem], tuple, dict]:
    """The one integrity check of a bundle directory against its manifest: every listed file a regular file inside
    the bundle (no symbolic link) whose sha256 is the listed one, the model and entrypoint among them, the model's
    digest the manifest's ``model_sha256``, and no requirement line edgepack did not write
    (:func:`requirement_problems`). Returns (problems, ((relative path, sha256 hex), ...) of the intact files,
    {relative path: bytes}); no problem = intact."""
    root = Path(bundle)
    problems: list[Problem] = []
    files = manifest.files
    where = root / MANIFEST
    if not files:
        problems.append(Problem(MANIFEST, "lists no files", message=f"{where} lists no files"))
    for key, rel in (("model", manifest.model), ("entrypoint", manifest.entrypoint)):
        if files and rel not in files:
            problems.append(Problem(MANIFEST, f"{key} {rel!r} is not among its files",
                                    message=f"{where}: {key} {rel!r} is not among its files"))
    entries: list[tuple[str, str]] = []
    sizes: dict[str, int] = {}
    resolved = root.resolve()
    for rel, digest in sorted(files.items()):
        try:
            check_relpath(rel)
        except UsageError as exc:
            problems.append(Problem(rel, "not a valid bundle file name", message=exc.message))
            continue
        if rel == MANIFEST:
            problems.append(Problem(rel, "the manifest lists itself", message=f"{where} lists itself among its files"))
            continue
        want = digest.removeprefix("sha256:")
        if not re.fullmatch(r"[0-9a-f]{64}", want):
            problems.append(Problem(rel, "no sha256 checksum", message=f"{where}: {rel} has no sha256 checksum"))
            continue
        if _under_link(root, rel):
            problems.append(Problem(rel, "a symbolic link (a bundle holds regular files only)",
                                    message=f"bundle file {rel} in {root} is (or lies under) a symbolic link; refused",
                                    hint="a bundle holds regular files only: rebuild it with edgepack build"))
            continue
        local = root.joinpath(*rel.split("/"))
        if resolved not in local.resolve().parents or not local.is_file():
            problems.append(Problem(rel, "missing or outside the bundle", DeployError,
                                    f"bundle file {rel} is missing from {root}", "rebuild the bundle"))
            continue
        got = sha256_file(local)
        if got != want:
            problems.append(Problem(
                rel, "sha256 differs from the manifest", DeployError,
                f"bundle file {rel} does not match manifest.json (sha256 {got[:12]}... vs {want[:12]}...): "
                "it was changed after the bundle was built; nothing was sent",
                "rebuild the bundle with edgepack build instead of editing it"))
            continue
        entries.append((rel, want))
        sizes[rel] = local.stat().st_size
    if manifest.model in files and files[manifest.model].removeprefix("sha256:") != manifest.model_sha256:
        problems.append(Problem(manifest.model, "model_sha256 differs from the model's checksum in files", DeployError,
                                f"{where}: model_sha256 differs from the model's checksum in files", "rebuild the bundle"))
    odd = requirement_problems(root)
    for line in odd:
        rel, _, detail = line.partition(": ")
        problems.append(Problem(
            rel, detail,
            message=f"bundle {root.name}: {odd[0]}" + (f" (and {len(odd) - 1} more)" if len(odd) > 1 else ""),
            hint="the device installs only what edgepack writes (the target's runtime packages): rebuild the bundle "
                 "with edgepack build; nothing was sent"))
    return problems, tuple(entries), sizes


def check_files(bundle: Path, manifest: Manifest | dict | None = None) -> list[str]:
    """Problems with the bundle's files against its manifest (``manifest``: a Manifest or its parsed JSON; else read
    from ``bundle``), one line each; an empty list = intact. The list form of :func:`integrity`."""
    if manifest is None:
        manifest = Manifest.read(Path(bundle))
    elif not isinstance(manifest, Manifest):
        manifest = Manifest.from_json(manifest)
    return [str(p) for p in integrity(bundle, manifest)[0]]


@dataclass(frozen=True)
class Bundle:
    """A bundle: its directory, its typed :class:`~packager.bundle.manifest.Manifest`, and its files as checked
    against that manifest (:meth:`open`; :meth:`written` for one this process just wrote): ``files`` lists
    (relative path, sha256 hex) with manifest.json last, ``sizes`` their bytes. Every stage after conversion takes
    one: ``build`` returns it, ``verify``, ``inspect``, ``diagnose``, ``deploy`` and ``fleet`` open a path into it.
    It is also its directory (``os.fspath(bundle)``, ``bundle / "model.tflite"``)."""
    path: Path
    manifest: Manifest
    files: tuple[tuple[str, str], ...]    # (relpath, sha256 hex), manifest.json last
    sizes: dict = field(default_factory=dict, compare=False)

    @classmethod
    def open(cls, path: str | os.PathLike) -> "Bundle":
        """The bundle directory at ``path`` (or a Bundle as it is), every file checked against its manifest before
        anything goes anywhere. Raises UsageError for a missing, linked or invalid manifest or a malformed
        listing, DeployError for a missing or changed file (the first :class:`Problem` of :func:`integrity`)."""
        if isinstance(path, Bundle):
            return path
        root = Path(path)
        if not root.is_dir():
            raise UsageError(f"bundle {root} is not a directory", hint="build one with: edgepack build MODEL")
        manifest, raw = Manifest.read_bytes(root)
        problems, entries, sizes = integrity(root, manifest)
        if problems:
            first = problems[0]
            raise first.error(first.message or f"bundle {root.name}: {first}", hint=first.hint)
        return cls(root, manifest, entries + ((MANIFEST, sha256_bytes(raw)),), {**sizes, MANIFEST: len(raw)})

    @classmethod
    def written(cls, path: str | os.PathLike) -> "Bundle":
        """The bundle this process has just written (or checked) at ``path``: its manifest read back and validated,
        its files as the manifest lists them, not hashed again."""
        root = Path(path)
        manifest, raw = Manifest.read_bytes(root)
        entries = tuple((rel, digest.removeprefix("sha256:")) for rel, digest in sorted(manifest.files.items()))
        sizes = {rel: root.joinpath(*rel.split("/")).stat().st_size for rel, _ in entries}
        return cls(root, manifest, entries + ((MANIFEST, sha256_bytes(raw)),), {**sizes, MANIFEST: len(raw)})

    def check(self) -> list[str]:
        """The bundle's files against its manifest now, one line per problem (:func:`check_files`); [] = intact."""
        return check_files(self.path, self.manifest)

    @property
    def name(self) -> str:
        """The bundle name (the manifest's)."""
        return self.manifest.name

    @property
    def model_sha256(self) -> str:
        """sha256 hex of the bundle's model."""
        return self.manifest.model_sha256

    def __fspath__(self) -> str:
        """The bundle directory."""
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)

    def __truediv__(self, rel: str) -> Path:
        """``bundle / "model.tflite"``: the local path of a file of the bundle (:meth:`local`)."""
        return self.path / rel

    def local(self, rel: str) -> Path:
        """The local path of bundle file ``rel`` (a '/'-separated path relative to the bundle)."""
        return self.path.joinpath(*rel.split("/"))

    @property
    def wanted(self) -> dict[str, str]:
        """{relative path: sha256 hex} of every file of the bundle, manifest.json included."""
        return dict(self.files)


def check_part(name: object, what: str = "bundle file name part") -> str:
    """One component of a path inside a bundle: letters, digits, '.', '_', '-', not starting with
    '-', not '.' or '..'. Raises UsageError."""
    if not isinstance(name, str) or not PART_RE.match(name) or name in (".", ".."):
        raise UsageError(f"{what} {name!r} is not allowed",
                         hint="names are letters, digits, '.', '_' and '-', and do not start with '-'")
    return name


def check_relpath(rel: object) -> str:
    """A path inside a bundle: relative, '/'-separated, every part a valid name."""
    if not isinstance(rel, str) or not rel or rel.startswith("/") or "\\" in rel:
        raise UsageError(f"bundle file name {rel!r} is not allowed")
    for part in rel.split("/"):
        check_part(part)
    return rel


def load_bundle(bundle_dir: str | Path) -> Bundle:
    """Read a bundle and check every file against its manifest before anything goes anywhere
    (deploy, fleet): :meth:`Bundle.open`."""
    return Bundle.open(bundle_dir)


@contextlib.contextmanager
def open_bundle(path):
    """A bundle directory as is, or a bundle .tar.gz unpacked safely into a temp dir for the
    duration of the ``with`` block."""
    path = Path(path)
    if path.is_file() and path.name.endswith((".tar.gz", ".tgz")):
        from ..contain import lifecycle
        with lifecycle.temp_dir("edgepack-bundle-") as tmp:
            yield extract_archive(path, Path(tmp))
    else:
        yield path


MAX_ARCHIVE_MEMBERS = 10_000
MAX_ARCHIVE_BYTES = 4 << 30


def extract_archive(archive: Path, dest: Path) -> Path:
    """Unpack a bundle .tar.gz safely: only regular files and directories, every file named in
    the manifest (no links, devices, absolute paths, '..', duplicates), capped in member count
    and size, then every sha256 re-checked. Returns the bundle directory inside ``dest``."""
    archive = Path(archive)

    def bad(msg: str) -> UsageError:
        return UsageError(f"{archive.name}: {msg}", hint="only archives written by `edgepack build` are accepted")

    try:
        tar = tarfile.open(archive, "r:gz")
    except (OSError, tarfile.TarError) as exc:
        raise bad(f"not a readable .tar.gz ({exc})") from None
    try:
        with tar:
            members, seen, total, root = [], set(), 0, None
            for m in tar:
                if len(members) >= MAX_ARCHIVE_MEMBERS:
                    raise bad(f"more than {MAX_ARCHIVE_MEMBERS} members")
                name = m.name
                parts = name.split("/")
                if name.startswith("/") or ".." in parts or "" in parts[1:] or "\\" in name:
                    raise bad(f"unsafe member path {name!r}")
                if not (m.isreg() or m.isdir()):
                    raise bad(f"member {name!r} is not a regular file or directory")
                if name in seen:
                    raise bad(f"duplicate member {name!r}")
                root = root or parts[0]
                if parts[0] != root:
                    raise bad("members outside one top-level directory")
                check_name(root)
                seen.add(name)
                total += m.size
                if total > MAX_ARCHIVE_BYTES:
                    raise bad(f"expands beyond {MAX_ARCHIVE_BYTES >> 20} MiB")
                members.append(m)
            by_name = {m.name: m for m in members}
            man = by_name.get(f"{root}/{MANIFEST}")
            if man is None or not man.isreg() or man.size > 16 << 20:
                raise bad("no manifest.json")
            try:
                manifest = parse(tar.extractfile(man).read(), f"{root}/{MANIFEST}")
            except UsageError as exc:
                raise bad(f"manifest.json is not an edgepack manifest ({exc.message})") from None
            listed = set(manifest.files)
            allowed_dirs = {root} | {f"{root}/" + "/".join(p.split("/")[:i]) for p in listed
                                     for i in range(1, p.count("/") + 1)}
            for m in members:
                rel = m.name[len(root) + 1:]
                if m.isdir() and m.name not in allowed_dirs:
                    raise bad(f"directory {m.name!r} is not part of the bundle")
                if m.isreg() and rel != MANIFEST and rel not in listed:
                    raise bad(f"file {m.name!r} is not named in the manifest")
            missing = listed - {m.name[len(root) + 1:] for m in members if m.isreg()}
            if missing:
                raise bad("files named in the manifest are missing: " + ", ".join(sorted(missing)))
            out = Path(dest) / root
            for m in members:
                target = Path(dest) / m.name
                if m.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(m) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                os.chmod(target, 0o755 if m.mode & 0o100 else 0o644)
    except (EOFError, zlib.error, tarfile.TarError, gzip.BadGzipFile) as exc:  # truncated or corrupt stream
        raise bad(f"truncated or corrupt archive ({type(exc).__name__}: {str(exc)[:200] or 'unexpected end of data'})") from None
    problems = check_files(out, manifest)
    if problems:
        raise bad("checksum mismatch: " + "; ".join(problems))
    return out
