"""Read a .tflite: named inputs/outputs with quantization, op list with versions, size.

Also judges, per runtime a target declares, whether that runtime can run the model statically
(Flex/custom ops, op versions known to be too new); the emulator then proves it by loading."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, asdict

from ..lazynp import np

from ..errors import UsageError
from ..tensor import Tensor
from ..contain.wire import plain_data



@plain_data
@dataclass(frozen=True)
class OpInfo:
    """An operator code of the model: builtin or custom name, op version, how many nodes use it."""
    name: str
    version: int
    custom: bool
    count: int


@plain_data
@dataclass
class ModelSpec:
    """What a .tflite holds: size (bytes), sha256, named inputs/outputs, op codes, signature key."""
    size: int
    sha256: str
    inputs: list[Tensor]
    outputs: list[Tensor]
    ops: list[OpInfo]
    signature: str | None
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        """JSON of the spec: size (bytes), sha256, signature, inputs and outputs in manifest form, and ops (name,
        version, custom, count); ``notes`` are left out."""
        return {"size": self.size, "sha256": self.sha256, "signature": self.signature,
                "inputs": [t.to_json() for t in self.inputs], "outputs": [t.to_json() for t in self.outputs],
                "ops": [asdict(o) for o in self.ops]}

    def runtime_problems(self, runtime_name: str) -> list[str]:
        """Reasons the runtime ``runtime_name`` cannot run this model, known without loading it:
        Flex/custom ops, and op versions newer than the runtime registers (``max_op_versions`` of
        its entry in ``packager/runtimes.toml``)."""
        from ..targets import get_runtime
        runtime = get_runtime(runtime_name)
        problems = []
        for op in self.ops:
            if op.custom and op.name.startswith("Flex"):
                problems.append(f"{op.name} is a Flex (select TF) op; plain TFLite runtimes cannot run it")
            elif op.custom:
                problems.append(f"custom op {op.name} needs a runtime built with it")
            limit = runtime.op_version_limit(op.name) if runtime is not None and not op.custom else None
            if limit is not None and op.version > limit:
                problems.append(f"{op.name} version {op.version} (this runtime supports up to {limit})")
        return problems


def _ops(model: bytes) -> list[OpInfo]:
    from ai_edge_litert import schema_py_generated as schema
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    m = schema.Model.GetRootAsModel(model, 0)
    codes = []
    for i in range(m.OperatorCodesLength()):
        c = m.OperatorCodes(i)
        code = max(c.BuiltinCode(), c.DeprecatedBuiltinCode())
        custom = c.CustomCode()
        codes.append((custom.decode() if custom else names.get(code, f"BUILTIN_{code}"), c.Version() or 1, bool(custom)))
    counts = [0] * len(codes)
    for s in range(m.SubgraphsLength()):
        sg = m.Subgraphs(s)
        for o in range(sg.OperatorsLength()):
            counts[sg.Operators(o).OpcodeIndex()] += 1
    return [OpInfo(n, v, c, counts[i]) for i, (n, v, c) in enumerate(codes)]


def _tensor(name: str, d: dict) -> Tensor:
    scale, zero = d.get("quantization", (0.0, 0))
    shape = tuple(int(v) for v in d.get("shape_signature", d["shape"]))
    return Tensor(name, shape, np.dtype(d["dtype"]).name, index=int(d["index"]),
                  scale=float(scale) if scale else None, zero_point=int(zero) if scale else None)


def inspect_bytes(model: bytes, tensor_names: dict | None = None, order: dict | None = None) -> ModelSpec:
    """Describe a .tflite. Names come from the signature; ``tensor_names`` maps raw tensor names
    to spec names for models without one (TF1 path). ``order`` = {"inputs": [...], "outputs": [...]}."""
    if len(model) < 8 or model[4:8] != b"TFL3":
        raise UsageError("not a TFLite model (no TFL3 identifier)")
    from ai_edge_litert.interpreter import Interpreter
    try:
        interp = Interpreter(model_content=model)
    except Exception as exc:  # noqa: BLE001
        raise UsageError(f"the TFLite model cannot be read: {str(exc).splitlines()[0]}") from None
    names = tensor_names or {}
    wanted = set((order or {}).get("outputs") or [])
    sigs = interp.get_signature_list()
    signature = None
    views = []
    if sigs:
        signature = "serving_default" if "serving_default" in sigs else sorted(sigs)[0]
        runner = interp.get_signature_runner(signature)
        views.append(([_tensor(names.get(n, n), d) for n, d in runner.get_input_details().items()],
                      [_tensor(names.get(n, n), d) for n, d in runner.get_output_details().items()]))
    views.append(([_tensor(names.get(d["name"], d["name"]), d) for d in interp.get_input_details()],
                  [_tensor(names.get(d["name"], d["name"]), d) for d in interp.get_output_details()]))
    # Prefer the signature's names; fall back to raw tensor names when only those carry them.
    inputs, outputs = next((v for v in views if wanted <= {t.name for t in v[1]}), views[0])
    if order:
        inputs = _ordered(inputs, order.get("inputs"))
        outputs = _ordered(outputs, order.get("outputs"))
    return ModelSpec(len(model), hashlib.sha256(model).hexdigest(), inputs, outputs, _ops(model), signature)


def _ordered(tensors: list[Tensor], names: list | None) -> list[Tensor]:
    if not names:
        return sorted(tensors, key=lambda t: t.name)
    rank = {n: i for i, n in enumerate(names)}
    return sorted(tensors, key=lambda t: (rank.get(t.name, len(rank)), t.name))


#: Ops that pass an output through without deciding what it means (walked past to find the op that does).
PASS_THROUGH = {"DEQUANTIZE", "QUANTIZE", "RESHAPE", "SQUEEZE", "EXPAND_DIMS", "CAST", "IDENTITY"}


def output_ops(model: bytes, outputs: list[Tensor]) -> dict:
    """{output name: (op, step)}: the op of the main subgraph that computes each output, past the ops of
    :data:`PASS_THROUGH` (``SOFTMAX`` for a classifier even when an int8 model ends in DEQUANTIZE; None for an
    output that is an input or a constant), and ``step``, the quantization step of the output in its own units
    (the output's scale, or the scale of the quantized tensor a DEQUANTIZE reads; None for float outputs)."""
    from ai_edge_litert import schema_py_generated as schema
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    m = schema.Model.GetRootAsModel(model, 0)
    if not m.SubgraphsLength():
        return {}
    sg = m.Subgraphs(0)
    producer = {}
    for o in range(sg.OperatorsLength()):
        op = sg.Operators(o)
        code = m.OperatorCodes(op.OpcodeIndex())
        custom = code.CustomCode()
        name = custom.decode() if custom else names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "?")
        ins = [op.Inputs(i) for i in range(op.InputsLength())]
        for k in range(op.OutputsLength()):
            producer[op.Outputs(k)] = (name, ins)

    from ..criteria import Step
    types = {v: k.lower() for k, v in vars(schema.TensorType).items() if not k.startswith("_")}

    def scale_of(index: int):       # the step of a quantized tensor, with its range (criteria.Step)
        q = sg.Tensors(index).Quantization() if 0 <= index < sg.TensorsLength() else None
        if q is None or q.ScaleLength() != 1:
            return None
        zero = int(q.ZeroPointAsNumpy()[0]) if q.ZeroPointLength() == 1 else 0
        return Step(float(q.ScaleAsNumpy()[0]), zero, types.get(sg.Tensors(index).Type()))
    found = {}
    for t in outputs:
        index, op = t.index, None
        step = Step(t.scale, t.zero_point, t.dtype) if t.scale else None
        for _ in range(16):
            if index is None or index not in producer:
                break
            op, ins = producer[index]
            if op not in PASS_THROUGH or not ins:
                break
            if op == "DEQUANTIZE" and step is None:
                step = scale_of(ins[0])
            index = ins[0]
        else:
            op = None
        found[t.name] = (op if op not in PASS_THROUGH else None, step)
    return found
