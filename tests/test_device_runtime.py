"""The device script, run as the device runs it: `python edgepack_run.py ...` in an environment
holding only a TFLite runtime and numpy. Also: swapped and tampered models are caught."""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from packager import api
from packager.bundle.files import manifest_bytes, sha256_file
from packager.errors import VerificationError

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "device_runtime" / "edgepack_run.py"


def run(env, bundle: Path, *args, timeout=120):
    return subprocess.run([*env.argv, str(bundle / "edgepack_run.py"), *args], capture_output=True, text=True,
                          env=env.env, timeout=timeout)


@pytest.fixture()
def bundle_copy(int8_bundle, tmp_path):
    dst = tmp_path / "bundle"
    shutil.copytree(int8_bundle.bundle, dst)
    return dst


def rewrite_manifest(bundle: Path, **changes):
    m = json.loads((bundle / "manifest.json").read_text())
    m.update(changes)
    for rel in list(m["files"]):
        m["files"][rel] = "sha256:" + sha256_file(bundle / rel)
    (bundle / "manifest.json").write_bytes(manifest_bytes(m))
    return m


def test_runtime_env_has_no_tensorflow(runtime_python):
    proc = subprocess.run([*runtime_python.argv, "-c", "import tensorflow"], capture_output=True, text=True,
                          env=runtime_python.env, timeout=60)
    assert proc.returncode != 0 and "No module named 'tensorflow'" in proc.stderr


def test_inference_matches_in_process_reference(runtime_python, int8_bundle, data_files, tmp_path):
    x = data_files["xt"][:37]                       # not a multiple of the chunk size
    np.savez(tmp_path / "in.npz", pixels=x)
    proc = run(runtime_python, int8_bundle.bundle, "--input", str(tmp_path / "in.npz"),
               "--output", str(tmp_path / "out.npz"), "--batch", "8")
    assert proc.returncode == 0, proc.stderr
    with np.load(tmp_path / "out.npz") as out:
        probs = out["probs"]
    assert probs.shape == (37, 10)
    from device_runtime.edgepack_run import Runner
    model = (int8_bundle.bundle / "model.tflite").read_bytes()
    in_process = Runner(model, int8_bundle.manifest.to_json()).run({"pixels": x}, chunk=64)["probs"]
    assert np.allclose(probs, in_process, atol=1e-6)   # batched, padded, in another process: same numbers
    assert np.allclose(probs.sum(1), 1.0, atol=0.05)
    assert (probs.argmax(1) == data_files["yt"][:37]).mean() > 0.85


def test_blocked_tensorflow_still_runs(int8_bundle, tmp_path, data_files):
    """Run with the host interpreter (which HAS TensorFlow) but with TF made unimportable."""
    np.save(tmp_path / "x.npy", data_files["xt"][:5])
    blocker = tmp_path / "sitecustomize.py"
    blocker.write_text(
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('tensorflow', 'keras', 'tf_keras', 'packager'):\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n")
    env = {"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, str(int8_bundle.bundle / "edgepack_run.py"), "--input",
                           str(tmp_path / "x.npy"), "--output", str(tmp_path / "y.npz")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    with np.load(tmp_path / "y.npz") as out:
        assert out["probs"].shape == (5, 10)
    info = subprocess.run([sys.executable, str(int8_bundle.bundle / "edgepack_run.py"), "--info"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert json.loads(info.stdout)["runtime"] == "ai_edge_litert"


def test_device_runtime_imports_nothing_heavy():
    """Every import statement of the shipped script (any form: ``import x``, ``from x.y import z``,
    nested in functions): stdlib, numpy, the TFLite runtimes; TensorFlow only as its TFLite
    interpreter (the last resort); nothing of edgepack."""
    import ast
    imported = set()
    for node in ast.walk(ast.parse(SCRIPT.read_text())):
        if isinstance(node, ast.Import):
            imported |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add("." * node.level + (node.module or ""))
    allowed_tf = {"tensorflow.lite.python.interpreter"}
    assert not {m for m in imported if m.split(".")[0] == "tensorflow"} - allowed_tf
    assert not {m for m in imported if m.split(".")[0] in ("packager", "keras", "tf_keras") or m.startswith(".")}
    # the runtimes are imported by name from the RUNTIMES table (importlib), and only there
    table = next(n.value for n in ast.walk(ast.parse(SCRIPT.read_text())) if isinstance(n, ast.Assign)
                 and any(getattr(t, "id", None) == "RUNTIMES" for t in n.targets))
    dynamic = {ast.literal_eval(v) for v in table.values}
    assert {m for m in dynamic if m.split(".")[0] == "tensorflow"} <= allowed_tf
    third_party = {m.split(".")[0] for m in imported | dynamic} - set(sys.stdlib_module_names)
    assert third_party <= {"numpy", "ai_edge_litert", "tflite_runtime", "tensorflow"}
    calls = [n for n in ast.walk(ast.parse(SCRIPT.read_text())) if isinstance(n, ast.Call)
             and getattr(n.func, "attr", None) == "import_module"]
    assert [ast.unparse(c.args[0]) for c in calls] == ["RUNTIMES[name]"]


def test_tampered_model_fails_checksum(runtime_python, bundle_copy):
    model = bundle_copy / "model.tflite"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    proc = run(runtime_python, bundle_copy, "--self-test")
    assert proc.returncode == 3
    assert "sha256" in proc.stderr and "Traceback" not in proc.stderr
    with pytest.raises(VerificationError) as exc:
        api.verify(bundle_copy, reference=bundle_copy / "missing.h5")
    assert "integrity" in exc.value.message and "model.tflite" in exc.value.message


def test_truncated_model_and_wrong_identifier(runtime_python, bundle_copy):
    model = bundle_copy / "model.tflite"
    model.write_bytes(model.read_bytes()[:100])
    proc = run(runtime_python, bundle_copy, "--check")
    assert proc.returncode == 3 and "size" in proc.stderr
    m = json.loads((bundle_copy / "manifest.json").read_text())
    model.write_bytes(b"\0" * m["model_size"])
    proc = run(runtime_python, bundle_copy, "--check")
    assert proc.returncode == 3 and "TFL3" in proc.stderr


def test_swapped_model_fails_on_outputs_alone(zoo, int8_bundle, tmp_path, data_files):
    """Same input/output names and shapes, checksums updated: only the numbers can tell."""
    other = api.build(zoo["other_same_shapes"], target="rpi", recipe="int8", calibration=data_files["calibration"],
                      runtimes=["ai-edge-litert"], output=tmp_path / "other", verify=False)
    victim = tmp_path / "victim"
    shutil.copytree(int8_bundle.bundle, victim)
    new_model = (other.bundle / "model.tflite").read_bytes()
    (victim / "model.tflite").write_bytes(new_model)
    om = json.loads((other.bundle / "manifest.json").read_text())
    rewrite_manifest(victim, model_sha256=hashlib.sha256(new_model).hexdigest(), model_size=len(new_model),
                     inputs=om["inputs"], outputs=om["outputs"])
    report = api.verify(victim, reference=zoo["keras3_h5"], data=data_files["eval"], runtimes=["ai-edge-litert"])
    assert not report.passed
    (rt,) = report.runtimes
    assert rt.status == "failed"
    assert rt.metrics[0].top1_agreement < 0.5


def test_correct_bundle_passes_verify(zoo, int8_bundle, data_files):
    report = api.verify(int8_bundle.bundle, reference=zoo["keras3_h5"], data=data_files["eval"])
    assert report.passed
    assert {r.runtime for r in report.runtimes} == {"ai-edge-litert", "tflite-runtime"}
    assert all(r.machine == "x86_64" for r in report.runtimes)


def test_self_test_passes_then_fails_when_expected_changes(runtime_python, bundle_copy):
    proc = run(runtime_python, bundle_copy, "--self-test")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["passed"] is True
    with np.load(bundle_copy / "samples" / "expected.npz") as npz:
        expected = {k: npz[k] for k in npz.files}
    expected["probs"] = expected["probs"][:, ::-1].copy()
    np.savez(bundle_copy / "samples" / "expected.npz", **expected)
    rewrite_manifest(bundle_copy)
    proc = run(runtime_python, bundle_copy, "--self-test")
    assert proc.returncode == 6
    assert json.loads(proc.stdout)["outputs"]["probs"]["passed"] is False


def test_int8_io_roundtrip(runtime_python, zoo, data_files, tmp_path):
    res = api.build(zoo["keras3_h5"], target="rpi", recipe="int8", io="int8", calibration=data_files["calibration"],
                    runtimes=["ai-edge-litert"], output=tmp_path / "b")
    x = data_files["xt"][:20]
    np.savez(tmp_path / "in.npz", pixels=x)
    proc = run(runtime_python, res.bundle, "--input", str(tmp_path / "in.npz"), "--output", str(tmp_path / "f.npz"))
    assert proc.returncode == 0, proc.stderr
    proc = run(runtime_python, res.bundle, "--input", str(tmp_path / "in.npz"), "--output",
               str(tmp_path / "r.npz"), "--raw")
    assert proc.returncode == 0, proc.stderr
    q = res.manifest.to_json()["outputs"][0]["quantization"]
    with np.load(tmp_path / "f.npz") as f, np.load(tmp_path / "r.npz") as r:
        assert r["probs"].dtype == np.int8 and f["probs"].dtype == np.float32
        deq = (r["probs"].astype(np.float32) - q["zero_point"]) * q["scale"]
        assert np.allclose(deq, f["probs"], atol=1e-6)
        assert (f["probs"].argmax(1) == data_files["yt"][:20]).mean() > 0.8
    # Already-quantized int8 inputs pass through unchanged with --raw.
    qi = res.manifest.to_json()["inputs"][0]["quantization"]
    xq = np.clip(np.round(x / qi["scale"]) + qi["zero_point"], -128, 127).astype(np.int8)
    np.savez(tmp_path / "q.npz", pixels=xq)
    proc = run(runtime_python, res.bundle, "--input", str(tmp_path / "q.npz"), "--output", str(tmp_path / "q2.npz"),
               "--raw")
    assert proc.returncode == 0, proc.stderr
    with np.load(tmp_path / "q2.npz") as a, np.load(tmp_path / "r.npz") as b:
        assert np.array_equal(a["probs"], b["probs"])
    # Without --raw, integer-typed files hold real values like any other: the same rule as the emulator.
    np.savez(tmp_path / "i.npz", pixels=np.round(x * 16).astype(np.int16))
    proc = run(runtime_python, res.bundle, "--input", str(tmp_path / "i.npz"), "--output", str(tmp_path / "i2.npz"))
    assert proc.returncode == 0, proc.stderr
    np.savez(tmp_path / "if.npz", pixels=np.round(x * 16).astype(np.float32))
    proc = run(runtime_python, res.bundle, "--input", str(tmp_path / "if.npz"), "--output", str(tmp_path / "if2.npz"))
    with np.load(tmp_path / "i2.npz") as a, np.load(tmp_path / "if2.npz") as b:
        assert np.array_equal(a["probs"], b["probs"])


def test_multi_io_by_name_json_input(runtime_python, zoo, tmp_path):
    res = api.build(zoo["multi_io"], target="rpi", recipe="float32", runtimes=["ai-edge-litert"],
                    output=tmp_path / "b")
    rng = np.random.default_rng(0)
    a, b = rng.random((3, 4)).tolist(), rng.random((3, 3)).tolist()
    (tmp_path / "in.json").write_text(json.dumps({"sensor_b": b, "sensor_a": a}))
    proc = run(runtime_python, res.bundle, "--input", str(tmp_path / "in.json"), "--output", str(tmp_path / "o.npz"))
    assert proc.returncode == 0, proc.stderr
    with np.load(tmp_path / "o.npz") as out:
        assert out["zeta"].shape == (3, 2) and out["alpha"].shape == (3, 5)
        assert np.allclose(out["alpha"].sum(1), 1, atol=1e-5)
    (tmp_path / "bad.json").write_text(json.dumps({"sensor_a": a}))
    proc = run(runtime_python, res.bundle, "--input", str(tmp_path / "bad.json"), "--output", str(tmp_path / "o.npz"))
    assert proc.returncode == 2 and "sensor_b" in proc.stderr


def test_bad_inputs_are_clean_errors(runtime_python, int8_bundle, tmp_path):
    cases = {
        "shape.npz": lambda p: np.savez(p, pixels=np.zeros((2, 7, 8, 1), np.float32)),
        "object.npy": lambda p: np.save(p, np.array([{"x": 1}], dtype=object), allow_pickle=True),
        "garbage.npz": lambda p: p.write_bytes(b"PK\x03\x04 not really a zip"),
        "huge.npy": lambda p: p.write_bytes(_huge_npy_header()),
    }
    for name, make in cases.items():
        path = tmp_path / name
        make(path)
        proc = run(runtime_python, int8_bundle.bundle, "--input", str(path), "--output", str(tmp_path / "o.npz"))
        assert proc.returncode == 2, (name, proc.stderr)
        assert proc.stderr.strip().splitlines()[-1].startswith("edgepack_run: error:"), name
        assert "Traceback" not in proc.stderr, name


def _huge_npy_header() -> bytes:
    """A valid .npy header announcing 4e9 float32 elements, with no data behind it."""
    import io
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False,
                                               "shape": (1000000, 8, 8, 64)})
    return buf.getvalue()


def test_benchmark_and_info_json(runtime_python, int8_bundle):
    proc = run(runtime_python, int8_bundle.bundle, "--benchmark", "20", "--warmup", "2")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["runs"] == 20 and 0 < data["p50_ms"] <= data["p90_ms"] <= data["p99_ms"]
    assert data["init_ms"] > 0 and data["peak_rss_mb"] > 1
    assert data["runtime"] == "ai_edge_litert" and data["machine"]


def test_no_runtime_is_exit_4(int8_bundle, tmp_path):
    venv = tmp_path / "empty"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    # numpy only from the host, no runtime: emulate by pointing at a site dir with just numpy.
    import numpy
    site = tmp_path / "site"
    site.mkdir()
    (site / "numpy").symlink_to(Path(numpy.__file__).parent)
    proc = subprocess.run([str(venv / "bin" / "python"), "-s", str(int8_bundle.bundle / "edgepack_run.py"), "--check"],
                          capture_output=True, text=True, env={"PYTHONPATH": str(site)}, timeout=120)
    assert proc.returncode == 4, proc.stderr
    assert "no TFLite runtime" in proc.stderr and "pip install ai-edge-litert" in proc.stderr
