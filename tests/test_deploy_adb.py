"""Deploy over ADB: the real adb client and server against the adbd stand-in (tests/adb_fixtures.py).

The stand-in behaves like an old device: ``adb shell`` exits 0 whatever happened and merges stderr,
pushes can be cut off or "succeed" truncated. Its /data is a sandbox; the rest of its shell's view is
this machine, so smoke/run can use this venv's Python as --device-python.
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from packager.cli import deploy as cli_deploy
from packager.deploy import AdbTransport, deploy, make_transport, rollback, run, status
from packager.errors import DeployError, UsageError
from tests.adbd_standin import AdbdStandin
from tests.deploy_helpers import copy_bundle, differing_files, tree, session_bundles
# adb_server/adb_device come from the tests.adb_fixtures plugin (conftest.py)

PY = sys.executable
DIR = "/data/local/tmp/edgepack/tiny-android"


@pytest.fixture(scope="session")
def built_bundles(request, tmp_path_factory):
    return session_bundles(request, tmp_path_factory)


@pytest.fixture
def t(adb_device):
    with AdbTransport(adb_device.serial, env=adb_device.env, adb_bin=adb_device.adb_path, timeout=30) as tr:
        yield tr


@pytest.fixture
def bundles(tmp_path, built_bundles):
    return tuple(copy_bundle(built_bundles[("android", tag)], tmp_path / tag / "tiny-android") for tag in "ab")


def state(dev, d=DIR):
    root = dev.path(d)
    link = root / "current"
    cur = os.readlink(link) if link.is_symlink() else None
    rels = sorted(p.name for p in (root / "releases").iterdir()) if (root / "releases").is_dir() else []
    return cur, rels


def test_deploy_uses_the_target_dir_and_verifies_on_the_device(t, adb_device, bundles):
    a, _ = bundles
    res = deploy(a, t, smoke=True, device_python=PY)             # remote dir from the android target profile
    assert res.remote_dir == DIR and res.changed and res.device == f"adb:{adb_device.serial}"
    assert state(adb_device) == (f"releases/{res.release}", [res.release])
    assert tree(adb_device.path(f"{DIR}/releases/{res.release}")) == tree(a)
    assert res.smoke.passed
    pushed = {p["path"] for p in adb_device.standin.pushes}
    assert pushed == {f"{DIR}/.staging-{res.release}/{rel}" for rel in res.uploaded}
    # every shell call was one argument carrying the exit-status sentinel
    assert all(cmd.rstrip().endswith('echo "__EDGEPACK_RC__=$?"') for cmd in adb_device.standin.shell_commands)
    assert not list(adb_device.path(DIR).glob(".staging-*"))


def test_redeploy_sends_nothing_and_second_deploy_sends_the_difference(t, adb_device, bundles):
    a, b = bundles
    first = deploy(a, t)
    n = len(adb_device.standin.pushes)
    again = deploy(a, t)
    assert not again.changed and again.bytes_sent == 0 and len(adb_device.standin.pushes) == n
    second = deploy(b, t)
    assert second.previous == first.release and state(adb_device) == (f"releases/{second.release}",
                                                                         sorted([first.release, second.release]))
    new_pushes = {p["path"].split(f"/.staging-{second.release}/", 1)[-1] for p in adb_device.standin.pushes[n:]}
    assert new_pushes == differing_files(a, b) == set(second.uploaded) and "model.tflite" in new_pushes
    assert second.bytes_sent == sum((b / r).stat().st_size for r in second.uploaded)


def test_push_cut_off_half_way_leaves_current_untouched(t, adb_device, bundles):
    a, b = bundles
    first = deploy(a, t)
    adb_device.cut_push_after, adb_device.cut_push_times = 600, 1
    with pytest.raises(DeployError, match="adb push of .* failed|adb shell .* failed|cut off"):
        deploy(b, t)
    adb_device.reconnect()
    assert state(adb_device) == (f"releases/{first.release}", [first.release])
    assert tree(adb_device.path(f"{DIR}/releases/{first.release}")) == tree(a)
    again = deploy(b, t)                                         # the next deploy cleans up and succeeds
    assert state(adb_device)[0] == f"releases/{again.release}"
    assert not list(adb_device.path(DIR).glob(".staging-*"))


def test_lying_truncated_push_is_caught_by_the_device_checksum(t, adb_device, bundles):
    a, b = bundles
    first = deploy(a, t)
    adb_device.truncate_push_to, adb_device.truncate_push_times = 100, 1
    with pytest.raises(DeployError, match=r"checksum mismatch on the device") as err:
        deploy(b, t)
    lied = [p["path"] for p in adb_device.standin.pushes if p["fault"] == "truncated"]
    assert len(lied) == 1 and lied[0].split("/.staging-")[1].split("/", 1)[1] + " has sha256" in err.value.message
    assert first.release in err.value.message
    assert state(adb_device) == (f"releases/{first.release}", [first.release])
    assert not list(adb_device.path(DIR).glob(".staging-*"))


def test_exit_status_comes_from_the_sentinel_not_from_adb(t, adb_device):
    t.connect()
    assert adb_device.adb("shell", "false").returncode == 0     # the device lies...
    assert t.sh("false").rc == 1                                  # ...the sentinel does not
    assert t.sh("exit 7").rc == 7
    res = t.sh("echo out; echo err >&2; (exit 3)")
    assert res.rc == 3 and "out" in res.out and "err" in res.out and "__EDGEPACK_RC__" not in res.out


def test_failure_that_adb_reports_as_success_stops_the_deploy(t, adb_device, bundles):
    with pytest.raises(DeployError, match="failed"):
        deploy(bundles[0], t, remote_dir="/proc/edgepack-cannot-write-here")   # mkdir fails; adb exits 0


def test_a_command_that_never_ran_is_not_taken_for_success(t, adb_device, bundles):
    a, b = bundles
    first = deploy(a, t)
    adb_device.fail_shell_pattern = r"h=\$\(sha256sum "            # the verify+switch script
    adb_device.fail_shell_output = "OK\n"
    with pytest.raises(DeployError, match="no exit status"):
        deploy(b, t)
    adb_device.fail_shell_pattern = None
    assert state(adb_device) == (f"releases/{first.release}", [first.release])


def test_refused_shell_stream_is_an_error(t, adb_device, bundles):
    adb_device.fail_shell_pattern, adb_device.fail_shell_refuse = r"DIR=", True
    with pytest.raises(DeployError, match="adb shell .* failed"):
        deploy(bundles[0], t)
    assert not adb_device.path(DIR).exists()


def test_hostile_remote_dir(t, adb_device, bundles, tmp_path):
    hostile = "/data/local/tmp/it's \"q\" $(touch /data/local/tmp/PWNED) `touch /data/local/tmp/PWNED2`; -rf"
    res = deploy(bundles[0], t, remote_dir=hostile, smoke=True, device_python=PY)
    assert res.remote_dir == hostile
    assert tree(adb_device.path(f"{hostile}/releases/{res.release}")) == tree(bundles[0])
    assert status(t, hostile).verified is True
    tmp = adb_device.root / "data" / "local" / "tmp"
    assert not (tmp / "PWNED").exists() and not (tmp / "PWNED2").exists()
    assert not any(p.name in ("PWNED", "PWNED2") for p in adb_device.root.rglob("*"))


def test_relative_remote_dir_is_under_data_local_tmp(t, adb_device, bundles):
    res = deploy(bundles[0], t, remote_dir="edgepack/rel")
    assert res.remote_dir == "/data/local/tmp/edgepack/rel"
    assert (adb_device.root / "data/local/tmp/edgepack/rel/current").is_symlink()


@pytest.mark.parametrize("serial", ["-s", "a b", "x;reboot", "$(id)"])
def test_hostile_serials_are_rejected(serial):
    with pytest.raises(UsageError):
        AdbTransport(serial)


def test_rollback_and_status(t, adb_device, bundles):
    a, b = bundles
    first, second = deploy(a, t), deploy(b, t)
    st = status(t, DIR)
    assert (st.current, st.previous, st.verified) == (second.release, first.release, True)
    back = rollback(t, DIR)
    assert back.to_release == first.release and state(adb_device)[0] == f"releases/{first.release}"
    with pytest.raises(DeployError, match="no release older"):
        rollback(t, DIR)
    adb_device.path(f"{DIR}/releases/{first.release}/edgepack_run.py").write_text("# damaged\n")
    st = status(t, DIR)
    assert st.verified is False and any("edgepack_run.py" in p for p in st.problems)


def test_run_and_missing_python(t, adb_device, bundles, tmp_path):
    deploy(bundles[0], t)
    np.savez(tmp_path / "x.npz", x=np.full((2, 4), 0.5, np.float32))
    res = run(t, DIR, input=tmp_path / "x.npz", output=tmp_path / "y.npz", device_python=PY)
    with np.load(res.output) as out:
        assert out["probs"].shape == (2, 3)
    with pytest.raises(DeployError, match="no usable Python at '/system/bin/python3'") as err:
        run(t, DIR, benchmark=3, device_python="/system/bin/python3")
    assert "--device-python" in err.value.hint
    with pytest.raises(DeployError, match="no usable Python") as err:
        deploy(bundles[1], t, smoke=True, device_python="/system/bin/python3")
    assert "switched back" in err.value.message


def test_benchmark_binary_is_pushed_next_to_the_releases(t, adb_device, bundles, tmp_path):
    deploy(bundles[0], t)
    fake = tmp_path / "benchmark_model"
    fake.write_text('#!/bin/sh\ntest -f "${1#--graph=}" || exit 1\n'
                    'echo "Inference timings in us: Init: 1000, First inference: 300, Warmup (avg): 210, Inference (avg): 200"\n')
    res = run(t, DIR, benchmark=20, benchmark_binary=fake)
    assert res.benchmark["mean_ms"] == pytest.approx(0.2) and res.benchmark["init_ms"] == pytest.approx(1.0)
    n = len(adb_device.standin.pushes)
    run(t, DIR, benchmark=20, benchmark_binary=fake)
    assert len(adb_device.standin.pushes) == n                   # same binary: not pushed again


def test_install_is_refused_over_adb(t, bundles):
    with pytest.raises(UsageError, match="--install"):
        deploy(bundles[0], t, install=True)


def test_device_selection(adb_device, adb_server, tmp_path):
    only = AdbTransport(env=adb_device.env, adb_bin=adb_device.adb_path)
    only.connect()
    assert only.serial == adb_device.serial
    with pytest.raises(DeployError, match="not attached"):
        AdbTransport("127.0.0.1:1", env=adb_device.env).connect()
    (tmp_path / "root2").mkdir()
    other = AdbdStandin(tmp_path / "root2")
    other.start()
    try:
        adb_server.run("connect", other.serial, timeout=10)
        with pytest.raises(DeployError, match="2 devices are ready; say which one with --serial") as err:
            AdbTransport(env=adb_device.env).connect()
        assert adb_device.serial in err.value.hint and other.serial in err.value.hint
    finally:
        adb_server.run("disconnect", other.serial, timeout=10)
        other.stop()


def test_cli_over_adb(adb_device, bundles, monkeypatch):
    monkeypatch.setenv("ANDROID_ADB_SERVER_PORT", adb_device.env["ANDROID_ADB_SERVER_PORT"])
    app = typer.Typer()
    cli_deploy.register(app)
    runner = CliRunner()
    res = runner.invoke(app, ["deploy", str(bundles[0]), "--json"])   # target android => adb, the one device
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["remote_dir"] == DIR and out["device"] == f"adb:{adb_device.serial}"
    res = runner.invoke(app, ["status", str(bundles[0]), "--serial", adb_device.serial, "--json"])
    assert json.loads(res.stdout)["current"] == out["release"]
    res = runner.invoke(app, ["deploy", str(bundles[0]), "--serial", adb_device.serial, "--ssh-config", "x"])
    assert res.exit_code == UsageError.exit_code and "--ssh-config" in res.output
    assert isinstance(make_transport("adb", serial=adb_device.serial), AdbTransport)
