"""`edgepack diagnose`: load the reference, convert it to float32 in the contained child, prepare
the target's runtime environments and run the analysis of :mod:`packager.convert.localise` (which op goes
wrong, and why). Also the brief first divergence added to a failing verification."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

from .errors import EnvironmentProblem, UsageError
from .convert.localise import (COSINE_LIMIT, REL_LIMIT, Cause, Diagnosis, Dump, OpRow, RuntimeDivergence, analyse,  # noqa: F401
                               brief, compare_quantized, compare_runtimes, dump_tensors, explain, local_dump,
                               quick_brief)

MAX_SAMPLES = 256         # samples a diagnosis runs (all intermediates are kept in memory)


def verify_brief(bundle: Path, reference, data, arrays, trust_model: bool, progress=None,
                 signature: str | None = None, custom: tuple | None = None) -> str | None:
    """The first divergence of ``bundle`` (a bundle or staged bundle directory) that failed
    verification: the reference converted to float32 in the contained child (``custom``: its resolved
    ``--custom-objects``, :func:`packager.load.custom.resolve`), then :func:`quick_brief` on ``data`` (else
    ``arrays``, at most 64 samples). Never raises."""
    from .contain import isolate
    from .convert import jobs
    from .bundle.files import npz_bytes, read_manifest
    progress = progress or (lambda _m: None)
    try:
        with tempfile.TemporaryDirectory(prefix="edgepack-diag-") as tmp:
            if data is None and arrays is not None:
                data = Path(tmp) / "samples.npz"
                data.write_bytes(npz_bytes({k: v[:64] for k, v in arrays.items()}))
            elif data is not None:
                data = _capped(Path(data), Path(tmp))
            progress("locating the first divergence (float32 conversion of the reference)")
            prepared = isolate.run(jobs.prepare, str(reference), "float32", "float", None,
                                   str(data) if data is not None else None, trust_model, None, (), signature, custom,
                                   what="converting the reference to float32", progress=progress)
        manifest = read_manifest(bundle)
        model = (bundle / manifest.model).read_bytes()
        return quick_brief(model, prepared.conversion.tflite, prepared.check.inputs, manifest.output_names)
    except Exception:  # noqa: BLE001 - a failure message must not fail on its own annotation
        return None


def calibration_causes(calibration, specs, inputs: dict) -> list[Cause]:
    """Evidence from the calibration set itself (when the user has it): too few samples, and a
    range unlike the diagnosed data's. ``specs``: the model's input Tensors."""
    from .load.calibration import RECOMMENDED, load_dataset
    cal = load_dataset(calibration, specs)
    causes = []
    count = cal.count
    if count < RECOMMENDED[0]:
        causes.append(Cause("few-calibration", f"only {count} calibration samples; {RECOMMENDED[0]}-{RECOMMENDED[1]} "
                            "representative samples are recommended (ranges from a few samples miss the tails)"))
    for name, c in cal.inputs.items():
        d = inputs.get(name)
        if d is None or c.dtype.kind != "f" or d.dtype.kind not in "fiu" or not c.size or not d.size:
            continue
        clo, chi, dlo, dhi = float(c.min()), float(c.max()), float(d.min()), float(d.max())
        span = max(chi - clo, 1e-12)
        if dhi > chi + 0.25 * span or dlo < clo - 0.25 * span or (dhi - dlo) < 0.25 * span:
            causes.append(Cause("calibration-scale", f"calibration data for {name!r} spans [{clo:.4g}, {chi:.4g}] "
                                f"but the data spans [{dlo:.4g}, {dhi:.4g}]: calibrate on data scaled like the "
                                "real inputs"))
    return causes


def diagnose(bundle, *, reference, data=None, runtimes: list[str] | None = None, arch: str | None = None,
             trust_model: bool = False, progress=None, calibration=None, signature: str | None = None,
             custom_objects=None) -> Diagnosis:
    """Localise where ``bundle`` (a Bundle, a bundle directory or archive, or a bare ``.tflite``; target
    rpi's runtimes for a bare model) departs from ``reference`` (the original model file).

    Inputs: ``data`` (.npz / .npy / image folder, at most :data:`MAX_SAMPLES` used), else the
    bundle's samples, else synthetic. Raises UsageError (bad input), EnvironmentProblem (no
    runtime environment), ConversionError (the reference cannot be converted to float32).
    ``calibration``: the calibration set the bundle was built with, if at hand (more evidence). ``signature``: the
    reference SavedModel's signature (default: the one recorded in the bundle's manifest); ``custom_objects``: the
    reference's custom layers (a ``.py`` file or module, with ``trust_model``), as in :func:`packager.build`."""
    from .contain import isolate
    from .convert import jobs
    from .bundle.files import open_bundle, read_manifest
    from .verification.emulator import get_env
    from .load.formats import sniff_format
    from .targets import get_target
    progress = progress or (lambda _m: None)
    path = Path(bundle)
    if not path.exists():
        raise UsageError(f"not found: {bundle}", hint="pass a bundle directory, its .tar.gz, or a .tflite")
    sniff_format(Path(reference))
    from .load.custom import resolve
    custom = resolve(custom_objects, trust_model)
    if data is not None and not Path(data).exists():
        raise UsageError(f"data not found: {data}")
    if calibration is not None and not Path(calibration).exists():
        raise UsageError(f"calibration data not found: {calibration}")
    with tempfile.TemporaryDirectory(prefix="edgepack-diag-") as tmp:
        if path.is_file() and not path.name.endswith((".tar.gz", ".tgz")):
            model = path.read_bytes()
            if model[4:8] != b"TFL3":
                raise UsageError(f"{path} is neither a bundle nor a TFLite model")
            manifest, profile, samples = None, get_target("rpi"), None
        else:
            with open_bundle(path) as unpacked:
                manifest = read_manifest(unpacked)
                model = (unpacked / manifest.model).read_bytes()
                profile = get_target(manifest.target)
                samples = manifest.samples
                signature = signature or manifest.source.get("signature")
                if samples and (unpacked / samples).is_file() and data is None:
                    shutil.copy(unpacked / samples, Path(tmp) / "samples.npz")
                    data = Path(tmp) / "samples.npz"
        if data is not None:
            data = _capped(Path(data), Path(tmp))
        progress(f"converting {reference} to float32 (the reference for every tensor)")
        prepared = isolate.run(jobs.prepare, str(reference), "float32", "float", None,
                               str(data) if data is not None else None, trust_model, None, (), signature, custom,
                               what="converting the reference to float32", progress=progress)
        if manifest is not None:
            ref_names = {t.name for t in prepared.outputs}
            bundle_names = set(manifest.output_names)
            if ref_names != bundle_names:
                raise UsageError(f"the reference model's outputs ({', '.join(sorted(ref_names))}) are not the "
                                 f"bundle's ({', '.join(sorted(bundle_names))})",
                                 hint="pass the model the bundle was built from")
        inputs = {k: v[:MAX_SAMPLES] for k, v in prepared.check.inputs.items()}
        selected = [profile.runtime(r) for r in runtimes] if runtimes else list(profile.runtimes)
        envs, problems = [], []
        for rt in selected:
            try:
                envs.append(get_env(rt, arch, profile.python, progress=lambda m, *_: progress(m)))
            except EnvironmentProblem as exc:
                problems.append(f"{rt.name}: {exc.message}")
        if not envs:
            raise EnvironmentProblem("no runtime environment could be prepared: " + "; ".join(problems),
                                     hint="see `edgepack doctor`")
        diag = analyse(model, prepared.conversion.tflite, inputs, envs, progress,
                       [t.name for t in prepared.outputs])
    if calibration is not None:
        extra = calibration_causes(calibration, prepared.inputs, inputs)
        known = {c.kind for c in diag.causes}
        diag.causes += [c for c in extra if c.kind not in known or c.kind == "few-calibration"]
    diag.model, diag.reference = str(bundle), str(reference)
    diag.recipe = manifest.recipe if manifest is not None else None
    diag.evidence = prepared.check.describe()
    diag.notes += [f"{p} (not compared)" for p in problems]
    return diag


def _capped(data: Path, tmp: Path) -> Path:
    """An .npz with at most MAX_SAMPLES samples (other formats are passed through)."""
    if data.suffix != ".npz":
        return data
    try:
        with np.load(data, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read {data}: {exc}") from None
    if all(len(a) <= MAX_SAMPLES for a in arrays.values() if a.ndim):
        return data
    # The same file name, so that what the diagnosis rests on names the user's file (--data eval.npz), not a temp one
    out = tmp / "capped" / data.name
    out.parent.mkdir(exist_ok=True)
    np.savez(out, **{k: a[:MAX_SAMPLES] if a.ndim else a for k, a in arrays.items()})
    return out
