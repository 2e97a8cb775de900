"""What a bundle holds, decided in one place: the manifest's fields (:func:`stage`), the verification
record (:func:`record_verification`), the bundle README with the target's install/run steps,
requirements files per runtime, and the samples for ``--self-test``. The manifest is built here as a
:class:`~packager.bundle.manifest.Manifest` (:meth:`~packager.bundle.manifest.Manifest.new`), completed with
``replace`` and written through :class:`~packager.bundle.files.Staging`; docs/bundle-format.md describes every field.
"""
from __future__ import annotations

import json
import shlex
from dataclasses import asdict
from pathlib import Path

from ..lazynp import np

from ..convert.inspect import ModelSpec
from ..targets import TargetProfile
from .files import ENTRYPOINT, ENTRYPOINT_SOURCE, MODEL, Staging, npz_bytes, sha256_tree
from .manifest import Manifest, RuntimeEntry, VerificationStatus

# One rule for input files, the same in the host emulator and the device script (its _prepare).
INPUT_VALUES_RULE = ("input files hold real values in the original model's units, whatever their dtype (uint8 "
                     "pixels are pixel values); a quantized input is quantized by the device script, "
                     "q = round(x / scale) + zero_point; with --raw, integer-typed inputs are already quantized and pass unchanged")


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


def _readme(target: TargetProfile, manifest: Manifest, address: str) -> str:
    name = manifest.name
    lines = [f"# {name}: {manifest.source['path']} for {target.name} ({manifest.recipe})", "",
             target.description, "", "## Install", ""]
    lines += [f"    {s.replace('{name}', name).replace('{entrypoint}', ENTRYPOINT)}" for s in target.install_steps]
    lines += ["", "Or let edgepack deploy it (checksummed on the device, switched atomically):", "",
              f"    edgepack deploy . {address} --smoke",
              "", "## Run", "", f"    {target.run.replace('{name}', name).replace('{entrypoint}', ENTRYPOINT)}", "",
              f"    python3 {ENTRYPOINT} --self-test          # bundled samples vs expected outputs",
              f"    python3 {ENTRYPOINT} --benchmark 100      # latency on this device", "",
              "Inputs: an .npz keyed by input name (first axis = samples), .npy for one input, or JSON.",
              f"Input values: {INPUT_VALUES_RULE}.",
              "Outputs: an .npz keyed by output name; quantized outputs are dequantized (--raw keeps integers).", "",
              *_fixed_lines(manifest),
              "## Inputs and outputs", ""]
    for kind, tensors in (("inputs", manifest.inputs), ("outputs", manifest.outputs)):
        for t in tensors:
            qs = f", scale {t.scale:.6g}, zero point {t.zero_point}" if t.quantized else ""
            lines.append(f"- {kind[:-1]} `{t.name}`: {t.dtype} {list(t.shape)}{qs}")
    lines += ["", "## Runtimes", ""]
    for rt in manifest.runtimes:
        ranges = " ".join(shlex.quote(r) for r in rt.requirements)
        if rt.wheels:
            how = (f"`pip install --require-hashes --only-binary :all: --no-deps -r requirements-{rt.name}.txt`, "
                   f"the exact wheels locked from `{ranges}` ({_wheel_summary(rt.wheels)})")
        else:
            how = f"`pip install {ranges}`"
        lines.append(f"- {rt.name} ({rt.status}): {how}" + (f" - {rt.reason}" if rt.reason else ""))
    if target.android_assets:
        lines += ["", "## Android app", "", "`assets/` holds the model, manifest and labels an app can copy into "
                  "`src/main/assets/`. Keep the model uncompressed in the APK "
                  "(`androidResources { noCompress += \"tflite\" }`) so it can be memory-mapped."]
    return "\n".join(lines) + "\n"


def stage(staging: Staging, profile, rec, io, prepared, name, selected, label_names,
          build_key: str | None = None) -> Manifest:
    """Write the model, the device script, samples (inputs and the expected outputs of the bundled
    model), labels and Android assets into ``staging``, and a manifest with verification ``pending``
    (the device script needs it while the staged bundle is verified); ``build_key`` goes to ``source``.
    Returns the manifest written, completed by :func:`record_verification` and :func:`finish`."""
    conversion, check = prepared.conversion, prepared.check
    spec = conversion.spec
    model_sha = staging.write(MODEL, conversion.tflite)
    staging.write(ENTRYPOINT, ENTRYPOINT_SOURCE.read_bytes(), mode=0o755)
    sample_inputs = check.head(profile.samples).inputs
    count = len(next(iter(sample_inputs.values())))
    head = getattr(conversion, "check_head", None) or {}
    if head and all(len(v) >= count for v in head.values()) and set(head) == {t.name for t in spec.outputs}:
        # the conversion check ran this model on these inputs already (the same Runner and chunks: the same bits)
        expected = {k: v[:count] for k, v in head.items()}
    else:
        from ..convert.converter import run_tflite
        expected = run_tflite(conversion.tflite, spec, sample_inputs)
    staging.write("samples/inputs.npz", npz_bytes(sample_inputs))
    staging.write("samples/expected.npz", npz_bytes(expected))
    inputs, outputs = [t.to_json() for t in spec.inputs], [t.to_json() for t in spec.outputs]
    if label_names:
        staging.write("labels.txt", ("\n".join(label_names) + "\n").encode())
    manifest = Manifest.new(
        name=name, model=MODEL, entrypoint=ENTRYPOINT,
        model_sha256=model_sha, model_size=len(conversion.tflite), files={},
        inputs=inputs, outputs=outputs,
        ops=[{"name": o.name, "version": o.version, "custom": o.custom, "count": o.count} for o in spec.ops],
        samples={"inputs": "samples/inputs.npz", "expected": "samples/expected.npz",
                 "count": int(next(iter(sample_inputs.values())).shape[0]),
                 "atol": _self_test_atol(spec, expected)},
        recipe=rec.to_json(io), target=profile.to_json(),
        runtimes=runtime_entries(selected, None, spec, profile.python),
        source={"path": Path(prepared.path).name, "format": prepared.format,
                "sha256": sha256_tree(Path(prepared.path)), "conversion_path": conversion.path,
                **({"signature": prepared.signature} if getattr(prepared, "signature", None) else {}),
                **({"build_key": build_key} if build_key else {})},
        versions=prepared.versions,
        fixed=prepared.fixed,
        tolerance={n: asdict(t) for n, t in prepared.tolerance.items()},
        input_values=INPUT_VALUES_RULE,
        verification={"status": VerificationStatus.PENDING.value},
        **({"labels": "labels.txt"} if label_names else {}),
    )
    if profile.android_assets:
        staging.write(f"assets/{MODEL}", conversion.tflite)
        if label_names:
            staging.write("assets/labels.txt", ("\n".join(label_names) + "\n").encode())
        staging.write("assets/edgepack.json", json.dumps({
            "model": MODEL, "inputs": inputs, "outputs": outputs, "labels": "labels.txt" if label_names else None,
            "preprocessing": "float inputs as in training; quantized inputs: q = round(x / scale) + zero_point",
        }, indent=2).encode())
    staging.write("README.md", b"")
    return staging.write_manifest(manifest)  # the device script needs it during verification


def _fixed_lines(manifest: Manifest) -> list[str]:
    fixed = manifest.fixed
    lines = []
    if fixed.get("batch"):
        lines.append(f"Fixed batch: the model takes {fixed['batch']} sample(s) per invoke; the script chunks and pads.")
    if fixed.get("variable_axes"):
        lines.append("Variable-length axes (" + ", ".join(fixed["variable_axes"]) + "): the script resizes the model "
                     "to each input's length.")
    return lines + ([""] if lines else [])


def _wheel_summary(wheels: list) -> str:
    by_env: dict = {}
    for w in wheels:
        by_env.setdefault((w["python"], w["arch"]), []).append(w)
    return "; ".join(f"Python {py} {arch}: " + ", ".join(f"{w['name']} {w['version']}" for w in ws)
                     for (py, arch), ws in sorted(by_env.items()))


def locked_wheels(rt, python: str | None) -> list[dict]:
    """The wheels of ``packager/runtimes.lock.json`` a device of Python ``python`` installs for runtime ``rt``:
    each architecture's (arm64 for the device, x86_64 for the host emulator and x86_64 machines), as dicts with
    name, version, filename, sha256, platform, python, arch. Empty when the lock does not cover them."""
    from .. import runtime_lock
    out = []
    for arch in runtime_lock.MACHINES:
        for w in runtime_lock.wheels(rt, str(python), arch) or () if python else ():
            out.append({**w, "python": str(python), "arch": arch})
    return out


def pinned_lines(wheels: list[dict]) -> list[str]:
    """The requirement lines of a bundle for ``wheels`` (:func:`locked_wheels`): ``name==version
    --hash=sha256:...``, every architecture's hash on one line."""
    from .. import runtime_lock
    return runtime_lock.requirement_lines([wheels])


def runtime_entries(selected, report=None, spec: ModelSpec | None = None, python: str | None = None) -> list[dict]:
    """One manifest entry per selected runtime (``RuntimeProfile``): pip requirements (ranges), the exact
    ``wheels`` of the runtime lock for the device's ``python`` (each marked ``verified`` when the verdict's
    environment held that very file), and its status in ``report`` (a VerifyReport), else ``unverified`` with
    the problems ``spec`` finds statically."""
    entries = []
    for rt in selected:
        entry = {"name": rt.name, "module": rt.module, "requirements": list(rt.requirements), "python": rt.python}
        result = next((r for r in report.runtimes if r.runtime == rt.name), None) if report else None
        wheels = locked_wheels(rt, python)
        if wheels:
            ran = {w["sha256"] for w in (result.wheels if result else ())}
            entry["wheels"] = [{**w, "verified": w["sha256"] in ran} for w in wheels]
        if result:
            entry.update(status=str(result.status), version=result.version, arch=result.arch)
            if result.error:
                entry["reason"] = result.error
        else:
            problems = spec.runtime_problems(rt.name) if spec else []
            entry.update(status="unverified", reason="; ".join(problems) or None)
        entries.append(entry)
    return entries


def _requirement_text(rt: RuntimeEntry) -> bytes:
    lines = pinned_lines(list(rt.wheels)) if rt.wheels else list(rt.requirements)
    return ("\n".join(lines) + "\n").encode()


def _write_requirements(staging: Staging, manifest: Manifest) -> None:
    """requirements-RUNTIME.txt for every usable runtime; requirements.txt = the first that passed. A runtime of
    the lock gets its exact wheels (``name==version --hash=sha256:...``), others their ranges."""
    usable = sorted((r for r in manifest.runtimes if r.usable), key=lambda r: r.status != "passed")
    for rt in manifest.runtimes:
        if rt.usable:
            staging.write(f"requirements-{rt.name}.txt", _requirement_text(rt))
    if usable:
        staging.write("requirements.txt", _requirement_text(usable[0]))


def record_verification(manifest: Manifest, selected, report) -> Manifest:
    """The staged ``manifest`` with ``report`` (a VerifyReport, or None for ``--no-verify``) recorded."""
    if report is None:
        return manifest.replace(verification={"status": VerificationStatus.SKIPPED.value, "reason": "--no-verify"})
    status = VerificationStatus.PASSED if report.passed else VerificationStatus.FAILED
    return manifest.replace(runtimes=runtime_entries(selected, report, python=manifest.target_python),
                            verification={"status": status.value, **report.summary()})


def finish(staging: Staging, profile, manifest: Manifest, address: str) -> Manifest:
    """The bundle README and requirements files from the final ``manifest``, then manifest.json last (returned
    as written). ``address``: how ``edgepack deploy`` names a device of the target's transport (``--host USER@HOST``)."""
    staging.files.pop("README.md", None)
    staging.write("README.md", _readme(profile, manifest, address).encode())
    _write_requirements(staging, manifest)
    return staging.write_manifest(manifest)
