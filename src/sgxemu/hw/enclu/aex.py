"""Asynchronous Enclave Exit: an exception or interrupt in enclave mode (SDM 40.3-40.4, spec 4.3).

The state is saved to the SSA frame cached at entry (so an AEX cannot fault), EXITINFO and
MISC.EXINFO are written, the registers get their synthetic values, CSSA advances and the thread
leaves the enclave. The caller then delivers the event to the OS: the #PF address it sees has
its low 12 bits cleared.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from ...arch.constants import PAGE_SHIFT, EncluLeaf, ExitType, Miscselect, Vector
from ...arch.structs import GPRSGX_OFF_EXITINFO, GPRSGX_OFF_FSBASE, GPRSGX_OFF_URSP, TCS_OFF_CSSA
from ..enclave_mode import leave
from ..regs import AF, CF, OF, PF, RF, SF, TF, ZF, Reg, RegisterFile, xsave_init_legacy

if TYPE_CHECKING:
    from ..faults import SgxFault
    from ..lp import LogicalProcessor
    from ..processor import Processor

GPR_BLOCK = struct.Struct("<18Q")  # RAX..R15, RFLAGS, RIP at GPRSGX offset 0
XSTATE_BV_OFFSET = 512
EXITINFO_VALID = 1 << 31
FS_GS = struct.Struct("<QQ")  # GPRSGX.FSBASE and GSBASE (also URSP and URBP): adjacent u64s
_EXITINFO = struct.Struct("<I")
_EXINFO = struct.Struct("<QII")  # MISC.EXINFO: MADDR, ERRCD, reserved (just below GPRSGX)
_XSAVE_HEADER = struct.Struct("<Q56x")  # XSTATE_BV, then the rest of the header as 0
U32 = struct.Struct("<I")  # TCS.CSSA

# Vectors whose EXITINFO is always reported; #PF/#GP only with MISCSELECT.EXINFO (SDM 40.4).
_ALWAYS_REPORTED = frozenset(
    int(v)
    for v in (Vector.DE, Vector.DB, Vector.BP, Vector.BR, Vector.UD, Vector.MF, Vector.AC, Vector.XM)
)
_SYNTHETIC_CLEARED = CF | PF | AF | ZF | SF | OF | RF
# Plain ints for the hot path (IntEnum/IntFlag arithmetic costs Python calls).
_BP, _PF, _GP, _MF, _XM = (int(v) for v in (Vector.BP, Vector.PF, Vector.GP, Vector.MF, Vector.XM))
_SOFTWARE, _HARDWARE = int(ExitType.SOFTWARE), int(ExitType.HARDWARE)
_EXINFO_BIT = int(Miscselect.EXINFO)
_ERESUME = int(EncluLeaf.ERESUME)
_NSAVED = GPR_BLOCK.size // 8
_RFLAGS, _RIP, _FSBASE, _GSBASE = int(Reg.RFLAGS), int(Reg.RIP), int(Reg.FSBASE), int(Reg.GSBASE)
_EXINFO_SIZE = _EXINFO.size


def _synthetic_area(fcw_fsw: bytes | None = None, mxcsr: bytes | None = None) -> bytes:
    area = xsave_init_legacy()
    if fcw_fsw is not None:
        area[0:4] = fcw_fsw
    if mxcsr is not None:
        area[24:28] = mxcsr
    return bytes(area)


# The x87/SSE state an AEX leaves (SDM Table 40-1): INIT, except after #MF and #XM.
_SYNTHETIC_XSTATE = _synthetic_area()
_SYNTHETIC_XSTATE_MF = _synthetic_area(fcw_fsw=b"\x7e\x03\x81\x80")  # FCW 037Eh, FSW 8081h
_SYNTHETIC_XSTATE_XM = _synthetic_area(mxcsr=(0x1F01).to_bytes(4, "little"))


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
    buf = cpu.epc.buffer
    gpr = (lp.ssa_gpr_index << PAGE_SHIFT) + lp.ssa_gpr_offset
    values = regs.get_all()
    rflags = values[_RFLAGS]
    values[_RFLAGS] = rflags & ~TF
    GPR_BLOCK.pack_into(buf, gpr, *values[:_NSAVED])
    FS_GS.pack_into(buf, gpr + GPRSGX_OFF_FSBASE, values[_FSBASE], values[_GSBASE])
    xsave = lp.ssa_xsave_index << PAGE_SHIFT
    buf[xsave : xsave + 512] = regs.xsave()[:512]
    _XSAVE_HEADER.pack_into(buf, xsave + XSTATE_BV_OFFSET, secs.xfrm)
    info = 0
    synthetic = _SYNTHETIC_XSTATE
    if event is not None:
        vector = int(event.vector)
        if vector in _ALWAYS_REPORTED:
            info = exitinfo(vector, _SOFTWARE if vector == _BP else _HARDWARE)
            if vector == _MF:
                synthetic = _SYNTHETIC_XSTATE_MF
            elif vector == _XM:
                synthetic = _SYNTHETIC_XSTATE_XM
        elif vector in (_PF, _GP) and secs.miscselect & _EXINFO_BIT:
            info = exitinfo(vector, _HARDWARE)
            maddr = event.addr if vector == _PF else 0
            _EXINFO.pack_into(buf, gpr - _EXINFO_SIZE, maddr, event.error_code, 0)
    _EXITINFO.pack_into(buf, gpr + GPRSGX_OFF_EXITINFO, info)
    # Synthetic state (SDM Table 40-1), in `Reg` order; FS/GS bases as they are (leave() puts
    # the saved ones back).
    ursp, urbp = FS_GS.unpack_from(buf, gpr + GPRSGX_OFF_URSP)
    aep = lp.aep
    values = [
        _ERESUME, aep, 0, lp.tcs_lin, ursp, urbp, 0, 0,  # RAX RCX RDX RBX RSP RBP RSI RDI
        0, 0, 0, 0, 0, 0, 0, 0,  # R8-R15
        rflags & ~_SYNTHETIC_CLEARED, aep, values[_FSBASE], values[_GSBASE],
    ]  # fmt: skip
    regs.xrstor(synthetic)
    tcs = lp.tcs_index << PAGE_SHIFT
    U32.pack_into(buf, tcs + TCS_OFF_CSSA, U32.unpack_from(buf, tcs + TCS_OFF_CSSA)[0] + 1)
    leave(cpu, lp, values)
    regs.set_all(values)
