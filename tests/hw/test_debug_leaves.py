"""EDBGRD and EDBGWR: every SDM check in order, and what they read and write (spec 3.6)."""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from sgxemu.arch.constants import (
    PAGE_SIZE,
    Attribute,
    EnclsLeaf,
    PageType,
    SgxError,
    TcsFlags,
    secinfo_flags,
)
from sgxemu.arch.structs import Tcs, va_write_slot
from sgxemu.hw.epcm import EpcmEntry
from sgxemu.hw.faults import GeneralProtection, PageFault
from sgxemu.hw.regs import CF, ZF, Reg, Registers
from sgxemu.leafkit import Enclave, LeafKit
from sgxemu.sign.sigstruct import generate_key, mrsigner_of_key, sign_sigstruct

BASE = 0x7000_0000
SIZE = 0x1_0000
DATA = bytes(range(256)) * 16
TCS = Tcs(ossa=0x1000, nssa=1, oentry=0x2000, fslimit=0xFFF, gslimit=0x1FFF)
NOT_EPC = 0x9000
PF_R = 0x8001  # P | SGX
PF_W = 0x8003  # P | W | SGX
GP = ("GP",)
NOT_DEBUGGABLE = SgxError.SGX_PAGE_NOT_DEBUGGABLE


@dataclass
class World:
    kit: LeafKit
    encl: Enclave
    tcs: int
    data: int
    va: int

    def entry(self, pa: int) -> EpcmEntry:
        return self.kit.cpu.epcm[self.kit.cpu.epc.index(pa)]


def build(*, debug: bool = True) -> World:
    kit = LeafKit(epc_size=1 << 20)
    attributes = Attribute.MODE64BIT | (Attribute.DEBUG if debug else 0)
    encl = kit.ecreate(BASE, SIZE, attributes=attributes)
    tcs = kit.eadd(encl, BASE, TCS.pack(), secinfo_flags(PageType.PT_TCS), measure=False)
    data = kit.eadd(encl, BASE + 0x2000, DATA, secinfo_flags(PageType.PT_REG, 0b011), measure=False)
    return World(kit, encl, tcs, data, kit.epa())


def _set(attr: str, value: Any, pa: Callable[[World], int]) -> Callable[[World], int]:
    """Change one EPCM field of a page (a state other leaves would produce), then target it."""

    def apply(w: World) -> int:
        setattr(w.entry(pa(w)), attr, value)
        return pa(w)

    return apply


def _trimmed(w: World) -> int:
    """The data page as EMODT(TRIM) leaves it: PT_TRIM, no rights, MODIFIED."""
    e = w.entry(w.data)
    e.pt, e.perms, e.modified = PageType.PT_TRIM, 0, True
    return w.data


def _nondebug(w: World) -> None:
    secs = w.kit.cpu.secs_of(w.kit.cpu.epc.index(w.encl.secs_pa))
    assert secs is not None
    secs.attributes &= ~Attribute.DEBUG


def run(w: World, leaf: EnclsLeaf, rbx: int, rcx: int) -> tuple[int, int, int, int]:
    """ENCLS through a register file: (RAX, RBX, ZF, CF)."""
    regs = Registers(rax=leaf, rbx=rbx, rcx=rcx)
    w.kit.cpu.encls_regs(regs, w.kit.kmem)
    flags = regs[Reg.RFLAGS]
    return regs[Reg.RAX], regs[Reg.RBX], int(bool(flags & ZF)), int(bool(flags & CF))


def epc_state(w: World) -> tuple[Any, ...]:
    cpu = w.kit.cpu
    return (
        {i: cpu.epc.read(i, 0, PAGE_SIZE) for i in cpu.epcm},
        {i: repr(e) for i, e in cpu.epcm.items()},
    )


def check(w: World, leaf: EnclsLeaf, rbx: int, rcx: int, outcome: Any) -> None:
    before = epc_state(w)
    if outcome == GP:
        with pytest.raises(GeneralProtection):
            w.kit.encls(leaf, rbx, rcx)
    elif isinstance(outcome, tuple):
        with pytest.raises(PageFault) as info:
            w.kit.encls(leaf, rbx, rcx)
        assert (info.value.addr, info.value.error_code) == outcome[1:]
    else:
        # An error code: ZF set, RBX untouched.
        assert run(w, leaf, rbx, rcx) == (outcome, rbx, 1, 0)
    assert epc_state(w) == before


# ---------------------------------------------------------------------------------------------
# EDBGRD

# (name, how to set up and pick RCX, expected outcome); "PF" means #PF(RCX) with P|SGX.
EDBGRD_ROWS: list[tuple[str, Callable[[World], int], Any]] = [
    ("rcx-not-8-aligned", lambda w: w.data + 4, GP),
    ("rcx-not-in-epc", lambda w: NOT_EPC, ("PF", NOT_EPC, PF_R)),
    ("page-invalid", lambda w: w.kit.alloc() + 16, "PF"),
    ("page-is-secs", lambda w: w.encl.secs_pa + 8, "PF"),
    ("page-is-trim", _trimmed, "PF"),
    ("pending", _set("pending", True, lambda w: w.data), NOT_DEBUGGABLE),
    ("modified", _set("modified", True, lambda w: w.data), NOT_DEBUGGABLE),
    ("tcs-offset-at-limit", lambda w: w.tcs + 72, GP),
    ("tcs-offset-far", lambda w: w.tcs + 0xFF8, GP),
    ("non-debug-reg", lambda w: (_nondebug(w), w.data)[1], GP),
    ("non-debug-tcs", lambda w: (_nondebug(w), w.tcs)[1], GP),
    # Two broken checks: the earlier one wins.
    ("order: alignment before epc", lambda w: NOT_EPC + 1, GP),
    ("order: page type before modified", _trimmed, "PF"),
    (
        "order: pending before tcs limit",
        _set("pending", True, lambda w: w.tcs + 0x100),
        NOT_DEBUGGABLE,
    ),
    (
        "order: pending before debug",
        lambda w: (_nondebug(w), _set("modified", True, lambda w: w.data)(w))[1],
        NOT_DEBUGGABLE,
    ),
    ("order: tcs limit before debug", lambda w: (_nondebug(w), w.tcs + 80)[1], GP),
]


@pytest.mark.parametrize(
    ("name", "target", "outcome"), EDBGRD_ROWS, ids=[r[0] for r in EDBGRD_ROWS]
)
def test_edbgrd_checks(name: str, target: Callable[[World], int], outcome: Any) -> None:
    w = build()
    rcx = target(w)
    check(w, EnclsLeaf.EDBGRD, 0x1234, rcx, ("PF", rcx, PF_R) if outcome == "PF" else outcome)


@pytest.mark.parametrize("offset", [0, 8, 0x100, 0xFF8])
def test_edbgrd_reads_a_quadword_into_rbx(offset: int) -> None:
    w = build()
    expected = struct.unpack_from("<Q", DATA, offset)[0]
    assert run(w, EnclsLeaf.EDBGRD, 0, w.data + offset) == (0, expected, 0, 0)
    assert w.kit.edbgrd(w.data + offset) == (0, expected)


def test_edbgrd_ignores_epcm_permissions() -> None:
    w = build()
    w.entry(w.data).perms = 0
    assert w.kit.edbgrd(w.data + 16) == (0, struct.unpack_from("<Q", DATA, 16)[0])


@pytest.mark.parametrize("offset", [0, 8, 16, 24, 32, 40, 48, 56, 64])
def test_edbgrd_reads_the_tcs_below_its_limit(offset: int) -> None:
    w = build()
    assert w.kit.edbgrd(w.tcs + offset) == (0, struct.unpack_from("<Q", TCS.pack(), offset)[0])


@pytest.mark.parametrize(
    ("slot_value", "expected"),
    [
        (0, 0),
        (1, 0),
        (7, 0),
        (8, (1 << 64) - 1),
        (0x1234_5678, (1 << 64) - 1),
        ((1 << 64) - 1, (1 << 64) - 1),
    ],
)
def test_edbgrd_of_a_va_slot_hides_the_version(slot_value: int, expected: int) -> None:
    w = build(debug=False)  # VA pages belong to no enclave: DEBUG does not matter
    va_write_slot(w.kit.cpu.epc.page(w.kit.cpu.epc.index(w.va)), 9, slot_value)
    assert w.kit.edbgrd(w.va + 8 * 9) == (0, expected)


def test_edbgrd_of_an_empty_va_page_reads_zero() -> None:
    w = build()
    assert run(w, EnclsLeaf.EDBGRD, 0xFFFF, w.va) == (0, 0, 0, 0)


def test_edbgrd_of_an_eaug_page_is_not_debuggable() -> None:
    w = build()
    secs = w.kit.cpu.secs_of(w.kit.cpu.epc.index(w.encl.secs_pa))
    assert secs is not None and secs.measurement is not None
    key = generate_key()
    sig = sign_sigstruct(
        key,
        enclavehash=secs.measurement.final(),
        attributes=secs.attributes,
        xfrm=secs.xfrm,
        attributemask=0,
        xfrmmask=0,
        miscselect=0,
        miscmask=0,
        isvprodid=0,
        isvsvn=0,
    )
    w.kit.set_lepubkeyhash(mrsigner_of_key(key))
    assert w.kit.einit(w.encl, sig) == 0  # EAUG needs an initialized enclave
    aug = w.kit.eaug(w.encl, BASE + 0x5000)
    assert run(w, EnclsLeaf.EDBGRD, 0, aug) == (NOT_DEBUGGABLE, 0, 1, 0)
    assert run(w, EnclsLeaf.EDBGWR, 5, aug + 8) == (NOT_DEBUGGABLE, 5, 1, 0)
    assert w.kit.cpu.epc.read(w.kit.cpu.epc.index(aug), 0, 16) == bytes(16)


# ---------------------------------------------------------------------------------------------
# EDBGWR

EDBGWR_ROWS: list[tuple[str, Callable[[World], int], Any]] = [
    ("rcx-not-8-aligned", lambda w: w.data + 2, GP),
    ("rcx-not-in-epc", lambda w: NOT_EPC, ("PF", NOT_EPC, PF_W)),
    ("page-invalid", lambda w: w.kit.alloc(), "PF"),
    ("page-is-secs", lambda w: w.encl.secs_pa, "PF"),
    ("page-is-va", lambda w: w.va + 8, "PF"),
    ("page-is-trim", _trimmed, "PF"),
    ("pending", _set("pending", True, lambda w: w.data + 8), NOT_DEBUGGABLE),
    ("modified", _set("modified", True, lambda w: w.data), NOT_DEBUGGABLE),
    ("tcs-state", lambda w: w.tcs, GP),
    ("tcs-ossa", lambda w: w.tcs + 16, GP),
    ("tcs-reserved", lambda w: w.tcs + 0x800, GP),
    ("non-debug-reg", lambda w: (_nondebug(w), w.data)[1], GP),
    ("non-debug-tcs-flags", lambda w: (_nondebug(w), w.tcs + 8)[1], GP),
    ("order: page type before modified", _trimmed, "PF"),
    (
        "order: pending before tcs offset",
        _set("pending", True, lambda w: w.tcs + 16),
        NOT_DEBUGGABLE,
    ),
    (
        "order: pending before debug",
        lambda w: (_nondebug(w), _set("modified", True, lambda w: w.data)(w))[1],
        NOT_DEBUGGABLE,
    ),
    ("order: tcs offset before debug", lambda w: (_nondebug(w), w.tcs + 24)[1], GP),
]


@pytest.mark.parametrize(
    ("name", "target", "outcome"), EDBGWR_ROWS, ids=[r[0] for r in EDBGWR_ROWS]
)
def test_edbgwr_checks(name: str, target: Callable[[World], int], outcome: Any) -> None:
    w = build()
    rcx = target(w)
    check(w, EnclsLeaf.EDBGWR, 0xDEAD_BEEF, rcx, ("PF", rcx, PF_W) if outcome == "PF" else outcome)


@pytest.mark.parametrize("offset", [0, 8, 0x7F8, 0xFF8])
def test_edbgwr_writes_a_quadword(offset: int) -> None:
    w = build()
    value = 0x0123_4567_89AB_CDEF
    assert run(w, EnclsLeaf.EDBGWR, value, w.data + offset) == (0, value, 0, 0)
    index = w.kit.cpu.epc.index(w.data)
    page = w.kit.cpu.epc.read(index, 0, PAGE_SIZE)
    assert page[offset : offset + 8] == value.to_bytes(8, "little")
    assert page[:offset] + page[offset + 8 :] == DATA[:offset] + DATA[offset + 8 :]
    assert w.kit.edbgrd(w.data + offset) == (0, value)


def test_edbgwr_ignores_epcm_permissions() -> None:
    w = build()
    w.entry(w.data).perms = 0b001  # read-only to the enclave; the debugger may still write
    assert w.kit.edbgwr(w.data + 32, 0x42) == 0
    assert w.kit.edbgrd(w.data + 32) == (0, 0x42)


def test_edbgwr_sets_tcs_dbgoptin() -> None:
    w = build()
    assert w.kit.edbgwr(w.tcs + 8, TcsFlags.DBGOPTIN) == 0
    assert w.kit.edbgrd(w.tcs + 8) == (0, TcsFlags.DBGOPTIN)
    tcs = Tcs.unpack(w.kit.cpu.epc.read(w.kit.cpu.epc.index(w.tcs), 0, PAGE_SIZE))
    assert (tcs.flags, tcs.ossa, tcs.nssa) == (TcsFlags.DBGOPTIN, 0x1000, 1)
