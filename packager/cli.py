"""The `edgepack` command: a thin typer layer over :mod:`packager.api`.

Parses, makes one library call, renders. Every EdgepackError becomes `error: ...` + `hint: ...`
on stderr and its documented exit code (see README "Exit codes"); no tracebacks for user mistakes.
"""
from __future__ import annotations

import functools
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from . import __version__
from .errors import EXIT_CODES, EdgepackError, UsageError

app = typer.Typer(
    name="edgepack",
    help="Take a trained TensorFlow model to edge devices, quantized, and prove it still works there.\n\n"
         "Typical use:\n\n"
         "  edgepack build model.h5 --target rpi --quantize int8 --calibration samples.npz\n\n"
         "  edgepack verify dist/model-rpi --reference model.h5\n\n"
         "  edgepack deploy dist/model-rpi --host pi@raspberrypi.local --smoke\n\n"
         "Exit codes: " + "; ".join(f"{k} {v}" for k, v in EXIT_CODES.items()),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


class Recipe(str, Enum):
    float32 = "float32"
    float16 = "float16"
    dynamic = "dynamic"
    int8 = "int8"
    int16x8 = "int16x8"
    auto = "auto"


class IO(str, Enum):
    float = "float"
    int8 = "int8"
    uint8 = "uint8"
    int16 = "int16"


class Arch(str, Enum):
    host = "host"
    arm64 = "arm64"


def command(fn):
    """Run a command body; map EdgepackError to its message, hint and exit code."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except EdgepackError as exc:
            from . import render
            json_mode = kwargs.get("json_output")
            if json_mode:
                data = {"ok": False, "error": exc.message, "hint": exc.hint, "exit_code": exc.exit_code}
                report = getattr(exc, "report", None)
                if report is not None:
                    data["verification"] = report.to_json()
                render.emit_json(data)
            else:
                report = getattr(exc, "report", None)
                if report is not None:
                    render.show_verification(report.to_json())
            render.error(exc.message, exc.hint)
            raise typer.Exit(exc.exit_code) from None
    return wrapper


def _arch(arch: Optional[Arch]) -> Optional[str]:
    return None if arch in (None, Arch.host) else arch.value


JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout (for CI).")]
TrustOpt = Annotated[bool, typer.Option("--trust-model", help="Load models that carry code (Lambda layers, "
                     "custom classes, file/Python ops). Only for models from a source you trust.")]
AtolOpt = Annotated[Optional[List[str]], typer.Option("--atol", metavar="[NAME:]VALUE", help="Absolute error "
                    "allowed, in the output's units: VALUE for every output or NAME:VALUE for one (repeatable); "
                    "replaces the recipe's atol (see `edgepack recipes`).")]
RtolOpt = Annotated[Optional[List[str]], typer.Option("--rtol", metavar="[NAME:]VALUE", help="Error allowed "
                    "relative to max|reference|, as --atol.")]
StrictOpt = Annotated[bool, typer.Option("--strict", help="Also fail when the verdict rests on weak evidence "
                      "(no held-out --data: calibration or synthetic inputs) or a runtime of the target cannot "
                      "run the model.")]


@app.command()
@command
def build(
    model: Annotated[Path, typer.Argument(help="Keras .h5/.hdf5 or .keras file, or a SavedModel directory.")],
    target: Annotated[str, typer.Option("--target", "-t", help="Target profile (see `edgepack targets`).")] = "rpi",
    quantize: Annotated[Optional[Recipe], typer.Option("--quantize", "-q",
                        help="Recipe (see `edgepack recipes`); default: the target's default (int8).")] = None,
    calibration: Annotated[Optional[Path], typer.Option("--calibration", "-c",
                           help="Representative inputs for int8/int16x8: .npz keyed by input name (or 'x'), .npy, "
                                "or a folder of images (resized to the input, scaled to [0,1]). 100-500 samples.")] = None,
    io: Annotated[IO, typer.Option("--io", help="Input/output type of the quantized model.")] = IO.float,
    output: Annotated[Optional[Path], typer.Option("--output", "-o",
                      help="Bundle directory (default dist/<model>-<target>); a .tar.gz is written beside it.")] = None,
    data: Annotated[Optional[Path], typer.Option("--data", help="Held-out inputs (.npz with x [, y labels]) to "
                    "verify on; default: the calibration set, else seeded synthetic inputs.")] = None,
    runtime: Annotated[Optional[List[str]], typer.Option("--runtime", help="Only these runtimes of the target "
                       "(repeatable), each must pass.")] = None,
    verify: Annotated[bool, typer.Option("--verify/--no-verify",
                      help="Run the host emulator before the bundle is written (default on).")] = True,
    verify_arch: Annotated[Optional[Arch], typer.Option("--verify-arch",
                           help="Emulate this CPU: host, or arm64 under qemu-user.")] = None,
    name: Annotated[Optional[str], typer.Option("--name", help="Bundle name (default <model>-<target>).")] = None,
    labels: Annotated[Optional[Path], typer.Option("--labels", help="Class names, one per line (shipped).")] = None,
    html: Annotated[Optional[Path], typer.Option("--html", help="Also write an HTML verification report.")] = None,
    trust_model: TrustOpt = False,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Convert and verify afresh even if an identical "
                        "build is cached (~/.cache/edgepack, by content hash).")] = False,
    atol: AtolOpt = None,
    rtol: RtolOpt = None,
    strict: StrictOpt = False,
    max_drop: Annotated[Optional[float], typer.Option("--max-drop", help="--quantize auto: accuracy drop allowed, "
                        "in percentage points (needs labels y in --data).")] = None,
    min_agreement: Annotated[Optional[float], typer.Option("--min-agreement", help="--quantize auto: top-1 "
                             "agreement with the original model required (0..1; default 0.99 if no budget).")] = None,
    min_cosine: Annotated[Optional[float], typer.Option("--min-cosine", help="--quantize auto: cosine similarity "
                          "with the original model's outputs required.")] = None,
    json_output: JsonOpt = False,
):
    """Convert a model, quantize it, bundle it for a target and verify it in the target's runtime.

    Nothing is written to -o unless the bundle verifies (or --no-verify is given).

    Examples:

      edgepack build model.h5 --target rpi --quantize int8 --calibration samples.npz

      edgepack build saved/1 -t android -q float16 -o dist/mnist-android --json
    """
    from . import api, render
    budget = {"max_drop": max_drop, "min_agreement": min_agreement, "min_cosine": min_cosine}
    if quantize == Recipe.auto:
        from .cli_diagnose import build_auto
        return build_auto(model, target, calibration, io, output, data, runtime, verify, verify_arch, name, labels,
                           html, trust_model, atol, rtol, strict, budget, json_output, not no_cache)
    if any(v is not None for v in budget.values()):
        raise UsageError("--max-drop, --min-agreement and --min-cosine are budgets for --quantize auto",
                         hint="add --quantize auto, or use --atol/--rtol with a fixed recipe")
    with render.progress(not json_output) as report:
        result = api.build(model, target=target, recipe=quantize.value if quantize else None,
                           calibration=calibration, io=io.value, output=output, verify=verify, data=data,
                           runtimes=runtime, arch=_arch(verify_arch), name=name, labels=labels,
                           trust_model=trust_model, use_cache=not no_cache, progress=report, atol=atol, rtol=rtol,
                           strict=strict)
    data_out = result.to_json()
    if html and result.verification:
        html.write_text(render.html_report(result.verification.to_json(), f"edgepack build {model}"))
    if json_output:
        render.emit_json({"ok": True, **data_out})
    else:
        render.show_build(data_out)


@app.command()
@command
def verify(
    bundle: Annotated[Path, typer.Argument(help="Bundle directory written by `edgepack build`.")],
    reference: Annotated[Path, typer.Option("--reference", "-r", help="The original model file.")],
    data: Annotated[Optional[Path], typer.Option("--data", help=".npz with x (or named inputs) and optional y "
                    "labels; default: the bundle's samples, else seeded synthetic inputs.")] = None,
    runtime: Annotated[Optional[List[str]], typer.Option("--runtime", help="Only these runtimes "
                       "(e.g. tflite-runtime==2.14 or ai-edge-litert); each must pass.")] = None,
    arch: Annotated[Optional[Arch], typer.Option("--arch", help="host, or arm64 under qemu-user.")] = None,
    strict: StrictOpt = False,
    html: Annotated[Optional[Path], typer.Option("--html", help="Write an HTML report with error histograms.")] = None,
    trust_model: TrustOpt = False,
    atol: AtolOpt = None,
    rtol: RtolOpt = None,
    json_output: JsonOpt = False,
):
    """Run the bundle's own device script in each runtime environment of its target (only that
    runtime and numpy; no TensorFlow) and compare with the original model, output by output.

    Exit code 0 only when every output matches within the recipe's tolerance.

    Example: edgepack verify dist/mnist-rpi --reference model.h5 --data eval.npz --html report.html
    """
    from . import api, render
    with render.progress(not json_output) as report_cb:
        report = api.verify(bundle, reference=reference, data=data, runtimes=runtime, arch=_arch(arch),
                            strict=strict, trust_model=trust_model, progress=report_cb, atol=atol, rtol=rtol)
    data_out = report.to_json()
    if html:
        html.write_text(render.html_report(data_out, f"edgepack verify {bundle}"))
    if json_output:
        render.emit_json({"ok": report.passed, **data_out})
    else:
        render.show_verification(data_out)
    if not report.passed:
        if not json_output:
            render.error("verification failed: " + "; ".join(report.failures)[:500])
        raise typer.Exit(4)


@app.command()
@command
def inspect(
    path: Annotated[Path, typer.Argument(help="A bundle directory or a .tflite file.")],
    json_output: JsonOpt = False,
):
    """Inputs/outputs with quantization, ops with versions, size, and which runtimes cannot run it."""
    from . import api, render
    info = api.inspect(path)
    render.emit_json(info) if json_output else render.show_inspect(info)


@app.command()
@command
def targets(json_output: JsonOpt = False):
    """The target profiles (targets/*.toml): runtimes with their pins, deploy method, defaults."""
    from . import render
    from .targets import list_targets
    data = [t.to_json() for t in list_targets().values()]
    render.emit_json(data) if json_output else render.show_targets(data)


@app.command()
@command
def recipes(json_output: JsonOpt = False):
    """The quantization recipes (--quantize) and the tolerance each is verified against."""
    from . import render
    from .recipes import list_recipes
    data = [{**r.to_json(), "io_types": list(r.io_types)} for r in list_recipes().values()]
    render.emit_json(data) if json_output else render.show_recipes(data)


@app.command()
@command
def doctor(json_output: JsonOpt = False):
    """What this host can emulate (runtime environments, arm64 under qemu) and how to fix what is missing."""
    from . import render
    from .doctor import checks
    data = [c.__dict__ for c in checks()]
    if json_output:
        render.emit_json(data)
        return
    for c in data:
        mark = "[green]ok[/green]  " if c["ok"] else "[red]missing[/red]"
        render.out.print(f"{mark} {c['name']}: {c['detail']}" + (f"\n        fix: {c['fix']}" if c.get("fix") else ""))


def _version_callback(value: bool):
    if value:
        print(f"edgepack {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version_callback, is_eager=True,
                                                 help="Show the version and exit.")] = False):
    pass


from .cli_diagnose import register as _register_diagnose  # noqa: E402 - needs the names above

_register_diagnose(app, command, Arch, TrustOpt, JsonOpt)

try:  # deploy/run/rollback/status live in their own module
    from .cli_deploy import register as _register_deploy
    _register_deploy(app)
except ImportError:  # pragma: no cover - only while that module does not exist
    pass


def main(argv: list[str] | None = None) -> None:
    """Console entry point. Errors edgepack can explain exit with their code; anything else is a
    bug: one line, exit 1, and the traceback only with EDGEPACK_DEBUG=1."""
    import os
    try:
        app(args=argv, prog_name="edgepack")
    except EdgepackError as exc:
        from . import render
        render.error(exc.message, exc.hint)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - last resort: never a traceback for the user
        if os.environ.get("EDGEPACK_DEBUG"):
            raise
        from . import render
        render.error(f"internal error: {type(exc).__name__}: {exc}",
                     "this is a bug in edgepack; rerun with EDGEPACK_DEBUG=1 and report the traceback")
        sys.exit(1)


if __name__ == "__main__":
    main()
