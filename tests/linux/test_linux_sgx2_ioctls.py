"""RESTRICT_PERMISSIONS, MODIFY_TYPES and REMOVE_PAGES: every errno in the kernel's order,
count/result partial progress, and what each leaves behind (ioctl.c)."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from typing import Any

import pytest

from sgxemu import Machine, uapi
from sgxemu.arch.constants import SgxError
from sgxemu.linux.encl import SGX_ENCL_PAGE_BEING_RECLAIMED, SgxEncl
from sgxemu.linux.enclcall import EnclCaller
from sgxemu.linux.load import LoadedEnclave, encl_build
from sgxemu.linux.mman import MAP_FIXED, MAP_SHARED, PROT_READ, PROT_WRITE
from sgxemu.linux.process import Process
from sgxemu.loader.selftest_layout import EnclaveImage
from sgxemu.testenclave import protocol as P

PAGE = 4096
U64 = (1 << 64) - 1
RESTRICT = uapi.SGX_IOC_ENCLAVE_RESTRICT_PERMISSIONS
MODIFY = uapi.SGX_IOC_ENCLAVE_MODIFY_TYPES
REMOVE = uapi.SGX_IOC_ENCLAVE_REMOVE_PAGES


def errno_of(fn: Callable[[], Any]) -> int:
    with pytest.raises(OSError) as info:
        fn()
    assert info.value.errno is not None
    return info.value.errno


def _encl(e: LoadedEnclave) -> SgxEncl:
    encl = e.proc.fds[e.fd].private_data
    assert isinstance(encl, SgxEncl)
    return encl


def _structs() -> list[tuple[int, type]]:
    return [
        (RESTRICT, uapi.sgx_enclave_restrict_permissions),
        (MODIFY, uapi.sgx_enclave_modify_types),
        (REMOVE, uapi.sgx_enclave_remove_pages),
    ]


@pytest.mark.parametrize(("request_", "cls"), _structs())
def test_enodev_on_sgx1_before_the_initialized_check(
    make_machine: Callable[..., Machine], request_: int, cls: type
) -> None:
    proc = make_machine(sgx2=False).spawn()
    fd = proc.open("/dev/sgx_enclave", os.O_RDWR)
    assert errno_of(lambda: proc.ioctl(fd, request_, 0x10)) == errno.ENODEV
    assert errno_of(lambda: proc.ioctl(fd, request_, cls(0, PAGE))) == errno.ENODEV


@pytest.mark.parametrize(("request_", "cls"), _structs())
def test_uninitialized_is_einval_before_the_copy(proc: Process, request_: int, cls: type) -> None:
    fd = proc.open("/dev/sgx_enclave", os.O_RDWR)
    assert errno_of(lambda: proc.ioctl(fd, request_, 0x10)) == errno.EINVAL


@pytest.mark.parametrize(("request_", "cls"), _structs())
def test_prechecks(caller: EnclCaller, request_: int, cls: type) -> None:
    e = caller.e
    ioctl = caller.ioctl
    assert errno_of(lambda: ioctl(request_, 0x10)) == errno.EFAULT
    off = e.image.data_offset + PAGE
    bad = [
        cls(off + 8, PAGE), cls(off, 0), cls(off, PAGE + 8),
        cls(U64 & ~0xFFF, 2 * PAGE),  # offset + length overflows
        cls(e.size - PAGE, 2 * PAGE), cls(e.size, PAGE),
    ]
    for arg in bad:
        assert errno_of(lambda arg=arg: ioctl(request_, arg)) == errno.EINVAL
    if cls is uapi.sgx_enclave_remove_pages:
        assert errno_of(lambda: ioctl(request_, cls(off, PAGE, 1))) == errno.EINVAL  # count
        return
    assert errno_of(lambda: ioctl(request_, cls(off, PAGE, 0x100, 0, 0))) == errno.EINVAL
    assert errno_of(lambda: ioctl(request_, cls(off, PAGE, 1, 1, 0))) == errno.EINVAL  # result
    assert errno_of(lambda: ioctl(request_, cls(off, PAGE, 1, 0, 1))) == errno.EINVAL  # count
    # offset/length come before the value checks
    assert errno_of(lambda: ioctl(request_, cls(off + 8, PAGE, 0x100, 1, 1))) == errno.EINVAL


def test_restrict_permission_values(caller: EnclCaller) -> None:
    off = caller.e.image.data_offset + PAGE
    for perms in (uapi.SGX_SECINFO_W, uapi.SGX_SECINFO_W | uapi.SGX_SECINFO_X, 8, 0x200):
        arg = uapi.sgx_enclave_restrict_permissions(off, PAGE, perms)
        assert errno_of(lambda arg=arg: caller.ioctl(RESTRICT, arg)) == errno.EINVAL
    # 0 is allowed (V5 dropped "must keep R"): EMODPR to no permissions at all
    arg = uapi.sgx_enclave_restrict_permissions(off, PAGE, 0)
    assert caller.ioctl(RESTRICT, arg) == 0 and arg.count == PAGE


def test_restrict_walks_pages_and_stops_at_the_first_bad_one(caller: EnclCaller) -> None:
    e = caller.e
    m = caller.proc.machine
    # data segment, then the heap, then nothing: the hole past src_size has no pages
    off = e.image.data_offset
    length = e.image.src_size - off + PAGE
    etracks = m.stats.etracks
    arg = uapi.sgx_enclave_restrict_permissions(off, length, uapi.SGX_SECINFO_R)
    assert errno_of(lambda: caller.ioctl(RESTRICT, arg)) == errno.EFAULT
    assert arg.count == length - PAGE and arg.result == 0
    pages = (length - PAGE) // PAGE
    assert m.stats.etracks - etracks == pages
    assert m.stats.ipi_rounds >= pages  # one IPI round per page, even with nobody inside
    # text pages stay REG and can be restricted; the TCS segment cannot
    arg = uapi.sgx_enclave_restrict_permissions(0, 3 * PAGE, uapi.SGX_SECINFO_R)
    assert errno_of(lambda: caller.ioctl(RESTRICT, arg)) == errno.EINVAL
    assert arg.count == 0


def test_restrict_reports_the_emodpr_error_code(caller: EnclCaller) -> None:
    """A PENDING page (EAUGed, not accepted) makes EMODPR return SGX_PAGE_NOT_MODIFIABLE."""
    e, proc = caller.e, caller.proc
    T = e.image.src_size
    addr = e.base + T
    proc.mmap(addr, 2 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, e.fd, 0)
    assert caller.eaccept(addr, 0x20B) == 0  # page 1: EAUG + accepted
    caller.put(addr + PAGE, 1)  # page 2: EAUG, then the store faults on PENDING
    assert caller.exc() == (14, 0x8007, addr + PAGE)
    caller.clear_exc()
    caller.run.tcs = e.base + PAGE
    arg = uapi.sgx_enclave_restrict_permissions(T, 2 * PAGE, uapi.SGX_SECINFO_R)
    assert errno_of(lambda: caller.ioctl(RESTRICT, arg)) == errno.EFAULT
    assert arg.result == SgxError.SGX_PAGE_NOT_MODIFIABLE and arg.count == PAGE


def test_restrict_page_being_reclaimed_is_eagain(caller: EnclCaller) -> None:
    encl = _encl(caller.e)
    entry = encl.page_array[caller.e.data_start >> 12]
    entry.desc |= SGX_ENCL_PAGE_BEING_RECLAIMED  # the reclaimer has it between age and EWB
    arg = uapi.sgx_enclave_restrict_permissions(caller.e.image.data_offset + PAGE, PAGE, 1)
    assert errno_of(lambda: caller.ioctl(RESTRICT, arg)) == errno.EAGAIN
    entry.desc &= ~SGX_ENCL_PAGE_BEING_RECLAIMED


def test_restrict_does_not_touch_ptes_or_max_prot(caller: EnclCaller) -> None:
    e = caller.e
    D = e.data_start
    caller.put(D, P.MAGIC)
    encl = _encl(e)
    before = encl.page_array[D >> 12].vm_max_prot_bits
    pte = caller.proc.mm.mem.ptes[D >> 12]
    caller.ioctl(RESTRICT, uapi.sgx_enclave_restrict_permissions(e.image.data_offset + PAGE, PAGE, 1))
    assert encl.page_array[D >> 12].vm_max_prot_bits == before
    assert caller.proc.mm.mem.ptes[D >> 12] == pte


def test_modify_types_bad_type_copies_back(caller: EnclCaller) -> None:
    off = caller.e.image.data_offset + PAGE
    for t in (uapi.SGX_PAGE_TYPE_REG, uapi.SGX_PAGE_TYPE_SECS, uapi.SGX_PAGE_TYPE_VA, 0x55):
        arg = uapi.sgx_enclave_modify_types(off, PAGE, t)
        assert errno_of(lambda arg=arg: caller.ioctl(MODIFY, arg)) == errno.EINVAL
        assert arg.count == 0 and arg.result == 0


def test_modify_types_transitions(caller: EnclCaller) -> None:
    e = caller.e
    text = e.image.segments[1]
    # TCS -> TCS: refused; REG(R-X) -> TCS: the vetted maximum lacks W
    arg = uapi.sgx_enclave_modify_types(0, PAGE, uapi.SGX_PAGE_TYPE_TCS)
    assert errno_of(lambda: caller.ioctl(MODIFY, arg)) == errno.EINVAL
    arg = uapi.sgx_enclave_modify_types(text.offset, PAGE, uapi.SGX_PAGE_TYPE_TCS)
    assert errno_of(lambda: caller.ioctl(MODIFY, arg)) == errno.EPERM
    assert _encl(e).page_array[(e.base + text.offset) >> 12].vm_max_prot_bits == 5  # restored
    # TCS -> TRIM is allowed (TCS #2), then TRIM -> anything is not
    arg = uapi.sgx_enclave_modify_types(PAGE, PAGE, uapi.SGX_PAGE_TYPE_TRIM)
    assert caller.ioctl(MODIFY, arg) == 0 and arg.count == PAGE
    arg = uapi.sgx_enclave_modify_types(PAGE, PAGE, uapi.SGX_PAGE_TYPE_TRIM)
    assert errno_of(lambda: caller.ioctl(MODIFY, arg)) == errno.EINVAL
    caller.run.tcs = e.base
    assert caller.eaccept(e.base + PAGE, 0x410) == 0


def test_modify_types_to_tcs_zaps_ptes_and_caps_max_prot(caller: EnclCaller) -> None:
    e = caller.e
    D = e.data_start
    caller.put(D, P.MAGIC)  # the PTE is present now
    mem = caller.proc.mm.mem
    assert mem.ptes.get(D >> 12)
    arg = uapi.sgx_enclave_modify_types(e.image.data_offset + PAGE, PAGE, uapi.SGX_PAGE_TYPE_TCS)
    assert caller.ioctl(MODIFY, arg) == 0
    assert not mem.ptes.get(D >> 12)
    entry = _encl(e).page_array[D >> 12]
    assert entry.vm_max_prot_bits == 3 and entry.type == uapi.SGX_PAGE_TYPE_TCS
    # the data VMA is RW: mprotect to RWX is now refused on that page
    assert errno_of(lambda: caller.proc.mprotect(D, PAGE, 7)) == errno.EACCES


def test_modify_types_emodt_error_restores_max_prot(caller: EnclCaller) -> None:
    e, proc = caller.e, caller.proc
    T = e.image.src_size
    addr = e.base + T
    proc.mmap(addr, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, e.fd, 0)
    caller.put(addr, 1)  # EAUG: PENDING
    caller.clear_exc()
    caller.run.tcs = e.base + PAGE
    arg = uapi.sgx_enclave_modify_types(T, PAGE, uapi.SGX_PAGE_TYPE_TCS)
    assert errno_of(lambda: caller.ioctl(MODIFY, arg)) == errno.EFAULT
    assert arg.result == SgxError.SGX_PAGE_NOT_MODIFIABLE and arg.count == 0
    assert _encl(e).page_array[addr >> 12].vm_max_prot_bits == 7


def test_remove_pages_rules(caller: EnclCaller) -> None:
    e = caller.e
    off = e.image.data_offset + PAGE
    arg = uapi.sgx_enclave_remove_pages(off, PAGE)
    assert errno_of(lambda: caller.ioctl(REMOVE, arg)) == errno.EPERM  # not TRIM
    caller.ioctl(MODIFY, uapi.sgx_enclave_modify_types(off, PAGE, uapi.SGX_PAGE_TYPE_TRIM))
    arg = uapi.sgx_enclave_remove_pages(off, PAGE)
    assert errno_of(lambda: caller.ioctl(REMOVE, arg)) == errno.EPERM  # not accepted
    assert caller.eaccept(e.data_start, 0x410) == 0
    free = caller.proc.machine.epc.nr_free_pages
    encl = _encl(e)
    cnt = encl.page_cnt
    arg = uapi.sgx_enclave_remove_pages(off, PAGE)
    assert caller.ioctl(REMOVE, arg) == 0 and arg.count == PAGE
    assert caller.proc.machine.epc.nr_free_pages == free + 1
    assert encl.page_cnt == cnt - 1 and e.data_start >> 12 not in encl.page_array
    arg = uapi.sgx_enclave_remove_pages(off, PAGE)
    assert errno_of(lambda: caller.ioctl(REMOVE, arg)) == errno.EFAULT  # gone


def test_remove_pages_partial_count_and_isolated_page(caller: EnclCaller) -> None:
    e = caller.e
    heap = e.image.heap
    data = e.image.segments[2]
    off = data.offset + data.size - PAGE  # last data page, then the heap page
    caller.ioctl(MODIFY, uapi.sgx_enclave_modify_types(off, 2 * PAGE, uapi.SGX_PAGE_TYPE_TRIM))
    assert caller.eaccept(e.base + off, 0x410) == 0
    arg = uapi.sgx_enclave_remove_pages(off, 2 * PAGE)
    assert errno_of(lambda: caller.ioctl(REMOVE, arg)) == errno.EPERM  # heap page not accepted
    assert arg.count == PAGE
    assert caller.eaccept(e.base + heap.offset, 0x410) == 0
    page = _encl(e).page_array[(e.base + heap.offset) >> 12].epc_page
    assert page is not None
    m = caller.proc.machine
    del m.epc.active[page]  # off the list, still tracked: as the reclaimer's scan leaves it
    page.on_list = False
    arg = uapi.sgx_enclave_remove_pages(heap.offset, PAGE)
    assert errno_of(lambda: caller.ioctl(REMOVE, arg)) == errno.EBUSY
    m.epc.add_tail(page)
    assert caller.ioctl(REMOVE, uapi.sgx_enclave_remove_pages(heap.offset, PAGE)) == 0


def test_sgx2_ioctls_load_evicted_pages(
    make_machine: Callable[..., Machine], image: EnclaveImage, sigstruct: bytes
) -> None:
    """With every page (and the SECS) evicted, the ioctls ELDU what they work on."""
    m = make_machine(epc_size=64 * PAGE)
    proc = m.spawn()
    e = encl_build(proc, image, sigstruct=sigstruct)
    encl = _encl(e)
    from sgxemu.linux.reclaim import sgx_reclaim_pages

    while m.epc.active:
        sgx_reclaim_pages(m)
    assert encl.secs.epc_page is None and encl.secs_child_cnt == 0
    arg = uapi.sgx_enclave_restrict_permissions(image.data_offset + PAGE, PAGE, 1)
    assert proc.ioctl(e.fd, RESTRICT, arg) == 0
    assert encl.secs.epc_page is not None and encl.secs_child_cnt == 1
