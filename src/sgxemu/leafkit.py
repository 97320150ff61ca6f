"""Drive the processor model leaf by leaf, as a minimal kernel would, without the Linux model.

For tests, the demonstration, benchmarks and experiments at the hardware level: it keeps a
kernel address space (EPC identity-mapped, a scratch area for PAGEINFO/SECINFO/source pages),
a free-page allocator, and one process address space whose page table maps each enclave page at
its linear address. Every operation is a real ENCLS/ENCLU through `Processor`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from .arch.constants import (
    EINITTOKEN_SIZE,
    PAGE_SIZE,
    Attribute,
    EnclsLeaf,
    EncluLeaf,
    PageType,
    secinfo_flags,
)
from .hw.memory import PTE_P, PTE_U, PTE_W, PTE_XD, FlatMemory
from .hw.processor import Processor
from .hw.regs import Reg, Registers

# Kernel scratch layout (non-EPC linear addresses of the kernel's FlatMemory).
_PAGEINFO = 0x1000
_SECINFO = 0x1040
_PCMD = 0x1080
_SOURCE = 0x2000
_SIGSTRUCT = 0x4000
_TOKEN = 0x4800
_HOST_RIP = 0x40_0000  # where "host code" executes ENCLU in the process address space
_AEP = 0x40_1000


@dataclass
class Enclave:
    """What the kit knows about one enclave it built."""

    secs_pa: int
    base: int
    size: int
    pages: dict[int, int] = field(default_factory=dict)  # linear page -> EPC physical address


class LeafKit:
    """A processor plus the two address spaces a kernel and one process would provide."""

    def __init__(self, cpu: Processor | None = None, **config: object) -> None:
        self.cpu = cpu if cpu is not None else Processor(**config)
        epc = self.cpu.epc
        self.kmem = FlatMemory(epc.base, epc.end, user=False)
        self.umem = FlatMemory(epc.base, epc.end, user=True)
        self._next_free = 0

    # -- EPC pages -----------------------------------------------------------------------------
    def alloc(self) -> int:
        """Physical address of a free EPC page (first fit from a rotating cursor)."""
        cpu = self.cpu
        n = cpu.epc.npages
        for step in range(n):
            i = (self._next_free + step) % n
            if i not in cpu.epcm:
                self._next_free = (i + 1) % n
                return cpu.epc.address(i)
        raise MemoryError("EPC is full")

    def encls(self, leaf: EnclsLeaf, rbx: int = 0, rcx: int = 0, rdx: int = 0) -> int:
        return self.cpu.encls(leaf, rbx, rcx, rdx, mem=self.kmem)

    def pageinfo(self, linaddr: int, srcpge: int, secinfo: int, secs: int) -> int:
        self.kmem.write(_PAGEINFO, struct.pack("<4Q", linaddr, srcpge, secinfo, secs))
        return _PAGEINFO

    def secinfo(self, flags: int) -> int:
        self.kmem.write(_SECINFO, struct.pack("<Q", flags) + bytes(56))
        return _SECINFO

    # -- building ------------------------------------------------------------------------------
    def ecreate(
        self,
        base: int,
        size: int,
        *,
        attributes: int = Attribute.MODE64BIT,
        xfrm: int = 3,
        ssaframesize: int = 1,
        miscselect: int = 0,
    ) -> Enclave:
        secs = bytearray(PAGE_SIZE)
        struct.pack_into("<QQII", secs, 0, size, base, ssaframesize, miscselect)
        struct.pack_into("<QQ", secs, 48, attributes, xfrm)
        self.kmem.write(_SOURCE, bytes(secs))
        pa = self.alloc()
        self.encls(
            EnclsLeaf.ECREATE,
            self.pageinfo(0, _SOURCE, self.secinfo(secinfo_flags(PageType.PT_SECS)), 0),
            pa,
        )
        return Enclave(pa, base, size)

    def eadd(
        self, encl: Enclave, lin: int, data: bytes, flags: int, *, measure: bool = True
    ) -> int:
        """EADD one page (and 16 EEXTENDs when `measure`); maps it in the process."""
        self.kmem.write(_SOURCE, data.ljust(PAGE_SIZE, b"\0"))
        pa = self.alloc()
        self.encls(
            EnclsLeaf.EADD, self.pageinfo(lin, _SOURCE, self.secinfo(flags), encl.secs_pa), pa
        )
        if measure:
            for off in range(0, PAGE_SIZE, 256):
                self.encls(EnclsLeaf.EEXTEND, encl.secs_pa, pa + off)
        self.map(encl, lin, pa)
        return pa

    def map(self, encl: Enclave, lin: int, pa: int, *, write: bool = True, execute: bool = True) -> None:
        """Install the process PTE for an enclave page."""
        encl.pages[lin] = pa
        pte = pa | PTE_P | PTE_U | (PTE_W if write else 0) | (0 if execute else PTE_XD)
        self.umem.set_pte(lin, pte)

    def einit(self, encl: Enclave, sigstruct: bytes, token: bytes = bytes(EINITTOKEN_SIZE)) -> int:
        self.kmem.write(_SIGSTRUCT, sigstruct)
        self.kmem.write(_TOKEN, token)
        return self.encls(EnclsLeaf.EINIT, _SIGSTRUCT, encl.secs_pa, _TOKEN)

    # -- running (a scripted host thread on logical processor `lp`) ---------------------------------
    def eenter(self, tcs: int, lp: int = 0, regs: Registers | None = None) -> Registers:
        """EENTER through `tcs`; returns the register file, now inside the enclave."""
        regs = regs if regs is not None else Registers()
        regs[Reg.RAX] = EncluLeaf.EENTER
        regs[Reg.RBX] = tcs
        regs[Reg.RCX] = _AEP
        regs[Reg.RIP] = _HOST_RIP
        self.cpu.enclu(self.cpu.lp(lp), regs, self.umem)
        return regs

    def eresume(self, tcs: int, lp: int = 0, regs: Registers | None = None) -> Registers:
        regs = regs if regs is not None else Registers()
        regs[Reg.RAX] = EncluLeaf.ERESUME
        regs[Reg.RBX] = tcs
        regs[Reg.RCX] = _AEP
        regs[Reg.RIP] = _AEP
        self.cpu.enclu(self.cpu.lp(lp), regs, self.umem)
        return regs

    def enclu(
        self, regs: Registers, leaf: EncluLeaf, rbx: int = 0, rcx: int = 0, rdx: int = 0, lp: int = 0
    ) -> int:
        """An ENCLU executed by enclave code (RIP stays where it was); returns RAX."""
        regs[Reg.RAX] = leaf
        regs[Reg.RBX] = rbx
        regs[Reg.RCX] = rcx
        regs[Reg.RDX] = rdx
        self.cpu.enclu(self.cpu.lp(lp), regs, self.umem)
        return regs[Reg.RAX]

    def eexit(self, regs: Registers, lp: int = 0) -> Registers:
        self.enclu(regs, EncluLeaf.EEXIT, _HOST_RIP + 3, lp=lp)
        return regs


AEP = _AEP
HOST_RIP = _HOST_RIP
