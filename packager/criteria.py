"""Output kinds and the verdict's criteria, judged the way a user judges an output.

Every output has a **kind** (:data:`KINDS`), and each kind has the criteria that a user of that output
decides by (:data:`CRITERIA`, one small function per criterion, registered with :func:`criterion`):

=================  =====================================================================================
kind               judged on
=================  =====================================================================================
``class-scores``   the class (argmax over the last axis) of every row; accuracy against labels; scores
``probabilities``  the decision ``p >= threshold`` (0.5 unless set) of every element; accuracy; scores
``pixel-classes``  the class of every pixel (argmax over the last axis of a spatial output); accuracy
``embedding``      cosine of every row; nearest neighbours within the data
``integer``        ids, classes, indices: exact (the fraction that differs); accuracy against labels
``values``         regression, boxes, anything else: every column against that column's own spread
                   (99th-percentile error and R²), never against the tensor's largest value; rows capped
                   at the bound of the output's quantized range (:func:`saturated`)
=================  =====================================================================================

Class scores (and pixel classes) that one class dominates also have each rare class's scores judged as a
column (:func:`rare_class_scores`): the argmax decisions judge the dominant class alone.

Every kind also gets the common criteria (no NaN/Inf, not stuck at one value where the reference
varies). Decisions are judged on **every** row: only rows whose reference ties within float noise
(the measured noise of the model, :func:`noise_of`) are left out, never rows within a recipe's
allowance. A criterion returns a :class:`Finding` (its figure, its limit, whether it passed and why)
or None when it does not apply (no labels, too few rows).

Figures are in the output's own units unless said; fractions are 0..1; accuracy drops in points (%).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .lazynp import np

KINDS = {
    "class-scores": "one class per row: argmax over the last axis (softmax, or logits you mark)",
    "probabilities": "independent yes/no decisions at a threshold (sigmoid; binary or multi-label)",
    "pixel-classes": "one class per pixel: argmax over the last axis of a spatial output (segmentation)",
    "embedding": "rows compared by cosine and by nearest neighbour within the data",
    "integer": "ids, classes or indices computed in the graph (argmax, top-k): exact",
    "values": "regression, boxes, anything else: each column against its own spread",
}
DECISION_KINDS = ("class-scores", "probabilities", "pixel-classes", "integer")
#: Float32 unit roundoff: ties closer than a few of these (relative) are ties, whatever the recipe.
EPS32 = 2.0 ** -23
#: The key, in the noise dict, of an output's per-cell moves at the recipe's input resolution
#: (:func:`packager.convert.jobs.resolution_moves`).
RESOLUTION_KEY = "{name}@{resolution}"
#: Above this fraction of an output's cells unstable at the recipe's input resolution, its inputs cannot judge it.
UNSTABLE_MAX = 0.25


@dataclass
class Finding:
    """One criterion's verdict on one output: ``figure`` measured against ``limit`` (``higher``: the
    figure must be at least the limit, else at most), ``passed``, ``text`` (the figure in words) and
    ``reason`` (why it failed, empty when it passed)."""
    criterion: str
    figure: float
    limit: float
    higher: bool
    passed: bool
    text: str
    reason: str = ""
    detail: dict = field(default_factory=dict)

    @property
    def margin(self) -> float:
        """How far inside its limit the figure is (> 1 passes; inf for an exact figure)."""
        f, lim = float(self.figure), float(self.limit)
        if self.higher:        # e.g. R², cosine: the room left below 1 against the room the limit allows
            room, used = 1.0 - lim, 1.0 - f
        else:
            room, used = lim, f
        if used <= 0:
            return float("inf")
        return room / used if room > 0 else 0.0

    def to_json(self) -> dict:
        """The finding as JSON (criterion, figure, limit, higher, passed, text, reason, detail)."""
        return {"criterion": self.criterion, "figure": self.figure, "limit": self.limit, "higher": self.higher,
                "passed": self.passed, "text": self.text, "reason": self.reason, "detail": self.detail}


@dataclass
class Judged:
    """What a criterion sees: one output of ``n`` samples (``ref``, ``got``: float64, same shape, first axis =
    samples), its tolerance, its quantization step (``step``, output units, or None), its measured float noise
    per column (``noise``, shaped like :func:`columns` of one row, or None), and the labels for it (or None)."""
    name: str
    ref: np.ndarray
    got: np.ndarray
    tol: object
    kind: str
    step: float | None = None
    noise: np.ndarray | None = None
    labels: np.ndarray | None = None
    moved: tuple | None = None    # (per cell of the first rows, the model's own move at the recipe's resolution, name)
    cache: dict = field(default_factory=dict, repr=False, compare=False)   # per-output work the criteria share


CRITERIA: dict[str, list] = {kind: [] for kind in KINDS}
COMMON: list = []


def criterion(*kinds: str):
    """Register a criterion function ``f(j: Judged) -> Finding | None`` for ``kinds`` (none: every kind)."""
    def register(fn):
        for k in kinds:
            CRITERIA[k].append(fn)
        if not kinds:
            COMMON.append(fn)
        return fn
    return register


def judge(j: Judged) -> list[Finding]:
    """Every finding on ``j``: the common criteria, then its kind's, in registration order."""
    import warnings
    found = []
    with np.errstate(all="ignore"), warnings.catch_warnings():   # NaN/Inf outputs are findings, not warnings
        warnings.simplefilter("ignore", RuntimeWarning)
        for fn in COMMON + CRITERIA[j.kind]:
            f = fn(j)
            if f is not None:
                found.append(f)
    return found


# ------------------------------------------------------------------------------------------- columns & noise
def columns(a: np.ndarray) -> np.ndarray:
    """``a`` as [rows, columns]: a 1-D output is one column; 2-D and 3-D outputs (with at least 32 samples)
    have a column per position; 4-D and higher (and small 3-D) outputs a column per channel (last axis),
    pooled over samples and positions."""
    n = a.shape[0]
    if a.ndim <= 1:
        return a.reshape(n, 1)
    if a.ndim == 2 or (a.ndim == 3 and n >= 32):
        return a.reshape(n, -1)
    return a.reshape(-1, a.shape[-1])


def column_names(shape: tuple | list, count: int) -> list[str]:
    """A readable name per column of :func:`columns` (``[3]``, ``[2, 5]``, ``channel 1``)."""
    if len(shape) <= 1:
        return [""]
    inner = [int(d) for d in shape[1:]]
    if len(shape) == 2 or (len(shape) == 3 and count == int(np.prod(inner))):
        return [str(list(np.unravel_index(i, inner))).replace("np.int64(", "").replace(")", "") if len(inner) > 1
                else f"[{i}]" for i in range(count)]
    return [f"channel {i}" for i in range(count)]


def noise_of(ref: np.ndarray, perturbed: np.ndarray) -> np.ndarray:
    """Float noise per column: the 99th-percentile change of the model's own output when its float inputs move by
    one unit in the last place (what float32 arithmetic at these magnitudes cannot tell apart)."""
    d = columns(np.abs(np.asarray(perturbed, np.float64) - np.asarray(ref, np.float64)))
    return np.percentile(d, 99, axis=0) if d.shape[0] else np.zeros(d.shape[1])


def resolution_of(noise: dict | None, name: str) -> tuple | None:
    """(per cell, how far output ``name`` of the model moves when its continuous inputs move within the recipe's
    input resolution; the resolution's name) from a noise dict, or None."""
    for key, value in (noise or {}).items():
        head, sep, resolution = str(key).rpartition("@")
        if sep and head == name and RESOLUTION_KEY.format(name=name, resolution=resolution) == key:
            return np.asarray(value, np.float64), resolution
    return None


def _moved(j: Judged) -> np.ndarray | None:
    """The model's own move per cell at the recipe's input resolution, shaped like ``j.ref`` (rows it was not
    measured on: 0), or None."""
    if j.moved is None:
        return None
    m = np.asarray(j.moved[0], np.float64)
    if m.ndim != j.ref.ndim or m.shape[1:] != j.ref.shape[1:] or m.shape[0] > j.ref.shape[0]:
        return None
    out = np.zeros(j.ref.shape)
    out[:m.shape[0]] = np.nan_to_num(m, nan=np.inf)
    return out


def _unstable_words(j: Judged, n: int, total: int, unit: str) -> str:
    return f"{n} of {total} {unit} unstable at {j.moved[1]} input resolution: not judged"


def _cannot_judge(j: Judged, n: int, total: int, unit: str) -> str:
    return (f"; but {n} of {total} {unit} are unstable at {j.moved[1]} input resolution (the model's own output "
            f"moves that far when its inputs move within one {j.moved[1]} step): these inputs cannot judge the bundle "
            "(synthetic ones: pass --data with real inputs; real ones: the model is this sensitive, a recipe that "
            "keeps its inputs finer, such as float32, can be judged)")


def _noise(j: Judged, cols: int) -> np.ndarray:
    if j.noise is not None and np.size(j.noise) == cols:
        return np.asarray(j.noise, np.float64).ravel()
    return np.zeros(cols)


def _pct(x: float) -> str:
    return f"{100 * x:.3g}%"


# ------------------------------------------------------------------------------------------- common criteria
@criterion()
def finite(j: Judged) -> Finding | None:
    """No NaN/Inf in the bundle's output where the reference is finite."""
    bad = ~np.isfinite(j.got) & np.isfinite(j.ref)
    n = int(bad.sum())
    return Finding("finite", n, 0, False, n == 0, f"{n} NaN/Inf", "" if n == 0 else
                   f"{n} of {bad.size} values are NaN/Inf where the model's are finite")


@criterion()
def not_stuck(j: Judged) -> Finding | None:
    """The output (or, for values, any column) is not constant where the reference varies: an output stuck at
    the zero point of its quantization computes nothing."""
    if j.ref.shape[0] < 2 or j.kind == "integer":
        return None
    ref_c, got_c = columns(j.ref), columns(j.got)
    varies = np.nanstd(ref_c, axis=0) > (_column_limits(j)[2] if j.kind == "values" else 0)
    stuck = varies & (np.nanstd(got_c, axis=0) == 0)
    if j.kind != "values":     # a whole output stuck; single columns may be legitimately constant per class
        stuck_all = bool(varies.any() and np.nanstd(got_c) == 0)
        return Finding("stuck", float(stuck_all), 0, False, not stuck_all, "varies" if not stuck_all else
                       "constant", "" if not stuck_all else
                       f"output is constant ({float(got_c.flat[0]):.4g}) but the reference is not (stuck at the "
                       "zero point?)")
    n = int(stuck.sum())
    names = column_names(j.ref.shape, ref_c.shape[1])
    which = ", ".join(names[i] or "the output" for i in np.flatnonzero(stuck)[:4])
    return Finding("stuck", n, 0, False, n == 0, f"{n} stuck columns", "" if n == 0 else
                   f"{n} of {stuck.size} columns are constant in the bundle but vary in the model ({which}; "
                   "stuck at the zero point?)", {"columns": np.flatnonzero(stuck)[:20].tolist()})


# ------------------------------------------------------------------------------------------- decisions
def _tie_eps(top: np.ndarray, noise: float | np.ndarray) -> np.ndarray:
    """Two reference values closer than this tie: float noise, never a recipe's allowance."""
    return np.maximum(4.0 * np.asarray(noise), 64 * EPS32 * np.abs(top))


def decisions(j: Judged) -> dict | None:
    """The decisions of the output, reference vs bundle: ``ref``, ``got`` (one per row, pixel or element),
    ``tied`` (reference ties within float noise: not judged), ``gap`` (the reference's margin of each
    decision, in output units), or None when the kind has no decisions."""
    if j.kind in ("class-scores", "pixel-classes"):
        if j.ref.ndim < 2 or j.ref.shape[-1] < 2:
            return None
        r = j.ref.reshape(-1, j.ref.shape[-1])
        g = j.got.reshape(-1, j.got.shape[-1])
        part = np.sort(r, axis=1)[:, -2:]
        gap = part[:, 1] - part[:, 0]
        noise = _noise(j, columns(j.ref).shape[1])
        per_class = noise.max() if noise.size else 0.0
        m = _moved(j)
        if m is not None:     # the top two may each move that far: a margin within both is not held
            m = m.reshape(-1, j.ref.shape[-1])
            order = np.argsort(r, axis=1)[:, -2:]
            m = np.take_along_axis(m, order, axis=1).sum(1)
        return {"ref": r.argmax(1), "got": g.argmax(1), "gap": gap, "tied": gap <= _tie_eps(part[:, 1], per_class),
                "unstable": None if m is None else gap <= m}
    if j.kind == "probabilities":
        t = _threshold(j.tol)
        r, g = j.ref.ravel(), j.got.ravel()
        shape = columns(j.ref).shape
        noise = _noise(j, shape[1])
        per = np.broadcast_to(noise, shape).ravel() if noise.size == shape[1] else np.zeros_like(r)
        gap = np.abs(r - t)
        m = _moved(j)
        return {"ref": r >= t, "got": g >= t, "gap": gap, "tied": gap <= _tie_eps(np.full_like(r, t), per),
                "unstable": None if m is None else gap <= m.ravel()}
    if j.kind == "integer":
        if j.ref.ndim == 2 and _option(j.tol, "sets"):
            r = np.sort(j.ref, axis=1)
            g = np.sort(j.got, axis=1)
            same = np.all(r == g, axis=1)
            return {"ref": same, "got": np.ones_like(same), "gap": np.full(same.shape, np.inf),
                    "tied": np.zeros(same.shape, bool)}
        r, g = j.ref.ravel(), j.got.ravel()
        return {"ref": r, "got": g, "gap": np.full(r.shape, np.inf), "tied": np.zeros(r.shape, bool)}
    return None


def _threshold(tol) -> float:
    value = _option(tol, "threshold")
    return 0.5 if value is None else float(value)


def _option(tol, key: str):
    for part in (getattr(tol, "kind_options", "") or "").split(","):
        k, _, v = part.partition("=")
        if k.strip() == key:
            return v.strip() or True
    return None


@criterion("class-scores", "probabilities", "pixel-classes", "integer")
def flips(j: Judged) -> Finding | None:
    """The fraction of decisions that change, over every row (pixel, element) whose reference does not tie
    within float noise, at most ``tol.flips``; a change on a row whose margin the model itself cannot hold at the
    recipe's input resolution (``decisions()["unstable"]``) is counted apart and not held against the bundle,
    unless more than :data:`UNSTABLE_MAX` of the rows are such. When every flip is on a reference margin below one
    output step, the reason says so and names the ways out."""
    d = decisions(j)
    if d is None or d["ref"].size == 0:
        return None
    unstable = d.get("unstable")
    unstable = np.zeros(d["tied"].shape, bool) if unstable is None else unstable & ~d["tied"]
    shaky = int(unstable.sum())
    too_many = shaky > UNSTABLE_MAX * unstable.size        # then no flip is excused, as without the measure
    judged = ~d["tied"]                                    # every row is judged ...
    changed = (d["ref"] != d["got"]) & judged
    # ... and a change on a row the model itself cannot hold at the recipe's input resolution is not held against
    # the bundle (the input's own quantization can flip it)
    excused = changed & unstable if not too_many else np.zeros_like(changed)
    flipped = changed & ~excused
    n, k, e = int(judged.sum()), int(flipped.sum()), int(excused.sum())
    unit = {"class-scores": "rows", "pixel-classes": "pixels", "probabilities": "decisions",
            "integer": "rows" if j.ref.ndim == 2 and _option(j.tol, "sets") else "values"}[j.kind]
    frac = k / n if n else 0.0
    limit = float(j.tol.flips)
    passed = frac <= limit
    tied = int(d["tied"].sum())
    words = (f"{e} more change on {unit} the model itself cannot hold at {j.moved[1]} input resolution, not held "
             "against the bundle") if e else ""
    text = f"{n - k - e}/{n} {unit} agree" + (f" ({tied} reference ties not judged)" if tied else "") + \
        (f" ({words})" if words else "")
    detail = {"judged": n, "flipped": k, "excused": e, "ties": tied, "unit": unit, "unstable": 0 if too_many else shaky}
    if words:
        detail["unstable_text"] = words
    reason = ""
    if not passed:
        reason = f"{k} of {n} {unit} change their decision ({_pct(frac)} > {_pct(limit)})"
        if j.step and k and np.all(d["gap"][flipped] < j.step):
            reason += (f"; every one is on a {unit[:-1]} whose reference margin is below one output step "
                       f"({j.step:.3g}): the quantized output cannot tell them apart; ways out: a recipe with a finer output "
                       "step (see the hint), --quantize auto (keeps the ops that break in float), or `edgepack "
                       "diagnose` to find the op")
            detail["below_step"] = True
        if too_many:
            reason += _cannot_judge(j, shaky, unstable.size, unit)
    return Finding("decisions", frac, limit, False, passed, text, reason, detail)


def _label_decisions(j: Judged, labels: np.ndarray):
    """(model's, bundle's, label) decisions comparable with ``labels``, or None when the labels do not fit."""
    y = np.asarray(labels)
    if j.kind in ("class-scores", "pixel-classes"):
        if y.shape == j.ref.shape and y.dtype.kind == "f":        # one-hot
            y = y.argmax(-1)
        if y.shape != j.ref.shape[:-1] or y.dtype.kind not in "iub":
            return None
        return j.ref.argmax(-1).ravel(), j.got.argmax(-1).ravel(), y.ravel()
    if j.kind == "probabilities":
        if y.size != j.ref.size:
            return None
        t = _threshold(j.tol)
        return (j.ref >= t).ravel(), (j.got >= t).ravel(), y.ravel() >= 0.5
    if j.kind == "integer":
        if y.size != j.ref.size or _option(j.tol, "sets"):
            return None
        return j.ref.ravel(), j.got.ravel(), y.ravel()
    return None


@criterion("class-scores", "probabilities", "pixel-classes", "integer")
def accuracy(j: Judged) -> Finding | None:
    """With labels: accuracy of the model and of the bundle; the drop (points) at most ``tol.max_drop``."""
    if j.labels is None:
        return None
    got = _label_decisions(j, j.labels)
    if got is None:
        return Finding("accuracy", 0.0, 0.0, False, True, "labels do not fit this output",
                       detail={"skipped": f"labels of shape {list(np.shape(j.labels))} do not fit output "
                                          f"{list(j.ref.shape)}"})
    ref, cand, y = got
    acc_ref, acc_got = float(np.mean(ref == y)), float(np.mean(cand == y))
    drop = 100.0 * (acc_ref - acc_got)
    limit = float(j.tol.max_drop)
    passed = drop <= limit + 1e-9
    text = f"accuracy {acc_ref:.4f} → {acc_got:.4f} ({-drop:+.1f} pt)"
    return Finding("accuracy", drop, limit, False, passed, text,
                   "" if passed else f"accuracy drops {drop:.1f} pt ({acc_ref:.4f} → {acc_got:.4f}; limit {limit:g} pt)",
                   {"reference": acc_ref, "bundle": acc_got})


@criterion("class-scores", "probabilities", "pixel-classes")
def scores(j: Judged) -> Finding | None:
    """The scores themselves (a user may threshold a confidence): the 99th-percentile error at most
    ``atol + rtol * max|ref| + steps * step``."""
    e = np.abs(j.ref - j.got).ravel()
    if not e.size or not np.all(np.isfinite(e)):
        return None
    p99 = float(np.percentile(e, 99))
    limit = float(j.tol.atol + j.tol.rtol * np.max(np.abs(j.ref)) + (j.tol.steps * j.step if j.step else 0.0))
    passed = p99 <= limit
    return Finding("scores", p99, limit, False, passed, f"p99 score error {p99:.3g} ≤ {limit:.3g}",
                   "" if passed else f"p99 score error {p99:.3g} > {limit:.3g} (max {float(e.max()):.3g})")


# ------------------------------------------------------------------------------------------- embeddings
@criterion("embedding")
def row_cosine(j: Judged) -> Finding | None:
    """Cosine of every row (bundle vs model): the lowest 1% at least ``tol.cosine_min``."""
    r = j.ref.reshape(j.ref.shape[0], -1)
    g = j.got.reshape(j.got.shape[0], -1)
    nr, ng = np.linalg.norm(r, axis=1), np.linalg.norm(g, axis=1)
    ok = (nr > 0) & (ng > 0)
    if not ok.any():
        return None
    cos = np.sum(r[ok] * g[ok], axis=1) / (nr[ok] * ng[ok])
    low = float(np.percentile(cos, 1))
    limit = float(j.tol.cosine_min)
    return Finding("row cosine", low, limit, True, low >= limit, f"row cosine p1 {low:.5f}",
                   "" if low >= limit else f"1% of rows have cosine below {low:.5f} (< {limit:g}; worst "
                   f"{float(cos.min()):.5f})")


MAX_NEIGHBOUR_ROWS = 2000


@criterion("embedding")
def neighbours(j: Judged) -> Finding | None:
    """Nearest neighbour (by cosine, within the data) of every row: the fraction that changes at most
    ``tol.neighbours``; rows whose reference neighbours tie within float noise are not judged."""
    n = j.ref.shape[0]
    if n < 3:
        return None
    idx = np.arange(n) if n <= MAX_NEIGHBOUR_ROWS else np.linspace(0, n - 1, MAX_NEIGHBOUR_ROWS).astype(int)

    def sims(a):
        a = a.reshape(a.shape[0], -1)[idx]
        a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-30)
        s = a @ a.T
        np.fill_diagonal(s, -np.inf)
        return s
    sr, sg = sims(j.ref), sims(j.got)
    top = np.sort(sr, axis=1)[:, -2:]
    tied = (top[:, 1] - top[:, 0]) <= 64 * EPS32
    changed = (sr.argmax(1) != sg.argmax(1)) & ~tied
    judged = int((~tied).sum())
    frac = float(changed.sum()) / judged if judged else 0.0
    limit = float(j.tol.neighbours)
    passed = frac <= limit
    return Finding("neighbours", frac, limit, False, passed,
                   f"{judged - int(changed.sum())}/{judged} nearest neighbours kept",
                   "" if passed else f"{int(changed.sum())} of {judged} rows get another nearest neighbour "
                   f"({_pct(frac)} > {_pct(limit)})", {"judged": judged, "changed": int(changed.sum())})


# ------------------------------------------------------------------------------------------- values
def _column_limits(j: Judged):
    """(ref columns, got columns, limit per column, base spread per column), computed once per output (the
    stuck, column-error and R² criteria all use them)."""
    if "limits" not in j.cache:
        j.cache["limits"] = _limits(j)
    return j.cache["limits"]


def _limits(j: Judged):
    rc, gc = columns(j.ref), columns(j.got)
    spread = np.std(rc, axis=0)
    mag = np.sqrt(np.mean(rc ** 2, axis=0))
    base = np.where(spread > 1e-3 * mag, spread, mag)           # a constant column: against its magnitude
    nonzero = base[base > 0]
    floor = 0.01 * float(np.median(nonzero)) if nonzero.size else 0.0
    base = np.where(base > 0, base, floor)
    limit = np.maximum(j.tol.spread * base + 4.0 * _noise(j, rc.shape[1]), np.finfo(np.float64).tiny)
    m = _moved(j)
    j.cache["unstable"] = np.zeros(rc.shape, bool) if m is None else columns(m) > limit   # cells the model moves
    return rc, gc, limit, base


def _unstable_cells(j: Judged) -> np.ndarray:
    """The cells (of :func:`columns`) not judged: those the model itself moves beyond their column's limit at the
    recipe's input resolution; none when more than :data:`UNSTABLE_MAX` of them are (then these inputs cannot tell
    the bundle's faults from the model's own, and every cell is judged, as without the measure)."""
    unstable = j.cache["unstable"]
    return np.zeros_like(unstable) if unstable.sum() > UNSTABLE_MAX * unstable.size else unstable


@criterion("values")
def column_error(j: Judged) -> Finding | None:
    """Each column's 99th-percentile error at most ``tol.spread`` times that column's spread (its standard
    deviation over the data; its magnitude when it is constant), plus 4x the measured float noise."""
    if not j.ref.size:
        return None
    rc, gc, limit, _ = _column_limits(j)
    e = np.abs(rc - gc)
    if not np.all(np.isfinite(e)):
        return None
    unstable, total = _unstable_cells(j), j.cache["unstable"]
    shaky, too_many = int(total.sum()), unstable is not total    # too many: every cell judged, as without the measure
    kept = np.where(unstable, np.nan, e)
    p99 = np.where(unstable.all(axis=0), 0.0, np.nanpercentile(np.where(unstable.all(axis=0), 0.0, kept), 99, axis=0))
    ratio = p99 / limit
    worst = int(np.argmax(ratio))
    names = column_names(j.ref.shape, rc.shape[1])
    where = f" (column {names[worst]})" if names[worst] else ""
    passed = bool(ratio[worst] <= 1.0)
    bad = int((ratio > 1).sum())
    return Finding("column error", float(p99[worst]), float(limit[worst]), False, passed,
                   f"{rc.shape[1] - bad}/{rc.shape[1]} columns within limits" +
                   (f" ({_unstable_words(j, shaky, total.size, 'cells')})" if shaky and not too_many else ""),
                   "" if passed else f"{bad} of {rc.shape[1]} columns err beyond their own spread: worst{where} p99 "
                   f"error {p99[worst]:.3g} > {limit[worst]:.3g} (max {float(e[:, worst].max()):.3g})" +
                   (_cannot_judge(j, shaky, total.size, "cells") if too_many else ""),
                   {"columns": int(rc.shape[1]), "failing": bad, "worst": names[worst],
                    "unstable": 0 if too_many else shaky,
                    **({"unstable_text": _unstable_words(j, shaky, total.size, "cells")} if shaky and not too_many
                       else {})})


@criterion("values")
def r_squared(j: Judged) -> Finding | None:
    """R² of each column (bundle against model, the error energy that the measured float noise explains left
    out) at least ``tol.r2_min``, over all rows and over the bulk (the rows between the column's 5th and 95th
    percentile): a few large rows cannot hide a bulk the bundle collapses (an embedding table whose ordinary
    rows int8 crushes to one value). Columns whose spread is within their error limit (constant, or below float
    noise) are judged by :func:`column_error` alone; the bulk, where it varies beyond float noise."""
    if j.ref.shape[0] < 2:
        return None
    rc, gc, limit, _ = _column_limits(j)
    if not np.all(np.isfinite(gc)):
        return None
    noise = 4.0 * _noise(j, rc.shape[1])
    names = column_names(j.ref.shape, rc.shape[1])

    def r2(mask):
        n = mask.sum(axis=0)
        err = np.where(mask, (gc - rc) ** 2, 0.0).sum(axis=0)
        mean = np.where(mask, rc, 0.0).sum(axis=0) / np.maximum(n, 1)
        sst = np.where(mask, (rc - mean) ** 2, 0.0).sum(axis=0)
        sse = np.maximum(0.0, err - n * noise ** 2)                 # beyond float noise
        return 1.0 - sse / np.where(sst > 0, sst, 1.0), np.sqrt(sst / np.maximum(n, 1))
    everything = ~_unstable_cells(j)                                # cells the model cannot hold are not judged
    full, spread = r2(everything)
    lo, hi = np.percentile(rc, 5, axis=0), np.percentile(rc, 95, axis=0)
    bulk, bulk_spread = r2((rc >= lo) & (rc <= hi) & everything) if rc.shape[0] >= 20 else (full, spread)
    full = np.where(spread > limit, full, 1.0)
    bulk = np.where((bulk_spread > np.maximum(noise, 1e-30)) & (spread > limit), bulk, 1.0)
    if not (spread > limit).any():
        return None
    both = np.minimum(full, bulk)
    worst = int(np.argmin(both))
    where = f" (column {names[worst]})" if names[worst] else ""
    part = " in the bulk of the data" if bulk[worst] < full[worst] else ""
    limit_r2 = float(j.tol.r2_min)
    passed = bool(both[worst] >= limit_r2)
    return Finding("R²", float(both[worst]), limit_r2, True, passed, f"R² ≥ {float(both[worst]):.4f}",
                   "" if passed else f"R² against the model {float(both[worst]):.4f} < {limit_r2:g}{part}{where}",
                   {"all": float(full[worst]), "bulk": float(bulk[worst])})


# ------------------------------------------------------------------------------------------- rare classes
#: A class that wins at least this share of the rows dominates: the argmax decisions say little about the others.
DOMINANT_SHARE = 0.9


def _rare_r2_min(tol) -> float:
    """The R² a rare class's scores must keep: the recipe's ``r2_min`` with half its room below 1 (int8 0.95,
    dynamic 0.99): a rare column's spread is made of its few active rows, the very rows a user acts on."""
    return 1.0 - (1.0 - float(tol.r2_min)) / 2.0


#: A class the model decides on at least this many rows (pixels, positions) must be decided by the bundle at least once.
LOST_MIN = 3


@criterion("class-scores", "pixel-classes")
def lost_classes(j: Judged) -> Finding | None:
    """Classes the model decides (argmax, on rows that do not tie within float noise) on at least :data:`LOST_MIN`
    rows that the bundle never decides: a class that vanishes from the bundle's answers (its recall is 0), whatever
    the flip budget allows. None when there are no decisions."""
    d = decisions(j)
    if d is None or d["ref"].size == 0 or j.ref.shape[-1] < 2:
        return None
    c = j.ref.shape[-1]
    keep = ~d["tied"]
    model = np.bincount(d["ref"][keep].astype(int), minlength=c)
    bundle = np.bincount(d["got"][keep].astype(int), minlength=c)
    lost = [k for k in range(c) if model[k] >= LOST_MIN and bundle[k] == 0]
    decided = [k for k in range(c) if model[k] >= LOST_MIN]
    unit = "rows" if j.kind == "class-scores" else "pixels" if j.ref.ndim == 4 else "positions"
    n = int(keep.sum())
    text = f"{len(decided) - len(lost)}/{len(decided)} classes the model decides are decided by the bundle"
    detail = {"lost": lost, "model": [int(v) for v in model], "bundle": [int(v) for v in bundle], "judged": n}
    if not lost:
        return Finding("lost classes", 0, 0, False, True, text, "", detail)
    names = column_names((1, c), c)
    words = ", ".join(f"class {k} ({names[k]}; the model decides it on {model[k]} of {n} {unit})" for k in lost[:4])
    reason = (f"the bundle never decides {words}: that class vanishes from its answers; ways out: calibrate on data "
              "with more of that class, a recipe with more precision (int16x8, dynamic, float16), or --quantize auto")
    return Finding("lost classes", float(len(lost)), 0, False, False, text, reason, detail)


@criterion("class-scores", "pixel-classes")
def rare_class_scores(j: Judged) -> Finding | None:
    """When one class wins at least :data:`DOMINANT_SHARE` of the rows (pixels, positions), the argmax decisions
    judge that class alone: the other classes' scores (a splice site, a lesion: what a user thresholds or ranks)
    are judged column by column, R² of each rare class's scores (bundle against model; the error within one
    output step, or float noise, left out: a quantized output cannot do better) at least :func:`_rare_r2_min`.
    The finding also counts each rare class's decisions at the threshold (0.5 unless set). Columns that never
    rise above a few output steps (the recipe's ``steps``) or float noise are not judged. None when no class
    dominates or there are fewer than 20 rows."""
    if j.ref.ndim < 2 or j.ref.shape[-1] < 2:
        return None
    c = j.ref.shape[-1]
    r = j.ref.reshape(-1, c)
    g = j.got.reshape(-1, c)
    if r.shape[0] < 20 or not np.all(np.isfinite(g)):
        return None
    share = np.bincount(r.argmax(1), minlength=c) / r.shape[0]
    top = int(np.argmax(share))
    if share[top] < DOMINANT_SHARE:
        return None
    noise = _noise(j, columns(j.ref).shape[1])
    per_class = noise.reshape(-1, c).max(0) if noise.size and noise.size % c == 0 else np.zeros(c)
    floor = max(float(j.step or 0.0), 0.0)
    t = _threshold(j.tol)
    limit = _rare_r2_min(j.tol)
    names = column_names((1, c), c)
    rows = []
    for k in range(c):
        if k == top:
            continue
        rk, gk = r[:, k], g[:, k]
        if float(np.ptp(rk)) <= max(max(float(j.tol.steps), 2.0) * floor, 8.0 * per_class[k]) \
                or float(np.std(rk)) == 0.0:
            continue                                              # never above a few output steps / float noise
        sst = float(np.sum((rk - rk.mean()) ** 2))
        # the error beyond one output step (what a quantized output cannot do better than) and float noise
        sse = float(np.sum(np.maximum(0.0, np.abs(gk - rk) - max(floor, 4.0 * per_class[k])) ** 2))
        r2 = 1.0 - sse / sst
        yes_m, yes_b = rk >= t, gk >= t
        rows.append({"class": k, "column": names[k], "r2": float(r2), "wins": int(round(share[k] * r.shape[0])),
                     "model_yes": int(yes_m.sum()), "bundle_yes": int(yes_b.sum()), "both_yes": int((yes_m & yes_b).sum()),
                     "max_error": float(np.max(np.abs(gk - rk)))})
    if not rows:
        return None
    worst = min(rows, key=lambda x: x["r2"])
    passed = worst["r2"] >= limit
    n = r.shape[0]
    unit = "rows" if j.kind == "class-scores" else "positions" if j.ref.ndim == 3 else "pixels"
    said = f"class {worst['class']} at p ≥ {t:g}: model {worst['model_yes']}, bundle {worst['bundle_yes']}, both " \
           f"{worst['both_yes']}"
    wins = int(round(share[top] * n))
    text = (f"rare classes ({len(rows)} of {c}; class {top} wins {wins}/{n} {unit}): score R² ≥ "
            f"{worst['r2']:.4f} (class {worst['class']})")
    reason = "" if passed else (
        f"class {top} wins {wins} of {n} {unit}, so the decisions judge it alone; the rare class "
        f"{worst['class']}'s scores (column {worst['column']}, {worst['wins']} {unit} won) keep R² {worst['r2']:.4f} "
        f"< {limit:g} against the model (max error {worst['max_error']:.3g}; {said}): thresholds and rankings on "
        "it change; ways out: --quantize auto, or a recipe with more precision (int16x8, dynamic, float16), or "
        "`edgepack diagnose` to find the op")
    return Finding("rare-class scores", worst["r2"], limit, True, passed, text, reason,
                   {"dominant": top, "share": float(share[top]), "judged": n, "classes": rows})


# ------------------------------------------------------------------------------------------- saturation
#: The integer range of each quantized dtype an output can be stored in.
QRANGE = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767), "int32": (-2 ** 31, 2 ** 31 - 1)}


class Step(float):
    """An output's quantization step (a float, in the output's units: what ``Judged.step`` holds) that also knows
    the output's representable range: ``low``/``high`` = ``scale * (qmin - zero_point)`` and
    ``scale * (qmax - zero_point)`` of its integer ``dtype``; a calibrated recipe sets them from the calibration
    data's outputs. A plain float step has no range (``low``/``high`` None)."""
    low: float | None
    high: float | None

    def __new__(cls, scale: float, zero_point: int | None = 0, dtype: str | None = "int8"):
        obj = super().__new__(cls, float(scale))
        obj.zero_point, obj.dtype = int(zero_point or 0), str(dtype or "")
        q = QRANGE.get(obj.dtype)
        obj.low, obj.high = (None, None) if q is None else (float(scale) * (q[0] - obj.zero_point),
                                                            float(scale) * (q[1] - obj.zero_point))
        return obj

    def __reduce__(self):
        return (Step, (float(self), self.zero_point, self.dtype))


def bounds(step) -> tuple[float, float] | None:
    """(low, high) of an output whose ``step`` is a :class:`Step` with a range, else None."""
    low, high = getattr(step, "low", None), getattr(step, "high", None)
    return None if low is None or high is None else (float(low), float(high))


@criterion("values")
def saturated(j: Judged) -> Finding | None:
    """Rows where the bundle's output sits at a bound of its quantized range (within half a step) while the
    model's value lies beyond that bound by more than the column's error limit (and one step): the output was
    calibrated on a narrower range than the model reaches, and every input beyond it gets the bound, silently.
    Any such row refuses (no budget: it is not noise but a cap on the answers, and the verification data
    showing one means real inputs reach past the calibration range). None for outputs without a quantized range
    (float bundles)."""
    b = bounds(j.step)
    if b is None or not j.ref.size:
        return None
    low, high = b
    rc, gc, limit, _ = _column_limits(j)
    if not np.all(np.isfinite(gc)):
        return None
    half = 0.5 * float(j.step) + 64 * EPS32 * max(abs(low), abs(high))
    beyond = np.maximum(limit, float(j.step))
    at_high = (np.abs(gc - high) <= half) & (rc > high + beyond)
    at_low = (np.abs(gc - low) <= half) & (rc < low - beyond)
    cells = at_high | at_low
    row_hit = cells.reshape(j.ref.shape[0], -1).any(axis=1)      # a sample with any capped value
    n, k = int(j.ref.shape[0]), int(row_hit.sum())
    cols = np.flatnonzero(cells.any(axis=0))
    names = column_names(j.ref.shape, rc.shape[1])
    reached_hi = float(rc[at_high].max()) if at_high.any() else float(rc.max())
    reached_lo = float(rc[at_low].min()) if at_low.any() else float(rc.min())
    text = f"{n - k}/{n} rows inside the output's range [{low:.4g}, {high:.4g}]"
    detail = {"rows": k, "judged": n, "cells": int(cells.sum()), "low": low, "high": high,
              "columns": [names[i] for i in cols[:8]], "model_max": float(rc.max()), "model_min": float(rc.min())}
    if not k:
        return Finding("saturation", 0, 0, False, True, text, "", detail)
    side = []
    if at_high.any():
        side.append(f"max output was {high:.4g}; the model reached {reached_hi:.4g}")
    if at_low.any():
        side.append(f"min output was {low:.4g}; the model reached {reached_lo:.4g}")
    where = ", ".join(n_ or "the output" for n_ in detail["columns"][:4])
    hint = (f"calibrate on data covering the outputs' full range (the calibration data's {' and '.join(side)}), or "
            "--quantize dynamic/float16 (float outputs, no range)")
    detail["hint"] = hint
    reason = (f"{k} of {n} rows ({int(cells.sum())} values, column {where}) sit at the bound of the output's "
              f"quantized range [{low:.4g}, {high:.4g}] while the model's value lies beyond it (by up to "
              f"{float(np.max(np.where(at_high, rc - high, 0.0) + np.where(at_low, low - rc, 0.0))):.3g}): these rows "
              f"get a capped answer; way out: {hint}")
    return Finding("saturation", k, 0, False, False, text, reason, detail)


# ------------------------------------------------------------------------------------------- inference
#: The graph op behind an output (past DEQUANTIZE, RESHAPE, CAST...) that tells its kind.
OP_KINDS = {"SOFTMAX": "class-scores", "LOG_SOFTMAX": "class-scores", "LOGISTIC": "probabilities",
            "ARG_MAX": "integer", "ARG_MIN": "integer", "TOPK_V2": "integer", "L2_NORMALIZATION": "embedding",
            "MEAN": "embedding", "REDUCE_MAX": "embedding"}


def infer_kind(ref: np.ndarray, labels: np.ndarray | None = None, op: str | None = None) -> tuple[str, str, str]:
    """(kind, options, why) of an output from the op that computes it (``op``, see
    :func:`packager.convert.inspect.output_ops`), its dtype and values, and the labels given for it. An
    output that fits no rule is ``values``, and ``why`` says so."""
    ref = np.asarray(ref)
    nd = ref.ndim
    spatial = nd >= 3
    if ref.dtype.kind in "iub" and op != "DEQUANTIZE":
        return "integer", "sets" if op == "TOPK_V2" and nd == 2 else "", f"{ref.dtype.name} output" + \
            (f" of {op}" if op else "")
    kind = OP_KINDS.get(op or "")
    if kind == "class-scores" and nd >= 2 and ref.shape[-1] > 1:
        return ("pixel-classes" if spatial else "class-scores"), "", f"{op} over {ref.shape[-1]} classes"
    if kind == "probabilities":
        return "probabilities", "", f"{op} (decisions at 0.5)"
    if kind == "embedding" and nd == 2 and ref.shape[1] >= 8:
        return "embedding", "", f"{op} rows of {ref.shape[1]}"
    y = None if labels is None else np.asarray(labels)
    if y is not None and nd >= 2 and ref.shape[-1] > 1 and y.dtype.kind in "iub" and y.size \
            and y.shape == ref.shape[:-1] and y.min() >= 0 and y.max() < ref.shape[-1]:
        return ("pixel-classes" if spatial else "class-scores"), "", \
            f"labels hold classes 0..{ref.shape[-1] - 1} of its last axis"
    if nd >= 2 and ref.shape[-1] > 1 and ref.size and np.all(ref >= -1e-6) \
            and np.allclose(ref.sum(-1), 1.0, atol=1e-3):
        return ("pixel-classes" if spatial else "class-scores"), "", "rows are probabilities summing to 1"
    if nd == 2 and ref.shape[1] >= 8 and ref.shape[0] >= 2 \
            and np.allclose(np.linalg.norm(ref.astype(np.float64), axis=1), 1.0, atol=1e-3):
        return "embedding", "", "rows have unit norm"
    return "values", "", "no decision could be inferred: judged as values, column by column " \
        "(mark it with --output-kind NAME:KIND)"
