"""EADD: add a page to an uninitialized enclave and measure its address and SECINFO (SDM EADD)."""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from ...arch.constants import (
    PAGE_SIZE,
    SECINFO_FLAGS_RESERVED_MASK,
    SECINFO_PERM_MASK,
    SECINFO_SIZE,
    EnclsLeaf,
    PageType,
)
from ..epcm import EpcmEntry
from ..faults import GeneralProtection
from ..leaves import encls_leaf
from ..operands import (
    epc_page,
    epcm_fault,
    read_operand,
    read_pageinfo,
    read_u64,
    require_aligned,
)

if TYPE_CHECKING:
    from ..memory import AddressSpace
    from ..processor import Processor

_PT_SECS = PageType.PT_SECS
_PT_TCS = PageType.PT_TCS
_PT_REG = PageType.PT_REG
_TCS_RESERVED_START = 72  # TCS bytes 72..4095 are reserved without CET (SDM Table 38-10)
_TCS_LIMITS = struct.Struct("<II")


@encls_leaf(EnclsLeaf.EADD)
def eadd(cpu: Processor, mem: AddressSpace, rbx: int, rcx: int, rdx: int) -> int:
    require_aligned(rbx, 32)
    require_aligned(rcx, PAGE_SIZE)
    index = epc_page(cpu, mem, rcx, True, False)
    linaddr, srcpge, secinfo, secs_addr = read_pageinfo(cpu, mem, rbx)
    require_aligned(srcpge, PAGE_SIZE)
    require_aligned(secs_addr, PAGE_SIZE)
    require_aligned(secinfo, 64)
    require_aligned(linaddr, PAGE_SIZE)
    secs_index = epc_page(cpu, mem, secs_addr, False, False)
    raw = read_operand(cpu, mem, secinfo, SECINFO_SIZE, False)
    flags = read_u64(raw, 0)
    page_type = (flags >> 8) & 0xFF
    # SECINFO reserved fields (FLAGS bits 7:6 and 63:16, bytes 8-63) and PT in one #GP check.
    if (
        flags & SECINFO_FLAGS_RESERVED_MASK
        or raw.count(0, 8) != SECINFO_SIZE - 8
        or page_type not in (_PT_REG, _PT_TCS)
    ):
        raise GeneralProtection()
    if index in cpu.epcm:
        raise epcm_fault(rcx, write=True)
    secs_entry = cpu.epcm.get(secs_index)
    if secs_entry is None or secs_entry.pt is not _PT_SECS:
        raise epcm_fault(secs_addr)
    secs = secs_entry.secs
    assert secs is not None
    page = read_operand(cpu, mem, srcpge, PAGE_SIZE, False)
    perms = flags & SECINFO_PERM_MASK
    if page_type == _PT_TCS:
        if page.count(0, _TCS_RESERVED_START) != PAGE_SIZE - _TCS_RESERVED_START:
            raise GeneralProtection()
        if not secs.mode64bit:
            fslimit, gslimit = _TCS_LIMITS.unpack_from(page, 64)
            if fslimit & 0xFFF != 0xFFF or gslimit & 0xFFF != 0xFFF:
                raise GeneralProtection()
    elif perms & 2 and not perms & 1:
        raise GeneralProtection()  # W without R
    if not secs.baseaddr <= linaddr < secs.baseaddr + secs.size:
        raise GeneralProtection()
    if secs.init:
        raise GeneralProtection()
    if page_type == _PT_TCS:
        flags &= ~SECINFO_PERM_MASK  # forced before measuring
        perms = 0
        tcs = bytearray(page)
        tcs[0:8] = bytes(8)  # STATE := INACTIVE
        tcs[8] &= 0xFE  # FLAGS.DBGOPTIN := 0
        tcs[24:28] = bytes(4)  # CSSA := 0
        tcs[40:48] = bytes(8)  # AEP := 0
        page = bytes(tcs)
    assert secs.measurement is not None
    secs.measurement.eadd(linaddr - secs.baseaddr, flags)
    cpu.epc.write(index, 0, page)
    cpu.epcm[index] = EpcmEntry(PageType(page_type), secs, linaddr, perms)
    secs.chldcnt += 1
    return 0
