"""Rendering: rich tables for people, JSON for CI, HTML for reports. Only this module (and the
CLI) print.

Terminal rules (tests/test_render.py holds them at 80, 120 and 200 columns): a number is never
split across lines (numeric columns do not wrap), headers are single words or short phrases, a
runtime is one row per output, long text (a runtime's error, the reasons of a FAIL) goes below the
table once, and wide terminals get more columns instead of taller rows."""
from __future__ import annotations

import html
import json
import math
import os
import time
from contextlib import contextmanager

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..jsonsafe import clean

def short_runtime(name: str) -> str:
    """A runtime's short table label (``label`` in packager/runtimes.toml), or ``name`` when unregistered.
    Tables only: the JSON and the HTML report keep the full distribution names."""
    from ..targets import get_runtime
    runtime = get_runtime(name)
    return runtime.label if runtime is not None else name


def _console(stderr: bool = False) -> Console:
    probe = Console(stderr=stderr)
    # Piped output (CI logs) gets 120 columns instead of rich's 80 for tables, unless COLUMNS says otherwise; a line
    # of prose (a warning, a note, the verdict) is never broken there: a log keeps each message on one line (grep).
    piped = not probe.is_terminal and not os.environ.get("COLUMNS", "").isdigit()
    return Console(stderr=stderr, highlight=False, width=120 if piped else None, soft_wrap=piped)


out = _console()
err = _console(stderr=True)
# --quiet: no progress and no notes; results, verdicts and errors are still printed.
# --verbose: every progress line, including the tools' own output (pip, debootstrap).
state = {"quiet": False, "verbose": False}


def configure(quiet: bool = False, verbose: bool = False) -> None:
    """Set verbosity from the command line (the last of the global and the command's flags wins)."""
    if quiet or verbose:
        state.update(quiet=quiet and not verbose, verbose=verbose and not quiet)


def print_json(data) -> None:
    """Print ``data`` as JSON indented by 2 on stdout (objects by their ``to_json`` or ``item``, others as str);
    ValueError on NaN/Inf (:func:`emit_json` replaces them)."""
    print(json.dumps(data, indent=2, default=_default, allow_nan=False))


def _default(value):
    if hasattr(value, "to_json"):
        return value.to_json()
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def emit_json(data) -> None:
    """Print ``data`` as the one JSON document of ``--json`` on stdout, NaN/Inf as the strings nan, inf and -inf."""
    print_json(clean(json.loads(json.dumps(data, default=_default))))


def is_detail(msg: str) -> bool:
    """A line of a tool's own output passed through (debootstrap's `Retrieving libc6`, pip's
    `Collecting numpy`): they start with a capital letter, edgepack's own steps never do. Details
    only update the live line (all of them are printed with --verbose)."""
    return msg[:1].isupper()


@contextmanager
def progress(enabled: bool = True):
    """Progress on stderr (with ``--json`` too: stdout stays the one document); yields the callback the library
    calls with messages. ``--quiet`` silences it.

    A terminal gets one live status line (with the elapsed time) plus one persistent line per
    step; piped output gets the step lines only. Nothing here prints a source location."""
    if not enabled or state["quiet"]:
        yield lambda *_: None
        return
    started = time.monotonic()

    def line(msg: str) -> None:
        err.print(f"[dim]{time.monotonic() - started:5.1f}s[/dim] {escape(msg)}", highlight=False, soft_wrap=True)

    if not err.is_terminal:
        def plain(msg: str, *_):
            if state["verbose"] or not is_detail(msg):
                line(msg)
        yield plain
        return
    with err.status("starting") as status:
        step = ["starting"]

        def update(msg: str, *_):
            if state["verbose"] or not is_detail(msg):
                line(msg)
                step[0] = msg
                status.update(escape(msg))
            else:
                status.update(escape(f"{step[0]}: {msg}"))
        yield update


def error(message: str, hint: str | None = None) -> None:
    """Print ``error: MESSAGE`` and, when there is one, ``hint: HINT`` on stderr."""
    err.print(f"[bold red]error:[/bold red] {escape(message)}", highlight=False, soft_wrap=True)
    if hint:
        err.print(f"[yellow]hint:[/yellow] {escape(hint)}", soft_wrap=True)


def _fmt(v, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        if math.isnan(v):
            return "nan"
        return f"{v:.{digits}g}"
    return str(v)


def fmt_cosine(v) -> str:
    """Cosine with as many decimals as it takes not to round to 1 (0.9999986, never `1` unless exact)."""
    if not isinstance(v, (int, float)) or not math.isfinite(v):
        return _fmt(v)
    if v >= 1.0:
        return "1"
    if v < 0.99:
        return f"{v:.4f}"
    decimals = min(12, max(4, int(-math.log10(1.0 - v)) + 2))
    return f"{v:.{decimals}f}"


def runtime_label(r: dict) -> str:
    """A runtime row's table label: its short name (``label`` in packager/runtimes.toml) and its version."""
    return f"{short_runtime(r['runtime'])} {r.get('version') or ''}".strip()


def _margin(o: dict) -> str:
    """How far inside its limits an output is: the smallest margin of its findings (limit over figure, or
    the room left below 1 for R² and cosine); "exact" when every figure is exact."""
    margins = []
    for f in o.get("findings") or []:
        if f["criterion"] in ("finite", "stuck") or f["detail"].get("skipped"):
            continue
        figure, limit = float(f["figure"]), float(f["limit"])
        room, used = (1.0 - limit, 1.0 - figure) if f["higher"] else (limit, figure)
        margins.append(float("inf") if used <= 0 else room / used if room > 0 else 0.0)
    if not margins:
        return "-"
    m = min(margins)
    if not math.isfinite(m):
        return "exact"
    return f"{m:.2g}x" if m < 1 else f"{m:.1f}x" if m < 100 else f"{m:.0f}x" if m < 1000 else ">1000x"


def _decisions(o: dict) -> str:
    """``395/397`` decisions kept of those judged, or - for an output without decisions."""
    f = next((f for f in o.get("findings") or [] if f["criterion"] == "decisions"), None)
    if f is None:
        return "-"
    return f"{f['detail']['judged'] - f['detail']['flipped']}/{f['detail']['judged']}"


def _values(o: dict) -> str:
    """The values figure of an output: ``R² 0.9987`` for values, ``cos 0.9993`` for embeddings, ``rare R² 0.9978``
    for the rare classes of class scores one class dominates, else -."""
    for f in o.get("findings") or []:
        if f["criterion"] == "R²":
            return f"R² {f['figure']:.4f}"
        if f["criterion"] == "row cosine":
            return f"cos {f['figure']:.4f}"
        if f["criterion"] == "rare-class scores":
            return f"rare R² {f['figure']:.4f}"
    f = next((f for f in o.get("findings") or [] if f["criterion"] == "column error"), None)
    return f"{f['detail']['columns'] - f['detail']['failing']}/{f['detail']['columns']} cols" if f else "-"


_LAYOUTS = (  # widest first: the first that fits the terminal is used
    dict(cpu=True, extra=True, acc=4, limit=True, pad=1, name=40),
    dict(cpu=False, extra=False, acc=4, limit=True, pad=1, name=20),
    dict(cpu=False, extra=False, acc=4, limit=True, pad=0, name=16),
    dict(cpu=False, extra=False, acc=3, limit=True, pad=0, name=12),
    dict(cpu=False, extra=False, acc=3, limit=False, pad=0, name=10),
    dict(cpu=False, extra=False, acc=3, limit=False, pad=0, name=10, values=False),
)


def verification_table(report: dict, width: int | None = None) -> tuple[Table, list[str]]:
    """The table and the lines that belong below it (a runtime's error, the reasons of a FAIL).
    The widest layout that fits ``width`` is used; numbers never wrap."""
    width = width or out.width
    machines = {r.get("machine") or r["arch"] for r in report["runtimes"]}
    table, below = None, []
    for layout in _LAYOUTS:
        layout = dict(layout, cpu=layout["cpu"] or len(machines) > 1)
        table, below = _verification_table(report, machines, **layout)
        if _fits(table, width):
            break
    return table, below


def _verification_table(report: dict, machines: set, cpu: bool, extra: bool, acc: int, limit: bool,
                        pad: int, name: int, values: bool = True) -> tuple[Table, list[str]]:
    evidence = (report.get("evidence") or {}).get("text") or f"{report['samples']} samples, {report['inputs']}"
    where = "" if cpu else f", {next(iter(machines))}"
    table = Table(title=f"verification: {escape(report['recipe'])} on {escape(report['target'])}{escape(where)}"
                        f" ({escape(evidence)})", box=box.SIMPLE_HEAD, padding=(0, pad), collapse_padding=True,
                  show_edge=False, title_justify="left")
    table.add_column("runtime", no_wrap=True)
    if cpu:
        table.add_column("cpu", no_wrap=True)
    table.add_column("output", overflow="fold", min_width=6, max_width=name)   # long names wrap, numbers never
    table.add_column("kind", no_wrap=True)
    numeric = ["decisions"] + (["values"] if values else []) + (["max err"] if limit else []) + \
        (["mean err"] if extra else []) + ["margin", "cosine"]
    numeric += ["SNR dB"] if extra else []
    for col in numeric:
        table.add_column(col, no_wrap=True, justify="right")
    table.add_column("accuracy", no_wrap=True)
    table.add_column("result", no_wrap=True)
    below: list[str] = []
    for r in report["runtimes"]:
        label = runtime_label(r)
        cpu_cell = [r.get("machine") or r["arch"]] if cpu else []
        if r["status"] in ("error", "unavailable"):
            what = "can't run" if r["status"] == "error" else "host n/a"
            table.add_row(escape(label), *cpu_cell, "-", "-", *["-"] * (len(numeric) + 1), f"[red]{what}[/red]")
            why = "cannot run this model" if r["status"] == "error" else "was not verified (host problem)"
            below.append(f"[red]{escape(label)} {why}:[/red] {escape(str(r['error']))}")
            continue
        for o in r["outputs"]:
            accuracy = "-"
            if o.get("accuracy_reference") is not None:
                accuracy = f"{o['accuracy_reference']:.{acc}f}→{o['accuracy_candidate']:.{acc}f}"
            cells = {"max err": _fmt(o["max_abs_err"], 3), "decisions": _decisions(o), "values": _values(o),
                     "margin": _margin(o), "cosine": fmt_cosine(o["cosine"]),
                     "mean err": _fmt(o.get("mean_abs_err"), 3), "SNR dB": _fmt(o.get("snr_db"), 3)}
            if not o["passed"]:
                cells["margin"] = f"[red]{cells['margin']}[/red]"
                below.append(f"[red]FAIL[/red] {escape(label)} {escape(o['name'])}: " + escape("; ".join(o["reasons"])))
            table.add_row(escape(label), *cpu_cell, escape(o["name"]), escape(_short_kind(o.get("kind"))),
                          *[cells[c] for c in numeric], accuracy,
                          "[green]pass[/green]" if o["passed"] else "[red]FAIL[/red]")
    return table, below


def show_verification(report: dict) -> None:
    """Print a verification report (:meth:`VerifyReport.to_json` form): the table, the lines below it, the
    MATCH/MISMATCH verdict with its evidence, and the notes not already shown (none with --quiet)."""
    table, below = verification_table(report)
    if report.get("device"):
        out.print(device_line(report["device"]), highlight=False, markup=False)
    out.print(table)
    for line in below:
        out.print(line, highlight=False)
    word = report.get("verdict") or ("MATCH" if report["passed"] else "MISMATCH")
    colour = {"MATCH": "green", "UNVERIFIED": "yellow"}.get(word, "red")
    evidence = report.get("evidence") or {}
    weak = " [yellow](weak evidence: pass --data with held-out inputs)[/yellow]" if evidence.get("weak") else ""
    line = report.get("line") or f"{word} ({evidence.get('text') or report['inputs']})"
    out.print(f"[bold {colour}]{word}[/bold {colour}]{escape(line[len(word):])}{weak}")
    guessed = sorted({o["name"] for r in report["runtimes"] for o in r.get("outputs", [])
                      if o.get("kind") == "values" and "no decision could be inferred" in (o.get("kind_source") or "")})
    if guessed and not state["quiet"]:
        out.print(f"[yellow]note:[/yellow] output(s) {escape(', '.join(guessed))} judged as values, column by column: "
                  "no decision could be inferred (mark one with --output-kind NAME:KIND)")
    errors = [str(r["error"]) for r in report["runtimes"] if r.get("error")]
    for note in report.get("notes", []):
        if state["quiet"] or any(e in note for e in errors):    # already said below the table
            continue
        out.print(f"[yellow]note:[/yellow] {escape(note)}")


def device_line(d: dict) -> str:
    """The facts of the device a verdict was computed on, in one line: ``device pi@host:22, release ID: aarch64
    (Cortex-A72, 4 cores), Debian GNU/Linux 12, Python 3.11.2, numpy 1.26.4, ai_edge_litert 2.3.1``."""
    cpu = ", ".join(x for x in (d.get("cpu"), f"{d['cores']} cores" if d.get("cores") else None) if x)
    parts = [f"{d.get('machine') or '?'}" + (f" ({cpu})" if cpu else ""), d.get("os"),
             f"Python {d['python']}" if d.get("python") else None, f"numpy {d['numpy']}" if d.get("numpy") else None,
             f"{d.get('runtime')} {d.get('runtime_version') or ''}".strip() if d.get("runtime") else None,
             f"{d['threads']} threads" if d.get("threads") else None]
    return f"device {d.get('device')}, release {d.get('release')}: " + ", ".join(p for p in parts if p)


def _short_kind(kind: str | None) -> str:
    """A kind's table label: its own name, as ``--output-kind`` takes it."""
    return kind or "-"


def show_build(result: dict) -> None:
    """Print what ``build`` wrote (:meth:`BuildResult.to_json` form): the bundle with its model size in bytes,
    recipe, io and conversion path, the archive, warnings, then the verification (or that it was skipped)."""
    m = result["manifest"]
    out.print(f"[bold]bundle[/bold] {escape(str(result['bundle']))}  ({m['model_size']:,} bytes, "
              f"recipe {m['recipe']['name']}, io {m['recipe']['io']}, path {m['source']['conversion_path']})")
    out.print(f"[bold]archive[/bold] {escape(str(result['archive']))}")
    for w in result.get("warnings", []):
        out.print(f"[yellow]warning:[/yellow] {escape(w)}")
    if result.get("verification"):
        show_verification(result["verification"])
    else:
        out.print("[yellow]verification skipped (--no-verify): the bundle is unverified[/yellow]")


def _integrity_text(integrity) -> str:
    """``ok``, or the problems (a list from :func:`packager.api.inspect`) in words, with the way out."""
    if integrity == "ok" or not integrity:
        return "ok"
    problems = [str(p) for p in (integrity if isinstance(integrity, (list, tuple)) else [integrity])]
    return (f"DAMAGED ({len(problems)} problem{'s' if len(problems) > 1 else ''}: {'; '.join(problems)}): "
            "files were changed after the build; rebuild it with edgepack build")


def show_inspect(info: dict) -> None:
    """Print :func:`packager.api.inspect` output: model size in bytes and sha256, the tensors (index, shape, dtype,
    scale, zero point), the ops with versions, for a bundle its target, recipe, verification and integrity, and each
    runtime that cannot run the model."""
    model = info["model"]
    out.print(f"[bold]{escape(info['path'])}[/bold]  {model['size']:,} bytes  sha256 {model['sha256'][:16]}...")
    table = Table(title="tensors", box=box.SIMPLE_HEAD, title_justify="left", show_edge=False)
    for col in ("kind", "name", "index", "shape", "dtype", "scale", "zero point"):
        table.add_column(col, no_wrap=col not in ("name",), overflow="fold")
    for kind in ("inputs", "outputs"):
        for t in model[kind]:
            q = t["quantization"] or {}
            table.add_row(kind[:-1], escape(t["name"]), str(t["index"]), str(t["shape"]), t["dtype"],
                          _fmt(q.get("scale")), _fmt(q.get("zero_point")))
    out.print(table)
    out.print("ops: " + ", ".join(f"{o['name']} v{o['version']}" + (f" x{o['count']}" if o["count"] > 1 else "")
                                 for o in model["ops"]))
    if info["kind"] == "bundle":
        m = info["manifest"]
        out.print(f"target {m['target']['name']}, recipe {m['recipe']['name']}, verification "
                  f"{m['verification']['status']}, integrity " + _integrity_text(info['integrity']))
    for rt, problems in info["runtime_problems"].items():
        if problems:
            out.print(f"[red]{escape(rt)} cannot run it:[/red] " + escape("; ".join(problems)))


def show_targets(targets: list[dict]) -> None:
    """Runtime pins are the point of this table: they never wrap; the description goes below."""
    table = Table(title="targets (--target)", box=box.SIMPLE_HEAD, title_justify="left", pad_edge=False)
    for col in ("name", "arch", "deploy", "recipe", "runtimes (pip requirements)"):
        table.add_column(col, no_wrap=True)
    for t in targets:
        table.add_row(t["name"], t["arch"], t["deploy"], t["default_recipe"],
                      "\n".join(" ".join(r["requirements"]) for r in t["runtimes"]))
    out.print(table)
    for t in targets:
        out.print(f"[bold]{escape(t['name'])}[/bold]: {escape(t['description'])}")


def tolerance_text(t: dict) -> str:
    """`flips≤3% drop≤1pt σ×0.5 R²≥0.9 cos≥0.98 nn≤10%`: decisions that may change, accuracy drop, values per
    column (p99 error against the column's spread, R²), embedding row cosine and nearest neighbours changed."""
    return (f"flips≤{100 * t['flips']:g}% drop≤{t['max_drop']:g}pt σ×{t['spread']:g} R²≥{t['r2_min']:g} "
            f"cos≥{t['cosine_min']:g} nn≤{100 * t['neighbours']:g}%")


def _fits(table: Table, width: int) -> bool:
    from rich.measure import Measurement
    return Measurement.get(out, out.options.update_width(10_000), table).maximum <= width


def _recipes_table(recipes: list[dict], io: bool, description: bool, engine: bool = True,
                   fold: bool = False) -> Table:
    """The recipes table; ``fold``: the last resort for a narrow terminal (or long recipe names), where names and
    tolerances wrap instead of being cut off."""
    table = Table(title="recipes (--quantize)", box=box.SIMPLE_HEAD, title_justify="left", show_edge=False)
    table.add_column("name", no_wrap=not fold, overflow="fold", min_width=4)
    if engine:
        table.add_column("engine", no_wrap=True)
    table.add_column("calib.", no_wrap=True)
    if io:
        table.add_column("--io", no_wrap=True)
    table.add_column("tolerance", no_wrap=not fold, overflow="fold")
    if description:
        table.add_column("description", overflow="fold", min_width=24)
    for r in recipes:
        row = [r["name"]] + ([r.get("engine", "tflite-converter")] if engine else []) + \
              ["yes" if r["needs_calibration"] else "-"] + ([",".join(r["io_types"])] if io else [])
        row += [tolerance_text(r["tolerance"])] + ([r["description"]] if description else [])
        table.add_row(*[escape(c) for c in row])
    return table


def show_recipes(recipes: list[dict]) -> None:
    """Print the recipes (:meth:`Recipe.to_json` rows plus ``io_types``) in the widest table that fits the terminal,
    the tolerance rule, and below the table the descriptions it had no room for."""
    width = out.width
    for io, description, engine, fold in ((True, True, True, False), (True, False, True, False),
                                          (False, False, True, False), (False, False, False, False),
                                          (False, False, False, True)):
        table = _recipes_table(recipes, io, description, engine, fold)
        if _fits(table, width):
            break
    out.print(table)
    out.print("tolerance, by output kind: decisions (classes, thresholds, pixels, ids) that may change (--max-flips); "
              "accuracy drop with labels (--max-drop); values per column: p99 error ≤ σ× the column's spread and R² "
              "against the model; embeddings: row cosine and nearest neighbours (see packager/recipes.toml)",
              highlight=False)
    if not description:
        for r in recipes:
            io_text = "" if io else f" (--io {'|'.join(r['io_types'])})"
            if not engine:
                io_text += f" (engine {r.get('engine', 'tflite-converter')})"
            out.print(f"[bold]{r['name']}[/bold]{io_text}: {escape(r['description'])}", highlight=False)


# --------------------------------------------------------------------------------------- HTML report

_CSS = """body{font:15px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1b1f24;background:#f6f7f9}
main{max-width:1100px;margin:0 auto;padding:24px}h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px}
h3{font-size:15px;margin:18px 0 6px}.banner{border-radius:8px;padding:14px 18px;margin:12px 0;color:#fff}
.banner.good{background:#1a7f37}.banner.fail{background:#cf222e}.banner.warn{background:#9a6700}
.banner p{margin:4px 0 0}table{border-collapse:collapse;background:#fff;margin:6px 0}
td,th{border:1px solid #d0d7de;padding:4px 8px;text-align:right;font-variant-numeric:tabular-nums}
th{background:#eef1f4}td.t,th.t{text-align:left}.ok{color:#1a7f37}.bad{color:#cf222e}
.card{background:#fff;border:1px solid #d0d7de;border-radius:8px;padding:12px 16px;margin:12px 0}
.plots{display:flex;flex-wrap:wrap;gap:16px}.plots figure{margin:0}figcaption{font-size:13px;color:#57606a}
dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 16px;margin:0}dt{color:#57606a}
dd{margin:0;font-family:ui-monospace,monospace;font-size:13px;word-break:break-all}
svg text{font:11px system-ui,sans-serif;fill:#333}.cm td{width:26px;padding:2px;font-size:12px;text-align:center}
.muted{color:#57606a}"""


def html_report(report: dict | None, title: str, *, provenance: dict | None = None, status: str | None = None,
                error: dict | None = None, sections: list[tuple[str, str]] | None = None,
                labels: list[str] | None = None) -> str:
    """A self-contained HTML page (inline CSS and SVG, no network).

    ``report``: VerifyReport JSON, or None when nothing was verified. ``status``: overrides the
    banner ("not verified (--no-verify)"). ``error``: {"message", "hint"} of a failed command.
    ``provenance``: {label: value} (versions, sha256, command). ``sections``: extra (heading,
    HTML) pairs appended before the provenance, e.g. the per-op error from `diagnose`."""
    e = html.escape
    parts = [f"<!doctype html><html lang=en><meta charset=utf-8><meta name=viewport content='width=device-width'>"
             f"<title>{e(title)}</title><style>{_CSS}</style><main><h1>{e(title)}</h1>"]
    if report is not None:
        verdict = report.get("verdict") or ("MATCH" if report["passed"] else "MISMATCH")
        cls = {"MATCH": "good", "UNVERIFIED": "warn"}.get(verdict, "fail")
        evidence = (report.get("evidence") or {})
        weak = " (weak evidence: not held out)" if evidence.get("weak") else ""
        parts.append(f"<div class='banner {cls}' id=verdict><b>{verdict}</b>: recipe {e(report['recipe'])} on "
                     f"{e(report['target'])}, model {report['model_size']:,} bytes, evidence "
                     f"{e(evidence.get('text') or report['inputs'])}{e(weak)}"
                     + (f"<p>{e(report['line'])}</p>" if report.get("line") else ""))
        for f in report.get("failures") or []:
            parts.append(f"<p>{e(f)}</p>")
        parts.append("</div>")
    if error:
        parts.append(f"<div class='banner fail' id=error><b>failed</b>: {e(error['message'])}"
                     + (f"<p>hint: {e(error['hint'])}</p>" if error.get("hint") else "") + "</div>")
    if status:
        parts.append(f"<div class='banner warn' id=status>{e(status)}</div>")
    if report is not None:
        if report.get("device"):
            parts.append(f"<p id=device><b>computed on the device</b>: {e(device_line(report['device']))}</p>")
        parts.append(_html_table(report))
        errors = [str(r["error"]) for r in report["runtimes"] if r.get("error")]
        for note in report.get("notes") or []:
            if any(x in note for x in errors):      # already in the table
                continue
            parts.append(f"<p class=muted>note: {e(note)}</p>")
        parts.append(_html_outputs(report, labels))
    for heading, body in sections or []:
        parts.append(f"<section class=card><h2>{e(heading)}</h2>{body}</section>")
    if provenance:
        parts.append("<section class=card id=provenance><h2>provenance</h2><dl>" + "".join(
            f"<dt>{e(str(k))}</dt><dd>{e(str(v))}</dd>" for k, v in provenance.items() if v not in (None, "")) +
            "</dl></section>")
    parts.append("</main></html>\n")
    return "".join(parts)


def _html_table(report: dict) -> str:
    e = html.escape
    head = ("runtime", "cpu", "python", "output", "kind", "decisions kept", "values", "margin", "max abs err",
            "mean abs err", "cosine", "SNR dB", "accuracy model → bundle", "result")
    rows = []
    for r in report["runtimes"]:
        rt = f"{r['runtime']} {r.get('version') or ''}"
        if r["status"] in ("error", "unavailable"):
            what = "cannot run" if r["status"] == "error" else "not verified (host problem)"
            rows.append(f"<tr><td class=t>{e(rt)}</td><td class=t>{e(r['arch'])}</td><td></td>"
                        f"<td class='t bad' colspan=11>{what}: {e(str(r['error']))}</td></tr>")
            continue
        for o in r["outputs"]:
            acc = "-" if o.get("accuracy_reference") is None else \
                f"{o['accuracy_reference']:.4f} → {o['accuracy_candidate']:.4f}"
            result = "pass" if o["passed"] else "FAIL"
            cells = [o.get("kind") or "-", _decisions(o), _values(o), _margin(o), _fmt(o["max_abs_err"]),
                     _fmt(o.get("mean_abs_err")), fmt_cosine(o["cosine"]), _fmt(o.get("snr_db")), acc]
            rows.append(f"<tr><td class=t>{e(rt)}</td><td class=t>{e(r.get('machine') or r['arch'])}</td>"
                        f"<td class=t>{e(r.get('python') or '-')}</td><td class=t>{e(o['name'])}</td>"
                        + "".join(f"<td>{e(c)}</td>" for c in cells)
                        + f"<td class='t {'ok' if o['passed'] else 'bad'}' title='{e('; '.join(o['reasons']))}'>"
                          f"{e(result)}</td></tr>")
    return ("<table id=metrics><tr>" + "".join(f"<th class=t>{h}</th>" if i < 5 else f"<th>{h}</th>"
                                               for i, h in enumerate(head)) + "</tr>" + "".join(rows) + "</table>")


def _html_outputs(report: dict, labels: list[str] | None) -> str:
    e = html.escape
    parts = []
    for r in report["runtimes"]:
        for o in r.get("outputs") or []:
            plots = o.get("plots") or {}
            figs = []
            if plots.get("log_histogram"):
                figs.append(_log_histogram_svg(plots["log_histogram"], o["allowed_max_abs"], o["max_abs_err"]))
            elif o.get("histogram"):
                figs.append(_log_histogram_svg(_log_from_linear(o["histogram"]), o["allowed_max_abs"], o["max_abs_err"]))
            if plots.get("scatter"):
                figs.append(_scatter_svg(plots["scatter"], o["allowed_max_abs"]))
            if plots.get("confusion"):
                figs += [_confusion_html(m, who, labels) for who, m in plots["confusion"].items()]
            status = "<span class=ok>pass</span>" if o["passed"] else "<span class=bad>FAIL</span>"
            parts.append(f"<section class='card output' data-output='{e(o['name'])}' data-runtime='{e(r['runtime'])}'>"
                         f"<h3>{e(r['runtime'])} {e(r.get('version') or '')}: output {e(o['name'])} {status}</h3>"
                         f"<div class=plots>{''.join(figs) or '<p class=muted>no values to plot</p>'}</div></section>")
    return ("<h2>per output</h2>" + "".join(parts)) if parts else ""


def _log_from_linear(hist: dict) -> dict:
    """Older reports (no plots): put the linear histogram's bins on the log axis by their centres."""
    edges, counts = hist["edges"], hist["counts"]
    centres = [(a + b) / 2 for a, b in zip(edges, edges[1:])]
    pos = [c for c in centres if c > 0]
    if not pos:
        return {"zeros": sum(counts), "edges": [], "counts": []}
    lo, hi = math.floor(math.log10(min(pos)) * 4) / 4, math.ceil(math.log10(max(pos)) * 4) / 4 + 0.25
    n = int(round((hi - lo) / 0.25))
    binned = [0] * n
    for c, k in zip(centres, counts):
        if c > 0:
            binned[min(n - 1, int((math.log10(c) - lo) / 0.25))] += k
    return {"zeros": 0, "edges": [lo + 0.25 * i for i in range(n + 1)], "counts": binned}


def _log_histogram_svg(h: dict, limit: float, max_err: float) -> str:
    """|error| on a log10 x axis (quarter decades), counts on a log y axis so that the tail that
    fails a build is visible, the limit as a red line."""
    W, H, L, B, T, R = 440, 220, 46, 34, 14, 12
    edges, counts = h.get("edges") or [], h.get("counts") or []
    if not edges:
        return (f"<figure><svg class=loghist width={W} height=60 role=img><text x=8 y=30>all {h.get('zeros', 0)} "
                f"values identical (error 0)</text></svg><figcaption>|error| distribution</figcaption></figure>")
    lo, hi = edges[0], edges[-1]
    if limit > 0:
        lo, hi = min(lo, math.floor(math.log10(limit))), max(hi, math.ceil(math.log10(limit) * 4) / 4 + 0.25)
    pw, ph = W - L - R, H - T - B

    def x(v):
        return L + (v - lo) / (hi - lo) * pw
    top = math.log10(1 + max(counts))

    def y(c):
        return T + ph - (math.log10(1 + c) / top * ph if top else 0)
    bars = "".join(f"<rect class=bar x='{x(a):.1f}' y='{y(c):.1f}' width='{max(1.0, x(b) - x(a) - 1):.1f}' "
                   f"height='{T + ph - y(c):.1f}' fill='{'#cf222e' if limit > 0 and 10 ** a >= limit else '#4c8bf5'}'>"
                   f"<title>{10 ** a:.3g} to {10 ** b:.3g}: {c}</title></rect>"
                   for a, b, c in zip(edges, edges[1:], counts) if c)
    ticks = "".join(f"<line x1='{x(d):.1f}' x2='{x(d):.1f}' y1='{T + ph}' y2='{T + ph + 4}' stroke='#333'/>"
                    f"<text x='{x(d):.1f}' y='{T + ph + 16}' text-anchor=middle>1e{d}</text>"
                    for d in range(math.ceil(lo), math.floor(hi) + 1))
    yt = "".join(f"<text x='{L - 4}' y='{y(c) + 4:.1f}' text-anchor=end>{c}</text>"
                 f"<line x1='{L}' x2='{L + pw}' y1='{y(c):.1f}' y2='{y(c):.1f}' stroke='#eee'/>"
                 for c in _count_ticks(max(counts)))
    lim = ""
    if limit > 0:
        lx = x(math.log10(limit))
        lim = (f"<line class=limit x1='{lx:.1f}' x2='{lx:.1f}' y1='{T}' y2='{T + ph}' stroke='#cf222e' "
               f"stroke-width=2 stroke-dasharray='5 3'/><text x='{lx - 4:.1f}' y='{T + 10}' text-anchor=end "
               f"fill='#cf222e'>limit {limit:.3g}</text>")
    zeros = f", {h['zeros']} exactly 0 (not drawn)" if h.get("zeros") else ""
    if edges[-1] - edges[0] >= 6.25:
        zeros += f"; errors below {10 ** edges[0]:.0e} counted in the first bar"
    return (f"<figure><svg class=loghist width={W} height={H} viewBox='0 0 {W} {H}' role=img>"
            f"<rect x='{L}' y='{T}' width='{pw}' height='{ph}' fill='#fafbfc' stroke='#d0d7de'/>{yt}{bars}{ticks}{lim}"
            f"<text x='{L + pw / 2}' y='{H - 2}' text-anchor=middle>|bundle − model| (log scale)</text>"
            f"<text transform='translate(11 {T + ph / 2}) rotate(-90)' text-anchor=middle>values (log)</text></svg>"
            f"<figcaption>|error| distribution: max {max_err:.3g}, limit {limit:.3g}{zeros}</figcaption></figure>")


def _count_ticks(peak: int) -> list[int]:
    ticks = [c for c in (0, 1, 10, 100, 1000, 10000, 100000, 1000000) if c <= peak]
    return ticks if peak < 3 * ticks[-1] else ticks + [peak]


def _scatter_svg(s: dict, limit: float) -> str:
    """Bundle against model value by value (a sample that always holds the worst): points off the
    diagonal by more than the limit are red."""
    W, H, L, B, T, R = 300, 300, 46, 34, 12, 12
    xs, ys = s["reference"], s["bundle"]
    pts = [(a, b) for a, b in zip(xs, ys) if math.isfinite(a) and math.isfinite(b)]
    if not pts:
        return ""
    lo = min(min(a, b) for a, b in pts)
    hi = max(max(a, b) for a, b in pts)
    if hi <= lo:
        hi = lo + 1.0
    lo, hi = lo - 0.03 * (hi - lo), hi + 0.03 * (hi - lo)     # points on the extremes stay inside the frame
    pw, ph = W - L - R, H - T - B

    def px(v):
        return L + (v - lo) / (hi - lo) * pw

    def py(v):
        return T + ph - (v - lo) / (hi - lo) * ph
    dots = "".join(f"<circle class=pt cx='{px(a):.1f}' cy='{py(b):.1f}' r=2 fill='"
                   f"{'#cf222e' if abs(a - b) > limit else '#4c8bf5'}' fill-opacity='.6'/>" for a, b in pts)
    return (f"<figure><svg class=scatter width={W} height={H} viewBox='0 0 {W} {H}' role=img>"
            f"<rect x='{L}' y='{T}' width='{pw}' height='{ph}' fill='#fafbfc' stroke='#d0d7de'/>"
            f"<line x1='{px(lo):.1f}' y1='{py(lo):.1f}' x2='{px(hi):.1f}' y2='{py(hi):.1f}' stroke='#999'/>{dots}"
            f"<text x='{L}' y='{T + ph + 14}'>{lo:.3g}</text><text x='{L + pw}' y='{T + ph + 14}' text-anchor=end>"
            f"{hi:.3g}</text><text x='{L - 4}' y='{T + ph}' text-anchor=end>{lo:.3g}</text>"
            f"<text x='{L - 4}' y='{T + 10}' text-anchor=end>{hi:.3g}</text>"
            f"<text x='{L + pw / 2}' y='{H - 2}' text-anchor=middle>model value</text>"
            f"<text transform='translate(11 {T + ph / 2}) rotate(-90)' text-anchor=middle>bundle value</text></svg>"
            f"<figcaption>bundle vs model, {len(pts)} of {s.get('of', len(pts))} values (worst included)"
            f"</figcaption></figure>")


def _confusion_html(matrix: list[list[int]], who: str, labels: list[str] | None) -> str:
    e = html.escape
    k = len(matrix)
    names = labels if labels and len(labels) == k else [str(i) for i in range(k)]
    peak = max((max(row) for row in matrix), default=1) or 1
    total = sum(map(sum, matrix)) or 1
    correct = sum(matrix[i][i] for i in range(k))
    rows = "".join(f"<tr><th class=t>{e(names[i])}</th>" + "".join(
        f"<td style='background:rgba({'26,127,55' if i == j else '207,34,46'},{0.08 + 0.8 * c / peak if c else 0:.2f})'"
        f" title='label {e(names[i])}, predicted {e(names[j])}: {c}'>{c or ''}</td>" for j, c in enumerate(row))
        + "</tr>" for i, row in enumerate(matrix))
    return (f"<figure><table class=cm data-who='{e(who)}'><tr><th></th>"
            + "".join(f"<th>{e(n)}</th>" for n in names) + f"</tr>{rows}</table>"
            f"<figcaption>confusion, {e(who)}: rows label, columns predicted; accuracy {correct / total:.4f}"
            f"</figcaption></figure>")


def show_sweep(sweep: dict) -> None:
    """Recipes side by side: size and size vs float32, per runtime the worst top-1 agreement (or
    cosine) and its status, accuracy with labels, and each recipe's bundle or why there is none."""
    rows = sweep["recipes"]
    runtimes = sorted({name for r in rows for name in (r.get("runtimes") or {})})
    table = Table(title=f"recipes side by side ({sweep.get('evidence') or 'no verification'})", box=box.SIMPLE_HEAD)
    for col in ["recipe", "size", "×f32"] + [short_runtime(n) for n in runtimes] + ["accuracy", "result"]:
        table.add_column(col, no_wrap=col != "result", overflow="fold")
    notes = []
    for r in rows:
        cells = [r["recipe"], f"{r['size']:,}" if r.get("size") else "-",
                 f"{r['size_vs_float32']:.2f}" if r.get("size_vs_float32") else "-"]
        accuracy = "-"
        for n in runtimes:
            m = (r.get("runtimes") or {}).get(n)
            if not m:
                cells.append("-")
                continue
            if m["status"] in ("error", "unavailable"):
                cells.append("can't run" if m["status"] == "error" else "n/a")
                continue
            score = f"kept {m['top1_agreement']:.3f}" if m.get("top1_agreement") is not None else \
                f"cos {m['cosine']:.5f}" if m.get("cosine") is not None else "-"
            cells.append(score + ("" if m["status"] == "passed" else " FAIL"))
            if m.get("accuracy") is not None:
                accuracy = f"{m['accuracy_reference']:.4f}→{m['accuracy']:.4f}"
        cells.append(accuracy)
        if r["bundle"]:
            cells.append("[green]built[/green]")
            notes.append(f"{r['recipe']}: {r['bundle']}")
        else:
            cells.append(f"[yellow]{escape(r['status'])}[/yellow]")
            notes.append(f"{r['recipe']}: {r['status']}: {r.get('reason', '')}")
        table.add_row(*cells)
    out.print(table)
    for line in notes:
        out.print(escape(line), highlight=False)
