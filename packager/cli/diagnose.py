"""CLI for issue 13: `edgepack diagnose`, and the `--quantize auto` branch of `edgepack build`.
``register(app)`` adds `diagnose` to the main app (kept apart so that cli.py stays small)."""
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from ..errors import UsageError


def _arch(arch) -> Optional[str]:
    return None if arch is None or arch.value == "host" else arch.value


def build_auto(model, target, calibration, io, output, data, runtime, verify, verify_arch, name, labels, html,
                trust_model, atol, rtol, strict, budget, json_output, use_cache=True, signature=None,
                custom_objects=None):
    """`build --quantize auto`: packager.repair.build_auto, then the candidates table and the build."""
    from . import render
    from ..repair import build_auto
    if atol or rtol:
        raise UsageError("--atol/--rtol do not apply to --quantize auto", hint="give the budget with --max-drop, "
                         "--min-agreement or --min-cosine")
    if not verify:
        raise UsageError("--quantize auto measures every candidate; --no-verify does not apply",
                         hint="drop --no-verify, or pick a recipe with --quantize")
    with render.progress() as report:
        result = build_auto(model, target=target, calibration=calibration, data=data, io=io.value, output=output,
                            runtimes=runtime, arch=_arch(verify_arch), name=name, labels=labels,
                            trust_model=trust_model, progress=report, strict=strict, use_cache=use_cache,
                            signature=signature, custom_objects=custom_objects, **budget)
    data_out = result.to_json()
    if html and result.build.verification:
        html.write_text(render.html_report(result.build.verification.to_json(), f"edgepack build {model} (auto)"))
    if json_output:
        render.emit_json({"ok": True, **data_out})
        return
    from .render_diagnose import show_candidates
    show_candidates(data_out)
    render.show_build(result.build.to_json())


def register(app: typer.Typer, command, opts: dict) -> None:
    """Add `diagnose` to ``app``; ``command`` (the error boundary) and ``opts`` (cli.py's shared
    option types: Arch, TrustOpt, CustomOpt, JsonOpt, VerboseOpt, QuietOpt, SignatureOpt) are passed in so that this
    module never imports commands.py (which imports this module)."""
    Arch, TrustOpt, JsonOpt, CustomOpt = opts["Arch"], opts["TrustOpt"], opts["JsonOpt"], opts["CustomOpt"]
    VerboseOpt, QuietOpt, SignatureOpt = opts["VerboseOpt"], opts["QuietOpt"], opts["SignatureOpt"]

    def diagnose(
        bundle: Annotated[Path, typer.Argument(metavar="BUNDLE", help="Bundle directory or .tar.gz (or a bare "
                          ".tflite).")],
        reference: Annotated[Path, typer.Option("--reference", "-r", metavar="MODEL",
                             help="The original model file.")],
        data: Annotated[Optional[Path], typer.Option("--data", metavar="FILE", help="Inputs to diagnose on (.npz "
                        "with x or named inputs); default: the bundle's samples. At most 256 samples are used.")] = None,
        calibration: Annotated[Optional[Path], typer.Option("--calibration", "-c", metavar="FILE|DIR", help="The "
                               "calibration set the bundle was built with, if at hand: its size and range become "
                               "evidence too.")] = None,
        runtime: Annotated[Optional[List[str]], typer.Option("--runtime", metavar="NAME", help="Only these runtimes "
                           "of the target (repeatable); with two or more, they are compared op by op.")] = None,
        arch: Annotated[Optional[Arch], typer.Option("--arch", help="CPU to run on: host, or arm64 under "
                        "qemu-user.")] = None,
        html: Annotated[Optional[Path], typer.Option("--html", metavar="FILE", help="Write an HTML report with a "
                        "per-op error plot.")] = None,
        trust_model: TrustOpt = False,
        signature: SignatureOpt = None,
        custom_objects: CustomOpt = None,
        verbose: VerboseOpt = False,
        quiet: QuietOpt = False,
        json_output: JsonOpt = False,
    ):
        """Name the op where the bundle departs from the original model, and why.

        Every intermediate tensor of the bundle's model is compared with the float32 conversion of
        the reference (error relative to the range, cosine, clipping, values below one step), and
        the same model in each runtime of the target op by op.

        Example: edgepack diagnose dist/mnist-rpi --reference model.h5 --data eval.npz --html diag.html
        """
        from . import render
        from ..diagnose import diagnose as run_diagnose
        from .render_diagnose import diagnosis_html, show_diagnosis
        render.configure(quiet, verbose)
        with render.progress() as report_cb:
            diag = run_diagnose(bundle, reference=reference, data=data, runtimes=runtime, arch=_arch(arch),
                                trust_model=trust_model, progress=report_cb, calibration=calibration,
                                signature=signature, custom_objects=custom_objects)
        data_out = diag.to_json()
        if html:
            html.write_text(diagnosis_html(data_out, f"edgepack diagnose {bundle}"))
        if json_output:
            render.emit_json({"ok": True, **data_out})
        else:
            show_diagnosis(data_out)

    app.command("diagnose")(command(diagnose))
