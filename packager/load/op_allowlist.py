"""Which framework operations a model may name without ``--trust-model``: ops that only compute.

Two kinds of names are judged here, before any framework code runs:

* Keras op layers. Legacy ``tf_keras`` files store ``tf.*`` calls as ``TFOpLambda`` /
  ``SlicingOpLambda`` layers naming the function (``"math.abs"``, ``"io.write_file"``...), and
  ``ClassMethod`` / ``InstanceMethod`` / ``InstanceProperty`` layers naming a class method or a tensor
  attribute; ``tf_keras`` resolves any exported TensorFlow symbol and calls it while loading.
  Keras 3 stores ``keras.ops`` calls as operation classes (``module: keras.src.ops.numpy``).
  Only pure math / shape functions are accepted.
* SavedModel graph ops (``NodeDef.op``), in every graph and every library function. Only ops that
  compute on tensors (no file system, network, Python callbacks, queues/readers, summaries,
  resources outside variables) are accepted; the variable restore graph is judged separately.
"""
from __future__ import annotations

# ------------------------------------------------------------------ Keras op layers
_TF_PURE_LEAVES = """
abs absolute accumulate_n acos acosh add add_n angle argmax argmin asin asinh atan atan2 atanh
bessel_i0 bessel_i0e bessel_i1 bessel_i1e bias_add bincount cast ceil clip_by_norm clip_by_value
complex concat conj cos cosh count_nonzero cumprod cumsum cumulative_logsumexp digamma divide
divide_no_nan equal erf erfc erfinv exp expand_dims expm1 eye fill floor floordiv floormod gather
gather_nd greater greater_equal identity imag igamma igammac is_finite is_inf is_nan l2_normalize
lbeta less less_equal lgamma linspace log log1p log_sigmoid log_softmax logical_and logical_not
logical_or logical_xor logsumexp matmul maximum minimum mod multiply multiply_no_nan ndtri negative
nextafter not_equal ones ones_like one_hot polygamma polyval pow range real reciprocal
reciprocal_no_nan reduce_all reduce_any reduce_euclidean_norm reduce_logsumexp reduce_max
reduce_mean reduce_min reduce_prod reduce_std reduce_sum reduce_variance relu relu6 elu selu gelu
leaky_relu crelu silu swish softplus softsign rint round rsqrt scalar_mul segment_max segment_mean
segment_min segment_prod segment_sum sigmoid sign sin sinh softmax sqrt square squared_difference
subtract tan tanh top_k truediv truncatediv truncatemod unsorted_segment_max unsorted_segment_mean
unsorted_segment_min unsorted_segment_prod unsorted_segment_sum xdivy xlog1py xlogy zeta zeros
zeros_like reshape transpose squeeze stack unstack split tile pad slice strided_slice reverse
boolean_mask broadcast_to where rank shape size einsum norm matvec tensordot trace diag_part
argsort sort clip moments batch_normalization conv1d conv2d depthwise_conv2d avg_pool max_pool
avg_pool2d max_pool2d dropout space_to_depth depth_to_space resize nonzero sparse_softmax
""".split()
_TF_NAMESPACES = ("", "math.", "nn.", "linalg.", "image.", "compat.v1.", "compat.v1.math.", "compat.v1.nn.")
_TF_OPERATORS = {f"__operators__.{op}" for op in (
    "add", "getitem", "ne", "eq", "and", "or", "xor", "invert", "ge", "gt", "le", "lt", "neg", "pos",
    "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "abs", "radd", "rsub", "rmul")}
TF_PURE_FUNCTIONS = frozenset({ns + leaf for ns in _TF_NAMESPACES for leaf in _TF_PURE_LEAVES} | _TF_OPERATORS)
# ClassMethod layers: (class symbol, method); InstanceMethod/InstanceProperty: tensor attributes.
TF_PURE_CLASS_METHODS = frozenset({("RaggedTensor", m) for m in (
    "from_row_lengths", "from_row_splits", "from_value_rowids", "from_tensor", "from_nested_row_lengths")})
TF_PURE_TENSOR_ATTRS = frozenset({
    "shape", "dtype", "ndim", "values", "row_splits", "flat_values", "row_lengths", "to_tensor", "nrows",
    "indices", "dense_shape", "__getitem__"})
TF_OP_LAYERS = {"TFOpLambda", "SlicingOpLambda", "ClassMethod", "InstanceMethod", "InstanceProperty"}
# Keras 3 operations (keras.ops.*) are classes of these modules; everything in them computes,
# except core's control flow and conversions, which are not serialisable without Python anyway.
KERAS_PURE_OP_MODULES = ("keras.src.ops.numpy", "keras.src.ops.math", "keras.src.ops.nn",
                         "keras.src.ops.linalg", "keras.src.ops.image")
KERAS_PURE_CORE_OPS = frozenset({"Cast", "Slice", "SliceUpdate", "Scatter", "ScatterUpdate", "StopGradient",
                                 "Unstack", "SaturateCast", "ConvertToTensor"})

KERAS_CONTROL_FLOW_OPS = frozenset({"Map", "Scan", "AssociativeScan", "Switch", "WhileLoop", "ForiLoop", "Cond",
                                    "VectorizedMap", "CustomGradient"})


def op_layer_problem(node: dict) -> str | None:
    """A description of what a Keras config node names outside the allowlist, or None."""
    cls = node.get("class_name")
    config = node.get("config") if isinstance(node.get("config"), dict) else {}
    module = node.get("module")
    if cls in TF_OP_LAYERS:  # whatever "module" says: tf_keras's legacy loader ignores it
        name = config.get("name")
        label = f"layer {name!r} ({cls})" if isinstance(name, str) else f"a {cls} layer"
        if cls in ("TFOpLambda", "SlicingOpLambda"):
            fn = config.get("function")
            if not isinstance(fn, str) or fn not in TF_PURE_FUNCTIONS:
                return f"{label} calling tf.{fn if isinstance(fn, str) else '?'} (not a pure math op)"
        elif cls == "ClassMethod":
            pair = (config.get("cls_symbol"), config.get("method_name"))
            if pair not in TF_PURE_CLASS_METHODS:
                return f"{label} calling tf.{pair[0]}.{pair[1]} (not a pure math op)"
        else:
            attr = config.get("attr_name")
            if attr not in TF_PURE_TENSOR_ATTRS:
                return f"{label} using tensor attribute {attr!r} (not a pure math op)"
        return None
    if cls in KERAS_CONTROL_FLOW_OPS:
        return f"a Keras operation {cls!r} (control flow that calls Python functions; not a pure math op)"
    if isinstance(module, str) and (module.startswith("keras.src.ops.") or module.startswith("keras.ops")):
        if module.startswith(KERAS_PURE_OP_MODULES):
            return None
        if module in ("keras.src.ops.core", "keras.ops") and cls in KERAS_PURE_CORE_OPS:
            return None
        return f"a Keras operation {cls!r} from {module!r} (not a pure math op)"
    return None


# ------------------------------------------------------------------ SavedModel graph ops
# Ops that compute on tensors only. Names are TensorFlow's registered op names.
_COMPUTE_OPS = """
Abs Acos Acosh Add AddN AddV2 All Angle Any ApproximateEqual ArgMax ArgMin Asin Asinh Assert Atan Atan2
Atanh AvgPool AvgPool3D BatchMatMul BatchMatMulV2 BatchMatMulV3 BatchNormWithGlobalNormalization
BatchToSpace BatchToSpaceND BesselI0e BesselI1e Betainc BiasAdd BiasAddV1 Bincount Bitcast BitwiseAnd
BitwiseOr BitwiseXor BroadcastArgs BroadcastGradientArgs BroadcastTo Bucketize Cast Ceil CheckNumerics
ClipByValue Complex ComplexAbs Concat ConcatOffset ConcatV2 Conj Const Conv Conv2D Conv2DBackpropInput Conv3D
Conv3DBackpropInputV2 Conv2DBackpropFilter Cos Cosh Cross CropAndResize Cumprod Cumsum CumulativeLogsumexp
DataFormatDimMap DataFormatVecPermute DepthToSpace DepthwiseConv2dNative DepthwiseConv2dNativeBackpropInput
Dequantize Diag DiagPart Digamma Dilation2D Div DivNoNan DynamicPartition DynamicStitch Einsum Elu EluGrad
Empty EnsureShape Equal Erf Erfc Erfinv Exp ExpandDims Expm1 ExtractImagePatches FakeQuantWithMinMaxArgs
FakeQuantWithMinMaxVars FakeQuantWithMinMaxVarsPerChannel FFT FFT2D FFT3D Fill Floor FloorDiv FloorMod
FusedBatchNorm FusedBatchNormV2 FusedBatchNormV3 Gather GatherNd GatherV2 Greater GreaterEqual
Identity IdentityN IFFT IFFT2D IFFT3D Igamma Igammac Imag InTopK InTopKV2 InvertPermutation Inv Invert
IsFinite IsInf IsNan L2Loss LRN LeakyRelu LeftShift Less LessEqual Lgamma LinSpace ListDiff Log Log1p
LogSoftmax LogicalAnd LogicalNot LogicalOr LowerBound MatMul MatrixBandPart MatrixDeterminant MatrixDiag
MatrixDiagPart MatrixDiagPartV2 MatrixDiagPartV3 MatrixDiagV2 MatrixDiagV3 MatrixInverse MatrixSetDiag
MatrixSetDiagV2 MatrixSetDiagV3 MatrixSolve MatrixTriangularSolve Max MaxPool MaxPool3D MaxPoolV2
MaxPoolWithArgmax Maximum Mean Min Minimum MirrorPad Mod Mul MulNoNan Multinomial Ndtri Neg NextAfter NoOp
NonMaxSuppressionV3 NonMaxSuppressionV4 NonMaxSuppressionV5 NotEqual OneHot OnesLike Pack Pad PadV2
ParallelConcat Placeholder PlaceholderWithDefault PopulationCount Pow PreventGradient Prod Qr
QuantizeAndDequantizeV2 QuantizeAndDequantizeV3 QuantizeAndDequantizeV4 QuantizeV2 RFFT RFFT2D RFFT3D
IRFFT IRFFT2D IRFFT3D RaggedGather RaggedRange RaggedTensorToTensor RaggedTensorToVariant
RaggedTensorFromVariant RaggedTensorToSparse Range Rank Real RealDiv Reciprocal Relu Relu6 Reshape
ResizeArea ResizeBicubic ResizeBilinear ResizeNearestNeighbor Reverse ReverseSequence ReverseV2
RightShift Rint Roll Round Rsqrt ScatterNd ScatterNdNonAliasingAdd SegmentMax SegmentMean SegmentMin
SegmentProd SegmentSum Select SelectV2 Selu SelfAdjointEigV2 Shape ShapeN Sigmoid Sign Sin Sinh Size
Slice Snapshot Softmax Softplus Softsign SpaceToBatch SpaceToBatchND SpaceToDepth SparseToDense Split
SplitV Sqrt Square SquaredDifference Squeeze StatelessIf StatelessWhile StatelessCase
StatelessRandomNormal StatelessRandomNormalV2 StatelessRandomUniform StatelessRandomUniformV2
StatelessRandomUniformInt StatelessRandomGetKeyCounter StatelessRandomGetKeyCounterAlg StopGradient
StridedSlice StridedSliceGrad Sub Sum Svd Tan Tanh TensorScatterAdd TensorScatterMax TensorScatterMin
TensorScatterSub TensorScatterUpdate Tile TopKV2 Transpose TruncateDiv TruncateMod Unique UniqueV2
Unpack UnravelIndex UnsortedSegmentMax UnsortedSegmentMin UnsortedSegmentProd UnsortedSegmentSum
UpperBound Where Xdivy Xlog1py Xlogy ZerosLike Zeta
StringLength StringJoin StringToNumber AsString StringSplitV2 StringLower StringUpper Substr
RegexReplace StaticRegexReplace StringStrip ReduceJoin EncodeBase64 DecodeBase64 UnicodeDecode
UnicodeEncode UnicodeTranscode StringToHashBucketFast
DecodePng DecodeJpeg DecodeBmp DecodeGif DecodeImage DecodeRaw DecodeCompressed EncodePng EncodeJpeg
AdjustContrastv2 AdjustHue AdjustSaturation HSVToRGB RGBToHSV
PartitionedCall StatefulPartitionedCall If While Case
ReadVariableOp VarHandleOp VarIsInitializedOp AssignVariableOp AssignAddVariableOp AssignSubVariableOp
ResourceGather ResourceGatherNd DestroyResourceOp VariableShape
HashTableV2 LookupTableFindV2 LookupTableImportV2 LookupTableSizeV2 MutableHashTableV2
LookupTableInsertV2 LookupTableExportV2 LookupTableRemoveV2 MutableDenseHashTableV2
TensorListFromTensor TensorListGetItem TensorListLength TensorListReserve TensorListSetItem
TensorListStack TensorListElementShape TensorListPushBack TensorListPopBack TensorListConcatV2
TensorListSplit TensorListGather TensorListScatterIntoExistingList TensorListResize
DisableCopyOnRead EmptyTensorList RandomUniform RandomUniformInt RandomStandardNormal TruncatedNormal
Enter Exit Merge Switch NextIteration LoopCond ControlTrigger StringFormat Softmax LogMatrixDeterminant
Cholesky Eig Lu MatrixExponential MatrixLogarithm MatrixSquareRoot BatchMatrixBandPart Cumprod
TensorArrayV3 TensorArrayReadV3 TensorArrayWriteV3 TensorArrayGatherV3 TensorArrayScatterV3
TensorArraySizeV3 TensorArrayCloseV3 TensorArrayConcatV3 TensorArraySplitV3 AudioSpectrogram Mfcc
VariableV2 Variable Assign AssignAdd AssignSub IsVariableInitialized
_Arg _Retval _DeviceArg _DeviceRetval _FusedConv2D _FusedMatMul _FusedBatchNormEx _MklLayerNorm
_MklFusedBatchMatMulV2 _FusedDepthwiseConv2dNative
ImageProjectiveTransformV2 ImageProjectiveTransformV3 ScaleAndTranslate AdjustContrast DrawBoundingBoxesV2
NonMaxSuppressionV2 CombinedNonMaxSuppression StatelessRandomUniformFullInt StatelessRandomUniformFullIntV2
StatelessRandomUniformIntV2 StatelessTruncatedNormal StatelessTruncatedNormalV2 StatelessRandomBinomial
StatelessRandomPoisson StatelessRandomGammaV2 StatelessRandomGammaV3 StatelessShuffle StatelessMultinomial
RngReadAndSkip RngSkip StatefulUniform StatefulUniformInt StatefulUniformFullInt StatefulStandardNormalV2
StatefulTruncatedNormal RandomShuffle RandomGamma RandomPoissonV2
"""
COMPUTE_OPS = frozenset(_COMPUTE_OPS.split())
# The loader restores variables through the saver's own ops; these are allowed only in the
# graph nodes that the saver_def names (never in functions reachable from a signature).
RESTORE_OPS = frozenset({"RestoreV2", "Restore", "RestoreSlice"})
SAVE_OPS = frozenset({"SaveV2", "Save", "SaveSlices", "MergeV2Checkpoints", "ShardedFilename", "ShardedFilespec",
                      "StaticRegexFullMatch"})


def _node_name(ref: str) -> str:
    return ref.lstrip("^").split(":", 1)[0]


def _called(node, library: set) -> set:
    """Library functions a node calls: by op name or through function-valued attributes."""
    out = {node.op} & library
    for attr in node.attr.values():
        if attr.HasField("func"):
            out.add(attr.func.name)
        if attr.HasField("list"):
            out.update(f.name for f in attr.list.func)
    return out


def saved_model_problem(proto) -> str | None:
    """Ops outside the allowlist in any graph or library function of a SavedModel proto.

    The saver's own subgraph (the nodes that ``saver_def`` names, and the functions only they
    call) may also hold the checkpoint ops; everything else may hold only computing ops."""
    bad: set = set()
    for meta in proto.meta_graphs:
        bad |= _graph_problems(meta.graph_def, meta.saver_def)
    if not bad:
        return None
    ops = sorted(bad)
    shown = ", ".join(ops[:8]) + (f" and {len(ops) - 8} more" if len(ops) > 8 else "")
    return f"ops outside edgepack's allowlist of computing ops ({shown})"


def _graph_problems(graph, saver) -> set:
    functions = {f.signature.name: f for f in graph.library.function}
    library = set(functions)
    nodes = {n.name: n for n in graph.node}

    def node_closure(roots):
        seen, todo = set(), [r for r in roots if r in nodes]
        while todo:
            name = todo.pop()
            if name not in seen:
                seen.add(name)
                todo += [_node_name(i) for i in nodes[name].input if _node_name(i) in nodes]
        return seen

    def function_closure(start):
        seen, todo = set(), list(start)
        while todo:
            name = todo.pop()
            if name in functions and name not in seen:
                seen.add(name)
                for n in functions[name].node_def:
                    todo += _called(n, library)
        return seen

    def calls(names):
        out = set()
        for name in names:
            out |= _called(nodes[name], library)
        return out

    save_nodes = node_closure({_node_name(saver.save_tensor_name)} if saver.save_tensor_name else set())
    restore_nodes = node_closure({_node_name(saver.restore_op_name)} if saver.restore_op_name else set())
    strict_nodes = set(nodes) - save_nodes - restore_nodes
    strict_fns = function_closure(calls(strict_nodes) | {g.gradient_func for g in graph.library.gradient})
    save_fns = function_closure(calls(save_nodes)) - strict_fns
    restore_fns = function_closure(calls(restore_nodes)) - strict_fns
    # Functions nothing in the graph calls (e.g. a SavedModel's restored concrete functions)
    # are judged as strictly as the serving graph.
    strict_fns |= library - save_fns - restore_fns

    bad = set()
    groups = [([nodes[n].op for n in strict_nodes], COMPUTE_OPS),
              ([nodes[n].op for n in save_nodes], COMPUTE_OPS | SAVE_OPS),
              ([nodes[n].op for n in restore_nodes], COMPUTE_OPS | RESTORE_OPS)]
    groups += [([n.op for n in functions[f].node_def], COMPUTE_OPS) for f in strict_fns]
    groups += [([n.op for n in functions[f].node_def], COMPUTE_OPS | SAVE_OPS) for f in save_fns]
    groups += [([n.op for n in functions[f].node_def], COMPUTE_OPS | RESTORE_OPS) for f in restore_fns]
    for ops, allowed in groups:
        bad.update(op for op in ops if op not in allowed and op not in library)
    return bad
