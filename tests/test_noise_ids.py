"""Float noise is measured on continuous inputs only (ids stored as floats are not moved: one ulp below 5.0 is id 4
to an Embedding), and a length variant the model answers with nothing is dropped with a note, not judged.
Both found on real models (benchmarks/real_models.py: a character-bigram LSTM, SpliceAI)."""
from __future__ import annotations

import numpy as np
import pytest

from packager.convert import jobs
from packager.load.calibration import Dataset

pytestmark = pytest.mark.fast


class Embedding:
    """An embedding lookup + mean + softmax over 5 classes, reading float ids as Keras does (truncation)."""

    def __init__(self):
        self.table = np.random.default_rng(0).normal(size=(50, 5))

    def reference(self, arrays: dict) -> dict:
        ids = np.asarray(arrays["x"]).astype(np.int64)
        z = self.table[ids].mean(axis=1) * 20
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return {"p": e / e.sum(axis=1, keepdims=True)}


def test_ids_stored_as_floats_are_not_moved():
    model = Embedding()
    x = np.random.default_rng(1).integers(1, 50, size=(40, 10)).astype(np.float32)
    ref = model.reference({"x": x})
    assert jobs.float_noise(model, {"x": x}, ref) == {}
    # the old rule moved them: 5.0 -> 4.9999995 is id 4, and that "noise" is as large as the scores themselves
    moved = np.nextafter(x, -np.inf)
    from packager.criteria import noise_of
    assert float(np.max(noise_of(ref["p"], model.reference({"x": moved})["p"]))) > 0.1


def test_continuous_float_inputs_are_still_moved():
    class Linear:
        def reference(self, arrays):
            return {"y": np.asarray(arrays["x"], np.float32) @ np.ones((3, 2), np.float32) * 1e4}
    x = np.random.default_rng(2).random((20, 3), dtype=np.float32)
    noise = jobs.float_noise(Linear(), {"x": x}, Linear().reference({"x": x}))
    assert set(noise) == {"y"} and np.all(noise["y"] > 0)


def test_a_length_the_model_answers_with_nothing_is_dropped_with_a_note():
    def crop(arrays):                     # SpliceAI-like: crops 4 from each side of the length axis
        x = np.asarray(arrays["x"])
        return {"y": x[:, 4:-4] if x.shape[1] > 8 else x[:, 0:0]}
    ds = Dataset({"x": np.ones((3, 12, 2), np.float32)}, variants=[{"x": np.ones((3, 6, 2), np.float32)},
                                                                   {"x": np.ones((3, 10, 2), np.float32)}])
    ds, refs = jobs.references_of(crop, ds)
    assert len(ds.groups) == len(refs) == 2 and refs[1]["y"].shape == (3, 2, 2)
    assert any("length 6x2 were not verified" in n and "empty outputs" in n for n in ds.notes)
