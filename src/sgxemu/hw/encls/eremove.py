"""EREMOVE: free an EPC page (SDM EREMOVE, spec 3.5)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...arch.constants import PAGE_SIZE, EnclsLeaf, PageType, SgxError
from ..faults import GeneralProtection
from ..leaves import encls_leaf
from ..operands import epc_page

if TYPE_CHECKING:
    from ..memory import AddressSpace
    from ..processor import Processor


# Plain module constants: enum class attribute lookups are slow on this hot path.
_PT_VA = PageType.PT_VA
_PT_TRIM = PageType.PT_TRIM
_PT_SECS = PageType.PT_SECS
_CHILD_PRESENT = SgxError.SGX_CHILD_PRESENT
_ENCLAVE_ACT = SgxError.SGX_ENCLAVE_ACT


@encls_leaf(EnclsLeaf.EREMOVE)
def eremove(cpu: Processor, mem: AddressSpace, rbx: int, rcx: int, rdx: int) -> int:
    if rcx & (PAGE_SIZE - 1):  # require_aligned
        raise GeneralProtection()
    index = epc_page(cpu, mem, rcx, True, False)
    entry = cpu.epcm.get(index)
    if entry is None:
        return 0  # already free: success (Linux's EPC sanitization relies on it)
    pt = entry.pt
    secs = entry.secs
    if pt is _PT_VA:
        cpu.free_epc_page(index)
        return 0
    assert secs is not None
    # An accepted trim skips the activity check (the SDM text's jump to DONE omits the freeing).
    if not (pt is _PT_TRIM and not entry.modified):
        if pt is _PT_SECS:
            if secs.chldcnt:
                return _CHILD_PRESENT
            cpu.free_epc_page(index)
            return 0
        if secs.inside:
            return _ENCLAVE_ACT
    cpu.free_epc_page(index)
    secs.chldcnt -= 1
    return 0


def free_page(cpu: Processor, index: int) -> None:
    """VALID := 0; the contents go too (an emulator may scrub freed pages, spec 11)."""
    cpu.free_epc_page(index)
