"""What the processor needs from the world outside the EPC: page tables and untrusted memory.

The processor model never owns an address space. Whoever runs code (the kernel model for ENCLS,
a process for ENCLU) hands it an `AddressSpace`: the page-table entry of a linear address, and
reads/writes of memory that is not EPC. Entries use the x86-64 PTE format so the rules stay the
SDM's: P, R/W, U/S, XD and the physical frame.
"""

from __future__ import annotations

from typing import Protocol

from ..arch.constants import PAGE_MASK, PAGE_SHIFT, PAGE_SIZE
from .changelog import LoggedDict

PTE_P = 1 << 0
PTE_W = 1 << 1
PTE_U = 1 << 2
PTE_A = 1 << 5
PTE_D = 1 << 6
PTE_XD = 1 << 63
PTE_ADDR_MASK = 0x000F_FFFF_FFFF_F000
_OFFSET_MASK = PAGE_SIZE - 1
_FRAME_LIMIT = PTE_ADDR_MASK + PAGE_SIZE  # 2^52: the first page a PTE cannot name


class PageTable(LoggedDict[int]):
    """Linear page number -> PTE, with a change log (`version`, `changed_since`).

    An address space whose `translate` reads only such a table (and constants) offers it as
    `page_table`: a check that read PTEs then knows which ones changed since without reading
    them again.
    """

    __slots__ = ()


class AddressSpace(Protocol):
    """The page tables and non-EPC memory seen by one logical processor.

    Optionally `page_table`: a `PageTable` holding every entry `translate` can return other
    than constants (see `page_table_of`).
    """

    def translate(self, lin: int) -> int:
        """The PTE mapping the page of `lin` (0 when not present)."""
        ...

    def read(self, lin: int, size: int) -> bytes:
        """Read non-EPC memory at a linear address (the caller has checked the PTE)."""
        ...

    def write(self, lin: int, data: bytes) -> None:
        """Write non-EPC memory at a linear address (the caller has checked the PTE)."""
        ...


def page_table_of(mem: object) -> PageTable | None:
    """The `PageTable` behind `mem.translate`, or None when it has none to offer."""
    table = getattr(mem, "page_table", None)
    return table if isinstance(table, PageTable) else None


class FlatMemory:
    """A simple address space: EPC identity-mapped, every other address backed on demand.

    It is what kernel code sees through its direct map, and what unit tests use as a process.
    `user` sets the U/S bit of every entry (True for a process, False for kernel memory).
    """

    def __init__(self, epc_base: int, epc_end: int, *, user: bool = True) -> None:
        self.epc_base = epc_base
        self.epc_end = epc_end
        self._flags = PTE_P | PTE_W | (PTE_U if user else 0)
        self.user = user  # whether every entry has U/S set
        # Backed pages as writable views over their bytearrays: slicing a view copies nothing,
        # so a read copies the bytes once and a write stores them once.
        self._pages: dict[int, memoryview] = {}
        # Page number -> PTE where `set_pte` changed the default (read-only outside this class:
        # the leaves skip the walk while it is empty). Every other entry is a constant.
        self.overrides = self.page_table = PageTable()
        self._direct_overrides = 0  # how many overrides lie in [epc_base, epc_end)
        self._set_direct()

    def _set_direct(self) -> None:
        """Set [direct_lo, direct_hi): the pages whose entry is certainly `page | flags`.

        That is P, W, U/S as `user`, and the page itself as the frame: the direct map of the EPC,
        less what a PTE cannot name, and empty while any page of it is overridden. The leaves'
        fast path (`operands.epc_page`, EEXTEND) tests a page against it instead of calling
        `translate`, which would return exactly that entry.
        """
        lo = max(self.epc_base, 0)
        hi = min(self.epc_end, _FRAME_LIMIT)
        if self._direct_overrides or lo & _OFFSET_MASK or hi & _OFFSET_MASK or lo >= hi:
            lo = hi = 0
        self.direct_lo = lo
        self.direct_hi = hi

    def translate(self, lin: int) -> int:
        pte = self.overrides.get(lin >> PAGE_SHIFT)
        if pte is not None:
            return pte
        page = lin & PAGE_MASK
        if self.epc_base <= page < self.epc_end:
            return page | self._flags
        return self._flags  # non-EPC: the frame number is irrelevant to the SGX model

    def set_pte(self, lin: int, pte: int | None) -> None:
        """Override the entry of one page (None restores the default mapping)."""
        page = lin & PAGE_MASK
        key = lin >> PAGE_SHIFT
        had = key in self.overrides
        if pte is None:
            self.overrides.pop(key, None)
        else:
            self.overrides[key] = pte
        if self.epc_base <= page < self.epc_end and had != (pte is not None):
            self._direct_overrides += 1 if pte is not None else -1
            self._set_direct()

    def _page(self, lin: int) -> memoryview:
        page = lin & PAGE_MASK
        buf = self._pages.get(page)
        if buf is None:
            buf = self._pages[page] = memoryview(bytearray(PAGE_SIZE))
        return buf

    def read(self, lin: int, size: int) -> bytes:
        off = lin & _OFFSET_MASK
        if 0 < size <= PAGE_SIZE - off:  # hot path: within one page
            buf = self._pages.get(lin - off)
            return buf[off : off + size].tobytes() if buf is not None else bytes(size)
        out = bytearray()
        while size > 0:
            off = lin & _OFFSET_MASK
            n = min(size, PAGE_SIZE - off)
            buf = self._pages.get(lin & PAGE_MASK)
            out += buf[off : off + n] if buf is not None else bytes(n)
            lin += n
            size -= n
        return bytes(out)

    def write(self, lin: int, data: bytes) -> None:
        off = lin & _OFFSET_MASK
        n = len(data)
        if 0 < n <= PAGE_SIZE - off:  # hot path: within one page (`_page` inlined)
            page = lin - off
            buf = self._pages.get(page)
            if buf is None:
                buf = self._pages[page] = memoryview(bytearray(PAGE_SIZE))
            buf[off : off + n] = data
            return
        pos = 0
        while pos < n:
            off = lin & _OFFSET_MASK
            step = min(n - pos, PAGE_SIZE - off)
            self._page(lin)[off : off + step] = data[pos : pos + step]
            lin += step
            pos += step
