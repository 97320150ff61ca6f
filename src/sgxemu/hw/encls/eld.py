"""The load path ELDB and ELDU share: checks, MAC verification and EPCM restore (SDM ELDB/ELDU, spec 3.12)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...arch.constants import (
    PAGE_MASK,
    PAGE_SIZE,
    PCMD_ALIGN,
    PCMD_SIZE,
    VA_SLOT_SIZE,
    PageType,
    SgxError,
)
from ...arch.structs import PCMD_OFF_MAC, va_read_slot, va_write_slot
from ..epcm import EpcmEntry
from ..faults import GeneralProtection
from ..measurement import MeasurementState
from ..operands import (
    epc_page,
    epcm_fault,
    read_operand,
    read_pageinfo,
    read_u64,
    require_aligned,
)
from ..paging_crypto import MAC_SIZE, header_from_pcmd, secs_restore, unseal

if TYPE_CHECKING:
    from ..memory import AddressSpace
    from ..processor import Processor
    from ..secs import SecsState

_CHILD_TYPES = (PageType.PT_REG, PageType.PT_TCS, PageType.PT_TRIM)


def load_page(
    cpu: Processor, mem: AddressSpace, rbx: int, rcx: int, rdx: int, *, blocked: bool
) -> int:
    """ELDB (`blocked`) or ELDU: every check in SDM order; the machine changes only on success."""
    require_aligned(rbx, 32)
    require_aligned(rcx, PAGE_SIZE)
    index = epc_page(cpu, mem, rcx, True, False)
    require_aligned(rdx, VA_SLOT_SIZE)
    va_index = epc_page(cpu, mem, rdx, True, False)
    linaddr, srcpge, pcmd_addr, secs_addr = read_pageinfo(cpu, mem, rbx)
    require_aligned(pcmd_addr, PCMD_ALIGN)
    require_aligned(srcpge, PAGE_SIZE)
    # Conflicts on the page or the VA slot (#GP) need a concurrent leaf: never in this model.
    if index in cpu.epcm:
        raise epcm_fault(rcx, write=True)
    va_entry = cpu.epcm.get(va_index)
    if va_entry is None or va_entry.pt is not PageType.PT_VA:
        raise epcm_fault(rdx, write=True)
    pcmd = read_operand(cpu, mem, pcmd_addr, PCMD_SIZE, False)
    flags = read_u64(pcmd, 0)
    pt = (flags >> 8) & 0xFF
    secs: SecsState | None = None
    if pt in _CHILD_TYPES:
        require_aligned(secs_addr, PAGE_SIZE)
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
    slot = (rdx & ~PAGE_MASK) // VA_SLOT_SIZE
    va_page = cpu.epc.page(va_index)
    version = va_read_slot(va_page, slot)
    header = header_from_pcmd(eid, linaddr, pcmd)
    mac = pcmd[PCMD_OFF_MAC : PCMD_OFF_MAC + MAC_SIZE]
    plaintext = unseal(cpu.base_pk, version, header, ciphertext, mac)
    if plaintext is None:
        return SgxError.SGX_MAC_COMPARE_FAIL
    page_type = PageType(pt)
    if page_type is PageType.PT_SECS:
        page, secs, parked = secs_restore(plaintext, index)
        if parked:
            held = cpu.parked_measurements.get(secs.eid)
            if not isinstance(held, MeasurementState):
                # [choice] The running hash the blob refers to is not in this package (another
                # Processor with the same seed wrote it): the load cannot complete.
                return SgxError.SGX_MAC_COMPARE_FAIL
            del cpu.parked_measurements[secs.eid]
            secs.measurement = held
        plaintext = page
    va_write_slot(va_page, slot, 0)  # replay protection: the blob is good exactly once
    cpu.epc.write(index, 0, plaintext)
    entry = EpcmEntry(page_type, secs, linaddr, flags & 0x7)
    entry.pending = bool(flags & 0x08)
    entry.modified = bool(flags & 0x10)
    entry.pr = bool(flags & 0x20)
    # Only child pages can come back BLOCKED; their tracking debt was paid before EWB (TRACKED).
    entry.blocked = blocked and page_type in _CHILD_TYPES
    cpu.epcm[index] = entry
    if page_type in _CHILD_TYPES:
        assert secs is not None
        secs.chldcnt += 1
    return 0
