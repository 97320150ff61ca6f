"""EEXTEND: measure 256 bytes of an enclave page into MRENCLAVE (SDM EEXTEND)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...arch.constants import PAGE_MASK, Attribute, EnclsLeaf, PageType
from ..faults import GeneralProtection
from ..leaves import encls_leaf
from ..memory import FlatMemory
from ..operands import epc_page, epcm_fault

if TYPE_CHECKING:
    from ..memory import AddressSpace
    from ..processor import Processor

_PT_REG = PageType.PT_REG
_PT_TCS = PageType.PT_TCS
_INIT = int(Attribute.INIT)


@encls_leaf(EnclsLeaf.EEXTEND)
def eextend(cpu: Processor, mem: AddressSpace, rbx: int, rcx: int, rdx: int) -> int:
    # A hot path (16 calls per measured page, issued by the kernel through its direct map).
    epc = cpu.epc
    base = epc.base
    page = rcx & PAGE_MASK
    if (
        type(mem) is FlatMemory
        and not rbx & 0xFFF
        and not rcx & 0xFF
        and mem.direct_lo <= rbx < mem.direct_hi
        and mem.direct_lo <= page < mem.direct_hi
        and base <= rbx < epc.end
        and base <= page < epc.end
    ):
        # Both operands are aligned EPC pages of the direct map: `epc_page` would return these.
        secs_index = (rbx - base) >> 12
        index = (page - base) >> 12
    else:
        # The checks in SDM order, each raising its fault.
        if rbx & 0xFFF:
            raise GeneralProtection()
        secs_index = epc_page(cpu, mem, rbx, False, False)
        if rcx & 0xFF:
            raise GeneralProtection()
        index = epc_page(cpu, mem, rcx, False, False)
    entry = cpu.epcm.get(index)
    if entry is None or (entry.pt is not _PT_REG and entry.pt is not _PT_TCS):
        raise epcm_fault(rcx)
    secs = entry.secs
    if secs is None or secs.index != secs_index:
        raise GeneralProtection()  # RBX is not the SECS of the page
    measurement = secs.measurement
    if measurement is None or secs.attributes & _INIT:  # secs.init
        raise GeneralProtection()
    off = rcx & 0xFFF
    start = (index << 12) + off
    chunk = epc.buffer[start : start + 256]  # epc.read(index, off, 256)
    # The offset is within ELRANGE and 256-byte aligned (the page's LINADDR is page aligned).
    measurement.eextend_checked(entry.linaddr - secs.baseaddr + off, chunk)
    return 0
