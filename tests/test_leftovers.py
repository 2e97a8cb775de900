"""Nothing outlives an edgepack command (issue 15): no process of its session and no temporary
directory after build, verify and deploy -- when they succeed, when they fail, and after Ctrl-C.

Each command runs as the real CLI in a new session (``start_new_session``), so every process it
starts (the TensorFlow child, the device-script runs, ssh) carries that session id unless it
detaches on purpose; its TMPDIR is private, so every temporary directory it makes through
``tempfile`` lands where the test can see it. Ctrl-C is SIGINT to the whole process group, as a
terminal sends it.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


def _session_processes(sid: int) -> list[str]:
    """Live processes of session ``sid``: 'PID STATE cmdline'."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            if int(fields[3]) != sid:       # fields after "(comm)": state ppid pgrp session ...
                continue
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except (OSError, ValueError):
            continue
        found.append(f"{entry.name} {fields[0]} {cmd[:200]}")
    return found


def _processes_matching(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmd:
                found.append(f"{entry.name} {cmd[:200]}")
    return found


class Run:
    def __init__(self, proc: subprocess.Popen, tmpdir: Path, stdout: str, stderr: str, left: list[str],
                 temp: list[str]):
        self.proc, self.tmpdir, self.stdout, self.stderr = proc, tmpdir, stdout, stderr
        self.returncode = proc.returncode
        self.processes, self.temp = left, temp


def _ctrl_c(sid: int) -> None:
    os.killpg(sid, signal.SIGINT)


def edgepack(tmp_path: Path, *args, interrupt_when=None, interrupt=_ctrl_c, timeout: float = 600,
             grace: float = 5.0) -> Run:
    """Run ``edgepack ARGS`` in its own session with a private TMPDIR. ``interrupt_when(sid)``: polled
    while it runs; when true, ``interrupt(sid)`` (default: SIGINT to the process group, as Ctrl-C
    does) -- once. Then what is left: live
    processes of the session (after ``grace`` seconds for the kernel to reap) and TMPDIR entries."""
    tmpdir = tmp_path / f"tmp-{len(list(tmp_path.glob('tmp-*')))}"
    tmpdir.mkdir()
    env = dict(os.environ, TMPDIR=str(tmpdir), COLUMNS="200", PYTHONPATH=str(ROOT))
    env.pop("EDGEPACK_IN_PROCESS", None)            # the real default: TensorFlow in a contained child
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with open(out, "wb") as fo, open(err, "wb") as fe:
        proc = subprocess.Popen([PY, "-m", "packager.cli", *map(str, args)], stdout=fo, stderr=fe,
                                stdin=subprocess.DEVNULL, env=env, cwd=tmp_path, start_new_session=True)
        sid = proc.pid
        started = time.time() - 1
        deadline = time.monotonic() + timeout
        interrupted = interrupt_when is None
        try:
            while proc.poll() is None:
                if time.monotonic() > deadline:
                    raise AssertionError(f"edgepack {args[0]} did not finish in {timeout} s")
                if not interrupted and interrupt_when(sid):
                    interrupt(sid)
                    interrupted = True
                time.sleep(0.05)
            # what the command itself left at its exit, before the reaper (which runs after it) could act
            at_exit = sorted(p.name for p in tmpdir.iterdir()) + sorted(
                p.name for p in Path("/tmp").glob("edgepack-ssh-*") if p.stat().st_mtime >= started)
            left = _session_processes(sid)
            end = time.monotonic() + grace
            while left and time.monotonic() < end:
                time.sleep(0.1)
                left = _session_processes(sid)
        finally:
            if proc.poll() is None or _session_processes(sid):
                try:                                # never leave our own mess behind us either
                    os.killpg(sid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(10)
    temp = sorted(p.name for p in tmpdir.iterdir())
    run = Run(proc, tmpdir, out.read_text(errors="replace"), err.read_text(errors="replace"), left, temp)
    run.at_exit = at_exit
    return run


def assert_nothing_left(run: Run) -> None:
    assert not run.processes, f"processes still running after edgepack exited: {run.processes}"
    # TensorFlow's autograph modules included: the TensorFlow child writes them to its own scratch
    # TMPDIR, which edgepack removes after it (packager.contain.lifecycle).
    assert not run.temp, f"temporary entries left in TMPDIR: {run.temp}"
    if run.returncode in (0, 1, 2, 3, 4, 5, 6, 7):     # a normal exit cleans up itself, not through the reaper
        assert not run.at_exit, f"temporary entries still there when edgepack exited: {run.at_exit}"


def _tf_child_running(sid: int) -> bool:
    """The contained TensorFlow child exists (multiprocessing's spawn child of the CLI)."""
    return any("multiprocessing" in p for p in _session_processes(sid))


def _device_script_running(sid: int) -> bool:
    return any("edgepack_run.py" in p for p in _session_processes(sid))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A small seeded Keras model (digits-sized MLP), calibration data and held-out data."""
    import keras
    keras.utils.set_random_seed(0)
    out = tmp_path_factory.mktemp("leftovers-model")
    inp = keras.Input((64,), name="x")
    model = keras.Model(inp, keras.layers.Dense(10, activation="softmax", name="probs")(
        keras.layers.Dense(32, activation="relu")(inp)))
    model.save(out / "tiny.keras")
    rng = np.random.default_rng(0)
    np.savez(out / "cal.npz", x=rng.random((120, 64), dtype=np.float32))
    np.savez(out / "eval.npz", x=rng.random((40, 64), dtype=np.float32))
    np.savez(out / "wrong.npz", x=rng.random((40, 7), dtype=np.float32))
    return out


@pytest.fixture(scope="module")
def bundle(tiny, tmp_path_factory):
    work = tmp_path_factory.mktemp("leftovers-bundle")
    run = edgepack(work, "build", tiny / "tiny.keras", "-t", "rpi", "-q", "float32", "-o", work / "tiny-rpi")
    assert run.returncode == 0, run.stderr[-2000:]
    return work / "tiny-rpi"


# --------------------------------------------------------------------------- build
def test_build_success_leaves_nothing(tiny, tmp_path):
    run = edgepack(tmp_path, "build", tiny / "tiny.keras", "-t", "rpi", "-q", "float16", "--data", tiny / "eval.npz",
                   "-o", tmp_path / "out")
    assert run.returncode == 0, run.stderr[-2000:]
    assert_nothing_left(run)


def test_build_failure_in_the_tensorflow_child_leaves_nothing(tiny, tmp_path):
    """Calibration data of the wrong shape: refused inside the TensorFlow child (exit 2)."""
    run = edgepack(tmp_path, "build", tiny / "tiny.keras", "-t", "rpi", "-q", "int8", "-c", tiny / "wrong.npz",
                   "-o", tmp_path / "out")
    assert run.returncode == 2, run.stderr[-2000:]
    assert_nothing_left(run)
    assert not (tmp_path / "out").exists()


def test_build_ctrl_c_during_conversion_leaves_nothing(tiny, tmp_path):
    run = edgepack(tmp_path, "build", tiny / "tiny.keras", "-t", "rpi", "-q", "float32", "-o", tmp_path / "out",
                   "--no-cache", interrupt_when=_tf_child_running)
    assert run.returncode != 0
    assert_nothing_left(run)
    assert not (tmp_path / "out").exists()


def test_build_ctrl_c_during_verification_leaves_nothing(tiny, tmp_path):
    run = edgepack(tmp_path, "build", tiny / "tiny.keras", "-t", "rpi", "-q", "float32", "-o", tmp_path / "out",
                   "--no-cache", interrupt_when=_device_script_running)
    assert run.returncode != 0
    assert_nothing_left(run)
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- verify
def test_verify_success_leaves_nothing(bundle, tiny, tmp_path):
    run = edgepack(tmp_path, "verify", bundle, "--reference", tiny / "tiny.keras", "--data", tiny / "eval.npz")
    assert run.returncode == 0, run.stderr[-2000:]
    assert_nothing_left(run)


def test_verify_of_an_archive_failure_leaves_nothing(bundle, tiny, tmp_path):
    """The archive is unpacked into a temporary directory; wrong data fails after that (exit 2)."""
    run = edgepack(tmp_path, "verify", bundle.parent / "tiny-rpi.tar.gz", "--reference", tiny / "tiny.keras",
                   "--data", tiny / "wrong.npz")
    assert run.returncode == 2, run.stderr[-2000:]
    assert_nothing_left(run)


def test_verify_ctrl_c_leaves_nothing(bundle, tiny, tmp_path):
    run = edgepack(tmp_path, "verify", bundle.parent / "tiny-rpi.tar.gz", "--reference", tiny / "tiny.keras",
                   interrupt_when=_tf_child_running)
    assert run.returncode != 0
    assert_nothing_left(run)


# --------------------------------------------------------------------------- deploy (ssh)
def _new_control_dirs(before: set) -> list[str]:
    return sorted(str(p) for p in Path("/tmp").glob("edgepack-ssh-*") if str(p) not in before)  # noqa: S108


def _deploy(tmp_path, ssh_server, bundle, *extra, **kw):
    before = {str(p) for p in Path("/tmp").glob("edgepack-ssh-*")}  # noqa: S108
    run = edgepack(tmp_path, "deploy", bundle, "--host", ssh_server.host, "--ssh-config", ssh_server.config,
                   "--remote-dir", tmp_path / "device", *extra, **kw)
    ssh_left = _processes_matching(str(ssh_server.config))
    return run, ssh_left, _new_control_dirs(before)


def test_deploy_success_leaves_nothing(bundle, ssh_server, tmp_path):
    run, ssh_left, dirs = _deploy(tmp_path, ssh_server, bundle, "--smoke", "--device-python", PY)
    assert run.returncode == 0, run.stderr[-2000:]
    assert_nothing_left(run)
    assert not ssh_left, f"ssh processes (ControlMaster?) still running: {ssh_left}"
    assert not dirs, f"ssh control directories left: {dirs}"


def test_deploy_failing_smoke_leaves_nothing(bundle, ssh_server, tmp_path):
    """A device Python without a runtime: the smoke run fails and the release is switched back."""
    run, ssh_left, dirs = _deploy(tmp_path, ssh_server, bundle, "--smoke", "--device-python", "/usr/bin/false")
    assert run.returncode != 0, run.stderr[-2000:]
    assert_nothing_left(run)
    assert not ssh_left, f"ssh processes (ControlMaster?) still running: {ssh_left}"
    assert not dirs, f"ssh control directories left: {dirs}"


def test_deploy_ctrl_c_leaves_nothing(bundle, ssh_server, tmp_path):
    """Ctrl-C once the ControlMaster is up (edgepack runs ssh in sessions of its own, so only edgepack
    itself gets the SIGINT, as from a terminal; it must stop them and remove their directory)."""
    run, ssh_left, dirs = _deploy(tmp_path, ssh_server, bundle, "--smoke", "--device-python", PY,
                                  interrupt_when=lambda sid: bool(_processes_matching(str(ssh_server.config))))
    assert run.returncode != 0, run.stderr[-2000:]
    assert_nothing_left(run)
    assert not ssh_left, f"ssh processes (ControlMaster?) still running: {ssh_left}"
    assert not dirs, f"ssh control directories left: {dirs}"


# --------------------------------------------------------------------------- the parent killed outright
def test_build_parent_killed_leaves_no_tensorflow_child(tiny, tmp_path):
    """SIGKILL to edgepack alone (not its group): the contained child must not outlive it."""
    run = edgepack(tmp_path, "build", tiny / "tiny.keras", "-t", "rpi", "-q", "float32", "-o", tmp_path / "out",
                   "--no-cache", interrupt_when=_tf_child_running, interrupt=lambda sid: os.kill(sid, signal.SIGKILL),
                   grace=10.0)
    assert run.returncode == -signal.SIGKILL
    assert not run.processes, f"processes still running after edgepack was killed: {run.processes}"
