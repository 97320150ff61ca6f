"""EREMOVE: free an EPC page (SDM EREMOVE, spec 3.5)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...arch.constants import PAGE_SIZE, EnclsLeaf, PageType, SgxError
from ..leaves import encls_leaf
from ..operands import epc_page, require_aligned

if TYPE_CHECKING:
    from ..memory import AddressSpace
    from ..processor import Processor


@encls_leaf(EnclsLeaf.EREMOVE)
def eremove(cpu: Processor, mem: AddressSpace, rbx: int, rcx: int, rdx: int) -> int:
    require_aligned(rcx, PAGE_SIZE)
    index = epc_page(cpu, mem, rcx, True, False)
    entry = cpu.epcm.get(index)
    if entry is None:
        return 0  # already free: success (Linux's EPC sanitization relies on it)
    pt = entry.pt
    secs = entry.secs
    if pt is PageType.PT_VA:
        free_page(cpu, index)
        return 0
    assert secs is not None
    # An accepted trim skips the activity check (the SDM text's jump to DONE omits the freeing).
    if not (pt is PageType.PT_TRIM and not entry.modified):
        if pt is PageType.PT_SECS:
            if secs.chldcnt:
                return SgxError.SGX_CHILD_PRESENT
            free_page(cpu, index)
            return 0
        if secs.inside:
            return SgxError.SGX_ENCLAVE_ACT
    free_page(cpu, index)
    secs.chldcnt -= 1
    return 0


def free_page(cpu: Processor, index: int) -> None:
    """VALID := 0; the contents go too (an emulator may scrub freed pages, spec 11)."""
    cpu.free_epc_page(index)
