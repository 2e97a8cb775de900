"""Conversion and quantization: try each candidate path, keep the first that computes what the
original model computes. A clean conversion proves nothing; only compared outputs do."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .compare import OutputMetrics, compare_all
from .errors import ConversionError
from .inspect import ModelSpec, inspect_bytes
from .loaders import LoadedModel, import_tf, native_quiet
from .recipes import Recipe

IO_DTYPES = {"float": None, "int8": "int8", "uint8": "uint8", "int16": "int16"}


@dataclass
class Attempt:
    path: str
    ok: bool
    error: str | None = None
    metrics: list[OutputMetrics] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"path": self.path, "ok": self.ok, "error": self.error,
                "metrics": [{k: v for k, v in m.to_json().items() if k != "histogram"} for m in self.metrics]}


@dataclass
class Conversion:
    tflite: bytes
    spec: ModelSpec
    path: str
    attempts: list[Attempt]
    metrics: list[OutputMetrics]


def manifest_tensors(spec: ModelSpec) -> tuple[list[dict], list[dict]]:
    return [t.to_json() for t in spec.inputs], [t.to_json() for t in spec.outputs]


def run_tflite(model: bytes, spec: ModelSpec, arrays: dict) -> dict:
    """Run a .tflite in-process through the device script's own Runner (ai-edge-litert)."""
    from device_runtime.edgepack_run import Failure, Runner
    inputs, outputs = manifest_tensors(spec)
    try:
        with native_quiet():
            runner = Runner(model, {"inputs": inputs, "outputs": outputs}, runtime="ai_edge_litert")
            return runner.run(arrays)
    except Failure as exc:
        raise ConversionError(exc.message) from None


def _configure(tf, converter, recipe: Recipe, io: str, calibration: dict | None, loaded: LoadedModel):
    converter.optimizations = [getattr(tf.lite.Optimize, o) for o in recipe.optimizations]
    types = {"float16": tf.float16, "int8": tf.int8}
    if recipe.supported_types:
        converter.target_spec.supported_types = [types[t] for t in recipe.supported_types]
    converter.target_spec.supported_ops = [getattr(tf.lite.OpsSet, o) for o in recipe.supported_ops]
    if recipe.needs_calibration:
        names = [s.name for s in loaded.inputs]
        arrays = [calibration[n] for n in names]
        count = arrays[0].shape[0]
        # A model traced at a fixed batch size (e.g. a subclassed call) is calibrated at that size.
        batch = loaded.inputs[0].shape[0] if loaded.inputs[0].shape and loaded.inputs[0].shape[0] > 0 else 1
        if count < batch:
            arrays = [np.concatenate([a] * (batch // count + 1))[:batch] for a in arrays]
            count = batch

        def representative():
            for i in range(0, count - batch + 1, batch):
                yield [a[i:i + batch].astype(np.float32) if a.dtype.kind == "f" else a[i:i + batch] for a in arrays]

        converter.representative_dataset = representative
    if io != "float":
        dtype = getattr(tf, IO_DTYPES[io])
        converter.inference_input_type = dtype
        converter.inference_output_type = dtype
    return converter


def convert(loaded: LoadedModel, recipe: Recipe, io: str, calibration: dict | None,
            check_inputs: dict, progress=None) -> Conversion:
    """Convert with the first candidate path whose outputs match the original model's."""
    recipe.check_request(io, calibration is not None)
    tf = import_tf()
    reference = loaded.reference(check_inputs)
    attempts: list[Attempt] = []
    order = {"inputs": [s.name for s in loaded.inputs], "outputs": [s.name for s in loaded.outputs]}
    for cand in loaded.candidates:
        if progress:
            progress(f"converting ({cand.name}, {recipe.name})")
        try:
            with native_quiet():
                converter = _configure(tf, cand.make(), recipe, io, calibration, loaded)
                model = bytes(converter.convert())
            spec = inspect_bytes(model, cand.tensor_names, order)
        except Exception as exc:  # noqa: BLE001 - each path's failure is recorded and the next tried
            attempts.append(Attempt(cand.name, False, _one_line(exc)))
            continue
        missing = [n for n in order["outputs"] if n not in {t.name for t in spec.outputs}]
        if missing:
            attempts.append(Attempt(cand.name, False, "converted model lost output names: " + ", ".join(missing)))
            continue
        try:
            got = run_tflite(model, spec, check_inputs)
        except ConversionError as exc:
            attempts.append(Attempt(cand.name, False, exc.message))
            continue
        scales = {t.name: t.quantization["scale"] for t in spec.outputs if t.quantization}
        metrics = compare_all(reference, got, recipe.tolerance, scales)
        ok = all(m.passed for m in metrics)
        attempts.append(Attempt(cand.name, ok, None if ok else "; ".join(r for m in metrics for r in m.reasons),
                                metrics))
        if ok:
            return Conversion(model, spec, cand.name, attempts, metrics)
    detail = " | ".join(f"{a.path}: {a.error}" for a in attempts)
    raise ConversionError(f"no conversion path produced a model matching the original ({detail})",
                          hint="try another --quantize recipe, or report the model to edgepack")


def _one_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    # TF converter errors put the useful part on the last "error:" line.
    for ln in lines:
        if "error:" in ln.lower():
            return ln[:300]
    return (lines[0] if lines else type(exc).__name__)[:300]
