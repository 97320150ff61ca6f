"""A process's page table and untrusted memory: the one small interface everything else uses.

Pages of anonymous memory are frames of a host arena (one anonymous mapping, committed lazily),
and the "physical address" a PTE carries for them is the host address of the frame, so an
execution engine can map the arena once and run enclave code against the same bytes. EPC
pages are mapped by installing a PTE with the EPC physical address. Under the preload library a
different implementation of the same protocol makes the host program's own memory the process
memory.
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap

from ..arch.constants import PAGE_MASK, PAGE_SHIFT, PAGE_SIZE
from ..hw.epc import MAP_NORESERVE
from ..hw.memory import PTE_A, PTE_ADDR_MASK, PTE_P, PTE_U, PTE_W, PTE_XD, PageTable
from .mman import PROT_EXEC, PROT_READ, PROT_WRITE

DEFAULT_ARENA = 64 << 30  # reserved, not committed
_P_A = PTE_P | PTE_A
_OFFSET_MASK = PAGE_SIZE - 1


def pte_for(pa: int, prot: int) -> int:
    """The PTE Linux would install for a frame with VMA protection `prot` (PROT_NONE: none)."""
    if not prot & (PROT_READ | PROT_WRITE | PROT_EXEC):
        return 0
    return (
        pa
        | PTE_P
        | PTE_U
        | (PTE_W if prot & PROT_WRITE else 0)
        | (0 if prot & PROT_EXEC else PTE_XD)
    )


class ArenaFull(MemoryError):
    pass


class UserMemory:
    """Page table + untrusted frames of one process (implements hw.memory.AddressSpace)."""

    def __init__(self, arena_size: int = DEFAULT_ARENA) -> None:
        flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_NORESERVE
        self.arena = mmap.mmap(-1, arena_size, flags=flags)
        self.arena_base = ctypes.addressof(ctypes.c_char.from_buffer(self.arena))
        self.arena_size = arena_size
        self._free_frames: list[int] = []
        self._next_frame = 0
        self.ptes = self.page_table = PageTable()  # linear page number -> PTE
        self.frames: dict[int, int] = {}  # linear page number -> arena offset (anonymous pages)

    # -- frames ----------------------------------------------------------------------------------
    def _alloc_frame(self) -> int:
        if self._free_frames:
            return self._free_frames.pop()
        off = self._next_frame
        if off + PAGE_SIZE > self.arena_size:
            raise ArenaFull("process arena exhausted")
        self._next_frame += PAGE_SIZE
        return off

    def _free_frame(self, off: int) -> None:
        self.arena.madvise(mmap.MADV_DONTNEED, off, PAGE_SIZE)
        self._free_frames.append(off)

    # -- mapping -----------------------------------------------------------------------------------
    def map_anonymous(self, lin: int, size: int, prot: int) -> None:
        """Back [lin, lin+size) with fresh zero frames and install PTEs with `prot`."""
        for page in range(lin >> PAGE_SHIFT, (lin + size + PAGE_SIZE - 1) >> PAGE_SHIFT):
            self._drop(page)
            off = self._alloc_frame()
            self.frames[page] = off
            self.ptes[page] = pte_for(self.arena_base + off, prot)


    def map_frame(self, lin: int, pa: int, prot: int) -> None:
        """Install a PTE for one page at a given physical address (an EPC page)."""
        page = lin >> PAGE_SHIFT
        ptes = self.ptes
        if page in ptes or page in self.frames:  # (else `_drop` has nothing to drop)
            self._drop(page)
        ptes[page] = pte_for(pa, prot)

    def unmap(self, lin: int, size: int) -> None:
        for page in range(lin >> PAGE_SHIFT, (lin + size + PAGE_SIZE - 1) >> PAGE_SHIFT):
            self._drop(page)

    def zap(self, lin: int) -> None:
        """Remove the PTE of one page, keeping any anonymous frame (zap_vma_ptes)."""
        page = lin >> PAGE_SHIFT
        if page not in self.frames:
            self.ptes.pop(page, None)

    def protect(self, lin: int, size: int, prot: int) -> None:
        """Change the rights of installed PTEs (anonymous frames keep their contents)."""
        for page in range(lin >> PAGE_SHIFT, (lin + size + PAGE_SIZE - 1) >> PAGE_SHIFT):
            off = self.frames.get(page)
            if off is not None:
                self.ptes[page] = pte_for(self.arena_base + off, prot)
            else:
                pte = self.ptes.get(page)
                if pte:
                    self.ptes[page] = pte_for(pte & PTE_ADDR_MASK, prot)

    def _drop(self, page: int) -> None:
        self.ptes.pop(page, None)
        off = self.frames.pop(page, None)
        if off is not None:
            self._free_frame(off)

    # -- AddressSpace --------------------------------------------------------------------------------
    def translate(self, lin: int) -> int:
        # A page walk sets the accessed bit (the reclaimer's aging reads and clears it).
        page = lin >> PAGE_SHIFT
        pte = self.ptes.get(page, 0)
        if pte & _P_A == PTE_P:  # present, accessed bit not yet set (one test for two)
            pte |= PTE_A
            self.ptes[page] = pte
        return pte

    def _offset(self, lin: int) -> int:
        off = self.frames.get(lin >> PAGE_SHIFT)
        if off is None:
            raise ValueError(f"no untrusted frame at {lin:#x}")
        return off + (lin & ~PAGE_MASK)

    def read(self, lin: int, size: int) -> bytes:
        off = lin & _OFFSET_MASK
        if 0 < size <= PAGE_SIZE - off:  # hot path: within one page (`_offset` inlined)
            frame = self.frames.get(lin >> PAGE_SHIFT)
            if frame is not None:
                return self.arena[frame + off : frame + off + size]
        out = bytearray()
        while size > 0:
            n = min(size, PAGE_SIZE - (lin & ~PAGE_MASK))
            off = self._offset(lin)
            out += self.arena[off : off + n]
            lin += n
            size -= n
        return bytes(out)

    def write(self, lin: int, data: bytes) -> None:
        off = lin & _OFFSET_MASK
        n = len(data)
        if 0 < n <= PAGE_SIZE - off:  # hot path: within one page (`_offset` inlined)
            frame = self.frames.get(lin >> PAGE_SHIFT)
            if frame is not None:
                self.arena[frame + off : frame + off + n] = data
                return
        pos = 0
        while pos < len(data):
            n = min(len(data) - pos, PAGE_SIZE - (lin & ~PAGE_MASK))
            off = self._offset(lin)
            self.arena[off : off + n] = data[pos : pos + n]
            lin += n
            pos += n

    def has_frame(self, lin: int) -> bool:
        return (lin >> PAGE_SHIFT) in self.frames

    def backing_regions(self) -> list[tuple[int, int]]:
        """Host ranges that hold untrusted frames (an engine maps them once)."""
        return [(self.arena_base, self.arena_size)]

    def close(self) -> None:
        self.ptes.clear()
        self.frames.clear()
        with contextlib.suppress(BufferError):  # an engine may still hold a view
            self.arena.close()
