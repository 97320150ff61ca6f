"""EACCEPTCOPY: fill a PENDING page from another enclave page and accept it (SDM EACCEPTCOPY, spec 4.8).

Follows the 2018-and-newer text: the destination's RWX are *assigned* from SECINFO (so R-X is
possible) and a destination that is not a pending RW- REG page gives error 19, not #PF. The SDM
text's `EPCM(DS:RCX).R` in the source check and `EPCM(DS:RDX).BLOCKED` in the destination check
are read as RDX and RCX respectively (spec 12.2).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...arch.constants import (
    PAGE_MASK,
    PAGE_SIZE,
    SECINFO_PAGE_TYPE_SHIFT,
    SECINFO_PERM_MASK,
    EncluLeaf,
    PageType,
    SecinfoFlags,
    SgxError,
)
from ..epcm import BLOCKED, MODIFIED, PENDING, UNUSABLE, R
from ..faults import GeneralProtection
from ..leaves import enclu_leaf
from ..operands import epc_page, epcm_fault
from ..regs import Reg, set_result
from .eaccept import in_enclave_secinfo

if TYPE_CHECKING:
    from ..lp import LogicalProcessor
    from ..memory import AddressSpace
    from ..processor import Processor
    from ..regs import RegisterFile

_RW = 0b011
# Plain module constants: enum class attribute lookups and IntFlag arithmetic are slow.
_PT_REG = PageType.PT_REG
_SECINFO_R = int(SecinfoFlags.R)
_SECINFO_W = int(SecinfoFlags.W)
_RBX, _RCX, _RDX, _RIP = Reg.RBX, Reg.RCX, Reg.RDX, Reg.RIP


@enclu_leaf(EncluLeaf.EACCEPTCOPY)
def eacceptcopy(
    cpu: Processor, lp: LogicalProcessor, regs: RegisterFile, mem: AddressSpace
) -> None:
    secs = lp.secs
    assert secs is not None
    rbx, rcx, rdx = regs[_RBX], regs[_RCX], regs[_RDX]
    # `x & (alignment - 1)` is require_aligned, the range test is secs.in_elrange (each operand).
    if rbx & 63:  # SECINFO_ALIGN
        raise GeneralProtection()
    if rcx & 0xFFF:
        raise GeneralProtection()
    if rdx & 0xFFF:
        raise GeneralProtection()
    base, end = secs.baseaddr, secs.baseaddr + secs.size
    if not (base <= rbx < end and base <= rcx < end and base <= rdx < end):
        raise GeneralProtection()
    secinfo_index = epc_page(cpu, mem, rbx, False, True)
    dst = epc_page(cpu, mem, rcx, True, True)  # [choice] probed as the write it is; the rest as reads
    src = epc_page(cpu, mem, rdx, False, True)
    flags = in_enclave_secinfo(cpu, secs, secinfo_index, rbx)
    if flags & _SECINFO_W and not flags & _SECINFO_R:
        raise GeneralProtection()
    if (flags >> SECINFO_PAGE_TYPE_SHIFT) & 0xFF != _PT_REG:
        raise GeneralProtection()
    epcm = cpu.epcm
    s = epcm.get(src)
    if (
        s is None
        or not s.perms & R
        or s.state & UNUSABLE  # PENDING, MODIFIED or BLOCKED
        or s.pt is not _PT_REG
        or s.secs is not secs
        or s.linaddr != rdx & PAGE_MASK
    ):
        raise epcm_fault(rdx, user=True)
    d = epcm.get(dst)
    if (
        d is None
        or not d.state & PENDING
        or d.state & (MODIFIED | BLOCKED)
        or d.pt is not _PT_REG
        or d.secs is not secs
        or d.perms != _RW  # the re-check: exactly what EAUG left
        or d.linaddr != rcx
    ):
        set_result(regs, SgxError.SGX_PAGE_ATTRIBUTES_MISMATCH)
        regs[_RIP] += 3
        return
    epc = cpu.epc
    epc.write(dst, 0, epc.read(src, 0, PAGE_SIZE))
    d.perms = flags & SECINFO_PERM_MASK
    d.state &= ~PENDING
    set_result(regs, SgxError.SUCCESS)
    regs[_RIP] += 3
