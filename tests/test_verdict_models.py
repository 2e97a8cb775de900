"""The verdict by output kind on real converted models, generated here. Every verdict is checked
independently: the bundle's .tflite run by a bare interpreter (tests/field_models.raw_outputs) against the
original Keras model, on the decisions a user makes with the outputs."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from packager import api
from packager.errors import Unverified, VerificationError
from tests.field_models import raw_outputs

LITERT = ["ai-edge-litert"]


def _keras():
    import keras
    keras.utils.set_random_seed(0)
    return keras


@pytest.fixture(scope="module")
def digits_data():
    from sklearn.datasets import load_digits
    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    return x[:1200], d.target[:1200], x[1400:], d.target[1400:]


def test_low_confidence_classifier_int8_is_refused_by_its_decisions(digits_data, tmp_path):
    """The wrong MATCH of the issue: a digits classifier whose softmax is nearly flat (logits / 100). int8
    rounds the probabilities to steps of 1/256, and the decisions flip; the old max-error rule said MATCH."""
    keras = _keras()
    x, y, xe, ye = digits_data
    inp = keras.Input((64,), name="x")
    h = keras.layers.Dense(64, activation="relu")(inp)
    logits = keras.layers.Dense(10)(h)
    trainer = keras.Model(inp, logits)
    trainer.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    trainer.fit(x, y, epochs=30, verbose=0)
    flat = keras.layers.Rescaling(1 / 100.0)(logits)
    model = keras.Model(inp, keras.layers.Softmax(name="probs")(flat))
    path = tmp_path / "flat.keras"
    model.save(path)
    np.savez(tmp_path / "cal.npz", x=x[:300])
    np.savez(tmp_path / "eval.npz", x=xe, y=ye)
    with pytest.raises(VerificationError) as exc:
        api.build(path, target="rpi", recipe="int8", calibration=tmp_path / "cal.npz", data=tmp_path / "eval.npz",
                  runtimes=LITERT, output=tmp_path / "out", use_cache=False)
    assert type(exc.value) is VerificationError and "change their decision" in exc.value.message
    assert "below one output step" in exc.value.message and "int16x8" in exc.value.message + (exc.value.hint or "")
    assert not (tmp_path / "out").exists()
    # issue 23: the paths that only obtain the same traced graph another way are not converted again
    assert exc.value.message.count("skipped: it computes what keras-concrete-function computes") >= 2
    # independently: the same int8 conversion, kept with --no-verify, run by a bare interpreter
    res = api.build(path, target="rpi", recipe="int8", calibration=tmp_path / "cal.npz", verify=False,
                    runtimes=LITERT, output=tmp_path / "unverified", use_cache=False)
    # --no-verify writes the bundle anyway (so `diagnose` has one), saying what the conversion check saw
    assert any(w.startswith("--no-verify: the int8 model does not compute") and "change their decision" in w
               for w in res.warnings)
    assert res.manifest.to_json()["verification"]["status"] == "skipped"
    ref = model.predict(xe, verbose=0)
    got = raw_outputs(res.bundle, {"x": xe})["probs"]
    flips = float(np.mean(ref.argmax(1) != got.argmax(1)))
    drop = 100 * (np.mean(ref.argmax(1) == ye) - np.mean(got.argmax(1) == ye))
    assert flips > 0.03 or drop > 1.0, (flips, drop)      # the refusal is true of the bundle
    # the float32 bundle of the same model is as exact as the model: MATCH, every row judged
    ok = api.build(path, target="rpi", recipe="float32", data=tmp_path / "eval.npz", runtimes=LITERT,
                   output=tmp_path / "f32", use_cache=False)
    m = ok.verification.runtimes[0].metrics[0]
    assert m.kind == "class-scores" and m.finding("decisions")["detail"]["judged"] + \
        m.finding("decisions")["detail"]["ties"] == len(xe)
    assert m.accuracy_reference == pytest.approx(float(np.mean(ref.argmax(1) == ye)))
    line = ok.verification.line()
    assert line.startswith("MATCH (held-out: eval.npz") and "decisions" in line and "accuracy" in line


def test_mixed_scales_in_one_output_int8_refused_for_the_score_column(tmp_path):
    """[N, 5]: 4 box coordinates in pixels and a sigmoid score in one tensor; int8 of the whole tensor leaves
    the score below one step. The old rule (5% of the tensor's largest value) said MATCH."""
    keras = _keras()
    rng = np.random.default_rng(0)
    inp = keras.Input((8,), name="x")
    h = keras.layers.Dense(16, activation="relu")(inp)
    box = keras.layers.Rescaling(300.0, offset=320.0)(keras.layers.Dense(4, activation="tanh")(h))
    score = keras.layers.Dense(1, activation="sigmoid")(h)
    model = keras.Model(inp, keras.layers.Concatenate(name="det")([box, score]))
    path = tmp_path / "det.keras"
    model.save(path)
    x = rng.normal(0, 1, (400, 8)).astype(np.float32)
    np.savez(tmp_path / "cal.npz", x=x[:200])
    np.savez(tmp_path / "eval.npz", x=x[200:])
    with pytest.raises(VerificationError) as exc:
        api.build(path, target="rpi", recipe="int8", calibration=tmp_path / "cal.npz", data=tmp_path / "eval.npz",
                  runtimes=LITERT, output=tmp_path / "out", use_cache=False)
    assert "[4]" in exc.value.message                      # the score column is named
    res = api.build(path, target="rpi", recipe="int8", calibration=tmp_path / "cal.npz", verify=False,
                    runtimes=LITERT, output=tmp_path / "raw", use_cache=False)
    ref = model.predict(x[200:], verbose=0)
    got = raw_outputs(res.bundle, {"x": x[200:]})["det"]
    r2 = 1 - np.sum((got[:, 4] - ref[:, 4]) ** 2) / np.sum((ref[:, 4] - ref[:, 4].mean()) ** 2)
    assert r2 < 0.9 and np.abs(got[:, :4] - ref[:, :4]).max() < 0.05 * np.abs(ref).max()   # boxes fine, score not


def test_float32_at_large_magnitudes_is_as_exact_as_the_model(tmp_path):
    """Inputs ~1e4 + N(0, 1), output x - mean(x) (a Dense of I - 1/16): the bundle's error is the model's own
    float32 error; the old limit (scaled by the output, not the arithmetic) refused it."""
    keras = _keras()
    rng = np.random.default_rng(1)
    inp = keras.Input((16,), name="x")
    center = keras.layers.Dense(16, use_bias=False, name="centered")
    model = keras.Model(inp, center(inp))
    center.set_weights([(np.eye(16) - 1 / 16).astype(np.float32)])
    path = tmp_path / "center.keras"
    model.save(path)
    x = (1e4 + rng.normal(0, 1, (256, 16))).astype(np.float32)
    np.savez(tmp_path / "eval.npz", x=x)
    res = api.build(path, target="rpi", recipe="float32", data=tmp_path / "eval.npz", runtimes=LITERT,
                    output=tmp_path / "out", use_cache=False)
    assert res.verification.passed
    exact = x.astype(np.float64) - x.astype(np.float64).mean(1, keepdims=True)
    ref = model.predict(x, verbose=0)
    got = raw_outputs(res.bundle, {"x": x})["centered"]
    model_err, bundle_err = np.abs(ref - exact).max(), np.abs(got - exact).max()
    assert bundle_err <= 2 * model_err and model_err > 1e-4     # as exact as the model, and that is not exact


def test_segmentation_int16x8_judged_on_pixels(tmp_path):
    keras = _keras()
    rng = np.random.default_rng(2)
    inp = keras.Input((16, 16, 3), name="image")
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inp)
    model = keras.Model(inp, keras.layers.Conv2D(4, 1, name="logits")(h))
    path = tmp_path / "seg.keras"
    model.save(path)
    x = rng.uniform(0, 1, (96, 16, 16, 3)).astype(np.float32)
    labels = model.predict(x, verbose=0).argmax(-1)
    np.savez(tmp_path / "cal.npz", image=x[:64])
    np.savez(tmp_path / "eval.npz", image=x, y=labels)
    res = api.build(path, target="rpi", recipe="int16x8", calibration=tmp_path / "cal.npz",
                    data=tmp_path / "eval.npz", runtimes=LITERT, output=tmp_path / "out", use_cache=False)
    m = res.verification.runtimes[0].metrics[0]
    assert res.verification.passed and m.kind == "pixel-classes"
    d = m.finding("decisions")["detail"]
    assert d["judged"] + d["ties"] == 96 * 16 * 16 and d["unstable"] < 0.01 * d["judged"]     # every pixel judged
    got = raw_outputs(res.bundle, {"image": x})["logits"]
    assert float(np.mean(got.argmax(-1) != labels)) <= 0.01       # independently: the pixels keep their class


def test_sigmoid_output_decisions(tmp_path):
    keras = _keras()
    rng = np.random.default_rng(3)
    inp = keras.Input((32,), name="x")
    h = keras.layers.Dense(64, activation="relu")(inp)
    model = keras.Model(inp, keras.layers.Dense(1, activation="sigmoid", name="p")(h))
    path = tmp_path / "sig.keras"
    model.save(path)
    x = rng.normal(0, 1, (300, 32)).astype(np.float32)
    np.savez(tmp_path / "eval.npz", x=x, y=(model.predict(x, verbose=0)[:, 0] > 0.5).astype(np.int64))
    res = api.build(path, target="rpi", recipe="dynamic", data=tmp_path / "eval.npz", runtimes=LITERT,
                    output=tmp_path / "out", use_cache=False)
    m = res.verification.runtimes[0].metrics[0]
    assert m.kind == "probabilities" and m.kind_source.startswith("LOGISTIC")
    d = m.finding("decisions")["detail"]
    assert d["judged"] + d["ties"] == 300 and d["unstable"] <= 3 and m.accuracy_reference == 1.0
    got = raw_outputs(res.bundle, {"x": x})["p"]
    ref = model.predict(x, verbose=0)
    assert int(np.sum((got > 0.5) != (ref > 0.5))) == d["flipped"] + d["excused"]   # the same decisions, counted alike
    assert res.verification.passed == (d["flipped"] / d["judged"] <= 0.01)


def test_a_runtime_that_cannot_run_the_bundle_is_unverified_not_mismatch(zoo, data_files, tmp_path):
    """tflite-runtime 2.14 cannot load the dynamic-range FULLY_CONNECTED v12: nothing was computed there."""
    res = api.build(zoo["keras3_h5"], target="rpi", recipe="dynamic", data=data_files["eval"],
                    output=tmp_path / "b")
    assert {r.runtime: r.status for r in res.verification.runtimes}["tflite-runtime"] == "error"
    report = api.verify(res.bundle, reference=zoo["keras3_h5"], data=data_files["eval"], runtimes=["tflite-runtime"])
    assert report.verdict == "UNVERIFIED" and report.exit_code == 7 and "nothing was compared" in report.line()
    proc = subprocess.run([sys.executable, "-m", "packager.cli", "verify", str(res.bundle), "-r",
                           str(zoo["keras3_h5"]), "--runtime", "tflite-runtime", "--json"], capture_output=True,
                          text=True, timeout=600)
    doc = json.loads(proc.stdout)
    assert proc.returncode == 7 and doc["verdict"] == "UNVERIFIED" and doc["ok"] is False
    with pytest.raises(Unverified) as exc:
        api.build(zoo["keras3_h5"], target="rpi", recipe="dynamic", runtimes=["tflite-runtime"],
                  output=tmp_path / "never")
    assert exc.value.exit_code == 7 and "UNVERIFIED" in exc.value.message and not (tmp_path / "never").exists()


def test_logits_marked_by_the_user_and_by_labels(tmp_path):
    """Raw logits: with labels y the output is judged as class scores (accuracy shown); without labels it is
    values and the report says so; --output-kind marks it."""
    keras = _keras()
    rng = np.random.default_rng(4)
    inp = keras.Input((8,), name="x")
    model = keras.Model(inp, keras.layers.Dense(5, name="logits")(keras.layers.Dense(16, activation="relu")(inp)))
    path = tmp_path / "logits.keras"
    model.save(path)
    x = rng.normal(0, 1, (200, 8)).astype(np.float32)
    y = model.predict(x, verbose=0).argmax(1)
    np.savez(tmp_path / "plain.npz", x=x)
    np.savez(tmp_path / "labelled.npz", x=x, y=y)
    res = api.build(path, target="rpi", recipe="float16", data=tmp_path / "plain.npz", runtimes=LITERT,
                    output=tmp_path / "out", use_cache=False)
    m = res.verification.runtimes[0].metrics[0]
    assert m.kind == "values" and "--output-kind" in m.kind_source
    assert json.loads((res.bundle / "manifest.json").read_text())["tolerance"]["logits"]["kind"] == "values"
    rep = api.verify(res.bundle, reference=path, data=tmp_path / "labelled.npz", runtimes=LITERT,
                     output_kind=["logits:class-scores"])
    m = rep.runtimes[0].metrics[0]
    assert m.kind == "class-scores" and m.kind_source == "--output-kind" and m.accuracy_reference == 1.0


def test_argmax_inside_the_graph_converts_and_is_judged_exactly(tmp_path):
    """Keras 3 ``ops.argmax`` in the graph (an integer class per sample) used to stop at `tf.BitwiseAnd` (Keras's
    signbit); it converts to ARG_MAX and its ids are judged exactly, with accuracy from y."""
    keras = _keras()
    rng = np.random.default_rng(5)
    inp = keras.Input((16,), name="x")
    logits = keras.layers.Dense(10)(keras.layers.Dense(32, activation="relu")(inp))
    ids = keras.ops.cast(keras.ops.argmax(logits, axis=-1), "int32")
    model = keras.Model(inp, ids)
    path = tmp_path / "argmax.keras"
    model.save(path)
    x = rng.normal(0, 1, (300, 16)).astype(np.float32)
    y = keras.Model(inp, logits).predict(x, verbose=0).argmax(1)
    y[:30] = (y[:30] + 1) % 10                               # labels the model gets wrong 10% of the time
    np.savez(tmp_path / "eval.npz", x=x, y=y)
    res = api.build(path, target="rpi", recipe="float32", data=tmp_path / "eval.npz", runtimes=LITERT,
                    output=tmp_path / "out", use_cache=False, trust_model=True)
    m = res.verification.runtimes[0].metrics[0]
    assert res.verification.passed and m.kind == "integer" and m.accuracy_reference == pytest.approx(0.9)
    assert "ARG_MAX" in {op["name"] for op in api.inspect(res.bundle)["model"]["ops"]}
    got = raw_outputs(res.bundle, {"x": x})
    assert np.array_equal(next(iter(got.values())).ravel(), model.predict(x, verbose=0).ravel())


def test_regression_capped_at_its_calibrated_range_int8_is_refused(tmp_path):
    """An int8 regression whose output range was set by calibration data that never reached the model's extremes:
    on the held-out rows beyond it the bundle answers the bound, silently (p99 error and R² over all rows are
    fine). Refused by the saturation criterion, the hint leads to the calibration range; calibrated on data that
    covers the extremes, the same model builds."""
    keras = _keras()
    rng = np.random.default_rng(6)
    inp = keras.Input((8,), name="x")
    h = keras.layers.Dense(16, activation="relu")(inp)
    model = keras.Model(inp, keras.layers.Dense(1, name="value")(h))
    path = tmp_path / "reg.keras"
    model.save(path)
    corners = np.array(np.meshgrid(*[[-1.0, 1.0]] * 8)).reshape(8, -1).T.astype(np.float32)
    c = model.predict(corners, verbose=0)[:, 0]
    extreme = corners[np.argsort(c)[-3:]]                   # inputs inside [-1, 1]; outputs the model's highest
    x = rng.uniform(-1, 1, (500, 8)).astype(np.float32)
    xe = np.concatenate([x[200:497], extreme])
    np.savez(tmp_path / "cal.npz", x=x[:200])
    np.savez(tmp_path / "eval.npz", x=xe)
    with pytest.raises(VerificationError) as exc:
        api.build(path, target="rpi", recipe="int8", calibration=tmp_path / "cal.npz", data=tmp_path / "eval.npz",
                  runtimes=LITERT, output=tmp_path / "out", use_cache=False)
    assert "sit at the bound of the output's quantized range" in exc.value.message
    assert "capped at its quantized range" in exc.value.message
    assert exc.value.hint.startswith("calibrate on data covering the outputs' full range (the calibration data's max "
                                     "output was")
    # independently: the bundle kept with --no-verify answers its largest value where the model goes beyond
    res = api.build(path, target="rpi", recipe="int8", calibration=tmp_path / "cal.npz", verify=False,
                    runtimes=LITERT, output=tmp_path / "raw", use_cache=False)
    ref = model.predict(xe, verbose=0)[:, 0]
    got = raw_outputs(res.bundle, {"x": xe})["value"][:, 0]
    capped = (got == got.max()) & (ref > got.max() + 0.5 * ref.std())
    assert capped.sum() >= 1 and 1 - np.sum((got - ref) ** 2) / np.sum((ref - ref.mean()) ** 2) > 0.9
    # calibrated on data that reaches the extremes: the range covers the model's outputs, MATCH
    np.savez(tmp_path / "cal_wide.npz", x=np.concatenate([x[:200], corners]))
    ok = api.build(path, target="rpi", recipe="int8", calibration=tmp_path / "cal_wide.npz",
                   data=tmp_path / "eval.npz", runtimes=LITERT, output=tmp_path / "wide", use_cache=False)
    f = ok.verification.runtimes[0].metrics[0].finding("saturation")
    assert ok.verification.passed and f["passed"] and f["detail"]["judged"] == 300


def test_rare_class_scores_of_a_per_position_classifier(tmp_path):
    """A SpliceAI-like per-position softmax (Conv1D over one-hot sequence; class 0 wins almost everywhere): the
    rare classes' scores are judged column by column. float32 and dynamic keep them (MATCH); int8's verdict on
    them agrees with the R² a bare interpreter measures."""
    keras = _keras()
    rng = np.random.default_rng(7)
    inp = keras.Input((None, 4), name="seq")
    h = keras.layers.Conv1D(16, 9, padding="same", activation="relu")(inp)
    h = keras.layers.Conv1D(16, 9, padding="same", dilation_rate=2, activation="relu")(h)
    head = keras.layers.Conv1D(3, 1, name="head")
    model = keras.Model(inp, keras.layers.Softmax(name="splice")(head(h)))
    w, _ = head.get_weights()
    head.set_weights([w * 20.0, np.array([10.0, -2.0, -2.0], np.float32)])    # class 0 dominates
    path = tmp_path / "splice.keras"
    model.save(path)
    x = np.eye(4, dtype=np.float32)[rng.integers(0, 4, (96, 400))]
    ref = model.predict(x[64:], verbose=0)
    share = np.bincount(ref.reshape(-1, 3).argmax(1), minlength=3) / ref[..., 0].size
    assert share[0] > 0.9 and share[1:].sum() > 0.0005, share
    np.savez(tmp_path / "cal.npz", seq=x[:64])
    np.savez(tmp_path / "eval.npz", seq=x[64:])
    for recipe in ("float32", "dynamic"):
        res = api.build(path, target="rpi", recipe=recipe, data=tmp_path / "eval.npz", runtimes=LITERT,
                        output=tmp_path / recipe, use_cache=False)
        f = res.verification.runtimes[0].metrics[0].finding("rare-class scores")
        assert res.verification.passed and f is not None and f["passed"] and f["detail"]["dominant"] == 0, recipe
    res = api.build(path, target="rpi", recipe="int8", calibration=tmp_path / "cal.npz", verify=False,
                    runtimes=LITERT, output=tmp_path / "int8", use_cache=False)
    got = raw_outputs(res.bundle, {"seq": x[64:]})["splice"]
    r2 = min(1 - np.sum((got[..., k] - ref[..., k]) ** 2) / np.sum((ref[..., k] - ref[..., k].mean()) ** 2)
             for k in (1, 2))
    rep = api.verify(res.bundle, reference=path, data=tmp_path / "eval.npz", runtimes=LITERT)
    f = rep.runtimes[0].metrics[0].finding("rare-class scores")
    assert f["figure"] == pytest.approx(r2, abs=0.02) and f["passed"] == (f["figure"] >= 0.95)
