"""EADD: add a page to an uninitialized enclave and measure its address and SECINFO (SDM EADD)."""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from ...arch.constants import (
    PAGE_SIZE,
    SECINFO_FLAGS_RESERVED_MASK,
    SECINFO_PERM_MASK,
    SECINFO_SIZE,
    Attribute,
    EnclsLeaf,
    PageType,
)
from ..epcm import EpcmEntry, insert_at_free_index
from ..faults import GeneralProtection
from ..leaves import encls_leaf
from ..operands import epc_page, epcm_fault, read_operand, read_pageinfo

if TYPE_CHECKING:
    from ..memory import AddressSpace
    from ..processor import Processor

# Plain module constants: enum class attribute lookups and IntFlag arithmetic are slow here.
_PT_SECS = PageType.PT_SECS
_PT_TCS = PageType.PT_TCS
_PT_REG = PageType.PT_REG
_TCS = int(PageType.PT_TCS)
_REG = int(PageType.PT_REG)
_INIT = int(Attribute.INIT)
_MODE64BIT = int(Attribute.MODE64BIT)
_TCS_RESERVED_START = 72  # TCS bytes 72..4095 are reserved without CET (SDM Table 38-10)
_TCS_LIMITS = struct.Struct("<II")
_SECINFO_FLAGS = struct.Struct("<Q")
_SECINFO_RESERVED = bytes(SECINFO_SIZE - 8)  # SECINFO bytes 8-63


@encls_leaf(EnclsLeaf.EADD)
def eadd(cpu: Processor, mem: AddressSpace, rbx: int, rcx: int, rdx: int) -> int:
    # Hot path: each `if x & (alignment - 1): raise GeneralProtection()` is require_aligned.
    if rbx & 31:
        raise GeneralProtection()
    if rcx & 0xFFF:
        raise GeneralProtection()
    index = epc_page(cpu, mem, rcx, True, False)
    linaddr, srcpge, secinfo, secs_addr = read_pageinfo(cpu, mem, rbx)
    if srcpge & 0xFFF:
        raise GeneralProtection()
    if secs_addr & 0xFFF:
        raise GeneralProtection()
    if secinfo & 63:
        raise GeneralProtection()
    if linaddr & 0xFFF:
        raise GeneralProtection()
    secs_index = epc_page(cpu, mem, secs_addr, False, False)
    raw = read_operand(cpu, mem, secinfo, SECINFO_SIZE, False)
    flags = _SECINFO_FLAGS.unpack_from(raw)[0]
    page_type = (flags >> 8) & 0xFF
    # SECINFO reserved fields (FLAGS bits 7:6 and 63:16, bytes 8-63) and PT in one #GP check.
    if (
        flags & SECINFO_FLAGS_RESERVED_MASK
        or raw[8:] != _SECINFO_RESERVED
        or (page_type != _REG and page_type != _TCS)
    ):
        raise GeneralProtection()
    epcm = cpu.epcm
    if index in epcm:
        raise epcm_fault(rcx, write=True)
    secs_entry = epcm.get(secs_index)
    if secs_entry is None or secs_entry.pt is not _PT_SECS:
        raise epcm_fault(secs_addr)
    secs = secs_entry.secs
    assert secs is not None
    page = read_operand(cpu, mem, srcpge, PAGE_SIZE, False)
    perms = flags & SECINFO_PERM_MASK
    tcs = page_type == _TCS
    if tcs:
        if page.count(0, _TCS_RESERVED_START) != PAGE_SIZE - _TCS_RESERVED_START:
            raise GeneralProtection()
        if not secs.attributes & _MODE64BIT:  # secs.mode64bit
            fslimit, gslimit = _TCS_LIMITS.unpack_from(page, 64)
            if fslimit & 0xFFF != 0xFFF or gslimit & 0xFFF != 0xFFF:
                raise GeneralProtection()
    elif perms & 2 and not perms & 1:
        raise GeneralProtection()  # W without R
    base = secs.baseaddr
    if not base <= linaddr < base + secs.size:  # secs.in_elrange(linaddr)
        raise GeneralProtection()
    if secs.attributes & _INIT:  # secs.init
        raise GeneralProtection()
    if tcs:
        flags &= ~SECINFO_PERM_MASK  # forced before measuring
        perms = 0
        tcs_page = bytearray(page)
        tcs_page[0:8] = bytes(8)  # STATE := INACTIVE
        tcs_page[8] &= 0xFE  # FLAGS.DBGOPTIN := 0
        tcs_page[24:28] = bytes(4)  # CSSA := 0
        tcs_page[40:48] = bytes(8)  # AEP := 0
        page = bytes(tcs_page)
    measurement = secs.measurement
    assert measurement is not None
    measurement.eadd_checked(linaddr - base, flags)  # a u64 offset (in ELRANGE) and FLAGS
    off = index << 12
    cpu.epc.buffer[off : off + PAGE_SIZE] = page  # cpu.epc.write(index, 0, page)
    insert_at_free_index(epcm, index, EpcmEntry(_PT_TCS if tcs else _PT_REG, secs, linaddr, perms))
    secs.chldcnt += 1
    return 0
