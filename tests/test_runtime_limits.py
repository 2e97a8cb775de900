"""The device script's isolation child and the host emulator run under an address-space limit:
a model or input that needs more ends as exit code 5 naming the limit, not as an OOM kill."""
from __future__ import annotations

import json
import subprocess

import numpy as np

from packager.verification.emulator import DEFAULT_RUNTIME_MEMORY_MB, run_device_script, runtime_env


def _device(env, bundle, *args, limit=None, timeout=120):
    e = dict(env.env)
    if limit is not None:
        e["EDGEPACK_RUNTIME_MEMORY_MB"] = str(limit)
    return subprocess.run([*env.argv, str(bundle / "edgepack_run.py"), *args], capture_output=True, text=True,
                          env=e, timeout=timeout)


def _big_input(int8_bundle, path, megabytes: int):
    spec = json.loads((int8_bundle.bundle / "manifest.json").read_text())["inputs"][0]
    per_sample = int(np.prod([d for d in spec["shape"][1:]])) * 4
    n = megabytes * (1 << 20) // per_sample
    np.savez_compressed(path, **{spec["name"]: np.zeros([n] + spec["shape"][1:], np.float32)})
    return path


def test_input_beyond_the_limit_is_exit_5_naming_the_limit(int8_bundle, runtime_python, tmp_path):
    big = _big_input(int8_bundle, tmp_path / "big.npz", 700)
    proc = _device(runtime_python, int8_bundle.bundle, "--input", str(big), "--output", str(tmp_path / "o.npz"),
                   limit=400)
    assert proc.returncode == 5, proc.stderr[-600:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("edgepack_run: error:")]
    assert len(lines) == 1 and "EDGEPACK_RUNTIME_MEMORY_MB" in lines[0] and "400 MiB" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "o.npz").exists()


def test_limit_too_small_to_start_the_runtime_is_still_exit_5(int8_bundle, runtime_python):
    for limit in (60, 100, 150):
        proc = _device(runtime_python, int8_bundle.bundle, "--self-test", limit=limit)
        assert proc.returncode == 5, (limit, proc.returncode, proc.stderr[-600:])
        assert "EDGEPACK_RUNTIME_MEMORY_MB" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_bad_limit_value_is_exit_2(int8_bundle, runtime_python):
    proc = _device(runtime_python, int8_bundle.bundle, "--self-test", limit="lots")
    assert proc.returncode == 2 and "EDGEPACK_RUNTIME_MEMORY_MB" in proc.stderr


def test_normal_runs_fit_the_default_limit(int8_bundle, runtime_python):
    proc = _device(runtime_python, int8_bundle.bundle, "--self-test", limit=DEFAULT_RUNTIME_MEMORY_MB)
    assert proc.returncode == 0, proc.stderr
    assert runtime_env(runtime_python)["EDGEPACK_RUNTIME_MEMORY_MB"] == str(DEFAULT_RUNTIME_MEMORY_MB)


def test_emulator_applies_the_hosts_setting(int8_bundle, runtime_python, monkeypatch):
    spec = json.loads((int8_bundle.bundle / "manifest.json").read_text())["inputs"][0]
    n = 600 * (1 << 20) // (int(np.prod(spec["shape"][1:])) * 4)
    monkeypatch.setenv("EDGEPACK_RUNTIME_MEMORY_MB", "300")
    run = run_device_script(runtime_python, int8_bundle.bundle,
                            {spec["name"]: np.zeros([n] + spec["shape"][1:], np.float32)})
    assert not run.ok and run.exit_code == 5 and "300 MiB" in run.error, run.error
