"""EMODT: change an enclave page's type to TCS or TRIM (SDM EMODT, spec 3.15)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...arch.constants import (
    PAGE_SIZE,
    SECINFO_ALIGN,
    SECINFO_FLAGS_RESERVED_MASK,
    SECINFO_PAGE_TYPE_SHIFT,
    SECINFO_SIZE,
    EnclsLeaf,
    PageType,
    SgxError,
)
from ..faults import GeneralProtection
from ..leaves import encls_leaf
from ..operands import epc_page, epcm_fault, read_operand, read_u64, require_aligned

if TYPE_CHECKING:
    from ..memory import AddressSpace
    from ..processor import Processor

_NEW_TYPES = (PageType.PT_TCS, PageType.PT_TRIM)


@encls_leaf(EnclsLeaf.EMODT)
def emodt(cpu: Processor, mem: AddressSpace, rbx: int, rcx: int, rdx: int) -> int:
    require_aligned(rbx, SECINFO_ALIGN)
    require_aligned(rcx, PAGE_SIZE)
    # [choice] The target is probed as a write (its #PF codes carry W), as EADD and EREMOVE do.
    index = epc_page(cpu, mem, rcx, True, False)
    raw = read_operand(cpu, mem, rbx, SECINFO_SIZE, False)
    flags = read_u64(raw, 0)
    new_pt = (flags >> SECINFO_PAGE_TYPE_SHIFT) & 0xFF
    if flags & SECINFO_FLAGS_RESERVED_MASK or raw.count(0, 8) != SECINFO_SIZE - 8:
        raise GeneralProtection()
    if new_pt not in _NEW_TYPES:
        raise GeneralProtection()
    entry = cpu.epcm.get(index)
    if entry is None:
        raise epcm_fault(rcx, write=True)
    # REG -> TCS or TRIM, TCS -> TRIM; the type check precedes the PENDING/MODIFIED error.
    if not (
        entry.pt is PageType.PT_REG
        or (entry.pt is PageType.PT_TCS and new_pt == PageType.PT_TRIM)
    ):
        raise epcm_fault(rcx, write=True)
    if entry.pending or entry.modified:
        return SgxError.SGX_PAGE_NOT_MODIFIABLE
    secs = entry.secs
    assert secs is not None
    if not secs.init:
        raise GeneralProtection()
    entry.pr = False
    entry.modified = True
    entry.perms = 0
    entry.pt = PageType(new_pt)
    entry.epoch = secs.epoch  # the tracking reference EACCEPT checks [model, spec 6.4]
    return 0
