"""Self-contained SVG and HTML renderings of a trace: the sequence diagram and the EPC pictures.

Nothing external is referenced (no fonts, scripts, stylesheets or images): every file opens
as is in a browser or an image viewer. Text stays text (`<text>` elements, `<title>` tooltips
with the full detail), so the pictures can be searched and read back.
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from dataclasses import dataclass

from .diagram import ARROW, BAND, ENTER, FAULT, NOTE, RETURN, Diagram
from .snapshot import EpcSnapshot, PageView

FONT = "DejaVu Sans Mono, Menlo, Consolas, monospace"
FS = 12  # font size, px
CW = 7.3  # width of one character at FS, px (a little more than DejaVu Sans Mono's 7.22)
MAX_LABEL = 76  # characters drawn on an arrow; the tooltip has the rest
LEFT = 48  # the step-number column
ROW = 30
HEADER_H = 42
MIN_GAP = 130
MAX_SPAN = 340
HALO = 'stroke="white" stroke-width="4" stroke-linejoin="round" paint-order="stroke"'

LANE_FILL = {"host": "#dbeafe", "kernel": "#dcfce7", "cpu": "#ede9fe"}
ENCLAVE_FILL = "#ffedd5"
COLOR = {"call": "#1f2937", RETURN: "#6b7280", FAULT: "#dc2626", ENTER: "#15803d"}
ERROR = "#dc2626"

PAGE_FILL = {"SECS": "#c4b5fd", "TCS": "#fdba74", "REG": "#93c5fd", "TRIM": "#fca5a5", "VA": "#d1d5db"}
FLAG_COLOR = {"PENDING": "#eab308", "MODIFIED": "#dc2626", "PR": "#7c3aed", "BLOCKED": "#374151"}
CELL_W, CELL_H, CELL_GAP = 96, 52, 6
CELLS_PER_ROW = 6


def esc(text: str) -> str:
    return html.escape(text, quote=True)


def _clip(text: str, limit: int = MAX_LABEL) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _text_w(text: str) -> float:
    return len(text) * CW


def _defs() -> str:
    marks = []
    for name, color in (*COLOR.items(), ("error", ERROR)):
        marks.append(
            f'<marker id="ah-{name}" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="8" '
            f'markerHeight="8" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" '
            f'fill="{color}"/></marker>'
        )
    return "<defs>" + "".join(marks) + "</defs>"


@dataclass
class _Layout:
    xs: list[float]
    widths: list[float]
    width: float


def _layout(d: Diagram) -> _Layout:
    n = len(d.lanes)
    widths = [max(_text_w(lane.title), _text_w(lane.subtitle)) + 24 for lane in d.lanes]
    # An arrow should be about as long as its label, up to MAX_SPAN: a longer label runs on
    # past the arrow's end (over the lifelines, with a white halo). Notes cross lifelines freely.
    need: dict[tuple[int, int], float] = {}
    for s in d.steps:
        if s.kind == ARROW:
            a, b = sorted((d.lane_index(s.src), d.lane_index(s.dst)))
            if a != b:
                need[(a, b)] = max(need.get((a, b), 0), min(_text_w(_clip(s.text)) + 28, MAX_SPAN))
    xs = [LEFT + 10 + widths[0] / 2]
    for b in range(1, n):
        x = xs[b - 1] + max(MIN_GAP, widths[b - 1] / 2 + widths[b] / 2 + 16)
        for (a, bb), w in need.items():
            if bb == b:
                x = max(x, xs[a] + w)
        xs.append(x)
    right = xs[-1] + widths[-1] / 2 + 16
    for s in d.steps:
        if s.kind in (ARROW, NOTE):
            start = min(xs[d.lane_index(s.src)], xs[d.lane_index(s.dst)])
            right = max(right, start + _text_w(_clip(s.text)) + 24)
    return _Layout(xs, widths, right)


def _wrap(text: str, width_chars: int) -> list[str]:
    words, lines, line = text.split(" "), [], ""
    for w in words:
        if line and len(line) + 1 + len(w) > width_chars:
            lines.append(line)
            line = w
        else:
            line = f"{line} {w}" if line else w
    if line:
        lines.append(line)
    return lines or [""]


def _participants(d: Diagram, lay: _Layout, y: float) -> list[str]:
    out = []
    for lane, x, w in zip(d.lanes, lay.xs, lay.widths, strict=True):
        fill = LANE_FILL.get(lane.id, ENCLAVE_FILL)
        out.append(
            f'<g class="participant" data-lane="{esc(lane.id)}">'
            f'<rect x="{x - w / 2:.1f}" y="{y:.1f}" width="{w:.1f}" height="{HEADER_H}" rx="6" '
            f'fill="{fill}" stroke="#374151"/>'
            f'<text x="{x:.1f}" y="{y + 17:.1f}" text-anchor="middle" font-weight="bold">{esc(lane.title)}</text>'
            f'<text x="{x:.1f}" y="{y + 33:.1f}" text-anchor="middle" fill="#4b5563" font-size="11">'
            f"{esc(lane.subtitle)}</text></g>"
        )
    return out


def sequence_svg(d: Diagram, *, standalone: bool = True) -> tuple[str, float, float]:
    """The sequence diagram as an <svg> element; returns (markup, width, height)."""
    lay = _layout(d)
    body: list[str] = []
    y = 10.0
    if d.title:
        body.append(f'<text x="{LEFT}" y="{y + 14:.1f}" font-size="15" font-weight="bold">{esc(d.title)}</text>')
        y += 26
    top = y
    body.extend(_participants(d, lay, y))
    y += HEADER_H + 18
    rows: list[str] = []
    active: dict[int, float] = {}
    bars: list[tuple[int, float, float]] = []
    band_chars = int((lay.width - LEFT - 20) / CW)
    n = 0
    for s in d.steps:
        if s.kind == BAND:
            lines = _wrap(s.text, band_chars)
            h = 10 + 16 * len(lines)
            fill = "#f3f4f6" if s.style == "setup" else "#fef9c3"
            rows.append(
                f'<g class="step band"><title>{esc(s.detail or s.text)}</title>'
                f'<rect x="{LEFT - 6}" y="{y - 14:.1f}" width="{lay.width - LEFT:.1f}" height="{h}" '
                f'fill="{fill}" stroke="#d1d5db"/>'
                + "".join(
                    f'<text x="{LEFT + 4}" y="{y + 16 * i:.1f}" font-style="italic">{esc(line)}</text>'
                    for i, line in enumerate(lines)
                )
                + "</g>"
            )
            y += h + 12
            continue
        n += 1
        rows.append(f'<text x="{LEFT - 8}" y="{y + 4:.1f}" text-anchor="end" fill="#9ca3af" font-size="10">{n}</text>')
        if s.kind == NOTE:
            i = d.lane_index(s.src)
            x = lay.xs[i] + 8
            text = _clip(s.text)
            color = ERROR if s.error else "#92400e"
            rows.append(
                f'<g class="step note"><title>{esc(s.detail or s.text)}</title>'
                f'<rect x="{x:.1f}" y="{y - 11:.1f}" width="{_text_w(text) + 14:.1f}" height="20" rx="3" '
                f'fill="#fffbeb" stroke="#f59e0b"/>'
                f'<text x="{x + 7:.1f}" y="{y + 3:.1f}" fill="{color}">{esc(text)}</text></g>'
            )
            y += ROW
            continue
        a, b = d.lane_index(s.src), d.lane_index(s.dst)
        xa, xb = lay.xs[a], lay.xs[b]
        style = "fault" if s.style == FAULT else s.style
        color = COLOR.get(style, COLOR["call"])
        marker = "error" if s.error and style != RETURN else style
        if s.error and style == RETURN:
            color = ERROR
            marker = "error"
        dash = ' stroke-dasharray="6 4"' if style == RETURN else ""
        y_line = y + 6
        label = _clip(s.label)
        result = s.result + (f"  ×{s.count}" if s.count > 1 else "")
        label_x = min(xa, xb) + 8
        tx = esc(label)
        if result:
            rcolor = ERROR if s.error else "#047857"
            tx += f'<tspan fill="{rcolor}"> → {esc(_clip(result, max(12, MAX_LABEL - len(label))))}</tspan>'
        rows.append(
            f'<g class="step arrow {esc(style)}" data-src="{esc(s.src)}" data-dst="{esc(s.dst)}">'
            f"<title>{esc(s.detail or s.text)}</title>"
            f'<line x1="{xa:.1f}" y1="{y_line:.1f}" x2="{xb:.1f}" y2="{y_line:.1f}" stroke="{color}" '
            f'stroke-width="1.5"{dash} marker-end="url(#ah-{marker})"/>'
            f'<text x="{label_x:.1f}" y="{y_line - 5:.1f}" fill="{color if style != RETURN else "#374151"}" '
            f'class="label" {HALO}>{tx}</text></g>'
        )
        # Activation bars on enclave threads: from entry to EEXIT or AEX.
        if s.style == ENTER:
            active.setdefault(b, y_line)
        elif d.lanes[a].id.startswith("encl") and (style == FAULT or "EEXIT" in s.label) and a in active:
            bars.append((a, active.pop(a), y_line))
        y += ROW
    end = y + 4
    for a, y0 in active.items():
        bars.append((a, y0, end - 8))
    lifelines = [
        f'<line x1="{x:.1f}" y1="{top + HEADER_H:.1f}" x2="{x:.1f}" y2="{end:.1f}" stroke="#9ca3af" '
        f'stroke-dasharray="4 4"/>'
        for x in lay.xs
    ]
    bar_rects = [
        f'<rect x="{lay.xs[a] - 5:.1f}" y="{y0:.1f}" width="10" height="{max(y1 - y0, 4):.1f}" '
        f'fill="{ENCLAVE_FILL}" stroke="#c2410c"/>'
        for a, y0, y1 in bars
    ]
    footer = _participants(d, lay, end)
    height = end + HEADER_H + 12
    width = lay.width + 10
    inner = "".join([*lifelines, *bar_rects, *body, *rows, *footer])
    ns = ' xmlns="http://www.w3.org/2000/svg"' if standalone else ""
    svg = (
        f'<svg{ns} class="sequence" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="{FONT}" font-size="{FS}">'
        f'{_defs()}<rect width="100%" height="100%" fill="white"/>{inner}</svg>'
    )
    return svg, width, height


# -- EPC pictures ----------------------------------------------------------------------------------
def _group(pages: Iterable[PageView]) -> list[tuple[str, list[PageView]]]:
    order = {"SECS": 0, "TCS": 1, "REG": 1, "TRIM": 1, "VA": 2}
    groups: dict[int | None, list[PageView]] = {}
    for p in pages:
        groups.setdefault(p.owner, []).append(p)
    out = []
    for owner in sorted(groups, key=lambda o: (o is None, o or 0)):
        ps = sorted(groups[owner], key=lambda p: (order.get(p.type, 3), p.offset or 0, p.epc_index or 0))
        name = f"enclave {owner}" if owner is not None else "no owner (VA pages: the kernel's version arrays)"
        out.append((name, ps))
    return out


def _cell(p: PageView, x: float, y: float, changed: bool) -> str:
    fill = "#ffffff" if p.evicted else PAGE_FILL.get(p.type, "#e5e7eb")
    stroke = "#111827" if changed else "#6b7280"
    width = 3 if changed else 1
    dash = ' stroke-dasharray="5 3"' if p.evicted else ""
    second = {"SECS": f"enclave {p.owner}", "VA": "version array"}.get(p.type, f"{p.type} {p.rights}")
    lines = [p.label, second]
    flags = " ".join(f[:3] if f in ("PENDING", "MODIFIED", "BLOCKED") else f for f in p.flags)
    if p.evicted:
        lines.append("evicted" + (f" {flags}" if flags else ""))
    else:
        lines.append(flags or f"EPC {p.epc_index}")
    stripes = "".join(
        f'<rect x="{x + 1 + 10 * i:.1f}" y="{y + 1:.1f}" width="10" height="6" fill="{FLAG_COLOR[f]}"/>'
        for i, f in enumerate(p.flags)
        if f in FLAG_COLOR
    )
    texts = "".join(
        f'<text x="{x + CELL_W / 2:.1f}" y="{y + 18 + 14 * i:.1f}" text-anchor="middle" font-size="11">'
        f"{esc(t)}</text>"
        for i, t in enumerate(lines)
        if t
    )
    return (
        f'<g class="page"><title>{esc(p.describe())}</title>'
        f'<rect x="{x:.1f}" y="{y:.1f}" width="{CELL_W}" height="{CELL_H}" rx="4" fill="{fill}" '
        f'stroke="{stroke}" stroke-width="{width}"{dash}/>{stripes}{texts}</g>'
    )


def epc_svg(
    snap: EpcSnapshot, other: EpcSnapshot | None = None, *, title: str = "", standalone: bool = True
) -> tuple[str, float, float]:
    """The EPC/EPCM picture of one snapshot; pages that differ from `other` get a thick border."""
    old = other.by_key() if other is not None else {}
    out: list[str] = []
    y = 10.0
    heading = title or f"EPC {snap.label}"
    out.append(f'<text x="10" y="{y + 14:.1f}" font-size="14" font-weight="bold">{esc(heading)}</text>')
    y += 22
    summary = f"{snap.resident} of {snap.npages} EPC pages valid, {snap.evicted} evicted"
    out.append(f'<text x="10" y="{y + 12:.1f}" fill="#4b5563">{esc(summary)}</text>')
    y += 24
    width = 10 + CELLS_PER_ROW * (CELL_W + CELL_GAP) + 10
    if not snap.pages:
        out.append(f'<text x="10" y="{y + 14:.1f}" fill="#6b7280">(no valid EPC page)</text>')
        y += 30
    for name, pages in _group(snap.pages):
        base = next((e.base for e in snap.enclaves if f"enclave {e.eid}" == name), None)
        label = f"{name}" + (f" (ELRANGE base {base:#x})" if base is not None else "")
        out.append(f'<text x="10" y="{y + 12:.1f}" font-weight="bold" fill="#374151">{esc(label)}</text>')
        y += 20
        for i, p in enumerate(pages):
            col, row = i % CELLS_PER_ROW, i // CELLS_PER_ROW
            if col == 0 and row:
                y += CELL_H + CELL_GAP
            changed = other is not None and old.get(p.key) != p
            out.append(_cell(p, 10 + col * (CELL_W + CELL_GAP), y, changed))
        y += CELL_H + 16
    if other is not None:
        now = snap.by_key()
        gone = [p for k, p in old.items() if k not in now]
        if gone:
            text = "no longer in the EPC or its backing store: " + ", ".join(
                f"{p.label} {p.type}" for p in gone[:12]
            ) + (" …" if len(gone) > 12 else "")
            for line in _wrap(text, int((width - 20) / CW)):
                out.append(f'<text x="10" y="{y + 4:.1f}" fill="#6b7280">{esc(line)}</text>')
                y += 16
    height = y + 6
    ns = ' xmlns="http://www.w3.org/2000/svg"' if standalone else ""
    svg = (
        f'<svg{ns} class="epc" width="{width:.0f}" height="{height:.0f}" viewBox="0 0 {width:.0f} '
        f'{height:.0f}" font-family="{FONT}" font-size="{FS}"><rect width="100%" height="100%" '
        f'fill="white"/>{"".join(out)}</svg>'
    )
    return svg, width, height


def legend_svg(*, standalone: bool = True) -> tuple[str, float, float]:
    items = [(PAGE_FILL[t], t, False) for t in PAGE_FILL] + [("#ffffff", "evicted", True)]
    out = []
    x = 10.0
    for fill, name, dashed in items:
        dash = ' stroke-dasharray="5 3"' if dashed else ""
        out.append(f'<rect x="{x:.1f}" y="8" width="16" height="14" fill="{fill}" stroke="#6b7280"{dash}/>')
        out.append(f'<text x="{x + 22:.1f}" y="19">{esc(name)}</text>')
        x += 30 + _text_w(name)
    for flag, color in FLAG_COLOR.items():
        out.append(f'<rect x="{x:.1f}" y="12" width="12" height="6" fill="{color}"/>')
        out.append(f'<text x="{x + 18:.1f}" y="19">{esc(flag)}</text>')
        x += 26 + _text_w(flag)
    out.append(f'<rect x="{x:.1f}" y="8" width="16" height="14" fill="white" stroke="#111827" stroke-width="3"/>')
    out.append(f'<text x="{x + 22:.1f}" y="19">changed</text>')
    x += 30 + _text_w("changed")
    ns = ' xmlns="http://www.w3.org/2000/svg"' if standalone else ""
    svg = (
        f'<svg{ns} class="legend" width="{x:.0f}" height="30" viewBox="0 0 {x:.0f} 30" '
        f'font-family="{FONT}" font-size="{FS}">{"".join(out)}</svg>'
    )
    return svg, x, 30


def _nest(svg: str, x: float, y: float) -> str:
    """Place a child <svg> at (x, y) inside another."""
    return svg.replace("<svg ", f'<svg x="{x:.0f}" y="{y:.0f}" ', 1)


def render_svg(d: Diagram, before: EpcSnapshot | None, after: EpcSnapshot | None) -> str:
    """One SVG file: the sequence diagram, then the EPC before and after, side by side."""
    seq, sw, sh = sequence_svg(d, standalone=False)
    parts = [_nest(seq, 0, 0)]
    width, y = sw, sh + 10
    if before is not None and after is not None:
        b, bw, bh = epc_svg(before, None, title="EPC/EPCM before", standalone=False)
        a, aw, ah = epc_svg(after, before, title="EPC/EPCM after (changed pages: thick border)", standalone=False)
        parts += [_nest(b, 0, y), _nest(a, bw + 20, y)]
        y += max(bh, ah) + 6
        lg, lw, lh = legend_svg(standalone=False)
        parts.append(_nest(lg, 0, y))
        y += lh + 6
        width = max(width, bw + 20 + aw, lw)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{y:.0f}" '
        f'viewBox="0 0 {width:.0f} {y:.0f}"><rect width="100%" height="100%" fill="white"/>'
        f'{"".join(parts)}</svg>\n'
    )


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px; color: #111827; }
h1 { font-size: 20px; margin: 0 0 4px 0; } h2 { font-size: 16px; margin: 24px 0 8px 0; }
.meta { color: #4b5563; margin: 0 0 16px 0; }
.scroll { overflow-x: auto; border: 1px solid #e5e7eb; padding: 4px; }
.scroll > svg { max-width: 100%; height: auto; }
.epc-pair { display: flex; flex-wrap: wrap; gap: 20px; }
table { border-collapse: collapse; font-family: monospace; font-size: 12px; }
td, th { border-bottom: 1px solid #e5e7eb; padding: 2px 8px; text-align: left; vertical-align: top; }
td.err { color: #dc2626; } .error { color: #dc2626; font-weight: bold; }
"""


def render_html(
    d: Diagram, before: EpcSnapshot | None, after: EpcSnapshot | None, *, error: str | None = None,
    summary: str = "",
) -> str:
    """A self-contained HTML page: the diagram, the EPC pictures and the steps as a table."""
    seq, _, _ = sequence_svg(d)
    lanes = {lane.id: lane.title for lane in d.lanes}
    rows = []
    n = 0
    for s in d.steps:
        if s.kind == BAND:
            rows.append(f'<tr><td></td><td colspan="3"><em>{esc(s.text)}</em></td></tr>')
            continue
        n += 1
        cls = ' class="err"' if s.error else ""
        arrow = lanes.get(s.src, s.src) + ("" if s.kind == NOTE else f" → {lanes.get(s.dst, s.dst)}")
        rows.append(f"<tr><td>{n}</td><td>{esc(arrow)}</td><td{cls}>{esc(s.text)}</td></tr>")
    epc = ""
    if before is not None and after is not None:
        b, _, _ = epc_svg(before, None, title="EPC/EPCM before")
        a, _, _ = epc_svg(after, before, title="EPC/EPCM after (changed pages: thick border)")
        lg, _, _ = legend_svg()
        epc = (
            f'<h2 id="epc">The EPC and its EPCM, before and after</h2>'
            f'<div class="epc-pair"><div>{b}</div><div>{a}</div></div><div>{lg}</div>'
        )
    err = f'<p class="error">The scenario stopped: {esc(error)}</p>' if error else ""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{esc(d.title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{esc(d.title)}</h1><p class=\"meta\">{esc(summary)}</p>{err}"
        f'<h2 id="sequence">Sequence</h2><div class="scroll">{seq}</div>{epc}'
        f'<h2 id="steps">Steps</h2><table><tr><th>#</th><th>from → to</th><th>what</th></tr>'
        f"{''.join(rows)}</table></body></html>\n"
    )
