"""Dump every intermediate tensor of a .tflite run; executed with a runtime environment's own Python
(only numpy and ai-edge-litert or tflite-runtime there, never TensorFlow, nothing from packager).

    python tensors_helper.py MODEL IN.npz OUT.npz [--runtime ai_edge_litert|tflite_runtime] [--outputs-only]

IN.npz: inputs keyed by the model's input tensor names (real values; quantized inputs are quantized
here as q = round(x / scale) + zero_point). OUT.npz: one array per op output ``t<index>`` (raw
values, all samples stacked on axis 0) and ``__meta__``: a JSON document with the op list (index,
type, inputs, outputs), tensor details (name, dtype, shape, scale, zero point) and the runtime's
name and version. Ops run without default delegates, so intermediates are real values.
"""
import json
import sys

import numpy as np

MEMORY_BUDGET = 256 << 20     # bytes of kept tensors per run; fewer samples are used beyond it


def _runtime(name):
    """The runtime's interpreter module (``<name>.interpreter``, as every runtime of
    packager/runtimes.toml has it) and the runtime's version."""
    import importlib
    mod = importlib.import_module(name + ".interpreter")
    return mod, getattr(importlib.import_module(name), "__version__", "unknown")


def _quantize(x, d):
    scale, zero = d["quantization"]
    if d["dtype"] in (np.float32, np.float16, np.float64) or not scale:
        return x.astype(d["dtype"])
    if np.issubdtype(x.dtype, np.integer) and x.dtype == d["dtype"]:
        x = x.astype(np.float64)
    info = np.iinfo(d["dtype"])
    return np.clip(np.round(x / scale) + zero, info.min, info.max).astype(d["dtype"])


def main(argv):
    """``MODEL IN.npz OUT.npz [--runtime NAME] [--outputs-only]``: write OUT.npz (kept tensors plus ``__meta__``, the
    JSON as uint8 bytes) and return exit status 0; errors propagate to ``__main__`` (one line on stderr, exit 5)."""
    model_path, in_path, out_path = argv[:3]
    runtime = argv[argv.index("--runtime") + 1] if "--runtime" in argv else "ai_edge_litert"
    with np.load(in_path, allow_pickle=False) as npz:
        inputs = {k: npz[k] for k in npz.files}
    with open(model_path, "rb") as f:
        meta, arrays = collect(f.read(), inputs, runtime, outputs_only="--outputs-only" in argv)
    arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(out_path, **arrays)
    return 0


def collect(model, inputs, runtime="ai_edge_litert", outputs_only=False):
    """Run ``model`` (bytes) on ``inputs`` ({name: array}) with every tensor kept and no default
    delegates; returns (meta, {"t<index>": array}) as described in the module docstring.
    ``outputs_only``: the model's outputs only, run as the device runs it (default delegates)."""
    mod, version = _runtime(runtime)
    if outputs_only:
        interp = mod.Interpreter(model_content=model)
    else:
        interp = mod.Interpreter(model_content=model, experimental_preserve_all_tensors=True,
                                 experimental_op_resolver_type=mod.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    details = interp.get_input_details()
    by_index = {}
    try:   # inputs keyed by signature name (as in a bundle) or by raw tensor name
        sigs = interp.get_signature_list()
        if sigs:
            sig = "serving_default" if "serving_default" in sigs else sorted(sigs)[0]
            for n, d in interp.get_signature_runner(sig).get_input_details().items():
                if n in inputs:
                    by_index[d["index"]] = inputs[n]
    except Exception:  # noqa: BLE001,S110 - raw names are the fallback
        pass
    for d in details:
        if d["name"] in inputs:
            by_index[d["index"]] = inputs[d["name"]]
    if len(details) == 1 and not by_index and len(inputs) == 1:
        by_index[details[0]["index"]] = next(iter(inputs.values()))
    missing = [d["name"] for d in details if d["index"] not in by_index]
    if missing:
        raise ValueError("no input array for " + ", ".join(missing))
    inputs = {d["name"]: by_index[d["index"]] for d in details}
    count = len(next(iter(inputs.values())))
    fixed = any(int(d["shape_signature"][0]) > 0 if len(d["shape_signature"]) else True for d in details)
    if not outputs_only and count > 1:
        # Every tensor of every sample is kept: cap the samples at about MEMORY_BUDGET bytes.
        interp.allocate_tensors()
        per_call = sum(int(np.prod(d["shape"])) * np.dtype(d["dtype"]).itemsize for d in interp.get_tensor_details())
        per_sample = per_call / max(1, int(details[0]["shape"][0]) if len(details[0]["shape"]) else 1)
        cap = max(1, int(MEMORY_BUDGET // max(per_sample, 1)))
        if cap < count:
            inputs = {k: v[:cap] for k, v in inputs.items()}
            count = cap
    batch = int(details[0]["shape"][0]) if fixed and len(details[0]["shape"]) else count
    if not fixed:
        for d in details:
            interp.resize_tensor_input(d["index"], [count] + list(inputs[d["name"]].shape[1:]))
    interp.allocate_tensors()
    ops = interp._get_ops_details()
    wanted = sorted({t for op in ops for t in op["outputs"] if t >= 0} | {d["index"] for d in details})
    if outputs_only:
        wanted = sorted(int(d["index"]) for d in interp.get_output_details())
    chunks = {t: [] for t in wanted}
    for start in range(0, count, batch):
        for d in interp.get_input_details():
            x = inputs[d["name"]][start:start + batch]
            if len(x) < batch:           # pad the last chunk of a fixed-batch model
                x = np.concatenate([x, np.repeat(x[-1:], batch - len(x), axis=0)])
            interp.set_tensor(d["index"], _quantize(x, d))
        interp.invoke()
        for t in wanted:
            try:
                chunks[t].append(np.array(interp.get_tensor(t)))
            except ValueError:
                pass
    arrays = {}
    for t, parts in chunks.items():
        if parts:
            a = np.concatenate(parts) if parts[0].ndim and len(parts) > 1 else parts[0]
            arrays[f"t{t}"] = a[:count] if fixed and a.ndim else a
    tensors = {}
    for d in interp.get_tensor_details():
        if d["index"] in chunks or any(d["index"] in op["inputs"] for op in ops):
            scale, zero = d.get("quantization", (0.0, 0))
            tensors[str(d["index"])] = {"name": d["name"], "dtype": np.dtype(d["dtype"]).name,
                                        "shape": [int(v) for v in d["shape"]], "scale": float(scale),
                                        "zero_point": int(zero)}
    named = {}
    try:
        sigs = interp.get_signature_list()
        if sigs:
            sig = "serving_default" if "serving_default" in sigs else sorted(sigs)[0]
            named = {str(d["index"]): n for n, d in interp.get_signature_runner(sig).get_output_details().items()}
    except Exception:  # noqa: BLE001,S110 - raw names only
        pass
    meta = {"runtime": runtime, "output_names": named, "samples": count, "version": version, "batch": batch,
            "ops": [{"index": int(op["index"]), "op": op["op_name"], "inputs": [int(i) for i in op["inputs"]],
                     "outputs": [int(i) for i in op["outputs"]]} for op in ops],
            "tensors": tensors,
            "inputs": [{"name": d["name"], "index": int(d["index"])} for d in interp.get_input_details()],
            "outputs": [{"name": d["name"], "index": int(d["index"])} for d in interp.get_output_details()]}
    return meta, arrays


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except Exception as exc:  # noqa: BLE001 - one line for the caller, never a traceback
        sys.stderr.write(f"tensors_helper: error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}\n")
        sys.exit(5)
