"""Output-by-output comparison of a reference (TensorFlow) and a candidate (TFLite) run."""
from __future__ import annotations

from dataclasses import dataclass, asdict, field

import numpy as np

from .recipes import Tolerance


@dataclass
class OutputMetrics:
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
    passed: bool = False
    reasons: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
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
    top1 = None
    classification = ref.ndim == 2 and ref.shape[1] > 1
    if classification and ref.shape[0]:
        top1 = float(np.mean(ref.argmax(1) == got.argmax(1)))
    allowed = tol.atol + tol.rtol * float(np.max(np.abs(ref))) if ref.size else tol.atol
    if scale:
        allowed += tol.steps * scale
    m = OutputMetrics(name, list(got.shape), max_err, mean_err, cosine, snr, top1, allowed,
                      flags=_flags(got, None))
    if labels is not None and classification and labels.shape[0] == ref.shape[0]:
        m.accuracy_reference = float(np.mean(ref.argmax(1) == labels))
        m.accuracy_candidate = float(np.mean(got.argmax(1) == labels))
    if diff.size and finite.all():
        counts, edges = np.histogram(diff, bins=20)
        m.histogram = {"counts": counts.tolist(), "edges": edges.tolist()}
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


def compare_all(reference: dict, candidate: dict, tol: Tolerance, scales: dict | None = None,
                labels: np.ndarray | None = None) -> list[OutputMetrics]:
    """Match outputs by name; a missing or extra name is a failure of its own."""
    scales = scales or {}
    results = []
    for name, ref in reference.items():
        if name not in candidate:
            m = OutputMetrics(name, [], float("inf"), float("inf"), 0.0, float("-inf"), None, 0.0)
            m.reasons.append(f"the bundle produced no output named {name!r} (has: {', '.join(sorted(candidate))})")
            results.append(m)
            continue
        results.append(compare_output(name, ref, candidate[name], tol, scales.get(name), labels))
    return results
