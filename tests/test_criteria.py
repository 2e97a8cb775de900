"""The verdict by output kind, on arrays (no TensorFlow): each sentence of the verdict issue as a test. The same
cases through real converted models, checked by a raw interpreter, are in tests/test_verdict_models.py."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from packager import criteria
from packager.compare import compare_all, compare_output, with_kinds
from packager.criteria import infer_kind, noise_of
from packager.errors import UsageError
from packager.recipes import Tolerance, get_recipe, list_recipes, resolve_tolerance

INT8 = get_recipe("int8").tolerance
I16 = get_recipe("int16x8").tolerance
F32 = get_recipe("float32").tolerance
DYN = get_recipe("dynamic").tolerance


def kind(tol: Tolerance, k: str, options: str = "") -> Tolerance:
    return replace(tol, kind=k, kind_options=options, kind_source="test")


def softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_low_confidence_classifier_is_judged_on_every_row_and_by_accuracy():
    """The wrong MATCH: 21% of decisions flip on rows whose top-two gap is below the old allowance."""
    rng = np.random.default_rng(0)
    n, c = 397, 10
    y = rng.integers(0, c, n)
    logits = rng.normal(0, 0.05, (n, c))
    logits[np.arange(n), y] += 0.12                     # low confidence: top-two gaps ~0.01 in probability
    ref = softmax(logits)
    got = ref.copy()
    flip = rng.random(n) < 0.21
    second = np.argsort(ref, 1)[:, -2]
    got[flip, second[flip]] = ref[flip].max(1) + 0.002   # the runner-up wins on 21% of rows
    m = compare_output("probs", ref, got, kind(INT8, "class-scores"), labels=y)
    assert not m.passed
    d = m.finding("decisions")
    assert d["detail"]["judged"] == n and d["detail"]["flipped"] == int(flip.sum())   # every row judged
    assert m.accuracy_reference is not None and m.accuracy_candidate < m.accuracy_reference
    assert any("accuracy drops" in r for r in m.reasons) and any("change their decision" in r for r in m.reasons)
    ok = compare_output("probs", ref, ref + 1e-4, kind(INT8, "class-scores"), labels=y)
    assert ok.passed and ok.top1_agreement == 1.0


def test_mixed_scales_in_one_tensor_are_judged_per_column():
    """[N, 5]: 4 box coordinates in pixels and a score in [0, 1]; the bundle's score is 0 for every sample."""
    rng = np.random.default_rng(1)
    n = 200
    ref = np.concatenate([rng.uniform(5, 631, (n, 4)), rng.uniform(0, 1, (n, 1))], axis=1)
    got = ref + rng.normal(0, 1.0, ref.shape)
    got[:, 4] = 0.0
    m = compare_output("det", ref, got, kind(INT8, "values"))
    assert not m.passed
    text = " ".join(m.reasons)
    assert "[4]" in text and "R²" in text and "stuck" in text          # the score column is named
    assert m.max_abs_err < m.allowed_max_abs                            # the old rule said MATCH
    fine = ref + rng.normal(0, 1.0, ref.shape) * np.array([1, 1, 1, 1, 0.003])
    assert compare_output("det", ref, fine, kind(INT8, "values")).passed


def test_float32_is_judged_against_the_models_own_float_noise():
    """x ~ 1e4 + N(0,1), output x - mean(x): the bundle errs as much as float32 arithmetic at 1e4 does."""
    rng = np.random.default_rng(2)
    x = (1e4 + rng.normal(0, 1, (64, 16))).astype(np.float32)

    def model(a):  # float32 arithmetic, as the model computes it
        a = a.astype(np.float32)
        return a - a.mean(axis=1, keepdims=True, dtype=np.float32)
    exact = x.astype(np.float64) - x.astype(np.float64).mean(1, keepdims=True)
    ref = model(x)
    got = model(x[:, ::-1])[:, ::-1]                      # another summation order: another rounding
    got = got + (np.float32(1e4) * 2 ** -23) * rng.choice([-3, 3], got.shape)
    assert np.abs(ref - exact).max() > 1e-4               # the model itself is this far from the exact answer
    moved = np.nextafter(x, np.where(rng.random(x.shape) < 0.5, np.inf, -np.inf).astype(np.float32))
    noise = noise_of(ref, model(moved))
    tol = kind(F32, "values")
    assert not compare_output("y", ref, got, tol).passed, "control: without the noise the exact bundle is refused"
    m = compare_output("y", ref, got, tol, noise=noise)
    assert m.passed, m.reasons


def test_segmentation_three_outliers_do_not_refuse_good_pixels():
    rng = np.random.default_rng(3)
    ref = rng.normal(0, 2, (200, 16, 16, 4))
    got = ref + rng.normal(0, 0.01, ref.shape)
    got.flat[[5, 500, 5000]] += 3.0                       # three values far off
    m = compare_output("seg", ref, got, kind(I16, "pixel-classes"))
    assert m.passed, m.reasons
    d = m.finding("decisions")
    assert d["detail"]["judged"] + d["detail"]["ties"] == 200 * 16 * 16      # every pixel
    assert infer_kind(ref, rng.integers(0, 4, (200, 16, 16)))[0] == "pixel-classes"
    bad = ref.copy()
    bad[:, :8] = bad[:, :8][..., ::-1]                     # half the image gets other classes
    assert not compare_output("seg", ref, bad, kind(I16, "pixel-classes")).passed


def test_sigmoid_decisions_are_judged_at_the_threshold():
    rng = np.random.default_rng(4)
    ref = rng.uniform(0, 1, (300, 1))
    got = ref.copy()
    near = np.abs(ref[:, 0] - 0.5) < 0.05
    got[near, 0] = 1.0 - ref[near, 0]                      # ~10% of keep/drop decisions change
    m = compare_output("p", ref, got, kind(INT8, "probabilities"))
    assert not m.passed and "change their decision" in " ".join(m.reasons)
    m = compare_output("p", ref, got, kind(INT8, "probabilities", "threshold=0.9"))
    assert m.finding("decisions")["detail"]["flipped"] == 0            # another threshold, other decisions
    labels = (ref[:, 0] > 0.5).astype(int)
    m = compare_output("p", ref, ref, kind(INT8, "probabilities"), labels=labels)
    assert m.accuracy_reference == 1.0 and m.passed


def test_embedding_is_judged_by_nearest_neighbours_not_by_one_cosine():
    rng = np.random.default_rng(5)
    ref = rng.normal(0, 1, (300, 64))
    got = ref + rng.normal(0, 0.12, ref.shape)            # row cosine ~0.993
    m = compare_output("emb", ref, got, kind(INT8, "embedding"))
    assert m.finding("row cosine")["figure"] > 0.98
    changed = m.finding("neighbours")["detail"]["changed"] / m.finding("neighbours")["detail"]["judged"]
    assert changed > 0.1 and not m.passed
    assert m.accuracy_reference is None and m.top1_agreement is None  # never accuracy or top-1 of an embedding
    close = compare_output("emb", ref, ref + rng.normal(0, 0.001, ref.shape), kind(INT8, "embedding"),
                           labels=rng.integers(0, 64, 300))
    assert close.passed and close.accuracy_reference is None


def test_integer_outputs_are_exact_with_a_decision_budget():
    rng = np.random.default_rng(6)
    ref = rng.integers(0, 4, (50, 16, 16)).astype(np.int32)
    got = ref.copy()
    got.flat[: int(0.018 * got.size)] = (got.flat[: int(0.018 * got.size)] + 1) % 4      # 98.2% agree
    assert infer_kind(ref)[0] == "integer"
    m = compare_output("mask", ref, got, kind(INT8, "integer"))
    assert m.passed, m.reasons
    got.flat[: int(0.1 * got.size)] = 0
    assert not compare_output("mask", ref, got, kind(INT8, "integer")).passed
    top = np.array([[3, 1, 2], [0, 4, 5]])
    assert compare_output("ids", top, top[:, ::-1], kind(F32, "integer", "sets")).passed     # top-k as sets


def test_ties_in_the_reference_are_not_judged():
    """0/1 outputs (binary codes, masks): argmax over tied rows means nothing."""
    rng = np.random.default_rng(7)
    code = rng.integers(0, 2, (64, 32)).astype(np.float32)
    m = compare_output("code", code, code.copy(), kind(DYN, "class-scores"))
    assert m.passed
    assert infer_kind(code)[0] == "values"                 # 0/1 rows are not a softmax
    assert compare_output("code", code, code.copy(), F32).passed


def test_regression_on_a_baseline_needs_r_squared():
    """Values ~0.02 + tiny variation; a bundle that outputs the baseline: max error far below 5x the range."""
    rng = np.random.default_rng(8)
    ref = 0.02 + rng.normal(0, 1e-3, (400, 1))
    got = np.full_like(ref, 0.02) + rng.normal(0, 1e-3, ref.shape)        # R² ~ -1 against the model
    m = compare_output("y", ref, got, kind(I16, "values"))
    assert not m.passed and "R²" in " ".join(m.reasons)
    assert m.max_abs_err < m.allowed_max_abs                               # the old limit said MATCH


def test_yolo_head_scores_with_two_distinct_values_fail():
    rng = np.random.default_rng(9)
    boxes = rng.uniform(0, 640, (256, 4, 8))
    scores = rng.uniform(0, 1, (256, 5, 8))
    ref = np.concatenate([boxes, scores], axis=1)          # [N, 9, 8]
    got = ref + rng.normal(0, 0.5, ref.shape) * np.concatenate([np.ones(4), np.zeros(5)])[None, :, None]
    got[:, 4:] = np.where(ref[:, 4:] > 0.5, 2.5, 0.0)     # the scores collapse to two int8 steps
    m = compare_output("head", ref, got, INT8)
    assert m.kind == "values" and "no decision" in m.kind_source
    assert not m.passed


def test_tiny_regression_is_judged_relative_to_its_own_spread():
    rng = np.random.default_rng(10)
    ref = rng.normal(0, 1e-7, (500, 2))
    f16 = ref * (1 + rng.normal(0, 0.1, ref.shape))        # ~10% relative error (float16 subnormals)
    assert not compare_output("tiny", ref, f16, kind(get_recipe("float16").tolerance, "values")).passed
    ok = ref * (1 + rng.normal(0, 0.005, ref.shape))
    assert compare_output("tiny", ref, ok, kind(DYN, "values")).passed


def test_refusal_says_when_every_flip_is_below_one_output_step():
    rng = np.random.default_rng(11)
    ref = softmax(rng.normal(0, 3, (200, 5)))
    got = ref.copy()
    top2 = np.sort(ref, 1)
    close = np.flatnonzero(top2[:, -1] - top2[:, -2] < 1 / 256)[:20]
    for i in close:
        a, b = np.argsort(ref[i])[-2:]
        got[i, a], got[i, b] = ref[i, b], ref[i, a]
    tol = kind(replace(INT8, flips=0.0), "class-scores")
    m = compare_output("p", ref, got, tol, scale=1 / 256)
    assert not m.passed and "below one output step" in " ".join(m.reasons) and "finer output step" in " ".join(m.reasons)


def test_kind_inference_and_labels_for_multi_output():
    rng = np.random.default_rng(12)
    probs = softmax(rng.normal(0, 1, (50, 3)))
    box = rng.uniform(0, 100, (50, 4))
    y = rng.integers(0, 3, 50)
    tol = {"probs": INT8, "box": INT8}
    got = with_kinds(tol, {"probs": probs, "box": box}, {None: y}, {"probs": ("SOFTMAX", None), "box": (None, None)})
    assert got["probs"].kind == "class-scores" and got["box"].kind == "values"     # y never makes boxes classes
    logits = rng.normal(0, 1, (50, 3))
    got = with_kinds({"logits": INT8}, {"logits": logits}, {None: y})
    assert got["logits"].kind == "class-scores" and "labels" in got["logits"].kind_source
    assert with_kinds({"logits": INT8}, {"logits": logits})["logits"].kind == "values"
    unit = box / np.linalg.norm(box, axis=1, keepdims=True)
    assert infer_kind(np.hstack([unit, unit]) / np.sqrt(2))[0] == "embedding"
    assert infer_kind(box, op="LOGISTIC")[0] == "probabilities"
    ms = compare_all({"probs": probs, "box": box}, {"probs": probs, "box": box}, got | with_kinds(
        tol, {"probs": probs, "box": box}, {None: y}, {"probs": ("SOFTMAX", None)}), labels={None: y})
    assert ms[0].accuracy_reference is not None and ms[1].accuracy_reference is None   # never accuracy of a regression


def test_output_kind_overrides_and_old_recorded_tolerances():
    tol = resolve_tolerance(INT8, ["logits", "tags"], overrides={
        "kinds": ["logits:class-scores", "tags:probabilities:threshold=0.3"], "max_drop": ["2"], "flips": ["tags:0.05"]})
    assert tol["logits"].kind == "class-scores" and tol["logits"].kind_source == "--output-kind"
    assert tol["tags"].kind_options == "threshold=0.3" and tol["tags"].flips == 0.05 and tol["logits"].flips == INT8.flips
    assert tol["logits"].max_drop == 2.0
    for bad in (["logits:classes"], ["nope:values"], ["tags:probabilities:cutoff=1"]):
        with pytest.raises(UsageError):
            resolve_tolerance(INT8, ["logits", "tags"], overrides={"kinds": bad})
    # a bundle built before the new fields: its recorded tolerance (with the old top1_min) still verifies
    old = {"atol": 0.03, "rtol": 0.05, "steps": 8, "cosine_min": 0.98, "top1_min": 0.95}
    t = Tolerance.from_record(old, INT8)
    assert t.atol == 0.03 and t.flips == INT8.flips and t.r2_min == INT8.r2_min


def test_every_kind_has_criteria_and_every_recipe_every_field():
    for k in criteria.KINDS:
        assert criteria.CRITERIA[k], f"kind {k} has no criterion"
    assert criteria.COMMON
    for rec in list_recipes().values():
        t = rec.tolerance
        assert 0 <= t.flips <= 1 and t.max_drop >= 0 and 0 < t.spread and 0 < t.r2_min <= 1 and 0 <= t.neighbours <= 1
    order = ["float32", "float16", "int16x8", "dynamic", "int8"]
    spreads = [get_recipe(r).tolerance.spread for r in order]
    assert spreads == sorted(spreads)                      # a coarser recipe is allowed more, never less


def test_empty_reference_is_not_evidence():
    from packager.compare import merge_metrics
    tol = kind(F32, "values")
    full = compare_output("y", np.ones((10, 3)), np.ones((10, 3)), tol)
    empty = compare_output("y", np.ones((10, 0)), np.ones((10, 0)), tol)
    assert empty.samples == 0 and "empty" in empty.flags
    merged = merge_metrics([[full], [empty]], ["length 6", "length 3"])[0]
    assert merged.samples == 10


def test_a_few_large_rows_cannot_hide_a_collapsed_bulk():
    """An embedding table whose ids 0/1 are huge: int8 weights crush the ordinary rows to one value, while
    the rows holding 0/1 keep the column's spread (and its R² over all rows) high."""
    rng = np.random.default_rng(13)
    ref = rng.normal(0, 0.02, (192, 3))
    big = rng.random(192) < 0.07
    ref[big] = rng.normal(0, 20, (int(big.sum()), 3))
    got = np.where(big[:, None], ref * 1.001, 0.0)
    m = compare_output("cls", ref, got, kind(DYN, "values"))
    assert not m.passed and "bulk" in " ".join(m.reasons)
    assert m.finding("R²")["detail"]["all"] > 0.99               # over all rows it looked fine
    assert compare_output("cls", ref, ref * (1 + rng.normal(0, 0.01, ref.shape)), kind(DYN, "values")).passed


def test_every_registered_criterion_speaks_on_its_kind():
    """A criterion added to the registry is exercised: on data fit for its kind it returns a finding (figure,
    limit, text), and a failing one a reason (optimum's test_all_models_tested, for criteria)."""
    from packager.criteria import COMMON, CRITERIA, Judged
    rng = np.random.default_rng(14)
    data = {"class-scores": softmax(rng.normal(0, 2, (64, 5))), "probabilities": rng.uniform(0, 1, (64, 3)),
            "pixel-classes": softmax(rng.normal(0, 2, (16, 4, 4, 3))), "embedding": rng.normal(0, 1, (64, 16)),
            "integer": rng.integers(0, 5, (64, 3)).astype(np.float64), "values": rng.normal(0, 1, (64, 4))}
    labels = {"class-scores": rng.integers(0, 5, 64), "probabilities": rng.integers(0, 2, (64, 3)),
              "pixel-classes": rng.integers(0, 3, (16, 4, 4)), "integer": rng.integers(0, 5, (64, 3))}
    # criteria that judge only some outputs get data fit for them: a dominant class, a quantized range
    rare = _dominated(rng, 64, 50)
    fit = {"rare_class_scores": (rare, None), "saturated": (data["values"], criteria.Step(0.01, 0, "int8"))}
    for k, fns in CRITERIA.items():
        for fn in COMMON + fns:
            ref, step = fit.get(fn.__name__, (data[k], None))
            if fn.__name__ == "rare_class_scores" and k == "pixel-classes":
                ref = ref.reshape(16, 4, 50, 3)
            bad = ref[::-1].copy()                          # another sample's outputs: wrong everywhere
            if fn.__name__ == "saturated":
                bad = np.clip(ref, -0.5, 0.5)               # capped at a range narrower than the model's
                step = criteria.Step(0.5 / 127, 0, "int8")         # range [-0.504, 0.5]
            if fn.__name__ == "lost_classes":
                bad = ref.copy()
                bad[..., 0] = -1.0                          # class 0 never wins in the bundle
            good = fn(Judged("o", ref, ref.copy(), kind(INT8, k), k, step, None, labels.get(k)
                             if ref is data[k] else None))
            worse = fn(Judged("o", ref, bad, kind(INT8, k), k, step, None, labels.get(k) if ref is data[k] else None))
            if good is None and fn in COMMON:               # a common criterion may not apply to a kind
                continue
            assert good is not None and good.passed and good.text, (k, fn.__name__)
            if fn in fns and fn.__name__ not in ("accuracy",):
                assert worse is not None and not worse.passed and worse.reason, (k, fn.__name__)


# every registered criterion by name (tests/test_registry_coverage.py checks each has a test): on identical outputs
# it passes (or has nothing to say); a NaN is caught by finite
@pytest.mark.parametrize("name,k", [("finite", "values"), ("not_stuck", "values"), ("flips", "class-scores"),
                                    ("accuracy", "class-scores"), ("scores", "probabilities"),
                                    ("row_cosine", "embedding"), ("neighbours", "embedding"),
                                    ("column_error", "values"), ("r_squared", "values"),
                                    ("rare_class_scores", "pixel-classes"), ("saturated", "values"),
                                    ("lost_classes", "class-scores")])
def test_each_criterion_passes_identical_outputs(name, k):
    fn = getattr(criteria, name)
    assert fn in criteria.COMMON or fn in criteria.CRITERIA[k]
    rng = np.random.default_rng(1)
    ref = softmax(rng.normal(size=(64, 5))) if k != "embedding" else rng.normal(size=(64, 8))
    if name == "rare_class_scores":
        ref = _dominated(rng, 32, 100)
    labels = ref.argmax(-1) if name == "accuracy" else None
    step = criteria.Step(1 / 256, -128, "int8") if name == "saturated" else None
    j = criteria.Judged("out", ref, ref.copy(), kind(F32, k), k, step, labels=labels)
    finding = fn(j)
    assert finding is None or finding.passed, finding
    if name == "finite":
        got = ref.copy()
        got[3, 1] = np.nan
        assert not fn(criteria.Judged("out", ref, got, kind(F32, k), k)).passed


# ------------------------------------------------------------------------------------------- rare classes
def _dominated(rng, n: int, length: int, sites: float = 0.01) -> np.ndarray:
    """[n, length, 3] per-position softmax like SpliceAI's (neither / acceptor / donor): class 0 wins almost every
    position; classes 1 and 2 rise at rare sites (1% of positions each), with a score from weak to certain."""
    logits = np.zeros((n, length, 3))
    logits[..., 0] = 8.0
    for c in (1, 2):
        at = rng.random((n, length)) < sites
        logits[..., c] = np.where(at, rng.uniform(4.0, 14.0, (n, length)), rng.normal(0.0, 1.0, (n, length)))
    return softmax(logits)


def _r2(ref, got):
    return 1 - np.sum((got - ref) ** 2) / np.sum((ref - ref.mean()) ** 2)


def test_rare_class_scores_are_judged_when_one_class_dominates():
    """SpliceAI int8: "neither" wins 99.998% of positions, so the argmax decisions (and the p99 score error over
    every value) judge "neither" alone; the donor column's scores, which a user thresholds, keep R² 0.9 against
    the model. Refused, the column named; a bundle whose rare scores track the model's passes."""
    rng = np.random.default_rng(21)
    ref = _dominated(rng, 64, 200)
    donor = ref[..., 2]
    got = ref.copy()
    active = donor > 0.02
    z = rng.normal(0, 1, donor.shape) * active
    size = min(np.linspace(0.01, 0.5, 50), key=lambda a: abs(_r2(donor, np.clip(donor + a * z, 0, 1)) - 0.9))
    err = np.clip(donor + size * z, 0, 1) - donor                 # R² 0.9 on the donor column
    got[..., 2] = donor + err
    got[..., 0] = 1 - got[..., 1] - got[..., 2]
    assert 0.88 < _r2(donor, got[..., 2]) < 0.92
    tol = kind(INT8, "pixel-classes")
    m = compare_output("splice", ref, got, tol, scale=1 / 256)
    assert not m.passed
    f = m.finding("rare-class scores")
    assert not f["passed"] and f["detail"]["dominant"] == 0 and f["detail"]["judged"] == 64 * 200
    assert f["limit"] == pytest.approx(0.95) and f["figure"] < 0.92
    assert "rare class 2" in f["reason"] and "column [2]" in f["reason"] and f"keep R² {f['figure']:.4f} < 0.95" in f["reason"]
    assert "--quantize" in f["reason"]
    assert m.finding("decisions")["passed"] and m.finding("scores")["passed"]     # what said MATCH before
    # faithful bundles pass: float32 (identical up to float noise), dynamic-like (R² ~0.998), int8 within steps
    assert compare_output("splice", ref, ref + rng.normal(0, 1e-7, ref.shape), kind(F32, "pixel-classes")).passed
    close = ref.copy()
    close[..., 2] = donor + err * np.sqrt(0.002 / 0.1)
    assert compare_output("splice", ref, close, kind(DYN, "pixel-classes")).passed
    steps = np.round(ref * 256) / 256                              # int8 output: the scores rounded to 1/256
    m = compare_output("splice", ref, steps, tol, scale=1 / 256)
    assert m.passed and m.finding("rare-class scores")["figure"] > 0.99
    from packager.verification.report import _rests_on       # the verdict line says what was judged
    line = "; ".join(_rests_on([compare_output("splice", ref, got, tol, scale=1 / 256)]))
    assert "rare-class scores R² 0.8" in line or "rare-class scores R² 0.9" in line
    assert "class 2; class 0 wins" in line and "of 12800" in line and "failing: rare-class scores" in line
    # the same as class scores (one row per sample)
    flat = compare_output("p", ref.reshape(-1, 3), got.reshape(-1, 3), kind(INT8, "class-scores"))
    assert not flat.passed and not flat.finding("rare-class scores")["passed"]


def test_rare_class_scores_leave_balanced_and_silent_outputs_alone():
    rng = np.random.default_rng(22)
    balanced = softmax(rng.normal(0, 2, (300, 4)))
    j = criteria.Judged("p", balanced, balanced[::-1].copy(), kind(INT8, "class-scores"), "class-scores")
    assert criteria.rare_class_scores(j) is None                  # every class is decided often: decisions judge it
    silent = np.zeros((300, 3))
    silent[:, 0] = 1.0
    silent[:, 1:] = rng.uniform(0, 1e-4, (300, 2))                # rare columns that never rise above one step
    j = criteria.Judged("p", silent, silent * 0.5, kind(INT8, "class-scores"), "class-scores", 1 / 256)
    assert criteria.rare_class_scores(j) is None


# ------------------------------------------------------------------------------------------- saturation
def test_rows_capped_at_the_outputs_quantized_range_are_refused():
    """A TCN regression in int8: the output's range [-4.056, 2.329] came from the calibration data; on 2 of 300
    rows the model goes to -5.7 and the bundle says -4.056, silently. p99 error and R² over all rows are fine."""
    rng = np.random.default_rng(23)
    ref = rng.normal(-0.8, 0.8, (300, 1))
    ref[[17, 230], 0] = [-5.7, -5.1]
    step = criteria.Step(0.02503943257033825, 34, "int8")        # range [-4.056, 2.329]
    assert step.low == pytest.approx(-4.0564, abs=1e-3) and step.high == pytest.approx(2.3287, abs=1e-3)
    assert float(step) * 2 == pytest.approx(0.0500788651)         # still the step, a float
    import pickle
    assert pickle.loads(pickle.dumps(step)).low == step.low
    got = np.clip(np.round(ref / step) * step + rng.normal(0, 0.02, ref.shape), step.low, step.high)
    tol = kind(INT8, "values")
    m = compare_output("value", ref, got, tol, scale=step)
    assert m.finding("R²")["passed"] and m.finding("column error")["passed"]     # what said MATCH before
    assert not m.passed
    f = m.finding("saturation")
    assert f["detail"]["rows"] == 2 and f["detail"]["judged"] == 300 and f["figure"] == 2
    assert "2 of 300 rows" in f["reason"] and "-4.056" in f["reason"] and "the model reached -5.7" in f["reason"]
    from packager.verification.report import _rests_on
    assert "2 of 300 rows capped at the output's range [-4.056, 2.329]" in "; ".join(_rests_on([m]))
    assert f["detail"]["hint"].startswith("calibrate on data covering the outputs' full range")
    # the same bundle with a range that covers the model's outputs; a float bundle (no range): not capped
    wide = criteria.Step(0.05, 0, "int8")
    fine = np.round(ref / wide) * wide
    assert compare_output("value", ref, fine, tol, scale=wide).passed
    assert compare_output("value", ref, fine, tol, scale=float(wide)).finding("saturation") is None
    # a row at the bound where the model is just past it (within the column's error limit) is an ordinary error
    near = ref.copy()
    near[[17, 230], 0] = step.low - 0.1
    assert compare_output("value", near, np.clip(near, step.low, step.high), tol, scale=step).passed
    # the upper bound, int16 (int16x8), several columns: the column is named
    two = rng.normal(0, 1, (200, 4))
    two[5, 3] = 9.0
    s16 = criteria.Step(4.0 / 32767, 0, "int16")
    m = compare_output("box", two, np.clip(two, s16.low, s16.high), kind(I16, "values"), scale=s16)
    assert not m.passed and "column [3]" in m.finding("saturation")["reason"] and "max output was 4" in \
        m.finding("saturation")["reason"]


def test_a_capped_output_leads_the_refusal_to_calibration():
    """The build's refusal names the cap as the likely cause and its hint the calibration range."""
    from packager.convert.converter import Attempt, no_match
    from packager.recipes import get_recipe as recipe
    rng = np.random.default_rng(24)
    ref = rng.normal(0, 1, (300, 1))
    ref[3, 0] = 6.0
    step = criteria.Step(3.0 / 127, 0, "int8")
    m = compare_output("value", ref, np.clip(ref, step.low, step.high), kind(INT8, "values"), scale=step)
    cal = {"x": rng.uniform(-1, 1, (100, 8)).astype(np.float32)}
    err = no_match([Attempt("keras", False, "; ".join(m.reasons), [m])], recipe("int8"), cal,
                   {"x": rng.uniform(-1, 1, (300, 8)).astype(np.float32)})
    assert "capped at its quantized range" in err.message and "the model reaches" in err.message
    assert err.hint.startswith("calibrate on data covering the outputs' full range") and "6" in err.hint


def test_a_class_the_bundle_never_decides_is_refused_whatever_the_flip_budget():
    """The model decides class 1 on 4 of 200 rows, the bundle never: 4 flips are within int8's 3% budget, but the class
    vanishes from the bundle's answers (its recall is 0): refused, naming the class and its count."""
    from packager.compare import compare_output
    rng = np.random.default_rng(5)
    ref = softmax(np.column_stack([rng.normal(2, 0.3, 200), rng.normal(0, 0.3, 200), rng.normal(0, 0.3, 200)]))
    ref[:4, 1] = 0.9                                            # class 1 wins 4 rows by a clear margin
    got = ref.copy()
    got[:4, 1] = 0.05                                           # and never in the bundle
    m = compare_output("p", ref, got, kind(INT8, "class-scores"))
    assert not m.passed and any("never decides class 1" in r and "4 of 200 rows" in r for r in m.reasons), m.reasons
    assert compare_output("p", ref, ref.copy(), kind(INT8, "class-scores")).passed
    kept = got.copy()
    kept[0, 1] = 0.9                                            # decided once: no class is lost (flips judge the rest)
    assert not any("never decides" in r for r in compare_output("p", ref, kept, kind(INT8, "class-scores")).reasons)
