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
    SECINFO_ALIGN,
    SECINFO_PAGE_TYPE_SHIFT,
    SECINFO_PERM_MASK,
    EncluLeaf,
    PageType,
    SecinfoFlags,
    SgxError,
)
from ..faults import GeneralProtection
from ..leaves import enclu_leaf
from ..operands import epc_page, epcm_fault, require_aligned
from ..regs import Reg, set_result
from .eaccept import in_enclave_secinfo

if TYPE_CHECKING:
    from ..lp import LogicalProcessor
    from ..memory import AddressSpace
    from ..processor import Processor
    from ..regs import RegisterFile

_PT_REG = PageType.PT_REG
_RW = 0b011


@enclu_leaf(EncluLeaf.EACCEPTCOPY)
def eacceptcopy(
    cpu: Processor, lp: LogicalProcessor, regs: RegisterFile, mem: AddressSpace
) -> None:
    secs = lp.secs
    assert secs is not None
    rbx, rcx, rdx = regs[Reg.RBX], regs[Reg.RCX], regs[Reg.RDX]
    require_aligned(rbx, SECINFO_ALIGN)
    require_aligned(rcx, PAGE_SIZE)
    require_aligned(rdx, PAGE_SIZE)
    if not (secs.in_elrange(rbx) and secs.in_elrange(rcx) and secs.in_elrange(rdx)):
        raise GeneralProtection()
    secinfo_index = epc_page(cpu, mem, rbx, False, True)
    dst = epc_page(cpu, mem, rcx, True, True)  # [choice] probed as the write it is; the rest as reads
    src = epc_page(cpu, mem, rdx, False, True)
    flags = in_enclave_secinfo(cpu, secs, secinfo_index, rbx)
    if flags & SecinfoFlags.W and not flags & SecinfoFlags.R:
        raise GeneralProtection()
    if (flags >> SECINFO_PAGE_TYPE_SHIFT) & 0xFF != _PT_REG:
        raise GeneralProtection()
    s = cpu.epcm.get(src)
    if (
        s is None
        or not s.r
        or s.pending
        or s.modified
        or s.blocked
        or s.pt is not _PT_REG
        or s.secs is not secs
        or s.linaddr != rdx & PAGE_MASK
    ):
        raise epcm_fault(rdx, user=True)
    d = cpu.epcm.get(dst)
    if (
        d is None
        or not d.pending
        or d.modified
        or d.blocked
        or d.pt is not _PT_REG
        or d.secs is not secs
        or d.perms != _RW  # the re-check: exactly what EAUG left
        or d.linaddr != rcx
    ):
        set_result(regs, SgxError.SGX_PAGE_ATTRIBUTES_MISMATCH)
        regs[Reg.RIP] += 3
        return
    cpu.epc.write(dst, 0, cpu.epc.read(src, 0, PAGE_SIZE))
    d.perms = flags & SECINFO_PERM_MASK
    d.pending = False
    set_result(regs, SgxError.SUCCESS)
    regs[Reg.RIP] += 3
