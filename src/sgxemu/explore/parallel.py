"""The same breadth-first exploration, spread over worker processes (multiprocessing) or a Ray
cluster.

Level-synchronous: the coordinator holds the set of visited state keys and the frontier (each
node as its path from the root: a few dozen bytes, where a state is tens of KiB of EPC pages);
workers each build the world once, take chunks of the frontier from a work queue, rebuild each
node by replaying its path from the nearest state they still hold (siblings share their
parent, so mostly one move), expand it and send back, per successor, the move, a 128-bit key of
the full state and the properties it violates. The coordinator keeps the successors whose key
is new and forms the next frontier. Keys are two independent 64-bit hashes of the captured
state (hash compaction: a collision would merge two states; at 10^7 states the chance is about
10^-25). Workers must agree on string hashing: forked workers inherit it, Ray workers get
PYTHONHASHSEED=0.

On a real cluster (Ray): start `ray start --head` on one node and `ray start --address=...` on
the others with this package installed in the same environment, then `sgxemu explore --ray
ADDRESS`; every worker is an actor holding one world; chunks go to actors round robin and the
coordinator (the driver) only merges keys, so its memory is the visited set (about 100 bytes per
state) plus one frontier.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from .search import Move, Result, _ctx, _skip_after

Node = tuple[tuple[Move, ...], Move | None]  # (path, POR context)
Child = tuple[int, Move, tuple[int, int], tuple[str, ...], Move | None]


@dataclass(frozen=True)
class WorldSpec:
    """Everything a worker needs to build its own copy of the world."""

    runtime: str
    adversary: str
    kernel: str = "merged"
    properties: tuple[str, ...] | None = None
    key_pem: bytes = b""  # the enclave signer (MRSIGNER is part of the state): one for all

    def build(self) -> Any:
        from .adversaries import make_world
        from .world import use_signing_key

        if self.key_pem:
            use_signing_key(self.key_pem)
        return make_world(self.runtime, self.adversary, self.kernel, self.properties)

    def with_key(self) -> WorldSpec:
        from .world import signing_key_pem

        return self if self.key_pem else dataclasses.replace(self, key_pem=signing_key_pem())


class Expander:
    """A worker's world, plus the states it generated in the last level (the coordinator sends a
    node back to the worker that generated it, which restores it without replaying) and a small
    cache of states reached by replay (for nodes it did not generate)."""

    def __init__(self, spec: WorldSpec, por: bool = True, cache: int = 4096, *, worker: bool = True) -> None:
        import gc

        if worker:
            gc.disable()  # a worker's states are acyclic tuples: the collector only costs time
        self.world = spec.build()
        self.por = por
        self.cache: OrderedDict[tuple[Move, ...], Any] = OrderedDict()
        self.cache_size = cache
        self.level = -1
        self.made: dict[tuple[Move, ...], Any] = {}  # children generated in the current level
        self.prev: dict[tuple[Move, ...], Any] = {}  # ... and in the one before
        self.replayed = 0

    def _goto(self, path: tuple[Move, ...]) -> Any:
        w = self.world
        state = self.prev.get(path)
        if state is not None:
            w.restore(state)
            return state
        n = len(path)
        while n > 0 and path[:n] not in self.cache:
            n -= 1
        if n:
            state = self.cache[path[:n]]
            self.cache.move_to_end(path[:n])
        else:
            state = w.root
        w.restore(state)
        for i in range(n, len(path)):
            state, _ = w.step(path[i])
            self.replayed += 1
            self.cache[path[: i + 1]] = state
            if len(self.cache) > self.cache_size:
                self.cache.popitem(last=False)
        return state

    def root_info(self) -> tuple[tuple[int, int], tuple[str, ...], tuple[str, ...]]:
        """The root's key and violated properties, and the properties checked (as this worker
        hashes: the coordinator of a Ray search never hashes states itself)."""
        w = self.world
        return state_key(w.root), tuple(w.violated(w.root)), tuple(w.props)

    def expand(self, nodes: Sequence[Node], level: int = -1) -> tuple[list[Child], int]:
        """Successors of each node: (node index, move, key, violated, POR context)."""
        if level != self.level:
            self.prev, self.made, self.level = self.made, {}, level
        w = self.world
        out: list[Child] = []
        made = self.made
        for i, (path, last) in enumerate(nodes):
            state = self._goto(path)
            for move in w.moves():
                if self.por and _skip_after(last, move):
                    continue
                child, _ = w.step(move)
                made[(*path, move)] = child
                out.append((i, move, state_key(child), tuple(w.violated(child)), _ctx(move, self.por)))
                w.restore(state)
        return out, os.getpid()


def state_key(state: Any) -> tuple[int, int]:
    """Two independent 64-bit hashes of a captured state."""
    h1 = hash(state)
    parts = getattr(state, "phash", None)
    h2 = hash((parts[::-1] if parts is not None else getattr(state, "fp", ()), 0x5A17))
    return h1, h2


# -- multiprocessing -------------------------------------------------------------------------------
def _worker_main(spec: WorldSpec, por: bool, tasks: Any, results: Any) -> None:
    ex = Expander(spec, por)
    while True:
        job = tasks.get()
        if job is None:
            return
        ticket, level, nodes = job
        results.put((ticket, ex.expand(nodes, level)[0]))


class _ProcessPool:
    """Worker processes, each with its own task queue (so a node goes back to its generator)."""

    def __init__(self, spec: WorldSpec, por: bool, workers: int) -> None:
        probe = Expander(spec, por, worker=False)
        self._root = probe.root_info()  # forked workers hash as this process does
        close = getattr(probe.world, "close", None)
        if close is not None:
            close()
        ctx = multiprocessing.get_context("fork")
        self.results = ctx.Queue()
        self.tasks = [ctx.Queue() for _ in range(workers)]
        self.procs = [
            ctx.Process(target=_worker_main, args=(spec, por, q, self.results), daemon=True)
            for q in self.tasks
        ]
        for p in self.procs:
            p.start()

    def root_info(self) -> tuple[tuple[int, int], tuple[str, ...], tuple[str, ...]]:
        return self._root

    def run(self, jobs: list[tuple[int, int, list[Node]]], level: int) -> Iterator[tuple[int, list[Child]]]:
        """Submit a level's chunks; yield (ticket, successors) as workers finish them."""
        for ticket, worker, nodes in jobs:
            self.tasks[worker].put((ticket, level, nodes))
        for _ in jobs:
            ticket, children = self.results.get()
            yield ticket, children

    def close(self) -> None:
        for q in self.tasks:
            q.put(None)
        for p in self.procs:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()


def parallel_bfs(
    spec: WorldSpec,
    bound: int,
    *,
    workers: int = 2,
    por: bool = True,
    chunk: int = 256,
    backend: str = "process",
    ray_address: str | None = None,
    max_states: int | None = None,
    on_states: Callable[[int], None] | None = None,
) -> Result:
    """Breadth-first search to `bound` with `workers` processes (or Ray actors). `on_states(n)`
    (a progress display) hears the number of states stored as each chunk's successors merge."""
    started = time.perf_counter()
    spec = spec.with_key()
    pool: Any = _ProcessPool(spec, por, workers) if backend == "process" else _ray_pool(spec, por, workers, ray_address)
    root_key, root_bad, props = pool.root_info()
    res = Result(props, bound, mode=f"bfs/{backend}x{workers}")
    found: dict[str, tuple[Move, ...]] = {p: () for p in root_bad}
    seen: set[tuple[tuple[int, int], Move | None]] = {(root_key, None)}
    frontier: list[tuple[tuple[Move, ...], Move | None, int]] = [((), None, 0)]
    generated = 0
    depth = 0
    if on_states is not None:
        on_states(1)
    try:
        while frontier and depth < bound:
            by_worker = _balance(frontier, workers)
            jobs: list[tuple[int, int, list[Node]]] = []
            members: list[list[int]] = []
            for worker, idxs in sorted(by_worker.items()):
                for start in range(0, len(idxs), chunk):
                    part = idxs[start : start + chunk]
                    jobs.append((len(jobs), worker, [(frontier[i][0], frontier[i][1]) for i in part]))
                    members.append(part)
            nxt: list[tuple[tuple[Move, ...], Move | None, int]] = []
            for ticket, children in pool.run(jobs, depth):  # merged as they arrive
                worker = jobs[ticket][1]
                part = members[ticket]
                generated += len(children)
                for i, move, key, bad, ctx in children:
                    node_key = (key, ctx)
                    if node_key in seen:
                        continue
                    seen.add(node_key)
                    path = (*frontier[part[i]][0], move)
                    nxt.append((path, ctx, worker))
                    for p in bad:
                        if p not in found:
                            found[p] = path
                if on_states is not None:
                    on_states(len(seen))
            depth += 1
            frontier = nxt
            if max_states is not None and len(seen) >= max_states:
                break
    finally:
        pool.close()
    res.traces = found
    res.states = len(seen)
    res.generated = generated
    res.depth = depth
    res.complete = not frontier
    res.seconds = time.perf_counter() - started
    return res


def _balance(frontier: Sequence[tuple[Any, Any, int]], workers: int) -> dict[int, list[int]]:
    """Nodes per worker: each node goes back to the worker that generated it (no replay), up to
    an even share; the surplus, in frontier order (siblings together), to the others."""
    share = -(-len(frontier) // workers)
    out: dict[int, list[int]] = {w: [] for w in range(workers)}
    surplus: list[int] = []
    for idx, (_, _, worker) in enumerate(frontier):
        mine = out[worker % workers]
        (mine if len(mine) < share else surplus).append(idx)
    for w in range(workers):
        room = share - len(out[w])
        if room > 0 and surplus:
            out[w].extend(surplus[:room])
            del surplus[:room]
    return {w: idxs for w, idxs in out.items() if idxs}


def _ray_pool(spec: WorldSpec, por: bool, workers: int, address: str | None) -> Any:
    from .ray_backend import RayPool

    return RayPool(spec, por, workers, address)
