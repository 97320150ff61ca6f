"""EWB: evict an EPC page to main memory, sealed, with its version in a VA slot (SDM EWB, spec 3.11)."""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from ...arch.constants import (
    PAGE_SIZE,
    EnclsLeaf,
    PageType,
    SgxError,
)
from ..epcm import BLOCKED, MODIFIED, PENDING, PR
from ..faults import GeneralProtection
from ..leaves import encls_leaf
from ..memory import PTE_ADDR_MASK
from ..operands import (
    epc_page,
    epcm_fault,
    read_pageinfo,
    translate,
)
from ..paging_crypto import ewb_header, pcmd_image, seal, secs_plaintext
from .eremove import free_page

if TYPE_CHECKING:
    from ..epc import Epc
    from ..memory import AddressSpace
    from ..processor import Processor

# Plain module constants: class attribute lookups on the enums are slow on this hot path.
_PT_SECS = PageType.PT_SECS
_PT_VA = PageType.PT_VA
_CHILD_TYPES = frozenset({PageType.PT_REG, PageType.PT_TCS, PageType.PT_TRIM})
_SAVED_STATE = PENDING | MODIFIED | PR  # the EPCM state bits SECINFO.FLAGS carries (bits 3..5)
_PAGE_NOT_BLOCKED = SgxError.SGX_PAGE_NOT_BLOCKED
_NOT_TRACKED = SgxError.SGX_NOT_TRACKED
_CHILD_PRESENT = SgxError.SGX_CHILD_PRESENT
_VA_SLOT_OCCUPIED = SgxError.SGX_VA_SLOT_OCCUPIED
_OFFSET_MASK = PAGE_SIZE - 1
_SLOT = struct.Struct("<Q")  # a VA slot: one little-endian version


def _store(epc: Epc, mem: AddressSpace, pte: int, lin: int, data: bytes) -> None:
    """`write_operand` once its translation has been probed: a write to EPC drops.

    The outputs are aligned (SRCPGE to a page, PCMD to 128, PAGEINFO to 32), so none crosses
    a page and the probe's PTE is the only one involved.
    """
    if not epc.base <= pte & PTE_ADDR_MASK < epc.end:
        mem.write(lin, data)


@encls_leaf(EnclsLeaf.EWB)
def ewb(cpu: Processor, mem: AddressSpace, rbx: int, rcx: int, rdx: int) -> int:
    # Hot path: each `if x & (alignment - 1): raise GeneralProtection()` is require_aligned.
    if rbx & 31:
        raise GeneralProtection()
    if rcx & 0xFFF:
        raise GeneralProtection()
    index = epc_page(cpu, mem, rcx, True, False)
    if rdx & 7:  # VA_SLOT_SIZE
        raise GeneralProtection()
    va_index = epc_page(cpu, mem, rdx, True, False)
    if va_index == index:
        raise GeneralProtection()
    linaddr, srcpge, pcmd, secs_field = read_pageinfo(cpu, mem, rbx)
    if linaddr != 0 or secs_field != 0:
        raise GeneralProtection()
    if pcmd & 127:  # PCMD_ALIGN
        raise GeneralProtection()
    if srcpge & 0xFFF:
        raise GeneralProtection()
    epcm = cpu.epcm
    entry = epcm.get(index)
    if entry is None:
        raise epcm_fault(rcx, write=True)
    va_entry = epcm.get(va_index)
    if va_entry is None or va_entry.pt is not _PT_VA:
        raise epcm_fault(rdx, write=True)
    # [choice] "EBLOCK not correct" (#GP) is a concurrency check; a sequential model never hits it.
    pt = entry.pt
    secs = entry.secs
    child = pt in _CHILD_TYPES
    if child:
        assert secs is not None
        if not entry.state & BLOCKED:
            return _PAGE_NOT_BLOCKED
        if not secs.tracked_since(entry.epoch):
            return _NOT_TRACKED
        header_eid = enclaveid = secs.eid
    elif pt is _PT_SECS:
        assert secs is not None
        if secs.chldcnt:
            return _CHILD_PRESENT
        header_eid, enclaveid = 0, secs.eid
    else:  # PT_VA: never mapped, so no blocking or tracking
        header_eid = enclaveid = 0
    # [choice] The three outputs are probed for writability before anything changes, so a #PF
    # on SRCPGE, PCMD or PAGEINFO leaves the page resident and the slot untouched.
    src_pte = translate(mem, srcpge, True, False)
    pcmd_pte = translate(mem, pcmd, True, False)
    info_pte = translate(mem, rbx, True, False)
    epc = cpu.epc
    page: bytes | memoryview = epc.page(index)  # a live view: AES-GCM reads it in place
    if pt is _PT_SECS:
        assert secs is not None
        parked = False
        if secs.measurement is not None:
            cpu.parked_measurements[secs.eid] = secs.measurement
            parked = True
        page = secs_plaintext(page, secs, parked)
    # EpcmEntry.secinfo_flags(): PT, RWX, PENDING/MODIFIED/PR (written out on this hot path).
    flags = (pt << 8) | entry.perms | ((entry.state & _SAVED_STATE) << 3)
    header = ewb_header(header_eid, entry.linaddr, flags)
    # The VA slot is the quadword RDX names within the VA page.
    slot_offset = (va_index << 12) + (rdx & _OFFSET_MASK)
    occupied = _SLOT.unpack_from(epc.buffer, slot_offset)[0] != 0
    version = cpu.new_paging_version()
    ciphertext, mac = seal(cpu.base_pk, version, header, page)
    _store(epc, mem, src_pte, srcpge, ciphertext)
    _store(epc, mem, pcmd_pte, pcmd, pcmd_image(flags, enclaveid, mac))
    _store(epc, mem, info_pte, rbx, entry.linaddr.to_bytes(8, "little"))  # PAGEINFO.LINADDR
    _SLOT.pack_into(epc.buffer, slot_offset, version)  # an occupied slot is overwritten all the same
    free_page(cpu, index)
    if child:
        assert secs is not None
        secs.chldcnt -= 1
    return _VA_SLOT_OCCUPIED if occupied else 0
