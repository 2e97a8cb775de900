"""Conversion engines: what turns a loaded model and a recipe into ``.tflite`` bytes, one :class:`Engine` each.

A recipe of ``recipes.toml`` names its engine (``engine = "..."``, default ``tflite-converter``); every engine
returns a :class:`~packager.convert.converter.Conversion` whose model was run and compared with the original
model's outputs (a clean conversion proves nothing). Adding an engine is one entry in :data:`ENGINES` plus its
test; a recipe naming no registered engine is refused with the choices.

- ``tflite-converter``: ``tf.lite.TFLiteConverter`` over the model's conversion paths
  (:func:`packager.convert.converter.convert`), configured by the recipe's converter settings;
- ``ai-edge-quantizer``: the float32 conversion, then ai-edge-quantizer's recipe ``quantizer_recipe`` (int4
  weights and other schemes TFLiteConverter lacks);
- ``as-is``: a ``.tflite`` brought by the user (input format ``tflite``): its bytes are the model, checked against
  the reference the user gave (``--reference MODEL`` or ``--reference-outputs``).
"""
from __future__ import annotations

import contextlib
from io import StringIO
from dataclasses import dataclass, replace
from typing import Callable

from ..lazynp import np

from ..errors import ConversionError, EnvironmentProblem, UsageError, VerificationError
from ..load.model import LoadedModel, native_quiet
from ..recipes import RECIPES_FILE, Recipe, get_recipe
from . import converter
from .converter import Attempt, Conversion, check_model, named_spec, one_line
from .inspect import inspect_bytes


@dataclass(frozen=True)
class Engine:
    """One conversion engine: its ``name`` (what a recipe's ``engine`` says), what it does (``describe``), the
    input ``formats`` it converts (None: every format TensorFlow loads, i.e. all but ``tflite``), the recipe fields
    it reads (``settings``), ``convert`` with :func:`packager.convert.converter.convert`'s signature, and
    ``version()``: the tool and version it converts with, for the manifest (raises EnvironmentProblem if missing)."""
    name: str
    describe: str
    formats: tuple | None
    settings: tuple
    convert: Callable[..., Conversion]
    version: Callable[[], str]

    def accepts(self, fmt: str) -> bool:
        """Whether this engine converts a model of input format ``fmt``."""
        return fmt in self.formats if self.formats is not None else fmt != "tflite"


def _order(loaded: LoadedModel) -> dict:
    return {"inputs": [s.name for s in loaded.inputs], "outputs": [s.name for s in loaded.outputs]}


def _ids(loaded: LoadedModel) -> tuple:
    return tuple(s.name for s in loaded.inputs if np.dtype(s.dtype).kind in "iu" or s.domain is not None)


def _tf_version() -> str:
    import tensorflow as tf
    return f"tf.lite.TFLiteConverter (TensorFlow {tf.__version__})"


# --------------------------------------------------------------------------- ai-edge-quantizer
def _quantizer():
    try:
        from ai_edge_quantizer import quantizer, recipe
    except ImportError as exc:
        raise EnvironmentProblem(f"the ai-edge-quantizer engine needs the ai-edge-quantizer package ({exc})",
                                 hint="pip install 'ai-edge-quantizer>=0.10,<0.11' (edgepack's own install has it)") \
            from None
    return quantizer, recipe


def _quantizer_version() -> str:
    from importlib.metadata import version
    _quantizer()
    return f"ai-edge-quantizer {version('ai-edge-quantizer')} over {_tf_version()}"


def quantizer_recipe(recipe: Recipe):
    """The ai-edge-quantizer recipe (its list of rules) that ``recipe.quantizer_recipe`` names, a function of
    ``ai_edge_quantizer.recipe`` such as ``dynamic_wi4_afp32``. UsageError naming the choices otherwise."""
    _, recipes = _quantizer()
    name = recipe.quantizer_recipe
    make = getattr(recipes, name, None) if name and not name.startswith("_") else None
    if not callable(make) or getattr(make, "__module__", "") != recipes.__name__:
        choices = sorted(n for n, v in vars(recipes).items() if callable(v) and not n.startswith("_")
                         and getattr(v, "__module__", "") == recipes.__name__)
        raise UsageError(f"{RECIPES_FILE} [{recipe.name}]: quantizer_recipe {name!r} is not a recipe of "
                         "ai-edge-quantizer", hint="choose from: " + ", ".join(choices))
    return make()


def _ai_edge_quantizer(loaded: LoadedModel, recipe: Recipe, io: str, calibration: dict | None,
                       check_inputs: dict, tolerance=None, skip: tuple = (), reference: dict | None = None,
                       labels=None, noise: dict | None = None, keep_best: bool = False) -> Conversion:
    """The float32 conversion (checked at float32's tolerance), then ai-edge-quantizer's recipe on its bytes,
    checked at ``recipe``'s."""
    from ..contain.isolate import stage
    recipe.check_request(io, calibration is not None)
    quantizer, _ = _quantizer()
    rules = quantizer_recipe(recipe)
    if reference is None:
        reference = loaded.reference(check_inputs)
    names = [s.name for s in loaded.outputs]
    base_tol = get_recipe("float32").tolerance
    per = tolerance if isinstance(tolerance, dict) else {n: tolerance or recipe.tolerance for n in names}
    float_tol = {n: replace(base_tol, kind=t.kind, kind_options=t.kind_options, kind_source=t.kind_source)
                 for n, t in per.items()}
    base = converter.convert(loaded, get_recipe("float32"), "float", None, check_inputs, tolerance=float_tol,
                             skip=skip, reference=reference, labels=labels, noise=noise)
    path = f"{base.path}+ai-edge-quantizer:{recipe.quantizer_recipe}"
    stage(f"quantizing with ai-edge-quantizer ({recipe.quantizer_recipe})", path)
    cand = next((c for c in loaded.candidates if c.name == base.path), None)
    order = _order(loaded)
    try:
        with native_quiet(), contextlib.redirect_stdout(StringIO()):     # it prints its size ratio
            qt = quantizer.Quantizer(base.tflite)
            qt.load_quantization_recipe(rules)
            model = bytes(qt.quantize().quantized_model)
        spec = named_spec(inspect_bytes(model, cand.tensor_names if cand else None, order), order)
    except Exception as exc:  # noqa: BLE001 - the quantizer's own error, in one line
        raise ConversionError(f"ai-edge-quantizer ({recipe.quantizer_recipe}) failed on the float32 model of path "
                              f"{base.path}: {one_line(exc)}",
                              hint="try --quantize dynamic or float16 (TFLiteConverter)") from None
    attempt, tol = check_model(path, model, spec, order, check_inputs, reference, per, labels, noise)
    attempt.outputs = None
    attempts = base.attempts + [attempt]
    if attempt.ok or (keep_best and attempt.metrics):
        return Conversion(model, spec, path, attempts, attempt.metrics, tol)
    raise converter.no_match([attempt], recipe, None, check_inputs, None, _ids(loaded))


# --------------------------------------------------------------------------- as-is
def _as_is(loaded: LoadedModel, recipe: Recipe, io: str, calibration: dict | None,
           check_inputs: dict, tolerance=None, skip: tuple = (), reference: dict | None = None,
           labels=None, noise: dict | None = None, keep_best: bool = False) -> Conversion:
    """The user's .tflite, unchanged: its ops checked (no custom or Flex ops: no runtime edgepack verifies in runs
    them), then it is run and compared with the user's reference (skipped only when there is none: --no-verify)."""
    recipe.check_request(io, calibration is not None)
    model = loaded.model_bytes
    if model is None:
        raise UsageError(f"recipe {recipe.name!r} bundles a .tflite as it is; {loaded.path.name} is a "
                         f"{loaded.format} model", hint="choose a recipe that converts, e.g. --quantize float16")
    order = _order(loaded)
    spec = inspect_bytes(model, None, order)
    if loaded.output_renames:     # the converter's output_N names, mapped to the reference's when the model loaded
        spec = replace(spec, outputs=[replace(t, name=loaded.output_renames.get(t.name, t.name)) for t in spec.outputs])
    spec = named_spec(spec, order)
    custom = sorted({op.name for op in spec.ops if op.custom})
    if custom:
        flex = [c for c in custom if c.startswith("Flex")]
        raise ConversionError(f"{loaded.path.name} uses custom ops {', '.join(custom)}"
                              + (" (Flex ops are TensorFlow ops: SELECT_TF_OPS)" if flex else "")
                              + ": no device runtime edgepack verifies in can run them",
                              hint="convert it with TFLite builtins only (no SELECT_TF_OPS, no custom ops), or "
                                   "bring the Keras/SavedModel model and let edgepack convert it")
    if loaded.reference_source == "none":
        return Conversion(model, spec, "as-is", [Attempt("as-is", True, "not checked: no reference (--no-verify)")],
                          [], {})
    if reference is None:
        reference = loaded.reference(check_inputs)
    per = tolerance or recipe.tolerance
    attempt, tol = check_model("as-is", model, spec, order, check_inputs, reference, per, labels, noise)
    attempt.outputs = None
    if attempt.ok or (keep_best and attempt.metrics):
        return Conversion(model, spec, "as-is", [attempt], attempt.metrics, tol)
    if not attempt.metrics:
        raise ConversionError(f"{loaded.path.name} does not run in ai-edge-litert: {attempt.error}",
                              hint="check the .tflite with `edgepack inspect`")
    numbers = "; ".join(f"{m.name}: " + ", ".join(m.reasons) for m in attempt.metrics if m.reasons)
    error = VerificationError(f"{loaded.path.name} does not compute what its reference ({loaded.reference_source}) "
                              f"computes ({numbers})"[:1200],
                              hint="check that the reference is the model the .tflite was converted from and "
                                   "--data its inputs; --atol/--max-flips widen the budget if the difference is "
                                   "acceptable")
    error.best = attempt
    raise error


def _as_is_version() -> str:
    return "as-is (the .tflite brought by the user)"


#: Every engine by name; a recipe's ``engine`` names one.
ENGINES: dict[str, Engine] = {e.name: e for e in (
    Engine("tflite-converter", "tf.lite.TFLiteConverter over the model's conversion paths", None,
           ("optimizations", "supported_types", "supported_ops", "io_types", "converter_flags"), converter.convert,
           _tf_version),
    Engine("ai-edge-quantizer", "the float32 conversion quantized by ai-edge-quantizer (int4 weights...)", None,
           ("quantizer_recipe",), _ai_edge_quantizer, _quantizer_version),
    Engine("as-is", "a .tflite brought by the user, bundled unchanged", ("tflite",), (), _as_is, _as_is_version),
)}


def get_engine(recipe: Recipe) -> Engine:
    """The engine ``recipe`` names; UsageError naming recipes.toml, the recipe and the engines otherwise."""
    engine = ENGINES.get(recipe.engine)
    if engine is None:
        raise UsageError(f"{RECIPES_FILE} [{recipe.name}]: unknown engine {recipe.engine!r}",
                         hint="engines: " + ", ".join(ENGINES))
    return engine


def check_recipe_for(recipe: Recipe, fmt: str, model_name: str) -> Engine:
    """The engine of ``recipe`` if it converts input format ``fmt``; UsageError with the recipes that do
    otherwise (a .tflite input takes only ``as-is``; every other input any recipe but ``as-is``)."""
    engine = get_engine(recipe)
    if not engine.accepts(fmt):
        from ..recipes import list_recipes
        fits = [r.name for r in list_recipes().values() if r.engine in ENGINES and ENGINES[r.engine].accepts(fmt)]
        what = "a .tflite (bundled as it is)" if fmt == "tflite" else f"a {fmt} model"
        raise UsageError(f"--quantize {recipe.name} (engine {engine.name}) cannot take {model_name}: it is {what}",
                         hint="choose --quantize " + " or ".join(fits) +
                              (" and give --reference MODEL or --reference-outputs to verify it against"
                               if fmt == "tflite" else ""))
    return engine


def convert(loaded: LoadedModel, recipe: Recipe, io: str, calibration: dict | None, check_inputs: dict,
            **kwargs) -> Conversion:
    """Convert ``loaded`` with the engine ``recipe`` names (keyword arguments as
    :func:`packager.convert.converter.convert`)."""
    engine = check_recipe_for(recipe, loaded.format, loaded.path.name)
    return engine.convert(loaded, recipe, io, calibration, check_inputs, **kwargs)
