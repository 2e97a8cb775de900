"""Look at a model file before any framework code runs on it.

Models are programs. Keras files can carry Python (a ``Lambda`` layer's marshalled bytecode,
a ``TFSMLayer`` that loads another SavedModel, classes from arbitrary modules); SavedModels can
carry file-system and Python-callback ops. These are refused by name unless the user opts in with
``--trust-model``. Archives are checked for path traversal and decompression bombs first.
"""
from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

from ..errors import UsageError
from .op_allowlist import op_layer_problem, saved_model_problem

TRUST_HINT = "only if you trust where this model comes from, pass --trust-model"
CUSTOM_HINT = ("only if you trust where this model comes from, pass the Python file (or module) that defines it: "
               "--custom-objects FILE.py --trust-model")
UNSAFE_LAYERS = {"Lambda", "TFSMLayer"}
SAFE_MODULE_PREFIXES = ("keras", "tf_keras")
MAX_MEMBERS = 10_000
MAX_UNCOMPRESSED = 8 << 30          # 8 GiB
MAX_RATIO = 200                     # uncompressed / compressed, per member (bombs are ~1000x)
MAX_CONFIG_BYTES = 64 << 20
MAX_GRAPH_BYTES = 2 << 30


def scan_keras_v3(path: Path, trust: bool) -> None:
    """A ``.keras`` zip: bounded archive (members, sizes, ratio), then its ``config.json`` judged by
    :func:`_unsafe_in_config`. Raises UsageError naming what would run code (``trust`` skips that)."""
    _refuse_unsafe_config(path, _keras_zip_config(path), trust)


def scan_h5(path: Path, trust: bool) -> None:
    """An HDF5 model: its ``model_config`` attribute, read with h5py before any framework code,
    judged by :func:`_unsafe_in_config`. Raises UsageError as :func:`scan_keras_v3`."""
    _refuse_unsafe_config(path, _h5_config(path), trust)


def scan_saved_model(path: Path, trust: bool) -> None:
    """A SavedModel directory: regular files only, every graph op (``.pb``/``.pbtxt``, every library
    function) on the allowlist of computing ops (:mod:`packager.load.op_allowlist`). Raises UsageError."""
    _check_saved_model(path, trust)


def scan_tflite(path: Path, trust: bool) -> None:
    """A .tflite: a flatbuffer of tensors and ops that runs no code of its own when loaded (custom and Flex ops
    need kernels no runtime edgepack verifies in has: the ``as-is`` engine refuses them by name). Only a file
    larger than a flatbuffer can address (2 GiB) is refused here."""
    if path.stat().st_size >= 2**31:
        raise UsageError(f"{path.name} is larger than 2 GiB, more than a .tflite flatbuffer can hold")


class _CustomClass(str):
    """A finding that is a custom class or function (its module outside Keras, or a registered custom
    object): its way in is ``--custom-objects``, not ``--trust-model`` alone."""


def _refuse_unsafe_config(path: Path, config, trust: bool) -> None:
    if not trust:
        problem = _unsafe_in_config(config)
        if problem:
            raise UsageError(f"{path.name} contains {problem}, which runs code when loaded; refused",
                             hint=CUSTOM_HINT if isinstance(problem, _CustomClass) else TRUST_HINT)


def _keras_zip_config(path: Path):
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            if len(infos) > MAX_MEMBERS:
                raise UsageError(f"{path.name} holds {len(infos)} archive members (cap {MAX_MEMBERS})")
            names, total = set(), 0
            for info in infos:
                name = info.filename
                parts = name.replace("\\", "/").split("/")
                if name.startswith(("/", "\\")) or ".." in parts or ":" in parts[0]:
                    raise UsageError(f"{path.name} has an archive member with an unsafe path: {name!r}")
                if name in names:
                    raise UsageError(f"{path.name} has a duplicate archive member: {name!r}")
                names.add(name)
                total += info.file_size
                if info.compress_size and info.file_size / info.compress_size > MAX_RATIO and info.file_size > 1 << 20:
                    raise UsageError(f"{path.name}: member {name!r} would expand {info.file_size // info.compress_size}x "
                                     "(a decompression bomb?)")
            if total > MAX_UNCOMPRESSED:
                raise UsageError(f"{path.name} would expand to {total >> 20} MiB (cap {MAX_UNCOMPRESSED >> 20} MiB)")
            if "config.json" not in names:
                raise UsageError(f"{path.name} is a zip but not a .keras model (no config.json)")
            info = zf.getinfo("config.json")
            if info.file_size > MAX_CONFIG_BYTES:
                raise UsageError(f"{path.name}: config.json is {info.file_size >> 20} MiB")
            raw = zf.read("config.json")
    except zipfile.BadZipFile as exc:
        raise UsageError(f"{path.name} is not a readable .keras archive: {exc}") from None
    except OSError as exc:
        raise UsageError(f"cannot read {path.name}: {exc}") from None
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise UsageError(f"{path.name}: config.json is not valid JSON") from None


def _h5_config(path: Path):
    try:
        import h5py
    except ImportError:  # keras depends on h5py: without it the file cannot be checked, nor loaded
        raise UsageError(f"cannot check {path.name}: h5py is not installed", hint="pip install h5py") from None
    try:
        with h5py.File(path, "r") as h5:
            raw = h5.attrs.get("model_config")
    except Exception as exc:  # noqa: BLE001 - h5py raises many kinds for broken files
        raise UsageError(f"{path.name} is not a readable HDF5 model: {str(exc).splitlines()[0][:200]}") from None
    if raw is None:
        raise UsageError(f"{path.name} holds no model_config (weights only?)",
                         hint="save the whole model with model.save('x.h5'), not save_weights")
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    try:
        return json.loads(raw)
    except ValueError:
        raise UsageError(f"{path.name}: model_config is not valid JSON") from None


def _unsafe_in_config(node, depth: int = 0) -> str | None:
    if depth > 200:
        return "a configuration nested deeper than 200 levels"
    if isinstance(node, dict):
        cls = node.get("class_name")
        name = (node.get("config") or {}).get("name") if isinstance(node.get("config"), dict) else None
        label = f"layer {name!r} ({cls})" if name else f"a {cls}"
        if cls == "function" and isinstance(node.get("config"), str):      # a function, by its name
            label = f"function {node['config']!r}"
        if cls in UNSAFE_LAYERS:
            return label
        op_problem = op_layer_problem(node)
        if op_problem:
            return op_problem
        module = node.get("module")
        if isinstance(module, str) and module and not module.startswith(SAFE_MODULE_PREFIXES):
            return _CustomClass(f"{label} from module {module!r} (outside Keras)")
        registered = node.get("registered_name")
        if isinstance(registered, str) and ">" in registered:
            return _CustomClass(f"{label}, a custom object {registered!r}")
        if node.get("function_type") == "lambda" or "__lambda__" in node or "__python_function__" in node:
            return f"{label} with serialized Python code"
        for value in node.values():
            found = _unsafe_in_config(value, depth + 1)
            if found:
                return found
    elif isinstance(node, list):
        for value in node:
            found = _unsafe_in_config(value, depth + 1)
            if found:
                return found
    return None


def _only_regular_files(root: Path) -> None:
    """A SavedModel directory holds directories and regular files: a FIFO or device in it would
    block TensorFlow's reads (symlinks are followed: to a regular file or directory they are fine)."""
    import stat
    count = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            count += 1
            if count > MAX_MEMBERS:
                raise UsageError(f"{root.name} holds more than {MAX_MEMBERS} files")
            p = Path(dirpath) / name
            try:
                mode = p.stat().st_mode
            except OSError as exc:
                raise UsageError(f"{root.name}: cannot read {p.relative_to(root)}: {exc.strerror or exc}") from None
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise UsageError(f"{root.name}: {p.relative_to(root)} is a FIFO, device or socket, not a regular file; "
                                 "refused")


def _check_saved_model(path: Path, trust: bool) -> None:
    """Parse saved_model.pb (or .pbtxt) and refuse, unless trusted, any graph or library function
    holding an op outside the allowlist of computing ops (:mod:`packager.load.op_allowlist`)."""
    _only_regular_files(path)
    pb, text = path / "saved_model.pb", False
    if not pb.is_file():
        pb, text = path / "saved_model.pbtxt", True
    if not pb.is_file():
        raise UsageError(f"{path} holds no saved_model.pb or saved_model.pbtxt")
    if pb.stat().st_size > MAX_GRAPH_BYTES:
        raise UsageError(f"{pb} is larger than {MAX_GRAPH_BYTES >> 30} GiB")
    try:
        from tensorflow.core.protobuf import saved_model_pb2
    except ImportError:
        if trust:
            return
        raise UsageError(f"cannot check the ops of {path.name}: TensorFlow's protobuf definitions are not importable",
                         hint="pip install tensorflow-cpu, or " + TRUST_HINT) from None
    proto = saved_model_pb2.SavedModel()
    try:
        data = pb.read_bytes()
        if text:
            from google.protobuf import text_format
            text_format.Parse(data.decode("utf-8"), proto, allow_unknown_extension=False)
        else:
            proto.ParseFromString(data)
    except OSError as exc:
        raise UsageError(f"cannot read {pb}: {exc.strerror or exc}") from None
    except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError/ParseError and friends
        raise UsageError(f"{pb} is corrupt: {str(exc).splitlines()[0][:200] if str(exc) else 'cannot parse'}") from None
    if not proto.meta_graphs:
        raise UsageError(f"{pb} holds no graph")
    if trust:
        return
    problem = saved_model_problem(proto)
    if problem:
        raise UsageError(f"{path.name} uses {problem}, which may touch files, the network or run Python; refused",
                         hint=TRUST_HINT)
