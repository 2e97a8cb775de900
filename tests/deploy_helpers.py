"""Bundles for the deploy tests, built by the real ``packager.api.build``.

Two tiny Keras models (Dense 4->3 softmax, different seeds) are built for the rpi and android
targets (recipe float32, no emulator verification) in a subprocess, once; the bundles are cached in
pytest's cache dir under a key that hashes the packager sources, the device script and the target
profiles, so later runs import no TensorFlow unless the build code changed. Tests work on copies.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
CACHE_NAME = "edgepack-deploy-test-bundles"

_BUILD = r"""
import os, sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
import keras
from packager import api
out = Path(sys.argv[1])
for tag, seed in (("a", 1), ("b", 2)):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((4,), name="x"), keras.layers.Dense(3, activation="softmax", name="probs")])
    path = out / f"tiny-{tag}.keras"
    model.save(path)
    for target in ("rpi", "android"):
        api.build(path, target=target, recipe="float32", verify=False, output=out / tag / f"tiny-{target}",
                  name=f"tiny-{target}")
"""


def _source_key() -> str:
    h = hashlib.sha256()
    files = sorted(p for p in (ROOT / "packager").glob("*.py") if not p.name.startswith("cli"))
    files += [ROOT / "packager" / "recipes.toml", ROOT / "device_runtime" / "edgepack_run.py",
              ROOT / "packager" / "runtimes.toml", ROOT / "packager" / "runtimes.lock.json"]
    files += sorted((ROOT / "packager" / "bundle").glob("*.py"))
    files += sorted((ROOT / "targets").glob("*.toml"))
    for p in files:
        if p.is_file():
            h.update(p.name.encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:16]


def build_bundles(cache: Path) -> dict[tuple[str, str], Path]:
    """{(target, "a"|"b"): bundle dir}, built with packager.api.build (cached by source hash)."""
    where = cache / _source_key()
    result = {(t, tag): where / tag / f"tiny-{t}" for t in ("rpi", "android") for tag in ("a", "b")}
    if not all((p / "manifest.json").is_file() for p in result.values()):
        if where.exists():
            shutil.rmtree(where)
        where.mkdir(parents=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
        env.update(TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
        proc = subprocess.run([sys.executable, "-c", _BUILD, str(where), str(ROOT)], capture_output=True, text=True,
                              timeout=600, stdin=subprocess.DEVNULL, env=env, cwd=str(where))
        if proc.returncode != 0:
            shutil.rmtree(where, ignore_errors=True)
            # The deploy tests test deploying, not building: while the build code is broken (say,
            # mid-edit), fall back to the last bundles it did build, if any, and say so.
            previous = [d for d in cache.iterdir() if d.is_dir() and (d / "a" / "tiny-rpi" / "manifest.json").is_file()]
            if previous:
                last = max(previous, key=lambda d: d.stat().st_mtime)
                warnings.warn(f"packager.api.build failed; using the bundles it built before ({last.name}): "
                              + proc.stderr.strip().splitlines()[-1][:300])
                return {(t, tag): last / tag / f"tiny-{t}" for t in ("rpi", "android") for tag in ("a", "b")}
            raise RuntimeError("building the test bundles failed:\n" + proc.stderr[-3000:])
        for old in cache.iterdir():
            if old != where and old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
    return result


def session_bundles(request, tmp_path_factory) -> dict[tuple[str, str], Path]:
    """For a session fixture: the built bundles, from pytest's cache dir when there is one."""
    cache = getattr(request.config, "cache", None)     # absent with -p no:cacheprovider
    where = Path(cache.mkdir(CACHE_NAME)) if cache is not None else tmp_path_factory.mktemp("bundles")
    return build_bundles(where)


def copy_bundle(src: Path, dest: Path, script_suffix: str = "") -> Path:
    """A private copy of a built bundle (optionally with the device script changed, checksums updated)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(src, dest, symlinks=True)
    if script_suffix:
        with open(dest / "edgepack_run.py", "a", encoding="utf-8") as fh:
            fh.write(script_suffix)
        refresh_manifest(dest)
    return dest


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def differing_files(a: Path, b: Path) -> set[str]:
    """Files of bundle b whose content differs from a's (plus manifest.json): what a deploy of b over a sends."""
    fa = json.loads((a / "manifest.json").read_text())["files"]
    fb = json.loads((b / "manifest.json").read_text())["files"]
    return {rel for rel, digest in fb.items() if fa.get(rel) != digest} | {"manifest.json"}


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
