"""Localise a mismatch: which op of a .tflite goes wrong, and why (the analysis; no TensorFlow).
`edgepack diagnose` itself (loading the reference, environments) is :mod:`packager.diagnose`.

Two comparisons, both on every intermediate tensor (kept with the interpreter's
``experimental_preserve_all_tensors`` and the resolver without default delegates, so XNNPACK does
not hide them), each run by :mod:`packager.convert.tensors_helper` with a runtime environment's own Python:

* **quantized vs float**: the float32 conversion of the reference model and the bundle's
  (quantized) model, tensors matched by name (QUANTIZE/DEQUANTIZE skipped; an output renamed by
  its DEQUANTIZE is matched through it; ops of the same type in the same order otherwise);
* **runtime vs runtime**: the same .tflite in each runtime of the target, tensor by tensor.

Errors are measured relative to the float tensor's range (near-zero tensors make relative errors
meaningless): ``rel = rmse / max|float|``. An op *diverges* when ``rel > REL_LIMIT`` or its cosine
is below ``COSINE_LIMIT``; the first diverging op in execution order is named, with the usual cause
and its evidence.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import EnvironmentProblem, UsageError, VerificationError

REL_LIMIT = 0.05          # rmse / max|float| beyond which an op counts as diverged
COSINE_LIMIT = 0.98
CHANNEL_LIMIT = 0.25      # median per-channel rmse / peak beyond which an op counts as diverged
HELPER = Path(__file__).with_name("tensors_helper.py")
SKIP_OPS = ("QUANTIZE", "DEQUANTIZE")
FIXED_SCALE_OPS = ("SOFTMAX", "LOGISTIC", "TANH", "LOG_SOFTMAX")   # quantized output range set by the op


# --------------------------------------------------------------------------- tensor dumps
@dataclass
class Dump:
    """Every op output of one run: ``meta`` (ops, tensors, runtime) and raw arrays by tensor index."""
    meta: dict
    arrays: dict

    @property
    def ops(self) -> list[dict]:
        """The run's ops in execution order: ``{"index", "op", "inputs", "outputs"}`` (tensor indices)."""
        return self.meta["ops"]

    def tensor(self, index: int) -> dict:
        """The tensor's metadata; an optional operand (index -1, e.g. of a WHILE loop or a fused
        recurrent op) or one the dump did not keep gets a placeholder with no name."""
        return self.meta["tensors"].get(str(index)) or {"name": f"#{index}", "index": index, "shape": [],
                                                        "dtype": "", "quantization": None}

    def raw(self, index: int):
        """Tensor ``index`` as the runtime held it (integers for a quantized tensor, all samples on axis 0), or None
        when the dump did not keep it."""
        return self.arrays.get(f"t{index}")

    def aliased(self, index: int) -> bool:
        """True when tensor ``index`` holds exactly the bytes of the output of a later op that consumes it: the runtime
        computed that op in place over it (measured: tflite-runtime 2.14 writes an int8 SOFTMAX over
        its input even with preserve-all-tensors), so its kept value is not its own."""
        a = self.raw(index)
        if a is None or a.size < 2:
            return False
        later = False
        for op in self.ops:
            if index in op["outputs"]:
                later = True
                continue
            if later and index in op["inputs"]:       # computed in place over its input
                for t in op["outputs"]:
                    b = self.raw(t)
                    if b is not None and b.shape == a.shape and b.dtype == a.dtype and np.array_equal(a, b):
                        return True
        return False

    def real(self, index: int):
        """Tensor ``index`` in real units (float64; quantized tensors dequantized), or None."""
        a = self.raw(index)
        if a is None:
            return None
        d = self.tensor(index)
        if d["scale"] and np.dtype(d["dtype"]).kind in "iu":
            return (a.astype(np.float64) - d["zero_point"]) * d["scale"]
        if np.dtype(d["dtype"]).kind != "f":
            return None
        return a.astype(np.float64)


def dump_tensors(env, model: bytes, inputs: dict, timeout: int = 600, outputs_only: bool = False) -> Dump:
    """Run ``model`` on ``inputs`` ({input name: array, first axis = samples, real values}) in
    runtime environment ``env`` (:class:`packager.verification.emulator.RuntimeEnv`) and return every op output.
    Raises EnvironmentProblem when the helper cannot run, UsageError when the runtime cannot load
    or run the model. ``outputs_only``: only the model's outputs, run with default delegates."""
    with tempfile.TemporaryDirectory(prefix="edgepack-diag-") as tmp:
        tmp = Path(tmp)
        # A copy, run from its own directory: the packager folder on sys.path would shadow stdlib
        # modules (packager/convert/inspect.py) in the runtime environment.
        shutil.copy(HELPER, tmp / "helper.py")
        (tmp / "model.tflite").write_bytes(model)
        np.savez(tmp / "in.npz", **inputs)
        argv = [*env.argv, str(tmp / "helper.py"), str(tmp / "model.tflite"), str(tmp / "in.npz"),
                str(tmp / "out.npz"), "--runtime", env.module] + (["--outputs-only"] if outputs_only else [])
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, env=env.env, timeout=timeout, cwd=tmp)
        except subprocess.TimeoutExpired:
            raise EnvironmentProblem(f"keeping every tensor in {env.describe()} took longer than {timeout}s") from None
        if proc.returncode != 0:
            lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
            msg = next((ln.split("error:", 1)[1].strip() for ln in reversed(lines) if "tensors_helper: error:" in ln),
                       lines[-1][:300] if lines else f"exit code {proc.returncode}")
            raise UsageError(f"{env.describe()} cannot run the model" + ("" if outputs_only else
                             " with every tensor kept") + f": {msg}")
        with np.load(tmp / "out.npz", allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    meta = json.loads(bytes(arrays.pop("__meta__")).decode())
    meta["describe"] = env.describe()
    return Dump(meta, arrays)


def local_dump(model: bytes, inputs: dict) -> Dump:
    """:func:`dump_tensors` in this process with ai-edge-litert (the conversion child has it)."""
    from .tensors_helper import collect
    meta, arrays = collect(model, inputs, "ai_edge_litert")
    meta["describe"] = f"ai-edge-litert {meta['version']}"
    return Dump(meta, arrays)


def name_outputs(rows: list[OpRow], quant: Dump, names: list[str] | None, raw: dict | None = None) -> None:
    """Label the rows that compute model outputs with their names (``probs``) when the conversion
    path left raw tensor names (``Identity1``): through ``raw`` ({raw tensor name: output name},
    the path's mapping), else for a model's only output."""
    if raw:
        for r in rows:
            op = next(o for o in quant.ops if o["index"] == r.index)
            via = [quant.tensor(t)["name"] for t in op["outputs"]]
            via += [quant.tensor(c["outputs"][0])["name"] for c in quant.ops
                    if c["op"] == "DEQUANTIZE" and set(op["outputs"]) & set(c["inputs"])]
            hit = next((raw[v] for v in via if v in raw), None)
            if hit:
                r.label = hit
    if not names or len(names) != 1 or len(quant.meta["outputs"]) != 1:
        return
    out = quant.meta["outputs"][0]["index"]
    feeds = {out} | {op["inputs"][0] for op in quant.ops if op["op"] == "DEQUANTIZE" and out in op["outputs"]}
    for r in rows:
        op = next(o for o in quant.ops if o["index"] == r.index)
        if set(op["outputs"]) & feeds:
            r.label = names[0]


def quick_brief(quant_model: bytes, float_model: bytes, inputs: dict, names: list[str] | None = None,
                raw: dict | None = None) -> str | None:
    """The one-line first divergence of ``quant_model`` against ``float_model`` on ``inputs``
    (at most 64 samples, in-process), or None when nothing diverges or the comparison cannot be
    made. Used in build/verify failure messages; never raises."""
    try:
        inputs = {k: v[:64] for k, v in inputs.items()}
        flt = local_dump(float_model, inputs)
        quant = local_dump(quant_model, _head(inputs, flt.meta.get("samples", 64)))
        if not _is_quantized(quant):
            return None
        rows = compare_quantized(quant, flt, quant_model)
        name_outputs(rows, quant, names, raw)
        return brief(next((r for r in rows if r.diverged), None), explain(rows, quant, flt), rows)
    except Exception:  # noqa: BLE001 - a failure message must not fail on its own annotation
        return None


def op_versions(model: bytes) -> list[tuple[str, int]]:
    """(op type, op version) of each op of the first subgraph, in execution order."""
    from ai_edge_litert import schema_py_generated as schema
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    m = schema.Model.GetRootAsModel(model, 0)
    codes = []
    for i in range(m.OperatorCodesLength()):
        c = m.OperatorCodes(i)
        custom = c.CustomCode()
        code = max(c.BuiltinCode(), c.DeprecatedBuiltinCode())
        codes.append((custom.decode() if custom else names.get(code, f"BUILTIN_{code}"), c.Version() or 1))
    sg = m.Subgraphs(0)
    return [codes[sg.Operators(o).OpcodeIndex()] for o in range(sg.OperatorsLength())]


# --------------------------------------------------------------------------- quantized vs float
@dataclass
class OpRow:
    """One op of the quantized model against its float counterpart. ``rel``: rmse / max|float|;
    ``steps``: rmse in output quantization steps; ``clipped``: fraction of float values outside
    the quantized range; ``below_step``: fraction of nonzero float values smaller than one step."""
    index: int
    op: str
    version: int
    tensor: str
    float_tensor: str
    dtype: str
    scale: float
    zero_point: int
    rel: float
    cosine: float
    steps: float | None
    max_abs: float
    clipped: float
    below_step: float
    float_range: list
    quant_range: list | None
    jump: float
    label: str = ""            # the output's name, or the tensor's name without the model prefix
    channel_rel: float = 0.0   # median over channels (last axis) of rmse_c / max|float_c|
    diverged: bool = False

    def to_json(self) -> dict:
        """Every field of the row as JSON."""
        return asdict(self)


def _cosine(a, b) -> float:
    a, b = a.ravel(), b.ravel()
    den = float(np.linalg.norm(a) * np.linalg.norm(b))
    if den == 0:
        return 1.0 if np.array_equal(a, b) else 0.0
    return float(np.dot(a, b) / den)


def _match(quant: Dump, flt: Dump, labels: dict | None = None) -> dict[int, int]:
    """Quantized op index -> float tensor index of the same value (``labels`` receives names
    for QUANTIZE ops of graph inputs)."""
    labels = {} if labels is None else labels
    fnames = {}
    for op in flt.ops:
        for t in op["outputs"]:
            fnames.setdefault(flt.tensor(t)["name"], t)
    for i in flt.meta["inputs"]:
        fnames.setdefault(i["name"], i["index"])
    consumers = {}
    for op in quant.ops:
        for t in op["inputs"]:
            consumers.setdefault(t, []).append(op)
    pairs = {}
    for op in quant.ops:
        if op["op"] == "DEQUANTIZE" or not op["outputs"]:
            continue
        out = op["outputs"][0]
        name = quant.tensor(out)["name"]
        if op["op"] == "QUANTIZE":      # a graph input's quantization: matched to the float input
            src = op["inputs"][0]
            qin = [i["index"] for i in quant.meta["inputs"]]
            fin = [i["index"] for i in flt.meta["inputs"]]
            if src in qin:
                name = quant.tensor(src)["name"]
                labels[op["index"]] = f"input {name}"
                if name in fnames:
                    pairs[op["index"]] = fnames[name]
                elif len(qin) == len(fin):       # inputs renamed by the conversion path: by position
                    pairs[op["index"]] = fin[qin.index(src)]
            continue
        if name in fnames:
            pairs[op["index"]] = fnames[name]
            continue
        for c in consumers.get(out, []):    # an output renamed by its DEQUANTIZE
            if c["op"] == "DEQUANTIZE" and quant.tensor(c["outputs"][0])["name"] in fnames:
                pairs[op["index"]] = fnames[quant.tensor(c["outputs"][0])["name"]]
    # Same op types in the same order: pair the rest by position.
    qseq = [op for op in quant.ops if op["op"] not in SKIP_OPS]
    fseq = [op for op in flt.ops if op["op"] not in SKIP_OPS]
    if [o["op"] for o in qseq] == [o["op"] for o in fseq]:
        for q, f in zip(qseq, fseq):
            if q["index"] not in pairs and q["outputs"] and f["outputs"]:
                pairs[q["index"]] = f["outputs"][0]
    return pairs


def _label(name: str, float_index: int, flt: Dump) -> str:
    """``probs`` for a model output; ``outlier/MatMul`` for ``sequential/outlier/MatMul;...``."""
    named = flt.meta.get("output_names") or {}
    if str(float_index) in named:
        return named[str(float_index)]
    parts = name.split(";")[0].split("/")
    return "/".join(parts[1:]) if len(parts) > 1 else parts[0]


def _channel_rel(q: np.ndarray, f: np.ndarray) -> float:
    """Median over channels (last axis, channels that are not all zero) of rmse / peak: a tensor
    whose range is set by a few outlier channels has a tiny ``rel`` and most channels lost."""
    if f.ndim < 2 or f.shape[-1] < 2:
        return 0.0
    f2, q2 = f.reshape(-1, f.shape[-1]), q.reshape(-1, q.shape[-1])
    peak = np.max(np.abs(f2), axis=0)
    live = peak > 0
    if not live.any():
        return 0.0
    rmse = np.sqrt(np.mean((q2 - f2) ** 2, axis=0))
    return float(np.median(rmse[live] / peak[live]))


def compare_quantized(quant: Dump, flt: Dump, model: bytes) -> list[OpRow]:
    """Per-op rows (execution order) for the ops of ``quant`` whose float counterpart is found
    in ``flt``; integer-valued (shape) tensors are left out."""
    versions = op_versions(model)
    labels: dict = {}
    pairs = _match(quant, flt, labels)
    rows: list[OpRow] = []
    rel_of = {}                           # quantized tensor index -> rel of its producer row
    for op in quant.ops:
        if op["index"] not in pairs:
            if op["op"] == "DEQUANTIZE" and op["inputs"] and op["inputs"][0] in rel_of:
                rel_of[op["outputs"][0]] = rel_of[op["inputs"][0]]
            continue
        out = op["outputs"][0]
        q, f = quant.real(out), flt.real(pairs[op["index"]])
        if q is None or f is None or q.shape != f.shape or not q.size or quant.aliased(out):
            continue
        d = quant.tensor(out)
        diff = q - f
        rmse = float(np.sqrt(np.mean(diff ** 2)))
        peak = float(np.max(np.abs(f)))
        rel = rmse / peak if peak > 0 else (0.0 if rmse == 0 else float("inf"))
        scale = d["scale"] if d["scale"] and np.dtype(d["dtype"]).kind in "iu" else 0.0
        qrange = None
        clipped = below = 0.0
        if scale:
            info = np.iinfo(np.dtype(d["dtype"]))
            qrange = [(info.min - d["zero_point"]) * scale, (info.max - d["zero_point"]) * scale]
            clipped = float(np.mean((f < qrange[0] - scale / 2) | (f > qrange[1] + scale / 2)))
            nz = np.abs(f[f != 0])
            below = float(np.mean(nz < scale)) if nz.size else 0.0
        before = [rel_of[t] for t in op["inputs"] if t in rel_of]
        prior = max(before) if before else 0.0
        jump = rel / prior if prior > 0 else (float("inf") if rel > 0 else 1.0)
        op_type, version = versions[op["index"]] if op["index"] < len(versions) else (op["op"], 1)
        row = OpRow(op["index"], op_type, version, d["name"], flt.tensor(pairs[op["index"]])["name"], d["dtype"],
                    scale, d["zero_point"], rel, _cosine(q, f), rmse / scale if scale else None,
                    float(np.max(np.abs(diff))), clipped, below, [float(f.min()), float(f.max())], qrange, jump)
        qnamed = quant.meta.get("output_names") or {}
        via = [str(out)] + [str(c["outputs"][0]) for c in quant.ops if c["op"] == "DEQUANTIZE" and out in c["inputs"]]
        row.label = (labels.get(op["index"]) or next((qnamed[v] for v in via if v in qnamed), None)
                     or _label(d["name"], pairs[op["index"]], flt))
        row.channel_rel = _channel_rel(q, f)
        row.diverged = rel > REL_LIMIT or row.cosine < COSINE_LIMIT or row.channel_rel > CHANNEL_LIMIT
        rel_of[out] = rel
        rows.append(row)
    return rows


def _outlier_evidence(f: np.ndarray, scale: float) -> str | None:
    """A few channels (last axis) far larger than the rest: their range sets the one scale."""
    if f.ndim < 2 or f.shape[-1] < 4:
        return None
    peaks = np.max(np.abs(f.reshape(-1, f.shape[-1])), axis=0)
    median = float(np.median(peaks))
    top = int(np.argmax(peaks))
    if median > 0 and peaks[top] > 20 * median:
        return (f"activation outliers: channel {top} reaches {peaks[top]:.4g}, {peaks[top] / median:.0f}x the "
                f"median channel's peak {median:.3g}; the one scale per tensor ({scale:.3g}) is set by it")
    return None


@dataclass
class Cause:
    """A likely cause of a divergence: ``kind`` (below-step, outliers, offset, calibration-scale, calibration-coverage,
    clipping or runtime) and ``text``, the cause with its evidence in one line."""
    kind: str          # below-step | outliers | offset | calibration-scale | calibration-coverage | clipping | runtime
    text: str

    def to_json(self) -> dict:
        """``{"kind", "text"}``."""
        return asdict(self)


def explain(rows: list[OpRow], quant: Dump, flt: Dump, pairs: dict | None = None) -> list[Cause]:
    """The usual causes, each with its evidence, most specific first."""
    causes: list[Cause] = []
    first = next((r for r in rows if r.diverged), None)
    # Each input's quantized range is what calibration saw: a QUANTIZE op (float I/O) or the
    # quantized input tensor itself (--io int8/uint8/int16).
    seen = [(r.label.replace("input ", "", 1), r.quant_range, r.float_range, r.clipped)
            for r in rows if r.op == "QUANTIZE" and r.quant_range]
    fin = flt.meta["inputs"]
    for k, qi in enumerate(quant.meta["inputs"]):
        d = quant.tensor(qi["index"])
        if d["scale"] and np.dtype(d["dtype"]).kind in "iu" and len(fin) == len(quant.meta["inputs"]):
            f = flt.real(fin[k]["index"])
            if f is not None and f.size:
                info = np.iinfo(np.dtype(d["dtype"]))
                qr = [(info.min - d["zero_point"]) * d["scale"], (info.max - d["zero_point"]) * d["scale"]]
                clipped = float(np.mean((f < qr[0] - d["scale"] / 2) | (f > qr[1] + d["scale"] / 2)))
                seen.append((qi["name"], qr, [float(f.min()), float(f.max())], clipped))
    for name, (lo, hi), (dlo, dhi), clipped in seen:
        span = max(hi - lo, 1e-12)
        far = min(abs(dlo), abs(dhi)) if dlo * dhi > 0 else 0.0        # the data's distance from zero
        if clipped < 0.01 and far > 0 and (dhi - dlo) < 0.1 * far:
            # int8's range always holds 0: data far from zero and narrow gets a handful of its 256 steps, however
            # it is calibrated (recalibrating cannot help)
            steps = (dhi - dlo) / max(span / 255.0, 1e-30)
            causes.append(Cause("offset", (
                f"input {name!r} spans [{dlo:.6g}, {dhi:.6g}], far from zero for its width: an integer range must "
                f"hold 0, so it was quantized over [{lo:.4g}, {hi:.4g}] and the data gets about {steps:.0f} of its "
                "256 steps; calibrating again cannot help: subtract the offset before the model (normalize in the "
                "app) or use --quantize dynamic/float32")))
            continue
        if dhi > hi + 0.25 * span or dlo < lo - 0.25 * span or (dhi - dlo) < 0.25 * span:
            causes.append(Cause("calibration-scale", (
                f"calibration data on a different scale from the data: input {name!r} was calibrated to "
                f"[{lo:.4g}, {hi:.4g}] but the data spans [{dlo:.4g}, {dhi:.4g}] "
                f"({clipped:.0%} of its values outside); calibrate on data scaled like the real inputs")))
    if first is not None:
        pairs = pairs or _match(quant, flt)
        fvals = flt.real(pairs[first.index]) if first.index in pairs else None
        # SOFTMAX/LOGISTIC/TANH have fixed output scales in int8: outliers cannot be what set them.
        fixed_scale = first.op in FIXED_SCALE_OPS
        outliers = (_outlier_evidence(fvals, first.scale) if fvals is not None and first.scale and not fixed_scale
                    else None)
        if outliers and first.below_step > 0.3:
            causes.append(Cause("outliers", f"op {first.index} {first.op} {first.label!r}: {outliers}; "
                                f"{first.below_step:.0%} of its values are below one step"))
        elif first.below_step >= 0.5:
            causes.append(Cause("below-step", f"op {first.index} {first.op} {first.label!r}: "
                                f"{first.below_step:.0%} of outputs below one step ({first.scale:.2g})"
                                + (" - a flat softmax collapses to zero" if first.op == "SOFTMAX" else "")))
        elif first.clipped > 0.01 and not fixed_scale:
            causes.append(Cause("clipping", f"op {first.index} {first.op} {first.label!r}: {first.clipped:.0%} of "
                                f"the float values fall outside the quantized range [{first.quant_range[0]:.4g}, "
                                f"{first.quant_range[1]:.4g}] (float range [{first.float_range[0]:.4g}, "
                                f"{first.float_range[1]:.4g}])"))
    # SOFTMAX/LOGISTIC/TANH have fixed int8 output ranges (softmax tops out one step below 1):
    # values beyond them say nothing about calibration.
    clipping = [r for r in rows if r.op not in ("QUANTIZE",) + FIXED_SCALE_OPS and r.clipped > 0.01]
    if clipping and not any(c.kind in ("calibration-scale", "offset") for c in causes):
        worst = max(clipping, key=lambda r: r.clipped)
        causes.append(Cause("calibration-coverage", (
            f"values beyond the calibrated range at {len(clipping)} op(s) (worst: op {worst.index} {worst.op} "
            f"{worst.label!r}, {worst.clipped:.0%} outside): the calibration set did not cover these inputs - too "
            "few calibration samples? give 100-500 drawn like the real inputs")))
    return causes


def largest(rows: list[OpRow]) -> OpRow | None:
    """The op with the largest error relative to its range (ties: the earliest)."""
    finite = [r for r in rows if np.isfinite(r.rel)]
    return max(finite, key=lambda r: (r.rel, -r.index)) if finite else None


def brief(row: OpRow | None, causes: list[Cause] | None = None, rows: list[OpRow] | None = None) -> str | None:
    """One line: ``first divergence: op 7 SOFTMAX 'probs' - 97% of outputs below one step (0.0039)``.
    With no diverging ``row`` but ``rows``: ``no op diverges ...; largest error: op 11 ...``."""
    if row is None:
        top = largest(rows or [])
        if top is None or top.rel <= 0:
            return None
        extra = (f", {top.clipped:.0%} of values outside the quantized range" if top.clipped > 0.005 and
                 top.op not in FIXED_SCALE_OPS else "")
        return (f"no op diverges beyond {REL_LIMIT:.0%} of its range; largest error: op {top.index} {top.op} "
                f"{top.label!r} - {top.rel:.1%} of the range, cosine {top.cosine:.4f}{extra}")
    if row.below_step >= 0.5 and row.scale:
        why = f"{row.below_step:.0%} of outputs below one step ({row.scale:.2g})"
    elif row.clipped > 0.01 and row.quant_range and row.op not in FIXED_SCALE_OPS:
        why = f"{row.clipped:.0%} of values outside the quantized range [{row.quant_range[0]:.3g}, {row.quant_range[1]:.3g}]"
    else:
        why = f"error {row.rel:.1%} of the range, cosine {row.cosine:.3f}"
    extra = next((c.kind for c in causes or [] if c.kind in ("outliers", "calibration-scale")), None)
    return f"first divergence: op {row.index} {row.op} {row.label!r} - {why}" + (f" ({extra})" if extra else "")


# --------------------------------------------------------------------------- runtime vs runtime
@dataclass
class RuntimeDivergence:
    """The first op whose output differs between two runtimes beyond float noise (or one step)."""
    index: int
    op: str
    version: int
    tensor: str
    runtimes: list            # [name version (arch), ...] of the two runs
    values: list              # the two values at the worst element
    element: list             # its position
    max_abs: float
    limit: float
    inputs_identical: bool = True    # False: the difference is inherited from an earlier op
    fraction: float = 0.0            # of the output's elements that differ
    steps: float | None = None       # max difference in quantization steps (quantized outputs)

    def to_json(self) -> dict:
        """Every field as JSON."""
        return asdict(self)

    def text(self) -> str:
        """One line: the op, both runtimes' values at the worst element, the largest difference (in quantization
        steps too for a quantized output), the percentage of outputs that differ, and whether it is inherited."""
        size = f"{self.steps:.0f} step(s), {self.max_abs:.3g}" if self.steps is not None else f"{self.max_abs:.3g}"
        parts = self.tensor.split(";")[0].split("/")
        short = "/".join(parts[1:]) if len(parts) > 1 else parts[0]
        return (f"op {self.index} {self.op} v{self.version} {short!r}: {self.runtimes[0]} gives "
                f"{self.values[0]:.6g}, {self.runtimes[1]} gives {self.values[1]:.6g} at {self.element} "
                f"(max difference {size}; {100 * self.fraction:.3g}% of its outputs differ; "
                + ("its inputs are identical in both runtimes: the kernels compute differently)"
                   if self.inputs_identical else "inherited from a differing input)"))


def compare_runtimes(a: Dump, b: Dump, model: bytes) -> RuntimeDivergence | None:
    """The first op (execution order) whose output differs between runs ``a`` and ``b`` of the
    same model although its inputs are identical in both: a kernel that computes differently.
    Differs: beyond float noise (1e-5 of the tensor's range + 1e-7) for float tensors, by one
    step or more for quantized ones. When every difference is inherited from an input, the first
    differing op is returned with ``inputs_identical`` False; None when every op agrees."""
    versions = op_versions(model)
    differs: set = set()
    first_inherited = None
    for op in a.ops:
        for t in op["outputs"]:
            x, y = a.raw(t), b.raw(t)
            if x is None or y is None or x.shape != y.shape or not x.size or a.aliased(t) or b.aliased(t):
                continue
            d = a.tensor(t)
            quantized = bool(d["scale"]) and np.dtype(d["dtype"]).kind in "iu"
            xf, yf = x.astype(np.float64), y.astype(np.float64)
            diff = np.abs(xf - yf)
            if quantized:
                limit = 0.5
            elif np.dtype(d["dtype"]).kind == "f":
                limit = 1e-5 * float(np.nanmax(np.abs(xf))) + 1e-7 if np.isfinite(xf).any() else 0.0
            else:
                limit = 0.0
            nan_mismatch = np.isnan(xf) != np.isnan(yf)
            bad = np.where(np.isnan(diff), nan_mismatch, diff > limit)
            if not bad.any():
                continue
            differs.add(t)
            inherited = any(i in differs for i in op["inputs"])
            if inherited and first_inherited is not None:
                continue
            pos = np.unravel_index(int(np.argmax(np.where(bad, np.nan_to_num(diff, nan=np.inf), -1))), x.shape)
            scale = d["scale"] if quantized else 1.0
            zp = d["zero_point"] if quantized else 0
            va, vb = (float(xf[pos]) - zp) * scale, (float(yf[pos]) - zp) * scale
            op_type, version = versions[op["index"]] if op["index"] < len(versions) else (op["op"], 1)
            div = RuntimeDivergence(op["index"], op_type, version, d["name"], [a.meta["describe"],
                                    b.meta["describe"]], [va, vb], [int(p) for p in pos],
                                    float(np.nanmax(np.where(np.isnan(diff), 0, diff))) * scale,
                                    (limit if not quantized else 1.0) * scale, not inherited,
                                    float(np.mean(bad)), float(np.nanmax(np.where(np.isnan(diff), 0, diff)))
                                    if quantized else None)
            if not inherited:
                return div
            first_inherited = div
    return first_inherited


# --------------------------------------------------------------------------- the report
@dataclass
class Diagnosis:
    """What `edgepack diagnose` returns: per-op rows, the first divergence, causes, runtimes."""
    model: str
    reference: str
    recipe: str | None
    samples: int
    evidence: str
    rows: list[OpRow] = field(default_factory=list)
    causes: list[Cause] = field(default_factory=list)
    runtimes: list = field(default_factory=list)               # [name version (arch)]
    runtime_divergences: list = field(default_factory=list)    # [{a, b, divergence | None}]
    notes: list[str] = field(default_factory=list)
    rel_limit: float = REL_LIMIT
    cosine_limit: float = COSINE_LIMIT

    @property
    def first(self) -> OpRow | None:
        """The first diverging op (execution order), or None."""
        return next((r for r in self.rows if r.diverged), None)

    @property
    def brief(self) -> str | None:
        """The one-line summary (:func:`brief`): the first divergence, else the largest error; None when no op has
        any error."""
        return brief(self.first, self.causes, self.rows)

    def to_json(self) -> dict:
        """JSON of the diagnosis: model, reference, recipe, samples, evidence, limits, first divergence, brief,
        causes, every op row, runtimes, runtime divergences and notes."""
        first = self.first
        return {"model": self.model, "reference": self.reference, "recipe": self.recipe, "samples": self.samples,
                "evidence": self.evidence, "limits": {"rel": self.rel_limit, "cosine": self.cosine_limit,
                                                       "channel": CHANNEL_LIMIT},
                "first_divergence": first.to_json() if first else None, "brief": self.brief,
                "causes": [c.to_json() for c in self.causes], "ops": [r.to_json() for r in self.rows],
                "runtimes": self.runtimes, "runtime_divergences": self.runtime_divergences, "notes": self.notes}


def _is_quantized(dump: Dump) -> bool:
    return any(d["scale"] and np.dtype(d["dtype"]).kind in "iu" for d in dump.meta["tensors"].values())


def analyse(quant_model: bytes, float_model: bytes, inputs: dict, envs: list, progress=None,
            output_names: list[str] | None = None) -> Diagnosis:
    """Both comparisons for in-memory models: ``envs`` (RuntimeEnv, first one used for quantized
    vs float) and ``inputs`` ({name: array}, real values). No TensorFlow needed."""
    progress = progress or (lambda _m: None)
    n = len(next(iter(inputs.values())))
    diag = Diagnosis("", "", None, n, "")
    flt = None
    if float_model is not None:
        # The float model keeps the most bytes per sample: run it first, and the rest on as many
        # samples as its memory budget allowed.
        progress("keeping every tensor: float32 conversion of the reference")
        flt = dump_tensors(envs[0], float_model, inputs)
        inputs = _head(inputs, flt.meta.get("samples", n))
    dumps = []
    for env in envs:
        progress(f"keeping every tensor: bundle model in {env.describe()}")
        try:
            dumps.append(dump_tensors(env, quant_model, inputs))
        except UsageError as exc:
            diag.notes.append(exc.message)
            continue
        inputs = _head(inputs, dumps[-1].meta.get("samples", n))
    if not dumps:
        raise VerificationError("no runtime could run the model with every tensor kept: " + "; ".join(diag.notes),
                                hint="check the bundle with `edgepack verify` or `edgepack inspect` first")
    used = len(next(iter(inputs.values())))
    if used < n:
        diag.samples = used
        diag.notes.append(f"{used} of {n} samples used: every tensor of every sample is kept, and more would "
                          "exceed the memory budget per run")
        dumps = [_cut(d, used) for d in dumps]
        flt = _cut(flt, used) if flt is not None else None
    diag.runtimes = [d.meta["describe"] for d in dumps]
    if _is_quantized(dumps[0]) and flt is not None:
        diag.rows = compare_quantized(dumps[0], flt, quant_model)
        name_outputs(diag.rows, dumps[0], output_names)
        diag.causes = explain(diag.rows, dumps[0], flt)
        computing = [op for op in dumps[0].ops if op["op"] not in SKIP_OPS and op["outputs"]
                     and dumps[0].real(op["outputs"][0]) is not None]
        matched = [r for r in diag.rows if r.op != "QUANTIZE"]
        if not diag.rows:
            diag.notes.append("no tensor of the bundle's model could be matched with the float32 model's")
        elif len(matched) < 0.5 * len(computing):
            diag.notes.append(f"only {len(matched)} of {len(computing)} ops matched the float32 model's tensors: is "
                              "--reference the model this bundle was built from?")
    elif not _is_quantized(dumps[0]):
        diag.notes.append("the bundle's model is not quantized: only runtimes are compared")
    for other in dumps[1:]:
        div = compare_runtimes(dumps[0], other, quant_model)
        diag.runtime_divergences.append({"a": dumps[0].meta["describe"], "b": other.meta["describe"],
                                         "divergence": div.to_json() if div else None,
                                         "text": div.text() if div else "every op agrees within float noise"})
        if div:
            diag.causes.append(Cause("runtime", "runtimes disagree: " + div.text()))
    return diag


def _head(inputs: dict, count: int) -> dict:
    return {k: v[:count] for k, v in inputs.items()}


def _cut(dump: Dump, count: int) -> Dump:
    """``dump`` restricted to its first ``count`` samples (tensors with a leading sample axis)."""
    n = dump.meta.get("samples")
    if n is None or n <= count:
        return dump
    arrays = {k: (v[:count] if v.ndim and v.shape[0] == n else v) for k, v in dump.arrays.items()}
    return Dump({**dump.meta, "samples": count}, arrays)
