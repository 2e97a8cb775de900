"""Yardstick for `edgepack build`: the bare load-and-convert script from the TFLite tutorial.

    python bare_convert.py MODEL.h5 CALIBRATION.npz OUT.tflite
    python bare_convert.py MODEL.keras - OUT.tflite        # float32: no calibration, no optimizations
    python bare_convert.py MODEL.keras - OUT.tflite batch1 # recurrent: TFLite's documented batch-1 concrete function

Keras load, TFLiteConverter.from_keras_model, full-integer int8 with a representative dataset of
the calibration samples (float input/output, as `edgepack build -q int8` makes by default), write;
with ``-`` for the calibration, the plain float32 conversion (the yardstick of `-q float32`).
No checking, no bundle, no verification.
"""
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np
import tensorflow as tf
import keras

model_path, cal_path, out_path = sys.argv[1:4]
model = keras.models.load_model(model_path, compile=False)
cal = None
if cal_path != "-":
    with np.load(cal_path) as npz:
        cal = npz[npz.files[0]].astype(np.float32)


def representative():
    for i in range(cal.shape[0]):
        yield [cal[i:i + 1]]


if sys.argv[4:5] == ["batch1"]:
    # An LSTM with an open batch lowers to TensorList ops TFLite rejects; the TFLite guide's way out is a
    # concrete function at batch 1 (the converter then emits its builtin WHILE loop).
    fn = tf.function(lambda x: model(x), input_signature=[tf.TensorSpec([1] + list(model.inputs[0].shape[1:]),
                                                                         model.inputs[0].dtype)])
    converter = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()], model)
else:
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
if cal is not None:
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
with open(out_path, "wb") as fh:
    fh.write(converter.convert())
