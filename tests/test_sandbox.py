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
    import keras
    target = tmp_path / "lambda-wrote.txt"
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.1)
    port = server.getsockname()[1]

    payload = (f"try:\n    open({str(target)!r}, 'w').write('x')\nexcept OSError:\n    pass\n"
               "import socket\n"
               f"try:\n    socket.create_connection(('127.0.0.1', {port}), timeout=1)\nexcept OSError:\n    pass\n")
    inp = keras.Input((4,), name="x")
    harmless = tmp_path / "harmless.keras"
    layer = keras.layers.Lambda(lambda t, code: (exec(code), t * 2.0)[1], name="hostile", arguments={"code": "pass"})
    keras.Model(inp, layer(inp)).save(harmless)
    path = tmp_path / "hostile.keras"   # the same model, its Lambda's argument swapped for the payload
    with zipfile.ZipFile(harmless) as src, zipfile.ZipFile(path, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "config.json":
                data = data.replace(b'"code": "pass"', json.dumps({"code": payload})[1:-1].encode())
                assert payload.encode()[:10] in data or b"try:" in data
            dst.writestr(info, data)
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
