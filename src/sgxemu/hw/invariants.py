"""Invariants of the processor state that hold after every leaf, whatever the leaf did.

`check(cpu)` raises `InvariantViolation` naming the first broken rule. Tests run it after every
test (tests/conftest.py) and the stateful tests after every step.
"""

from __future__ import annotations

import struct
from collections import Counter
from typing import TYPE_CHECKING

from ..arch.constants import PAGE_MASK, PageType, TcsState

if TYPE_CHECKING:
    from .processor import Processor


class InvariantViolation(AssertionError):
    pass


def _fail(message: str) -> None:
    raise InvariantViolation(message)


def check(cpu: Processor) -> None:
    epcm = cpu.epcm
    children: Counter[int] = Counter()
    for index, e in epcm.items():
        if not 0 <= index < cpu.epc.npages:
            _fail(f"EPCM entry {index} outside the EPC")
        if e.pt is PageType.PT_VA:
            if e.secs is not None or e.linaddr or e.perms or e.blocked:
                _fail(f"VA page {index} has an owner, address, rights or BLOCKED")
            continue
        secs = e.secs
        if secs is None:
            _fail(f"page {index} ({e.pt.name}) has no ENCLAVESECS")
            continue
        if e.pt is PageType.PT_SECS:
            if secs.index != index:
                _fail(f"SECS page {index} carries the state of SECS {secs.index}")
            if e.perms or e.linaddr or e.pending or e.modified or e.pr or e.blocked:
                _fail(f"SECS page {index} has rights, an address or state bits")
            continue
        owner = epcm.get(secs.index)
        if owner is None or owner.pt is not PageType.PT_SECS or owner.secs is not secs:
            _fail(f"page {index} belongs to SECS {secs.index}, which is not a live SECS")
        children[secs.index] += 1
        if e.linaddr & ~PAGE_MASK or not secs.in_elrange(e.linaddr):
            _fail(f"page {index} at {e.linaddr:#x} is not a page of its ELRANGE")
        if e.pt is not PageType.PT_REG and e.perms:
            _fail(f"{e.pt.name} page {index} has RWX={e.perms}")
        if e.w and not e.r:
            _fail(f"page {index} is writable but not readable")
        if e.pending and e.modified:
            _fail(f"page {index} is both PENDING and MODIFIED")
    for index, e in epcm.items():
        if e.pt is PageType.PT_SECS and e.secs is not None:
            secs = e.secs
            if secs.chldcnt != children[index]:
                _fail(f"SECS {index} counts {secs.chldcnt} children, the EPCM has {children[index]}")
            for lp_index, entered in secs.inside.items():
                lp = cpu.lps[lp_index]
                if not lp.enclave_mode or lp.secs is not secs:
                    _fail(f"SECS {index} lists LP {lp_index} inside, but it is not")
                if entered > secs.epoch:
                    _fail(f"LP {lp_index} entered SECS {index} in a future epoch")
    active = set()
    for lp in cpu.lps:
        if not lp.enclave_mode:
            if lp.secs is not None:
                _fail(f"LP {lp.index} is outside but has an active SECS")
            continue
        secs = lp.secs
        if secs is None or lp.index not in secs.inside:
            _fail(f"LP {lp.index} is in enclave mode but not listed inside its enclave")
            continue
        tcs = epcm.get(lp.tcs_index)
        # EMODT may trim a TCS in use; the trim cannot be accepted (tracked) before this LP leaves.
        trimmed = tcs is not None and tcs.pt is PageType.PT_TRIM and tcs.modified
        if tcs is None or not (tcs.pt is PageType.PT_TCS or trimmed) or tcs.secs is not secs:
            _fail(f"LP {lp.index} runs on TCS {lp.tcs_index}, which is not a TCS of its enclave")
        state = struct.unpack("<Q", cpu.epc.read(lp.tcs_index, 0, 8))[0]
        if state != TcsState.ACTIVE:
            _fail(f"LP {lp.index} is inside through TCS {lp.tcs_index}, which is not busy")
        if lp.tcs_index in active:
            _fail(f"TCS {lp.tcs_index} is used by two logical processors")
        active.add(lp.tcs_index)
    for index, e in epcm.items():
        # A MODIFIED TCS (EMODT'd, not yet accepted) holds whatever the enclave wrote there.
        if e.pt is PageType.PT_TCS and not e.modified and index not in active:
            state = struct.unpack("<Q", cpu.epc.read(index, 0, 8))[0]
            if state != TcsState.INACTIVE:
                _fail(f"TCS {index} is busy but no logical processor is inside through it")


def check_all() -> None:
    """Check every processor still alive (the per-test hook)."""
    from .processor import live_processors

    for cpu in list(live_processors):
        check(cpu)
