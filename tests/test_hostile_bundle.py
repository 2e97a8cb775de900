"""Bundles edgepack did not write: `verify` never runs their Python on the host."""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from packager import api
from packager.bundle.files import ENTRYPOINT_SOURCE
from packager.errors import UsageError

LITERT = ["ai-edge-litert"]


def _rewrite_archive(src: Path, out: Path, script: bytes | None = None, entry: str | None = None) -> Path:
    """A copy of a bundle archive with another device script and/or entrypoint; the manifest's
    checksums are recomputed, so the strict archive reader accepts it."""
    with tarfile.open(src) as tin:
        members = [(m, tin.extractfile(m).read() if m.isreg() else None) for m in tin.getmembers()]
    root = members[0][0].name.split("/")[0]
    files = {m.name[len(root) + 1:]: data for m, data in members if m.isreg()}
    manifest = json.loads(files.pop("manifest.json"))
    name = entry or manifest["entrypoint"]
    if script is not None:
        files.pop(manifest["entrypoint"], None)
        files[name] = script
    manifest["entrypoint"] = name
    manifest["files"] = {k: "sha256:" + hashlib.sha256(v).hexdigest() for k, v in sorted(files.items())}
    manifest.setdefault("versions", {})["edgepack"] = "0.0.0-evil"
    files["manifest.json"] = json.dumps(manifest).encode()
    with tarfile.open(out, "w:gz") as tout:
        dirs = {"/".join(k.split("/")[:i]) for k in files for i in range(1, k.count("/") + 1)}
        for d in [root] + sorted(f"{root}/{d}" for d in dirs):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tout.addfile(info)
        for rel, data in sorted(files.items()):
            info = tarfile.TarInfo(f"{root}/{rel}")
            info.size, info.mode = len(data), 0o755
            tout.addfile(info, io.BytesIO(data))
    return out


def _evil_script(marker: Path) -> bytes:
    return (f"import pathlib; pathlib.Path({str(marker)!r}).write_text('ran')\n").encode() + ENTRYPOINT_SOURCE.read_bytes()


def test_verify_runs_this_edgepacks_script_not_the_bundles(int8_bundle, zoo, tmp_path):
    marker = tmp_path / "pwned"
    archive = _rewrite_archive(int8_bundle.archive, tmp_path / "evil.tar.gz", _evil_script(marker))
    report = api.verify(archive, reference=zoo["keras3_h5"], runtimes=LITERT)
    assert not marker.exists(), "the bundle's own script ran on the host"
    assert report.passed
    assert any("differs from the one edgepack" in n and "0.0.0-evil" in n for n in report.notes), report.notes


def test_verify_renamed_entrypoint_also_replaced(int8_bundle, zoo, tmp_path):
    marker = tmp_path / "pwned"
    archive = _rewrite_archive(int8_bundle.archive, tmp_path / "evil.tar.gz", _evil_script(marker), entry="run.py")
    report = api.verify(archive, reference=zoo["keras3_h5"], runtimes=LITERT)
    assert not marker.exists()
    assert report.passed


def test_verify_unchanged_archive_has_no_note(int8_bundle, zoo):
    report = api.verify(int8_bundle.archive, reference=zoo["keras3_h5"], runtimes=LITERT)
    assert report.passed and not any("differs" in n for n in report.notes)


@pytest.mark.parametrize("entry", ["samples/inputs.npz", "../edgepack_run.py", "/usr/lib/python3/x.py",
                                   "sub/run.py", "run.py\n", "-x.py"])
def test_verify_refuses_entrypoint_that_is_not_a_plain_file(entry, int8_bundle, zoo, tmp_path):
    src = int8_bundle.bundle
    bundle = tmp_path / src.name
    import shutil
    shutil.copytree(src, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["entrypoint"] = entry
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UsageError) as exc:
        api.verify(bundle, reference=zoo["keras3_h5"], runtimes=LITERT)
    assert "entrypoint" in exc.value.message and "\n" not in exc.value.message
