"""Agreement between the original model and the verified bundle, per input form and recipe, on
held-out real digits (scikit-learn's 8x8 set), plus each recipe's size relative to float32.

    .venv/bin/python benchmarks/input_forms.py [--out benchmarks/results/input_forms.json]

Models come from tests/models.py (the same zoo the tests build). Forms whose weights are random
(plain tf.Module, the "old TF" SavedModel) still measure agreement, not accuracy.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("EDGEPACK_IN_PROCESS", "1")
os.environ.setdefault("EDGEPACK_NO_CACHE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

RECIPES = ["float32", "float16", "dynamic", "int8", "int16x8"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "input_forms.json"))
    ap.add_argument("--runtime", default="ai-edge-litert")
    args = ap.parse_args()
    import numpy as np
    from packager import api
    from tests import models

    tmp = Path(tempfile.mkdtemp(prefix="edgepack-forms-"))
    (x, y), (xt, yt) = models.digits()
    np.savez(tmp / "cal.npz", x=x[:200])
    np.savez(tmp / "eval.npz", x=xt, y=yt)
    mlp = models.trained_mlp(x, y)
    forms = {
        "keras3 .h5": models.keras3_h5(mlp, tmp), "keras3 .keras": models.keras3_v3(mlp, tmp),
        "keras2 .h5": models.keras2_h5(x, y, tmp, ".h5"), "keras2 .hdf5": models.keras2_h5(x, y, tmp, ".hdf5"),
        "SavedModel (Keras)": models.saved_model_keras(mlp, tmp),
        "SavedModel subclassed @tf.function": models.saved_model_subclassed(x, y, tmp, False, mlp),
        "SavedModel subclassed + input_signature": models.saved_model_subclassed(x, y, tmp, True, mlp),
        "SavedModel tf.Module, no signatures": models.saved_model_module(tmp),
        "model.export()": models.keras_export(mlp, tmp),
        "SavedModel old TF 2.x (add_slot)": models.saved_model_old_tf(tmp),
    }
    rows = []
    for form, path in forms.items():
        sizes = {}
        for recipe in RECIPES:
            try:
                res = api.build(path, target="rpi", recipe=recipe, calibration=tmp / "cal.npz", data=tmp / "eval.npz",
                                runtimes=[args.runtime], output=tmp / "out" / f"{len(rows)}")
            except Exception as exc:  # noqa: BLE001 - a measurement script records failures
                rows.append({"form": form, "recipe": recipe, "error": str(exc)})
                continue
            (rt,) = res.verification.runtimes
            (m,) = rt.metrics
            sizes[recipe] = res.manifest.to_json()["model_size"]
            rows.append({"form": form, "recipe": recipe, "path": res.manifest.to_json()["source"]["conversion_path"],
                         "samples": res.verification.samples, "top1": m.top1_agreement, "max_abs": m.max_abs_err,
                         "acc_ref": m.accuracy_reference, "acc_bundle": m.accuracy_candidate,
                         "size": res.manifest.to_json()["model_size"],
                         "size_vs_float32": res.manifest.to_json()["model_size"] / sizes["float32"] if "float32" in sizes else None})
            print(json.dumps(rows[-1]), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=1))
    print("| form | recipe | path | top-1 agreement | max abs err | accuracy ref → bundle | size / float32 |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['form']} | {r['recipe']} | error: {r['error'][:80]} | | | | |")
            continue
        acc = f"{r['acc_ref']:.4f} → {r['acc_bundle']:.4f}" if r["acc_ref"] is not None else "-"
        print(f"| {r['form']} | {r['recipe']} | {r['path']} | {r['top1']:.4f} | {r['max_abs']:.2e} | {acc} | "
              f"{r['size_vs_float32']:.3f} |")


if __name__ == "__main__":
    main()
