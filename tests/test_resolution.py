"""Noise at the recipe's input resolution: an output cell the model itself cannot hold steady when its continuous
inputs move within the recipe's resolution (8-bit for dynamic/int8, float16's for float16) is a tie, not judged, and
counted in the verdict; everything else is judged as strictly as before. Float inputs that feed an Embedding are ids.
Models are generated here; bundles are checked independently with a bare interpreter (tests.field_models)."""
from __future__ import annotations

import numpy as np
import pytest

from packager import api
from packager.errors import VerificationError
from tests import field_models as fm


def _encoder(path, g):
    """A tf.Module SavedModel: parity = floormod(msg @ g, 2), g a 0/1 generator matrix (a binary code)."""
    import tensorflow as tf

    class Enc(tf.Module):
        def __init__(self):
            super().__init__()
            self.g = tf.constant(g)

        @tf.function(input_signature=[tf.TensorSpec([None, g.shape[0]], tf.float32, name="msg")])
        def __call__(self, msg):
            return {"parity": tf.math.floormod(tf.matmul(msg, self.g), 2.0)}
    enc = Enc()
    tf.saved_model.save(enc, str(path), signatures=enc.__call__)
    return lambda x: enc(tf.constant(x))["parity"].numpy()


@pytest.fixture(scope="module")
def code(tmp_path_factory):
    d = tmp_path_factory.mktemp("code")
    g = np.random.default_rng(7).integers(0, 2, (48, 24)).astype(np.float32)
    run = _encoder(d / "enc", g)
    other = g.copy()
    other[:, 3] = 1 - other[:, 3]                     # another code: one parity bit computed from other bits
    _encoder(d / "other", other)
    return d, run


def _without_the_measure(monkeypatch):
    from packager.convert import jobs
    monkeypatch.setattr(jobs, "input_resolution", lambda recipe: None)


def test_binary_code_dynamic_builds_without_data(code, tmp_path, monkeypatch):
    """Uniform [0, 1) synthetic messages sit next to floormod's jumps; dynamic's 8-bit activations move a few of
    them over. The model itself cannot hold those cells at 8-bit resolution: they are not judged (and counted);
    on real 0/1 messages the bundle is exact."""
    d, run = code
    res = api.build(d / "enc", recipe="dynamic", output=tmp_path / "b", use_cache=False)
    assert res.verification.passed
    texts = [f["text"] for m in res.verification.runtimes[0].metrics for f in m.findings]
    assert any("unstable at 8-bit input resolution: not judged" in t for t in texts), texts
    assert "cells unstable at 8-bit input resolution: not judged" in res.verification.line()
    assert api.verify(res.bundle, reference=d / "enc").passed      # verify measures at the bundle's recipe too
    bits = np.random.default_rng(3).integers(0, 2, (64, 48)).astype(np.float32)
    got = fm.raw_outputs(res.bundle, {"msg": bits})["parity"]
    assert np.max(np.abs(got - run(bits))) < 1e-4
    with monkeypatch.context() as m:        # the premise: judged on every cell, the synthetic inputs refuse it
        _without_the_measure(m)
        with pytest.raises(VerificationError, match="columns err beyond their own spread"):
            api.build(d / "enc", recipe="dynamic", output=tmp_path / "c", use_cache=False)


def test_wrong_code_of_the_same_shape_is_refused(code, tmp_path):
    """The unstable cells excuse nothing else: the bundle of one code against another code's model is refused on its
    numbers, with synthetic inputs and with 0/1 messages."""
    d, _ = code
    res = api.build(d / "enc", recipe="dynamic", output=tmp_path / "b")
    bits = tmp_path / "bits.npz"
    np.savez(bits, msg=np.random.default_rng(3).integers(0, 2, (64, 48)).astype(np.float32))
    for data in (None, bits):
        report = api.verify(res.bundle, reference=d / "other", data=data)
        assert not report.passed
        reasons = " ".join(r for rt in report.runtimes for m in rt.metrics for r in m.reasons)
        assert "columns err beyond their own spread" in reasons, reasons


def _moved(ref, cells, size):
    m = np.zeros_like(ref)
    m.reshape(-1)[cells] = size
    return m, "8-bit"


def test_unstable_cells_are_not_judged_and_excuse_nothing_else():
    from packager.compare import compare_output
    from packager.recipes import get_recipe
    tol = get_recipe("dynamic").tolerance
    rng = np.random.default_rng(0)
    ref = rng.random((64, 8)) * 2
    got = ref.copy()
    got.reshape(-1)[[5, 77, 300]] += 1.9                               # three jumps the model itself makes
    moved = _moved(ref, [5, 77, 300], 2.0)
    assert not compare_output("v", ref, got, tol).passed
    m = compare_output("v", ref, got, tol, moved=moved)
    assert m.passed and any("3 of 512 cells unstable" in f["text"] for f in m.findings)
    worse = got.copy()
    worse.reshape(-1)[[6, 78]] += 1.9                                   # stable cells that jump: judged
    assert not compare_output("v", ref, worse, tol, moved=moved).passed
    collapsed = np.full_like(ref, ref.mean())                           # degraded: nothing unstable excuses it
    assert not compare_output("v", ref, collapsed, tol, moved=_moved(ref, list(range(0, 512, 20)), 2.0)).passed
    everything = _moved(ref, list(range(512)), 2.0)                    # the model holds nothing: cannot judge
    m = compare_output("v", ref, worse, tol, moved=everything)
    assert not m.passed and "pass --data" in " ".join(m.reasons)
    assert compare_output("v", ref, ref.copy(), tol, moved=everything).passed


def test_decisions_within_the_models_own_move_are_ties():
    from packager.compare import compare_output
    from packager.recipes import get_recipe
    tol = get_recipe("float16").tolerance
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(150, 3))
    logits[7, 1] = logits[7, 0] = logits[7].max() + 1.0
    logits[7, 1] -= 2e-4                                               # a margin below float16's resolution
    ref = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    got = ref.copy()
    got[7, [0, 1]] = got[7, [1, 0]]
    m = compare_output("p", ref, got, tol)
    assert m.kind == "class-scores" and not m.passed                   # 1 of 150 > 0.5%: refused without the move
    moved = (np.full_like(ref, 1e-4), "float16")
    m = compare_output("p", ref, got, tol, moved=moved)
    assert m.passed and any("1 more change on rows the model itself cannot hold at float16 input resolution" in f["text"]
                            for f in m.findings)
    got[20] = got[20][::-1]                                            # a clear flip is still one
    got[21] = got[21][::-1]
    assert not compare_output("p", ref, got, tol, moved=moved).passed


def test_float16_near_tie_is_not_a_flip(tmp_path, monkeypatch):
    """A classifier whose float16 weights flip one decision of 150, on a reference margin below float16's resolution
    (the tempo-cnn kind): the model itself moves that margin at float16 input resolution, so it is a tie."""
    import keras
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    n_in = 512                                       # 1536 weights: TFLite stores them in float16
    inp = keras.Input((n_in,), name="x")
    model = keras.Model(inp, keras.layers.Dense(3, activation="softmax", name="p")(inp))
    w = (rng.normal(size=(n_in, 3)) * 0.05).astype(np.float32)
    model.get_layer("p").set_weights([w, np.array([0, 0, -30], np.float32)])    # classes 0 and 1 decide
    v = (w[:, 0] - w[:, 1]).astype(np.float64)
    w16 = w.astype(np.float16).astype(np.float64)
    v16 = w16[:, 0] - w16[:, 1]
    x = rng.normal(size=(150, n_in)).astype(np.float32)
    for _ in range(4):      # row 0: a 0/1 margin a third of what float16 weights move, on the other side
        x0 = x[0].astype(np.float64)
        delta = x0 @ (v16 - v)
        target = -np.sign(delta) * 0.3 * abs(delta)
        x[0] = (x0 + v * (target - x0 @ v) / (v @ v)).astype(np.float32)
    path = tmp_path / "m.keras"
    model.save(path)
    data = tmp_path / "eval.npz"
    np.savez(data, x=x)
    ref = model(x).numpy()
    with monkeypatch.context() as m:        # the premise: one flip of 150 refuses it when every row is judged
        _without_the_measure(m)
        with pytest.raises(VerificationError, match="1 of 150 rows change their decision"):
            api.build(path, recipe="float16", data=data, output=tmp_path / "c", use_cache=False)
    res = None
    try:
        res = api.build(path, recipe="float16", data=data, output=tmp_path / "b", use_cache=False)
    except VerificationError as exc:
        pytest.fail(f"refused: {exc.message}")
    got = fm.raw_outputs(res.bundle, {"x": x})["p"]
    flips = int(np.sum(got.argmax(1) != ref.argmax(1)))
    assert flips >= 1, "the generated near-tie did not flip: the test proves nothing"
    texts = [f["text"] for m in res.verification.runtimes[0].metrics for f in m.findings]
    assert any("cannot hold at float16 input resolution" in t for t in texts), texts


def test_float_ids_feeding_an_embedding_are_ids(tmp_path):
    """A float input that holds token ids (cast to an Embedding's index) gets the vocabulary as its domain: synthetic
    inputs are ids over it, and an int8 refusal never blames the calibration's scale for them."""
    import keras
    from packager.load.formats import load_model
    keras.utils.set_random_seed(0)
    inp = keras.Input((10,), name="tokens")                            # float32, but ids
    h = keras.layers.Embedding(200, 8)(inp)
    h = keras.layers.LSTM(4)(h)
    model = keras.Model(inp, keras.layers.Dense(3, activation="softmax", name="cls")(h))
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = load_model(str(path))
    assert loaded.inputs[0].domain == (0, 200)
    from packager.load.calibration import synthetic_dataset
    ids = synthetic_dataset(loaded.inputs).inputs["tokens"]
    assert ids.dtype == np.float32 and np.all(ids == np.round(ids)) and ids.max() > 100 and ids.max() < 200
    from packager.convert.converter import _likely_cause
    from packager.convert.engines import _ids
    from packager.recipes import get_recipe
    cal = {"tokens": np.random.default_rng(0).integers(0, 30, (200, 10)).astype(np.float32)}
    check = {"tokens": np.random.default_rng(1).integers(0, 200, (64, 10)).astype(np.float32)}
    assert _ids(loaded) == ("tokens",)
    assert _likely_cause([], get_recipe("int8"), cal, check, ids=_ids(loaded)) is None


def test_domains_freeze_only_models_that_index_a_table(tmp_path, monkeypatch):
    """gather_domains freezes the model (every weight copied into a graph: ResNet50 ~1 GB and 3 s) only when some
    gather reads a table: an Embedding (Keras 3's GatherV2 on a variable read, tf-keras's ResourceGather) does; a
    Dense on a sequence (Tensordot gathers from a Shape) and a conv net do not, and their loading never freezes."""
    import keras
    import tensorflow.python.framework.convert_to_constants as c2c
    from packager.load.formats import load_model
    calls = []
    real = c2c.convert_variables_to_constants_v2
    monkeypatch.setattr(c2c, "convert_variables_to_constants_v2", lambda *a, **k: calls.append(1) or real(*a, **k))
    keras.utils.set_random_seed(0)
    seq = keras.Input((6, 5), name="x")
    dense_seq = keras.Model(seq, keras.layers.Dense(3, name="y")(keras.layers.Dense(4)(seq)))
    img = keras.Input((8, 8, 3), name="x")
    conv = keras.Model(img, keras.layers.GlobalAveragePooling2D(name="y")(keras.layers.Conv2D(2, 3)(img)))
    tok = keras.Input((7,), dtype="int32", name="tokens")
    emb = keras.Model(tok, keras.layers.GlobalAveragePooling1D(name="y")(keras.layers.Embedding(50, 4)(tok)))
    for name, model, freezes, domain in (("seq", dense_seq, 0, None), ("conv", conv, 0, None),
                                         ("emb", emb, 1, (0, 50))):
        model.save(tmp_path / f"{name}.keras")
        calls.clear()
        loaded = load_model(str(tmp_path / f"{name}.keras"))
        assert len(calls) == freezes, name
        assert loaded.inputs[0].domain == domain, name
    import tf_keras
    t = tf_keras.Input((7,), dtype="int32", name="tokens")
    legacy = tf_keras.Model(t, tf_keras.layers.GlobalAveragePooling1D(name="y")(tf_keras.layers.Embedding(30, 4)(t)))
    legacy.save(tmp_path / "legacy.h5")
    calls.clear()
    loaded = load_model(str(tmp_path / "legacy.h5"))
    assert calls and loaded.inputs[0].domain == (0, 30)
