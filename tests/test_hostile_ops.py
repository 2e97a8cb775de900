"""Models that name operations with side effects: refused before any framework code runs on them
(unless --trust-model), and nothing is written. The hostile files are generated here."""
from __future__ import annotations

import json
import re
import shutil
import zipfile
from pathlib import Path

import pytest

from packager import api
from packager.errors import UsageError
from packager.load.op_allowlist import COMPUTE_OPS, RESTORE_OPS, SAVE_OPS, TF_PURE_FUNCTIONS
from packager.load.formats import check_model

LITERT = ["ai-edge-litert"]


def refused(tmp_path, model, fragment):
    out = tmp_path / "out"
    with pytest.raises(UsageError) as exc:
        api.build(model, target="rpi", recipe="float32", runtimes=LITERT, output=out)
    assert "\n" not in exc.value.message
    assert fragment in exc.value.message, exc.value.message
    assert "--trust-model" in exc.value.hint
    assert not out.exists()
    return exc.value


# ---------------------------------------------------------------- legacy .h5 op layers
def _tf_keras_op_h5(path: Path) -> Path:
    """A tf_keras functional model with op layers (TFOpLambda, SlicingOpLambda), saved as .h5."""
    import tensorflow as tf
    import tf_keras as k2
    inp = k2.Input((4,), name="x")
    y = tf.math.abs(inp)
    y = tf.concat([y[:, :2], y[:, 2:]], axis=-1)
    k2.Model(inp, y).save(path, save_format="h5")
    return path


def _edit_h5_config(path: Path, edit) -> None:
    import h5py
    with h5py.File(path, "r+") as h5:
        cfg = json.loads(h5.attrs["model_config"])
        edit(cfg)
        h5.attrs["model_config"] = json.dumps(cfg)


@pytest.fixture(scope="module")
def op_h5(tmp_path_factory):
    return _tf_keras_op_h5(tmp_path_factory.mktemp("oph5") / "ops.h5")


def test_pure_op_layers_are_accepted(op_h5, tmp_path):
    check_model(op_h5, "keras-h5", trust=False)
    res = api.build(op_h5, target="rpi", recipe="float32", runtimes=LITERT, output=tmp_path / "b")
    assert res.verification.passed


@pytest.mark.parametrize("function,kwargs", [
    ("io.write_file", {"contents": "import os; os.system('id')"}),
    ("print", {"output_stream": "file://{target}"}),
    ("py_function", {}),
    ("numpy_function", {}),
    ("io.gfile.rmtree", {}),
    ("math.abs\n", {}),
])
def test_h5_op_layer_with_side_effects_refused(function, kwargs, op_h5, tmp_path):
    path = tmp_path / "evil.h5"
    shutil.copy(op_h5, path)
    target = tmp_path / "pwned.pth"

    def edit(cfg):
        layer = next(ly for ly in cfg["config"]["layers"] if ly["class_name"] == "TFOpLambda")
        layer["config"]["function"] = function
        layer["inbound_nodes"][0][3] = {k: v.format(target=target) for k, v in kwargs.items()}
    _edit_h5_config(path, edit)
    refused(tmp_path, path, "not a pure math op")
    assert not target.exists()


@pytest.mark.parametrize("cls,config", [
    ("SlicingOpLambda", {"function": "io.write_file"}),
    ("ClassMethod", {"cls_symbol": "io.gfile", "method_name": "remove"}),
    ("InstanceMethod", {"attr_name": "numpy"}),
    ("InstanceProperty", {"attr_name": "__class__"}),
])
def test_h5_other_op_layers_refused(cls, config, op_h5, tmp_path):
    path = tmp_path / "evil.h5"
    shutil.copy(op_h5, path)

    def edit(cfg):
        layer = next(ly for ly in cfg["config"]["layers"] if ly["class_name"] == "SlicingOpLambda")
        layer["class_name"] = cls
        layer["config"] = {"name": "evil", **config}
    _edit_h5_config(path, edit)
    with pytest.raises(UsageError) as exc:
        check_model(path, "keras-h5", trust=False)
    assert "not a pure math op" in exc.value.message and "evil" in exc.value.message
    check_model(path, "keras-h5", trust=True)  # the user may opt in


def test_keras3_operation_outside_math_refused(tmp_path):
    import keras
    inp = keras.Input((4,), name="x")
    model = keras.Model(inp, keras.ops.concatenate([keras.ops.abs(inp), keras.ops.cast(inp, "float32")], axis=-1))
    good = tmp_path / "ops.keras"
    model.save(good)
    check_model(good, "keras-v3", trust=False)
    bad = tmp_path / "evil.keras"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bad, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "config.json":
                cfg = json.loads(data)
                op = next(ly for ly in cfg["config"]["layers"] if ly["class_name"] == "Absolute")
                op["module"], op["class_name"], op["registered_name"] = "keras.src.ops.core", "WhileLoop", "WhileLoop"
                data = json.dumps(cfg).encode()
            dst.writestr(info, data)
    refused(tmp_path, bad, "'WhileLoop'")


def test_allowlisted_tf_functions_are_pure_names():
    for name in TF_PURE_FUNCTIONS:
        assert re.fullmatch(r"[A-Za-z0-9_.]+", name), name
        assert not re.search(r"\bio\b|file|print|py_func|numpy_function|save|load|summary|debug", name), name


# ---------------------------------------------------------------- SavedModel ops
def _saved_model(tmp_path, name, body, pbtxt=False) -> Path:
    import tensorflow as tf

    class M(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def serve(self, x):
            return {"y": body(tf, x)}

    m = M()
    path = tmp_path / name
    tf.saved_model.save(m, str(path), signatures={"serving_default": m.serve})
    if pbtxt:
        from google.protobuf import text_format
        from tensorflow.core.protobuf import saved_model_pb2
        proto = saved_model_pb2.SavedModel()
        proto.ParseFromString((path / "saved_model.pb").read_bytes())
        (path / "saved_model.pbtxt").write_text(text_format.MessageToString(proto))
        (path / "saved_model.pb").unlink()
    return path


def _print_to(target):
    def body(tf, x):
        with tf.control_dependencies([tf.print("pwned", output_stream=f"file://{target}")]):
            return x + 1.0
    return body


def _save_v2(target):
    def body(tf, x):
        op = tf.raw_ops.SaveV2(prefix=str(target), tensor_names=["x"], shape_and_slices=[""], tensors=[x])
        with tf.control_dependencies([op]):
            return x * 2.0
    return body


def _tfrecord(target):
    def body(tf, x):
        ds = tf.data.Dataset.from_tensors(tf.strings.as_string(tf.reduce_sum(x)))
        op = tf.raw_ops.DatasetToTFRecord(input_dataset=tf.data.experimental.to_variant(ds), filename=str(target),
                                          compression_type="")
        with tf.control_dependencies([op]):
            return x - 1.0
    return body


def _write_nested(target):
    def body(tf, x):
        @tf.function
        def inner(v):
            tf.io.write_file(str(target), tf.strings.as_string(tf.reduce_sum(v)))
            return v * 3.0
        return inner(x)
    return body


@pytest.mark.parametrize("kind,fragment", [
    ("print", "PrintV2"), ("savev2", "SaveV2"), ("tfrecord", "DatasetToTFRecord"), ("nested", "WriteFile"),
    ("print-pbtxt", "PrintV2"), ("savev2-pbtxt", "SaveV2"),
])
def test_savedmodel_writing_files_refused(kind, fragment, tmp_path):
    target = tmp_path / "written.txt"
    maker = {"print": _print_to, "savev2": _save_v2, "tfrecord": _tfrecord, "nested": _write_nested}[kind.split("-")[0]]
    path = _saved_model(tmp_path, kind, maker(target), pbtxt=kind.endswith("pbtxt"))
    assert not target.exists()
    refused(tmp_path, path, fragment)
    assert not target.exists() and not list(tmp_path.glob("written*"))


def test_savedmodel_pbtxt_of_a_plain_model_is_checked_and_accepted(tmp_path):
    path = _saved_model(tmp_path, "plain", lambda tf, x: tf.nn.relu(x) * 2.0, pbtxt=True)
    check_model(path, "saved-model", trust=False)
    (path / "saved_model.pbtxt").write_text("meta_graphs { graph_def { node { name: 'a' op: 'WriteFile' } } }")
    with pytest.raises(UsageError, match="WriteFile"):
        check_model(path, "saved-model", trust=False)
    (path / "saved_model.pbtxt").write_text("this is { not a proto")
    with pytest.raises(UsageError, match="corrupt"):
        check_model(path, "saved-model", trust=True)


IO_LIKE = re.compile(r"File|Write|Save|Restore|Print|PyFunc|Summary|Reader|Queue|Dataset|Iterator|Socket|Rpc|Recv"
                     r"|Send|Shell|Debug|TPU|Checkpoint|Record|Load|Dump|Profiler|Mlir|Collective|Nccl|Remote"
                     r"|Barrier|(?<!TensorList)Stack|Accumulator|Session|Tensor.*Array(?!.*List)|Audio|Image(?!Patches)|Decode(?!Base64)"
                     r"|Encode(?!Base64)")
# Allowlisted ops TensorFlow marks stateful, each reviewed: variables, lookup tables, random numbers,
# control flow and function calls (whose bodies are checked too), assertions.
STATEFUL_REVIEWED = {
    "Assert", "AssignAddVariableOp", "AssignSubVariableOp", "AssignVariableOp", "Case", "CheckNumerics",
    "DestroyResourceOp", "DisableCopyOnRead", "Empty", "HashTableV2", "If", "LookupTableExportV2",
    "LookupTableFindV2", "LookupTableImportV2", "LookupTableInsertV2", "LookupTableRemoveV2", "LookupTableSizeV2",
    "Multinomial", "MutableDenseHashTableV2", "MutableHashTableV2", "RandomStandardNormal", "RandomUniform",
    "RandomUniformInt", "ReadVariableOp", "ResourceGather", "ResourceGatherNd", "StatefulPartitionedCall",
    "TruncatedNormal", "VarHandleOp", "VarIsInitializedOp", "Variable", "VariableShape", "VariableV2", "While",
    "_Arg", "_DeviceArg", "_DeviceRetval", "_Retval",
    "TensorArrayV3", "TensorArrayReadV3", "TensorArrayWriteV3", "TensorArrayGatherV3", "TensorArrayScatterV3",
    "TensorArraySizeV3", "TensorArrayCloseV3", "TensorArrayConcatV3", "TensorArraySplitV3",
    # random generators: their state is an RNG counter in a resource variable of the model, nothing outside it
    "RngReadAndSkip", "RngSkip", "StatefulUniform", "StatefulUniformInt", "StatefulUniformFullInt",
    "StatefulStandardNormalV2", "StatefulTruncatedNormal", "RandomShuffle", "RandomGamma", "RandomPoissonV2"}
DECODERS_REVIEWED = {"AudioSpectrogram", "TensorArrayV3", "TensorArrayReadV3", "TensorArrayWriteV3",
                     "TensorArrayGatherV3", "TensorArrayScatterV3", "TensorArraySizeV3", "TensorArrayCloseV3",
                     "TensorArrayConcatV3", "TensorArraySplitV3",  # in-memory arrays (TF1 loops), not files
                     "DecodePng", "DecodeJpeg", "DecodeBmp", "DecodeGif", "DecodeImage", "DecodeRaw",
                     "DecodeCompressed", "EncodePng", "EncodeJpeg", "UnicodeDecode", "UnicodeEncode",
                     "ImageProjectiveTransformV2", "ImageProjectiveTransformV3"}   # tensor math on an image tensor


def test_allowlist_against_tensorflows_registered_ops():
    """Every allowlisted op exists; none looks like I/O; every stateful one was reviewed; and of
    TensorFlow's registered ops, every I/O-looking or stateful one outside the review is refused."""
    import tensorflow as tf  # noqa: F401 - registers the ops
    from tensorflow.python.framework import op_def_registry
    registered = {name for name in dir(tf.raw_ops) if not name.startswith("_")}
    assert len(registered) > 1000
    for op in COMPUTE_OPS | RESTORE_OPS | SAVE_OPS:
        assert op_def_registry.get(op) is not None, f"{op} is not a registered TensorFlow op"
    for op in COMPUTE_OPS:
        assert not IO_LIKE.search(op) or op in DECODERS_REVIEWED, f"{op} looks like I/O but is allowlisted"
        if op_def_registry.get(op).is_stateful:
            assert op in STATEFUL_REVIEWED, f"{op} is stateful and not reviewed"
    io_ops = {op for op in registered if IO_LIKE.search(op)}
    assert {"WriteFile", "PrintV2", "SaveV2", "DatasetToTFRecord", "PyFunc", "EagerPyFunc",
            "WriteSummary"} <= io_ops | {"PyFunc", "EagerPyFunc"}
    stateful = {op for op in registered if op_def_registry.get(op) and op_def_registry.get(op).is_stateful}
    leaked = (io_ops - DECODERS_REVIEWED) & COMPUTE_OPS | (stateful & COMPUTE_OPS) - STATEFUL_REVIEWED
    assert not leaked, sorted(leaked)


def test_h5_op_layer_with_a_misleading_module_still_refused(op_h5, tmp_path):
    """tf_keras's legacy loader ignores "module": naming Keras there must not exempt an op layer."""
    path = tmp_path / "evil.h5"
    shutil.copy(op_h5, path)

    def edit(cfg):
        layer = next(ly for ly in cfg["config"]["layers"] if ly["class_name"] == "TFOpLambda")
        layer["config"]["function"] = "io.write_file"
        layer["module"] = "keras.layers"
    _edit_h5_config(path, edit)
    with pytest.raises(UsageError, match="not a pure math op"):
        check_model(path, "keras-h5", trust=False)


def test_pure_image_and_seeded_random_ops_are_compute_ops():
    """Issue 24 part 4: augmentation layers leave image-transform and seeded-random ops in an export; they
    compute and touch nothing, so they are not refused as dangerous (file, network and Python ops still are)."""
    for op in ("ImageProjectiveTransformV3", "ImageProjectiveTransformV2", "StatelessRandomUniformFullIntV2",
               "RngReadAndSkip", "ScaleAndTranslate", "CombinedNonMaxSuppression"):
        assert op in COMPUTE_OPS, op
    for op in ("ReadFile", "WriteFile", "PyFunc", "EagerPyFunc", "MatchingFiles"):
        assert op not in COMPUTE_OPS, op
    from packager.convert.converter import Attempt, _conversion_hint
    hint = _conversion_hint([Attempt("p", False, "op tf.ImageProjectiveTransformV3 is neither a custom op nor a "
                                                 "flex op")])
    assert "augmentation layers" in hint and ".keras" in hint
