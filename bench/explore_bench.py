"""Threat-explorer benchmarks: states explored per second on one core, and the speed-up of the
same exploration with two worker processes.

The scenario is the JIT W^X runtime (careful version) against a malicious kernel colluding with a
compromised enclave thread, on the processor model (`sgxemu.explore.world.LeafWorld`). A state
"explored" is one successor computed: restore the parent, perform the move on the processor
(an ENCLS leaf, a PTE change, an EENTER/ERESUME/AEX or one enclave step), capture and hash the
full state. The one-core figure divides by the CPU time of the exploring process, so other load
on the machine does not distort it; the speed-up is wall-clock (it needs two idle cores).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable

from sgxemu.explore.adversaries import make_world
from sgxemu.explore.parallel import WorldSpec, parallel_bfs
from sgxemu.explore.search import bfs

SCENARIO = ("jit", "colluding", "merged")


def _median(samples: list[float]) -> float:
    s = sorted(samples)
    return s[len(s) // 2]


def explore_states_per_s(quick: bool = False) -> float:
    bound = 6 if quick else 7
    world = make_world(*SCENARIO)
    runs = []
    for _ in range(3 if quick else 5):
        gc.collect()
        gc.disable()
        try:
            c0 = time.process_time()
            res = bfs(world, bound)
            cpu = time.process_time() - c0
        finally:
            gc.enable()
        runs.append(res.generated / cpu)
    world.close()
    return _median(runs)


def explore_speedup_2_workers(quick: bool = False) -> float:
    bound = 6 if quick else 7
    spec = WorldSpec(*SCENARIO)
    ratios = []
    for _ in range(1 if quick else 3):
        t0 = time.perf_counter()
        one = parallel_bfs(spec, bound, workers=1)
        t1 = time.perf_counter()
        two = parallel_bfs(spec, bound, workers=2)
        t2 = time.perf_counter()
        assert one.states == two.states
        ratios.append((t1 - t0) / (t2 - t1))
    return _median(ratios)


def _spin(n: int) -> int:
    total = 0
    for i in range(n):
        total += i * i
    return total


def parallel_baseline_2_processes(quick: bool = False) -> float:
    """What the machine gives two CPU-bound Python processes right now (pure arithmetic): the
    ceiling for the explorer's speed-up at the time it was measured (other load lowers it)."""
    import multiprocessing

    n = 3_000_000 if quick else 10_000_000
    t0 = time.perf_counter()
    _spin(n)
    one = time.perf_counter() - t0
    with multiprocessing.get_context("fork").Pool(2) as pool:
        t0 = time.perf_counter()
        pool.map(_spin, [n, n])
        two = time.perf_counter() - t0
    return 2 * one / two


BENCHMARKS: dict[str, Callable[[bool], float]] = {
    "explore_states_per_s": explore_states_per_s,
    "explore_speedup_2_workers": explore_speedup_2_workers,
    "parallel_baseline_2_processes": parallel_baseline_2_processes,
}
TARGETS = {
    "explore_states_per_s": (">=", 20_000.0, "one core, JIT W^X vs kernel+thread, CPU time"),
    "explore_speedup_2_workers": (">=", 1.5, "2 worker processes vs 1, wall clock, idle 2 cores"),
    "parallel_baseline_2_processes": ("", 2.0, "report: 2 spinning processes vs 1, the ceiling right now"),
}
