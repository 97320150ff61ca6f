"""`sgxemu explore`: search executions for attacks; print the verdict matrix and attack traces."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ..explore.adversaries import ADVERSARIES, kernels
from ..explore.properties import PROPERTIES
from ..explore.runtimes import RUNTIMES
from .errors import emit_json
from .progress import live_progress

if TYPE_CHECKING:
    from rich.progress import Progress

    from ..explore.matrix import Cell, CellsDone, Matrix


@click.command("explore")
@click.option("--property", "props", multiple=True, type=click.Choice(list(PROPERTIES)),
              help="Check only this property (repeatable). Default: every property of each runtime.")
@click.option("--adversary", "advs", multiple=True, type=click.Choice(list(ADVERSARIES)),
              help="Only this adversary (repeatable). Default: all.")
@click.option("--kernel", "kernel_names", multiple=True, type=click.Choice(list(kernels())),
              help="Only this kernel design (repeatable). Default: all.")
@click.option("--runtime", "runtimes", multiple=True, type=click.Choice(list(RUNTIMES)),
              help="Only this runtime version (repeatable). Default: all.")
@click.option("--bound", type=click.IntRange(0, 1000), default=None,
              help="Moves explored exhaustively against a malicious kernel (default 7).")
@click.option("--machine-bound", type=click.IntRange(0, 1000), default=None,
              help="Moves explored with an honest kernel (default 60: the whole space here).")
@click.option("--random", "walks", type=click.IntRange(0), default=0,
              help="After the exhaustive search, this many random walks (twice the bound deep).")
@click.option("--workers", type=click.IntRange(1, 256), default=1,
              help="Worker processes (several cells: cells in parallel; one cell: a parallel search).")
@click.option("--ray", "ray_address", default=None, metavar="ADDRESS",
              help="Explore one cell on a Ray cluster ('local' starts one on this machine).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--svg", "svg_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the first attack trace found as an SVG sequence diagram.")
def command(props: tuple[str, ...], advs: tuple[str, ...], kernel_names: tuple[str, ...],
            runtimes: tuple[str, ...], bound: int | None, machine_bound: int | None, walks: int, workers: int,
            ray_address: str | None, as_json: bool, svg_file: Path | None) -> None:
    """Explore every interleaving of an SGX2 runtime's steps with an adversary's moves, up to a
    bound, on the processor model; report per property, adversary and kernel design whether it
    holds or is violated, with a shortest attack trace.

    On a terminal (not with --json) a progress bar counts the matrix's cells as their
    explorations finish, with the states stored so far by the one under way (all workers' in a
    one-cell parallel search; not shown when several cells run in parallel)."""
    from ..explore.matrix import run_matrix

    with live_progress(disable=as_json) as progress:
        show = _Display(progress, workers)
        if ray_address is not None or (workers > 1 and _single(runtimes, advs, kernel_names)):
            matrix = _one_cell_parallel(runtimes, advs, kernel_names, props, bound, workers,
                                        ray_address, on_states=show.states, progress=show.cells_done)
        else:
            matrix = run_matrix(runtimes or None, advs or None, kernel_names or None, props or None,
                                bound=bound, walks=walks, jobs=workers, machine_bound=machine_bound,
                                progress=show.cells_done, on_states=show.states)
    first = next((c for c in matrix.cells if c.violated and not c.shared_with), None)
    if svg_file is not None and first is not None:
        svg_file.write_text(_render(first)[2], encoding="utf-8")
    if as_json:
        out = matrix.to_json()
        if first is not None:
            steps_text, seq, _ = _render(first)
            out["first_trace"] = {"cell": [first.runtime, first.prop, first.adversary, first.kernel],
                                  "steps": steps_text, "sequence": seq}
        emit_json(out)
        return
    _print(matrix)
    if first is not None:
        steps_text, seq, _ = _render(first)
        click.echo(f"\nAttack trace: {first.prop} under {first.adversary} on {first.kernel}, "
                   f"runtime {first.protocol} ({len(first.trace)} moves, found by {first.found_by})")
        click.echo(steps_text)
        click.echo("")
        click.echo(seq)
        if svg_file is not None:
            click.echo(f"\nSVG written to {svg_file}")
    elif svg_file is not None:
        click.echo("\nNo violation found: no SVG written.")


class _Display:
    """The progress bar: the matrix's cells decided so far, and the states stored by the
    exploration under way (or, with several in parallel, which one finished last)."""

    def __init__(self, progress: Progress, workers: int) -> None:
        self.progress = progress
        self.workers = workers
        self.task = progress.add_task("planning", total=None)
        self.current = ""

    def states(self, label: str, n: int) -> None:
        # Many calls a second: drawn at the display's pace, except a new exploration's first.
        self.progress.update(self.task, description=f"{label}: {n} states", refresh=label != self.current)
        self.current = label

    def cells_done(self, report: CellsDone) -> None:
        text = None  # serially, the next exploration's states line follows
        if not report.cells:  # the plan: the first exploration starts
            text = f"exploring ({self.workers} processes)" if self.workers > 1 else "exploring"
        elif self.workers > 1:
            c = report.cells[0]
            text = f"done {c.runtime} / {c.adversary} / {c.kernel}"
        self.progress.update(self.task, description=text, completed=report.done, total=report.total,
                             refresh=True)  # fmt: skip


def _single(runtimes: tuple[str, ...], advs: tuple[str, ...], ks: tuple[str, ...]) -> bool:
    return len(runtimes) == 1 and len(advs) == 1 and len(ks) <= 1


def _one_cell_parallel(runtimes: tuple[str, ...], advs: tuple[str, ...], ks: tuple[str, ...],
                       props: tuple[str, ...], bound: int | None, workers: int,
                       ray_address: str | None, *, on_states: Callable[[str, int], None],
                       progress: Callable[[CellsDone], None]) -> Matrix:
    from ..explore.matrix import LEAF_BOUND, MACHINE_BOUND, Cell, CellsDone, Matrix
    from ..explore.parallel import WorldSpec, parallel_bfs

    if not _single(runtimes, advs, ks):
        raise click.UsageError("--ray and parallel search need one --runtime, one --adversary and one --kernel")
    adv = ADVERSARIES[advs[0]]
    if adv.level != "leaf":
        raise click.UsageError("parallel search is for the leaf-level (malicious kernel) worlds")
    kernel = ks[0] if ks else "merged"
    spec = WorldSpec(runtimes[0], advs[0], kernel, props or None)
    b = bound if bound is not None else (LEAF_BOUND if adv.level == "leaf" else MACHINE_BOUND)
    backend = "ray" if ray_address is not None else "process"
    address = None if ray_address in (None, "local") else ray_address
    label = f"{spec.runtime} / {spec.adversary} / {kernel}"
    total = len([p for p in RUNTIMES[spec.runtime].properties if not props or p in props])
    progress(CellsDone((), 0, total))
    res = parallel_bfs(spec, b, workers=workers, backend=backend, ray_address=address,
                       on_states=lambda n: on_states(label, n))
    from ..explore.adversaries import make_world

    w = make_world(spec.runtime, spec.adversary, spec.kernel, spec.properties)
    cells = [
        Cell(spec.runtime, w.runtime.name, p, spec.adversary, kernel,
             "violated" if p in res.traces else res.verdict(p), p in res.traces, res.traces.get(p, ()),
             "bfs" if p in res.traces else "", res.states, res.generated, res.depth, res.complete,
             res.seconds, adv.level)
        for p in res.properties
    ]
    progress(CellsDone(tuple(cells), len(cells), len(cells)))
    return Matrix(cells, res.seconds)


def _render(c: Cell) -> tuple[str, str, str]:
    from ..explore.adversaries import make_world
    from ..explore.render import numbered, sequence_svg, sequence_text, steps
    from ..explore.world import LeafWorld, describe_move

    w = make_world(c.runtime, c.adversary, c.kernel)
    st = steps(w, c.trace)
    prelude = [describe_move(m) for m in w.runtime.prelude] if isinstance(w, LeafWorld) else []
    title = f"{c.prop} violated: {c.adversary} on {c.kernel}, runtime {c.protocol}"
    return numbered(st, prelude), sequence_text(st), sequence_svg(st, title)


def _print(matrix: Matrix) -> None:
    from rich.console import Console
    from rich.table import Table

    cells = matrix.cells
    console = Console()
    ks = [k for k in kernels() if any(c.kernel == k for c in cells)]
    for adv in ADVERSARIES:
        mine = [c for c in cells if c.adversary == adv]
        if not mine:
            continue
        table = Table(title=f"adversary: {ADVERSARIES[adv].title}")
        table.add_column("runtime")
        table.add_column("property")
        for k in ks:
            table.add_column(k)
        rows: dict[tuple[str, str], dict[str, str]] = {}
        for c in mine:
            text = c.short()
            rows.setdefault((c.runtime, c.prop), {})[c.kernel] = f"[red]{text}[/red]" if c.violated else text
        for (r, p), byk in rows.items():
            table.add_row(r, p, *(byk.get(k, "") for k in ks))
        console.print(table)
    console.print(f"({len(cells)} cells in {matrix.seconds:.1f} s)")
