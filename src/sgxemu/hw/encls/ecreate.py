"""ECREATE: create an SECS page in the EPC (SDM ECREATE, spec 3.1)."""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from ...arch.constants import (
    GPRSGX_SIZE,
    PAGE_SIZE,
    SECINFO_FLAGS_RESERVED_MASK,
    SECINFO_PAGE_TYPE_SHIFT,
    SECINFO_SIZE,
    XSAVE_HEADER_SIZE,
    XSAVE_LEGACY_SIZE,
    Attribute,
    EnclsLeaf,
    Miscselect,
    PageType,
)
from ..epcm import EpcmEntry, insert_at_free_index
from ..faults import GeneralProtection
from ..leaves import encls_leaf
from ..operands import (
    canonical,
    epc_page,
    epcm_fault,
    read_operand,
    read_pageinfo,
    read_u64,
    require_aligned,
)
from ..secs import SecsState

if TYPE_CHECKING:
    from ..memory import AddressSpace
    from ..processor import Processor

_SECS_HEAD = struct.Struct("<QQII")  # SIZE, BASEADDR, SSAFRAMESIZE, MISCSELECT
# Byte ranges of the SECS that must be zero (reserved; the CET fields too, CET is not modelled).
_SECS_RESERVED = ((24, 48), (96, 128), (160, 192), (262, PAGE_SIZE))
_MR_FIELDS = ((64, 96), (128, 160), (256, 260))  # MRENCLAVE, MRSIGNER, ISVPRODID+ISVSVN


def xsave_size(xfrm: int) -> int:
    """Non-compacted XSAVE area size for XFRM: legacy + header (only x87/SSE are supported)."""
    return XSAVE_LEGACY_SIZE + XSAVE_HEADER_SIZE


def misc_size(miscselect: int) -> int:
    return 16 if miscselect & Miscselect.EXINFO else 0


@encls_leaf(EnclsLeaf.ECREATE)
def ecreate(cpu: Processor, mem: AddressSpace, rbx: int, rcx: int, rdx: int) -> int:
    from ..processor import (
        MAX_ENCLAVE_SIZE_LOG2_32,
        MAX_ENCLAVE_SIZE_LOG2_64,
        SUPPORTED_ATTRIBUTES,
        SUPPORTED_MISCSELECT,
        SUPPORTED_XFRM,
    )

    require_aligned(rbx, 32)
    require_aligned(rcx, PAGE_SIZE)
    index = epc_page(cpu, mem, rcx, True, False)
    linaddr, srcpge, secinfo, secs_field = read_pageinfo(cpu, mem, rbx)
    require_aligned(srcpge, PAGE_SIZE)
    require_aligned(secinfo, 64)
    if linaddr != 0 or secs_field != 0:
        raise GeneralProtection()
    raw = read_operand(cpu, mem, secinfo, SECINFO_SIZE, False)
    flags = read_u64(raw, 0)
    # SECINFO reserved fields (FLAGS bits 7:6 and 63:16, bytes 8-63) and PT in one #GP check.
    if (
        flags & SECINFO_FLAGS_RESERVED_MASK
        or raw.count(0, 8) != SECINFO_SIZE - 8
        or (flags >> SECINFO_PAGE_TYPE_SHIFT) & 0xFF != PageType.PT_SECS
    ):
        raise GeneralProtection()
    if index in cpu.epcm:
        raise epcm_fault(rcx, write=True)
    page = bytearray(read_operand(cpu, mem, srcpge, PAGE_SIZE, False))
    size, baseaddr, ssaframesize, miscselect = _SECS_HEAD.unpack_from(page, 0)
    attributes, xfrm = struct.unpack_from("<QQ", page, 48)
    configsvn = struct.unpack_from("<H", page, 260)[0]
    config_id = bytes(page[192:256])
    # The SECS checks of the ECREATE pseudocode, in order; each failure is #GP(0).
    if xfrm & 3 != 3 or xfrm & ~SUPPORTED_XFRM:
        raise GeneralProtection()
    if miscselect & ~SUPPORTED_MISCSELECT:
        raise GeneralProtection()
    if ssaframesize * PAGE_SIZE < xsave_size(xfrm) + GPRSGX_SIZE + misc_size(miscselect):
        raise GeneralProtection()
    if attributes & Attribute.MODE64BIT:
        if not canonical(baseaddr) or size >= 1 << MAX_ENCLAVE_SIZE_LOG2_64:
            raise GeneralProtection()
    elif baseaddr >= 1 << 32 or size >= 1 << MAX_ENCLAVE_SIZE_LOG2_32:
        raise GeneralProtection()
    if size < 2 * PAGE_SIZE or size & (size - 1):
        raise GeneralProtection()
    if baseaddr & (size - 1):
        raise GeneralProtection()
    if attributes & ~SUPPORTED_ATTRIBUTES:
        raise GeneralProtection()  # includes INIT: only EINIT sets it
    if any(page[a:b].count(0) != b - a for a, b in _SECS_RESERVED):
        raise GeneralProtection()
    if not attributes & Attribute.KSS and (configsvn or config_id.count(0) != 64):
        raise GeneralProtection()
    # Commit: the SECS starts uninitialized, with ISVPRODID/ISVSVN 0 and MRENCLAVE reset.
    for a, b in _MR_FIELDS:
        page[a:b] = bytes(b - a)
    secs = SecsState(
        index, cpu.allocate_eid(), baseaddr, size, ssaframesize, miscselect, attributes, xfrm,
        config_id, configsvn,
    )
    assert secs.measurement is not None
    secs.measurement.ecreate(ssaframesize, size)
    cpu.epc.write(index, 0, bytes(page))
    insert_at_free_index(cpu.epcm, index, EpcmEntry(PageType.PT_SECS, secs))
    return 0
