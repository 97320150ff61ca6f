"""Checks EDBGRD and EDBGWR share, up to the PENDING/MODIFIED error (SDM EDBGRD/EDBGWR, spec 3.6)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...arch.constants import SgxError
from ..operands import epc_page, epcm_fault, require_aligned

if TYPE_CHECKING:
    from ...arch.constants import PageType
    from ..epcm import EpcmEntry
    from ..memory import AddressSpace
    from ..processor import Processor

# [choice] ENCLS always runs in 64-bit mode here: 8-byte aligned quadwords, never 4-byte dwords.
QWORD = 8


def debug_target(
    cpu: Processor, mem: AddressSpace, rcx: int, allowed: tuple[PageType, ...], write: bool
) -> tuple[int, EpcmEntry] | SgxError:
    """(EPC index, EPCM entry) of the quadword at RCX, or SGX_PAGE_NOT_DEBUGGABLE; faults otherwise."""
    require_aligned(rcx, QWORD)
    index = epc_page(cpu, mem, rcx, write, False)
    entry = cpu.epcm.get(index)
    if entry is None or entry.pt not in allowed:
        raise epcm_fault(rcx, write=write)
    if entry.pending or entry.modified:
        return SgxError.SGX_PAGE_NOT_DEBUGGABLE
    return index, entry
