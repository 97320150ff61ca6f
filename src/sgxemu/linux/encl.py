"""An enclave as the driver keeps it (encl.h, encl.c): pages, VA pages, backing, mms, faults.

Each function carries the name of the kernel function it models. They take the machine `m`
(EPC allocator, ENCLS front, policy, scheduler) where the kernel would use globals.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

from ..arch.constants import PAGE_MASK, PAGE_SHIFT, PAGE_SIZE, PageType
from ..hw.memory import PTE_A, PTE_P
from .encls import encls_failed
from .epc import SgxEpcPage
from .errors import KernelError
from .mman import PROT_READ, PROT_WRITE
from .vma import VM_ACCESS_FLAGS, Mm, Vma, calc_vm_prot_bits

if TYPE_CHECKING:
    from .machine import Machine
    from .process import Process, Thread

# encl->flags bits (encl.h).
SGX_ENCL_IOCTL = 1 << 0
SGX_ENCL_DEBUG = 1 << 1
SGX_ENCL_CREATED = 1 << 2
SGX_ENCL_INITIALIZED = 1 << 3

# encl_page->desc bits (encl.h): the VA slot offset shares bit 3 with BEING_RECLAIMED.
SGX_ENCL_PAGE_BEING_RECLAIMED = 1 << 3
SGX_ENCL_PAGE_VA_OFFSET_MASK = 0xFF8
SGX_VA_SLOT_COUNT = 512

# vm_fault_t codes (mm_types.h).
VM_FAULT_OOM = 0x0001
VM_FAULT_SIGBUS = 0x0002
VM_FAULT_NOPAGE = 0x0100

SGX_SECINFO_R, SGX_SECINFO_W, SGX_SECINFO_X = 0x1, 0x2, 0x4
SGX_SECINFO_PAGE_TYPE_MASK = 0xFF << 8
SGX_SECINFO_TCS = int(PageType.PT_TCS) << 8
_PT_REG = int(PageType.PT_REG)


class SgxVaPage:
    """struct sgx_va_page: an EPC page of 512 version slots and its allocation bitmap."""

    __slots__ = ("epc_page", "slots")

    def __init__(self, epc_page: SgxEpcPage) -> None:
        self.epc_page = epc_page
        self.slots = 0  # bit i set: slot i in use

    # sgx_alloc_va_slot (encl.c)
    def alloc_slot(self) -> int:
        slot = (~self.slots & (self.slots + 1)).bit_length() - 1  # first zero bit
        if slot < SGX_VA_SLOT_COUNT:
            self.slots |= 1 << slot
        return slot << 3

    # sgx_free_va_slot (encl.c)
    def free_slot(self, offset: int) -> None:
        self.slots &= ~(1 << (offset >> 3))

    # sgx_va_page_full (encl.c)
    def full(self) -> bool:
        return self.slots == (1 << SGX_VA_SLOT_COUNT) - 1


class SgxEnclPage:
    """struct sgx_encl_page: one enclave page, resident (epc_page) or in the backing store."""

    __slots__ = (
        "desc", "encl", "vm_max_prot_bits", "vm_run_prot_bits", "type", "epc_page", "va_page"
    )

    def __init__(self, desc: int, encl: SgxEncl, vm_max_prot_bits: int = 0) -> None:
        self.desc = desc  # linear address | VA slot offset or BEING_RECLAIMED
        self.encl = encl
        self.vm_max_prot_bits = vm_max_prot_bits
        # The V1/V2 series' record of current rights ("Introduce runtime protection bits");
        # starts equal to the maximum. Only policies of those designs read it.
        self.vm_run_prot_bits = vm_max_prot_bits
        self.type = 0
        self.epc_page: SgxEpcPage | None = None
        self.va_page: SgxVaPage | None = None

    @property
    def addr(self) -> int:
        return self.desc & PAGE_MASK

    def __repr__(self) -> str:
        where = f"epc={self.epc_page.index}" if self.epc_page else "evicted"
        return f"SgxEnclPage({self.addr:#x} type={self.type} max={self.vm_max_prot_bits} {where})"


@dataclass(eq=False)
class SgxEnclMm:
    """struct sgx_encl_mm: one mm that maps the enclave (registered at mmap time)."""

    encl: SgxEncl
    mm: Process


@dataclass(eq=False)
class SgxBacking:
    """The shmem backing file: sealed contents and PCMDs by page index (SECS at size>>12)."""

    size: int
    contents: dict[int, bytes] = field(default_factory=dict)
    pcmd: dict[int, bytes] = field(default_factory=dict)


class SgxEncl:
    """struct sgx_encl: the per-open-file enclave."""

    def __init__(self) -> None:
        self.flags = 0
        self.refcount = 1  # kref held by the file
        self.base = 0
        self.size = 0
        self.attributes = 0
        self.attributes_mask = 0
        self.page_cnt = 0
        self.secs_child_cnt = 0
        self.page_array: dict[int, SgxEnclPage] = {}  # keyed by VA >> 12
        self.secs = SgxEnclPage(0, self)
        self.va_pages: list[SgxVaPage] = []  # index 0 is the list head
        self.mm_list: list[SgxEnclMm] = []
        self.mm_list_version = 0
        self.backing: SgxBacking | None = None
        self.released = False

    def test(self, bit: int) -> bool:
        return bool(self.flags & bit)

    def __repr__(self) -> str:
        return (
            f"SgxEncl(base={self.base:#x}, size={self.size:#x}, flags={self.flags:#x}, "
            f"pages={len(self.page_array)}, children={self.secs_child_cnt})"
        )


# -- reference counting ----------------------------------------------------------------------------
def kref_get(encl: SgxEncl) -> None:
    encl.refcount += 1


def kref_put(m: Machine, encl: SgxEncl) -> None:
    encl.refcount -= 1
    if encl.refcount == 0:
        sgx_encl_release(m, encl)


# -- pages and VA pages ----------------------------------------------------------------------------
# sgx_encl_page_alloc (encl.c)
def sgx_encl_page_alloc(encl: SgxEncl, offset: int, secinfo_flags: int) -> SgxEnclPage:
    prot = secinfo_flags & (SGX_SECINFO_R | SGX_SECINFO_W | SGX_SECINFO_X)  # same bit values
    if secinfo_flags & SGX_SECINFO_PAGE_TYPE_MASK == SGX_SECINFO_TCS:
        prot |= PROT_READ | PROT_WRITE  # TCS SECINFO perms are always 0, the CPU needs RW
    return SgxEnclPage(encl.base + offset, encl, calc_vm_prot_bits(prot))


# sgx_encl_free_epc_page (encl.c): EREMOVE, and only on success back to the free list
def sgx_encl_free_epc_page(m: Machine, page: SgxEpcPage) -> None:
    ret = m.encls.eremove(page.pa)
    if ret:
        m.encls.warn(ret, "EREMOVE")  # the page leaks, as in the kernel
        return
    m.epc.free(page)


# sgx_alloc_va_page (encl.c)
def sgx_alloc_va_page(m: Machine, reclaim: bool, current: Thread | None) -> SgxEpcPage:
    page = m.epc.alloc(None, reclaim, current)
    ret = m.encls.epa(page.pa)
    if ret:
        m.encls.warn(ret, "EPA")
        sgx_encl_free_epc_page(m, page)
        raise KernelError(errno.EFAULT)
    return page


# sgx_encl_grow (ioctl.c): a new VA page every 512 enclave pages (SECS included)
def sgx_encl_grow(
    m: Machine, encl: SgxEncl, reclaim: bool, current: Thread | None = None
) -> SgxVaPage | None:
    va_page = None
    if encl.page_cnt % SGX_VA_SLOT_COUNT == 0:
        va_page = SgxVaPage(sgx_alloc_va_page(m, reclaim, current))
    encl.page_cnt += 1
    return va_page


# sgx_encl_shrink (ioctl.c)
def sgx_encl_shrink(m: Machine, encl: SgxEncl, va_page: SgxVaPage | None) -> None:
    encl.page_cnt -= 1
    if va_page is not None:
        sgx_encl_free_epc_page(m, va_page.epc_page)
        if va_page in encl.va_pages:
            encl.va_pages.remove(va_page)


# -- backing storage ---------------------------------------------------------------------------------
def backing_index(encl: SgxEncl, page: SgxEnclPage) -> int:
    """Contents page index: (VA - base) >> 12, the SECS at size >> 12."""
    if page is encl.secs:
        return encl.size >> PAGE_SHIFT
    return (page.desc - encl.base) >> PAGE_SHIFT


# __sgx_encl_eldu (encl.c)
def __sgx_encl_eldu(
    m: Machine, encl_page: SgxEnclPage, epc_page: SgxEpcPage, secs_page: SgxEpcPage | None
) -> None:
    encl = encl_page.encl
    va_offset = encl_page.desc & SGX_ENCL_PAGE_VA_OFFSET_MASK
    assert encl.backing is not None and encl_page.va_page is not None
    index = backing_index(encl, encl_page)
    contents = encl.backing.contents.get(index, bytes(PAGE_SIZE))
    pcmd = encl.backing.pcmd.get(index, bytes(128))
    ret = m.encls.eldu(
        encl_page.desc & PAGE_MASK,
        contents,
        pcmd,
        secs_page.pa if secs_page is not None else 0,
        epc_page.pa,
        encl_page.va_page.epc_page.pa + va_offset,
    )
    # The PCMD is zeroed and the contents page truncated whatever ELDU said.
    encl.backing.pcmd.pop(index, None)
    encl.backing.contents.pop(index, None)
    if ret:
        if encls_failed(ret):
            m.encls.warn(ret, "ELDU")
        raise KernelError(errno.EFAULT)


# sgx_encl_eldu (encl.c)
def sgx_encl_eldu(
    m: Machine, encl_page: SgxEnclPage, secs_page: SgxEpcPage | None
) -> SgxEpcPage:
    encl = encl_page.encl
    va_offset = encl_page.desc & SGX_ENCL_PAGE_VA_OFFSET_MASK
    epc_page = m.epc.alloc(encl_page, False)
    try:
        __sgx_encl_eldu(m, encl_page, epc_page, secs_page)
    except KernelError:
        sgx_encl_free_epc_page(m, epc_page)
        raise
    va_page = encl_page.va_page
    assert va_page is not None
    va_page.free_slot(va_offset)
    encl.va_pages.remove(va_page)
    encl.va_pages.insert(0, va_page)  # list_move to the head: it has a free slot now
    encl_page.desc &= ~SGX_ENCL_PAGE_VA_OFFSET_MASK
    encl_page.epc_page = epc_page
    return epc_page


# sgx_encl_load_secs (encl.c)
def sgx_encl_load_secs(m: Machine, encl: SgxEncl) -> SgxEpcPage:
    page = encl.secs.epc_page
    if page is None:
        page = sgx_encl_eldu(m, encl.secs, None)
    return page


# __sgx_encl_load_page (encl.c)
def __sgx_encl_load_page(m: Machine, encl: SgxEncl, entry: SgxEnclPage) -> SgxEnclPage:
    if entry.epc_page is not None:
        if entry.desc & SGX_ENCL_PAGE_BEING_RECLAIMED:
            raise KernelError(errno.EBUSY)
        return entry
    sgx_encl_load_secs(m, encl)
    epc_page = sgx_encl_eldu(m, entry, encl.secs.epc_page)
    encl.secs_child_cnt += 1
    m.epc.mark_reclaimable(epc_page)
    return entry


# sgx_encl_load_page_in_vma (encl.c)
def sgx_encl_load_page_in_vma(
    m: Machine, encl: SgxEncl, addr: int, vm_flags: int
) -> SgxEnclPage:
    vm_prot_bits = vm_flags & VM_ACCESS_FLAGS
    entry = encl.page_array.get(addr >> PAGE_SHIFT)
    if entry is None:
        raise KernelError(errno.EFAULT)
    if not m.policy.fault_vma_allowed(entry, vm_prot_bits):
        raise KernelError(errno.EFAULT)  # the VMA is more permissive than the page allows
    return __sgx_encl_load_page(m, encl, entry)


# sgx_encl_load_page (encl.c): the ioctl flavour, without the VMA check
def sgx_encl_load_page(m: Machine, encl: SgxEncl, addr: int) -> SgxEnclPage:
    entry = encl.page_array.get(addr >> PAGE_SHIFT)
    if entry is None:
        raise KernelError(errno.EFAULT)
    return __sgx_encl_load_page(m, encl, entry)


# -- faults ----------------------------------------------------------------------------------------
def vmf_insert_pfn(m: Machine, vma: Vma, addr: int, entry: SgxEnclPage) -> int:
    """Install the PTE with the rights the policy gives (the VMA's in Linux 6.0)."""
    assert vma.mm is not None and entry.epc_page is not None
    prot = m.policy.pte_prot(vma, entry)
    vma.mm.mem.map_frame(addr & PAGE_MASK, entry.epc_page.pa, prot)
    return VM_FAULT_NOPAGE


# sgx_encl_eaug_page (encl.c), with the SECS reload of the 2023 fix
def sgx_encl_eaug_page(m: Machine, vma: Vma, encl: SgxEncl, addr: int) -> int:
    if not encl.test(SGX_ENCL_INITIALIZED):
        return VM_FAULT_SIGBUS
    policy = m.policy
    # The policy gives the maximum (RWX since Linux 6.0: EACCEPT/EMODPE decide the EPCM rights).
    encl_page = sgx_encl_page_alloc(encl, (addr & PAGE_MASK) - encl.base, policy.eaug_secinfo)
    reclaim = policy.eaug_reclaim  # False since "Support VA page allocation without reclaiming"
    try:
        sgx_encl_load_secs(m, encl)
    except KernelError as e:
        return VM_FAULT_NOPAGE if e.errno == errno.EBUSY else VM_FAULT_SIGBUS
    try:
        epc_page = m.epc.alloc(encl_page, reclaim)
    except KernelError as e:
        return VM_FAULT_NOPAGE if e.errno == errno.EBUSY else VM_FAULT_SIGBUS
    try:
        va_page = sgx_encl_grow(m, encl, reclaim)
    except KernelError as e:
        sgx_encl_free_epc_page(m, epc_page)
        return VM_FAULT_NOPAGE if e.errno == errno.EBUSY else VM_FAULT_SIGBUS
    if va_page is not None:
        encl.va_pages.insert(0, va_page)
    if encl.secs.epc_page is None:  # direct reclaim above evicted the SECS: the 2023 reload
        try:
            sgx_encl_load_secs(m, encl)
        except KernelError as e:
            sgx_encl_shrink(m, encl, va_page)
            sgx_encl_free_epc_page(m, epc_page)
            return VM_FAULT_NOPAGE if e.errno == errno.EBUSY else VM_FAULT_SIGBUS
    key = encl_page.desc >> PAGE_SHIFT
    page_array = encl.page_array
    if key in page_array:  # xa_insert -EBUSY: created meanwhile in another flow
        sgx_encl_shrink(m, encl, va_page)
        sgx_encl_free_epc_page(m, epc_page)
        return VM_FAULT_SIGBUS
    page_array[key] = encl_page
    secs_page = encl.secs.epc_page
    assert secs_page is not None
    ret = m.encls.eaug(encl_page.desc & PAGE_MASK, secs_page.pa, epc_page.pa)
    if ret:
        del page_array[key]
        sgx_encl_shrink(m, encl, va_page)
        sgx_encl_free_epc_page(m, epc_page)
        return VM_FAULT_SIGBUS
    encl_page.epc_page = epc_page
    encl_page.type = _PT_REG
    encl.secs_child_cnt += 1
    m.epc.mark_reclaimable(epc_page)
    # A failed PTE install would leave the page in place for the next fault.
    return vmf_insert_pfn(m, vma, addr, encl_page)


# sgx_vma_fault (encl.c)
def sgx_vma_fault(m: Machine, vma: Vma, addr: int) -> int:
    encl = vma.private
    if encl is None:
        return VM_FAULT_SIGBUS
    if m.cpu.sgx2 and (addr >> PAGE_SHIFT) not in encl.page_array:
        return sgx_encl_eaug_page(m, vma, encl, addr)
    try:
        entry = sgx_encl_load_page_in_vma(m, encl, addr, vma.flags)
    except KernelError as e:
        return VM_FAULT_NOPAGE if e.errno == errno.EBUSY else VM_FAULT_SIGBUS
    ret = vmf_insert_pfn(m, vma, addr, entry)
    assert vma.mm is not None and vma.mm.owner is not None
    sgx_encl_test_and_clear_young(vma.mm.owner, entry)
    return ret


# sgx_encl_may_map (encl.c): the Linux 6.0 rule; policies may replace it
def sgx_encl_may_map(
    encl: SgxEncl, start: int, end: int, vm_flags: int, personality: int,
    rights: Callable[[SgxEnclPage], int] | None = None,
) -> None:
    """`rights` is the page record mappings are checked against (default vm_max_prot_bits;
    the V1/V2 series used vm_run_prot_bits)."""
    vm_prot_bits = vm_flags & VM_ACCESS_FLAGS
    if encl.test(SGX_ENCL_INITIALIZED) and (start < encl.base or end > encl.base + encl.size):
        raise KernelError(errno.EACCES)
    if personality & READ_IMPLIES_EXEC:
        raise KernelError(errno.EACCES)
    first, last = start >> PAGE_SHIFT, (end - 1) >> PAGE_SHIFT
    array = encl.page_array
    keys = range(first, last + 1) if last - first < len(array) else sorted(array)
    for key in keys:
        page = array.get(key)
        if page is None or not first <= key <= last:
            continue  # addresses with no page yet are unconstrained
        allowed = page.vm_max_prot_bits if rights is None else rights(page)
        if ~allowed & vm_prot_bits:
            raise KernelError(errno.EACCES)


READ_IMPLIES_EXEC = 0x0400000  # personality flag (include/uapi/linux/personality.h)


# sgx_encl_reserve_page (encl.c): load the page, retrying while the reclaimer holds it
def sgx_encl_reserve_page(m: Machine, encl: SgxEncl, addr: int, vm_flags: int) -> SgxEnclPage:
    while True:
        try:
            return sgx_encl_load_page_in_vma(m, encl, addr, vm_flags)
        except KernelError as e:
            if e.errno != errno.EBUSY:
                raise


# sgx_vma_access (encl.c): ptrace and /proc/pid/mem on a debug enclave, 8 bytes at a time
def sgx_vma_access(m: Machine, vma: Vma, addr: int, buf: bytearray, write: bool) -> int:
    """Bytes done, or a negative errno when nothing could be done."""
    encl = vma.private
    if encl is None or not encl.test(SGX_ENCL_DEBUG):
        return -errno.EFAULT
    i = 0
    while i < len(buf):
        try:
            entry = sgx_encl_reserve_page(m, encl, (addr + i) & PAGE_MASK, vma.flags)
        except KernelError as e:
            return -e.errno if i == 0 else i
        assert entry.epc_page is not None
        align = (addr + i) & ~7
        offset = (addr + i) & 7
        cnt = min(8 - offset, len(buf) - i)
        epc_addr = entry.epc_page.pa + (align & ~PAGE_MASK)
        ret, value = m.encls.edbgrd(epc_addr)
        if ret:
            return -errno.EIO if i == 0 else i
        data = bytearray(value.to_bytes(8, "little"))
        if write:
            data[offset : offset + cnt] = buf[i : i + cnt]
            if m.encls.edbgwr(epc_addr, int.from_bytes(data, "little")):
                return -errno.EIO if i == 0 else i
        else:
            buf[i : i + cnt] = data[offset : offset + cnt]
        i += cnt
    return i


class SgxVmOps:
    """sgx_vm_ops (encl.c): the vm_operations of every SGX mapping."""

    def __init__(self, m: Machine) -> None:
        self.m = m
        # .fault = sgx_vma_fault: bound to the machine by a partial, no method frame per fault.
        self.fault: Callable[[Vma, int], int] = partial(sgx_vma_fault, m)

    @property
    def wants_writenotify(self) -> bool:
        """The policy installs a .pfn_mkwrite (vma_wants_writenotify)."""
        return self.m.policy.wants_writenotify

    def access(self, vma: Vma, addr: int, buf: bytearray, write: bool) -> int:
        return sgx_vma_access(self.m, vma, addr, buf, write)

    # sgx_vma_mprotect (encl.c)
    def mprotect(self, vma: Vma, start: int, end: int, newflags: int) -> None:
        encl = vma.private
        assert encl is not None and vma.mm is not None and vma.mm.owner is not None
        self.m.policy.may_map(encl, start, end, newflags, vma.mm.owner.personality)

    # sgx_vma_open (encl.c)
    def open(self, vma: Vma) -> None:
        encl = vma.private
        if encl is None:
            return
        assert vma.mm is not None and vma.mm.owner is not None
        sgx_encl_mm_add(encl, vma.mm.owner)


# -- mms ------------------------------------------------------------------------------------------
# sgx_encl_find (encl.h)
def sgx_encl_find(mm: Mm, addr: int) -> Vma | None:
    vma = mm.vma_lookup(addr)
    if vma is None or not isinstance(vma.ops, SgxVmOps):
        return None
    return vma


# sgx_encl_mm_add (encl.c)
def sgx_encl_mm_add(encl: SgxEncl, mm: Process) -> None:
    if any(e.mm is mm for e in encl.mm_list):
        return
    kref_get(encl)
    encl.mm_list.insert(0, SgxEnclMm(encl, mm))
    encl.mm_list_version += 1
    mm.sgx_encl_mms.append(encl)


def sgx_encl_mm_drop(m: Machine, encl: SgxEncl, mm: Process) -> None:
    """Remove an mm from the list and put its reference (release and mmu-notifier paths)."""
    for e in encl.mm_list:
        if e.mm is mm:
            encl.mm_list.remove(e)
            if encl in mm.sgx_encl_mms:
                mm.sgx_encl_mms.remove(encl)
            kref_put(m, encl)
            return


# sgx_encl_cpumask (encl.c)
def sgx_encl_cpumask(encl: SgxEncl) -> set[int]:
    cpus: set[int] = set()
    for e in encl.mm_list:
        if e.mm.alive:
            cpus |= e.mm.cpumask
    return cpus


# sgx_zap_enclave_ptes (encl.c)
def sgx_zap_enclave_ptes(m: Machine, encl: SgxEncl, addr: int) -> None:
    for e in list(encl.mm_list):
        if not e.mm.alive:
            continue
        vma = sgx_encl_find(e.mm.mm, addr)
        if vma is not None and vma.private is encl:
            m.zap_vma_ptes(e.mm, addr)


# sgx_encl_test_and_clear_young (encl.c)
def sgx_encl_test_and_clear_young(mm: Process, page: SgxEnclPage) -> bool:
    addr = page.desc & PAGE_MASK
    vma = sgx_encl_find(mm.mm, addr)
    if vma is None or vma.private is not page.encl:
        return False
    ptes = mm.mm.mem.ptes
    key = addr >> PAGE_SHIFT
    pte = ptes.get(key, 0)
    if not pte & PTE_P or not pte & PTE_A:
        return False
    ptes[key] = pte & ~PTE_A
    return True


# -- teardown --------------------------------------------------------------------------------------
# sgx_encl_release (encl.c)
def sgx_encl_release(m: Machine, encl: SgxEncl) -> None:
    for key in sorted(encl.page_array):
        entry = encl.page_array[key]
        if entry.epc_page is not None:
            if m.epc.unmark_reclaimable(entry.epc_page):
                continue  # held by the reclaimer
            sgx_encl_free_epc_page(m, entry.epc_page)
            encl.secs_child_cnt -= 1
            entry.epc_page = None
    encl.page_array.clear()
    if not encl.secs_child_cnt and encl.secs.epc_page is not None:
        sgx_encl_free_epc_page(m, encl.secs.epc_page)
        encl.secs.epc_page = None
    while encl.va_pages:
        va_page = encl.va_pages.pop(0)
        sgx_encl_free_epc_page(m, va_page.epc_page)
    encl.backing = None
    encl.released = True
    if encl.secs_child_cnt or encl.secs.epc_page is not None:
        m.encls.warn(encl.secs_child_cnt, "EPC leak at enclave release")

