"""EMODPR: restrict the EPCM permissions of an enclave page (SDM EMODPR, spec 3.14)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...arch.constants import (
    SECINFO_FLAGS_RESERVED_MASK,
    SECINFO_PERM_MASK,
    SECINFO_SIZE,
    Attribute,
    EnclsLeaf,
    PageType,
    SecinfoFlags,
    SgxError,
)
from ..epcm import MODIFIED, PENDING, PR
from ..faults import GeneralProtection
from ..leaves import encls_leaf
from ..operands import epc_page, epcm_fault, read_operand

if TYPE_CHECKING:
    from ..memory import AddressSpace
    from ..processor import Processor

# Plain module constants: enum class attribute lookups and IntFlag arithmetic are slow here.
_R = int(SecinfoFlags.R)
_W = int(SecinfoFlags.W)
_PT_REG = PageType.PT_REG
_INIT = int(Attribute.INIT)
_PAGE_NOT_MODIFIABLE = SgxError.SGX_PAGE_NOT_MODIFIABLE
_SECINFO_RESERVED_BYTES = SECINFO_SIZE - 8


@encls_leaf(EnclsLeaf.EMODPR)
def emodpr(cpu: Processor, mem: AddressSpace, rbx: int, rcx: int, rdx: int) -> int:
    # Hot path: each `if x & (alignment - 1): raise GeneralProtection()` is require_aligned.
    if rbx & 63:  # SECINFO_ALIGN
        raise GeneralProtection()
    if rcx & 0xFFF:
        raise GeneralProtection()
    # [choice] The target is probed as a write (its #PF codes carry W), as EADD and EREMOVE do.
    index = epc_page(cpu, mem, rcx, True, False)
    raw = read_operand(cpu, mem, rbx, SECINFO_SIZE, False)
    flags = int.from_bytes(raw[:8], "little")
    if flags & SECINFO_FLAGS_RESERVED_MASK or raw.count(0, 8) != _SECINFO_RESERVED_BYTES:
        raise GeneralProtection()
    if flags & _W and not flags & _R:
        raise GeneralProtection()
    entry = cpu.epcm.get(index)
    if entry is None:
        raise epcm_fault(rcx, write=True)
    # Error 20 comes before the page-type #PF: Linux's REMOVE_PAGES probe relies on it.
    if entry.state & (PENDING | MODIFIED):
        return _PAGE_NOT_MODIFIABLE
    if entry.pt is not _PT_REG:
        raise epcm_fault(rcx, write=True)
    secs = entry.secs
    assert secs is not None
    if not secs.attributes & _INIT:  # secs.init
        raise GeneralProtection()
    entry.state |= PR  # even when the mask removes nothing
    entry.perms &= flags & SECINFO_PERM_MASK
    entry.epoch = secs.epoch  # the tracking reference EACCEPT checks [model, spec 6.4]
    return 0
