"""ERESUME: re-enter an enclave from the SSA frame an AEX saved (SDM ERESUME, spec 4.4)."""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from ...arch.constants import EncluLeaf, TcsFlags
from ..enclave_mode import U64, check_entry, enter, enter_at_oentry
from ..leaves import enclu_leaf
from ..regs import AC, AF, CF, DF, ID, IF, NT, OF, PF, RF, SF, TF, VM, ZF, Reg
from .aex import GPR_BLOCK, GPRSGX_FSBASE, GPRSGX_GSBASE

if TYPE_CHECKING:
    from ..lp import LogicalProcessor
    from ..memory import AddressSpace
    from ..processor import Processor
    from ..regs import RegisterFile

_RESTORED_FLAGS = CF | PF | AF | ZF | SF | DF | OF | NT | AC | ID | RF
_IOPL_SHIFT = 12


@enclu_leaf(EncluLeaf.ERESUME)
def eresume(cpu: Processor, lp: LogicalProcessor, regs: RegisterFile, mem: AddressSpace) -> None:
    entry = check_entry(cpu, regs, mem, resume=True)
    if entry.notify:
        # AEX-Notify: behave as EENTER into frame CSSA, already checked (SDM ERESUME).
        enter_at_oentry(cpu, lp, regs, entry)
        return
    epc = cpu.epc
    gpr_index, gpr = entry.gpr_index, entry.gpr_offset
    saved = GPR_BLOCK.unpack(epc.read(gpr_index, gpr, GPR_BLOCK.size))
    fsbase = U64.unpack(epc.read(gpr_index, gpr + GPRSGX_FSBASE, 8))[0]
    gsbase = U64.unpack(epc.read(gpr_index, gpr + GPRSGX_GSBASE, 8))[0]
    legacy = epc.read(entry.xsave_index, 0, 512)
    enter(cpu, lp, regs, entry)
    flags = regs[Reg.RFLAGS]
    regs.xrstor(legacy)
    for i in range(16):
        regs[Reg(i)] = saved[i]
    regs[Reg.RIP] = saved[Reg.RIP]
    restored_mask = _RESTORED_FLAGS
    if (flags >> _IOPL_SHIFT) & 3 == 3:
        restored_mask |= IF  # IF comes back only at IOPL 3
    restored = (flags & ~restored_mask & ~VM) | (saved[Reg.RFLAGS] & restored_mask)
    if not entry.tcs.flags & TcsFlags.DBGOPTIN:
        restored &= ~TF
    regs[Reg.RFLAGS] = restored
    regs[Reg.FSBASE] = fsbase
    regs[Reg.GSBASE] = gsbase
    epc.write(entry.tcs_index, 24, struct.pack("<I", entry.tcs.cssa - 1))

