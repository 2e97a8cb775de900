"""Output-by-output comparison of a reference (TensorFlow) and a candidate (TFLite) run."""
from __future__ import annotations

from dataclasses import dataclass, asdict, field

import numpy as np

from .recipes import Tolerance
from .contain.wire import plain_data


@plain_data
@dataclass
class OutputMetrics:
    """One output of one run compared with the reference. Errors are absolute, in the output's units;
    ``allowed_max_abs`` is the limit the error was held to; ``top1_agreement`` is None where top-1
    means nothing (not 2-D, or the reference's rows tie); ``reasons`` say why it failed."""
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

    def to_json(self) -> dict:
        """Every field as JSON (``dataclasses.asdict``), histogram and plots included."""
        return asdict(self)


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
                   scale: float | None = None, labels: np.ndarray | None = None) -> OutputMetrics:
    """Compare one output (``ref``, ``got``: arrays of the same shape, first axis = samples).

    Passes when ``max|ref - got| <= atol + rtol * max|ref| + steps * scale`` (``scale``: the
    output's quantization step, for quantized outputs only), cosine >= ``cosine_min``, top-1
    agreement >= ``top1_min`` on rows whose reference's top value leads the second by more than
    ``rtol * max|row| + steps * scale`` (if at least half the rows do; else top-1 is not judged; the
    absolute atol never excuses a flip), no NaN/Inf, and the output
    is not stuck (all-zero/constant) where the reference is not. ``labels``: integer classes, for
    accuracy of both."""
    ref = np.asarray(ref, dtype=np.float64)
    got = np.asarray(got, dtype=np.float64)
    if ref.shape != got.shape:
        m = OutputMetrics(name, list(got.shape), float("inf"), float("inf"), 0.0, float("-inf"), None, 0.0)
        m.reasons.append(f"shape {list(got.shape)} differs from the reference's {list(ref.shape)}")
        return m
    diff = np.abs(ref - got)
    finite = np.isfinite(diff)
    max_err = float(diff.max()) if diff.size and finite.all() else (0.0 if not diff.size else float("inf"))
    mean_err = float(diff.mean()) if diff.size and finite.all() else (0.0 if not diff.size else float("inf"))
    r, g = ref.ravel(), got.ravel()
    denom = float(np.linalg.norm(r) * np.linalg.norm(g))
    cosine = float(np.dot(r, g) / denom) if denom > 0 else (1.0 if np.array_equal(r, g) else 0.0)
    noise = float(np.sum((r - g) ** 2))
    signal = float(np.sum(r ** 2))
    snr = float("inf") if noise == 0 else (10.0 * np.log10(signal / noise) if signal > 0 else float("-inf"))
    allowed = tol.atol + tol.rtol * float(np.max(np.abs(ref))) if ref.size else tol.atol
    if scale:
        allowed += tol.steps * scale
    top1 = None
    classification = ref.ndim == 2 and ref.shape[1] > 1
    flags_extra = []
    if classification and ref.shape[0]:
        # A flip between two reference values closer than the row's own relative error (rtol of
        # the row's largest value, plus the quantization steps) is within tolerance: top-1 is judged
        # on the rows whose top value leads by more. The absolute atol does not excuse flips: on
        # rows of small values it would excuse everything (an int8 table that zeroes real ids).
        decisive = _decisive_rows(ref, tol.rtol, tol.steps * scale if scale else 0.0)
        if decisive.mean() >= 0.5:
            top1 = float(np.mean(ref.argmax(1)[decisive] == got.argmax(1)[decisive]))
            if not decisive.all():
                flags_extra.append(f"top-1 judged on {int(decisive.sum())} of {len(decisive)} rows (the others' top "
                                   "two tie or are within the row's relative tolerance)")
        else:
            flags_extra.append(f"top-1 not judged: {int((~decisive).sum())} of {len(decisive)} reference rows have "
                               "top values tied or within the row's relative tolerance (0/1 codes, masks, multi-label)")
    m = OutputMetrics(name, list(got.shape), max_err, mean_err, cosine, snr, top1, allowed,
                      flags=_flags(got, None) + flags_extra)
    if labels is not None and classification and top1 is not None and labels.shape[0] == ref.shape[0]:
        m.accuracy_reference = float(np.mean(ref.argmax(1) == labels))
        m.accuracy_candidate = float(np.mean(got.argmax(1) == labels))
    if diff.size and finite.all():
        counts, edges = np.histogram(diff, bins=20)
        m.histogram = {"counts": counts.tolist(), "edges": edges.tolist()}
        m.plots = plot_data(diff, ref, got, labels if classification else None)
    if max_err > allowed:
        m.reasons.append(f"max abs error {max_err:.3g} > allowed {allowed:.3g}")
    if cosine < tol.cosine_min:
        m.reasons.append(f"cosine {cosine:.6f} < {tol.cosine_min}")
    if top1 is not None and top1 < tol.top1_min:
        m.reasons.append(f"top-1 agreement {top1:.4f} < {tol.top1_min}")
    if "nan-or-inf" in m.flags:
        m.reasons.append("output has NaN/Inf")
    ref_flags = _flags(ref, None)
    for flag in ("all-zero", "constant"):
        if flag in m.flags and flag not in ref_flags:
            m.reasons.append(f"output is {flag} but the reference is not (stuck at the zero point?)")
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


def _decisive_rows(ref: np.ndarray, rtol: float, steps: float) -> np.ndarray:
    """Rows (samples) whose largest value leads the second by more than ``rtol * max|row| +
    steps`` and by more than float noise: where a different top-1 is more than an error within
    the row's own tolerance."""
    part = np.sort(ref, axis=1)[:, -2:]
    noise = 1e-6 * np.maximum(np.abs(part[:, 1]), 1.0)
    margin = rtol * np.max(np.abs(ref), axis=1) + steps
    return (part[:, 1] - part[:, 0]) > np.maximum(noise, margin)


def tolerance_for(tol, name: str) -> Tolerance:
    """``tol`` is one :class:`Tolerance` for every output or a dict keyed by output name."""
    return tol[name] if isinstance(tol, dict) else tol


def compare_all(reference: dict, candidate: dict, tol, scales: dict | None = None,
                labels: np.ndarray | None = None) -> list[OutputMetrics]:
    """Match outputs by name; a missing or extra name is a failure of its own. ``tol`` is a
    :class:`Tolerance` or {output name: Tolerance}."""
    scales = scales or {}
    results = []
    for name, ref in reference.items():
        if name not in candidate:
            m = OutputMetrics(name, [], float("inf"), float("inf"), 0.0, float("-inf"), None, 0.0)
            m.reasons.append(f"the bundle produced no output named {name!r} (has: {', '.join(sorted(candidate))})")
            results.append(m)
            continue
        results.append(compare_output(name, ref, candidate[name], tolerance_for(tol, name), scales.get(name), labels))
    return results


def merge_metrics(groups: list[list[OutputMetrics]], labels: list[str]) -> list[OutputMetrics]:
    """One row per output from the same output measured on several groups of inputs (e.g. one
    group per sequence length): worst error, worst cosine, sample-weighted top-1; the reasons say
    which group failed. Group 0's accuracy and histogram are kept."""
    if len(groups) == 1:
        return groups[0]
    merged = []
    for i, first in enumerate(groups[0]):
        rows = [g[i] for g in groups]
        weights = [max(1, r.shape[0] if r.shape else 1) for r in rows]
        top = [(r.top1_agreement, w) for r, w in zip(rows, weights) if r.top1_agreement is not None]
        m = OutputMetrics(
            first.name, first.shape, max(r.max_abs_err for r in rows),
            float(sum(r.mean_abs_err * w for r, w in zip(rows, weights)) / sum(weights)),
            min(r.cosine for r in rows), min(r.snr_db for r in rows),
            float(sum(t * w for t, w in top) / sum(w for _, w in top)) if top else None,
            min(r.allowed_max_abs for r in rows),
            flags=sorted({f for r in rows for f in r.flags}),
            accuracy_reference=first.accuracy_reference, accuracy_candidate=first.accuracy_candidate,
            histogram=first.histogram, plots=first.plots)
        m.reasons = [f"{label}: {reason}" for r, label in zip(rows, labels) for reason in r.reasons]
        m.passed = all(r.passed for r in rows)
        merged.append(m)
    return merged
