"""packager.verification.arm64: aarch64 Python under qemu-user with the real aarch64 wheels.

The slow tests prepare two arm64 environments once per session (cached under
``$EDGEPACK_CACHE_DIR/arm64``, default ``~/.cache/edgepack/arm64``; about a minute the first time,
seconds afterwards) and prove the code really runs as aarch64. The fast tests need no network,
no qemu and no root.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from packager.verification import arm64
from packager.errors import EnvironmentProblem, UsageError

LITERT = ["ai-edge-litert==2.3.*", "numpy>=1.23,<3"]
TFLITE = ["tflite-runtime==2.14.0", "numpy<2"]
RUN_TIMEOUT = 300


def _cache_dir() -> Path:
    from packager.paths import env_dir
    root = str(env_dir())
    return Path(root) / "arm64"


def _run(argv, *, timeout=RUN_TIMEOUT):
    import subprocess

    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout: {proc.stdout[-2000:]}\nstderr: {proc.stderr[-2000:]}"
    return proc


def _prepare(requirements):
    """Prepare once per session; skip (with the fix) only when this host cannot build/emulate at all."""
    cache = _cache_dir()
    checks = {c.name: c for c in arm64.doctor(cache)}
    rootfs, _ = arm64.cache_paths(requirements, cache_dir=cache)
    needed = ["qemu-aarch64-static"]
    if not (rootfs / arm64.ROOTFS_MARKER).is_file():
        needed += ["debootstrap", "unpack tools", "root", "debian keyring"]
    for name in needed:
        if not checks[name].ok:
            pytest.skip(f"host cannot emulate arm64: {name}: {checks[name].detail} (fix: {checks[name].fix})")
    return arm64.prepare_arm64_python(requirements, cache_dir=cache)


@pytest.fixture(scope="session")
def litert_py():
    return _prepare(LITERT)


@pytest.fixture(scope="session")
def tflite_py():
    return _prepare(TFLITE)


@pytest.fixture(scope="session")
def tiny_model():
    """A 2-layer Dense model converted on the host, a batch of inputs and the host ai_edge_litert result."""
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    tf.keras.utils.set_random_seed(7)
    model = tf.keras.Sequential([tf.keras.Input((4,)), tf.keras.layers.Dense(8, activation="relu"),
                                 tf.keras.layers.Dense(3)])
    content = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    interp = Interpreter(model_content=content)
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    interp.resize_tensor_input(inp["index"], list(x.shape))
    interp.allocate_tensors()
    interp.set_tensor(inp["index"], x)
    interp.invoke()
    expected = interp.get_tensor(out["index"]).copy()
    assert expected.shape == (5, 3) and np.abs(expected).max() > 0
    return content, x, expected


GUEST_PROBE = r"""
import json, os, platform, sys
import numpy
print(json.dumps({"machine": platform.machine(), "uname": os.uname().machine, "python": platform.python_version(),
                  "prefix": sys.prefix, "numpy": numpy.__version__, "numpy_file": numpy.__file__,
                  "sys_path": sys.path}))
"""

GUEST_RUN = r"""
import json, platform, sys
import numpy as np
module, model, src, dst = sys.argv[1:5]
if module == "ai_edge_litert":
    import ai_edge_litert as pkg
    from ai_edge_litert.interpreter import Interpreter
else:
    import tflite_runtime as pkg
    from tflite_runtime.interpreter import Interpreter
with np.load(src) as data:
    x = data["x"]
interp = Interpreter(model_path=model)
inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
interp.resize_tensor_input(inp["index"], list(x.shape))
interp.allocate_tensors()
interp.set_tensor(inp["index"], x)
interp.invoke()
np.savez(dst, y=interp.get_tensor(out["index"]))
print(json.dumps({"machine": platform.machine(), "numpy": np.__version__, "runtime_file": pkg.__file__}))
"""


def _run_model(py, module, tiny_model, tmp_path):
    content, x, expected = tiny_model
    (tmp_path / "model.tflite").write_bytes(content)
    np.savez(tmp_path / "in.npz", x=x)
    script = tmp_path / "guest_run.py"
    script.write_text(GUEST_RUN)
    out = tmp_path / "out.npz"
    proc = _run([*py.argv, script, module, tmp_path / "model.tflite", tmp_path / "in.npz", out])
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out.is_file(), "the emulated process could not write to a host path"
    with np.load(out) as data:
        got = data["y"]
    assert info["machine"] == "aarch64"
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    return info


# --------------------------------------------------------------------------- slow: real emulation
@pytest.mark.slow
def test_code_really_runs_as_aarch64(litert_py, tmp_path):
    script = tmp_path / "probe.py"
    script.write_text(GUEST_PROBE)
    info = json.loads(_run([*litert_py.argv, script]).stdout.strip().splitlines()[-1])
    assert info["machine"] == "aarch64" and info["uname"] == "aarch64"
    assert info["python"].startswith("3.11.")
    # The stdlib comes from the arm64 root filesystem, numpy from the aarch64 wheels, nothing from the host.
    assert Path(info["prefix"]).resolve().is_relative_to(litert_py.rootfs.resolve())
    assert Path(info["numpy_file"]).resolve().is_relative_to(litert_py.site_dir.resolve())
    assert int(info["numpy"].split(".")[0]) >= 2
    for entry in info["sys_path"][1:]:
        p = Path(entry).resolve()
        assert p.is_relative_to(litert_py.rootfs.resolve()) or p.is_relative_to(litert_py.site_dir.resolve()), entry


@pytest.mark.slow
def test_plain_list_unpacking_and_dataclass(litert_py):
    assert [*litert_py] == litert_py.argv
    assert litert_py.argv[0].endswith("qemu-aarch64-static")
    assert litert_py.env == {}
    assert "aarch64" in litert_py.description or "arm64" in litert_py.description
    assert any(p.startswith("ai-edge-litert==2.3.") for p in litert_py.packages)


@pytest.mark.slow
def test_ai_edge_litert_runs_the_model_like_the_host(litert_py, tiny_model, tmp_path):
    info = _run_model(litert_py, "ai_edge_litert", tiny_model, tmp_path)
    assert Path(info["runtime_file"]).resolve().is_relative_to(litert_py.site_dir.resolve())


@pytest.mark.slow
def test_tflite_runtime_214_runs_the_model_like_the_host(tflite_py, tiny_model, tmp_path):
    info = _run_model(tflite_py, "tflite_runtime", tiny_model, tmp_path)
    assert info["numpy"].startswith("1."), info
    assert Path(info["runtime_file"]).resolve().is_relative_to(tflite_py.site_dir.resolve())
    assert "tflite-runtime==2.14.0" in tflite_py.packages


@pytest.mark.slow
def test_environments_share_one_root_filesystem(litert_py, tflite_py):
    assert litert_py.rootfs == tflite_py.rootfs
    assert litert_py.site_dir != tflite_py.site_dir


@pytest.mark.slow
def test_second_preparation_is_cached(litert_py):
    seen = []
    start = time.monotonic()
    again = arm64.prepare_arm64_python(list(reversed(LITERT)), cache_dir=_cache_dir(),
                                       progress=lambda m, f: seen.append((m, f)))
    assert time.monotonic() - start < 15
    assert again.argv == litert_py.argv
    assert seen and seen[-1][1] == 1.0
    assert all(f is None or 0.0 <= f <= 1.0 for _, f in seen)


# --------------------------------------------------------------------------- fast
def test_cache_keys():
    base = arm64.site_key(LITERT)
    assert base == arm64.site_key(list(reversed(LITERT)))                      # order does not matter
    assert base == arm64.site_key(["ai-edge-litert==2.3.*", "  numpy>=1.23,<3 ", "", LITERT[0]])
    assert base != arm64.site_key(TFLITE)
    assert base != arm64.site_key(LITERT, python_version="3.13", suite="trixie")
    assert base != arm64.site_key(LITERT + ["tqdm"])
    assert len(base) == 16 and int(base, 16) >= 0
    # The root filesystem depends on suite + Python only.
    assert arm64.rootfs_key("bookworm", "3.11") == arm64.rootfs_key("bookworm", "3.11")
    assert arm64.rootfs_key("bookworm", "3.11") != arm64.rootfs_key("trixie", "3.13")


def test_cache_paths_share_rootfs(tmp_path):
    r1, s1 = arm64.cache_paths(LITERT, cache_dir=tmp_path)
    r2, s2 = arm64.cache_paths(TFLITE, cache_dir=tmp_path)
    assert r1 == r2 and s1 != s2
    assert r1.parent == s1.parent == tmp_path.absolute()
    assert arm64.site_key(LITERT) in s1.name and arm64.rootfs_key() in r1.name


def _fake_rootfs(cache: Path, requirements) -> tuple:
    rootfs, site = arm64.cache_paths(requirements, cache_dir=cache)
    (rootfs / "usr" / "bin").mkdir(parents=True)
    (rootfs / "usr" / "bin" / "python3.11").write_text("")
    arm64._write_marker(rootfs / arm64.ROOTFS_MARKER, {"glibc": "2.36", "python_full": "3.11.2", "size_bytes": 1})
    return rootfs, site


def test_cached_entries_are_reused_without_building(tmp_path, monkeypatch):
    rootfs, site = _fake_rootfs(tmp_path, LITERT)
    site.mkdir()
    arm64._write_marker(site / arm64.SITE_MARKER, {"packages": ["numpy==2.0.0"], "size_bytes": 1})
    monkeypatch.setattr(arm64, "_find_qemu", lambda: "/opt/fake/qemu-aarch64-static")

    def no_subprocess(*a, **k):
        raise AssertionError("a cached preparation must not run anything")

    monkeypatch.setattr(arm64, "_run", no_subprocess)
    monkeypatch.setattr(arm64, "_qemu_version", lambda q: "9.9")
    py = arm64.prepare_arm64_python(LITERT, cache_dir=tmp_path)
    assert py.argv[:3] == ["/opt/fake/qemu-aarch64-static", "-L", str(rootfs)]
    assert f"PYTHONPATH={site}" in py.argv
    assert py.argv[-3:] == [str(rootfs / "usr" / "bin" / "python3.11"), "-s", "-B"]
    assert [*py] == py.argv and py.rootfs == rootfs and py.site_dir == site
    assert py.packages == ("numpy==2.0.0",)
    with pytest.raises(dataclasses.FrozenInstanceError):
        py.argv = []


def test_interrupted_build_leaves_no_entry_and_is_cleaned_up(tmp_path, monkeypatch):
    rootfs, site = _fake_rootfs(tmp_path, TFLITE)
    monkeypatch.setattr(arm64, "_find_qemu", lambda: "/opt/fake/qemu-aarch64-static")
    monkeypatch.setattr(arm64, "_qemu_version", lambda q: "9.9")

    def interrupted(cmd, **kwargs):
        target = Path(cmd[cmd.index("--target") + 1])
        (target / "half-installed.py").write_text("")
        raise KeyboardInterrupt

    monkeypatch.setattr(arm64, "_run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        arm64.prepare_arm64_python(TFLITE, cache_dir=tmp_path)
    assert not site.exists()
    assert not list(tmp_path.glob(".tmp-*"))

    # A leftover of a killed build (no chance to clean up) is removed by the next build of that key.
    stale = tmp_path / f".tmp-site-{arm64.site_key(TFLITE)}-killed"
    (stale / "site").mkdir(parents=True)
    calls = []

    def pip_ok(cmd, **kwargs):
        calls.append(cmd)
        if "--target" in cmd:
            target = Path(cmd[cmd.index("--target") + 1])
            dist = target / "tflite_runtime-2.14.0.dist-info"
            dist.mkdir()
            (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tflite-runtime\nVersion: 2.14.0\n\n")
        return 0, []

    monkeypatch.setattr(arm64, "_run", pip_ok)
    py = arm64.prepare_arm64_python(TFLITE, cache_dir=tmp_path)
    assert site.is_dir() and (site / arm64.SITE_MARKER).is_file() and not stale.exists()
    assert py.packages == ("tflite-runtime==2.14.0",)
    pip_cmd = calls[0]
    assert "--only-binary=:all:" in pip_cmd and "manylinux_2_36_aarch64" in pip_cmd
    assert "manylinux2014_aarch64" in pip_cmd and pip_cmd[pip_cmd.index("--abi") + 1] == "cp311"
    assert not list(tmp_path.glob(".tmp-*"))


def test_missing_qemu_is_an_environment_problem_with_the_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(arm64, "_find_qemu", lambda: None)
    with pytest.raises(EnvironmentProblem) as err:
        arm64.prepare_arm64_python(LITERT, cache_dir=tmp_path)
    assert "\n" not in err.value.message and "qemu-user-static" in err.value.hint
    qemu = next(c for c in arm64.doctor(tmp_path) if c.name == "qemu-aarch64-static")
    assert not qemu.ok and "apt-get install" in qemu.fix and "qemu-user-static" in qemu.fix


def test_bad_arguments_are_usage_errors(tmp_path):
    with pytest.raises(UsageError) as err:
        arm64.prepare_arm64_python(LITERT, cache_dir=tmp_path, python_version="3.13", suite="bookworm")
    assert "trixie" in err.value.hint
    with pytest.raises(UsageError):
        arm64.prepare_arm64_python(["--index-url=http://x", "numpy"], cache_dir=tmp_path)
    with pytest.raises(UsageError):
        arm64.prepare_arm64_python("numpy", cache_dir=tmp_path)


def test_doctor(tmp_path):
    checks = arm64.doctor(tmp_path)
    names = [c.name for c in checks]
    assert len(names) == len(set(names))
    for name in ("qemu-aarch64-static", "binfmt_misc", "debootstrap", "root", "pip", "arm64 cache"):
        assert name in names
    for check in checks:
        assert isinstance(check, arm64.Check) and check.detail and "\n" not in check.detail
        if not check.ok:
            assert check.fix, check
    binfmt = next(c for c in checks if c.name == "binfmt_misc")
    assert binfmt.ok  # informational: never required
    cache = next(c for c in checks if c.name == "arm64 cache")
    assert str(tmp_path) in cache.detail
    with pytest.raises(dataclasses.FrozenInstanceError):
        checks[0].ok = False


def test_doctor_reports_a_cached_rootfs_and_its_size(tmp_path):
    rootfs, _ = _fake_rootfs(tmp_path, LITERT)
    (rootfs / "usr" / "lib").mkdir(parents=True)
    (rootfs / "usr" / "lib" / "big").write_bytes(b"\0" * 3_000_000)
    cache = next(c for c in arm64.doctor(tmp_path) if c.name == "arm64 cache")
    assert "1 root filesystem" in cache.detail and "3 MB" in cache.detail
