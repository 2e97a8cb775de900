"""The two real-scale benchmark models (issue 15), built deterministically, nothing downloaded.

    python scale_models.py OUTDIR

- ``mobilenet``: ``keras.applications.MobileNetV2(weights=None)``, 224x224x3 -> 1000, 3.5 M
  parameters (14 MB float32), seeded Glorot weights; ``mobilenet/eval.npz`` holds 16 seeded inputs.
- ``lstm``: Input(50, 32) -> LSTM(128) -> Dense(10) -> softmax (the field's "LSTM over a sequence",
  not unrolled: edgepack converts it at batch 1 to TFLite's builtin WHILE); ``lstm/eval.npz`` holds
  64 seeded sequences.
Each directory gets MODEL.keras and eval.npz (key ``x``).
"""
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np
import keras


def main(out: Path) -> None:
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    d = out / "mobilenet"
    d.mkdir(parents=True, exist_ok=True)
    model = keras.applications.MobileNetV2(weights=None)
    model.save(d / "mobilenet.keras")
    np.savez(d / "eval.npz", x=rng.random((16, 224, 224, 3), dtype=np.float32))
    print("mobilenet", model.count_params())

    keras.utils.set_random_seed(0)
    d = out / "lstm"
    d.mkdir(parents=True, exist_ok=True)
    inp = keras.Input((50, 32), name="seq")
    x = keras.layers.LSTM(128, name="lstm")(inp)
    x = keras.layers.Dense(10, name="logits")(x)
    model = keras.Model(inp, keras.layers.Softmax(name="probs")(x), name="lstm_seq")
    model.save(d / "lstm.keras")
    np.savez(d / "eval.npz", x=rng.standard_normal((64, 50, 32)).astype(np.float32))
    print("lstm", model.count_params())


if __name__ == "__main__":
    main(Path(sys.argv[1]))
