"""Models from the field: each kind x recipe through `edgepack build` (contained child, both rpi
runtimes, verified on held-out data), then checked independently: a bare ai_edge_litert
interpreter on the bundle's model.tflite against Keras itself on the same held-out inputs.

    .venv/bin/python benchmarks/field_matrix.py [--recipes float32,int8] [--kinds lstm,gru]
                                                [--out benchmarks/results/field_matrix.json]

Prints a markdown table (kind x recipe -> outcome, edgepack's max abs error per runtime, the
independent max abs error); writes the raw numbers as JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ["EDGEPACK_IN_PROCESS"] = "0"       # a converter crash must not end the run
os.environ.setdefault("EDGEPACK_NO_CACHE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

RECIPES = ["float32", "float16", "dynamic", "int8", "int16x8"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipes", default=",".join(RECIPES))
    ap.add_argument("--kinds", default="")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "field_matrix.json"))
    args = ap.parse_args()
    import numpy as np
    from packager import api
    from packager.errors import EdgepackError
    from tests import field_models as fm

    work = Path(tempfile.mkdtemp(prefix="edgepack-matrix-"))
    kinds = fm.ALL(work)
    if args.kinds:
        kinds = [k for k in kinds if k.name in args.kinds.split(",")]
    rows = []
    for kind in kinds:
        for recipe in args.recipes.split(","):
            start = time.perf_counter()
            row = {"kind": kind.name, "recipe": recipe}
            cal = kind.calibration if recipe in ("int8", "int16x8") else None
            try:
                res = api.build(kind.model, target="rpi", recipe=recipe, calibration=cal, data=kind.eval,
                                output=work / "dist" / f"{kind.name}-{recipe}", use_cache=False)
                row["outcome"] = "MATCH"
                row["path"] = res.manifest.to_json()["source"]["conversion_path"]
                row["runtimes"] = {r.runtime: {"status": r.status, "max_abs_err": max(
                    (m.max_abs_err for m in r.metrics), default=None), "error": r.error}
                    for r in res.verification.runtimes}
                x = fm.eval_arrays(kind)
                ref, got = kind.keras_call(x), fm.raw_outputs(res.bundle, x)
                row["independent_max_abs_err"] = max(float(np.max(np.abs(ref[k] - got[k]))) for k in ref)
                row["fixed"] = res.manifest.fixed or None
            except EdgepackError as exc:
                row["outcome"] = f"refused (exit {exc.exit_code})"
                row["error"] = exc.message
                row["hint"] = exc.hint
            row["seconds"] = round(time.perf_counter() - start, 1)
            rows.append(row)
            print(json.dumps(row)[:400], flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=1, default=str))
    print("\n| kind | recipe | outcome | ai-edge-litert | tflite-runtime | independent |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        rts = r.get("runtimes") or {}

        def cell(name):
            v = rts.get(name)
            if not v:
                return "-"
            return f"{v['max_abs_err']:.2g}" if v["status"] == "passed" else v["status"]
        ind = r.get("independent_max_abs_err")
        print(f"| {r['kind']} | {r['recipe']} | {r['outcome']} | {cell('ai-edge-litert')} | {cell('tflite-runtime')} "
              f"| {'-' if ind is None else f'{ind:.2g}'} |")


if __name__ == "__main__":
    main()
