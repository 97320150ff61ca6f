"""EAUG: add a zeroed, PENDING page to an initialized enclave (SDM EAUG, spec 3.13)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...arch.constants import PAGE_SIZE, SECINFO_ALIGN, SECINFO_SIZE, EnclsLeaf, PageType
from ..epcm import EpcmEntry
from ..faults import GeneralProtection
from ..leaves import encls_leaf
from ..operands import epc_page, epcm_fault, read_operand, read_pageinfo, require_aligned

if TYPE_CHECKING:
    from ..memory import AddressSpace
    from ..processor import Processor

_RW = 0b011


@encls_leaf(EnclsLeaf.EAUG)
def eaug(cpu: Processor, mem: AddressSpace, rbx: int, rcx: int, rdx: int) -> int:
    require_aligned(rbx, 32)
    require_aligned(rcx, PAGE_SIZE)
    index = epc_page(cpu, mem, rcx, True, False)
    linaddr, srcpge, secinfo, secs_addr = read_pageinfo(cpu, mem, rbx)
    if secinfo:
        require_aligned(secinfo, SECINFO_ALIGN)
    require_aligned(secs_addr, PAGE_SIZE)
    require_aligned(linaddr, PAGE_SIZE)
    if srcpge:
        raise GeneralProtection()
    secs_index = epc_page(cpu, mem, secs_addr, False, False)
    if index in cpu.epcm:
        raise epcm_fault(rcx, write=True)
    if secinfo:
        # Only CET shadow-stack page types may be named; CET is not modelled, so a SECINFO is
        # read (and may fault like any operand) and then always refused [choice].
        read_operand(cpu, mem, secinfo, SECINFO_SIZE, False)
        raise GeneralProtection()
    secs_entry = cpu.epcm.get(secs_index)
    if secs_entry is None or secs_entry.pt is not PageType.PT_SECS:
        raise epcm_fault(secs_addr)
    secs = secs_entry.secs
    assert secs is not None
    if not secs.init:
        raise GeneralProtection()
    if not secs.in_elrange(linaddr):
        raise GeneralProtection()
    cpu.epc.zero(index)
    entry = EpcmEntry(PageType.PT_REG, secs, linaddr, _RW)
    entry.pending = True
    cpu.epcm[index] = entry
    secs.chldcnt += 1
    return 0
