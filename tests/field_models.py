"""Models of the kinds users bring that need more than an MLP (issue: models from the field), each
generated in a few seconds with fixed weights, and data that fits them. Nothing is downloaded.

Each builder returns a :class:`Kind`: the model file, calibration/eval data (``.npz`` keyed by
input name), and ``keras_call(arrays) -> {output: array}``, an independent way to compute the
original model's outputs (Keras itself, sample by sample when the batch is fixed), for checking
bundles with a raw interpreter. Shared by tests/test_field_models.py and benchmarks/field_matrix.py.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@dataclass
class Kind:
    name: str
    model: Path
    calibration: Path
    eval: Path
    keras_call: Callable[[dict], dict]
    batch: int | None = None            # fixed batch of the bundle (None: dynamic)
    lengths: tuple = ()                 # other lengths to check a variable-length axis with
    notes: list = field(default_factory=list)


def _seed(seed: int = 0):
    import keras
    keras.utils.set_random_seed(seed)


def _save(model, out: Path, name: str, data: dict, rng, out_names: list, batch=None, lengths=()) -> Kind:
    path = out / f"{name}.keras"
    model.save(path)
    cal, ev = out / f"{name}-cal.npz", out / f"{name}-eval.npz"
    n = next(iter(data.values())).shape[0]
    half = n // 2
    np.savez(cal, **{k: v[:half] for k, v in data.items()})
    np.savez(ev, **{k: v[half:] for k, v in data.items()})
    names = out_names

    def keras_call(arrays: dict) -> dict:
        xs = [arrays[_input_name(t)] for t in model.inputs]
        step = batch or len(xs[0])
        parts = []
        for s in range(0, len(xs[0]), step):
            chunk = [x[s:s + step] for x in xs]
            got = model(chunk if len(chunk) > 1 else chunk[0], training=False)
            got = got if isinstance(got, (list, tuple)) else [got]
            parts.append([np.asarray(g) for g in got])
        outs = [np.concatenate([p[i] for p in parts]) for i in range(len(parts[0]))]
        return dict(zip(names, outs))

    return Kind(name, path, cal, ev, keras_call, batch, lengths)


def _input_name(t) -> str:
    return t.name.split(":")[0]


def _seq(rng, n=96, t=6, f=3):
    return rng.normal(size=(n, t, f)).astype(np.float32)


def recurrent(out: Path, cell: str, return_sequences=False, stacked=False, bidirectional=False,
              masking=False, time=6, dropout=0.0) -> Kind:
    """Input((time, 3)) -> [Masking] -> (Bi)RNN [-> RNN] -> Dense(4) (or TimeDistributed Dense); ``dropout``: the
    recurrent layers' dropout and recurrent_dropout (identity at inference; Keras 3 keeps a seed state for it)."""
    import keras
    _seed()
    rng = np.random.default_rng(0)
    layer = {"lstm": keras.layers.LSTM, "gru": keras.layers.GRU, "simple_rnn": keras.layers.SimpleRNN}[cell]
    inp = keras.Input((time, 3), name="x")
    h = keras.layers.Masking(0.0)(inp) if masking else inp
    drop = dict(dropout=dropout, recurrent_dropout=dropout) if dropout else {}
    first = layer(5, return_sequences=return_sequences or stacked, **drop)
    h = (keras.layers.Bidirectional(first) if bidirectional else first)(h)
    if stacked:
        h = layer(4, return_sequences=return_sequences, **drop)(h)
    dense = keras.layers.Dense(4)
    out_layer = keras.layers.TimeDistributed(dense, name="y") if return_sequences else keras.layers.Dense(4, name="y")
    model = keras.Model(inp, out_layer(h))
    x = _seq(rng, n=240, t=time)
    if masking:
        x[::3, -2:, :] = 0.0          # padded tails
    name = f"{cell}{'-seq' if return_sequences else ''}{'-stacked' if stacked else ''}" \
           f"{'-bi' if bidirectional else ''}{'-mask' if masking else ''}{'-dropout' if dropout else ''}"
    return _save(model, out, name, {"x": x}, rng, ["y"])


def time_distributed(out: Path) -> Kind:
    import keras
    _seed()
    rng = np.random.default_rng(0)
    inp = keras.Input((5, 4), name="x")
    model = keras.Model(inp, keras.layers.TimeDistributed(keras.layers.Dense(3, activation="tanh"), name="y")(inp))
    return _save(model, out, "time-distributed", {"x": _seq(rng, t=5, f=4)}, rng, ["y"])


def conv1d_variable(out: Path) -> Kind:
    """Input((None, 4)) -> Conv1D -> GlobalMaxPooling1D -> Dense: any sequence length."""
    import keras
    _seed()
    rng = np.random.default_rng(0)
    inp = keras.Input((None, 4), name="x")
    h = keras.layers.Conv1D(6, 3, padding="same", activation="relu")(inp)
    h = keras.layers.GlobalMaxPooling1D()(h)
    model = keras.Model(inp, keras.layers.Dense(3, name="y")(h))
    return _save(model, out, "conv1d-variable", {"x": _seq(rng, t=10, f=4)}, rng, ["y"], lengths=(4, 23))


def fixed_batch(out: Path, batch: int) -> Kind:
    import keras
    _seed()
    rng = np.random.default_rng(0)
    inp = keras.Input((4, 3), batch_size=batch, name="x")
    h = keras.layers.Reshape((12,))(inp)
    model = keras.Model(inp, keras.layers.Dense(2, name="y")(h))
    return _save(model, out, f"fixed-batch-{batch}", {"x": _seq(rng, n=97, t=4, f=3)}, rng, ["y"], batch=batch)


def embedding_ids(out: Path) -> Kind:
    """int32 ids (vocabulary 300) -> Embedding -> GlobalAveragePooling1D -> Dense softmax."""
    import keras
    _seed()
    rng = np.random.default_rng(0)
    inp = keras.Input((12,), dtype="int32", name="tokens")
    h = keras.layers.Embedding(300, 8)(inp)
    h = keras.layers.GlobalAveragePooling1D()(h)
    model = keras.Model(inp, keras.layers.Dense(3, activation="softmax", name="cls")(h))
    ids = rng.integers(0, 300, (128, 12)).astype(np.int32)
    return _save(model, out, "embedding-ids", {"tokens": ids}, rng, ["cls"])


def embedding_outlier(out: Path) -> Kind:
    """Rows 0 and 1 of the embedding (padding/OOV) are huge, the rest tiny: per-tensor int8
    weights crush the ordinary rows. Inputs 0/1 alone "match"; real ids (2..299) do not."""
    import keras
    _seed()
    rng = np.random.default_rng(0)
    inp = keras.Input((10,), dtype="int32", name="tokens")
    h = keras.layers.Embedding(300, 8, name="embedding")(inp)
    h = keras.layers.GlobalAveragePooling1D()(h)
    model = keras.Model(inp, keras.layers.Dense(3, name="cls")(h))
    table = rng.normal(scale=0.02, size=(300, 8)).astype("float32")
    table[0:2] = rng.normal(scale=20, size=(2, 8))
    model.get_layer("embedding").set_weights([table])
    model.get_layer("cls").set_weights([rng.normal(size=(8, 3)).astype("float32"), np.zeros(3, "float32")])
    ids = rng.integers(2, 300, (128, 10)).astype(np.int32)
    return _save(model, out, "embedding-outlier", {"tokens": ids}, rng, ["cls"])


def multi_io(out: Path) -> Kind:
    """Two inputs (a sequence and a vector), two outputs of different shapes."""
    import keras
    _seed()
    rng = np.random.default_rng(0)
    a = keras.Input((6, 3), name="seq")
    b = keras.Input((5,), name="meta")
    h = keras.layers.Concatenate()([keras.layers.Flatten()(a), b])
    h = keras.layers.Dense(8, activation="relu")(h)
    model = keras.Model([a, b], [keras.layers.Dense(3, activation="softmax", name="cls")(h),
                                 keras.layers.Dense(1, name="score")(h)])
    data = {"seq": _seq(rng), "meta": rng.normal(size=(96, 5)).astype(np.float32)}
    return _save(model, out, "multi-io", data, rng, ["cls", "score"])


def binary_code(out: Path) -> Kind:
    """A 0/1 message times a 0/1 generator matrix, mod 2 (tied outputs: 0/1 vectors)."""
    import keras
    _seed()
    rng = np.random.default_rng(1)
    g = rng.integers(0, 2, (16, 8)).astype(np.float32)
    inp = keras.Input((16,), name="msg")
    model = keras.Model(inp, keras.layers.Dense(8, use_bias=False, name="parity")(inp))
    model.get_layer("parity").set_weights([g])
    # Sums of bits: small integers, so most rows have tied top values, as 0/1 codes and masks do.
    bits = rng.integers(0, 2, (128, 16)).astype(np.float32)
    return _save(model, out, "binary-code", {"msg": bits}, rng, ["parity"])


def uint8_pixels(out: Path, dark: float = 0.5) -> Kind:
    """A small CNN on raw pixels 0..255 with Rescaling(1/255) inside; calibration and eval data are
    darker pictures (0..~128), so the uint8 input scale is not 1."""
    import keras
    _seed()
    rng = np.random.default_rng(0)
    inp = keras.Input((12, 12, 3), name="image")
    h = keras.layers.Rescaling(1 / 255.0)(inp)
    h = keras.layers.Conv2D(4, 3, activation="relu")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    model = keras.Model(inp, keras.layers.Dense(3, activation="softmax", name="probs")(h))
    x = np.round(rng.integers(0, 256, (128, 12, 12, 3)) * dark).astype(np.float32)
    return _save(model, out, "uint8-pixels", {"image": x}, rng, ["probs"])


def raw_outputs(bundle: Path, arrays: dict) -> dict:
    """The bundle's model.tflite run by a bare ``ai_edge_litert`` interpreter, one sample per
    invoke, resized to each sample's real shape: an independent check that does not use
    edgepack's device script or comparison. Quantized inputs/outputs use the manifest's
    scale/zero point; outputs are keyed by the manifest's names."""
    import json
    from ai_edge_litert.interpreter import Interpreter
    manifest = json.loads((Path(bundle) / "manifest.json").read_text())
    interp = Interpreter(model_path=str(Path(bundle) / manifest["model"]))
    n = next(iter(arrays.values())).shape[0]
    outs: dict = {t["name"]: [] for t in manifest["outputs"]}
    shaped = None
    for i in range(n):
        sample = {t["name"]: arrays[t["name"]][i:i + 1] for t in manifest["inputs"]}
        batch = max(1, manifest["inputs"][0]["shape"][0])
        sample = {k: np.concatenate([v] * batch) for k, v in sample.items()}
        shapes = [sample[t["name"]].shape for t in manifest["inputs"]]
        if shapes != shaped:
            for t, shape in zip(manifest["inputs"], shapes):
                interp.resize_tensor_input(t["index"], list(shape))
            interp.allocate_tensors()
            shaped = shapes
        for t in manifest["inputs"]:
            x, q = sample[t["name"]], t["quantization"]
            if q:
                info = np.iinfo(t["dtype"])
                x = np.clip(np.round(x / q["scale"]) + q["zero_point"], info.min, info.max)
            interp.set_tensor(t["index"], x.astype(t["dtype"]))
        interp.invoke()
        for t in manifest["outputs"]:
            y, q = interp.get_tensor(t["index"])[:1], t["quantization"]
            if q:
                y = (y.astype(np.float32) - q["zero_point"]) * q["scale"]
            outs[t["name"]].append(y)
    return {k: np.concatenate(v) for k, v in outs.items()}


def eval_arrays(kind: Kind) -> dict:
    with np.load(kind.eval) as npz:
        return {k: npz[k] for k in npz.files}


def ALL(out: Path) -> list:
    """Every kind of the matrix, built into ``out``."""
    return [
        recurrent(out, "lstm"), recurrent(out, "gru"), recurrent(out, "simple_rnn"),
        recurrent(out, "lstm", return_sequences=True), recurrent(out, "gru", stacked=True),
        recurrent(out, "lstm", bidirectional=True), recurrent(out, "lstm", masking=True),
        time_distributed(out), conv1d_variable(out), fixed_batch(out, 1), fixed_batch(out, 2),
        embedding_ids(out), multi_io(out), binary_code(out), uint8_pixels(out),
    ]
