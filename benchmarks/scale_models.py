"""The real-scale benchmark models (issues 15 and 23), built deterministically, nothing downloaded.

    python scale_models.py OUTDIR [NAME ...]        # default: every model below

- ``mlp``: Input(784) -> Dense(512, relu) -> Dense(512, relu) -> Dense(10) -> softmax, 0.67 M parameters.
- ``mobilenet``: ``keras.applications.MobileNetV2(weights=None)``, 224x224x3 -> 1000, 3.5 M parameters.
- ``efficientnet``: ``keras.applications.EfficientNetV2B0(weights=None)``, 224x224x3 -> 1000, 7.2 M parameters.
- ``transformer``: a 6-layer encoder built from keras layers (MultiHeadAttention 8 heads, d_model 512, FFN 2048,
  LayerNorm, residuals) over 64 tokens of 128 features, mean-pooled -> Dense(10) -> softmax, 19.0 M parameters.
- ``resnet50``: ``keras.applications.ResNet50(weights=None)``, 224x224x3 -> 1000, 25.6 M parameters.
- ``lstm``: Input(50, 32) -> LSTM(128) -> Dense(10) -> softmax (converted at batch 1 to TFLite's builtin WHILE).
Weights are seeded Glorot (keras.utils.set_random_seed(0)). Each directory gets MODEL.keras, eval.npz (key ``x``,
seeded inputs), cal.npz (key ``x``, 16 seeded calibration inputs for int8) and info.json (parameters, GFLOPs of one
inference as counted by TensorFlow's profiler on the float graph, or an estimate of 2 x multiply-adds when that fails).
"""
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np
import keras


def mlp():
    inp = keras.Input((784,), name="x")
    x = keras.layers.Dense(512, activation="relu")(inp)
    x = keras.layers.Dense(512, activation="relu")(x)
    x = keras.layers.Dense(10)(x)
    return keras.Model(inp, keras.layers.Softmax(name="probs")(x), name="mlp")


def transformer(layers=6, d=512, heads=8, ff=2048, tokens=64, features=128):
    inp = keras.Input((tokens, features), name="tokens")
    x = keras.layers.Dense(d, name="embed")(inp)
    for i in range(layers):
        a = keras.layers.MultiHeadAttention(heads, d // heads, name=f"mha{i}")(x, x)
        x = keras.layers.LayerNormalization(name=f"ln{i}a")(x + a)
        f = keras.layers.Dense(ff, activation="relu", name=f"ff{i}a")(x)
        f = keras.layers.Dense(d, name=f"ff{i}b")(f)
        x = keras.layers.LayerNormalization(name=f"ln{i}b")(x + f)
    x = keras.layers.GlobalAveragePooling1D()(x)
    x = keras.layers.Dense(10, name="logits")(x)
    return keras.Model(inp, keras.layers.Softmax(name="probs")(x), name="encoder6")


def lstm():
    inp = keras.Input((50, 32), name="seq")
    x = keras.layers.LSTM(128, name="lstm")(inp)
    x = keras.layers.Dense(10, name="logits")(x)
    return keras.Model(inp, keras.layers.Softmax(name="probs")(x), name="lstm_seq")


MODELS = {
    "mlp": mlp,
    "mobilenet": lambda: keras.applications.MobileNetV2(weights=None),
    "efficientnet": lambda: keras.applications.EfficientNetV2B0(weights=None),
    "transformer": transformer,
    "resnet50": lambda: keras.applications.ResNet50(weights=None),
    "lstm": lstm,
}


def gflops(model) -> tuple[float, str]:
    """GFLOPs of one inference (batch 1): TensorFlow's profiler on the frozen float graph."""
    try:
        import tensorflow as tf
        from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2
        spec = [tf.TensorSpec([1] + list(t.shape[1:]), t.dtype) for t in model.inputs]
        fn = tf.function(lambda *xs: model(list(xs) if len(xs) > 1 else xs[0])).get_concrete_function(*spec)
        graph = convert_variables_to_constants_v2(fn).graph
        opts = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
        opts["output"] = "none"
        flops = tf.compat.v1.profiler.profile(graph=graph, options=opts).total_float_ops
        return flops / 1e9, "tf.profiler"
    except Exception as exc:  # noqa: BLE001 - an estimate is still worth recording
        return 2 * model.count_params() / 1e9, f"2 x parameters ({type(exc).__name__})"


def main(out: Path, names) -> None:
    for name in names:
        keras.utils.set_random_seed(0)
        rng = np.random.default_rng(0)
        d = out / name
        d.mkdir(parents=True, exist_ok=True)
        model = MODELS[name]()
        model.save(d / f"{name}.keras")
        shape = tuple(model.inputs[0].shape[1:])
        n = 16 if name in ("mobilenet", "efficientnet", "resnet50") else 64
        def draw(k, rng=rng, shape=shape):
            if len(shape) == 3:       # images: uniform [0, 1)
                return rng.random((k,) + shape, dtype=np.float32)
            return rng.standard_normal((k,) + shape).astype(np.float32)
        np.savez(d / "eval.npz", x=draw(n))
        np.savez(d / "cal.npz", x=draw(16))
        g, how = gflops(model)
        info = {"params": int(model.count_params()), "gflops": g, "gflops_from": how}
        (d / "info.json").write_text(json.dumps(info))
        print(name, info, flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:] or list(MODELS))
