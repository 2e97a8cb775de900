"""Rendering: rich tables for people, JSON for CI, HTML for reports. Only this module (and the
CLI) print."""
from __future__ import annotations

import html
import json
import math
from contextlib import contextmanager

from rich.console import Console
from rich.markup import escape
from rich.table import Table

def _console(stderr: bool = False) -> Console:
    probe = Console(stderr=stderr)
    # Piped output (CI logs) gets 120 columns instead of rich's 80, so tables stay readable.
    return Console(stderr=stderr, highlight=False, width=None if probe.is_terminal else 120)


out = _console()
err = _console(stderr=True)


def print_json(data) -> None:
    print(json.dumps(data, indent=2, default=_default, allow_nan=False))


def _default(value):
    if hasattr(value, "to_json"):
        return value.to_json()
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def _clean(data):
    """JSON has no NaN/Inf: make them strings so --json output always parses."""
    if isinstance(data, float) and not math.isfinite(data):
        return "inf" if data > 0 else ("-inf" if data < 0 else "nan")
    if isinstance(data, dict):
        return {k: _clean(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_clean(v) for v in data]
    return data


def emit_json(data) -> None:
    print_json(_clean(json.loads(json.dumps(data, default=_default))))


@contextmanager
def progress(enabled: bool = True):
    """A status line on stderr; yields a callback the library calls with messages."""
    if not enabled or not err.is_terminal:
        def plain(msg: str, *_):
            if enabled:
                err.print(f"[dim]... {msg}[/dim]")
        yield plain
        return
    with err.status("starting") as status:
        def update(msg: str, *_):
            status.update(msg)
            err.log(msg)
        yield update


def error(message: str, hint: str | None = None) -> None:
    err.print(f"[bold red]error:[/bold red] {escape(message)}", highlight=False, soft_wrap=True)
    if hint:
        err.print(f"[yellow]hint:[/yellow] {escape(hint)}", soft_wrap=True)


def _fmt(v, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return f"{v:.{digits}g}"
    return str(v)


def verification_table(report: dict) -> Table:
    """The numbers a reader needs at a glance; mean error and SNR are in --json and --html."""
    evidence = (report.get("evidence") or {}).get("text") or f"{report['samples']} samples, {report['inputs']}"
    table = Table(title=f"verification: {report['recipe']} on {report['target']} ({evidence})")
    for col in ("runtime", "cpu", "output", "max abs err", "limit (margin)", "cosine", "top-1 agree",
                "accuracy model -> bundle", "result"):
        table.add_column(col, overflow="fold")
    for r in report["runtimes"]:
        rt = f"{r['runtime']} {r['version']}"
        if r["status"] in ("error", "unavailable"):
            what = "cannot run" if r["status"] == "error" else "not verified"
            table.add_row(rt, r["arch"], "-", "", "", "", "", "", f"[red]{what}: {escape(str(r['error']))}[/red]")
            continue
        for o in r["outputs"]:
            acc = "-"
            if o.get("accuracy_reference") is not None:
                acc = f"{o['accuracy_reference']:.4f} -> {o['accuracy_candidate']:.4f}"
            ok = "[green]pass[/green]" if o["passed"] else "[red]FAIL: " + escape("; ".join(o["reasons"])) + "[/red]"
            limit = o["allowed_max_abs"]
            margin = f" ({limit / o['max_abs_err']:.1f}x)" if o["max_abs_err"] and math.isfinite(o["max_abs_err"]) else ""
            table.add_row(rt, r.get("machine") or r["arch"], o["name"], _fmt(o["max_abs_err"], 3),
                          _fmt(limit, 3) + margin, _fmt(o["cosine"], 6), _fmt(o["top1_agreement"]), acc, ok)
    return table


def show_verification(report: dict) -> None:
    out.print(verification_table(report))
    verdict = "[bold green]MATCH[/bold green]" if report["passed"] else "[bold red]MISMATCH[/bold red]"
    evidence = report.get("evidence") or {}
    weak = " [yellow](weak evidence: pass --data with held-out inputs)[/yellow]" if evidence.get("weak") else ""
    out.print(f"{verdict}: the bundle {'computes' if report['passed'] else 'does not compute'} what the model computes"
              f" (evidence {escape(evidence.get('text') or report['inputs'])}){weak}")
    for note in report.get("notes", []):
        out.print(f"[yellow]note:[/yellow] {note}")


def show_build(result: dict) -> None:
    m = result["manifest"]
    out.print(f"[bold]bundle[/bold] {result['bundle']}  ({m['model_size']:,} bytes model, recipe {m['recipe']['name']},"
              f" io {m['recipe']['io']}, path {m['source']['conversion_path']})")
    out.print(f"[bold]archive[/bold] {result['archive']}")
    for w in result.get("warnings", []):
        out.print(f"[yellow]warning:[/yellow] {w}")
    if result.get("verification"):
        show_verification(result["verification"])
    else:
        out.print("[yellow]verification skipped (--no-verify)[/yellow]")


def show_inspect(info: dict) -> None:
    model = info["model"]
    out.print(f"[bold]{info['path']}[/bold]  {model['size']:,} bytes  sha256 {model['sha256'][:16]}...")
    table = Table(title="tensors")
    for col in ("kind", "name", "index", "shape", "dtype", "scale", "zero point"):
        table.add_column(col)
    for kind in ("inputs", "outputs"):
        for t in model[kind]:
            q = t["quantization"] or {}
            table.add_row(kind[:-1], t["name"], str(t["index"]), str(t["shape"]), t["dtype"],
                          _fmt(q.get("scale")), _fmt(q.get("zero_point")))
    out.print(table)
    out.print("ops: " + ", ".join(f"{o['name']} v{o['version']}" + (f" x{o['count']}" if o["count"] > 1 else "")
                                 for o in model["ops"]))
    if info["kind"] == "bundle":
        m = info["manifest"]
        out.print(f"target {m['target']['name']}, recipe {m['recipe']['name']}, verification "
                  f"{m['verification']['status']}, integrity {info['integrity']}")
    for rt, problems in info["runtime_problems"].items():
        if problems:
            out.print(f"[red]{rt} cannot run it:[/red] " + "; ".join(problems))


def show_targets(targets: list[dict]) -> None:
    table = Table(title="targets")
    for col in ("name", "arch", "deploy", "default recipe", "runtimes", "description"):
        table.add_column(col)
    for t in targets:
        table.add_row(t["name"], t["arch"], t["deploy"], t["default_recipe"],
                      "\n".join(" ".join(r["requirements"]) for r in t["runtimes"]), t["description"])
    out.print(table)


def show_recipes(recipes: list[dict]) -> None:
    table = Table(title="recipes (--quantize)")
    for col in ("name", "calibration", "io", "tolerance", "description"):
        table.add_column(col)
    for r in recipes:
        t = r["tolerance"]
        tol = f"|err| <= {t['atol']} + {t['rtol']}*max|ref|" + (f" + {t['steps']} steps" if t["steps"] else "") + \
              f"; cos >= {t['cosine_min']}; top-1 >= {t['top1_min']}"
        table.add_row(r["name"], "required" if r["needs_calibration"] else "-", ", ".join(r["io_types"]), tol,
                      r["description"])
    out.print(table)


def html_report(report: dict, title: str) -> str:
    """A self-contained HTML page: the table plus an error histogram per output (inline SVG)."""
    rows, charts = [], []
    for r in report["runtimes"]:
        if r["status"] in ("error", "unavailable"):
            rows.append(f"<tr><td>{html.escape(r['runtime'])} {html.escape(r['version'] or '')}</td>"
                        f"<td>{r['arch']}</td><td colspan=8 class=bad>cannot run: {html.escape(str(r['error']))}</td></tr>")
            continue
        for o in r["outputs"]:
            cls = "ok" if o["passed"] else "bad"
            rows.append("<tr>" + "".join(f"<td>{html.escape(_fmt(v) if not isinstance(v, str) else v)}</td>" for v in (
                f"{r['runtime']} {r['version']}", r.get("machine") or r["arch"], o["name"], o["max_abs_err"],
                o["mean_abs_err"], o["cosine"], o["snr_db"], o["top1_agreement"])) +
                f"<td>{_fmt(o.get('accuracy_reference'))} / {_fmt(o.get('accuracy_candidate'))}</td>"
                f"<td class={cls}>{'pass' if o['passed'] else html.escape('; '.join(o['reasons']))}</td></tr>")
            if o.get("histogram"):
                charts.append(f"<h3>{html.escape(r['runtime'])}: {html.escape(o['name'])}</h3>" + _svg(o["histogram"]))
    verdict = "MATCH" if report["passed"] else "MISMATCH"
    return f"""<!doctype html><meta charset=utf-8><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{border:1px solid #ccc;padding:3px 8px}}
table{{border-collapse:collapse}}.ok{{color:#070}}.bad{{color:#b00}}</style>
<h1>{html.escape(title)}: <span class={'ok' if report['passed'] else 'bad'}>{verdict}</span></h1>
<p>recipe <b>{html.escape(report['recipe'])}</b>, target <b>{html.escape(report['target'])}</b>,
model {report['model_size']:,} bytes, {report['samples']} samples ({html.escape(report['inputs'])})</p>
{f"<p class=bad>{html.escape(report['first_divergence'])}</p>" if report.get("first_divergence") else ""}
<table><tr><th>runtime</th><th>arch</th><th>output</th><th>max abs</th><th>mean abs</th><th>cosine</th>
<th>SNR dB</th><th>top-1 agreement</th><th>accuracy ref / bundle</th><th>result</th></tr>{''.join(rows)}</table>
<h2>absolute error histograms</h2>{''.join(charts)}
"""


def _svg(hist: dict) -> str:
    counts, edges = hist["counts"], hist["edges"]
    top = max(counts) or 1
    w, h, bw = 420, 120, 420 / len(counts)
    bars = "".join(f'<rect x="{i * bw:.1f}" y="{h - c / top * h:.1f}" width="{bw - 1:.1f}" height="{c / top * h:.1f}"'
                   f' fill="#4a7"><title>{edges[i]:.3g}-{edges[i + 1]:.3g}: {c}</title></rect>'
                   for i, c in enumerate(counts))
    return (f'<svg width="{w}" height="{h + 16}" xmlns="http://www.w3.org/2000/svg">{bars}'
            f'<text x="0" y="{h + 14}" font-size="11">{edges[0]:.3g}</text>'
            f'<text x="{w - 60}" y="{h + 14}" font-size="11">{edges[-1]:.3g}</text></svg>')
