"""The library API: build, verify, inspect, targets. The CLI is one client of these functions;
they return values and raise :class:`packager.errors.EdgepackError`, and never print."""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .bundle.manifest import Manifest
from .bundle.files import (ENTRYPOINT, ENTRYPOINT_SOURCE, MODEL, Staging, check_files, npz_bytes, read_manifest,
                           sha256_tree, validate_name, write_archive, open_bundle, fault, FORMAT)
from .load.calibration import WEAK_EVIDENCE, Dataset
from .verify.emulator import RuntimeResult, get_env, host_arch, verify_in_env
from .errors import ConversionError, EdgepackError, EnvironmentProblem, UsageError, VerificationError
from .convert.inspect import ModelSpec, inspect_bytes
from .recipes import Recipe, get_recipe, list_recipes, parse_overrides, resolve_tolerance
from .targets import TargetProfile, get_target, list_targets

Progress = Callable[[str], None]

# One rule for input files, the same in the host emulator and the device script (its _prepare).
INPUT_VALUES_RULE = ("input files hold real values in the original model's units, whatever their dtype (uint8 "
                     "pixels are pixel values); a quantized input is quantized by the device script, "
                     "q = round(x / scale) + zero_point; with --raw, integer-typed inputs are already quantized and pass unchanged")


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


@dataclass
class BuildResult:
    """What ``build`` wrote: the bundle directory, its .tar.gz, the manifest, the verification
    report (None with ``verify=False``), every conversion attempt, and warnings to show the user."""
    bundle: Path
    archive: Path
    manifest: Manifest               # the bundle's manifest.json, read back and validated
    verification: VerifyReport | None
    conversion_attempts: list
    warnings: list[str]

    def __repr__(self) -> str:
        return (f"BuildResult(bundle={str(self.bundle)!r}, recipe={self.manifest['recipe']['name']}, "
                f"model_size={self.manifest['model_size']}, path={self.manifest['source']['conversion_path']}, "
                f"verification={self.verification!r})")

    def to_json(self) -> dict:
        manifest = self.manifest.to_json() if hasattr(self.manifest, "to_json") else self.manifest
        return {"bundle": str(self.bundle), "archive": str(self.archive), "manifest": manifest,
                "verification": self.verification.to_json() if self.verification else None,
                "attempts": [a.to_json() for a in self.conversion_attempts], "warnings": self.warnings}


def _noop(_: str) -> None:
    pass


def provenance(model: str | os.PathLike, manifest: dict | None = None, report: VerifyReport | None = None,
               command: list[str] | None = None) -> dict:
    """Where a result came from, for reports: versions (edgepack, TensorFlow, each runtime), the
    model's sha256, the bundle's model sha256, the command. Nothing here imports TensorFlow."""
    import platform
    import shlex
    from importlib import metadata

    from .version import __version__

    def dist(*names):
        for n in names:
            try:
                return metadata.version(n)
            except metadata.PackageNotFoundError:
                continue
        return None
    versions = (manifest or {}).get("versions") or {}
    model = Path(model)
    try:
        model_sha = sha256_tree(model) if model.exists() else None
    except OSError:
        model_sha = None
    data = {"edgepack": __version__, "tensorflow": versions.get("tensorflow") or dist("tensorflow-cpu", "tensorflow"),
            "keras": versions.get("keras") or dist("keras"), "converter": versions.get("converter"),
            "python": platform.python_version(), "host": f"{platform.system()} {platform.machine()}",
            "model": str(model), "model sha256": model_sha}
    if manifest:
        data["bundle"] = manifest.get("name")
        data["bundle model sha256"] = manifest.get("model_sha256")
        data["conversion path"] = (manifest.get("source") or {}).get("conversion_path")
    for r in (report.runtimes if report is not None else []):
        data[f"runtime {r.runtime}"] = " ".join(x for x in (r.version, r.machine or r.arch,
                                                             f"Python {r.python}" if r.python else "") if x)
    if command:
        data["command"] = "edgepack " + shlex.join(command[1:])
    return data


def targets() -> dict[str, TargetProfile]:
    """Target profiles by name."""
    return list_targets()


def recipes() -> dict[str, Recipe]:
    """Quantization recipes by name."""
    return list_recipes()


def _self_test_atol(spec: ModelSpec, expected: dict) -> dict:
    """Self-test tolerance: runtimes and CPUs differ in the last bits, quantized outputs by a step."""
    atol = {}
    for t in spec.outputs:
        peak = float(np.max(np.abs(expected[t.name]))) if expected[t.name].size else 0.0
        tol = 1e-4 + 1e-3 * peak
        if t.quantization:
            tol = max(tol, 2.0 * t.quantization["scale"])
        atol[t.name] = tol
    return atol


def _readme(target: TargetProfile, manifest: dict) -> str:
    name = manifest["name"]
    lines = [f"# {name}: {manifest['source']['path']} for {target.name} ({manifest['recipe']['name']})", "",
             target.description, "", "## Install", ""]
    lines += [f"    {s.replace('{name}', name).replace('{entrypoint}', ENTRYPOINT)}" for s in target.install_steps]
    lines += ["", "Or let edgepack deploy it (checksummed on the device, switched atomically):", "",
              f"    edgepack deploy . {'--host USER@HOST' if target.deploy == 'ssh' else '--serial SERIAL'} --smoke",
              "", "## Run", "", f"    {target.run.replace('{name}', name).replace('{entrypoint}', ENTRYPOINT)}", "",
              f"    python3 {ENTRYPOINT} --self-test          # bundled samples vs expected outputs",
              f"    python3 {ENTRYPOINT} --benchmark 100      # latency on this device", "",
              "Inputs: an .npz keyed by input name (first axis = samples), .npy for one input, or JSON.",
              f"Input values: {INPUT_VALUES_RULE}.",
              "Outputs: an .npz keyed by output name; quantized outputs are dequantized (--raw keeps integers).", "",
              *_fixed_lines(manifest),
              "## Inputs and outputs", ""]
    for kind in ("inputs", "outputs"):
        for t in manifest[kind]:
            q = t["quantization"]
            qs = f", scale {q['scale']:.6g}, zero point {q['zero_point']}" if q else ""
            lines.append(f"- {kind[:-1]} `{t['name']}`: {t['dtype']} {t['shape']}{qs}")
    lines += ["", "## Runtimes", ""]
    for rt in manifest["runtimes"]:
        lines.append(f"- {rt['name']} ({rt['status']}): `pip install {' '.join(rt['requirements'])}`"
                     + (f" - {rt['reason']}" if rt.get("reason") else ""))
    if target.android_assets:
        lines += ["", "## Android app", "", "`assets/` holds the model, manifest and labels an app can copy into "
                  "`src/main/assets/`. Keep the model uncompressed in the APK "
                  "(`androidResources { noCompress += \"tflite\" }`) so it can be memory-mapped."]
    return "\n".join(lines) + "\n"


def build(model: str | os.PathLike, *, target: str = "rpi", recipe: str | None = None,
          calibration: str | os.PathLike | None = None, io: str = "float", output: str | os.PathLike | None = None,
          verify: bool = True, data: str | os.PathLike | None = None, runtimes: list[str] | None = None,
          arch: str | None = None, name: str | None = None, labels: str | os.PathLike | None = None,
          trust_model: bool = False, use_cache: bool = True, progress: Progress | None = None,
          atol: list[str] | None = None, rtol: list[str] | None = None, strict: bool = False,
          _auto: tuple | None = None) -> BuildResult:
    """Load, convert (checked against the original), bundle, verify in the target's runtimes,
    and only then move the bundle to ``output``. TensorFlow work runs in a contained child.

    ``atol``/``rtol``: tolerance overrides, ``"0.05"`` for every output or ``"NAME:0.05"`` for one
    (see :func:`packager.recipes.resolve_tolerance`). ``strict``: weak evidence (no held-out
    ``data``) or a runtime of the target left out is a failure. Raises UsageError (bad input),
    ConversionError (no path matches), VerificationError (the bundle does not match),
    EnvironmentProblem (no runtime environment could be prepared)."""
    from .load.model import sniff_format

    progress = progress or _noop
    model_path = Path(model)
    sniff_format(model_path)            # a missing or unreadable model is the first thing to say
    profile = get_target(target)
    notes = []
    if recipe is None and calibration is None and get_recipe(profile.default_recipe).needs_calibration:
        recipe = profile.fallback_recipe
        notes.append(f"no --calibration: built {recipe} instead of the target's default {profile.default_recipe}; "
                     f"pass --calibration for {profile.default_recipe}")
    rec = get_recipe(recipe or profile.default_recipe)
    if _auto is not None:      # --quantize auto (packager.repair): (Prepared, Recipe) already chosen
        rec = _auto[1]
    parse_overrides(atol, "--atol")
    parse_overrides(rtol, "--rtol")
    name = validate_name(name or f"{default_model_name(model_path)}-{profile.name}")
    output = Path(output) if output else Path("dist") / name
    selected = [profile.runtime(r) for r in runtimes] if runtimes else list(profile.runtimes)
    label_names = _read_labels(labels) if labels else None
    rec.check_request(io, calibration is not None)
    if calibration is not None and not Path(calibration).exists():
        raise UsageError(f"calibration data not found: {calibration}")
    if data is not None and not Path(data).exists():
        raise UsageError(f"verification data not found: {data}")

    from .verify import cache
    use_cache = use_cache and cache.enabled()
    prepared = _auto[0] if _auto is not None else None
    if use_cache and prepared is None:
        key = cache.conversion_key(model_path, rec.name, io, calibration, data, trust_model, [atol, rtol])
        prepared = cache.load_prepared(key, model_path)
        if prepared is not None:
            progress("unchanged model and settings: reusing the cached conversion")
    if prepared is None:
        progress(f"loading and converting {model_path} ({rec.name})")
        prepared = _prepare_contained(model_path, rec, io, calibration, data, trust_model, atol, rtol, progress)
        if use_cache:
            cache.save_prepared(key, prepared)
    conversion = prepared.conversion
    fault("converted")
    progress(f"converted with {conversion.path} ({len(conversion.tflite)} bytes)")
    warnings = notes + prepared.warnings
    replaced = _previous_bundle(output)
    if replaced:
        warnings.append(f"replaced the bundle at {output} ({replaced}); pass -o or --name to keep both")

    staging = Staging(output)
    try:
        manifest = _stage(staging, profile, rec, io, prepared, name, selected, label_names)
        fault("staged")
        report = None
        if verify:
            report = _verify_staged(staging.dir, manifest, profile, rec, selected, prepared.check,
                                    prepared.references, conversion.spec, arch, progress, use_cache,
                                    prepared.tolerance, strict, require_all=bool(runtimes))
            manifest["runtimes"] = _runtime_entries(selected, report)
            manifest["verification"] = {"status": "passed" if report.passed else "failed", **report.summary()}
            if not report.passed:
                if rec.needs_calibration and any(r.status == "failed" for r in report.runtimes):
                    from .diagnose import verify_brief
                    report.first_divergence = verify_brief(staging.dir, manifest, model_path, data,
                                                           prepared.check.inputs, trust_model, progress)
                raise VerificationError(
                    f"bundle does not match the original model: {'; '.join(report.failures)[:600]}",
                    hint=_mismatch_hint(report, output), report=report)
        else:
            manifest["verification"] = {"status": "skipped", "reason": "--no-verify"}
        staging.files.pop("README.md", None)
        staging.write("README.md", _readme(profile, manifest).encode())
        _write_requirements(staging, manifest)
        staging.write_manifest(manifest)
        progress(f"writing {output}")
        final = staging.commit()
    except BaseException:
        staging.discard()
        raise
    fault("archive")
    archive = write_archive(final)
    # What build returns is what every reader gets: the bundle's manifest.json read back and validated.
    return BuildResult(final, archive, read_manifest(final), report, conversion.attempts, warnings)


@dataclass
class SweepResult:
    """Several recipes of one model side by side (``build_sweep``): one row per recipe with the
    bundle written (or why none was), its size in bytes and relative to float32, and per runtime
    its status, worst top-1 agreement and cosine, and accuracy when labels were given."""
    rows: list
    evidence: str

    @property
    def written(self) -> list:
        return [r for r in self.rows if r["bundle"]]

    def to_json(self) -> dict:
        return {"evidence": self.evidence, "recipes": self.rows}

    def __repr__(self) -> str:
        return "SweepResult(" + ", ".join(f"{r['recipe']}={r['status']}" for r in self.rows) + ")"


def build_sweep(model: str | os.PathLike, recipes: list[str], *, target: str = "rpi",
                calibration: str | os.PathLike | None = None, io: str = "float",
                output: str | os.PathLike | None = None, verify: bool = True, data: str | os.PathLike | None = None,
                runtimes: list[str] | None = None, arch: str | None = None, name: str | None = None,
                labels: str | os.PathLike | None = None, trust_model: bool = False,
                progress: Progress | None = None, atol: list[str] | None = None, rtol: list[str] | None = None,
                strict: bool = False) -> SweepResult:
    """Build ``recipes`` of one model side by side: one bundle per recipe at
    ``OUTPUT/NAME-TARGET-RECIPE`` (``OUTPUT`` default ``dist``). Loading, data and the reference
    outputs are computed once, in one contained child; each recipe is then bundled and verified as
    ``build`` does. A recipe that fails is a row saying why (no bundle written), not an error;
    recipes needing calibration are skipped without ``calibration``. Raises UsageError for bad
    input shared by all recipes."""
    from .contain import isolate
    from .convert import jobs
    from .load.model import sniff_format
    progress = progress or _noop
    model_path = Path(model)
    sniff_format(model_path)
    profile = get_target(target)
    for r in recipes:
        get_recipe(r)
    base = validate_name(name or f"{default_model_name(model_path)}-{profile.name}")
    root = Path(output) if output else Path("dist")
    rows, todo = [], []
    for r in recipes:
        rec = get_recipe(r)
        if rec.needs_calibration and calibration is None:
            rows.append({"recipe": r, "status": "skipped", "bundle": None, "reason": "needs --calibration"})
        elif io not in rec.io_types:
            rows.append({"recipe": r, "status": "skipped", "bundle": None, "reason": f"no --io {io}"})
        else:
            todo.append(r)
    progress(f"loading and converting {model_path} ({', '.join(todo)})")
    results = dict(isolate.run(jobs.prepare_sweep, str(model_path), todo, io,
                               str(calibration) if calibration is not None else None,
                               str(data) if data is not None else None, trust_model, atol, rtol,
                               progress=progress)) if todo else {}
    evidence = ""
    for r in todo:
        got = results[r]
        row = {"recipe": r, "bundle": None}
        if isinstance(got, EdgepackError):
            row.update(status="refused", reason=got.message, exit_code=got.exit_code)
            rows.append(row)
            continue
        try:
            result = build(model_path, target=target, recipe=r, calibration=calibration, io=io,
                           output=root / f"{base}-{r}", verify=verify, data=data, runtimes=runtimes, arch=arch,
                           name=f"{base}-{r}", labels=labels, trust_model=trust_model, use_cache=False,
                           progress=progress, atol=atol, rtol=rtol, strict=strict, _auto=(got, get_recipe(r)))
        except EdgepackError as exc:
            row.update(status="failed", reason=exc.message, exit_code=exc.exit_code)
            report = getattr(exc, "report", None)
            if report is not None:
                row["runtimes"] = _sweep_runtimes(report)
            rows.append(row)
            continue
        row.update(status="built", bundle=str(result.bundle), size=result.manifest["model_size"],
                   path=result.manifest["source"]["conversion_path"])
        if result.verification is not None:
            row["runtimes"] = _sweep_runtimes(result.verification)
            evidence = result.verification.evidence_text
        rows.append(row)
    sizes = {row["recipe"]: row.get("size") for row in rows}
    for row in rows:
        if row.get("size") and sizes.get("float32"):
            row["size_vs_float32"] = round(row["size"] / sizes["float32"], 4)
    order = {r: i for i, r in enumerate(recipes)}
    rows.sort(key=lambda row: order[row["recipe"]])
    return SweepResult(rows, evidence)


def _sweep_runtimes(report: VerifyReport) -> dict:
    out = {}
    for r in report.runtimes:
        ms = r.metrics
        tops = [m.top1_agreement for m in ms if m.top1_agreement is not None]
        accs = [m.accuracy_candidate for m in ms if m.accuracy_candidate is not None]
        out[r.runtime] = {"status": r.status, "max_abs_err": max((m.max_abs_err for m in ms), default=None),
                          "cosine": min((m.cosine for m in ms), default=None),
                          "top1_agreement": min(tops) if tops else None,
                          "accuracy": min(accs) if accs else None,
                          "accuracy_reference": next((m.accuracy_reference for m in ms
                                                      if m.accuracy_reference is not None), None),
                          "error": r.error}
    return out


def _prepare_contained(model_path, rec, io, calibration, data, trust_model, atol, rtol, progress):
    """jobs.prepare in the contained child. When TensorFlow crashes on one conversion path (a
    converter segfault), the next child skips that path instead of the build ending there."""
    from .contain import isolate
    from .convert import jobs
    skip: list[str] = []
    crashes = []
    while True:
        try:
            prepared = isolate.run(jobs.prepare, str(model_path), rec.name, io,
                                   str(calibration) if calibration is not None else None,
                                   str(data) if data is not None else None, trust_model, atol, rtol, tuple(skip),
                                   progress=progress)
            break
        except ConversionError as exc:
            path = getattr(exc, "path", None)
            if not path or path in skip:
                if crashes and type(exc) is ConversionError:
                    hint = crashes[0][1]
                    if rec.needs_calibration and "keras-frozen-concrete-function" in skip:
                        hint = (f"{rec.name} calibration of a recurrent loop crashes TensorFlow's converter; edgepack "
                                "unrolls recurrent layers instead, which needs a fixed time length: build the model "
                                "with keras.Input((T, features)) for a fixed T, or use --quantize dynamic or float16")
                    raise ConversionError(f"{crashes[0][0]}; no other path worked ({exc.message})"[:1200],
                                          hint=hint) from None
                if crashes:
                    exc.message += " (earlier: " + "; ".join(m for m, _ in crashes) + ")"
                raise
            skip.append(path)
            crashes.append((exc.message, exc.hint))
            progress(f"{exc.message}; trying the other conversion paths")
    prepared.warnings.extend(f"{m}; another path was used" for m, _ in crashes)
    return prepared


def default_model_name(path: Path) -> str:
    """``model.h5`` -> ``model``; a SavedModel directory -> its name, or its parent's when the
    directory is a version number (``saved/mnist/1`` -> ``mnist``)."""
    path = Path(os.path.abspath(path))
    if path.is_dir():
        return path.parent.name if path.name.isdigit() and path.parent.name else path.name
    return path.stem if path.suffix else path.name


def _previous_bundle(output: Path) -> str | None:
    """What an existing bundle at ``output`` holds ("recipe int8 of model.h5"), or None."""
    try:
        old = json.loads((Path(output) / "manifest.json").read_text())
        return f"recipe {old['recipe']['name']} of {old['source']['path']}"
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _mismatch_hint(report: VerifyReport, output) -> str:
    hint = f"nothing was written to {output}; see --json for every number"
    failed = [r for r in report.runtimes if r.status == "failed"]
    passed = [r for r in report.runtimes if r.status == "passed"]
    if failed and passed and report.recipe == "float32":
        names = ", ".join(r.runtime for r in failed)
        hint = (f"{names} disagrees with {passed[0].runtime} on the same float32 model: build with --runtime "
                f"{passed[0].runtime}, or widen the limit with --atol if that difference is acceptable; " + hint)
    elif failed:
        hint = "try a recipe that keeps more precision (int16x8, dynamic, float16), or --atol NAME:VALUE; " + hint
    return hint


def _read_labels(path) -> list[str]:
    if not Path(path).is_file():
        raise UsageError(f"labels {path} is not a regular file")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read labels {path}: {exc}") from None
    return [ln.strip() for ln in text.splitlines() if ln.strip()]


def _stage(staging: Staging, profile, rec, io, prepared, name, selected, label_names):
    conversion, check = prepared.conversion, prepared.check
    spec = conversion.spec
    model_sha = staging.write(MODEL, conversion.tflite)
    staging.write(ENTRYPOINT, ENTRYPOINT_SOURCE.read_bytes(), mode=0o755)
    sample_inputs = check.head(profile.samples).inputs
    from .convert.converter import run_tflite
    expected = run_tflite(conversion.tflite, spec, sample_inputs)
    staging.write("samples/inputs.npz", npz_bytes(sample_inputs))
    staging.write("samples/expected.npz", npz_bytes(expected))
    inputs, outputs = [t.to_json() for t in spec.inputs], [t.to_json() for t in spec.outputs]
    manifest = {
        "format": FORMAT, "name": name, "model": MODEL, "entrypoint": ENTRYPOINT,
        "model_sha256": model_sha, "model_size": len(conversion.tflite), "files": {},
        "inputs": inputs, "outputs": outputs,
        "ops": [{"name": o.name, "version": o.version, "custom": o.custom, "count": o.count} for o in spec.ops],
        "samples": {"inputs": "samples/inputs.npz", "expected": "samples/expected.npz",
                    "count": int(next(iter(sample_inputs.values())).shape[0]),
                    "atol": _self_test_atol(spec, expected)},
        "recipe": rec.to_json(io), "target": profile.to_json(),
        "runtimes": _runtime_entries(selected, None, spec),
        "source": {"path": Path(prepared.path).name, "format": prepared.format,
                   "sha256": sha256_tree(Path(prepared.path)), "conversion_path": conversion.path},
        "versions": prepared.versions,
        "fixed": prepared.fixed,
        "tolerance": {n: asdict(t) for n, t in prepared.tolerance.items()},
        "input_values": INPUT_VALUES_RULE,
        "verification": {"status": "pending"},
    }
    if label_names:
        staging.write("labels.txt", ("\n".join(label_names) + "\n").encode())
        manifest["labels"] = "labels.txt"
    if profile.android_assets:
        staging.write(f"assets/{MODEL}", conversion.tflite)
        if label_names:
            staging.write("assets/labels.txt", ("\n".join(label_names) + "\n").encode())
        staging.write("assets/edgepack.json", json.dumps({
            "model": MODEL, "inputs": inputs, "outputs": outputs, "labels": "labels.txt" if label_names else None,
            "preprocessing": "float inputs as in training; quantized inputs: q = round(x / scale) + zero_point",
        }, indent=2).encode())
    staging.write("README.md", b"")
    staging.write_manifest(manifest)  # the device script needs it during verification
    return manifest


def _fixed_lines(manifest: dict) -> list[str]:
    fixed = manifest.get("fixed") or {}
    lines = []
    if fixed.get("batch"):
        lines.append(f"Fixed batch: the model takes {fixed['batch']} sample(s) per invoke; the script chunks and pads.")
    if fixed.get("variable_axes"):
        lines.append("Variable-length axes (" + ", ".join(fixed["variable_axes"]) + "): the script resizes the model "
                     "to each input's length.")
    return lines + ([""] if lines else [])


def _runtime_entries(selected, report: VerifyReport | None, spec: ModelSpec | None = None) -> list[dict]:
    entries = []
    for rt in selected:
        entry = {"name": rt.name, "module": rt.module, "requirements": list(rt.requirements), "python": rt.python}
        result = next((r for r in report.runtimes if r.runtime == rt.name), None) if report else None
        if result:
            entry.update(status=result.status, version=result.version, arch=result.arch)
            if result.error:
                entry["reason"] = result.error
        else:
            problems = spec.runtime_problems(rt.name) if spec else []
            entry.update(status="unverified", reason="; ".join(problems) or None)
        entries.append(entry)
    return entries


def _write_requirements(staging: Staging, manifest: dict) -> None:
    usable = sorted((r for r in manifest["runtimes"] if r["status"] in ("passed", "unverified", "unavailable")),
                    key=lambda r: r["status"] != "passed")
    for rt in manifest["runtimes"]:
        if rt in usable:
            staging.write(f"requirements-{rt['name']}.txt", ("\n".join(rt["requirements"]) + "\n").encode())
    if usable:
        staging.write("requirements.txt", ("\n".join(usable[0]["requirements"]) + "\n").encode())


def _verify_staged(bundle: Path, manifest, profile, rec, selected, data: Dataset, references: list, spec, arch,
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
            results.append(RuntimeResult(rt.name, "", arch or host_arch(), "unavailable", error=exc.message,
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


def verify(bundle: str | os.PathLike, *, reference: str | os.PathLike, data: str | os.PathLike | None = None,
           runtimes: list[str] | None = None, arch: str | None = None, strict: bool = False,
           trust_model: bool = False, progress: Progress | None = None, atol: list[str] | None = None,
           rtol: list[str] | None = None) -> VerifyReport:
    """Run the bundle's own entrypoint in each runtime environment of its target on the inputs and
    compare, output by output and by name, with ``reference`` (the original model file).

    Inputs: ``data`` (held-out), else the bundle's samples, else synthetic. ``strict``: weak
    evidence or a runtime that cannot run the model fails. ``atol``/``rtol`` as in :func:`build`,
    on top of the tolerance recorded in the manifest."""
    progress = progress or _noop
    parse_overrides(atol, "--atol")
    parse_overrides(rtol, "--rtol")
    with open_bundle(bundle) as bundle:
        return _verify(bundle, reference, data, runtimes, arch, strict, trust_model, progress, atol, rtol)


def _verify(bundle: Path, reference, data, runtimes, arch, strict, trust_model, progress, atol=None,
            rtol=None) -> VerifyReport:
    manifest = read_manifest(bundle)
    problems = check_files(bundle, manifest)
    if problems:
        raise VerificationError(f"bundle integrity: {'; '.join(problems)}",
                                hint="rebuild the bundle; files were changed after `edgepack build`")
    from .bundle.files import host_entrypoint
    _, script_note = host_entrypoint(bundle, manifest)
    profile = get_target(manifest["target"]["name"])
    rec = get_recipe(manifest["recipe"]["name"])
    selected = [profile.runtime(r) for r in runtimes] if runtimes else list(profile.runtimes)
    arrays = None
    samples = (manifest.get("samples") or {}).get("inputs")
    if not data and samples and (bundle / samples).is_file():
        from device_runtime.edgepack_run import Failure, read_inputs
        try:
            arrays = read_inputs(str(bundle / samples), manifest["inputs"])
        except Failure as exc:
            raise VerificationError(f"the bundle's sample inputs are unreadable: {exc.message}",
                                    hint="pass --data eval.npz") from None
    if data is not None and not Path(data).exists():
        raise UsageError(f"verification data not found: {data}")
    from .contain import isolate
    from .convert import jobs
    from .load.model import sniff_format
    sniff_format(Path(reference))
    progress(f"computing reference outputs with {reference}")
    dataset, refs, ref_names = isolate.run(jobs.reference, str(reference), str(data) if data else None, arrays,
                                           trust_model, what="running the reference model", progress=progress)
    _check_names(ref_names, manifest)
    spec = inspect_bytes((bundle / manifest["model"]).read_bytes(), order={
        "inputs": [t["name"] for t in manifest["inputs"]], "outputs": [t["name"] for t in manifest["outputs"]]})
    tolerance = _bundle_tolerance(manifest, rec, atol, rtol)
    report = _verify_staged(bundle, manifest, profile, rec, selected, dataset, refs, spec, arch, progress,
                            tolerance=tolerance, strict=strict, require_all=bool(runtimes))
    if script_note:
        report.notes.insert(0, script_note)
    if not report.passed and rec.needs_calibration and any(r.status == "failed" for r in report.runtimes):
        from .diagnose import verify_brief
        report.first_divergence = verify_brief(bundle, manifest, reference, data, arrays, trust_model, progress)
    return report


def _bundle_tolerance(manifest: dict, rec: Recipe, atol, rtol) -> dict:
    """The tolerance the bundle was built with (manifest), with this call's overrides on top."""
    from .recipes import Tolerance
    names = [t["name"] for t in manifest["outputs"]]
    recorded = manifest.get("tolerance") or {}
    base = {n: Tolerance(**recorded[n]) if isinstance(recorded.get(n), dict) else rec.tolerance for n in names}
    return resolve_tolerance(base, names, atol, rtol)


def _check_names(names: list[str], manifest: dict) -> None:
    ref_names = set(names)
    bundle_names = {t["name"] for t in manifest["outputs"]}
    if ref_names != bundle_names:
        raise UsageError(f"the reference model's outputs ({', '.join(sorted(ref_names))}) are not the bundle's "
                         f"({', '.join(sorted(bundle_names))})", hint="pass the model the bundle was built from")


def inspect(path: str | os.PathLike) -> dict:
    """Describe a bundle directory or archive, or a .tflite file."""
    path = Path(path)
    if path.is_file() and path.name.endswith((".tar.gz", ".tgz")):
        with open_bundle(path) as unpacked:
            info = inspect(unpacked)
        info["path"] = str(path)
        return info
    if path.is_dir():
        manifest = read_manifest(path)
        model = path / manifest["model"]
        order = {"inputs": [t["name"] for t in manifest["inputs"]], "outputs": [t["name"] for t in manifest["outputs"]]}
        spec = inspect_bytes(_read_model(model), order=order)
        return {"kind": "bundle", "path": str(path), "manifest": manifest, "model": spec.to_json(),
                "integrity": check_files(path, manifest) or "ok",
                "runtime_problems": {rt["name"]: spec.runtime_problems(rt["name"]) for rt in manifest["runtimes"]}}
    spec = inspect_bytes(_read_model(path))
    return {"kind": "tflite", "path": str(path), "model": spec.to_json(),
            "runtime_problems": {rt.name: spec.runtime_problems(rt.name)
                                 for t in list_targets().values() for rt in t.runtimes}}


def _read_model(path: Path) -> bytes:
    if not path.is_file():
        raise UsageError(f"not found: {path}", hint="pass a bundle directory or a .tflite file")
    if path.stat().st_size > 2 << 30:
        raise UsageError(f"{path} is larger than 2 GiB; not a TFLite model edgepack can inspect")
    return path.read_bytes()
