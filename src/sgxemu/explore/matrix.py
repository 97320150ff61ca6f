"""The verdict matrix: property x adversary x kernel design -> holds up to a bound, or violated
with a shortest (or shrunk) trace.

One exploration per (runtime, adversary, kernel) checks all the runtime's properties at once.
Against a malicious kernel the world does not depend on the design, only on the protocol the
runtime can follow on it (`adversaries.protocol`): designs with the same protocol share one
exploration, and the cell says so.
"""

from __future__ import annotations

import gc
import multiprocessing
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .adversaries import ADVERSARIES, kernels, make_world, protocol
from .runtimes import RUNTIMES, runtime
from .search import Move, bfs, random_search, shrink

LEAF_BOUND = 7
MACHINE_BOUND = 60


@dataclass
class Cell:
    runtime: str
    protocol: str
    prop: str
    adversary: str
    kernel: str
    verdict: str
    violated: bool
    trace: tuple[Move, ...] = ()
    found_by: str = ""  # "bfs" (shortest) or "random" (shrunk)
    states: int = 0
    generated: int = 0
    depth: int = 0
    complete: bool = False
    seconds: float = 0.0
    level: str = ""
    shared_with: str = ""  # another kernel whose exploration this cell reuses

    def short(self) -> str:
        if self.violated:
            return f"VIOLATED ({len(self.trace)} moves)"
        if self.complete:
            return f"holds (all {self.states})"
        return f"holds <= {self.depth}"


@dataclass
class Matrix:
    cells: list[Cell] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "seconds": round(self.seconds, 1),
            "cells": [
                {**asdict(c), "trace": [list(m) for m in c.trace]} for c in self.cells
            ],
        }

    def rows(self) -> list[tuple[str, str]]:
        seen: dict[tuple[str, str], None] = {}
        for c in self.cells:
            seen[(c.runtime, c.prop)] = None
        return list(seen)


@dataclass(frozen=True)
class Job:
    runtime: str
    adversary: str
    kernel: str
    properties: tuple[str, ...] | None
    bound: int | None
    walks: int
    max_states: int | None
    seed: int = 0
    machine_bound: int | None = None


@dataclass(frozen=True)
class CellsDone:
    """A progress report of `run_matrix`: once with no cells when the plan is made, then once
    per finished exploration, in the order they finish."""

    cells: tuple[Cell, ...]  # the cells it decided, those of designs sharing it included
    done: int  # cells of the matrix decided so far (== total in the last report)
    total: int  # cells in the matrix


def explore_cell(job: Job, on_states: Callable[[int], None] | None = None) -> list[Cell]:
    """Explore one (runtime, adversary, kernel); one Cell per property. `on_states`: see `bfs`."""
    started = time.perf_counter()
    adv = ADVERSARIES[job.adversary]
    world = make_world(job.runtime, job.adversary, job.kernel, job.properties)
    if adv.level == "leaf":
        bound = job.bound if job.bound is not None else LEAF_BOUND
    else:
        bound = job.machine_bound if job.machine_bound is not None else MACHINE_BOUND
    gc_was = gc.isenabled()
    gc.disable()
    try:
        res = bfs(world, bound, max_states=job.max_states, on_states=on_states)
        traces = {p: (t, "bfs") for p, t in res.traces.items()}
        missing = [p for p in world.props if p not in traces]
        if missing and job.walks and not res.complete:
            rnd = random_search(world, max(2 * bound, 12), job.walks, seed=job.seed)
            for p, t in rnd.traces.items():
                if p in missing:
                    traces[p] = (shrink(world, t, p), "random")
    finally:
        if gc_was:
            gc.enable()
    cells = []
    for p in world.props:
        trace, how = traces.get(p, ((), ""))
        violated = p in traces
        cell = Cell(
            job.runtime, world.runtime.name, p, job.adversary, job.kernel,
            "violated" if violated else res.verdict(p), violated, tuple(trace), how, res.states,
            res.generated, res.depth, res.complete, 0.0, adv.level,
        )
        cells.append(cell)
    elapsed = time.perf_counter() - started
    for c in cells:
        c.seconds = elapsed
    close = getattr(world, "close", None)
    if close is not None:
        close()
    return cells


def plan(
    runtimes: Iterable[str] | None = None,
    adversaries: Iterable[str] | None = None,
    kernel_names: Iterable[str] | None = None,
    properties: Sequence[str] | None = None,
    *,
    bound: int | None = None,
    walks: int = 0,
    max_states: int | None = 400_000,
    machine_bound: int | None = None,
) -> tuple[list[Job], dict[tuple[str, str, str], tuple[str, str, str]]]:
    """The explorations to run, and the cells that reuse another's (malicious-kernel worlds)."""
    rts = list(runtimes) if runtimes is not None else list(RUNTIMES)
    advs = list(adversaries) if adversaries is not None else list(ADVERSARIES)
    ks = list(kernel_names) if kernel_names is not None else list(kernels())
    jobs: list[Job] = []
    alias: dict[tuple[str, str, str], tuple[str, str, str]] = {}
    leaf_done: dict[tuple[str, str], str] = {}
    for r in rts:
        rt = runtime(r)
        props = tuple(p for p in rt.properties if properties is None or p in properties)
        if not props:
            continue
        for a in advs:
            for k in ks:
                if ADVERSARIES[a].level == "leaf":
                    proto = protocol(rt, k).name
                    first = leaf_done.get((proto, a))
                    if first is not None:
                        alias[(r, a, k)] = (r, a, first)
                        continue
                    leaf_done[(proto, a)] = k
                jobs.append(Job(r, a, k, props, bound, walks, max_states, 0, machine_bound))
    return jobs, alias


def run_matrix(
    runtimes: Iterable[str] | None = None,
    adversaries: Iterable[str] | None = None,
    kernel_names: Iterable[str] | None = None,
    properties: Sequence[str] | None = None,
    *,
    bound: int | None = None,
    walks: int = 0,
    jobs: int = 1,
    max_states: int | None = 400_000,
    progress: Callable[[CellsDone], None] | None = None,
    on_states: Callable[[str, int], None] | None = None,
    machine_bound: int | None = None,
) -> Matrix:
    """Run every cell (in `jobs` processes) and assemble the matrix. `bound` is the number of
    moves explored against a malicious kernel (leaf level, default 7), `machine_bound` at the
    machine level (default 60, which completes every runtime here).

    For a progress display: `progress` gets a `CellsDone` report (see there); `on_states(label,
    n)` hears the states stored so far by the exploration under way ("runtime / adversary /
    kernel"), in a serial run only (parallel workers are other processes)."""
    started = time.perf_counter()
    todo, alias = plan(runtimes, adversaries, kernel_names, properties, bound=bound, walks=walks,
                       max_states=max_states, machine_bound=machine_bound)
    sharers: dict[tuple[str, str, str], list[str]] = {}
    for (_r, _a, k), first in alias.items():
        sharers.setdefault(first, []).append(k)
    total = sum(len(j.properties or ()) * (1 + len(sharers.get(_key(j), []))) for j in todo)
    out: list[Cell] = []

    def finished(cells: list[Cell]) -> None:
        decided = cells + _shared_copies(cells, sharers)
        out.extend(decided)
        if progress is not None:
            progress(CellsDone(tuple(decided), len(out), total))

    if progress is not None:
        progress(CellsDone((), 0, total))
    for k in {j.kernel for j in todo}:
        from .adversaries import kernel_caps

        kernel_caps(k)  # measured once here, inherited by forked workers
    if jobs > 1 and len(todo) > 1:
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(jobs) as pool:
            for cells in pool.imap_unordered(explore_cell, todo):  # reported as they finish
                finished(cells)
    else:
        for job in todo:
            finished(explore_cell(job, _labelled(on_states, job)))
    order = {name: i for i, name in enumerate(RUNTIMES)}
    aorder = {name: i for i, name in enumerate(ADVERSARIES)}
    korder = {name: i for i, name in enumerate(kernels())}
    out.sort(key=lambda c: (order.get(c.runtime, 99), c.prop, aorder.get(c.adversary, 9), korder.get(c.kernel, 9)))
    return Matrix(out, time.perf_counter() - started)


def _key(job: Job) -> tuple[str, str, str]:
    return job.runtime, job.adversary, job.kernel


def _shared_copies(cells: list[Cell], sharers: dict[tuple[str, str, str], list[str]]) -> list[Cell]:
    """The cells of the designs that reuse this exploration (malicious-kernel worlds)."""
    if not cells:
        return []
    first = cells[0]
    kernels_sharing = sharers.get((first.runtime, first.adversary, first.kernel), [])
    return [
        Cell(**{**asdict(c), "kernel": k, "shared_with": c.kernel, "trace": c.trace})
        for k in kernels_sharing
        for c in cells
    ]


def _labelled(on_states: Callable[[str, int], None] | None, job: Job) -> Callable[[int], None] | None:
    if on_states is None:
        return None
    label = f"{job.runtime} / {job.adversary} / {job.kernel}"
    return lambda n: on_states(label, n)
