"""Bundle assembly: stage everything in a sibling temp dir, write manifest.json last, verify,
then move into place; a deterministic .tar.gz of the same tree goes beside it."""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import shutil
import tarfile
import tempfile
from pathlib import Path

import numpy as np

from .errors import UsageError

ENTRYPOINT_SOURCE = Path(__file__).resolve().parent.parent / "device_runtime" / "edgepack_run.py"
ENTRYPOINT = "edgepack_run.py"
MODEL = "model.tflite"
MANIFEST = "manifest.json"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
FORMAT = 1


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_tree(path: Path) -> str:
    """Content hash of a file or a directory (relative names + bytes), for source identity."""
    if path.is_file():
        return sha256_file(path)
    h = hashlib.sha256()
    for p in sorted(q for q in path.rglob("*") if q.is_file()):
        h.update(str(p.relative_to(path)).encode() + b"\0" + sha256_file(p).encode() + b"\0")
    return h.hexdigest()


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
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def validate_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise UsageError(f"bundle name {name!r} is not allowed",
                         hint="use letters, digits, '.', '_' or '-', not starting with '.' or '-'")
    return name


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


def _replaceable(path: Path) -> bool:
    """An existing -o may be replaced when it is an empty dir or an earlier bundle."""
    return path.is_dir() and not path.is_symlink() and (
        (path / MANIFEST).is_file() or not any(path.iterdir()))


class Staging:
    """A bundle being assembled next to its final place (same filesystem, so the move is a rename)."""

    def __init__(self, output: Path):
        self.output = Path(output).absolute()
        if self.output.exists() and not _replaceable(self.output):
            raise UsageError(f"{self.output} exists and is not an edgepack bundle; refusing to overwrite it",
                             hint="choose another -o directory or remove it")
        self.output.parent.mkdir(parents=True, exist_ok=True)
        self.dir = Path(tempfile.mkdtemp(dir=self.output.parent, prefix=f".{self.output.name}.staging-"))
        os.chmod(self.dir, 0o755)
        self.files: dict[str, str] = {}

    def write(self, rel: str, data: bytes, mode: int = 0o644) -> str:
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

    def write_manifest(self, manifest: dict) -> None:
        manifest["files"] = dict(sorted(self.files.items()))
        atomic_write(self.dir / MANIFEST, manifest_bytes(manifest))

    def commit(self) -> Path:
        """Move the staged bundle to ``output``; an older bundle there is replaced."""
        for p in self.dir.rglob("*"):
            if p.is_dir():
                fsync_dir(p)
        fsync_dir(self.dir)
        old = None
        if self.output.exists():
            old = self.output.parent / f".{self.output.name}.old-{os.getpid()}"
            os.replace(self.output, old)
        os.replace(self.dir, self.output)
        fsync_dir(self.output.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.output

    def discard(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def manifest_bytes(manifest: dict) -> bytes:
    return (json.dumps(manifest, indent=2, sort_keys=False, default=_json_default) + "\n").encode()


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, float) and value != value:
        return None
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def write_archive(bundle: Path, archive: Path | None = None) -> Path:
    """Deterministic .tar.gz: sorted entries, mtime 0, root-owned, fixed modes, no gzip name/time."""
    bundle = Path(bundle)
    archive = Path(archive) if archive else bundle.with_name(bundle.name + ".tar.gz")
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
                info.size = len(data)
                info.mode = 0o755 if os.access(p, os.X_OK) else 0o644
                tar.addfile(info, io.BytesIO(data))
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=9) as gz:
        gz.write(raw.getvalue())
    atomic_write(archive, out.getvalue())
    return archive


def read_manifest(bundle: Path) -> dict:
    path = Path(bundle) / MANIFEST
    if not path.is_file():
        raise UsageError(f"{bundle} is not an edgepack bundle (no {MANIFEST})",
                         hint="pass the directory written by `edgepack build -o DIR`")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path} is unreadable: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise UsageError(f"{path} is not an edgepack format-{FORMAT} manifest")
    return manifest


def check_files(bundle: Path, manifest: dict) -> list[str]:
    """Problems with the bundle's files against the manifest (empty list = intact)."""
    problems = []
    root = Path(bundle).resolve()
    for rel, digest in manifest.get("files", {}).items():
        path = (root / rel).resolve()
        if root not in path.parents or not path.is_file() or path.is_symlink():
            problems.append(f"{rel}: missing or outside the bundle")
            continue
        if "sha256:" + sha256_file(path) != digest:
            problems.append(f"{rel}: sha256 differs from the manifest")
    return problems
