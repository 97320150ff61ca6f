"""EACCEPT: accept an EAUG, EMODPR or EMODT change to an enclave page (SDM EACCEPT, spec 4.7)."""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from ...arch.constants import (
    PAGE_MASK,
    PAGE_SHIFT,
    PAGE_SIZE,
    SECINFO_FLAGS_RESERVED_MASK,
    SECINFO_PAGE_TYPE_SHIFT,
    SECINFO_PERM_MASK,
    SECINFO_SIZE,
    EncluLeaf,
    PageType,
    SecinfoFlags,
    SgxError,
    TcsFlags,
)
from ...arch.structs import TCS_OFF_OCETSSA
from ..epcm import BLOCKED, MODIFIED, PENDING, PR, UNUSABLE, R
from ..faults import GeneralProtection
from ..leaves import enclu_leaf
from ..operands import epc_page, epcm_fault
from ..regs import MASK64, Reg, set_result

if TYPE_CHECKING:
    from ..lp import LogicalProcessor
    from ..memory import AddressSpace
    from ..processor import Processor
    from ..regs import RegisterFile
    from ..secs import SecsState

# Plain module constants: enum class attribute lookups and IntFlag arithmetic are slow on the
# EACCEPT/EACCEPTCOPY/EMODPE hot paths.
_PT_REG = PageType.PT_REG
_PT_TCS = PageType.PT_TCS
_TCS_OR_TRIM = frozenset({PageType.PT_TCS, PageType.PT_TRIM})
_ACCEPTABLE = frozenset({PageType.PT_REG, PageType.PT_TCS, PageType.PT_TRIM})
_STATE_BITS = int(SecinfoFlags.PENDING | SecinfoFlags.MODIFIED)
_PENDING = int(SecinfoFlags.PENDING)
_MODIFIED = int(SecinfoFlags.MODIFIED)
_PR = int(SecinfoFlags.PR)
_RBX, _RCX, _RIP = Reg.RBX, Reg.RCX, Reg.RIP
_ATTRIBUTES_MISMATCH = SgxError.SGX_PAGE_ATTRIBUTES_MISMATCH
_NOT_TRACKED = SgxError.SGX_NOT_TRACKED
_SUCCESS = SgxError.SUCCESS
_OFFSET_MASK = PAGE_SIZE - 1
_ZERO_RESERVED = bytes(SECINFO_SIZE - 8)  # SECINFO bytes 8..63 must be zero
_U64 = struct.Struct("<Q")
# STATE, FLAGS, OSSA, CSSA, NSSA, OENTRY, AEP, OFSBASGX, OGSBASGX, FSLIMIT, GSLIMIT.
_TCS = struct.Struct("<QQQIIQQQQII")


def in_enclave_secinfo(cpu: Processor, secs: SecsState, index: int, rbx: int) -> int:
    """The SECINFO operand of EACCEPT, EACCEPTCOPY and EMODPE: an accessible page of this enclave.

    #PF(RBX) unless the page holding it is a valid, readable REG page of the running enclave at
    its own address, neither PENDING, MODIFIED nor BLOCKED; then the 64 bytes are read from the
    EPC and FLAGS is returned, #GP(0) if a reserved bit or byte is set.
    """
    e = cpu.epcm.get(index)
    if (
        e is None
        or not e.perms & R
        or e.state & UNUSABLE  # PENDING, MODIFIED or BLOCKED
        or e.pt is not _PT_REG
        or e.secs is not secs
        or e.linaddr != rbx & PAGE_MASK  # the SDM text's "& FFFH" means the page (spec 12.1)
    ):
        raise epcm_fault(rbx, user=True)
    # The 64 bytes read in place (what `cpu.epc.read(index, offset, 64)` returns, uncopied).
    off = (index << PAGE_SHIFT) + (rbx & _OFFSET_MASK)
    buf = cpu.epc.buffer
    flags: int = _U64.unpack_from(buf, off)[0]
    if flags & SECINFO_FLAGS_RESERVED_MASK or buf[off + 8 : off + SECINFO_SIZE] != _ZERO_RESERVED:
        raise GeneralProtection()
    return flags


def _legal_request(flags: int) -> bool:
    """The newer edition's rule: REG with PENDING or PR (not MODIFIED); TCS/TRIM with MODIFIED only."""
    pt = (flags >> SECINFO_PAGE_TYPE_SHIFT) & 0xFF
    if pt == _PT_REG:
        return bool(flags & (_PENDING | _PR)) and not flags & _MODIFIED
    if pt in _TCS_OR_TRIM:
        return flags & (_PENDING | _MODIFIED | _PR) == _MODIFIED
    return False


def _check_tcs(cpu: Processor, index: int, secs: SecsState) -> None:
    """The content checks on a page being accepted as a TCS; each failure is #GP(0)."""
    page = cpu.epc.read(index, 0, PAGE_SIZE)
    # [choice] "Reserved" is bytes 72..4095 (the CET fields too: CET is not modelled), as in EADD;
    # FLAGS bits 63:2 are left to EENTER, as EADD leaves them.
    if page.count(0, TCS_OFF_OCETSSA) != PAGE_SIZE - TCS_OFF_OCETSSA:
        raise GeneralProtection()
    state, tflags, _, cssa, nssa, _, aep, _, _, fslimit, gslimit = _TCS.unpack_from(page, 0)
    if tflags & TcsFlags.DBGOPTIN or cssa >= nssa or aep or state:
        raise GeneralProtection()
    if not secs.mode64bit and (fslimit & 0xFFF != 0xFFF or gslimit & 0xFFF != 0xFFF):
        raise GeneralProtection()


def _finish(regs: RegisterFile, values: list[int], code: int) -> None:
    """RAX and RFLAGS for `code`, then RIP past the ENCLU (`values`: from `regs.get_all`)."""
    set_result(values, code)
    values[_RIP] = (values[_RIP] + 3) & MASK64
    regs.set_all(values)


@enclu_leaf(EncluLeaf.EACCEPT)
def eaccept(cpu: Processor, lp: LogicalProcessor, regs: RegisterFile, mem: AddressSpace) -> None:
    secs = lp.secs
    assert secs is not None
    values = regs.get_all()  # (one batch each way: RBX and RCX in; RAX, RFLAGS and RIP out)
    rbx, rcx = values[_RBX], values[_RCX]
    # Hot path: `x & (alignment - 1)` is require_aligned, the range tests are secs.in_elrange.
    base, end = secs.baseaddr, secs.baseaddr + secs.size
    if rbx & 63:  # SECINFO_ALIGN
        raise GeneralProtection()
    if not base <= rbx < end:
        raise GeneralProtection()
    secinfo_index = epc_page(cpu, mem, rbx, False, True)
    flags = in_enclave_secinfo(cpu, secs, secinfo_index, rbx)
    if rcx & 0xFFF:
        raise GeneralProtection()
    if not base <= rcx < end:
        raise GeneralProtection()
    index = epc_page(cpu, mem, rcx, False, True)
    if not _legal_request(flags):
        raise GeneralProtection()
    e = cpu.epcm.get(index)
    if e is None or e.state & BLOCKED or e.pt not in _ACCEPTABLE or e.secs is not secs:
        raise epcm_fault(rcx, user=True)
    # PR is not compared: accepting PR on a page never restricted only clears the flags.
    state = e.state
    if (
        e.linaddr != rcx
        or (state & (PENDING | MODIFIED)) << 3 != flags & _STATE_BITS  # EPCM vs SECINFO bits
        or e.perms != flags & SECINFO_PERM_MASK
        or e.pt != (flags >> SECINFO_PAGE_TYPE_SHIFT) & 0xFF
    ):
        _finish(regs, values, _ATTRIBUTES_MISMATCH)
        return
    # A restriction or type change is accepted only once every thread that could still hold a
    # translation from before it (the caller included) has left [model, spec 6.4].
    if state & (PR | MODIFIED) and not secs.tracked_since(e.epoch):
        _finish(regs, values, _NOT_TRACKED)
        return
    if e.pt is _PT_TCS:
        _check_tcs(cpu, index, secs)
    e.state = state & ~(PENDING | MODIFIED | PR)
    _finish(regs, values, _SUCCESS)
