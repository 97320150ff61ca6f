"""Live progress of the long commands: the engines' callbacks (compare: per (flow, design) cell;
explore: per matrix cell and states stored, serial and parallel) and the display rule (a
terminal, not --json) with what `sgxemu compare` and `sgxemu explore` draw."""

from __future__ import annotations

import io
from collections.abc import Callable

import pytest
from click.testing import CliRunner, Result
from rich.console import Console
from rich.progress import Progress

import sgxemu.cli.compare
import sgxemu.cli.explore
from sgxemu.cli.main import _register_commands, cli
from sgxemu.cli.progress import live_progress
from sgxemu.compare.measure import FlowResult, run_comparison
from sgxemu.explore import bfs, make_world, run_matrix
from sgxemu.explore.matrix import CellsDone, Matrix, plan
from sgxemu.explore.parallel import WorldSpec, parallel_bfs

SMALL = (["jit-noaccept"], ["colluding", "thread"], ["merged", "v2"])  # 3 explorations, 4 cells


def run(*args: str) -> Result:
    _register_commands()
    return CliRunner().invoke(cli, list(args))


def grows_to(values: list[int], last: int) -> None:
    assert values[0] == 1 and values[-1] == last, values
    assert all(a <= b for a, b in zip(values, values[1:], strict=False)), values


# -- compare -------------------------------------------------------------------------------------------
def test_compare_reports_every_cell_in_order() -> None:
    started: list[tuple[str, str]] = []
    done: list[tuple[str, str, int, int]] = []

    def on_done(r: FlowResult, n: int, total: int) -> None:
        done.append((r.flow, r.kernel, n, total))

    flows, kernels = ["jit-wx", "new-tcs"], ["merged", "v1"]
    results = run_comparison(flows, kernels, on_start=lambda f, k: started.append((f, k)), on_done=on_done)
    cells = [(f, k) for f in flows for k in kernels]
    assert started == cells
    assert done == [(f, k, i, 4) for i, (f, k) in enumerate(cells, 1)]  # the last: 4 of 4
    assert [(r.flow, r.kernel) for r in results] == cells


# -- explore -------------------------------------------------------------------------------------------
def check_reports(reports: list[CellsDone], matrix: Matrix, explorations: int) -> None:
    """The plan first, then one report per exploration; together they decide every cell once."""
    total = len(matrix.cells)
    assert reports[0] == CellsDone((), 0, total)
    assert len(reports) == 1 + explorations
    assert [r.done for r in reports[1:]] == [
        sum(len(r.cells) for r in reports[1 : i + 1]) for i in range(1, len(reports))
    ]
    assert reports[-1].done == reports[-1].total == total
    key = lambda c: (c.runtime, c.prop, c.adversary, c.kernel, c.shared_with)  # noqa: E731
    assert sorted(key(c) for r in reports for c in r.cells) == sorted(key(c) for c in matrix.cells)


def test_explore_serial_reports_cells_and_states() -> None:
    reports: list[CellsDone] = []
    states: dict[str, list[int]] = {}
    m = run_matrix(*SMALL, bound=4, progress=reports.append,
                   on_states=lambda label, n: states.setdefault(label, []).append(n))  # fmt: skip
    jobs, _ = plan(*SMALL)
    check_reports(reports, m, len(jobs))
    # A report of the exploration shared between designs carries the sharing design's cell too.
    shared = next(r for r in reports if any(c.shared_with for c in r.cells))
    assert {(c.kernel, c.shared_with) for c in shared.cells} == {("merged", ""), ("v2", "merged")}
    # States: each exploration in turn, from its root to what its cells say it stored.
    assert list(states) == [f"{j.runtime} / {j.adversary} / {j.kernel}" for j in jobs]
    for j in jobs:
        (cell,) = [c for c in m.cells if (c.adversary, c.kernel, c.shared_with) == (j.adversary, j.kernel, "")]
        grows_to(states[f"{j.runtime} / {j.adversary} / {j.kernel}"], cell.states)


def test_explore_parallel_reports_cells_as_they_finish() -> None:
    reports: list[CellsDone] = []
    heard: list[tuple[str, int]] = []
    m = run_matrix(*SMALL, bound=4, jobs=2, progress=reports.append,
                   on_states=lambda label, n: heard.append((label, n)))  # fmt: skip
    check_reports(reports, m, len(plan(*SMALL)[0]))
    assert heard == []  # the workers' searches are in other processes


def test_bfs_and_parallel_bfs_report_states() -> None:
    spec = WorldSpec("jit-unchecked", "colluding", "merged")
    serial: list[int] = []
    res = bfs(make_world(spec.runtime, spec.adversary, spec.kernel), 4, on_states=serial.append)
    grows_to(serial, res.states)
    par: list[int] = []
    pres = parallel_bfs(spec, 4, workers=2, on_states=par.append)
    grows_to(par, pres.states)
    assert pres.states == res.states


# -- the display ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(("terminal", "as_json", "drawn"), [(True, False, True), (False, False, False),
                                                            (True, True, False)])  # fmt: skip
def test_drawn_on_a_terminal_and_never_with_json(terminal: bool, as_json: bool, drawn: bool) -> None:
    buf = io.StringIO()
    with live_progress(Console(file=buf, force_terminal=terminal, width=120), disable=as_json) as p:
        task = p.add_task("cell one", total=2)
        p.advance(task)
        p.refresh()
    assert ("cell one" in buf.getvalue()) == drawn


def on_a_terminal(buf: io.StringIO) -> Callable[..., Progress]:
    """`live_progress` drawing into `buf` as on a terminal (CliRunner's streams are not one)."""
    def make(console: Console | None = None, *, disable: bool = False) -> Progress:
        return live_progress(Console(file=buf, force_terminal=True, width=160), disable=disable)

    return make


def test_compare_draws_its_cells(monkeypatch: pytest.MonkeyPatch) -> None:
    buf = io.StringIO()
    monkeypatch.setattr(sgxemu.cli.compare, "live_progress", on_a_terminal(buf))
    r = run("compare", "--flow", "jit-wx", "--kernel", "merged", "--kernel", "v1")
    assert r.exit_code == 0, r.output
    shown = buf.getvalue()
    assert "jit-wx on merged" in shown and "jit-wx on v1" in shown and "2/2" in shown
    assert "jit-wx on" not in r.stdout  # the tables' stream has no progress in it
    buf.truncate(0)
    assert run("compare", "--flow", "jit-wx", "--kernel", "merged", "--json").exit_code == 0
    assert buf.getvalue() == ""


@pytest.mark.parametrize("extra", [[], ["--workers", "2"]], ids=["serial", "one-cell-parallel"])
def test_explore_draws_cells_and_states(monkeypatch: pytest.MonkeyPatch, extra: list[str]) -> None:
    buf = io.StringIO()
    monkeypatch.setattr(sgxemu.cli.explore, "live_progress", on_a_terminal(buf))
    r = run("explore", "--runtime", "jit-unchecked", "--adversary", "colluding", "--kernel", "merged",
            "--bound", "3", *extra)  # fmt: skip
    assert r.exit_code == 0, r.output
    shown = buf.getvalue()
    assert "jit-unchecked / colluding / merged: " in shown and " states" in shown and "1/1" in shown
    assert "states" not in r.stdout
