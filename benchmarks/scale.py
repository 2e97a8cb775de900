#!/usr/bin/env python3
"""edgepack at real scale (issue 15): a MobileNetV2-size model and an LSTM, as ratios against
yardsticks measured in the same run, interleaved, median over repetitions (with the spread).

    .venv/bin/python benchmarks/scale.py                  # 3 repetitions, all sections, ~15-20 min
    .venv/bin/python benchmarks/scale.py --reps 5 --only build,device --arm64-samples 1,3
    options: --reps N  --workdir DIR (keep models/bundles)  --out DIR (default benchmarks/results/scale)
             --only build,device,arm64  --models mobilenet,lstm

Sections:
- build:  `edgepack build -q float32` (verification in both rpi runtimes, synthetic inputs, an empty
  conversion cache) vs bare_convert.py (Keras load + TFLiteConverter.from_keras_model + write):
  wall time and peak RSS (wait4, i.e. the largest single process of the tree); then the same
  command again (unchanged model) vs that first build.
- device: the bundle's edgepack_run.py --input/--output --threads T vs bare_loop.py (same batch,
  same threads) on the MobileNetV2 bundle, whole process (interpreter init included), per runtime.
- arm64:  the device script under qemu-user in the arm64 env (`edgepack doctor`) on 1 and N samples:
  per-sample cost = (t(N) - t(1)) / (N - 1), plus the fixed cost of a run.
Like run.py, the orchestrator never imports TensorFlow; edgepack runs from this checkout
(`python -m packager.cli`, PYTHONPATH=checkout).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run import PY, ROOT, fresh_cache, loadavg, log, machine_info, med, must, run, runtime_envs  # noqa: E402

GOALS = {
    "build_time": ("edgepack build (with verification) / bare convert", "<=", 1.10),
    "build_rss": ("peak RSS of edgepack build / bare convert", "<=", 1.10),
    "rebuild": ("rebuild of an unchanged model / first build", "<=", 0.10),
    "device": ("device script / bare interpreter loop, whole process, MobileNetV2", "<=", 1.05),
}
EDGEPACK_ENV = {"PYTHONPATH": str(ROOT)}


def spread(values) -> str:
    values = [v for v in values if v is not None]
    return f"{min(values):.3f}-{max(values):.3f}" if values else "-"


def edgepack(*args) -> list:
    return [PY, "-m", "packager.cli", *map(str, args)]


def section_build(work: Path, models, reps: int) -> dict:
    res = {}
    for model in models:
        src = work / model / f"{model}.keras"
        bare_argv = [PY, HERE / "bare_convert.py", src, "-", work / "bare.tflite"] + (["batch1"] if model == "lstm" else [])
        bare, first, again = [], [], []
        for i in range(reps):
            cache = fresh_cache(work)
            env = dict(os.environ, EDGEPACK_CACHE_DIR=str(cache), **EDGEPACK_ENV)
            out = work / "bundles" / model
            shutil.rmtree(out, ignore_errors=True)
            cmd = edgepack("build", src, "-t", "rpi", "-q", "float32", "-o", out, "--json")
            log(f"build {model} rep {i + 1}/{reps} (load {loadavg()[:1]})")
            order = ("bare", "build") if i % 2 == 0 else ("build", "bare")
            for what in order:
                if what == "bare":
                    bare.append(must(run(bare_argv), "bare convert"))
                else:
                    first.append(must(run(cmd, env=env, cwd=ROOT), f"edgepack build {model}"))
                    again.append(must(run(cmd, env=env, cwd=ROOT), f"edgepack rebuild {model}"))
            if i < reps - 1:
                shutil.rmtree(cache, ignore_errors=True)
        pick = lambda rs, k: [r[k] for r in rs]  # noqa: E731
        ratios_t = [f["wall"] / b["wall"] for f, b in zip(first, bare)]
        ratios_m = [f["rss_mb"] / b["rss_mb"] for f, b in zip(first, bare)]
        ratios_r = [a["wall"] / f["wall"] for a, f in zip(again, first)]
        manifest = json.loads(first[-1]["stdout"])["manifest"]
        res[model] = {"bare_s": pick(bare, "wall"), "build_s": pick(first, "wall"), "rebuild_s": pick(again, "wall"),
                      "bare_rss_mb": pick(bare, "rss_mb"), "build_rss_mb": pick(first, "rss_mb"),
                      "rebuild_rss_mb": pick(again, "rss_mb"),
                      "ratio_time": ratios_t, "ratio_rss": ratios_m, "ratio_rebuild": ratios_r,
                      "conversion_path": manifest["source"]["conversion_path"], "model_size": manifest["model_size"],
                      "verification": manifest["verification"].get("evidence")}
    return res


def section_device(work: Path, envs, reps: int, threads=(1, 2)) -> dict:
    import numpy as np
    bundle = work / "bundles" / "mobilenet"
    if not (bundle / "manifest.json").is_file():
        must(run(edgepack("build", work / "mobilenet" / "mobilenet.keras", "-t", "rpi", "-q", "float32", "-o", bundle),
                 env=dict(os.environ, **EDGEPACK_ENV), cwd=ROOT), "building the MobileNetV2 bundle")
    src = work / "mobilenet" / "eval.npz"
    with np.load(src) as npz:
        n = npz["x"].shape[0]
    out_name = json.loads((bundle / "manifest.json").read_text())["outputs"][0]["name"]
    res = {}
    for env in envs:
        for t in threads:
            key = f"{env.runtime}/threads={t}"
            dev_out, bare_out = work / "dev.npz", work / "bare.npz"
            variants = {"device": [*env.argv, bundle / "edgepack_run.py", "--input", src, "--output", dev_out,
                                   "--threads", t],
                        "bare": [*env.argv, HERE / "bare_loop.py", env.module, bundle / "model.tflite", src, bare_out,
                                 out_name, n, t]}
            for argv in variants.values():            # warm the page cache
                must(run(argv, env=env.env), key)
            with np.load(dev_out) as a, np.load(bare_out) as b:
                diff = float(np.max(np.abs(a[out_name] - b[out_name])))
            runs = {"device": [], "bare": []}
            log(f"device {key}")
            for i in range(reps):
                for name in (("device", "bare") if i % 2 == 0 else ("bare", "device")):
                    runs[name].append(must(run(variants[name], env=env.env), key))
            res[key] = {"device_s": [r["wall"] for r in runs["device"]], "bare_s": [r["wall"] for r in runs["bare"]],
                        "device_cpu_s": [r["cpu"] for r in runs["device"]], "bare_cpu_s": [r["cpu"] for r in runs["bare"]],
                        "device_rss_mb": [r["rss_mb"] for r in runs["device"]],
                        "bare_rss_mb": [r["rss_mb"] for r in runs["bare"]],
                        "ratio": [d["wall"] / b["wall"] for d, b in zip(runs["device"], runs["bare"])],
                        "samples": n, "max_abs_diff": diff}
    return res


def section_arm64(work: Path, counts=(1, 3)) -> dict:
    import numpy as np
    from packager.verification.emulator import get_env
    from packager.targets import get_target
    bundle = work / "bundles" / "mobilenet"
    res = {}
    with np.load(work / "mobilenet" / "eval.npz") as npz:
        x = npz["x"]
    for rt in get_target("rpi").runtimes:
        try:
            env = get_env(rt, "arm64", get_target("rpi").python)
        except Exception as exc:  # noqa: BLE001 - reported, not fatal
            res[rt.name] = {"skipped": str(getattr(exc, "message", exc))}
            continue
        times = {}
        for n in counts:
            src = work / f"arm64-{n}.npz"
            np.savez(src, x=x[:n])
            log(f"arm64 {rt.name}: {n} sample(s)")
            r = run([*env.argv, bundle / "edgepack_run.py", "--input", src, "--output", work / "arm64-out.npz"],
                    env=env.env, timeout=3600)
            if r["rc"] != 0:
                res[rt.name] = {"skipped": f"exit {r['rc']}: {r['stderr'][-300:]}"}
                break
            times[n] = r["wall"]
        else:
            lo, hi = min(counts), max(counts)
            res[rt.name] = {"seconds": times, "per_sample_s": (times[hi] - times[lo]) / (hi - lo),
                            "fixed_s": times[lo] - (times[hi] - times[lo]) / (hi - lo) * lo}
    return res


def verdict(value, op, goal) -> str:
    if value is None:
        return "-"
    return "meets" if (value <= goal if op == "<=" else value >= goal) else "**misses**"


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [f"Run {m['date']}, commit {m['git']}{' + uncommitted ' + ', '.join(m['dirty']) if m['dirty'] else ''}; "
             f"{m['cpu']}, {m['cores']} cores (shared), {m['memory_gib']} GiB; load average at start "
             f"{m['loadavg_start']}, at end {results.get('loadavg_end')}; {results['reps']} interleaved repetitions; "
             "ratio = median of the per-repetition ratios (min-max in brackets).", ""]
    if "build" in results:
        lines += ["| model | bare convert | build | build / bare (goal <= 1.10) | RSS bare | RSS build "
                  "| RSS build / bare (goal <= 1.10) | rebuild | rebuild / build (goal <= 0.10) |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for model, v in results["build"].items():
            rt, rm, rr = med(v["ratio_time"]), med(v["ratio_rss"]), med(v["ratio_rebuild"])
            lines.append(
                f"| {model} | {med(v['bare_s']):.2f} s | {med(v['build_s']):.2f} s | **{rt:.3f}** [{spread(v['ratio_time'])}] "
                f"{verdict(rt, '<=', 1.10)} | {med(v['bare_rss_mb']):.0f} MiB | {med(v['build_rss_mb']):.0f} MiB | "
                f"**{rm:.3f}** [{spread(v['ratio_rss'])}] {verdict(rm, '<=', 1.10)} | {med(v['rebuild_s']):.2f} s | "
                f"**{rr:.3f}** [{spread(v['ratio_rebuild'])}] {verdict(rr, '<=', 0.10)} |")
        lines.append("")
    if "device" in results:
        lines += ["| MobileNetV2 float32 / runtime | samples | device script | bare loop | ratio (goal <= 1.05) "
                  "| CPU device / bare | RSS device / bare | max abs diff |", "|---|---|---|---|---|---|---|---|"]
        for key, v in results["device"].items():
            r = med(v["ratio"])
            lines.append(f"| {key} | {v['samples']} | {med(v['device_s']):.3f} s | {med(v['bare_s']):.3f} s | "
                         f"**{r:.3f}** [{spread(v['ratio'])}] {verdict(r, '<=', 1.05)} | "
                         f"{med(v['device_cpu_s']):.2f} / {med(v['bare_cpu_s']):.2f} s | "
                         f"{med(v['device_rss_mb']):.0f} / {med(v['bare_rss_mb']):.0f} MiB | {v['max_abs_diff']:.3g} |")
        lines.append("")
    if "arm64" in results:
        lines += ["| arm64 under qemu, MobileNetV2 float32 | runs (samples: seconds) | per sample | fixed per run |",
                  "|---|---|---|---|"]
        for rt, v in results["arm64"].items():
            if "skipped" in v:
                lines.append(f"| {rt} | skipped: {v['skipped'][:200]} | | |")
            else:
                runs = ", ".join(f"{k}: {s:.1f} s" for k, s in v["seconds"].items())
                lines.append(f"| {rt} | {runs} | {v['per_sample_s']:.2f} s | {v['fixed_s']:.1f} s |")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--workdir")
    ap.add_argument("--out", default=str(HERE / "results" / "scale"))
    ap.add_argument("--only", default="build,device,arm64")
    ap.add_argument("--models", default="mobilenet,lstm")
    ap.add_argument("--arm64-samples", default="1,3")
    args = ap.parse_args()
    only = set(args.only.split(","))
    work = Path(args.workdir or tempfile.mkdtemp(prefix="edgepack-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "lstm" / "eval.npz").is_file():
        log("building the benchmark models")
        must(run([PY, HERE / "scale_models.py", work]), "scale_models.py")
    envs = runtime_envs()
    results = {"machine": machine_info(envs), "reps": args.reps}
    if "build" in only:
        results["build"] = section_build(work, args.models.split(","), args.reps)
    if "device" in only:
        results["device"] = section_device(work, envs, max(args.reps, 5))
    if "arm64" in only:
        results["arm64"] = section_arm64(work, tuple(int(c) for c in args.arm64_samples.split(",")))
    results["loadavg_end"] = loadavg()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    text = markdown(results)
    (out / "results.md").write_text(text + "\n")
    print(text)
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
