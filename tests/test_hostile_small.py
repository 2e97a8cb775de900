"""Smaller hostile inputs, one kind each: control characters in --remote-dir, FIFOs, float64
beyond float32, the whole-file input cap, symlinks in a bundle, a full disk, a truncated archive,
names ending in a newline. Each ends as one error line with its documented exit code."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from packager import api
from packager.bundle.files import extract_archive, check_name
from packager.errors import UsageError

ROOT = Path(__file__).resolve().parent.parent
LITERT = ["ai-edge-litert"]


def _cli(*args, env=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "packager.cli", *map(str, args)], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT), **(env or {})), timeout=timeout)


def _one_error(stderr: str) -> str:
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    assert "Traceback" not in stderr and "Aborted" not in stderr, stderr[-1000:]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1, stderr[-1000:]
    return errors[0]


# ---------------------------------------------------------------- --remote-dir
@pytest.mark.parametrize("char", ["\r", "\v", "\x1c", "\x1f", "\x85", "\u2028", "\u2029", "\t", "\x7f", "\x9b"])
def test_remote_dir_with_control_or_separator_chars_refused_before_connecting(char, tmp_path, built_bundles_small):
    from packager.deploy import SshTransport, deploy
    target = tmp_path / "device"
    # an unreachable host: a refusal must come before any connection attempt
    t = SshTransport("nobody@192.0.2.1:1", timeout=5)
    with pytest.raises(UsageError) as exc:
        deploy(built_bundles_small, t, remote_dir=f"{target}/edge{char}pack")
    assert "control or line/paragraph separator" in exc.value.message and "\n" not in exc.value.message
    assert not target.exists()


@pytest.fixture(scope="module")
def built_bundles_small(request, tmp_path_factory):
    from tests.deploy_helpers import copy_bundle, session_bundles
    return copy_bundle(session_bundles(request, tmp_path_factory)[("rpi", "a")],
                       tmp_path_factory.mktemp("small") / "tiny-rpi")


# ---------------------------------------------------------------- FIFOs and other non-regular files
def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _no_hang(fn, seconds=60):
    """Run fn in a thread; fail (instead of hanging the suite) if it blocks."""
    box = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001
            box["error"] = exc
    th = threading.Thread(target=target, daemon=True)
    th.start()
    th.join(seconds)
    if th.is_alive():
        # unblock a reader stuck on the FIFO, then fail
        pytest.fail("blocked on a FIFO")
    if "error" in box:
        raise box["error"]
    return box.get("value")


@pytest.mark.parametrize("what", ["model", "calibration", "data", "labels", "savedmodel_member"])
def test_fifos_are_refused_without_hanging(what, zoo, tmp_path):
    kwargs = {"recipe": "float32"}
    model = zoo["keras3_h5"]
    if what == "model":
        model = _fifo(tmp_path / "m.h5")
    elif what == "calibration":
        kwargs.update(recipe="int8", calibration=_fifo(tmp_path / "c.npz"))
    elif what == "data":
        kwargs["data"] = _fifo(tmp_path / "d.npz")
    elif what == "labels":
        kwargs["labels"] = _fifo(tmp_path / "labels.txt")
    else:
        model = tmp_path / "sm"
        shutil.copytree(zoo["saved_model_module"], model)
        victim = next(p for p in (model / "variables").iterdir() if p.is_file())
        victim.unlink()
        _fifo(victim)
    with pytest.raises(UsageError) as exc:
        _no_hang(lambda: api.build(model, target="rpi", runtimes=LITERT, output=tmp_path / "out", **kwargs))
    assert "regular file" in exc.value.message or "FIFO" in exc.value.message, exc.value.message
    assert not (tmp_path / "out").exists()


def test_device_script_refuses_a_fifo_input(int8_bundle, runtime_python, tmp_path):
    fifo = _fifo(tmp_path / "in.npz")
    proc = subprocess.run([*runtime_python.argv, str(int8_bundle.bundle / "edgepack_run.py"), "--input", str(fifo),
                           "--output", str(tmp_path / "o.npz")], capture_output=True, text=True,
                          env=runtime_python.env, timeout=60)
    assert proc.returncode == 2 and "not a regular file" in proc.stderr and "Traceback" not in proc.stderr


# ---------------------------------------------------------------- data values and sizes
def test_float64_calibration_beyond_float32_refused(zoo, data_files, tmp_path):
    x = data_files["x"][:100].astype(np.float64)
    x[3, 0] = 1e39
    path = tmp_path / "huge.npz"
    np.savez(path, x=x)
    with pytest.raises(UsageError) as exc:
        api.build(zoo["keras3_h5"], target="rpi", recipe="int8", calibration=path, runtimes=LITERT,
                  output=tmp_path / "out")
    assert "beyond the float32 range" in exc.value.message
    assert not (tmp_path / "out").exists()


def test_input_cap_counts_all_arrays_of_a_file(int8_bundle, runtime_python, tmp_path, monkeypatch):
    name = json.loads((int8_bundle.bundle / "manifest.json").read_text())["inputs"][0]["name"]
    arrays = {f"a{i}": np.zeros((10, 64), np.float32) for i in range(40)}
    arrays[name] = np.zeros((10, 8, 8, 1), np.float32)
    path = tmp_path / "many.npz"
    np.savez(path, **arrays)
    env = dict(runtime_python.env, EDGEPACK_MAX_INPUT_ELEMENTS="10000")   # each array is under it, all 41 are not
    proc = subprocess.run([*runtime_python.argv, str(int8_bundle.bundle / "edgepack_run.py"), "--input", str(path),
                           "--output", str(tmp_path / "o.npz")], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 2 and "in all" in proc.stderr, proc.stderr
    # the host reads data files with the same reader and the same cap
    import device_runtime.edgepack_run as er
    monkeypatch.setattr(er, "MAX_INPUT_ELEMENTS", 10000)
    with pytest.raises(er.Failure, match="in all"):
        er.read_inputs(str(path), [{"name": name}])


# ---------------------------------------------------------------- bundles
def test_deploy_refuses_symlinks_in_a_bundle_directory(built_bundles_small, tmp_path):
    from packager.deploy.releases import load_bundle
    bundle = tmp_path / "tiny-rpi"
    shutil.copytree(built_bundles_small, bundle)
    elsewhere = tmp_path / "elsewhere.tflite"
    shutil.move(bundle / "model.tflite", elsewhere)
    (bundle / "model.tflite").symlink_to(elsewhere)
    with pytest.raises(UsageError, match="symbolic link"):
        load_bundle(bundle)
    (bundle / "model.tflite").unlink()
    shutil.move(elsewhere, bundle / "model.tflite")
    load_bundle(bundle)  # intact again
    shutil.move(bundle / "samples", tmp_path / "samples")
    (bundle / "samples").symlink_to(tmp_path / "samples", target_is_directory=True)
    with pytest.raises(UsageError, match="symbolic link"):
        load_bundle(bundle)


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9, 0.99])
def test_truncated_archive_is_one_error_line(keep, int8_bundle, zoo, tmp_path):
    data = int8_bundle.archive.read_bytes()
    archive = tmp_path / "cut.tar.gz"
    archive.write_bytes(data[: int(len(data) * keep)])
    dest = tmp_path / "x"
    dest.mkdir()
    with pytest.raises(UsageError) as exc:
        extract_archive(archive, dest)
    assert "\n" not in exc.value.message
    proc = _cli("inspect", archive)
    assert proc.returncode == 2, proc.stderr
    _one_error(proc.stderr)
    proc = _cli("verify", archive, "--reference", zoo["keras3_h5"], "--json")
    assert proc.returncode == 2
    doc = json.loads(proc.stdout)
    assert doc["ok"] is False and doc["exit_code"] == 2


@pytest.mark.parametrize("name", ["tiny\n", "tiny\r", "tiny\n\n", "ok.\n"])
def test_names_ending_in_a_newline_are_refused(name, zoo, tmp_path):
    from packager.bundle.files import check_part
    from packager.deploy.releases import check_name as deploy_check_name
    assert deploy_check_name is check_name                      # one bundle-name rule
    with pytest.raises(UsageError):
        check_name(name)
    with pytest.raises(UsageError):
        check_part(name)
    with pytest.raises(UsageError):
        api.build(zoo["keras3_h5"], target="rpi", recipe="float32", runtimes=LITERT, output=tmp_path / "o", name=name)


# ---------------------------------------------------------------- full disk
def _can_mount_tmpfs() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-Urm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt && echo ok"],
                           capture_output=True, text=True, timeout=30)
    return probe.stdout.strip() == "ok"


@pytest.mark.slow
@pytest.mark.parametrize("json_mode", [False, True])
def test_full_disk_is_a_clear_exit_5(json_mode, zoo, tmp_path):
    if not _can_mount_tmpfs():
        pytest.skip("no user+mount namespaces to make a small tmpfs")
    full = tmp_path / "full"
    full.mkdir()
    argv = [sys.executable, "-m", "packager.cli", "build", str(zoo["keras3_h5"]), "-t", "rpi", "-q", "float32",
            "--runtime", "ai-edge-litert", "-o", str(full / "b")] + (["--json"] if json_mode else [])
    script = f"mount -t tmpfs -o size=24k tmpfs {full} && exec \"$@\""
    proc = subprocess.run(["unshare", "-Urm", "sh", "-c", script, "sh", *argv], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT), EDGEPACK_NO_CACHE="1"), timeout=600)
    assert proc.returncode == 5, proc.stderr[-1500:]
    line = _one_error(proc.stderr)
    assert "no space left" in line and "internal error" not in proc.stderr
    if json_mode:
        doc = json.loads(proc.stdout)
        assert doc["ok"] is False and doc["exit_code"] == 5


def test_deploy_errors_with_json_are_one_json_document(built_bundles_small, tmp_path):
    proc = _cli("deploy", built_bundles_small, "--host", "pi@192.0.2.1", "--remote-dir", "/x\u2028y", "--json")
    assert proc.returncode == 2, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["ok"] is False and doc["exit_code"] == 2 and "separator" in doc["error"]
    _one_error(proc.stderr)


# ---------------------------------------------------------------- hardening round 3, the small ones
def test_device_script_warns_on_nan_inputs(int8_bundle, runtime_python, tmp_path):
    name = json.loads((int8_bundle.bundle / "manifest.json").read_text())["inputs"][0]["name"]
    np.savez(tmp_path / "nan.npz", **{name: np.full((2, 8, 8, 1), np.nan, np.float32)})
    proc = subprocess.run([*runtime_python.argv, str(int8_bundle.bundle / "edgepack_run.py"), "--input",
                           str(tmp_path / "nan.npz"), "--output", str(tmp_path / "o.npz")], capture_output=True,
                          text=True, env=runtime_python.env, timeout=120)
    assert "100% of the values are NaN or Inf" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("body", ["x = " + "[" * 5000 + "]" * 5000 + "\n",
                                  "name = 'deep'\n" + "[[runtimes]]\nname = 'r'\n" * 40])
def test_absurd_target_profiles_are_one_error_line(body, tmp_path, zoo):
    (tmp_path / "targets").mkdir()
    (tmp_path / "targets" / "deep.toml").write_text(body)
    proc = _cli("build", zoo["keras3_h5"], "-t", "deep", "-q", "float32", "-o", tmp_path / "o",
                env={"EDGEPACK_TARGETS_PATH": str(tmp_path / "targets")}, timeout=120)
    assert proc.returncode == 2, proc.stderr[-600:]
    assert "target profile" in _one_error(proc.stderr)


def test_an_output_path_too_long_for_the_file_system(zoo, tmp_path):
    proc = _cli("build", zoo["keras3_h5"], "-q", "float32", "-o", tmp_path / ("x" * 300), timeout=120)
    assert proc.returncode == 2 and "too long" in _one_error(proc.stderr)
    proc = _cli("build", zoo["keras3_h5"], "-q", "float32", "-o", tmp_path / "/".join(["y" * 200] * 25), timeout=120)
    assert proc.returncode == 2 and "too long" in _one_error(proc.stderr)


def test_a_labels_file_with_another_class_count_is_refused(zoo, tmp_path):
    (tmp_path / "labels.txt").write_text("\n".join(f"c{i}" for i in range(7)))
    with pytest.raises(UsageError) as exc:
        api.build(zoo["keras3_h5"], recipe="float32", runtimes=LITERT, output=tmp_path / "o",
                  labels=tmp_path / "labels.txt")
    assert "7 lines" in exc.value.message and "10 classes" in exc.value.message and not (tmp_path / "o").exists()
