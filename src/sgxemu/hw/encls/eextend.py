"""EEXTEND: measure 256 bytes of an enclave page into MRENCLAVE (SDM EEXTEND)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...arch.constants import PAGE_MASK, Attribute, EnclsLeaf, PageType
from ..faults import GeneralProtection
from ..leaves import encls_leaf
from ..memory import FlatMemory
from ..operands import epc_page, epcm_fault

if TYPE_CHECKING:
    from ..measurement import MeasurementState
    from ..memory import AddressSpace
    from ..processor import Processor

_PT_REG = PageType.PT_REG
_PT_TCS = PageType.PT_TCS
_INIT = int(Attribute.INIT)


def _checked(
    cpu: Processor, mem: AddressSpace, rbx: int, rcx: int
) -> tuple[int, int, MeasurementState]:
    """EEXTEND's checks in SDM order; (EPC index, ELRANGE offset of the page, measurement)."""
    epc = cpu.epc
    base = epc.base
    page = rcx & PAGE_MASK
    if (
        type(mem) is FlatMemory
        and not rbx & 0xFFF
        and not rcx & 0xFF
        and mem.direct_lo <= rbx < mem.direct_hi
        and mem.direct_lo <= page < mem.direct_hi
        and base <= rbx < epc.end
        and base <= page < epc.end
    ):
        # Both operands are aligned EPC pages of the direct map: `epc_page` would return these.
        secs_index = (rbx - base) >> 12
        index = (page - base) >> 12
    else:
        if rbx & 0xFFF:
            raise GeneralProtection()
        secs_index = epc_page(cpu, mem, rbx, False, False)
        if rcx & 0xFF:
            raise GeneralProtection()
        index = epc_page(cpu, mem, rcx, False, False)
    entry = cpu.epcm.get(index)
    if entry is None or (entry.pt is not _PT_REG and entry.pt is not _PT_TCS):
        raise epcm_fault(rcx)
    secs = entry.secs
    if secs is None or secs.index != secs_index:
        raise GeneralProtection()  # RBX is not the SECS of the page
    measurement = secs.measurement
    if measurement is None or secs.attributes & _INIT:  # secs.init
        raise GeneralProtection()
    # The page's LINADDR is page aligned and within ELRANGE, so offsets stay u64 and aligned.
    return index, entry.linaddr - secs.baseaddr, measurement


@encls_leaf(EnclsLeaf.EEXTEND)
def eextend(cpu: Processor, mem: AddressSpace, rbx: int, rcx: int, rdx: int) -> int:
    index, page_offset, measurement = _checked(cpu, mem, rbx, rcx)
    off = rcx & 0xFFF
    start = (index << 12) + off
    measurement.eextend_checked(page_offset + off, cpu.epc.buffer[start : start + 256])
    return 0


def eextend_page(cpu: Processor, mem: AddressSpace, rbx: int, page: int) -> None:
    """The 16 EEXTENDs of one page in ascending order (the kernel's sgx_encl_extend loop).

    Every one of them sees the same SECS, page and EPCM entry, so it passes exactly the checks
    of the first; only the measurement differs. Checking once gives the same result and the
    same fault (the first EEXTEND's) as 16 calls [model shortcut]. `page` is page aligned.
    """
    index, page_offset, measurement = _checked(cpu, mem, rbx, page)
    start = index << 12
    measurement.eextend_page_checked(page_offset, cpu.epc.buffer[start : start + 4096])
