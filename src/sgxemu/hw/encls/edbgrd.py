"""EDBGRD: read a quadword of a debug enclave (or a VA slot's emptiness) into RBX (SDM EDBGRD, spec 3.6)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...arch.constants import PAGE_SIZE, EnclsLeaf, PageType, SgxError
from ..faults import GeneralProtection
from ..leaves import encls_leaf
from .edbg import QWORD, debug_target

if TYPE_CHECKING:
    from ..memory import AddressSpace
    from ..processor import Processor

_READABLE = (PageType.PT_REG, PageType.PT_TCS, PageType.PT_VA)
# [choice] SGX_TCS_LIMIT: the architectural TCS without CET ends after GSLIMIT, at byte 72.
SGX_TCS_LIMIT = 72
_ALL_ONES = (1 << 64) - 1


@encls_leaf(EnclsLeaf.EDBGRD)
def edbgrd(cpu: Processor, mem: AddressSpace, rbx: int, rcx: int, rdx: int) -> int:
    target = debug_target(cpu, mem, rcx, _READABLE, write=False)
    if isinstance(target, SgxError):
        return target
    index, entry = target
    offset = rcx & (PAGE_SIZE - 1)
    if entry.pt is PageType.PT_TCS and offset >= SGX_TCS_LIMIT:
        raise GeneralProtection()
    value = int.from_bytes(cpu.epc.read(index, offset, QWORD), "little")
    if entry.pt is PageType.PT_VA:
        value = _ALL_ONES if value & ~0x7 else 0  # a slot's version never leaks
    else:
        secs = entry.secs
        assert secs is not None
        if not secs.debug:
            raise GeneralProtection()
    cpu.encls_rbx = value
    return 0
