"""The sequence diagram and the EPC change list in a terminal (rich).

One row per step: the lifelines as columns (│), the arrow drawn between two of them, and the
step's text on the right. Bands (the scenario's parts) are rules across the screen.
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from .diagram import ARROW, BAND, ENTER, FAULT, NOTE, RETURN, Diagram
from .snapshot import EpcSnapshot, PageView

LANE_W = 12
_STYLE = {"call": "bold", RETURN: "dim", FAULT: "bold red", ENTER: "bold green"}


def _header(d: Diagram) -> Text:
    t = Text("     ")
    for lane in d.lanes:
        t.append(lane.title[: LANE_W - 1].center(LANE_W), style="bold cyan")
    return t


def _row(d: Diagram, n: int, src: int, dst: int, kind: str, style: str) -> Text:
    width = LANE_W * len(d.lanes)
    cells = [" "] * width
    centers = [i * LANE_W + LANE_W // 2 for i in range(len(d.lanes))]
    for c in centers:
        cells[c] = "│"
    t = Text(f"{n:>4} ", style="dim")
    if kind == NOTE:
        c = centers[src]
        cells[c] = "◆"
        line = "".join(cells)
        t.append(line[:c], style="dim")
        t.append("◆", style="yellow")
        t.append(line[c + 1 :], style="dim")
        return t
    a, b = centers[src], centers[dst]
    lo, hi = min(a, b), max(a, b)
    fill = "╌" if style == RETURN else "─"
    for i in range(lo, hi + 1):
        cells[i] = fill
    cells[a] = "●" if style != RETURN else "╴"
    cells[b] = "▶" if b > a else "◀"
    line = "".join(cells)
    t.append(line[:lo], style="dim")
    t.append(line[lo : hi + 1], style=_STYLE.get(style, "bold"))
    t.append(line[hi + 1 :], style="dim")
    return t


def print_diagram(d: Diagram, console: Console) -> None:
    console.print(Text(d.title, style="bold"), soft_wrap=True)
    console.print(_header(d), soft_wrap=True)
    subtitles = Text("     ")
    for lane in d.lanes:
        subtitles.append(lane.subtitle[: LANE_W - 1].center(LANE_W), style="dim")
    console.print(subtitles, soft_wrap=True)
    n = 0
    for s in d.steps:
        if s.kind == BAND:
            console.print(Text(f"──── {s.text}", style="yellow" if s.style != "setup" else "dim"), soft_wrap=True)
            continue
        n += 1
        src, dst = d.lane_index(s.src), d.lane_index(s.dst)
        row = _row(d, n, src, dst, s.kind, s.style if s.kind == ARROW else NOTE)
        row.append("  ")
        row.append(s.label, style="red" if s.error and not s.result else "")
        if s.result:
            row.append(" → ")
            row.append(s.result, style="red" if s.error else "green")
        if s.count > 1:
            row.append(f"  ×{s.count}", style="bold")
        console.print(row, soft_wrap=True)


def _page_text(p: PageView | None) -> str:
    if p is None:
        return "—"
    if p.evicted:
        return " ".join(["evicted", p.type, p.rights if p.type not in ("SECS", "VA") else "", *p.flags]).replace("  ", " ")
    parts = [p.type] + ([p.rights] if p.type not in ("SECS", "VA") else []) + list(p.flags)
    return " ".join(parts) + f"  (EPC {p.epc_index})"


def print_epc(before: EpcSnapshot, after: EpcSnapshot, console: Console) -> None:
    """Every page in either snapshot, before and after; changed rows in bold."""
    b, a = before.by_key(), after.by_key()
    keys = list(dict.fromkeys([*b.keys(), *a.keys()]))
    table = Table(title=f"EPC/EPCM: {before.resident} → {after.resident} valid pages, "
                        f"{before.evicted} → {after.evicted} evicted", title_justify="left")
    for col in ("owner", "page", "before", "after"):
        table.add_column(col)
    for k in keys:
        pb, pa = b.get(k), a.get(k)
        p = pa or pb
        assert p is not None
        owner = f"enclave {p.owner}" if p.owner is not None else "—"
        changed = pb != pa
        style = "bold" if changed else "dim"
        table.add_row(owner, p.label, _page_text(pb), _page_text(pa), style=style)
    console.print(table)
