"""Build the golden bundles the fast tests run on (tests/golden/<name>/), with the real ``packager.api.build``.

Rebuild them (needs TensorFlow; about a minute) whenever the bundle or manifest format changes:

    .venv/bin/python tests/golden/make.py

then commit tests/golden/. The fast tests (``pytest -m fast``) build nothing: they read these bundles,
and ``tests/test_golden.py::test_golden_bundles_are_valid_for_this_manifest_format`` says when they are
stale. Each bundle is a few KB plus its copy of the device script:

* ``dense-f32``   Dense 4->3 softmax, float32, target rpi (deploys over ssh)
* ``dense-int8``  the same layer quantized int8 (calibrated on seeded inputs), target rpi
* ``two-out``     one input, two outputs (softmax probabilities and a linear value), float32, target android

Models are seeded; the converter is not bit-reproducible across TensorFlow versions, so a rebuild may
change the .tflite bytes (the tests check consistency, not fixed digests).
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent

#: name -> (target, recipe); the models are built in ``_model``
GOLDEN = {"dense-f32": ("rpi", "float32"), "dense-int8": ("rpi", "int8"), "two-out": ("android", "float32")}


def _model(name: str, path: Path) -> None:
    import keras
    keras.utils.set_random_seed(7)
    if name == "two-out":
        x = keras.Input((4,), name="x")
        h = keras.layers.Dense(6, activation="relu", name="hidden")(x)
        probs = keras.layers.Dense(3, activation="softmax", name="probs")(h)
        value = keras.layers.Dense(1, name="value")(h)
        model = keras.Model(x, {"probs": probs, "value": value})
    else:
        model = keras.Sequential([keras.Input((4,), name="x"), keras.layers.Dense(3, activation="softmax", name="probs")])
    model.save(path)


def main(out: Path = HERE) -> None:
    """Build every golden bundle into ``out`` (replacing what is there)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("EDGEPACK_NO_CACHE", "1")
    sys.path.insert(0, str(ROOT))
    import numpy as np

    from packager import api
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rng = np.random.default_rng(7)
        np.savez(tmp / "calibration.npz", x=rng.normal(size=(64, 4)).astype(np.float32))
        for name, (target, recipe) in GOLDEN.items():
            model = tmp / f"{name}.keras"
            _model(name, model)
            built = tmp / "out" / name
            api.build(model, target=target, recipe=recipe, verify=False, output=built, name=name,
                      calibration=tmp / "calibration.npz" if recipe == "int8" else None)
            dest = out / name
            if dest.exists():
                shutil.rmtree(dest)
            shutil.copytree(built, dest)
            print(f"{dest.relative_to(ROOT)}: {sum(p.stat().st_size for p in dest.rglob('*') if p.is_file())} bytes")


if __name__ == "__main__":
    main()
