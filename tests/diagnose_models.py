"""Small generated models whose int8 conversion goes wrong in a known op (tests of `diagnose`)."""
from __future__ import annotations

import os

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def flat_softmax(x, y, out, classes: int = 1000, seed: int = 0):
    """Digits MLP whose head spreads probability over ``classes`` outputs: every probability is
    about 1/classes, below int8 softmax's fixed step 1/256, so the int8 output collapses to zero."""
    import keras
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((8, 8, 1), name="x"), keras.layers.Flatten(name="flat"),
        keras.layers.Dense(32, activation="relu", name="hidden"),
        keras.layers.Dense(classes, name="logits"),
        keras.layers.Softmax(name="probs")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=3, batch_size=64, verbose=0)
    path = out / "flat_softmax.h5"
    model.save(path)
    return path


def outlier_layer(x, y, out, seed: int = 0, factor: float = 2000.0):
    """Digits classifier with one layer whose single unit produces huge activations (an outlier
    channel, scaled by ``factor``, cancelled by the next layer's weights): int8's one scale per
    tensor makes every other unit of that layer fall below one step."""
    import keras
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((8, 8, 1), name="x"), keras.layers.Flatten(name="flat"),
        keras.layers.Dense(256, activation="relu", name="hidden"),
        keras.layers.Dense(256, activation="relu", name="hidden2"),
        keras.layers.Dense(16, activation="relu", name="outlier"),
        keras.layers.Dense(10, name="logits"), keras.layers.Softmax(name="probs")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=15, batch_size=64, verbose=0)
    w, b = model.get_layer("outlier").get_weights()
    w[:, 0] *= factor
    b[0] *= factor
    model.get_layer("outlier").set_weights([w, b])
    w2, b2 = model.get_layer("logits").get_weights()
    w2[0] /= factor
    model.get_layer("logits").set_weights([w2, b2])
    path = out / "outlier.h5"
    model.save(path)
    return path


def int8_tflite(model_path, calibration, out, name="int8.tflite"):
    """Plain TFLiteConverter int8 (float I/O) conversion of a Keras file, written to ``out/name``."""
    import keras
    import tensorflow as tf
    model = keras.models.load_model(model_path)
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]

    def rep():
        for i in range(len(calibration)):
            yield [calibration[i:i + 1].astype(np.float32)]
    conv.representative_dataset = rep
    path = out / name
    path.write_bytes(conv.convert())
    return path


def int16_dense_tanh(out, seed: int = 0):
    """Dense(64) -> tanh, converted int16x8 (16-bit activations), and inputs normal(0, 3) of shape
    (64, 64). Measured: tflite-runtime 2.14 and ai-edge-litert 2.3 quantize a few of these inputs
    to int16 one step apart (op 0 QUANTIZE, identical float inputs)."""
    import keras
    import tensorflow as tf
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((64,), name="x"), keras.layers.Dense(64, name="d"),
                              keras.layers.Activation("tanh", name="t")])
    x = np.random.default_rng(seed).normal(size=(64, 64)).astype(np.float32) * 3

    def rep():
        for i in range(len(x)):
            yield [x[i:i + 1]]
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = rep
    conv.target_spec.supported_ops = [tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
    path = out / "int16_tanh.tflite"
    path.write_bytes(conv.convert())
    return path, {"x": x}
