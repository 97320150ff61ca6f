"""mmap, mprotect, munmap and faults on /dev/sgx_enclave mappings; host (untrusted) accesses.

sgx_mmap/sgx_get_unmapped_area (driver.c), sgx_encl_may_map and sgx_vma_fault (encl.c), and
the x86 fault path: SIGSEGV/SIGBUS where a process would get them, abort-page semantics for
host accesses to EPC.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from typing import Any

import pytest

from sgxemu import Machine, uapi
from sgxemu.linux import SIGBUS, SIGSEGV
from sgxemu.linux.encl import READ_IMPLIES_EXEC, SgxEncl
from sgxemu.linux.enclcall import EnclCaller
from sgxemu.linux.errors import SEGV_ACCERR, SEGV_MAPERR
from sgxemu.linux.load import LoadedEnclave, encl_build
from sgxemu.linux.mman import (
    MAP_ANONYMOUS,
    MAP_FIXED,
    MAP_FIXED_NOREPLACE,
    MAP_PRIVATE,
    MAP_SHARED,
    PROT_EXEC,
    PROT_NONE,
    PROT_READ,
    PROT_WRITE,
)
from sgxemu.linux.process import Process
from sgxemu.loader.selftest_layout import EnclaveImage
from sgxemu.testenclave import protocol as P

PAGE = 4096
RW, RX, RWX = PROT_READ | PROT_WRITE, PROT_READ | PROT_EXEC, 7
SHARED_FIXED = MAP_SHARED | MAP_FIXED


def errno_of(fn: Callable[[], Any]) -> int:
    with pytest.raises(OSError) as info:
        fn()
    assert info.value.errno is not None
    return info.value.errno


def _encl(e: LoadedEnclave) -> SgxEncl:
    encl = e.proc.fds[e.fd].private_data
    assert isinstance(encl, SgxEncl)
    return encl


# -- mmap ---------------------------------------------------------------------------------------------
def test_map_private_is_einval(proc: Process) -> None:
    fd = proc.open("/dev/sgx_enclave")
    assert errno_of(lambda: proc.mmap(0, PAGE, PROT_READ, MAP_PRIVATE, fd, 0)) == errno.EINVAL
    assert errno_of(lambda: proc.mmap(0x10_0000_0000, PAGE, PROT_READ, MAP_PRIVATE | MAP_FIXED, fd, 0)) == errno.EINVAL
    assert errno_of(lambda: proc.mmap(0, PAGE, PROT_READ, 0x0F, fd, 0)) == errno.EINVAL  # bad type


def test_fresh_fd_maps_anything_anywhere(proc: Process) -> None:
    fd = proc.open("/dev/sgx_enclave")
    a = proc.mmap(0, 16 * PAGE, RWX, MAP_SHARED, fd, 0)
    # an access before CREATE: no page, enclave not initialized -> SIGBUS (no EAUG)
    with pytest.raises(SIGBUS):
        proc.read(a, 8)
    proc.munmap(a, 16 * PAGE)


def test_generic_mmap_errors(proc: Process) -> None:
    fd = proc.open("/dev/sgx_enclave")
    assert errno_of(lambda: proc.mmap(0, 0, PROT_READ, MAP_SHARED, fd, 0)) == errno.EINVAL
    assert errno_of(lambda: proc.mmap(0, PAGE, PROT_READ, MAP_SHARED, fd, 100)) == errno.EINVAL
    assert errno_of(lambda: proc.mmap(0, PAGE, PROT_READ, MAP_SHARED, 77, 0)) == errno.EBADF
    assert errno_of(lambda: proc.mmap(0x10_0000_0800, PAGE, PROT_READ, SHARED_FIXED, fd, 0)) == errno.EINVAL
    assert errno_of(lambda: proc.mmap(0x1000, PAGE, PROT_READ, SHARED_FIXED, fd, 0)) == errno.EPERM
    assert errno_of(lambda: proc.mmap(0, 1 << 48, PROT_READ, MAP_SHARED, fd, 0)) == errno.ENOMEM
    a = proc.alloc(PAGE)
    assert errno_of(lambda: proc.mmap(a, PAGE, PROT_READ, MAP_SHARED | MAP_FIXED_NOREPLACE, fd, 0)) == errno.EEXIST
    pfd = proc.open("/dev/sgx_provision", os.O_RDONLY)
    assert errno_of(lambda: proc.mmap(0, PAGE, PROT_READ, MAP_SHARED, pfd, 0)) == errno.ENODEV


def test_file_mode_limits_mappings(proc: Process) -> None:
    ro = proc.open("/dev/sgx_enclave", os.O_RDONLY)
    assert errno_of(lambda: proc.mmap(0, PAGE, RW, MAP_SHARED, ro, 0)) == errno.EACCES
    a = proc.mmap(0, PAGE, PROT_READ, MAP_SHARED, ro, 0)
    # without FMODE_WRITE the mapping may never become writable
    assert errno_of(lambda: proc.mprotect(a, PAGE, RW)) == errno.EACCES
    wo = proc.open("/dev/sgx_enclave", os.O_WRONLY)
    assert errno_of(lambda: proc.mmap(0, PAGE, PROT_READ, MAP_SHARED, wo, 0)) == errno.EACCES


def test_after_init_mappings_must_stay_inside_elrange(encl: LoadedEnclave) -> None:
    proc, fd = encl.proc, encl.fd
    assert errno_of(lambda: proc.mmap(0, PAGE, PROT_READ, MAP_SHARED, fd, 0)) == errno.EACCES
    assert errno_of(lambda: proc.mmap(encl.base - PAGE, 2 * PAGE, PROT_READ, SHARED_FIXED, fd, 0)) == errno.EACCES
    end = encl.base + encl.size
    assert errno_of(lambda: proc.mmap(end - PAGE, 2 * PAGE, PROT_READ, SHARED_FIXED, fd, 0)) == errno.EACCES
    proc.mmap(end - PAGE, PAGE, RWX, SHARED_FIXED, fd, 0)  # no page there yet: anything goes


@pytest.mark.parametrize(
    ("segment", "prot", "ok"),
    [
        (0, RW, True), (0, RWX, False), (0, RX, False),  # TCS: RW
        (1, RX, True), (1, PROT_READ, True), (1, RW, False), (1, RWX, False),  # text: R-X
        (2, RW, True), (2, RWX, False), (2, PROT_EXEC, False), (2, PROT_NONE, True),  # data
        (3, RW, True), (3, RX, False),  # heap
    ],
)
def test_may_map_against_vm_max_prot_bits(encl: LoadedEnclave, segment: int, prot: int, ok: bool) -> None:
    seg = encl.image.segments[segment]
    addr = encl.base + seg.offset
    proc = encl.proc
    # mprotect first: a refused MAP_FIXED leaves a hole where the old mapping was
    for op in (
        lambda: proc.mprotect(addr, seg.size, prot),
        lambda: proc.mmap(addr, seg.size, prot, SHARED_FIXED, encl.fd, 0),
    ):
        if ok:
            op()
        else:
            assert errno_of(op) == errno.EACCES


def test_refused_map_fixed_leaves_a_hole(encl: LoadedEnclave) -> None:
    """As mmap_region does for a driver's .mmap failure: the old mapping is gone."""
    text = encl.base + encl.image.segments[1].offset
    assert errno_of(lambda: encl.proc.mmap(text, PAGE, RW, SHARED_FIXED, encl.fd, 0)) == errno.EACCES
    assert encl.proc.mm.vma_lookup(text) is None


def test_one_page_decides_for_the_whole_range(encl: LoadedEnclave) -> None:
    """A range over text (R-X) and data (RW-): neither RX nor RW fits every page."""
    text = encl.image.segments[1]
    start = encl.base + text.offset
    length = encl.image.segments[2].offset + PAGE - text.offset
    for prot in (RX, RW):
        assert errno_of(lambda prot=prot: encl.proc.mprotect(start, length, prot)) == errno.EACCES
    encl.proc.mmap(start, length, PROT_READ, SHARED_FIXED, encl.fd, 0)


def test_mprotect_changes_earlier_vmas_before_failing(encl: LoadedEnclave) -> None:
    """do_mprotect_pkey works VMA by VMA: the heap goes RO, then the hole is ENOMEM."""
    heap = encl.image.heap
    proc = encl.proc
    start = encl.base + heap.offset
    end_of_maps = encl.base + encl.image.src_size
    proc.munmap(end_of_maps, PAGE)  # the rest of the reservation is PROT_NONE: punch a hole
    assert errno_of(lambda: proc.mprotect(start, end_of_maps - start + PAGE, PROT_READ)) == errno.ENOMEM
    vma = proc.mm.vma_lookup(start)
    assert vma is not None and vma.prot == PROT_READ


def test_read_implies_exec_personality(encl: LoadedEnclave) -> None:
    encl.proc.personality |= READ_IMPLIES_EXEC
    assert errno_of(lambda: encl.proc.mprotect(encl.data_start, PAGE, PROT_READ)) == errno.EACCES
    encl.proc.personality = 0


def test_mapping_wider_than_a_page_allows_faults_with_sigbus(
    proc: Process, image: EnclaveImage, sigstruct: bytes
) -> None:
    """Mapped RWX before CREATE, pages added RW later: the fault handler refuses (SIGBUS)."""
    fd_probe = proc.open("/dev/sgx_enclave")
    proc.close(fd_probe)
    e = encl_build(proc, image, sigstruct=sigstruct, map_segments=False)
    # after INIT the same mmap is refused, so map before INIT on a second enclave instead:
    assert errno_of(lambda: proc.mmap(e.data_start, PAGE, RWX, SHARED_FIXED, e.fd, 0)) == errno.EACCES
    proc.mmap(e.data_start, PAGE, RW, SHARED_FIXED, e.fd, 0)
    assert proc.read(e.data_start, 4) == b"\xff" * 4
    encl = _encl(e)
    encl.page_array[e.data_start >> 12].vm_max_prot_bits = PROT_READ  # as if added read-only
    proc.mm.mem.ptes.pop(e.data_start >> 12)
    with pytest.raises(SIGBUS):
        proc.read(e.data_start, 4)
    encl.page_array[e.data_start >> 12].vm_max_prot_bits = RW
    e.delete()


# -- host accesses --------------------------------------------------------------------------------------
def test_host_reads_of_epc_see_the_abort_page(caller: EnclCaller) -> None:
    e = caller.e
    caller.put_buf(P.MAGIC)
    buf = e.base + e.image.data_offset
    assert caller.proc.read(buf, 16) == b"\xff" * 16
    assert caller.proc.read(e.tcs, 8) == b"\xff" * 8
    caller.proc.write(buf, b"\0" * 8)  # dropped
    assert caller.get_buf() == P.MAGIC


def test_host_access_faults_in_evicted_pages(
    make_machine: Callable[..., Machine], image: EnclaveImage, sigstruct: bytes
) -> None:
    m = make_machine(epc_size=64 * PAGE)
    proc = m.spawn()
    e = encl_build(proc, image, sigstruct=sigstruct)
    from sgxemu.linux.reclaim import sgx_reclaim_pages

    while m.epc.active:
        sgx_reclaim_pages(m)
    assert not proc.mm.mem.ptes.get(e.data_start >> 12)
    assert proc.read(e.data_start, 8) == b"\xff" * 8  # ELDU (and the SECS first), then 0xFF
    assert _encl(e).page_array[e.data_start >> 12].epc_page is not None


def test_host_read_of_unbacked_elrange_page_augments(caller: EnclCaller) -> None:
    e = caller.e
    addr = e.base + e.image.src_size
    caller.proc.mmap(addr, PAGE, RW, SHARED_FIXED, e.fd, 0)
    assert caller.proc.read(addr, 8) == b"\xff" * 8
    assert addr >> 12 in _encl(e).page_array  # the fault handler EAUGed it


def test_unmapped_and_protected_accesses_raise_signals(proc: Process) -> None:
    with pytest.raises(SIGSEGV) as info:
        proc.read(0x10_0000_0000, 8)
    assert info.value.code == SEGV_MAPERR and info.value.addr == 0x10_0000_0000
    none = proc.mmap(0, PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS)
    with pytest.raises(SIGSEGV) as info:
        proc.read(none, 1)
    assert info.value.code == SEGV_ACCERR
    ro = proc.mmap(0, PAGE, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS)
    assert proc.read(ro, 4) == bytes(4)
    with pytest.raises(SIGSEGV):
        proc.write(ro, b"x")
    rw = proc.alloc(2 * PAGE)
    proc.write(rw + PAGE - 2, b"abcd")  # across two pages
    assert proc.read(rw + PAGE - 2, 4) == b"abcd"
    proc.mprotect(rw, 2 * PAGE, PROT_NONE)
    with pytest.raises(SIGSEGV):
        proc.read(rw, 1)
    proc.mprotect(rw, 2 * PAGE, PROT_READ)
    assert proc.read(rw + PAGE - 2, 4) == b"abcd"  # contents survive PROT_NONE


def test_signals_are_not_oserrors() -> None:
    assert not issubclass(SIGSEGV, OSError) and not issubclass(SIGBUS, OSError)


# -- lifetime -------------------------------------------------------------------------------------------
def test_close_keeps_a_mapped_enclave_alive(caller: EnclCaller) -> None:
    """The VMAs hold the file: closing the fd does not release the enclave."""
    e, proc = caller.e, caller.proc
    m = proc.machine
    used = m.cpu.epc.npages - m.epc.nr_free_pages
    proc.close(e.fd)
    assert m.cpu.epc.npages - m.epc.nr_free_pages == used
    caller.put_buf(P.MAGIC)
    assert caller.get_buf() == P.MAGIC
    proc.munmap(e.base, e.size)
    assert not m.cpu.epcm  # the last VMA took the last file reference
    proc.munmap(e.src, e.image.src_size)


def test_partial_munmap_splits_and_keeps_the_rest(caller: EnclCaller) -> None:
    e, proc = caller.e, caller.proc
    data = e.image.segments[2]
    proc.munmap(e.base + data.offset + PAGE, PAGE)  # a hole in the middle of the data VMA
    caller.put_buf(P.MAGIC)  # encl_buffer's first page is still mapped
    assert caller.get_buf() == P.MAGIC
    assert caller.put(e.data_start, 1) == 0
    assert caller.exc() == (14, 0x6, e.data_start)  # no VMA: SIGSEGV, fixed up (W|U)
    assert caller.run.function == uapi.ERESUME


def test_process_exit_releases_everything(
    make_machine: Callable[..., Machine], image: EnclaveImage, sigstruct: bytes
) -> None:
    m = make_machine(epc_size=64 * PAGE)
    procs = [m.spawn() for _ in range(3)]
    encls = [encl_build(p, image, sigstruct=sigstruct) for p in procs]  # 3 x 12 pages + reclaim
    for p, e in zip(procs, encls, strict=True):
        c = EnclCaller(p, e)
        c.put_buf(P.MAGIC + p.pid)
    for p, e in zip(procs, encls, strict=True):
        assert EnclCaller(p, e).get_buf() == P.MAGIC + p.pid
    procs[1].exit()
    assert EnclCaller(procs[0], encls[0]).get_buf() == P.MAGIC + procs[0].pid
    for p in (procs[0], procs[2]):
        p.exit()
    assert not m.cpu.epcm and m.epc.nr_free_pages == m.cpu.epc.npages
    with pytest.raises(ProcessLookupError):
        procs[0].open("/dev/sgx_enclave")


def test_enclave_mapped_in_two_places(caller: EnclCaller) -> None:
    """Two VMAs, one enclave page: both get PTEs; reclaim zaps both."""
    e, proc = caller.e, caller.proc
    m = proc.machine
    caller.put_buf(P.MAGIC)
    buf = e.base + e.image.data_offset
    assert proc.read(buf, 1) == b"\xff"
    encl = _encl(e)
    from sgxemu.linux.reclaim import sgx_reclaim_pages

    while m.epc.active:
        sgx_reclaim_pages(m)
    assert not proc.mm.mem.ptes.get(buf >> 12)
    assert encl.secs.epc_page is None
    assert caller.get_buf() == P.MAGIC  # ELDU on the enclave's own faults


def test_dev_mounted_noexec(make_machine: Callable[..., Machine]) -> None:
    """load.c's second probe fails with EPERM when /dev is noexec ("mount /dev with exec")."""
    proc = make_machine(dev_noexec=True).spawn()
    fd = proc.open("/dev/sgx_enclave")
    assert errno_of(lambda: proc.mmap(0, PAGE, PROT_EXEC, MAP_SHARED, fd, 0)) == errno.EPERM
    a = proc.mmap(0, PAGE, PROT_READ, MAP_SHARED, fd, 0)
    assert errno_of(lambda: proc.mprotect(a, PAGE, RX)) == errno.EACCES  # no VM_MAYEXEC


def test_debug_enclave_through_proc_pid_mem(proc: Process, image: EnclaveImage, sigstruct: bytes) -> None:
    """sgx_vma_access: EDBGRD/EDBGWR, 8 bytes at a time, only for DEBUG enclaves."""
    e = encl_build(proc, image, sigstruct=sigstruct, attributes=uapi.SGX_ATTR_MODE64BIT | uapi.SGX_ATTR_DEBUG)
    c = EnclCaller(proc, e)
    c.put_buf(P.MAGIC)
    buf = e.base + image.data_offset
    t = proc.main
    assert t.access_process_vm(buf, 8) == P.MAGIC.to_bytes(8, "little")
    assert t.access_process_vm(buf + 4, 8) == (P.MAGIC.to_bytes(8, "little")[4:] + bytes(4))
    t.access_process_vm(buf + 2, 4, b"\x11\x22\x33\x44")
    want = bytearray(P.MAGIC.to_bytes(8, "little"))
    want[2:6] = b"\x11\x22\x33\x44"
    assert c.get_buf() == int.from_bytes(want, "little")
    # the TCS beyond GSLIMIT is not readable even by the debugger: EDBGRD #GP -> EIO
    assert errno_of(lambda: t.access_process_vm(e.tcs + 72, 8)) == errno.EIO
    assert t.access_process_vm(e.tcs + 16, 8) == image.segments[0].data[16:24]  # OSSA


def test_production_enclave_is_opaque_to_proc_pid_mem(caller: EnclCaller) -> None:
    caller.put_buf(P.MAGIC)
    t = caller.proc.main
    assert errno_of(lambda: t.access_process_vm(caller.e.base + caller.e.image.data_offset, 8)) == errno.EIO
    # ordinary memory is forced through whatever its protection
    ro = caller.proc.mmap(0, PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS)
    t.access_process_vm(ro, 3, b"abc")
    assert t.access_process_vm(ro, 3) == b"abc"
