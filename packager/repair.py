"""`--quantize auto`: the smallest model that meets an accuracy budget in every runtime of the target.

Candidates, converted in the contained child (:func:`search`): ``int8``; ``int8`` with the ops
where it diverges kept in float (the first diverging op and its consumers, then every diverging op
and its consumers; TensorFlow's ``QuantizationDebugger`` with ``denylisted_nodes``, so the result
is plain builtins that tflite-runtime 2.14 loads); ``int16x8``; ``int4w`` (int4 weights through
ai-edge-quantizer, float activations); ``dynamic``; ``float16``; ``float32``. In the parent,
candidates are measured from the smallest up, each in every runtime environment of the target
(outputs only, run as the device runs them), against the budget:

* ``max_drop``: accuracy drop in percentage points (needs labels ``y`` in ``--data``);
* ``min_agreement``: top-1 agreement with the original model (0..1);
* ``min_cosine``: cosine similarity with the original model's outputs.

The first candidate that meets it in every runtime is bundled (verified again by ``build``, held to
a tolerance derived from what was measured). Deterministic: same model, data and versions give
the same candidates in the same order.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from .errors import EdgepackError, UsageError, VerificationError
from .contain.wire import plain_data

ORDER = ("int8", "int8-mixed", "int16x8", "int4w", "dynamic", "float16", "float32")
DEFAULT_AGREEMENT = 0.99


@plain_data
@dataclass
class Candidate:
    """One model tried: ``label`` ("int8 + 2 ops float"), its base ``recipe``, the ops kept in
    float (their layer names), size in bytes, per-runtime measurements, verdict and reason."""
    label: str
    recipe: str
    float_ops: list = field(default_factory=list)
    size: int = 0
    error: str | None = None
    runtimes: list = field(default_factory=list)   # [{runtime, status, agreement, accuracy, drop, cosine, error}]
    passed: bool | None = None                     # None: not measured (a smaller one passed first)
    reason: str = ""
    model: bytes | None = field(default=None, repr=False)
    conversion: object = field(default=None, repr=False)

    def to_json(self) -> dict:
        """The candidate's fields as JSON, without the model bytes and the conversion."""
        data = asdict(self)
        data.pop("model")
        data.pop("conversion")
        return data


@dataclass
class Budget:
    """What ``--quantize auto`` must meet in every runtime (None: not required): ``max_drop``, accuracy drop in
    percentage points (needs labels); ``min_agreement``, top-1 agreement with the original model (0 to 1);
    ``min_cosine``, cosine similarity with the original model's outputs."""
    max_drop: float | None = None        # percentage points of accuracy
    min_agreement: float | None = None
    min_cosine: float | None = None

    def describe(self) -> str:
        """The budget in words (``top-1 agreement >= 0.99``); empty when nothing is required."""
        parts = []
        if self.max_drop is not None:
            parts.append(f"accuracy drop <= {self.max_drop:g} points")
        if self.min_agreement is not None:
            parts.append(f"top-1 agreement >= {self.min_agreement:g}")
        if self.min_cosine is not None:
            parts.append(f"cosine >= {self.min_cosine:g}")
        return ", ".join(parts)


# --------------------------------------------------------------------------- child: candidates
def search(model: str, calibration: str | None, data: str | None, trust: bool, io: str = "float",
           signature: str | None = None, custom: tuple | None = None):
    """Child job: (float32 Prepared with the check data and reference outputs, [Candidate]).
    Candidates that cannot be converted carry their ``error``. ``signature``: the SavedModel signature; ``custom``:
    the resolved ``--custom-objects`` (:func:`packager.load.custom.resolve`)."""
    from .convert import jobs
    from .load.calibration import load_dataset
    from .contain.isolate import stage
    from .load.formats import load_model
    from .load.model import import_tf
    from .recipes import get_recipe

    base = jobs.prepare(model, "float32", "float", calibration, data, trust, signature=signature, custom=custom)
    loaded = load_model(model, trust=trust, signature=signature, custom_objects=custom)
    cal = load_dataset(calibration, loaded.inputs) if calibration is not None else None
    check = base.check.inputs
    tf = import_tf()
    out: list[Candidate] = []
    for name in ORDER[:-1]:
        if name == "int8-mixed":
            int8 = next((c for c in out if c.recipe == "int8" and c.conversion is not None), None)
            if int8 is not None and io == "float":
                out += _mixed(tf, loaded, int8, cal, check)
            continue
        recipe = get_recipe(name)
        if recipe.needs_calibration and cal is None:
            out.append(Candidate(name, name, error="needs --calibration"))
            continue
        if io not in recipe.io_types:
            out.append(Candidate(name, name, error=f"--io {io} not supported"))
            continue
        stage(f"auto: converting {name}")
        try:
            if recipe.engine == "tflite-converter":
                conv = _convert_any(tf, loaded, recipe, io, cal.inputs if cal else None, check)
            else:       # another engine (int4w: ai-edge-quantizer) converts as it does for build; the budget judges
                from .convert.engines import convert
                conv = convert(loaded, recipe, io, cal.inputs if cal else None, check, reference=base.reference,
                               labels=base.check.labels, noise=base.noise, keep_best=True)
        except EdgepackError as exc:
            out.append(Candidate(name, name, error=exc.message[:300]))
            continue
        out.append(Candidate(name, name, size=len(conv.tflite), model=conv.tflite, conversion=conv))
    out.append(Candidate("float32", "float32", size=len(base.conversion.tflite), model=base.conversion.tflite,
                         conversion=base.conversion))
    return base, out


def _convert_any(tf, loaded, recipe, io: str, calibration: dict | None, check: dict):
    """The first conversion path whose model runs (whatever it computes: the budget judges that)."""
    from .convert.converter import Attempt, Conversion, configure, model_batch, named_spec, one_line, run_tflite
    from .errors import ConversionError
    from .convert.inspect import inspect_bytes
    from .load.model import native_quiet
    order = {"inputs": [s.name for s in loaded.inputs], "outputs": [s.name for s in loaded.outputs]}
    candidates = loaded.candidates
    if recipe.needs_calibration:
        candidates = sorted(candidates, key=lambda c: not c.calibration_first)
    errors = []
    for cand in candidates:
        try:
            with native_quiet():
                converter = configure(tf, cand.make(), recipe, io, calibration, loaded, cand.batch or model_batch(loaded))
                model = bytes(converter.convert())
            spec = named_spec(inspect_bytes(model, cand.tensor_names, order), order)
            if not set(order["outputs"]) <= {t.name for t in spec.outputs}:
                raise ConversionError("converted model lost output names")
            run_tflite(model, spec, {k: v[:4] for k, v in check.items()})
        except Exception as exc:  # noqa: BLE001 - the next path is tried
            errors.append(f"{cand.name}: {exc.message if isinstance(exc, EdgepackError) else one_line(exc)}")
            continue
        return Conversion(model, spec, cand.name, [Attempt(cand.name, True)], [])
    raise ConversionError("no conversion path produced a model that runs: " + " | ".join(errors))


def _mixed(tf, loaded, int8: Candidate, cal, check: dict) -> list[Candidate]:
    """int8 with the diverging ops (and the ops reading their outputs) kept in float."""
    from .convert.converter import configure, model_batch, named_spec, run_tflite
    from .convert.localise import compare_quantized, local_dump
    from .convert.inspect import inspect_bytes
    from .contain.isolate import stage
    from .load.model import native_quiet
    from .recipes import get_recipe
    conv = int8.conversion
    cand = next((c for c in loaded.candidates if c.name == conv.path), None)
    if cand is None:
        return []
    batch = cand.batch or model_batch(loaded)
    stage("auto: locating the ops int8 breaks")
    try:
        with native_quiet():
            flt_model = bytes(configure(tf, cand.make(), get_recipe("float32"), "float", None, loaded, batch).convert())
        sample = {k: v[:64] for k, v in check.items()}
        quant, flt = local_dump(conv.tflite, sample), local_dump(flt_model, sample)
        rows = compare_quantized(quant, flt, conv.tflite)
    except Exception as exc:  # noqa: BLE001 - no mixed candidate, said so
        return [Candidate("int8 + ops float", "int8", error=f"cannot locate the diverging ops: {exc}"[:300])]
    diverged = [r for r in rows if r.diverged and r.op != "QUANTIZE"]
    if not diverged:
        return []
    groups = [diverged[:1]] + ([diverged] if len(diverged) > 1 else [])
    out = []
    order = {"inputs": [s.name for s in loaded.inputs], "outputs": [s.name for s in loaded.outputs]}
    for group in groups:
        names = _with_consumers(flt, [r.float_tensor for r in group])
        label = f"int8 + {len(names)} op(s) float"
        stage(f"auto: converting {label}")
        try:
            with native_quiet():
                converter = configure(tf, cand.make(), get_recipe("int8"), "float", cal.inputs, loaded, batch)
                debugger = tf.lite.experimental.QuantizationDebugger(
                    converter=converter, debug_dataset=converter.representative_dataset,
                    debug_options=tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=names))
                model = bytes(debugger.get_nondebug_quantized_model())
            spec = named_spec(inspect_bytes(model, cand.tensor_names, order), order)
            run_tflite(model, spec, {k: v[:4] for k, v in check.items()})
        except Exception as exc:  # noqa: BLE001 - recorded, the next candidate is tried
            out.append(Candidate(label, "int8", float_ops=[_short(n) for n in names], error=str(exc).splitlines()[0][:300]
                                 if str(exc) else type(exc).__name__))
            continue
        mixed = replace(conv, tflite=model, spec=spec, path=conv.path)
        out.append(Candidate(label, "int8", float_ops=[_short(n) for n in names], size=len(model), model=model,
                             conversion=mixed))
    return out


def _short(name: str) -> str:
    """``sequential/outlier/MatMul;sequential/outlier/Relu`` -> ``outlier/MatMul``."""
    parts = name.split(";")[0].split("/")
    return "/".join(parts[1:]) if len(parts) > 1 else parts[0]


def _with_consumers(flt, tensor_names: list[str]) -> list[str]:
    """The ops writing ``tensor_names`` plus the ops that read them (so the tensor is never
    re-quantized with the scale that broke it), as float-model op output names."""
    index = {flt.tensor(t)["name"]: t for op in flt.ops for t in op["outputs"]}
    wanted = {index[n] for n in tensor_names if n in index}
    names = list(dict.fromkeys(tensor_names))
    for op in flt.ops:
        if set(op["inputs"]) & wanted and op["op"] not in ("QUANTIZE", "DEQUANTIZE"):
            for t in op["outputs"]:
                n = flt.tensor(t)["name"]
                if n not in names:
                    names.append(n)
    return names


# --------------------------------------------------------------------------- parent: measure
def measure(model: bytes, env, inputs: dict, reference: dict, labels, tolerance: dict, spec=None,
            noise: dict | None = None) -> dict:
    """One runtime's verdict on ``model`` by the same criteria as `verify` (:mod:`packager.criteria`, held to
    ``tolerance``: {output: Tolerance}): ``status`` "ran" or "error", ``failures`` (one line per failing
    criterion), and for the table: decisions kept (``agreement``), accuracy of model and bundle, ``drop``
    (points), worst ``cosine``. Outputs are named by ``spec`` (the candidate's :class:`ModelSpec`)."""
    from .compare import compare_all
    from .convert.localise import dump_tensors
    try:
        dump = dump_tensors(env, model, inputs, outputs_only=True)
    except UsageError as exc:
        return {"runtime": env.describe(), "status": "error", "error": exc.message}
    by_index = {t.index: t.name for t in spec.outputs} if spec is not None else {}
    named = dump.meta.get("output_names") or {}
    outs = {}
    for o in dump.meta["outputs"]:
        name = by_index.get(o["index"]) or named.get(str(o["index"])) or o["name"]
        outs[name] = dump.real(o["index"])
    if len(outs) == 1 and len(reference) == 1:
        outs = {next(iter(reference)): next(iter(outs.values()))}
    steps = {t.name: t.scale for t in spec.outputs if t.quantized} if spec is not None else {}
    metrics = compare_all(reference, outs, tolerance, steps, labels, noise)
    result = {"runtime": env.describe(), "status": "ran", "agreement": None, "accuracy": None,
              "accuracy_reference": None, "drop": None, "cosine": min((m.cosine for m in metrics), default=None),
              "failures": [f"output {m.name!r}: {r}" for m in metrics for r in m.reasons],
              "kinds": {m.name: m.kind for m in metrics}}
    agreements = [m.top1_agreement for m in metrics if m.top1_agreement is not None]
    result["agreement"] = min(agreements) if agreements else None
    scored = next((m for m in metrics if m.accuracy_reference is not None), None)
    if scored is not None:
        result.update(accuracy_reference=scored.accuracy_reference, accuracy=scored.accuracy_candidate,
                      drop=100.0 * (scored.accuracy_reference - scored.accuracy_candidate))
    return result


def budget_tolerance(base_tolerance: dict, recipe, budget: "Budget") -> dict:
    """{output: Tolerance} a candidate of ``recipe`` is held to: the recipe's criteria for each output's kind
    (settled on the float32 model, ``base_tolerance``), with the budget's own limits in place of the recipe's
    (``max_drop``; ``min_agreement`` as the fraction of decisions that may change; ``min_cosine`` for embeddings)."""
    out = {}
    for name, base in base_tolerance.items():
        tol = replace(recipe.tolerance, kind=base.kind, kind_options=base.kind_options, kind_source=base.kind_source)
        if budget.max_drop is not None:
            tol = replace(tol, max_drop=budget.max_drop)
        if budget.min_agreement is not None:
            tol = replace(tol, flips=max(0.0, 1.0 - budget.min_agreement))
        if budget.min_cosine is not None:
            tol = replace(tol, cosine_min=budget.min_cosine)
        out[name] = tol
    return out


def meets(m: dict, budget: Budget) -> str | None:
    """None when measurement ``m`` meets ``budget`` (every criterion of every output it can judge), else why not."""
    if m["status"] != "ran":
        return f"{m['runtime']}: cannot run it ({m.get('error')})"
    if budget.max_drop is not None and m.get("drop") is None:
        return (f"{m['runtime']}: no accuracy to measure (--max-drop needs labels y in --data fitting an output "
                f"with decisions; kinds: {', '.join(f'{k} {v}' for k, v in m.get('kinds', {}).items())})")
    if m.get("failures"):
        return f"{m['runtime']}: " + "; ".join(m["failures"])
    if budget.min_cosine is not None and (m["cosine"] is None or m["cosine"] < budget.min_cosine):
        return f"{m['runtime']}: cosine {_f(m['cosine'])} < {budget.min_cosine:g}"
    return None


def _f(v) -> str:
    return "n/a" if v is None else f"{v:.4f}"


@dataclass
class AutoResult:
    """What ``build_auto`` returns: the ``build`` of the chosen candidate (:class:`packager.api.BuildResult`), the
    ``chosen`` Candidate, every candidate tried, the ``budget`` and ``why`` that one was chosen."""
    build: object                 # api.BuildResult of the chosen candidate
    chosen: Candidate
    candidates: list
    budget: Budget
    why: str

    def to_json(self) -> dict:
        """JSON of the choice: chosen label, why, the budget (with its text), the candidates by size (unconverted
        last), and the build's own JSON."""
        return {"chosen": self.chosen.label, "why": self.why,
                "budget": {**asdict(self.budget), "text": self.budget.describe()},
                "candidates": [c.to_json() for c in sorted(self.candidates, key=lambda c: (not c.size, c.size))],
                **(self.build.to_json() if self.build is not None else {})}


def build_auto(model, *, target: str = "rpi", calibration=None, data=None, io: str = "float",
               max_drop: float | None = None, min_agreement: float | None = None, min_cosine: float | None = None,
               output=None, runtimes: list[str] | None = None, arch: str | None = None, name: str | None = None,
               labels=None, trust_model: bool = False, progress=None, strict: bool = False,
               use_cache: bool = True, signature: str | None = None, custom_objects=None) -> AutoResult:
    """Build the smallest candidate (see module docstring) that meets the budget in every runtime
    of ``target`` (or ``runtimes``) on ``data`` (else the calibration set, else synthetic inputs).
    No budget given: top-1 agreement >= 0.99. Raises UsageError (``max_drop`` without labels, bad
    values), VerificationError (no candidate meets the budget; the message lists every one tried),
    and what :func:`packager.api.build` raises. ``signature``: the SavedModel signature, as in ``build``;
    ``custom_objects``: as :func:`packager.api.build`'s."""
    from . import api
    from .contain import isolate
    from .verification.emulator import get_env
    from .load.formats import sniff_format
    from .recipes import get_recipe, list_recipes
    from .targets import get_target
    progress = progress or (lambda _m: None)
    sniff_format(Path(model))
    budget = Budget(max_drop, min_agreement, min_cosine)
    custom = api.resolve_custom(custom_objects, trust_model)
    for v, flag in ((min_agreement, "--min-agreement"), (min_cosine, "--min-cosine")):
        if v is not None and not 0.0 <= v <= 1.0:
            raise UsageError(f"{flag} {v:g} is outside [0, 1]", hint=f"e.g. {flag} 0.99")
    if max_drop is not None and max_drop < 0:
        raise UsageError(f"--max-drop {max_drop:g} is negative", hint="percentage points, e.g. --max-drop 0.5")
    if budget == Budget():
        budget.min_agreement = DEFAULT_AGREEMENT
    for p, what in ((calibration, "calibration"), (data, "verification")):
        if p is not None and not Path(p).exists():
            raise UsageError(f"{what} data not found: {p}")
    if budget.max_drop is not None and not _has_labels(data):
        raise UsageError("--max-drop needs labels: an .npz with y for --data",
                         hint="add y (integer class per sample) to --data, or use --min-agreement")
    profile = get_target(target)
    selected = [profile.runtime(r) for r in runtimes] if runtimes else list(profile.runtimes)
    from .verification import cache
    use_cache = use_cache and cache.enabled()
    key = None
    if use_cache:
        key = cache.conversion_key(Path(model), "auto", io, calibration, data, trust_model,
                                   [asdict(budget), profile.name, [list(rt.requirements) for rt in selected], arch,
                                    [r.to_json(io) for r in list_recipes().values()], list(ORDER)]
                                   + ([signature] if signature else [])
                                   + ([api._with_custom({}, custom)] if custom else []))
        hit = _load_auto(key, Path(model))
        if hit is not None:
            prepared, rec, chosen, candidates, why = hit
            prepared = replace(prepared, warnings=[w for w in prepared.warnings if w != why])  # cached by older ones
            progress("unchanged model, data and budget: reusing the cached --quantize auto choice")
            result = api.build(model, target=target, recipe=rec.name, calibration=calibration, io=io, output=output,
                               data=data, runtimes=runtimes, arch=arch, name=name, labels=labels,
                               trust_model=trust_model, use_cache=True, progress=progress, strict=strict,
                               signature=signature, custom_objects=custom_objects, _auto=(prepared, rec))
            return AutoResult(result, chosen, candidates, budget, why)
    api._unconfined(trust_model)        # --trust-model without a sandbox is refused before anything loads
    progress("auto: converting the candidates")
    base, candidates = isolate.run(search, str(model), str(calibration) if calibration else None,
                                   str(data) if data else None, trust_model, io, signature, custom,
                                   what="converting the auto candidates", progress=progress)
    ys = base.check.labels
    if budget.max_drop is not None and ys is None:
        raise UsageError("--max-drop needs labels: an .npz with y for --data",
                         hint="add y (integer class per sample) to --data, or use --min-agreement")
    envs = [get_env(rt, arch, profile.python, progress=lambda m, *_: progress(m)) for rt in selected]
    inputs, reference = base.check.inputs, base.reference
    chosen = None
    for cand in sorted(candidates, key=lambda c: (c.model is None, c.size, ORDER.index(
            "int8-mixed" if c.float_ops else c.recipe))):
        if cand.model is None:
            cand.passed, cand.reason = False, cand.error or "not converted"
            continue
        if chosen is not None:
            cand.reason = "not measured: a smaller candidate met the budget"
            continue
        progress(f"auto: measuring {cand.label} ({cand.size:,} bytes)")
        tol = budget_tolerance(base.tolerance, get_recipe(cand.recipe), budget)
        spec = cand.conversion.spec if cand.conversion is not None else None
        cand.runtimes = [measure(cand.model, env, inputs, reference, ys, tol, spec, base.noise) for env in envs]
        fails = [r for r in (meets(m, budget) for m in cand.runtimes) if r]
        cand.passed = not fails
        cand.reason = "; ".join(fails) if fails else "meets the budget in every runtime"
        if cand.passed:
            chosen = cand
    if chosen is None:
        from .convert.converter import clip
        raise VerificationError(clip(f"no candidate meets the budget ({budget.describe()}): "
                                      + explain_failures(candidates), 1500),
                                hint="loosen the budget (--max-drop, --min-agreement, --min-cosine), or give "
                                     "100-500 calibration samples drawn like the real inputs")
    why = explain_choice(chosen, candidates, budget)
    rec = get_recipe(chosen.recipe)
    if chosen.float_ops:
        rec = replace(rec, description=rec.description + "; kept in float by --quantize auto: "
                      + ", ".join(chosen.float_ops))
    tolerance = _tolerance(chosen, base, rec, budget)
    # ``why`` is the AutoResult's (printed once, as "chosen:"), not one of the build's warnings too
    prepared = replace(base, conversion=chosen.conversion, tolerance=tolerance, warnings=list(base.warnings))
    result = api.build(model, target=target, recipe=rec.name, calibration=calibration, io=io, output=output,
                       data=data, runtimes=runtimes, arch=arch, name=name, labels=labels, trust_model=trust_model,
                       use_cache=use_cache, progress=progress, strict=strict, signature=signature,
                       custom_objects=custom_objects,
                       _auto=(prepared, rec))
    if key is not None:
        _save_auto(key, prepared, rec, chosen, candidates, why)
    return AutoResult(result, chosen, candidates, budget, why)


def _entry(c: Candidate) -> str:
    return (f"{c.label} ({c.size:,} bytes): " if c.model is not None and c.size else f"{c.label}: ") + c.reason


def explain_failures(candidates: list, chosen: Candidate | None = None) -> str:
    """The candidates that failed, in words true of their sizes: measured ones smaller than ``chosen`` ("smaller
    ones failed"), measured ones not smaller ("larger ones failed"; all of them without a choice), then those that
    could not be converted (they have no size)."""
    failed = [c for c in candidates if c.passed is False]
    measured = sorted((c for c in failed if c.model is not None), key=lambda c: c.size)
    unconverted = [c for c in failed if c.model is None]
    parts = []
    if chosen is None:
        if measured:
            parts.append("failed: " + "; ".join(_entry(c) for c in measured))
    else:
        smaller = [c for c in measured if c.size < chosen.size]
        larger = [c for c in measured if c.size >= chosen.size]
        if smaller:
            parts.append("smaller ones failed: " + "; ".join(_entry(c) for c in smaller))
        if larger:
            parts.append("larger ones failed: " + "; ".join(_entry(c) for c in larger))
    if unconverted:
        parts.append("not converted: " + "; ".join(_entry(c) for c in unconverted))
    return "; ".join(parts)


def explain_choice(chosen: Candidate, candidates: list, budget: Budget) -> str:
    """Why ``chosen`` was built: the smallest candidate meeting ``budget``, then what failed (:func:`explain_failures`)."""
    rest = explain_failures(candidates, chosen)
    return (f"{chosen.label} ({chosen.size:,} bytes) is the smallest candidate that meets {budget.describe()} in "
            "every runtime" + (f"; {rest}" if rest else ""))


def _save_auto(key: str, prepared, rec, chosen: Candidate, candidates: list, why: str) -> None:
    """The chosen conversion (as a cached conversion) and the search's report (JSON, no pickles)."""
    import json

    from .verification import cache
    cache.save_prepared(key, prepared)
    side = {"recipe": rec.to_json(), "chosen": candidates.index(chosen), "why": why,
            "candidates": [c.to_json() for c in candidates]}
    cache._store("auto", key, {"auto.json": json.dumps(side).encode()})


def _load_auto(key: str, model: Path):
    """(prepared, recipe, chosen, candidates, why) from the cache, or None."""
    import json

    from .verification import cache
    from .recipes import Recipe, Tolerance
    prepared = cache.load_prepared(key, model)
    if prepared is None:
        return None
    try:
        side = json.loads((cache._dir("auto", key) / "auto.json").read_text())
        r = side["recipe"]
        r.pop("io", None)
        rec = Recipe(**{**r, "tolerance": Tolerance(**r["tolerance"]),
                        **{k: tuple(r[k]) for k in ("optimizations", "supported_types", "supported_ops", "io_types")}})
        candidates = [Candidate(**c) for c in side["candidates"]]
        return prepared, rec, candidates[side["chosen"]], candidates, side["why"]
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None


def _has_labels(data) -> bool:
    """Whether ``data`` can hold labels: an .npz with ``y`` (other formats are checked after loading)."""
    if data is None:
        return False
    if str(data).endswith(".npz"):
        try:
            with np.load(data, allow_pickle=False) as npz:
                return "y" in npz.files
        except (OSError, ValueError):
            return True        # unreadable: load_dataset says why, with its own message
    return True


def _tolerance(chosen: Candidate, base, rec, budget: "Budget") -> dict:
    """{output: Tolerance} the bundle is held to: the criteria it was chosen by (the recipe's, with the budget's
    limits); `edgepack verify` uses the same later."""
    return budget_tolerance(base.tolerance, rec, budget)
