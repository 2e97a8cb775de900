"""What a killed edgepack leaves behind: no stale archive beside a new bundle, no TensorFlow
child, no temp dirs, no ssh ControlMaster."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from packager.bundle.files import check_files

ROOT = Path(__file__).resolve().parent.parent


def _cli(*args):
    return [sys.executable, "-m", "packager.cli", *args]


def _archive_manifest(archive: Path) -> dict:
    with tarfile.open(archive) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("/manifest.json"))
        return json.loads(tar.extractfile(member).read())


@pytest.mark.slow
@pytest.mark.parametrize("point", ["archive-removed", "after-exchange", "between-renames", "after-commit", "archive"])
def test_killed_rebuild_never_leaves_a_stale_archive(point, zoo, tmp_path):
    env = dict(os.environ, EDGEPACK_IN_PROCESS="1", PYTHONPATH=str(ROOT))
    out = tmp_path / "b"
    base = _cli("build", str(zoo["keras3_h5"]), "-t", "rpi", "--runtime", "ai-edge-litert", "-o", str(out))
    subprocess.run(base + ["-q", "float32"], env=env, check=True, capture_output=True, timeout=600)
    archive = out.with_name("b.tar.gz")
    assert _archive_manifest(archive)["recipe"]["name"] == "float32"
    proc = subprocess.run(base + ["-q", "float16"], env=dict(env, EDGEPACK_FAULT_AT=point),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode in (-9, 0), proc.stderr[-500:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert check_files(out, manifest) == []
    if archive.exists():  # present only when it is the archive of the bundle beside it
        assert _archive_manifest(archive) == manifest, point
    else:
        assert proc.returncode == -9


# ---------------------------------------------------------------- processes and temp dirs
def _tagged(tag: str) -> list[int]:
    """Processes whose environment carries ``tag`` (every descendant of the CLI we started)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if f"EDGEPACK_TEST_TAG={tag}".encode() in (entry / "environ").read_bytes().split(b"\0"):
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def _cmdline(pid: int) -> list[str]:
    try:
        return [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
    except OSError:
        return []


def _wait(predicate, timeout: float = 60.0, step: float = 0.05):
    import time
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    return None


def _gone(tag: str, dirs=()) -> bool:
    return not _tagged(tag) and not any(Path(d).exists() for d in dirs)


def _kill(proc, how: str) -> None:
    import signal
    if how == "SIGINT":  # as a terminal's Ctrl-C: the whole foreground process group
        os.killpg(proc.pid, signal.SIGINT)
    else:
        os.kill(proc.pid, getattr(signal, how))


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["edgepack-tf-", "edgepack-run-"])
@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM", "SIGINT"])
def test_killed_build_leaves_no_process_and_no_temp_dir(stage, how, zoo, tmp_path):
    import uuid
    tag = uuid.uuid4().hex
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("EDGEPACK_IN_PROCESS",)}
    env.update(PYTHONPATH=str(ROOT), TMPDIR=str(tmp), EDGEPACK_TEST_TAG=tag, EDGEPACK_NO_CACHE="1")
    proc = subprocess.Popen(_cli("build", str(zoo["keras3_h5"]), "-t", "rpi", "-q", "float32",
                                 "--runtime", "ai-edge-litert", "-o", str(tmp_path / "b")),
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        found = _wait(lambda: [p for p in tmp.iterdir() if p.name.startswith(stage)], timeout=300)
        assert found, f"the build never reached {stage}: {proc.poll()} {proc.stderr.read()[-400:] if proc.poll() is not None else ''}"
        # a child is at work there (TensorFlow or the device script) besides the reaper
        assert _wait(lambda: len(_tagged(tag)) >= 3, timeout=60), [(p, _cmdline(p)) for p in _tagged(tag)]
        _kill(proc, how)
        proc.wait(60)
        assert _wait(lambda: _gone(tag), timeout=30), [(p, _cmdline(p)) for p in _tagged(tag)]
        assert _wait(lambda: not list(tmp.iterdir()), timeout=30), list(tmp.iterdir())
        assert not (tmp_path / "b").exists() and not list(tmp_path.glob(".b.staging-*")) or how == "SIGKILL"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def built_bundles(request, tmp_path_factory):
    from tests.deploy_helpers import session_bundles
    return session_bundles(request, tmp_path_factory)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_killed_deploy_leaves_no_ssh_master_and_no_socket_dir(how, ssh_server, built_bundles, tmp_path):
    import uuid

    from tests.deploy_helpers import copy_bundle
    bundle = copy_bundle(built_bundles[("rpi", "a")], tmp_path / "b" / "tiny-rpi")
    started = tmp_path / "smoke-started"
    slow_python = tmp_path / "slowpython"   # the smoke run on the "device" waits, so the kill lands mid-deploy
    slow_python.write_text(f"#!/bin/sh\ntouch {started}\nsleep 15\nexec {sys.executable} \"$@\"\n")
    slow_python.chmod(0o755)
    tag = uuid.uuid4().hex
    env = dict(os.environ, PYTHONPATH=str(ROOT), EDGEPACK_TEST_TAG=tag)
    proc = subprocess.Popen(_cli("deploy", str(bundle), "--host", ssh_server.host, "--ssh-config", str(ssh_server.config),
                                 "--remote-dir", str(tmp_path / "device"), "--smoke", "--device-python", str(slow_python)),
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        def master():
            for pid in _tagged(tag):
                argv = _cmdline(pid)
                if argv and os.path.basename(argv[0]) == "ssh" and "-M" in argv:
                    return pid, next(a.split("=", 1)[1] for a in argv if a.startswith("ControlPath="))
            return None
        assert _wait(started.exists, timeout=120), proc.stderr.read()[-400:] if proc.poll() is not None else "no smoke"
        found = master()
        assert found, [(p, _cmdline(p)) for p in _tagged(tag)]
        control_dir = os.path.dirname(found[1])
        assert Path(control_dir).is_dir()
        _kill(proc, how)
        proc.wait(60)
        assert _wait(lambda: _gone(tag, [control_dir]), timeout=30), [(p, _cmdline(p)) for p in _tagged(tag)]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
