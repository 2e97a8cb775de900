"""Output-by-output comparison of a reference (TensorFlow) and a candidate (TFLite) run."""
from __future__ import annotations

from dataclasses import dataclass, asdict, field, replace

from .lazynp import np

from .recipes import Tolerance
from .criteria import DECISION_KINDS, Finding, Judged, infer_kind, judge, resolution_of
from .contain.wire import plain_data


@plain_data
@dataclass
class OutputMetrics:
    """One output of one run compared with the reference, judged by its kind's criteria
    (:mod:`packager.criteria`). ``findings``: each criterion's figure, limit and verdict (JSON form);
    ``passed`` when all pass; ``reasons`` say why not. The error figures (``max_abs_err``,
    ``mean_abs_err``, ``cosine``, ``snr_db`` over the whole tensor, and ``allowed_max_abs``, the old
    ``atol + rtol * max|ref| + steps * scale`` rule) are diagnostics only. ``top1_agreement``: the
    fraction of decisions kept for a decision kind, else None; ``samples``: rows judged (rows whose
    reference run failed are not evidence)."""
    name: str
    shape: list
    max_abs_err: float
    mean_abs_err: float
    cosine: float
    snr_db: float
    top1_agreement: float | None
    allowed_max_abs: float
    flags: list[str] = field(default_factory=list)
    accuracy_reference: float | None = None
    accuracy_candidate: float | None = None
    histogram: dict | None = None
    plots: dict | None = None        # raw numbers for the HTML report (log histogram, scatter, confusion)
    passed: bool = False
    reasons: list[str] = field(default_factory=list)
    kind: str = "values"
    kind_source: str = ""
    findings: list[dict] = field(default_factory=list)
    samples: int = 0

    def to_json(self) -> dict:
        """Every field as JSON (``dataclasses.asdict``), histogram and plots included."""
        return asdict(self)

    @property
    def margin(self) -> float:
        """The smallest margin of its findings (> 1: inside every limit; inf: exact)."""
        return min((Finding(**f).margin for f in self.findings if f["criterion"] not in ("finite", "stuck")),
                   default=float("inf"))

    def finding(self, criterion: str) -> dict | None:
        """The finding of ``criterion`` ("decisions", "accuracy", "R²", ...), or None."""
        return next((f for f in self.findings if f["criterion"] == criterion), None)


def _flags(values: np.ndarray, zero_point: int | None) -> list[str]:
    flags = []
    if values.size == 0:
        return ["empty"]
    if not np.all(np.isfinite(values)):
        flags.append("nan-or-inf")
    finite = values[np.isfinite(values)]
    if finite.size and np.all(finite == 0):
        flags.append("all-zero")
    elif finite.size > 1 and np.ptp(finite) == 0:
        flags.append("constant")
    return flags


def compare_output(name: str, ref: np.ndarray, got: np.ndarray, tol: Tolerance,
                   scale: float | None = None, labels: np.ndarray | None = None,
                   noise: np.ndarray | None = None, moved: tuple | None = None) -> OutputMetrics:
    """Judge one output (``ref``, ``got``: arrays of the same shape, first axis = samples) by the criteria of its
    kind: ``tol.kind`` when set (graph, user), else inferred from the values and ``labels``
    (:func:`packager.criteria.infer_kind`). ``scale``: the output's quantization step in output units (quantized
    outputs only); ``labels``: the labels for this output (classes, 0/1, ids; any shape that fits the kind);
    ``noise``: the model's own float noise per column (:func:`packager.criteria.noise_of`); ``moved``: (per cell, how
    far the model's own output moves at the recipe's input resolution, that resolution's name), see
    :func:`packager.criteria.resolution_of`."""
    raw_ref = np.asarray(ref)
    ref = raw_ref.astype(np.float64)
    got = np.asarray(got, dtype=np.float64)
    if ref.shape != got.shape:
        m = OutputMetrics(name, list(got.shape), float("inf"), float("inf"), 0.0, float("-inf"), None, 0.0)
        m.reasons.append(f"shape {list(got.shape)} differs from the reference's {list(ref.shape)}")
        return m
    kind, source = tol.kind, getattr(tol, "kind_source", "") or "set"
    if not kind:
        kind, options, source = infer_kind(raw_ref, labels)
        tol = replace(tol, kind=kind, kind_options=tol.kind_options or options)
    diff = np.abs(ref - got)
    finite = np.isfinite(diff)
    max_err = float(diff.max()) if diff.size and finite.all() else (0.0 if not diff.size else float("inf"))
    mean_err = float(diff.mean()) if diff.size and finite.all() else (0.0 if not diff.size else float("inf"))
    r, g = ref.ravel(), got.ravel()
    with np.errstate(all="ignore"):
        denom = float(np.linalg.norm(r) * np.linalg.norm(g))
        cosine = float(np.dot(r, g) / denom) if denom > 0 and np.isfinite(denom) else \
            (1.0 if np.array_equal(r, g) else 0.0)
        noise_energy = float(np.sum((r - g) ** 2))
        signal = float(np.sum(r ** 2))
    snr = float("inf") if noise_energy == 0 else (10.0 * np.log10(signal / noise_energy) if signal > 0 else float("-inf"))
    allowed = tol.atol + tol.rtol * float(np.max(np.abs(ref))) if ref.size and finite.all() else tol.atol
    if scale:
        allowed += tol.steps * scale
    if not ref.size:     # the model's own run gave nothing: not evidence, and not counted as samples
        m = OutputMetrics(name, list(got.shape), 0.0, 0.0, 1.0, float("inf"), None, allowed, flags=["empty"],
                          kind=kind, kind_source=source, samples=0, passed=True)
        return m
    found = judge(Judged(name, ref, got, tol, kind, scale, noise, labels, moved=moved))
    decided = next((f for f in found if f.criterion == "decisions"), None)
    acc = next((f for f in found if f.criterion == "accuracy" and "reference" in f.detail), None)
    m = OutputMetrics(name, list(got.shape), max_err, mean_err, cosine, snr,
                      None if decided is None else 1.0 - float(decided.figure), allowed,
                      flags=_flags(got, None), kind=kind, kind_source=source,
                      findings=[f.to_json() for f in found], samples=int(ref.shape[0]) if ref.ndim else 1)
    if acc is not None:
        m.accuracy_reference, m.accuracy_candidate = acc.detail["reference"], acc.detail["bundle"]
    if diff.size and finite.all():
        counts, edges = np.histogram(diff, bins=20)
        m.histogram = {"counts": counts.tolist(), "edges": edges.tolist()}
        classes = labels if kind == "class-scores" and labels is not None and np.ndim(labels) == 1 else None
        m.plots = plot_data(diff, ref, got, classes)
    m.reasons = [f.reason for f in found if not f.passed]
    m.passed = not m.reasons
    return m


def plot_data(diff: np.ndarray, ref: np.ndarray, got: np.ndarray, labels: np.ndarray | None,
              points: int = 400) -> dict:
    """What the HTML report draws, kept small: |error| counted in quarter-decade bins (exact zeros
    apart), a sample of (reference, bundle) value pairs that always holds the worst ones, and the
    confusion matrices against the labels (classification with labels only, at most 50 classes)."""
    flat = diff.ravel()
    positive = flat[flat > 0]
    log_hist = {"zeros": int(flat.size - positive.size), "edges": [], "counts": []}
    if positive.size:
        hi = np.ceil(np.log10(positive.max()) * 4) / 4 + 0.25
        lo = max(hi - 6.25, np.floor(np.log10(positive.min()) * 4) / 4)     # six decades; smaller go in bin 0
        edges = np.arange(lo, hi + 0.125, 0.25)
        counts, _ = np.histogram(np.log10(np.maximum(positive, 10.0 ** lo)), bins=edges)
        log_hist.update(edges=[round(float(e), 2) for e in edges], counts=counts.tolist())
    r, g = ref.ravel(), got.ravel()
    if r.size > points:
        worst = np.argsort(flat)[-points // 10:]
        idx = np.unique(np.concatenate([np.linspace(0, r.size - 1, points - worst.size).astype(int), worst]))
    else:
        idx = np.arange(r.size)
    data = {"log_histogram": log_hist,
            "scatter": {"reference": [float(f"{v:.6g}") for v in r[idx]], "bundle": [float(f"{v:.6g}") for v in g[idx]],
                        "of": int(r.size)}}
    if labels is not None and ref.ndim == 2 and 1 < ref.shape[1] <= 50 and labels.shape[0] == ref.shape[0]:
        k = ref.shape[1]
        y = np.clip(labels.astype(int).ravel(), 0, k - 1)
        data["confusion"] = {name: np.bincount(y * k + pred.argmax(1), minlength=k * k).reshape(k, k).tolist()
                             for name, pred in (("model", ref), ("bundle", got))}
    return data


def tolerance_for(tol, name: str) -> Tolerance:
    """``tol`` is one :class:`Tolerance` for every output or a dict keyed by output name."""
    return tol[name] if isinstance(tol, dict) else tol


def labels_for(labels, name: str):
    """The labels of output ``name``: ``labels`` is None, one array (``y``: for every output whose kind has
    decisions and whose shape it fits) or {None: y, name: y_NAME}."""
    if labels is None or not isinstance(labels, dict):
        return labels
    return labels.get(name, labels.get(None))


def compare_all(reference: dict, candidate: dict, tol, scales: dict | None = None,
                labels=None, noise: dict | None = None) -> list[OutputMetrics]:
    """Match outputs by name; a missing or extra name is a failure of its own. ``tol`` is a
    :class:`Tolerance` or {output name: Tolerance}; ``labels`` as in :func:`labels_for`; ``noise``:
    {output name: float noise per column}, and the outputs' moves at the recipe's input resolution
    (:func:`packager.criteria.resolution_of`)."""
    scales = scales or {}
    noise = noise or {}
    results = []
    for name, ref in reference.items():
        if name not in candidate:
            m = OutputMetrics(name, [], float("inf"), float("inf"), 0.0, float("-inf"), None, 0.0)
            m.reasons.append(f"the bundle produced no output named {name!r} (has: {', '.join(sorted(candidate))})")
            results.append(m)
            continue
        results.append(compare_output(name, ref, candidate[name], tolerance_for(tol, name), scales.get(name),
                                      labels_for(labels, name), noise.get(name), resolution_of(noise, name)))
    return results


def merge_metrics(groups: list[list[OutputMetrics]], labels: list[str]) -> list[OutputMetrics]:
    """One row per output from the same output measured on several groups of inputs (e.g. one
    group per sequence length): worst error, worst cosine, sample-weighted decisions; every group's
    findings (the criterion prefixed with its group) and reasons. Group 0's accuracy and histogram are kept.
    A group whose reference is empty (the model's own run gave nothing) is not evidence: its samples are not
    counted."""
    if len(groups) == 1:
        return groups[0]
    merged = []
    for i, first in enumerate(groups[0]):
        rows = [g[i] for g in groups]
        weights = [r.samples for r in rows]
        top = [(r.top1_agreement, w) for r, w in zip(rows, weights) if r.top1_agreement is not None and w]
        m = OutputMetrics(
            first.name, first.shape, max(r.max_abs_err for r in rows),
            float(sum(r.mean_abs_err * w for r, w in zip(rows, weights)) / max(1, sum(weights))),
            min(r.cosine for r in rows), min(r.snr_db for r in rows),
            float(sum(t * w for t, w in top) / sum(w for _, w in top)) if top else None,
            min(r.allowed_max_abs for r in rows),
            flags=sorted({f for r in rows for f in r.flags}),
            accuracy_reference=first.accuracy_reference, accuracy_candidate=first.accuracy_candidate,
            histogram=first.histogram, plots=first.plots, kind=first.kind, kind_source=first.kind_source,
            samples=sum(weights))
        m.findings = [dict(f, group=label) for r, label in zip(rows, labels) for f in r.findings]
        m.reasons = [f"{label}: {reason}" for r, label in zip(rows, labels) for reason in r.reasons]
        m.passed = all(r.passed for r in rows)
        merged.append(m)
    return merged


def with_kinds(tolerance: dict, reference: dict, labels=None, ops: dict | None = None) -> dict:
    """{output name: Tolerance} with every output's kind settled: a kind already set (``--output-kind``, or
    recorded when the bundle was built) is kept; otherwise it is inferred from the op computing the output
    (``ops``: {name: (op, step)} from :func:`packager.convert.inspect.output_ops`) and its values, and then, for
    outputs still without a decision, from their labels: ``y_NAME`` always, the shared ``y`` only when no output
    has a decision kind already and exactly one output fits it (so ``y`` never makes a box regression a
    classifier). ``kind_source`` says why."""
    out, guessed = {}, {}
    for name, tol in tolerance.items():
        if tol.kind or name not in reference:
            out[name] = tol
            continue
        op = (ops or {}).get(name, (None, None))[0]
        kind, options, why = infer_kind(np.asarray(reference[name]), None, op)
        out[name] = replace(tol, kind=kind, kind_options=tol.kind_options or options, kind_source=why)
        if kind == "values":
            guessed[name] = op
    own = labels if isinstance(labels, dict) else {None: labels} if labels is not None else {}
    shared = own.get(None)
    fits = {}
    for name, op in guessed.items():
        y = own.get(name, shared)
        if y is None:
            continue
        kind, options, why = infer_kind(np.asarray(reference[name]), y, op)
        if kind != "values":
            fits[name] = (kind, options, why + (f" (y_{name})" if name in own else " (y)"))
    decided = any(t.kind in DECISION_KINDS for t in out.values())
    for name, (kind, options, why) in fits.items():
        if name in own or (not decided and len(fits) == 1):
            out[name] = replace(out[name], kind=kind, kind_options=options, kind_source=why)
    return out
