"""The `edgepack` command as a user meets it: exit codes, one-line errors, --json, --help."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent


def edgepack(*args, cwd=None, timeout=600):
    env = dict(os.environ, COLUMNS="200")
    env.pop("EDGEPACK_IN_PROCESS", None)     # the real default: TensorFlow in a contained child
    return subprocess.run([sys.executable, "-m", "packager.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=timeout)


def assert_clean_error(proc, code, fragment):
    assert proc.returncode == code, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    assert "error:" in proc.stderr and fragment in proc.stderr, proc.stderr


def test_build_json_then_inspect_and_verify(zoo, data_files, tmp_path):
    out = tmp_path / "dist" / "digits-android"
    proc = edgepack("build", zoo["keras3_h5"], "--target", "android", "--quantize", "int8", "--calibration",
                    data_files["calibration"], "--data", data_files["eval"], "-o", out, "--json",
                    "--html", tmp_path / "r.html")
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert result["ok"] is True and result["manifest"]["target"]["name"] == "android"
    (rt,) = result["verification"]["runtimes"]
    assert rt["status"] == "passed" and rt["outputs"][0]["accuracy_candidate"] > 0.9
    assert "<svg" in (tmp_path / "r.html").read_text()
    info = json.loads(edgepack("inspect", out, "--json").stdout)
    assert info["kind"] == "bundle" and info["integrity"] == "ok"
    assert {o["name"] for o in info["model"]["ops"]} >= {"FULLY_CONNECTED"}
    proc = edgepack("verify", out, "--reference", zoo["keras3_h5"], "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["passed"] is True
    assert not any("is not the model this bundle was built from" in n for n in json.loads(proc.stdout)["notes"])
    # A different model as reference: refused by name before any number is computed.
    proc = edgepack("verify", out, "--reference", zoo["multi_io"])
    assert_clean_error(proc, 2, "not the bundle's")


def test_verify_mismatch_exit_4_with_numbers(zoo, int8_bundle, tmp_path):
    proc = edgepack("verify", int8_bundle.bundle, "--reference", zoo["other_same_shapes"], "--runtime",
                    "ai-edge-litert", "--json")
    assert proc.returncode == 4
    data = json.loads(proc.stdout)
    assert data["ok"] is False and data["failures"]
    # the verdict also says the reference is another file than the one the bundle was built from
    assert any("is not the model this bundle was built from" in n for n in data["notes"]), data
    assert "change their decision" in data["failures"][0] or "R²" in data["failures"][0]


@pytest.mark.parametrize("args,code,fragment", [
    (["build", "nope.h5"], 2, "model not found"),
    (["build", "{empty}"], 2, "empty"),
    (["build", "{random}"], 2, "not a Keras"),
    (["build", "{dir}"], 2, "not a SavedModel"),
    (["build", "{model}", "--target", "toaster"], 2, "unknown target"),
    (["build", "{model}", "--quantize", "int8"], 2, "needs calibration"),
    (["build", "{model}", "--quantize", "int16x8"], 2, "needs calibration"),
    (["build", "{model}", "--quantize", "float16", "--io", "int8"], 2, "does not support --io"),
    (["verify", "{dir}", "--reference", "{model}"], 2, "not an edgepack bundle"),
    (["inspect", "{random}"], 2, "TFL3"),
])
def test_bad_input_is_one_line_and_exit_code(args, code, fragment, zoo, tmp_path):
    (tmp_path / "empty.h5").write_bytes(b"")
    (tmp_path / "random.h5").write_bytes(np.random.default_rng(0).bytes(4096))
    (tmp_path / "adir").mkdir()
    subs = {"{empty}": tmp_path / "empty.h5", "{random}": tmp_path / "random.h5", "{dir}": tmp_path / "adir",
            "{model}": zoo["keras3_h5"]}
    proc = edgepack(*[subs.get(a, a) for a in args], "-o" if args[0] == "build" else "--json",
                    *([tmp_path / "out"] if args[0] == "build" else []), cwd=tmp_path)
    if args[0] != "build":
        # --json errors are JSON on stdout, and still the message on stderr
        assert json.loads(proc.stdout)["ok"] is False
    assert_clean_error(proc, code, fragment)
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.staging*"))


def test_help_teaches():
    proc = edgepack("build", "--help")
    assert proc.returncode == 0
    for needle in ("--quantize", "--calibration", "--target", "Examples", "--no-verify", "--json"):
        assert needle in proc.stdout
    top = edgepack("--help").stdout
    assert "Exit codes" in top and "deploy" in top


def test_targets_and_recipes_json():
    targets = json.loads(edgepack("targets", "--json").stdout)
    by_name = {t["name"]: t for t in targets}
    assert set(by_name) >= {"rpi", "android"}
    rpi_runtimes = {r["name"]: r for r in by_name["rpi"]["runtimes"]}
    assert "numpy>=1.23,<2" in rpi_runtimes["tflite-runtime"]["requirements"]
    assert by_name["android"]["deploy"] == "adb"
    recipes = {r["name"]: r for r in json.loads(edgepack("recipes", "--json").stdout)}
    assert recipes["int8"]["needs_calibration"] is True and recipes["float16"]["needs_calibration"] is False


def test_new_target_is_just_a_file(tmp_path, monkeypatch):
    (tmp_path / "tmp-board-zz.toml").write_text(         # a name no built-in target will take
        'name = "tmp-board-zz"\narch = "arm64"\ndeploy = "ssh"\nremote_dir = "~/edgepack/{name}"\n'
        'default_recipe = "float16"\n[[runtimes]]\nname = "ai-edge-litert"\nmodule = "ai_edge_litert"\n'
        'requirements = ["ai-edge-litert==2.3.*"]\n')
    env = dict(os.environ, EDGEPACK_TARGETS_PATH=str(tmp_path))
    proc = subprocess.run([sys.executable, "-m", "packager.cli", "targets", "--json"], capture_output=True, text=True,
                          env=env, timeout=120)
    assert "tmp-board-zz" in {t["name"] for t in json.loads(proc.stdout)}
    (tmp_path / "broken.toml").write_text('name = "broken"\n')
    proc = subprocess.run([sys.executable, "-m", "packager.cli", "targets"], capture_output=True, text=True,
                          env=env, timeout=120)
    assert_clean_error(proc, 2, "missing")


@pytest.mark.parametrize("columns", [80, 120])
def test_verify_reads_at_columns(int8_bundle, zoo, data_files, columns):
    """What a person sees in a terminal of that width, colour off: no line wider, every number whole,
    nothing TensorFlow/absl print, no source locations."""
    import re
    env = dict(os.environ, COLUMNS=str(columns), NO_COLOR="1")
    env.pop("EDGEPACK_IN_PROCESS", None)
    proc = subprocess.run([sys.executable, "-m", "packager.cli", "verify", int8_bundle.bundle, "-r", zoo["keras3_h5"],
                           "--data", data_files["eval"]], capture_output=True, text=True, env=env, timeout=600,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert max(map(len, lines)) <= columns, proc.stdout
    rows = [ln for ln in lines if ln.lstrip().startswith(("litert ", "tflrt "))]
    assert len(rows) == 2, proc.stdout                                  # one line per runtime
    for row in rows:
        assert re.search(r" 0\.9\d{3,}\b", row) and re.search(r"\d\.\d{3,4}→\d\.\d{3,4}", row), row
    assert "MATCH" in proc.stdout and "held-out" in proc.stdout
    for line in proc.stderr.splitlines():                               # progress lines only
        assert re.match(r"\s*\d+\.\ds ", line), line
        assert not re.search(r"\w+\.py:\d+|tensorflow/|absl|WARNING|I0000", line), line


@pytest.mark.parametrize("args, words", [
    (["verify", "some-bundle", "--json"], "Missing option '--reference'"),
    (["build", "--json"], "Missing argument 'MODEL'"),
    (["build", "m.h5", "--bogus", "--json"], "No such option: --bogus"),
    (["nosuch", "--json"], "No such command 'nosuch'"),
])
def test_usage_mistakes_go_through_the_boundary(args, words):
    """typer's own usage errors are edgepack errors too: one line and a hint on stderr, exit 2, and
    with --json one JSON document on stdout (not typer's usage block)."""
    proc = edgepack(*args)
    assert proc.returncode == 2
    doc = json.loads(proc.stdout)
    assert doc["ok"] is False and words in doc["error"] and doc["exit_code"] == 2 and doc["hint"].startswith("see: ")
    plain = edgepack(*[a for a in args if a != "--json"])
    assert plain.returncode == 2 and plain.stdout == ""
    assert plain.stderr.splitlines()[0].startswith("error: ") and plain.stderr.splitlines()[1].startswith("hint: ")


def test_json_keeps_progress_on_stderr(zoo, tmp_path):
    """Issue 24 part 8: long work is never silent; with --json the progress goes to stderr and stdout stays one
    JSON document."""
    proc = edgepack("build", zoo["keras3_h5"], "-q", "float32", "--runtime", "ai-edge-litert", "-o", tmp_path / "b",
                    "--json", "--no-cache")
    assert proc.returncode == 0, proc.stderr[-1000:]
    assert json.loads(proc.stdout)["ok"] is True
    assert "loading and converting" in proc.stderr and "verifying with ai-edge-litert" in proc.stderr
