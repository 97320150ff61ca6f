"""The load path ELDB and ELDU share: checks, MAC verification and EPCM restore (SDM ELDB/ELDU, spec 3.12)."""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from ...arch.constants import (
    PAGE_SIZE,
    PCMD_SIZE,
    PageType,
    SgxError,
)
from ...arch.structs import PCMD_OFF_MAC
from ..epcm import BLOCKED, EpcmEntry, insert_at_free_index
from ..faults import GeneralProtection
from ..measurement import MeasurementState
from ..operands import (
    epc_page,
    epcm_fault,
    read_operand,
    read_pageinfo,
)
from ..paging_crypto import MAC_SIZE, header_from_pcmd, secs_restore, unseal

if TYPE_CHECKING:
    from ..memory import AddressSpace
    from ..processor import Processor
    from ..secs import SecsState

# Plain module constants: class attribute lookups on the enums are slow on this hot path.
_CHILD_TYPES = frozenset({PageType.PT_REG, PageType.PT_TCS, PageType.PT_TRIM})
_PT_SECS = PageType.PT_SECS
_PT_VA = PageType.PT_VA
_PAGE_TYPES = {int(t): t for t in PageType}
_MAC_COMPARE_FAIL = SgxError.SGX_MAC_COMPARE_FAIL
_OFFSET_MASK = PAGE_SIZE - 1
_U64 = struct.Struct("<Q")  # PCMD.SECINFO.FLAGS; a VA slot


def load_page(
    cpu: Processor, mem: AddressSpace, rbx: int, rcx: int, rdx: int, *, blocked: bool
) -> int:
    """ELDB (`blocked`) or ELDU: every check in SDM order; the machine changes only on success."""
    # Hot path: each `if x & (alignment - 1): raise GeneralProtection()` is require_aligned.
    if rbx & 31:
        raise GeneralProtection()
    if rcx & 0xFFF:
        raise GeneralProtection()
    index = epc_page(cpu, mem, rcx, True, False)
    if rdx & 7:  # VA_SLOT_SIZE
        raise GeneralProtection()
    va_index = epc_page(cpu, mem, rdx, True, False)
    linaddr, srcpge, pcmd_addr, secs_addr = read_pageinfo(cpu, mem, rbx)
    if pcmd_addr & 127:  # PCMD_ALIGN
        raise GeneralProtection()
    if srcpge & 0xFFF:
        raise GeneralProtection()
    # Conflicts on the page or the VA slot (#GP) need a concurrent leaf: never in this model.
    epcm = cpu.epcm
    if index in epcm:
        raise epcm_fault(rcx, write=True)
    va_entry = epcm.get(va_index)
    if va_entry is None or va_entry.pt is not _PT_VA:
        raise epcm_fault(rdx, write=True)
    pcmd = read_operand(cpu, mem, pcmd_addr, PCMD_SIZE, False)
    flags = _U64.unpack_from(pcmd, 0)[0]
    pt = (flags >> 8) & 0xFF
    secs: SecsState | None = None
    child = pt in _CHILD_TYPES
    if child:
        if secs_addr & 0xFFF:
            raise GeneralProtection()
        secs_index = epc_page(cpu, mem, secs_addr, False, False)
        # The SDM does not say it, but a child needs a live SECS to bind to (spec 12, closed UNC).
        secs = cpu.secs_of(secs_index)
        if secs is None:
            raise epcm_fault(secs_addr)
        eid = secs.eid
    else:  # PT_SECS or PT_VA (or garbage, which the MAC rejects): no parent, no EID binding
        eid = 0
        if secs_addr != 0:
            raise GeneralProtection()
    ciphertext = read_operand(cpu, mem, srcpge, PAGE_SIZE, False)
    epc = cpu.epc
    # The VA slot is the quadword RDX names within the VA page.
    slot_offset = (va_index << 12) + (rdx & _OFFSET_MASK)
    version = _U64.unpack_from(epc.buffer, slot_offset)[0]
    header = header_from_pcmd(eid, linaddr, pcmd)
    mac = pcmd[PCMD_OFF_MAC : PCMD_OFF_MAC + MAC_SIZE]
    plaintext = unseal(cpu.base_pk, version, header, ciphertext, mac)
    if plaintext is None:
        return _MAC_COMPARE_FAIL
    page_type = _PAGE_TYPES.get(pt)
    if page_type is None:
        page_type = PageType(pt)  # unreachable: the MAC covers the type EWB saved
    if page_type is _PT_SECS:
        page, secs, parked = secs_restore(plaintext, index)
        if parked:
            held = cpu.parked_measurements.get(secs.eid)
            if not isinstance(held, MeasurementState):
                # [choice] The running hash the blob refers to is not in this package (another
                # Processor with the same seed wrote it): the load cannot complete.
                return _MAC_COMPARE_FAIL
            del cpu.parked_measurements[secs.eid]
            secs.measurement = held
        plaintext = page
    _U64.pack_into(epc.buffer, slot_offset, 0)  # replay protection: the blob is good exactly once
    epc.write(index, 0, plaintext)
    # PENDING, MODIFIED and PR come back from SECINFO.FLAGS bits 3..5 (EPCM state bits 0..2).
    # Only child pages can come back BLOCKED; their tracking debt was paid before EWB (TRACKED).
    state = ((flags >> 3) & 0x7) | (BLOCKED if blocked and child else 0)
    insert_at_free_index(epcm, index, EpcmEntry(page_type, secs, linaddr, flags & 0x7, state))
    if child:
        assert secs is not None
        secs.chldcnt += 1
    return 0
