"""The Enclave Page Cache: 4 KiB pages in one or more sections of physical memory.

Contents live in one anonymous mapping reserved up front but committed lazily by the host
kernel, so a 1 TiB EPC costs nothing until pages are written, and an all-zero page stores
nothing (freed pages are returned with MADV_DONTNEED). Execution engines can map the same buffer.
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass

from ..arch.constants import PAGE_SHIFT, PAGE_SIZE

# Physical address of the first section [choice]: above every host virtual address (2^47), because
# the physical address of non-EPC memory is the host address of its backing (see exec/).
EPC_BASE = 0x8000_0000_0000


@dataclass(frozen=True, slots=True)
class EpcSection:
    """One EPC section as CPUID.(EAX=12H, ECX=2+n) reports it."""

    base: int
    size: int


class Epc:
    """EPC page contents, addressed by page index (0 = first page of the first section)."""

    def __init__(self, size: int, sections: int = 1, base: int = EPC_BASE) -> None:
        if size <= 0 or size % (PAGE_SIZE * sections):
            raise ValueError(f"EPC size {size:#x} must be a positive multiple of {sections} pages")
        self.base = base
        self.size = size
        self.end = base + size
        self.npages = size >> PAGE_SHIFT
        per = size // sections
        self.sections = tuple(EpcSection(base + i * per, per) for i in range(sections))
        flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_NORESERVE", 0)
        self.buffer = mmap.mmap(-1, size, flags=flags)
        self.view = memoryview(self.buffer)

    def index(self, pa: int) -> int:
        """Page index of a physical address, or -1 when it is not EPC."""
        if self.base <= pa < self.end:
            return (pa - self.base) >> PAGE_SHIFT
        return -1

    def address(self, index: int) -> int:
        """Physical address of a page index."""
        return self.base + (index << PAGE_SHIFT)

    def page(self, index: int) -> memoryview:
        """The 4 KiB contents of one page (a live view)."""
        off = index << PAGE_SHIFT
        return self.view[off : off + PAGE_SIZE]

    def read(self, index: int, offset: int, size: int) -> bytes:
        off = (index << PAGE_SHIFT) + offset
        return self.buffer[off : off + size]

    def write(self, index: int, offset: int, data: bytes) -> None:
        off = (index << PAGE_SHIFT) + offset
        self.buffer[off : off + len(data)] = data

    def zero(self, index: int) -> None:
        """Zero a page and give its memory back to the host."""
        self.buffer.madvise(mmap.MADV_DONTNEED, index << PAGE_SHIFT, PAGE_SIZE)

    def close(self) -> None:
        self.view.release()
        self.buffer.close()
