"""EMODPE: the enclave extends the EPCM permissions of one of its pages (SDM EMODPE, spec 4.9)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...arch.constants import (
    SECINFO_PERM_MASK,
    EncluLeaf,
    PageType,
    SecinfoFlags,
)
from ..epcm import UNUSABLE, R
from ..faults import GeneralProtection
from ..leaves import enclu_leaf
from ..operands import epc_page, epcm_fault
from ..regs import Reg
from .eaccept import in_enclave_secinfo

if TYPE_CHECKING:
    from ..lp import LogicalProcessor
    from ..memory import AddressSpace
    from ..processor import Processor
    from ..regs import RegisterFile

# Plain module constants: enum class attribute lookups and IntFlag arithmetic are slow.
_PT_REG = PageType.PT_REG
_SECINFO_R = int(SecinfoFlags.R)
_SECINFO_W = int(SecinfoFlags.W)
_RBX, _RCX, _RIP = Reg.RBX, Reg.RCX, Reg.RIP


@enclu_leaf(EncluLeaf.EMODPE)
def emodpe(cpu: Processor, lp: LogicalProcessor, regs: RegisterFile, mem: AddressSpace) -> None:
    secs = lp.secs
    assert secs is not None
    rbx, rcx = regs[_RBX], regs[_RCX]
    # `x & (alignment - 1)` is require_aligned, the range test is secs.in_elrange (both operands).
    if rbx & 63:  # SECINFO_ALIGN
        raise GeneralProtection()
    if rcx & 0xFFF:
        raise GeneralProtection()
    base, end = secs.baseaddr, secs.baseaddr + secs.size
    if not (base <= rbx < end and base <= rcx < end):
        raise GeneralProtection()
    secinfo_index = epc_page(cpu, mem, rbx, False, True)
    index = epc_page(cpu, mem, rcx, False, True)
    flags = in_enclave_secinfo(cpu, secs, secinfo_index, rbx)
    # The SDM checks the target, then (after its concurrency check) re-checks it with the
    # address; both failures are #PF(RCX), so one check suffices here.
    e = cpu.epcm.get(index)
    if (
        e is None
        or e.state & UNUSABLE  # PENDING, MODIFIED or BLOCKED
        or e.pt is not _PT_REG
        or e.secs is not secs
        or e.linaddr != rcx
    ):
        raise epcm_fault(rcx, user=True)
    if not e.perms & R and not flags & _SECINFO_R and flags & _SECINFO_W:
        raise GeneralProtection()
    e.perms |= flags & SECINFO_PERM_MASK
    regs[_RIP] += 3  # no error code: RAX and RFLAGS are left alone
