"""Deploy over SSH to a real OpenSSH server on loopback (tests/ssh_fixtures.py), no mocks.

The "device" filesystem is this machine's; every test deploys into its own tmp_path. Smoke runs use
this venv's Python (it has ai-edge-litert) as --device-python.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from packager.cli import deploy as cli_deploy
from packager.deploy import SshTransport, deploy, make_transport, rollback, run, status
from packager.errors import DeployError, UsageError
from tests.deploy_helpers import copy_bundle, differing_files, refresh_manifest, tree, session_bundles
# ssh_server comes from the tests.ssh_fixtures plugin (conftest.py)

PY = sys.executable


@pytest.fixture(scope="session")
def built_bundles(request, tmp_path_factory):
    return session_bundles(request, tmp_path_factory)


@pytest.fixture
def transport(ssh_server):
    with SshTransport(ssh_server.host, ssh_config=ssh_server.config, timeout=30) as t:
        yield t


@pytest.fixture
def bundles(tmp_path, built_bundles):
    return tuple(copy_bundle(built_bundles[("rpi", tag)], tmp_path / "bundles" / tag / "tiny-rpi") for tag in "ab")


@pytest.fixture
def ddir(tmp_path):
    return tmp_path / "device" / "edgepack" / "tiny-rpi"


def releases(ddir: Path) -> list[str]:
    return sorted(p.name for p in (ddir / "releases").iterdir()) if (ddir / "releases").is_dir() else []


def current(ddir: Path) -> str | None:
    link = ddir / "current"
    return os.readlink(link) if link.is_symlink() else None


def assert_release_matches(ddir: Path, release: str, bundle: Path) -> None:
    local = tree(bundle)
    remote = tree(ddir / "releases" / release)
    assert remote == local


# ----------------------------------------------------------------------------- deploy
def test_first_deploy_lays_out_a_verified_release(transport, bundles, ddir):
    a, _ = bundles
    steps = []
    res = deploy(a, transport, remote_dir=str(ddir), smoke=True, device_python=PY,
                 progress=lambda step, detail: steps.append(step))
    assert res.changed and res.previous is None
    assert current(ddir) == f"releases/{res.release}"          # relative link, switched atomically
    assert releases(ddir) == [res.release]
    assert res.release.endswith("-" + json.loads((a / "manifest.json").read_text())["model_sha256"][:12])
    assert_release_matches(ddir, res.release, a)
    assert not list(ddir.glob(".staging-*")) and not (ddir / ".current-tmp").exists()
    assert os.access(ddir / "current" / "edgepack_run.py", os.X_OK)
    model_size = (a / "model.tflite").stat().st_size
    assert res.bytes_sent >= sum(p.stat().st_size for p in a.rglob("*") if p.is_file()) > model_size
    assert res.smoke is not None and res.smoke.passed and res.smoke.outputs["probs"]["passed"] and res.smoke.report["line"].startswith("MATCH")
    assert steps[:2] == ["connect", "plan"] and steps.index("verify") < steps.index("switch") < steps.index("smoke")


def test_second_deploy_switches_and_keeps_the_first(transport, bundles, ddir):
    a, b = bundles
    first = deploy(a, transport, remote_dir=str(ddir))
    second = deploy(b, transport, remote_dir=str(ddir))
    assert second.release != first.release and second.previous == first.release
    assert current(ddir) == f"releases/{second.release}"
    assert releases(ddir) == sorted([first.release, second.release])
    assert_release_matches(ddir, first.release, a)
    assert_release_matches(ddir, second.release, b)
    # only what differs travels: the device script, README and requirements are reused on the device
    assert set(second.uploaded) == differing_files(a, b) and "model.tflite" in second.uploaded
    assert {"edgepack_run.py", "requirements.txt"} <= set(second.reused)
    assert set(second.reused) | set(second.uploaded) == set(json.loads((b / "manifest.json").read_text())["files"]) | {"manifest.json"}
    assert second.bytes_sent < first.bytes_sent - (a / "edgepack_run.py").stat().st_size


def test_redeploy_of_unchanged_bundle_sends_nothing(transport, bundles, ddir):
    a, _ = bundles
    first = deploy(a, transport, remote_dir=str(ddir))
    before = tree(ddir)
    again = deploy(a, transport, remote_dir=str(ddir))
    assert not again.changed and again.release == first.release
    assert again.bytes_sent == 0 and again.uploaded == ()
    assert tree(ddir) == before                                # not a byte changed on the device


def test_redeploy_with_only_the_script_changed_sends_just_that(transport, bundles, ddir):
    a, _ = bundles
    first = deploy(a, transport, remote_dir=str(ddir))
    with open(a / "edgepack_run.py", "a") as fh:
        fh.write("\n# patched\n")
    refresh_manifest(a)
    second = deploy(a, transport, remote_dir=str(ddir))
    assert second.changed and set(second.uploaded) == {"edgepack_run.py", "manifest.json"}
    payload = (a / "edgepack_run.py").stat().st_size + (a / "manifest.json").stat().st_size
    assert payload <= second.bytes_sent <= payload + 4 * 1024 + 10240  # tar headers + end blocks
    # same model => same sha suffix, different timestamp; the model file is a hard link, not a copy
    assert second.release.split("-")[1] == first.release.split("-")[1]
    m1, m2 = (ddir / "releases" / r / "model.tflite" for r in (first.release, second.release))
    assert m1.read_bytes() == m2.read_bytes()


def test_bundle_altered_after_its_manifest_is_refused_before_connecting(transport, bundles, ddir):
    a, _ = bundles
    with open(a / "model.tflite", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(DeployError, match=r"model.tflite does not match manifest.json"):
        deploy(a, transport, remote_dir=str(ddir))
    assert not ddir.parent.exists() and transport.bytes_sent == 0


def test_file_truncated_in_staging_is_caught_and_current_untouched(transport, bundles, ddir):
    a, b = bundles
    first = deploy(a, transport, remote_dir=str(ddir))
    before = tree(ddir)

    def cut(step, detail):
        if step == "verify":  # the upload "succeeded" but the model on the device is short
            model = Path(detail) / "model.tflite"
            model.write_bytes(model.read_bytes()[:100])

    with pytest.raises(DeployError, match=r"checksum mismatch on the device.*model.tflite") as err:
        deploy(b, transport, remote_dir=str(ddir), progress=cut)
    assert first.release in err.value.message
    assert current(ddir) == f"releases/{first.release}" and tree(ddir) == before
    assert not list(ddir.glob(".staging-*"))


def _ssh_wrapper(tmp_path: Path, upload_stdin: str) -> str:
    """An `ssh` that mangles the upload stream (the one remote command running tar) like a broken link."""
    wrapper = tmp_path / "flaky-ssh"
    wrapper.write_text("#!/bin/sh\n"
                       'case "$*" in *"tar -xf -"*) ' + upload_stdin + ' | ssh "$@"; exit $? ;; esac\n'
                       'exec ssh "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper)


def test_transfer_cut_off_half_way_leaves_current_untouched(ssh_server, bundles, ddir, tmp_path):
    a, b = bundles
    ok = SshTransport(ssh_server.host, ssh_config=ssh_server.config)
    first = deploy(a, ok, remote_dir=str(ddir))
    before = tree(ddir)
    flaky = SshTransport(ssh_server.host, ssh_config=ssh_server.config,
                         ssh_bin=_ssh_wrapper(tmp_path, "head -c 1500"))
    with pytest.raises(DeployError, match="upload .* failed"):
        deploy(b, flaky, remote_dir=str(ddir))
    assert current(ddir) == f"releases/{first.release}" and tree(ddir) == before


def test_transfer_that_stalls_times_out_and_is_killed(ssh_server, bundles, ddir, tmp_path):
    a, b = bundles
    first = deploy(a, SshTransport(ssh_server.host, ssh_config=ssh_server.config), remote_dir=str(ddir))
    before = tree(ddir)
    stall = SshTransport(ssh_server.host, ssh_config=ssh_server.config, timeout=2,
                         ssh_bin=_ssh_wrapper(tmp_path, "{ head -c 1500; exec sleep 29.75; }"))
    with pytest.raises(DeployError, match="timed out"):
        deploy(b, stall, remote_dir=str(ddir))
    assert current(ddir) == f"releases/{first.release}" and tree(ddir) == before
    leftover = subprocess.run(["pgrep", "-f", "sleep 29.75"], capture_output=True, text=True, timeout=10)
    assert leftover.stdout.strip() == ""                      # the whole process group was killed


# ----------------------------------------------------------------------------- host keys
def test_unknown_host_key_stops_before_any_remote_command(ssh_server, bundles, ddir):
    cfg = ssh_server.client_config("empty", "")
    t = SshTransport(ssh_server.host, ssh_config=cfg)
    with pytest.raises(DeployError, match="host key of .* is unknown") as err:
        deploy(bundles[0], t, remote_dir=str(ddir))
    assert f"ssh-keyscan -p {ssh_server.port} 127.0.0.1 >> {ssh_server.dir}/known_hosts-empty" in err.value.hint
    assert not ddir.parent.exists()
    assert (ssh_server.dir / "known_hosts-empty").read_text() == ""   # nothing was enrolled behind our back


def test_changed_host_key_is_refused_with_nothing_written(ssh_server, bundles, ddir, tmp_path):
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True, timeout=30)
    other_line = " ".join(other.with_suffix(".pub").read_text().split()[:2])
    cfg = ssh_server.client_config("changed", f"[127.0.0.1]:{ssh_server.port} {other_line}\n")
    t = SshTransport(ssh_server.host, ssh_config=cfg)
    with pytest.raises(DeployError, match="host key of .* has CHANGED") as err:
        deploy(bundles[0], t, remote_dir=str(ddir))
    assert "ssh-keygen -R" in err.value.hint and "ssh-keyscan" in err.value.hint
    assert not ddir.parent.exists()


def test_ssh_options_are_strict(ssh_server):
    argv = SshTransport(ssh_server.host, ssh_config=ssh_server.config)._options()
    text = " ".join(argv)
    assert "StrictHostKeyChecking=yes" in text and "BatchMode=yes" in text and "ConnectTimeout=" in text
    assert "StrictHostKeyChecking=no" not in text and "/dev/null" not in text
    assert argv[argv.index("-F") + 1] == str(ssh_server.config)


# ----------------------------------------------------------------------------- smoke
def test_failed_smoke_test_switches_back_automatically(transport, bundles, ddir):
    a, b = bundles
    first = deploy(a, transport, remote_dir=str(ddir), smoke=True, device_python=PY)
    with np.load(b / "samples" / "expected.npz") as npz:
        wrong = {k: npz[k] + 0.25 for k in npz.files}
    np.savez(b / "samples" / "expected.npz", **wrong)
    refresh_manifest(b)                                        # a consistent bundle that computes something else
    with pytest.raises(DeployError, match=r"smoke test .* failed.*switched back to " + first.release) as err:
        deploy(b, transport, remote_dir=str(ddir), smoke=True, device_python=PY)
    assert "MISMATCH: probs: p99 score error 0.25 >" in err.value.message
    assert current(ddir) == f"releases/{first.release}" and releases(ddir) == [first.release]


def test_smoke_without_a_python_says_so_and_leaves_nothing_current(transport, bundles, ddir):
    with pytest.raises(DeployError, match=r"no usable Python at '/nonexistent/python3'") as err:
        deploy(bundles[0], transport, remote_dir=str(ddir), smoke=True, device_python="/nonexistent/python3")
    assert "--device-python" in err.value.hint
    assert current(ddir) is None and releases(ddir) == []


# ----------------------------------------------------------------------------- rollback, status, prune
def test_rollback_and_status(transport, bundles, ddir):
    a, b = bundles
    first = deploy(a, transport, remote_dir=str(ddir))
    second = deploy(b, transport, remote_dir=str(ddir))
    st = status(transport, str(ddir))
    assert st.current == second.release and st.previous == first.release and st.verified is True
    assert [r.id for r in st.releases] == [first.release, second.release] and st.name == "tiny-rpi"
    back = rollback(transport, str(ddir))
    assert (back.from_release, back.to_release) == (second.release, first.release)
    assert current(ddir) == f"releases/{first.release}"
    with pytest.raises(DeployError, match="no release older than"):
        rollback(transport, str(ddir))
    rollback(transport, str(ddir), to=second.release)
    assert current(ddir) == f"releases/{second.release}"
    # damage on the device is reported by status and blocks a rollback onto it
    (ddir / "releases" / first.release / "model.tflite").write_bytes(b"garbage")
    with pytest.raises(DeployError, match="is damaged on the device.*model.tflite"):
        rollback(transport, str(ddir))
    assert current(ddir) == f"releases/{second.release}"
    (ddir / "releases" / second.release / "samples" / "inputs.npz").write_bytes(b"x")
    st = status(transport, str(ddir))
    assert st.verified is False and any("samples/inputs.npz" in p for p in st.problems)
    # a redeploy heals the damaged current release without resending what is intact
    healed = deploy(b, transport, remote_dir=str(ddir))
    assert healed.changed and set(healed.uploaded) == {"samples/inputs.npz"}
    assert status(transport, str(ddir)).verified is True


def test_status_of_an_empty_dir(transport, ddir):
    st = status(transport, str(ddir))
    assert not st.exists and st.current is None and st.releases == () and st.verified is None


def test_prune_keeps_current_and_previous(transport, tmp_path, built_bundles, ddir):
    ids = []
    for i in range(3):
        bundle = copy_bundle(built_bundles[("rpi", "ab"[i % 2])], tmp_path / f"b{i}" / "tiny-rpi", script_suffix=f"# {i}\n")
        ids.append(deploy(bundle, transport, remote_dir=str(ddir), keep=1).release)
    assert releases(ddir) == sorted(ids[1:])                    # keep=1 still keeps the previous one
    assert current(ddir) == f"releases/{ids[2]}"


# ----------------------------------------------------------------------------- hostile names
HOSTILE = "it's a \"dir\" $(touch PWNED) `touch PWNED2`; touch PWNED3 & -rf"


def test_hostile_remote_dir_and_bundle_path_are_quoted(transport, tmp_path, built_bundles):
    bundle = copy_bundle(built_bundles[("rpi", "a")], tmp_path / "my bundles $(touch LOCALPWNED)" / "tiny-rpi")
    ddir = tmp_path / "dev ice" / HOSTILE / "-n"
    res = deploy(bundle, transport, remote_dir=str(ddir), smoke=True, device_python=PY)
    assert current(ddir) == f"releases/{res.release}"
    assert_release_matches(ddir, res.release, bundle)
    st = status(transport, str(ddir))
    assert st.verified and st.remote_dir == str(ddir)
    assert run(transport, str(ddir), benchmark=2, device_python=PY).benchmark["runs"] == 2
    for name in ("PWNED", "PWNED2", "PWNED3", "LOCALPWNED"):
        for where in (Path.home(), tmp_path, Path.cwd(), tmp_path / "dev ice"):
            assert not (where / name).exists(), where / name


@pytest.mark.parametrize("name", ["-rf", "../escape", "a;touch PWNED", "a b", "$(touch PWNED)", ""])
def test_hostile_bundle_names_are_rejected_before_connecting(transport, bundles, ddir, name):
    a, _ = bundles
    manifest = json.loads((a / "manifest.json").read_text())
    manifest["name"] = name
    (a / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UsageError, match="bundle name"):
        deploy(a, transport, remote_dir=str(ddir))
    assert transport.bytes_sent == 0 and not ddir.parent.exists()


def test_hostile_file_names_in_the_manifest_are_rejected(transport, bundles, ddir):
    a, _ = bundles
    (a / "$(touch PWNED)").write_text("x")
    manifest = json.loads((a / "manifest.json").read_text())
    manifest["files"]["$(touch PWNED)"] = "sha256:" + "0" * 64
    (a / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UsageError, match="bundle file name"):
        deploy(a, transport, remote_dir=str(ddir))


@pytest.mark.parametrize("host", ["-oProxyCommand=touch PWNED", "root@-p", "a b", "root@host;id", "root@h:99999"])
def test_hostile_host_specs_are_rejected(host):
    with pytest.raises(UsageError):
        SshTransport(host)


# ----------------------------------------------------------------------------- run
def test_run_pushes_input_and_pulls_outputs(transport, bundles, ddir, tmp_path):
    a, _ = bundles
    deploy(a, transport, remote_dir=str(ddir))
    x = np.random.default_rng(5).random((7, 4), dtype=np.float32)
    np.savez(tmp_path / "in.npz", x=x)
    res = run(transport, str(ddir), input=tmp_path / "in.npz", output=tmp_path / "out.npz", device_python=PY)
    with np.load(res.output) as out:
        probs = out["probs"]
    assert probs.shape == (7, 3) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    assert not list(ddir.glob(".run-*"))                       # the work dir on the device is cleaned up
    bench = run(transport, str(ddir), benchmark=5, device_python=PY).benchmark
    assert bench["runs"] == 5 and bench["p50_ms"] > 0 and bench["runtime"] == "ai_edge_litert"


def test_run_with_a_benchmark_model_binary(transport, bundles, ddir, tmp_path):
    deploy(bundles[0], transport, remote_dir=str(ddir))
    fake = tmp_path / "benchmark_model"   # prints what LiteRT's benchmark_model prints
    fake.write_text('#!/bin/sh\ncase "$1" in --graph=*) test -f "${1#--graph=}" || exit 1;; *) exit 2;; esac\n'
                    'echo "Inference timings in us: Init: 2500, First inference: 900, Warmup (avg): 410.5, '
                    'Inference (avg): 400.25"\necho "Peak memory footprint (MB): init=3.1 overall=4.5"\n')
    res = run(transport, str(ddir), benchmark=10, benchmark_binary=fake)
    assert res.benchmark["mean_ms"] == pytest.approx(0.40025) and res.benchmark["peak_mem_mb"] == 4.5
    assert (ddir / "bin" / "benchmark_model").read_bytes() == fake.read_bytes()


def test_run_without_python_says_so(transport, bundles, ddir, tmp_path):
    deploy(bundles[0], transport, remote_dir=str(ddir))
    with pytest.raises(DeployError, match="no usable Python at 'nopython3'"):
        run(transport, str(ddir), benchmark=1, device_python="nopython3")


def test_run_with_nothing_deployed(transport, ddir):
    with pytest.raises(DeployError, match="nothing is deployed"):
        run(transport, str(ddir), benchmark=1)


# ----------------------------------------------------------------------------- CLI
@pytest.fixture
def cli():
    app = typer.Typer()
    cli_deploy.register(app)
    runner = CliRunner()
    return lambda *args: runner.invoke(app, [str(a) for a in args])


def test_cli_deploy_status_rollback_json(cli, ssh_server, bundles, ddir):
    a, b = bundles
    common = ["--host", ssh_server.host, "--ssh-config", ssh_server.config, "--remote-dir", ddir]
    r1 = cli("deploy", a, *common, "--smoke", "--device-python", PY, "--json")
    assert r1.exit_code == 0, r1.output
    first = json.loads(r1.stdout)
    assert first["ok"] is True and first["changed"] and first["smoke"]["passed"] and first["remote_dir"] == str(ddir)
    r2 = cli("deploy", b, *common, "--keep", "2")
    assert r2.exit_code == 0, r2.output
    assert "deployed" in r2.stdout
    st = json.loads(cli("status", *common, "--json").stdout)
    assert st["current"] != first["release"] and st["previous"] == first["release"]
    human = cli("status", *common)
    assert "current" in human.stdout and "intact" in human.stdout
    rb = cli("rollback", *common, "--json")
    assert json.loads(rb.stdout)["to_release"] == first["release"]
    x = ddir.parent.parent / "x.npz"
    np.savez(x, x=np.ones((2, 4), np.float32))
    rr = cli("run", *common, "--input", x, "--device-python", PY)
    assert rr.exit_code == 0, rr.output
    assert (ddir.parent.parent / "x-out.npz").is_file()
    # a damaged current release: status says so and exits 6 (a cron job or CI sees it without parsing)
    cur = json.loads(cli("status", *common, "--json").stdout)["current"]
    (ddir / "releases" / cur / "model.tflite").write_bytes(b"garbage")
    bad = cli("status", *common, "--json")
    doc = json.loads(bad.stdout)
    assert bad.exit_code == 6 and doc["ok"] is False and doc["exit_code"] == 6 and doc["verified"] is False
    assert "damaged" in doc["error"] and "edgepack deploy" in doc["hint"]
    human = cli("status", *common)
    assert human.exit_code == 6 and "DAMAGED" in human.stdout and "edgepack rollback" in human.output


def test_cli_deploys_a_bundle_archive(cli, ssh_server, bundles, ddir):
    a, _ = bundles
    archive = a.with_name(a.name + ".tar.gz")
    if not archive.is_file():
        from packager.bundle.files import write_archive
        archive = write_archive(a, a.parent / f"{a.name}-copy.tar.gz")
    common = ["--host", ssh_server.host, "--ssh-config", ssh_server.config, "--remote-dir", ddir]
    r = cli("deploy", archive, *common, "--json")
    assert r.exit_code == 0, r.output
    release = json.loads(r.stdout)["release"]
    assert (ddir / "releases" / release / "model.tflite").read_bytes() == (a / "model.tflite").read_bytes()


def test_cli_errors_go_through_the_one_boundary(cli, ssh_server, bundles, ddir):
    """Deploy commands' errors become exit codes and one-line messages (and one JSON document with
    --json), as every other command's do."""
    res = cli("deploy", bundles[0], "--host", ssh_server.host, "--serial", "emulator-5554")
    assert res.exit_code == 2 and "error:" in res.output
    res = cli("deploy", bundles[0])                             # rpi target: SSH, but no host
    assert res.exit_code == 2 and "--host" in res.output
    res = cli("status", "--host", ssh_server.host, "--ssh-config", ssh_server.config, "--json")
    data = json.loads(res.stdout[: res.stdout.rindex("}") + 1])
    assert res.exit_code == 2 and data["ok"] is False and "--remote-dir" in data["error"]
    cfg = ssh_server.client_config("cli-empty", "")
    res = cli("deploy", bundles[0], "--host", ssh_server.host, "--ssh-config", cfg, "--remote-dir", ddir)
    assert res.exit_code == 6 and "error:" in res.output and "Traceback" not in res.output


def test_cli_help_has_examples(cli):
    for cmd in ("deploy", "run", "rollback", "status"):
        res = cli(cmd, "--help")
        assert res.exit_code == 0 and "Examples" in res.stdout and "--host" in res.stdout


# ----------------------------------------------------------------------------- slow: --install
@pytest.mark.slow
def test_install_builds_a_venv_on_the_device_and_smoke_uses_it(transport, bundles, ddir):
    """Needs the package index (pip install ai-edge-litert numpy on the 'device')."""
    res = deploy(bundles[0], transport, remote_dir=str(ddir), install=True, smoke=True, device_python=PY)
    assert res.installed and res.device_python == f"{ddir}/venv/bin/python"
    assert res.smoke.passed and (ddir / "venv" / "bin" / "python").exists()
    held = subprocess.run([str(ddir / "venv" / "bin" / "python"), "-m", "pip", "list", "--format", "json"],
                          capture_output=True, text=True, timeout=120, check=True).stdout
    held = {p["name"].lower().replace("_", "-"): p["version"] for p in json.loads(held)}
    wheels = [w for w in json.loads((bundles[0] / "manifest.json").read_text())["runtimes"][0]["wheels"]
              if w["arch"] == "x86_64"]
    assert wheels and all(held[w["name"].lower().replace("_", "-")] == w["version"] for w in wheels)
    bench = run(transport, str(ddir), benchmark=3)             # run picks the venv by itself
    assert bench.device_python == f"{ddir}/venv/bin/python"


def test_install_names_the_wheels_a_device_of_another_python_cannot_get(transport, built_bundles, tmp_path, ddir):
    """The android bundle locks Python 3.12 wheels; this 'device' runs Python 3.11: refused before pip fetches
    anything, naming the wheel, what the bundle has it for and the device's Python/CPU; nothing stays switched."""
    from packager.verification.emulator import host_arch
    bundle = copy_bundle(built_bundles[("android", "a")], tmp_path / "bundles" / "tiny-android")
    with pytest.raises(DeployError) as exc:
        deploy(bundle, transport, remote_dir=str(ddir), install=True, device_python=PY)
    msg = exc.value.message
    assert "\n" not in msg and f"the device (Python {sys.version_info[0]}.{sys.version_info[1]}, {host_arch()})" in msg
    assert "cannot install ai-edge-litert==2.3.0" in msg and "cp312" in msg and "Python 3.12 on arm64" in msg
    assert "current is unchanged" in msg and "--device-python" in exc.value.hint
    assert current(ddir) is None and releases(ddir) == [] and not (ddir / "venv").exists()


def test_install_of_a_bundle_without_wheel_hashes_is_refused(transport, bundles, tmp_path, ddir):
    bundle = bundles[0]
    (bundle / "requirements.txt").write_text("ai-edge-litert==2.3.*\nnumpy>=1.23,<3\n")
    refresh_manifest(bundle)
    with pytest.raises(UsageError, match="pins no wheel hash"):
        deploy(bundle, transport, remote_dir=str(ddir), install=True, device_python=PY)
    assert current(ddir) is None


@pytest.mark.slow
def test_install_reports_a_wheel_whose_hash_is_not_the_locked_one(transport, bundles, ddir):
    """Needs the package index: the device's pip downloads tqdm, whose sha256 is not the one requirements.txt
    names (edited, checksums kept true): one line naming the wheel and both hashes' heads."""
    bundle = bundles[0]
    line = next(ln for ln in (bundle / "requirements.txt").read_text().splitlines() if ln.startswith("tqdm=="))
    (bundle / "requirements.txt").write_text(line.split(" --hash")[0] + " --hash=sha256:" + "0" * 64 + "\n")
    refresh_manifest(bundle)
    with pytest.raises(DeployError) as exc:
        deploy(bundle, transport, remote_dir=str(ddir), install=True, device_python=PY)
    msg = exc.value.message
    assert "\n" not in msg and "pip refused tqdm==" in msg and "tqdm-" in msg and ".whl" in msg
    assert "is not the locked 0000000000000000" in msg and "current is unchanged" in msg
    assert current(ddir) is None


def test_make_transport_registry(ssh_server):
    t = make_transport("ssh", host=ssh_server.host, ssh_config=ssh_server.config)
    assert isinstance(t, SshTransport) and t.describe() == ssh_server.host
    with pytest.raises(UsageError, match="unknown deploy method"):
        make_transport("carrier-pigeon")


# ----------------------------------------------------------------------------- the switch itself
@pytest.mark.parametrize("mv_has_T", [True, False])
def test_switch_script_with_and_without_mv_T(tmp_path, mv_has_T):
    """`current` is replaced, never nested inside the old release, also where mv lacks -T (old toybox)."""
    from packager.deploy.releases import _switch_script

    d = tmp_path / "it's dir"
    for rid in ("20250101T000000Z-aaaaaaaaaaaa", "20250102T000000Z-bbbbbbbbbbbb"):
        (d / "releases" / rid).mkdir(parents=True)
    os.symlink("releases/20250101T000000Z-aaaaaaaaaaaa", d / "current")
    fakebin = tmp_path / "bin"
    fakebin.mkdir()
    if not mv_has_T:
        (fakebin / "mv").write_text('#!/bin/sh\nfor a in "$@"; do [ "$a" = -T ] && { echo "mv: unknown option -T" >&2; '
                                    'exit 1; }; done\nexec /bin/mv "$@"\n')
        (fakebin / "mv").chmod(0o755)
    env = {"PATH": f"{fakebin}:/usr/bin:/bin"}
    res = subprocess.run(["sh", "-c", _switch_script(str(d), "20250102T000000Z-bbbbbbbbbbbb")], env=env,
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    assert "CURRENT=releases/20250102T000000Z-bbbbbbbbbbbb" in res.stdout
    assert os.readlink(d / "current") == "releases/20250102T000000Z-bbbbbbbbbbbb"
    assert not (d / ".current-tmp").exists()
    assert not any((d / "releases" / r / ".current-tmp").exists() for r in os.listdir(d / "releases"))


def test_tilde_and_relative_remote_dirs_resolve_on_the_device(transport, bundles, ssh_server):
    """The rpi default is ~/edgepack/NAME: ~ is the device user's $HOME (here: this user's home)."""
    import secrets
    import shutil

    base = f".edgepack-test-{secrets.token_hex(4)}"
    home = Path(ssh_server.ssh('printf %s "$HOME"').stdout)
    try:
        res = deploy(bundles[0], transport, remote_dir=f"~/{base}/tiny-rpi")
        assert res.remote_dir == f"{home}/{base}/tiny-rpi" and current(home / base / "tiny-rpi")
        assert status(transport, f"{base}/tiny-rpi").current == res.release      # relative = under $HOME
        with pytest.raises(UsageError):
            status(transport, "~")                                               # never the home itself
        with pytest.raises(UsageError):
            status(transport, f"~/{base}/../..")
    finally:
        shutil.rmtree(home / base, ignore_errors=True)


def test_current_replaced_by_a_directory_is_named(transport, bundles, ddir):
    a, b = bundles
    deploy(a, transport, remote_dir=str(ddir))
    (ddir / "current").unlink()
    (ddir / "current").mkdir()                      # someone put a directory where the link was
    (ddir / "current" / "mine.txt").write_text("keep")
    with pytest.raises(DeployError) as exc:
        deploy(b, transport, remote_dir=str(ddir))
    assert "current is not a link: it is a directory" in exc.value.message and "move" in exc.value.hint
    assert (ddir / "current" / "mine.txt").read_text() == "keep"


def test_a_locked_device_directory_names_its_holder_and_is_left_alone(transport, bundles, ddir, monkeypatch):
    """Issue 21 part 5: deploy, rollback and prune hold DIR/.lock; a second one is told who holds it."""
    a, b = bundles
    first = deploy(a, transport, remote_dir=str(ddir))
    assert not (ddir / ".lock").exists()                        # released after the deploy
    (ddir / ".lock").mkdir()
    (ddir / ".lock" / "owner").write_text("edgepack pid 4242 on otherhost since 2026-12-04T10:00:00Z (deploying)")
    monkeypatch.setenv("EDGEPACK_DEVICE_LOCK_WAIT", "1")
    seen = []
    with pytest.raises(DeployError) as exc:
        deploy(b, transport, remote_dir=str(ddir), progress=lambda step, detail: seen.append((step, detail)))
    assert "pid 4242 on otherhost" in exc.value.message and ".lock" in exc.value.hint
    assert ("wait", f"{ddir} is locked by edgepack pid 4242 on otherhost since 2026-12-04T10:00:00Z (deploying)") in seen
    assert current(ddir) == f"releases/{first.release}" and releases(ddir) == [first.release]
    with pytest.raises(DeployError):
        rollback(transport, str(ddir))
    assert (ddir / ".lock" / "owner").read_text().startswith("edgepack pid 4242")    # not ours: not removed
    (ddir / ".lock" / "owner").unlink()
    (ddir / ".lock").rmdir()
    second = deploy(b, transport, remote_dir=str(ddir))
    assert current(ddir) == f"releases/{second.release}" and not (ddir / ".lock").exists()


def test_a_stalled_ssh_says_no_answer_for_how_long():
    """Issue 21 part 6: ssh's keep-alive gives up on a device that stopped answering (exit 255 after ~30-46 s):
    the error says so, instead of 'exit status 255'."""
    from packager.deploy.base import Completed
    t = SshTransport("pi@10.0.0.9")
    for err in (b"Timeout, server 10.0.0.9 not responding.\r\n", b""):
        e = t._classify(Completed(255, b"", err), 46.0)
        assert e.message.startswith("no answer from pi@10.0.0.9 for 30 s") and "46 s" in e.message
        assert "current unchanged" in e.hint
    assert "cannot reach" in t._classify(Completed(255, b"", b"ssh: connect to host: Connection refused"), 1).message
