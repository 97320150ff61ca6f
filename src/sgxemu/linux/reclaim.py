"""The EPC reclaimer (main.c): aging, EBLOCK, ETRACK with IPIs, EWB to the backing store.

`sgx_reclaim_pages` is one batch of up to 16 pages from the head of the global active list.
ksgxd is modelled as a kernel thread that runs at the next safe point after it is woken (the end
of the current system call or fault), reclaiming while free pages are below the high watermark.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..arch.constants import SgxError
from .encl import (
    SGX_ENCL_INITIALIZED,
    SGX_ENCL_PAGE_BEING_RECLAIMED,
    SgxBacking,
    SgxEncl,
    SgxEnclPage,
    backing_index,
    kref_get,
    kref_put,
    sgx_encl_cpumask,
    sgx_encl_free_epc_page,
    sgx_encl_test_and_clear_young,
    sgx_zap_enclave_ptes,
)
from .encls import encls_failed
from .epc import (
    SGX_EPC_PAGE_RECLAIMER_TRACKED,
    SGX_NR_HIGH_PAGES,
    SGX_NR_LOW_PAGES,
    SGX_NR_TO_SCAN,
    SgxEpcPage,
)

if TYPE_CHECKING:
    from .machine import Machine


# sgx_reclaimer_age (main.c): False when some mm touched the page since the last scan
def sgx_reclaimer_age(epc_page: SgxEpcPage) -> bool:
    page = epc_page.owner
    assert isinstance(page, SgxEnclPage)
    for e in page.encl.mm_list:
        if not e.mm.alive:
            continue
        if sgx_encl_test_and_clear_young(e.mm, page):
            return False
    return True


# sgx_reclaimer_block (main.c)
def sgx_reclaimer_block(m: Machine, epc_page: SgxEpcPage) -> None:
    page = epc_page.owner
    assert isinstance(page, SgxEnclPage)
    sgx_zap_enclave_ptes(m, page.encl, page.addr)
    ret = m.encls.eblock(epc_page.pa)
    if encls_failed(ret):
        m.encls.warn(ret, "EBLOCK")


def _ewb(m: Machine, encl: SgxEncl, epc_page: SgxEpcPage, va_slot: int, index: int) -> int:
    """__sgx_encl_ewb (main.c): EWB, then the sealed page and PCMD go to the backing file."""
    ret, contents, pcmd = m.encls.ewb(epc_page.pa, va_slot)
    if ret == 0:
        assert encl.backing is not None
        encl.backing.contents[index] = contents
        encl.backing.pcmd[index] = pcmd
    return ret


# sgx_encl_ewb (main.c)
def sgx_encl_ewb(m: Machine, epc_page: SgxEpcPage, encl_page: SgxEnclPage) -> None:
    encl = encl_page.encl
    encl_page.desc &= ~SGX_ENCL_PAGE_BEING_RECLAIMED
    va_page = encl.va_pages[0]
    va_offset = va_page.alloc_slot()
    va_slot = va_page.epc_page.pa + va_offset
    if va_page.full():
        encl.va_pages.append(encl.va_pages.pop(0))  # list_move_tail
    index = backing_index(encl, encl_page)
    ret = _ewb(m, encl, epc_page, va_slot, index)
    if ret == SgxError.SGX_NOT_TRACKED:
        assert encl.secs.epc_page is not None
        ret = m.etrack(encl.secs.epc_page.pa)
        if ret and encls_failed(ret):
            m.encls.warn(ret, "ETRACK")
        ret = _ewb(m, encl, epc_page, va_slot, index)
        if ret == SgxError.SGX_NOT_TRACKED:
            # Slow path: the mask is computed after ETRACK so late entrants are covered.
            m.on_each_cpu_mask(sgx_encl_cpumask(encl))
            ret = _ewb(m, encl, epc_page, va_slot, index)
    if ret:
        if encls_failed(ret):
            m.encls.warn(ret, "EWB")
        va_page.free_slot(va_offset)
    else:
        encl_page.desc |= va_offset
        encl_page.va_page = va_page


# sgx_reclaimer_write (main.c)
def sgx_reclaimer_write(m: Machine, epc_page: SgxEpcPage) -> None:
    encl_page = epc_page.owner
    assert isinstance(encl_page, SgxEnclPage)
    encl = encl_page.encl
    sgx_encl_ewb(m, epc_page, encl_page)
    encl_page.epc_page = None
    encl.secs_child_cnt -= 1
    if not encl.secs_child_cnt and encl.test(SGX_ENCL_INITIALIZED):
        secs_page = encl.secs.epc_page
        assert secs_page is not None
        sgx_encl_ewb(m, secs_page, encl.secs)
        sgx_encl_free_epc_page(m, secs_page)
        encl.secs.epc_page = None


# sgx_reclaim_pages (main.c)
def sgx_reclaim_pages(m: Machine) -> None:
    m.stats.reclaim_batches += 1
    chunk: list[SgxEpcPage | None] = []
    for _ in range(SGX_NR_TO_SCAN):
        epc_page = m.epc.isolate_head()
        if epc_page is None:
            break
        owner = epc_page.owner
        assert isinstance(owner, SgxEnclPage)
        if owner.encl.refcount > 0:  # kref_get_unless_zero
            kref_get(owner.encl)
            chunk.append(epc_page)
        else:
            epc_page.flags &= ~SGX_EPC_PAGE_RECLAIMER_TRACKED
    for i, epc_page in enumerate(chunk):
        assert epc_page is not None
        encl_page = epc_page.owner
        assert isinstance(encl_page, SgxEnclPage)
        if not sgx_reclaimer_age(epc_page):
            m.epc.add_tail(epc_page)
            kref_put(m, encl_page.encl)
            chunk[i] = None
            continue
        sgx_encl_alloc_backing(encl_page.encl)
        encl_page.desc |= SGX_ENCL_PAGE_BEING_RECLAIMED
    for epc_page in chunk:
        if epc_page is not None:
            sgx_reclaimer_block(m, epc_page)
    for epc_page in chunk:
        if epc_page is None:
            continue
        encl_page = epc_page.owner
        assert isinstance(encl_page, SgxEnclPage)
        sgx_reclaimer_write(m, epc_page)
        kref_put(m, encl_page.encl)
        epc_page.flags &= ~SGX_EPC_PAGE_RECLAIMER_TRACKED
        m.epc.free(epc_page)  # no EREMOVE: EWB already freed the EPCM entry
        m.stats.pages_reclaimed += 1


def sgx_encl_alloc_backing(encl: SgxEncl) -> SgxBacking:
    """sgx_encl_alloc_backing (encl.c): shmem pages appear on first write; never fails here."""
    assert encl.backing is not None
    return encl.backing


# sgx_reclaim_direct (main.c)
def sgx_reclaim_direct(m: Machine) -> None:
    if m.epc.should_reclaim(SGX_NR_LOW_PAGES):
        sgx_reclaim_pages(m)


# ksgxd (main.c): one wake-up's worth of work
def ksgxd(m: Machine) -> None:
    idle = 0
    while m.epc.should_reclaim(SGX_NR_HIGH_PAGES):
        before = m.epc.nr_free_pages
        sgx_reclaim_pages(m)
        # A batch of young pages frees nothing but ages them. Nothing touches pages while
        # ksgxd runs here, so two full passes without progress mean nothing is reclaimable
        # now (the thread would sleep until woken again).
        idle = idle + 1 if m.epc.nr_free_pages == before else 0
        if idle > 2 * (len(m.epc.active) // SGX_NR_TO_SCAN + 1):
            break
