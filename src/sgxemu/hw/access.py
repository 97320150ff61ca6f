"""What an access from enclave mode sees: page-table rights intersected with EPCM rights.

SDM 38.3 / 38.5 / 42.4 (spec 6.1). The answer is cached per logical processor (its TLB) and the
cache is only dropped at enclave entry and exit, so a translation filled before an EMODPR keeps
its old rights until the thread leaves: the hazard ETRACK exists for is observable.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..arch.constants import PAGE_MASK, PAGE_SHIFT, PAGE_SIZE, PageType, PfErrorCode
from .epcm import UNUSABLE
from .faults import GeneralProtection, PageFault
from .memory import PTE_ADDR_MASK, PTE_P, PTE_U, PTE_W, PTE_XD, AddressSpace

if TYPE_CHECKING:
    from .lp import LogicalProcessor
    from .processor import Processor

READ = 1
WRITE = 2
EXECUTE = 4

_PT_REG = PageType.PT_REG
_U = int(PfErrorCode.U)
_P = int(PfErrorCode.P)
_SGX = int(PfErrorCode.SGX)
_ACCESS_CODE = {READ: _U, WRITE: _U | int(PfErrorCode.W), EXECUTE: _U | int(PfErrorCode.I)}


def enclave_access(
    cpu: Processor, lp: LogicalProcessor, mem: AddressSpace, lin: int, access: int
) -> int:
    """Translate an enclave-mode access: EPC index, -1 for non-EPC memory, or a fault."""
    hit = lp.tlb.get(lin >> PAGE_SHIFT)
    if hit is not None and hit[1] & access:
        return hit[0]
    return tlb_fill(cpu, lp, mem, lin, access)


def tlb_fill(
    cpu: Processor, lp: LogicalProcessor, mem: AddressSpace, lin: int, access: int
) -> int:
    """The full check on a TLB miss; caches the effective rights of the page on success."""
    # A hot path (every entry re-checks the pages the thread used): `Epc.index` and
    # `secs.in_elrange` are inlined.
    secs = lp.secs
    assert secs is not None, "enclave access outside enclave mode"
    base = secs.baseaddr
    in_elrange = base <= lin < base + secs.size
    if access == EXECUTE and not in_elrange:
        raise GeneralProtection()  # code fetch outside ELRANGE (SDM 38.3)
    code = _ACCESS_CODE[access]
    pte = mem.translate(lin)
    if not pte & PTE_P:
        raise PageFault(lin, code)
    rights = READ | (WRITE if pte & PTE_W else 0) | (0 if pte & PTE_XD else EXECUTE)
    if not pte & PTE_U or not rights & access:
        raise PageFault(lin, code | _P)
    pa = pte & PTE_ADDR_MASK
    epc = cpu.epc
    if not epc.base <= pa < epc.end:
        if in_elrange:
            raise PageFault(lin, code | _P | _SGX)  # ELRANGE not backed by EPC [choice, spec 6.1]
        lp.tlb[lin >> PAGE_SHIFT] = (-1, rights & (READ | WRITE))
        return -1
    index = (pa - epc.base) >> PAGE_SHIFT
    e = cpu.epcm.get(index)
    if (
        e is None
        or e.secs is not secs
        or e.linaddr != lin & PAGE_MASK
        or e.pt is not _PT_REG
        or e.state & UNUSABLE
    ):
        raise PageFault(lin, code | _P | _SGX)
    rights &= e.perms
    if not rights & access:
        raise PageFault(lin, code | _P | _SGX)
    lp.tlb[lin >> PAGE_SHIFT] = (index, rights)
    return index


def enclave_read(
    cpu: Processor, lp: LogicalProcessor, mem: AddressSpace, lin: int, size: int
) -> bytes:
    """A data read from enclave mode, split at page boundaries and checked per page."""
    out = b""
    while size > 0:
        off = lin & (PAGE_SIZE - 1)
        n = min(size, PAGE_SIZE - off)
        index = enclave_access(cpu, lp, mem, lin, READ)
        out += cpu.epc.read(index, off, n) if index >= 0 else mem.read(lin, n)
        lin += n
        size -= n
    return out


def enclave_write(
    cpu: Processor, lp: LogicalProcessor, mem: AddressSpace, lin: int, data: bytes
) -> None:
    """A data write from enclave mode; every page is checked before any byte is written."""
    targets = []
    pos, addr = 0, lin
    while pos < len(data):
        off = addr & (PAGE_SIZE - 1)
        n = min(len(data) - pos, PAGE_SIZE - off)
        targets.append((enclave_access(cpu, lp, mem, addr, WRITE), addr, off, pos, n))
        addr += n
        pos += n
    for index, a, off, p, n in targets:
        if index >= 0:
            cpu.epc.write(index, off, data[p : p + n])
        else:
            mem.write(a, data[p : p + n])


def outside_read(cpu: Processor, mem: AddressSpace, lin: int, size: int, user: bool = True) -> bytes:
    """A read from outside enclave mode: EPC pages read as all ones (abort-page semantics)."""
    out = b""
    while size > 0:
        off = lin & (PAGE_SIZE - 1)
        n = min(size, PAGE_SIZE - off)
        pte = mem.translate(lin)
        code = _U if user else 0
        if not pte & PTE_P:
            raise PageFault(lin, code)
        if user and not pte & PTE_U:
            raise PageFault(lin, code | _P)
        if cpu.epc.index(pte & PTE_ADDR_MASK) >= 0:
            out += b"\xff" * n
        else:
            out += mem.read(lin, n)
        lin += n
        size -= n
    return out
