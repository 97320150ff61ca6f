"""Counterexample traces as numbered steps, a text sequence diagram and an SVG picture.

A trace is rendered by replaying it on a fresh world (the same processor model), so every line
shows what the machine actually did: leaf results, faults, the accesses that succeeded, what the
runtime believed, and the step where a property broke.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..arch.constants import SgxError
from .layout import page_name

Move = tuple[Any, ...]

_PERMS = {0: "---", 1: "R--", 3: "RW-", 5: "R-X", 7: "RWX"}


@dataclass
class Step:
    n: int
    source: str
    target: str
    text: str
    outcome: str
    notes: list[str] = field(default_factory=list)
    broken: list[str] = field(default_factory=list)


def _who(world: Any, move: Move) -> tuple[str, str]:
    kind = move[0]
    thread = "bug thread" if len(move) > 1 and move[1] == 1 else "main thread"
    if kind in ("call", "resume"):
        return "host", thread
    if kind == "step":
        return thread, "CPU"
    if kind == "aex":
        return "kernel", thread
    if kind == "host":
        script = world.runtime.script
        pos = getattr(world, "pos", 0)
        if pos < len(script) and script[pos][0] == "ecall":
            return "host", "main thread"
        return "host", "kernel"
    if kind == "bug":
        return "host", "bug thread"
    if kind == "co":
        return "co-process", "kernel"
    if kind == "sys":
        return "host", "kernel"
    return "kernel", "CPU"


def _describe(world: Any, move: Move) -> str:
    if move[0] == "host" and hasattr(world, "describe_host"):
        return str(world.describe_host(world.pos))
    return str(world.describe(move))


def _note(ev: tuple[Any, ...]) -> str | None:
    kind = ev[0]
    if kind == "write":
        return f"write {page_name(ev[1])} := {ev[2]:#x} (succeeded)"
    if kind == "read":
        return f"read {page_name(ev[1])} -> {ev[2]:#x}"
    if kind == "eaccept":
        flags = ev[2]
        rax = ev[3]
        name = "ok" if rax == 0 else _err(rax)
        return f"EACCEPT {page_name(ev[1])} flags={flags:#x} -> {name}"
    if kind in ("sealed", "grown", "trimmed", "tcs_ready", "relaxed", "exec"):
        return f"runtime: {page_name(ev[1])} {kind.replace('_', ' ')}"
    if kind == "ewb":
        return f"EWB {page_name(ev[1])} (incarnation {ev[2]})"
    if kind == "eldu":
        return f"ELDU {page_name(ev[1])} (incarnation {ev[2]})"
    return None


def _err(rax: int) -> str:
    try:
        return SgxError(rax).name
    except ValueError:
        return str(rax)


def steps(world: Any, trace: Sequence[Move]) -> list[Step]:
    """Replay `trace` on `world` (from its root) and describe every move."""
    world.reset()
    tap: list[tuple[Any, ...]] = []
    old_tap = getattr(world, "event_tap", None)
    world.event_tap = tap
    out: list[Step] = []
    broken_before: set[str] = set(world.violated(world.root))
    try:
        for n, move in enumerate(trace, 1):
            source, target = _who(world, move)
            text = _describe(world, move)
            tap.clear()
            state, outcome = world.step(move)
            notes = [s for s in (_note(ev) for ev in tap) if s is not None]
            now = set(world.violated(state))
            out.append(Step(n, source, target, text, outcome, notes, sorted(now - broken_before)))
            broken_before |= now
    finally:
        world.event_tap = old_tap
    return out


def numbered(steps_: Sequence[Step], prelude: Sequence[str] = ()) -> str:
    lines = []
    if prelude:
        lines.append("set-up (honest, before the explored moves): " + "; ".join(prelude))
    for s in steps_:
        lines.append(f"{s.n:3}. {s.text}  ->  {s.outcome}")
        for note in s.notes:
            lines.append(f"       {note}")
        for p in s.broken:
            lines.append(f"       *** property {p} VIOLATED here ***")
    return "\n".join(lines)


def _participants(steps_: Sequence[Step]) -> list[str]:
    order = ["host", "co-process", "kernel", "main thread", "bug thread", "CPU"]
    used = {s.source for s in steps_} | {s.target for s in steps_}
    return [p for p in order if p in used]


def sequence_text(steps_: Sequence[Step], width: int = 16) -> str:
    """A text sequence diagram: one column per participant, one arrow per step."""
    parts = _participants(steps_)
    col = {p: i * width + width // 2 for i, p in enumerate(parts)}
    total = width * len(parts)
    lines = ["".join(p.center(width) for p in parts)]

    def lifelines() -> list[str]:
        row = [" "] * total
        for c in col.values():
            row[c] = "|"
        return row

    for s in steps_:
        a, b = col[s.source], col[s.target]
        row = lifelines()
        lo, hi = min(a, b), max(a, b)
        if a == b:
            row[a] = "o"
        else:
            for x in range(lo + 1, hi):
                row[x] = "-"
            row[b] = ">" if b > a else "<"
            row[a] = "+"
        label = f"{s.n}. {s.text} -> {s.outcome}"
        lines.append("".join(row).rstrip() + "   " + label)
        for note in s.notes[:3]:
            lines.append("".join(lifelines()).rstrip() + "      " + note)
        for p in s.broken:
            lines.append("".join(lifelines()).rstrip() + f"      *** {p} VIOLATED ***")
    return "\n".join(lines)


def sequence_svg(steps_: Sequence[Step], title: str = "") -> str:
    """A self-contained SVG sequence diagram."""
    parts = _participants(steps_)
    colw, top, rowh = 190, 70, 22
    x = {p: 40 + i * colw + colw // 2 for i, p in enumerate(parts)}
    rows = sum(1 + min(len(s.notes), 3) + len(s.broken) for s in steps_)
    width = 80 + colw * len(parts) + 520
    height = top + rowh * (rows + 1)
    esc = html.escape
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="monospace" font-size="12">',
        '<defs><marker id="arrow" markerWidth="10" markerHeight="7" refX="9" refY="3.5" '
        'orient="auto"><polygon points="0 0, 10 3.5, 0 7" fill="#333"/></marker></defs>',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="20" y="22" font-size="14" font-weight="bold">{esc(title)}</text>',
    ]
    for p, px in x.items():
        out.append(f'<rect x="{px - 70}" y="32" width="140" height="24" rx="4" fill="#e8eef7" stroke="#456"/>')
        out.append(f'<text x="{px}" y="49" text-anchor="middle">{esc(p)}</text>')
        out.append(f'<line x1="{px}" y1="56" x2="{px}" y2="{height - 10}" stroke="#99a" stroke-dasharray="4 3"/>')
    label_x = 40 + colw * len(parts) + 10
    y = top
    for s in steps_:
        a, b = x[s.source], x[s.target]
        bad = bool(s.broken)
        color = "#c00" if bad else "#333"
        if a == b:
            out.append(f'<circle cx="{a}" cy="{y}" r="4" fill="{color}"/>')
        else:
            out.append(f'<line x1="{a}" y1="{y}" x2="{b}" y2="{y}" stroke="{color}" '
                       f'stroke-width="{2 if bad else 1.2}" marker-end="url(#arrow)"/>')
        out.append(f'<text x="{min(a, b) + 6}" y="{y - 3}" font-size="10" fill="{color}">{s.n}</text>')
        out.append(f'<text x="{label_x}" y="{y + 4}" fill="{color}">{esc(f"{s.n}. {s.text} -> {s.outcome}")}</text>')
        y += rowh
        for note in s.notes[:3]:
            out.append(f'<text x="{label_x + 24}" y="{y + 4}" fill="#555">{esc(note)}</text>')
            y += rowh
        for p in s.broken:
            out.append(f'<text x="{label_x + 24}" y="{y + 4}" fill="#c00" font-weight="bold">'
                       f'{esc(f"property {p} VIOLATED")}</text>')
            y += rowh
    out.append("</svg>")
    return "\n".join(out)
