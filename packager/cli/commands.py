"""The `edgepack` command: a thin typer layer over :mod:`packager.api`.

Parses, makes one library call, renders. Every EdgepackError becomes `error: ...` + `hint: ...`
on stderr and its documented exit code (see README "Exit codes"); no tracebacks for user mistakes.
"""
from __future__ import annotations

import sys
import textwrap
from enum import Enum
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from .boundary import command
from .deploy import device_options
from ..errors import EXIT_CODES, EdgepackError, UsageError, disk_full
from ..version import __version__

# Every EDGEPACK_* variable a user may set (tests/test_render.py checks this list against the code).
ENVIRONMENT = {
    "EDGEPACK_CACHE_DIR": "cache directory [~/.cache/edgepack]",
    "EDGEPACK_ENV_DIR": "runtime environments and the arm64 root filesystem [EDGEPACK_CACHE_DIR]",
    "EDGEPACK_NO_CACHE": "1: convert and verify afresh (as --no-cache)",
    "EDGEPACK_TARGETS_PATH": "more target profile directories, ':'-separated",
    "EDGEPACK_MEMORY_MB": "memory limit of model loading/conversion [8192]",
    "EDGEPACK_TIMEOUT": "seconds for model loading/conversion [1800]",
    "EDGEPACK_WIRE_MAX_MB": "largest result the TensorFlow child may send back, in MiB [8192]",
    "EDGEPACK_DEBIAN_MIRROR": "Debian mirror for the arm64 root filesystem",
    "EDGEPACK_DEVICE_LOCK_WAIT": "seconds a deploy/rollback waits for another holding the device directory [60]",
    "EDGEPACK_DEVICE_CHUNK_MB": "verify on a device: MiB of inputs sent per run [8]",
    "EDGEPACK_VERIFY_JOBS": "runtime environments verifying at once [the CPUs edgepack may use]",
    "EDGEPACK_VERIFY_BUDGET": "seconds one run of the model over synthetic check inputs may take; fewer samples "
                              "(floor 16, said in the verdict) when slower [1; 0: all 64]",
    "EDGEPACK_VERIFY_SAMPLES": "synthetic check inputs: this many samples (of 64), said in the verdict",
    "EDGEPACK_SERIAL": "1: reference outputs computed after the conversion, not beside it (same results)",
    "EDGEPACK_DEBUG": "1: traceback of an internal error",
    "EDGEPACK_IN_PROCESS": "1: TensorFlow in this process, not a child",
    "EDGEPACK_RUNTIME": "device script: runtime to import (--runtime)",
    "EDGEPACK_NO_ISOLATE": "device script: run in-process (--no-isolate)",
    "EDGEPACK_MAX_INPUT_ELEMENTS": "device script: largest input [2**28]",
    "EDGEPACK_RUNTIME_MEMORY_MB": "device script: address-space limit of the runtime [none; emulator 4096]",
    "EDGEPACK_SANDBOX": "0: no Landlock sandbox for model loading; require: fail without one",
    "EDGEPACK_NO_REAPER": "1: no cleanup process for temp dirs and children if edgepack is killed",
}
CONTEXT = {"help_option_names": ["-h", "--help"]}

app = typer.Typer(
    name="edgepack",
    help="Take a trained TensorFlow model to edge devices, quantized, and prove it still works there.\n\n"
         "Typical use:\n\n"
         "  edgepack build model.h5 --target rpi --quantize int8 --calibration samples.npz\n\n"
         "  edgepack verify dist/model-rpi --reference model.h5\n\n"
         "  edgepack deploy dist/model-rpi --host pi@raspberrypi.local --smoke\n\n"
         "Exit codes:\n\n\b\n" + "\n".join(textwrap.fill(f"{k}  {v}", 76, subsequent_indent="   ")
                                          for k, v in EXIT_CODES.items()) + "\n\n"
         "Output: -v/--verbose shows every progress line (pip, debootstrap), --quiet none (results and errors "
         "still print); --json prints exactly one JSON document on stdout. -q is --quantize (build), not quiet.",
    epilog="Environment variables:\n\n\b\n" + "\n".join(f"{k:<27} {v}" for k, v in ENVIRONMENT.items()),
    no_args_is_help=True,
    add_completion=True,
    context_settings=CONTEXT,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


class IO(str, Enum):
    """``--io`` choices: the input/output type of the quantized model (``float`` keeps float inputs and outputs)."""
    float = "float"
    int8 = "int8"
    uint8 = "uint8"
    int16 = "int16"


class Arch(str, Enum):
    """``--arch`` choices: verify on this host's CPU, or on arm64 under qemu-user."""
    host = "host"
    arm64 = "arm64"


def _recipes_arg(value: str | None) -> list | None:
    """``int8`` / ``int8,float16`` / ``all`` / ``auto`` -> recipe names; UsageError listing the choices."""
    if value is None:
        return None
    from ..recipes import list_recipes
    known = list(list_recipes())
    names = known if value.strip() == "all" else [v.strip() for v in value.split(",") if v.strip()]
    bad = [n for n in names if n not in known + ["auto"]]
    if bad or not names or ("auto" in names and len(names) > 1):
        raise UsageError(f"unknown recipe {', '.join(bad) or value!r}" if bad else f"--quantize {value!r}: auto "
                         "stands alone", hint="choose from: " + ", ".join(known) + ", all, auto")
    return list(dict.fromkeys(names))


def _arch(arch: Optional[Arch]) -> Optional[str]:
    return None if arch in (None, Arch.host) else arch.value


JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout (for CI).")]
TrustOpt = Annotated[bool, typer.Option("--trust-model", help="Load models that carry code (Lambda layers, "
                     "custom classes, file/Python ops). Only for models from a source you trust.")]
CustomOpt = Annotated[Optional[str], typer.Option("--custom-objects", metavar="FILE.py|MODULE", help="Python file "
                      "(or importable module, e.g. mypkg.layers) defining the model's custom layers, losses or "
                      "functions, as Keras's custom_objects: its Keras classes and functions, or its CUSTOM_OBJECTS "
                      "dict. Runs that code, so it needs --trust-model; imported only inside the sandbox.")]
AtolOpt = Annotated[Optional[List[str]], typer.Option("--atol", metavar="[NAME:]VALUE", help="Absolute error "
                    "allowed, in the output's units: VALUE for every output or NAME:VALUE for one (repeatable); "
                    "replaces the recipe's atol (see `edgepack recipes`).")]
RtolOpt = Annotated[Optional[List[str]], typer.Option("--rtol", metavar="[NAME:]VALUE", help="Error allowed "
                    "relative to max|reference|, as --atol.")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Every progress line, including pip's and "
                       "debootstrap's own.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", help="No progress lines and no notes; results and errors still "
                     "print.")]
RuntimeOpt = Annotated[Optional[List[str]], typer.Option("--runtime", metavar="NAME", help="Only these runtimes of the "
                       "target (repeatable, e.g. ai-edge-litert or tflite-runtime); each must pass.")]
ArchOpt = Annotated[Optional[Arch], typer.Option("--arch", help="CPU to verify on: host, or arm64 under qemu-user.")]
KindOpt = Annotated[Optional[List[str]], typer.Option("--output-kind", metavar="NAME:KIND[:OPTIONS]", help="What an "
                    "output means, when edgepack cannot infer it (repeatable): class-scores (e.g. logits), "
                    "probabilities (sigmoid; :threshold=0.3), pixel-classes, embedding, integer (:sets for top-k "
                    "ids), values. It decides the criteria the output is judged by (see `edgepack recipes`).")]
FlipsOpt = Annotated[Optional[List[str]], typer.Option("--max-flips", metavar="[NAME:]FRACTION", help="Fraction of "
                     "decisions (classes, thresholds, pixels, ids) allowed to change, replacing the recipe's "
                     "(e.g. 0.01); reference ties within float noise are never counted.")]
SignatureOpt = Annotated[Optional[str], typer.Option("--signature", metavar="NAME", help="The SavedModel signature "
                         "to use (default serving_default, else the only one; verify and diagnose: the one the "
                         "bundle was built from).")]
StrictOpt = Annotated[bool, typer.Option("--strict", help="Also fail when the verdict rests on weak evidence "
                      "(no held-out --data: calibration or synthetic inputs) or a runtime of the target cannot "
                      "run the model.")]


@app.command()
@command
def build(
    model: Annotated[Path, typer.Argument(metavar="MODEL", help="Keras .h5/.hdf5 or .keras file, a SavedModel directory, "
                     "or a .tflite (bundled as it is: --quantize as-is, verified against --reference or --reference-outputs).")],
    target: Annotated[str, typer.Option("--target", "-t", metavar="NAME", help="Target profile (see `edgepack targets`).")] = "rpi",
    quantize: Annotated[Optional[str], typer.Option("--quantize", "-q", metavar="RECIPE[,RECIPE...]|all|auto",
                        help="Recipe (see `edgepack recipes`); default: the target's default_recipe (int8 for rpi and android). Several "
                             "(comma-separated, or all) build one bundle each, side by side in one table: "
                             "-o is then their parent directory (dist/NAME-TARGET-RECIPE).")] = None,
    calibration: Annotated[Optional[Path], typer.Option("--calibration", "-c", metavar="FILE|DIR",
                           help="Representative inputs for int8/int16x8: .npz keyed by input name (or 'x'), .npy, "
                                "or a folder of images (resized to the input, scaled to [0,1]). 100-500 samples.")] = None,
    io: Annotated[IO, typer.Option("--io", help="Input/output type of the quantized model.")] = IO.float,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", metavar="DIR",
                      help="Bundle directory (default dist/<model>-<target>); a .tar.gz is written beside it.")] = None,
    data: Annotated[Optional[Path], typer.Option("--data", metavar="FILE", help="Held-out inputs (.npz with x [, y labels]) to "
                    "verify on; default: the calibration set, else seeded synthetic inputs.")] = None,
    runtime: RuntimeOpt = None,
    verify: Annotated[bool, typer.Option("--verify/--no-verify",
                      help="Run the host emulator before the bundle is written (default on).")] = True,
    arch: ArchOpt = None,
    verify_arch: Annotated[Optional[Arch], typer.Option("--verify-arch", hidden=True,
                           help="Old spelling of --arch.")] = None,
    name: Annotated[Optional[str], typer.Option("--name", metavar="NAME", help="Bundle name (default <model>-<target>).")] = None,
    labels: Annotated[Optional[Path], typer.Option("--labels", metavar="FILE", help="Class names, one per line (shipped).")] = None,
    html: Annotated[Optional[Path], typer.Option("--html", metavar="FILE", help="Also write an HTML report (written when the build "
                    "fails too, and with --no-verify).")] = None,
    trust_model: TrustOpt = False,
    custom_objects: CustomOpt = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Convert and verify afresh even if an identical "
                        "build is cached (~/.cache/edgepack, by content hash).")] = False,
    atol: AtolOpt = None,
    rtol: RtolOpt = None,
    strict: StrictOpt = False,
    max_drop: Annotated[Optional[float], typer.Option("--max-drop", metavar="POINTS", help="Accuracy drop allowed, in "
                        "percentage points, for every output with decisions (needs labels y, or y_NAME, in --data); "
                        "the budget of --quantize auto.")] = None,
    max_flips: FlipsOpt = None,
    output_kind: KindOpt = None,
    signature: SignatureOpt = None,
    reference: Annotated[Optional[Path], typer.Option("--reference", "-r", metavar="MODEL", help="A .tflite MODEL: the model it "
                         "was converted from (Keras or SavedModel), whose outputs it is verified against.")] = None,
    reference_outputs: Annotated[Optional[Path], typer.Option("--reference-outputs", metavar="FILE", help="A .tflite MODEL: "
                                 ".npz of its expected outputs on --data, one array per output name.")] = None,
    min_agreement: Annotated[Optional[float], typer.Option("--min-agreement", metavar="FRACTION", help="--quantize auto: top-1 "
                             "agreement with the original model required (0..1; default 0.99 if no budget).")] = None,
    min_cosine: Annotated[Optional[float], typer.Option("--min-cosine", metavar="COSINE", help="--quantize auto: cosine similarity "
                          "with the original model's outputs required.")] = None,
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
    json_output: JsonOpt = False,
):
    """Convert a model, quantize it, bundle it for a target and verify it in the target's runtime.

    Nothing is written to -o unless the bundle verifies (or --no-verify is given).

    Examples:

      edgepack build model.h5 --target rpi --quantize int8 --calibration samples.npz

      edgepack build saved/1 -t android -q float16 -o dist/mnist-android --json

      edgepack build model.tflite --reference model.keras --data eval.npz
    """
    from .. import api
    from . import render
    render.configure(quiet, verbose)
    budget = {"max_drop": max_drop, "min_agreement": min_agreement, "min_cosine": min_cosine}
    recipes = _recipes_arg(quantize)
    if recipes is not None and len(recipes) > 1:
        if min_agreement is not None or min_cosine is not None:
            raise UsageError("--min-agreement and --min-cosine are budgets for --quantize auto",
                             hint="drop them, or use --quantize auto (--max-drop and --max-flips work with any recipe)")
        with render.progress() as report:
            sweep = api.build_sweep(model, recipes, target=target, calibration=calibration, io=io.value,
                                    output=output, verify=verify, data=data, runtimes=runtime,
                                    arch=_arch(arch or verify_arch), name=name, labels=labels,
                                    trust_model=trust_model, progress=report, atol=atol, rtol=rtol, strict=strict,
                                    max_drop=max_drop, max_flips=max_flips, output_kind=output_kind,
                                    signature=signature,
                                    custom_objects=custom_objects)
        if json_output:
            render.emit_json({"ok": bool(sweep.written), **sweep.to_json()})
        else:
            render.show_sweep(sweep.to_json())
        if not sweep.written:
            if not json_output:
                render.error("no recipe gave a bundle that matches the original model", "see the reasons above")
            raise typer.Exit(4)
        if strict and len(sweep.written) < len(recipes):
            if not json_output:
                render.error("--strict: not every recipe gave a bundle", "see the reasons above")
            raise typer.Exit(4)
        return
    quantize = recipes[0] if recipes else None     # a name of packager/recipes.toml, or auto
    if quantize == "auto":
        from .diagnose import build_auto
        return build_auto(model, target, calibration, io, output, data, runtime, verify, arch or verify_arch, name,
                          labels, html, trust_model, atol, rtol, strict, budget, json_output, not no_cache,
                          signature, custom_objects)
    if min_agreement is not None or min_cosine is not None:
        raise UsageError("--min-agreement and --min-cosine are budgets for --quantize auto",
                         hint="add --quantize auto, or use --max-flips/--max-drop with a fixed recipe")
    try:
        with render.progress() as report:
            result = api.build(model, target=target, recipe=quantize,
                               calibration=calibration, io=io.value, output=output, verify=verify, data=data,
                               runtimes=runtime, arch=_arch(arch or verify_arch), name=name, labels=labels,
                               trust_model=trust_model, use_cache=not no_cache, progress=report, atol=atol,
                               rtol=rtol, strict=strict, max_drop=max_drop, max_flips=max_flips,
                               output_kind=output_kind, signature=signature,
                               custom_objects=custom_objects, reference=reference,
                               reference_outputs=reference_outputs)
    except EdgepackError as exc:
        if html:
            _write_report(html, f"edgepack build {model.name}", getattr(exc, "report", None), model, labels, exc=exc)
        raise
    data_out = result.to_json()
    if html:
        _write_report(html, f"edgepack build {model.name}", result.verification, model, labels,
                      manifest=result.manifest)
    if json_output:
        render.emit_json({"ok": True, **data_out})
    else:
        render.show_build(data_out)


@app.command()
@command
@device_options(panel="On the device", helps="verify")
def verify(
    bundle: Annotated[Path, typer.Argument(metavar="BUNDLE", help="Bundle directory written by `edgepack build`.")],
    reference: Annotated[Path, typer.Option("--reference", "-r", metavar="MODEL", help="The original model file.")],
    data: Annotated[Optional[Path], typer.Option("--data", metavar="FILE", help=".npz with x (or named inputs) and optional y "
                    "labels; default: the bundle's samples, else seeded synthetic inputs.")] = None,
    runtime: RuntimeOpt = None,
    arch: ArchOpt = None,
    verify_arch: Annotated[Optional[Arch], typer.Option("--verify-arch", hidden=True,
                           help="Same as --arch (the spelling build used to have).")] = None,
    strict: StrictOpt = False,
    html: Annotated[Optional[Path], typer.Option("--html", metavar="FILE", help="Write an HTML report: error distributions on a log "
                    "scale with the limit, bundle vs model, confusion matrices, provenance (also on failure).")] = None,
    trust_model: TrustOpt = False,
    custom_objects: CustomOpt = None,
    atol: AtolOpt = None,
    rtol: RtolOpt = None,
    max_drop: Annotated[Optional[float], typer.Option("--max-drop", metavar="POINTS", help="Accuracy drop allowed, in "
                        "percentage points, for every output with decisions (needs labels y in --data).")] = None,
    max_flips: FlipsOpt = None,
    output_kind: KindOpt = None,
    devices=None,   # --host, --serial, --local: one option per registered transport (_verify_device_options)
    ssh_config: Annotated[Optional[Path], typer.Option("--ssh-config", metavar="FILE", rich_help_panel="On the device",
                                                       help="ssh client config file (ssh -F FILE).")] = None,
    remote_dir: Annotated[Optional[str], typer.Option(
        "--remote-dir", metavar="DIR", rich_help_panel="On the device",
        help="Where the bundle is deployed on the device [default: the target's, ~/edgepack/NAME].")] = None,
    release: Annotated[Optional[str], typer.Option(
        "--release", metavar="ID", rich_help_panel="On the device",
        help="Run this release of the bundle [default: the one that is current].")] = None,
    device_python: Annotated[Optional[str], typer.Option(
        "--device-python", metavar="PATH", rich_help_panel="On the device",
        help="Python on the device [default: DIR/venv/bin/python if deploy --install made it, else python3].")] = None,
    threads: Annotated[Optional[int], typer.Option("--threads", min=1, rich_help_panel="On the device",
                                                   help="Interpreter threads on the device.")] = None,
    timeout: Annotated[float, typer.Option("--timeout", metavar="SECONDS", min=1.0, rich_help_panel="On the device",
                                           help="Timeout of each device command (transfers get more).")] = 60.0,
    signature: SignatureOpt = None,
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
    json_output: JsonOpt = False,
):
    """Run the bundle's own device script in each runtime environment of its target (only that
    runtime and numpy; no TensorFlow) and compare with the original model, output by output.
    With --host or --serial the device itself computes the outputs (the deployed release, in its own
    environment) and the verdict says which device, CPU, OS, Python, runtime and numpy it rests on.

    Exit code 0 (MATCH) only when every output meets the criteria of its kind; 4 MISMATCH; 7 UNVERIFIED (no
    runtime could run the bundle, so nothing was compared).

    Examples:

      edgepack verify dist/mnist-rpi --reference model.h5 --data eval.npz --html report.html

      edgepack verify dist/mnist-rpi --reference model.h5 --data eval.npz --host pi@raspberrypi.local
    """
    from .. import api
    from . import render
    render.configure(quiet, verbose)
    labels = bundle / "labels.txt" if (bundle / "labels.txt").is_file() else None
    on_device = any(v is not None for v in devices.values())
    if not on_device and any(v is not None for v in (ssh_config, remote_dir, release, device_python, threads)):
        raise UsageError("--ssh-config, --remote-dir, --release, --device-python and --threads apply to a verdict on "
                         "a device", hint="add --host USER@HOST, --serial SERIAL or --local DIR")
    if on_device and (runtime or arch or verify_arch):
        raise UsageError("--runtime/--arch choose emulator environments; on a device its own environment runs",
                         hint="drop them, or drop --host/--serial/--local to verify in the emulator")
    try:
        with render.progress() as report_cb:
            if on_device:
                from .deploy import _remote_dir, _transport
                transport = _transport(devices, ssh_config, timeout, None)
                with transport:
                    report = api.verify_on_device(bundle, transport, reference=reference, data=data,
                                                  remote_dir=remote_dir and _remote_dir(remote_dir, None, transport), release=release, device_python=device_python,
                                                  threads=threads, trust_model=trust_model, strict=strict,
                                                  progress=report_cb, atol=atol, rtol=rtol, max_drop=max_drop,
                                                  max_flips=max_flips, output_kind=output_kind, signature=signature,
                                                  custom_objects=custom_objects)
            else:
                report = api.verify(bundle, reference=reference, data=data, runtimes=runtime,
                                    arch=_arch(arch or verify_arch), strict=strict, trust_model=trust_model,
                                    progress=report_cb, atol=atol, rtol=rtol, max_drop=max_drop, max_flips=max_flips,
                                    output_kind=output_kind, signature=signature, custom_objects=custom_objects)
    except EdgepackError as exc:
        if html:
            _write_report(html, f"edgepack verify {bundle.name}", getattr(exc, "report", None), reference, labels,
                          exc=exc, bundle=bundle)
        raise
    data_out = report.to_json()
    if html:
        _write_report(html, f"edgepack verify {bundle.name}", report, reference, labels, bundle=bundle)
    if json_output:
        render.emit_json({"ok": report.passed, **data_out})
    else:
        render.show_verification(data_out)
    if not report.passed:
        if not json_output:
            bad = sum(r.status != "passed" for r in report.runtimes)
            if report.first_divergence:
                render.out.print(report.first_divergence, markup=False, highlight=False)
            if report.verdict == "UNVERIFIED":
                render.error("unverified: no runtime could run the bundle, so nothing was compared",
                             "see why above; `edgepack inspect BUNDLE` lists what each runtime lacks")
            else:
                problems = [f for f in report.failures if f != report.first_divergence]
                render.error(f"verification failed: {len(problems)} problem(s) in {bad} of "
                             f"{len(report.runtimes)} runtime(s), listed above",
                             "--html FILE shows the error distributions; --json every number")
        raise typer.Exit(report.exit_code)


@app.command()
@command
def inspect(
    path: Annotated[Path, typer.Argument(metavar="PATH", help="A bundle directory or a .tflite file.")],
    json_output: JsonOpt = False,
):
    """Inputs/outputs with quantization, ops with versions, size, and which runtimes cannot run it."""
    from .. import api
    from . import render
    info = api.inspect(path)
    render.emit_json(info) if json_output else render.show_inspect(info)


@app.command()
@command
def targets(json_output: JsonOpt = False):
    """The target profiles (targets/*.toml): runtimes with their pins, deploy method, defaults."""
    from . import render
    from ..targets import list_targets
    data = [t.to_json() for t in list_targets().values()]
    render.emit_json(data) if json_output else render.show_targets(data)


@app.command()
@command
def recipes(json_output: JsonOpt = False):
    """The quantization recipes (--quantize) and the tolerance each is verified against."""
    from . import render
    from ..recipes import list_recipes
    data = [{**r.to_json(), "io_types": list(r.io_types)} for r in list_recipes().values()]
    render.emit_json(data) if json_output else render.show_recipes(data)


@app.command()
@command
def doctor(json_output: JsonOpt = False):
    """What this host can emulate (runtime environments, arm64 under qemu) and how to fix what is missing.

    Exit code 5 when something build/verify needs is missing (TensorFlow, venv); ssh, adb and arm64
    emulation are optional and only reported."""
    from . import render
    from .doctor import checks
    data = [c.__dict__ for c in checks()]
    missing = [c["name"] for c in data if not c["ok"] and c.get("required")]
    if json_output:
        render.emit_json(data)
    else:
        for c in data:
            mark = "[green]ok[/green]     " if c["ok"] else ("[red]missing[/red]" if c.get("required") else
                                                            "[yellow]optional[/yellow]")
            render.out.print(f"{mark} {c['name']}: {c['detail']}" + (f"\n         fix: {c['fix']}" if c.get("fix")
                                                                       else ""), highlight=False)
    if missing:
        if not json_output:
            render.error(f"required for build/verify: {', '.join(missing)}", "run the fix shown above")
        raise typer.Exit(5)


def _version_callback(value: bool):
    if value:
        print(f"edgepack {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version_callback, is_eager=True,
                                                 help="Show the version and exit.")] = False,
          verbose: VerboseOpt = False, quiet: QuietOpt = False):
    from . import render
    render.configure(quiet, verbose)


def _write_report(path: Path, title: str, report, model: Path, labels: Optional[Path], *, exc=None,
                  manifest: Optional[dict] = None, bundle: Optional[Path] = None) -> None:
    """The HTML report, whatever happened: the verification (passed or not), the error of a
    failed command, or that nothing was verified (--no-verify); always with provenance."""
    from .. import api
    from . import render
    if manifest is None and bundle is not None and (bundle / "manifest.json").is_file():
        from ..bundle.files import read_manifest
        try:
            manifest = read_manifest(bundle)
        except UsageError:
            manifest = None
    status = None
    if report is None and exc is None:
        status = "not verified: built with --no-verify; nothing was run in the target's runtimes"
    names = None
    if labels is not None:
        try:
            names = [ln.strip() for ln in Path(labels).read_text(encoding="utf-8").splitlines() if ln.strip()]
        except (OSError, UnicodeDecodeError):
            names = None
    page = render.html_report(report.to_json() if report is not None else None, title,
                              provenance=api.provenance(model, manifest, report, command=sys.argv),
                              status=status, labels=names,
                              error={"message": exc.message, "hint": exc.hint} if exc is not None else None)
    try:
        path.write_text(page, encoding="utf-8")
    except OSError as err:
        render.error(f"cannot write the report {path}: {err}")


from .diagnose import register as _register_diagnose  # noqa: E402 - needs the names above

_register_diagnose(app, command, {"Arch": Arch, "TrustOpt": TrustOpt, "CustomOpt": CustomOpt, "JsonOpt": JsonOpt,
                                  "VerboseOpt": VerboseOpt, "QuietOpt": QuietOpt, "SignatureOpt": SignatureOpt})

try:  # deploy/run/rollback/status live in their own module
    from .deploy import register as _register_deploy
    _register_deploy(app)
except ImportError:  # pragma: no cover - only while that module does not exist
    pass

from .fleet import register as _register_fleet  # noqa: E402 - `edgepack fleet ...` (Ansible)
_register_fleet(app)


class _Terminated(BaseException):
    """Raised by the SIGTERM/SIGHUP handler of :func:`main`; never an error edgepack explains."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def main(argv: list[str] | None = None) -> None:
    """Console entry point, with option defaults from ./edgepack.toml or [tool.edgepack] in
    ./pyproject.toml (see packager/cli/config.py). Errors edgepack can explain exit with their code;
    anything else is a bug: one line, exit 1, and the traceback only with EDGEPACK_DEBUG=1."""
    import os
    import signal

    def terminated(signum, frame):  # SIGTERM/SIGHUP unwind like Ctrl-C: every cleanup runs
        raise _Terminated(signum)

    for name in ("SIGTERM", "SIGHUP"):
        if hasattr(signal, name) and signal.getsignal(getattr(signal, name)) == signal.SIG_DFL:
            signal.signal(getattr(signal, name), terminated)
    json_mode = "--json" in (sys.argv[1:] if argv is None else argv)

    def fail(message: str, hint: str | None, code: int):
        from . import render
        if json_mode:  # --json: stdout still holds one JSON document
            render.emit_json({"ok": False, "error": message, "hint": hint, "exit_code": code})
        render.error(message, hint)
        sys.exit(code)

    try:
        import typer.main

        from . import config
        # click's UsageError (typer vendors click in recent versions: found through typer's own subclass)
        click_usage = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")
        cli = typer.main.get_command(app)
        try:     # not standalone: a usage mistake goes through fail() too (one line + hint; --json: one document)
            code = cli(args=argv, prog_name="edgepack", default_map=config.default_map(cli), standalone_mode=False)
        except click_usage as exc:
            where = exc.ctx.command_path if getattr(exc, "ctx", None) is not None else "edgepack"
            fail(exc.format_message(), f"see: {where} -h", 2)
        except typer.Abort:
            raise KeyboardInterrupt from None
        if isinstance(code, int) and code:
            sys.exit(code)
    except EdgepackError as exc:
        fail(exc.message, exc.hint, exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except _Terminated as exc:
        sys.exit(128 + exc.signum)
    except Exception as exc:  # noqa: BLE001 - last resort: never a traceback for the user
        if os.environ.get("EDGEPACK_DEBUG"):
            raise
        problem = disk_full(exc)
        if problem is not None:
            fail(problem.message, problem.hint, problem.exit_code)
        fail(f"internal error: {type(exc).__name__}: {exc}",
             "this is a bug in edgepack; rerun with EDGEPACK_DEBUG=1 and report the traceback", 1)

