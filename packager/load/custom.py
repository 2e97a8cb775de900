"""``--custom-objects FILE.py|MODULE``: the classes and functions a model's custom layers need, given the
way Keras takes them (``custom_objects=``), and only together with ``--trust-model``: it is code.

Two halves, on both sides of the sandbox:

* :func:`resolve` runs in the edgepack process and runs **no** code of the user's: it checks that the file
  exists (or finds the module's top-level package on ``sys.path`` without importing it) and returns a plain
  tuple, :data:`Resolved`, that goes to the contained child as a job argument. The paths in it are what the
  Landlock sandbox lets the child read besides the Python installation (:func:`packager.contain.isolate.paths_in`):
  the file alone (not its directory), or the module's top-level package directory (or single ``.py``).
* :func:`load` runs in the contained child, before the model is deserialized: it imports the file or module
  and returns ``{name: object}`` for Keras's ``custom_objects`` (and ``tf_keras``'s for legacy H5 files).

Which objects: when the file or module defines a dict ``CUSTOM_OBJECTS``, exactly its entries (it wins:
nothing else is collected, so a file can also hand over objects it imports, such as
``tensorflow_model_optimization``'s quantization wrappers). Otherwise every class defined in it (not imported;
for a package, defined in one of its own submodules and re-exported by it, as ``keras-tcn``'s ``tcn`` re-exports
``tcn.tcn.TCN``) that subclasses a Keras (or tf_keras) Layer, Model, Loss, Metric, Initializer, Regularizer, Constraint,
Optimizer or learning-rate schedule, and every public function defined in it (activations, losses), each under
its own name and under its registered name (``package>Name``) when it has one.
"""
from __future__ import annotations

import importlib.machinery
import os
import re
import sys
from pathlib import Path

from ..errors import UsageError

#: What :func:`resolve` returns and the child's :func:`load` takes: ``("file", "/abs/layers.py")`` or
#: ``("module", "mypkg.layers", "/abs/of/mypkg", ...)`` (the readable locations of its top-level package).
Resolved = tuple

NEEDS_TRUST_HINT = "add --trust-model (only for a model and a file you trust), or drop --custom-objects"
_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def resolve(spec: str | os.PathLike | None, trust_model: bool) -> Resolved | None:
    """The ``--custom-objects`` value ``spec`` (a ``.py`` file, or a dotted module name importable from
    ``sys.path``/``PYTHONPATH``) as plain data for the contained child; None when ``spec`` is None or empty.
    Imports nothing and runs nothing. Raises UsageError (exit 2) when ``trust_model`` is False (the file is
    code, run when the model loads), for a missing or non-``.py`` file and for a module not found."""
    if spec is None or not str(spec).strip():
        return None
    text = str(spec).strip()
    if not trust_model:
        raise needs_trust(text)
    path = Path(text).expanduser()
    if text.endswith(".py") or os.sep in text or path.exists():
        if not path.is_file():
            raise UsageError(f"--custom-objects: {text} is not a file" if path.exists() else
                             f"--custom-objects: {text} not found",
                             hint="pass a .py file defining the custom layers, or a module name (mypkg.layers)")
        if path.suffix != ".py":
            raise UsageError(f"--custom-objects: {text} is not a .py file",
                             hint="pass the Python source that defines the custom layers")
        return ("file", os.path.abspath(path))
    if not _MODULE_NAME.match(text):
        raise UsageError(f"--custom-objects: {text!r} is neither a .py file nor a module name",
                         hint="e.g. --custom-objects layers.py, or --custom-objects mypkg.layers with mypkg on "
                              "PYTHONPATH")
    top = text.split(".")[0]
    found = importlib.machinery.PathFinder.find_spec(top, sys.path)   # finds, never imports
    if found is None:
        if top in sys.builtin_module_names:
            return ("module", text)
        raise UsageError(f"--custom-objects: no module {top!r} on the Python path",
                         hint="add its parent directory to PYTHONPATH, or pass the .py file")
    places = list(found.submodule_search_locations or []) or ([found.origin] if found.origin else [])
    return ("module", text) + tuple(os.path.abspath(p) for p in places)


def needs_trust(text: str) -> UsageError:
    """The error (exit 2) for ``--custom-objects TEXT`` without ``--trust-model``."""
    return UsageError(f"--custom-objects {text} needs --trust-model: it runs that Python code (and the model's "
                      "custom layers) while the model loads", hint=NEEDS_TRUST_HINT)


def describe(resolved: Resolved | None) -> str:
    """``resolved`` as the user wrote it, for messages: the file's name or the module name ('' for None)."""
    if not resolved:
        return ""
    return Path(resolved[1]).name if resolved[0] == "file" else resolved[1]


def fingerprint(resolved: Resolved | None):
    """What of ``resolved`` changes a conversion, for the cache key: the sha256 of the file, or of every
    file of the module's top-level package (None when nothing was given)."""
    if not resolved:
        return None
    import hashlib
    h = hashlib.sha256(repr(resolved[:2]).encode())
    for place in resolved[1:2] if resolved[0] == "file" else resolved[2:]:
        files = [Path(place)] if os.path.isfile(place) else sorted(Path(place).rglob("*.py"))
        for f in files:
            try:
                h.update(str(f).encode() + b"\0" + f.read_bytes())
            except OSError:
                h.update(str(f).encode() + b"\0?")
    return h.hexdigest()


def load(resolved: Resolved | None) -> dict:
    """In the contained child: import the file or module of ``resolved`` and return ``{name: object}`` to
    give Keras as ``custom_objects`` (see the module docstring for which objects; ``{}`` for None).
    Raises UsageError when the code fails to import, when ``CUSTOM_OBJECTS`` is not a dict of names, or
    when it defines nothing Keras could use."""
    if not resolved:
        return {}
    what = describe(resolved)
    try:
        module = _import(resolved)
    except UsageError:
        raise
    except BaseException as exc:  # noqa: BLE001 - the user's code: any failure is theirs, said in one line
        if isinstance(exc, KeyboardInterrupt):
            raise
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        hint = ("it is imported alone, inside the sandbox where there is one: it can import installed "
                "packages and (as a module) its own package, not files beside it")
        missing = getattr(exc, "name", None) if isinstance(exc, ImportError) else None
        if missing and resolved[0] == "file":
            top = missing.split(".")[0]
            hint = (f"the file imports {missing!r}, which the sandbox does not let it read unless it is installed: "
                    f"pass the package instead (--custom-objects {top}, with its parent directory on PYTHONPATH), "
                    f"or pip install it")
        raise UsageError(f"--custom-objects {what} failed to import: {type(exc).__name__}: {first}",
                         hint=hint) from None
    explicit = getattr(module, "CUSTOM_OBJECTS", None)
    if explicit is not None:
        if not isinstance(explicit, dict) or not all(isinstance(k, str) for k in explicit):
            raise UsageError(f"--custom-objects {what}: CUSTOM_OBJECTS must be a dict of name -> class or function")
        return dict(explicit)
    objects: dict = {}
    bases = _keras_bases()
    own = module.__name__
    for name, obj in vars(module).items():
        where = getattr(obj, "__module__", None) or ""
        # defined here, or (a package) in one of its own submodules and re-exported: `tcn` gives tcn.tcn.TCN
        mine = where == own or (hasattr(module, "__path__") and where.startswith(own + "."))
        if not mine or name.startswith("_"):
            continue
        if isinstance(obj, type) and issubclass(obj, bases) or (callable(obj) and _is_function(obj)):
            for key in _names(obj):
                objects.setdefault(key, obj)
    if not objects:
        raise UsageError(f"--custom-objects {what} defines no Keras layer, model, loss, metric, initializer, "
                         "regularizer, constraint or function",
                         hint="define the custom classes there, or list them in CUSTOM_OBJECTS = {'Name': Class}")
    return objects


def _import(resolved: Resolved):
    import importlib
    import importlib.util
    if resolved[0] == "module":
        return importlib.import_module(resolved[1])
    path = Path(resolved[1])
    name = path.stem if path.stem.isidentifier() and path.stem not in sys.modules else "_edgepack_custom_objects"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise UsageError(f"--custom-objects {path.name} cannot be imported as Python")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module       # classes pickled or looked up by module name find it
    spec.loader.exec_module(module)
    return module


def _is_function(obj) -> bool:
    import inspect
    return inspect.isfunction(obj)


def _keras_bases() -> tuple:
    """Keras 3's base classes of custom objects, and tf_keras's when the user's code imported it."""
    found = []
    for name in ("keras", "tf_keras"):
        k = sys.modules.get(name)
        if k is None:
            continue
        for path in ("layers.Layer", "Model", "losses.Loss", "metrics.Metric", "initializers.Initializer",
                     "regularizers.Regularizer", "constraints.Constraint", "optimizers.Optimizer",
                     "optimizers.schedules.LearningRateSchedule"):
            obj = k
            for part in path.split("."):
                obj = getattr(obj, part, None)
            if isinstance(obj, type):
                found.append(obj)
    return tuple(found)


def _names(obj) -> list[str]:
    """``obj``'s name and the names Keras and tf_keras registered it under (``package>Name``)."""
    names = [obj.__name__]
    for name in ("keras", "tf_keras"):
        k = sys.modules.get(name)
        getter = (getattr(getattr(k, "saving", None), "get_registered_name", None)
                  or getattr(getattr(k, "utils", None), "get_registered_name", None)) if k is not None else None
        if getter is not None:
            try:
                names.append(str(getter(obj)))
            except Exception:  # noqa: BLE001, S110 - a name is a nicety
                pass
    return list(dict.fromkeys(names))


_UNKNOWN = re.compile(r"(?:Unknown (?:layer|object|activation|loss|metric|initializer|regularizer|constraint|"
                      r"optimizer)[a-z ]*|Could not locate (?:class|function)|Could not interpret [a-z ]+)"
                      r"[:]? ?'([^']+)'")


def unknown_object(exc: BaseException) -> str | None:
    """The name of the custom class or function a Keras loading error could not find ("Unknown layer: 'X'",
    "Could not locate class 'X'"), looking through the exception's causes; None when it is about something
    else."""
    seen = 0
    while exc is not None and seen < 20:
        text = str(exc)
        match = _UNKNOWN.search(text)
        if match:
            return match.group(1)
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None
