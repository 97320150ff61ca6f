"""The kernel's EPC page allocator and the global reclaimable-page list (main.c).

Pages are handed out first-in first-out from one free list (one NUMA node), as
`__sgx_alloc_epc_page_from_node` takes the head and `sgx_free_epc_page` appends to the tail.
Page descriptors are created on first use so a huge EPC costs nothing up front.
"""

from __future__ import annotations

import errno
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..hw.processor import Processor
from .errors import ERESTARTSYS, KernelError

if TYPE_CHECKING:
    from .process import Thread

SGX_NR_TO_SCAN = 16
SGX_NR_LOW_PAGES = 32
SGX_NR_HIGH_PAGES = 64

SGX_EPC_PAGE_RECLAIMER_TRACKED = 1 << 0
SGX_EPC_PAGE_IS_FREE = 1 << 1


class SgxEpcPage:
    """struct sgx_epc_page: an EPC page as the kernel tracks it."""

    __slots__ = ("index", "pa", "flags", "owner", "on_list")

    def __init__(self, index: int, pa: int) -> None:
        self.index = index
        self.pa = pa  # also its kernel virtual address (EPC identity-mapped)
        self.flags = SGX_EPC_PAGE_IS_FREE
        self.owner: object = None  # struct sgx_encl_page *, or None for VA pages
        self.on_list = False  # linked on sgx_active_page_list

    def __repr__(self) -> str:
        return f"SgxEpcPage({self.index}, flags={self.flags})"


class SgxEpc:
    """Free pages, sgx_nr_free_pages and sgx_active_page_list."""

    def __init__(self, cpu: Processor) -> None:
        self.cpu = cpu
        self.npages = cpu.epc.npages
        self.pages: dict[int, SgxEpcPage] = {}
        self._next_fresh = 0  # pages never handed out yet sit at the head of the free list
        self._freed: deque[SgxEpcPage] = deque()
        self.nr_free_pages = self.npages
        self.starved = False  # an allocation without reclaim found no free page (-EBUSY)
        self.active: dict[SgxEpcPage, None] = {}  # insertion-ordered: head is the oldest
        # Set by the machine: one sgx_reclaim_pages() batch, and waking ksgxd.
        self.reclaim_pages: Callable[[], None] = lambda: None
        self.wake_ksgxd: Callable[[], None] = lambda: None
        self.cond_resched: Callable[[Thread | None], None] = lambda thread: None

    def page(self, index: int) -> SgxEpcPage:
        page = self.pages.get(index)
        if page is None:
            page = self.pages[index] = SgxEpcPage(index, self.cpu.epc.address(index))
        return page

    # __sgx_alloc_epc_page (main.c)
    def _alloc_free(self) -> SgxEpcPage | None:
        if self._next_fresh < self.npages:
            page = self.page(self._next_fresh)
            self._next_fresh += 1
        elif self._freed:
            page = self._freed.popleft()
        else:
            return None
        page.flags = 0
        self.nr_free_pages -= 1
        return page

    # sgx_should_reclaim (main.c)
    def should_reclaim(self, watermark: int) -> bool:
        return self.nr_free_pages < watermark and bool(self.active)

    # sgx_alloc_epc_page (main.c)
    def alloc(self, owner: object, reclaim: bool, current: Thread | None = None) -> SgxEpcPage:
        """A free page, reclaiming directly when allowed; KernelError ENOMEM/EBUSY/ERESTARTSYS."""
        error = 0
        page: SgxEpcPage | None = None
        while True:
            page = self._alloc_free()
            if page is not None:
                page.owner = owner
                break
            if not self.active:
                raise KernelError(errno.ENOMEM)
            if not reclaim:
                error = errno.EBUSY
                self.starved = True
                break
            if current is not None and current.signal_pending:
                error = ERESTARTSYS
                break
            self.reclaim_pages()
            self.cond_resched(current)
        if self.should_reclaim(SGX_NR_LOW_PAGES):
            self.wake_ksgxd()
        if error or page is None:
            raise KernelError(error)
        return page

    # sgx_free_epc_page (main.c): the caller has EREMOVEd or EWBed it
    def free(self, page: SgxEpcPage) -> None:
        page.owner = None
        page.flags = SGX_EPC_PAGE_IS_FREE
        self._freed.append(page)
        self.nr_free_pages += 1

    # sgx_mark_page_reclaimable (main.c)
    def mark_reclaimable(self, page: SgxEpcPage) -> None:
        page.flags |= SGX_EPC_PAGE_RECLAIMER_TRACKED
        self.active[page] = None
        page.on_list = True

    # sgx_unmark_page_reclaimable (main.c)
    def unmark_reclaimable(self, page: SgxEpcPage) -> int:
        """0, or -EBUSY while the reclaimer has the page isolated."""
        if page.flags & SGX_EPC_PAGE_RECLAIMER_TRACKED:
            if not page.on_list:
                return -errno.EBUSY
            del self.active[page]
            page.on_list = False
            page.flags &= ~SGX_EPC_PAGE_RECLAIMER_TRACKED
        return 0

    def isolate_head(self) -> SgxEpcPage | None:
        """list_del_init of the list head (the reclaimer's scan)."""
        if not self.active:
            return None
        page = next(iter(self.active))
        del self.active[page]
        page.on_list = False
        return page

    def add_tail(self, page: SgxEpcPage) -> None:
        self.active[page] = None
        page.on_list = True
