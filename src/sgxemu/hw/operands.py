"""Operand access shared by the leaves: resolve an address to an EPC page, or read memory.

SDM 38.5.3: explicit operands go through paging and raise the normal faults; "does not resolve
within an EPC" raises #PF. Error codes for that last case are not given by the SDM: this model
reports P | SGX (plus W/U as the access is) [choice, docs/hardware-model.md].
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from ..arch.constants import PAGE_MASK, PfErrorCode
from .faults import GeneralProtection, PageFault
from .memory import PTE_ADDR_MASK, PTE_P, PTE_U, PTE_W, AddressSpace, FlatMemory

if TYPE_CHECKING:
    from .processor import Processor

_P = int(PfErrorCode.P)
_W = int(PfErrorCode.W)
_U = int(PfErrorCode.U)
_SGX = int(PfErrorCode.SGX)
_OFFSET_MASK = ~PAGE_MASK


# Bits 63:47 of a canonical 48-bit address: all zeros or all ones (SDM Vol. 1, 3.3.7.1).
CANONICAL_HIGH = (1 << 17) - 1


def canonical(addr: int) -> bool:
    """A canonical linear address; hot paths test `addr >> 47` against CANONICAL_HIGH inline."""
    return addr >> 47 in (0, CANONICAL_HIGH)


def require_aligned(addr: int, alignment: int) -> None:
    """#GP(0) unless `addr` is a multiple of `alignment`."""
    if addr & (alignment - 1):
        raise GeneralProtection()


def walk_fault(lin: int, pte: int, write: bool, user: bool) -> PageFault:
    """The ordinary #PF of a walk that found `pte` lacking P, or the W/U the access needs."""
    code = (_W if write else 0) | (_U if user else 0)
    return PageFault(lin, code | _P if pte & PTE_P else code)


def translate(mem: AddressSpace, lin: int, write: bool, user: bool) -> int:
    """Walk the page tables for an explicit operand: the PTE, or an ordinary #PF."""
    pte = mem.translate(lin)
    if not pte & PTE_P or (write and not pte & PTE_W) or (user and not pte & PTE_U):
        raise walk_fault(lin, pte, write, user)
    return pte


def epc_page(cpu: Processor, mem: AddressSpace, lin: int, write: bool, user: bool) -> int:
    """EPC index of the page an operand names; #PF when it does not resolve within the EPC."""
    epc = cpu.epc
    if type(mem) is FlatMemory and (not user or mem.user):
        # Fast path: a page of the direct map translates to itself with P and W (U when
        # `mem.user`), so the walk below would pass and find PA = the page.
        page = lin & PAGE_MASK
        if mem.direct_lo <= page < mem.direct_hi and epc.base <= page < epc.end:
            return (page - epc.base) >> 12
    pte = mem.translate(lin)
    if not pte & PTE_P or (write and not pte & PTE_W) or (user and not pte & PTE_U):
        raise walk_fault(lin, pte, write, user)  # (`translate` inlined: this walk was it)
    pa = pte & PTE_ADDR_MASK
    if epc.base <= pa < epc.end:
        return (pa - epc.base) >> 12
    raise PageFault(lin, _P | _SGX | (_W if write else 0) | (_U if user else 0))


def read_operand(cpu: Processor, mem: AddressSpace, lin: int, size: int, user: bool) -> bytes:
    """Read a non-enclave operand (PAGEINFO, SECINFO, a source page, SIGSTRUCT, ...).

    Outside enclave mode EPC reads as all ones (abort-page semantics, SDM 38.5.1 / spec 6.2).
    """
    # Hot path: `translate` and `Epc.index` inlined.
    if (
        type(mem) is FlatMemory
        and not mem.overrides
        and (not user or mem.user)
        and not mem.epc_base <= lin < mem.epc_end
        and (lin & _OFFSET_MASK) + size <= 4096
    ):
        # Kernel scratch with no PTE overridden: present (with U when `mem.user`), frame 0,
        # never EPC; the walk below would pass and read exactly this.
        return mem.read(lin, size)
    pte = mem.translate(lin)
    if not pte & PTE_P or (user and not pte & PTE_U):
        raise walk_fault(lin, pte, False, user)
    epc = cpu.epc
    if epc.base <= pte & PTE_ADDR_MASK < epc.end:
        return b"\xff" * size
    if (lin & _OFFSET_MASK) + size > 4096:
        translate(mem, (lin & PAGE_MASK) + 4096, False, user)
    return mem.read(lin, size)


def write_operand(cpu: Processor, mem: AddressSpace, lin: int, data: bytes, user: bool) -> None:
    """Write a non-enclave operand (EWB's page and PCMD, PAGEINFO.LINADDR). EPC writes drop."""
    pte = mem.translate(lin)
    if not pte & PTE_P or not pte & PTE_W or (user and not pte & PTE_U):
        raise walk_fault(lin, pte, True, user)  # (`translate` inlined)
    epc = cpu.epc
    if epc.base <= pte & PTE_ADDR_MASK < epc.end:
        return
    if (lin & _OFFSET_MASK) + len(data) > 4096:
        translate(mem, (lin & PAGE_MASK) + 4096, True, user)
    mem.write(lin, data)


_PAGEINFO = struct.Struct("<4Q")


def read_pageinfo(cpu: Processor, mem: AddressSpace, lin: int) -> tuple[int, int, int, int]:
    """PAGEINFO at `lin`: (LINADDR, SRCPGE, SECINFO or PCMD, SECS)."""
    pageinfo: tuple[int, int, int, int] = _PAGEINFO.unpack(read_operand(cpu, mem, lin, 32, False))
    return pageinfo


def read_u64(data: bytes, offset: int) -> int:
    return int.from_bytes(data[offset : offset + 8], "little")


def epcm_fault(lin: int, write: bool = False, user: bool = False) -> PageFault:
    """The #PF a leaf raises when an operand's EPCM entry is wrong: P | SGX (+ W, U)."""
    return PageFault(lin, _P | _SGX | (_W if write else 0) | (_U if user else 0))
