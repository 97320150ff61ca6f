"""EEXTEND: measure 256 bytes of an enclave page into MRENCLAVE (SDM EEXTEND)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...arch.constants import EEXTEND_CHUNK, PAGE_SIZE, EnclsLeaf, PageType
from ..faults import GeneralProtection
from ..leaves import encls_leaf
from ..operands import epc_page, epcm_fault, require_aligned

if TYPE_CHECKING:
    from ..memory import AddressSpace
    from ..processor import Processor

_MEASURABLE = (PageType.PT_REG, PageType.PT_TCS)


@encls_leaf(EnclsLeaf.EEXTEND)
def eextend(cpu: Processor, mem: AddressSpace, rbx: int, rcx: int, rdx: int) -> int:
    require_aligned(rbx, PAGE_SIZE)
    secs_index = epc_page(cpu, mem, rbx, False, False)
    require_aligned(rcx, EEXTEND_CHUNK)
    index = epc_page(cpu, mem, rcx, False, False)
    entry = cpu.epcm.get(index)
    if entry is None or entry.pt not in _MEASURABLE:
        raise epcm_fault(rcx)
    secs = entry.secs
    if secs is None or secs.index != secs_index:
        raise GeneralProtection()  # RBX is not the SECS of the page
    if secs.init:
        raise GeneralProtection()
    offset = entry.linaddr - secs.baseaddr + (rcx & (PAGE_SIZE - 1))
    assert secs.measurement is not None
    secs.measurement.eextend(offset, cpu.epc.read(index, rcx & (PAGE_SIZE - 1), EEXTEND_CHUNK))
    return 0
