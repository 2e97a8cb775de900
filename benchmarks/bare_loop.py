"""Yardstick for the device script: the bare interpreter loop a user would write by hand.

    python bare_loop.py RUNTIME_MODULE MODEL.tflite IN.npz OUT.npz OUTPUT_NAME BATCH [THREADS]

Same work as ``edgepack_run.py --input IN.npz --output OUT.npz``: load the model, quantize the float
input, run every sample (BATCH per invoke, last chunk padded), dequantize, write an .npz. No
manifest, no checksum, no argument parsing, no input validation. Needs only numpy and the runtime.
"""
import sys

import numpy as np

runtime, model, src, dst, out_name, batch = sys.argv[1:7]
threads = int(sys.argv[7]) if len(sys.argv) > 7 else None   # like edgepack_run.py --threads
batch = int(batch)
if runtime == "ai_edge_litert":
    from ai_edge_litert.interpreter import Interpreter
else:
    from tflite_runtime.interpreter import Interpreter

with np.load(src) as npz:
    x = npz[npz.files[0]]
interp = Interpreter(model_path=model, **({"num_threads": threads} if threads else {}))
inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
interp.resize_tensor_input(inp["index"], [batch] + list(x.shape[1:]))
interp.allocate_tensors()
scale, zero = inp["quantization"]
if scale:
    info = np.iinfo(inp["dtype"])
    x = np.clip(np.round(x / scale) + zero, info.min, info.max).astype(inp["dtype"])
else:
    x = x.astype(inp["dtype"])
n = x.shape[0]
y = None
for start in range(0, n, batch):
    part = x[start:start + batch]
    if part.shape[0] < batch:
        part = np.concatenate([part, np.zeros((batch - part.shape[0],) + part.shape[1:], part.dtype)])
    interp.set_tensor(inp["index"], part)
    interp.invoke()
    got = interp.get_tensor(out["index"])
    if y is None:
        y = np.empty((n,) + got.shape[1:], got.dtype)
    y[start:start + batch] = got[:min(batch, n - start)]
oscale, ozero = out["quantization"]
if oscale:
    y = (y.astype(np.float32) - ozero) * np.float32(oscale)
np.savez(dst, **{out_name: y})
