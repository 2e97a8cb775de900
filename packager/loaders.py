"""Model loading: Keras H5 (Keras 3 and legacy Keras 2), Keras v3 ``.keras`` and SavedModel dirs.

Each loader returns a :class:`LoadedModel`: named input/output specs, a ``reference`` function that
computes the original model's outputs with TensorFlow, and an ordered list of conversion
candidates. Conversion "success" proves nothing, so :mod:`packager.convert` tries the candidates in
order and keeps the first whose outputs match ``reference``.

TensorFlow and Keras are imported lazily, inside functions.
"""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import EnvironmentProblem, UsageError

H5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple          # -1 for unknown dims
    dtype: str            # numpy dtype name

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass
class Candidate:
    """One way of producing a TFLite converter. ``make`` returns a configured-but-unconverted
    ``TFLiteConverter``; ``tensor_names`` maps TFLite tensor names to spec names when the path
    loses signature names (TF1 path)."""
    name: str
    make: Callable[[], object]
    tensor_names: dict | None = None


@dataclass
class LoadedModel:
    path: Path
    format: str                      # keras-h5 | keras-v3 | saved-model | saved-model-tf1
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    reference: Callable[[dict], dict]
    candidates: list[Candidate] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    keepalive: object = None         # objects the candidates need alive (loaded SavedModel...)


@contextlib.contextmanager
def native_quiet():
    """Send what TensorFlow's C++ side writes to fd 2 (absl/cuda banners, converter chatter) to a
    temp file instead of the user's terminal; EDGEPACK_DEBUG=1 shows it."""
    if os.environ.get("EDGEPACK_DEBUG"):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def import_tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("ABSL_MIN_LOG_LEVEL", "3")
    try:
        with native_quiet():
            import tensorflow as tf
    except (ImportError, MemoryError) as exc:
        import importlib.util
        if importlib.util.find_spec("tensorflow") is None:
            raise EnvironmentProblem("TensorFlow is not installed on the host",
                                     hint="pip install 'tensorflow-cpu==2.21.*'") from None
        from .errors import ConversionError
        raise ConversionError(f"TensorFlow failed to start: {_first_line(exc)}",
                              hint="out of memory? EDGEPACK_MEMORY_MB raises the limit of the conversion process") from None
    return tf


def _np_dtype(tf_dtype) -> str:
    return np.dtype(tf_dtype.as_numpy_dtype).name


def _shape(shape) -> tuple:
    """A TensorShape or a Keras 3 tuple shape -> tuple with -1 for unknown dims."""
    dims = shape.as_list() if hasattr(shape, "as_list") and shape.rank is not None else shape
    if dims is None or (hasattr(shape, "rank") and shape.rank is None):
        raise UsageError("the model has an input of unknown rank; edgepack needs ranked inputs")
    return tuple(-1 if d is None else int(d) for d in dims)


def sniff_format(path: Path) -> str:
    """Which loader reads ``path``: decided by content, not only by suffix."""
    if not path.exists():
        raise UsageError(f"model not found: {path}")
    if path.is_dir():
        if (path / "saved_model.pb").is_file() or (path / "saved_model.pbtxt").is_file():
            return "saved-model"
        raise UsageError(f"{path} is a directory but not a SavedModel (no saved_model.pb)",
                         hint="pass the directory written by tf.saved_model.save, e.g. saved/1")
    if not path.is_file():  # a FIFO or device would block the read below
        raise UsageError(f"{path} is not a regular file, nor a SavedModel directory")
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    if not head:
        raise UsageError(f"{path} is empty")
    if head == H5_SIGNATURE:
        return "keras-h5"
    if head.startswith(b"PK") and zipfile.is_zipfile(path):
        return "keras-v3"
    raise UsageError(f"{path} is not a Keras H5, .keras or SavedModel file",
                     hint="supported: .h5/.hdf5 (model.save), .keras, or a SavedModel directory")


def load_model(path: str | os.PathLike, trust: bool = False) -> LoadedModel:
    path = Path(path)
    fmt = sniff_format(path)
    from .safety import check_model
    check_model(path, fmt, trust)
    import_tf()
    with native_quiet():
        loaded = LOADERS[fmt](path, trust)
    inner = loaded.reference

    def quiet_reference(arrays: dict) -> dict:
        with native_quiet():
            return inner(arrays)

    loaded.reference = quiet_reference
    return loaded


# --------------------------------------------------------------------------- Keras
def _keras_model_tf_function(tf, model, inputs: list[TensorSpec], outputs: list[str]):
    signature = [tf.TensorSpec([None if d == -1 else d for d in s.shape], s.dtype, name=s.name) for s in inputs]

    def call(*args):
        result = model(list(args) if len(args) > 1 else args[0], training=False)
        if isinstance(result, dict):
            return {k: result[k] for k in outputs}
        if not isinstance(result, (list, tuple)):
            result = [result]
        return dict(zip(outputs, result))

    return tf.function(call, input_signature=signature)


def _load_keras(path: Path, trust: bool = False) -> LoadedModel:
    tf = import_tf()
    fmt = sniff_format(path)
    model, errors = None, []
    import keras
    try:
        model = keras.models.load_model(path, compile=False, safe_mode=not trust)
    except Exception as exc:  # noqa: BLE001 - the loaders' own messages are what the user needs
        errors.append(f"keras {keras.__version__}: {_first_line(exc)}")
    if model is None and fmt == "keras-h5":
        try:  # legacy Keras 2 files that Keras 3 cannot read
            import tf_keras
            model = tf_keras.models.load_model(path, compile=False)
        except ImportError:
            errors.append("tf-keras not installed (pip install tf-keras) for legacy Keras 2 files")
        except Exception as exc:  # noqa: BLE001
            errors.append(f"tf-keras: {_first_line(exc)}")
    if model is None:
        raise UsageError(f"cannot load {path.name}: " + "; ".join(errors))
    inputs = [TensorSpec(_input_name(t, i), _shape(t.shape), _np_dtype(tf.as_dtype(t.dtype)))
              for i, t in enumerate(model.inputs)]
    names = [_output_name(t) for t in model.outputs]
    if len(names) != len(model.outputs) or len(set(names)) != len(names):
        names = [f"output_{i}" for i in range(len(model.outputs))]
    fn = _keras_model_tf_function(tf, model, inputs, names)
    concrete = fn.get_concrete_function()
    out_specs = [TensorSpec(n, _shape(concrete.structured_outputs[n].shape),
                            _np_dtype(concrete.structured_outputs[n].dtype)) for n in names]

    def reference(arrays: dict) -> dict:
        result = _batched(lambda *xs: concrete(*[tf.constant(x) for x in xs]),
                          [arrays[s.name] for s in inputs])
        return result

    def from_concrete():
        return tf.lite.TFLiteConverter.from_concrete_functions([concrete], fn)

    def from_exported_saved_model():
        import tempfile
        tmp = tempfile.mkdtemp(prefix="edgepack-sm-")
        from . import lifecycle
        lifecycle.register_dir(tmp)  # the converter reads it later: removed when this process ends
        module = tf.Module()
        module.model = model
        module.serve = fn
        tf.saved_model.save(module, tmp, signatures={"serving_default": concrete})
        return tf.lite.TFLiteConverter.from_saved_model(tmp, signature_keys=["serving_default"])

    candidates = [Candidate("keras-concrete-function", from_concrete, tensor_names=flattened_names(names)),
                  Candidate("keras-via-saved-model", from_exported_saved_model)]
    if len(names) == 1 and hasattr(tf.lite.TFLiteConverter, "from_keras_model"):
        candidates.append(Candidate("keras-from-keras-model",
                                    lambda: tf.lite.TFLiteConverter.from_keras_model(model)))
    return LoadedModel(path, fmt, inputs, out_specs, reference, candidates, keepalive=(model, fn))


def flattened_names(dict_keys: list[str]) -> dict:
    """``from_concrete_functions`` names a function's outputs ``output_<i>`` in tf.nest order,
    which for a dict is sorted by key (or, with no signature, ``Identity``, ``Identity_<i>``);
    map those back to the keys. The comparison with the original outputs checks the mapping."""
    mapping = {}
    for i, key in enumerate(sorted(dict_keys)):
        mapping[f"output_{i}"] = key
        mapping["Identity" if i == 0 else f"Identity_{i}"] = key
    return mapping


def _output_name(tensor) -> str | None:
    history = getattr(tensor, "_keras_history", None)
    op = getattr(history, "operation", None) or getattr(history, "layer", None)
    name = getattr(op, "name", None)
    if name and len(getattr(op, "_outbound_nodes", []) or []) <= 1 and getattr(history, "tensor_index", 0) == 0:
        return name
    return name and f"{name}_{getattr(history, 'tensor_index', 0)}"


def _input_name(tensor, index: int) -> str:
    name = getattr(tensor, "name", "") or ""
    name = name.split(":")[0]
    return name if name and not name.startswith("keras_tensor") else f"input_{index}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def _batched(call, arrays: list, batch: int = 256) -> dict:
    """Run ``call(*arrays)`` in chunks and concatenate the dict outputs."""
    n = arrays[0].shape[0]
    parts: dict = {}
    for start in range(0, max(n, 1), batch):
        out = call(*[a[start:start + batch] for a in arrays])
        for k, v in out.items():
            parts.setdefault(k, []).append(np.asarray(v))
    return {k: np.concatenate(v) for k, v in parts.items()}


# --------------------------------------------------------------------------- SavedModel
def _load_saved_model(path: Path, trust: bool = False) -> LoadedModel:
    tf = import_tf()
    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as exc:  # noqa: BLE001 - old TF 2.x files: try the TF1 signature path
        note = f"tf.saved_model.load failed ({_first_line(exc)}); using the TF1-compatible signature path"
        model = _load_saved_model_tf1(path)
        model.notes.append(note)
        return model
    signatures = dict(getattr(loaded, "signatures", {}) or {})
    if signatures:
        key = "serving_default" if "serving_default" in signatures else sorted(signatures)[0]
        sig = signatures[key]
        kw = sig.structured_input_signature[1]
        in_names = sorted(kw)
        inputs = [TensorSpec(n, _shape(kw[n].shape), _np_dtype(kw[n].dtype)) for n in in_names]
        outs = sig.structured_outputs
        out_names = sorted(outs)
        outputs = [TensorSpec(n, _shape(outs[n].shape), _np_dtype(outs[n].dtype)) for n in out_names]

        def reference(arrays: dict) -> dict:
            fixed = inputs[0].shape[0] if inputs and inputs[0].shape and inputs[0].shape[0] > 0 else None
            return _run_fixed_or_dynamic(lambda *xs: sig(**{n: tf.constant(x) for n, x in zip(in_names, xs)}),
                                         [arrays[n] for n in in_names], fixed)

        candidates = [
            Candidate("saved-model", lambda: tf.lite.TFLiteConverter.from_saved_model(str(path), signature_keys=[key])),
            Candidate("saved-model-concrete-function",
                      lambda: tf.lite.TFLiteConverter.from_concrete_functions([sig], loaded),
                      tensor_names=flattened_names(out_names)),
            Candidate("saved-model-tf1", lambda: _tf1_converter(tf, path, key),
                      tensor_names=_tf1_tensor_names(path, key)),
        ]
        return LoadedModel(path, "saved-model", inputs, outputs, reference, candidates,
                           notes=[f"signature {key!r}"], keepalive=loaded)
    concrete = _find_traced_function(loaded)
    if concrete is None:
        raise UsageError(f"{path} has no signatures and no traced tf.function to convert",
                         hint="export with tf.saved_model.save(obj, dir, signatures=obj.f.get_concrete_function(...))")
    return _from_concrete(tf, path, loaded, concrete)


def _find_traced_function(loaded):
    for attr in ("call", "__call__", "serve", "predict"):
        fn = getattr(loaded, attr, None)
        found = getattr(fn, "concrete_functions", None) if fn is not None else None
        if found:
            return found[0]
    for attr in sorted(dir(loaded)):
        if attr.startswith("_"):
            continue
        found = getattr(getattr(loaded, attr, None), "concrete_functions", None)
        if found:
            return found[0]
    return None


def _from_concrete(tf, path: Path, loaded, concrete) -> LoadedModel:
    args, kwargs = concrete.structured_input_signature
    specs = list(args) + [kwargs[k] for k in sorted(kwargs)]
    if not specs or not all(isinstance(s, tf.TensorSpec) for s in specs):
        raise UsageError(f"{path}: the traced function's inputs are not plain tensors")
    inputs = [TensorSpec(s.name or f"input_{i}", _shape(s.shape), _np_dtype(s.dtype)) for i, s in enumerate(specs)]
    structured = concrete.structured_outputs
    if isinstance(structured, dict):
        out_names = sorted(structured)
        out_specs = [structured[n] for n in out_names]
    else:
        seq = structured if isinstance(structured, (list, tuple)) else [structured]
        out_names = [f"output_{i}" for i in range(len(seq))]
        out_specs = list(seq)
    outputs = [TensorSpec(n, _shape(s.shape), _np_dtype(s.dtype)) for n, s in zip(out_names, out_specs)]

    def as_dict(result):
        if isinstance(result, dict):
            return {n: result[n] for n in out_names}
        seq = result if isinstance(result, (list, tuple)) else [result]
        return dict(zip(out_names, seq))

    fixed = inputs[0].shape[0] if inputs[0].shape and inputs[0].shape[0] > 0 else None

    def reference(arrays: dict) -> dict:
        return _run_fixed_or_dynamic(lambda *xs: as_dict(concrete(*[tf.constant(x) for x in xs])),
                                     [arrays[s.name] for s in inputs], fixed)

    notes = ["no signatures: converting the traced function"]
    if fixed:
        notes.append(f"batch size {fixed} is baked into the traced function")
    cands = [Candidate("concrete-function", lambda: tf.lite.TFLiteConverter.from_concrete_functions([concrete], loaded),
                       tensor_names=flattened_names(out_names) if isinstance(structured, dict) else None)]
    return LoadedModel(path, "saved-model", inputs, outputs, reference, cands, notes=notes, keepalive=loaded)


def _run_fixed_or_dynamic(call, arrays: list, fixed: int | None) -> dict:
    if not fixed:
        return _batched(call, arrays)
    n = arrays[0].shape[0]
    parts: dict = {}
    for start in range(0, n, fixed):
        chunk = [a[start:start + fixed] for a in arrays]
        real = chunk[0].shape[0]
        if real < fixed:
            chunk = [np.concatenate([c, np.zeros((fixed - real,) + c.shape[1:], c.dtype)]) for c in chunk]
        for k, v in call(*chunk).items():
            parts.setdefault(k, []).append(np.asarray(v)[:real])
    return {k: np.concatenate(v) for k, v in parts.items()}


# --------------------------------------------------------------------------- TF1-compatible path
def _read_signature_def(path: Path, key: str | None):
    from tensorflow.core.protobuf import saved_model_pb2
    proto = saved_model_pb2.SavedModel()
    try:
        proto.ParseFromString((path / "saved_model.pb").read_bytes())
    except Exception as exc:  # noqa: BLE001
        raise UsageError(f"{path}/saved_model.pb is corrupt: {_first_line(exc)}") from None
    for meta in proto.meta_graphs:
        if "serve" in meta.meta_info_def.tags or not meta.meta_info_def.tags:
            sigs = {k: v for k, v in meta.signature_def.items() if not k.startswith("__")}
            if not sigs:
                continue
            chosen = key if key in sigs else ("serving_default" if "serving_default" in sigs else sorted(sigs)[0])
            return chosen, sigs[chosen]
    raise UsageError(f"{path} has no serving signature the TF1 path can read")


def _tf1_tensor_names(path: Path, key: str | None) -> dict:
    _, sig = _read_signature_def(path, key)
    names = {}
    for group in (sig.inputs, sig.outputs):
        for key, info in group.items():
            names[info.name] = key
            names[info.name.split(":")[0]] = key   # the converter drops the ':0' output index
    return names


def _tf1_converter(tf, path: Path, key: str):
    return tf.compat.v1.lite.TFLiteConverter.from_saved_model(str(path), signature_key=key)


def _load_saved_model_tf1(path: Path) -> LoadedModel:
    tf = import_tf()
    key, sig = _read_signature_def(path, None)
    from tensorflow.python.framework import tensor_shape

    def spec(name, info):
        shape = tensor_shape.TensorShape(info.tensor_shape)
        return TensorSpec(name, _shape(shape), _np_dtype(tf.as_dtype(info.dtype)))

    in_names, out_names = sorted(sig.inputs), sorted(sig.outputs)
    inputs = [spec(n, sig.inputs[n]) for n in in_names]
    outputs = [spec(n, sig.outputs[n]) for n in out_names]
    graph = tf.Graph()
    session = tf.compat.v1.Session(graph=graph)
    try:
        with graph.as_default():
            tf.compat.v1.saved_model.loader.load(session, ["serve"], str(path))
    except Exception as exc:  # noqa: BLE001
        session.close()
        raise UsageError(f"cannot load SavedModel {path}: {_first_line(exc)}") from None
    feeds = [sig.inputs[n].name for n in in_names]
    fetches = {n: sig.outputs[n].name for n in out_names}

    def reference(arrays: dict) -> dict:
        def call(*xs):
            return session.run(fetches, feed_dict=dict(zip(feeds, xs)))
        fixed = inputs[0].shape[0] if inputs[0].shape and inputs[0].shape[0] > 0 else None
        return _run_fixed_or_dynamic(call, [arrays[n] for n in in_names], fixed)

    candidates = [Candidate("saved-model-tf1", lambda: _tf1_converter(tf, path, key),
                            tensor_names=_tf1_tensor_names(path, key))]
    return LoadedModel(path, "saved-model-tf1", inputs, outputs, reference, candidates,
                       notes=[f"signature {key!r} (TF1 path)"], keepalive=session)


LOADERS: dict[str, Callable[[Path], LoadedModel]] = {
    "keras-h5": _load_keras,
    "keras-v3": _load_keras,
    "saved-model": _load_saved_model,
}
