"""EREPORT: a REPORT of the running enclave, MACed with the target's report key (SDM EREPORT, spec 4.5)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...arch.constants import (
    PAGE_MASK,
    PAGE_SIZE,
    REPORT_ALIGN,
    REPORTDATA_ALIGN,
    REPORTDATA_SIZE,
    TARGETINFO_ALIGN,
    TARGETINFO_SIZE,
    EncluLeaf,
    PageType,
)
from ...arch.structs import Report, Targetinfo
from ..faults import GeneralProtection
from ..keys import attributes128, derive_key, report_key_dependencies, report_mac
from ..leaves import enclu_leaf
from ..operands import epc_page, epcm_fault
from ..regs import Reg

if TYPE_CHECKING:
    from ..lp import LogicalProcessor
    from ..memory import AddressSpace
    from ..processor import Processor
    from ..regs import RegisterFile

_PT_REG = PageType.PT_REG


def enclave_operand(
    cpu: Processor, lp: LogicalProcessor, mem: AddressSpace, lin: int, align: int, write: bool
) -> int:
    """EPC index of a memory operand of EREPORT/EGETKEY, after the SDM's per-operand checks.

    #GP(0) if misaligned or outside ELRANGE; #PF(lin) if it does not resolve to EPC (paging
    faults first); #PF(lin) with the SGX bit unless the page is a valid, unblocked REG page of
    the running enclave at its own address, neither PENDING nor MODIFIED, with R (or W).
    """
    secs = lp.secs
    assert secs is not None
    if lin & (align - 1) or not secs.in_elrange(lin):
        raise GeneralProtection()
    index = epc_page(cpu, mem, lin, write, True)
    e = cpu.epcm.get(index)
    if (
        e is None
        or e.blocked
        or e.pt is not _PT_REG
        or e.secs is not secs
        or e.pending
        or e.modified
        or e.linaddr != lin & PAGE_MASK
        or not (e.w if write else e.r)
    ):
        raise epcm_fault(lin, write=write, user=True)
    return index


def _targetinfo_reserved(ti: Targetinfo) -> bool:
    # [choice] CET_ATTRIBUTES counts as reserved: CET is not enumerated by this processor.
    return bool(ti.cet_attributes or any(ti.reserved1) or any(ti.reserved2) or any(ti.reserved3))


@enclu_leaf(EncluLeaf.EREPORT)
def ereport(cpu: Processor, lp: LogicalProcessor, regs: RegisterFile, mem: AddressSpace) -> None:
    secs = lp.secs
    assert secs is not None
    rbx, rcx, rdx = regs[Reg.RBX], regs[Reg.RCX], regs[Reg.RDX]
    ti_index = enclave_operand(cpu, lp, mem, rbx, TARGETINFO_ALIGN, False)
    data_index = enclave_operand(cpu, lp, mem, rcx, REPORTDATA_ALIGN, False)
    # The SDM text tests PENDING/MODIFIED of RCX here; it means RDX (spec 12.12).
    out_index = enclave_operand(cpu, lp, mem, rdx, REPORT_ALIGN, True)
    off = PAGE_SIZE - 1
    ti = Targetinfo.unpack(cpu.epc.read(ti_index, rbx & off, TARGETINFO_SIZE))
    # [choice] The reserved-field #GP comes after all three operand checks (as in EGETKEY).
    if _targetinfo_reserved(ti):
        raise GeneralProtection()
    report = Report(
        cpusvn=cpu.cpusvn,
        miscselect=secs.miscselect,
        isvextprodid=secs.isvextprodid,
        attributes=secs.attributes,
        xfrm=secs.xfrm,
        mrenclave=secs.mrenclave,
        mrsigner=secs.mrsigner,
        config_id=secs.config_id,
        isvprodid=secs.isvprodid,
        isvsvn=secs.isvsvn,
        configsvn=secs.configsvn,
        isvfamilyid=secs.isvfamilyid,
        reportdata=cpu.epc.read(data_index, rcx & off, REPORTDATA_SIZE),
        keyid=cpu.report_keyid,
    )
    key = derive_key(
        cpu,
        report_key_dependencies(
            cpu,
            mrenclave=ti.measurement,
            attributes=attributes128(ti.attributes, ti.xfrm),
            miscselect=ti.miscselect,
            configid=ti.config_id,
            configsvn=ti.configsvn,
            keyid=report.keyid,
            padding=secs.padding,
        ),
    )
    report.mac = report_mac(key, report.pack())
    cpu.epc.write(out_index, rdx & off, report.pack())
    regs[Reg.RIP] = regs[Reg.RIP] + 3  # no error code, no flags (SDM EREPORT)
