"""Model loaders: Keras H5 (Keras 3 and legacy Keras 2), Keras v3 ``.keras`` and SavedModel dirs.
Reached only through :func:`packager.load.formats.load_model`, after the format's safety scan.

Each loader returns a :class:`LoadedModel`: named input/output specs, a ``reference`` function that
computes the original model's outputs with TensorFlow, and an ordered list of conversion
candidates. Conversion "success" proves nothing, so :mod:`packager.convert` tries the candidates in
order and keeps the first whose outputs match ``reference``.

TensorFlow and Keras are imported lazily, inside functions.
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..lazynp import np

from ..errors import EnvironmentProblem, UsageError
from ..tensor import Tensor

H5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


@dataclass
class Candidate:
    """One way of producing a TFLite converter. ``make`` returns a configured-but-unconverted
    ``TFLiteConverter``; ``tensor_names`` maps TFLite tensor names to spec names when the path
    loses signature names (TF1 path)."""
    name: str
    make: Callable[[], object]
    tensor_names: dict | None = None
    batch: int | None = None         # the batch size baked into this path's model (None: dynamic)
    calibration_first: bool = False  # tried first by recipes that calibrate (int8, int16x8)
    # Paths with the same ``numbers`` compute the same numbers (they differ only in how the graph is obtained): when
    # one converts, runs and fails the check on accuracy, the others are not converted again (issue 23). None: a
    # path whose numbers may differ from every other's, always tried.
    numbers: str | None = None


@dataclass
class LoadedModel:
    """A model loaded with TensorFlow: its input/output specs, ``reference(arrays) -> outputs``
    (the original model's outputs, dicts keyed by name, first axis = samples), and the conversion
    paths to try, in order."""
    path: Path
    format: str                      # keras-h5 | keras-v3 | saved-model | saved-model-tf1
    inputs: list[Tensor]
    outputs: list[Tensor]
    reference: Callable[[dict], dict]
    candidates: list[Candidate] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    keepalive: object = None         # objects the candidates need alive (loaded SavedModel...)
    fixed: dict = field(default_factory=dict)  # what the bundle fixes that the model leaves open (batch, ...)
    signature: str | None = None     # the SavedModel signature converted (None: not a SavedModel signature)
    model_bytes: bytes | None = None  # a .tflite brought by the user: the model itself (engine as-is)
    reference_source: str = ""       # where ``reference`` comes from when it is not the model itself ("none": nowhere)
    output_renames: dict = field(default_factory=dict)   # a user's .tflite: its output name -> the reference's


_QUIET_LOCK = threading.Lock()
_QUIET: dict = {"depth": 0}


@contextlib.contextmanager
def native_quiet():
    """Send what TensorFlow's C++ side writes to fd 2 (absl/cuda banners, converter chatter) to a
    temp file instead of the user's terminal, and Python warnings nowhere; EDGEPACK_DEBUG=1 shows both. Nested and
    concurrent uses (the reference run beside a conversion, :class:`packager.convert.jobs.Later`) share one
    redirection: the first to enter sets it up, the last to leave restores fd 2 and the warning filters."""
    if os.environ.get("EDGEPACK_DEBUG"):
        yield
        return
    with _QUIET_LOCK:
        if _QUIET["depth"] == 0:
            sys.stderr.flush()
            sink = tempfile.TemporaryFile()
            caught = warnings.catch_warnings()
            caught.__enter__()
            warnings.simplefilter("ignore")
            _QUIET.update(saved=os.dup(2), sink=sink, caught=caught)
            os.dup2(sink.fileno(), 2)
        _QUIET["depth"] += 1
    try:
        yield
    finally:
        with _QUIET_LOCK:
            _QUIET["depth"] -= 1
            if _QUIET["depth"] == 0:
                sys.stderr.flush()
                os.dup2(_QUIET["saved"], 2)
                os.close(_QUIET["saved"])
                _QUIET["sink"].close()
                _QUIET["caught"].__exit__(None, None, None)


def import_tf():
    """Import TensorFlow quietly; EnvironmentProblem when it is missing, ConversionError when it cannot start."""
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
        from ..errors import ConversionError
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


# --------------------------------------------------------------------------- Keras
def _keras_model_tf_function(tf, model, inputs: list[Tensor], outputs: list[str]):
    signature = [tf.TensorSpec([None if d == -1 else d for d in s.shape], s.dtype, name=s.name) for s in inputs]

    def call(*args):
        result = model(list(args) if len(args) > 1 else args[0], training=False)
        if isinstance(result, dict):
            return {k: result[k] for k in outputs}
        if not isinstance(result, (list, tuple)):
            result = [result]
        return dict(zip(outputs, result))

    return tf.function(call, input_signature=signature)


RECURRENT_CLASSES = {"RNN", "LSTM", "GRU", "SimpleRNN", "Bidirectional", "ConvLSTM1D", "ConvLSTM2D", "ConvLSTM3D",
                     "LSTMV1", "GRUV1", "CuDNNLSTM", "CuDNNGRU"}


def _walk_layers(model):
    """Every layer, nested models and wrappers (Bidirectional, TimeDistributed) included."""
    seen = set()
    stack = list(getattr(model, "layers", []) or [])
    while stack:
        layer = stack.pop()
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        yield layer
        stack.extend(getattr(layer, "layers", []) or [])
        for attr in ("layer", "forward_layer", "backward_layer", "cell"):
            inner = getattr(layer, attr, None)
            if inner is not None and hasattr(inner, "name"):
                stack.append(inner)


def _recurrent_layers(model) -> list:
    return [layer for layer in _walk_layers(model)
            if {c.__name__ for c in type(layer).__mro__} & RECURRENT_CLASSES]


# Ops that pass integer ids through unchanged in value (so a gather's valid index range is the
# input's): the walk from a gather's indices back to an input follows only these.
_VALUE_PRESERVING = {"Cast", "Identity", "Reshape", "ExpandDims", "Squeeze", "Transpose", "StridedSlice", "Slice",
                     "SelectV2", "Select", "ConcatV2", "Pack", "Unpack", "Tile", "BroadcastTo"}


_GATHERS = ("GatherV2", "ResourceGather", "Gather")
_TABLES = ("ReadVariableOp", "Const", "Placeholder")   # what a table becomes a Const from when frozen


def _may_index_table(concrete) -> bool:
    """Whether the traced graph of ``concrete`` or any function it calls (a loop body, a nested tf.function) gathers
    from something that is a constant once frozen (a variable read, a constant, a captured tensor), the only
    gathers :func:`gather_domains` takes a domain from. Read from the graph as traced, whose weights are variable
    reads, not constants: a few hundred KB where the frozen copy holds every weight (ResNet50: ~1 GB more RSS and
    3 s; a Transformer's Tensordot gathers from a Shape: 1.7 s), for models with no table to index. When unsure,
    True."""
    try:
        graph = concrete.graph.as_graph_def()
    except Exception:  # noqa: BLE001 - then the frozen walk decides
        return True

    def scope(nodes) -> bool:
        by_name = {n.name: n for n in nodes}
        for n in nodes:
            if n.op not in _GATHERS:
                continue
            if n.op == "ResourceGather" or not n.input:
                return True
            table, seen = by_name.get(n.input[0].split(":")[0]), 0
            while table is not None and table.op == "Identity" and table.input and seen < 100:
                table, seen = by_name.get(table.input[0].split(":")[0]), seen + 1
            if table is None or table.op in _TABLES:     # a function argument or a table: may be a constant
                return True
        return False

    return scope(graph.node) or any(scope(f.node_def) for f in graph.library.function)


def gather_domains(concrete, inputs: list[Tensor]) -> list[Tensor]:
    """Inputs whose values index a table (an Embedding's GatherV2/ResourceGather on a [rows, ...] weight) get
    ``domain = (0, rows)``: integer inputs, and float inputs that hold ids (a float input cast to the index: its
    values are whole numbers the way the model reads them). Read from the frozen, inlined graph of the concrete
    function, so it works for Keras models and SavedModels alike. Inputs reached through anything but
    value-preserving ops (a Cast included) keep ``domain=None``."""
    if not any(np.dtype(s.dtype).kind in "iuf" for s in inputs) or not _may_index_table(concrete):
        return inputs
    try:
        from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2
        frozen = convert_variables_to_constants_v2(concrete)
        graph = frozen.graph.as_graph_def()
        placeholders = [t.name.split(":")[0] for t in frozen.inputs]
    except Exception:  # noqa: BLE001 - a domain is a nicety: without one, synthetic ids say so
        return inputs
    nodes = {n.name: n for n in graph.node}

    def node(ref: str):
        return nodes.get(ref.split(":")[0].lstrip("^"))

    def reached(start) -> set:
        found, stack, seen = set(), [start], set()
        while stack:
            n = stack.pop()
            if n is None or n.name in seen:
                continue
            seen.add(n.name)
            if n.op == "Placeholder":
                found.add(n.name)
            elif n.op in _VALUE_PRESERVING:
                refs = list(n.input[1:3]) if n.op in ("SelectV2", "Select") else list(n.input[:1])
                if n.op in ("ConcatV2", "Pack"):
                    refs = list(n.input[:-1]) if n.op == "ConcatV2" else list(n.input)
                stack.extend(node(r) for r in refs if not r.startswith("^"))
        return found

    rows_by_placeholder: dict = {}
    for n in graph.node:
        if n.op not in ("GatherV2", "ResourceGather", "Gather") or len(n.input) < 2:
            continue
        table = node(n.input[0])
        while table is not None and table.op == "Identity":
            table = node(table.input[0])
        if table is None or table.op != "Const" or not table.attr["value"].tensor.tensor_shape.dim:
            continue
        rows = int(table.attr["value"].tensor.tensor_shape.dim[0].size)
        for name in reached(node(n.input[1])):
            rows_by_placeholder.setdefault(name, []).append(rows)
    out = []
    for s, ph in zip(inputs, placeholders):
        rows = rows_by_placeholder.get(ph)
        if rows and np.dtype(s.dtype).kind in "iuf" and s.domain is None:
            s = Tensor(s.name, s.shape, s.dtype, domain=(0, min(rows)))
        out.append(s)
    return out


def _frozen_converter(tf, concrete):
    """``from_concrete_functions`` on a copy of ``concrete`` whose variables are constants. Variables
    read inside control flow (the WHILE of a recurrent layer) otherwise stay READ_VARIABLE ops that
    fail at invoke ("variable != nullptr")."""
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2
    frozen = convert_variables_to_constants_v2(concrete, lower_control_flow=False)
    return tf.lite.TFLiteConverter.from_concrete_functions([frozen])


def _recurrent_config(cfg: dict, **values) -> dict:
    """A recurrent layer's config with each of ``values`` set where the config has that key, in a wrapper
    (Bidirectional) on the layers it wraps too."""
    for key, value in values.items():
        if key in cfg:
            cfg[key] = value
    for key in ("layer", "backward_layer"):
        inner = cfg.get(key)
        if isinstance(inner, dict) and isinstance(inner.get("config"), dict):
            _recurrent_config(inner["config"], **values)
    return cfg


def _unroll_config(cfg: dict) -> dict:
    return _recurrent_config(cfg, unroll=True)


def _unrolled_clone(model):
    """A copy of ``model`` whose recurrent layers are unrolled over their (fixed) time axis, with
    the same weights: no loop at all, so int8 calibration (which crashes on a WHILE in TF 2.21)
    works. Raises if a layer cannot be rebuilt from its config."""
    if type(model).__module__.startswith("tf_keras"):
        import tf_keras as k
    else:
        import keras as k

    def clone(layer):
        if {c.__name__ for c in type(layer).__mro__} & RECURRENT_CLASSES:
            return layer.__class__.from_config(_unroll_config(layer.get_config()))
        return layer.__class__.from_config(layer.get_config())

    copy = k.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy


def _mixed_policy(model) -> str | None:
    """The name of the mixed dtype policy (``mixed_float16``, ``mixed_bfloat16``) some layer of ``model`` computes
    under, or None: layers that compute in another dtype than their (float32) variables."""
    for layer in [model] + list(_walk_layers(model)):
        policy = getattr(layer, "dtype_policy", None)
        compute = getattr(policy, "compute_dtype", None)
        variable = getattr(policy, "variable_dtype", None)
        if compute and variable and str(compute) != str(variable):
            return getattr(policy, "name", None) or f"mixed_{compute}"
    return None


STRING_LAYERS = {"TextVectorization", "StringLookup", "Hashing"}


def _refuse_strings(inputs: list[Tensor], model=None) -> None:
    """ConversionError for a model with string inputs: TFLite builtins have no string ops for text preprocessing
    (TextVectorization...), so it cannot go into a model for these runtimes. The hint names the layer after which
    the model takes token ids, and how to cut the model there."""
    strings = [s.name for s in inputs if s.dtype in ("object", "bytes", "str")]
    if not strings:
        return
    from ..errors import ConversionError
    names = ", ".join(repr(n) for n in strings)
    layers = [layer for layer in (getattr(model, "layers", None) or [])
              if {c.__name__ for c in type(layer).__mro__} & STRING_LAYERS]
    if layers:
        last = layers[-1]
        kind = type(last).__name__
        try:
            out = last.output
            ids = f" (token ids, {tuple(out.shape)} {getattr(out.dtype, 'name', out.dtype)})"
        except Exception:  # noqa: BLE001 - the shape is a nicety
            ids = ""
        raise ConversionError(
            f"input {names} is a string: string preprocessing ({kind} {last.name!r}) cannot go into a model for "
            "these runtimes (TFLite builtins have no string ops for it)",
            hint=f"split it off: build the model from the layer after it, ids_model = keras.Model(model.get_layer("
                 f"{last.name!r}).output, model.outputs){ids}, save and build that; run {kind} {last.name!r} in the "
                 "app (its vocabulary: get_vocabulary())")
    raise ConversionError(
        f"input {names} is a string: string preprocessing cannot go into a model for these runtimes (TFLite "
        "builtins have no string ops for it)",
        hint="split it off: export the model from the first layer after the string preprocessing (taking token ids "
             "or numbers), build that, and run the preprocessing in the app")


def _float32_clone(model):
    """A copy of ``model`` whose every layer computes in float32 (dtype policy ``float32``), with the same weights.
    A mixed-precision model carries float16 casts into its graph, which TFLite builtins cannot take; its variables
    are float32 already, so the clone is the same function without float16 rounding."""
    if type(model).__module__.startswith("tf_keras"):
        import tf_keras as k
    else:
        import keras as k

    def clone(layer):
        cfg = layer.get_config()
        cfg["dtype"] = "float32"
        return layer.__class__.from_config(cfg)

    copy = k.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy


def _recurrent_dropout(model) -> list[str]:
    """Names of the Keras 3 recurrent layers of ``model`` with ``dropout`` or ``recurrent_dropout`` above 0 ([] for
    tf_keras models, whose recurrent dropout traces without state)."""
    if type(model).__module__.startswith("tf_keras"):
        return []
    out = []
    for layer in _recurrent_layers(model):
        cfgs = [layer.get_config()]
        cfgs += [cfgs[0][k]["config"] for k in ("layer", "backward_layer")
                 if isinstance(cfgs[0].get(k), dict) and isinstance(cfgs[0][k].get("config"), dict)]
        if any(float(c.get("dropout") or 0) > 0 or float(c.get("recurrent_dropout") or 0) > 0 for c in cfgs):
            out.append(layer.name)
    return out


def _no_dropout_config(cfg: dict) -> dict:
    return _recurrent_config(cfg, dropout=0.0, recurrent_dropout=0.0)


def _no_dropout_clone(model):
    """A copy of the Keras 3 ``model`` whose recurrent layers have no dropout, with the same weights (copied layer by
    layer, leaving out the dropout's seed state). Raises if a layer cannot be rebuilt from its config."""
    import keras as k

    def clone(layer):
        cfg = layer.get_config()
        if {c.__name__ for c in type(layer).__mro__} & RECURRENT_CLASSES:
            cfg = _no_dropout_config(cfg)
        return layer.__class__.from_config(cfg)

    copy = k.models.clone_model(model, clone_function=clone)

    def weights(layer):
        return [w for w in layer.weights if "seed_generator" not in getattr(w, "path", w.name)]
    for old, new in zip(_walk_layers(model), _walk_layers(copy)):
        if getattr(old, "layers", None):         # nested models: their layers are walked themselves
            continue
        mine, theirs = weights(old), weights(new)
        if len(mine) != len(theirs):
            raise ValueError(f"layer {old.name}: {len(mine)} weights, its clone {len(theirs)}")
        for a, b in zip(theirs, mine):
            a.assign(b)
    return copy


def _convertible_signbit() -> None:
    """Keras 3's TensorFlow ``signbit`` (which ``ops.argmax``/``ops.argmin`` call to tell -0.0 from 0.0) bitcasts
    to integers and takes ``BitwiseAnd``, which TFLite builtins lack: a model with ``ops.argmax`` in its graph
    could not convert. In the contained child, it becomes ``1 / x < 0`` (DIV and LESS), which is the same
    for every number, -0.0 and the infinities included (it differs only for a NaN carrying a sign bit)."""
    try:
        from keras.src.backend.tensorflow import numpy as knp
    except ImportError:
        return
    if getattr(knp.signbit, "__edgepack__", False):
        return
    tf = import_tf()

    def signbit(x):
        x = knp.convert_to_tensor(x)
        if not x.dtype.is_floating:
            return tf.less(x, tf.zeros_like(x))
        return tf.less(tf.math.divide(tf.ones_like(x), x), tf.zeros_like(x))
    signbit.__edgepack__ = True
    knp.signbit = signbit


def _load_keras(path: Path, trust: bool = False, custom_objects: dict | None = None) -> LoadedModel:
    tf = import_tf()
    with open(path, "rb") as fh:
        legacy_h5 = fh.read(len(H5_SIGNATURE)) == H5_SIGNATURE
    fmt = "keras-h5" if legacy_h5 else "keras-v3"
    model, errors, unknown = None, [], None
    objects = dict(custom_objects or {})
    import keras
    from .custom import unknown_object
    _convertible_signbit()
    try:
        with keras.saving.custom_object_scope(objects):
            model = keras.models.load_model(path, compile=False, safe_mode=not trust, custom_objects=objects)
    except Exception as exc:  # noqa: BLE001 - the loaders' own messages are what the user needs
        errors.append(f"keras {keras.__version__}: {_first_line(exc)}")
        unknown = unknown_object(exc)
    if model is None and fmt == "keras-h5":
        try:  # legacy Keras 2 files that Keras 3 cannot read
            import tf_keras
            with tf_keras.utils.custom_object_scope(objects):
                model = tf_keras.models.load_model(path, compile=False, custom_objects=objects)
        except ImportError:
            errors.append("tf-keras not installed (pip install tf-keras) for legacy Keras 2 files")
        except Exception as exc:  # noqa: BLE001
            errors.append(f"tf-keras: {_first_line(exc)}")
            unknown = unknown or unknown_object(exc)
    if model is None and unknown:
        _refuse_unknown(path, unknown, objects)
    if model is None:
        raise UsageError(f"cannot load {path.name}: " + "; ".join(errors))
    notes = []
    mixed = _mixed_policy(model)
    if mixed:
        # Its float16 casts have no TFLite builtin: the float32 clone (same weights) is converted, and it is also
        # the reference: the bundle computes in float32 what the clone computes, while the original differs from
        # both by its own float16 rounding (~1e-3 relative), which is no conversion error.
        try:
            model = _float32_clone(model)
        except Exception as exc:  # noqa: BLE001 - without the clone the conversion fails on the casts
            raise UsageError(f"{path.name} uses the {mixed} policy and edgepack cannot rebuild it in float32: "
                             f"{_first_line(exc)}", hint="set keras.mixed_precision.set_global_policy('float32'), "
                             "rebuild the model, load the weights into it (set_weights) and save it") from None
        notes.append(f"the model uses the {mixed} policy; converted a float32 clone with the same weights, and "
                     "verified against that clone (the original's float16 arithmetic differs from it by float16 "
                     "rounding)")
    dropped = _recurrent_dropout(model)
    if dropped:
        # Keras 3 recurrent layers with dropout draw their masks from a SeedGenerator whose int64 state the traced
        # call assigns even at inference: no conversion path can take that AssignVariableOp. Dropout is the
        # identity at inference, so the clone without it computes the same function with the same weights.
        try:
            model = _no_dropout_clone(model)
            notes.append(f"recurrent dropout of {', '.join(dropped)} left out of the converted model (it is the "
                         "identity at inference; Keras 3's dropout seed state cannot be converted); same weights")
        except Exception as exc:  # noqa: BLE001 - the conversion paths then say what fails; this says why
            notes.append(f"recurrent dropout of {', '.join(dropped)} could not be left out ({_first_line(exc)}); "
                         "Keras 3's dropout seed state may stop the conversion: set dropout=0 and "
                         "recurrent_dropout=0, load the weights (set_weights) and save the model")
    inputs = [Tensor(_input_name(t, i), _shape(t.shape), _np_dtype(tf.as_dtype(t.dtype)))
              for i, t in enumerate(model.inputs)]
    _refuse_strings(inputs, model)
    names = [_output_name(t) for t in model.outputs]
    struct = getattr(model, "_outputs_struct", None)
    if isinstance(struct, dict) and len(struct) == len(model.outputs):
        names = sorted(struct)      # Keras 3 returns the dict by its own keys (flattened in key order)
    if len(names) != len(model.outputs) or len(set(names)) != len(names):
        names = [f"output_{i}" for i in range(len(model.outputs))]
    recurrent = _recurrent_layers(model)
    stateful = [layer.name for layer in recurrent if getattr(layer, "stateful", False)]
    if stateful:
        from ..errors import ConversionError
        raise ConversionError(
            f"stateful recurrent layer(s) {', '.join(stateful)} carry state from one call to the next; a converted "
            "model would silently start from the initial state at every invoke",
            hint="rebuild the layer with stateful=False and pass the state as explicit inputs/outputs "
                 "(return_state=True, initial_state=...), then build that model")
    fn = _keras_model_tf_function(tf, model, inputs, names)
    concrete = fn.get_concrete_function()
    inputs = gather_domains(concrete, inputs)
    out_specs = [Tensor(n, _shape(concrete.structured_outputs[n].shape),
                            _np_dtype(concrete.structured_outputs[n].dtype)) for n in names]
    model_batch = inputs[0].shape[0] if inputs and inputs[0].shape and inputs[0].shape[0] > 0 else None

    def reference(arrays: dict) -> dict:
        return _run_fixed_or_dynamic(lambda *xs: concrete(*[tf.constant(x) for x in xs]),
                                     [arrays[s.name] for s in inputs], model_batch)

    def from_concrete():
        return tf.lite.TFLiteConverter.from_concrete_functions([concrete], fn)

    def from_exported_saved_model():
        import tempfile
        tmp = tempfile.mkdtemp(prefix="edgepack-sm-")
        from ..contain import lifecycle
        lifecycle.register_dir(tmp)  # the converter reads it later: removed when this process ends
        module = tf.Module()
        module.model = model
        module.serve = fn
        tf.saved_model.save(module, tmp, signatures={"serving_default": concrete})
        return tf.lite.TFLiteConverter.from_saved_model(tmp, signature_keys=["serving_default"])

    # Recurrent layers with an open batch lower to TensorList ops TFLite rejects; at a fixed batch
    # (and with frozen variables) they become TFLite's builtin WHILE loop, which every runtime runs.
    frozen_batch = model_batch or (1 if recurrent else None)
    fixed = {}
    frozen_inputs = [Tensor(s.name, (frozen_batch or -1,) + tuple(s.shape[1:]), s.dtype) for s in inputs]
    frozen_fn = _keras_model_tf_function(tf, model, frozen_inputs, names) if frozen_batch != model_batch else fn
    frozen = Candidate("keras-frozen-concrete-function",
                       lambda: _frozen_converter(tf, frozen_fn.get_concrete_function()),
                       tensor_names=flattened_names(names), batch=frozen_batch)
    candidates = [Candidate("keras-concrete-function", from_concrete, tensor_names=flattened_names(names),
                            batch=model_batch),
                  Candidate("keras-via-saved-model", from_exported_saved_model, batch=model_batch)]
    if len(names) == 1 and hasattr(tf.lite.TFLiteConverter, "from_keras_model"):
        candidates.append(Candidate("keras-from-keras-model",
                                    lambda: tf.lite.TFLiteConverter.from_keras_model(model), batch=model_batch))
    candidates = [frozen] + candidates if recurrent else candidates + [frozen]
    if not recurrent:
        # One traced Keras call with one set of weights: the four paths differ in how the converter gets the graph
        # (the concrete and frozen paths give the same bytes; from_keras_model the same outputs, MobileNetV2 int8,
        # BENCHMARKS.md), never in what it computes. Recurrent models are left out: their frozen batch-1 and
        # unrolled graphs are different computations.
        for c in candidates:
            c.numbers = "keras-trace"
    if recurrent and not any(s.variable_axes for s in inputs):
        def from_unrolled():
            copy = _unrolled_clone(model)
            unrolled_fn = _keras_model_tf_function(tf, copy, inputs, names)
            return _frozen_converter(tf, unrolled_fn.get_concrete_function())
        candidates.insert(1, Candidate("keras-unrolled-recurrent", from_unrolled, tensor_names=flattened_names(names),
                                       batch=model_batch, calibration_first=True))
    if model_batch:
        fixed["batch"] = model_batch
        notes.append(f"the model's batch size is fixed at {model_batch}: the device script invokes it "
                     f"{model_batch} sample(s) at a time")
    variable = sorted({f"{s.name} axis {a}" for s in inputs for a in s.variable_axes})
    if variable:
        fixed["variable_axes"] = variable
        notes.append(f"variable-length axes ({', '.join(variable)}): the device script resizes the model to each "
                     "input's length")
    return LoadedModel(path, fmt, inputs, out_specs, reference, candidates, notes=notes, keepalive=(model, fn),
                       fixed=fixed)


def _refuse_unknown(path: Path, name: str, objects: dict) -> None:
    """A model naming a custom class or function Keras cannot find: one line saying which, and the way in
    (``--custom-objects``), instead of Keras's own text. Raises UsageError."""
    from .safety import CUSTOM_HINT
    if not objects:
        raise UsageError(f"{path.name} uses the custom object {name!r}, which is not part of Keras; refused",
                         hint=CUSTOM_HINT)
    given = ", ".join(sorted(objects)[:12]) + (", ..." if len(objects) > 12 else "")
    raise UsageError(f"{path.name} uses the custom object {name!r}, which --custom-objects does not define "
                     f"(it gave: {given})",
                     hint=f"define {name.split('>')[-1]} in that file or module, or list it in its CUSTOM_OBJECTS "
                          f"dict under the name {name!r}")


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


# Inputs per call of the original model (reference outputs): at most 256 samples and at most
# this many input bytes. A MobileNetV2-size model's activations are ~20x its 0.6 MB input per sample:
# 64 samples in one call held ~400 MiB of activations at once (issue 15); 4 MiB of input per call
# keeps a call's activations near 100 MiB and costs no measurable time.
CALL_BYTES = 4 << 20


def chunk_size(arrays: list, limit: int = 256, budget: int = CALL_BYTES) -> int:
    """Samples per call: ``limit``, fewer when one sample's inputs are large (at least 1)."""
    per_sample = sum(a[:1].nbytes for a in arrays if a.ndim) if arrays and arrays[0].ndim and arrays[0].shape[0] else 0
    return max(1, min(limit, budget // per_sample)) if per_sample else limit


def _batched(call, arrays: list, batch: int | None = None) -> dict:
    """Run ``call(*arrays)`` in chunks and concatenate the dict outputs."""
    batch = batch or chunk_size(arrays)
    n = arrays[0].shape[0]
    parts: dict = {}
    for start in range(0, max(n, 1), batch):
        out = call(*[a[start:start + batch] for a in arrays])
        for k, v in out.items():
            parts.setdefault(k, []).append(np.asarray(v))
    return {k: np.concatenate(v) for k, v in parts.items()}


# --------------------------------------------------------------------------- .tflite
TFLITE_IDENTIFIER = b"TFL3"     # the flatbuffer file identifier, bytes 4..8 of a .tflite


def _tflite_tensor(name: str, d: dict) -> Tensor:
    shape = tuple(int(v) for v in d.get("shape_signature", d["shape"]))
    return Tensor(name, shape, np.dtype(d["dtype"]).name)


def _load_tflite(path: Path, trust: bool = False, custom_objects: dict | None = None) -> LoadedModel:
    """A .tflite brought by the user: its inputs and outputs (the serving signature's names, else the tensors'),
    the bytes themselves (``model_bytes``: engine ``as-is`` bundles them unchanged). It has no reference of its own:
    ``reference`` refuses until :func:`with_reference` gives it one."""
    model = path.read_bytes()
    from ai_edge_litert.interpreter import Interpreter
    try:
        with native_quiet():
            interp = Interpreter(model_content=model)
    except Exception as exc:  # noqa: BLE001 - the runtime's reason, in one line
        raise UsageError(f"{path.name} is not a TFLite model ai-edge-litert can read: {_first_line(exc)}") from None
    sigs = interp.get_signature_list()
    if sigs:
        runner = interp.get_signature_runner("serving_default" if "serving_default" in sigs else sorted(sigs)[0])
        inputs = [_tflite_tensor(n, d) for n, d in sorted(runner.get_input_details().items())]
        outputs = [_tflite_tensor(n, d) for n, d in sorted(runner.get_output_details().items())]
    else:
        inputs = [_tflite_tensor(d["name"], d) for d in interp.get_input_details()]
        outputs = [_tflite_tensor(d["name"], d) for d in interp.get_output_details()]
    _refuse_strings(inputs)

    def no_reference(arrays: dict) -> dict:
        raise UsageError(f"{path.name} is a .tflite: it has no reference of its own",
                         hint="pass --reference MODEL (the model it was converted from) or --reference-outputs "
                              "outputs.npz (its outputs on --data)")

    return LoadedModel(path, "tflite", inputs, outputs, no_reference, model_bytes=model, reference_source="none")


def with_reference(loaded: LoadedModel, reference: LoadedModel | None = None, outputs: str | None = None,
                   data_inputs: dict | None = None) -> LoadedModel:
    """``loaded`` (a .tflite) with the reference its outputs are judged by: the outputs of the ``reference`` model
    (same input names), or the arrays of the .npz ``outputs`` (keyed by output name), which are the outputs on
    ``data_inputs`` (--data) and on nothing else. Raises UsageError for names that do not fit."""
    from dataclasses import replace
    mine_in = sorted(s.name for s in loaded.inputs)
    mine_out = sorted(s.name for s in loaded.outputs)
    if reference is not None:
        theirs = sorted(s.name for s in reference.inputs)
        if len(loaded.outputs) == len(reference.outputs) == 1 and mine_out[0] != reference.outputs[0].name:
            # One output each: it is the reference's (TFLiteConverter names a Keras model's output output_0).
            name = reference.outputs[0].name
            loaded.notes.append(f"the .tflite's output {mine_out[0]!r} is the reference model's {name!r}")
            loaded.outputs = [replace(loaded.outputs[0], name=name)]
            mine_out = [name]
        generic = [s.name for s in loaded.outputs]
        if (theirs == mine_in and len(generic) == len(reference.outputs) > 1
                and all(re.fullmatch(r"output_\d+", n) for n in generic)
                and not set(generic) & {s.name for s in reference.outputs}):
            # TFLiteConverter names a Keras model's outputs output_0, output_1, ... in the model's order: taken in
            # that order (a wrong order cannot pass: the outputs are then compared with the wrong ones)
            by_index = sorted(loaded.outputs, key=lambda t: int(t.name.split("_")[1]))
            names = [s.name for s in reference.outputs]
            loaded.notes.append("the .tflite's outputs " + ", ".join(f"{t.name} -> {n!r}" for t, n in
                                                                      zip(by_index, names))
                                + " (TFLiteConverter's names, in the reference model's output order)")
            renamed = {t.name: n for t, n in zip(by_index, names)}
            loaded.outputs = [replace(t, name=renamed[t.name]) for t in loaded.outputs]
            loaded.output_renames = renamed
            mine_out = sorted(renamed.values())
        if theirs != mine_in or not set(mine_out) <= {s.name for s in reference.outputs}:
            raise UsageError(f"the reference model's inputs/outputs ({', '.join(theirs)} / "
                             f"{', '.join(s.name for s in reference.outputs)}) are not the .tflite's "
                             f"({', '.join(mine_in)} / {', '.join(mine_out)})",
                             hint="pass the model the .tflite was converted from, or its outputs as "
                                  "--reference-outputs FILE.npz keyed by the .tflite's names "
                                  f"({', '.join(sorted(s.name for s in loaded.outputs))})")
        inner = reference.reference

        def from_model(arrays: dict) -> dict:
            got = inner(arrays)
            return {n: got[n] for n in mine_out}
        loaded.reference = from_model
        loaded.keepalive = reference
        loaded.reference_source = f"model {reference.path.name}"
        return loaded
    try:
        with np.load(outputs, allow_pickle=False) as npz:
            known = {k: np.asarray(npz[k]) for k in npz.files}
    except (OSError, ValueError) as exc:
        raise UsageError(f"--reference-outputs {outputs}: not a readable .npz ({exc})") from None
    if len(known) == len(mine_out) == 1:
        known = {mine_out[0]: next(iter(known.values()))}
    if sorted(known) != mine_out:
        raise UsageError(f"--reference-outputs has arrays {', '.join(sorted(known)) or 'none'}; the .tflite's "
                         f"outputs are {', '.join(mine_out)}", hint="one array per output, named as the output")
    count = len(next(iter(data_inputs.values()))) if data_inputs else 0
    if not data_inputs or any(len(a) != count for a in known.values()):
        raise UsageError(f"--reference-outputs holds {', '.join(f'{k}: {len(a)}' for k, a in known.items())} rows; "
                         f"--data has {count} samples", hint="the reference outputs are the outputs on --data, "
                                                             "row for row")

    def from_outputs(arrays: dict) -> dict:
        if set(arrays) != set(data_inputs) or any(
                np.shape(arrays[k]) != np.shape(v) or not np.array_equal(arrays[k], v) for k, v in data_inputs.items()):
            raise UsageError("--reference-outputs are known only for the --data inputs")
        return dict(known)
    loaded.reference = from_outputs
    loaded.reference_source = f"outputs {Path(outputs).name}"
    return loaded


# --------------------------------------------------------------------------- SavedModel
def signature_order(names) -> list[str]:
    """Signature names as edgepack lists them: ``serving_default`` first, then the others sorted."""
    return sorted(names, key=lambda n: (n != "serving_default", n))


def choose_signature(path: Path, names, wanted: str | None) -> str:
    """The signature to convert: ``wanted`` (``--signature``), else ``serving_default``, else the only one.
    UsageError listing the signatures when ``wanted`` is not one of them, or when several exist and none is
    chosen."""
    names = signature_order(names)
    listing = ", ".join(names)
    if wanted is not None:
        if wanted not in names:
            raise UsageError(f"--signature {wanted!r}: {Path(path).name} has no such signature (it has: {listing})",
                             hint=f"--signature NAME, one of: {listing}")
        return wanted
    if "serving_default" in names or len(names) == 1:
        return names[0]
    raise UsageError(f"{Path(path).name} has {len(names)} signatures and none is serving_default: {listing}",
                     hint="choose the one to bundle with --signature NAME")


def _signature_note(key: str, names) -> str:
    others = [n for n in signature_order(names) if n != key]
    return f"signature {key!r}" + (f" (others: {', '.join(others)}; --signature NAME picks one)" if others else "")


def _load_saved_model(path: Path, trust: bool = False, custom_objects: dict | None = None,
                      signature: str | None = None) -> LoadedModel:
    tf = import_tf()
    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as exc:  # noqa: BLE001 - old TF 2.x files: try the TF1 signature path
        note = f"tf.saved_model.load failed ({_first_line(exc)}); using the TF1-compatible signature path"
        model = _load_saved_model_tf1(path, signature)
        model.notes.append(note)
        return model
    signatures = dict(getattr(loaded, "signatures", {}) or {})
    if signatures:
        key = choose_signature(path, signatures, signature)
        sig = signatures[key]
        kw = sig.structured_input_signature[1]
        in_names = sorted(kw)
        inputs = [Tensor(n, _shape(kw[n].shape), _np_dtype(kw[n].dtype)) for n in in_names]
        _refuse_strings(inputs)
        inputs = gather_domains(sig, inputs)
        outs = sig.structured_outputs
        out_names = sorted(outs)
        outputs = [Tensor(n, _shape(outs[n].shape), _np_dtype(outs[n].dtype)) for n in out_names]

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
                           notes=[_signature_note(key, signatures)], keepalive=loaded, signature=key)
    if signature is not None:
        raise UsageError(f"--signature {signature!r}: {path.name} has no signatures",
                         hint="drop --signature: edgepack converts its traced function")
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
    inputs = [Tensor(s.name or f"input_{i}", _shape(s.shape), _np_dtype(s.dtype)) for i, s in enumerate(specs)]
    _refuse_strings(inputs)
    inputs = gather_domains(concrete, inputs)
    structured = concrete.structured_outputs
    if isinstance(structured, dict):
        out_names = sorted(structured)
        out_specs = [structured[n] for n in out_names]
    else:
        seq = structured if isinstance(structured, (list, tuple)) else [structured]
        out_names = [f"output_{i}" for i in range(len(seq))]
        out_specs = list(seq)
    outputs = [Tensor(n, _shape(s.shape), _np_dtype(s.dtype)) for n, s in zip(out_names, out_specs)]

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
def _read_signature_def(path: Path, key: str | None, strict: bool = False):
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
            if strict:
                chosen = choose_signature(path, sigs, key)
            else:
                chosen = key if key in sigs else signature_order(sigs)[0]
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


def _load_saved_model_tf1(path: Path, signature: str | None = None) -> LoadedModel:
    tf = import_tf()
    key, sig = _read_signature_def(path, signature, strict=True)
    from tensorflow.python.framework import tensor_shape

    def spec(name, info):
        shape = tensor_shape.TensorShape(info.tensor_shape)
        return Tensor(name, _shape(shape), _np_dtype(tf.as_dtype(info.dtype)))

    in_names, out_names = sorted(sig.inputs), sorted(sig.outputs)
    inputs = [spec(n, sig.inputs[n]) for n in in_names]
    _refuse_strings(inputs)
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
                       notes=[_signature_note(key, _signature_keys(path)) + " (TF1 path)"], keepalive=session,
                       signature=key)


def _signature_keys(path: Path) -> list[str]:
    from tensorflow.core.protobuf import saved_model_pb2
    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((path / "saved_model.pb").read_bytes())
    return sorted({k for meta in proto.meta_graphs for k in meta.signature_def if not k.startswith("__")})
