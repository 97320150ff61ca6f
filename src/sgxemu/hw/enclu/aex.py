"""Asynchronous Enclave Exit: an exception or interrupt in enclave mode (SDM 40.3-40.4, spec 4.3).

The state is saved to the SSA frame cached at entry (so an AEX cannot fault), EXITINFO and
MISC.EXINFO are written, the registers get their synthetic values, CSSA advances and the thread
leaves the enclave. The caller then delivers the event to the OS: the #PF address it sees has
its low 12 bits cleared.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from ...arch.constants import EXINFO_SIZE, EncluLeaf, ExitType, Miscselect, Vector
from ..enclave_mode import U64, leave
from ..regs import AF, CF, OF, PF, RF, SF, TF, ZF, Reg, RegisterFile, xsave_init_legacy

if TYPE_CHECKING:
    from ..faults import SgxFault
    from ..lp import LogicalProcessor
    from ..processor import Processor

GPR_BLOCK = struct.Struct("<18Q")  # RAX..R15, RFLAGS, RIP at GPRSGX offset 0
GPRSGX_EXITINFO = 160
GPRSGX_FSBASE = 168
GPRSGX_GSBASE = 176
XSTATE_BV_OFFSET = 512
EXITINFO_VALID = 1 << 31

# Vectors whose EXITINFO is always reported; #PF/#GP only with MISCSELECT.EXINFO (SDM 40.4).
_ALWAYS_REPORTED = frozenset(
    {Vector.DE, Vector.DB, Vector.BP, Vector.BR, Vector.UD, Vector.MF, Vector.AC, Vector.XM}
)
_SYNTHETIC_CLEARED = CF | PF | AF | ZF | SF | OF | RF


def exitinfo(vector: int, exit_type: int) -> int:
    return EXITINFO_VALID | (exit_type << 8) | vector


def aex(
    cpu: Processor, lp: LogicalProcessor, regs: RegisterFile, event: SgxFault | None
) -> None:
    """Perform an AEX for `event` (None: an interrupt) with RIP at the resume point."""
    if cpu.tracer is not None:
        cpu.tracer.aex(cpu, lp, regs, event)
    secs = lp.secs
    assert secs is not None and lp.enclave_mode
    epc = cpu.epc
    gpr_index, gpr = lp.ssa_gpr_index, lp.ssa_gpr_offset
    values = [regs[Reg(i)] for i in range(18)]
    values[Reg.RFLAGS] &= ~TF
    epc.write(gpr_index, gpr, GPR_BLOCK.pack(*values))
    epc.write(gpr_index, gpr + GPRSGX_FSBASE, U64.pack(regs[Reg.FSBASE]))
    epc.write(gpr_index, gpr + GPRSGX_GSBASE, U64.pack(regs[Reg.GSBASE]))
    epc.write(lp.ssa_xsave_index, 0, regs.xsave()[:512])
    epc.write(lp.ssa_xsave_index, XSTATE_BV_OFFSET, U64.pack(secs.xfrm) + bytes(56))
    info = 0
    if event is not None:
        vector = int(event.vector)
        if vector in _ALWAYS_REPORTED:
            kind = ExitType.SOFTWARE if vector == Vector.BP else ExitType.HARDWARE
            info = exitinfo(vector, kind)
        elif vector in (Vector.PF, Vector.GP) and secs.miscselect & Miscselect.EXINFO:
            info = exitinfo(vector, ExitType.HARDWARE)
            maddr = event.addr if vector == Vector.PF else 0
            exinfo = struct.pack("<QII", maddr, event.error_code, 0)
            epc.write(gpr_index, gpr - EXINFO_SIZE, exinfo)
    epc.write(gpr_index, gpr + GPRSGX_EXITINFO, struct.pack("<I", info))
    # Synthetic state (SDM Table 40-1).
    ursp, urbp = struct.unpack("<QQ", epc.read(gpr_index, gpr + 144, 16))
    for r in (Reg.RDX, Reg.RSI, Reg.RDI, Reg.R8, Reg.R9, Reg.R10, Reg.R11, Reg.R12, Reg.R13,
              Reg.R14, Reg.R15):
        regs[r] = 0
    regs[Reg.RAX] = EncluLeaf.ERESUME
    regs[Reg.RBX] = lp.tcs_lin
    regs[Reg.RCX] = lp.aep
    regs[Reg.RIP] = lp.aep
    regs[Reg.RSP] = ursp
    regs[Reg.RBP] = urbp
    regs[Reg.RFLAGS] = regs[Reg.RFLAGS] & ~_SYNTHETIC_CLEARED
    legacy = xsave_init_legacy()
    if event is not None and event.vector == Vector.MF:
        legacy[0:4] = b"\x7e\x03\x81\x80"  # FCW 037Eh, FSW 8081h
    elif event is not None and event.vector == Vector.XM:
        legacy[24:28] = (0x1F01).to_bytes(4, "little")
    regs.xrstor(bytes(legacy))
    cssa = struct.unpack("<I", epc.read(lp.tcs_index, 24, 4))[0]
    epc.write(lp.tcs_index, 24, struct.pack("<I", cssa + 1))
    leave(cpu, lp, regs)
