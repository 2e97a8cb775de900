"""`build`: every input form becomes a verified bundle; recipes, refusals, the bundle contract."""
from __future__ import annotations

import hashlib
import json
import sys
import tarfile

import numpy as np
import pytest

from packager import api
from packager.bundle.files import check_files
from packager.errors import ConversionError, UsageError, VerificationError

LITERT = ["ai-edge-litert"]


@pytest.mark.parametrize("form", [
    "keras3_h5", "keras3_v3", "keras2_h5", "keras2_hdf5", "saved_model_keras", "saved_model_subclassed",
    "saved_model_subclassed_sig", "saved_model_module", "keras_export", "saved_model_old_tf",
])
def test_every_input_form_builds_and_matches(form, zoo, data_files, tmp_path):
    result = api.build(zoo[form], target="rpi", recipe="float32", data=data_files["eval"],
                       runtimes=LITERT, output=tmp_path / "b")
    report = result.verification
    assert report.passed, report.failures
    (rt,) = report.runtimes
    assert rt.status == "passed" and rt.runtime == "ai-edge-litert"
    (out,) = rt.metrics
    assert out.max_abs_err < 1e-4
    assert out.top1_agreement == 1.0
    assert rt.metrics[0].shape[0] == data_files["xt"].shape[0]   # every held-out sample, any batch size
    assert (tmp_path / "b" / "manifest.json").is_file()
    model = api.inspect(result)["model"]                            # inspect names tensors as the manifest does
    assert [t["name"] for t in model["outputs"]] == result.manifest.output_names
    assert [t["name"] for t in model["inputs"]] == result.manifest.input_names


def test_old_savedmodel_uses_tf1_path(zoo, data_files, tmp_path):
    result = api.build(zoo["saved_model_old_tf"], target="rpi", recipe="dynamic", runtimes=LITERT,
                       data=data_files["eval"], output=tmp_path / "b")
    m = result.manifest.to_json()
    assert m["source"]["format"] == "saved-model-tf1"
    assert m["source"]["conversion_path"] == "saved-model-tf1"
    assert any("add_slot" in n for n in result.warnings)
    assert [t["name"] for t in m["outputs"]] == ["probs"]


def test_subclassed_fixed_batch_is_reported(zoo, data_files, tmp_path):
    result = api.build(zoo["saved_model_module"], target="rpi", recipe="float32", runtimes=LITERT,
                       data=data_files["eval"], output=tmp_path / "b")
    assert result.manifest.to_json()["inputs"][0]["shape"][0] == 2
    assert any("batch size 2" in w for w in result.warnings)
    assert result.verification.samples == len(data_files["xt"])   # odd count: padded, then trimmed


def test_from_saved_model_trap_is_caught_and_next_path_used(zoo, data_files, tmp_path):
    """TF 2.21's from_saved_model converts this model "successfully" into wrong outputs."""
    result = api.build(zoo["saved_model_keras"], target="rpi", recipe="float32", runtimes=LITERT,
                       data=data_files["eval"], output=tmp_path / "b")
    attempts = {a.path: a for a in result.conversion_attempts}
    assert result.manifest.to_json()["source"]["conversion_path"] == "saved-model-concrete-function"
    first = attempts["saved-model"]
    assert not first.ok and first.metrics and not first.metrics[0].passed


def test_multi_output_names_kept_and_matched_by_name(zoo, tmp_path):
    result = api.build(zoo["multi_io"], target="rpi", recipe="float32", runtimes=LITERT, output=tmp_path / "b")
    m = result.manifest.to_json()
    assert sorted(t["name"] for t in m["inputs"]) == ["sensor_a", "sensor_b"]
    assert sorted(t["name"] for t in m["outputs"]) == ["alpha", "zeta"]
    shapes = {t["name"]: t["shape"] for t in m["outputs"]}
    assert shapes == {"zeta": [-1, 2], "alpha": [-1, 5]}
    names = {o.name for o in result.verification.runtimes[0].metrics}
    assert names == {"alpha", "zeta"}


@pytest.mark.parametrize("recipe,size_ratio_max", [("float16", 0.7), ("dynamic", 0.6), ("int16x8", 0.75)])
def test_recipes_verify_and_shrink(recipe, size_ratio_max, zoo, data_files, tmp_path):
    f32 = api.build(zoo["keras3_h5"], target="rpi", recipe="float32", runtimes=LITERT, output=tmp_path / "f")
    res = api.build(zoo["keras3_h5"], target="rpi", recipe=recipe, calibration=data_files["calibration"],
                    data=data_files["eval"], runtimes=LITERT, output=tmp_path / "q")
    assert res.verification.passed
    assert res.manifest.to_json()["model_size"] / f32.manifest.to_json()["model_size"] < size_ratio_max
    assert res.verification.runtimes[0].metrics[0].top1_agreement >= 0.98


def test_int8_bundle_main_job(int8_bundle, data_files):
    m = int8_bundle.manifest.to_json()
    assert m["recipe"]["name"] == "int8"
    assert m["verification"]["status"] == "passed"
    statuses = {r["name"]: r["status"] for r in m["runtimes"]}
    assert statuses == {"ai-edge-litert": "passed", "tflite-runtime": "passed"}
    for rt in int8_bundle.verification.runtimes:
        (out,) = rt.metrics
        assert out.top1_agreement >= 0.97
        assert abs(out.accuracy_reference - out.accuracy_candidate) <= 0.02
        assert out.accuracy_reference > 0.9


def test_int8_io_quantized_tensors(zoo, data_files, tmp_path):
    res = api.build(zoo["keras3_h5"], target="rpi", recipe="int8", io="int8", calibration=data_files["calibration"],
                    data=data_files["eval"], runtimes=LITERT, output=tmp_path / "b")
    (inp,), (out,) = res.manifest.to_json()["inputs"], res.manifest.to_json()["outputs"]
    assert inp["dtype"] == "int8" and out["dtype"] == "int8"
    assert inp["quantization"]["scale"] > 0 and out["quantization"]["scale"] > 0
    assert res.verification.passed


def test_bundle_contract(int8_bundle):
    root = int8_bundle.bundle.path
    m = json.loads((root / "manifest.json").read_text())
    for key in ("model", "entrypoint", "files", "inputs", "outputs", "recipe", "target", "source", "versions",
                "verification"):
        assert key in m, key
    assert (root / m["model"]).read_bytes()[4:8] == b"TFL3"
    assert set(m["files"]) >= {"model.tflite", "edgepack_run.py", "README.md", "requirements.txt",
                               "samples/inputs.npz", "samples/expected.npz"}
    assert "manifest.json" not in m["files"]
    assert check_files(root, m) == []
    assert m["versions"]["tensorflow"].startswith("2.")
    assert "tflite-runtime==2.14.0" in (root / "requirements-tflite-runtime.txt").read_text()
    readme = (root / "README.md").read_text()
    assert "pip install" in readme and "edgepack_run.py" in readme
    assert not list(root.parent.glob(".*staging*"))


def test_source_checksum_is_the_model_file(int8_bundle, zoo):
    want = hashlib.sha256(zoo["keras3_h5"].read_bytes()).hexdigest()
    assert int8_bundle.manifest.to_json()["source"]["sha256"] == want


def test_archive_is_reproducible(zoo, data_files, tmp_path):
    kwargs = dict(target="rpi", recipe="int8", calibration=data_files["calibration"], runtimes=LITERT)
    a = api.build(zoo["keras3_h5"], output=tmp_path / "one" / "digits", **kwargs)
    b = api.build(zoo["keras3_h5"], output=tmp_path / "two" / "digits", **kwargs)
    assert a.archive.read_bytes() == b.archive.read_bytes()
    with tarfile.open(a.archive) as tar:
        members = tar.getmembers()
    assert [mm.name for mm in members] == sorted(mm.name for mm in members)
    assert all(mm.mtime == 0 and mm.uid == 0 and mm.gid == 0 for mm in members)
    assert {mm.name for mm in members} >= {"digits/manifest.json", "digits/model.tflite"}


def test_int8_without_calibration_is_refused(zoo, tmp_path):
    with pytest.raises(UsageError) as exc:
        api.build(zoo["keras3_h5"], target="rpi", recipe="int8", output=tmp_path / "b")
    assert "calibration" in exc.value.message and "--calibration" in exc.value.hint
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("bad,fragment", [
    (lambda x: x[:, :4], "shape"),
    (lambda x: np.where(x > 0.5, np.nan, x), "NaN"),
    (lambda x: x.astype("U3"), "dtype"),
])
def test_bad_calibration_is_refused(bad, fragment, zoo, data_files, tmp_path):
    path = tmp_path / "cal.npz"
    np.savez(path, x=bad(data_files["x"][:50]))
    with pytest.raises(UsageError) as exc:
        api.build(zoo["keras3_h5"], target="rpi", recipe="int8", calibration=path, output=tmp_path / "b")
    assert fragment in exc.value.message
    assert not (tmp_path / "b").exists()


def test_pickled_calibration_is_refused(zoo, tmp_path):
    path = tmp_path / "cal.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(UsageError):
        api.build(zoo["keras3_h5"], target="rpi", recipe="int8", calibration=path, output=tmp_path / "b")


def test_few_calibration_samples_warn(zoo, data_files, tmp_path):
    path = tmp_path / "few.npz"
    np.savez(path, x=data_files["x"][:20])
    res = api.build(zoo["keras3_h5"], target="rpi", recipe="int8", calibration=path, runtimes=LITERT,
                    output=tmp_path / "b")
    assert any("100-500" in w for w in res.warnings)


def test_mismatch_fails_and_leaves_nothing(zoo, data_files, tmp_path):
    """Verification data far outside the calibration range saturates int8: the build must fail."""
    path = tmp_path / "wild.npz"
    np.savez(path, x=data_files["xt"] * 40.0 - 20.0)
    out = tmp_path / "b"
    with pytest.raises((VerificationError, ConversionError)) as exc:
        api.build(zoo["keras3_h5"], target="rpi", recipe="int8", calibration=data_files["calibration"],
                  data=path, runtimes=LITERT, output=out)
    assert "change their decision" in exc.value.message or "R²" in exc.value.message
    assert not out.exists()
    assert not list(tmp_path.glob(".b.staging*"))


def test_unknown_target_and_recipe(zoo, tmp_path):
    with pytest.raises(UsageError) as exc:
        api.build(zoo["keras3_h5"], target="toaster", output=tmp_path / "b")
    assert "rpi" in exc.value.hint and "android" in exc.value.hint
    with pytest.raises(UsageError) as exc:
        api.build(zoo["keras3_h5"], target="rpi", recipe="int4", output=tmp_path / "b")
    assert "int8" in exc.value.hint


def test_refuses_to_overwrite_a_non_bundle(zoo, tmp_path):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "thesis.txt").write_text("do not delete")
    with pytest.raises(UsageError):
        api.build(zoo["keras3_h5"], target="rpi", recipe="float32", runtimes=LITERT, output=out)
    assert (out / "thesis.txt").read_text() == "do not delete"


def test_tflite_runtime_cannot_run_dynamic_range_fc_v12(zoo, data_files, tmp_path):
    res = api.build(zoo["keras3_h5"], target="rpi", recipe="dynamic", data=data_files["eval"],
                    output=tmp_path / "b")
    by_name = {r.runtime: r for r in res.verification.runtimes}
    bad = by_name["tflite-runtime"]
    assert bad.status == "error"
    assert "FULLY_CONNECTED" in bad.error and "12" in bad.error
    assert any("FULLY_CONNECTED version 12" in p for p in bad.static_problems)
    assert by_name["ai-edge-litert"].status == "passed"
    entries = {r["name"]: r for r in res.manifest.to_json()["runtimes"]}
    assert entries["tflite-runtime"]["status"] == "error" and "FULLY_CONNECTED" in entries["tflite-runtime"]["reason"]
    assert "tflite-runtime" not in (res.bundle / "requirements.txt").read_text()
    assert not (res.bundle / "requirements-tflite-runtime.txt").exists()
    # Asking for that runtime explicitly makes it a failure.
    report = api.verify(res.bundle, reference=zoo["keras3_h5"], runtimes=["tflite-runtime"])
    assert not report.passed
    assert report.failures and report.failures[0].startswith("tflite-runtime")


def test_android_bundle_has_assets(zoo, data_files, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(str(i) for i in range(10)))
    res = api.build(zoo["keras3_h5"], target="android", recipe="float16", labels=labels, output=tmp_path / "a")
    root = res.bundle
    assert (root / "assets" / "model.tflite").read_bytes() == (root / "model.tflite").read_bytes()
    assert (root / "assets" / "labels.txt").read_text().splitlines()[3] == "3"
    info = json.loads((root / "assets" / "edgepack.json").read_text())
    assert info["inputs"][0]["name"] == "pixels"
    assert "noCompress" in (root / "README.md").read_text()
    assert res.manifest.to_json()["target"]["deploy"] == "adb"
    # android devices run Python 3.12 (the profile); verified here under the host's: the verdict says so
    host = f"{sys.version_info[0]}.{sys.version_info[1]}"
    said = [n for n in res.verification.notes if "devices run Python 3.12" in n]
    assert bool(said) == (host != "3.12") and all(f"host's Python {host}" in n and "on the device itself" in n
                                                  and "--arch arm64" not in n for n in said)   # no Debian ships 3.12


def test_target_default_without_calibration_says_what_it_built(zoo, tmp_path):
    res = api.build(zoo["keras3_h5"], target="rpi", runtimes=LITERT, output=tmp_path / "b")
    assert res.manifest.to_json()["recipe"]["name"] == "float16"
    assert any("no --calibration" in w and "int8" in w for w in res.warnings)


def test_rebuild_reuses_cache_and_gives_identical_bundle(zoo, data_files, tmp_path, monkeypatch):
    monkeypatch.delenv("EDGEPACK_NO_CACHE")
    import time
    import uuid
    # Calibration data no earlier run has seen, so the first build below cannot hit the cache.
    cal = tmp_path / "cal.npz"
    noise = np.random.default_rng(uuid.uuid4().int % 2**32).random(data_files["x"][:200].shape) * 1e-3
    np.savez(cal, x=(data_files["x"][:200] + noise).astype("float32"))
    kwargs = dict(target="rpi", recipe="int8", calibration=cal, data=data_files["eval"])
    t0 = time.perf_counter()
    first = api.build(zoo["keras3_h5"], output=tmp_path / "one" / "d", **kwargs)
    t1 = time.perf_counter()
    messages = []
    second = api.build(zoo["keras3_h5"], output=tmp_path / "two" / "d", progress=messages.append, **kwargs)
    t2 = time.perf_counter()
    assert any("cached conversion" in m for m in messages)
    assert first.archive.read_bytes() == second.archive.read_bytes()
    assert second.verification.passed
    assert (t2 - t1) < (t1 - t0)          # the ratio itself is a benchmark (BENCHMARKS.md)
    # Changing an input (the calibration data) is a different key: converted afresh.
    other = tmp_path / "cal2.npz"
    np.savez(other, x=(data_files["x"][200:400] + noise).astype("float32"))   # also unseen by earlier runs
    messages.clear()
    api.build(zoo["keras3_h5"], output=tmp_path / "three" / "d", progress=messages.append,
              **dict(kwargs, calibration=other))
    assert not any("cached conversion" in m for m in messages)


@pytest.mark.parametrize("form", ["saved_model_subclassed", "saved_model_module"])
def test_fixed_batch_models_calibrate_at_their_batch_size(form, zoo, data_files, tmp_path):
    res = api.build(zoo[form], target="rpi", recipe="int8", calibration=data_files["calibration"],
                    data=data_files["eval"], runtimes=LITERT, output=tmp_path / "b")
    assert res.verification.passed
    assert res.manifest.to_json()["inputs"][0]["shape"][0] > 1


def test_unchanged_rebuild_touches_nothing_and_says_so(zoo, data_files, tmp_path, monkeypatch):
    """Issue 23: the same model, data and settings into a bundle that is already this build's is a no-op (the
    bundle and archive are not rewritten; the result says so), and any changed setting or a damaged archive or
    bundle builds again."""
    monkeypatch.delenv("EDGEPACK_NO_CACHE")
    out = tmp_path / "b" / "d"
    kwargs = dict(target="rpi", recipe="float32", data=data_files["eval"], runtimes=LITERT, output=out)
    first = api.build(zoo["keras3_h5"], **kwargs)
    assert not first.unchanged and first.manifest.to_json()["source"]["build_key"]
    files = [first.archive] + [p for p in out.rglob("*")]
    stamps = {p: p.stat().st_mtime_ns for p in files}
    archive_bytes = first.archive.read_bytes()
    messages = []
    again = api.build(zoo["keras3_h5"], progress=messages.append, **kwargs)
    assert again.unchanged and again.bundle.path == out and again.archive == first.archive
    assert any(m.startswith("unchanged:") and "nothing was written" in m for m in messages)
    assert any("nothing was written" in w for w in again.warnings)
    assert {p: p.stat().st_mtime_ns for p in files} == stamps
    assert again.verification.passed and again.verification.line() == first.verification.line()
    assert again.manifest.to_json()["verification"] == first.manifest.to_json()["verification"]
    assert again.to_json()["unchanged"] is True
    # A damaged archive is written again, byte for byte what it was.
    first.archive.write_bytes(archive_bytes[:-100])
    fixed = api.build(zoo["keras3_h5"], **kwargs)
    assert not fixed.unchanged and fixed.archive.read_bytes() == archive_bytes
    # So is a bundle whose file was changed.
    readme = out / "README.md"
    readme.write_text(readme.read_text() + "edited\n")
    assert not api.build(zoo["keras3_h5"], **kwargs).unchanged
    assert api.build(zoo["keras3_h5"], **kwargs).unchanged
    # An edit that keeps the file's size (mtime bumped): the stat cache does not vouch for it, so it builds again.
    import os
    before = readme.stat()
    text = readme.read_text()
    readme.write_text(text[:-2] + ("x" if text[-2] != "x" else "y") + text[-1:])
    os.utime(readme, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))
    assert readme.stat().st_size == before.st_size
    assert not api.build(zoo["keras3_h5"], **kwargs).unchanged
    assert readme.read_text() == text
    assert api.build(zoo["keras3_h5"], **kwargs).unchanged
    # A changed setting (here --no-verify) builds again.
    other = api.build(zoo["keras3_h5"], **dict(kwargs, verify=False))
    assert not other.unchanged
    assert other.manifest.to_json()["source"]["build_key"] != first.manifest.to_json()["source"]["build_key"]
    # --no-cache always builds.
    assert not api.build(zoo["keras3_h5"], **dict(kwargs, verify=False, use_cache=False)).unchanged
