"""What a user sees: tables at 80/100/120/200 columns (colour off), progress lines, the HTML report
(also in real headless Chromium), and the CLI's conventions (-h, -v/--quiet, env vars, aliases).

Fast: no TensorFlow. Reports are made by the real comparison code (packager.compare) on numpy
arrays shaped like the digits example, so the numbers have the real shapes and formats."""
from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from packager.cli import render
from packager.compare import compare_output
from packager.recipes import Tolerance

ROOT = Path(__file__).resolve().parent.parent
WIDTHS = (80, 100, 120, 200)
LONG_ERROR = ("tflite_runtime 2.14.0 cannot load the model: Didn't find op for builtin opcode 'FULLY_CONNECTED' "
              "version '12'. An older version of this builtin might be supported. Are you using an old TFLite "
              "binary with a newer model? Registration failed.")


def _outputs(fail: bool = False) -> dict:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(297, 10)) * 4
    ref = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    got = ref + rng.normal(scale=2e-3, size=ref.shape) * (ref > 0.01)
    if fail:
        got[:40] = np.roll(got[:40], 1, axis=1)
    labels = ref.argmax(1).copy()
    labels[:5] = (labels[:5] + 1) % 10
    tol = Tolerance(atol=0.05, rtol=0.05, steps=0, cosine_min=0.99, kind="class-scores")
    return compare_output("probs", ref, got, tol, labels=labels).to_json()


def report(fail: bool = False, unavailable: bool = False) -> dict:
    ok = {"runtime": "ai-edge-litert", "version": "2.3.0", "arch": "x86_64", "machine": "x86_64",
          "python": "3.11.7", "status": "failed" if fail else "passed", "error": None, "seconds": 0.3,
          "static_problems": [], "outputs": [_outputs(fail)]}
    bad = {"runtime": "tflite-runtime", "version": "2.14.0", "arch": "x86_64", "machine": None, "python": None,
           "status": "unavailable" if unavailable else "error", "error": LONG_ERROR, "seconds": 0.3,
           "static_problems": [], "outputs": []}
    return {"bundle": "dist/digits-rpi", "recipe": "dynamic", "target": "rpi", "passed": not fail,
            "inputs": "eval.npz", "samples": 297, "model_size": 14720,
            "evidence": {"kind": "held-out", "weak": False, "text": "held-out: eval.npz, n=297"},
            "runtimes": [ok, bad], "failures": ["ai-edge-litert 2.3.0 (x86_64) output 'probs': ..."] if fail else [],
            "notes": [f"tflite-runtime cannot run this model: {LONG_ERROR}"]}


def capture(fn, *args, width: int) -> str:
    buf = io.StringIO()
    saved = render.out
    render.out = Console(file=buf, width=width, color_system=None, highlight=False)
    try:
        fn(*args)
    finally:
        render.out = saved
    return buf.getvalue()


def assert_readable(text: str, width: int, intact: list[str]) -> None:
    lines = text.splitlines()
    assert lines and max(len(ln) for ln in lines) <= width, max(lines, key=len)
    assert "…" not in text, "a cell was cut off"
    assert not re.search(r"\w+\.py:\d+", text), "a source location leaked"
    for token in intact:       # numbers, pins, headers: never split across lines
        assert any(token in ln for ln in lines), (token, text)


def _numbers(o: dict) -> list[str]:
    return [render._decisions(o), render.fmt_cosine(o["cosine"]), render._margin(o)]


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("fail", [False, True])
def test_verification_table_fits_and_keeps_numbers_whole(width, fail):
    rep = report(fail=fail)
    text = capture(render.show_verification, rep, width=width)
    o = rep["runtimes"][0]["outputs"][0]
    assert_readable(text, width, _numbers(o) + ["litert 2.3.0", "tflrt 2.14.0", "decisions", "margin", "cosine",
                                                  "accuracy"])
    body = "\n".join(text.splitlines())
    assert re.search(r"0\.\d{3,4}→0\.\d{3,4}", body)                 # accuracy model -> bundle, one token
    # the runtime that cannot run the model: one short cell, its error once, below the table
    assert "can't run" in text and text.count("Didn't find op") == 1
    assert ("MISMATCH" if fail else "MATCH") in text and "held-out: eval.npz, n=297" in text   # verdict + evidence
    if fail:
        assert "FAIL" in text and "change their decision" in text
    if width >= 200:
        assert "SNR dB" in text and "mean err" in text                # width is used when there is more


def test_cosine_is_never_rounded_to_one():
    assert render.fmt_cosine(0.9999985704752563) == "0.9999986"
    assert render.fmt_cosine(0.999985) == "0.999985"
    assert render.fmt_cosine(1.0) == "1" and render.fmt_cosine(0.95) == "0.9500"
    assert render.fmt_cosine(1 - 3e-11) != "1"


@pytest.mark.parametrize("width", WIDTHS)
def test_targets_and_recipes_fit(width):
    from packager.recipes import list_recipes
    from packager.targets import list_targets
    targets = [t.to_json() for t in list_targets().values()]
    text = capture(render.show_targets, targets, width=width)
    pins = [" ".join(r["requirements"]) for t in targets for r in t["runtimes"]]
    assert_readable(text, width, pins)          # the pins are the point of `targets`
    recipes = [{**r.to_json(), "io_types": list(r.io_types)} for r in list_recipes().values()]
    text = capture(render.show_recipes, recipes, width=width)
    tolerance_rows = [ln for ln in text.splitlines() if "cos≥" in ln]
    assert len(tolerance_rows) == len(recipes)  # one line per recipe, not 4-6
    assert_readable(text, width, [render.tolerance_text(r["tolerance"]) for r in recipes])


def test_build_summary_no_verify():
    result = {"bundle": "dist/m-rpi", "archive": "dist/m-rpi.tar.gz", "warnings": [], "verification": None,
              "manifest": {"model_size": 1234, "recipe": {"name": "float16", "io": "float"},
                           "source": {"conversion_path": "keras"}}}
    text = capture(render.show_build, result, width=80)
    assert "--no-verify" in text and "unverified" in text


@pytest.mark.parametrize("columns", [80, 120])
def test_cli_targets_recipes_at_columns(columns):
    env = dict(os.environ, COLUMNS=str(columns), NO_COLOR="1", PYTHONPATH=str(ROOT))
    for cmd in ("targets", "recipes"):
        proc = subprocess.run([sys.executable, "-m", "packager.cli", cmd], capture_output=True, text=True,
                              env=env, timeout=120, cwd=ROOT)
        assert proc.returncode == 0, proc.stderr
        assert_readable(proc.stdout, columns, ["tflite-runtime==2.14.0 numpy>=1.23,<2"] if cmd == "targets"
                        else ["flips≤3% drop≤1pt σ×0.5 R²≥0.9 cos≥0.98 nn≤10%"])
        assert "\x1b[" not in proc.stdout                            # colour off
        assert not proc.stderr.strip()                               # no framework log


def test_progress_lines(monkeypatch):
    buf = io.StringIO()
    monkeypatch.setattr(render, "err", Console(file=buf, width=80, color_system=None))
    monkeypatch.setattr(render, "state", {"quiet": False, "verbose": False})
    with render.progress() as report_cb:
        report_cb("preparing the ai-edge-litert environment")
        for i in range(300):                                         # a tool's own output: not 300 lines
            report_cb(f"Retrieving libfoo{i} 1.0", 0.1)
        report_cb("arm64 root filesystem ready (139 MB)", 0.7)
    lines = buf.getvalue().splitlines()
    assert len(lines) == 2 and "render.py" not in buf.getvalue()
    assert lines[0].split()[1:] == ["preparing", "the", "ai-edge-litert", "environment"]
    buf.truncate(0)
    buf.seek(0)
    render.configure(verbose=True)
    with render.progress() as report_cb:
        report_cb("Collecting numpy")
    assert "Collecting numpy" in buf.getvalue()
    buf.truncate(0)
    buf.seek(0)
    render.configure(quiet=True)
    with render.progress() as report_cb:
        report_cb("loading model.h5")
    assert buf.getvalue() == ""


# ------------------------------------------------------------------------------------------ HTML

def _report_html(fail=False) -> str:
    return render.html_report(report(fail=fail), "edgepack verify digits-rpi",
                              provenance={"edgepack": "0.1.0", "tensorflow": "2.21.0", "model sha256": "ab" * 32,
                                          "command": "edgepack verify dist/digits-rpi -r digits.h5 --html r.html"},
                              labels=[f"digit {i}" for i in range(10)],
                              sections=[("per-op error", "<p id=diag>from diagnose</p>")])


def test_html_report_content():
    page = _report_html(fail=True)
    assert not re.search(r"(src|href)=['\"]?(https?:)?//", page), "the report must not load anything"
    assert "MISMATCH" in page and "class=loghist" in page and "class=limit" in page
    assert "class=scatter" in page and "class=cm" in page and "digit 3" in page
    assert "0.9999" in page or "cosine" in page
    assert "id=provenance" in page and "ab" * 32 in page and "id=diag" in page
    assert page.count("find op for builtin") == 1                        # not repeated as a note


def test_html_report_failure_and_no_verify():
    page = render.html_report(None, "edgepack build m.h5", error={"message": "conversion failed on every path",
                                                                   "hint": "see --json"}, provenance={"edgepack": "0"})
    assert "conversion failed on every path" in page and "id=error" in page
    page = render.html_report(None, "edgepack build m.h5", status="not verified: built with --no-verify")
    assert "--no-verify" in page and "id=status" in page


def _chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(not _chromium(), reason="needs chromium (./dev installs the Debian package)")
def test_report_in_headless_chromium(tmp_path):
    path = tmp_path / "report.html"
    path.write_text(_report_html(fail=True), encoding="utf-8")
    base = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*base, "--dump-dom", path.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-1000:]
    html = dom.stdout
    assert "<svg" in html and 'class="loghist"' in html and 'class="scatter"' in html
    assert html.count('class="pt"') >= 100 and 'class="limit"' in html
    assert 'id="provenance"' in html and "MISMATCH" in html
    shot = tmp_path / "report.png"
    proc = subprocess.run([*base, f"--screenshot={shot}", "--window-size=1200,1600", path.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-1000:]
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert int.from_bytes(png[16:20], "big") == 1200 and len(png) > 50_000      # rendered, not blank


# ------------------------------------------------------------------------------------ conventions

def _cli(*args, env=None):
    from typer.testing import CliRunner

    from packager.cli.commands import app
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "100", **(env or {})})


def test_help_conventions():
    top = _cli("-h")
    assert top.exit_code == 0 and "--verbose" in top.output and "--quiet" in top.output
    assert "--install-completion" in top.output                      # shell completion enabled
    from packager.cli.commands import ENVIRONMENT
    for name in ENVIRONMENT:
        assert name in top.output
    used = set()
    for folder in ("packager", "device_runtime"):
        for f in (ROOT / folder).rglob("*.py"):
            used |= set(re.findall(r"EDGEPACK_[A-Z_]+", f.read_text()))
    internal = {"EDGEPACK_FAULT_AT", "EDGEPACK_CRASH_AT", "EDGEPACK_FLEET_EVENTS", "EDGEPACK_RC__"}  # test seams, plumbing
    assert used - internal <= set(ENVIRONMENT), used - internal - set(ENVIRONMENT)
    for cmd in (["build"], ["verify"], ["deploy"], ["run"], ["fleet", "deploy"], ["doctor"]):
        proc = _cli(*cmd, "-h")
        assert proc.exit_code == 0, (cmd, proc.output)
        assert "<list" not in proc.output and "list[str]" not in proc.output
    build = _cli("build", "-h").output
    assert "--arch" in build and "--verify-arch" not in build and "--strict" in build and "--quiet" in build
    assert "-q, --quantize" in build


def test_verify_arch_is_a_hidden_alias(tmp_path):
    proc = _cli("build", str(tmp_path / "nope.h5"), "--verify-arch", "arm64")
    assert proc.exit_code == 2 and "model not found" in proc.output


def test_doctor_exit_code(monkeypatch):
    from packager.cli import doctor
    monkeypatch.setattr(doctor, "checks", lambda: [doctor.Check("tensorflow", False, "not installed", "pip install x",
                                                                required=True),
                                                   doctor.Check("adb", False, "not found", "apt-get install adb")])
    proc = _cli("doctor")
    assert proc.exit_code == 5 and "tensorflow" in proc.output
    monkeypatch.setattr(doctor, "checks", lambda: [doctor.Check("adb", False, "not found", "apt-get install adb")])
    assert _cli("doctor").exit_code == 0                             # optional tools only warn


def test_html_written_on_failure_and_with_no_verify(monkeypatch, tmp_path):
    from packager import api
    from packager.errors import ConversionError
    model = tmp_path / "m.h5"
    model.write_bytes(b"x")

    def fails(*a, **k):
        raise ConversionError("conversion failed on every path", hint="see --json")
    monkeypatch.setattr(api, "build", fails)
    out = tmp_path / "r.html"
    proc = _cli("build", str(model), "--html", str(out), "--json")
    assert proc.exit_code == 3 and out.is_file()
    page = out.read_text()
    assert "conversion failed on every path" in page and "model sha256" in page
    assert json.loads(proc.stdout)["ok"] is False

    def unverified(*a, **k):
        from packager.bundle.manifest import Manifest
        tensor = {"index": 0, "shape": [-1, 3], "dtype": "float32", "quantization": None}
        manifest = Manifest.from_json({
            "format": 1, "name": "b", "model": "model.tflite", "entrypoint": "edgepack_run.py",
            "model_sha256": "0" * 64, "model_size": 1, "inputs": [{"name": "x", **tensor}],
            "outputs": [{"name": "y", **tensor}], "recipe": {"name": "float16", "io": "float"},
            "target": {"name": "rpi"}, "runtimes": [], "files": {}, "source": {"conversion_path": "k"},
            "versions": {"tensorflow": "2.21.0"}, "verification": {"status": "skipped"}})
        from packager.bundle.files import Bundle
        return api.BuildResult(Bundle(tmp_path / "b", manifest, ()), tmp_path / "b.tar.gz", None, [], [])
    monkeypatch.setattr(api, "build", unverified)
    proc = _cli("build", str(model), "--no-verify", "--html", str(out))
    assert proc.exit_code == 0, proc.output
    assert "--no-verify" in out.read_text() and "2.21.0" in out.read_text()


def test_pip_progress_is_a_few_step_lines(tmp_path):
    """Creating a runtime environment: one line per wheel with its size, pip's chatter as details."""
    from packager.verification.emulator import _pip_install
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'Looking in indexes: https://pypi.org/simple'\necho 'Collecting numpy<2'\n"
                    "echo '  Downloading numpy-1.26.4-cp311-cp311-manylinux2014_x86_64.whl (18.2 MB)'\n"
                    "echo 'Processing /opt/wheels/tflite_runtime-2.14.0-cp311-none-any.whl'\n"
                    "echo 'Installing collected packages: numpy, tflite-runtime'\necho 'Successfully installed'\n")
    fake.chmod(0o755)
    seen = []
    rc, lines = _pip_install(fake, ["numpy<2"], dict(os.environ), seen.append)
    steps = [m for m in seen if not render.is_detail(m)]
    assert rc == 0 and lines[-1] == "Successfully installed"
    assert steps == ["downloading numpy-1.26.4-cp311-cp311-manylinux2014_x86_64.whl (18.2 MB)",
                     "from a local file: tflite_runtime-2.14.0-cp311-none-any.whl",
                     "installing numpy, tflite-runtime"]


def test_config_file_gives_defaults(monkeypatch, tmp_path, capsys):
    """edgepack.toml (or [tool.edgepack] in pyproject.toml) in the current directory: defaults per
    command, paths relative to the file, the command line wins, unknown keys and --trust-model refused."""
    from packager import api
    from packager.cli import commands as cli
    seen = {}

    def fake_build(model, **kw):
        seen.update(kw, model=model)
        raise api.UsageError("stop here")
    monkeypatch.setattr(api, "build", fake_build)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pyproject.toml").write_text('[tool.edgepack.build]\ntarget = "android"\nquantize = "int8"\n'
                                             'calibration = "data/cal.npz"\natol = ["probs:0.05"]\n')

    def run(*args):
        with pytest.raises(SystemExit) as info:
            cli.main(list(args))
        return info.value.code
    assert run("build", "m.h5") == 2
    assert seen["target"] == "android" and seen["recipe"] == "int8" and seen["atol"] == ["probs:0.05"]
    assert Path(seen["calibration"]) == tmp_path / "data" / "cal.npz"
    assert run("build", "m.h5", "-t", "rpi") == 2 and seen["target"] == "rpi"        # the command line wins
    capsys.readouterr()
    (tmp_path / "edgepack.toml").write_text('[build]\ntrust_model = true\n')         # edgepack.toml first
    assert run("build", "m.h5") == 2 and "no option 'trust_model'" in capsys.readouterr().err
    (tmp_path / "edgepack.toml").write_text('[biuld]\ntarget = "rpi"\n')
    assert run("targets") == 2 and "unknown section [biuld]" in capsys.readouterr().err


def test_long_output_names_wrap_not_the_numbers():
    rep = report()
    o = rep["runtimes"][0]["outputs"][0]
    o["name"] = "StatefulPartitionedCall_with_a_long_name:0"
    rep["runtimes"][1] = dict(rep["runtimes"][0], runtime="tflite-runtime", version="2.14.0", machine="aarch64")
    text = capture(render.show_verification, rep, width=80)
    assert_readable(text, 80, _numbers(o) + ["litert 2.3.0", "tflrt 2.14.0", "aarch64"])


def test_verify_mismatch_writes_the_report_and_one_json_document(monkeypatch, tmp_path):
    from packager import api
    from packager.verification.emulator import RuntimeResult
    rng = np.random.default_rng(1)
    ref = rng.random((50, 4))
    tol = Tolerance(atol=1e-3, rtol=0.0, steps=0, cosine_min=0.999, kind="class-scores")
    metrics = [compare_output("probs", ref, ref[:, ::-1], tol, labels=ref.argmax(1))]
    rt = RuntimeResult("ai-edge-litert", "2.3.0", "x86_64", "failed", metrics=metrics, machine="x86_64")
    rep = api.VerifyReport("b", "int8", "rpi", False, "eval.npz", 50, [rt], 1000, evidence="held-out",
                           evidence_text="held-out: eval.npz, n=50")
    monkeypatch.setattr(api, "verify", lambda *a, **k: rep)
    (tmp_path / "b").mkdir()
    out = tmp_path / "r.html"
    proc = _cli("verify", str(tmp_path / "b"), "-r", str(tmp_path / "m.h5"), "--html", str(out), "--json")
    assert proc.exit_code == 4
    assert json.loads(proc.stdout)["ok"] is False                   # exactly one document on stdout
    page = out.read_text()
    assert "MISMATCH" in page and "class=limit" in page and "class=cm" in page


def test_piped_output_keeps_each_message_on_one_line():
    """Piped (a CI log, `| grep`), a warning or the verdict line is never broken at the console width; tables still fit
    the 120 columns piped output gets."""
    code = ("from packager.cli import render\n"
            "render.show_build({'bundle': 'dist/m-rpi', 'archive': 'dist/m-rpi.tar.gz', 'verification': None,\n"
            "  'warnings': ['w' * 30 + ' ' + 'long warning text ' * 12 + 'END'],\n"
            "  'manifest': {'model_size': 1, 'recipe': {'name': 'float16', 'io': 'float'},\n"
            "               'source': {'conversion_path': 'keras'}}})\n")
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**env, "NO_COLOR": "1",
                          "PYTHONPATH": str(ROOT)}, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    warning = [line for line in proc.stdout.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and warning[0].endswith("END") and len(warning[0]) > 200, proc.stdout


@pytest.mark.parametrize("width", [80, 100])
def test_recipes_with_long_names_fold_the_tolerance_not_cut_it(width):
    """A recipe a user adds may have a long name (`float32-nometa`): at 80 columns the tolerance wraps at its spaces
    instead of being cut off (the name too, when it must)."""
    from packager.recipes import list_recipes
    rows = [dict(r.to_json("float"), io_types=list(r.io_types)) for r in list_recipes().values()]
    long = dict(rows[0], name="float32-without-metadata-long-name", description="the same, without metadata")
    text = capture(render.show_recipes, rows + [long], width=width)
    assert_readable(text, width, ["name", "calib.", "tolerance", "flips≤0.2%"])
    assert "float32-without-metadata-long-name" in "".join(ln.strip() for ln in text.splitlines())
