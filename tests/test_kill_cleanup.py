"""What a killed edgepack leaves behind: no stale archive beside a new bundle, no TensorFlow
child, no temp dirs, no ssh ControlMaster."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from packager.bundle import check_files

ROOT = Path(__file__).resolve().parent.parent


def _cli(*args):
    return [sys.executable, "-m", "packager.cli", *args]


def _archive_manifest(archive: Path) -> dict:
    with tarfile.open(archive) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("/manifest.json"))
        return json.loads(tar.extractfile(member).read())


@pytest.mark.slow
@pytest.mark.parametrize("point", ["archive-removed", "after-exchange", "between-renames", "after-commit", "archive"])
def test_killed_rebuild_never_leaves_a_stale_archive(point, zoo, tmp_path):
    env = dict(os.environ, EDGEPACK_IN_PROCESS="1", PYTHONPATH=str(ROOT))
    out = tmp_path / "b"
    base = _cli("build", str(zoo["keras3_h5"]), "-t", "rpi", "--runtime", "ai-edge-litert", "-o", str(out))
    subprocess.run(base + ["-q", "float32"], env=env, check=True, capture_output=True, timeout=600)
    archive = out.with_name("b.tar.gz")
    assert _archive_manifest(archive)["recipe"]["name"] == "float32"
    proc = subprocess.run(base + ["-q", "float16"], env=dict(env, EDGEPACK_FAULT_AT=point),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode in (-9, 0), proc.stderr[-500:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert check_files(out, manifest) == []
    if archive.exists():  # present only when it is the archive of the bundle beside it
        assert _archive_manifest(archive) == manifest, point
    else:
        assert proc.returncode == -9
