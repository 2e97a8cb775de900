"""Verification on the target's own instruction set: the bundle's script under qemu-aarch64 with
the real aarch64 wheels of both rpi runtimes (slow: prepares an arm64 root filesystem once)."""
from __future__ import annotations

import pytest

from packager import api
from packager.verification.arm64 import doctor

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def _can_emulate():
    missing = [c for c in doctor() if not c.ok and c.name in ("qemu-aarch64-static", "debootstrap")]
    if missing:
        pytest.skip("cannot emulate arm64 here: " + "; ".join(f"{c.name} ({c.fix})" for c in missing))


def test_int8_digits_verify_on_arm64_both_runtimes(int8_bundle, zoo, data_files):
    report = api.verify(int8_bundle.bundle, reference=zoo["keras3_h5"], data=data_files["eval"], arch="arm64",
                        strict=True)
    assert report.passed, report.failures
    by_name = {r.runtime: r for r in report.runtimes}
    assert set(by_name) == {"ai-edge-litert", "tflite-runtime"}
    for r in report.runtimes:
        assert r.arch == "arm64" and r.machine == "aarch64"     # reported by the device script itself
        (out,) = r.metrics
        assert out.top1_agreement >= 0.97
        assert out.accuracy_candidate > 0.9
    assert by_name["tflite-runtime"].version == "2.14.0"


def test_build_with_verify_arch_arm64(zoo, data_files, tmp_path):
    res = api.build(zoo["keras3_h5"], target="rpi", recipe="float32", data=data_files["eval"],
                    runtimes=["ai-edge-litert"], arch="arm64", output=tmp_path / "b")
    (rt,) = res.verification.runtimes
    assert rt.machine == "aarch64" and rt.status == "passed"
    assert res.manifest.to_json()["verification"]["runtimes"][0]["arch"] == "arm64"
    # the verdict ran with exactly the locked aarch64 wheels, and the manifest says which of its wheels those are
    from packager import runtime_lock
    from packager.targets import list_runtimes
    locked = runtime_lock.wheels(list_runtimes()["ai-edge-litert"], "3.11", "arm64")
    ran = res.manifest.to_json()["verification"]["runtimes"][0]["wheels"]
    assert [w["sha256"] for w in ran] == [w["sha256"] for w in locked]
    listed = res.manifest.to_json()["runtimes"][0]["wheels"]
    assert {w["sha256"] for w in listed if w["verified"]} == {w["sha256"] for w in locked}
    assert all(w["arch"] == "arm64" or w["platform"] == "any" for w in listed if w["verified"])   # py3-none-any: one file
