"""The library API: build, verify, inspect, targets. The CLI is one client of these functions;
they return values and raise :class:`packager.errors.EdgepackError`, and never print."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable


from .bundle import contents
from .bundle.contents import INPUT_VALUES_RULE  # noqa: F401 - part of the API
from .bundle.files import Bundle, Staging, check_files, read_manifest, check_name, write_archive, open_bundle, fault, sha256_tree
from .bundle.manifest import Manifest, default_name
from .verification import report as verdict
from .verification.report import VerifyReport
from .errors import ConversionError, EdgepackError, Unverified, UsageError, VerificationError
from .convert.inspect import inspect_bytes
from .recipes import Recipe, get_recipe, list_recipes, parse_overrides, resolve_tolerance
from .targets import TargetProfile, get_target, list_targets
from .load.calibration import WEAK_EVIDENCE

Progress = Callable[[str], None]



@dataclass
class BuildResult:
    """What ``build`` wrote: the :class:`~packager.bundle.files.Bundle` (its directory and manifest), its .tar.gz,
    the verification report (None with ``verify=False``), every conversion attempt, and warnings to show the user."""
    bundle: Bundle                   # the bundle as written: manifest.json read back and validated
    archive: Path
    verification: VerifyReport | None
    conversion_attempts: list
    warnings: list[str]
    unchanged: bool = False          # the bundle at ``bundle`` was already this build's: nothing was written

    @property
    def manifest(self) -> Manifest:
        """The bundle's manifest (``bundle.manifest``)."""
        return self.bundle.manifest

    def __fspath__(self) -> str:
        """A BuildResult is its bundle directory: ``verify(result, ...)``, ``deploy(result, t)``, ``inspect(result)``."""
        return str(self.bundle.path)

    def __repr__(self) -> str:
        return (f"BuildResult(bundle={str(self.bundle.path)!r}, recipe={self.manifest.recipe}, "
                f"model_size={self.manifest.model_size}, path={self.manifest.source.get('conversion_path')}, "
                f"verification={self.verification!r})")

    def to_json(self) -> dict:
        """JSON of the result: bundle and archive paths, the manifest, the verification report (None when skipped),
        every conversion attempt and the warnings."""
        return {"bundle": str(self.bundle.path), "archive": str(self.archive), "manifest": self.manifest.to_json(),
                "verification": self.verification.to_json() if self.verification else None,
                "attempts": [a.to_json() for a in self.conversion_attempts], "warnings": self.warnings,
                "unchanged": self.unchanged}


def _noop(_: str) -> None:
    pass


def provenance(model: str | os.PathLike, manifest: Manifest | None = None, report: VerifyReport | None = None,
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
    versions = manifest.versions if manifest else {}
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
        data["bundle"] = manifest.name
        data["bundle model sha256"] = manifest.model_sha256
        data["conversion path"] = manifest.source.get("conversion_path")
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


def build(model: str | os.PathLike, *, target: str = "rpi", recipe: str | None = None,
          calibration: str | os.PathLike | None = None, io: str = "float", output: str | os.PathLike | None = None,
          verify: bool = True, data: str | os.PathLike | None = None, runtimes: list[str] | None = None,
          arch: str | None = None, name: str | None = None, labels: str | os.PathLike | None = None,
          trust_model: bool = False, use_cache: bool = True, progress: Progress | None = None,
          atol: list[str] | None = None, rtol: list[str] | None = None, strict: bool = False,
          max_drop: float | list[str] | None = None, max_flips: list[str] | None = None,
          output_kind: list[str] | None = None, signature: str | None = None,
          custom_objects: str | os.PathLike | None = None,
          reference: str | os.PathLike | None = None, reference_outputs: str | os.PathLike | None = None,
          _auto: tuple | None = None) -> BuildResult:
    """Load, convert (checked against the original), bundle, verify in the target's runtimes,
    and only then move the bundle to ``output``. TensorFlow work runs in a contained child.

    ``custom_objects``: a ``.py`` file or a module name defining the model's custom layers (the CLI's
    ``--custom-objects``, :mod:`packager.load.custom`); it is imported only inside the contained child and
    only with ``trust_model`` (UsageError otherwise).

    ``atol``/``rtol``, ``max_drop`` (accuracy points), ``max_flips`` (fraction of decisions): tolerance
    overrides, ``"0.05"`` for every output or ``"NAME:0.05"`` for one; ``output_kind``: ``["NAME:KIND[:OPTIONS]"]``
    (see :func:`packager.recipes.resolve_tolerance`, :data:`packager.criteria.KINDS`). ``strict``: weak evidence (no held-out
    ``data``) or a runtime of the target left out is a failure. ``signature``: the SavedModel signature to bundle
    (default ``serving_default``, else the only one; several and none chosen is a UsageError).

    A ``.tflite`` ``model`` is bundled as it is (recipe ``as-is``, the only one it takes) and verified against
    ``reference`` (the model it was converted from) or ``reference_outputs`` (an .npz of its outputs on ``data``, keyed
    by output name); with neither, it is UNVERIFIED (:class:`~packager.errors.Unverified`) unless ``verify`` is off.

    Raises UsageError (bad input), ConversionError (no path matches), VerificationError (the bundle does not match),
    EnvironmentProblem (no runtime environment could be prepared)."""
    from .load.formats import sniff_format

    progress = progress or _noop
    model_path = Path(model)
    fmt = sniff_format(model_path)      # a missing or unreadable model is the first thing to say
    profile = get_target(target)
    _transport(profile)
    notes = []
    if fmt == "tflite" and recipe is None:
        recipe = "as-is"
    if recipe is None and calibration is None and get_recipe(profile.default_recipe).needs_calibration:
        recipe = profile.fallback_recipe
        notes.append(f"no --calibration: built {recipe} instead of the target's default {profile.default_recipe}; "
                     f"pass --calibration for {profile.default_recipe}")
    rec = get_recipe(recipe or profile.default_recipe)
    if _auto is not None:      # --quantize auto (packager.repair): (Prepared, Recipe) already chosen
        rec = _auto[1]
    overrides = verdict_overrides(atol, rtol, max_drop, max_flips, output_kind, verify)
    overrides.update(_reference_for(model_path, fmt, rec, reference, reference_outputs, data, verify))
    custom = resolve_custom(custom_objects, trust_model)
    unconfined = _unconfined(trust_model)
    if unconfined:
        notes.append(unconfined)
    name = check_name(name) if name else default_name(model_path, profile.name)
    output = Path(output) if output else Path("dist") / name
    _check_output_path(output)
    selected = [profile.runtime(r) for r in runtimes] if runtimes else list(profile.runtimes)
    label_names = _read_labels(labels) if labels else None
    rec.check_request(io, calibration is not None)
    if calibration is not None and not rec.needs_calibration and _auto is None:
        notes.append(f"--calibration is not used by the {rec.name} recipe (only int8 and int16x8 calibrate)")
    if calibration is not None and not Path(calibration).exists():
        raise UsageError(f"calibration data not found: {calibration}")
    if data is not None and not Path(data).exists():
        raise UsageError(f"verification data not found: {data}")

    from .verification import cache
    use_cache = use_cache and cache.enabled()
    prepared = _auto[0] if _auto is not None else None
    keyed = {**overrides, **{f"{k}_sha256": cache.sha256_tree(Path(overrides[k]))
                             for k in ("reference_model", "reference_outputs") if k in overrides}}
    key = cache.conversion_key(model_path, rec, io, calibration, data, trust_model,
                               _with_custom({**keyed, "signature": signature} if signature else keyed, custom))
    build_key = _build_key(key, profile, selected, arch, name, label_names, verify, strict, runtimes)
    if use_cache and _auto is None:
        from .contain import lifecycle
        with lifecycle.exclusive(lock_path(output), f"writing {output}", progress):
            done = _unchanged(output, build_key, notes)
        if done is not None:
            progress(f"unchanged: {output} is up to date (same model, data and settings); nothing was written")
            return done
    if use_cache and prepared is None:
        prepared = cache.load_prepared(key, model_path)
        if prepared is not None:
            progress("unchanged model and settings: reusing the cached conversion")
    if prepared is None:
        if verify and arch in (None, _host_arch()):
            from .verification.emulator import check_ahead
            check_ahead(selected)       # the runtime environments' tamper check, while the child converts
        progress(f"loading and converting {model_path} ({rec.name})")
        prepared = _prepare_contained(model_path, rec, io, calibration, data, trust_model, overrides, progress,
                                      signature, custom)
        if use_cache:
            cache.save_prepared(key, prepared)
    conversion = prepared.conversion
    if label_names:
        _check_labels(label_names, prepared)
    fault("converted")
    progress(f"converted with {conversion.path} ({len(conversion.tflite)} bytes)")
    warnings = notes + prepared.warnings
    replaced = _previous_bundle(output)
    if replaced:
        warnings.append(f"replaced the bundle at {output} ({replaced}); pass -o or --name to keep both")

    from .contain import lifecycle
    with lifecycle.exclusive(lock_path(output), f"writing {output}", progress):
        return _stage_verify_commit(model_path, output, profile, rec, io, prepared, name, selected, label_names,
                                    verify, arch, progress, use_cache, strict, runtimes, data, trust_model, warnings,
                                    overrides, custom, build_key)


def _build_key(conversion_key: str, profile, selected, arch, name: str, label_names, verify: bool, strict: bool,
               runtimes) -> str:
    """What a bundle is a function of, as one digest recorded in its manifest (``source.build_key``): the
    conversion key (model, data and calibration by content, recipe, io, overrides, edgepack and TensorFlow
    versions), the target profile, the runtimes verified with their locked wheels, the device script, the
    architecture, the name, the labels and the verification settings. Nothing of it is a path or a time, so two
    builds of the same inputs still write byte-identical bundles."""
    from . import runtime_lock
    from .bundle.files import ENTRYPOINT_SOURCE, sha256_file
    from .verification.cache import digest
    lock = runtime_lock.load().get("runtimes", {})
    return digest("build", conversion_key, profile.to_json(), [rt.name for rt in selected],
                  {rt.name: lock.get(rt.name) for rt in selected}, sha256_file(ENTRYPOINT_SOURCE), arch, name,
                  label_names, verify, strict, bool(runtimes))


def _unchanged(output: Path, build_key: str, notes: list[str]) -> BuildResult | None:
    """The BuildResult of the bundle already at ``output`` when rebuilding it would write the same bytes: its
    manifest records ``build_key``, a verdict that passed (or was skipped as asked), every file matches the
    manifest (:func:`check_files`' test, on the same one read as the archive's), and the archive beside it holds exactly this directory (the gzip trailer's CRC-32 and size of the
    tar stream :func:`write_archive` would write; nothing is recompressed). None otherwise: build as usual."""
    from .bundle.files import archive_matches
    try:
        manifest = read_manifest(output)
    except (UsageError, OSError):
        return None
    if manifest.source.get("build_key") != build_key:
        return None
    status = manifest.verification
    if status not in ("passed", "skipped"):
        return None
    archive = output.with_name(output.name + ".tar.gz")
    if not archive_matches(output, archive, manifest):     # and every file as the manifest lists it
        return None
    report = verdict.report_from_summary(manifest.verification_record, output) if status == "passed" else None
    if report is not None:
        report.notes.append("unchanged: this verdict is the one recorded when the bundle was built")
    warnings = notes + [f"unchanged: {output} is up to date (same model, data and settings); nothing was written"]
    return BuildResult(Bundle.written(output), archive, report, [], warnings, unchanged=True)


def _host_arch() -> str:
    from .verification.emulator import host_arch
    return host_arch()


def _reference_for(model_path: Path, fmt: str, rec: Recipe, reference, reference_outputs, data, verify: bool) -> dict:
    """The overrides that carry a .tflite's reference into the contained child (``reference_model``,
    ``reference_outputs``: absolute paths), after checking the recipe's engine takes this input (a .tflite only
    ``as-is``). UsageError for a reference given with another input or reference outputs without --data;
    Unverified for a .tflite with no reference to verify against (unless ``verify`` is off)."""
    from .convert.engines import check_recipe_for
    from .errors import Unverified
    check_recipe_for(rec, fmt, model_path.name)
    if fmt != "tflite":
        if reference is not None or reference_outputs is not None:
            raise UsageError(f"--reference/--reference-outputs are for a .tflite input; {model_path.name} is its own "
                             "reference", hint="drop them; `edgepack verify BUNDLE --reference MODEL` checks a bundle "
                                               "against another model")
        return {}
    if reference is not None and reference_outputs is not None:
        raise UsageError("give --reference or --reference-outputs, not both")
    for given in (reference, reference_outputs):
        if given is not None and not Path(given).exists():
            raise UsageError(f"reference not found: {given}")
    if reference_outputs is not None and data is None:
        raise UsageError("--reference-outputs are the .tflite's expected outputs on --data: pass --data too",
                         hint="--data inputs.npz --reference-outputs outputs.npz (row for row)")
    if reference is None and reference_outputs is None:
        if verify:
            raise Unverified(f"UNVERIFIED: {model_path.name} is a .tflite brought as it is and nothing was given to "
                             "verify it against; it is never compared with itself",
                             hint="pass --reference MODEL (the model it was converted from) or --data inputs.npz "
                                  "--reference-outputs outputs.npz, or --no-verify to bundle it unverified")
        return {}
    if reference is not None:
        return {"reference_model": str(Path(reference).resolve())}
    return {"reference_outputs": str(Path(reference_outputs).resolve())}


def _check_output_path(output: Path) -> None:
    """A ``-o`` the file system cannot hold is a usage error, not an OSError deep in staging."""
    full = os.fsencode(os.path.abspath(output))
    if len(full) + 64 >= os.pathconf("/", "PC_PATH_MAX") or any(len(p) + 40 > 255 for p in full.split(b"/")):
        raise UsageError(f"-o {str(output)[:60]}... is too long for the file system ({len(full)} bytes, a name "
                         "of up to 255 with the staging suffix)", hint="choose a shorter -o")


def _check_labels(names: list[str], prepared) -> None:
    """A labels file must name each class of an output with classes: its line count is that output's class count."""
    counts = {o.name: o.shape[-1] for o in prepared.outputs if o.shape and o.shape[-1] > 0 and
              getattr(prepared.tolerance.get(o.name), "kind", None) in ("class-scores", "pixel-classes")}
    if counts and len(names) not in counts.values():
        raise UsageError(f"--labels has {len(names)} lines but the model has "
                         + ", ".join(f"{c} classes in {n!r}" for n, c in counts.items()),
                         hint="one class name per line, in class order")


def unheld_overrides(report: VerifyReport, tolerance: dict, overrides: dict | None) -> list[str]:
    """Notes for verdict overrides that nothing was held to: ``--max-drop`` without an output whose accuracy
    could be measured (decisions and labels), ``--max-flips`` without an output with decisions."""
    overrides = overrides or {}
    found = {f["criterion"] for r in report.runtimes for m in r.metrics for f in m.findings
             if "reference" in f["detail"] or f["criterion"] == "decisions"}
    notes = []
    if overrides.get("max_drop") and "accuracy" not in found:
        notes.append("--max-drop held nothing: no output has both decisions and labels that fit it (kinds: "
                     + ", ".join(f"{n} {t.kind}" for n, t in tolerance.items()) + "; labels: y or y_NAME in --data)")
    if overrides.get("flips") and "decisions" not in found:
        notes.append("--max-flips held nothing: no output has decisions (kinds: "
                     + ", ".join(f"{n} {t.kind}" for n, t in tolerance.items()) + ")")
    return notes


def lock_path(output) -> Path:
    """The lock of a bundle directory (held while a build stages, verifies and moves it into place): in edgepack's
    cache, keyed by the absolute path, so nothing is left beside ``-o``."""
    import hashlib
    from .paths import cache_dir
    key = hashlib.sha256(os.path.abspath(output).encode()).hexdigest()[:24]
    return cache_dir() / "locks" / f"bundle-{key}.lock"


def _stage_verify_commit(model_path, output, profile, rec, io, prepared, name, selected, label_names, verify, arch,
                         progress, use_cache, strict, runtimes, data, trust_model, warnings,
                         overrides=None, custom=None, build_key=None) -> BuildResult:
    """Stage the bundle beside ``output``, verify it there, and move it into place (holding ``output``'s lock)."""
    conversion = prepared.conversion
    staging = Staging(output)
    try:
        manifest = contents.stage(staging, profile, rec, io, prepared, name, selected, label_names, build_key)
        fault("staged")
        report = None
        if verify:
            report = verdict.verify_staged(staging.dir, manifest, profile, rec, selected, prepared.check,
                                           prepared.references, conversion.spec, arch, progress, use_cache,
                                           prepared.tolerance, strict, require_all=bool(runtimes),
                                           noise=prepared.noise, host_outputs=conversion.check_head)
        if report is not None:
            report.notes += unheld_overrides(report, prepared.tolerance, overrides)
            if report.samples < prepared.check.count:     # the slowest runtime's cost cut the count further
                stale = [n for n in prepared.check.notes if n not in report.notes]
                warnings = [w for w in warnings if w not in stale] + [
                    n for n in report.notes if n not in prepared.check.notes and n.startswith("verified on ")]
        manifest = contents.record_verification(manifest, selected, report)
        if report is not None and not report.passed:
            if rec.needs_calibration and any(r.status == "failed" for r in report.runtimes):
                from .diagnose import verify_brief
                report.first_divergence = verify_brief(staging.dir, model_path, data, prepared.check.inputs,
                                                       trust_model, progress, prepared.signature, custom)
            if report.verdict == "UNVERIFIED":
                raise Unverified(f"UNVERIFIED: no runtime of {profile.name} could run the bundle, so nothing was "
                                 f"compared: {'; '.join(report.failures)[:600]}",
                                 hint="see why each runtime cannot load it (`edgepack inspect`); pick a recipe or "
                                      f"runtime that can (--runtime), or --no-verify; nothing was written to {output}",
                                 report=report)
            raise VerificationError(
                f"bundle does not match the original model: {'; '.join(report.failures)[:600]}",
                hint=_mismatch_hint(report, output, [t.name for t in prepared.inputs if t.dtype.startswith(("int", "uint"))]),
                report=report)
        contents.finish(staging, profile, manifest, _transport(profile).address)
        progress(f"writing {output}")
        final = staging.commit()
    except BaseException:
        staging.discard()
        raise
    fault("archive")
    archive = write_archive(final)
    # What build returns is what every reader gets: the bundle's manifest.json read back and validated.
    return BuildResult(Bundle.written(final), archive, report, conversion.attempts, warnings)


@dataclass
class SweepResult:
    """Several recipes of one model side by side (``build_sweep``): one row per recipe with the
    bundle written (or why none was), its size in bytes and relative to float32, and per runtime
    its status, worst top-1 agreement and cosine, and accuracy when labels were given."""
    rows: list
    evidence: str

    @property
    def written(self) -> list:
        """The rows whose bundle was written (``bundle`` is its path; None for a refused, failed or skipped recipe)."""
        return [r for r in self.rows if r["bundle"]]

    def to_json(self) -> dict:
        """JSON of the sweep: ``evidence`` (what verification rested on) and ``recipes`` (the rows)."""
        return {"evidence": self.evidence, "recipes": self.rows}

    def __repr__(self) -> str:
        return "SweepResult(" + ", ".join(f"{r['recipe']}={r['status']}" for r in self.rows) + ")"


def build_sweep(model: str | os.PathLike, recipes: list[str], *, target: str = "rpi",
                calibration: str | os.PathLike | None = None, io: str = "float",
                output: str | os.PathLike | None = None, verify: bool = True, data: str | os.PathLike | None = None,
                runtimes: list[str] | None = None, arch: str | None = None, name: str | None = None,
                labels: str | os.PathLike | None = None, trust_model: bool = False,
                progress: Progress | None = None, atol: list[str] | None = None, rtol: list[str] | None = None,
                strict: bool = False, max_drop: float | list[str] | None = None, max_flips: list[str] | None = None,
                output_kind: list[str] | None = None, signature: str | None = None,
                custom_objects: str | os.PathLike | None = None) -> SweepResult:
    """Build ``recipes`` of one model side by side: one bundle per recipe at
    ``OUTPUT/NAME-TARGET-RECIPE`` (``OUTPUT`` default ``dist``). Loading, data and the reference
    outputs are computed once, in one contained child; each recipe is then bundled and verified as
    ``build`` does (``custom_objects`` as there). A recipe that fails is a row saying why (no bundle written),
    not an error; recipes needing calibration are skipped without ``calibration``. Raises UsageError for bad
    input shared by all recipes."""
    from .contain import isolate
    from .convert import jobs
    from .load.formats import sniff_format
    progress = progress or _noop
    model_path = Path(model)
    fmt = sniff_format(model_path)
    profile = get_target(target)
    _transport(profile)
    from .convert.engines import get_engine
    for r in recipes:
        get_engine(get_recipe(r))
    overrides = verdict_overrides(atol, rtol, max_drop, max_flips, output_kind, verify)
    custom = resolve_custom(custom_objects, trust_model)
    _unconfined(trust_model)            # --trust-model without a sandbox is refused before anything loads
    base = check_name(name) if name else default_name(model_path, profile.name)
    root = Path(output) if output else Path("dist")
    rows, todo = [], []
    for r in recipes:
        rec = get_recipe(r)
        if not get_engine(rec).accepts(fmt):
            rows.append({"recipe": r, "status": "skipped", "bundle": None,
                         "reason": f"engine {rec.engine} does not take a {fmt} model"})
        elif rec.needs_calibration and calibration is None:
            rows.append({"recipe": r, "status": "skipped", "bundle": None, "reason": "needs --calibration"})
        elif io not in rec.io_types:
            rows.append({"recipe": r, "status": "skipped", "bundle": None, "reason": f"no --io {io}"})
        else:
            todo.append(r)
    progress(f"loading and converting {model_path} ({', '.join(todo)})")
    try:
        results = dict(isolate.run(jobs.prepare_sweep, str(model_path), todo, io,
                                   str(calibration) if calibration is not None else None,
                                   str(data) if data is not None else None, trust_model, overrides, signature, custom,
                                   progress=progress)) if todo else {}
    except ConversionError as exc:
        if not getattr(exc, "path", None):      # not a crash on one conversion path: it concerns every recipe
            raise
        # TensorFlow crashed on one recipe's path and took the shared child with it: each recipe in a child
        # of its own, so that crash is that recipe's row and the others build
        progress(f"{exc.message}; converting each recipe on its own")
        results = {}
        for k, r in enumerate(todo, 1):
            progress(f"[{k}/{len(todo)}] {r}" + _then(todo[k:]))
            try:
                results[r] = _prepare_contained(model_path, get_recipe(r), io, calibration, data, trust_model,
                                                overrides, progress, signature, custom)
            except EdgepackError as each:
                results[r] = each
    evidence = ""
    for k, r in enumerate(todo, 1):
        progress(f"[{k}/{len(todo)}] bundling and verifying {r}" + _then(todo[k:]))
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
                           progress=progress, atol=atol, rtol=rtol, strict=strict, max_drop=max_drop,
                           max_flips=max_flips, output_kind=output_kind, signature=signature,
                           custom_objects=custom_objects, _auto=(got, get_recipe(r)))
        except EdgepackError as exc:
            row.update(status="failed", reason=exc.message, exit_code=exc.exit_code)
            report = getattr(exc, "report", None)
            if report is not None:
                row["runtimes"] = _sweep_runtimes(report)
            rows.append(row)
            continue
        row.update(status="built", bundle=str(result.bundle), size=result.manifest.model_size,
                   path=result.manifest.source.get("conversion_path"))
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


def _then(rest: list[str]) -> str:
    """`` (then a, b)``: what a sweep's progress line has still to do, or nothing."""
    return f" (then {', '.join(rest)})" if rest else ""


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


def resolve_custom(custom_objects, trust_model: bool):
    """``custom_objects`` (a ``.py`` file or module name, or None) as the plain data the contained child takes
    (:func:`packager.load.custom.resolve`: nothing of it runs here). Raises UsageError without ``trust_model``
    (exit 2: it is code) and for a file or module that is not there."""
    from .load import custom
    return custom.resolve(custom_objects, trust_model)


def _with_custom(overrides: dict | None, custom) -> dict | None:
    """The cache key's settings: ``overrides`` plus the content of the ``--custom-objects`` code (it computes
    part of the model), when there is one."""
    if not custom:
        return overrides
    from .load.custom import fingerprint
    return {**(overrides or {}), "custom_objects": fingerprint(custom)}


def _unconfined(trust_model: bool) -> str | None:
    """The warning for a model about to be loaded without the sandbox (None when confined); UsageError for
    ``--trust-model`` where the kernel has no sandbox and the user did not say EDGEPACK_SANDBOX=0."""
    from .contain import isolate, sandbox
    return sandbox.check_trust(trust_model, isolate.in_process())


def verdict_overrides(atol=None, rtol=None, max_drop=None, max_flips=None, output_kind=None,
                      verify: bool = True) -> dict:
    """The verdict's overrides as :func:`packager.recipes.resolve_tolerance` takes them, each checked now (a
    malformed value is a UsageError before any work): ``{"atol": [...], "rtol": [...], "max_drop": [...],
    "flips": [...], "kinds": [...]}``, only the keys given; ``"no_verify": True`` without ``verify`` (a
    conversion check that fails is then a warning, so there is a bundle to diagnose)."""
    from .recipes import parse_kinds
    if max_drop is not None and not isinstance(max_drop, list):
        max_drop = [str(max_drop)]
    lists = {"atol": (atol, "--atol"), "rtol": (rtol, "--rtol"), "max_drop": (max_drop, "--max-drop"),
             "flips": (max_flips, "--max-flips")}
    out = {}
    for key, (values, flag) in lists.items():
        if values:
            parse_overrides(values, flag)
            out[key] = list(values)
    if any(v > 1 for v in parse_overrides(max_flips, "--max-flips").values()):
        raise UsageError("--max-flips is a fraction of decisions (0..1)", hint="e.g. --max-flips 0.01")
    if output_kind:
        parse_kinds(output_kind)
        out["kinds"] = list(output_kind)
    if not verify:
        out["no_verify"] = True
    return out


def _prepare_contained(model_path, rec, io, calibration, data, trust_model, overrides, progress, signature=None,
                       custom=None):
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
                                   str(data) if data is not None else None, trust_model, overrides, tuple(skip),
                                   signature, custom, progress=progress)
            break
        except ConversionError as exc:
            path = getattr(exc, "path", None)
            if not path or path in skip:
                if crashes and type(exc) is ConversionError and "keras-unrolled-recurrent:" in exc.message:
                    # the unrolled path (fixed time length) ran and names the blocker: it leads, the crash follows
                    raise ConversionError(f"{exc.message} (earlier: {'; '.join(m for m, _ in crashes)})"[:1200],
                                          hint=exc.hint) from None
                if crashes and type(exc) is ConversionError:
                    hint = crashes[0][1]
                    if rec.needs_calibration and "keras-frozen-concrete-function" in skip and "TensorList" in exc.message:
                        # no unrolled path: the time length is unknown (a recurrent model's open-batch paths failed)
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


def _transport(profile: TargetProfile):
    """The Transport class of the target's ``deploy`` method; UsageError naming the profile otherwise."""
    from .deploy.transports import TRANSPORTS
    if profile.deploy not in TRANSPORTS:
        raise UsageError(f"target profile {profile.source or profile.name}: deploy {profile.deploy!r} is not one of "
                         + ", ".join(TRANSPORTS), hint="a new way to reach devices is a Transport in packager/deploy/")
    return TRANSPORTS[profile.deploy]


def _previous_bundle(output: Path) -> str | None:
    """What an existing bundle at ``output`` holds ("recipe int8 of model.h5"), or None."""
    try:
        old = read_manifest(Path(output))
    except UsageError:
        return None
    return f"recipe {old.recipe} of {old.source.get('path')}"


def _mismatch_hint(report: VerifyReport, output, ids: list[str] = ()) -> str:
    """The way out of a bundle that does not match, true of this model (``ids``: its integer id inputs, which
    int16x8 cannot calibrate: it is not suggested for them)."""
    hint = f"nothing was written to {output}; see --json for every number"
    failed = [r for r in report.runtimes if r.status == "failed"]
    passed = [r for r in report.runtimes if r.status == "passed"]
    if failed and passed and report.recipe == "float32":
        names = ", ".join(r.runtime for r in failed)
        hint = (f"{names} disagrees with {passed[0].runtime} on the same float32 model: build with --runtime "
                f"{passed[0].runtime}, or widen the limit with --atol if that difference is acceptable; " + hint)
    elif failed:
        finer = [r for r in ("int16x8", "dynamic", "float16") if r != report.recipe and not (r == "int16x8" and ids)]
        hint = (f"try a recipe that keeps more precision ({', '.join(finer)}), or --quantize auto to measure each; "
                + hint)
        if passed:      # the same model is right in one runtime and wrong in another: the runtime, not the recipe
            names = ", ".join(r.runtime for r in failed)
            hint = (f"the same {report.recipe} model matches in {passed[0].runtime} and not in {names}: build for "
                    f"{passed[0].runtime} alone (--runtime {passed[0].runtime}), or " + hint)
    return hint


def _read_labels(path) -> list[str]:
    if not Path(path).is_file():
        raise UsageError(f"labels {path} is not a regular file")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read labels {path}: {exc}") from None
    return [ln.strip() for ln in text.splitlines() if ln.strip()]


def verify(bundle: Bundle | str | os.PathLike, *, reference: str | os.PathLike, data: str | os.PathLike | None = None,
           runtimes: list[str] | None = None, arch: str | None = None, strict: bool = False,
           trust_model: bool = False, progress: Progress | None = None, atol: list[str] | None = None,
           rtol: list[str] | None = None, max_drop: float | list[str] | None = None,
           max_flips: list[str] | None = None, output_kind: list[str] | None = None,
           signature: str | None = None, custom_objects: str | os.PathLike | None = None) -> VerifyReport:
    """Run the bundle's own entrypoint in each runtime environment of its target on the inputs and
    compare, output by output and by name, with ``reference`` (the original model file). ``bundle``: a
    :class:`~packager.bundle.files.Bundle` (``build(...).bundle``), a BuildResult, or a bundle directory or .tar.gz.

    Inputs: ``data`` (held-out), else the bundle's samples, else synthetic. ``strict``: weak
    evidence or a runtime that cannot run the model fails. ``atol``, ``rtol``, ``max_drop``, ``max_flips`` and
    ``output_kind`` as in :func:`build`, on top of the tolerance (and output kinds) recorded in the manifest.
    ``signature``: the reference SavedModel's signature to run (default: the one the bundle was built from);
    ``custom_objects`` (the reference's custom layers, with ``trust_model``) as in :func:`build`."""
    progress = progress or _noop
    overrides = verdict_overrides(atol, rtol, max_drop, max_flips, output_kind)
    custom = resolve_custom(custom_objects, trust_model)
    with open_bundle(bundle) as bundle:
        return _verify(bundle, reference, data, runtimes, arch, strict, trust_model, progress, overrides, signature,
                       custom)


def _verify(bundle: Path, reference, data, runtimes, arch, strict, trust_model, progress,
            overrides: dict | None = None, signature: str | None = None, custom: tuple | None = None) -> VerifyReport:
    ref = _reference_side(bundle, reference, data, trust_model, progress, overrides, signature, custom)
    manifest, profile, rec = ref.manifest, ref.profile, ref.rec
    if runtimes:
        selected = [profile.runtime(r) for r in runtimes]
    else:      # the runtimes the bundle lists (a build with --runtime leaves the others out)
        selected = [rt for rt in profile.runtimes if rt.name in manifest.runtime_names] or list(profile.runtimes)
    report = verdict.verify_staged(bundle, manifest, profile, rec, selected, ref.dataset, ref.refs, ref.spec, arch,
                                   progress, tolerance=ref.tolerance, strict=strict, require_all=bool(runtimes),
                                   noise=ref.noise)
    _finish_notes(report, ref, overrides)
    if not report.passed and rec.needs_calibration and any(r.status == "failed" for r in report.runtimes):
        from .diagnose import verify_brief
        report.first_divergence = verify_brief(bundle, reference, data, ref.arrays, trust_model, progress,
                                               ref.signature, ref.custom)
    return report


@dataclass
class _ReferenceSide:
    """What a verdict of ``bundle`` compares against: its manifest, target profile and recipe, the inputs
    (``dataset``; ``arrays``: the bundle's samples when no --data), the reference model's outputs per group
    (``refs``), its float ``noise``, the bundle model's spec, the ``tolerance`` per output and the notes on how the
    references were computed."""
    manifest: Manifest
    profile: TargetProfile
    rec: Recipe
    dataset: object
    refs: list
    noise: dict
    spec: object
    tolerance: dict
    arrays: dict | None
    notes: list
    signature: str | None = None
    custom: tuple | None = None      # the resolved --custom-objects of the reference (packager.load.custom)


def _other_reference(reference, manifest) -> str | None:
    """A note when ``reference`` is not the model file the bundle was built from (its sha256 differs from the
    manifest's ``source.sha256``): the verdict then compares the bundle with another model, which may be meant (a
    re-saved copy) or a mistake (another training run)."""
    recorded = manifest.source.get("sha256")
    try:
        got = sha256_tree(Path(reference)) if recorded else None
    except OSError:
        return None
    if not got or got == recorded:
        return None
    return (f"the reference {Path(reference).name} is not the model this bundle was built from "
            f"({manifest.source.get('path')}: sha256 {str(recorded)[:12]}..., this file {got[:12]}...): the verdict "
            "compares the bundle with this file")


def _reference_side(bundle: Path, reference, data, trust_model, progress, overrides,
                    signature: str | None = None, custom: tuple | None = None) -> _ReferenceSide:
    manifest = read_manifest(bundle)
    signature = signature or manifest.source.get("signature")
    from .bundle.files import host_entrypoint
    _, script_note = host_entrypoint(bundle, manifest)      # an entrypoint that is no plain file: UsageError first
    problems = check_files(bundle, manifest)
    if problems:
        raise VerificationError(f"bundle integrity: {'; '.join(problems)}",
                                hint="rebuild the bundle; files were changed after `edgepack build`")
    profile = get_target(manifest.target)
    rec = get_recipe(manifest.recipe)
    arrays = None
    samples = manifest.samples
    if not data and samples and (bundle / samples).is_file():
        from device_runtime.edgepack_run import Failure, read_inputs
        try:
            arrays = read_inputs(str(bundle / samples), [t.to_json() for t in manifest.inputs])
        except Failure as exc:
            raise VerificationError(f"the bundle's sample inputs are unreadable: {exc.message}",
                                    hint="pass --data eval.npz") from None
    if data is not None and not Path(data).exists():
        raise UsageError(f"verification data not found: {data}")
    from .contain import isolate
    from .convert import jobs
    from .load.formats import sniff_format
    sniff_format(Path(reference))
    unconfined = _unconfined(trust_model)
    progress(f"computing reference outputs with {reference}")
    dataset, refs, ref_names, noise = isolate.run(jobs.reference, str(reference), str(data) if data else None, arrays,
                                                  trust_model, signature, custom, rec.name,
                                                  what="running the reference model",
                                                  progress=progress)
    _check_names(ref_names, manifest)
    spec = _bundle_spec((bundle / manifest.model).read_bytes(), manifest)
    tolerance = _bundle_tolerance(manifest, rec, overrides)
    notes = [n for n in (unconfined, script_note, _other_reference(reference, manifest)) if n]
    return _ReferenceSide(manifest, profile, rec, dataset, refs, noise, spec, tolerance, arrays, notes, signature,
                          custom)


def _finish_notes(report: VerifyReport, ref: _ReferenceSide, overrides) -> None:
    report.notes += unheld_overrides(report, ref.tolerance, overrides)
    report.notes[:0] = ref.notes


def verify_on_device(bundle: str | os.PathLike, transport, *, reference: str | os.PathLike,
                     data: str | os.PathLike | None = None, remote_dir: str | None = None, release: str | None = None,
                     device_python: str | None = None, runtime: str | None = None, threads: int | None = None,
                     trust_model: bool = False, strict: bool = False, progress: Progress | None = None,
                     atol: list[str] | None = None, rtol: list[str] | None = None,
                     max_drop: float | list[str] | None = None, max_flips: list[str] | None = None,
                     output_kind: list[str] | None = None, signature: str | None = None,
                     custom_objects: str | os.PathLike | None = None) -> VerifyReport:
    """The verdict of ``bundle`` as computed by a real device (``transport``: SSH or ADB): the reference outputs come
    from ``reference`` on this host, the inputs (``data``, else the bundle's samples) go to the device in chunks, the
    deployed release (``release``, default ``current`` in ``remote_dir``) runs them with its own script in the
    device's environment, and the outputs are judged here by the emulator's criteria. The report's ``device`` holds
    the device's facts and how it differs from what the manifest was verified with. Raises DeployError (device
    unreachable, nothing deployed, script cannot run), VerificationError (the release on the device is not this
    bundle's), UsageError. ``signature``, ``custom_objects``: as in :func:`verify`."""
    from .deploy import ondevice
    from .deploy.releases import default_remote_dir, load_bundle
    progress = progress or _noop
    overrides = verdict_overrides(atol, rtol, max_drop, max_flips, output_kind)
    custom = resolve_custom(custom_objects, trust_model)
    with open_bundle(bundle) as path:
        loaded = load_bundle(path)
        spec_dir = remote_dir or default_remote_dir(loaded.manifest, transport)
        transport.path_expr(spec_dir)
        material, ref = device_material(path, reference, data, trust_model, progress, overrides, signature,
                                        custom)
        progress(f"running on {transport.describe()}")

        def step(name: str, detail: str = "") -> None:
            progress(f"{transport.describe()}: {detail}" if detail else f"{transport.describe()}: {name}")
        result, ran = ondevice.verify_device(transport, spec_dir, loaded, material, release=release,
                                             device_python=device_python, runtime=runtime, threads=threads,
                                             progress=step)
        return device_report(path, ref, material, result, ran, strict, overrides)


def device_material(bundle: Path, reference, data, trust_model: bool, progress, overrides,
                    signature: str | None = None, custom: tuple | None = None):
    """(:class:`~packager.deploy.ondevice.Material`, the reference side) for judging ``bundle`` on a device: the
    reference outputs from ``reference`` on ``data`` (else the bundle's samples), output kinds settled from the
    bundle's graph, output steps."""
    from .compare import with_kinds
    from .convert.inspect import output_ops
    from .deploy.ondevice import Material
    ref = _reference_side(bundle, reference, data, trust_model, progress, overrides, signature, custom)
    ops = output_ops((bundle / ref.manifest.model).read_bytes(), ref.spec.outputs)
    tol = with_kinds(ref.tolerance, ref.refs[0], ref.dataset.labels, ops)
    steps = {n: step for n, (_, step) in ops.items() if step}
    d = ref.dataset
    evidence = {"source": d.source, "count": d.count, "kind": d.evidence, "text": d.describe(), "notes": list(d.notes)}
    return Material(d.groups, ref.refs, tol, steps, d.labels, ref.noise or None, evidence), ref


def device_report(bundle: Path, ref, material, result, ran, strict: bool = False, overrides=None) -> VerifyReport:
    """The VerifyReport of one device's run: its RuntimeResult, the device's facts (``report.device``) and how they
    differ from the runtimes the manifest records as verified (said in the notes)."""
    from .deploy.ondevice import differences
    verified = ref.manifest.verified_runtimes
    info = dict(ran.info)
    info["differs"] = differences(info, verified)
    info.update(chunks=ran.chunks, bytes_sent=ran.bytes_sent)
    ev = material.evidence
    passed = result.status == "passed" and not (strict and (ev.get("kind") in WEAK_EVIDENCE or info["differs"]))
    report = VerifyReport(str(bundle), ref.rec.name, ref.profile.name, passed, ev.get("source", ""),
                          int(ev.get("count", 0)), [result], ref.manifest.model_size,
                          notes=[f"this device differs from what the bundle was verified with: {d}" for d in info["differs"]]
                          + list(ev.get("notes") or []),
                          evidence=ev.get("kind", "held-out"), evidence_text=ev.get("text", ""), strict=strict,
                          require_all=True, device=info)
    _finish_notes(report, ref, overrides)
    return report


def _bundle_tolerance(manifest: Manifest, rec: Recipe, overrides: dict | None) -> dict:
    """The tolerance the bundle was built with (manifest; a field recorded before it existed takes the recipe's
    value), with this call's overrides on top."""
    from .recipes import Tolerance
    names = manifest.output_names
    recorded = manifest.tolerance
    base = {n: Tolerance.from_record(recorded[n], rec.tolerance) if n in recorded else rec.tolerance for n in names}
    return resolve_tolerance(base, names, overrides=overrides)


def _check_names(names: list[str], manifest: Manifest) -> None:
    ref_names = set(names)
    bundle_names = set(manifest.output_names)
    if ref_names != bundle_names:
        raise UsageError(f"the reference model's outputs ({', '.join(sorted(ref_names))}) are not the bundle's "
                         f"({', '.join(sorted(bundle_names))})", hint="pass the model the bundle was built from")


def inspect(path: Bundle | str | os.PathLike) -> dict:
    """Describe a bundle (a :class:`~packager.bundle.files.Bundle`, a BuildResult, a bundle directory or archive), or
    a .tflite file: for a bundle its manifest (JSON), model, integrity (:func:`check_files`) and runtime problems."""
    path = Path(path)
    if path.is_file() and path.name.endswith((".tar.gz", ".tgz")):
        with open_bundle(path) as unpacked:
            info = inspect(unpacked)
        info["path"] = str(path)
        return info
    if path.is_dir():
        manifest = read_manifest(path)
        model = path / manifest.model
        spec = _bundle_spec(_read_model(model), manifest)
        return {"kind": "bundle", "path": str(path), "manifest": manifest.to_json(), "model": spec.to_json(),
                "integrity": check_files(path, manifest) or "ok",
                "runtime_problems": {name: spec.runtime_problems(name) for name in manifest.runtime_names}}
    spec = inspect_bytes(_read_model(path))
    return {"kind": "tflite", "path": str(path), "model": spec.to_json(),
            "runtime_problems": {rt.name: spec.runtime_problems(rt.name)
                                 for t in list_targets().values() for rt in t.runtimes}}


def _bundle_spec(model: bytes, manifest: Manifest):
    """:func:`inspect_bytes` of a bundle's model with the manifest's names: matched by TFLite tensor
    index, since a model converted without a signature keeps raw names (``Identity``) inside."""
    from dataclasses import replace
    names = {t.index: t.name for t in manifest.inputs + manifest.outputs}
    spec = inspect_bytes(model)
    order = {n: i for i, n in enumerate(manifest.input_names + manifest.output_names)}
    for kind in ("inputs", "outputs"):
        tensors = [replace(t, name=names.get(t.index, t.name)) for t in getattr(spec, kind)]
        setattr(spec, kind, sorted(tensors, key=lambda t: (order.get(t.name, len(order)), t.name)))
    return spec


def _read_model(path: Path) -> bytes:
    if not path.is_file():
        raise UsageError(f"not found: {path}", hint="pass a bundle directory or a .tflite file")
    if path.stat().st_size > 2 << 30:
        raise UsageError(f"{path} is larger than 2 GiB; not a TFLite model edgepack can inspect")
    return path.read_bytes()
