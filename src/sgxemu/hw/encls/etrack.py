"""ETRACK: start a TLB-tracking cycle on an enclave (SDM ETRACK, spec 3.8 and 6.4)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...arch.constants import EnclsLeaf, PageType, SgxError
from ..faults import GeneralProtection
from ..leaves import encls_leaf
from ..operands import epc_page, epcm_fault

if TYPE_CHECKING:
    from ..memory import AddressSpace
    from ..processor import Processor

_PT_SECS = PageType.PT_SECS


@encls_leaf(EnclsLeaf.ETRACK)
def etrack(cpu: Processor, mem: AddressSpace, rbx: int, rcx: int, rdx: int) -> int:
    if rcx & 0xFFF:  # require_aligned(rcx, PAGE_SIZE), inlined on this hot path
        raise GeneralProtection()
    index = epc_page(cpu, mem, rcx, True, False)
    entry = cpu.epcm.get(index)
    if entry is None or entry.pt is not _PT_SECS:
        raise epcm_fault(rcx, write=True)
    secs = entry.secs
    assert secs is not None
    if secs.tracking_in_progress():
        return SgxError.SGX_PREV_TRK_INCMPL
    secs.epoch += 1
    return 0
