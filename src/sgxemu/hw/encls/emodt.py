"""EMODT: change an enclave page's type to TCS or TRIM (SDM EMODT, spec 3.15)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...arch.constants import (
    SECINFO_FLAGS_RESERVED_MASK,
    SECINFO_PAGE_TYPE_SHIFT,
    SECINFO_SIZE,
    Attribute,
    EnclsLeaf,
    PageType,
    SgxError,
)
from ..epcm import MODIFIED, PENDING, PR
from ..faults import GeneralProtection
from ..leaves import encls_leaf
from ..operands import epc_page, epcm_fault, read_operand

if TYPE_CHECKING:
    from ..memory import AddressSpace
    from ..processor import Processor

_NEW_TYPES = frozenset({PageType.PT_TCS, PageType.PT_TRIM})
# Plain module constants: enum class attribute lookups and IntFlag arithmetic are slow.
_PT_REG = PageType.PT_REG
_PT_TCS = PageType.PT_TCS
_PT_TRIM = PageType.PT_TRIM
_PAGE_TYPES = {int(t): t for t in PageType}
_INIT = int(Attribute.INIT)
_SECINFO_RESERVED_BYTES = SECINFO_SIZE - 8


@encls_leaf(EnclsLeaf.EMODT)
def emodt(cpu: Processor, mem: AddressSpace, rbx: int, rcx: int, rdx: int) -> int:
    # Each `if x & (alignment - 1): raise GeneralProtection()` is require_aligned.
    if rbx & 63:  # SECINFO_ALIGN
        raise GeneralProtection()
    if rcx & 0xFFF:
        raise GeneralProtection()
    # [choice] The target is probed as a write (its #PF codes carry W), as EADD and EREMOVE do.
    index = epc_page(cpu, mem, rcx, True, False)
    raw = read_operand(cpu, mem, rbx, SECINFO_SIZE, False)
    flags = int.from_bytes(raw[:8], "little")
    new_pt = (flags >> SECINFO_PAGE_TYPE_SHIFT) & 0xFF
    if flags & SECINFO_FLAGS_RESERVED_MASK or raw.count(0, 8) != _SECINFO_RESERVED_BYTES:
        raise GeneralProtection()
    if new_pt not in _NEW_TYPES:
        raise GeneralProtection()
    entry = cpu.epcm.get(index)
    if entry is None:
        raise epcm_fault(rcx, write=True)
    # REG -> TCS or TRIM, TCS -> TRIM; the type check precedes the PENDING/MODIFIED error.
    if not (entry.pt is _PT_REG or (entry.pt is _PT_TCS and new_pt == _PT_TRIM)):
        raise epcm_fault(rcx, write=True)
    if entry.state & (PENDING | MODIFIED):
        return SgxError.SGX_PAGE_NOT_MODIFIABLE
    secs = entry.secs
    assert secs is not None
    if not secs.attributes & _INIT:  # secs.init
        raise GeneralProtection()
    entry.state = (entry.state & ~PR) | MODIFIED  # PR := 0, MODIFIED := 1
    entry.perms = 0
    entry.pt = _PAGE_TYPES[new_pt]
    entry.epoch = secs.epoch  # the tracking reference EACCEPT checks [model, spec 6.4]
    return 0
