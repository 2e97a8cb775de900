"""Where the bytes of a .tflite go: weight buffers vs everything else (graph, names, quantization
parameters, signature, metadata). Runs in any venv with ai-edge-litert (main .venv or a runtime venv).

    python tflite_sizes.py A.tflite [B.tflite ...]      # one JSON line per file
"""
import json
import sys

from ai_edge_litert import schema_py_generated as schema


def breakdown(path: str) -> dict:
    data = open(path, "rb").read()
    m = schema.Model.GetRootAsModel(data, 0)
    buffers = 0
    for i in range(m.BuffersLength()):
        b = m.Buffers(i)
        buffers += b.DataLength() if b.Offset() == 0 else b.Size()
    quant, names, tensors = 0, 0, 0
    for s in range(m.SubgraphsLength()):
        g = m.Subgraphs(s)
        for t in range(g.TensorsLength()):
            tensor = g.Tensors(t)
            tensors += 1
            names += len(tensor.Name() or b"")
            q = tensor.Quantization()
            if q is not None:   # float32 scales + int64 zero points (+ min/max if present)
                quant += 4 * q.ScaleLength() + 8 * q.ZeroPointLength() + 4 * (q.MinLength() + q.MaxLength())
    metadata = 0
    for i in range(m.MetadataLength()):
        md = m.Metadata(i)
        b = m.Buffers(md.Buffer())
        metadata += b.DataLength() if b.Offset() == 0 else b.Size()
    return {"file": path, "total": len(data), "buffers": buffers - metadata, "metadata_buffers": metadata,
            "quantization_params": quant, "tensor_names": names, "tensors": tensors,
            "other": len(data) - buffers - quant - names}


if __name__ == "__main__":
    for p in sys.argv[1:]:
        print(json.dumps(breakdown(p)))
