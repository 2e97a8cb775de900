"""The TensorFlow child's containment boundary (Landlock): even a trusted, hostile model that
gets past every check cannot write outside the child's scratch dir, connect over TCP, or leave
the scratch dir behind."""
from __future__ import annotations

import json
import socket
import subprocess
import zipfile
import sys
from pathlib import Path

import pytest

from packager import api
from packager.contain import sandbox
from packager.errors import EdgepackError

LITERT = ["ai-edge-litert"]
ROOT = Path(__file__).resolve().parent.parent
needs_landlock = pytest.mark.skipif(sandbox.abi_version() == 0, reason="this kernel has no Landlock")


@pytest.fixture
def contained(monkeypatch, tmp_path):
    monkeypatch.delenv("EDGEPACK_IN_PROCESS", raising=False)
    monkeypatch.setenv("EDGEPACK_NO_CACHE", "1")
    monkeypatch.setenv("EDGEPACK_SANDBOX", "require")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    return tmp


def _saved_model(tmp_path, name: str, target: Path | None) -> Path:
    import tensorflow as tf

    class M(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def serve(self, x):
            if target is not None:
                tf.io.write_file(str(target), "import os  # a .pth runs at the next Python start")
            return {"y": x * 2.0}

    m = M()
    path = tmp_path / name
    tf.saved_model.save(m, str(path), signatures={"serving_default": m.serve})
    return path


def _swapped_lambda(tmp_path, payload: str):
    """A .keras whose Lambda runs ``payload`` (exec, with a namespace) while the model is traced and adds
    ``leak`` from it to its output: what the payload learns is baked into the converted model."""
    import keras
    inp = keras.Input((4,), name="x")
    harmless = tmp_path / "harmless2.keras"
    layer = keras.layers.Lambda(lambda t, code: (lambda ns: (exec(code, ns), t * 2.0 + ns.get("leak", 0.0))[1])({}),
                                name="hostile", arguments={"code": "pass"})
    keras.Model(inp, layer(inp)).save(harmless)
    path = tmp_path / "reader.keras"
    with zipfile.ZipFile(harmless) as src, zipfile.ZipFile(path, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "config.json":
                data = data.replace(b'"code": "pass"', json.dumps({"code": payload})[1:-1].encode())
            dst.writestr(info, data)
    return path


@needs_landlock
def test_trusted_savedmodel_cannot_write_outside_scratch(contained, tmp_path, monkeypatch):
    """The reference run of `verify` executes the model's WriteFile: without the sandbox the file
    is written (the control), with it the write fails and nothing lands outside the scratch dir."""
    target = tmp_path / "evil.pth"
    plain = _saved_model(tmp_path, "plain", None)
    writer = _saved_model(tmp_path, "writer", target)
    bundle = api.build(plain, target="rpi", recipe="float32", runtimes=LITERT, output=tmp_path / "b").bundle
    monkeypatch.setenv("EDGEPACK_SANDBOX", "0")
    api.verify(bundle, reference=writer, runtimes=LITERT, trust_model=True)
    assert target.exists(), "control: without the sandbox the hostile model writes its file"
    target.unlink()
    monkeypatch.setenv("EDGEPACK_SANDBOX", "require")
    with pytest.raises(EdgepackError) as exc:
        api.verify(bundle, reference=writer, runtimes=LITERT, trust_model=True)
    assert "\n" not in exc.value.message
    assert "sandbox blocked" in exc.value.message, exc.value.message
    assert not target.exists()
    assert not [p for p in contained.iterdir() if p.name.startswith("edgepack-")]  # scratch went with the child


@needs_landlock
def test_trusted_lambda_cannot_write_or_connect(contained, tmp_path, monkeypatch):
    target = tmp_path / "lambda-wrote.txt"
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.1)
    port = server.getsockname()[1]

    payload = (f"try:\n    open({str(target)!r}, 'w').write('x')\nexcept OSError:\n    pass\n"
               "import socket\n"
               f"try:\n    socket.create_connection(('127.0.0.1', {port}), timeout=1)\nexcept OSError:\n    pass\n")
    path = _swapped_lambda(tmp_path, payload)
    assert not target.exists()

    def accepted() -> bool:
        try:
            conn, _ = server.accept()
            conn.close()
            return True
        except OSError:
            return False

    def build(out: str):
        return api.build(path, target="rpi", recipe="float32", runtimes=LITERT, output=tmp_path / out,
                         trust_model=True)

    monkeypatch.setenv("EDGEPACK_SANDBOX", "0")     # control: uncontained, the payload works
    build("control")
    assert target.exists() and accepted()
    target.unlink()
    while accepted():
        pass
    monkeypatch.setenv("EDGEPACK_SANDBOX", "require")
    res = build("out")
    assert res.verification.passed            # the model itself still converts and verifies
    assert not target.exists()
    assert not accepted(), "the sandboxed child opened a TCP connection"
    server.close()


def test_sandbox_off_and_status(monkeypatch):
    monkeypatch.setenv("EDGEPACK_SANDBOX", "0")
    assert sandbox.status().startswith("off") and sandbox.confine(["/tmp"]) == 0
    monkeypatch.delenv("EDGEPACK_SANDBOX")
    assert ("Landlock ABI" in sandbox.status()) == (sandbox.abi_version() > 0)


@needs_landlock
def test_confined_process_writes_only_below_scratch(tmp_path):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    outside = tmp_path / "outside.txt"
    code = ("import sys; from packager.contain import sandbox\n"
            f"assert sandbox.confine([{str(scratch)!r}]) > 0\n"
            f"open({str(scratch / 'ok.txt')!r}, 'w').write('fine')\n"
            "try:\n"
            f"    open({str(outside)!r}, 'w').write('escaped')\n"
            "except PermissionError:\n"
            "    print('denied')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "denied"
    assert (scratch / "ok.txt").read_text() == "fine" and not outside.exists()


@needs_landlock
def test_emulator_runs_are_confined_too(int8_bundle, runtime_python, tmp_path, monkeypatch):
    """Code running inside the emulated runtime (as a model exploiting the native runtime would)
    can write its outputs in the run's temp dir, but nothing elsewhere on the host."""
    from packager.verification import emulator
    outside = tmp_path / "escaped.txt"
    script = tmp_path / "stand_in.py"
    script.write_text("import sys, numpy as np\n"
                      "try:\n"
                      f"    open({str(outside)!r}, 'w').write('x')\n"
                      "except OSError:\n"
                      "    pass\n"
                      "out = sys.argv[sys.argv.index('--output') + 1]\n"
                      "np.savez(out, probs=np.zeros((1, 10), np.float32))\n")
    monkeypatch.setattr(emulator, "host_entrypoint", lambda bundle, manifest: (script, None))
    name = json.loads((int8_bundle.bundle / "manifest.json").read_text())["inputs"][0]["name"]
    import numpy as np
    monkeypatch.setenv("EDGEPACK_SANDBOX", "0")            # control: uncontained, it writes
    assert emulator.run_device_script(runtime_python, int8_bundle.bundle,
                                      {name: np.zeros((1, 8, 8, 1), np.float32)}).ok
    assert outside.exists()
    outside.unlink()
    monkeypatch.setenv("EDGEPACK_SANDBOX", "require")
    run = emulator.run_device_script(runtime_python, int8_bundle.bundle, {name: np.zeros((1, 8, 8, 1), np.float32)})
    assert run.ok, run.error                               # its own outputs are still written
    assert not outside.exists()


@needs_landlock
@pytest.mark.skipif(not sandbox.sockets_deniable(), reason="no libseccomp")
def test_trusted_lambda_cannot_read_secrets_or_open_any_socket(contained, tmp_path, monkeypatch):
    """Issue 21 part 2: with --trust-model the model could read ~/.ssh, the parent's environment, send UDP and
    connect to a unix socket (an ssh ControlMaster's), and bake what it read into the bundle. Now each fails;
    the control (EDGEPACK_SANDBOX=0) shows every one working."""
    import numpy as np
    from tests.field_models import raw_outputs
    secret = tmp_path / "home" / ".ssh" / "id_rsa"
    secret.parent.mkdir(parents=True)
    secret.write_text("-----BEGIN OPENSSH PRIVATE KEY-----")
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.settimeout(0.2)
    unix_path = tmp_path / "ctl.sock"
    unix = socket.socket(socket.AF_UNIX)
    unix.bind(str(unix_path))
    unix.listen(4)
    unix.settimeout(0.2)
    payload = (
        "import os, socket\nleak = 0.0\n"
        f"try:\n    leak += len(open({str(secret)!r}).read()) > 0\nexcept OSError:\n    pass\n"
        "try:\n    leak += 2 * (len(open(f'/proc/{os.getppid()}/environ', 'rb').read()) > 0)\nexcept OSError:\n    pass\n"
        "try:\n    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        f"    s.sendto(b'leak', ('127.0.0.1', {udp.getsockname()[1]}))\n    leak += 4\nexcept OSError:\n    pass\n"
        "try:\n    s = socket.socket(socket.AF_UNIX)\n"
        f"    s.connect({str(unix_path)!r})\n    leak += 8\nexcept OSError:\n    pass\n")
    path = _swapped_lambda(tmp_path, payload)

    def received() -> tuple[bool, bool]:
        got_udp = got_unix = False
        try:
            while udp.recv(64):
                got_udp = True
        except OSError:
            pass
        try:
            while True:
                conn, _ = unix.accept()
                conn.close()
                got_unix = True
        except OSError:
            pass
        return got_udp, got_unix

    def leaked(out: str) -> float:
        res = api.build(path, target="rpi", recipe="float32", runtimes=LITERT, output=tmp_path / out,
                        trust_model=True)
        got = raw_outputs(res.bundle, {"x": np.zeros((1, 4), np.float32)})
        return float(next(iter(got.values()))[0, 0])

    monkeypatch.setenv("EDGEPACK_SANDBOX", "0")     # control: uncontained, everything works and is baked in
    assert leaked("control") == 15.0 and received() == (True, True)
    monkeypatch.setenv("EDGEPACK_SANDBOX", "require")
    assert leaked("out") == 0.0
    assert received() == (False, False)
    udp.close()
    unix.close()


@needs_landlock
def test_confined_process_reads_only_what_it_is_given(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("s3cret")
    given = tmp_path / "model.bin"
    given.write_text("weights")
    code = ("from packager.contain import sandbox\n"
            f"assert sandbox.confine([], readable=[{str(given)!r}]) > 0\n"
            f"print(open({str(given)!r}).read())\n"
            "import json, numpy\n"                                  # the installation is still readable
            "try:\n"
            f"    open({str(secret)!r}).read()\n"
            "except PermissionError:\n"
            "    print('denied')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["weights", "denied"]


@needs_landlock
def test_emulator_runs_read_only_their_bundle_and_environment(int8_bundle, runtime_python, tmp_path, monkeypatch):
    from packager.verification import emulator
    import numpy as np
    secret = tmp_path / "id_rsa"
    secret.write_text("key")
    (tmp_path / "script").mkdir()
    script = tmp_path / "script" / "stand_in.py"
    script.write_text("import sys, socket, numpy as np\nread = 0\n"
                      f"try:\n    read = len(open({str(secret)!r}).read())\nexcept OSError:\n    pass\n"
                      "try:\n    socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n    read += 10\n"
                      "except OSError:\n    pass\n"
                      "out = sys.argv[sys.argv.index('--output') + 1]\n"
                      "np.savez(out, probs=np.full((1, 10), read, np.float32))\n")
    monkeypatch.setattr(emulator, "host_entrypoint", lambda bundle, manifest: (script, None))
    name = json.loads((int8_bundle.bundle / "manifest.json").read_text())["inputs"][0]["name"]
    x = {name: np.zeros((1, 8, 8, 1), np.float32)}
    monkeypatch.setenv("EDGEPACK_SANDBOX", "0")            # control: uncontained, it reads and opens a socket
    assert emulator.run_device_script(runtime_python, int8_bundle.bundle, x).outputs["probs"][0, 0] == 13
    monkeypatch.setenv("EDGEPACK_SANDBOX", "require")
    run = emulator.run_device_script(runtime_python, int8_bundle.bundle, x)
    assert run.ok, run.error
    expect = 0 if sandbox.sockets_deniable() else 10
    assert run.outputs["probs"][0, 0] == expect


def test_a_tampered_runtime_environment_is_rebuilt_with_a_note(tmp_path, monkeypatch):
    """Issue 21 part 3: a .pth dropped into a cached runtime environment (by a model run without a sandbox)
    would run at every later emulator run; the environment's record of its files catches it."""
    from packager.verification import emulator
    from packager.targets import get_target
    rt = get_target("rpi").runtime("ai-edge-litert")
    env = emulator.host_env(rt)          # (an environment made before records existed is rebuilt here)
    root = Path(env.argv[0]).parent.parent
    emulator._INTACT.clear()
    assert emulator.tampered(root) == "" and emulator.host_env(rt).note == ""
    site = next(root.glob("lib/python*/site-packages"))
    marker = tmp_path / "pth-ran"
    (site / "evil.pth").write_text(f"import os; open({str(marker)!r}, 'w').write('x')\n")
    emulator._INTACT.clear()
    import subprocess as sp
    sp.run([*env.argv, "-c", "pass"], env=env.env, check=True)
    assert marker.exists(), "control: the .pth runs in every later use of the environment"
    marker.unlink()
    emulator._INTACT.clear()
    again = emulator.host_env(rt)
    assert "evil.pth added" in again.note and "rebuilt" in again.note
    assert not (site / "evil.pth").exists()
    sp.run([*again.argv, "-c", "pass"], env=again.env, check=True)
    assert not marker.exists()


def test_unconfined_loading_is_said_and_trust_needs_an_explicit_opt_out(tmp_path, monkeypatch, zoo):
    """Issue 21 part 3: a model loaded without the sandbox is said in one line (and in --json); --trust-model
    where the kernel has no sandbox needs EDGEPACK_SANDBOX=0."""
    from packager.errors import UsageError
    monkeypatch.delenv("EDGEPACK_IN_PROCESS", raising=False)
    monkeypatch.setenv("EDGEPACK_SANDBOX", "0")
    res = api.build(zoo["keras3_h5"], target="rpi", recipe="float32", runtimes=LITERT, output=tmp_path / "a")
    assert any("without the sandbox (EDGEPACK_SANDBOX=0)" in w for w in res.warnings)
    assert any("without the sandbox" in w for w in res.to_json()["warnings"])
    monkeypatch.delenv("EDGEPACK_SANDBOX")
    if sandbox.abi_version():
        res = api.build(zoo["keras3_h5"], target="rpi", recipe="float32", runtimes=LITERT, output=tmp_path / "b")
        assert not any("without the sandbox" in w for w in res.warnings)
    monkeypatch.setattr(sandbox, "abi_version", lambda: 0)   # a kernel without Landlock
    with pytest.raises(UsageError) as exc:
        api.build(zoo["keras3_h5"], target="rpi", recipe="float32", runtimes=LITERT, output=tmp_path / "c",
                  trust_model=True)
    assert "EDGEPACK_SANDBOX=0" in exc.value.hint and not (tmp_path / "c").exists()
    res = api.build(zoo["keras3_h5"], target="rpi", recipe="float32", runtimes=LITERT, output=tmp_path / "d")
    assert any("no Landlock" in w for w in res.warnings)      # untrusted models still load, with the warning
