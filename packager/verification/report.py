"""The verdict: run a bundle's own device script in each selected runtime's environment on every
group of inputs, compare with the reference outputs (:mod:`packager.compare`), and say MATCH or
MISMATCH with the evidence it rests on (:class:`VerifyReport`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import EdgepackError, EnvironmentProblem
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

    @property
    def weak(self) -> bool:
        """True when the verdict rests on inputs that were not held out (calibration, synthetic)."""
        return self.evidence in WEAK_EVIDENCE

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
        if self.strict and self.weak:
            out.append(f"--strict: the verdict rests on weak evidence ({self.evidence_text}); pass --data with "
                       "held-out inputs")
        return out

    def to_json(self) -> dict:
        """JSON of the report: bundle, recipe, target, passed, inputs, samples, model size (bytes), evidence (kind,
        weak, text), runtimes, failures, notes and first divergence."""
        return {"bundle": self.bundle, "recipe": self.recipe, "target": self.target, "passed": self.passed,
                "inputs": self.inputs_source, "samples": self.samples, "model_size": self.model_size,
                "evidence": {"kind": self.evidence, "weak": self.weak, "text": self.evidence_text},
                "runtimes": [r.to_json() for r in self.runtimes], "failures": self.failures, "notes": self.notes,
                "first_divergence": self.first_divergence}

    def __repr__(self) -> str:
        runtimes = ", ".join(f"{r.runtime}={r.status}" for r in self.runtimes)
        return (f"VerifyReport({'MATCH' if self.passed else 'MISMATCH'}, recipe={self.recipe}, target={self.target}, "
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


def verify_staged(bundle: Path, manifest, profile, rec, selected, data: Dataset, references: list, spec, arch,
                  progress, use_cache: bool = False, tolerance=None, strict: bool = False,
                  require_all: bool = False) -> VerifyReport:
    """Run the staged bundle in each selected runtime's environment on every group of ``data``
    and compare with ``references`` (one dict of outputs per group)."""
    results = []
    tol = tolerance or rec.tolerance
    for rt in selected:
        static = spec.runtime_problems(rt.name)
        progress(f"verifying with {rt.name} ({arch or host_arch()})")
        try:
            env = get_env(rt, arch, profile.python, progress=lambda msg, *_: progress(msg))
        except EdgepackError as exc:
            results.append(RuntimeResult(rt.name, "", arch or host_arch(), RuntimeStatus.UNAVAILABLE, error=exc.message,
                                         static_problems=static))
            continue
        results.append(verify_in_env(env, bundle, data.groups, references, tol, data.labels, static,
                                     use_cache=use_cache))
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
    notes += list(data.notes)
    report = VerifyReport(str(bundle), rec.name, profile.name, passed, data.source, data.count, results,
                          manifest["model_size"], notes=notes, evidence=data.evidence, evidence_text=data.describe(),
                          strict=strict, require_all=strict or require_all)
    if report.require_all:
        report.passed = passed and all(r.status == "passed" for r in results)
    if strict and report.weak:
        report.passed = False
    return report
