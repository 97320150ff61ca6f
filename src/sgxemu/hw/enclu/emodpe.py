"""EMODPE: the enclave extends the EPCM permissions of one of its pages (SDM EMODPE, spec 4.9)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...arch.constants import (
    PAGE_SIZE,
    SECINFO_ALIGN,
    SECINFO_PERM_MASK,
    EncluLeaf,
    PageType,
    SecinfoFlags,
)
from ..faults import GeneralProtection
from ..leaves import enclu_leaf
from ..operands import epc_page, epcm_fault, require_aligned
from ..regs import Reg
from .eaccept import in_enclave_secinfo

if TYPE_CHECKING:
    from ..lp import LogicalProcessor
    from ..memory import AddressSpace
    from ..processor import Processor
    from ..regs import RegisterFile


@enclu_leaf(EncluLeaf.EMODPE)
def emodpe(cpu: Processor, lp: LogicalProcessor, regs: RegisterFile, mem: AddressSpace) -> None:
    secs = lp.secs
    assert secs is not None
    rbx, rcx = regs[Reg.RBX], regs[Reg.RCX]
    require_aligned(rbx, SECINFO_ALIGN)
    require_aligned(rcx, PAGE_SIZE)
    if not (secs.in_elrange(rbx) and secs.in_elrange(rcx)):
        raise GeneralProtection()
    secinfo_index = epc_page(cpu, mem, rbx, False, True)
    index = epc_page(cpu, mem, rcx, False, True)
    flags = in_enclave_secinfo(cpu, secs, secinfo_index, rbx)
    # The SDM checks the target, then (after its concurrency check) re-checks it with the
    # address; both failures are #PF(RCX), so one check suffices here.
    e = cpu.epcm.get(index)
    if (
        e is None
        or e.pending
        or e.modified
        or e.blocked
        or e.pt is not PageType.PT_REG
        or e.secs is not secs
        or e.linaddr != rcx
    ):
        raise epcm_fault(rcx, user=True)
    if not e.r and not flags & SecinfoFlags.R and flags & SecinfoFlags.W:
        raise GeneralProtection()
    e.perms |= flags & SECINFO_PERM_MASK
    regs[Reg.RIP] += 3  # no error code: RAX and RFLAGS are left alone
