"""EWB: evict an EPC page to main memory, sealed, with its version in a VA slot (SDM EWB, spec 3.11)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...arch.constants import (
    PAGE_MASK,
    PAGE_SIZE,
    PCMD_ALIGN,
    VA_SLOT_SIZE,
    EnclsLeaf,
    PageType,
    SgxError,
)
from ...arch.structs import va_read_slot, va_write_slot
from ..faults import GeneralProtection
from ..leaves import encls_leaf
from ..operands import (
    epc_page,
    epcm_fault,
    read_pageinfo,
    require_aligned,
    translate,
    write_operand,
)
from ..paging_crypto import mac_header, pcmd_image, seal, secs_plaintext
from .eremove import free_page

if TYPE_CHECKING:
    from ..memory import AddressSpace
    from ..processor import Processor

_PT_SECS = PageType.PT_SECS
_PT_VA = PageType.PT_VA
_CHILD_TYPES = (PageType.PT_REG, PageType.PT_TCS, PageType.PT_TRIM)


@encls_leaf(EnclsLeaf.EWB)
def ewb(cpu: Processor, mem: AddressSpace, rbx: int, rcx: int, rdx: int) -> int:
    require_aligned(rbx, 32)
    require_aligned(rcx, PAGE_SIZE)
    index = epc_page(cpu, mem, rcx, True, False)
    require_aligned(rdx, VA_SLOT_SIZE)
    va_index = epc_page(cpu, mem, rdx, True, False)
    if va_index == index:
        raise GeneralProtection()
    linaddr, srcpge, pcmd, secs_field = read_pageinfo(cpu, mem, rbx)
    if linaddr != 0 or secs_field != 0:
        raise GeneralProtection()
    require_aligned(pcmd, PCMD_ALIGN)
    require_aligned(srcpge, PAGE_SIZE)
    entry = cpu.epcm.get(index)
    if entry is None:
        raise epcm_fault(rcx, write=True)
    va_entry = cpu.epcm.get(va_index)
    if va_entry is None or va_entry.pt is not _PT_VA:
        raise epcm_fault(rdx, write=True)
    # [choice] "EBLOCK not correct" (#GP) is a concurrency check; a sequential model never hits it.
    pt = entry.pt
    secs = entry.secs
    page = cpu.epc.read(index, 0, PAGE_SIZE)
    if pt in _CHILD_TYPES:
        assert secs is not None
        if not entry.blocked:
            return SgxError.SGX_PAGE_NOT_BLOCKED
        if not secs.tracked_since(entry.epoch):
            return SgxError.SGX_NOT_TRACKED
        header_eid = enclaveid = secs.eid
    elif pt is _PT_SECS:
        assert secs is not None
        if secs.chldcnt:
            return SgxError.SGX_CHILD_PRESENT
        header_eid, enclaveid = 0, secs.eid
    else:  # PT_VA: never mapped, so no blocking or tracking
        header_eid = enclaveid = 0
    # [choice] The three outputs are probed for writability before anything changes, so a #PF
    # on SRCPGE, PCMD or PAGEINFO leaves the page resident and the slot untouched.
    translate(mem, srcpge, True, False)
    translate(mem, pcmd, True, False)
    translate(mem, rbx, True, False)
    parked = False
    if pt is _PT_SECS:
        assert secs is not None
        if secs.measurement is not None:
            cpu.parked_measurements[secs.eid] = secs.measurement
            parked = True
        page = secs_plaintext(page, secs, parked)
    flags = entry.secinfo_flags()
    header = mac_header(header_eid, entry.linaddr, flags.to_bytes(8, "little") + bytes(56))
    slot = (rdx & ~PAGE_MASK) // VA_SLOT_SIZE
    va_page = cpu.epc.page(va_index)
    occupied = va_read_slot(va_page, slot) != 0
    version = cpu.new_paging_version()
    ciphertext, mac = seal(cpu.base_pk, version, header, page)
    write_operand(cpu, mem, srcpge, ciphertext, False)
    write_operand(cpu, mem, pcmd, pcmd_image(flags, enclaveid, mac), False)
    write_operand(cpu, mem, rbx, entry.linaddr.to_bytes(8, "little"), False)  # PAGEINFO.LINADDR
    va_write_slot(va_page, slot, version)  # an occupied slot is overwritten all the same
    free_page(cpu, index)
    if pt in _CHILD_TYPES:
        assert secs is not None
        secs.chldcnt -= 1
    return SgxError.SGX_VA_SLOT_OCCUPIED if occupied else 0
