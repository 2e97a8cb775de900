"""Small models the tests generate (no downloads): every input form edgepack accepts.

Real data: scikit-learn's 8x8 handwritten digits. Models are tiny so the whole zoo builds in
seconds; each builder writes into ``out`` and returns the path the user would pass to edgepack.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def digits(n_train: int = 1200):
    from examples.digits import load_split
    return load_split(n_train)


def trained_mlp(x, y, epochs: int = 15, seed: int = 0):
    """The tutorial's MLP (examples/digits.py), smaller hidden layer, Keras 3."""
    from examples.digits import tutorial_mlp
    model = tutorial_mlp(32, seed)
    model.fit(x, y, epochs=epochs, batch_size=64, verbose=0)
    return model


def keras3_h5(model, out: Path) -> Path:
    path = out / "k3.h5"
    model.save(path)
    return path


def keras3_v3(model, out: Path) -> Path:
    path = out / "k3.keras"
    model.save(path)
    return path


def keras2_h5(x, y, out: Path, suffix: str = ".h5") -> Path:
    """Keras 2 (tf-keras) legacy HDF5 layout, trained briefly on the same digits."""
    import tf_keras as k2
    k2.utils.set_random_seed(1)
    model = k2.Sequential([
        k2.layers.Flatten(input_shape=(8, 8, 1), name="flat"),
        k2.layers.Dense(32, activation="relu"),
        k2.layers.Dense(10, activation="softmax", name="probs"),
    ])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=10, verbose=0)
    path = out / f"k2{suffix}"
    model.save(path, save_format="h5")
    return path


def saved_model_keras(model, out: Path) -> Path:
    import tensorflow as tf
    path = out / "sm_keras" / "1"
    tf.saved_model.save(model, str(path))
    return path


def _subclassed(with_signature: bool, x, y, trained=None):
    import keras
    import tensorflow as tf

    decorator = tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 1], tf.float32)]) if with_signature \
        else tf.function

    class MLP(keras.Model):
        def __init__(self):
            super().__init__()
            self.flatten = keras.layers.Flatten()
            self.dense1 = keras.layers.Dense(32, activation="relu")
            self.dense2 = keras.layers.Dense(10)

        @decorator
        def call(self, inputs):
            return tf.nn.softmax(self.dense2(self.dense1(self.flatten(inputs))))

    model = MLP()
    # Calling it builds the layers and, without a signature, traces the function at batch 4 - the
    # SEED's "call must be a tf.function" way. Keras 3 cannot fit through a tf.function-decorated
    # call (no gradients), so the weights come from the trained Sequential MLP of the same shape.
    model(x[:4])
    if trained is not None:
        model.set_weights(trained.get_weights())
    return model


def saved_model_subclassed(x, y, out: Path, with_signature: bool, trained=None) -> Path:
    import tensorflow as tf
    model = _subclassed(with_signature, x, y, trained)
    path = out / ("sm_sub_sig" if with_signature else "sm_sub") / "1"
    tf.saved_model.save(model, str(path))
    return path


def saved_model_module(out: Path) -> Path:
    """A plain tf.Module with no signatures, only a traced function (fixed batch 2)."""
    import tensorflow as tf

    class Affine(tf.Module):
        def __init__(self):
            super().__init__()
            rng = np.random.default_rng(3)
            self.w = tf.Variable(rng.normal(size=(64, 10)).astype("float32"))
            self.b = tf.Variable(rng.normal(size=10).astype("float32"))

        @tf.function
        def __call__(self, x):
            return tf.nn.softmax(tf.matmul(tf.reshape(x, [-1, 64]), self.w) + self.b)

    module = Affine()
    module(tf.zeros([2, 8, 8, 1]))
    path = out / "sm_module"
    tf.saved_model.save(module, str(path), signatures=None)
    return path


def keras_export(model, out: Path) -> Path:
    path = out / "sm_export"
    model.export(str(path), verbose=False)
    return path


def saved_model_old_tf(out: Path) -> Path:
    """A SavedModel laid out like those TF 2.0-2.5 Keras wrote with optimizer slots: the optimizer
    node has slot variables but revives as a plain _UserObject, so TF 2.21's
    ``tf.saved_model.load`` fails with "'_UserObject' object has no attribute 'add_slot'" while
    the TF1-compatible signature path still reads it."""
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2

    class Optimizer(tf.Module):
        def __init__(self):
            super().__init__()
            self.iterations = tf.Variable(0, dtype=tf.int64)

    class Model(tf.Module):
        def __init__(self):
            super().__init__()
            rng = np.random.default_rng(4)
            self.w = tf.Variable(rng.normal(size=(64, 10)).astype("float32"))
            self.b = tf.Variable(rng.normal(size=10).astype("float32"))
            self.w_m = tf.Variable(np.zeros((64, 10), "float32"))
            self.optimizer = Optimizer()

        @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 1], tf.float32, name="x")])
        def serve(self, x):
            return {"probs": tf.nn.softmax(tf.matmul(tf.reshape(x, [-1, 64]), self.w) + self.b)}

    model = Model()
    path = out / "sm_old"
    tf.saved_model.save(model, str(path), signatures={"serving_default": model.serve})
    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((path / "saved_model.pb").read_bytes())
    graph = proto.meta_graphs[0].object_graph_def
    ids = {c.local_name: c.node_id for c in graph.nodes[0].children}
    slot = graph.nodes[ids["optimizer"]].slot_variables.add()
    slot.original_variable_node_id, slot.slot_name, slot.slot_variable_node_id = ids["w"], "m", ids["w_m"]
    (path / "saved_model.pb").write_bytes(proto.SerializeToString())
    return path


def multi_io(out: Path) -> Path:
    """Two named inputs, two named outputs declared in non-alphabetical order."""
    import keras
    keras.utils.set_random_seed(5)
    a = keras.Input((4,), name="sensor_a")
    b = keras.Input((3,), name="sensor_b")
    h = keras.layers.Dense(8, activation="relu")(keras.layers.Concatenate()([a, b]))
    zeta = keras.layers.Dense(2, name="zeta")(h)
    alpha = keras.layers.Dense(5, activation="softmax", name="alpha")(h)
    model = keras.Model([a, b], [zeta, alpha])
    path = out / "multi.keras"
    model.save(path)
    return path


def other_mlp_same_shapes(out: Path) -> Path:
    """Same input/output shapes and names as ``trained_mlp`` but different (random) weights."""
    from examples.digits import tutorial_mlp
    path = out / "other.h5"
    tutorial_mlp(32, seed=99).save(path)
    return path


def small_cnn(seed: int):
    """An untrained 5-class softmax CNN on 8x8x3 images (input ``img``, output ``probs``): small margins, so an int8
    bundle's decisions are a real test; ~700 parameters."""
    import keras
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((8, 8, 3), name="img"), keras.layers.Conv2D(8, 3, activation="relu"),
                             keras.layers.Conv2D(8, 3, activation="tanh"), keras.layers.GlobalAveragePooling2D(),
                             keras.layers.Dense(5, activation="softmax", name="probs")])
