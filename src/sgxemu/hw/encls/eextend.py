"""EEXTEND: measure 256 bytes of an enclave page into MRENCLAVE (SDM EEXTEND)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...arch.constants import EnclsLeaf, PageType
from ..faults import GeneralProtection
from ..leaves import encls_leaf
from ..operands import epc_page, epcm_fault

if TYPE_CHECKING:
    from ..memory import AddressSpace
    from ..processor import Processor

_PT_REG = PageType.PT_REG
_PT_TCS = PageType.PT_TCS


@encls_leaf(EnclsLeaf.EEXTEND)
def eextend(cpu: Processor, mem: AddressSpace, rbx: int, rcx: int, rdx: int) -> int:
    # A hot path (16 calls per measured page): alignment checks are inlined.
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
    if measurement is None or secs.init:
        raise GeneralProtection()
    off = rcx & 0xFFF
    measurement.eextend(entry.linaddr - secs.baseaddr + off, cpu.epc.read(index, off, 256))
    return 0
