"""Yardstick for cold start: one sample through full TensorFlow's tf.lite.Interpreter (main .venv).

    python tf_first_output.py MODEL.tflite IN.npz OUT.npz OUTPUT_NAME

Prints the wall-clock time (time.time()) at which the first output exists, so the caller can
measure spawn -> first output without TensorFlow's interpreter teardown.
"""
import sys
import time

import numpy as np
import tensorflow as tf

model, src, dst, out_name = sys.argv[1:5]
with np.load(src) as npz:
    x = npz[npz.files[0]][:1]
interp = tf.lite.Interpreter(model_path=model)
interp.allocate_tensors()
inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
scale, zero = inp["quantization"]
if scale:
    info = np.iinfo(inp["dtype"])
    x = np.clip(np.round(x / scale) + zero, info.min, info.max).astype(inp["dtype"])
interp.set_tensor(inp["index"], x.astype(inp["dtype"]))
interp.invoke()
y = interp.get_tensor(out["index"])
oscale, ozero = out["quantization"]
if oscale:
    y = (y.astype(np.float32) - ozero) * np.float32(oscale)
np.savez(dst, **{out_name: y})
print("FIRST_OUTPUT %.6f" % time.time(), flush=True)
