"""Properties as monitors over an execution's events.

Each monitor folds the events of every move into a small immutable state (part of the explored
state, so two executions that differ in what a monitor remembers are different states) and
reports a violation the moment one event breaks the property.

Events (offsets are relative to the enclave base):
- ("read", off, value, inc, accepted) / ("write", off, value, inc): a successful 8-byte access by
  enclave code, with the incarnation of the EPC page that served it (see `world.py`) and
  whether that incarnation was EADDed or EACCEPTed;
- ("sealed"|"grown"|"trimmed"|"tcs_ready"|"relaxed"|"exec", off): what the runtime believes;
- ("eaccept", off, flags, rax): an EACCEPT and its result;
- ("ewb", off, inc, digest) / ("eldu", off, inc, digest): a page written out / loaded back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..arch.constants import PAGE_SIZE
from .layout import H

Event = tuple[object, ...]
MonitorState = object
Initial = Callable[[int], int]
VIOLATED = "violated"

_PAGE = ~(PAGE_SIZE - 1)


@dataclass(frozen=True)
class Property:
    name: str
    statement: str
    start: Callable[[Initial], MonitorState]
    update: Callable[[MonitorState, Event], MonitorState]  # returns VIOLATED on a violation


def _page(off: object) -> int:
    assert isinstance(off, int)
    return off & _PAGE


# -- W^X ----------------------------------------------------------------------------------------
def _wx(state: MonitorState, ev: Event) -> MonitorState:
    kind = ev[0]
    assert isinstance(state, frozenset)
    if kind == "sealed":
        return state | {ev[1]}
    if kind == "write" and state and _page(ev[1]) in state:
        return VIOLATED
    return state


# -- memory integrity ----------------------------------------------------------------------------
# State: (shadow words as a sorted tuple of (offset, value), pages whose contents are undefined).
def _integrity_start(initial: Initial) -> MonitorState:
    return ((), frozenset())


def _integrity(initial: Initial) -> Callable[[MonitorState, Event], MonitorState]:
    def update(state: MonitorState, ev: Event) -> MonitorState:
        kind = ev[0]
        if kind not in ("read", "write", "eaccept", "trimmed"):
            return state
        assert isinstance(state, tuple)
        shadow_t, undefined = state
        off = ev[1]
        assert isinstance(off, int)
        page = off & _PAGE
        if kind == "read":
            if page in undefined:
                return state
            expected = dict(shadow_t).get(off)
            if expected is None:
                expected = initial(off)
            return state if expected == ev[2] else VIOLATED
        shadow = dict(shadow_t)
        if kind == "write":
            value = ev[2]
            assert isinstance(value, int)
            shadow[off] = value
            undefined = undefined - {page}
        elif kind == "eaccept" and page == H and ev[3] == 0 and isinstance(ev[2], int) and ev[2] & 0x08:
            # The runtime accepted a fresh (PENDING, zero) heap page: forget what it held.
            shadow = {a: v for a, v in shadow.items() if a & _PAGE != page}
            undefined = undefined - {page}
        elif kind == "trimmed":
            shadow = {a: v for a, v in shadow.items() if a & _PAGE != page}
            undefined = undefined | {page}
        else:
            return state
        return (tuple(sorted(shadow.items())), undefined)

    return update


# -- reads only of accepted pages ---------------------------------------------------------------------
def _accepted_reads(state: MonitorState, ev: Event) -> MonitorState:
    if ev[0] == "read" and not ev[4]:
        return VIOLATED
    return state


# -- paging returns the version that went out -------------------------------------------------------
def _paging_fresh(state: MonitorState, ev: Event) -> MonitorState:
    kind = ev[0]
    if kind not in ("ewb", "eldu"):
        return state
    assert isinstance(state, tuple)
    out = dict(state)
    inc = ev[2]
    if kind == "ewb":
        out[inc] = ev[3]
        return tuple(sorted(out.items()))
    if out.get(inc) != ev[3]:
        return VIOLATED
    return state


# -- trimmed pages stay gone --------------------------------------------------------------------------
def _trim_gone(state: MonitorState, ev: Event) -> MonitorState:
    kind = ev[0]
    assert isinstance(state, frozenset)
    if kind == "trimmed":
        return state | {ev[1]}
    if kind == "grown":
        return state - {ev[1]}
    if (kind == "read" or kind == "write") and state and _page(ev[1]) in state:
        return VIOLATED
    return state


# -- a TCS the runtime accepted is no longer data -----------------------------------------------------------
def _tcs_sealed(state: MonitorState, ev: Event) -> MonitorState:
    kind = ev[0]
    assert isinstance(state, frozenset)
    if kind == "tcs_ready":
        return state | {ev[1]}
    if kind == "write" and state and _page(ev[1]) in state:
        return VIOLATED
    return state


def _unbound(state: MonitorState, ev: Event) -> MonitorState:
    raise RuntimeError("integrity's monitor needs a world's initial contents: use monitors()")


def _empty_set(initial: Initial) -> MonitorState:
    return frozenset()


def _empty_tuple(initial: Initial) -> MonitorState:
    return ()


PROPERTIES: dict[str, Property] = {
    p.name: p
    for p in (
        Property("wx", "after the runtime sealed page P as R-X (its EACCEPT succeeded, or its "
                 "protocol has no EACCEPT), no write to P from inside the enclave succeeds",
                 _empty_set, _wx),
        Property("integrity", "every read by enclave code returns what enclave code last wrote "
                 "there (or the EADDed contents; zero for a heap page the runtime accepted as new)",
                 _integrity_start, _unbound),
        Property("accepted_reads", "the enclave never reads a page (incarnation) it has not "
                 "EADDed or EACCEPTed", _empty_tuple, _accepted_reads),
        Property("paging_fresh", "a page paged out and back in is the version that went out",
                 _empty_tuple, _paging_fresh),
        Property("trim_gone", "after the runtime trimmed a page (its EACCEPT(TRIM) succeeded), no "
                 "access to it succeeds until the runtime grows it again", _empty_set, _trim_gone),
        Property("tcs_sealed", "after the runtime accepted its new TCS, no write to that page "
                 "succeeds", _empty_set, _tcs_sealed),
    )
}


def monitors(names: Sequence[str], initial: Initial) -> list[tuple[str, Callable[[MonitorState, Event], MonitorState], MonitorState]]:
    """(name, update, start state) for each property, bound to a world's initial contents."""
    out = []
    for name in names:
        prop = PROPERTIES.get(name)
        if prop is None:
            raise ValueError(f"no property {name!r}; choose from {', '.join(PROPERTIES)}")
        update = _integrity(initial) if name == "integrity" else prop.update
        out.append((name, update, prop.start(initial)))
    return out
