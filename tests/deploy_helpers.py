"""Small bundles for the deploy tests, assembled per docs/bundle-format.md.

Two tiny float Keras models (Dense 4->3 softmax with different weights) are converted once with
``tf.lite.TFLiteConverter.from_keras_model`` and cached in pytest's cache dir, so later runs do not
import TensorFlow at all. ``make_bundle`` lays out a real bundle (model, the real device script,
requirements, README, samples with expected outputs computed by ai-edge-litert) and its manifest.
"""
from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
DEVICE_SCRIPT = ROOT / "device_runtime" / "edgepack_run.py"
CACHE_KEY = "edgepack-deploy-tests/tiny-models-v1"

_CONVERT = r"""
import sys, numpy as np, tensorflow as tf
for seed, out in zip((1, 2), sys.argv[1:3]):
    rng = np.random.default_rng(seed)
    model = tf.keras.Sequential([tf.keras.Input((4,), name="x"), tf.keras.layers.Dense(3, activation="softmax")])
    model.layers[-1].set_weights([rng.normal(size=(4, 3)).astype("float32"), rng.normal(size=3).astype("float32")])
    open(out, "wb").write(tf.lite.TFLiteConverter.from_keras_model(model).convert())
"""


def tiny_models(cache_dir: Path) -> tuple[bytes, bytes]:
    """Two different small .tflite models (converted in a subprocess once, then cached)."""
    a, b = cache_dir / "a.tflite", cache_dir / "b.tflite"
    if not (a.is_file() and b.is_file()):
        cache_dir.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-c", _CONVERT, str(a), str(b)], check=True, timeout=300,
                       stdin=subprocess.DEVNULL, capture_output=True,
                       env={"TF_CPP_MIN_LOG_LEVEL": "3", "PATH": "/usr/bin:/bin", "HOME": str(cache_dir)})
    return a.read_bytes(), b.read_bytes()


@pytest.fixture(scope="session")
def tflite_models(request) -> tuple[bytes, bytes]:
    return tiny_models(Path(request.config.cache.mkdir(CACHE_KEY.replace("/", "-"))))


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _npz(arrays: dict) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def make_bundle(dest: Path, model: bytes, *, name: str = "tiny-rpi", target: str = "rpi",
                script_suffix: str = "") -> Path:
    """Write a bundle directory at ``dest`` (replaced if present) and return it."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=model)
    interp.allocate_tensors()
    din, dout = interp.get_input_details()[0], interp.get_output_details()[0]
    x = np.random.default_rng(0).random((3, 4), dtype=np.float32)
    expected = []
    for row in x:
        interp.set_tensor(din["index"], row[None, :])
        interp.invoke()
        expected.append(interp.get_tensor(dout["index"])[0])
    files = {
        "model.tflite": model,
        "edgepack_run.py": DEVICE_SCRIPT.read_bytes() + script_suffix.encode(),
        "requirements.txt": b"ai-edge-litert==2.3.*\nnumpy>=1.23,<3\n",
        "README.md": f"# {name}\n\npython3 edgepack_run.py --self-test\n".encode(),
        "samples/inputs.npz": _npz({"x": x}),
        "samples/expected.npz": _npz({"probs": np.stack(expected)}),
    }
    if dest.exists():
        shutil.rmtree(dest)
    for rel, data in files.items():
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        (dest / rel).write_bytes(data)
    (dest / "edgepack_run.py").chmod(0o755)
    manifest = {
        "format": 1, "name": name, "model": "model.tflite", "entrypoint": "edgepack_run.py",
        "model_sha256": _sha(model), "model_size": len(model),
        "files": {rel: "sha256:" + _sha(data) for rel, data in files.items()},
        "inputs": [{"name": "x", "shape": [-1, 4], "dtype": "float32", "index": int(din["index"]), "quantization": None}],
        "outputs": [{"name": "probs", "shape": [-1, 3], "dtype": "float32", "index": int(dout["index"]),
                     "quantization": None}],
        "samples": {"inputs": "samples/inputs.npz", "expected": "samples/expected.npz", "atol": {"probs": 1e-5}},
        "recipe": {"name": "float"}, "target": {"name": target},
        "verification": {"status": "skipped"},
    }
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return dest


def refresh_manifest(bundle: Path) -> None:
    """Recompute every checksum in manifest.json (a bundle edited 'properly')."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    for rel in manifest["files"]:
        manifest["files"][rel] = "sha256:" + _sha((bundle / rel).read_bytes())
    manifest["model_sha256"] = manifest["files"][manifest["model"]].split(":", 1)[1]
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (symlinks as 'link:target'), for 'nothing changed' assertions."""
    out = {}
    if not root.exists():
        return out
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = b"link:" + str(p.readlink()).encode()
        elif p.is_file():
            out[rel] = p.read_bytes()
    return out
