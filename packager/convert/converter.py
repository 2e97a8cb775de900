"""Conversion and quantization: try each candidate path, keep the first that computes what the
original model computes. A clean conversion proves nothing; only compared outputs do."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace

from ..lazynp import np

from ..compare import OutputMetrics, compare_all, with_kinds
from ..errors import ConversionError, EdgepackError, VerificationError
from .inspect import ModelSpec, inspect_bytes, output_ops
from ..load.model import LoadedModel, import_tf, native_quiet
from ..recipes import Recipe
from ..contain.wire import plain_data

IO_DTYPES = {"float": None, "int8": "int8", "uint8": "uint8", "int16": "int16"}


@plain_data
@dataclass
class Attempt:
    """One conversion path tried: did it give a model that matches (``ok``), and if not, why."""
    path: str
    ok: bool
    error: str | None = None
    metrics: list[OutputMetrics] = field(default_factory=list)
    outputs: dict | None = field(default=None, repr=False, compare=False)   # check outputs, transient (check_model)

    def to_json(self) -> dict:
        """JSON of the attempt: path, ok, error and each output's metrics without the histogram."""
        return {"path": self.path, "ok": self.ok, "error": self.error,
                "metrics": [{k: v for k, v in m.to_json().items() if k != "histogram"} for m in self.metrics]}


@plain_data
@dataclass
class Conversion:
    """The chosen conversion: the .tflite bytes, what they contain, the path that made them, every attempt."""
    tflite: bytes
    spec: ModelSpec
    path: str
    attempts: list[Attempt]
    metrics: list[OutputMetrics]
    tolerance: dict = field(default_factory=dict)     # output name -> Tolerance it was judged by (kinds settled)
    # the first CHECK_HEAD rows of this model's outputs on the check inputs (the bundle's expected sample outputs
    # without running the model again in the parent, and ai-edge-litert's outputs in verification after a
    # bit-identical smoke run: emulator._smoke_then_host); {} when larger than CHECK_HEAD_BYTES or not kept
    check_head: dict = field(default_factory=dict)


CHECK_HEAD = 64       # every synthetic check sample: the outputs may stand for ai-edge-litert's in verification
CHECK_HEAD_BYTES = 16 << 20


def release_memory() -> None:
    """Collect garbage and hand freed heap pages back to the system (glibc keeps them otherwise):
    the reference run's activations and a conversion's intermediates would stay in the child's RSS
    and raise the peak of the next stage. ~220 MiB at the end of a MobileNetV2 build (issue 15)."""
    import gc
    gc.collect()
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):   # not glibc: nothing to trim
        pass


def manifest_tensors(spec: ModelSpec) -> tuple[list[dict], list[dict]]:
    """Inputs and outputs of ``spec`` as the manifest stores them (name, index, shape, dtype, quantization)."""
    return [t.to_json() for t in spec.inputs], [t.to_json() for t in spec.outputs]


def host_threads() -> int:
    """Threads the in-process check gives the interpreter: the cores this process may run on (nothing else runs
    beside the check). XNNPACK splits work by output tiles, so the outputs are the same bits at any count (measured
    on ResNet50: 1 and 2 threads bit-identical; 2.15 s and 1.14 s for 64 samples on 2 cores)."""
    import os
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def run_tflite(model: bytes, spec: ModelSpec, arrays: dict) -> dict:
    """Run a .tflite in-process through the device script's own Runner (ai-edge-litert, :func:`host_threads`), in
    chunks of at most :data:`~packager.load.model.CALL_BYTES` of input (the interpreter's arena grows
    with the batch: 64 MobileNetV2 samples at once took ~400 MiB more than 6)."""
    from device_runtime.edgepack_run import Failure, Runner
    from ..load.model import chunk_size
    inputs, outputs = manifest_tensors(spec)
    try:
        with native_quiet():
            runner = Runner(model, {"inputs": inputs, "outputs": outputs}, runtime="ai_edge_litert",
                            threads=host_threads())
            return runner.run(arrays, chunk=chunk_size(list(arrays.values()), limit=64))
    except Failure as exc:
        raise ConversionError(exc.message) from None
    except Exception as exc:  # noqa: BLE001 - the runtime's own error (an XNNPACK prepare failure...)
        raise ConversionError(f"ai-edge-litert cannot run the converted model: {one_line(exc)}") from None


def configure(tf, converter, recipe: Recipe, io: str, calibration: dict | None, loaded: LoadedModel,
               batch: int | None = None):
    """``converter`` (a ``tf.lite.TFLiteConverter``) set up as ``recipe`` says: optimizations, supported types and
    ops, its ``converter_flags``, the representative dataset from ``calibration`` (batches of ``batch``) and the ``io`` type."""
    converter.optimizations = [getattr(tf.lite.Optimize, o) for o in recipe.optimizations]
    types = {"float16": tf.float16, "int8": tf.int8}
    if recipe.supported_types:
        converter.target_spec.supported_types = [types[t] for t in recipe.supported_types]
    converter.target_spec.supported_ops = [getattr(tf.lite.OpsSet, o) for o in recipe.supported_ops]
    for flag, value in recipe.converter_flags:       # recipes.toml converter_flags (recipes.CONVERTER_FLAGS only)
        setattr(converter, flag, value)
    if recipe.needs_calibration:
        names = [s.name for s in loaded.inputs]
        arrays = [calibration[n] for n in names]
        count = arrays[0].shape[0]
        # A model traced at a fixed batch size (e.g. a subclassed call, a recurrent model) is
        # calibrated at that size.
        batch = batch or 1
        if count < batch:
            arrays = [np.concatenate([a] * (batch // count + 1))[:batch] for a in arrays]
            count = batch

        def representative():
            for i in range(0, count - batch + 1, batch):
                yield [a[i:i + batch].astype(np.float32) if a.dtype.kind == "f" else a[i:i + batch] for a in arrays]

        converter.representative_dataset = representative
    if io != "float":
        dtype = getattr(tf, IO_DTYPES[io])
        converter.inference_input_type = dtype
        converter.inference_output_type = dtype
    return converter


def convert(loaded: LoadedModel, recipe: Recipe, io: str, calibration: dict | None,
            check_inputs: dict, tolerance=None, skip: tuple = (), reference: dict | None = None,
            labels=None, noise: dict | None = None, keep_best: bool = False) -> Conversion:
    """Convert with the first candidate path (not in ``skip``) whose outputs match the original model's, within
    ``tolerance`` (a :class:`~packager.recipes.Tolerance` or {output name: Tolerance}; default the
    recipe's). ``reference``: the original model's outputs on ``check_inputs`` when the caller has
    them already; ``labels``/``noise`` as in :func:`packager.compare.compare_all`. ``keep_best`` (``--no-verify``):
    when no path matches, the best path that ran is returned with its failing metrics instead of a refusal.
    ``reference`` and ``noise`` may be functions giving them (computed beside this conversion,
    :class:`packager.convert.jobs.Later`): they are called only once the first path has converted, before its check,
    and before any other path is tried (another path may trace the model again).
    Raises :class:`ConversionError` naming the best path's numbers and likely cause."""
    recipe.check_request(io, calibration is not None)
    tf = import_tf()
    if reference is None:
        reference = loaded.reference(check_inputs)
    pending = callable(reference) or callable(noise)

    def settle() -> None:
        nonlocal reference, noise, pending
        if pending:
            reference = reference() if callable(reference) else reference
            noise = noise() if callable(noise) else noise
            pending = False
    attempts: list[Attempt] = []
    ran: dict = {}                       # path -> (candidate, model bytes) of paths that ran
    order = {"inputs": [s.name for s in loaded.inputs], "outputs": [s.name for s in loaded.outputs]}
    from ..contain.isolate import crash_seam, stage
    candidates = loaded.candidates
    if recipe.needs_calibration:   # paths known to survive calibration go first (stable order otherwise)
        candidates = sorted(candidates, key=lambda c: not c.calibration_first)
    failed_numbers: dict = {}            # Candidate.numbers -> the path of that family that failed on accuracy
    failed_bytes: dict = {}              # sha256 of a model that ran and failed on accuracy -> its attempt
    for tried, cand in enumerate(candidates):
        if tried:
            settle()
        if cand.name in skip:
            attempts.append(Attempt(cand.name, False, "skipped: TensorFlow crashed on this path in an earlier "
                                                      "attempt (its crash is reported separately)"))
            continue
        if cand.numbers and cand.numbers in failed_numbers:
            attempts.append(Attempt(cand.name, False, f"skipped: it computes what {failed_numbers[cand.numbers]} "
                                    "computes (the paths differ only in how the graph is obtained), and that failed "
                                    "the check on accuracy"))
            continue
        stage(f"converting with {cand.name} ({recipe.name})", cand.name)
        crash_seam(recipe.name)
        release_memory()
        try:
            with native_quiet():
                batch = cand.batch or model_batch(loaded)
                converter = configure(tf, cand.make(), recipe, io, calibration, loaded, batch)
                model = bytes(converter.convert())
            spec = named_spec(inspect_bytes(model, cand.tensor_names, order), order)
        except Exception as exc:  # noqa: BLE001 - each path's failure is recorded and the next tried
            attempts.append(Attempt(cand.name, False, one_line(exc)))
            continue
        settle()
        sha = hashlib.sha256(model).hexdigest()
        if sha in failed_bytes:
            same = failed_bytes[sha]
            attempts.append(Attempt(cand.name, False, f"skipped: the same model bytes as {same.path}, which failed "
                                    "the check on accuracy"))
            continue
        attempt, tol = check_model(cand.name, model, spec, order, check_inputs, reference,
                                   tolerance or recipe.tolerance, labels, noise)
        got, attempt.outputs = attempt.outputs, None        # the check's outputs: kept only for the bundle
        attempts.append(attempt)
        if attempt.metrics:
            ran[cand.name] = (cand, model)
        if attempt.ok:
            head = {k: np.ascontiguousarray(v[:CHECK_HEAD]) for k, v in (got or {}).items()}
            if sum(v.nbytes for v in head.values()) > CHECK_HEAD_BYTES:
                head = {}
            return Conversion(model, spec, cand.name, attempts, attempt.metrics, tol, head)
        if attempt.metrics:
            failed_bytes[sha] = attempt
            if cand.numbers:
                failed_numbers.setdefault(cand.numbers, cand.name)
    settle()
    ids = tuple(s.name for s in loaded.inputs if np.dtype(s.dtype).kind in "iu" or s.domain is not None)
    refusal = no_match(attempts, recipe, calibration, check_inputs,
                        lambda path: _first_divergence(tf, loaded, recipe, ran.get(path), check_inputs), ids)
    if keep_best and getattr(refusal, "best", None) is not None:
        best = refusal.best
        cand, model = ran[best.path]
        spec = named_spec(inspect_bytes(model, cand.tensor_names, order), order)
        tol = with_kinds(tolerance if isinstance(tolerance, dict) else
                         {n: tolerance or recipe.tolerance for n in order["outputs"]}, reference, labels,
                         output_ops(model, spec.outputs))
        return Conversion(model, spec, best.path, attempts, best.metrics, tol)
    raise refusal


def check_model(path: str, model: bytes, spec: ModelSpec, order: dict, check_inputs: dict, reference: dict,
                tolerance, labels=None, noise: dict | None = None) -> tuple[Attempt, dict]:
    """(the :class:`Attempt` of conversion path ``path``, {output: Tolerance} it was judged by, kinds settled): the
    .tflite ``model`` (described by ``spec``, outputs named as ``order`` says) run in-process on ``check_inputs`` and
    compared with the original model's ``reference`` outputs within ``tolerance`` (one Tolerance or {output:
    Tolerance}). An attempt that could not run has no metrics; one that ran has them, passing or not."""
    from ..contain.isolate import stage
    names = order["outputs"]
    tol = tolerance if isinstance(tolerance, dict) else {n: tolerance for n in names}
    missing = [n for n in names if n not in {t.name for t in spec.outputs}]
    if missing:
        return Attempt(path, False, "converted model lost output names: " + ", ".join(missing)
                       + f" (has {', '.join(t.name for t in spec.outputs)})"), tol
    stage(f"checking the {path} model against the original", path)
    try:
        got = run_tflite(model, spec, check_inputs)
    except ConversionError as exc:
        return Attempt(path, False, exc.message), tol
    ops = output_ops(model, spec.outputs)
    tol = with_kinds(tol, reference, labels, ops)
    scales = {n: step for n, (_, step) in ops.items() if step}
    metrics = compare_all(reference, got, tol, scales, labels, noise)
    ok = all(m.passed for m in metrics)
    attempt = Attempt(path, ok, None if ok else "; ".join(r for m in metrics for r in m.reasons), metrics)
    attempt.outputs = got
    return attempt, tol


def _first_divergence(tf, loaded: LoadedModel, recipe: Recipe, ran, check_inputs: dict) -> str | None:
    """"first divergence: op 7 SOFTMAX 'probs' - ..." for a quantized path's model against the
    float32 conversion of the same path (see :mod:`packager.diagnose`); None if not applicable."""
    if ran is None or not recipe.needs_calibration:
        return None
    from .localise import quick_brief
    from ..recipes import get_recipe
    cand, model = ran
    try:
        with native_quiet():
            conv = configure(tf, cand.make(), get_recipe("float32"), "float", None, loaded,
                              cand.batch or model_batch(loaded))
            float_model = bytes(conv.convert())
    except Exception:  # noqa: BLE001 - the annotation is optional
        return None
    return quick_brief(model, float_model, check_inputs, [s.name for s in loaded.outputs], cand.tensor_names)


def model_batch(loaded: LoadedModel) -> int | None:
    """The batch size fixed in the model's first input, None when it is open."""
    shape = loaded.inputs[0].shape if loaded.inputs else ()
    return shape[0] if shape and shape[0] > 0 else None


def named_spec(spec: ModelSpec, order: dict) -> ModelSpec:
    """Give the output its model name when the path lost it but the mapping is certain: the model
    and the converted model have exactly one output. Several unnamed outputs are never guessed."""
    want = order["outputs"]
    have = [t.name for t in spec.outputs]
    if set(want) <= set(have) or len(have) != len(want) or (len(want) > 1 and set(have) & set(want)):
        return spec
    if len(want) > 1:
        return spec
    renamed = [replace(spec.outputs[0], name=want[0])]
    return replace(spec, outputs=renamed, notes=spec.notes + [f"output {have[0]!r} is the model's {want[0]!r}"])


def no_match(attempts: list[Attempt], recipe: Recipe, calibration: dict | None, check: dict,
              divergence=None, ids: tuple = ()) -> EdgepackError:
    """The refusal leads with the numbers of the best path that ran, then its likely cause. A
    path that converted and ran but computes something else is a VerificationError (exit 4: the
    outputs differ); no runnable model at all is a ConversionError (exit 3). ``ids``: the model's integer inputs
    (token ids): they have no scale to calibrate, and int16x8 cannot calibrate them."""
    ran = [a for a in attempts if a.metrics]
    if ran:
        def rank(a):     # NaN/Inf first out, then the fewest failing criteria, then the widest margin
            broken = any(f["criterion"] == "finite" and not f["passed"] for m in a.metrics for f in m.findings)
            return (not broken, -sum(len(m.reasons) for m in a.metrics), min((m.margin for m in a.metrics),
                                                                              default=0.0))
        best = max(ran, key=rank)
        numbers = "; ".join(f"{m.name}: " + ", ".join(m.reasons) for m in best.metrics if m.reasons)
        cause = _likely_cause(best.metrics, recipe, calibration, check, ids)
        first = divergence(best.path) if divergence else None
        if first:
            numbers += f"; {first}"
        others = [f"{a.path}: {_short_error(a)}" for a in attempts if a is not best]
        message = (f"the {recipe.name} model does not compute what the original computes ({numbers}; path {best.path})"
                   + (f"; likely cause: {cause}" if cause else "")
                   + (f"; other paths: {' | '.join(clip(o, 160) for o in others)}" if others else ""))
        widen = ("--max-flips/--max-drop widen the decision budget if this difference is acceptable" if any(
            f["criterion"] in ("decisions", "accuracy") and not f["passed"] for m in best.metrics for f in m.findings)
            else "--output-kind NAME:KIND if an output's kind was guessed wrong")
        others = " or ".join(r for r in ("float16", "float32") if r != recipe.name)
        if cause and cause.startswith("calibration data for"):
            return _refusal(message, "calibrate on data drawn like the real inputs (the scale of --data), then "
                                     f"build again; {widen}", best)
        capped = next((f for m in best.metrics for f in m.findings
                       if f["criterion"] == "saturation" and not f["passed"]), None)
        if capped is not None:
            return _refusal(message, capped["detail"]["hint"] + ", then build again", best)
        hint = (_calibrated_hint(recipe, calibration, ids, cause) + f"; {widen}"
                if recipe.needs_calibration else f"try --quantize {others}; {widen}")
        return _refusal(message, hint, best)
    blocker = _blocker(attempts)
    detail = " | ".join(f"{a.path}: {a.error}" for a in attempts if a is not blocker)
    return ConversionError((f"no conversion path produced a TFLite model that runs: {blocker.path}: {blocker.error.rstrip('.')}"
                            + (f"; other paths: {detail}" if detail else ""))[:1200],
                           hint=_conversion_hint(attempts, recipe, blocker))


def _short_error(a: Attempt) -> str:
    """One path's outcome in a refusal that leads with another path's numbers: its numbers if it ran, else its error
    with the known noise named in a few words (a graph that keeps resource variables fails to invoke at
    READ_VARIABLE: that path cannot run this model, nothing more)."""
    if a.metrics:
        return "; ".join(f"{m.name}: " + ", ".join(m.reasons) for m in a.metrics if m.reasons) or "matched"
    err = a.error or "failed"
    if "READ_VARIABLE" in err:
        return "cannot run (the graph keeps resource variables: READ_VARIABLE)"
    return err


# Errors of paths that are expected to fail where another path exists for the case: a crash already reported,
# and the TensorList lowering of recurrent layers at an open batch (the frozen and unrolled paths handle those).
_EXPECTED = ("TensorFlow crashed on this path", "TensorList")


def _blocker(attempts: list[Attempt]) -> Attempt:
    """The attempt whose error stopped the build: the first one whose error is not an expected failure of a path
    that another path exists for (:data:`_EXPECTED`), else the first attempt."""
    for a in attempts:
        if a.error and not any(k in a.error for k in _EXPECTED):
            return a
    return attempts[0]


def _calibrated_hint(recipe: Recipe, calibration: dict | None, ids: tuple, cause: str | None) -> str:
    """The way out of a calibrated recipe that computes something else, true of this model: recipes that keep more
    precision are only suggested to try ("try": none was tried here), int16x8 not for integer id inputs (its
    calibration cannot record their range); calibration advice only where it can help."""
    finer = [r for r in ("int16x8", "dynamic", "float16") if r != recipe.name and not (r == "int16x8" and ids)]
    parts = [f"try --quantize {' or '.join(finer)} (more precision), or --quantize auto to measure each"]
    count = len(next(iter(calibration.values()))) if calibration else 0
    floats = bool(calibration) and any(n not in ids for n in calibration)
    if floats:
        parts.append(f"with {recipe.name}, give 100-500 calibration samples drawn like the real inputs")
    elif count and count < 100:
        parts.append(f"with {recipe.name}, give 100-500 calibration samples of real ids")
    return "; ".join(parts)


def _refusal(message: str, hint: str, best: Attempt) -> VerificationError:
    """The VerificationError of a conversion check, carrying the best path that ran (``--no-verify`` keeps it)."""
    error = VerificationError(message[:1200], hint=hint)
    error.best = best
    return error


def _likely_cause(metrics, recipe: Recipe, calibration: dict | None, check: dict, ids: tuple = ()) -> str | None:
    """The most specific known cause with its evidence: calibration data on another scale than
    the verification data (never for integer id inputs, ``ids``: they have no scale), then an output stuck at one
    value, then an output capped at its quantized range (the saturation criterion), then too few calibration
    samples."""
    if recipe.needs_calibration and calibration:
        for name, cal in calibration.items():
            data = check.get(name)
            if name in ids or data is None or cal.dtype.kind != "f" or data.dtype.kind not in "fiu":
                continue
            clo, chi = float(np.min(cal)), float(np.max(cal))
            dlo, dhi = float(np.min(data)), float(np.max(data))
            span = max(chi - clo, 1e-12)
            if dhi > chi + 0.25 * span or dlo < clo - 0.25 * span or (dhi - dlo) < 0.25 * span:
                return (f"calibration data for {name!r} spans [{clo:.4g}, {chi:.4g}] but the verification data "
                        f"spans [{dlo:.4g}, {dhi:.4g}]: calibrate on data scaled like the real inputs")
    for m in metrics:
        if any("stuck" in r for r in m.reasons):
            return (f"output {m.name!r} is stuck at one value (the zero point): its values fall below one "
                    "quantization step")
    for m in metrics:
        sat = next((f for f in m.findings if f["criterion"] == "saturation" and not f["passed"]), None)
        if sat is not None:
            d = sat["detail"]
            return (f"output {m.name!r} is capped at its quantized range [{d['low']:.4g}, {d['high']:.4g}] on "
                    f"{d['rows']} of {d['judged']} rows (the model reaches [{d['model_min']:.4g}, "
                    f"{d['model_max']:.4g}]): the calibration data's outputs covered less than the model's")
    if recipe.needs_calibration and calibration:
        count = len(next(iter(calibration.values())))
        if count < 100:
            return f"only {count} calibration samples; 100-500 representative samples are recommended"
    return None


def _conversion_hint(attempts: list[Attempt], recipe: Recipe | None = None, blocker: Attempt | None = None) -> str:
    """The known way out for the known causes, read from the paths' errors (the blocker's first: see
    :func:`_blocker`)."""
    import re
    text = " ".join(a.error or "" for a in attempts)
    if blocker is not None and blocker.error:
        unsupported = re.search(r"16x8[- ]bit not yet supported for op: '?(\w+)|16x8 not supported for op '?(\w+)",
                                blocker.error)
        if unsupported:
            op = unsupported.group(1) or unsupported.group(2)
            return (f"int16x8 has no 16x8 kernel for op {op} (on the {blocker.path} path); int16x8 cannot build this "
                    "model: try --quantize int8, dynamic or float16")
    if any(k in text for k in ("StatelessRandom", "random_flip", "random_rotation", "RandomFlip", "RandomRotation",
                               "ImageProjectiveTransform", "RandomZoom", "RandomTranslation", "RngReadAndSkip")):
        return ("augmentation layers (RandomFlip/RandomRotation...) were exported into the SavedModel: build from "
                "the .keras file, or export without them")
    if "TensorList" in text:
        return "a recurrent layer with an open batch or time axis: build the model with a fixed batch size"
    if any(k in text.lower() for k in ("flex op", "select tf", "not supported")):
        return "the model uses TensorFlow ops TFLite builtins lack; replace them, or report the model to edgepack"
    return "try another --quantize recipe, or report the model to edgepack with EDGEPACK_DEBUG=1 output"


def one_line(exc: BaseException) -> str:
    """The useful part of a converter or runtime error: the op and the layer it came from, not the
    raw MLIR dump. ``loc(fused["X:", "model/lstm/while@fn"]): error: 'tf.X' op requires ...`` becomes
    ``op tf.X in layer 'lstm': requires ...``."""
    import re
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for ln in lines:
        m = re.search(r"'((?:tf|tfl|mhlo|stablehlo)\.\w+)' op (.*)", ln)
        if m and "error" in ln.lower():
            where = re.search(r'"([\w.-]+(?:/[\w.-]+)+)[@"]', ln)
            layer = f" in layer {where.group(1).split('/')[1]!r}" if where else ""
            return clip(f"op {m.group(1)}{layer}: {m.group(2)}")
    for ln in lines:
        if "error:" in ln.lower():
            return clip(ln.split("error:", 1)[1].strip() or ln)
    return clip(lines[0] if lines else type(exc).__name__)


def clip(text: str, limit: int = 240) -> str:
    """At most ``limit`` characters, cut at a word boundary."""
    if len(text) <= limit:
        return text
    return text[:limit].rsplit(" ", 1)[0] + " ..."
