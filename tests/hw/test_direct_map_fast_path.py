"""The leaves' fast path through the kernel's direct map gives exactly what the page walk gives.

`operands.epc_page`, EEXTEND and EADD skip `translate` for a page in a `FlatMemory`'s direct map
(the identity-mapped EPC, no page of it overridden), and `operands.read_operand` skips it for
kernel scratch while no page at all is overridden. Each case here runs the same leaves twice
on identical machines: through the kit's `FlatMemory` (fast path), and through a wrapper that
is not a `FlatMemory` (every operand walked). Pages of the direct map are overridden in every
way that matters (not present, read-only, user, remapped inside and outside the EPC), and the
outcome (RAX or the exact fault, MRENCLAVE, EPCM) must be the same.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from sgxemu.arch.constants import PAGE_SIZE, EnclsLeaf, PageType, secinfo_flags
from sgxemu.hw.faults import SgxFault
from sgxemu.hw.memory import PTE_P, PTE_U, PTE_W, FlatMemory
from sgxemu.hw.processor import Processor
from sgxemu.leafkit import Enclave, LeafKit

BASE, SIZE = 0x1000_0000, 0x1_0000
REG_RW = secinfo_flags(PageType.PT_REG, 3)
NONEPC_FRAME = 0x7000


class Walked:
    """The same address space behind a type that is not `FlatMemory`: every operand is walked."""

    def __init__(self, inner: FlatMemory) -> None:
        self.inner = inner

    def translate(self, lin: int) -> int:
        return self.inner.translate(lin)

    def read(self, lin: int, size: int) -> bytes:
        return self.inner.read(lin, size)

    def write(self, lin: int, data: bytes) -> None:
        self.inner.write(lin, data)

    def set_pte(self, lin: int, pte: int | None) -> None:
        self.inner.set_pte(lin, pte)


class Machine:
    """A kit with one uninitialized enclave (its SECS and one data page) and two free pages."""

    def __init__(self, walked: bool) -> None:
        self.kit = LeafKit(Processor(epc_size=1 << 20, cpus=1))
        self.flat = self.kit.kmem
        self.encl: Enclave = self.kit.ecreate(BASE, SIZE)
        self.secs_pa = self.encl.secs_pa
        self.data_pa = self.kit.eadd(self.encl, BASE, b"\x5a" * PAGE_SIZE, REG_RW, measure=False)
        self.free_pa = self.kit.alloc()
        self.other_free_pa = self.kit.alloc()
        if walked:
            self.kit.kmem = Walked(self.flat)  # type: ignore[assignment]

    def outcome(self, op: Callable[[Machine], int]) -> tuple[Any, ...]:
        cpu = self.kit.cpu
        try:
            result: tuple[Any, ...] = ("rax", op(self))
        except SgxFault as fault:
            result = ("fault", type(fault).__name__, hex(fault.addr), hex(fault.error_code))
        secs = cpu.secs_of(cpu.epc.index(self.encl.secs_pa))
        assert secs is not None and secs.measurement is not None
        epcm = sorted((i, repr(e)) for i, e in cpu.epcm.items())
        return result, secs.measurement.final(), secs.measurement.update_counter, epcm


def _eextend(rbx: str, rcx: str, off: int = 0x100) -> Callable[[Machine], int]:
    def op(m: Machine) -> int:
        return m.kit.encls(EnclsLeaf.EEXTEND, getattr(m, rbx), getattr(m, rcx) + off)

    return op


def _eadd(rcx: str) -> Callable[[Machine], int]:
    def op(m: Machine) -> int:
        kit = m.kit
        kit.kmem.write(0x2000, b"\x11" * PAGE_SIZE)
        info = kit.pageinfo(BASE + PAGE_SIZE, 0x2000, kit.secinfo(REG_RW), m.encl.secs_pa)
        return kit.encls(EnclsLeaf.EADD, info, getattr(m, rcx))

    return op


def _eremove(rcx: str) -> Callable[[Machine], int]:
    def op(m: Machine) -> int:
        return m.kit.encls(EnclsLeaf.EREMOVE, 0, getattr(m, rcx))

    return op


OPS: dict[str, Callable[[Machine], int]] = {
    "eextend": _eextend("secs_pa", "data_pa"),
    "eextend-unaligned-rcx": _eextend("secs_pa", "data_pa", 0x80),
    "eextend-rbx-not-secs": _eextend("data_pa", "data_pa"),
    "eextend-free-page": _eextend("secs_pa", "free_pa"),
    "eadd": _eadd("free_pa"),
    "eadd-onto-valid-page": _eadd("data_pa"),
    "eremove": _eremove("data_pa"),
}


# Which page gets which kernel PTE before the operation (None: no override at all).
OVERRIDES: dict[str, Callable[[Machine], tuple[int, int] | None]] = {
    "none": lambda m: None,
    "secs-not-present": lambda m: (m.secs_pa, 0),
    "secs-read-only": lambda m: (m.secs_pa, m.secs_pa | PTE_P),
    "data-not-present": lambda m: (m.data_pa, 0),
    "data-read-only": lambda m: (m.data_pa, m.data_pa | PTE_P),
    "data-user": lambda m: (m.data_pa, m.data_pa | PTE_P | PTE_W | PTE_U),
    "data-to-secs": lambda m: (m.data_pa, m.secs_pa | PTE_P | PTE_W),
    "data-outside-epc": lambda m: (m.data_pa, NONEPC_FRAME | PTE_P | PTE_W),
    "free-not-present": lambda m: (m.free_pa, 0),
    "free-read-only": lambda m: (m.free_pa, m.free_pa | PTE_P),
    "free-to-data": lambda m: (m.free_pa, m.data_pa | PTE_P | PTE_W),
    "free-outside-epc": lambda m: (m.free_pa, NONEPC_FRAME | PTE_P | PTE_W),
    "unrelated-epc-page": lambda m: (m.other_free_pa, 0),
    "unrelated-non-epc-page": lambda m: (0x30_0000, 0),
    "eadd-source-not-present": lambda m: (0x2000, 0),
    "eadd-source-user-only": lambda m: (0x2000, PTE_P | PTE_W | PTE_U),
    "eadd-source-is-epc": lambda m: (0x2000, m.data_pa | PTE_P | PTE_W),
}


@pytest.mark.parametrize("override", OVERRIDES, ids=list(OVERRIDES))
@pytest.mark.parametrize("op", OPS, ids=list(OPS))
def test_fast_path_matches_the_walk(op: str, override: str) -> None:
    outcomes = []
    for walked in (False, True):
        m = Machine(walked)
        pte = OVERRIDES[override](m)
        if pte is not None:
            m.flat.set_pte(*pte)
        outcomes.append(m.outcome(OPS[op]))
    assert outcomes[0] == outcomes[1]


def test_fast_path_matches_the_walk_after_an_override_is_removed() -> None:
    outcomes = []
    for walked in (False, True):
        m = Machine(walked)
        m.flat.set_pte(m.data_pa, 0)
        m.flat.set_pte(m.data_pa, 0)  # twice: still one override
        m.flat.set_pte(m.data_pa, None)
        m.flat.set_pte(m.data_pa, None)
        outcomes.append(m.outcome(OPS["eextend"]))
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][0] == ("rax", 0)


def test_direct_range_tracks_overrides() -> None:
    mem = FlatMemory(0x8000_0000_0000, 0x8000_0010_0000, user=False)
    assert (mem.direct_lo, mem.direct_hi) == (0x8000_0000_0000, 0x8000_0010_0000)
    mem.set_pte(0x1000, 0)  # outside the EPC: the direct map is intact
    assert (mem.direct_lo, mem.direct_hi) == (0x8000_0000_0000, 0x8000_0010_0000)
    mem.set_pte(0x8000_0000_2000, 0)
    mem.set_pte(0x8000_0000_3000, 0)
    assert mem.direct_lo == mem.direct_hi  # empty
    mem.set_pte(0x8000_0000_2000, None)
    assert mem.direct_lo == mem.direct_hi
    mem.set_pte(0x8000_0000_3fff, None)  # any address in the page
    assert (mem.direct_lo, mem.direct_hi) == (0x8000_0000_0000, 0x8000_0010_0000)
    assert not mem.user and FlatMemory(0, 0x1000).user
    # A range a PTE cannot name (frames stop at 2^52) or not page aligned: no fast path.
    assert FlatMemory(1 << 52, (1 << 52) + 0x1000).direct_hi == 0
    assert FlatMemory(0x1800, 0x4000).direct_hi == 0


@pytest.mark.parametrize("shift", [-0x2000, 0x2000])
def test_direct_map_wider_than_the_epc(shift: int) -> None:
    """A kernel direct map that extends past the processor's EPC: #PF(P|SGX) there, as walked."""
    outcomes = []
    for walked in (False, True):
        m = Machine(walked)
        epc = m.kit.cpu.epc
        mem = FlatMemory(epc.base - 0x4000, epc.end + 0x4000, user=False)
        m.flat = mem
        m.kit.kmem = Walked(mem) if walked else mem  # type: ignore[assignment]
        outside = (epc.base if shift < 0 else epc.end - PAGE_SIZE) + shift
        outcomes.append(
            (
                m.outcome(lambda m, at=outside: m.kit.encls(EnclsLeaf.EEXTEND, at, m.data_pa)),
                m.outcome(lambda m, at=outside: m.kit.encls(EnclsLeaf.EEXTEND, m.secs_pa, at)),
                m.outcome(lambda m, at=outside: m.kit.encls(EnclsLeaf.EREMOVE, 0, at)),
            )
        )
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][0][0] == ("fault", "PageFault", hex(outside), "0x8001")
    assert outcomes[0][1][0] == ("fault", "PageFault", hex(outside), "0x8001")


# The kernel's 16-EEXTEND loop (`encls_eextend_page`) against 16 single leaves, walked.
def _page_once(rbx: str, rcx: str) -> Callable[[Machine], int]:
    def op(m: Machine) -> int:
        m.kit.cpu.encls_eextend_page(getattr(m, rbx), getattr(m, rcx), mem=m.kit.kmem)
        return 0

    return op


def _page_by_leaves(rbx: str, rcx: str) -> Callable[[Machine], int]:
    def op(m: Machine) -> int:
        for off in range(0, PAGE_SIZE, 256):
            assert m.kit.encls(EnclsLeaf.EEXTEND, getattr(m, rbx), getattr(m, rcx) + off) == 0
        return 0

    return op


PAGE_OPERANDS = [("secs_pa", "data_pa"), ("data_pa", "data_pa"), ("secs_pa", "free_pa")]


@pytest.mark.parametrize("override", OVERRIDES, ids=list(OVERRIDES))
@pytest.mark.parametrize("operands", PAGE_OPERANDS, ids=["-".join(o) for o in PAGE_OPERANDS])
def test_eextend_page_matches_sixteen_leaves(override: str, operands: tuple[str, str]) -> None:
    outcomes = []
    for walked, op in ((False, _page_once(*operands)), (True, _page_by_leaves(*operands))):
        m = Machine(walked)
        pte = OVERRIDES[override](m)
        if pte is not None:
            m.flat.set_pte(*pte)
        outcomes.append((m.outcome(op), m.kit.cpu.encls_count[EnclsLeaf.EEXTEND]))
    assert outcomes[0] == outcomes[1]


@pytest.mark.parametrize("offset", [0x0, 0xF000, 0x1234_5000, 0xFFFF_F000])
def test_eextend_page_hashes_like_sixteen_leaves_at_any_offset(offset: int) -> None:
    """Chunk k's header differs from chunk 0's in offset bits 11:8 only; check high offsets."""
    digests = []
    for by_leaves in (False, True):
        kit = LeafKit(Processor(epc_size=1 << 20, cpus=1))
        encl = kit.ecreate(0x1_0000_0000, 1 << 32)
        data = bytes((i * 13 + 7) & 0xFF for i in range(PAGE_SIZE))
        pa = kit.eadd(encl, encl.base + offset, data, REG_RW, measure=False)
        if by_leaves:
            for off in range(0, PAGE_SIZE, 256):
                assert kit.encls(EnclsLeaf.EEXTEND, encl.secs_pa, pa + off) == 0
        else:
            kit.cpu.encls_eextend_page(encl.secs_pa, pa, mem=kit.kmem)
        secs = kit.cpu.secs_of(kit.cpu.epc.index(encl.secs_pa))
        assert secs is not None and secs.measurement is not None
        digests.append((secs.measurement.final(), secs.measurement.update_counter))
    assert digests[0] == digests[1]
    assert digests[0][1] == 1 + 1 + 16 * 5  # ECREATE, EADD, 16 x (header + 4 data blocks)
