"""Rendering of `edgepack diagnose`: the terminal table and the HTML report with a per-op error
plot (inline SVG, log scale, the limit drawn). Printing goes through :mod:`packager.cli.render`."""
from __future__ import annotations

import html
import math

from rich.markup import escape
from rich.table import Table

from .render import _fmt, out


def show_diagnosis(d: dict) -> None:
    """Per-op table (quantized vs float), the first divergence, causes, runtime comparison."""
    if d["ops"]:
        table = Table(title=f"{d['model']} vs float32 {d['reference']} ({d['evidence']})")
        for col in ("op", "type", "tensor", "err/range", "chan err", "cosine", "rmse steps", "clipped",
                    "below step", "jump"):
            table.add_column(col, justify="left" if col in ("type", "tensor") else "right")
        for r in d["ops"]:
            style = "red" if r["diverged"] else None
            label = r.get("label") or r["tensor"]
            name = label if len(label) <= 40 else label[:37] + "..."
            table.add_row(str(r["index"]), f"{r['op']} v{r['version']}", escape(name), f"{r['rel']:.2%}",
                          f"{r['channel_rel']:.2%}", f"{r['cosine']:.4f}", _fmt(r["steps"], 3),
                          f"{r['clipped']:.0%}", f"{r['below_step']:.0%}", _fmt(r["jump"], 3), style=style)
        out.print(table)
        lim = d["limits"]
        out.print(f"[dim]diverged (red): error > {lim['rel']:.0%} of the range, cosine < {lim['cosine']}, or the "
                  f"median channel's error > {lim['channel']:.0%} of its range[/dim]")
    out.print(f"[bold]{escape(d['brief'])}[/bold]" if d["brief"] else
              "[green]no op diverges from the float32 model[/green]" if d["ops"] else "")
    for c in d["causes"]:
        out.print(f"- {c['kind']}: {escape(c['text'])}")
    for r in d["runtime_divergences"]:
        out.print(f"runtimes {escape(r['a'])} vs {escape(r['b'])}: {escape(r['text'])}")
    for n in d["notes"]:
        out.print(f"[yellow]note:[/yellow] {escape(n)}")


def diagnosis_html(d: dict, title: str) -> str:
    """A self-contained page (:func:`packager.cli.render.html_report` with the diagnosis as sections):
    the first divergence, the per-op error plot, the table, causes and the runtime comparison."""
    from .render import html_report
    status = d["brief"] or ("no op diverges from the float32 model" if d["ops"] else "runtimes compared only")
    return html_report(None, title, status=status, sections=diagnosis_sections(d),
                       provenance={"samples": f"{d['samples']} ({d['evidence']})",
                                   "runtimes": ", ".join(d["runtimes"]), "reference": d["reference"]})


def diagnosis_sections(d: dict) -> list[tuple[str, str]]:
    """(heading, HTML) pairs: per-op error plot and table, causes, runtime vs runtime."""
    rows = "".join(
        "<tr" + (" class=bad" if r["diverged"] else "") + ">" + "".join(f"<td>{html.escape(str(v))}</td>" for v in (
            r["index"], f"{r['op']} v{r['version']}", r.get("label") or r["tensor"], f"{r['rel']:.3%}",
            f"{r['channel_rel']:.3%}", f"{r['cosine']:.4f}", _fmt(r["steps"], 3), f"{r['clipped']:.1%}",
            f"{r['below_step']:.1%}")) + "</tr>"
        for r in d["ops"])
    causes = "".join(f"<li><b>{html.escape(c['kind'])}</b>: {html.escape(c['text'])}</li>" for c in d["causes"])
    rts = "".join(f"<li>{html.escape(r['a'])} vs {html.escape(r['b'])}: {html.escape(r['text'])}</li>"
                  for r in d["runtime_divergences"])
    table = ("<table><tr><th>op</th><th>type</th><th>tensor</th><th>err/range</th><th>channel err</th>"
             f"<th>cosine</th><th>rmse steps</th><th>clipped</th><th>below step</th></tr>{rows}</table>")
    return [("error per op (rmse / float range, log scale; red: diverged)", error_plot(d["ops"], d["limits"]["rel"])
             + table),
            ("causes", f"<ul>{causes or '<li>none found</li>'}</ul>"),
            ("runtime vs runtime", f"<ul>{rts or '<li>one runtime</li>'}</ul>")]


def error_plot(ops: list[dict], limit: float) -> str:
    """Inline SVG: one bar per op, height log10(rmse / range) from 1e-6 to 10, limit as a dashed line."""
    if not ops:
        return "<p>no matched ops</p>"
    w, h, pad = max(300, 28 * len(ops)), 200, 40
    lo, hi = -6.0, 1.0

    def y(v: float) -> float:
        v = min(max(math.log10(v) if v > 0 else lo, lo), hi)
        return h - (v - lo) / (hi - lo) * h

    bw = (w - pad) / len(ops)
    parts = []
    for k, r in enumerate(ops):
        v = r["rel"] if math.isfinite(r["rel"]) else 10 ** hi
        top = y(v)
        color = "#c33" if r["diverged"] else "#4a7"
        parts.append(f'<rect x="{pad + k * bw + 2:.1f}" y="{top:.1f}" width="{bw - 4:.1f}" height="{h - top:.1f}" '
                     f'fill="{color}"><title>op {r["index"]} {html.escape(r["op"])}: {r["rel"]:.3g}</title></rect>'
                     f'<text x="{pad + k * bw + 2:.1f}" y="{h + 14}" font-size="10">{r["index"]}</text>')
    ticks = "".join(f'<text x="0" y="{y(10.0 ** e) + 4:.1f}" font-size="10">1e{e}</text>' for e in range(-6, 2, 2))
    ly = y(limit)
    return (f'<svg width="{w}" height="{h + 20}" xmlns="http://www.w3.org/2000/svg">{ticks}{"".join(parts)}'
            f'<line x1="{pad}" x2="{w}" y1="{ly:.1f}" y2="{ly:.1f}" stroke="#b00" stroke-dasharray="4 3"/>'
            f'<text x="{w - 90}" y="{ly - 3:.1f}" font-size="10" fill="#b00">limit {limit:g}</text></svg>')


def _clip(text: str, limit: int) -> str:
    """At most ``limit`` characters, cut at a word boundary (with "...")."""
    text = str(text)
    if len(text) <= limit:
        return text
    return text[:limit - 4].rsplit(" ", 1)[0].rstrip(" ,;:") + " ..."


def _runtime_error(m: dict) -> str:
    """A runtime's error without the leading "<runtime> cannot run the model: " the cell already says."""
    text = str(m.get("error"))
    head = "cannot run the model: "
    return text.split(head, 1)[1] if head in text else text


def show_candidates(d: dict) -> None:
    """`--quantize auto`: every candidate tried (size, per-runtime numbers, verdict), then why."""
    table = Table(title=f"--quantize auto: {d['budget']['text']}")
    for col in ("candidate", "size", "runtime", "agreement", "accuracy", "drop (pts)", "cosine", "verdict"):
        table.add_column(col, justify="left" if col in ("candidate", "runtime", "verdict") else "right")
    for c in d["candidates"]:
        verdict = {True: "[green]meets[/green]", False: "[red]fails[/red]", None: "[dim]not measured[/dim]"}[c["passed"]]
        label = c["label"] + (f" ({', '.join(c['float_ops'])})" if c["float_ops"] else "")
        if not c["runtimes"]:
            table.add_row(escape(label), f"{c['size']:,}" if c["size"] else "-", "-", "-", "-", "-", "-",
                          verdict + (f" {escape(_clip(c['reason'], 80))}" if c["passed"] is False else ""))
        for k, m in enumerate(c["runtimes"]):
            table.add_row(escape(label) if k == 0 else "", f"{c['size']:,}" if k == 0 else "", escape(m["runtime"]),
                          _fmt(m.get("agreement")), _fmt(m.get("accuracy")), _fmt(m.get("drop"), 3),
                          _fmt(m.get("cosine"), 5), (verdict if k == 0 else "") if m["status"] == "ran" else
                          f"[red]cannot run[/red] {escape(_clip(_runtime_error(m), 60))}")
    out.print(table)
    out.print(f"[bold]chosen:[/bold] {escape(d['why'])}")
