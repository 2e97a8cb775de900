"""Models from the field, round 3 (issue 24, items 2 and 6): causes and hints that send users the right way.
Each model is generated here, tiny; the CLI runs in a subprocess as users run it (tests/test_field_models.py)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from tests import field_models as fm
from tests.test_field_models import cli


def _keras():
    import keras
    keras.utils.set_random_seed(0)
    return keras


# --------------------------------------------------------------------------- a: mixed_float16
def _mixed_model(tmp_path):
    keras = _keras()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        inp = keras.Input((8, 8, 3), name="image")
        h = keras.layers.Conv2D(4, 3, activation="relu")(inp)
        h = keras.layers.GlobalAveragePooling2D()(h)
        h = keras.layers.Dense(3)(h)
        model = keras.Model(inp, keras.layers.Activation("softmax", dtype="float32", name="probs")(h))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    model.save(tmp_path / "mixed.keras")
    x = np.random.default_rng(0).random((40, 8, 8, 3)).astype(np.float32)
    np.savez(tmp_path / "eval.npz", image=x)
    return model, x


def test_mixed_float16_is_converted_as_a_float32_clone(tmp_path):
    model, x = _mixed_model(tmp_path)
    proc = cli("build", tmp_path / "mixed.keras", "-q", "float32", "--data", tmp_path / "eval.npz",
               "-o", tmp_path / "b")
    assert proc.returncode == 0, proc.stderr
    text = " ".join((proc.stdout + proc.stderr).split())
    assert "the model uses the mixed_float16 policy; converted a float32 clone with the same weights" in text
    assert "tf.Conv2D" not in text
    keras = _keras()
    clone = keras.models.clone_model(model, clone_function=lambda layer: layer.__class__.from_config(
        {**layer.get_config(), "dtype": "float32"}))
    clone.set_weights(model.get_weights())
    got = fm.raw_outputs(tmp_path / "b", {"image": x})["probs"]
    assert np.max(np.abs(got - np.asarray(clone(x)))) < 1e-5          # the reference: the float32 clone
    assert np.max(np.abs(got - np.asarray(model(x)))) < 1e-2          # the original, up to float16 rounding


# --------------------------------------------------------------------------- b: TextVectorization
def test_string_preprocessing_is_refused_with_the_way_to_split_it_off(tmp_path):
    keras = _keras()
    vec = keras.layers.TextVectorization(max_tokens=20, output_sequence_length=5, name="vectorize")
    vec.adapt(["a b c", "b c d e", "e f g a"])
    inp = keras.Input((1,), dtype="string", name="text")
    h = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(20, 4)(vec(inp)))
    model = keras.Model(inp, keras.layers.Dense(2, name="y")(h))
    model.save(tmp_path / "text.keras")
    proc = cli("build", tmp_path / "text.keras", "-q", "float32", "-o", tmp_path / "b")
    assert proc.returncode == 3, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith(("error:", "hint:"))]
    assert len(lines) == 2, proc.stderr
    assert "string preprocessing (TextVectorization 'vectorize') cannot go into a model" in lines[0]
    assert "TFLite builtins have no string ops" in lines[0]
    assert "keras.Model(model.get_layer('vectorize').output, model.outputs)" in lines[1]
    assert "run TextVectorization 'vectorize' in the app" in lines[1]
    assert "TypeError" not in proc.stderr and "report" not in proc.stderr
    # The hint's way out builds, and the bundle computes what the model computes after the vectorizer.
    ids_model = keras.Model(model.get_layer("vectorize").output, model.outputs)
    ids_model.save(tmp_path / "ids.keras")
    proc = cli("build", tmp_path / "ids.keras", "-q", "float32", "-o", tmp_path / "ids")
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((tmp_path / "ids" / "manifest.json").read_text())
    name = manifest["inputs"][0]["name"]
    ids = np.asarray(vec(np.array([["a b c"], ["e f g a x"], ["d"]])))
    got = fm.raw_outputs(tmp_path / "ids", {name: ids})["y"]
    assert np.max(np.abs(got - np.asarray(model(np.array([["a b c"], ["e f g a x"], ["d"]]))))) < 1e-5


# --------------------------------------------------------------------------- c: SavedModel signatures
def _two_signatures(path, serving_default=False):
    import tensorflow as tf
    rng = np.random.default_rng(0)

    class Two(tf.Module):
        def __init__(self):
            self.w = tf.Variable(rng.normal(size=(4, 3)).astype("float32"))
            self.v = tf.Variable(rng.normal(size=(4, 2)).astype("float32"))

        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def classify(self, x):
            return {"scores": tf.nn.softmax(tf.matmul(x, self.w))}

        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def regress(self, x):
            return {"value": tf.matmul(x, self.v)}

    m = Two()
    sigs = {"classify": m.classify, "regress": m.regress}
    if serving_default:
        sigs["serving_default"] = m.regress
    tf.saved_model.save(m, str(path), signatures=sigs)
    return m.v.numpy()


def test_several_signatures_need_a_choice_and_the_choice_is_recorded(tmp_path):
    v = _two_signatures(tmp_path / "sm")
    proc = cli("build", tmp_path / "sm", "-q", "float32", "-o", tmp_path / "b")
    assert proc.returncode == 2, proc.stderr
    assert "error: sm has 2 signatures and none is serving_default: classify, regress" in proc.stderr
    assert "--signature NAME" in proc.stderr
    assert not (tmp_path / "b").exists()
    proc = cli("build", tmp_path / "sm", "-q", "float32", "-o", tmp_path / "b", "--signature", "nope")
    assert proc.returncode == 2 and "no such signature (it has: classify, regress)" in proc.stderr
    proc = cli("build", tmp_path / "sm", "-q", "float32", "-o", tmp_path / "b", "--signature", "regress")
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["source"]["signature"] == "regress"
    assert [t["name"] for t in manifest["outputs"]] == ["value"]
    x = np.random.default_rng(1).normal(size=(5, 4)).astype(np.float32)
    assert np.max(np.abs(fm.raw_outputs(tmp_path / "b", {"x": x})["value"] - x @ v)) < 1e-5
    # verify reads the recorded signature; another one is another model
    assert cli("verify", tmp_path / "b", "-r", tmp_path / "sm").returncode == 0
    proc = cli("verify", tmp_path / "b", "-r", tmp_path / "sm", "--signature", "classify")
    assert proc.returncode == 2 and "outputs (scores) are not the bundle's (value)" in proc.stderr


def test_serving_default_is_the_default_signature(tmp_path):
    _two_signatures(tmp_path / "sm", serving_default=True)
    proc = cli("build", tmp_path / "sm", "-q", "float32", "-o", tmp_path / "b", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["manifest"]["source"]["signature"] == "serving_default"
    assert any("others: classify, regress; --signature NAME picks one" in w for w in result["warnings"])


# --------------------------------------------------------------------------- d: the --quantize auto report
def _cand(label, size, passed, reason, converted=True):
    from packager.repair import Candidate
    return Candidate(label, label.split()[0], size=size if converted else 0, passed=passed, reason=reason,
                     model=b"x" if converted else None, error=None if converted else reason)


def test_auto_report_is_true_of_sizes_and_printed_once(monkeypatch):
    from packager.repair import Budget, explain_choice, explain_failures
    chosen = _cand("float16", 4080, True, "meets the budget in every runtime")
    cands = [_cand("int8", 3728, False, "cosine 0.99 < 0.999"), chosen,
             _cand("dynamic", 4200, False, "runtime x cannot run it"),
             _cand("int16x8", 0, False, "op CAST: 16x8 not supported", converted=False),
             _cand("float32", 6244, None, "not measured: a smaller candidate met the budget")]
    why = explain_choice(chosen, cands, Budget(min_cosine=0.999))
    assert why.startswith("float16 (4,080 bytes) is the smallest candidate that meets cosine >= 0.999")
    assert "smaller ones failed: int8 (3,728 bytes): cosine 0.99 < 0.999" in why
    assert "larger ones failed: dynamic (4,200 bytes)" in why
    assert "not converted: int16x8: op CAST" in why
    smaller = why.split("smaller ones failed:")[1].split("; larger")[0]
    assert "dynamic" not in smaller and "int16x8" not in smaller and "0 B" not in why
    assert explain_failures(cands).startswith("failed: int8 (3,728 bytes)")
    # the table cuts long reasons and runtime errors at a word, and says "cannot run" once
    from packager.cli import render_diagnose
    import io
    from rich.console import Console
    buf = io.StringIO()
    monkeypatch.setattr(render_diagnose, "out", Console(file=buf, width=400, color_system=None, highlight=False))
    error = ("tflite-runtime 2.14.0 (x86_64) cannot run the model: ValueError: Didn't find op for builtin opcode "
             "'FULLY_CONNECTED' version '12'")
    assert render_diagnose._clip(render_diagnose._runtime_error({"error": error}), 60) == \
        "ValueError: Didn't find op for builtin opcode ..."
    assert render_diagnose._clip("word " * 40, 80).endswith("word ...")
    data = {"budget": {"text": "cosine >= 0.999"}, "why": why, "candidates": [
        {"label": "int8", "size": 3728, "float_ops": [], "passed": False, "reason": "wordy " * 40, "runtimes": []},
        {"label": "dynamic", "size": 4200, "float_ops": [], "passed": False, "reason": "x",
         "runtimes": [{"runtime": "tflite-runtime", "status": "error", "error": error}]}]}
    render_diagnose.show_candidates(data)
    text = buf.getvalue()
    words = set(text.replace("│", " ").split())
    assert "wordy" in words and not any(w.startswith("word") and w != "wordy" for w in words)
    table = text.split("chosen:")[0]
    assert "'FULLY_CONNECTED'" not in table and table.count("cannot run") == 1
    assert text.count("is the smallest candidate") == 1


# --------------------------------------------------------------------------- e: diagnose names the real --data file
def test_diagnose_titles_the_data_file_by_its_name(tmp_path):
    keras = _keras()
    inp = keras.Input((16,), name="x")
    model = keras.Model(inp, keras.layers.Dense(4, name="y")(keras.layers.Dense(32, activation="relu")(inp)))
    model.save(tmp_path / "m.keras")
    x = np.random.default_rng(0).normal(size=(300, 16)).astype(np.float32)
    np.savez(tmp_path / "cal.npz", x=x[:100])
    np.savez(tmp_path / "eval.npz", x=x)                  # more than diagnose's 256: a capped copy is used
    proc = cli("build", tmp_path / "m.keras", "-q", "int8", "-c", tmp_path / "cal.npz", "--no-verify",
               "-o", tmp_path / "b")
    assert proc.returncode == 0, proc.stderr
    proc = cli("diagnose", tmp_path / "b", "-r", tmp_path / "m.keras", "--data", tmp_path / "eval.npz",
               env={"COLUMNS": "300"})
    assert proc.returncode == 0, proc.stderr
    assert "(held-out: eval.npz, n=256)" in proc.stdout
    assert "data.npz" not in proc.stdout


# --------------------------------------------------------------------------- f: the blocker that stopped the build
def test_int16x8_recurrent_names_the_op_that_stopped_it(tmp_path):
    kind = fm.recurrent(tmp_path, "lstm", masking=True)            # fixed time length; Masking gives NOT_EQUAL
    proc = cli("build", kind.model, "-q", "int16x8", "-c", kind.calibration, "--data", kind.eval, "-o", tmp_path / "b")
    assert proc.returncode == 3, proc.stderr
    error = next(ln for ln in proc.stderr.splitlines() if ln.startswith("error:"))
    hint = next(ln for ln in proc.stderr.splitlines() if ln.startswith("hint:"))
    assert error.startswith("error: no conversion path produced a TFLite model that runs: keras-unrolled-recurrent: "
                            "Quantization to 16x8-bit not yet supported for op: 'NOT_EQUAL'"), error
    assert "no 16x8 kernel for op NOT_EQUAL" in hint and "try --quantize int8, dynamic or float16" in hint
    assert "fixed time length" not in proc.stderr and "keras.Input((T" not in proc.stderr


def test_recurrent_with_open_time_axis_keeps_the_fixed_time_hint(tmp_path):
    keras = _keras()
    inp = keras.Input((None, 3), name="x")
    model = keras.Model(inp, keras.layers.Dense(2, name="y")(keras.layers.LSTM(4)(inp)))
    model.save(tmp_path / "open.keras")
    np.savez(tmp_path / "cal.npz", x=np.random.default_rng(0).normal(size=(16, 6, 3)).astype(np.float32))
    proc = cli("build", tmp_path / "open.keras", "-q", "int16x8", "-c", tmp_path / "cal.npz", "-o", tmp_path / "b")
    assert proc.returncode == 3, proc.stderr
    assert "fixed time length: build the model with keras.Input((T, features))" in proc.stderr


# --------------------------------------------------------------------------- g: hints true of a token-id model
def test_int8_of_token_ids_recommends_no_recipe_that_cannot_build_it(tmp_path):
    kind = fm.embedding_ids(tmp_path)
    proc = cli("build", kind.model, "-q", "int16x8", "-c", kind.calibration, "-o", tmp_path / "b16")
    assert proc.returncode == 3, proc.stderr                      # int16x8 cannot build a token-id model
    proc = cli("build", kind.model, "-q", "int8", "-c", kind.calibration, "--data", kind.eval, "-o", tmp_path / "b")
    assert proc.returncode == 4, proc.stderr
    error = next(ln for ln in proc.stderr.splitlines() if ln.startswith("error:"))
    hint = next(ln for ln in proc.stderr.splitlines() if ln.startswith("hint:"))
    assert "int16x8" not in error and "int16x8" not in hint
    assert "scaled like" not in error and "drawn like the real inputs" not in hint
    assert hint.startswith("hint: try --quantize dynamic or float16")


def test_integer_ids_have_no_calibration_scale():
    from packager.convert.converter import _likely_cause
    from packager.recipes import get_recipe
    cal = {"tokens": np.random.default_rng(0).integers(0, 30, (200, 12)).astype(np.float32)}
    check = {"tokens": np.random.default_rng(1).integers(0, 300, (64, 12)).astype(np.int32)}
    assert "scaled like" in (_likely_cause([], get_recipe("int8"), cal, check) or "")     # as if a real value
    assert _likely_cause([], get_recipe("int8"), cal, check, ids=("tokens",)) is None
