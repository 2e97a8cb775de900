"""The verdict computed on a device: `verify --host` over a real OpenSSH server on loopback and `verify --serial`
over the real adb client against the adbd stand-in, with device Pythons that hold only a target runtime (the
emulator's own runtime environments: no TensorFlow, no edgepack). Each verdict is checked independently: the
outputs the device computed, pulled back with `run`, equal a bare ai_edge_litert interpreter's on the bundle's
.tflite, and the decisions the report counts are recounted here against Keras.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from packager import api
from packager.deploy import AdbTransport, SshTransport, deploy, run
from packager.errors import DeployError, VerificationError
from packager.targets import get_target
from packager.verification.emulator import get_env
from tests.field_models import raw_outputs
from tests.models import small_cnn

PY = sys.executable
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def device_pythons():
    """{runtime: the Python of an environment holding only that runtime and numpy} (the emulator's envs)."""
    profile = get_target("rpi")
    return {name: get_env(profile.runtime(name)).argv[0] for name in ("ai-edge-litert", "tflite-runtime")}


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """A small int8 CNN classifier (5 classes, softmax), held-out data with labels, and its bundle for rpi verified in
    ai-edge-litert only (so a tflite-runtime device differs from what it was verified with)."""
    out = tmp_path_factory.mktemp("ondevice")
    model = small_cnn(3)
    model.save(out / "m.keras")
    rng = np.random.default_rng(0)
    x = rng.random((300, 8, 8, 3), dtype=np.float32)
    ref = model.predict(x, verbose=0)
    y = ref.argmax(1)
    y[:20] = (y[:20] + 1) % 5                                 # a model that is not perfect on its labels
    np.savez(out / "calib.npz", img=x[:100])
    np.savez(out / "eval.npz", img=x[100:], y=y[100:])
    res = api.build(out / "m.keras", target="rpi", recipe="int8", calibration=out / "calib.npz",
                    data=out / "eval.npz", runtimes=["ai-edge-litert"], output=out / "dist" / "m-rpi", name="m-rpi")
    return {"dir": out, "bundle": Path(res.bundle), "model": out / "m.keras", "eval": out / "eval.npz",
            "x": x[100:], "y": y[100:], "keras": ref[100:]}


@pytest.fixture
def ssh(ssh_server):
    with SshTransport(ssh_server.host, ssh_config=ssh_server.config, timeout=60) as t:
        yield t


def cli(*args, env: dict | None = None) -> tuple[int, str, str]:
    e = dict(os.environ, COLUMNS="200", EDGEPACK_DEBUG="", **(env or {}))
    e.pop("EDGEPACK_IN_PROCESS", None)
    proc = subprocess.run([PY, "-m", "packager.cli", *map(str, args)], capture_output=True, text=True, env=e,
                          cwd=str(ROOT), timeout=900, stdin=subprocess.DEVNULL)
    return proc.returncode, proc.stdout, proc.stderr


def leftovers(ddir: Path) -> list[str]:
    """What a verify left in the deploy directory beyond what deploy keeps there (releases, current, the last
    self-test, the lock, the remembered --device-python)."""
    return sorted(p.name for p in ddir.iterdir()
                  if p.name not in ("releases", "current", "selftest.last", ".lock", "python.last"))


def test_verify_on_the_device_gives_the_emulators_verdict_checked_independently(case, ssh, device_pythons, tmp_path,
                                                                                   monkeypatch):
    ddir = tmp_path / "pi" / "m-rpi"
    litert = device_pythons["ai-edge-litert"]
    deploy(case["bundle"], ssh, remote_dir=str(ddir), device_python=litert)
    monkeypatch.setenv("EDGEPACK_DEVICE_CHUNK_MB", "0.05")           # 200 samples of 768 B, 68 a chunk: 3 chunks
    steps = []
    on_device = api.verify_on_device(case["bundle"], ssh, reference=case["model"], data=case["eval"],
                                     remote_dir=str(ddir), device_python=litert, progress=steps.append)
    emulator = api.verify(case["bundle"], reference=case["model"], data=case["eval"], runtimes=["ai-edge-litert"])
    assert on_device.verdict == emulator.verdict == "MATCH", on_device.failures
    dev, emu = on_device.runtimes[0].metrics[0], emulator.runtimes[0].metrics[0]
    assert dev.finding("decisions")["detail"] == emu.finding("decisions")["detail"]
    assert dev.finding("accuracy")["figure"] == pytest.approx(emu.finding("accuracy")["figure"])
    assert on_device.device["chunks"] == 3 and sum("chunk" in s for s in steps) == 3
    info = on_device.device
    assert info["runtime"] == "ai_edge_litert" and info["machine"] == os.uname().machine and info["differs"] == []
    assert info["python"] and info["numpy"] and info["os"] and info["release"] == os.readlink(ddir / "current").split("/")[1]
    assert on_device.line().startswith(f"MATCH on {ssh.describe()} (held-out: eval.npz, n=200)")
    assert leftovers(ddir) == []                                     # nothing left but the release
    # independent: the device's own outputs, pulled back, are a bare interpreter's; recount the decisions
    got = run(ssh, str(ddir), input=case["eval"], output=tmp_path / "out.npz", device_python=litert)
    with np.load(got.output) as z:
        device_probs = z["probs"]
    raw = raw_outputs(case["bundle"], {"img": case["x"]})["probs"]
    np.testing.assert_array_equal(device_probs, raw)
    flipped = int(np.sum(raw.argmax(1) != case["keras"].argmax(1)))
    detail = dev.finding("decisions")["detail"]
    assert detail["judged"] == 200 and detail["flipped"] + detail["ties"] >= flipped >= detail["flipped"]
    acc = float(np.mean(raw.argmax(1) == case["y"]))
    assert on_device.runtimes[0].metrics[0].finding("accuracy")["detail"]["bundle"] == pytest.approx(acc)


def test_a_device_with_another_runtime_is_said_and_fails_under_strict(case, ssh, device_pythons, tmp_path):
    ddir = tmp_path / "pi" / "m-rpi"
    old = device_pythons["tflite-runtime"]
    deploy(case["bundle"], ssh, remote_dir=str(ddir), device_python=old)
    report = api.verify_on_device(case["bundle"], ssh, reference=case["model"], data=case["eval"],
                                  remote_dir=str(ddir), device_python=old)
    assert report.device["runtime"] == "tflite_runtime"
    assert any("tflite-runtime 2.14" in d and "ai-edge-litert" in d for d in report.device["differs"])
    assert any("differs from what the bundle was verified with" in n for n in report.notes)
    strict = api.verify_on_device(case["bundle"], ssh, reference=case["model"], data=case["eval"],
                                  remote_dir=str(ddir), device_python=old, strict=True)
    assert not strict.passed and strict.exit_code == 4
    assert any(f.startswith("--strict: this device differs") and "tflite-runtime" in f for f in strict.failures)


def test_a_model_file_changed_on_the_device_fails_with_the_cause_and_runs_nothing(case, ssh, device_pythons, tmp_path):
    ddir = tmp_path / "pi" / "m-rpi"
    res = deploy(case["bundle"], ssh, remote_dir=str(ddir), device_python=device_pythons["ai-edge-litert"])
    model = ddir / "releases" / res.release / "model.tflite"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x40
    model.chmod(0o644)
    model.write_bytes(bytes(data))
    with pytest.raises(VerificationError, match=r"model.tflite has sha256 .*changed on the device") as err:
        api.verify_on_device(case["bundle"], ssh, reference=case["model"], data=case["eval"], remote_dir=str(ddir),
                             device_python=device_pythons["ai-edge-litert"])
    assert "redeploy" in err.value.hint and err.value.exit_code == 4
    assert f"--host {ssh.spec}" in err.value.hint and f"--remote-dir {ddir}" in err.value.hint   # a command that works
    assert leftovers(ddir) == []


def test_another_bundle_in_current_is_named(case, ssh, device_pythons, tmp_path, built_other):
    ddir = tmp_path / "pi" / "m-rpi"
    deploy(built_other, ssh, remote_dir=str(ddir), device_python=device_pythons["ai-edge-litert"])
    with pytest.raises(DeployError, match="holds another model") as err:
        api.verify_on_device(case["bundle"], ssh, reference=case["model"], data=case["eval"], remote_dir=str(ddir))
    assert "--release" in err.value.hint


@pytest.fixture
def built_other(request, tmp_path_factory, tmp_path):
    from tests.deploy_helpers import copy_bundle, session_bundles
    return copy_bundle(session_bundles(request, tmp_path_factory)[("rpi", "a")], tmp_path / "other" / "tiny-rpi")


def test_cli_verify_host_json_is_one_document_with_the_device(case, ssh_server, device_pythons, tmp_path):
    ddir = tmp_path / "pi" / "m-rpi"
    litert = device_pythons["ai-edge-litert"]
    with SshTransport(ssh_server.host, ssh_config=ssh_server.config) as t:
        deploy(case["bundle"], t, remote_dir=str(ddir), device_python=litert)
    rc, out, err = cli("verify", case["bundle"], "-r", case["model"], "--data", case["eval"], "--host",
                       ssh_server.host, "--ssh-config", ssh_server.config, "--remote-dir", ddir, "--device-python",
                       litert, "--json")
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["verdict"] == "MATCH" and doc["device"]["device"].startswith(ssh_server.user + "@127.0.0.1")
    assert doc["runtimes"][0]["runtime"] == "ai-edge-litert" and doc["device"]["runtime_version"]
    rc, out, err = cli("verify", case["bundle"], "-r", case["model"], "--data", case["eval"], "--host",
                       ssh_server.host, "--ssh-config", ssh_server.config, "--remote-dir", ddir, "--device-python",
                       litert)
    assert rc == 0 and "device " + ssh_server.user in out and "MATCH on" in out, out + err
    rc, out, err = cli("verify", case["bundle"], "-r", case["model"], "--release", "x")
    assert rc == 2 and "--host" in err


def test_verify_serial_over_adb_gives_the_same_verdict(case, adb_device, device_pythons, tmp_path):
    import shutil
    bundle = tmp_path / "m-android"
    shutil.copytree(case["bundle"], bundle)           # an rpi bundle pushed over adb: the protocol is the same
    litert = device_pythons["ai-edge-litert"]
    with AdbTransport(adb_device.serial, env=adb_device.env, adb_bin=adb_device.adb_path, timeout=60) as t:
        rdir = "/data/local/tmp/edgepack/m"
        deploy(bundle, t, remote_dir=rdir, device_python=litert)
        report = api.verify_on_device(bundle, t, reference=case["model"], data=case["eval"], remote_dir=rdir,
                                      device_python=litert)
    emulator = api.verify(case["bundle"], reference=case["model"], data=case["eval"], runtimes=["ai-edge-litert"])
    assert report.verdict == emulator.verdict == "MATCH"
    assert report.device["device"] == f"adb:{adb_device.serial}"
    assert report.runtimes[0].metrics[0].finding("decisions")["detail"] == \
        emulator.runtimes[0].metrics[0].finding("decisions")["detail"]
