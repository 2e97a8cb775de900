#!/usr/bin/env python3
"""Why a figure misses its goal: the profiles BENCHMARKS.md quotes.

    .venv/bin/python benchmarks/profile.py WORKDIR [--reps N]

WORKDIR is a `benchmarks/run.py --workdir` (models + bundles). Three profiles, medians of N runs:

  device-imports  python -X importtime of edgepack_run.py --input vs the bare loop (ai-edge-litert
                  venv): what the device script imports that the bare loop does not, and the total
                  import time of each (the whole-process ratio is almost all start-up).
  build-phases    `api.build(-q int8)` with each phase wrapped by a wall-clock timer (no profiler
                  overhead), a first build (empty cache) and a rebuild; and the TensorFlow child's
                  work split (EDGEPACK_IN_PROCESS=1): import TensorFlow, load, convert.
  tf-import       python -X importtime -c "import tensorflow" (main venv): the biggest sub-trees.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def importtime(argv, env=None) -> list:
    """[(self_us, cumulative_us, depth, name)] from one `-X importtime` run."""
    out = subprocess.run([argv[0], "-X", "importtime", *argv[1:]], capture_output=True, text=True, env=env)
    rows = []
    for line in out.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            parts = line.split("|")
            try:
                self_us, cum = int(parts[0].split(":")[1]), int(parts[1])
            except ValueError:
                continue
            name = parts[2].rstrip()
            rows.append((self_us, cum, (len(name) - len(name.lstrip())) // 2, name.strip()))
    return rows


def device_imports(work: Path, reps: int) -> dict:
    from packager.verification.emulator import get_env
    from packager.targets import get_target
    env = get_env(get_target("rpi").runtime("ai-edge-litert"))
    bundle = work / "bundles" / "mnist-int8"
    src = work / "mnist" / "in-300.npz"
    dev = [*env.argv, str(bundle / "edgepack_run.py"), "--input", str(src), "--output", str(work / "p-dev.npz")]
    bare = [*env.argv, str(HERE / "bare_loop.py"), env.module, str(bundle / "model.tflite"), str(src),
            str(work / "p-bare.npz"), "probs", "64"]
    runs = {"device": [], "bare": []}
    for _ in range(reps):
        runs["device"].append(importtime(dev, env.env))
        runs["bare"].append(importtime(bare, env.env))

    def per_module(rowsets):
        acc = {}
        for rows in rowsets:
            for s, c, d, n in rows:
                acc.setdefault(n, []).append((s, c, d))
        return {n: {"self_ms": statistics.median(x[0] for x in v) / 1e3, "cum_ms": statistics.median(x[1] for x in v) / 1e3,
                    "depth": v[0][2]} for n, v in acc.items()}

    d, b = per_module(runs["device"]), per_module(runs["bare"])
    only = {n: v for n, v in d.items() if n not in b}
    top = {n: v["cum_ms"] for n, v in only.items() if v["depth"] == 0}
    return {"total_import_ms": {"device": sum(v["cum_ms"] for v in d.values() if v["depth"] == 0),
                                "bare": sum(v["cum_ms"] for v in b.values() if v["depth"] == 0)},
            "numpy_ms": {"device": d.get("numpy", {}).get("cum_ms"), "bare": b.get("numpy", {}).get("cum_ms")},
            "only_in_device_self_ms": round(sum(v["self_ms"] for v in only.values()), 2),
            "only_in_device_top_level_cum_ms": dict(sorted(top.items(), key=lambda kv: -kv[1]))}


def build_phases(work: Path, reps: int) -> dict:
    """Phase wall times of `api.build(-q int8)`, no profiler overhead. Each rep is a fresh process
    with an empty conversion cache (EDGEPACK_CACHE_DIR with only the runtime venvs linked in):
    build 1 is a first build, build 2 the same call again (a rebuild). A second process with
    EDGEPACK_IN_PROCESS=1 splits the TensorFlow child's work (import, load, convert)."""
    code = r'''
import json, sys, time, os, tempfile
sys.path.insert(0, sys.argv[1])
work, in_process = sys.argv[2], sys.argv[3] == "1"
T = {}
def timed(mod, name, label=None):
    fn = getattr(mod, name)
    def wrapper(*a, **k):
        t = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            key = label or name
            T[key] = T.get(key, 0.0) + time.perf_counter() - t
    setattr(mod, name, wrapper)
t0 = time.perf_counter()
from packager import api
from packager.verification import emulator
from packager.contain import isolate
from packager.load import model as loaders, formats
from packager.convert import converter as convert, jobs
from packager.bundle import contents
from packager.verification import report as verdict
T["import packager.api"] = time.perf_counter() - t0
try:
    from packager.verification import cache
    timed(cache, "conversion_key", "cache: hash model+data (key)")
    timed(cache, "load_prepared", "cache: load conversion")
    timed(cache, "save_prepared", "cache: save conversion")
except ImportError:
    cache = None
if in_process:
    t = time.perf_counter(); loaders.import_tf(); T["child: import tensorflow (+keras)"] = time.perf_counter() - t
    timed(formats, "load_model", "child: load model (keras h5, trace)")
    timed(convert, "convert", "child: convert (+ check run)")
    timed(jobs, "versions", "child: versions")
else:
    timed(isolate, "run", "TensorFlow child (spawn, import TF, load, convert, reference)")
timed(contents, "stage", "stage bundle (+ expected outputs)")
timed(emulator, "run_device_script", "verify: device script --input (both runtimes)")
timed(emulator, "device_info", "verify: device script --info (both runtimes)")
timed(verdict, "verify_staged", "verify total")
timed(api, "write_archive", "tar.gz archive")
d = os.path.join(work, "digits")
setup = dict(T)
out = {}
for label in (("first build", "rebuild") if not in_process else ("first build (in-process)",)):
    T.clear()
    t = time.perf_counter()
    api.build(os.path.join(d, "digits.h5"), target="rpi", recipe="int8", calibration=os.path.join(d, "calibration.npz"),
              data=os.path.join(d, "eval.npz"), output=os.path.join(work, "bundles", "profile-build"))
    T["api.build total"] = time.perf_counter() - t
    out[label] = dict(T, **(setup if label.startswith("first") else {}))
print(json.dumps(out))
'''
    from packager.paths import cache_dir
    import shutil
    import tempfile
    samples = []
    for _ in range(reps):
        for in_process in ("0", "1"):
            tmp = Path(tempfile.mkdtemp(prefix="cache-", dir=work))
            (tmp / "envs").symlink_to(cache_dir() / "envs", target_is_directory=True)
            env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", EDGEPACK_CACHE_DIR=str(tmp),
                       EDGEPACK_IN_PROCESS=in_process)
            out = subprocess.run([sys.executable, "-c", code, str(HERE.parent), str(work), in_process],
                                 capture_output=True, text=True, env=env)
            shutil.rmtree(tmp, ignore_errors=True)
            if out.returncode != 0:
                return {"error": out.stderr[-1500:]}
            samples.append(json.loads(out.stdout.strip().splitlines()[-1]))
    result = {}
    for label in {k for s in samples for k in s}:
        runs = [s[label] for s in samples if label in s]
        keys = {k for r in runs for k in r}
        result[label] = {k: round(statistics.median(r.get(k, 0.0) for r in runs), 3) for k in sorted(keys)}
    return result


def tf_import(reps: int) -> dict:
    runs = [importtime([sys.executable, "-c", "import tensorflow"], dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
            for _ in range(reps)]
    total = statistics.median(sum(c for s, c, d, n in rows if d == 0) for rows in runs) / 1e6
    rows = runs[-1]
    # importtime lists children before their parent: attribute each module to its top-level package
    heavy = {}
    for s, _c, _d, n in rows:
        heavy[n.split(".")[0]] = heavy.get(n.split(".")[0], 0) + s
    return {"import_tensorflow_s": round(total, 2),
            "self_time_by_top_package_s": {k: round(v / 1e6, 2) for k, v in sorted(heavy.items(), key=lambda kv: -kv[1])[:10]}}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("workdir", type=Path)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--only", default="device-imports,build-phases,tf-import")
    a = p.parse_args()
    out = {}
    for name in a.only.split(","):
        t = time.perf_counter()
        out[name] = {"device-imports": lambda: device_imports(a.workdir, a.reps),
                     "build-phases": lambda: build_phases(a.workdir, a.reps),
                     "tf-import": lambda: tf_import(a.reps)}[name]()
        print(f"{name}: {time.perf_counter() - t:.0f}s", file=sys.stderr)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
