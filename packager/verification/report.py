"""The verdict: run a bundle's own device script in each selected runtime's environment on every
group of inputs, compare with the reference outputs (:mod:`packager.compare`), and say MATCH or
MISMATCH with the evidence it rests on (:class:`VerifyReport`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import EdgepackError, EnvironmentProblem, UsageError
from ..load.calibration import WEAK_EVIDENCE, Dataset
from ..bundle.manifest import RuntimeStatus
from .emulator import RuntimeResult, get_env, host_arch, verify_in_env


@dataclass
class VerifyReport:
    """The verdict of a verification: per runtime its status and per-output metrics, the inputs
    it rests on (``evidence``), and ``passed``. ``failures`` lists what failed in one line each."""
    bundle: str
    recipe: str
    target: str
    passed: bool
    inputs_source: str
    samples: int
    runtimes: list[RuntimeResult]
    model_size: int
    notes: list[str] = field(default_factory=list)
    evidence: str = "held-out"       # calibration.EVIDENCE: what the verdict rests on
    evidence_text: str = ""          # e.g. "held-out: eval.npz, n=100"
    strict: bool = False             # weak evidence fails, and so does a runtime left out
    require_all: bool = False        # every runtime must pass (--strict, or --runtime given)
    first_divergence: str | None = None  # "first divergence: op 7 SOFTMAX 'probs' - ..." (diagnose)
    device: dict | None = None       # a verdict computed on a real device: its facts (deploy.ondevice)

    @property
    def weak(self) -> bool:
        """True when the verdict rests on inputs that were not held out (calibration, synthetic)."""
        return self.evidence in WEAK_EVIDENCE

    @property
    def verdict(self) -> str:
        """``MATCH``; ``UNVERIFIED`` when no runtime loaded and ran the bundle (nothing was compared); else
        ``MISMATCH``."""
        if self.passed:
            return "MATCH"
        if not any(r.status in ("passed", "failed") for r in self.runtimes):
            return "UNVERIFIED"
        return "MISMATCH"

    @property
    def exit_code(self) -> int:
        """0 for MATCH, 7 for UNVERIFIED, 4 for MISMATCH (README, "Exit codes")."""
        from ..errors import Unverified, VerificationError
        return {"MATCH": 0, "UNVERIFIED": Unverified.exit_code}.get(self.verdict, VerificationError.exit_code)

    def line(self) -> str:
        """The verdict and what it rests on, in one line: ``MATCH (held-out: eval.npz, n=397): decisions 397/397,
        accuracy 0.977 → 0.975 (-0.2 pt ≤ 1), values within limits on 10 columns``. The figures are the worst over
        the runtimes that ran."""
        ran = [r for r in self.runtimes if r.status in ("passed", "failed")]
        parts = []
        if ran:
            parts += _rests_on([m for r in ran for m in r.metrics])
        else:
            parts.append("no runtime could run the bundle: nothing was compared")
        evidence = self.evidence_text or f"{self.inputs_source}, n={self.samples}"
        where = f" on {self.device.get('device')}" if self.device else ""
        return f"{self.verdict}{where} ({evidence}): " + ", ".join(parts)

    @property
    def failures(self) -> list[str]:
        """One line per failure: each failing output with its reasons; a runtime that could not run (status error
        when no runtime passed, error or unavailable when every runtime must pass); the first divergence after the
        first line; weak evidence under ``strict``."""
        out = []
        for r in self.runtimes:
            if r.status in ("error", "unavailable"):
                if self.require_all or r.status == "error" and not any(x.status == "passed" for x in self.runtimes):
                    out.append(f"{r.runtime} {r.version} ({r.arch}): {r.error}")
            elif r.status == "failed":
                out += [f"{r.runtime} {r.version} ({r.arch}) output {m.name!r}: " + "; ".join(m.reasons)
                        for m in r.metrics if not m.passed]
        if out and self.first_divergence:   # after the first numbers, before a long list is cut
            out.insert(1, self.first_divergence)
        if self.strict and self.device and self.device.get("differs"):
            out += [f"--strict: this device differs from what the bundle was verified with: {d}"
                    for d in self.device["differs"]]
        if self.strict and self.weak:
            out.append(f"--strict: the verdict rests on weak evidence ({self.evidence_text}); pass --data with "
                       "held-out inputs")
        return out

    def to_json(self) -> dict:
        """JSON of the report: bundle, recipe, target, passed, inputs, samples, model size (bytes), evidence (kind,
        weak, text), runtimes, failures, notes, first divergence and, for a verdict computed on a device, its facts
        (``device``: device, release, machine, os, cpu, cores, python, numpy, runtime, runtime_version, threads,
        differs)."""
        return {"bundle": self.bundle, "recipe": self.recipe, "target": self.target, "passed": self.passed,
                "verdict": self.verdict, "line": self.line(),
                "inputs": self.inputs_source, "samples": self.samples, "model_size": self.model_size,
                "evidence": {"kind": self.evidence, "weak": self.weak, "text": self.evidence_text},
                "runtimes": [r.to_json() for r in self.runtimes], "failures": self.failures, "notes": self.notes,
                "first_divergence": self.first_divergence, "device": self.device}

    def __repr__(self) -> str:
        runtimes = ", ".join(f"{r.runtime}={r.status}" for r in self.runtimes)
        return (f"VerifyReport({self.verdict}, recipe={self.recipe}, target={self.target}, "
                f"evidence={self.evidence_text or self.inputs_source!r}, {runtimes})")

    def summary(self) -> dict:
        """The manifest's copy: no histograms, no timings (two builds of the same inputs must give
        byte-identical bundles)."""
        data = self.to_json()
        data["bundle"] = "."
        for r in data["runtimes"]:
            r.pop("seconds", None)
            for o in r["outputs"]:
                o.pop("histogram", None)
                o.pop("plots", None)
        return data


def report_from_summary(summary: dict | None, bundle) -> VerifyReport | None:
    """The :class:`VerifyReport` a manifest's verification summary (:meth:`VerifyReport.summary`) records, for a
    bundle that was not rebuilt (its histograms, plots and timings were never recorded); None when the summary is
    missing or unreadable."""
    from ..compare import OutputMetrics
    if not isinstance(summary, dict) or "runtimes" not in summary:
        return None
    try:
        runtimes = [RuntimeResult(r["runtime"], r["version"], r["arch"], RuntimeStatus(r["status"]), r.get("error"),
                                  [OutputMetrics(**m) for m in r.get("outputs") or []], 0.0, r.get("machine"),
                                  r.get("python"), list(r.get("static_problems") or []), r.get("numpy"),
                                  list(r.get("wheels") or []))
                    for r in summary["runtimes"]]
        evidence = summary.get("evidence") or {}
        return VerifyReport(str(bundle), summary["recipe"], summary["target"], bool(summary["passed"]),
                            summary.get("inputs", ""), int(summary.get("samples", 0)), runtimes,
                            int(summary.get("model_size", 0)), notes=list(summary.get("notes") or []),
                            evidence=evidence.get("kind", "held-out"), evidence_text=evidence.get("text", ""),
                            first_divergence=summary.get("first_divergence"))
    except (KeyError, TypeError, ValueError):
        return None


def _rests_on(metrics: list) -> list[str]:
    """The figures a verdict rests on, the worst runtime's for each: decisions kept, accuracy, value columns
    within limits, the rare classes' score R² (an output one class dominates), rows capped at an output's quantized
    range, nearest neighbours kept, and the criteria that failed."""
    parts = []
    flips = [f for m in metrics for f in m.findings if f["criterion"] == "decisions"]
    if flips:
        judged = min(f["detail"]["judged"] for f in flips)
        kept = min(f["detail"]["judged"] - f["detail"]["flipped"] for f in flips)
        parts.append(f"decisions {kept}/{judged}")
    accs = [f for m in metrics for f in m.findings if f["criterion"] == "accuracy" and "reference" in f["detail"]]
    if accs:
        worst = max(accs, key=lambda f: f["figure"])
        d = worst["detail"]
        parts.append(f"accuracy {d['reference']:.3f} → {d['bundle']:.3f} ({-worst['figure']:+.1f} pt, limit "
                     f"{worst['limit']:g})")
    cols = [(m.name, f) for m in metrics for f in m.findings if f["criterion"] == "column error"]
    if cols:                    # per output, the worst runtime; summed over the outputs
        names = {n for n, _ in cols}
        bad = sum(max(f["detail"]["failing"] for n2, f in cols if n2 == n) for n in names)
        total = sum(max(f["detail"]["columns"] for n2, f in cols if n2 == n) for n in names)
        parts.append(f"values within limits on {total - bad} of {total} columns" if bad else
                     f"values within limits on {total} columns")
    shaky = [f["detail"]["unstable_text"] for m in metrics for f in m.findings if "unstable_text" in f["detail"]]
    if shaky:               # cells the model itself cannot hold at the recipe's input resolution
        parts.append(max(shaky, key=lambda t: int(t.split()[0])))
    rare = [f for m in metrics for f in m.findings if f["criterion"] == "rare-class scores"]
    if rare:                    # the worst rare class over the outputs and runtimes, and what dominates
        worst = min(rare, key=lambda f: f["figure"])
        d = worst["detail"]
        c = min(d["classes"], key=lambda x: x["r2"])
        parts.append(f"rare-class scores R² {worst['figure']:.4f} (class {c['class']}; class {d['dominant']} wins "
                     f"{round(d['share'] * d['judged'])} of {d['judged']})")
    capped = [f for m in metrics for f in m.findings if f["criterion"] == "saturation" and not f["passed"]]
    if capped:
        worst = max(capped, key=lambda f: f["figure"])
        parts.append(f"{worst['detail']['rows']} of {worst['detail']['judged']} rows capped at the output's range "
                     f"[{worst['detail']['low']:.4g}, {worst['detail']['high']:.4g}]")
    rows = [f for m in metrics for f in m.findings if f["criterion"] == "neighbours"]
    if rows:
        worst = max(rows, key=lambda f: f["figure"])
        parts.append(f"nearest neighbours {worst['detail']['judged'] - worst['detail']['changed']}/"
                     f"{worst['detail']['judged']} kept")
    failing = sorted({f["criterion"] for m in metrics for f in m.findings if not f["passed"]})
    if failing:
        parts.append("failing: " + ", ".join(failing))
    return parts or ["no criterion applied"]


JOBS_ENV = "EDGEPACK_VERIFY_JOBS"


def verify_jobs() -> int:
    """How many runtime environments verify at once: ``EDGEPACK_VERIFY_JOBS``, default the CPUs this process may use
    (each runtime is one process running the device script)."""
    import os
    raw = os.environ.get(JOBS_ENV)
    if raw:
        try:
            return max(1, int(raw))
        except ValueError:
            raise UsageError(f"{JOBS_ENV}={raw!r} is not a number of parallel runtimes") from None
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _python_note(profile, arch, ready) -> list[str]:
    """A note when the runtimes ran under another Python than the target's devices run (``profile.python``, "3.12"):
    on this host's architecture the environments use the host's Python; under qemu (arm64) they use the profile's."""
    import platform
    import sys
    want = str(getattr(profile, "python", "") or "")
    host = f"{sys.version_info[0]}.{sys.version_info[1]}"
    if not ready or not want or (arch or host_arch()) != host_arch() or want == host:
        return []
    from .arm64 import suite_for
    emulated = f"`--arch arm64` verifies under Python {want} in qemu; " if suite_for(want) else ""
    return [f"verified under this host's Python {platform.python_version()} ({host_arch()}); {profile.name} devices run "
            f"Python {want}: the same script and runtime version, other wheels. {emulated}`edgepack verify BUNDLE "
            "--reference MODEL --host/--serial DEVICE` runs it on the device itself"]


def runtime_budget(data: Dataset) -> float | None:
    """Seconds one runtime's run over the synthetic check samples may take (``EDGEPACK_VERIFY_BUDGET``, as the
    reference's sizing in :func:`packager.convert.jobs.sized_to_budget`), None when the count is not to be cut here:
    held-out or calibration data, length variants, a pinned count (``EDGEPACK_VERIFY_SAMPLES``), budget 0, or no
    more than the floor."""
    import os
    from ..convert.jobs import SAMPLE_FLOOR, verify_budget
    if data.evidence != "synthetic" or data.variants or os.environ.get("EDGEPACK_VERIFY_SAMPLES", "").strip() \
            or data.count <= SAMPLE_FLOOR:
        return None
    budget = verify_budget()
    return budget if budget > 0 else None


def _sized_by_slowest(bundle: Path, manifest, ready: list, data: Dataset, references: list, tol, noise, steps,
                      host_outputs, use_cache: bool, budget: float, progress, each) -> tuple[Dataset, list]:
    """Verification sized by the slowest runtime (issue 23: tflite-runtime 2.14 ran the Transformer 3.5x slower than
    ai-edge-litert, which the reference's cost cannot see). Every runtime runs the first :data:`SAMPLE_FLOOR`
    samples, timed (less the script's start-up without a model, its ``--info`` call: the model's loading stays in, so
    the cost per sample is never below the real one); the count then halves from
    ``data.count`` while the slowest runtime's cost per sample times the count exceeds ``budget``; the runtimes
    run the rest of that count, and every verdict is judged on the same first samples. A cut count is said in the
    notes with the figures it came from (the reference's own cut note is replaced). (``data`` as judged, results)."""
    import re
    from ..convert.jobs import SAMPLE_FLOOR
    from .emulator import judge, run_for_verdict, start_up_seconds
    scales = steps if steps is not None else {t.name: t.scale for t in manifest.outputs if t.quantized}
    total, first = data.count, SAMPLE_FLOOR

    def phase1(item):
        k, env, static = item
        progress(f"verifying with {env.runtime} ({env.arch})")
        result = RuntimeResult(env.runtime, env.version, env.arch, RuntimeStatus.ERROR, static_problems=list(static),
                               wheels=list(env.wheels))
        run, reused = run_for_verdict(env, bundle, manifest, data.inputs, first, host_outputs, use_cache, result)
        return k, env, result, run, reused
    ran = each(phase1, ready)
    timed = [(max(0.0, run.seconds - start_up_seconds(env)) / first, env)
             for _, env, _, run, reused in ran if run.ok and not reused]
    n = total
    per, slowest = max(timed, key=lambda t: t[0]) if timed else (0.0, None)
    while n > first and n * per > budget:
        n //= 2
    n = max(n, first)

    def phase2(entry):
        import numpy as np
        k, env, result, run, reused = entry
        if not run.ok:
            result.error = run.error
            return k, result
        outputs = run.outputs
        if n > first and not reused:
            rest = {key: v[first:n] for key, v in data.inputs.items()}
            more = run_for_verdict(env, bundle, manifest, rest, n - first, None, use_cache, result)[0]
            if not more.ok:
                result.seconds += more.seconds
                result.error = more.error
                return k, result
            outputs = {key: np.concatenate([outputs[key], more.outputs[key]]) for key in outputs}
            result.seconds += more.seconds
        elif reused:
            outputs = {key: np.asarray(v)[:n] for key, v in host_outputs.items()}
        result.seconds += run.seconds
        result.machine, result.python = run.info.get("machine"), run.info.get("python")
        result.numpy = run.info.get("numpy")
        cut = data.head(n)
        refs = [{key: v[:n] for key, v in references[0].items()}]
        return k, judge(result, cut.groups, refs, [outputs], tol, scales, cut.labels, noise)
    done = each(phase2, ran)
    if n < total:
        cut = data.head(n)
        said = re.compile(rf"^verified on {total} of (\d+) synthetic samples")
        whole = next((int(m.group(1)) for m in map(said.match, data.notes) if m), total)
        cut.notes = [note for note in data.notes if not said.match(note)] + [
            f"verified on {n} of {whole} synthetic samples: the slowest runtime here, {slowest.describe()}, took "
            f"{per:.3f} s per sample on the first {first} (model loading included), and each run over the samples is sized "
            f"to about {budget:g} s (EDGEPACK_VERIFY_BUDGET; EDGEPACK_VERIFY_SAMPLES=N pins the count; --data with "
            "held-out inputs uses them all)"]
        data = cut
    return data, done


def verify_staged(bundle: Path, manifest, profile, rec, selected, data: Dataset, references: list, spec, arch,
                  progress, use_cache: bool = False, tolerance=None, strict: bool = False,
                  require_all: bool = False, noise: dict | None = None,
                  host_outputs: dict | None = None) -> VerifyReport:
    """Run the staged bundle in each selected runtime's environment on every group of ``data``
    and compare with ``references`` (one dict of outputs per group) by the criteria of each output's kind
    (``tolerance``: {output: Tolerance}; a kind not yet settled is inferred from the bundle's graph);
    ``noise``: the model's own float noise per output (:func:`packager.convert.jobs.float_noise`);
    ``host_outputs``: the conversion check's outputs of this model on ``data``'s first group (in-process
    ai-edge-litert), which may stand for the same runtime's (:func:`~packager.verification.emulator.verify_in_env`)."""
    from ..compare import with_kinds
    from ..convert.inspect import output_ops
    results, rebuilt = [], []
    tol = tolerance or {n: rec.tolerance for n in references[0]}
    ops = output_ops((bundle / manifest.model).read_bytes(), spec.outputs)
    tol = with_kinds(tol, references[0], data.labels, ops)
    steps = {n: step for n, (_, step) in ops.items() if step}
    ready = []                        # (index, env, static problems): prepared one at a time (pip, progress)
    for rt in selected:
        static = spec.runtime_problems(rt.name)
        try:
            env = get_env(rt, arch, profile.python, progress=lambda msg, *_: progress(msg))
        except EdgepackError as exc:
            results.append(RuntimeResult(rt.name, "", arch or host_arch(), RuntimeStatus.UNAVAILABLE, error=exc.message,
                                         static_problems=static))
            continue
        results.append(None)
        ready.append((len(results) - 1, env, static))
        if env.note:
            rebuilt.append(env.note)

    def run(item):
        k, env, static = item
        progress(f"verifying with {env.runtime} ({env.arch})")
        return k, verify_in_env(env, bundle, data.groups, references, tol, data.labels, static,
                                use_cache=use_cache, noise=noise, steps=steps, host_outputs=host_outputs)
    # The runtimes run side by side (each its own process): one core each, up to EDGEPACK_VERIFY_JOBS
    jobs = min(len(ready), verify_jobs())

    def each(fn, items):
        if jobs > 1:
            from concurrent.futures import ThreadPoolExecutor
            with ThreadPoolExecutor(jobs) as pool:
                return list(pool.map(fn, items))
        return [fn(item) for item in items]
    budget = runtime_budget(data)
    if budget is None:
        done = each(run, ready)
    else:
        data, done = _sized_by_slowest(bundle, manifest, ready, data, references, tol, noise, steps, host_outputs,
                                       use_cache, budget, progress, each)
    for k, result in done:
        results[k] = result
    unavailable = [r for r in results if r.status == "unavailable"]
    if len(unavailable) == len(results):
        raise EnvironmentProblem("no runtime environment could be prepared: "
                                 + "; ".join(f"{r.runtime}: {r.error}" for r in unavailable),
                                 hint="fix the host (see `edgepack doctor`), or pass --no-verify to build unverified")
    # A runtime that cannot load the model is reported and left out of the bundle's runtimes;
    # a runtime that runs it and computes something else fails the bundle.
    loaded_ok = [r for r in results if r.status in ("passed", "failed")]
    passed = bool(loaded_ok) and all(r.status == "passed" for r in loaded_ok)
    notes = [f"{r.runtime} cannot run this model: {r.error}" for r in results if r.status == "error"]
    notes += [f"{r.runtime} was not verified (host environment problem): {r.error}" for r in unavailable]
    notes += [r.evidence for r in results if getattr(r, "evidence", None)]
    notes += rebuilt + list(data.notes)
    notes += _python_note(profile, arch, ready)
    report = VerifyReport(str(bundle), rec.name, profile.name, passed, data.source, data.count, results,
                          manifest.model_size, notes=notes, evidence=data.evidence, evidence_text=data.describe(),
                          strict=strict, require_all=strict or require_all)
    if report.require_all:
        report.passed = passed and all(r.status == "passed" for r in results)
    if strict and report.weak:
        report.passed = False
    return report
