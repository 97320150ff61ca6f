"""EAUG: add a zeroed, PENDING page to an initialized enclave (SDM EAUG, spec 3.13)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...arch.constants import SECINFO_SIZE, Attribute, EnclsLeaf, PageType
from ..epcm import PENDING, EpcmEntry, insert_at_free_index
from ..faults import GeneralProtection
from ..leaves import encls_leaf
from ..operands import epc_page, epcm_fault, read_operand, read_pageinfo

if TYPE_CHECKING:
    from ..memory import AddressSpace
    from ..processor import Processor

_RW = 0b011
# Plain module constants: enum class attribute lookups and IntFlag arithmetic are slow here.
_PT_REG = PageType.PT_REG
_PT_SECS = PageType.PT_SECS
_INIT = int(Attribute.INIT)


@encls_leaf(EnclsLeaf.EAUG)
def eaug(cpu: Processor, mem: AddressSpace, rbx: int, rcx: int, rdx: int) -> int:
    # Hot path: each `if x & (alignment - 1): raise GeneralProtection()` is require_aligned.
    if rbx & 31:
        raise GeneralProtection()
    if rcx & 0xFFF:
        raise GeneralProtection()
    index = epc_page(cpu, mem, rcx, True, False)
    linaddr, srcpge, secinfo, secs_addr = read_pageinfo(cpu, mem, rbx)
    if secinfo & 63:  # SECINFO_ALIGN (an absent SECINFO, 0, is aligned)
        raise GeneralProtection()
    if secs_addr & 0xFFF:
        raise GeneralProtection()
    if linaddr & 0xFFF:
        raise GeneralProtection()
    if srcpge:
        raise GeneralProtection()
    secs_index = epc_page(cpu, mem, secs_addr, False, False)
    epcm = cpu.epcm
    if index in epcm:
        raise epcm_fault(rcx, write=True)
    if secinfo:
        # Only CET shadow-stack page types may be named; CET is not modelled, so a SECINFO is
        # read (and may fault like any operand) and then always refused [choice].
        read_operand(cpu, mem, secinfo, SECINFO_SIZE, False)
        raise GeneralProtection()
    secs_entry = epcm.get(secs_index)
    if secs_entry is None or secs_entry.pt is not _PT_SECS:
        raise epcm_fault(secs_addr)
    secs = secs_entry.secs
    assert secs is not None
    if not secs.attributes & _INIT:  # secs.init
        raise GeneralProtection()
    if not secs.baseaddr <= linaddr < secs.baseaddr + secs.size:  # secs.in_elrange(linaddr)
        raise GeneralProtection()
    cpu.epc.zero(index)
    entry = EpcmEntry(_PT_REG, secs, linaddr, _RW, PENDING)
    insert_at_free_index(epcm, index, entry)
    secs.chldcnt += 1
    return 0
