"""EBLOCK: mark an enclave page BLOCKED ahead of eviction (SDM EBLOCK, spec 3.7)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...arch.constants import EnclsLeaf, PageType, SgxError
from ..epcm import BLOCKED
from ..faults import GeneralProtection
from ..leaves import encls_leaf
from ..operands import epc_page

if TYPE_CHECKING:
    from ..memory import AddressSpace
    from ..processor import Processor

_BLOCKABLE = frozenset({PageType.PT_REG, PageType.PT_TCS, PageType.PT_TRIM})
_PT_SECS = PageType.PT_SECS


@encls_leaf(EnclsLeaf.EBLOCK)
def eblock(cpu: Processor, mem: AddressSpace, rbx: int, rcx: int, rdx: int) -> int:
    if rcx & 0xFFF:  # require_aligned(rcx, PAGE_SIZE), inlined on this hot path
        raise GeneralProtection()
    index = epc_page(cpu, mem, rcx, True, False)
    # Flags and RAX are cleared here; SGX_EPC_PAGE_CONFLICT needs a concurrent leaf (none).
    entry = cpu.epcm.get(index)
    if entry is None:
        return SgxError.SGX_PG_INVLD
    if entry.pt not in _BLOCKABLE:
        if entry.pt is _PT_SECS:
            return SgxError.SGX_PG_IS_SECS
        return SgxError.SGX_NOTBLOCKABLE
    if entry.state & BLOCKED:
        return SgxError.SGX_BLKSTATE  # informational (CF): the page stays blocked
    secs = entry.secs
    assert secs is not None
    entry.state |= BLOCKED
    entry.epoch = secs.epoch  # the tracking reference EWB checks [model, spec 6.4]
    return 0
