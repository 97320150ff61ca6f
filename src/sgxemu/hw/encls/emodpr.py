"""EMODPR: restrict the EPCM permissions of an enclave page (SDM EMODPR, spec 3.14)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...arch.constants import (
    PAGE_SIZE,
    SECINFO_ALIGN,
    SECINFO_FLAGS_RESERVED_MASK,
    SECINFO_PERM_MASK,
    SECINFO_SIZE,
    EnclsLeaf,
    PageType,
    SecinfoFlags,
    SgxError,
)
from ..faults import GeneralProtection
from ..leaves import encls_leaf
from ..operands import epc_page, epcm_fault, read_operand, read_u64, require_aligned

if TYPE_CHECKING:
    from ..memory import AddressSpace
    from ..processor import Processor


@encls_leaf(EnclsLeaf.EMODPR)
def emodpr(cpu: Processor, mem: AddressSpace, rbx: int, rcx: int, rdx: int) -> int:
    require_aligned(rbx, SECINFO_ALIGN)
    require_aligned(rcx, PAGE_SIZE)
    # [choice] The target is probed as a write (its #PF codes carry W), as EADD and EREMOVE do.
    index = epc_page(cpu, mem, rcx, True, False)
    raw = read_operand(cpu, mem, rbx, SECINFO_SIZE, False)
    flags = read_u64(raw, 0)
    if flags & SECINFO_FLAGS_RESERVED_MASK or raw.count(0, 8) != SECINFO_SIZE - 8:
        raise GeneralProtection()
    if flags & SecinfoFlags.W and not flags & SecinfoFlags.R:
        raise GeneralProtection()
    entry = cpu.epcm.get(index)
    if entry is None:
        raise epcm_fault(rcx, write=True)
    # Error 20 comes before the page-type #PF: Linux's REMOVE_PAGES probe relies on it.
    if entry.pending or entry.modified:
        return SgxError.SGX_PAGE_NOT_MODIFIABLE
    if entry.pt is not PageType.PT_REG:
        raise epcm_fault(rcx, write=True)
    secs = entry.secs
    assert secs is not None
    if not secs.init:
        raise GeneralProtection()
    entry.pr = True  # even when the mask removes nothing
    entry.perms &= flags & SECINFO_PERM_MASK
    entry.epoch = secs.epoch  # the tracking reference EACCEPT checks [model, spec 6.4]
    return 0
