"""Virtual memory areas and the mm that holds them (include/linux/mm.h, mm/mmap.c, mm/vma.c).

An `Mm` is a sorted list of non-overlapping `Vma`s over a `UserMemory` page table. Only what the
SGX driver and the fault path need is modelled: flags, the backing file, vm_ops, splitting.
"""

from __future__ import annotations

import bisect
import errno
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from ..arch.constants import PAGE_SIZE
from .errors import KernelError
from .usermem import UserMemory

if TYPE_CHECKING:
    from .encl import SgxEncl
    from .file import OpenFile
    from .process import Process

VM_READ = 0x1
VM_WRITE = 0x2
VM_EXEC = 0x4
VM_SHARED = 0x8
VM_MAYREAD = 0x10
VM_MAYWRITE = 0x20
VM_MAYEXEC = 0x40
VM_MAYSHARE = 0x80
VM_PFNMAP = 0x400
VM_IO = 0x4000
VM_DONTEXPAND = 0x40000
VM_DONTDUMP = 0x4000000
VM_ACCESS_FLAGS = VM_READ | VM_WRITE | VM_EXEC

TASK_SIZE = 0x7FFF_FFFF_F000  # 47-bit user address space (TASK_SIZE_MAX on x86-64)
MMAP_BASE = 0x7FFF_E000_0000  # top-down allocation starts below here [choice]
MMAP_MIN_ADDR = 0x10000


def _vma_start(vma: Vma) -> int:
    return vma.start


def calc_vm_prot_bits(prot: int) -> int:
    """PROT_READ/WRITE/EXEC -> VM_READ/WRITE/EXEC (same bit values on x86)."""
    return prot & VM_ACCESS_FLAGS


class VmOps(Protocol):
    """The vm_operations_struct hooks the SGX driver provides."""

    def fault(self, vma: Vma, addr: int) -> int:
        """Handle a fault on a non-present page: a VM_FAULT_* code."""
        ...

    def mprotect(self, vma: Vma, start: int, end: int, newflags: int) -> None:
        """Veto a protection change by raising KernelError."""
        ...

    def open(self, vma: Vma) -> None:
        """A new VMA now refers to the same object (split, fork)."""
        ...


# vma_set_page_prot / vma_wants_writenotify (mm/mmap.c)
def vm_page_prot(vma: Vma, vm_flags: int) -> int:
    """The rights present PTEs get from an mprotect: the VMA's, minus W on a shared writable
    mapping whose driver asks to see first writes (vm_ops with a pfn_mkwrite)."""
    prot = vm_flags & VM_ACCESS_FLAGS
    if vm_flags & VM_SHARED and getattr(vma.ops, "wants_writenotify", False):
        prot &= ~VM_WRITE
    return prot


@dataclass(eq=False)
class Vma:
    start: int
    end: int
    flags: int
    file: OpenFile | None = None
    pgoff: int = 0
    ops: VmOps | None = None
    private: SgxEncl | None = None  # vm_private_data (the enclave of an SGX mapping)
    name: str = ""
    mm: Mm | None = None  # vm_mm

    @property
    def prot(self) -> int:
        return self.flags & VM_ACCESS_FLAGS

    def __contains__(self, addr: int) -> bool:
        return self.start <= addr < self.end

    def __repr__(self) -> str:
        bits = "".join(c if self.flags & b else "-" for c, b in (("r", 1), ("w", 2), ("x", 4)))
        bits += "s" if self.flags & VM_SHARED else "p"
        return f"Vma({self.start:#x}-{self.end:#x} {bits} {self.name})"


@dataclass(eq=False)
class Mm:
    """An address space: VMAs plus the page table and untrusted frames (`UserMemory`)."""

    mem: UserMemory
    owner: Process | None = None
    vmas: list[Vma] = field(default_factory=list)
    # The VMA of the last lookup (the vmacache of kernels before 6.1); `remove` forgets it.
    _cached: Vma | None = field(default=None, repr=False)

    def _starts(self) -> list[int]:
        return [v.start for v in self.vmas]

    def find_vma(self, addr: int) -> Vma | None:
        """The first VMA ending above `addr` (it may start above it too), like find_vma()."""
        vma = self._cached
        if vma is not None and vma.start <= addr < vma.end:
            return vma  # VMAs do not overlap: the one containing addr is the first ending above
        vmas = self.vmas
        i = bisect.bisect_right(vmas, addr, key=_vma_start) - 1  # no list of starts per lookup
        if i >= 0 and addr < vmas[i].end:
            vma = self._cached = vmas[i]
            return vma
        return vmas[i + 1] if i + 1 < len(vmas) else None

    def vma_lookup(self, addr: int) -> Vma | None:
        """The VMA containing `addr`, if any."""
        vma = self.find_vma(addr)
        return vma if vma is not None and vma.start <= addr else None

    def overlapping(self, start: int, end: int) -> list[Vma]:
        return [v for v in self.vmas if v.start < end and v.end > start]

    def is_free(self, start: int, end: int) -> bool:
        return not self.overlapping(start, end)

    def get_unmapped_area(self, hint: int, length: int) -> int:
        """mm_get_unmapped_area: the hint if free, else top-down first fit below MMAP_BASE."""
        if hint:
            hint = (hint + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
            if hint >= MMAP_MIN_ADDR and hint + length <= TASK_SIZE and self.is_free(hint, hint + length):
                return hint
        top = MMAP_BASE
        for vma in sorted(self.vmas, key=lambda v: v.start, reverse=True):
            if vma.start >= top:
                continue
            if vma.end <= top - length:
                break  # the gap [top - length, top) is free
            top = vma.start
        if top - length < MMAP_MIN_ADDR:
            raise KernelError(errno.ENOMEM)
        return top - length

    def insert(self, vma: Vma) -> None:
        vma.mm = self
        i = bisect.bisect_left(self.vmas, vma.start, key=_vma_start)
        self.vmas.insert(i, vma)

    def split(self, vma: Vma, addr: int) -> Vma:
        """Split `vma` at `addr`; returns the new upper part (vm_ops->open is the caller's)."""
        assert vma.start < addr < vma.end
        upper = Vma(
            addr, vma.end, vma.flags, vma.file,
            vma.pgoff + ((addr - vma.start) >> 12), vma.ops, vma.private, vma.name, self,
        )
        vma.end = addr
        self.insert(upper)
        return upper

    def remove(self, vma: Vma) -> None:
        self.vmas.remove(vma)
        if vma is self._cached:
            self._cached = None
