"""Five recipes side by side vs one build (issue 13 part 3 goal: <= 2.5x), on the tutorial MLP and
real digits, both rpi runtimes, contained child, no cache. Interleaved runs, medians.

    .venv/bin/python benchmarks/sweep.py [--reps 3]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ["EDGEPACK_IN_PROCESS"] = "0"
os.environ["EDGEPACK_NO_CACHE"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    import numpy as np
    from packager import api
    from tests import models
    work = Path(tempfile.mkdtemp(prefix="edgepack-sweep-"))
    (x, y), (xt, yt) = models.digits()
    model = models.keras3_h5(models.trained_mlp(x, y), work)
    np.savez(work / "cal.npz", x=x[:200])
    np.savez(work / "eval.npz", x=xt, y=yt)
    one, sweep = [], []
    for i in range(args.reps):
        t = time.perf_counter()
        api.build(model, recipe="int8", calibration=work / "cal.npz", data=work / "eval.npz",
                  output=work / f"one{i}", use_cache=False)
        one.append(time.perf_counter() - t)
        t = time.perf_counter()
        res = api.build_sweep(model, ["float32", "float16", "dynamic", "int8", "int16x8"],
                              calibration=work / "cal.npz", data=work / "eval.npz", output=work / f"sweep{i}")
        sweep.append(time.perf_counter() - t)
    ratios = [s / o for s, o in zip(sweep, one)]
    result = {"one_int8_build_s": one, "five_recipes_s": sweep, "ratio_median": statistics.median(ratios),
              "ratios": ratios, "rows": [{k: r.get(k) for k in ("recipe", "status", "size", "size_vs_float32")}
                                         for r in res.rows]}
    print(json.dumps(result, indent=1))
    out = ROOT / "benchmarks" / "results" / "sweep.json"
    out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
