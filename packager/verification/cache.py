"""Content-addressed cache of conversions and verification runs.

A rebuild of an unchanged model with unchanged settings skips TensorFlow entirely: the key is the
sha256 of the model (file or SavedModel tree), calibration and verification data, the recipe,
I/O type and trust flag, and the edgepack and TensorFlow versions. A verification run is reused
when the model bytes, the device script, the inputs and the runtime environment are the same.
Entries are plain JSON + .npz (no pickles), written to a temp dir and renamed into place.
``--no-cache`` (or ``EDGEPACK_NO_CACHE=1``) bypasses it.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict
from importlib import metadata
from pathlib import Path

from ..lazynp import np

from ..version import __version__
from ..bundle.files import npz_bytes, sha256_file, sha256_tree  # noqa: F401 - sha256_tree: api.build hashes references with it
from ..bundle.manifest import Manifest
from ..load.calibration import Dataset
from ..compare import OutputMetrics
from ..convert.converter import Attempt, Conversion
from ..bundle.files import npz_stored
from ..paths import cache_dir
from ..convert.inspect import ModelSpec, OpInfo
from ..tensor import Tensor
from ..recipes import Tolerance

FORMAT = 3


def enabled() -> bool:
    """False when ``EDGEPACK_NO_CACHE`` is set."""
    return os.environ.get("EDGEPACK_NO_CACHE", "") in ("", "0")


def _tf_version() -> str:
    for dist in ("tensorflow-cpu", "tensorflow"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return "none"


def digest(*parts) -> str:
    """sha256 of the JSON form of ``parts``: a cache key."""
    h = hashlib.sha256()
    for part in parts:
        h.update(json.dumps(part, sort_keys=True, default=str).encode() + b"\0")
    return h.hexdigest()


def conversion_key(model: Path, recipe, io: str, calibration, data, trust: bool, extra=None) -> str:
    """Key of one conversion: model, data and calibration by content; ``recipe`` by its whole definition
    (a :class:`~packager.recipes.Recipe`, or a name such as ``auto``), so an edited recipes.toml entry
    never reuses a stale result; ``extra``: any further settings that change the result (overrides)."""
    engine = None
    if hasattr(recipe, "to_json"):
        engine = _engine_version(recipe)
        recipe = recipe.to_json(io)
    from .. import statcache        # unchanged files are not read again (stat -> sha256, as git's index)

    def content(p):
        return None if p is None else statcache.sha256_tree(Path(p))
    key = digest("conversion", FORMAT, __version__, _tf_version(), statcache.sha256_tree(model), recipe, io,
                 content(calibration), content(data), trust, extra, engine)
    statcache.save()
    return key


def _engine_version(recipe) -> str | None:
    """The converting tool's version for a recipe's engine other than TensorFlow's converter (whose version is in
    every key already): an upgraded ai-edge-quantizer never reuses an int4 model made by the old one."""
    from ..convert.engines import get_engine
    from ..errors import EdgepackError
    if recipe.engine == "tflite-converter":
        return None
    try:
        return get_engine(recipe).version()
    except EdgepackError as exc:        # not installed: the conversion itself will say so
        return f"unavailable: {exc.message}"


def _dir(kind: str, key: str) -> Path:
    return cache_dir() / kind / key[:2] / key


def _store(kind: str, key: str, files: dict[str, bytes]) -> None:
    final = _dir(kind, key)
    if final.exists():
        return
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{key[:12]}-"))
    try:
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        os.replace(tmp, final)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)


def _split(arrays: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}


# --------------------------------------------------------------------------- conversions
def save_prepared(key: str, prepared) -> None:
    """Store a conversion (model bytes, check data, reference outputs, metadata) under ``key``."""
    conv = prepared.conversion
    meta = {
        "format": prepared.format, "inputs": [s.to_json() for s in prepared.inputs],
        "outputs": [s.to_json() for s in prepared.outputs], "warnings": prepared.warnings,
        "versions": prepared.versions, "check_source": prepared.check.source,
        "check_warnings": prepared.check.warnings, "has_labels": prepared.check.labels is not None,
        "check_evidence": prepared.check.evidence, "check_notes": prepared.check.notes,
        "variants": len(prepared.check.variants), "fixed": prepared.fixed,
        "tolerance": {n: asdict(t) for n, t in prepared.tolerance.items()},
        "conversion": {"path": conv.path, "spec": conv.spec.to_json(), "spec_notes": conv.spec.notes,
                       "attempts": [a.to_json() for a in conv.attempts],
                       "metrics": [m.to_json() for m in conv.metrics]},
    }
    arrays = {f"check/{k}": v for k, v in prepared.check.inputs.items()}
    arrays.update({f"reference/{k}": v for k, v in prepared.reference.items()})
    for i, (group, ref) in enumerate(zip(prepared.check.variants, prepared.variant_references)):
        arrays.update({f"v{i}/check/{k}": v for k, v in group.items()})
        arrays.update({f"v{i}/reference/{k}": v for k, v in ref.items()})
    for k, y in (prepared.check.labels or {}).items():
        arrays["labels" if k is None else f"labels/{k}"] = y
    arrays.update({f"noise/{k}": v for k, v in prepared.noise.items()})
    arrays.update({f"head/{k}": v for k, v in (getattr(conv, "check_head", None) or {}).items()})
    _store("conversions", key, {"meta.json": json.dumps(meta).encode(), "model.tflite": conv.tflite,
                                "arrays.npz": npz_stored(arrays)})


def load_prepared(key: str, model: Path):
    """The conversion stored under ``key``, or None (missing, unreadable or tampered model bytes)."""
    from ..convert.jobs import Prepared
    root = _dir("conversions", key)
    try:
        meta = json.loads((root / "meta.json").read_text())
        tflite = (root / "model.tflite").read_bytes()
        with np.load(root / "arrays.npz", allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, KeyError):
        return None
    c = meta["conversion"]
    s = c["spec"]
    spec = ModelSpec(s["size"], s["sha256"], [Tensor.from_json(t) for t in s["inputs"]],
                     [Tensor.from_json(t) for t in s["outputs"]], [OpInfo(**o) for o in s["ops"]], s["signature"],
                     c.get("spec_notes", []))
    if hashlib.sha256(tflite).hexdigest() != spec.sha256:
        return None
    attempts = [Attempt(a["path"], a["ok"], a["error"], [OutputMetrics(**m) for m in a["metrics"]])
                for a in c["attempts"]]
    tolerance = {n: Tolerance(**t) for n, t in meta["tolerance"].items()}
    conversion = Conversion(tflite, spec, c["path"], attempts, [OutputMetrics(**m) for m in c["metrics"]], tolerance,
                            _split(arrays, "head/"))
    variants = range(meta["variants"])
    labels = {None if k == "labels" else k[len("labels/"):]: v for k, v in arrays.items()
              if k == "labels" or k.startswith("labels/")}
    check = Dataset(_split(arrays, "check/"), labels or None if meta["has_labels"] else None,
                    meta["check_source"], meta["check_warnings"], meta["check_evidence"],
                    [_split(arrays, f"v{i}/check/") for i in variants], meta["check_notes"])

    return Prepared(str(model), meta["format"], [Tensor.from_json(t) for t in meta["inputs"]],
                    [Tensor.from_json(t) for t in meta["outputs"]],
                    conversion, check, _split(arrays, "reference/"), meta["warnings"], meta["versions"],
                    [_split(arrays, f"v{i}/reference/") for i in variants], meta["fixed"],
                    tolerance, _split(arrays, "noise/"))


# --------------------------------------------------------------------------- verification runs
def verification_key(env, bundle: Path, manifest: Manifest, inputs: dict) -> str:
    """Key of one device run: runtime environment, model bytes, device script, tensors and inputs."""
    return digest("verification", FORMAT, env.runtime, env.version, env.arch, list(env.argv),
                  manifest.model_sha256, sha256_file(bundle / manifest.entrypoint),
                  [(t.name, t.index, t.scale, t.zero_point) for t in manifest.inputs + manifest.outputs],
                  arrays_digest(inputs))


def arrays_digest(arrays: dict) -> str:
    """sha256 over each array's name, dtype, shape and raw bytes. (It hashed the deflated .npz
    before: compressing 64 MobileNetV2 inputs, 38 MB of floats, took ~2.4 s per runtime and was
    two thirds of a rebuild; issue 15.)"""
    h = hashlib.sha256()
    for key in sorted(arrays):
        a = np.ascontiguousarray(arrays[key])
        h.update(json.dumps([key, a.dtype.str, list(a.shape)]).encode())
        h.update(a.reshape(-1).view(np.uint8) if a.size else b"")
    return h.hexdigest()


def save_outputs(key: str, outputs: dict, info: dict) -> None:
    """Store one device run's outputs and environment info under ``key``."""
    _store("runs", key, {"outputs.npz": npz_bytes(outputs), "info.json": json.dumps(info).encode()})


def load_outputs(key: str):
    """A stored device run's (outputs, info), or None."""
    root = _dir("runs", key)
    try:
        with np.load(root / "outputs.npz", allow_pickle=False) as npz:
            outputs = {k: npz[k] for k in npz.files}
        return outputs, json.loads((root / "info.json").read_text())
    except (OSError, ValueError):
        return None


__all__ = ["enabled", "conversion_key", "save_prepared", "load_prepared", "verification_key", "arrays_digest",
           "save_outputs", "load_outputs"]
