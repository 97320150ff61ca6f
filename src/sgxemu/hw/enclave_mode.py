"""Entering and leaving enclave mode: the checks EENTER and ERESUME share, and the bookkeeping
every entry and exit (EENTER, ERESUME, EEXIT, AEX) does (SDM EENTER/ERESUME, 42.12).
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, NamedTuple

from ..arch.constants import (
    GPRSGX_SIZE,
    PAGE_MASK,
    PAGE_SIZE,
    Attribute,
    PageType,
    TcsFlags,
    TcsState,
)
from .faults import GeneralProtection
from .operands import epc_page, epcm_fault, require_aligned, translate
from .regs import TF, Reg, RegisterFile

if TYPE_CHECKING:
    from .lp import LogicalProcessor
    from .memory import AddressSpace
    from .processor import Processor
    from .secs import SecsState

TCS_FIELDS = struct.Struct("<QQQIIQQQQII")  # STATE .. GSLIMIT (SDM Table 38-10)
U64 = struct.Struct("<Q")
GPRSGX_URSP = 144
GPRSGX_URBP = 152


class Tcs(NamedTuple):
    state: int
    flags: int
    ossa: int
    cssa: int
    nssa: int
    oentry: int
    aep: int
    ofsbase: int
    ogsbase: int
    fslimit: int
    gslimit: int


class Entry(NamedTuple):
    """What the shared EENTER/ERESUME checks found."""

    tcs_index: int
    tcs: Tcs
    secs: SecsState
    frame_lin: int  # linear address of the SSA frame used
    xsave_index: int
    gpr_index: int
    gpr_offset: int


def _canonical(addr: int) -> bool:
    top = addr >> 47
    return top == 0 or top == (1 << 17) - 1


def read_tcs(cpu: Processor, index: int) -> Tcs:
    return Tcs(*TCS_FIELDS.unpack(cpu.epc.read(index, 0, TCS_FIELDS.size)))


def check_entry(
    cpu: Processor, regs: RegisterFile, mem: AddressSpace, resume: bool
) -> Entry:
    """The EENTER/ERESUME checks in SDM order; ERESUME uses frame CSSA-1."""
    tcs_lin = regs[Reg.RBX]
    require_aligned(tcs_lin, PAGE_SIZE)
    tcs_index = epc_page(cpu, mem, tcs_lin, False, True)
    if not _canonical(regs[Reg.RCX]):
        raise GeneralProtection()
    e = cpu.epcm.get(tcs_index)
    if (
        e is None
        or e.blocked
        or e.linaddr != tcs_lin
        or e.pt is not PageType.PT_TCS
        or e.pending
        or e.modified
    ):
        raise epcm_fault(tcs_lin, user=True)
    secs = e.secs
    assert secs is not None
    tcs = read_tcs(cpu, tcs_index)
    if tcs.ossa & (PAGE_SIZE - 1) or tcs.ofsbase & (PAGE_SIZE - 1) or tcs.ogsbase & (PAGE_SIZE - 1):
        raise GeneralProtection()
    if tcs.flags & ~(TcsFlags.DBGOPTIN | TcsFlags.AEXNOTIFY):
        raise GeneralProtection()
    if not secs.init or not secs.mode64bit:
        raise GeneralProtection()  # uninitialized, or a 32-bit enclave entered from 64-bit mode
    if not tcs.flags & TcsFlags.DBGOPTIN and bool(tcs.flags & TcsFlags.AEXNOTIFY) != bool(
        secs.attributes & Attribute.AEXNOTIFY
    ):
        raise GeneralProtection()
    if resume:
        if tcs.cssa == 0:
            raise GeneralProtection()
        frame = tcs.cssa - 1
    else:
        if tcs.cssa >= tcs.nssa:
            raise GeneralProtection()
        frame = tcs.cssa
    frame_size = secs.ssaframesize * PAGE_SIZE
    frame_lin = secs.baseaddr + tcs.ossa + frame * frame_size
    gpr_lin = frame_lin + frame_size - GPRSGX_SIZE
    xsave_index = _ssa_page(cpu, mem, secs, frame_lin)
    gpr_index = xsave_index if gpr_lin & PAGE_MASK == frame_lin else _ssa_page(cpu, mem, secs, gpr_lin)
    if not _canonical(secs.baseaddr + tcs.oentry):
        raise GeneralProtection()
    if not _canonical(secs.baseaddr + tcs.ofsbase) or not _canonical(secs.baseaddr + tcs.ogsbase):
        raise GeneralProtection()
    if tcs.state == TcsState.ACTIVE:
        raise GeneralProtection()
    return Entry(tcs_index, tcs, secs, frame_lin, xsave_index, gpr_index, gpr_lin & ~PAGE_MASK)


def _ssa_page(cpu: Processor, mem: AddressSpace, secs: SecsState, lin: int) -> int:
    """An SSA page must be writable, REG, RW, of this enclave and at its own address."""
    page = lin & PAGE_MASK
    index = epc_page(cpu, mem, page, True, True)
    translate(mem, page, True, True)
    e = cpu.epcm.get(index)
    if (
        e is None
        or e.blocked
        or e.pending
        or e.modified
        or e.linaddr != page
        or e.pt is not PageType.PT_REG
        or e.secs is not secs
        or not (e.r and e.w)
    ):
        raise epcm_fault(page, write=True, user=True)
    return index


def enter(cpu: Processor, lp: LogicalProcessor, regs: RegisterFile, entry: Entry) -> None:
    """Enclave mode on: the CR_* registers, the TCS busy, FS/GS swapped, the TLB flushed."""
    secs = entry.secs
    lp.enclave_mode = True
    lp.secs = secs
    lp.tcs_index = entry.tcs_index
    lp.tcs_lin = regs[Reg.RBX]
    lp.aep = regs[Reg.RCX]
    lp.ssa_frame_lin = entry.frame_lin
    lp.ssa_xsave_index = entry.xsave_index
    lp.ssa_gpr_index = entry.gpr_index
    lp.ssa_gpr_offset = entry.gpr_offset
    lp.saved_fsbase = regs[Reg.FSBASE]
    lp.saved_gsbase = regs[Reg.GSBASE]
    lp.saved_tf = bool(regs[Reg.RFLAGS] & TF)
    if not entry.tcs.flags & TcsFlags.DBGOPTIN:
        regs[Reg.RFLAGS] = regs[Reg.RFLAGS] & ~TF  # opt-out entry suppresses single-stepping
    cpu.epc.write(entry.tcs_index, 0, U64.pack(TcsState.ACTIVE))
    cpu.epc.write(entry.tcs_index, 40, U64.pack(lp.aep))  # TCS.AEP
    secs.inside[lp.index] = secs.epoch
    lp.flush_tlb()


def leave(cpu: Processor, lp: LogicalProcessor, regs: RegisterFile) -> None:
    """Enclave mode off (EEXIT, AEX): TCS free again, FS/GS back, the TLB flushed."""
    secs = lp.secs
    assert secs is not None
    cpu.epc.write(lp.tcs_index, 0, U64.pack(TcsState.INACTIVE))
    regs[Reg.FSBASE] = lp.saved_fsbase
    regs[Reg.GSBASE] = lp.saved_gsbase
    tcs_flags = U64.unpack(cpu.epc.read(lp.tcs_index, 8, 8))[0]
    if not tcs_flags & TcsFlags.DBGOPTIN and lp.saved_tf:
        regs[Reg.RFLAGS] = regs[Reg.RFLAGS] | TF
    secs.inside.pop(lp.index, None)
    lp.enclave_mode = False
    lp.secs = None
    lp.tcs_index = -1
    lp.flush_tlb()


def enter_at_oentry(cpu: Processor, lp: LogicalProcessor, regs: RegisterFile, entry: Entry) -> None:
    """EENTER's effects (also ERESUME's AEX-Notify path): save URSP/URBP, jump to OENTRY."""
    enter(cpu, lp, regs, entry)
    secs = entry.secs
    gpr = entry.gpr_offset
    cpu.epc.write(entry.gpr_index, gpr + GPRSGX_URSP, U64.pack(regs[Reg.RSP]))
    cpu.epc.write(entry.gpr_index, gpr + GPRSGX_URBP, U64.pack(regs[Reg.RBP]))
    regs[Reg.RCX] = regs[Reg.RIP] + 3  # the instruction after ENCLU
    regs[Reg.RAX] = entry.tcs.cssa
    regs[Reg.RIP] = secs.baseaddr + entry.tcs.oentry
    regs[Reg.FSBASE] = secs.baseaddr + entry.tcs.ofsbase
    regs[Reg.GSBASE] = secs.baseaddr + entry.tcs.ogsbase
