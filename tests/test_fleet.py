"""edgepack fleet: real ansible-playbook against six real OpenSSH servers on loopback.

Six simulated devices are each their own sshd (tests/ssh_fixtures.py: own port, own host key pinned in its own
known_hosts, own client key) and its own root directory for releases (edgepack_remote_dir in the
inventory). dev5 has a broken TFLite runtime (its smoke run fails); dev7 is a seventh inventory
entry where nothing listens (unreachable).
Smoke runs use this venv's Python as the device Python (edgepack_python).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.deploy_helpers import copy_bundle, session_bundles, tree
from tests.ssh_fixtures import _free_port, start_sshd, stop_sshd

pytest.importorskip("ansible.release", reason="ansible-core is not installed (./dev setup installs it: .[fleet])")

PY = sys.executable
N_SERVERS = 6
N_DEVICES = 7
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def devices(tmp_path_factory):
    base = tmp_path_factory.mktemp("fleet-sshd")
    servers = []
    try:
        for i in range(N_SERVERS):
            servers.append(start_sshd(base / f"dev{i + 1}"))
        yield servers
    finally:
        for s in servers:
            stop_sshd(s)


@pytest.fixture(scope="module")
def built(request, tmp_path_factory):
    return session_bundles(request, tmp_path_factory)


@pytest.fixture
def bundles(tmp_path, built):
    return tuple(copy_bundle(built[("rpi", tag)], tmp_path / "bundles" / tag / "tiny-rpi") for tag in "ab")


@pytest.fixture
def broken_python(tmp_path):
    """A device Python whose TFLite runtime is broken: importing ai_edge_litert fails."""
    shadow = tmp_path / "broken-site" / "ai_edge_litert"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('libtensorflowlite_c.so: cannot open shared object file')\n")
    (shadow / "interpreter.py").write_text("raise ImportError('libtensorflowlite_c.so: cannot open shared object file')\n")
    wrapper = tmp_path / "broken-python"
    wrapper.write_text(f"#!/bin/sh\nPYTHONPATH={shadow.parent} exec {PY} \"$@\"\n")
    wrapper.chmod(0o755)
    return wrapper


class Fleet:
    """An inventory over the devices, each with its own remote dir under tmp_path."""

    def __init__(self, tmp_path: Path, servers, broken_python: Path, broken=("dev5",), unreachable=("dev7",)):
        self.tmp = tmp_path
        self.names = [f"dev{i + 1}" for i in range(N_DEVICES)]
        self.servers = dict(zip(self.names, servers))
        self.dirs = {n: tmp_path / "devices" / n / "edgepack" / "tiny-rpi" for n in self.names}
        self.broken, self.unreachable = set(broken), set(unreachable)
        self.broken_python = broken_python
        self.dead_port = _free_port()
        self.inventory = tmp_path / "inventory.ini"
        self.write()

    def host_line(self, name: str, config: Path | None = None) -> str:
        s = self.servers.get(name)
        if s is None or name in self.unreachable:    # nothing listens there
            any_server = next(iter(self.servers.values()))
            port, user, cfg = self.dead_port, any_server.user, any_server.config
        else:
            port, user, cfg = s.port, s.user, config or s.config
        py = self.broken_python if name in self.broken else PY
        extra = " edgepack_runtime=ai-edge-litert" if name in self.broken else ""
        return (f"{name} ansible_host=127.0.0.1 ansible_port={port} ansible_user={user} "
                f"ansible_ssh_common_args='-F {cfg}' edgepack_remote_dir={self.dirs[name]} edgepack_python={py}{extra}")

    def write(self, order=None, configs=None) -> None:
        configs = configs or {}
        lines = ["[devices]"] + [self.host_line(n, configs.get(n)) for n in (order or self.names)]
        self.inventory.write_text("\n".join(lines) + "\n")

    def current(self, name: str) -> str | None:
        link = self.dirs[name] / "current"
        return os.readlink(link).split("/", 1)[1] if link.is_symlink() else None

    def releases(self, name: str) -> list[str]:
        rel = self.dirs[name] / "releases"
        return sorted(p.name for p in rel.iterdir()) if rel.is_dir() else []


@pytest.fixture
def fleet(tmp_path, devices, broken_python):
    return Fleet(tmp_path, devices, broken_python)


def cli(*args) -> tuple[int, str, str]:
    """The real CLI in a subprocess (exit code, stdout, stderr)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]),
               COLUMNS="200", EDGEPACK_DEBUG="")
    proc = subprocess.run([PY, "-m", "packager.cli", *map(str, args)], capture_output=True, text=True, env=env,
                          cwd=str(ROOT), timeout=600, stdin=subprocess.DEVNULL)
    return proc.returncode, proc.stdout, proc.stderr


def by_host(doc: dict) -> dict:
    return {h["host"]: h for h in doc["hosts"]}


def sha12(bundle: Path) -> str:
    return json.loads((bundle / "manifest.json").read_text())["model_sha256"][:12]


# ----------------------------------------------------------------------------- rollout
def test_rollout_in_batches_broken_runtime_rolled_back_unreachable_reported_and_resume(fleet, bundles):
    a, b = bundles
    # A everywhere reachable first (no smoke: the broken device takes it too)
    t0 = time.monotonic()
    rc, out, err = cli("fleet", "deploy", a, "-i", fleet.inventory, "--limit", "all:!dev7", "--json")
    first_s = time.monotonic() - t0
    doc = json.loads(out)
    assert rc == 0, err
    assert doc["ok"] and set(by_host(doc)) == set(fleet.names) - {"dev7"}
    assert all(h["outcome"] == "deployed" and h["on_bundle"] for h in doc["hosts"])
    rel_a = {n: fleet.current(n) for n in fleet.names if n != "dev7"}
    assert all(r.endswith(sha12(a)) for r in rel_a.values())

    # B in batches 1, 2, rest, with smoke: dev5's runtime is broken, dev7 unreachable
    t0 = time.monotonic()
    rc, out, err = cli("fleet", "deploy", b, "-i", fleet.inventory, "--batch", "1,2,100%", "--smoke", "--json")
    second_s = time.monotonic() - t0
    assert rc == 6, out + err
    doc = json.loads(out)                                   # one JSON document, also on failure
    assert doc["ok"] is False and doc["exit_code"] == 6 and "2 of 7 hosts" in doc["error"]
    assert doc["batches"] == [1, 2, "100%"] and not doc["stopped"]
    hosts = by_host(doc)
    for n in ("dev1", "dev2", "dev3", "dev4", "dev6"):
        h = hosts[n]
        assert h["outcome"] == "deployed" and h["smoke"] is True and h["on_bundle"], h
        assert fleet.current(n) == h["release"] and h["release"].endswith(sha12(b)) and h["previous"] == rel_a[n]
        assert sorted(fleet.releases(n)) == sorted([rel_a[n], h["release"]])
        assert 0 < h["bytes_sent"] < 40000 and h["reused"] >= 1   # only what differs from A travelled
    h5 = hosts["dev5"]
    assert h5["outcome"] == "rolled back" and h5["smoke"] is False and h5["release"] == rel_a["dev5"]
    assert "switched back" in h5["reason"] and "runtime" in h5["reason"]
    assert fleet.current("dev5") == rel_a["dev5"] and fleet.releases("dev5") == [rel_a["dev5"]]
    h7 = hosts["dev7"]
    assert h7["outcome"] == "unreachable" and "refused" in h7["reason"].lower() and h7["release"] is None
    assert "hosts are not on the new release" in err and "error:" in err and "hint:" in err

    # the same command again resumes: current hosts send nothing, nothing changes on them
    before = {n: tree(fleet.dirs[n] / "releases") for n in ("dev1", "dev2", "dev3", "dev4", "dev6")}
    t0 = time.monotonic()
    rc, out, err = cli("fleet", "deploy", b, "-i", fleet.inventory, "--batch", "1,2,100%", "--json")
    resume_s = time.monotonic() - t0
    doc = json.loads(out)
    hosts = by_host(doc)
    assert rc == 6
    for n in ("dev1", "dev2", "dev3", "dev4", "dev6"):
        assert hosts[n]["outcome"] == "current" and hosts[n]["bytes_sent"] == 0 and hosts[n]["uploaded"] == 0
        assert tree(fleet.dirs[n] / "releases") == before[n]
    print(f"\nFLEET TIMING first(6 hosts, all at once)={first_s:.1f}s batches(7 hosts,1,2,rest,smoke)={second_s:.1f}s "
          f"resume={resume_s:.1f}s")


def test_max_fail_stops_the_rollout_and_leaves_later_batches_untouched(fleet, bundles):
    a, _ = bundles
    fleet.unreachable = set()
    fleet.names = fleet.names[:6]
    fleet.write(order=["dev5", "dev1", "dev2", "dev3", "dev4", "dev6"])
    rc, out, err = cli("fleet", "deploy", a, "-i", fleet.inventory, "--batch", "1", "--max-fail", "0%", "--smoke", "--json")
    assert rc == 6, err
    doc = json.loads(out)
    hosts = by_host(doc)
    assert doc["stopped"] and doc["max_fail"] == "0%"
    assert hosts["dev5"]["outcome"] == "rolled back" and hosts["dev5"]["release"] is None   # first deploy: back to nothing
    for n in ("dev1", "dev2", "dev3", "dev4", "dev6"):
        assert hosts[n]["outcome"] == "not reached" and not fleet.dirs[n].exists()
    assert "stopped early" in doc["error"]
    # the same as a table for people: every host, its outcome and why; one error line and a hint
    rc, out, err = cli("fleet", "deploy", a, "-i", fleet.inventory, "--batch", "1", "--max-fail", "0%", "--smoke")
    assert rc == 6
    rows = {line.split()[1]: line for line in out.splitlines() if line.startswith("│ dev")}
    assert "rolled back" in rows["dev5"] and "switched back" in rows["dev5"]
    assert all("not reached" in rows[n] for n in ("dev1", "dev2", "dev3", "dev4", "dev6"))
    assert [ln.split(":")[0] for ln in err.strip().splitlines()[-2:]] == ["error", "hint"] and "stopped early" in err


def test_changed_host_key_is_refused_and_nothing_is_done_on_that_host(fleet, bundles, devices, tmp_path):
    a, b = bundles
    fleet.unreachable, fleet.broken = {"dev4", "dev5", "dev6", "dev7"}, set()
    fleet.write()
    rc, out, err = cli("fleet", "deploy", a, "-i", fleet.inventory, "--limit", "dev1,dev2,dev3", "--json")
    assert rc == 0, err
    before = tree(fleet.dirs["dev2"])
    # dev2 now presents a key other than the enrolled one (a reinstalled device, or someone in between)
    other = devices[2].host_key_line
    cfg = devices[1].client_config("changed", f"[127.0.0.1]:{devices[1].port} {other}\n")
    # and dev3's key was never enrolled on this controller
    before3 = tree(fleet.dirs["dev3"])
    fleet.write(configs={"dev2": cfg, "dev3": devices[2].client_config("unknown", "")})
    rc, out, err = cli("fleet", "deploy", b, "-i", fleet.inventory, "--limit", "dev1,dev2,dev3", "--json")
    assert rc == 6
    hosts = by_host(json.loads(out))
    assert hosts["dev2"]["outcome"] == "unreachable" and "CHANGED" in hosts["dev2"]["reason"]
    assert hosts["dev3"]["outcome"] == "unreachable" and "unknown" in hosts["dev3"]["reason"]
    assert "ssh-keyscan" in hosts["dev3"]["hint"]
    assert tree(fleet.dirs["dev2"]) == before and tree(fleet.dirs["dev3"]) == before3
    # an inventory cannot switch the check off for edgepack's tasks (with "no", OpenSSH would still log in
    # with the key despite the changed host key)
    text = fleet.inventory.read_text().replace(
        "dev2 ansible_host", "dev2 ansible_host_key_checking=false ansible_ssh_extra_args='-o StrictHostKeyChecking=no' "
                             "ansible_host")
    fleet.inventory.write_text(text)
    rc, out, err = cli("fleet", "deploy", b, "-i", fleet.inventory, "--limit", "dev2", "--json")
    assert rc == 6 and "CHANGED" in by_host(json.loads(out))["dev2"]["reason"]
    assert tree(fleet.dirs["dev2"]) == before
    assert hosts["dev1"]["outcome"] == "deployed"


# ----------------------------------------------------------------------------- status, rollback
def test_status_and_rollback(fleet, bundles):
    a, b = bundles
    fleet.write()
    assert cli("fleet", "deploy", a, "-i", fleet.inventory, "--limit", "dev1,dev2,dev5", "--json")[0] == 0
    rc, out, err = cli("fleet", "deploy", b, "-i", fleet.inventory, "--limit", "dev1,dev2,dev5", "--smoke", "--json")
    assert rc == 6
    rel_a, rel_b = fleet.current("dev5"), fleet.current("dev1")
    # damage one file on dev2
    with open(fleet.dirs["dev2"] / "current" / "model.tflite", "ab") as fh:
        fh.write(b"\0")
    rc, out, err = cli("fleet", "status", b, "-i", fleet.inventory, "--limit", "dev1,dev2,dev5,dev7", "--json")
    assert rc == 6                                     # dev7 did not answer
    hosts = by_host(json.loads(out))
    d1 = hosts["dev1"]["details"]
    assert hosts["dev1"]["release"] == rel_b and hosts["dev1"]["on_bundle"] and d1["verified"] is True
    assert d1["info"]["runtime"] == "ai_edge_litert" and d1["info"]["python"] == ".".join(map(str, sys.version_info[:3]))
    assert d1["selftest"]["passed"] and d1["selftest"]["release"] == rel_b
    assert hosts["dev2"]["details"]["verified"] is False and any("model.tflite" in p for p in hosts["dev2"]["details"]["problems"])
    d5 = hosts["dev5"]["details"]
    assert hosts["dev5"]["release"] == rel_a and not hosts["dev5"]["on_bundle"]
    assert d5["selftest"]["passed"] is False and d5["selftest"]["rc"] == 4 and d5["selftest"]["release"] != rel_a
    assert hosts["dev7"]["outcome"] == "unreachable"
    assert hosts["dev2"]["outcome"] == "damaged" and hosts["dev1"]["outcome"] == hosts["dev5"]["outcome"] == "ok"
    rc, out, err = cli("fleet", "status", b, "-i", fleet.inventory, "--limit", "dev1,dev2,dev5")
    assert rc == 6 and "dev2 (damaged)" in err, err                 # a damaged host is not where it should be
    assert "DAMAGED" in out and "intact" in out and "ai_edge_litert" in out and "FAILED" in out
    # without a bundle the inventory's edgepack_remote_dir says where to look
    rc, out, err = cli("fleet", "status", "-i", fleet.inventory, "--limit", "dev1", "--json")
    assert rc == 0 and by_host(json.loads(out))["dev1"]["release"] == rel_b

    t0 = time.monotonic()
    rc, out, err = cli("fleet", "rollback", b, "-i", fleet.inventory, "--limit", "dev1", "--json")
    took = time.monotonic() - t0
    assert rc == 0, err
    h = by_host(json.loads(out))["dev1"]
    assert h["outcome"] == "rolled back" and h["previous"] == rel_b and fleet.current("dev1") == h["release"] != rel_b
    print(f"\nFLEET TIMING rollback(1 host)={took:.1f}s")
    rc, out, err = cli("fleet", "rollback", b, "-i", fleet.inventory, "--limit", "dev5", "--json")
    assert rc == 6 and by_host(json.loads(out))["dev5"]["outcome"] == "failed"   # nothing older than A there


# ----------------------------------------------------------------------------- export, errors
def test_export_writes_a_playbook_ansible_accepts(bundles, tmp_path):
    out_dir = tmp_path / "playbook"
    rc, out, err = cli("fleet", "export", bundles[0], "-o", out_dir, "--batch", "1,50%", "--max-fail", "10%", "--json")
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["playbooks"] == ["deploy.yml", "status.yml", "rollback.yml"]
    assert tree(out_dir / "files" / "tiny-rpi") == tree(bundles[0])
    text = (out_dir / "deploy.yml").read_text()
    assert "serial: [1, \"50%\"]" in text and "max_fail_percentage: 10" in text and "StrictHostKeyChecking=no" not in text
    env = dict(os.environ, ANSIBLE_CONFIG=str(out_dir / "ansible.cfg"))
    for pb in doc["playbooks"]:
        proc = subprocess.run([PY, "-m", "ansible", "playbook", "--syntax-check", "-i", "inventory.example.ini", pb],
                              cwd=out_dir, env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    # writing into an unrelated non-empty directory is refused
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x").write_text("keep")
    rc, out, err = cli("fleet", "export", bundles[0], "-o", tmp_path / "other", "--json")
    assert rc == 2 and json.loads(out)["ok"] is False


def test_bad_batch_missing_inventory_and_android_bundles_are_usage_errors(bundles, built, tmp_path):
    rc, out, err = cli("fleet", "deploy", bundles[0], "-i", tmp_path / "nope.ini", "--json")
    assert rc == 2 and json.loads(out)["error"].startswith("inventory") and "hint:" in err
    inv = tmp_path / "inv.ini"
    inv.write_text("[devices]\nx ansible_host=127.0.0.1\n")
    rc, out, err = cli("fleet", "deploy", bundles[0], "-i", inv, "--batch", "1,zero")
    assert rc == 2 and out == "" and err.startswith("error: --batch")
    rc, out, err = cli("fleet", "deploy", bundles[0], "-i", inv, "--limit", "nomatch", "--json")
    assert rc == 2 and json.loads(out)["ok"] is False
    rc, out, err = cli("fleet", "deploy", built[("android", "a")], "-i", inv, "--json")
    assert rc == 2 and "over adb" in json.loads(out)["error"]


def test_without_ansible_one_line_error_with_the_install_hint(bundles, tmp_path):
    code = ("import sys; sys.modules['ansible'] = None; sys.argv = ['edgepack'] + sys.argv[1:]; "
            "from packager.cli import main; main()")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for extra in ([], ["--json"]):
        proc = subprocess.run([PY, "-c", code, "fleet", "deploy", str(bundles[0]), "-i", str(tmp_path / "x.ini"), *extra],
                              capture_output=True, text=True, env=env, timeout=120)
        assert proc.returncode == 5
        lines = proc.stderr.strip().splitlines()
        assert lines[0].startswith("error: ansible-core is not installed") and lines[1].startswith("hint: pip install")
        if extra:
            assert json.loads(proc.stdout)["exit_code"] == 5


@pytest.mark.slow
def test_install_builds_a_venv_on_each_host_and_smoke_uses_it(fleet, bundles):
    """Needs the package index (pip install ai-edge-litert numpy on each 'device')."""
    rc, out, err = cli("fleet", "deploy", bundles[0], "-i", fleet.inventory, "--limit", "dev1,dev2", "--install",
                       "--smoke", "--json")
    assert rc == 0, out + err
    for n in ("dev1", "dev2"):
        h = by_host(json.loads(out))[n]
        assert h["outcome"] == "deployed" and h["smoke"] is True
        assert (fleet.dirs[n] / "venv" / "bin" / "python").exists()


def test_exported_playbook_deploys_when_run_by_ansible_itself(fleet, bundles, tmp_path):
    out_dir = tmp_path / "playbook"
    assert cli("fleet", "export", bundles[0], "-o", out_dir)[0] == 0
    text = fleet.inventory.read_text().replace(f"edgepack_python={fleet.broken_python}", f"edgepack_python={PY}")
    (out_dir / "inventory.ini").write_text(text)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]),
               ANSIBLE_NOCOLOR="1")
    argv = [PY, "-m", "ansible", "playbook", "-i", "inventory.ini", "deploy.yml", "--limit", "dev1,dev2"]
    proc = subprocess.run(argv + ["--check"], cwd=out_dir, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "skipped=1" in proc.stdout, proc.stdout[-3000:]
    assert not fleet.dirs["dev1"].exists()                                       # --check changes nothing
    proc = subprocess.run(argv, cwd=out_dir, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:]
    for n in ("dev1", "dev2"):
        assert fleet.current(n).endswith(sha12(bundles[0]))
        assert tree(fleet.dirs[n] / "current") == tree(out_dir / "files" / "tiny-rpi")
    assert (fleet.dirs["dev1"] / "selftest.last").read_text().count("RC=0") == 1   # the export runs --smoke
