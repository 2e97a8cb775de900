"""Quantization recipes, read from ``recipes.toml`` into frozen dataclasses."""
from __future__ import annotations

from dataclasses import dataclass, asdict, fields, replace
from functools import lru_cache
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

from .errors import UsageError
from .contain.wire import plain_data

RECIPES_FILE = Path(__file__).with_name("recipes.toml")
#: The engine of a recipe that names none (:mod:`packager.convert.engines`).
DEFAULT_ENGINE = "tflite-converter"


@plain_data
@dataclass(frozen=True)
class Tolerance:
    """What an output must meet, by the criteria of its kind (:mod:`packager.criteria`):

    - decisions (class, threshold, pixel class, id): at most ``flips`` (a fraction) change, reference ties within
      float noise excepted; with labels, accuracy drops at most ``max_drop`` points;
    - scores of a decision output: 99th-percentile error ``<= atol + rtol * max|ref| + steps * step`` (``step``: the
      output's quantization step);
    - values, column by column: 99th-percentile error ``<= spread * the column's spread`` (+ 4x measured float
      noise) and R² against the model ``>= r2_min``;
    - embeddings: the lowest 1% of row cosines ``>= cosine_min``; at most ``neighbours`` (a fraction) of rows get
      another nearest neighbour.

    ``kind``: the output's kind ("" = infer it), ``kind_options``: ``threshold=0.3``, ``sets`` (top-k ids), and
    ``kind_source``: why it has that kind. Errors are in the output's own units."""
    atol: float
    rtol: float
    steps: float
    cosine_min: float
    flips: float = 0.01
    max_drop: float = 1.0
    spread: float = 0.1
    r2_min: float = 0.98
    neighbours: float = 0.05
    kind: str = ""
    kind_options: str = ""
    kind_source: str = ""

    @classmethod
    def from_record(cls, recorded: dict, base: "Tolerance") -> "Tolerance":
        """A tolerance recorded in a manifest, on top of ``base`` (the recipe's): a bundle built before a field
        existed gets the recipe's value for it; fields no longer used (``top1_min``) are ignored."""
        known = {f for f in cls.__dataclass_fields__}
        return replace(base, **{k: v for k, v in recorded.items() if k in known})


def parse_overrides(values: list[str] | None, flag: str) -> dict:
    """``["0.1", "logits:0.5"]`` -> ``{None: 0.1, "logits": 0.5}`` (None = every output).
    Raises UsageError on a malformed or negative value."""
    out: dict = {}
    for raw in values or []:
        name, _, value = raw.rpartition(":") if ":" in raw else ("", "", raw)
        try:
            number = float(value)
        except ValueError:
            number = -1.0
        if not number >= 0 or number == float("inf"):
            raise UsageError(f"{flag} {raw!r} is not a non-negative number or NAME:NUMBER",
                             hint=f"e.g. {flag} 1.0 (accuracy points, every output with decisions)"
                             if flag == "--max-drop" else
                             f"e.g. {flag} 0.05 (every output) or {flag} logits:0.05 (one output)")
        out[name or None] = number
    return out


#: Verdict overrides by key of ``overrides`` (see :func:`resolve_tolerance`): the flag and the Tolerance field.
OVERRIDES = {"atol": ("--atol", "atol"), "rtol": ("--rtol", "rtol"), "max_drop": ("--max-drop", "max_drop"),
             "flips": ("--max-flips", "flips")}


def parse_kinds(values: list[str] | None) -> dict:
    """``["probs:class-scores", "tags:probabilities:threshold=0.3"]`` -> {output: (kind, options)}. Raises
    UsageError naming the kinds for an unknown one."""
    from .criteria import KINDS
    out = {}
    for raw in values or []:
        name, _, rest = raw.partition(":")
        kind, _, options = rest.partition(":")
        if not name or kind not in KINDS:
            raise UsageError(f"--output-kind {raw!r}: {'unknown kind ' + repr(kind) if name else 'no output named'}",
                             hint="NAME:KIND[:OPTIONS], KIND one of " + ", ".join(KINDS) +
                                  " (e.g. --output-kind logits:class-scores, --output-kind tags:probabilities:threshold=0.3)")
        if options:
            key, _, value = options.partition("=")
            try:
                ok = key == "sets" and not value or key == "threshold" and value and float(value) == float(value)
            except ValueError:
                ok = False
            if not ok:
                raise UsageError(f"--output-kind {raw!r}: unknown option {options!r}",
                                 hint="options: threshold=VALUE (probabilities), sets (top-k ids compared as sets)")
        out[name] = (kind, options)
    return out


def resolve_tolerance(base, outputs: list[str], atol: list[str] | None = None,
                      rtol: list[str] | None = None, overrides: dict | None = None) -> dict:
    """{output name: Tolerance}: ``base`` (one Tolerance, e.g. the recipe's, or {output: Tolerance},
    e.g. what a bundle was built with), with overrides applied: ``atol``/``rtol`` and the lists of
    ``overrides`` keyed as :data:`OVERRIDES` (``["0.05"]`` for every output, ``["NAME:0.05"]`` for one; a named
    override beats a global one), and ``overrides["kinds"]`` (``--output-kind NAME:KIND[:OPTIONS]``). Raises
    UsageError for a name the model has no output of."""
    lists = dict(overrides or {})
    if atol:
        lists["atol"] = atol
    if rtol:
        lists["rtol"] = rtol
    parsed = {key: parse_overrides(lists.get(key), flag) for key, (flag, _) in OVERRIDES.items()}
    kinds = parse_kinds(lists.get("kinds"))
    unknown = sorted({k for p in parsed.values() for k in p if k is not None} | set(kinds))
    unknown = [k for k in unknown if k not in outputs]
    if unknown:
        raise UsageError(f"no output named {', '.join(unknown)} (the model's outputs: {', '.join(outputs)})",
                         hint="name an output as NAME:VALUE (or NAME:KIND), or give a plain number for every output")
    per = base if isinstance(base, dict) else {n: base for n in outputs}
    out = {}
    for n in outputs:
        changes = {field: parsed[key].get(n, parsed[key].get(None, getattr(per[n], field)))
                   for key, (_, field) in OVERRIDES.items()}
        if n in kinds:
            changes.update(kind=kinds[n][0], kind_options=kinds[n][1], kind_source="--output-kind")
        out[n] = replace(per[n], **changes)
    return out


@dataclass(frozen=True)
class Recipe:
    """A quantization recipe from ``recipes.toml``: the conversion ``engine`` that makes its .tflite
    (:data:`packager.convert.engines.ENGINES`; default ``tflite-converter``), that engine's settings (for
    ``tflite-converter``: ``optimizations``, ``supported_types``, ``supported_ops``, ``converter_flags`` (attributes
    of :data:`CONVERTER_FLAGS`); for ``ai-edge-quantizer``: ``quantizer_recipe``) and the tolerance bundles are
    verified against."""
    name: str
    description: str
    optimizations: tuple[str, ...]
    supported_types: tuple[str, ...]
    supported_ops: tuple[str, ...]
    needs_calibration: bool
    tolerance: Tolerance
    io_types: tuple[str, ...] = ("float",)
    engine: str = DEFAULT_ENGINE
    quantizer_recipe: str = ""
    converter_flags: tuple[tuple[str, bool], ...] = ()     # (TFLiteConverter attribute, value), sorted

    @property
    def quantizes(self) -> bool:
        """Whether the recipe asks for any quantization (optimizations, a quantizer recipe, calibration): False for
        ``float32``, ``as-is`` (a model bundled as it is) and any recipe like them."""
        return self.engine != "as-is" and bool(self.optimizations or self.quantizer_recipe or self.needs_calibration)

    def check_request(self, io: str, has_calibration: bool) -> None:
        """Refuse (never downgrade) an I/O type the recipe lacks or missing calibration data."""
        if self.needs_calibration and not has_calibration:
            raise UsageError(f"recipe {self.name!r} needs calibration data",
                             hint="pass --calibration samples.npz (100-500 representative inputs) or a folder of "
                                  "images, or choose --quantize dynamic/float16, which need none")
        if io not in self.io_types:
            raise UsageError(f"recipe {self.name!r} does not support --io {io}",
                             hint="choose from: " + ", ".join(self.io_types))

    def to_json(self, io: str = "float") -> dict:
        """The recipe's fields (tolerance as a dict) plus ``io``, the input/output type it is built with."""
        data = asdict(self)
        data["io"] = io
        return data


_RECIPE_FIELDS = {"description": str, "optimizations": list, "supported_types": list, "supported_ops": list,
                  "needs_calibration": bool, "tolerance": dict, "io_types": list, "engine": str,
                  "quantizer_recipe": str, "converter_flags": dict}
#: Fields a recipe may leave out: the engine (default :data:`DEFAULT_ENGINE`), the settings of the engines it does
#: not use, and its I/O types (default float).
_OPTIONAL = {"io_types": ["float"], "engine": DEFAULT_ENGINE, "quantizer_recipe": "", "optimizations": [],
             "supported_types": [], "supported_ops": ["TFLITE_BUILTINS"], "converter_flags": {}}
#: TFLiteConverter attributes a ``tflite-converter`` recipe may set in ``converter_flags`` (true/false each): the
#: documented switches that change what the converter writes, nothing that lets custom ops or TF ops in.
CONVERTER_FLAGS = ("_experimental_disable_per_channel", "experimental_new_quantizer",
                   "_experimental_disable_batchmatmul_unfold", "experimental_enable_resource_variables",
                   "_experimental_lower_tensor_list_ops", "exclude_conversion_metadata")
_TOLERANCE_FIELDS = ("atol", "rtol", "steps", "cosine_min", "flips", "max_drop", "spread", "r2_min", "neighbours")
#: The converter settings a recipe may name (tf.lite.Optimize, tf.lite.OpsSet, supported types that
#: convert/converter.py maps); a typo is refused when recipes are read, not deep inside a conversion.
CHOICES = {
    "optimizations": ("DEFAULT", "OPTIMIZE_FOR_SIZE", "OPTIMIZE_FOR_LATENCY", "EXPERIMENTAL_SPARSITY"),
    "supported_types": ("float16", "int8"),
    "supported_ops": ("TFLITE_BUILTINS", "TFLITE_BUILTINS_INT8", "SELECT_TF_OPS",
                      "EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8"),
    "io_types": ("float", "int8", "uint8", "int16"),
}


@lru_cache(maxsize=1)
def list_recipes() -> dict[str, Recipe]:
    """Every recipe of ``recipes.toml`` by name. Raises UsageError naming the recipe and field of a
    malformed entry (a missing or mistyped field, an unknown one, a tolerance without its five numbers)."""
    try:
        data = tomllib.loads(RECIPES_FILE.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"{RECIPES_FILE}: {exc}") from None
    return {name: _recipe(name, r) for name, r in data.items()}


def _recipe(name: str, r) -> Recipe:
    def bad(msg: str) -> UsageError:
        return UsageError(f"{RECIPES_FILE} [{name}]: {msg}",
                          hint="copy a whole table such as [float16]; fields: " + ", ".join(_RECIPE_FIELDS))
    if not isinstance(r, dict):
        raise bad("is not a table")
    unknown = sorted(set(r) - set(_RECIPE_FIELDS))
    if unknown:
        raise bad(f"unknown field {', '.join(unknown)}")
    for key, kind in _RECIPE_FIELDS.items():
        if key not in r and key not in _OPTIONAL:
            raise bad(f"missing {key}")
        if key in r and not isinstance(r[key], kind):
            raise bad(f"{key} must be a {kind.__name__}")
    for key, allowed in CHOICES.items():
        wrong = [v for v in r.get(key, []) if v not in allowed]
        if wrong:
            raise bad(f"{key} {', '.join(map(repr, wrong))} is not one of {', '.join(allowed)}")
    tol = r["tolerance"]
    # the nine limits every recipe states; a numeric Tolerance field added later (a new criterion's limit) has a
    # default and may be left out, so adding one does not mean editing every recipe
    later = {f.name for f in fields(Tolerance) if f.type in ("float", float) and f.name not in _TOLERANCE_FIELDS}
    if not set(_TOLERANCE_FIELDS) <= set(tol) or set(tol) - set(_TOLERANCE_FIELDS) - later or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in tol.values()):
        raise bad("tolerance needs the non-negative numbers " + ", ".join(_TOLERANCE_FIELDS)
                  + (f" (and may set {', '.join(sorted(later))})" if later else ""))
    r = {**_OPTIONAL, **r}
    if not r["engine"]:
        raise bad("engine is empty")
    flags = r["converter_flags"]
    wrong = [k for k, v in flags.items() if k not in CONVERTER_FLAGS or not isinstance(v, bool)]
    if wrong:
        raise bad(f"converter_flags {', '.join(map(repr, wrong))}: each must be one of {', '.join(CONVERTER_FLAGS)} "
                  "set to true or false")
    return Recipe(name=name, description=r["description"], optimizations=tuple(r["optimizations"]),
                  supported_types=tuple(r["supported_types"]), supported_ops=tuple(r["supported_ops"]),
                  needs_calibration=r["needs_calibration"], tolerance=Tolerance(**tol),
                  io_types=tuple(r["io_types"]), engine=r["engine"], quantizer_recipe=r["quantizer_recipe"],
                  converter_flags=tuple(sorted(flags.items())))


def get_recipe(name: str) -> Recipe:
    """The recipe ``name``; UsageError listing the choices when there is none."""
    recipes = list_recipes()
    if name not in recipes:
        raise UsageError(f"unknown recipe {name!r}", hint="choose from: " + ", ".join(recipes))
    return recipes[name]
