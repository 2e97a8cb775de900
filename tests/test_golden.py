"""Unit tests on the committed golden bundles (tests/golden/, built by tests/golden/make.py): manifest, bundle
integrity, the device script, the verdict criteria on the bundled samples. No TensorFlow, nothing is built: the
whole module is in the fast layer (``./dev test -m fast``)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from packager.bundle.files import check_files, load_bundle, read_manifest
from packager.errors import DeployError

pytestmark = pytest.mark.fast
GOLDEN = Path(__file__).resolve().parent / "golden"
NAMES = sorted(p.name for p in GOLDEN.iterdir() if (p / "manifest.json").is_file())
SCRIPT = Path(__file__).resolve().parent.parent / "device_runtime" / "edgepack_run.py"
REBUILD = "the golden bundles are stale: rebuild them with `.venv/bin/python tests/golden/make.py` and commit tests/golden/"


def test_the_golden_bundles_are_there():
    from tests.golden.make import GOLDEN as MADE
    assert NAMES == sorted(MADE), REBUILD


@pytest.mark.parametrize("name", NAMES)
def test_golden_bundles_are_valid_for_this_manifest_format(name):
    """A bundle format change makes this fail: rerun tests/golden/make.py (the message says so)."""
    from device_runtime.edgepack_run import Failure, check_manifest
    try:
        m = read_manifest(GOLDEN / name)
        bundle = load_bundle(GOLDEN / name)
        check_manifest(json.loads((GOLDEN / name / "manifest.json").read_text()))
    except (Failure, Exception) as exc:  # noqa: BLE001 - any refusal of a golden bundle means it is stale
        pytest.fail(f"{name}: {getattr(exc, 'message', exc)}; {REBUILD}")
    assert m.name == name and bundle.name == name and check_files(GOLDEN / name, m) == [], REBUILD
    assert m.samples and m.expected, REBUILD


@pytest.fixture
def damaged(tmp_path):
    def make(name: str, rel: str) -> Path:
        copy = shutil.copytree(GOLDEN / name, tmp_path / name)
        data = bytearray((copy / rel).read_bytes())
        data[len(data) // 2] ^= 0x01
        (copy / rel).write_bytes(bytes(data))
        return copy
    return make


@pytest.mark.parametrize("rel", ["model.tflite", "edgepack_run.py", "samples/inputs.npz"])
def test_a_changed_byte_is_caught(damaged, rel):
    bundle = damaged("dense-f32", rel)
    assert check_files(bundle, read_manifest(bundle)) == [f"{rel}: sha256 differs from the manifest"]
    with pytest.raises(DeployError, match=f"bundle file {rel} does not match manifest.json"):
        load_bundle(bundle)


def _script(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=60,
                          cwd=cwd)


@pytest.mark.parametrize("name", NAMES)
def test_device_script_self_test_and_run(name, tmp_path):
    """This repository's device script, run by this Python, on each golden bundle: --self-test passes, and --input
    gives outputs keyed by name that the verdict's criteria accept against the outputs recorded at build."""
    from packager.bundle.files import load_bundle
    from packager.compare import compare_all
    from packager.deploy.ondevice import sample_material
    res = _script("--bundle", GOLDEN / name, "--self-test")
    assert res.returncode == 0, res.stderr
    out = tmp_path / "out.npz"
    res = _script("--bundle", GOLDEN / name, "--input", GOLDEN / name / "samples" / "inputs.npz", "--output", out)
    assert res.returncode == 0, res.stderr
    material = sample_material(load_bundle(GOLDEN / name))
    with np.load(out) as got:
        outputs = {k: got[k] for k in got.files}
    assert set(outputs) == set(material.references[0])
    metrics = compare_all(material.references[0], outputs, material.tolerance, material.steps)
    assert all(m.passed for m in metrics), [m.reasons for m in metrics]
    # the criteria catch a changed answer: every sample's top class moved for the class-scores output
    probs = outputs["probs"]
    moved = {**outputs, "probs": np.roll(probs, 1, axis=-1)}
    bad = {m.name: m for m in compare_all(material.references[0], moved, material.tolerance, material.steps)}
    assert not bad["probs"].passed and bad["probs"].reasons


def test_device_script_refuses_a_damaged_model_with_exit_3(damaged):
    from device_runtime.edgepack_run import EXIT_INTEGRITY, EXIT_MEANINGS
    bundle = damaged("dense-int8", "model.tflite")
    res = _script("--bundle", bundle, "--self-test")
    assert res.returncode == EXIT_INTEGRITY, res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith("edgepack_run: error: model sha256")
    assert EXIT_MEANINGS[res.returncode] == "integrity check failed"


def test_two_outputs_are_both_judged():
    from packager.deploy.ondevice import sample_material
    material = sample_material(load_bundle(GOLDEN / "two-out"))
    assert {n: t.kind for n, t in material.tolerance.items()} == {"probs": "class-scores", "value": "values"}


def test_the_bundle_is_one_type(damaged):
    """A bundle is one frozen value: opened once (every file checked by the one integrity check), written or opened
    the same, its manifest typed, and it is its directory for everything that takes a path."""
    import os
    from packager import api
    from packager.bundle.files import Bundle, integrity
    bundle = Bundle.open(GOLDEN / "dense-f32")
    assert bundle == Bundle.written(GOLDEN / "dense-f32") == load_bundle(bundle)
    assert os.fspath(bundle) == str(GOLDEN / "dense-f32") and (bundle / "model.tflite").is_file()
    assert bundle.name == bundle.manifest.name == "dense-f32" and bundle.files[-1][0] == "manifest.json"
    assert bundle.check() == [] and integrity(bundle.path, bundle.manifest)[0] == []
    info = api.inspect(bundle)
    assert info["kind"] == "bundle" and info["integrity"] == "ok" and info["manifest"]["name"] == "dense-f32"
    copy = damaged("dense-f32", "samples/inputs.npz")
    problems = integrity(copy, bundle.manifest)[0]
    assert [str(p) for p in problems] == ["samples/inputs.npz: sha256 differs from the manifest"]
    assert problems[0].error is DeployError and check_files(copy) == [str(problems[0])]
