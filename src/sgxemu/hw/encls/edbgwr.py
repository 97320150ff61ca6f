"""EDBGWR: write RBX as a quadword into a debug enclave (SDM EDBGWR, spec 3.6)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...arch.constants import PAGE_SIZE, EnclsLeaf, PageType, SgxError
from ...arch.structs import TCS_OFF_FLAGS
from ..faults import GeneralProtection
from ..leaves import encls_leaf
from .edbg import QWORD, debug_target

if TYPE_CHECKING:
    from ..memory import AddressSpace
    from ..processor import Processor

_WRITABLE = (PageType.PT_REG, PageType.PT_TCS)


@encls_leaf(EnclsLeaf.EDBGWR)
def edbgwr(cpu: Processor, mem: AddressSpace, rbx: int, rcx: int, rdx: int) -> int:
    target = debug_target(cpu, mem, rcx, _WRITABLE, write=True)
    if isinstance(target, SgxError):
        return target
    index, entry = target
    offset = rcx & (PAGE_SIZE - 1)
    if entry.pt is PageType.PT_TCS and offset & 0xFF8 != TCS_OFF_FLAGS:
        raise GeneralProtection()  # only TCS.FLAGS may be written
    secs = entry.secs
    assert secs is not None
    if not secs.debug:
        raise GeneralProtection()
    cpu.epc.write(index, offset, (rbx & ((1 << 64) - 1)).to_bytes(QWORD, "little"))
    return 0
