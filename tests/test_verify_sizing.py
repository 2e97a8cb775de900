"""Verification sized by the slowest runtime (issue 23): every runtime runs the first SAMPLE_FLOOR synthetic samples,
timed; the count halves while the slowest one's cost exceeds the budget; every verdict is judged on the same samples
and a cut count is said in the notes, with the figures it came from. The runtimes here are stand-ins (their runs are
given), so the rule itself is what is tested."""
import numpy as np
import pytest

from packager.load.calibration import Dataset
from packager.recipes import get_recipe
from packager.verification import emulator, report
from packager.verification.emulator import DeviceRun, RuntimeEnv

pytestmark = pytest.mark.fast


def _env(name):
    return RuntimeEnv(name, name.replace("-", "_"), (), emulator.host_arch(), ("python3",), version="1.0")


def _run(monkeypatch, cost: dict, total=64, start_up=0.0):
    x = np.random.default_rng(0).standard_normal((total, 3)).astype("float32")
    ref = {"y": x * 2}
    calls = []

    def fake(env, bundle, manifest, inputs, count, host_outputs, use_cache, result):
        rows = {k: v[:count] for k, v in inputs.items()}
        calls.append((env.runtime, count))
        return DeviceRun(True, 0, {"y": rows["x"] * 2}, None, start_up + cost[env.runtime] * count, {}), False
    monkeypatch.setattr(emulator, "run_for_verdict", fake)
    monkeypatch.setattr(emulator, "start_up_seconds", lambda env: start_up)
    manifest = type("M", (), {"outputs": []})()
    monkeypatch.delenv("EDGEPACK_VERIFY_SAMPLES", raising=False)
    monkeypatch.setenv("EDGEPACK_VERIFY_BUDGET", "2")
    data = Dataset({"x": x}, None, "seed 0", [], "synthetic", [],
                   [f"verified on {total} of 64 synthetic samples: one inference of the original model took 0.01 s"]
                   if total < 64 else [])
    ready = [(0, _env("fast-rt"), []), (1, _env("slow-rt"), [])]
    tol = {"y": get_recipe("float32").tolerance}
    assert report.runtime_budget(data) == 2.0
    judged, done = report._sized_by_slowest("bundle", manifest, ready, data, [ref], tol, None, {}, None, False, 2.0,
                                            lambda m: None, lambda fn, items: [fn(i) for i in items])
    return judged, dict(done), calls


def test_a_slow_runtime_cuts_the_count_for_every_runtime_and_says_so(monkeypatch):
    judged, results, calls = _run(monkeypatch, {"fast-rt": 0.01, "slow-rt": 0.2})
    assert judged.count == 16 and judged.describe() == "synthetic: seed 0, n=16"
    assert calls == [("fast-rt", 16), ("slow-rt", 16)]              # nothing run beyond the first 16
    assert all(r.status == "passed" and r.metrics[0].to_json() for r in results.values())
    assert [n for n in judged.notes if n.startswith("verified on 16 of 64")] and "slow-rt 1.0" in judged.notes[-1] \
        and "0.200 s per sample" in judged.notes[-1]


def test_fast_runtimes_run_the_rest_and_are_judged_on_every_sample(monkeypatch):
    judged, results, calls = _run(monkeypatch, {"fast-rt": 0.01, "slow-rt": 0.02})
    assert judged.count == 64 and not judged.notes
    assert sorted(calls) == [("fast-rt", 16), ("fast-rt", 48), ("slow-rt", 16), ("slow-rt", 48)]
    assert all(r.status == "passed" for r in results.values())


def test_the_reference_side_cut_note_is_replaced_not_contradicted(monkeypatch):
    judged, _, _ = _run(monkeypatch, {"fast-rt": 0.01, "slow-rt": 0.1}, total=32)
    assert judged.count == 16
    assert [n[:27] for n in judged.notes] == ["verified on 16 of 64 synthe"]


def test_pinned_count_held_out_data_and_variants_are_not_cut_here(monkeypatch):
    x = np.zeros((64, 3), "float32")
    monkeypatch.setenv("EDGEPACK_VERIFY_SAMPLES", "64")
    assert report.runtime_budget(Dataset({"x": x}, None, "seed 0", [], "synthetic", [], [])) is None
    monkeypatch.delenv("EDGEPACK_VERIFY_SAMPLES")
    assert report.runtime_budget(Dataset({"x": x}, None, "eval.npz", [], "held-out", [], [])) is None
    assert report.runtime_budget(Dataset({"x": x}, None, "seed 0", [], "synthetic", [{"x": x[:, :2]}], [])) is None
    monkeypatch.setenv("EDGEPACK_VERIFY_BUDGET", "0")
    assert report.runtime_budget(Dataset({"x": x}, None, "seed 0", [], "synthetic", [], [])) is None


def test_the_script_start_up_is_not_counted_as_cost_per_sample(monkeypatch):
    """1 s to start and import the runtime, 0.02 s per sample: 64 samples fit 2 s (counting the start-up into the
    first 16 samples' cost would have cut them to 16)."""
    judged, _, calls = _run(monkeypatch, {"fast-rt": 0.01, "slow-rt": 0.02}, start_up=1.0)
    assert judged.count == 64 and ("slow-rt", 48) in calls


@pytest.mark.parametrize("identical", [True, False])
def test_host_check_outputs_stand_for_the_same_runtime_only_after_a_bit_identical_smoke_run(monkeypatch, identical):
    """ai-edge-litert at the host check's version: its script runs one invoke; bit-identical -> the check's outputs
    on every sample, said in the verdict; one bit off -> every sample runs in its environment (and that is said)."""
    version = emulator.host_check_version()
    if version is None:
        pytest.skip("ai-edge-litert is not installed in this Python")
    x = np.random.default_rng(1).standard_normal((16, 512, 512)).astype("float32")     # 1 MiB a sample: 4 an invoke
    host = {"y": x.sum(axis=(1, 2))[:, None].astype("float32")}
    runs = []

    def fake(env, bundle, manifest, inputs, use_cache):
        n = len(inputs["x"])
        runs.append(n)
        y = host["y"][:n].copy()
        if not identical:
            y[0, 0] = np.nextafter(y[0, 0], np.inf)
        return DeviceRun(True, 0, {"y": y}, None, 0.1, {})
    monkeypatch.setattr(emulator, "_run_cached", fake)
    env = RuntimeEnv("ai-edge-litert", "ai_edge_litert", (), emulator.host_arch(), ("python3",), version=version)
    result = emulator.RuntimeResult(env.runtime, env.version, env.arch, "error")
    run, reused = emulator.run_for_verdict(env, "bundle", None, {"x": x}, 16, host, False, result)
    first = emulator.invoke_batch({"x": x})
    assert first < 16
    if identical:
        assert reused and runs == [first] and len(run.outputs["y"]) == 16
        assert "judged on the conversion check's outputs" in result.evidence and f"first {first}" in result.evidence
    else:
        assert not reused and runs == [first, 16] and "not bit-identical" in result.evidence
    # another runtime, or another version: never
    for other in (RuntimeEnv("tflite-runtime", "tflite_runtime", (), env.arch, ("python3",), version=version),
                  RuntimeEnv("ai-edge-litert", "ai_edge_litert", (), env.arch, ("python3",), version="0.0.1")):
        runs.clear()
        assert emulator.run_for_verdict(other, "bundle", None, {"x": x}, 16, host, False, result)[1] is False
        assert runs == [16]
