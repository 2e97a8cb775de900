"""Models from the field (issue 11): each kind builds and is checked independently (a bare
interpreter on the bundle's model against Keras itself), or is refused with its cause and a way
out. Models are generated here (tests/field_models.py); the verdict must never be a wrong MATCH.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from packager import api
from packager.errors import ConversionError, UsageError, VerificationError
from tests import field_models as fm

ROOT = fm.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return tmp_path_factory.mktemp("field")


def independent(kind, bundle, arrays=None):
    """Max abs error of a bare interpreter on the bundle's model vs Keras, per output."""
    x = arrays if arrays is not None else fm.eval_arrays(kind)
    ref, got = kind.keras_call(x), fm.raw_outputs(bundle, x)
    assert set(ref) == set(got)
    return {k: float(np.max(np.abs(ref[k] - got[k]))) for k in ref}


def cli(*args, env=None):
    full = dict(os.environ, EDGEPACK_IN_PROCESS="0", **(env or {}))
    return subprocess.run([sys.executable, "-m", "packager.cli", *map(str, args)], capture_output=True, text=True,
                          env=full, cwd=ROOT, timeout=900)


# --------------------------------------------------------------------------- fixed batch
@pytest.mark.parametrize("batch", [1, 2])
def test_fixed_batch_builds_and_reports_it(out, batch, tmp_path):
    kind = fm.fixed_batch(out, batch)
    res = api.build(kind.model, recipe="float32", data=kind.eval, output=tmp_path / "b")
    assert res.verification.passed
    assert res.manifest.to_json()["fixed"]["batch"] == batch
    assert res.manifest.to_json()["inputs"][0]["shape"][0] == batch
    assert any(f"fixed at {batch}" in w for w in res.warnings)
    # 48 held-out samples: not a multiple of 2 with 97 generated, so the last chunk is padded.
    assert max(independent(kind, res.bundle).values()) < 1e-5


# --------------------------------------------------------------------------- variable length
def test_variable_length_resizes_to_real_lengths(out, tmp_path, runtime_python):
    kind = fm.conv1d_variable(out)
    res = api.build(kind.model, recipe="float32", data=kind.eval, output=tmp_path / "b")
    report = res.verification.to_json()
    assert report["passed"]
    assert "lengths 10x4/5x4" in report["evidence"]["text"]          # verified on more than one length
    assert res.manifest.to_json()["inputs"][0]["shape"] == [-1, -1, 4]
    rng = np.random.default_rng(3)
    for length in kind.lengths:                                   # lengths verification never saw
        x = {"x": rng.normal(size=(5, length, 4)).astype(np.float32)}
        assert max(independent(kind, res.bundle, x).values()) < 1e-5
        np.savez(tmp_path / "in.npz", **x)
        proc = subprocess.run([*runtime_python.argv, str(res.bundle / "edgepack_run.py"), "--input",
                               str(tmp_path / "in.npz"), "--output", str(tmp_path / "o.npz")],
                              capture_output=True, text=True, env=runtime_python.env)
        assert proc.returncode == 0, proc.stderr
        with np.load(tmp_path / "o.npz") as o:
            assert np.max(np.abs(o["y"] - kind.keras_call(x)["y"])) < 1e-5


def test_variable_length_synthetic_covers_several_lengths(out, tmp_path):
    kind = fm.conv1d_variable(out)
    res = api.build(kind.model, recipe="float32", output=tmp_path / "b")
    ev = res.verification.to_json()["evidence"]
    assert ev["kind"] == "synthetic" and ev["weak"]
    assert "lengths 8x4/3x4/17x4" in ev["text"]


# --------------------------------------------------------------------------- recurrent layers
RECURRENT = {
    "lstm": dict(cell="lstm"), "gru": dict(cell="gru"), "simple_rnn": dict(cell="simple_rnn"),
    "lstm-seq": dict(cell="lstm", return_sequences=True), "gru-stacked": dict(cell="gru", stacked=True),
    "lstm-bi": dict(cell="lstm", bidirectional=True), "lstm-mask": dict(cell="lstm", masking=True),
    # Keras 3 recurrent dropout keeps an int64 seed state that the traced call assigns: converted without it
    "lstm-dropout": dict(cell="lstm", dropout=0.2), "gru-bi-dropout": dict(cell="gru", bidirectional=True, dropout=0.3),
}


@pytest.mark.parametrize("name", list(RECURRENT))
def test_recurrent_builds_in_both_runtimes(out, name, tmp_path):
    kind = fm.recurrent(out, **RECURRENT[name])
    res = api.build(kind.model, recipe="float32", data=kind.eval, output=tmp_path / "b")
    runtimes = {r.runtime: r.status for r in res.verification.runtimes}
    assert runtimes == {"ai-edge-litert": "passed", "tflite-runtime": "passed"}
    assert res.manifest.to_json()["fixed"]["batch"] == 1 and res.manifest.to_json()["inputs"][0]["shape"][0] == 1
    assert "WHILE" in {op["name"] for op in res.manifest.to_json()["ops"]}
    assert not [op for op in res.manifest.to_json()["ops"] if op["custom"]]
    assert max(independent(kind, res.bundle).values()) < 1e-4
    said = [w for w in res.warnings if "recurrent dropout" in w]
    assert bool(said) == ("dropout" in name), res.warnings


def test_recurrent_dynamic_recipe(out, tmp_path):
    kind = fm.recurrent(out, "lstm", return_sequences=True)
    res = api.build(kind.model, recipe="dynamic", data=kind.eval, output=tmp_path / "b")
    assert res.verification.passed
    assert max(independent(kind, res.bundle).values()) < 0.05


def test_recurrent_int8_is_unrolled(out, tmp_path):
    """int8 calibration crashes TF 2.21 on a WHILE loop; with a fixed time length the recurrent
    layers are unrolled (same weights) and int8 works, in both runtimes."""
    kind = fm.recurrent(out, "simple_rnn")
    proc = cli("build", kind.model, "-q", "int8", "-c", kind.calibration, "--data", kind.eval, "-o", tmp_path / "b",
               "--json")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr
    data = json.loads(proc.stdout)
    assert data["manifest"]["source"]["conversion_path"] == "keras-unrolled-recurrent"
    assert "WHILE" not in {op["name"] for op in data["manifest"]["ops"]}
    assert {r["runtime"]: r["status"] for r in data["verification"]["runtimes"]} == {
        "ai-edge-litert": "passed", "tflite-runtime": "passed"}
    assert max(independent(kind, tmp_path / "b").values()) < 0.1


@pytest.mark.slow
def test_recurrent_int8_crash_is_named_and_contained(tmp_path):
    """With an open time axis nothing can be unrolled: the converter's crash on the WHILE loop is
    named with its path, and the build is exit 3 with a way out, not a dead edgepack."""
    import keras
    inp = keras.Input((None, 2), name="x")
    keras.Model(inp, keras.layers.SimpleRNN(3, name="y")(inp)).save(tmp_path / "var.keras")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "cal.npz", x=rng.normal(size=(40, 5, 2)).astype(np.float32))
    proc = cli("build", tmp_path / "var.keras", "-q", "int8", "-c", tmp_path / "cal.npz", "-o", tmp_path / "b",
               "--json")
    data = json.loads(proc.stdout)
    assert proc.returncode in (0, 3), proc.stderr
    if proc.returncode == 3:
        assert "crashed" in data["error"] and "keras-frozen-concrete-function" in data["error"]
        assert "--quantize" in data["hint"]
        assert not (tmp_path / "b").exists()
    else:   # a TensorFlow that can: then it must really match
        assert data["verification"]["passed"]


def test_stateful_recurrent_is_refused_by_name(tmp_path):
    import keras
    inp = keras.Input((3, 2), batch_size=1, name="x")
    model = keras.Model(inp, keras.layers.LSTM(2, stateful=True, name="memory")(inp))
    model.save(tmp_path / "stateful.keras")
    with pytest.raises(ConversionError) as info:
        api.build(tmp_path / "stateful.keras", recipe="float32", output=tmp_path / "b")
    assert "stateful" in info.value.message and "memory" in info.value.message
    assert "stateful=False" in info.value.hint
    assert not (tmp_path / "b").exists()


def test_time_distributed_and_multi_io(out, tmp_path):
    for kind, recipe in ((fm.time_distributed(out), "float16"), (fm.multi_io(out), "float32")):
        res = api.build(kind.model, recipe=recipe, data=kind.eval, output=tmp_path / kind.name)
        assert res.verification.passed
        assert max(independent(kind, res.bundle).values()) < 5e-3


# --------------------------------------------------------------------------- wrong MATCH
def test_synthetic_ids_cover_the_embedding_vocabulary(out, tmp_path):
    kind = fm.embedding_ids(out)
    res = api.build(kind.model, recipe="float32", output=tmp_path / "b")
    assert res.manifest.to_json()["inputs"][0]["dtype"] == "int32"
    with np.load(res.bundle / "samples" / "inputs.npz") as npz:
        ids = npz["tokens"]
    assert ids.max() > 100 and ids.min() >= 0 and ids.max() < 300      # not just 0 and 1
    assert res.verification.to_json()["evidence"]["weak"]


def test_outlier_embedding_is_not_a_match(out, tmp_path):
    """Rows 0/1 huge, the rest tiny: int8 weights crush real ids. Synthetic ids over the whole
    vocabulary see it, and so does held-out data; neither may say MATCH."""
    kind = fm.embedding_outlier(out)
    for data in (None, kind.eval):
        with pytest.raises(VerificationError) as info:
            api.build(kind.model, recipe="dynamic", data=data, output=tmp_path / "b")
        assert info.value.exit_code == 4
        assert "cls" in info.value.message
    assert not (tmp_path / "b").exists()


def test_strict_fails_on_weak_evidence(out, tmp_path):
    kind = fm.fixed_batch(out, 1)
    with pytest.raises(VerificationError) as info:
        api.build(kind.model, recipe="float32", output=tmp_path / "b", strict=True)
    assert "weak evidence" in info.value.message
    res = api.build(kind.model, recipe="float32", data=kind.eval, output=tmp_path / "b", strict=True)
    assert res.verification.passed and not res.verification.weak


def test_uint8_pixels_one_rule_for_emulator_and_device(out, tmp_path, runtime_python):
    kind = fm.uint8_pixels(out)
    res = api.build(kind.model, recipe="int8", io="uint8", calibration=kind.calibration, data=kind.eval,
                    output=tmp_path / "b")
    q = res.manifest.to_json()["inputs"][0]["quantization"]
    assert res.manifest.to_json()["inputs"][0]["dtype"] == "uint8" and abs(q["scale"] - 1.0) > 0.05   # raw pixels != codes
    assert "real values" in res.manifest.to_json()["input_values"]
    x = fm.eval_arrays(kind)["image"]
    np.savez(tmp_path / "u8.npz", image=x.astype(np.uint8))
    np.savez(tmp_path / "f.npz", image=x)
    outs = {}
    for name in ("u8", "f"):
        proc = subprocess.run([*runtime_python.argv, str(res.bundle / "edgepack_run.py"), "--input",
                               str(tmp_path / f"{name}.npz"), "--output", str(tmp_path / f"{name}-o.npz")],
                              capture_output=True, text=True, env=runtime_python.env)
        assert proc.returncode == 0, proc.stderr
        with np.load(tmp_path / f"{name}-o.npz") as o:
            outs[name] = o["probs"]
    assert np.array_equal(outs["u8"], outs["f"])                     # dtype of the file changes nothing
    ref = kind.keras_call({"image": x})["probs"]
    assert np.max(np.abs(outs["u8"] - ref)) < 0.05
    report = api.verify(res.bundle, reference=kind.model, data=tmp_path / "u8.npz")
    assert report.passed
    assert report.runtimes[0].metrics[0].max_abs_err == pytest.approx(float(np.max(np.abs(outs["u8"] - ref))),
                                                                     abs=1e-6)


# --------------------------------------------------------------------------- false refusal
def test_tied_outputs_are_not_judged_on_top1(out, tmp_path):
    kind = fm.binary_code(out)
    res = api.build(kind.model, recipe="dynamic", data=kind.eval, output=tmp_path / "b")
    metrics = res.verification.runtimes[0].metrics[0]
    assert res.verification.passed
    assert metrics.top1_agreement is None or any("rows" in f for f in metrics.flags)
    assert max(independent(kind, res.bundle).values()) < 0.05


def test_tied_rows_are_not_decisions():
    from packager.compare import compare_output
    from packager.recipes import get_recipe
    ref = np.array([[1, 0, 1, 0], [0, 1, 1, 0], [1, 1, 0, 0]] * 4, dtype=np.float32)
    m = compare_output("code", ref, ref.copy(), get_recipe("float32").tolerance)
    assert m.passed and m.top1_agreement is None and m.kind == "values"    # 0/1 codes: values, no argmax
    probs = np.eye(4, dtype=np.float32)[[0, 1, 2, 3] * 3] * 0.9 + 0.025
    flipped = probs[:, ::-1].copy()
    m = compare_output("probs", probs, flipped, get_recipe("float32").tolerance)
    assert m.kind == "class-scores" and not m.passed and m.top1_agreement == 0.0    # untied rows are judged


# --------------------------------------------------------------------------- messages and names
def test_single_unnamed_output_is_mapped():
    from packager.convert.converter import named_spec
    from packager.convert.inspect import ModelSpec
    from packager.tensor import Tensor
    spec = ModelSpec(1, "x", [Tensor("feat", (-1, 3), "float32", index=0)],
                     [Tensor("StatefulPartitionedCall:0", (-1, 2), "float32", index=5)], [], None)
    assert [t.name for t in named_spec(spec, {"inputs": ["feat"], "outputs": ["logits"]}).outputs] == ["logits"]
    two = ModelSpec(1, "x", [], [Tensor("a", (1,), "float32", index=1), Tensor("b", (1,), "float32", index=2)],
                    [], None)
    assert [t.name for t in named_spec(two, {"inputs": [], "outputs": ["p", "q"]}).outputs] == ["a", "b"]  # never guessed


def test_converter_errors_name_op_and_layer():
    from packager.convert.converter import one_line
    raw = ('<unknown>:0: error: loc(fused["TensorListReserve:", "functional_1/lstm_1/TensorArrayV2@__inference_call_'
           '123"]): error: \'tf.TensorListReserve\' op requires element_shape to be static during TF Lite '
           'transformation pass\n<unknown>:0: note: ' + "x" * 3000)
    line = one_line(RuntimeError(raw))
    assert line.startswith("op tf.TensorListReserve in layer 'lstm_1': requires element_shape")
    assert len(line) <= 244


def crash_on_a_path(path):   # module level: runs in the spawned child
    from packager.contain.isolate import stage
    stage(f"converting with {path} (int8)", path)
    os.kill(os.getpid(), signal.SIGSEGV)


def test_converter_crash_is_named_with_its_stage(monkeypatch):
    from packager.contain import isolate
    monkeypatch.setenv("EDGEPACK_IN_PROCESS", "0")
    seen = []
    with pytest.raises(ConversionError) as info:
        isolate.run(crash_on_a_path, "keras-frozen-concrete-function", progress=seen.append)
    assert "crashed (SIGSEGV) while converting with keras-frozen-concrete-function (int8)" in info.value.message
    assert "EDGEPACK_MEMORY_MB" not in info.value.message + info.value.hint
    assert info.value.path == "keras-frozen-concrete-function"
    assert seen == ["converting with keras-frozen-concrete-function (int8)"]


def test_tolerance_overrides_are_recorded_and_checked(out, tmp_path):
    kind = fm.multi_io(out)
    res = api.build(kind.model, recipe="float16", data=kind.eval, output=tmp_path / "b", atol=["cls:0.5"])
    tol = res.manifest.to_json()["tolerance"]
    assert tol["cls"]["atol"] == 0.5 and tol["score"]["atol"] == 5e-3
    assert {m.name: m.allowed_max_abs for m in res.verification.runtimes[0].metrics}["cls"] >= 0.5
    with pytest.raises(UsageError) as info:
        api.build(kind.model, recipe="float16", output=tmp_path / "c", atol=["nosuch:1"])
    assert "cls" in info.value.message and "score" in info.value.message
    with pytest.raises(UsageError):
        api.build(kind.model, recipe="float16", output=tmp_path / "c", atol=["-1"])
    # verify holds the bundle to what it was built with, and takes overrides too
    assert api.verify(res.bundle, reference=kind.model, data=kind.eval).passed
    tight = api.verify(res.bundle, reference=kind.model, data=kind.eval, atol=["0"], rtol=["0"])
    assert {m.name: m.allowed_max_abs for m in tight.runtimes[0].metrics}["score"] == 0.0


def test_json_is_one_document_and_the_terminal_quiet(out, tmp_path):
    kind = fm.recurrent(out, "simple_rnn")
    proc = cli("build", kind.model, "-q", "float32", "-o", tmp_path / "b", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["ok"] and data["manifest"]["fixed"] == {"batch": 1}
    noise = [ln for ln in proc.stderr.splitlines()
             if any(w in ln for w in ("oneDNN", "absl", "cuda", "I0000", "WARNING", "Saved artifact"))]
    assert noise == []


def test_names_and_replacement(tmp_path, out):
    from packager.bundle.manifest import default_name
    (tmp_path / "mnist" / "3").mkdir(parents=True)
    (tmp_path / "plain").mkdir()
    assert default_name(tmp_path / "mnist" / "3", "rpi") == "mnist-rpi"
    assert default_name(tmp_path / "plain", "rpi") == "plain-rpi"
    assert default_name(tmp_path / "m.keras", "android") == "m-android"
    assert default_name(tmp_path / "my model (v2).h5", "rpi") == "my-model-v2-rpi"     # one name rule
    assert default_name(tmp_path / ".hidden.h5", "rpi") == "hidden-rpi"
    kind = fm.fixed_batch(out, 1)
    api.build(kind.model, recipe="float32", output=tmp_path / "b", verify=False)
    again = api.build(kind.model, recipe="float16", output=tmp_path / "b", verify=False)
    assert any("replaced the bundle" in w and "float32" in w for w in again.warnings)


def test_host_environment_problem_is_exit_5(out, tmp_path):
    (tmp_path / "targets").mkdir()
    (tmp_path / "targets" / "broken.toml").write_text((ROOT / "targets" / "rpi.toml").read_text()
                                                      .replace('name = "rpi"', 'name = "broken"'))
    text = (tmp_path / "targets" / "broken.toml").read_text()
    import re
    text = re.sub(r'runtimes = \[[^\]]*\]', 'runtimes = [{ name = "ai-edge-litert", requirements = '
                  '["edgepack-no-such-runtime==0.0.1"] }]', text)
    assert "edgepack-no-such-runtime" in text
    (tmp_path / "targets" / "broken.toml").write_text(text)
    kind = fm.fixed_batch(out, 1)
    proc = cli("build", kind.model, "-t", "broken", "-q", "float32", "-o", tmp_path / "b", "--json",
               env={"EDGEPACK_TARGETS_PATH": str(tmp_path / "targets"), "EDGEPACK_CACHE_DIR": str(tmp_path / "cache"),
                    "EDGEPACK_ENV_DIR": str(tmp_path / "cache")})
    data = json.loads(proc.stdout)
    assert proc.returncode == 5, proc.stderr
    assert "MISMATCH" not in proc.stdout + proc.stderr and "edgepack-no-such-runtime" in data["error"]


def test_calibration_on_another_scale_is_named(out, tmp_path):
    """Calibration scaled to [0, 1] while the model takes pixels 0..255: the refusal says so with
    both ranges instead of only a number."""
    kind = fm.uint8_pixels(out)
    with np.load(kind.calibration) as npz:
        np.savez(tmp_path / "cal01.npz", image=npz["image"] / 255.0)
    with pytest.raises(VerificationError) as info:
        api.build(kind.model, recipe="int8", calibration=tmp_path / "cal01.npz", data=kind.eval,
                  output=tmp_path / "b")
    assert "calibration data for 'image' spans [0, " in info.value.message
    assert "verification data spans" in info.value.message
    assert not (tmp_path / "b").exists()


def test_doctor_is_quiet_and_deploy_json_fails_as_one_document(tmp_path):
    proc = cli("doctor")
    assert proc.stderr == "" and "tensorflow" in proc.stdout
    (tmp_path / "b").mkdir()
    proc = cli("deploy", tmp_path / "b", "--host", "nobody@127.0.0.1:1", "--json")
    data = json.loads(proc.stdout)
    assert proc.returncode == data["exit_code"] != 0 and data["ok"] is False and data["error"]


def test_exported_augmentation_layers_get_their_way_out(tmp_path):
    import keras
    inp = keras.Input((8, 8, 1), name="img")
    h = keras.layers.Flatten()(keras.layers.RandomFlip("horizontal")(inp))
    model = keras.Model(inp, keras.layers.Dense(3, name="out")(h))
    model.export(str(tmp_path / "exported"), verbose=False)
    with pytest.raises(ConversionError) as info:
        api.build(tmp_path / "exported", recipe="float32", output=tmp_path / "b")
    assert "StatelessRandom" in info.value.message and "random_flip" in info.value.message
    assert "build from the .keras file" in info.value.hint


def test_savedmodel_ids_get_the_vocabulary_from_the_graph(out, tmp_path):
    """No Keras layers to ask in a SavedModel: the gather on the [rows, dim] table in the frozen
    graph gives the ids' range, so the outlier embedding is caught without --data too."""
    import keras
    kind = fm.embedding_outlier(out)
    keras.models.load_model(kind.model).export(str(tmp_path / "sm"), verbose=False)
    from packager.load.formats import load_model
    assert load_model(tmp_path / "sm").inputs[0].domain == (0, 300)
    with pytest.raises(VerificationError) as info:
        api.build(tmp_path / "sm", recipe="dynamic", output=tmp_path / "b")
    assert "synthetic inputs" in info.value.hint and "ids over the vocabulary" in info.value.hint


def test_float_data_for_integer_ids_is_a_usage_error(out, tmp_path, runtime_python):
    """Non-integer floats for an int32 id input: a one-line refusal naming the input, in the
    emulator's data reader and in the device script alike (never a TensorFlow internal error, never
    a silent cast to id 0). Integral floats are the same ids and are accepted."""
    kind = fm.embedding_ids(out)
    with np.load(kind.eval) as npz:
        ids = npz["tokens"]
    np.savez(tmp_path / "frac.npz", tokens=ids + 0.5)
    np.savez(tmp_path / "whole.npz", tokens=ids.astype(np.float32))
    with pytest.raises(UsageError) as info:
        api.build(kind.model, recipe="float32", data=tmp_path / "frac.npz", output=tmp_path / "b")
    assert "'tokens'" in info.value.message and "non-integer" in info.value.message
    res = api.build(kind.model, recipe="float32", data=tmp_path / "whole.npz", output=tmp_path / "b")
    assert res.verification.passed
    proc = subprocess.run([*runtime_python.argv, str(res.bundle / "edgepack_run.py"), "--input",
                           str(tmp_path / "frac.npz"), "--output", str(tmp_path / "o.npz")],
                          capture_output=True, text=True, env=runtime_python.env)
    assert proc.returncode == 2 and "non-integer" in proc.stderr.strip().splitlines()[-1]


def test_device_script_warns_when_real_values_clip(out, tmp_path, runtime_python):
    """Pixels twice as bright as the calibration set (which spans about 0..128): the real values
    above the quantized range are clipped, and the script says so instead of answering silently."""
    kind = fm.uint8_pixels(out)
    res = api.build(kind.model, recipe="int8", io="uint8", calibration=kind.calibration, data=kind.eval,
                    output=tmp_path / "b", verify=False)
    with np.load(kind.eval) as npz:
        np.savez(tmp_path / "bright.npz", image=np.clip(npz["image"] * 2, 0, 255).astype(np.uint8))
        np.savez(tmp_path / "same.npz", image=npz["image"].astype(np.uint8))
    for name, warned in (("bright", True), ("same", False)):
        proc = subprocess.run([*runtime_python.argv, str(res.bundle / "edgepack_run.py"), "--input",
                               str(tmp_path / f"{name}.npz"), "--output", str(tmp_path / "o.npz")],
                              capture_output=True, text=True, env=runtime_python.env)
        assert proc.returncode == 0, proc.stderr
        assert ("warning: input 'image'" in proc.stderr and "--raw" in proc.stderr) is warned, proc.stderr


def test_quantized_weights_in_a_loop_body_count_as_quantized():
    """A recurrent model's weights live in its WHILE body, a subgraph of its own: dynamic quantizes them there, and
    the "quantized nothing" note must not say otherwise (it looked at the main subgraph only)."""
    import keras
    import tensorflow as tf
    from packager.convert.jobs import _has_quantized_tensors
    inp = keras.Input((6, 16), batch_size=1)
    model = keras.Model(inp, keras.layers.Dense(3)(keras.layers.LSTM(64)(inp)))
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    plain = conv.convert()
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    assert _has_quantized_tensors(conv.convert()) and not _has_quantized_tensors(plain)
