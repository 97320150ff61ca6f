"""Invariants of the driver state that hold between system calls, whatever the calls did.

`check(m)` raises `InvariantViolation` (an AssertionError) naming the first broken rule. It looks
at the kernel's records (`SgxEncl`, `SgxEpc`, page tables) and checks them against each other and
against the processor (the EPCM and the VA slots in EPC memory); `sgxemu.hw.invariants.check`
covers the processor on its own. Only states between system calls are checked: nothing is
isolated by the reclaimer, no ioctl holds an enclave, no page is being reclaimed.

The enclaves checked are those reachable from a live process (an fd, a VMA or an mm_list entry);
`check_released(m, enclaves)` checks that enclaves the caller knew about and that no process can
reach any more hold nothing (no EPC page, VA page or backing page).

Written for the merged (Linux 6.0) driver: a policy variant that keeps pages off the reclaimer's
list or installs PTEs with other rights may break the LRU and PTE rules on purpose.
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ..arch.constants import PAGE_SHIFT, PAGE_SIZE, PageType
from ..hw.invariants import InvariantViolation
from ..hw.memory import PTE_ADDR_MASK, PTE_P, PTE_W, PTE_XD
from .encl import (
    SGX_ENCL_CREATED,
    SGX_ENCL_INITIALIZED,
    SGX_ENCL_IOCTL,
    SGX_ENCL_PAGE_BEING_RECLAIMED,
    SGX_ENCL_PAGE_VA_OFFSET_MASK,
    SGX_VA_SLOT_COUNT,
    SgxEncl,
    SgxEnclPage,
    SgxVmOps,
    backing_index,
)
from .epc import SGX_EPC_PAGE_IS_FREE, SGX_EPC_PAGE_RECLAIMER_TRACKED, SgxEpcPage
from .vma import VM_EXEC, VM_WRITE

if TYPE_CHECKING:
    from .machine import Machine

__all__ = ["InvariantViolation", "check", "check_released", "reachable_enclaves"]

_CHILD_TYPES = (int(PageType.PT_REG), int(PageType.PT_TCS), int(PageType.PT_TRIM))


def _fail(message: str) -> None:
    raise InvariantViolation(message)


def reachable_enclaves(m: Machine) -> list[SgxEncl]:
    """Every enclave a live process can still reach: through an fd, a VMA or its mm."""
    seen: dict[int, SgxEncl] = {}
    fops = m.driver.enclave_fops
    for proc in m.processes.values():
        if not proc.alive:
            continue
        for file in proc.fds.values():
            if file.f_op is fops:
                seen.setdefault(id(file.private_data), file.private_data)
        for vma in proc.mm.vmas:
            if vma.private is not None:
                seen.setdefault(id(vma.private), vma.private)
            if vma.file is not None and vma.file.f_op is fops:
                seen.setdefault(id(vma.file.private_data), vma.file.private_data)
        for encl in proc.sgx_encl_mms:
            seen.setdefault(id(encl), encl)
    return list(seen.values())


def _va_slots(m: Machine, va_epc: SgxEpcPage) -> array[int]:
    """The 512 versions a VA page holds, as the processor keeps them in EPC memory."""
    slots = array("Q", m.cpu.epc.read(va_epc.index, 0, PAGE_SIZE))
    if sys.byteorder != "little":
        slots.byteswap()
    return slots


def _va_slot_value(m: Machine, va_epc: SgxEpcPage, offset: int) -> int:
    return _va_slots(m, va_epc)[offset >> 3]


def _check_evicted(m: Machine, encl: SgxEncl, page: SgxEnclPage, what: str,
                   slots: dict[tuple[int, int], str]) -> None:
    va_page = page.va_page
    if va_page is None or not any(v is va_page for v in encl.va_pages):
        _fail(f"{what} is evicted but its VA page is not one of the enclave's")
        return
    offset = page.desc & SGX_ENCL_PAGE_VA_OFFSET_MASK
    if not va_page.slots >> (offset >> 3) & 1:
        _fail(f"{what} is evicted to VA slot {offset >> 3}, which is marked free")
    key = (id(va_page), offset)
    if key in slots:
        _fail(f"{what} and {slots[key]} share VA slot {offset >> 3}")
    slots[key] = what
    if _va_slot_value(m, va_page.epc_page, offset) == 0:
        _fail(f"{what} is evicted but its VA slot {offset >> 3} holds no version")
    assert encl.backing is not None
    index = backing_index(encl, page)
    if index not in encl.backing.contents or index not in encl.backing.pcmd:
        _fail(f"{what} is evicted but backing page {index} or its PCMD is missing")
    elif len(encl.backing.contents[index]) != PAGE_SIZE or len(encl.backing.pcmd[index]) != 128:
        _fail(f"{what}: backing page {index} or its PCMD has the wrong size")


def _check_encl(m: Machine, encl: SgxEncl, used: dict[int, str], fops_refs: int) -> None:
    cpu = m.cpu
    name = f"enclave {encl.base:#x}+{encl.size:#x}"
    if encl.released:
        _fail(f"{name} is reachable but released")
    if encl.flags & SGX_ENCL_IOCTL:
        _fail(f"{name} still holds SGX_ENCL_IOCTL between system calls")
    if encl.refcount != fops_refs + len(encl.mm_list):
        _fail(f"{name}: refcount {encl.refcount}, expected {fops_refs} (file) + "
              f"{len(encl.mm_list)} (mm_list)")
    for e in encl.mm_list:
        if not e.mm.alive or m.processes.get(e.mm.pid) is not e.mm:
            _fail(f"{name}: mm_list holds {e.mm}, which has exited")
        if encl not in e.mm.sgx_encl_mms:
            _fail(f"{name}: {e.mm} is on its mm_list but does not list the enclave")
    if len({id(e.mm) for e in encl.mm_list}) != len(encl.mm_list):
        _fail(f"{name}: an mm is on mm_list twice")

    def claim(page: SgxEpcPage, what: str) -> None:
        if page.index in used:
            _fail(f"EPC page {page.index} is both {used[page.index]} and {what}")
        used[page.index] = what
        if page.flags & SGX_EPC_PAGE_IS_FREE:
            _fail(f"{what} (EPC page {page.index}) is marked free")
        if m.epc.pages.get(page.index) is not page:
            _fail(f"{what}: EPC page {page.index} is not the allocator's descriptor")
        if page.index not in cpu.epcm:
            _fail(f"{what}: EPC page {page.index} is not valid in the EPCM")

    if not encl.flags & SGX_ENCL_CREATED:
        if encl.flags & SGX_ENCL_INITIALIZED:
            _fail(f"{name} is initialized but not created")
        if encl.page_array or encl.va_pages or encl.secs.epc_page or encl.backing or encl.page_cnt:
            _fail(f"{name} is not created but holds pages, VA pages or backing")
        return
    if encl.backing is None:
        _fail(f"{name} is created but has no backing storage")
        return
    slots: dict[tuple[int, int], str] = {}
    # The SECS: resident, or evicted once an initialized enclave's last child went.
    secs_state = None
    if encl.secs.epc_page is not None:
        secs_epc = encl.secs.epc_page
        claim(secs_epc, f"the SECS of {name}")
        if secs_epc.on_list or secs_epc.flags & SGX_EPC_PAGE_RECLAIMER_TRACKED:
            _fail(f"the SECS of {name} is on the reclaimer's list")
        secs_state = cpu.secs_of(secs_epc.index)
        if secs_state is None:
            _fail(f"the SECS of {name} (EPC page {secs_epc.index}) is not a SECS in the EPCM")
            return
        if (secs_state.baseaddr, secs_state.size) != (encl.base, encl.size):
            _fail(f"{name}: the processor's SECS says {secs_state.baseaddr:#x}+{secs_state.size:#x}")
        if secs_state.init != bool(encl.flags & SGX_ENCL_INITIALIZED):
            _fail(f"{name}: INITIALIZED is {bool(encl.flags & SGX_ENCL_INITIALIZED)}, "
                  f"SECS.ATTRIBUTES.INIT is {secs_state.init}")
        if encl.secs.desc & SGX_ENCL_PAGE_VA_OFFSET_MASK:
            _fail(f"the SECS of {name} is resident but keeps a VA slot offset")
    else:
        if not encl.flags & SGX_ENCL_INITIALIZED or encl.secs_child_cnt:
            _fail(f"the SECS of {name} is evicted, but the enclave is not initialized or has "
                  f"{encl.secs_child_cnt} resident children")
        _check_evicted(m, encl, encl.secs, f"the SECS of {name}", slots)
    # VA pages.
    for va_page in encl.va_pages:
        claim(va_page.epc_page, f"a VA page of {name}")
        entry = cpu.epcm.get(va_page.epc_page.index)
        if entry is not None and entry.pt is not PageType.PT_VA:
            _fail(f"a VA page of {name} is {entry.pt.name} in the EPCM")
        if va_page.epc_page.on_list or va_page.epc_page.owner is not None:
            _fail(f"a VA page of {name} is on the reclaimer's list or has an owner")
    if len({id(v) for v in encl.va_pages}) != len(encl.va_pages):
        _fail(f"{name}: a VA page is listed twice")
    needed = -(-encl.page_cnt // SGX_VA_SLOT_COUNT)
    if len(encl.va_pages) < needed:
        _fail(f"{name}: {len(encl.va_pages)} VA pages for {encl.page_cnt} pages")
    if encl.page_cnt != len(encl.page_array) + 1:
        _fail(f"{name}: page_cnt {encl.page_cnt}, but {len(encl.page_array)} pages + the SECS")
    # Pages.
    resident = 0
    evicted_indices = set() if encl.secs.epc_page is not None else {encl.size >> PAGE_SHIFT}
    for key, page in encl.page_array.items():
        what = f"page {page.addr:#x} of {name}"
        if page.desc >> PAGE_SHIFT != key or page.encl is not encl:
            _fail(f"{what} is filed under {key << PAGE_SHIFT:#x} or belongs elsewhere")
        if not encl.base <= page.addr < encl.base + encl.size:
            _fail(f"{what} lies outside ELRANGE")
        if page.type not in _CHILD_TYPES:
            _fail(f"{what} has type {page.type}")
        if page.vm_max_prot_bits & ~7:
            _fail(f"{what} has vm_max_prot_bits {page.vm_max_prot_bits:#x}")
        epc = page.epc_page
        if epc is None:
            _check_evicted(m, encl, page, what, slots)
            evicted_indices.add(backing_index(encl, page))
            continue
        resident += 1
        claim(epc, what)
        if page.desc & (SGX_ENCL_PAGE_VA_OFFSET_MASK | SGX_ENCL_PAGE_BEING_RECLAIMED):
            _fail(f"{what} is resident but marked being reclaimed or keeps a VA offset")
        if epc.owner is not page:
            _fail(f"{what}: its EPC page {epc.index} is owned by {epc.owner!r}")
        if not (epc.on_list and epc.flags & SGX_EPC_PAGE_RECLAIMER_TRACKED):
            _fail(f"{what} is resident but not on the reclaimer's list")
        entry = cpu.epcm.get(epc.index)
        if entry is None:
            continue
        if int(entry.pt) != page.type:
            _fail(f"{what} is type {page.type} to the kernel, {entry.pt.name} in the EPCM")
        if entry.linaddr != page.addr:
            _fail(f"{what}: the EPCM says {entry.linaddr:#x}")
        if secs_state is None or entry.secs is not secs_state:
            _fail(f"{what} is not a child of its enclave's SECS in the EPCM")
    if resident != encl.secs_child_cnt:
        _fail(f"{name}: secs_child_cnt {encl.secs_child_cnt}, {resident} resident pages")
    if secs_state is not None and secs_state.chldcnt != resident:
        _fail(f"{name}: the processor counts {secs_state.chldcnt} children, the driver {resident}")
    # Every used VA slot belongs to exactly one evicted page, and holds a version.
    for va_page in encl.va_pages:
        versions = _va_slots(m, va_page.epc_page)
        for slot in range(SGX_VA_SLOT_COUNT):
            used_bit = va_page.slots >> slot & 1
            if used_bit and (id(va_page), slot << 3) not in slots:
                _fail(f"{name}: VA slot {slot} is used but no evicted page owns it")
            if not used_bit and versions[slot]:
                _fail(f"{name}: VA slot {slot} is free but holds a version")
    # The backing store holds exactly the evicted pages (and the SECS, when evicted).
    if set(encl.backing.contents) != evicted_indices or set(encl.backing.pcmd) != evicted_indices:
        _fail(f"{name}: backing pages {sorted(encl.backing.contents)} / PCMDs "
              f"{sorted(encl.backing.pcmd)}, evicted {sorted(evicted_indices)}")


def _check_ptes(m: Machine, reachable: Iterable[SgxEncl]) -> None:
    cpu = m.cpu
    ids = {id(e) for e in reachable}
    for proc in m.processes.values():
        if not proc.alive:
            continue
        mm = proc.mm
        for key, pte in mm.mem.ptes.items():
            if not pte & PTE_P:
                continue
            addr = key << PAGE_SHIFT
            vma = mm.vma_lookup(addr)
            if vma is None:
                _fail(f"{proc}: a present PTE at {addr:#x} outside every VMA")
                continue
            if pte & PTE_W and not vma.flags & VM_WRITE:
                _fail(f"{proc}: a writable PTE at {addr:#x} in {vma!r}")
            if not pte & PTE_XD and not vma.flags & VM_EXEC:
                _fail(f"{proc}: an executable PTE at {addr:#x} in {vma!r}")
            pa = pte & PTE_ADDR_MASK
            if cpu.epc.index(pa) < 0:
                continue
            encl = vma.private
            if not isinstance(vma.ops, SgxVmOps) or encl is None or id(encl) not in ids:
                _fail(f"{proc}: a PTE at {addr:#x} maps EPC outside an enclave mapping")
                continue
            page = encl.page_array.get(key)
            if page is None or page.epc_page is None or page.epc_page.pa != pa:
                _fail(f"{proc}: a stale PTE at {addr:#x} maps EPC {pa:#x} (page {page!r})")


def check(m: Machine) -> None:
    """Check the driver's state against itself and against the processor."""
    cpu = m.cpu
    reachable = reachable_enclaves(m)
    used: dict[int, str] = {}
    fops = m.driver.enclave_fops
    files: dict[int, int] = {}
    for proc in m.processes.values():
        if not proc.alive:
            continue
        for file in list(proc.fds.values()) + [v.file for v in proc.mm.vmas if v.file is not None]:
            if file.f_op is fops and file.refcount > 0:
                files[id(file.private_data)] = 1
    for encl in reachable:
        _check_encl(m, encl, used, files.get(id(encl), 0))
    leaked = sorted(set(cpu.epcm) - set(used))
    if leaked:
        _fail(f"EPC pages {leaked} are valid in the EPCM but belong to no reachable enclave")
    missing = sorted(set(used) - set(cpu.epcm))
    if missing:
        _fail(f"EPC pages {missing} are in use by the driver but not valid in the EPCM")
    # The allocator.
    epc = m.epc
    if epc.nr_free_pages != epc.npages - len(used):
        _fail(f"sgx_nr_free_pages is {epc.nr_free_pages}, expected {epc.npages - len(used)}")
    if epc.nr_free_pages != epc.npages - epc._next_fresh + len(epc._freed):
        _fail("sgx_nr_free_pages disagrees with the free list")
    if len({p.index for p in epc._freed}) != len(epc._freed):
        _fail("a page is on the free list twice")
    for page in epc._freed:
        if page.flags != SGX_EPC_PAGE_IS_FREE or page.owner is not None or page.on_list:
            _fail(f"free EPC page {page.index} has flags {page.flags}, owner or is listed")
        if page.index in used:
            _fail(f"EPC page {page.index} is free and in use as {used[page.index]}")
    # The reclaimer's list: resident REG/TCS/TRIM pages of reachable enclaves, nothing else.
    # (A page trimmed by MODIFY_TYPES stays on the list until REMOVE_PAGES takes it off.)
    on_list = 0
    for page in epc.active:
        owner = page.owner
        if not page.on_list or not page.flags & SGX_EPC_PAGE_RECLAIMER_TRACKED:
            _fail(f"EPC page {page.index} is on the active list but not marked so")
        if not isinstance(owner, SgxEnclPage) or owner.epc_page is not page:
            _fail(f"EPC page {page.index} on the active list is owned by {owner!r}")
            continue
        if page.index not in used:
            _fail(f"EPC page {page.index} on the active list is no reachable enclave's page")
        entry = cpu.epcm.get(page.index)
        if entry is None or int(entry.pt) not in _CHILD_TYPES:
            _fail(f"EPC page {page.index} on the active list is not a valid REG/TCS/TRIM page")
        on_list += 1
    resident = sum(e.secs_child_cnt for e in reachable)
    if on_list != resident:
        _fail(f"{on_list} pages on the active list, {resident} resident enclave pages")
    _check_ptes(m, reachable)


def check_released(m: Machine, enclaves: Iterable[SgxEncl]) -> None:
    """Enclaves no process can reach any more hold nothing: no EPC, VA or backing page."""
    reachable = {id(e) for e in reachable_enclaves(m)}
    for encl in enclaves:
        if id(encl) in reachable:
            continue
        name = f"enclave {encl.base:#x}+{encl.size:#x}"
        if not encl.released or encl.refcount:
            _fail(f"{name} is unreachable but not released (refcount {encl.refcount})")
        if encl.page_array or encl.va_pages or encl.secs.epc_page is not None:
            _fail(f"{name} was released but keeps pages, VA pages or its SECS")
        if encl.backing is not None:
            _fail(f"{name} was released but keeps its backing storage")
        if encl.mm_list:
            _fail(f"{name} was released but keeps mms on its list")
