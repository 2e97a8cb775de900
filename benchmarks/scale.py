#!/usr/bin/env python3
"""edgepack at real scale (issues 15 and 23): five sizes from an MLP to ResNet50 (MLP 0.67 M, MobileNetV2 3.5 M,
EfficientNetV2B0 7.2 M, a 6-layer Transformer encoder 19 M, ResNet50 25.6 M; scale_models.py, seeded, nothing
downloaded), float32 and int8, as ratios against the bare converter measured in the same run, interleaved, median
over repetitions (with the spread), and the growth law (seconds and MiB per million parameters and per GFLOP).

    .venv/bin/python benchmarks/scale.py --only build --reps 1 --workdir /tmp/scale   # ~20-30 min on 2 loaded cores
    .venv/bin/python benchmarks/scale.py --reps 5 --only build,device --arm64-samples 1,3
    options: --reps N  --workdir DIR (keep models/bundles)  --out DIR (default benchmarks/results/scale)
             --only build,device,arm64  --models mlp,mobilenet,efficientnet,transformer,resnet50,lstm
             --recipes float32,int8

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
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run import PY, ROOT, fresh_cache, loadavg, log, machine_info, med, must, run, runtime_envs  # noqa: E402

GOALS = {      # issue 23
    "build_time": ("edgepack build (verification in both runtimes) / bare convert", "<=",
                   {"resnet50": 1.3, "transformer": 1.3, "mobilenet": 1.1}),
    "build_rss": ("peak RSS of edgepack build / bare convert", "<=", {"resnet50": 1.2}),
    "rebuild": ("unchanged rebuild / first build", "<=", {"resnet50": 0.02}),
    "refusal": ("a refused build / bare convert", "<=", 1.5),
    "device": ("device script / bare interpreter loop, whole process, MobileNetV2", "<=", 1.05),
}
EDGEPACK_ENV = {"PYTHONPATH": str(ROOT)}


def spread(values) -> str:
    values = [v for v in values if v is not None]
    return f"{min(values):.3f}-{max(values):.3f}" if values else "-"


def edgepack(*args) -> list:
    return [PY, "-m", "packager.cli", *map(str, args)]


def section_build(work: Path, models, reps: int, recipes=("float32",)) -> dict:
    """Per model and recipe: the bare convert and `edgepack build` (empty conversion cache) interleaved, then the
    same build again (unchanged: same cache, same -o). int8 calibrates on the model's cal.npz (16 seeded samples)
    on both sides; a refused edgepack build (exit 4) is measured as such (its exit code is recorded)."""
    res = {}
    for model in models:
        src = work / model / f"{model}.keras"
        info = json.loads((work / model / "info.json").read_text()) if (work / model / "info.json").is_file() else {}
        for recipe in recipes:
            cal = work / model / "cal.npz"
            bare_argv = [PY, HERE / "bare_convert.py", src, cal if recipe == "int8" else "-", work / "bare.tflite"]
            bare_argv += ["batch1"] if model == "lstm" else []
            bare, first, again = [], [], []
            for i in range(reps):
                cache = fresh_cache(work)
                env = dict(os.environ, EDGEPACK_CACHE_DIR=str(cache), **EDGEPACK_ENV)
                out = work / "bundles" / f"{model}-{recipe}"
                shutil.rmtree(out, ignore_errors=True)
                cmd = edgepack("build", src, "-t", "rpi", "-q", recipe, "-o", out, "--json",
                               *(["--calibration", cal] if recipe == "int8" else []))
                log(f"build {model} {recipe} rep {i + 1}/{reps} (load {loadavg()[:1]})")
                order = ("bare", "build") if i % 2 == 0 else ("build", "bare")
                for what in order:
                    if what == "bare":
                        bare.append(must(run(bare_argv, timeout=3600), "bare convert"))
                    else:
                        got = run(cmd, env=env, cwd=ROOT, timeout=3600)
                        if got["rc"] not in (0, 3, 4):
                            must(got, f"edgepack build {model} {recipe}")
                        first.append(got)
                        if got["rc"] == 0:
                            again.append(must(run(cmd, env=env, cwd=ROOT), f"edgepack rebuild {model}"))
                shutil.rmtree(cache, ignore_errors=True)
            pick = lambda rs, k: [r[k] for r in rs]  # noqa: E731
            row = {"params": info.get("params"), "gflops": info.get("gflops"),
                   "bare_s": pick(bare, "wall"), "build_s": pick(first, "wall"), "rebuild_s": pick(again, "wall"),
                   "bare_rss_mb": pick(bare, "rss_mb"), "build_rss_mb": pick(first, "rss_mb"),
                   "rebuild_rss_mb": pick(again, "rss_mb"), "exit": pick(first, "rc"),
                   "ratio_time": [f["wall"] / b["wall"] for f, b in zip(first, bare)],
                   "ratio_rss": [f["rss_mb"] / b["rss_mb"] for f, b in zip(first, bare)],
                   "ratio_rebuild": [a["wall"] / f["wall"] for a, f in zip(again, first)]}
            try:
                data = json.loads(first[-1]["stdout"])
            except ValueError:
                data = {}
            if data.get("manifest"):
                m = data["manifest"]
                row.update(conversion_path=m["source"]["conversion_path"], model_size=m["model_size"],
                           verification=(m["verification"].get("evidence") or {}).get("text"),
                           notes=m["verification"].get("notes"))
            else:
                err = data.get("error")
                row["refusal"] = (err.get("message") if isinstance(err, dict) else err) or first[-1]["stderr"][-400:]
            if again:
                try:
                    row["rebuild_unchanged"] = json.loads(again[-1]["stdout"]).get("unchanged")
                except ValueError:
                    pass
            res[f"{model}/{recipe}"] = row
            (work / "partial.json").write_text(json.dumps(res, indent=1, default=str))
    return res


def growth(build: dict) -> dict:
    """The growth law: least-squares slope of wall seconds and peak MiB against millions of parameters and
    against GFLOPs of one inference, for edgepack build and the bare convert (float32 rows)."""
    rows = [(v["params"] / 1e6, v["gflops"], med(v["build_s"]), med(v["bare_s"]), med(v["build_rss_mb"]),
             med(v["bare_rss_mb"])) for k, v in build.items() if k.endswith("/float32") and v.get("params")]
    if len(rows) < 2:
        return {}

    def slope(xs, ys):
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        den = sum((x - mx) ** 2 for x in xs)
        return (sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den) if den else None
    out = {}
    for axis, col in (("per_mparam", 0), ("per_gflop", 1)):
        xs = [r[col] for r in rows]
        out[axis] = {"edgepack_s": slope(xs, [r[2] for r in rows]), "bare_s": slope(xs, [r[3] for r in rows]),
                     "edgepack_mib": slope(xs, [r[4] for r in rows]), "bare_mib": slope(xs, [r[5] for r in rows])}
    return out


def section_device(work: Path, envs, reps: int, threads=(1, 2)) -> dict:
    import numpy as np
    bundle = work / "bundles" / "mobilenet-float32"
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
    bundle = work / "bundles" / "mobilenet-float32"
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
        lines += ["| model / recipe | params | GFLOPs | bare convert | build | build / bare | RSS bare | RSS build "
                  "| RSS build / bare | rebuild | rebuild / build | exit | verified on |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for key, v in results["build"].items():
            rt, rm, rr = med(v["ratio_time"]), med(v["ratio_rss"]), med(v["ratio_rebuild"])
            p = f"{v['params'] / 1e6:.2f} M" if v.get("params") else "-"
            g = f"{v['gflops']:.3f}" if v.get("gflops") is not None else "-"
            lines.append(
                f"| {key} | {p} | {g} | {med(v['bare_s']):.1f} s | {med(v['build_s']):.1f} s | **{rt:.2f}** "
                f"[{spread(v['ratio_time'])}] | {med(v['bare_rss_mb']):.0f} MiB | {med(v['build_rss_mb']):.0f} MiB | "
                f"**{rm:.2f}** | " + (f"{med(v['rebuild_s']):.2f} s | **{rr:.3f}** |" if rr is not None else "- | - |")
                + f" {','.join(map(str, v['exit']))} | {v.get('verification') or (v.get('refusal') or '')[:80]} |")
        lines.append("")
        law = results.get("growth") or {}
        if law:
            lines += ["| growth (float32 rows, least squares) | edgepack s | bare s | edgepack MiB | bare MiB |",
                      "|---|---|---|---|---|"]
            for axis, v in law.items():
                f = lambda x: "-" if x is None else f"{x:.2f}"  # noqa: E731
                lines.append(f"| {axis.replace('_', ' ')} | {f(v['edgepack_s'])} | {f(v['bare_s'])} | "
                             f"{f(v['edgepack_mib'])} | {f(v['bare_mib'])} |")
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
    ap.add_argument("--models", default="mlp,mobilenet,efficientnet,transformer,resnet50")
    ap.add_argument("--recipes", default="float32,int8")
    ap.add_argument("--arm64-samples", default="1,3")
    args = ap.parse_args()
    only = set(args.only.split(","))
    work = Path(args.workdir or tempfile.mkdtemp(prefix="edgepack-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    missing = [m for m in args.models.split(",") if not (work / m / "info.json").is_file()]
    if missing:
        log(f"building the benchmark models {', '.join(missing)}")
        must(run([PY, HERE / "scale_models.py", work, *missing], timeout=3600), "scale_models.py")
    envs = runtime_envs()
    results = {"machine": machine_info(envs), "reps": args.reps}
    if "build" in only:
        results["build"] = section_build(work, args.models.split(","), args.reps, args.recipes.split(","))
        results["growth"] = growth(results["build"])
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
