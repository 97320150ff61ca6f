"""EBLOCK, ETRACK, EWB, ELDB/ELDU: every SDM check in order, then the paging flows.

Spec 3.7, 3.8, 3.11, 3.12 (check order), 6.4 (tracking model) and 11 (paging crypto).
Each table row breaks exactly one check of a leaf set up to succeed otherwise, and asserts the
exact RAX or fault and that the machine did not change.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from sgxemu.arch.constants import (
    PAGE_SIZE,
    Attribute,
    EnclsLeaf,
    PageType,
    SgxError,
    secinfo_flags,
)
from sgxemu.arch.structs import (
    PCMD_OFF_ENCLAVEID,
    PCMD_OFF_MAC,
    PCMD_OFF_RESERVED,
    Pcmd,
    Tcs,
    va_read_slot,
)
from sgxemu.hw.epcm import TRACKED, EpcmEntry
from sgxemu.hw.faults import GeneralProtection, PageFault
from sgxemu.hw.measurement import MeasurementState
from sgxemu.hw.paging_crypto import SECS_HIDDEN_FIELDS, SECS_HIDDEN_OFFSET, SECS_NOT_SERIALIZED
from sgxemu.hw.regs import CF, ZF, Reg, Registers
from sgxemu.hw.secs import SecsState
from sgxemu.leafkit import Enclave, LeafKit, PagedOut
from sgxemu.sign.sigstruct import generate_key, mrsigner_of_key, sign_sigstruct

BASE = 0x7000_0000
SIZE = 0x1_0000
TCS_LIN = BASE
SSA_LIN = BASE + 0x1000
DATA_LIN = BASE + 0x2000
DATA2_LIN = BASE + 0x3000
DATA = bytes(range(256)) * 16
DATA2 = b"second page " * 341 + b"end!"
RW = 0b011
RWX = 0b111

NOT_EPC = 0x9000  # present in the kernel's page tables, but not EPC
PF_W = 0x8003  # P | W | SGX: an EPC operand the leaf writes
PF_R = 0x8001  # P | SGX: an EPC operand the leaf reads
# Kernel scratch for hand-built operands, away from LeafKit's own scratch area.
PI = 0x10_0000
SRC = 0x11_0000
PCMD = 0x12_0000

GP = ("GP",)


def pf(addr: int, code: int) -> tuple[str, int, int]:
    return ("PF", addr, code)


# ---------------------------------------------------------------------------------------------
# Building enclaves


@lru_cache(maxsize=1)
def _signing_key() -> rsa.RSAPrivateKey:
    return generate_key()


def initialize(kit: LeafKit, encl: Enclave) -> None:
    """EINIT the enclave the way Linux does: LEPUBKEYHASH := MRSIGNER, an all-zero token."""
    secs = secs_state(kit, encl)
    key = _signing_key()
    assert secs.measurement is not None
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
    kit.set_lepubkeyhash(mrsigner_of_key(key))
    assert kit.einit(encl, sig) == 0


def secs_state(kit: LeafKit, encl: Enclave) -> SecsState:
    secs = kit.cpu.secs_of(kit.cpu.epc.index(encl.secs_pa))
    assert secs is not None
    return secs


@dataclass
class World:
    """One enclave (TCS, SSA, two data pages) and a VA page, on a LeafKit."""

    kit: LeafKit
    encl: Enclave
    tcs: int
    ssa: int
    data: int
    data2: int
    va: int

    @property
    def cpu(self) -> Any:
        return self.kit.cpu

    @property
    def secs(self) -> SecsState:
        return secs_state(self.kit, self.encl)

    def entry(self, pa: int) -> EpcmEntry:
        return self.kit.cpu.epcm[self.kit.cpu.epc.index(pa)]

    def index(self, pa: int) -> int:
        return int(self.kit.cpu.epc.index(pa))


def build(
    kit: LeafKit | None = None, *, init: bool = True, debug: bool = False, base: int = BASE
) -> World:
    kit = kit if kit is not None else LeafKit(epc_size=1 << 20)
    attributes = Attribute.MODE64BIT | (Attribute.DEBUG if debug else 0)
    encl = kit.ecreate(base, SIZE, attributes=attributes)
    tcs = kit.eadd(
        encl, base, Tcs(ossa=0x1000, nssa=1, oentry=0x2000).pack(), secinfo_flags(PageType.PT_TCS)
    )
    ssa = kit.eadd(encl, base + 0x1000, b"", secinfo_flags(PageType.PT_REG, RW))
    data = kit.eadd(encl, base + 0x2000, DATA, secinfo_flags(PageType.PT_REG, RWX))
    data2 = kit.eadd(encl, base + 0x3000, DATA2, secinfo_flags(PageType.PT_REG, RW))
    if init:
        initialize(kit, encl)
    return World(kit, encl, tcs, ssa, data, data2, kit.epa())


def evict(w: World, pa: int, slot: int) -> PagedOut:
    """EBLOCK + ETRACK + EWB of an enclave page with no thread inside."""
    assert w.kit.eblock(pa) == 0
    assert w.kit.etrack(w.encl) == 0
    code, blob = w.kit.ewb(pa, slot)
    assert code == 0
    return blob


def run_regs(
    kit: LeafKit, leaf: EnclsLeaf, rbx: int = 0, rcx: int = 0, rdx: int = 0
) -> tuple[int, int, int]:
    """ENCLS through a register file: (RAX, ZF, CF)."""
    regs = Registers(rax=leaf, rbx=rbx, rcx=rcx, rdx=rdx)
    kit.cpu.encls_regs(regs, kit.kmem)
    flags = regs[Reg.RFLAGS]
    return regs[Reg.RAX], int(bool(flags & ZF)), int(bool(flags & CF))


def snapshot(kit: LeafKit) -> tuple[Any, ...]:
    """Everything a failing leaf must leave alone: EPCM, EPC contents, SECS state, outputs."""
    cpu = kit.cpu
    epcm = {
        i: (e.pt, e.perms, e.pending, e.modified, e.pr, e.blocked, e.linaddr, id(e.secs), e.epoch)
        for i, e in cpu.epcm.items()
    }
    pages = {i: cpu.epc.read(i, 0, PAGE_SIZE) for i in cpu.epcm}
    secs = sorted(
        (s.eid, s.index, s.chldcnt, s.epoch, tuple(s.inside.items())) for s in cpu.enclaves()
    )
    outputs = (kit.kmem.read(SRC, PAGE_SIZE), kit.kmem.read(PCMD, 128), kit.kmem.read(PI, 32))
    return epcm, pages, secs, cpu.paging_version, dict(cpu.parked_measurements), outputs


def expect(outcome: Any, call: Callable[[], int]) -> None:
    if outcome == GP:
        with pytest.raises(GeneralProtection):
            call()
    elif isinstance(outcome, tuple):
        with pytest.raises(PageFault) as info:
            call()
        assert (info.value.addr, info.value.error_code) == outcome[1:]
    else:
        assert call() == outcome


def raw_pageinfo(kit: LeafKit, linaddr: int, srcpge: int, pcmd: int, secs: int) -> None:
    kit.kmem.write(PI, struct.pack("<4Q", linaddr, srcpge, pcmd, secs))


# ---------------------------------------------------------------------------------------------
# EBLOCK (spec 3.7)


def _eblock_free(w: World) -> int:
    return w.kit.alloc()


EBLOCK_ROWS: list[tuple[str, Callable[[World], int], Any]] = [
    ("rcx-not-4k-aligned", lambda w: w.data + 8, GP),
    ("rcx-not-in-epc", lambda w: NOT_EPC, pf(NOT_EPC, PF_W)),
    ("page-invalid", _eblock_free, (SgxError.SGX_PG_INVLD, 1, 0)),
    ("page-is-secs", lambda w: w.encl.secs_pa, (SgxError.SGX_PG_IS_SECS, 0, 1)),
    ("page-is-va", lambda w: w.va, (SgxError.SGX_NOTBLOCKABLE, 0, 1)),
]


@pytest.mark.parametrize(
    ("name", "target", "outcome"), EBLOCK_ROWS, ids=[r[0] for r in EBLOCK_ROWS]
)
def test_eblock_checks(name: str, target: Callable[[World], int], outcome: Any) -> None:
    w = build()
    rcx = target(w)
    before = snapshot(w.kit)
    if isinstance(outcome, tuple) and outcome[0] == "PF" or outcome == GP:
        expect(outcome, lambda: w.kit.eblock(rcx))
    else:
        assert run_regs(w.kit, EnclsLeaf.EBLOCK, 0, rcx) == outcome
    assert snapshot(w.kit) == before


def test_eblock_blocks_and_records_the_epoch_then_reports_blkstate() -> None:
    w = build()
    w.secs.epoch = 5
    assert run_regs(w.kit, EnclsLeaf.EBLOCK, 0, w.data) == (0, 0, 0)
    e = w.entry(w.data)
    assert e.blocked and e.epoch == 5
    w.secs.epoch = 6
    # Already blocked: CF=1, informational; the page stays blocked and keeps its epoch.
    assert run_regs(w.kit, EnclsLeaf.EBLOCK, 0, w.data) == (SgxError.SGX_BLKSTATE, 0, 1)
    assert e.blocked and e.epoch == 5


@pytest.mark.parametrize("page_type", [PageType.PT_TCS, PageType.PT_TRIM])
def test_eblock_accepts_tcs_and_trim(page_type: PageType) -> None:
    w = build()
    pa = w.tcs if page_type is PageType.PT_TCS else w.data2
    if page_type is PageType.PT_TRIM:
        e = w.entry(pa)
        e.pt, e.perms, e.modified = PageType.PT_TRIM, 0, True
    assert w.kit.eblock(pa) == 0 and w.entry(pa).blocked


# ---------------------------------------------------------------------------------------------
# ETRACK (spec 3.8)

ETRACK_ROWS: list[tuple[str, Callable[[World], int], Any]] = [
    ("rcx-not-4k-aligned", lambda w: w.encl.secs_pa + 64, GP),
    ("rcx-not-in-epc", lambda w: NOT_EPC, pf(NOT_EPC, PF_W)),
    ("page-invalid", lambda w: w.kit.alloc(), "PF-self"),
    ("page-is-reg", lambda w: w.data, "PF-self"),
    ("page-is-tcs", lambda w: w.tcs, "PF-self"),
    ("page-is-va", lambda w: w.va, "PF-self"),
]


@pytest.mark.parametrize(
    ("name", "target", "outcome"), ETRACK_ROWS, ids=[r[0] for r in ETRACK_ROWS]
)
def test_etrack_checks(name: str, target: Callable[[World], int], outcome: Any) -> None:
    w = build()
    rcx = target(w)
    if outcome == "PF-self":
        outcome = pf(rcx, PF_W)
    before = snapshot(w.kit)
    expect(outcome, lambda: w.kit.encls(EnclsLeaf.ETRACK, 0, rcx))
    assert snapshot(w.kit) == before


def test_etrack_starts_a_cycle() -> None:
    w = build()
    assert run_regs(w.kit, EnclsLeaf.ETRACK, 0, w.encl.secs_pa) == (0, 0, 0)
    assert w.secs.epoch == 1
    # Nobody inside: the cycle is complete at once, so another ETRACK succeeds.
    assert w.kit.etrack(w.encl) == 0 and w.secs.epoch == 2


def test_etrack_twice_with_an_old_thread_inside_is_incomplete() -> None:
    w = build()
    regs = w.kit.eenter(TCS_LIN, lp=0)
    assert w.kit.etrack(w.encl) == 0
    before = snapshot(w.kit)
    assert run_regs(w.kit, EnclsLeaf.ETRACK, 0, w.encl.secs_pa) == (
        SgxError.SGX_PREV_TRK_INCMPL,
        1,
        0,
    )
    assert snapshot(w.kit) == before
    w.kit.eexit(regs, lp=0)
    assert w.kit.etrack(w.encl) == 0 and w.secs.epoch == 2


def test_etrack_with_only_a_thread_that_entered_after_it_is_complete() -> None:
    w = build()
    assert w.kit.etrack(w.encl) == 0
    w.kit.eenter(TCS_LIN, lp=1)  # entered in the new epoch: owes nothing to the last cycle
    assert w.kit.etrack(w.encl) == 0


# ---------------------------------------------------------------------------------------------
# EWB (spec 3.11): every check, in order


def _ewb_ready(w: World) -> None:
    """data blocked and tracked; data2 blocked but not tracked."""
    assert w.kit.eblock(w.data) == 0
    assert w.kit.etrack(w.encl) == 0
    assert w.kit.eblock(w.data2) == 0


def _unblock(w: World) -> dict[str, int]:
    w.entry(w.data).blocked = False
    return {}


def _same_free_page(w: World) -> dict[str, int]:
    free = w.kit.alloc()
    return {"rcx": free, "rdx": free + 8}


EWB_ROWS: list[tuple[str, Callable[[World], dict[str, int]], Any]] = [
    ("rbx-not-32-aligned", lambda w: {"rbx": PI + 16}, GP),
    ("rcx-not-4k-aligned", lambda w: {"rcx": w.data + 8}, GP),
    ("rcx-not-in-epc", lambda w: {"rcx": NOT_EPC}, pf(NOT_EPC, PF_W)),
    ("rdx-not-8-aligned", lambda w: {"rdx": w.va + 4}, GP),
    ("rdx-not-in-epc", lambda w: {"rdx": NOT_EPC + 8}, pf(NOT_EPC + 8, PF_W)),
    ("rcx-rdx-same-page", lambda w: {"rdx": w.data + 8}, GP),
    ("linaddr-not-0", lambda w: {"linaddr": DATA_LIN}, GP),
    ("secs-not-0", lambda w: {"secs": w.encl.secs_pa}, GP),
    ("pcmd-not-128-aligned", lambda w: {"pcmd": PCMD + 64}, GP),
    ("srcpge-not-4k-aligned", lambda w: {"srcpge": SRC + 0x800}, GP),
    ("rcx-invalid", lambda w: {"rcx": w.kit.alloc()}, "PF-rcx"),
    ("rdx-invalid", lambda w: {"rdx": w.kit.alloc() + 16}, "PF-rdx"),
    ("rdx-not-va", lambda w: {"rdx": w.ssa + 16}, "PF-rdx"),
    ("not-blocked", _unblock, SgxError.SGX_PAGE_NOT_BLOCKED),
    ("not-tracked", lambda w: {"rcx": w.data2}, SgxError.SGX_NOT_TRACKED),
    ("secs-child-present", lambda w: {"rcx": w.encl.secs_pa}, SgxError.SGX_CHILD_PRESENT),
    # Two broken checks: the earlier one wins.
    (
        "order: rcx-invalid before rdx-not-va",
        lambda w: {"rcx": w.kit.alloc(), "rdx": w.ssa},
        "PF-rcx",
    ),
    ("order: linaddr before rcx-invalid", lambda w: {"linaddr": 1, "rcx": w.kit.alloc()}, GP),
    ("order: same-page before rcx-invalid", lambda w: _same_free_page(w), GP),
    ("order: rdx-not-va before not-blocked", lambda w: {**_unblock(w), "rdx": w.ssa}, "PF-rdx"),
    (
        "order: pcmd-alignment before rdx-invalid",
        lambda w: {"pcmd": PCMD + 8, "rdx": w.kit.alloc()},
        GP,
    ),
]


def _ewb_call(w: World, over: dict[str, int]) -> tuple[int, int, int]:
    args = {
        "rbx": PI,
        "rcx": w.data,
        "rdx": w.va,
        "linaddr": 0,
        "srcpge": SRC,
        "pcmd": PCMD,
        "secs": 0,
    }
    args.update(over)
    raw_pageinfo(w.kit, args["linaddr"], args["srcpge"], args["pcmd"], args["secs"])
    return args["rbx"], args["rcx"], args["rdx"]


@pytest.mark.parametrize(("name", "mutate", "outcome"), EWB_ROWS, ids=[r[0] for r in EWB_ROWS])
def test_ewb_checks(name: str, mutate: Callable[[World], dict[str, int]], outcome: Any) -> None:
    w = build()
    _ewb_ready(w)
    rbx, rcx, rdx = _ewb_call(w, mutate(w))
    if outcome == "PF-rcx":
        outcome = pf(rcx, PF_W)
    elif outcome == "PF-rdx":
        outcome = pf(rdx, PF_W)
    before = snapshot(w.kit)
    expect(outcome, lambda: w.kit.encls(EnclsLeaf.EWB, rbx, rcx, rdx))
    assert snapshot(w.kit) == before


def test_ewb_error_codes_set_zf() -> None:
    w = build()
    rbx, rcx, rdx = _ewb_call(w, {})
    assert run_regs(w.kit, EnclsLeaf.EWB, rbx, rcx, rdx) == (SgxError.SGX_PAGE_NOT_BLOCKED, 1, 0)


def test_ewb_output_fault_changes_nothing() -> None:
    w = build()
    _ewb_ready(w)
    w.kit.kmem.set_pte(SRC, 0x1)  # present, read-only: the ciphertext cannot be written
    rbx, rcx, rdx = _ewb_call(w, {})
    before = snapshot(w.kit)
    expect(pf(SRC, 0x3), lambda: w.kit.encls(EnclsLeaf.EWB, rbx, rcx, rdx))
    assert snapshot(w.kit) == before


def test_ewb_writes_ciphertext_pcmd_linaddr_and_version() -> None:
    w = build()
    _ewb_ready(w)
    eid = w.secs.eid
    children = w.secs.chldcnt
    w.kit.kmem.write(PCMD, b"\xaa" * 128)  # EWB zeroes what it does not fill
    rbx, rcx, rdx = _ewb_call(w, {})
    assert run_regs(w.kit, EnclsLeaf.EWB, rbx, rcx, rdx) == (0, 0, 0)
    pcmd = Pcmd.unpack(w.kit.kmem.read(PCMD, 128))
    assert pcmd.secinfo.flags == secinfo_flags(PageType.PT_REG, RWX)
    assert pcmd.secinfo.reserved == bytes(56)
    assert pcmd.enclaveid == eid
    assert pcmd.reserved == bytes(40)
    assert pcmd.mac != bytes(16)
    assert struct.unpack("<Q", w.kit.kmem.read(PI, 8))[0] == DATA_LIN  # LINADDR is an output
    ciphertext = w.kit.kmem.read(SRC, PAGE_SIZE)
    assert ciphertext != DATA and len(ciphertext) == PAGE_SIZE
    assert va_read_slot(w.cpu.epc.page(w.index(w.va)), 0) == w.cpu.paging_version != 0
    assert w.index(w.data) not in w.cpu.epcm  # VALID := 0
    assert w.index(w.data) in w.cpu.epc.dirty  # queued for scrubbing ...
    w.cpu.epc.scrub(w.cpu.epcm)
    assert w.cpu.epc.read(w.index(w.data), 0, PAGE_SIZE) == bytes(PAGE_SIZE)  # ... and scrubbed
    assert w.secs.chldcnt == children - 1


# ---------------------------------------------------------------------------------------------
# ELDB / ELDU (spec 3.12): every check, in order

LOADS = [EnclsLeaf.ELDU, EnclsLeaf.ELDB]


def _eld_setup() -> tuple[World, PagedOut]:
    w = build()
    blob = evict(w, w.data, w.va)
    w.kit.kmem.write(SRC, blob.contents)
    w.kit.kmem.write(PCMD, blob.pcmd)
    return w, blob


ELD_ROWS: list[tuple[str, Callable[[World], dict[str, int]], Any]] = [
    ("rbx-not-32-aligned", lambda w: {"rbx": PI + 8}, GP),
    ("rcx-not-4k-aligned", lambda w: {"rcx": w.data + 0x100}, GP),
    ("rcx-not-in-epc", lambda w: {"rcx": NOT_EPC}, pf(NOT_EPC, PF_W)),
    ("rdx-not-8-aligned", lambda w: {"rdx": w.va + 1}, GP),
    ("rdx-not-in-epc", lambda w: {"rdx": NOT_EPC}, pf(NOT_EPC, PF_W)),
    ("pcmd-not-128-aligned", lambda w: {"pcmd": PCMD + 32}, GP),
    ("srcpge-not-4k-aligned", lambda w: {"srcpge": SRC + 8}, GP),
    ("rcx-valid", lambda w: {"rcx": w.ssa}, "PF-rcx"),
    ("rdx-invalid", lambda w: {"rdx": w.kit.alloc()}, "PF-rdx"),
    ("rdx-not-va", lambda w: {"rdx": w.tcs + 8}, "PF-rdx"),
    ("secs-not-4k-aligned", lambda w: {"secs": w.encl.secs_pa + 64}, GP),
    ("secs-not-in-epc", lambda w: {"secs": NOT_EPC}, pf(NOT_EPC, PF_R)),
    ("secs-invalid", lambda w: {"secs": w.kit.alloc()}, "PF-secs"),
    ("secs-not-secs", lambda w: {"secs": w.tcs}, "PF-secs"),
    ("secs-is-va", lambda w: {"secs": w.va}, "PF-secs"),
    ("mac: wrong linaddr", lambda w: {"linaddr": DATA2_LIN}, SgxError.SGX_MAC_COMPARE_FAIL),
    ("mac: empty slot", lambda w: {"rdx": w.va + 8}, SgxError.SGX_MAC_COMPARE_FAIL),
    ("order: rcx-valid before rdx-not-va", lambda w: {"rcx": w.ssa, "rdx": w.tcs}, "PF-rcx"),
    ("order: rdx-alignment before rcx-valid", lambda w: {"rdx": w.va + 2, "rcx": w.ssa}, GP),
    ("order: rdx-not-va before secs", lambda w: {"rdx": w.tcs, "secs": NOT_EPC}, "PF-rdx"),
    ("order: pcmd-alignment before rcx-valid", lambda w: {"pcmd": PCMD + 8, "rcx": w.ssa}, GP),
]


@pytest.mark.parametrize("leaf", LOADS, ids=lambda leaf: leaf.name)
@pytest.mark.parametrize(("name", "mutate", "outcome"), ELD_ROWS, ids=[r[0] for r in ELD_ROWS])
def test_eld_checks(
    leaf: EnclsLeaf, name: str, mutate: Callable[[World], dict[str, int]], outcome: Any
) -> None:
    w, blob = _eld_setup()
    args = {"rbx": PI, "rcx": w.data, "rdx": w.va, "linaddr": blob.linaddr, "srcpge": SRC,
            "pcmd": PCMD, "secs": w.encl.secs_pa}  # fmt: skip
    args.update(mutate(w))
    raw_pageinfo(w.kit, args["linaddr"], args["srcpge"], args["pcmd"], args["secs"])
    outcome = {"PF-rcx": pf(args["rcx"], PF_W), "PF-rdx": pf(args["rdx"], PF_W),
               "PF-secs": pf(args["secs"], PF_R)}.get(outcome, outcome)  # fmt: skip
    before = snapshot(w.kit)
    if isinstance(outcome, int):
        assert run_regs(w.kit, leaf, args["rbx"], args["rcx"], args["rdx"]) == (outcome, 1, 0)
    else:
        expect(outcome, lambda: w.kit.encls(leaf, args["rbx"], args["rcx"], args["rdx"]))
    assert snapshot(w.kit) == before
    # Still loadable afterwards: the failure consumed nothing.
    assert w.kit.eld(blob, w.data, w.va, w.encl.secs_pa) == 0


@pytest.mark.parametrize("leaf", LOADS, ids=lambda leaf: leaf.name)
@pytest.mark.parametrize("kind", ["secs", "va"])
def test_eld_of_secs_or_va_requires_pageinfo_secs_0(leaf: EnclsLeaf, kind: str) -> None:
    w = build()
    if kind == "va":
        va2 = w.kit.epa()
        code, blob = w.kit.ewb(w.va, va2)
        slot = va2
    else:
        _evict_children(w, [w.tcs, w.ssa, w.data, w.data2])
        code, blob = w.kit.ewb(w.encl.secs_pa, w.va + 64)
        slot = w.va + 64
    assert code == 0
    dest = w.kit.alloc()
    w.kit.kmem.write(SRC, blob.contents)
    w.kit.kmem.write(PCMD, blob.pcmd)
    raw_pageinfo(w.kit, blob.linaddr, SRC, PCMD, w.tcs)
    before = snapshot(w.kit)
    expect(GP, lambda: w.kit.encls(leaf, PI, dest, slot))
    assert snapshot(w.kit) == before


# ---------------------------------------------------------------------------------------------
# MAC failures: nothing changes, the slot keeps its version


def _flip(data: bytes, offset: int, mask: int = 0x01) -> bytes:
    b = bytearray(data)
    b[offset] ^= mask
    return bytes(b)


TAMPER_ROWS: list[tuple[str, Callable[[PagedOut], PagedOut]]] = [
    ("ciphertext first byte", lambda b: PagedOut(_flip(b.contents, 0), b.pcmd, b.linaddr)),
    ("ciphertext last byte", lambda b: PagedOut(_flip(b.contents, 4095, 0x80), b.pcmd, b.linaddr)),
    ("pcmd flag R", lambda b: PagedOut(b.contents, _flip(b.pcmd, 0, 0x01), b.linaddr)),
    ("pcmd flag X", lambda b: PagedOut(b.contents, _flip(b.pcmd, 0, 0x04), b.linaddr)),
    ("pcmd flag PENDING", lambda b: PagedOut(b.contents, _flip(b.pcmd, 0, 0x08), b.linaddr)),
    ("pcmd flag MODIFIED", lambda b: PagedOut(b.contents, _flip(b.pcmd, 0, 0x10), b.linaddr)),
    ("pcmd flag PR", lambda b: PagedOut(b.contents, _flip(b.pcmd, 0, 0x20), b.linaddr)),
    ("pcmd page type REG->TCS", lambda b: PagedOut(b.contents, _flip(b.pcmd, 1, 0x03), b.linaddr)),
    ("pcmd secinfo reserved", lambda b: PagedOut(b.contents, _flip(b.pcmd, 40), b.linaddr)),
    (
        "pcmd reserved",
        lambda b: PagedOut(b.contents, _flip(b.pcmd, PCMD_OFF_RESERVED + 3), b.linaddr),
    ),
    ("pcmd mac", lambda b: PagedOut(b.contents, _flip(b.pcmd, PCMD_OFF_MAC + 15), b.linaddr)),
    ("linaddr", lambda b: PagedOut(b.contents, b.pcmd, b.linaddr + PAGE_SIZE)),
    ("linaddr low bits", lambda b: PagedOut(b.contents, b.pcmd, b.linaddr | 0x8)),
]


@pytest.mark.parametrize("leaf", LOADS, ids=lambda leaf: leaf.name)
@pytest.mark.parametrize(("name", "tamper"), TAMPER_ROWS, ids=[r[0] for r in TAMPER_ROWS])
def test_tampered_blob_fails_the_mac(
    leaf: EnclsLeaf, name: str, tamper: Callable[[PagedOut], PagedOut]
) -> None:
    w = build()
    blob = evict(w, w.data, w.va)
    before = snapshot(w.kit)
    destination = w.cpu.epc.read(w.index(w.data), 0, PAGE_SIZE)
    assert w.kit.eld(
        tamper(blob), w.data, w.va, w.encl.secs_pa, blocked=leaf is EnclsLeaf.ELDB
    ) == (SgxError.SGX_MAC_COMPARE_FAIL)
    # Nothing changed except the kit's scratch copy of the blob: no plaintext reached the page.
    after = snapshot(w.kit)
    assert after[:5] == before[:5]
    assert w.cpu.epc.read(w.index(w.data), 0, PAGE_SIZE) == destination
    assert w.kit.eld(blob, w.data, w.va, w.encl.secs_pa) == 0  # the genuine blob still loads


def test_pcmd_enclaveid_is_not_authenticated() -> None:
    w = build()
    blob = evict(w, w.data, w.va)
    pcmd = bytearray(blob.pcmd)
    pcmd[PCMD_OFF_ENCLAVEID] ^= 0xFF  # software bookkeeping only
    assert (
        w.kit.eld(PagedOut(blob.contents, bytes(pcmd), blob.linaddr), w.data, w.va, w.encl.secs_pa)
        == 0
    )


def test_replay_fails() -> None:
    w = build()
    blob = evict(w, w.data, w.va)
    assert w.kit.eld(blob, w.data, w.va, w.encl.secs_pa) == 0
    assert va_read_slot(w.cpu.epc.page(w.index(w.va)), 0) == 0  # the slot is cleared
    # Evict again to a fresh slot, then replay the first blob at another free page.
    blob2 = evict(w, w.data, w.va + 8)
    dest = w.kit.alloc()
    before = snapshot(w.kit)
    assert w.kit.eld(blob, dest, w.va, w.encl.secs_pa) == SgxError.SGX_MAC_COMPARE_FAIL
    assert w.kit.eld(blob, dest, w.va + 8, w.encl.secs_pa) == SgxError.SGX_MAC_COMPARE_FAIL
    assert snapshot(w.kit)[:5] == before[:5]
    assert w.kit.eld(blob2, dest, w.va + 8, w.encl.secs_pa) == 0


def test_blob_of_one_enclave_cannot_be_loaded_into_another() -> None:
    kit = LeafKit(epc_size=1 << 20)
    a = build(kit)
    b = build(kit, base=BASE + SIZE)
    blob = evict(a, a.data, a.va)
    before = snapshot(kit)
    assert kit.eld(blob, a.data, a.va, b.encl.secs_pa) == SgxError.SGX_MAC_COMPARE_FAIL
    assert snapshot(kit)[:5] == before[:5]
    assert kit.eld(blob, a.data, a.va, a.encl.secs_pa) == 0


# ---------------------------------------------------------------------------------------------
# Round trips


# EPCM states the leaves produce: EADD, EAUG, EMODPR, EMODT(TCS), EMODT(TRIM), accepted trim.
EPCM_STATES = [
    (PageType.PT_REG, RWX, False, False, False),
    (PageType.PT_REG, RW, True, False, False),
    (PageType.PT_REG, 0b001, False, False, True),
    (PageType.PT_REG, 0b101, False, False, True),
    (PageType.PT_TCS, 0, False, True, False),
    (PageType.PT_TRIM, 0, False, True, False),
    (PageType.PT_TRIM, 0, False, False, False),
]


@pytest.mark.parametrize("leaf", LOADS, ids=lambda leaf: leaf.name)
@pytest.mark.parametrize(("pt", "perms", "pending", "modified", "pr"), EPCM_STATES)
def test_round_trip_preserves_contents_and_epcm(
    leaf: EnclsLeaf, pt: PageType, perms: int, pending: bool, modified: bool, pr: bool
) -> None:
    w = build()
    e = w.entry(w.data)
    e.pt, e.perms, e.pending, e.modified, e.pr = pt, perms, pending, modified, pr
    children = w.secs.chldcnt
    blob = evict(w, w.data, w.va + 8 * 7)
    flags = struct.unpack_from("<Q", blob.pcmd, 0)[0]
    assert flags == secinfo_flags(pt, perms) | pending << 3 | modified << 4 | pr << 5
    assert blob.linaddr == DATA_LIN
    dest = w.kit.alloc()  # any free page will do
    w.kit.kmem.write(SRC, blob.contents)
    w.kit.kmem.write(PCMD, blob.pcmd)
    raw_pageinfo(w.kit, blob.linaddr, SRC, PCMD, w.encl.secs_pa)
    assert run_regs(w.kit, leaf, PI, dest, w.va + 8 * 7) == (0, 0, 0)
    assert w.cpu.epc.read(w.index(dest), 0, PAGE_SIZE) == DATA
    e2 = w.entry(dest)
    assert (e2.pt, e2.perms, e2.pending, e2.modified, e2.pr) == (pt, perms, pending, modified, pr)
    assert e2.linaddr == DATA_LIN and e2.secs is w.secs
    assert e2.blocked is (leaf is EnclsLeaf.ELDB)
    assert e2.epoch == TRACKED
    assert w.secs.chldcnt == children
    assert va_read_slot(w.cpu.epc.page(w.index(w.va)), 7) == 0


@pytest.mark.parametrize("page_type", [PageType.PT_TCS, PageType.PT_TRIM])
def test_round_trip_of_tcs_and_trim_pages(page_type: PageType) -> None:
    w = build()
    pa = w.tcs if page_type is PageType.PT_TCS else w.data2
    if page_type is PageType.PT_TRIM:
        e = w.entry(pa)
        e.pt, e.perms, e.modified = PageType.PT_TRIM, 0, True
    content = w.cpu.epc.read(w.index(pa), 0, PAGE_SIZE)
    blob = evict(w, pa, w.va)
    assert struct.unpack_from("<Q", blob.pcmd, 0)[0] >> 8 == page_type
    assert w.kit.eld(blob, pa, w.va, w.encl.secs_pa) == 0
    assert w.entry(pa).pt is page_type
    assert w.cpu.epc.read(w.index(pa), 0, PAGE_SIZE) == content


def test_eldb_page_can_be_written_back_without_a_new_tracking_cycle() -> None:
    w = build()
    blob = evict(w, w.data, w.va)
    assert w.kit.eld(blob, w.data, w.va, w.encl.secs_pa, blocked=True) == 0
    epoch = w.secs.epoch
    code, blob2 = w.kit.ewb(w.data, w.va)  # no EBLOCK, no ETRACK: it never had translations
    assert code == 0 and w.secs.epoch == epoch
    assert w.kit.eld(blob2, w.data, w.va, w.encl.secs_pa) == 0
    assert w.cpu.epc.read(w.index(w.data), 0, PAGE_SIZE) == DATA


def test_edmm_states_survive_eviction_with_the_real_leaves() -> None:
    w = build()
    aug = w.kit.eaug(w.encl, BASE + 0x4000)  # PENDING
    assert w.kit.emodpr(w.encl, DATA2_LIN, 0b001) == 0  # PR, R--
    blob_aug = evict(w, aug, w.va)
    blob_pr = evict(w, w.data2, w.va + 8)
    assert w.kit.eld(blob_aug, aug, w.va, w.encl.secs_pa) == 0
    assert w.kit.eld(blob_pr, w.data2, w.va + 8, w.encl.secs_pa) == 0
    a, p = w.entry(aug), w.entry(w.data2)
    assert (a.pending, a.modified, a.pr, a.perms) == (True, False, False, RW)
    assert (p.pending, p.modified, p.pr, p.perms) == (False, False, True, 0b001)
    assert w.cpu.epc.read(w.index(w.data2), 0, PAGE_SIZE) == DATA2


# ---------------------------------------------------------------------------------------------
# Tracking (spec 6.4)


def test_ewb_with_an_old_thread_inside_is_not_tracked_until_it_leaves() -> None:
    w = build()
    regs = w.kit.eenter(TCS_LIN, lp=0)
    assert w.kit.eblock(w.data) == 0
    assert w.kit.etrack(w.encl) == 0
    before = snapshot(w.kit)
    code, _ = w.kit.ewb(w.data, w.va)
    assert code == SgxError.SGX_NOT_TRACKED
    assert snapshot(w.kit)[:5] == before[:5]
    w.kit.eexit(regs, lp=0)
    code, blob = w.kit.ewb(w.data, w.va)
    assert code == 0
    assert w.kit.eld(blob, w.data, w.va, w.encl.secs_pa) == 0
    assert w.cpu.epc.read(w.index(w.data), 0, PAGE_SIZE) == DATA


def test_ewb_ignores_threads_that_entered_after_the_etrack() -> None:
    w = build()
    assert w.kit.eblock(w.data) == 0
    assert w.kit.etrack(w.encl) == 0
    w.kit.eenter(TCS_LIN, lp=2)
    assert w.kit.ewb(w.data, w.va)[0] == 0


def test_ewb_needs_an_etrack_after_the_eblock() -> None:
    w = build()
    assert w.kit.etrack(w.encl) == 0
    assert w.kit.eblock(w.data) == 0
    assert w.kit.ewb(w.data, w.va)[0] == SgxError.SGX_NOT_TRACKED
    assert w.kit.etrack(w.encl) == 0
    assert w.kit.ewb(w.data, w.va)[0] == 0


# ---------------------------------------------------------------------------------------------
# VA slots


def test_reused_slot_reports_occupied_with_cf_and_orphans_the_old_blob() -> None:
    w = build()
    old = evict(w, w.data, w.va + 8 * 3)
    old_version = va_read_slot(w.cpu.epc.page(w.index(w.va)), 3)
    assert w.kit.eblock(w.data2) == 0
    assert w.kit.etrack(w.encl) == 0
    raw_pageinfo(w.kit, 0, SRC, PCMD, 0)
    assert run_regs(w.kit, EnclsLeaf.EWB, PI, w.data2, w.va + 8 * 3) == (
        SgxError.SGX_VA_SLOT_OCCUPIED,
        0,
        1,
    )
    # The operation completed: the page is out, the slot holds the new version.
    assert w.index(w.data2) not in w.cpu.epcm
    new_version = va_read_slot(w.cpu.epc.page(w.index(w.va)), 3)
    assert new_version not in (0, old_version)
    new = PagedOut(w.kit.kmem.read(SRC, PAGE_SIZE), w.kit.kmem.read(PCMD, 128), DATA2_LIN)
    assert w.kit.eld(old, w.data, w.va + 8 * 3, w.encl.secs_pa) == SgxError.SGX_MAC_COMPARE_FAIL
    assert w.kit.eld(new, w.data2, w.va + 8 * 3, w.encl.secs_pa) == 0
    assert w.cpu.epc.read(w.index(w.data2), 0, PAGE_SIZE) == DATA2


def test_va_page_evicted_into_another_va_page_and_reloaded() -> None:
    w = build()
    blob = evict(w, w.data, w.va + 8 * 5)
    assert run_regs(w.kit, EnclsLeaf.EBLOCK, 0, w.va) == (SgxError.SGX_NOTBLOCKABLE, 0, 1)
    va2 = w.kit.epa()
    code, va_blob = w.kit.ewb(w.va, va2 + 8)  # no EBLOCK/ETRACK for VA pages
    assert code == 0
    pcmd = Pcmd.unpack(va_blob.pcmd)
    assert (pcmd.secinfo.flags, pcmd.enclaveid, va_blob.linaddr) == (PageType.PT_VA << 8, 0, 0)
    assert w.index(w.va) not in w.cpu.epcm
    # While the VA page is out, the page it tracks cannot be loaded.
    expect(pf(w.va + 8 * 5, PF_W), lambda: w.kit.eld(blob, w.data, w.va + 8 * 5, w.encl.secs_pa))
    new_va = w.kit.alloc()
    assert w.kit.eld(va_blob, new_va, va2 + 8, 0, blocked=True) == 0
    e = w.entry(new_va)
    assert (e.pt, e.secs, e.linaddr, e.blocked) == (PageType.PT_VA, None, 0, False)
    assert va_read_slot(w.cpu.epc.page(w.index(va2)), 1) == 0
    assert w.kit.eld(blob, w.data, new_va + 8 * 5, w.encl.secs_pa) == 0
    assert w.cpu.epc.read(w.index(w.data), 0, PAGE_SIZE) == DATA


# ---------------------------------------------------------------------------------------------
# SECS eviction


def _evict_children(w: World, pages: list[int], first_slot: int = 0) -> list[PagedOut]:
    """EBLOCK all, one ETRACK, then EWB each into consecutive slots of the VA page."""
    for pa in pages:
        assert w.kit.eblock(pa) == 0
    assert w.kit.etrack(w.encl) == 0
    blobs = []
    for n, pa in enumerate(pages, first_slot):
        code, blob = w.kit.ewb(pa, w.va + 8 * n)
        assert code == 0
        blobs.append(blob)
    return blobs


def test_secs_eviction_and_reload_preserves_identity_then_children_reload() -> None:
    w = build()
    old = w.secs
    eid, mrenclave, mrsigner, attributes = old.eid, old.mrenclave, old.mrsigner, old.attributes
    assert mrenclave != bytes(32) and attributes & Attribute.INIT
    measurement = old.measurement
    old.epoch = 9  # two ETRACKs below make it 11
    pages = [w.tcs, w.ssa, w.data, w.data2]
    contents = [w.cpu.epc.read(w.index(pa), 0, PAGE_SIZE) for pa in pages]
    blobs = _evict_children(w, pages[:3])
    # One child left: the SECS cannot go.
    assert w.kit.ewb(w.encl.secs_pa, w.va + 8 * 10)[0] == SgxError.SGX_CHILD_PRESENT
    blobs += _evict_children(w, [w.data2], 3)
    assert old.chldcnt == 0
    code, secs_blob = w.kit.ewb(w.encl.secs_pa, w.va + 8 * 10)
    assert code == 0
    pcmd = Pcmd.unpack(secs_blob.pcmd)
    assert (pcmd.secinfo.flags, pcmd.enclaveid, secs_blob.linaddr) == (0, eid, 0)
    assert w.cpu.secs_of(w.index(w.encl.secs_pa)) is None
    assert (eid in w.cpu.parked_measurements) is (measurement is not None)
    # A child cannot be loaded while its SECS is out.
    expect(pf(w.encl.secs_pa, PF_R), lambda: w.kit.eld(blobs[2], w.data, w.va + 16, w.encl.secs_pa))
    # Reload the SECS somewhere else.
    new_secs_pa = w.kit.alloc()
    assert w.kit.eld(secs_blob, new_secs_pa, w.va + 8 * 10) == 0
    new = w.cpu.secs_of(w.index(new_secs_pa))
    assert new is not None and new is not old
    assert (new.eid, new.mrenclave, new.mrsigner, new.attributes) == (
        eid,
        mrenclave,
        mrsigner,
        attributes,
    )
    assert (new.baseaddr, new.size, new.ssaframesize, new.xfrm) == (BASE, SIZE, 1, old.xfrm)
    assert (new.index, new.chldcnt, new.epoch, new.inside) == (w.index(new_secs_pa), 0, 11, {})
    assert new.measurement is measurement
    assert eid not in w.cpu.parked_measurements
    entry = w.entry(new_secs_pa)
    assert (entry.pt, entry.secs, entry.linaddr, entry.blocked) == (PageType.PT_SECS, new, 0, False)
    # The architectural SECS bytes came back; the hidden tail reads as zero again.
    page = w.cpu.epc.read(w.index(new_secs_pa), 0, PAGE_SIZE)
    assert struct.unpack_from("<QQ", page, 0) == (SIZE, BASE)
    assert (page[64:96], page[128:160]) == (mrenclave, mrsigner)
    assert page[SECS_HIDDEN_OFFSET:] == bytes(PAGE_SIZE - SECS_HIDDEN_OFFSET)
    # The children come back under the reloaded SECS, at new EPC pages.
    w.encl.secs_pa = new_secs_pa
    for n, (blob, lin, content) in enumerate(
        zip(blobs, (TCS_LIN, SSA_LIN, DATA_LIN, DATA2_LIN), contents, strict=True)
    ):
        dest = w.kit.alloc()
        assert w.kit.eld(blob, dest, w.va + 8 * n, new_secs_pa) == 0
        assert w.entry(dest).secs is new
        assert w.cpu.epc.read(w.index(dest), 0, PAGE_SIZE) == content
        w.kit.map(w.encl, lin, dest)
    assert new.chldcnt == 4
    # And the enclave runs again.
    regs = w.kit.eenter(TCS_LIN, lp=0)
    assert regs[Reg.RIP] == BASE + 0x2000
    assert new.inside == {0: new.epoch}
    w.kit.eexit(regs, lp=0)


def test_uninitialized_secs_keeps_its_running_measurement_across_eviction() -> None:
    kit = LeafKit(epc_size=1 << 20)
    w = build(kit, init=False)
    ref = build(LeafKit(epc_size=1 << 20), init=False)
    eid = w.secs.eid
    blobs = _evict_children(w, [w.tcs, w.ssa, w.data, w.data2])
    code, secs_blob = kit.ewb(w.encl.secs_pa, w.va + 8 * 9)
    assert code == 0
    assert isinstance(kit.cpu.parked_measurements[eid], MeasurementState)
    new_secs_pa = kit.alloc()
    assert kit.eld(secs_blob, new_secs_pa, w.va + 8 * 9) == 0
    w.encl.secs_pa = new_secs_pa
    for n, blob in enumerate(blobs):
        assert kit.eld(blob, kit.alloc(), w.va + 8 * n, new_secs_pa) == 0
    # Keep building both enclaves identically: the measurements must agree.
    for world in (w, ref):
        world.kit.eadd(world.encl, BASE + 0x5000, b"late page", secinfo_flags(PageType.PT_REG, RW))
    m, r = w.secs.measurement, ref.secs.measurement
    assert m is not None and r is not None
    assert m.final() == r.final() and m.update_counter == r.update_counter


def test_every_hidden_secs_field_travels_with_the_secs() -> None:
    serialized = {name for name, _ in SECS_HIDDEN_FIELDS} - {"parked"}
    assert serialized | SECS_NOT_SERIALIZED == set(SecsState.__slots__)
    assert not serialized & SECS_NOT_SERIALIZED


def test_secs_blob_fails_on_tamper_and_replay() -> None:
    w = build()
    _evict_children(w, [w.tcs, w.ssa, w.data, w.data2])
    code, secs_blob = w.kit.ewb(w.encl.secs_pa, w.va + 8 * 9)
    assert code == 0
    dest = w.kit.alloc()
    bad = PagedOut(_flip(secs_blob.contents, SECS_HIDDEN_OFFSET), secs_blob.pcmd, 0)
    parked = dict(w.cpu.parked_measurements)
    assert w.kit.eld(bad, dest, w.va + 8 * 9) == SgxError.SGX_MAC_COMPARE_FAIL
    assert w.cpu.parked_measurements == parked and w.index(dest) not in w.cpu.epcm
    assert w.kit.eld(secs_blob, dest, w.va + 8 * 9) == 0
    assert w.kit.eld(secs_blob, w.kit.alloc(), w.va + 8 * 9) == SgxError.SGX_MAC_COMPARE_FAIL


# ---------------------------------------------------------------------------------------------
# The paging key belongs to one boot


def _same_blob_setup(kit: LeafKit) -> tuple[World, PagedOut]:
    w = build(kit)
    return w, evict(w, w.data, w.va)


def test_blobs_do_not_survive_a_power_cycle() -> None:
    a = LeafKit(epc_size=1 << 20)
    same_boot = LeafKit(epc_size=1 << 20)
    other_boot = LeafKit(epc_size=1 << 20)
    other_boot.cpu.power_cycle()
    assert other_boot.cpu.base_pk != a.cpu.base_pk == same_boot.cpu.base_pk
    wa, blob = _same_blob_setup(a)
    ws, _ = _same_blob_setup(same_boot)
    wo, _ = _same_blob_setup(other_boot)
    # Same EID, address and version everywhere: only the paging key differs.
    assert wa.secs.eid == ws.secs.eid == wo.secs.eid
    assert a.cpu.paging_version == same_boot.cpu.paging_version == other_boot.cpu.paging_version
    assert same_boot.eld(blob, ws.data, ws.va, ws.encl.secs_pa) == 0
    before = snapshot(other_boot)
    assert other_boot.eld(blob, wo.data, wo.va, wo.encl.secs_pa) == SgxError.SGX_MAC_COMPARE_FAIL
    assert snapshot(other_boot)[:5] == before[:5]


def test_power_cycle_drops_parked_measurements() -> None:
    w = build(init=False)
    _evict_children(w, [w.tcs, w.ssa, w.data, w.data2])
    assert w.kit.ewb(w.encl.secs_pa, w.va + 8 * 9)[0] == 0
    assert w.cpu.parked_measurements
    w.cpu.power_cycle()
    assert not w.cpu.parked_measurements
