"""The TensorFlow side of build and verify, as jobs that :mod:`packager.contain.isolate` runs
in a child process: load the model, read the data, convert, compute reference outputs."""
from __future__ import annotations

import platform
from dataclasses import dataclass, field
from pathlib import Path

from ..load.calibration import Dataset, load_dataset, synthetic_dataset, with_length_variants
from .converter import Conversion, release_memory
from ..errors import VerificationError
from ..tensor import Tensor
from ..contain.wire import plain_data

MAX_CHECK_SAMPLES = 256


@plain_data
@dataclass
class Prepared:
    """What the parent needs to bundle and verify; no TensorFlow objects."""
    path: str
    format: str
    inputs: list[Tensor]
    outputs: list[Tensor]
    conversion: Conversion
    check: Dataset
    reference: dict
    warnings: list[str] = field(default_factory=list)
    versions: dict = field(default_factory=dict)
    variant_references: list = field(default_factory=list)   # reference outputs of check.variants
    fixed: dict = field(default_factory=dict)                 # what the bundle fixes (batch, variable axes)
    tolerance: dict = field(default_factory=dict)             # output name -> Tolerance used (kinds settled)
    noise: dict = field(default_factory=dict)                 # output name -> float noise per column
    signature: str | None = None                              # the SavedModel signature converted

    @property
    def references(self) -> list[dict]:
        """Reference outputs for each group of ``check.groups``."""
        return [self.reference] + list(self.variant_references)


def versions() -> dict:
    """Versions of edgepack, TensorFlow, Keras, the converter and Python, for the manifest."""
    from ..version import __version__
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
        ds = load_dataset(data, loaded.inputs, purpose="verification")
    elif calibration is not None:
        ds = calibration.head(MAX_CHECK_SAMPLES)
    else:
        return synthetic_dataset(loaded.inputs, count=64)
    return with_length_variants(ds, loaded.inputs)


def prepare(model: str, recipe_name: str, io: str, calibration: str | None, data: str | None,
            trust: bool, overrides: dict | None = None, skip: tuple = (), signature: str | None = None,
            custom: tuple | None = None) -> Prepared:
    """The TensorFlow half of ``build`` (run in the contained child): load the model (``signature``: the
    SavedModel signature to convert; ``custom``: the ``--custom-objects`` of :func:`packager.load.custom.resolve`,
    imported here, in the child), read calibration and check data, convert (skipping paths in ``skip``), compute the
    reference outputs of every check group. Raises UsageError, ConversionError or VerificationError."""
    loaded, cal, check, side = _load_for_conversion(model, calibration, data, trust, signature, custom, overrides,
                                                    beside=recipe_name)
    prepared = _convert_recipe(loaded, cal, check, side, recipe_name, io, overrides, skip)
    del loaded, cal
    _release_before_sending(prepared)
    return prepared


def prepare_sweep(model: str, recipe_names: list, io: str, calibration: str | None, data: str | None,
                  trust: bool, overrides: dict | None = None, signature: str | None = None,
                  custom: tuple | None = None) -> list:
    """Several recipes of one model in one child: loading, data and reference outputs are shared.
    Returns ``[(recipe name, Prepared or the EdgepackError that recipe ended with)]`` in order."""
    from ..errors import EdgepackError
    loaded, cal, check, side = _load_for_conversion(model, calibration, data, trust, signature, custom, overrides)
    out = []
    for name in recipe_names:
        try:
            out.append((name, _convert_recipe(loaded, cal, check, side, name, io, overrides, ())))
        except EdgepackError as exc:
            out.append((name, exc))
    del loaded, cal
    _release_before_sending(out)
    return out


class Later:
    """A value computed by ``fn`` in a background thread while the main thread converts; :meth:`get` waits for it and
    raises its error. TensorFlow's converter holds one core (its CPU time equals its wall time: ResNet50 3.9 s,
    the Transformer 3.3 s), so the original model's reference outputs and float noise, which it does not need, run
    beside the first conversion path on the other (issue 23)."""

    def __init__(self, fn):
        import threading
        self._value, self._error = None, None
        self._done = threading.Event()
        threading.Thread(target=self._run, args=(fn,), name="edgepack-reference", daemon=True).start()

    def _run(self, fn) -> None:
        try:
            self._value = fn()
        except BaseException as exc:  # noqa: BLE001 - raised in the main thread by get()
            self._error = exc
        finally:
            self._done.set()

    def get(self):
        """The value, once ``fn`` has returned (waiting for it); ``fn``'s exception when it raised one."""
        self._done.wait()
        if self._error is not None:
            raise self._error
        return self._value


def resolved(value):
    """``value``, or what it stands for when it is a :class:`Later`."""
    return value.get() if isinstance(value, Later) else value


def overlaps(loaded, recipe_name: str | None) -> bool:
    """Whether the reference side may run beside the first conversion of ``loaded`` with ``recipe_name``: a Keras
    model whose first path is ``keras-concrete-function`` (it freezes the call traced at load: nothing is traced
    again while the reference runs it; recurrent models start with paths that trace) and an engine that converts
    with TensorFlow's converter (the others take the reference at once). ``EDGEPACK_SERIAL=1``: never."""
    import os
    from ..recipes import get_recipe
    if os.environ.get("EDGEPACK_SERIAL", "") not in ("", "0") or recipe_name is None:
        return False
    return (loaded.format in ("keras-v3", "keras-h5") and bool(loaded.candidates)
            and loaded.candidates[0].name == "keras-concrete-function"
            and get_recipe(recipe_name).engine == "tflite-converter")


def _load_for_conversion(model: str, calibration: str | None, data: str | None, trust: bool,
                         signature: str | None = None, custom: tuple | None = None, overrides: dict | None = None,
                         beside: str | None = None):
    """(loaded model, calibration, check inputs, the reference side: (reference outputs per check group, float
    noise), or a :class:`Later` of them computed beside the first conversion when ``beside`` (the recipe) allows it,
    :func:`overlaps`)."""
    from ..contain.isolate import stage
    from ..load.formats import load_model
    stage(f"loading {Path(model).name}")
    loaded = load_model(model, trust=trust, signature=signature, custom_objects=custom)
    cal = load_dataset(calibration, loaded.inputs) if calibration is not None else None
    check = _inputs_for_check(loaded, data, cal)
    if loaded.format == "tflite":
        _tflite_reference(loaded, check, overrides or {}, trust)
    # The original model's outputs, computed once: the conversion check and the bundle's
    # verification use the same inputs (check.groups[0] is check.inputs).
    stage("computing the original model's outputs")
    later = overlaps(loaded, beside)
    if check.evidence == "synthetic" and not check.variants:
        check, first = sized_to_budget(loaded.reference, check, defer=later)
        if later:
            def side():
                refs = [first()]
                return refs, float_noise(loaded, check.groups[0], refs[0])
            return loaded, cal, check, Later(side)
        references = [first]
    elif later and not check.variants:
        def side():
            refs = references_of(loaded.reference, check)[1]
            return refs, float_noise(loaded, check.groups[0], refs[0])
        return loaded, cal, check, Later(side)
    else:
        check, references = references_of(loaded.reference, check)
    return loaded, cal, check, (references, float_noise(loaded, check.groups[0], references[0]))


def references_of(reference, dataset: Dataset) -> tuple[Dataset, list]:
    """(``dataset``, the original model's outputs on each of its groups). A length variant the model cannot run or
    answers with nothing (an axis of size 0: the model crops more than that length has) is dropped, with a note: it is
    no evidence either way. The main group is always run (its errors propagate)."""
    import numpy as np
    refs = [reference(dataset.inputs)]
    kept = []
    for group in dataset.variants:
        length = "x".join(str(d) for d in next(iter(group.values())).shape[1:])
        try:
            out = reference(group)
        except Exception as exc:  # noqa: BLE001 - a length the model cannot take is no evidence
            dataset.notes.append(f"inputs of length {length} were not verified: the original model cannot run "
                                 f"them ({str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__})")
            continue
        if any(np.asarray(v).size == 0 for v in out.values()):
            dataset.notes.append(f"inputs of length {length} were not verified: the original model gives empty "
                                 "outputs at that length (it needs longer inputs)")
            continue
        kept.append(group)
        refs.append(out)
    dataset.variants = kept
    return dataset, refs


def _tflite_reference(loaded, check: Dataset, overrides: dict, trust: bool) -> None:
    """Give a .tflite brought by the user the reference it is judged by: ``overrides["reference_model"]`` (a model
    edgepack loads, with the same safety scan) or ``overrides["reference_outputs"]`` (outputs on ``check``, the --data
    inputs). Neither (only with --no-verify): its own outputs stand in, and nothing is checked against them."""
    from ..contain.isolate import stage
    from ..load.formats import load_model
    from ..load.model import with_reference
    ref_model, ref_outputs = overrides.get("reference_model"), overrides.get("reference_outputs")
    if ref_model:
        stage(f"loading the reference model {Path(ref_model).name}")
        with_reference(loaded, reference=load_model(ref_model, trust=trust))
    elif ref_outputs:
        with_reference(loaded, outputs=ref_outputs, data_inputs=check.inputs)
    else:
        from .converter import run_tflite
        from .inspect import inspect_bytes
        spec = inspect_bytes(loaded.model_bytes, None, {"inputs": [s.name for s in loaded.inputs],
                                                       "outputs": [s.name for s in loaded.outputs]})
        loaded.reference = lambda arrays: run_tflite(loaded.model_bytes, spec, arrays)
        loaded.notes.append("no reference (--reference/--reference-outputs): nothing was verified; the bundle's "
                            "expected outputs are the .tflite's own")


SAMPLE_FLOOR = 16
PROBE = 4
#: Seconds per run over the synthetic samples. The reference side runs the model three times over them (the reference,
#: its float noise, the conversion check) before any runtime: at 2 s ResNet50 kept 64 and those runs were 4.3 of its
#: 16.5 s build (1.47x the bare converter); at 1 s it keeps 32 (BENCHMARKS.md, issue 23). Models under ~15 ms per
#: sample here (MobileNetV2, the MLP, most of what users bring) keep all 64.
DEFAULT_BUDGET = 1.0


def verify_budget() -> float:
    """Seconds one run over the synthetic samples may take: ``EDGEPACK_VERIFY_BUDGET`` (default
    :data:`DEFAULT_BUDGET`, also when it is not a number; 0 or less: every sample)."""
    import os
    try:
        return float(os.environ.get("EDGEPACK_VERIFY_BUDGET", DEFAULT_BUDGET))
    except ValueError:
        return DEFAULT_BUDGET


def sized_to_budget(reference, check: Dataset, defer: bool = False) -> tuple[Dataset, dict]:
    """(the synthetic ``check`` inputs cut to what a time budget affords, the reference outputs on them). The
    original model runs on a first chunk of :data:`PROBE` samples (tracing and warm-up), then on a second, timed: its
    cost per sample sizes the count so that one run over the samples takes about ``EDGEPACK_VERIFY_BUDGET`` seconds
    (default :data:`DEFAULT_BUDGET`; 0: every sample), halving from the full count down to a floor of
    :data:`SAMPLE_FLOOR`. ``EDGEPACK_VERIFY_SAMPLES=N`` pins the count. Every check and verification run the model
    that many times (the reference, its float noise, the conversion check, each runtime), so the budget bounds
    them all; a cut count is said in the verdict's notes with the figures it came from (issue 23). Only synthetic
    inputs are cut: held-out data and calibration samples are all used. ``defer``: the count is settled now (its probe
    runs here) and the outputs are returned as a function computing the rest (for :class:`Later`)."""
    import os
    import time
    import numpy as np
    total = check.count

    def join(parts: list[dict]) -> dict:
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    pinned = os.environ.get("EDGEPACK_VERIFY_SAMPLES", "").strip()
    if pinned:
        n = max(1, min(total, int(pinned)))
        cut = check.head(n)
        if n < total:
            cut.notes = list(check.notes) + [f"verified on {n} of {total} synthetic samples "
                                             "(EDGEPACK_VERIFY_SAMPLES)"]
        return cut, ((lambda: reference(cut.inputs)) if defer else reference(cut.inputs))
    budget = verify_budget()
    if budget <= 0 or total <= SAMPLE_FLOOR:
        return check, ((lambda: reference(check.inputs)) if defer else reference(check.inputs))
    parts = [reference({k: v[:PROBE] for k, v in check.inputs.items()})]
    start = time.perf_counter()
    parts.append(reference({k: v[PROBE:2 * PROBE] for k, v in check.inputs.items()}))
    per = (time.perf_counter() - start) / PROBE
    n = total
    while n > SAMPLE_FLOOR and n * per > budget:
        n //= 2
    n = max(n, SAMPLE_FLOOR, 2 * PROBE)

    def rest() -> dict:
        if n > 2 * PROBE:
            parts.append(reference({k: v[2 * PROBE:n] for k, v in check.inputs.items()}))
        return join(parts)
    if n == total:
        return check, (rest if defer else rest())
    cut = check.head(n)
    cut.notes = list(check.notes) + [
        f"verified on {n} of {total} synthetic samples: one inference of the original model took {per:.2f} s here, "
        f"and each run over the samples is sized to about {budget:g} s (EDGEPACK_VERIFY_BUDGET; "
        f"EDGEPACK_VERIFY_SAMPLES=N pins the count; --data with held-out inputs uses them all)"]
    return cut, (rest if defer else rest())


NOISE_SAMPLES = 64


def float_noise(loaded, inputs: dict, reference: dict) -> dict:
    """{output name: float noise per column} (:func:`packager.criteria.noise_of`): the model run once more on
    (at most :data:`NOISE_SAMPLES` of) its float inputs moved by one unit in the last place, away from zero or
    towards it at random (seeded). What changes is what float32 arithmetic at these magnitudes cannot resolve: a
    float bundle is never held to more than that. Integer inputs (ids) are not moved, nor are float inputs that hold
    only whole numbers (ids stored as floats: an Embedding would read a moved 5.0 as id 4, and that "noise" would
    excuse every decision); {} when nothing is moved or the run fails."""
    import numpy as np
    from ..criteria import noise_of
    from ..contain.isolate import stage
    n = min(NOISE_SAMPLES, len(next(iter(inputs.values()))))

    def continuous(a) -> bool:   # whole numbers in a float tensor are ids or counts: one ulp is another id
        return _continuous(np.asarray(a)[:n])
    if not any(continuous(a) for a in inputs.values()):
        return {}
    stage("measuring the model's own float noise")
    rng = np.random.default_rng(0)
    moved = {}
    for name, a in inputs.items():
        keep = continuous(a)
        a = np.asarray(a)[:n]
        if keep:
            towards = np.where(rng.random(a.shape) < 0.5, np.inf, -np.inf).astype(a.dtype)
            a = np.nextafter(a, towards)
        moved[name] = a
    try:
        again = loaded.reference(moved)
    except Exception:  # noqa: BLE001 - the noise only widens float limits; without it they stay strict
        return {}
    return {k: noise_of(np.asarray(reference[k])[:n], np.asarray(v)) for k, v in again.items()
            if k in reference and np.shape(v) == np.shape(np.asarray(reference[k])[:n])
            and np.asarray(v).dtype.kind == "f"}


#: Random pairs (a move and its mirror) drawn within the recipe's input resolution, besides the move onto its grid.
RESOLUTION_PAIRS = 3


def input_resolution(recipe) -> str | None:
    """The resolution at which ``recipe``'s bundle sees continuous values: "8-bit" (activations quantized to int8:
    dynamic, int8, int4 weights with dynamic activations), "16-bit" (int16x8), "float16", or None (float32, a
    bundle brought as it is)."""
    if recipe is None or not recipe.quantizes:
        return None
    if "float16" in recipe.supported_types:
        return "float16"
    if any("INT16" in op for op in recipe.supported_ops):
        return "16-bit"
    if recipe.optimizations or recipe.engine == "ai-edge-quantizer" or "int8" in recipe.supported_types:
        return "8-bit"
    return None


def resolution_moves(loaded, inputs: dict, reference: dict, resolution: str | None) -> dict:
    """{``output name@resolution``: per cell, how far the model's own output moves when its continuous float inputs
    move within the recipe's ``resolution`` (:func:`input_resolution`)}, over the first :data:`NOISE_SAMPLES` rows:
    the largest change over moves onto the grids a quantizer of that resolution uses (8/16-bit: asymmetric per sample
    and per tensor, symmetric per sample; float16: its rounding) and their mirrors, and random moves within ±one step
    (:data:`RESOLUTION_PAIRS` for float16, one otherwise) and their mirrors.
    A cell the model itself cannot hold steady at that resolution is a tie, not a fault of the bundle
    (:func:`packager.criteria.decisions`, :func:`packager.criteria.column_error`). {} without continuous inputs, resolution or a run that works."""
    import numpy as np
    if resolution is None:
        return {}
    n = min(NOISE_SAMPLES, len(next(iter(inputs.values()))))
    cut = {k: np.asarray(v)[:n] for k, v in inputs.items()}
    moving = [k for k, a in cut.items() if _continuous(a)]
    if not moving:
        return {}
    from ..contain.isolate import stage
    stage(f"measuring the model's stability at {resolution} input resolution")
    rng = np.random.default_rng(1)
    grids, step = [], {}
    for k in moving:
        a = cut[k].astype(np.float64)
        if resolution == "float16":
            on = [np.where(np.abs(a) < 65504, a.astype(np.float16).astype(np.float64), a)]
            st = np.abs(a) * 2.0 ** -10 + 2.0 ** -24
        else:
            bits = 8 if resolution == "8-bit" else 16
            rows = a.reshape(len(a), -1)
            lift = (-1,) + (1,) * (a.ndim - 1)
            # The grids a quantizer puts these values on: multiples of range/(2^bits - 1), the range holding 0
            # (asymmetric, with an integer zero point), per sample (dynamic) and per tensor (calibrated); and
            # multiples of max|x|/(2^(bits-1) - 1) per sample (symmetric).
            span = (np.maximum(rows.max(1), 0) - np.minimum(rows.min(1), 0)).reshape(lift)
            whole = max(float(a.max()), 0.0) - min(float(a.min()), 0.0)
            st = np.broadcast_to(np.max(np.abs(rows), axis=1).reshape(lift) / (2 ** (bits - 1) - 1), a.shape)
            on = [_on_grid(a, np.broadcast_to(span / (2 ** bits - 1), a.shape)), _on_grid(a, st),
                  _on_grid(a, np.full(a.shape, whole / (2 ** bits - 1)))]
        grids.append([g - a for g in on])
        step[k] = st
    draws = []
    for i in range(len(grids[0])):
        d = {k: g[i] for k, g in zip(moving, grids)}
        draws += [d, {k: -v for k, v in d.items()}]
    for _ in range(RESOLUTION_PAIRS if resolution == "float16" else 1):
        u = {k: rng.uniform(-1.0, 1.0, cut[k].shape) * step[k] for k in moving}
        draws += [u, {k: -v for k, v in u.items()}]
    most: dict = {}
    try:
        for d in draws:
            moved = {k: (cut[k] + d[k]).astype(cut[k].dtype) if k in d else cut[k] for k in cut}
            for k, v in loaded.reference(moved).items():
                v = np.asarray(v)
                ref = np.asarray(reference.get(k, np.zeros(0)))[:n]
                if v.dtype.kind != "f" or v.shape != ref.shape:
                    continue
                change = np.abs(v.astype(np.float64) - ref.astype(np.float64))
                most[k] = change if k not in most else np.fmax(most[k], change)
    except Exception:  # noqa: BLE001 - without the measure every cell is judged, as before
        return {}
    from ..criteria import RESOLUTION_KEY
    return {RESOLUTION_KEY.format(name=k, resolution=resolution): v.astype(np.float32) for k, v in most.items()}


def _on_grid(a, step):
    """``a`` rounded to the nearest multiple of ``step`` (where the step is 0, ``a``)."""
    import numpy as np
    return np.where(step > 0, np.round(a / np.where(step > 0, step, 1.0)) * step, a)


def _continuous(a) -> bool:
    """A float tensor holding more than whole numbers (whole numbers in a float tensor are ids or counts)."""
    import numpy as np
    a = np.asarray(a)
    return a.dtype.kind == "f" and a.size > 0 and not np.all(np.isfinite(a) & (a == np.round(a)))


def _convert_recipe(loaded, cal, check, side, recipe_name: str, io: str, overrides, skip) -> Prepared:
    """``side``: (reference outputs per check group, float noise), or a :class:`Later` of them, which the first
    conversion path runs beside (the converter waits for it before it checks a model or tries another path)."""
    from .engines import convert, get_engine
    from ..errors import EdgepackError
    from ..recipes import get_recipe, resolve_tolerance
    recipe = get_recipe(recipe_name)
    settled: dict = {}

    def ready() -> tuple[list, dict]:
        if not settled:
            refs, base = resolved(side)
            settled.update(refs=refs, noise={**base, **resolution_moves(loaded, check.groups[0], refs[0],
                                                                          input_resolution(recipe))})
        return settled["refs"], settled["noise"]
    if not isinstance(side, Later):
        ready()
    tolerance = resolve_tolerance(recipe.tolerance, [s.name for s in loaded.outputs], overrides=overrides)
    try:
        conversion = convert(loaded, recipe, io, cal.inputs if cal else None, check.inputs, tolerance=tolerance,
                             skip=tuple(skip), reference=settled["refs"][0] if settled else lambda: ready()[0][0],
                             labels=check.labels, noise=settled["noise"] if settled else lambda: ready()[1],
                             keep_best=bool((overrides or {}).get("no_verify")))
    except EdgepackError as exc:
        ready()      # the original model's own error comes first, as when it ran before any conversion
        if isinstance(exc, VerificationError) and check.evidence == "synthetic":
            exc.hint = ("these numbers come from synthetic inputs (uniform [0, 1) floats" +
                        (", ids over the vocabulary" if any(s.domain for s in loaded.inputs) else "") +
                        "); if the model's real inputs look different (bits, pixels 0..255, ids), pass --data with "
                        "real inputs; " + (exc.hint or ""))
        raise
    references, noise = ready()
    fixed = dict(loaded.fixed)
    notes = list(loaded.notes)
    failing = [f"{m.name}: {'; '.join(m.reasons)}" for m in conversion.metrics if not m.passed]
    if failing:
        notes.append(f"--no-verify: the {recipe.name} model does not compute what the original computes "
                     f"({' | '.join(failing)[:400]}; path {conversion.path}); the bundle is unverified: "
                     "`edgepack diagnose` finds the op")
    batch = conversion.spec.inputs[0].shape[0] if conversion.spec.inputs and conversion.spec.inputs[0].shape else -1
    if batch > 0 and "batch" not in fixed:
        fixed["batch"] = batch
        why = (" (TFLite needs a static batch to turn a recurrent loop into its builtin WHILE)"
               if conversion.path == "keras-frozen-concrete-function" else "")
        notes.append(f"batch fixed to {batch} by the {conversion.path} path{why}: the device script feeds "
                     f"{batch} sample(s) per invoke")
    if recipe.quantizes and not _has_quantized_tensors(conversion.tflite):
        notes.append(f"the {recipe.name} recipe quantized nothing in this model (TFLite leaves small weight "
                     "tensors, under 1024 values, in float32): the bundle computes in float32")
    warnings = notes + (cal.warnings if cal else []) + check.notes
    used = versions()
    used["converter"] = get_engine(recipe).version()
    return Prepared(str(loaded.path), loaded.format, loaded.inputs, loaded.outputs, conversion, check,
                    references[0], warnings, used, references[1:], fixed, conversion.tolerance or tolerance,
                    noise, loaded.signature)


def _has_quantized_tensors(model: bytes) -> bool:
    """Whether any tensor of the .tflite, in any subgraph (a recurrent loop's body is a subgraph of its own), is
    int8/uint8/int16/float16 (weights or activations)."""
    try:
        from ai_edge_litert import schema_py_generated as schema
        types = {getattr(schema.TensorType, n) for n in ("INT8", "UINT8", "INT16", "FLOAT16", "INT4")
                 if hasattr(schema.TensorType, n)}
        m = schema.Model.GetRootAsModel(model, 0)
        return any(m.Subgraphs(s).Tensors(t).Type() in types
                   for s in range(m.SubgraphsLength()) for t in range(m.Subgraphs(s).TensorsLength()))
    except Exception:  # noqa: BLE001 - only a note depends on it
        return True


def _nbytes(value) -> int:
    """Bytes of the arrays and byte strings in ``value`` (dicts, lists, tuples and dataclasses walked)."""
    import dataclasses
    if isinstance(value, (bytes, bytearray)):
        return len(value)
    if hasattr(value, "nbytes") and hasattr(value, "dtype"):
        return int(value.nbytes)
    if isinstance(value, dict):
        return sum(_nbytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_nbytes(v) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return sum(_nbytes(getattr(value, f.name, None)) for f in dataclasses.fields(value))
    return 0


def _memory_mib() -> tuple[float, float] | None:
    """(this process's RSS, its peak RSS so far) in MiB from /proc/self/status; None where there is none."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            fields = dict(line.split(":", 1) for line in fh if line.startswith(("VmRSS", "VmHWM")))
        return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024
    except (OSError, KeyError, ValueError):
        return None


def _release_before_sending(result) -> None:
    """The result is encoded whole on its way to the parent (the .tflite and the check inputs: ~50 MB for a
    MobileNetV2), about twice its bytes at once: when that would lift the child's peak RSS, the model and its traced
    functions are dropped first (issue 15: ~220 MiB at the end of a MobileNetV2 build). When the peak so far (the
    conversion's: ResNet50 ~2.6 GB, 25x its 102 MB model) is above what the copy reaches, the release would lower
    nothing and is skipped: it costs 0.45 s (Keras's clear_session 0.2 s, a full garbage collection 0.17 s) on the
    path to the parent's verification (issue 23). The parent kills the child once the result is read."""
    memory = _memory_mib()
    if memory is not None and memory[0] + 2 * _nbytes(result) / 2 ** 20 < memory[1]:
        return
    _release_tensorflow_memory()


def _release_tensorflow_memory() -> None:
    try:
        import keras
        keras.backend.clear_session()
    except Exception:  # noqa: BLE001, S110 - best effort
        pass
    release_memory()


def reference(model: str, data: str | None, arrays: dict | None, trust: bool,
              signature: str | None = None, custom: tuple | None = None,
              recipe: str | None = None) -> tuple[Dataset, list, list[str], dict]:
    """Inputs (from ``data``, else ``arrays``, else synthetic), the model's outputs on each group
    of them (``Dataset.groups``), the model's output names and its float noise (:func:`float_noise`; with
    ``recipe``, the bundle's recipe: its :func:`resolution_moves` too).
    ``signature``: the SavedModel signature to run; ``custom``: as :func:`prepare`."""
    from ..load.formats import load_model

    from ..errors import UsageError

    loaded = load_model(model, trust=trust, signature=signature, custom_objects=custom)
    if arrays is not None and set(arrays) != {s.name for s in loaded.inputs}:
        raise UsageError(f"the reference model's inputs ({', '.join(sorted(s.name for s in loaded.inputs))}) are not "
                         f"the bundle's ({', '.join(sorted(arrays))}); their outputs differ too",
                         hint="pass the model the bundle was built from")
    if data:
        dataset = with_length_variants(load_dataset(data, loaded.inputs, purpose="verification"), loaded.inputs)
    elif arrays is not None:
        dataset = with_length_variants(Dataset(arrays, None, "samples/inputs.npz", evidence="samples"), loaded.inputs)
    else:
        dataset = synthetic_dataset(loaded.inputs)
    dataset, refs = references_of(loaded.reference, dataset)
    noise = float_noise(loaded, dataset.groups[0], refs[0])
    if recipe:
        from ..recipes import get_recipe
        noise.update(resolution_moves(loaded, dataset.groups[0], refs[0], input_resolution(get_recipe(recipe))))
    return dataset, refs, [s.name for s in loaded.outputs], noise


def source_name(path: str) -> str:
    """The last component of ``path``: the model's file or directory name."""
    return Path(path).name
