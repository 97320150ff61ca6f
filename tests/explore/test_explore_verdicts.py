"""Known answers of the threat explorer: a violation whose trace replays on a fresh machine and
shows the bad write, properties that hold to their bound, and every careless runtime caught."""

from __future__ import annotations

import dataclasses

import pytest

from sgxemu.explore import bfs, make_world, random_search, replay, runtime, shrink
from sgxemu.explore.adversaries import kernel_caps, protocol
from sgxemu.explore.layout import BUG_MARK, D, P, R, X
from sgxemu.explore.world import KERNEL, THREAD, LeafWorld


def _p_contents(world: LeafWorld) -> int:
    index = world.kpages[P]
    return int.from_bytes(world.cpu.epc.read(index, 0, 8), "little")


def test_soft_restrict_wx_violated_and_replays() -> None:
    """W^X under soft-restrict, malicious kernel + in-enclave write bug: a shortest attack trace,
    which replays on a fresh processor and ends with the bug's write to the sealed page."""
    assert not kernel_caps("soft-restrict").restrict_emodpr  # measured on the design itself
    world = make_world("jit", "colluding", "soft-restrict")
    assert "noaccept" in world.runtime.knobs  # the protocol a soft-restrict runtime can follow
    res = bfs(world, 5)
    trace = res.traces["wx"]
    assert len(trace) == 4
    fresh = make_world("jit", "colluding", "soft-restrict")
    assert fresh.cpu is not world.cpu
    rep = replay(fresh, trace)
    assert rep.valid and rep.violations == {"wx": len(trace) - 1}
    events = [e for step in rep.events for e in step]
    sealed = events.index(("sealed", P))
    writes = [e for e in events[sealed:] if e[0] == "write" and e[1] == P]
    assert writes and writes[0][2] == BUG_MARK
    assert _p_contents(fresh) == BUG_MARK  # the sealed code page holds the attacker's bytes
    e = fresh.cpu.epcm[fresh.kpages[P]]
    assert e.perms & 2  # EPCM never lost W: soft restriction never reached the EPCM


def test_wx_holds_on_merged_with_checked_eaccept() -> None:
    world = make_world("jit", "colluding", "merged")
    res = bfs(world, 6)
    assert res.traces == {}
    assert res.depth == 6 and not res.complete
    assert res.verdict("wx") == "holds up to bound 6"
    assert res.states > 10_000


@pytest.mark.parametrize(
    ("name", "adversary", "bound", "moves"),
    [
        ("jit-unchecked", "colluding", 5, 5),
        ("jit-noaccept", "colluding", 4, 4),
        ("jit-noemodpr", "colluding", 4, 4),
        ("trim-unchecked", "colluding", 5, 5),
        ("tcs-unchecked", "colluding", 5, 5),
        ("relax-anyaddr", "colluding", 4, 4),
    ],
)
def test_careless_runtimes_are_caught(name: str, adversary: str, bound: int, moves: int) -> None:
    careless = make_world(name, adversary, "merged")
    res = bfs(careless, bound)
    prop = runtime(name).properties[0]
    assert len(res.traces[prop]) == moves
    careful_name = name.split("-")[0]
    careful = make_world(careful_name, adversary, "merged")
    assert bfs(careful, bound).traces == {}


def test_heap_growth_at_a_host_chosen_address_is_caught() -> None:
    """The kernel removes the runtime's data page D, EAUGs a fresh one and names D as the heap
    page to accept: the careless runtime accepts it and later reads its key as zero. The search
    is focused on D (the kernel's domain narrowed to that page) to keep the test fast."""
    for name, expect in (("heap-anyaddr", True), ("heap", False)):
        rt = dataclasses.replace(runtime(name), kernel_pages=(D,), aug_pages=(D,),
                                 kernel_moves=frozenset({"eremove", "eaug"}))
        world = LeafWorld(rt, [KERNEL])
        res = bfs(world, 7)
        assert ("integrity" in res.traces) is expect, name
        if expect:
            kinds = [m[0] for m in res.traces["integrity"]]
            assert kinds.index("eremove") < kinds.index("eaug") < kinds.index("step")


def test_not_tracked_catches_the_stale_tlb_write() -> None:
    """EMODPR without ETRACK while the bug thread holds a writable translation of P: EACCEPT
    says SGX_NOT_TRACKED; a runtime that ignores it calls P sealed while the stale TLB entry
    still lets the bug write P. The careful runtime holds (it waits for tracking)."""
    prelude = (("call", 0, 1, 0), ("step", 0), ("call", 1, 9, P), ("step", 1), ("emodpr", P, R | X))
    results = {}
    for name in ("jit-unchecked", "jit"):
        rt = dataclasses.replace(runtime(name), prelude=prelude, kernel_moves=frozenset({"etrack", "aex"}))
        world = LeafWorld(rt, [KERNEL, THREAD])
        res = bfs(world, 8)
        results[name] = res.traces.get("wx")
        if name == "jit-unchecked":
            rep = replay(world, res.traces["wx"])
            accepts = [e for step in rep.events for e in step if e[0] == "eaccept"]
            assert accepts and accepts[0][3] == 11  # SGX_NOT_TRACKED
            assert world.cpu.epcm[world.kpages[P]].perms == R | X  # EPCM says R-X: the TLB wrote
    assert results["jit-unchecked"] is not None and results["jit"] is None


def test_random_search_and_shrinking_find_a_short_trace() -> None:
    world = make_world("jit-unchecked", "colluding", "merged")
    rnd = random_search(world, 14, 3000, seed=3)
    trace = rnd.traces["wx"]
    small = shrink(world, trace, "wx")
    assert len(small) <= len(trace) and len(small) <= 6
    assert replay(world, small).violations.get("wx") == len(small) - 1


def test_protocol_follows_the_design() -> None:
    jit = runtime("jit")
    assert protocol(jit, "merged") is jit
    soft = protocol(jit, "soft-restrict")
    assert soft.name == "jit@soft-restrict" and "noaccept" in soft.knobs
    assert protocol(runtime("heap"), "soft-restrict").name == "heap"
