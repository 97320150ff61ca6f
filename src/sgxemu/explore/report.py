"""Turn a verdict matrix (JSON from `sgxemu explore --json` or `run_matrix`) into the markdown
of docs/threats.md: the matrix tables, the attack traces (replayed on a fresh machine to render
them), and the targeted EACCEPT questions, which this module runs itself.

    python -m sgxemu.explore.report MATRIX.json --update docs/threats.md
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from .adversaries import ADVERSARIES, make_world
from .layout import P, R, X
from .render import numbered, sequence_text, steps
from .runtimes import RUNTIMES, runtime
from .search import bfs, replay
from .world import KERNEL, THREAD, LeafWorld, describe_move

# Which attack traces the document shows, in order: (runtime, property, adversary, kernel).
FEATURED = [
    ("jit", "wx", "colluding", "soft-restrict"),
    ("jit", "wx", "host", "soft-restrict"),
    ("jit-noemodpr", "wx", "host", "merged"),
    ("jit-unchecked", "wx", "colluding", "merged"),
    ("jit-noaccept", "wx", "colluding", "merged"),
    ("heap-anyaddr", "integrity", "kernel", "merged"),
    ("trim-unchecked", "trim_gone", "colluding", "merged"),
    ("tcs-unchecked", "tcs_sealed", "colluding", "merged"),
    ("relax-anyaddr", "wx", "colluding", "merged"),
]


def _cell_text(c: dict[str, Any]) -> str:
    if c["violated"]:
        return f"**VIOLATED** ({len(c['trace'])})"
    if c["complete"]:
        return f"holds (all {c['states']})"
    return f"holds ≤ {c['depth']}"


def matrix_markdown(data: dict[str, Any]) -> str:
    cells = data["cells"]
    ks: list[str] = []
    for c in cells:
        if c["kernel"] not in ks:
            ks.append(c["kernel"])
    out = []
    for adv, a in ADVERSARIES.items():
        mine = [c for c in cells if c["adversary"] == adv]
        if not mine:
            continue
        out.append(f"### Adversary `{adv}`: {a.title} ({a.level} level)\n")
        out.append("| runtime | property | " + " | ".join(ks) + " |")
        out.append("|---|---|" + "---|" * len(ks))
        rows: dict[tuple[str, str], dict[str, str]] = {}
        for c in mine:
            rows.setdefault((c["runtime"], c["prop"]), {})[c["kernel"]] = _cell_text(c)
        for (r, p), byk in rows.items():
            out.append(f"| {r} | {p} | " + " | ".join(byk.get(k, "") for k in ks) + " |")
        out.append("")
    n = len(cells)
    explored = [c for c in cells if not c["shared_with"]]
    states = sum(c["states"] for c in {(c["runtime"], c["adversary"], c["kernel"]): c for c in explored}.values())
    out.append(f"{n} cells; {states:,} states stored across the explorations (at leaf level a state "
               f"counts once per pending PTE change, see the reduction below); "
               f"{data.get('seconds', 0):.0f} s on this 2-core machine (two cells at a time).")
    return "\n".join(out)


def _render_cell(c: dict[str, Any]) -> str:
    world = make_world(c["runtime"], c["adversary"], c["kernel"])
    trace = [tuple(m) for m in c["trace"]]
    st = steps(world, trace)
    prelude = [describe_move(m) for m in world.runtime.prelude] if isinstance(world, LeafWorld) else []
    head = (f"#### {c['prop']} under `{c['adversary']}` on `{c['kernel']}`, runtime `{c['protocol']}` "
            f"({len(trace)} moves, found by {c['found_by'] or 'bfs'})\n")
    close = getattr(world, "close", None)
    if close is not None:
        close()
    return head + "```\n" + numbered(st, prelude) + "\n```\n\n```\n" + sequence_text(st) + "\n```\n"


def traces_markdown(data: dict[str, Any]) -> str:
    by = {(c["runtime"], c["prop"], c["adversary"], c["kernel"]): c for c in data["cells"]}
    out = []
    for key in FEATURED:
        c = by.get(key)
        if c is None or not c["violated"] or c["shared_with"]:
            continue
        out.append(_render_cell(c))
    return "\n".join(out)


def questions() -> list[tuple[str, str, str, str]]:
    """What EACCEPT's two error codes catch, each with a careful and a careless runtime in a
    narrowed world. Returns (question, careful verdict, careless verdict, careless trace)."""
    out = []
    # SGX_PAGE_ATTRIBUTES_MISMATCH: the kernel never restricts (or restricts wrongly).
    rows = []
    for name in ("jit", "jit-unchecked"):
        rt = dataclasses.replace(runtime(name), kernel_moves=frozenset({"emodpr", "etrack", "aex"}),
                                 emodpr_perms=(R, R | X, 7))
        w = LeafWorld(rt, [KERNEL, THREAD])
        rows.append((w, bfs(w, 7)))
    out.append(_question("SGX_PAGE_ATTRIBUTES_MISMATCH: the kernel's EMODPR is missing or names other "
                         "rights (kernel moves: EMODPR to R, R-X or RWX, ETRACK, AEX)", rows))
    # SGX_NOT_TRACKED: EMODPR done while the bug thread holds a writable translation, no ETRACK yet.
    prelude = (("call", 0, 1, 0), ("step", 0), ("call", 1, 9, P), ("step", 1), ("emodpr", P, R | X))
    rows = []
    for name in ("jit", "jit-unchecked"):
        rt = dataclasses.replace(runtime(name), prelude=prelude, kernel_moves=frozenset({"etrack", "aex"}))
        w = LeafWorld(rt, [KERNEL, THREAD])
        rows.append((w, bfs(w, 8)))
    out.append(_question("SGX_NOT_TRACKED: EMODPR(P, R-X) done while the bug thread is inside with a "
                         "writable TLB entry for P; the kernel may ETRACK (or not) and interrupt threads",
                         rows))
    return out


def _question(title: str, rows: list[tuple[LeafWorld, Any]]) -> tuple[str, str, str, str]:
    (wc, careful), (wl, careless) = rows
    text = ""
    if "wx" in careless.traces:
        st = steps(wl, careless.traces["wx"])
        prelude = [describe_move(m) for m in wl.runtime.prelude]
        text = numbered(st, prelude)
        rep = replay(wl, careless.traces["wx"])
        assert rep.violations
    return title, careful.verdict("wx"), careless.verdict("wx") if "wx" not in careless.traces else \
        f"violated ({len(careless.traces['wx'])} moves)", text


def questions_markdown() -> str:
    out = []
    for title, careful, careless, text in questions():
        out.append(f"**{title}.** Careful runtime (`jit`, acts only on EACCEPT = 0): {careful}. "
                   f"Careless runtime (`jit-unchecked`): {careless}.\n")
        if text:
            out.append("```\n" + text + "\n```\n")
    return "\n".join(out)


def _replace(text: str, name: str, body: str) -> str:
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    a, b = text.index(begin) + len(begin), text.index(end)
    return text[:a] + "\n" + body.rstrip() + "\n" + text[b:]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    ap.add_argument("matrix", type=Path)
    ap.add_argument("--update", type=Path, help="rewrite the generated sections of this file")
    args = ap.parse_args(argv)
    data = json.loads(args.matrix.read_text())
    sections = {
        "matrix": matrix_markdown(data),
        "traces": traces_markdown(data),
        "questions": questions_markdown(),
    }
    if args.update is None:
        for body in sections.values():
            print(body)
        return 0
    text = args.update.read_text()
    for name, body in sections.items():
        text = _replace(text, name, body)
    args.update.write_text(text)
    return 0


_ = RUNTIMES

if __name__ == "__main__":
    sys.exit(main())
