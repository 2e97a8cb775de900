"""The model formats edgepack reads, one :class:`Format` each: how a file is recognised (by content,
not by suffix), how it is scanned for code that would run when it is loaded, and how it is loaded.

:func:`load_model` is the only way to a loaded model: it sniffs, scans, then loads, so a format
cannot skip its scan (``scan`` is a required field). Adding a format is one entry in
:data:`FORMATS`: its sniff, its scan (:mod:`packager.load.safety`) and its loader
(:mod:`packager.load.model`).
"""
from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import UsageError
from . import custom
from . import model as _model
from . import safety
from .model import H5_SIGNATURE, LoadedModel


@dataclass(frozen=True)
class Format:
    """One input format. ``sniff(path, head)`` says whether ``path`` is one (``head``: its first
    8 bytes, ``b""`` for a directory); ``scan(path, trust)`` raises UsageError for content that runs
    code when loaded (``trust`` lets the user accept it); ``load(path, trust, custom_objects, signature)`` returns a
    :class:`~packager.load.model.LoadedModel` (``custom_objects``: ``{name: class or function}`` from
    ``--custom-objects``, :func:`packager.load.custom.load`; a SavedModel's ``signature``: the one to convert).
    ``directory``: the format is a directory."""
    name: str
    describe: str
    directory: bool
    sniff: Callable[[Path, bytes], bool]
    scan: Callable[[Path, bool], None]
    load: Callable[[Path, bool, dict], LoadedModel]


def _is_saved_model(path: Path, head: bytes) -> bool:
    return (path / "saved_model.pb").is_file() or (path / "saved_model.pbtxt").is_file()


FORMATS: tuple[Format, ...] = (
    Format("keras-h5", ".h5/.hdf5 (model.save)", False, lambda p, head: head == H5_SIGNATURE,
           safety.scan_h5, _model._load_keras),
    Format("keras-v3", ".keras", False, lambda p, head: head.startswith(b"PK") and zipfile.is_zipfile(p),
           safety.scan_keras_v3, _model._load_keras),
    Format("saved-model", "a SavedModel directory", True, _is_saved_model,
           safety.scan_saved_model, _model._load_saved_model),
    Format("tflite", ".tflite (bundled as it is: --quantize as-is)", False,
           lambda p, head: head[4:8] == _model.TFLITE_IDENTIFIER, safety.scan_tflite, _model._load_tflite),
)


def get_format(name: str) -> Format:
    """The :class:`Format` called ``name`` (``keras-h5``, ``keras-v3``, ``saved-model``, ``tflite``); KeyError otherwise."""
    for fmt in FORMATS:
        if fmt.name == name:
            return fmt
    raise KeyError(name)


def sniff_format(path: Path) -> str:
    """The name of the format of ``path``, decided by content. Raises UsageError for a missing,
    unreadable, empty or unknown file, or a directory that is no SavedModel."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"model not found: {path}")
    if path.is_dir():
        for fmt in FORMATS:
            if fmt.directory and fmt.sniff(path, b""):
                return fmt.name
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
    for fmt in FORMATS:
        if not fmt.directory and fmt.sniff(path, head):
            return fmt.name
    raise UsageError(f"{path} is not a Keras H5, .keras, SavedModel or .tflite file",
                     hint="supported: " + ", ".join(f.describe for f in FORMATS))


def check_model(path: Path, fmt: str, trust: bool) -> None:
    """Run the safety scan of format ``fmt`` on ``path``. Raises UsageError for refused content."""
    get_format(fmt).scan(Path(path), trust)


def load_model(path: str | os.PathLike, trust: bool = False, signature: str | None = None,
               custom_objects: custom.Resolved | None = None) -> LoadedModel:
    """Load the model at ``path``: format sniffed by content, then its safety scan (``trust`` skips
    the scan's refusals), then its loader, with TensorFlow's native log lines silenced. ``signature``: the
    SavedModel signature to convert (``--signature``; default ``serving_default``, else the only one).
    ``custom_objects`` (:func:`packager.load.custom.resolve`'s plain tuple; only with ``trust``) is imported first
    and its classes and functions given to Keras. Raises UsageError for missing, unreadable or refused models (or a
    signature for a Keras file) and custom objects that fail to import, ConversionError/EnvironmentProblem from the
    loaders."""
    path = Path(path)
    fmt = get_format(sniff_format(path))
    if signature is not None and fmt.name != "saved-model":
        raise UsageError(f"--signature {signature!r}: {path.name} is a {fmt.name} file ({fmt.describe}), which has no "
                         "signatures", hint="drop --signature; it chooses among a SavedModel's signatures")
    if custom_objects and not trust:
        raise custom.needs_trust(custom.describe(custom_objects))    # custom objects are code
    fmt.scan(path, trust)
    _model.import_tf()
    with _model.native_quiet():
        objects = custom.load(custom_objects)
        loaded = fmt.load(path, trust, objects, signature) if signature is not None else fmt.load(path, trust, objects)
    inner = loaded.reference

    def quiet_reference(arrays: dict) -> dict:
        with _model.native_quiet():
            return inner(arrays)

    loaded.reference = quiet_reference
    return loaded
