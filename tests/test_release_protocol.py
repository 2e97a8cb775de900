"""The release protocol over every registered transport that can run here, on the golden bundles (no TensorFlow).

``local`` always runs (a directory on this machine, no sshd: it is in the fast layer); ``ssh`` runs against the
loopback OpenSSH server of tests/ssh_fixtures.py, ``adb`` against the adbd stand-in of tests/adb_fixtures.py
(each skips where its host program is missing). A transport added to ``packager.deploy.TRANSPORTS`` must get a
device fixture here: ``test_every_registered_transport_runs_the_protocol`` fails until it does.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from packager.deploy import TRANSPORTS, AdbTransport, LocalTransport, SshTransport, deploy, rollback, run, status
from packager.deploy.base import Transport
from packager.errors import DeployError, UsageError
from tests.deploy_helpers import copy_bundle, tree

GOLDEN = Path(__file__).resolve().parent / "golden"
PY = sys.executable


@dataclass
class Device:
    """A transport to a device, the deploy directory to use on it, and where that device path is on this machine."""
    transport: Transport
    remote_dir: str
    local: Callable[[str], Path]

    @property
    def root(self) -> Path:
        return self.local(self.remote_dir)

    def current(self) -> str | None:
        link = self.root / "current"
        return os.readlink(link) if link.is_symlink() else None

    def releases(self) -> list[str]:
        where = self.root / "releases"
        return sorted(p.name for p in where.iterdir()) if where.is_dir() else []


def _local(request, tmp_path) -> Device:
    return Device(LocalTransport(timeout=30), str(tmp_path / "device" / "edgepack" / "golden"), Path)


def _ssh(request, tmp_path) -> Device:
    server = request.getfixturevalue("ssh_server")
    return Device(SshTransport(server.host, ssh_config=server.config, timeout=30),
                  str(tmp_path / "device" / "edgepack" / "golden"), Path)


def _adb(request, tmp_path) -> Device:
    dev = request.getfixturevalue("adb_device")
    return Device(AdbTransport(dev.serial, env=dev.env, adb_bin=dev.adb_path, timeout=30),
                  "/data/local/tmp/edgepack/golden", dev.path)


#: deploy method -> how to reach a device of it in a test; every key of TRANSPORTS needs one. The protocol tests
#: below run over every entry (an entry is all a new transport adds here).
DEVICES = {"local": _local, "ssh": _ssh, "adb": _adb}
#: the devices that need no daemon: they also run in the fast layer
FAST = {"local"}


@pytest.fixture(params=[pytest.param(name, marks=pytest.mark.fast) if name in FAST else name for name in DEVICES])
def device(request, tmp_path):
    dev = DEVICES[request.param](request, tmp_path)
    with dev.transport:
        yield dev


@pytest.fixture
def bundles(tmp_path):
    """Two releases of one bundle: the golden dense-f32, and the same with its device script changed."""
    a = copy_bundle(GOLDEN / "dense-f32", tmp_path / "bundles" / "a" / "dense-f32")
    b = copy_bundle(GOLDEN / "dense-f32", tmp_path / "bundles" / "b" / "dense-f32", script_suffix="\n# release b\n")
    return a, b


@pytest.mark.fast
def test_every_registered_transport_runs_the_protocol():
    missing = sorted(set(TRANSPORTS) - set(DEVICES))
    assert not missing, (f"transport(s) {missing} are registered in packager.deploy.TRANSPORTS but have no device "
                         "fixture in tests/test_release_protocol.py (DEVICES): add one so the release protocol is "
                         "tested over them")


def test_first_deploy_lays_out_a_verified_release(device, bundles):
    a, _ = bundles
    steps = []
    res = deploy(a, device.transport, remote_dir=device.remote_dir, smoke=True, device_python=PY,
                 progress=lambda step, detail: steps.append(step))
    assert res.changed and res.previous is None and res.remote_dir == device.remote_dir
    assert device.current() == f"releases/{res.release}" and device.releases() == [res.release]
    assert res.release.endswith("-" + json.loads((a / "manifest.json").read_text())["model_sha256"][:12])
    assert tree(device.root / "releases" / res.release) == tree(a)
    assert os.access(device.root / "current" / "edgepack_run.py", os.X_OK)
    assert not list(device.root.glob(".staging-*"))
    assert res.smoke is not None and res.smoke.passed
    assert steps.index("verify") < steps.index("switch") < steps.index("smoke")
    # the --device-python the deploy was given is what later commands on this directory use, unless told otherwise
    ran = run(device.transport, device.remote_dir, input=a / "samples" / "inputs.npz",
              output=a.parent / "out.npz")
    assert ran.device_python == PY and (a.parent / "out.npz").is_file()


def test_redeploy_sends_nothing(device, bundles):
    a, b = bundles
    first = deploy(a, device.transport, remote_dir=device.remote_dir)
    before = tree(device.root)
    again = deploy(a, device.transport, remote_dir=device.remote_dir)
    assert not again.changed and again.release == first.release and again.bytes_sent == 0 and again.uploaded == ()
    assert tree(device.root) == before
    second = deploy(b, device.transport, remote_dir=device.remote_dir)   # only what differs travels
    assert set(second.uploaded) == {"edgepack_run.py", "manifest.json"} and "model.tflite" in second.reused


def test_file_damaged_in_staging_leaves_current_untouched(device, bundles):
    a, b = bundles
    first = deploy(a, device.transport, remote_dir=device.remote_dir)
    before = tree(device.root)

    def cut(step, detail):
        if step == "verify":  # the upload "succeeded" but a file on the device is short
            script = device.local(detail) / "edgepack_run.py"
            script.write_bytes(script.read_bytes()[:100])

    with pytest.raises(DeployError, match=r"checksum mismatch on the device.*edgepack_run.py") as err:
        deploy(b, device.transport, remote_dir=device.remote_dir, progress=cut)
    assert first.release in err.value.message
    assert device.current() == f"releases/{first.release}" and tree(device.root) == before


def test_rollback_and_status(device, bundles):
    a, b = bundles
    t, rdir = device.transport, device.remote_dir
    empty = status(t, rdir)
    assert not empty.exists and empty.current is None and empty.releases == ()
    first, second = deploy(a, t, remote_dir=rdir), deploy(b, t, remote_dir=rdir)
    st = status(t, rdir)
    assert (st.current, st.previous, st.verified, st.name) == (second.release, first.release, True, "dense-f32")
    back = rollback(t, rdir)
    assert (back.from_release, back.to_release) == (second.release, first.release)
    assert device.current() == f"releases/{first.release}"
    with pytest.raises(DeployError, match="no release older than"):
        rollback(t, rdir)
    (device.root / "releases" / first.release / "model.tflite").write_bytes(b"garbage")
    st = status(t, rdir)
    assert st.verified is False and any("model.tflite" in p for p in st.problems)


# ----------------------------------------------------------------------------- LocalTransport itself
@pytest.mark.fast
def test_local_transport_addresses_a_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    t = LocalTransport("sd/edgepack/x")
    assert t.directory == str(tmp_path / "sd" / "edgepack" / "x") and t.describe() == f"local:{t.directory}"
    assert LocalTransport().describe() == "local" and LocalTransport().directory is None
    res = t.sh("pwd; echo err >&2; exit 3")
    assert (res.rc, res.out, res.err) == (3, "/\n", "err\n")
    with pytest.raises(UsageError, match="--local needs a directory"):
        LocalTransport.from_cli("", timeout=5)
    with pytest.raises(UsageError, match="control or line"):
        LocalTransport("a\nb")
    deployed = deploy(GOLDEN / "dense-int8", t)            # the directory is the deploy directory
    assert deployed.remote_dir == t.directory and (tmp_path / "sd/edgepack/x/current/model.tflite").is_file()
    with pytest.raises(DeployError, match="cannot read"):
        t.download(str(tmp_path / "nothing"), tmp_path / "out")


# ----------------------------------------------------------------------------- the CLI
@pytest.mark.fast
def test_cli_deploy_status_rollback_with_local(tmp_path):
    from typer.testing import CliRunner

    from packager.cli.commands import app
    runner = CliRunner()

    def cli(*args):
        return runner.invoke(app, [str(a) for a in args])

    a = copy_bundle(GOLDEN / "dense-f32", tmp_path / "a" / "dense-f32")
    b = copy_bundle(GOLDEN / "dense-f32", tmp_path / "b" / "dense-f32", script_suffix="\n# b\n")
    d = tmp_path / "sd" / "edgepack" / "dense-f32"
    r1 = cli("deploy", a, "--local", d, "--smoke", "--device-python", PY, "--json")
    assert r1.exit_code == 0, r1.output
    first = json.loads(r1.stdout)
    assert first["changed"] and first["smoke"]["passed"] and first["remote_dir"] == str(d)
    assert first["device"] == f"local:{d}" and (d / "current" / "model.tflite").is_file()
    r2 = cli("deploy", b, "--local", d)
    assert r2.exit_code == 0 and "deployed" in r2.stdout, r2.output
    st = cli("status", "--local", d, "--json")
    assert st.exit_code == 0 and json.loads(st.stdout)["previous"] == first["release"], st.output
    human = cli("status", "--local", d)
    assert "intact" in human.stdout and "current" in human.stdout
    assert first["release"] in human.stdout and f"local:{d}:" not in human.stdout   # ids whole; the path said once
    assert f"device python {PY} (from the last deploy)" in human.stdout
    rb = cli("rollback", "--local", d, "--json")
    assert json.loads(rb.stdout)["to_release"] == first["release"]
    # errors stay one line with a hint, through the one boundary
    both = cli("deploy", a, "--local", d, "--host", "pi@raspberrypi.local")
    assert both.exit_code == 2 and "--host (SSH) or --local (this machine), not several" in both.output
    twice = cli("status", "--local", d, "--remote-dir", "/elsewhere")
    assert twice.exit_code == 2 and "hint: give the directory once" in twice.output
    cfg = cli("status", "--local", d, "--ssh-config", tmp_path / "cfg")
    assert cfg.exit_code == 2 and "--ssh-config only applies to SSH (--host)" in cfg.output
    for cmd in ("deploy", "run", "rollback", "status", "verify"):
        res = cli(cmd, "--help")
        assert res.exit_code == 0 and all(o in res.stdout for o in ("--host", "--serial", "--local")), cmd
