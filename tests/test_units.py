"""Unit tests of the pure logic, no TensorFlow and no runtime: the tolerance rule, overrides,
release pruning, benchmark parsing, the op-version gate, the one tensor type and the name rule."""
from __future__ import annotations

import numpy as np
import pytest

from packager.compare import compare_output
from packager.errors import DeployError, UsageError
from packager.recipes import Tolerance, list_recipes, parse_overrides, resolve_tolerance

TOL = Tolerance(atol=0.01, rtol=0.1, steps=2.0, cosine_min=0.0, flips=1.0, kind="class-scores")


def _scores(err: float, scale=None, peak=0.9):
    ref = np.tile(np.array([[peak, 0.0, 1.0 - peak]], np.float32), (100, 1))
    got = ref + np.array([[0.0, err, 0.0]], np.float32)
    return compare_output("y", ref, got, TOL, scale)


def test_the_scores_rule_is_atol_plus_rtol_of_peak_plus_steps_of_step():
    limit = 0.01 + 0.1 * 0.9                           # atol + rtol * max|ref|
    assert _scores(limit * 0.99).passed and not _scores(limit * 1.01).passed
    assert _scores(limit * 0.99).allowed_max_abs == pytest.approx(limit)
    with_steps = limit + 2.0 * 0.05                     # + steps * the output's quantization step
    assert _scores(with_steps * 0.99, scale=0.05).passed and not _scores(with_steps * 1.01, scale=0.05).passed
    assert "p99 score error" in _scores(1.0).reasons[0]


def test_a_flip_is_judged_on_every_row_however_large_the_atol():
    tol = Tolerance(atol=10.0, rtol=0.01, steps=0.0, cosine_min=0.0, flips=0.01, kind="class-scores")
    ref = np.array([[1.0, 0.0], [0.0, 1.0]] * 4, np.float32)
    got = ref[:, ::-1].copy()                           # every row flipped
    m = compare_output("p", ref, got, tol)
    assert m.top1_agreement == 0.0 and not m.passed              # a huge atol never excuses a flip
    tied = np.array([[0.5, 0.5]] * 8, np.float32)
    m = compare_output("p", tied, tied[:, ::-1].copy(), tol)
    assert m.passed and m.finding("decisions")["detail"]["ties"] == 8    # exact ties: not judged


def test_overrides_named_beat_global_and_bad_values_are_refused():
    base = Tolerance(atol=0.1, rtol=0.2, steps=1.0, cosine_min=0.9)
    got = resolve_tolerance(base, ["a", "b"], atol=["0.5", "b:0.01"], rtol=["a:0"])
    assert (got["a"].atol, got["b"].atol, got["a"].rtol, got["b"].rtol) == (0.5, 0.01, 0.0, 0.2)
    per = resolve_tolerance({"a": base, "b": TOL}, ["a", "b"])       # a bundle's recorded tolerance
    assert per["b"] is TOL or per["b"] == TOL
    for bad in (["-1"], ["inf"], ["nan"], ["x:"], ["a:b"]):
        with pytest.raises(UsageError):
            parse_overrides(bad, "--atol")
    with pytest.raises(UsageError) as info:
        resolve_tolerance(base, ["a"], atol=["c:0.1"])
    assert "no output named c" in info.value.message


def test_every_recipe_parses_with_a_tolerance():
    recipes = list_recipes()
    assert {"float32", "float16", "dynamic", "int8", "int16x8"} <= set(recipes)
    assert all(isinstance(r.tolerance, Tolerance) for r in recipes.values())
    assert {"int8", "int16x8"} <= {n for n, r in recipes.items() if r.needs_calibration}
    assert not recipes["float32"].needs_calibration and not recipes["dynamic"].needs_calibration


def test_pruning_keeps_the_newest_and_what_is_protected():
    from packager.deploy.releases import _prune_list
    rel = [f"2026010{i}T000000Z-abcdefabcdef" for i in range(1, 7)]
    assert _prune_list(rel, 3, [None]) == [rel[2], rel[1], rel[0]]
    assert _prune_list(rel, 2, [rel[0]]) == [rel[3], rel[2], rel[1]]     # current/previous survive
    assert _prune_list(rel + rel[:2], 10, []) == []


def test_benchmark_model_output_is_parsed_in_milliseconds():
    from packager.deploy.releases import _parse_benchmark_model
    text = ("INFO: blah\nINFO: Inference timings in us: Init: 12000, First inference: 3000, "
            "Warmup (avg): 2500.5, Inference (avg): 2000\nINFO: Peak memory footprint (MB): init=4.5 overall=9.25\n")
    out = _parse_benchmark_model(text, 50)
    assert out == {"tool": "benchmark_model", "runs": 50, "init_ms": 12.0, "first_ms": 3.0, "warmup_mean_ms": 2.5005,
                   "mean_ms": 2.0, "peak_mem_init_mb": 4.5, "peak_mem_mb": 9.25}
    with pytest.raises(DeployError):
        _parse_benchmark_model("Segmentation fault\n", 5)


def test_the_op_version_gate_reads_the_runtime_registry():
    from packager.convert.inspect import ModelSpec, OpInfo
    spec = ModelSpec(1, "x", [], [], [OpInfo("FULLY_CONNECTED", 12, False, 1), OpInfo("ADD", 5, False, 1)], None)
    assert spec.runtime_problems("ai-edge-litert") == []
    assert spec.runtime_problems("tflite-runtime") == ["FULLY_CONNECTED version 12 (this runtime supports up to 11)"]
    ok = ModelSpec(1, "x", [], [], [OpInfo("FULLY_CONNECTED", 11, False, 1)], None)
    assert ok.runtime_problems("tflite-runtime") == []
    flex = ModelSpec(1, "x", [], [], [OpInfo("FlexErf", 1, True, 1)], None)
    assert "Flex" in flex.runtime_problems("ai-edge-litert")[0]


def test_one_tensor_type_round_trips_through_the_manifest_form():
    from packager.tensor import Tensor
    q = Tensor("x", (-1, 8, 8, 1), "int8", index=3, scale=0.5, zero_point=-3)
    assert q.to_json() == {"name": "x", "index": 3, "shape": [-1, 8, 8, 1], "dtype": "int8",
                           "quantization": {"scale": 0.5, "zero_point": -3}}
    assert Tensor.from_json(q.to_json()) == q and q.quantized and q.variable_axes == []
    ids = Tensor("ids", (-1, -1), "int32", domain=(0, 1000))
    assert ids.to_json() == {"name": "ids", "shape": [-1, -1], "dtype": "int32", "domain": [0, 1000]}
    assert Tensor.from_json(ids.to_json()) == ids and ids.variable_axes == [1] and not ids.quantized


def test_one_bundle_name_rule(tmp_path):
    from packager.bundle.manifest import check_name, default_name
    assert check_name("mnist-rpi") == "mnist-rpi"
    for bad in ("-x", ".x", "a/b", "a b", "x" * 101, "", "é"):
        with pytest.raises(UsageError):
            check_name(bad)
    assert default_name(tmp_path / "Ünïcode model!.keras", "rpi") == "n-code-model-rpi"
    assert default_name(tmp_path / "...h5", "android") == "model-android"


def test_a_budget_without_labels_says_why_not_crashes():
    from packager.repair import Budget, meets
    m = {"status": "ran", "runtime": "ai-edge-litert", "drop": None, "agreement": 0.999, "cosine": 0.9999,
         "failures": [], "kinds": {"probs": "class-scores"}}
    assert "no accuracy to measure" in meets(m, Budget(max_drop=0.5)) and "probs class-scores" in meets(m, Budget(max_drop=0.5))
    assert meets(m, Budget(min_agreement=0.99)) is None
    m["failures"] = ["output 'probs': 3 of 300 rows change their decision (1% > 0.01%)"]
    assert "change their decision" in meets(m, Budget(min_agreement=0.9999))


def test_release_ids_sort_by_time_even_within_one_second():
    """Rollback and pruning order releases by id: a deploy in the same second as the last one (or
    after a host whose clock ran a little ahead) gets the next second, never an order by model hash."""
    from datetime import datetime, timezone
    from packager.deploy.releases import RELEASE_RE, _release_id
    now = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    first = f"{now}-ffffffffffff"
    second = _release_id("0" * 64, [first])
    assert RELEASE_RE.match(second) and second > first and second.startswith(now[:8])
    from datetime import timedelta
    soon = (datetime.now(timezone.utc) + timedelta(minutes=5)).strftime("%Y%m%dT%H%M%SZ")
    nxt = (datetime.strptime(soon, "%Y%m%dT%H%M%SZ") + timedelta(seconds=1)).strftime("%Y%m%dT%H%M%SZ")
    assert _release_id("1" * 64, [first, f"{soon}-aaaaaaaaaaaa"]) == f"{nxt}-111111111111"   # a clock a bit ahead
    far = "20991231T235959Z-aaaaaaaaaaaa"           # a device clock at 2099 does not drag every later id there
    assert _release_id("1" * 64, [first, far])[:4] == now[:4]
    assert _release_id("2" * 64, [])[:16] >= now


def test_a_changed_recipe_is_a_new_cache_key(tmp_path):
    from dataclasses import replace
    from packager.recipes import get_recipe
    from packager.verification.cache import conversion_key
    model = tmp_path / "m.h5"
    model.write_bytes(b"x")
    rec = get_recipe("float16")
    tighter = replace(rec, tolerance=replace(rec.tolerance, atol=1e-9))
    keys = {conversion_key(model, r, "float", None, None, False) for r in (rec, tighter, rec)}
    assert len(keys) == 2


@pytest.mark.parametrize("text, words", [
    ('samples = "many"', "samples must be an integer"),
    ('runtimes = "tflite-runtime"', "runtimes must be a list"),
    ('runtime = ["ai-edge-litert"]', "unknown field runtime"),
    ('default_recipe = "int4"', "default_recipe 'int4' is not one of"),
    ('[install]\nsteps = "pip install x"', "[install] takes steps"),
    ('runtimes = [{ name = "mylite", module = "mylite", requirements = ["mylite==0.1"] }]',
     "which the device script cannot import"),
    ('runtimes = ["onnxruntime"]', "'onnxruntime' is not one of"),
    ('arch = "armv7"', "arch 'armv7' is not one of"),
    ('runtimes = [{ name = "ai-edge-litert", notes = "x" }]', "unknown field notes"),
])
def test_target_profile_mistakes_are_one_line_with_a_hint(tmp_path, monkeypatch, text, words):
    from packager.targets import get_target
    base = {"name": '"x"', "arch": '"arm64"', "deploy": '"ssh"', "remote_dir": '"~/e/{name}"',
            "default_recipe": '"float16"', "runtimes": '["ai-edge-litert"]'}
    key = text.split("=")[0].strip().strip("[]")
    body = "".join(f"{k} = {v}\n" for k, v in base.items() if k != key and not (key == "runtime" and k == "runtimes"))
    if key == "runtime":
        body += 'runtimes = ["ai-edge-litert"]\n'
    (tmp_path / "x.toml").write_text(body + text + "\n")
    monkeypatch.setenv("EDGEPACK_TARGETS_PATH", str(tmp_path))
    with pytest.raises(UsageError) as info:
        get_target("x")
    assert words in info.value.message and "x.toml" in info.value.message, info.value.message
    assert info.value.hint and "\n" not in info.value.message


def test_a_malformed_recipe_names_itself(monkeypatch, tmp_path):
    import importlib
    module = importlib.import_module("packager.recipes")     # (packager.recipes is the API function)
    (tmp_path / "r.toml").write_text('[tight]\ndescription = "x"\noptimizations = []\nsupported_types = []\n'
                                     'supported_ops = ["TFLITE_BUILTINS"]\nneeds_calibration = false\n')
    monkeypatch.setattr(module, "RECIPES_FILE", tmp_path / "r.toml")
    module.list_recipes.cache_clear()
    try:
        with pytest.raises(UsageError) as info:
            module.list_recipes()
        assert "[tight]: missing tolerance" in info.value.message and "fields" in info.value.hint
        (tmp_path / "r.toml").write_text((tmp_path / "r.toml").read_text().replace("TFLITE_BUILTINS", "TFLITE_BUILTINS_INT9")
                                         + "tolerance = { atol = 0, rtol = 0, steps = 0, cosine_min = 0, flips = 0, max_drop = 0, spread = 1, "
                                           "r2_min = 1, neighbours = 0 }\n")
        module.list_recipes.cache_clear()
        with pytest.raises(UsageError) as info:
            module.list_recipes()
        assert "supported_ops 'TFLITE_BUILTINS_INT9' is not one of" in info.value.message
    finally:
        monkeypatch.undo()
        module.list_recipes.cache_clear()


def test_a_missing_host_tool_says_how_to_install_it():
    """The transport passes its own install hint; a custom binary path still gets it."""
    from packager.deploy.adb import AdbTransport
    from packager.errors import EnvironmentProblem
    with pytest.raises(EnvironmentProblem) as info:
        AdbTransport(adb_bin="/nonexistent/platform-tools/adb").devices()
    assert "not found on this host" in info.value.message and info.value.hint == AdbTransport.tool_hint


def test_synthetic_samples_are_sized_to_a_time_budget_and_say_so(monkeypatch):
    """Issue 23: a slow model is checked on fewer synthetic samples (halving to a floor), the count and why in
    the notes; a fast one keeps them all; EDGEPACK_VERIFY_SAMPLES pins the count."""
    import time as _time
    import numpy as _np
    from packager.convert import jobs
    from packager.load.calibration import synthetic_dataset
    from packager.tensor import Tensor
    ds = synthetic_dataset([Tensor("x", (-1, 3), "float32")], count=64)
    calls = []

    def slow(arrays):
        calls.append(len(arrays["x"]))
        _time.sleep(0.05 * len(arrays["x"]))
        return {"y": arrays["x"] * 2}
    monkeypatch.setenv("EDGEPACK_VERIFY_BUDGET", "1")
    cut, ref = jobs.sized_to_budget(slow, ds)
    assert cut.count == 16 and sum(calls) == 16 and _np.array_equal(ref["y"], ds.inputs["x"][:16] * 2)
    assert any("16 of 64 synthetic samples" in n and "EDGEPACK_VERIFY_BUDGET" in n for n in cut.notes)
    assert not ds.notes and "n=16" in cut.describe()
    fast = jobs.sized_to_budget(lambda a: {"y": a["x"] * 2}, ds)[0]
    assert fast.count == 64 and not fast.notes
    monkeypatch.setenv("EDGEPACK_VERIFY_SAMPLES", "8")
    pinned, ref = jobs.sized_to_budget(lambda a: {"y": a["x"] * 2}, ds)
    assert pinned.count == 8 and len(ref["y"]) == 8 and "EDGEPACK_VERIFY_SAMPLES" in pinned.notes[-1]


def test_device_differences_name_runtime_version_arch_and_numpy():
    """``ondevice.differences``: how a device differs from what the bundle was verified with, in words a user reads
    (no doubled spaces when a version is unknown)."""
    from packager.deploy.ondevice import differences
    verified = [{"runtime": "ai-edge-litert", "version": "2.3.0", "arch": "x86_64", "numpy": "2.1.0", "status": "passed"},
                {"runtime": "tflite-runtime", "version": "2.14.0", "arch": "x86_64", "numpy": "1.26.4", "status": "passed"}]
    same = {"runtime": "ai_edge_litert", "runtime_version": "2.3.0", "machine": "x86_64", "numpy": "2.0.2"}
    assert differences(same, verified) == [] and differences(same, []) == []
    other = differences({"runtime": "tensorflow", "machine": "aarch64", "numpy": "1.26.0"}, verified)
    assert other[0] == ("its runtime tensorflow is not one the bundle was verified with "
                        "(ai-edge-litert 2.3.0, tflite-runtime 2.14.0)")
    assert "its CPU is aarch64; the bundle was verified on x86_64" in other[1]
    newer = differences({**same, "runtime_version": "2.4.0", "numpy": "1.26.4"}, verified)
    assert newer == ["it runs ai-edge-litert 2.4.0; the bundle was verified with ai-edge-litert 2.3.0",
                     "it has numpy 1.26.4; the bundle was verified with numpy 2.x"]
    assert all("  " not in d for d in other + newer)


def test_arm64_emulation_runs_the_targets_python_or_says_it_cannot():
    """arm64 verification runs the target's Python from the Debian suite that ships it; a Python no suite ships (the
    android profile's 3.12) is an environment problem that points at the device, not "use python_version 3.11"."""
    from packager.errors import EnvironmentProblem
    from packager.targets import get_target
    from packager.verification import arm64, emulator
    assert arm64.suite_for("3.11") == "bookworm" and arm64.suite_for("3.13") == "trixie"
    assert arm64.suite_for("3.12") is None and arm64.suite_for("3.10") is None
    runtime = get_target("android").runtimes[0]
    with pytest.raises(EnvironmentProblem) as info:
        emulator.arm64_env(runtime, get_target("android").python)
    assert "no Python 3.12" in info.value.message and "3.11 (bookworm)" in info.value.message
    assert "edgepack verify BUNDLE" in info.value.hint and "--serial/--host" in info.value.hint


def test_a_transport_subclass_is_named_by_its_own_option():
    """A new transport built on LocalTransport is addressed by its own CLI option (``--copy DIR``), not ``--local DIR``;
    one that sets ``address`` keeps it."""
    from packager.deploy import LocalTransport, SshTransport

    class CopyTransport(LocalTransport):
        method, cli_option, cli_metavar = "copy-test", "--copy-test", "DIR"
    assert CopyTransport.address == "--copy-test DIR" and LocalTransport.address == "--local DIR"
    assert SshTransport.address == "--host USER@HOST"
    from packager.cli.deploy import _help     # `verify --help`: its own words, or a generic sentence naming it
    assert "--copy-test DIR" in _help(CopyTransport, "verify") and "verdict" in _help(CopyTransport, "verify")
    assert _help(SshTransport, "verify") == SshTransport.cli_verify_help and _help(SshTransport, None).startswith("Deploy")


def test_which_recipes_quantize_is_a_property_of_the_recipe():
    """"the X recipe quantized nothing" is said for recipes that ask for quantization, read from the recipe (a new
    float recipe such as a metadata-stripping one gets no such note)."""
    from dataclasses import replace
    from packager.recipes import list_recipes
    r = list_recipes()
    assert not r["float32"].quantizes and not r["as-is"].quantizes
    assert all(r[n].quantizes for n in ("float16", "dynamic", "int8", "int16x8", "int4w"))
    assert not replace(r["float32"], name="float32-nometa").quantizes


def test_a_tolerance_field_added_later_is_optional_in_recipes(monkeypatch, tmp_path):
    """A new criterion's limit (a Tolerance field with a default, beyond the nine every recipe states) may be left out
    of recipes.toml or set there; an unknown name is still refused."""
    import dataclasses
    import importlib
    module = importlib.import_module("packager.recipes")
    Wider = dataclasses.make_dataclass("Tolerance", [("max_abs", float, dataclasses.field(default=0.0))],
                                       bases=(module.Tolerance,), frozen=True)
    monkeypatch.setattr(module, "Tolerance", Wider)
    nine = ("atol = 0, rtol = 0, steps = 0, cosine_min = 0, flips = 0, max_drop = 0, spread = 1, r2_min = 1, "
            "neighbours = 0")
    head = ('description = "x"\noptimizations = []\nsupported_types = []\nsupported_ops = ["TFLITE_BUILTINS"]\n'
            'needs_calibration = false\n')
    (tmp_path / "r.toml").write_text(f"[a]\n{head}tolerance = {{ {nine} }}\n"
                                     f"[b]\n{head}tolerance = {{ {nine}, max_abs = 0.5 }}\n")
    monkeypatch.setattr(module, "RECIPES_FILE", tmp_path / "r.toml")
    module.list_recipes.cache_clear()
    try:
        got = module.list_recipes()
        assert got["a"].tolerance.max_abs == 0.0 and got["b"].tolerance.max_abs == 0.5
        (tmp_path / "r.toml").write_text(f"[c]\n{head}tolerance = {{ {nine}, max_typo = 1 }}\n")
        module.list_recipes.cache_clear()
        with pytest.raises(UsageError, match="may set max_abs"):
            module.list_recipes()
    finally:
        monkeypatch.undo()
        module.list_recipes.cache_clear()


def test_a_bundle_right_in_one_runtime_and_wrong_in_another_points_at_the_runtime():
    """int4w on a convolution: ai-edge-litert computes it, tflite-runtime 2.14 does not; the way out names the runtime
    that computes it (--runtime), not only recipes with more precision."""
    from types import SimpleNamespace as NS
    from packager.api import _mismatch_hint
    report = NS(recipe="int4w", runtimes=[NS(runtime="ai-edge-litert", status="passed"),
                                          NS(runtime="tflite-runtime", status="failed")])
    hint = _mismatch_hint(report, "dist/m")
    assert "matches in ai-edge-litert and not in tflite-runtime" in hint and "--runtime ai-edge-litert" in hint
    both = _mismatch_hint(NS(recipe="int8", runtimes=[NS(runtime="ai-edge-litert", status="failed")]), "dist/m")
    assert "--runtime" not in both and "int16x8" in both


def test_an_input_far_from_zero_is_named_as_an_offset_not_a_calibration_scale():
    """int8's range holds 0: a sensor at 1e4 ± 10 gets a handful of the 256 steps however it is calibrated. The cause
    says so and points at normalizing before the model, not at recalibrating (which cannot help)."""
    from types import SimpleNamespace as NS
    from packager.convert.localise import OpRow, explain
    row = OpRow(index=0, op="QUANTIZE", version=1, tensor="t", float_tensor="t", dtype="int8", scale=39.2,
                zero_point=-128, rel=0.1, cosine=1.0, steps=None, max_abs=1.0, clipped=0.0, below_step=0.0,
                float_range=[9990.0, 10010.0], quant_range=[0.0, 10010.0], jump=0.0, label="input sensor")
    dumps = NS(meta={"inputs": []})
    causes = explain([row], dumps, dumps)
    assert [c.kind for c in causes] == ["offset"], causes
    assert "subtract the offset before the model" in causes[0].text and "cannot help" in causes[0].text
    row.float_range = [-5.0, 8000.0]                           # wide data, narrow calibration: the old cause
    row.quant_range = [-5.0, 80.0]
    row.clipped = 0.4
    assert [c.kind for c in explain([row], dumps, dumps)] == ["calibration-scale"]
