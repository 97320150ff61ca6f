"""EBLOCK: mark an enclave page BLOCKED ahead of eviction (SDM EBLOCK, spec 3.7)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...arch.constants import PAGE_SIZE, EnclsLeaf, PageType, SgxError
from ..leaves import encls_leaf
from ..operands import epc_page, require_aligned

if TYPE_CHECKING:
    from ..memory import AddressSpace
    from ..processor import Processor

_BLOCKABLE = (PageType.PT_REG, PageType.PT_TCS, PageType.PT_TRIM)


@encls_leaf(EnclsLeaf.EBLOCK)
def eblock(cpu: Processor, mem: AddressSpace, rbx: int, rcx: int, rdx: int) -> int:
    require_aligned(rcx, PAGE_SIZE)
    index = epc_page(cpu, mem, rcx, True, False)
    # Flags and RAX are cleared here; SGX_EPC_PAGE_CONFLICT needs a concurrent leaf (none).
    entry = cpu.epcm.get(index)
    if entry is None:
        return SgxError.SGX_PG_INVLD
    if entry.pt not in _BLOCKABLE:
        if entry.pt is PageType.PT_SECS:
            return SgxError.SGX_PG_IS_SECS
        return SgxError.SGX_NOTBLOCKABLE
    if entry.blocked:
        return SgxError.SGX_BLKSTATE  # informational (CF): the page stays blocked
    secs = entry.secs
    assert secs is not None
    entry.blocked = True
    entry.epoch = secs.epoch  # the tracking reference EWB checks [model, spec 6.4]
    return 0
