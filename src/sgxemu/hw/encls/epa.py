"""EPA: make an EPC page a Version Array page (SDM EPA)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...arch.constants import PAGE_SIZE, EnclsLeaf, PageType
from ..epcm import EpcmEntry, insert_at_free_index
from ..faults import GeneralProtection
from ..leaves import encls_leaf
from ..operands import epc_page, epcm_fault, require_aligned

if TYPE_CHECKING:
    from ..memory import AddressSpace
    from ..processor import Processor


@encls_leaf(EnclsLeaf.EPA)
def epa(cpu: Processor, mem: AddressSpace, rbx: int, rcx: int, rdx: int) -> int:
    if rbx != PageType.PT_VA:
        raise GeneralProtection()
    require_aligned(rcx, PAGE_SIZE)
    index = epc_page(cpu, mem, rcx, True, False)
    if index in cpu.epcm:
        raise epcm_fault(rcx, write=True)
    cpu.epc.zero(index)  # all 512 slots empty
    insert_at_free_index(cpu.epcm, index, EpcmEntry(PageType.PT_VA, None))
    return 0
