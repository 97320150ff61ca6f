"""The Enclave Page Cache: 4 KiB pages in one or more sections of physical memory.

Contents live in one anonymous mapping reserved up front but committed lazily by the host
kernel, so a 1 TiB EPC costs nothing until pages are written, and an all-zero page stores
nothing (freed pages are returned with MADV_DONTNEED). Execution engines can map the same buffer.
"""

from __future__ import annotations

import mmap
import sys
from collections.abc import Container
from dataclasses import dataclass

from ..arch.constants import PAGE_SHIFT, PAGE_SIZE

# Physical address of the first section [choice]: above every host virtual address (2^47), because
# the physical address of non-EPC memory is the host address of its backing (see exec/).
EPC_BASE = 0x8000_0000_0000

# Python 3.11's mmap module lacks MAP_NORESERVE; without it the kernel's heuristic overcommit
# refuses a reservation larger than RAM + swap (a 1 TiB EPC). Linux's value is 0x4000.
MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000 if sys.platform.startswith("linux") else 0)
_ZERO_PAGE = bytes(PAGE_SIZE)
SCRUB_BATCH = 4096  # released pages kept committed before a bulk scrub


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
        flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_NORESERVE
        self.buffer = mmap.mmap(-1, size, flags=flags)
        self.view = memoryview(self.buffer)
        # Freed pages not yet scrubbed. Every other free page reads as zero, so making a page
        # zero is free unless it is here; scrubbing returns the memory to the host in bulk.
        self.dirty: set[int] = set()

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
        """Make a free page all zero (it is already, unless it was freed since the last scrub)."""
        if index in self.dirty:
            self.dirty.discard(index)
            off = index << PAGE_SHIFT
            self.buffer[off : off + PAGE_SIZE] = _ZERO_PAGE

    def release(self, index: int) -> None:
        """A page became free: its contents are scrubbed later, in bulk (see `scrub`)."""
        self.dirty.add(index)

    def scrub(self, keep: Container[int] = ()) -> None:
        """Zero every released page not in `keep` and return its memory to the host."""
        runs: list[tuple[int, int]] = []
        for index in sorted(i for i in self.dirty if i not in keep):
            if runs and runs[-1][0] + runs[-1][1] == index:
                runs[-1] = (runs[-1][0], runs[-1][1] + 1)
            else:
                runs.append((index, 1))
        for first, count in runs:
            self.buffer.madvise(mmap.MADV_DONTNEED, first << PAGE_SHIFT, count << PAGE_SHIFT)
        self.dirty.clear()

    def close(self) -> None:
        self.view.release()
        self.buffer.close()
