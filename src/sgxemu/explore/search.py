"""Bounded exhaustive search with state hashing, randomized search, replay and shrinking.

`bfs` explores every execution of at most `bound` moves, breadth first, storing each distinct
state once (the full state: EPCM, contents, hidden SECS state, LPs and TLBs, registers, page
table, kernel records, thread positions, monitors). Breadth first means the first trace found
for a property is a shortest one, and every state is expanded at its smallest depth.

Partial-order reduction (`por=True`) is applied to one class of moves only, where it is provably
sound: a kernel page-table move `pte(p, r)` commutes with every move that neither reads nor
writes the PTE of `p` nor the kernel's record of `p` (ENCLS on other pages, EMODPR, EMODT,
EBLOCK, ETRACK, AEX, EENTER/ERESUME, which only translate TCS and SSA pages, never a page of
the kernel's domain), it emits no monitor event, and it never enables or disables such a move.
So in any execution an independent pair (b = pte, a) with a ordered before b can be swapped
into (a, b) without changing the final state, the events the monitors see, or the length;
bubbling every such pair leaves a *canonical* execution where a pte move is never followed by
an independent move ordered before it. The search explores canonical executions only. To stay
sound with state hashing, a node is (state, last move if it was a pte move): two nodes are
merged only if their futures under the canonical restriction are identical. Also, two pte
moves in a row on the same page are never explored: the pair reaches the state the second one
reaches alone, one move earlier. Nothing else is reduced: enclave steps depend on every PTE
and EPCM entry they might touch, and ENCLS leaves share the SECS and the paging counter.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

Move = tuple[Any, ...]


class World(Protocol):
    """What the explorer needs from a world (LeafWorld, MachineWorld)."""

    root: Any

    def reset(self) -> Any: ...

    def restore(self, state: Any) -> None: ...

    def moves(self) -> list[Move]: ...

    def step(self, move: Move) -> tuple[Any, str]: ...

    def violated(self, state: Any) -> list[str]: ...

    def describe(self, move: Move) -> str: ...


@dataclass
class Result:
    """The outcome of one exploration."""

    properties: tuple[str, ...]
    bound: int
    traces: dict[str, tuple[Move, ...]] = field(default_factory=dict)  # property -> shortest trace
    states: int = 0  # nodes stored: distinct (state, last move if it was a PTE change)
    generated: int = 0  # successors computed (each one a move on the machine)
    depth: int = 0  # levels completed
    complete: bool = False  # the whole reachable space was explored before the bound
    seconds: float = 0.0
    mode: str = "bfs"
    walks: int = 0

    @property
    def states_per_s(self) -> float:
        return self.generated / self.seconds if self.seconds else 0.0

    def verdict(self, prop: str) -> str:
        if prop in self.traces:
            return "violated"
        if self.mode == "random":
            return f"no violation in {self.walks} random walks of <= {self.bound} moves"
        if self.complete:
            return f"holds (all {self.states} reachable states)"
        return f"holds up to bound {self.depth}"


_INDEPENDENT_OF_PTE = frozenset({"emodpr", "emodt", "eblock", "etrack", "aex", "call", "resume"})
_PAGE_MOVES = frozenset({"eaug", "eremove", "ewb"})


def _skip_after(last: Move | None, move: Move) -> bool:
    """POR: after a pte move `last`, skip independent moves ordered before it (see above)."""
    if last is None:
        return False
    kind = move[0]
    if kind == "pte":
        # Same page: the pair is one move. Other pages: commute; explore in (page, rights) order.
        return bool(move[1] == last[1] or move[1:] < last[1:])
    if kind in _INDEPENDENT_OF_PTE:
        return True  # ordered before every pte move
    if kind in _PAGE_MOVES:
        return bool(move[1] != last[1])
    return False  # steps (they read PTEs) and ELDU (it sets the kernel's record)


def _ctx(move: Move, por: bool) -> Move | None:
    return move if por and move[0] == "pte" else None


def bfs(
    world: World,
    bound: int,
    *,
    properties: Sequence[str] | None = None,
    por: bool = True,
    max_states: int | None = None,
    stop_when_violated: bool = False,
    deadline: float | None = None,
    on_states: Callable[[int], None] | None = None,
) -> Result:
    """Breadth-first exhaustive search of every execution of at most `bound` moves.
    `on_states(n)` (a progress display) hears the number of states stored: once for the root,
    then after each node is expanded."""
    props = tuple(properties if properties is not None else getattr(world, "props", ()))
    started = time.perf_counter()
    root = world.reset()
    res = Result(props, bound)
    root_node = (root, None)
    parents: dict[tuple[Any, Any], tuple[Any, Move] | None] = {root_node: None}
    frontier = [root_node]
    found: dict[str, tuple[Move, ...]] = {}
    for p in world.violated(root):
        found[p] = ()
    if on_states is not None:
        on_states(1)
    generated = 0
    depth = 0
    stop = False
    while frontier and depth < bound and not stop:
        nxt: list[tuple[Any, Any]] = []
        for node in frontier:
            state, last = node
            world.restore(state)
            for move in world.moves():
                if por and _skip_after(last, move):
                    continue
                child, _ = world.step(move)
                generated += 1
                cnode = (child, _ctx(move, por))
                if cnode not in parents:
                    parents[cnode] = (node, move)
                    nxt.append(cnode)
                    for p in world.violated(child):
                        if p not in found:
                            found[p] = _path(parents, cnode)
                world.restore(state)
            if on_states is not None:
                on_states(len(parents))
            if max_states is not None and len(parents) >= max_states:
                stop = True
                break
            if deadline is not None and time.perf_counter() > deadline:
                stop = True
                break
        if stop_when_violated and props and all(p in found for p in props):
            stop = True
        if not stop:
            depth += 1
        frontier = nxt
    res.traces = found
    res.states = len(parents)
    res.generated = generated
    res.depth = depth
    res.complete = not frontier and not stop
    res.seconds = time.perf_counter() - started
    return res


def _path(parents: dict[Any, Any], node: Any) -> tuple[Move, ...]:
    out: list[Move] = []
    link = parents[node]
    while link is not None:
        node, move = link
        out.append(move)
        link = parents[node]
    return tuple(reversed(out))


def random_search(
    world: World,
    depth: int,
    walks: int,
    *,
    seed: int = 0,
    deadline: float | None = None,
) -> Result:
    """Random walks of up to `depth` moves from the root; the first trace found per property."""
    props = tuple(getattr(world, "props", ()))
    rng = random.Random(seed)
    started = time.perf_counter()
    res = Result(props, depth, mode="random")
    found: dict[str, tuple[Move, ...]] = {}
    generated = 0
    done = 0
    for _ in range(walks):
        world.reset()
        path: list[Move] = []
        for _ in range(depth):
            moves = world.moves()
            if not moves:
                break
            move = moves[rng.randrange(len(moves))]
            state, _ = world.step(move)
            generated += 1
            path.append(move)
            bad = [p for p in world.violated(state) if p not in found]
            for p in bad:
                found[p] = tuple(path)
            if bad and all(p in found for p in props):
                break
        done += 1
        if props and all(p in found for p in props):
            break
        if deadline is not None and time.perf_counter() > deadline:
            break
    res.traces = found
    res.generated = generated
    res.walks = done
    res.seconds = time.perf_counter() - started
    return res


@dataclass
class Replayed:
    """One replayed execution: each move's description and outcome, and where properties broke."""

    moves: list[Move]
    outcomes: list[str]
    violations: dict[str, int]  # property -> index of the move that broke it
    events: list[list[tuple[Any, ...]]]

    @property
    def valid(self) -> bool:
        return len(self.outcomes) == len(self.moves)


def replay(world: World, trace: Sequence[Move], *, check_enabled: bool = True) -> Replayed:
    """Run `trace` from the root on `world`; stops at the first move that is not enabled."""
    world.reset()
    outcomes: list[str] = []
    violations: dict[str, int] = {}
    events: list[list[tuple[Any, ...]]] = []
    tap: list[tuple[Any, ...]] = []
    old = getattr(world, "event_tap", None)
    world.event_tap = tap  # type: ignore[attr-defined]
    try:
        for i, move in enumerate(trace):
            if check_enabled and move not in world.moves():
                break
            tap.clear()
            state, outcome = world.step(move)
            outcomes.append(outcome)
            events.append(list(tap))
            for p in world.violated(state):
                violations.setdefault(p, i)
    finally:
        world.event_tap = old  # type: ignore[attr-defined]
    return Replayed(list(trace), outcomes, violations, events)


def shrink(world: World, trace: Sequence[Move], prop: str) -> tuple[Move, ...]:
    """A locally minimal trace that still violates `prop`: cut after the violation, then drop
    chunks and single moves while the replay stays valid and still violates it."""

    def violates(t: Sequence[Move]) -> int | None:
        r = replay(world, t)
        if not r.valid:
            return None
        return r.violations.get(prop)

    at = violates(trace)
    if at is None:
        return tuple(trace)
    best = list(trace[: at + 1])
    chunk = max(1, len(best) // 2)
    while chunk >= 1:
        i = 0
        changed = False
        while i < len(best):
            cand = best[:i] + best[i + chunk :]
            at = violates(cand) if cand else None
            if at is not None:
                best = cand[: at + 1]
                changed = True
            else:
                i += 1
        if not changed:
            chunk //= 2
    return tuple(best)
