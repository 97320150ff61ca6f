"""Drive the processor model leaf by leaf, as a minimal kernel would, without the Linux model.

For tests, the demonstration, benchmarks and experiments at the hardware level: it keeps a
kernel address space (EPC identity-mapped, a scratch area for PAGEINFO/SECINFO/source pages),
a free-page allocator, and one process address space whose page table maps each enclave page at
its linear address. Every operation is a real ENCLS/ENCLU through `Processor`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .arch.constants import (
    EINITTOKEN_SIZE,
    IA32_SGXLEPUBKEYHASH0,
    PAGE_SHIFT,
    PAGE_SIZE,
    Attribute,
    EnclsLeaf,
    EncluLeaf,
    PageType,
    secinfo_flags,
)
from .hw.access import enclave_read, enclave_write
from .hw.memory import PTE_P, PTE_U, PTE_W, PTE_XD, FlatMemory
from .hw.processor import Processor
from .hw.regs import Reg, Registers

if TYPE_CHECKING:
    from .linux.usermem import UserMemory

# Kernel scratch layout (non-EPC linear addresses of the kernel's FlatMemory).
_PAGEINFO = 0x1000
_SECINFO = 0x1040
_PCMD = 0x1080
_SOURCE = 0x2000
_SIGSTRUCT = 0x4000
_TOKEN = 0x4800
_HOST_RIP = 0x40_0000  # where "host code" executes ENCLU in the process address space
_AEP = 0x40_1000

# Hot-path constants: enum class attribute lookups and struct format parsing are slow.
_PAGEINFO_FMT = struct.Struct("<4Q")
_U64 = struct.Struct("<Q")
_SECINFO_TAIL = bytes(56)
_REG_FLAGS = secinfo_flags(PageType.PT_REG)
_RAX, _RBX, _RCX, _RDX, _RIP = Reg.RAX, Reg.RBX, Reg.RCX, Reg.RDX, Reg.RIP
_EAUG, _EMODPR, _ETRACK, _EBLOCK = EnclsLeaf.EAUG, EnclsLeaf.EMODPR, EnclsLeaf.ETRACK, EnclsLeaf.EBLOCK
_EWB, _ELDB, _ELDU = EnclsLeaf.EWB, EnclsLeaf.ELDB, EnclsLeaf.ELDU


@dataclass
class Enclave:
    """What the kit knows about one enclave it built."""

    secs_pa: int
    base: int
    size: int
    pages: dict[int, int] = field(default_factory=dict)  # linear page -> EPC physical address


class LeafKit:
    """A processor plus the two address spaces a kernel and one process would provide."""

    def __init__(
        self, cpu: Processor | None = None, *, umem: UserMemory | None = None, **config: Any
    ) -> None:
        self.cpu = cpu if cpu is not None else Processor(**config)
        epc = self.cpu.epc
        self.kmem = FlatMemory(epc.base, epc.end, user=False)
        # A UserMemory process (untrusted pages an engine can map) or a flat one.
        self.umem: FlatMemory | UserMemory = (
            umem if umem is not None else FlatMemory(epc.base, epc.end, user=True)
        )
        self._next_free = 0

    # -- EPC pages -----------------------------------------------------------------------------
    def alloc(self) -> int:
        """Physical address of a free EPC page."""
        return self.cpu.epc.address(self.alloc_index())

    def alloc_index(self) -> int:
        """Index of a free EPC page (first fit from a rotating cursor)."""
        epcm = self.cpu.epcm
        n = self.cpu.epc.npages
        i = self._next_free % n
        if i not in epcm:  # hot path: the cursor's page is free (the loop's first step)
            self._next_free = (i + 1) % n
            return i
        for step in range(n):
            i = (self._next_free + step) % n
            if i not in epcm:
                self._next_free = (i + 1) % n
                return i
        raise MemoryError("EPC is full")

    def encls(self, leaf: EnclsLeaf, rbx: int = 0, rcx: int = 0, rdx: int = 0) -> int:
        return self.cpu.encls(leaf, rbx, rcx, rdx, mem=self.kmem)

    def pageinfo(self, linaddr: int, srcpge: int, secinfo: int, secs: int) -> int:
        self.kmem.write(_PAGEINFO, _PAGEINFO_FMT.pack(linaddr, srcpge, secinfo, secs))
        return _PAGEINFO

    def secinfo(self, flags: int) -> int:
        self.kmem.write(_SECINFO, _U64.pack(flags) + _SECINFO_TAIL)
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
        self._set_user_pte(lin, pte)

    def _set_user_pte(self, lin: int, pte: int | None) -> None:
        if isinstance(self.umem, FlatMemory):
            self.umem.set_pte(lin, pte)
            return
        self.umem.unmap(lin, PAGE_SIZE)
        if pte is not None:
            self.umem.ptes[lin >> PAGE_SHIFT] = pte  # an EPC frame: no untrusted backing

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
        regs[_RAX] = leaf
        regs[_RBX] = rbx
        regs[_RCX] = rcx
        regs[_RDX] = rdx
        cpu = self.cpu
        cpu.enclu(cpu.lp(lp), regs, self.umem)
        return regs[_RAX]

    def eexit(self, regs: Registers, lp: int = 0) -> Registers:
        self.enclu(regs, EncluLeaf.EEXIT, _HOST_RIP + 3, lp=lp)
        return regs

    # -- SGX2 / EDMM (what the Linux driver does for EAUG, EMODPR, EMODT, ETRACK, EREMOVE) ---------
    def eaug(self, encl: Enclave, lin: int) -> int:
        """EAUG a zeroed PENDING RW- page at `lin` and map it in the process; returns its address."""
        pa = self.alloc()
        self.encls(_EAUG, self.pageinfo(lin, 0, 0, encl.secs_pa), pa)
        self.map(encl, lin, pa)
        return pa

    def emodpr(self, encl: Enclave, lin: int, perms: int) -> int:
        """EMODPR the page mapped at `lin` with the RWX mask `perms`; returns RAX."""
        return self.encls(_EMODPR, self.secinfo(_REG_FLAGS | perms), encl.pages[lin])

    def emodt(self, encl: Enclave, lin: int, page_type: PageType) -> int:
        """EMODT the page mapped at `lin` to `page_type` (TCS or TRIM); returns RAX."""
        return self.encls(EnclsLeaf.EMODT, self.secinfo(secinfo_flags(page_type)), encl.pages[lin])

    def etrack(self, encl: Enclave) -> int:
        return self.encls(_ETRACK, 0, encl.secs_pa)

    def eremove(self, encl: Enclave, lin: int) -> int:
        """EREMOVE the page mapped at `lin`; on success it is also unmapped from the process."""
        code = self.encls(EnclsLeaf.EREMOVE, 0, encl.pages[lin])
        if code == 0:
            del encl.pages[lin]
            self._set_user_pte(lin, None)
        return code

    # -- paging and debug (EPA, EBLOCK, EWB, ELDB/ELDU, EDBGRD/EDBGWR) --------------------------
    def epa(self) -> int:
        """EPA a free EPC page into a Version Array page; returns its address (slot 0)."""
        pa = self.alloc()
        self.encls(EnclsLeaf.EPA, PageType.PT_VA, pa)
        return pa

    def eblock(self, pa: int) -> int:
        return self.encls(_EBLOCK, 0, pa)

    def ewb(self, pa: int, va_slot: int) -> tuple[int, PagedOut]:
        """EWB the EPC page `pa` with its version in `va_slot`: (RAX, what EWB wrote out).

        The PagedOut is only meaningful when RAX is 0 or SGX_VA_SLOT_OCCUPIED.
        """
        rbx = self.pageinfo(0, _SOURCE, _PCMD, 0)
        kmem = self.kmem
        code = self.cpu.encls(_EWB, rbx, pa, va_slot, mem=kmem)
        linaddr = _U64.unpack(kmem.read(rbx, 8))[0]
        blob = PagedOut(kmem.read(_SOURCE, PAGE_SIZE), kmem.read(_PCMD, 128), linaddr)
        return code, blob

    def eld(
        self, blob: PagedOut, pa: int, va_slot: int, secs_pa: int = 0, *, blocked: bool = False
    ) -> int:
        """ELDU (ELDB when `blocked`) `blob` into the free EPC page `pa`; returns RAX.

        `secs_pa` is PAGEINFO.SECS: the owning SECS for enclave pages, 0 for an SECS or a VA page.
        """
        kmem = self.kmem
        kmem.write(_SOURCE, blob.contents)
        kmem.write(_PCMD, blob.pcmd)
        leaf = _ELDB if blocked else _ELDU
        rbx = self.pageinfo(blob.linaddr, _SOURCE, _PCMD, secs_pa)
        return self.cpu.encls(leaf, rbx, pa, va_slot, mem=kmem)

    def edbgrd(self, addr: int) -> tuple[int, int]:
        """EDBGRD the quadword at EPC address `addr`: (RAX, RBX); RBX is 0 on an error code."""
        code = self.encls(EnclsLeaf.EDBGRD, 0, addr)
        rbx = self.cpu.encls_rbx
        return code, rbx if rbx is not None else 0

    def edbgwr(self, addr: int, value: int) -> int:
        return self.encls(EnclsLeaf.EDBGWR, value, addr)

    # -- launch and keys -------------------------------------------------------------------------
    def set_lepubkeyhash(self, digest: bytes) -> None:
        """WRMSR IA32_SGXLEPUBKEYHASH0..3 := the 32-byte `digest`, as Linux does before EINIT."""
        if len(digest) != 32:
            raise ValueError(f"LEPUBKEYHASH is 32 bytes, got {len(digest)}")
        for i in range(4):
            word = int.from_bytes(digest[8 * i : 8 * i + 8], "little")
            self.cpu.wrmsr(IA32_SGXLEPUBKEYHASH0 + i, word)

    def enclave_store(self, lin: int, data: bytes, lp: int = 0) -> None:
        """A data store by the enclave code running on `lp` (enclave-mode access rules)."""
        enclave_write(self.cpu, self.cpu.lp(lp), self.umem, lin, data)

    def enclave_load(self, lin: int, size: int, lp: int = 0) -> bytes:
        """A data load by the enclave code running on `lp` (enclave-mode access rules)."""
        return enclave_read(self.cpu, self.cpu.lp(lp), self.umem, lin, size)


@dataclass(frozen=True)
class PagedOut:
    """What EWB leaves in main memory: the sealed page, its PCMD and PAGEINFO.LINADDR."""

    contents: bytes
    pcmd: bytes
    linaddr: int


AEP = _AEP
HOST_RIP = _HOST_RIP
