"""ERESUME: re-enter an enclave from the SSA frame an AEX saved (SDM ERESUME, spec 4.4)."""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from ...arch.constants import PAGE_SHIFT, EncluLeaf, TcsFlags
from ...arch.structs import GPRSGX_OFF_FSBASE, GPRSGX_OFF_URSP, TCS_OFF_CSSA
from ..enclave_mode import check_entry, enter, enter_at_oentry
from ..leaves import enclu_leaf
from ..regs import AC, AF, CF, DF, ID, IF, NT, OF, PF, RF, SF, TF, VM, ZF, Reg
from .aex import GPR_BLOCK, U32

if TYPE_CHECKING:
    from ..lp import LogicalProcessor
    from ..memory import AddressSpace
    from ..processor import Processor
    from ..regs import RegisterFile

_RESTORED_FLAGS = CF | PF | AF | ZF | SF | DF | OF | NT | AC | ID | RF
_IOPL_SHIFT = 12
_DBGOPTIN = int(TcsFlags.DBGOPTIN)
_RFLAGS = Reg.RFLAGS
_RIP = Reg.RIP
# GPRSGX in `Reg` order: RAX..R15, RFLAGS, RIP (GPR_BLOCK), then, past URSP, URBP and EXITINFO,
# FSBASE and GSBASE: one unpack for every register ERESUME restores.
_SAVED = struct.Struct(f"<{GPR_BLOCK.format[1:]}{GPRSGX_OFF_FSBASE - GPRSGX_OFF_URSP}xQQ")
assert _SAVED.size == GPRSGX_OFF_FSBASE + 16


@enclu_leaf(EncluLeaf.ERESUME)
def eresume(cpu: Processor, lp: LogicalProcessor, regs: RegisterFile, mem: AddressSpace) -> None:
    values = regs.get_all()
    entry = check_entry(cpu, values, mem, resume=True)
    if entry.notify:
        # AEX-Notify: behave as EENTER into frame CSSA, already checked (SDM ERESUME).
        enter_at_oentry(cpu, lp, values, entry)
        regs.set_all(values)
        return
    buf = cpu.epc.buffer
    gpr = (entry.gpr_index << PAGE_SHIFT) + entry.gpr_offset
    saved = _SAVED.unpack_from(buf, gpr)
    xsave = entry.xsave_index << PAGE_SHIFT
    legacy = buf[xsave : xsave + 512]
    enter(cpu, lp, values, entry)
    flags = values[_RFLAGS]
    regs.xrstor(legacy)
    restored_mask = _RESTORED_FLAGS
    if (flags >> _IOPL_SHIFT) & 3 == 3:
        restored_mask |= IF  # IF comes back only at IOPL 3
    restored = (flags & ~restored_mask & ~VM) | (saved[_RFLAGS] & restored_mask)
    if not entry.tcs.flags & _DBGOPTIN:
        restored &= ~TF
    # Every register comes from the frame: RAX..R15, the RFLAGS above, RIP, FS/GS bases.
    regs.set_all((*saved[:_RFLAGS], restored, *saved[_RIP:]))
    tcs = entry.tcs_index << PAGE_SHIFT
    U32.pack_into(buf, tcs + TCS_OFF_CSSA, entry.tcs.cssa - 1)
