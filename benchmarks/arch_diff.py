"""x86-64 vs arm64 (qemu-user, real aarch64 wheels): the same bundle's outputs on both CPUs, per
recipe and runtime, and what one emulated verification costs.

    .venv/bin/python benchmarks/arch_diff.py
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("EDGEPACK_IN_PROCESS", "1")
os.environ.setdefault("EDGEPACK_NO_CACHE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main() -> None:
    import numpy as np
    from packager import api
    from packager.verification.emulator import get_env, run_device_script
    from packager.targets import get_target
    from tests import models

    tmp = Path(tempfile.mkdtemp(prefix="edgepack-arch-"))
    (x, y), (xt, yt) = models.digits()
    np.savez(tmp / "cal.npz", x=x[:200])
    mlp = models.trained_mlp(x, y)
    model = models.keras3_h5(mlp, tmp)
    profile = get_target("rpi")
    rows = []
    for recipe in ("float32", "dynamic", "int8"):
        res = api.build(model, target="rpi", recipe=recipe, calibration=tmp / "cal.npz", verify=False,
                        output=tmp / recipe)
        for rt in profile.runtimes:
            outs, secs = {}, {}
            for arch in ("x86_64", "arm64"):
                env = get_env(rt, arch, profile.python)
                t0 = time.perf_counter()
                run = run_device_script(env, res.bundle, {"pixels": xt})
                secs[arch] = time.perf_counter() - t0
                outs[arch] = run.outputs["probs"] if run.ok else run.error
            if isinstance(outs["x86_64"], str) or isinstance(outs["arm64"], str):
                rows.append({"recipe": recipe, "runtime": rt.name, "x86_64": str(outs["x86_64"])[:100],
                             "arm64": str(outs["arm64"])[:100]})
            else:
                d = np.abs(outs["x86_64"] - outs["arm64"])
                rows.append({"recipe": recipe, "runtime": rt.name, "max_abs_diff": float(d.max()),
                             "differing_values": int((d > 0).sum()), "values": int(d.size),
                             "top1_equal": float((outs["x86_64"].argmax(1) == outs["arm64"].argmax(1)).mean()),
                             "seconds_x86": round(secs["x86_64"], 2), "seconds_arm64": round(secs["arm64"], 2)})
            print(json.dumps(rows[-1]), flush=True)
    out = ROOT / "benchmarks" / "results" / "arch_diff.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
