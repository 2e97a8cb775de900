"""The TensorFlow side of build and verify, as picklable jobs that :mod:`packager.isolate` runs
in a child process: load the model, read the data, convert, compute reference outputs."""
from __future__ import annotations

import platform
from dataclasses import dataclass, field
from pathlib import Path

from .calibration import Dataset, load_dataset, synthetic_dataset
from .convert import Conversion
from .loaders import TensorSpec

MAX_CHECK_SAMPLES = 256


@dataclass
class Prepared:
    """What the parent needs to bundle and verify; no TensorFlow objects."""
    path: str
    format: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    conversion: Conversion
    check: Dataset
    reference: dict
    warnings: list[str] = field(default_factory=list)
    versions: dict = field(default_factory=dict)


def versions() -> dict:
    from . import __version__
    import tensorflow as tf
    try:
        import keras
        keras_version = keras.__version__
    except ImportError:
        keras_version = None
    return {"edgepack": __version__, "tensorflow": tf.__version__, "keras": keras_version,
            "converter": f"tf.lite.TFLiteConverter (TensorFlow {tf.__version__})",
            "python": platform.python_version()}


def _inputs_for_check(loaded, data: str | None, calibration: Dataset | None) -> Dataset:
    if data:
        return load_dataset(data, loaded.inputs, purpose="verification")
    if calibration is not None:
        return calibration.head(MAX_CHECK_SAMPLES)
    return synthetic_dataset(loaded.inputs, count=64)


def prepare(model: str, recipe_name: str, io: str, calibration: str | None, data: str | None,
            trust: bool) -> Prepared:
    from .convert import convert
    from .loaders import load_model
    from .recipes import get_recipe

    loaded = load_model(model, trust=trust)
    cal = load_dataset(calibration, loaded.inputs) if calibration is not None else None
    check = _inputs_for_check(loaded, data, cal)
    conversion = convert(loaded, get_recipe(recipe_name), io, cal.inputs if cal else None, check.inputs)
    reference = loaded.reference(check.inputs)
    warnings = list(loaded.notes) + (cal.warnings if cal else [])
    return Prepared(str(loaded.path), loaded.format, loaded.inputs, loaded.outputs, conversion, check, reference,
                    warnings, versions())


def reference(model: str, data: str | None, arrays: dict | None, trust: bool) -> tuple[Dataset, dict, list[str]]:
    """Inputs (from ``data``, else ``arrays``, else synthetic) and the model's outputs on them."""
    from .loaders import load_model

    from .errors import UsageError

    loaded = load_model(model, trust=trust)
    if arrays is not None and set(arrays) != {s.name for s in loaded.inputs}:
        raise UsageError(f"the reference model's inputs ({', '.join(sorted(s.name for s in loaded.inputs))}) are not "
                         f"the bundle's ({', '.join(sorted(arrays))}); their outputs differ too",
                         hint="pass the model the bundle was built from")
    if data:
        dataset = load_dataset(data, loaded.inputs, purpose="verification")
    elif arrays is not None:
        dataset = Dataset(arrays, None, "bundle samples (samples/inputs.npz)")
    else:
        dataset = synthetic_dataset(loaded.inputs)
    return dataset, loaded.reference(dataset.inputs), [s.name for s in loaded.outputs]


def source_name(path: str) -> str:
    return Path(path).name
