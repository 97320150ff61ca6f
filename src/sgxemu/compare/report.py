"""Render comparison results: rich tables for the terminal, a self-contained HTML page with an
inline SVG chart, and JSON."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from ..linux.variants import KERNELS
from .flows import FLOWS
from .measure import FlowResult

# One colour per kernel (chart bars, legend).
COLOURS = {
    "merged": "#1f77b4",
    "v1": "#d62728",
    "v2": "#ff7f0e",
    "soft-restrict": "#9467bd",
    "always-mmap": "#2ca02c",
}


def _leaves(d: dict[str, int]) -> str:
    return " · ".join(f"{k} {v}" for k, v in d.items()) or "—"


def _enforcement(r: FlowResult) -> str:
    return "; ".join(f"{k}: {v}" for k, v in r.enforcement.items()) or "—"


def _by_flow(results: Sequence[FlowResult]) -> dict[str, list[FlowResult]]:
    out: dict[str, list[FlowResult]] = {}
    for r in results:
        out.setdefault(r.flow, []).append(r)
    return out


def _kernels(results: Sequence[FlowResult]) -> list[str]:
    seen = {r.kernel for r in results}
    return [k for k in KERNELS if k in seen]


# -- terminal -------------------------------------------------------------------------------------
def print_tables(results: Sequence[FlowResult], console: Console | None = None) -> None:
    console = console or Console(width=160)
    kernels = _kernels(results)
    summary = Table(title="Does the flow work? (errno or fault where not)")
    summary.add_column("flow")
    for k in kernels:
        summary.add_column(k)
    for flow, rs in _by_flow(results).items():
        cells = {r.kernel: ("[green]works[/]" if r.ok else f"[red]{r.reason}[/]") for r in rs}
        summary.add_row(flow, *(cells.get(k, "") for k in kernels))
    console.print(summary)
    for flow, rs in _by_flow(results).items():
        f = FLOWS[flow]
        probes = sorted({label for r in rs for label in r.enforcement})
        caption = "who enforces: " + "; ".join(probes) if probes else None
        table = Table(title=f"{flow}: {f.title} (n = {rs[0].n} {f.unit})", caption=caption,
                      show_lines=True)
        for col in ("kernel", "result", "syscalls", "ioctls", "ENCLS", "ENCLU", "ETRACK/IPI",
                    "EEXIT/AEX", "who enforces"):
            table.add_column(col)
        for r in rs:
            table.add_row(
                r.kernel,
                "[green]works[/]" if r.ok else f"[red]{r.failed_step}:\n{r.reason}[/]",
                _lines(r.syscalls),
                _lines(r.ioctls),
                _lines(r.encls),
                _lines(r.enclu),
                f"{r.etracks}/{r.ipis}",
                f"{r.eexits}/{r.aexes}",
                "\n".join(r.enforcement.values()) or "—",
            )
        console.print(table)


def _lines(d: dict[str, int]) -> str:
    return "\n".join(f"{k} {v}" for k, v in d.items()) or "—"


def to_json(results: Sequence[FlowResult]) -> dict[str, Any]:
    """One JSON object: the flows and kernel designs run, and one result per (flow, design)."""
    return {
        "flows": list(dict.fromkeys(r.flow for r in results)),
        "kernels": _kernels(results),
        "results": [r.to_json() for r in results],
    }


# -- HTML -----------------------------------------------------------------------------------------
_METRICS: list[tuple[str, str]] = [
    ("ENCLS leaves", "total_encls"),
    ("enclave exits (EEXIT + AEX)", "exits"),
    ("system calls", "total_syscalls"),
]


def _metric(r: FlowResult, attr: str) -> int:
    if attr == "exits":
        return r.eexits + r.aexes
    return int(getattr(r, attr))


def svg_chart(results: Sequence[FlowResult]) -> str:
    """Grouped bars (one group per flow, one bar per kernel), one panel per metric, log scale;
    a failed run is drawn hollow with a cross."""
    by_flow = _by_flow(results)
    kernels = _kernels(results)
    flows = list(by_flow)
    bar, gap, group_gap = 12, 2, 18
    group_w = len(kernels) * (bar + gap) + group_gap
    panel_h, top, left = 170, 30, 46
    width = left + len(flows) * group_w + 20
    legend_h = 26
    height = legend_h + len(_METRICS) * (panel_h + top + 70)
    peak = max((_metric(r, a) for r in results for _, a in _METRICS), default=1)
    decades = max(1, math.ceil(math.log10(peak + 1)))

    def y_of(v: int) -> float:
        return panel_h * math.log10(v + 1) / decades

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">'
    ]
    for i, k in enumerate(kernels):
        x = left + i * 110
        out.append(f'<rect x="{x}" y="8" width="10" height="10" fill="{COLOURS.get(k, "#777")}"/>')
        out.append(f'<text x="{x + 14}" y="17">{html.escape(k)}</text>')
    for p, (label, attr) in enumerate(_METRICS):
        y0 = legend_h + p * (panel_h + top + 70) + top
        base = y0 + panel_h
        out.append(f'<text x="{left}" y="{y0 - 10}" font-weight="bold">{html.escape(label)} '
                   f'(log scale)</text>')
        for tick in [0] + [10**d for d in range(decades)]:
            gy = base - y_of(tick)
            out.append(f'<line x1="{left}" x2="{width - 10}" y1="{gy:.1f}" y2="{gy:.1f}" '
                       f'stroke="#ddd"/>')
            out.append(f'<text x="{left - 4}" y="{gy + 4:.1f}" text-anchor="end">{tick}</text>')
        for i, flow in enumerate(flows):
            gx = left + i * group_w + group_gap / 2
            cells = {r.kernel: r for r in by_flow[flow]}
            for j, k in enumerate(kernels):
                r = cells.get(k)
                if r is None:
                    continue
                v = _metric(r, attr)
                h = y_of(v)
                bx = gx + j * (bar + gap)
                colour = COLOURS.get(k, "#777")
                title = f"{flow} on {k}: {v}" + ("" if r.ok else f" (fails: {r.reason})")
                fill = colour if r.ok else "white"
                out.append(
                    f'<rect x="{bx:.1f}" y="{base - h:.1f}" width="{bar}" height="{max(h, 0.5):.1f}" '
                    f'fill="{fill}" stroke="{colour}"><title>{html.escape(title)}</title></rect>'
                )
                if not r.ok:
                    out.append(f'<text x="{bx + bar / 2:.1f}" y="{base - h - 3:.1f}" '
                               f'text-anchor="middle" fill="{colour}">✗</text>')
            out.append(
                f'<text x="{gx:.1f}" y="{base + 12}" transform="rotate(30 {gx:.1f} {base + 12})">'
                f'{html.escape(flow)}</text>'
            )
    out.append("</svg>")
    return "".join(out)


def html_report(results: Sequence[FlowResult]) -> str:
    kernels = _kernels(results)
    by_flow = _by_flow(results)
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        "<title>sgxemu: SGX2 driver designs compared</title><style>",
        "body{font-family:sans-serif;margin:2em;max-width:1400px}",
        "table{border-collapse:collapse;margin:1em 0}",
        "td,th{border:1px solid #ccc;padding:3px 6px;font-size:12px;vertical-align:top}",
        "th{background:#f0f0f0}.ok{color:#176317}.bad{color:#a11}",
        "</style></head><body>",
        "<h1>SGX2 driver designs, run side by side</h1>",
        "<p>Every figure below was counted by the emulated machine while the flow ran (system "
        "calls and ioctls of the process, ENCLS/ENCLU leaves executed by the processor, "
        "including attempts that faulted and were restarted, ETRACKs, IPIs and AEXes of the "
        "kernel model). 'Who enforces' names what refused an access the flow's permissions "
        "forbid: the page table the user asked for, the kernel's own record of page rights, or "
        "the EPCM.</p>",
        "<h2>Does the flow work?</h2><table><tr><th>flow</th>",
        *(f"<th>{html.escape(k)}</th>" for k in kernels),
        "</tr>",
    ]
    for flow, rs in by_flow.items():
        cells = {r.kernel: r for r in rs}
        parts.append(f"<tr><td>{html.escape(flow)}</td>")
        for k in kernels:
            r = cells.get(k)
            if r is None:
                parts.append("<td></td>")
            elif r.ok:
                parts.append("<td class='ok'>works</td>")
            else:
                parts.append(f"<td class='bad'>{html.escape(r.failed_step)}: "
                             f"{html.escape(r.reason)}</td>")
        parts.append("</tr>")
    parts.append("</table><h2>Cost</h2>")
    parts.append(svg_chart(results))
    for flow, rs in by_flow.items():
        f = FLOWS[flow]
        parts.append(f"<h2>{html.escape(flow)}: {html.escape(f.title)} "
                     f"(n = {rs[0].n} {html.escape(f.unit)})</h2><table><tr>")
        cols = ("kernel", "result", "syscalls", "ioctls", "ENCLS", "ENCLU", "ETRACK", "IPIs",
                "EEXIT", "AEX", "page faults", "who enforces", "first page after the flow")
        parts.extend(f"<th>{c}</th>" for c in cols)
        parts.append("</tr>")
        for r in rs:
            result = "works" if r.ok else f"{r.failed_step}: {r.reason}"
            cells_ = (r.kernel, result, _leaves(r.syscalls), _leaves(r.ioctls), _leaves(r.encls),
                      _leaves(r.enclu), str(r.etracks), str(r.ipis), str(r.eexits), str(r.aexes),
                      str(r.page_faults), _enforcement(r), r.first_page)
            parts.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells_) + "</tr>")
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts)
