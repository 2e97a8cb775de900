"""`fleet verify` and the rollout gated on the verdict: real ansible-playbook against five real OpenSSH servers on
loopback, each "device" running a Python that holds only a target runtime (the emulator's environments):

    dev1-dev3  ai-edge-litert 2.3 (numpy 2)
    dev4       tflite-runtime 2.14 (numpy 1): another runtime version; its int8 outputs differ by an output step
    dev5       ai-edge-litert with a faulty interpreter build: every output it returns is off by 0.3

Checked independently: each device's outputs are recomputed here by a bare interpreter of the same runtime
(dev1-dev3: ai_edge_litert in this process) and the odd device's difference from the others is recomputed.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.field_models import raw_outputs
from tests.models import small_cnn
from tests.ssh_fixtures import start_sshd, stop_sshd

pytest.importorskip("ansible.release", reason="ansible-core is not installed (./dev setup installs it: .[fleet])")

PY = sys.executable
ROOT = Path(__file__).resolve().parent.parent
NAMES = ["dev1", "dev2", "dev3", "dev4", "dev5"]


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    base = tmp_path_factory.mktemp("fleet-verify-sshd")
    started = []
    try:
        for n in NAMES:
            started.append(start_sshd(base / n))
        yield dict(zip(NAMES, started))
    finally:
        for s in started:
            stop_sshd(s)


@pytest.fixture(scope="module")
def pythons(tmp_path_factory):
    from packager.targets import get_target
    from packager.verification.emulator import get_env
    profile = get_target("rpi")
    litert = get_env(profile.runtime("ai-edge-litert")).argv[0]
    old = get_env(profile.runtime("tflite-runtime")).argv[0]
    # dev5: the real runtime, with an interpreter build that returns every output 0.3 off
    shadow = tmp_path_factory.mktemp("faulty") / "site"
    pkg = shadow / "ai_edge_litert"
    pkg.mkdir(parents=True)
    real = subprocess.run([litert, "-c", "import ai_edge_litert, os; print(os.path.dirname(ai_edge_litert.__file__))"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (pkg / "__init__.py").write_text(f"__path__.append({real!r})\n")
    (pkg / "interpreter.py").write_text(
        "import importlib.util, os\n"
        f"_spec = importlib.util.spec_from_file_location('_real_interpreter', os.path.join({real!r}, 'interpreter.py'),"
        " submodule_search_locations=None)\n"
        "_real = importlib.util.module_from_spec(_spec); _real.__package__ = 'ai_edge_litert'; _spec.loader.exec_module(_real)\n"
        "from numpy import asarray\n"
        "class Interpreter(_real.Interpreter):\n"
        "    def get_tensor(self, i, *a):\n"
        "        t = super().get_tensor(i, *a)\n"
        "        return t + 0.3 if t.dtype.kind == 'f' else t\n"
        "def __getattr__(name):\n    return getattr(_real, name)\n")
    faulty = shadow.parent / "faulty-python"
    faulty.write_text(f"#!/bin/sh\nPYTHONPATH={shadow} exec {litert} \"$@\"\n")
    faulty.chmod(0o755)
    return {"dev1": litert, "dev2": litert, "dev3": litert, "dev4": old, "dev5": str(faulty)}


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """An int8 CNN classifier (untrained: low margins), held-out inputs, and its rpi bundle."""
    from packager import api
    out = tmp_path_factory.mktemp("fleet-case")
    model = small_cnn(5)
    model.save(out / "m.keras")
    rng = np.random.default_rng(1)
    x = rng.random((260, 8, 8, 3), dtype=np.float32)
    np.savez(out / "calib.npz", img=x[:60])
    np.savez(out / "eval.npz", img=x[60:])
    res = api.build(out / "m.keras", target="rpi", recipe="int8", calibration=out / "calib.npz", verify=False,
                    output=out / "dist" / "m-rpi", name="m-rpi")
    return {"bundle": Path(res.bundle), "model": out / "m.keras", "eval": out / "eval.npz", "x": x[60:]}


def inventory(tmp_path: Path, servers, pythons, order=NAMES) -> tuple[Path, dict]:
    dirs = {n: tmp_path / "devices" / n / "m-rpi" for n in order}
    lines = ["[devices]"]
    for n in order:
        s = servers[n]
        lines.append(f"{n} ansible_host=127.0.0.1 ansible_port={s.port} ansible_user={s.user} "
                     f"ansible_ssh_common_args='-F {s.config}' edgepack_remote_dir={dirs[n]} edgepack_python={pythons[n]}")
    inv = tmp_path / "inventory.ini"
    inv.write_text("\n".join(lines) + "\n")
    return inv, dirs


def cli(*args) -> tuple[int, str, str]:
    env = dict(os.environ, COLUMNS="200", EDGEPACK_DEBUG="")
    env.pop("EDGEPACK_IN_PROCESS", None)
    proc = subprocess.run([PY, "-m", "packager.cli", *map(str, args)], capture_output=True, text=True, env=env,
                          cwd=str(ROOT), timeout=900, stdin=subprocess.DEVNULL)
    return proc.returncode, proc.stdout, proc.stderr


def current(d: Path) -> str | None:
    return os.readlink(d / "current").split("/", 1)[1] if (d / "current").is_symlink() else None


def test_fleet_verify_names_each_verdict_and_the_odd_device_out(case, servers, pythons, tmp_path):
    from packager.deploy import SshTransport, deploy
    inv, dirs = inventory(tmp_path, servers, pythons)
    for n in NAMES:                      # deployed by the single-device path (the fleet deploy is tested below)
        with SshTransport(servers[n].host, ssh_config=servers[n].config) as t:
            deploy(case["bundle"], t, remote_dir=str(dirs[n]))
    rc, out, err = cli("fleet", "verify", case["bundle"], "-i", inv, "-r", case["model"], "--data", case["eval"],
                       "--json")
    assert rc == 6, out + err
    doc = json.loads(out)
    hosts = {h["host"]: h for h in doc["hosts"]}
    assert doc["op"] == "verify" and not doc["ok"] and "1 of 5 hosts do not MATCH" in doc["error"]
    for n in ("dev1", "dev2", "dev3", "dev4"):
        assert hosts[n]["verdict"] == "MATCH" and hosts[n]["outcome"] == "verified", hosts[n]
        assert hosts[n]["line"].startswith("MATCH: decisions")
    assert hosts["dev4"]["details"]["info"]["runtime"] == "tflite_runtime"
    assert hosts["dev1"]["details"]["info"]["runtime"] == "ai_edge_litert"
    h5 = hosts["dev5"]
    assert h5["verdict"] == "MISMATCH" and h5["outcome"] == "mismatch" and "probs" in h5["reason"]
    # the odd ones out: dev4 (another runtime version) and dev5, each against dev1-dev3
    assert hosts["dev1"]["odd"] is None and hosts["dev2"]["odd"] is None
    odd4 = hosts["dev4"]["odd"]
    assert odd4["output"] == "probs" and odd4["norm"] == ["dev1", "dev2", "dev3"] and 0 < odd4["max_abs_diff"] < 0.05
    assert hosts["dev5"]["odd"]["max_abs_diff"] == pytest.approx(0.3, abs=1e-3)
    # independently: what dev1-dev3 computed is a bare ai_edge_litert interpreter's output here; dev4's is not
    raw = raw_outputs(case["bundle"], {"img": case["x"]})["probs"]
    proc = subprocess.run([pythons["dev4"], "-c",
                           "import sys, numpy as np\nfrom tflite_runtime.interpreter import Interpreter\n"
                           "x = np.load(sys.argv[2])['img']\nit = Interpreter(model_path=sys.argv[1])\n"
                           "it.resize_tensor_input(it.get_input_details()[0]['index'], list(x.shape)); it.allocate_tensors()\n"
                           "it.set_tensor(it.get_input_details()[0]['index'], x); it.invoke()\n"
                           "np.save(sys.argv[3], it.get_tensor(it.get_output_details()[0]['index']))",
                           str(case["bundle"] / "model.tflite"), str(case["eval"]), str(tmp_path / "old.npy")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    old = np.load(tmp_path / "old.npy")
    assert float(np.max(np.abs(old.astype(np.float64) - raw))) == pytest.approx(odd4["max_abs_diff"], rel=1e-6)
    # nothing is left on the devices but the releases
    for n in NAMES:
        assert sorted(p.name for p in dirs[n].iterdir() if p.name.startswith(".verify")) == []
    # the same for people: a table, the odd ones named, one error line
    rc, out, err = cli("fleet", "verify", case["bundle"], "-i", inv, "-r", case["model"], "--data", case["eval"])
    assert rc == 6
    assert "odd one out: dev4 computes probs differently from dev1, dev2, dev3" in out
    assert "error:" in err and "dev5 (mismatch)" in err


def test_gated_rollout_stops_at_the_batch_holding_the_failing_device_and_switches_it_back(case, servers, pythons,
                                                                                         tmp_path):
    order = ["dev1", "dev5", "dev2", "dev3"]
    inv, dirs = inventory(tmp_path, servers, pythons, order)
    rc, out, err = cli("fleet", "deploy", case["bundle"], "-i", inv, "--batch", "1,1,100%", "--max-fail", "0%",
                       "--verify-data", case["eval"], "-r", case["model"], "--json")
    assert rc == 6, out + err
    doc = json.loads(out)
    hosts = {h["host"]: h for h in doc["hosts"]}
    assert doc["stopped"]
    assert hosts["dev1"]["outcome"] == "deployed" and hosts["dev1"]["verdict"] == "MATCH"
    assert current(dirs["dev1"]) == hosts["dev1"]["release"]
    h5 = hosts["dev5"]
    assert h5["outcome"] == "rolled back" and h5["verdict"] == "MISMATCH" and "switched back" in h5["reason"]
    assert "probs" in h5["reason"] and h5["line"].startswith("MISMATCH") and "probs" in h5["line"]
    assert current(dirs["dev5"]) is None and not list((dirs["dev5"] / "releases").iterdir())
    for n in ("dev2", "dev3"):
        assert hosts[n]["outcome"] == "not reached" and not dirs[n].exists()
    # the device recorded what the gate judged (read by fleet status)
    record = (dirs["dev1"] / "selftest.last").read_text()
    assert "RC=0" in record and '"verdict":"MATCH"' in record
