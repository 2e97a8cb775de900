"""Recipes side by side (issue 13, part 3): `build -q all` gives one bundle per recipe at
dist/NAME-TARGET-RECIPE, one table, loading and reference outputs shared; each bundle checked
independently against Keras."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

from packager import api
from tests import field_models as fm

ROOT = fm.Path(__file__).resolve().parent.parent


def test_all_recipes_side_by_side(zoo, data_files, tmp_path):
    res = api.build_sweep(zoo["keras3_h5"], ["float32", "float16", "dynamic", "int8", "int16x8"], target="rpi",
                          calibration=data_files["calibration"], data=data_files["eval"], output=tmp_path / "dist",
                          runtimes=["ai-edge-litert"])
    rows = {r["recipe"]: r for r in res.rows}
    assert list(rows) == ["float32", "float16", "dynamic", "int8", "int16x8"]
    built = [r for r in res.rows if r["bundle"]]
    assert {r["recipe"] for r in built} >= {"float32", "float16", "int8"}
    for r in built:
        assert fm.Path(r["bundle"]).name == f"k3-rpi-{r['recipe']}" and (fm.Path(r["bundle"]) / "manifest.json").is_file()
        assert r["runtimes"]["ai-edge-litert"]["status"] == "passed"
    assert rows["float32"]["size_vs_float32"] == 1.0
    assert rows["int8"]["size"] < rows["float16"]["size"] < rows["float32"]["size"]
    assert rows["int8"]["runtimes"]["ai-edge-litert"]["accuracy"] is not None
    # independently: the int8 bundle vs the Keras model, with a bare interpreter
    import keras
    model = keras.models.load_model(zoo["keras3_h5"], compile=False)
    x = data_files["xt"][:40]
    got = fm.raw_outputs(fm.Path(rows["int8"]["bundle"]), {"pixels": x})
    assert float(np.max(np.abs(got["probs"] - np.asarray(model(x))))) < 0.05


def test_sweep_cli_skips_what_needs_calibration_and_prints_one_json(zoo, tmp_path):
    env = dict(os.environ, EDGEPACK_IN_PROCESS="0")
    proc = subprocess.run([sys.executable, "-m", "packager.cli", "build", str(zoo["keras3_h5"]), "-q", "all",
                           "--runtime", "ai-edge-litert", "-o", str(tmp_path / "d"), "--json"],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    status = {r["recipe"]: r["status"] for r in data["recipes"]}
    assert status["int8"] == status["int16x8"] == "skipped" and status["float32"] == "built"
    proc = subprocess.run([sys.executable, "-m", "packager.cli", "build", str(zoo["keras3_h5"]), "-q", "int8,int4"],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 2 and "int4" in proc.stderr and "all" in proc.stderr


def test_one_recipes_converter_crash_is_that_recipes_row(zoo, data_files, tmp_path, monkeypatch):
    """Issue 24 part 1: TensorFlow crashing (SIGSEGV) while converting one recipe took the whole sweep down
    (exit 3, no bundle). Now the crash is that recipe's row; the others are built and verified."""
    from packager import api
    monkeypatch.delenv("EDGEPACK_IN_PROCESS", raising=False)
    monkeypatch.setenv("EDGEPACK_CRASH_AT", "float16")
    seen = []
    sweep = api.build_sweep(zoo["keras3_h5"], ["float32", "float16", "dynamic"], runtimes=["ai-edge-litert"],
                            data=data_files["eval"], output=tmp_path / "dist", progress=seen.append)
    rows = {r["recipe"]: r for r in sweep.rows}
    assert rows["float32"]["status"] == "built" and rows["dynamic"]["status"] == "built"
    assert rows["float16"]["status"] == "refused" and "crashed" in rows["float16"]["reason"]
    assert rows["float16"]["exit_code"] == 3 and rows["float16"]["bundle"] is None
    assert any("converting each recipe on its own" in m for m in seen)
    assert any(m.startswith("[3/3] ") for m in seen)                     # progress says what remains
