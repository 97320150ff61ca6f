"""Every errno of CREATE, ADD_PAGES, INIT and PROVISION, in the kernel's order (ioctl.c).

Each case builds the state just before the failing check; where two checks could fire, the
earlier one must win. Pointers in the argument structs are process addresses.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from sgxemu import Machine, uapi
from sgxemu.arch.constants import EnclsLeaf, SgxError
from sgxemu.linux import encls as kencls
from sgxemu.linux.encl import SgxEncl
from sgxemu.linux.load import secs_page, sign
from sgxemu.linux.mman import (
    MAP_ANONYMOUS,
    MAP_FIXED,
    MAP_PRIVATE,
    MAP_SHARED,
    PROT_NONE,
    PROT_READ,
    PROT_WRITE,
)
from sgxemu.linux.process import Process, Thread
from sgxemu.linux.vma import TASK_SIZE, VM_MAYEXEC
from sgxemu.loader.selftest_layout import EnclaveImage

PAGE = 4096
U64 = (1 << 64) - 1


def errno_of(fn: Callable[[], Any]) -> int:
    with pytest.raises(OSError) as info:
        fn()
    assert info.value.errno is not None
    return info.value.errno


class Builder:
    """load.c's steps one at a time, with every argument in process memory."""

    def __init__(self, m: Machine, proc: Process, image: EnclaveImage, sigstruct: bytes) -> None:
        self.m = m
        self.proc = proc
        self.image = image
        self.sigstruct = sigstruct
        self.fd = proc.open("/dev/sgx_enclave", os.O_RDWR)
        self.size = image.encl_size
        area = proc.mmap(0, 2 * self.size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS)
        self.base = (area + self.size - 1) & ~(self.size - 1)
        self.args = proc.alloc(4 * PAGE)
        self.secs_addr = self.args
        self.secinfo_addr = self.args + PAGE
        self.sig_addr = self.args + 2 * PAGE
        self.src = proc.alloc(image.src_size)
        for seg in image.segments[:-1]:
            proc.write(self.src + seg.offset, seg.data)

    @property
    def encl(self) -> SgxEncl:
        encl = self.proc.fds[self.fd].private_data
        assert isinstance(encl, SgxEncl)
        return encl

    def ioctl(self, request: int, arg: Any) -> int:
        return self.proc.ioctl(self.fd, request, arg)

    def create(self, **secs: int) -> int:
        fields = dict(base=self.base, size=self.size)
        fields.update(secs)
        raw = bytearray(secs_page(fields["base"], fields["size"]))
        for name in ("ssa_frame_size", "attributes", "xfrm", "miscselect"):
            if name in secs:
                off, fmt = {"ssa_frame_size": (16, "<I"), "miscselect": (20, "<I"),
                            "attributes": (48, "<Q"), "xfrm": (56, "<Q")}[name]
                struct.pack_into(fmt, raw, off, secs[name])
        self.proc.write(self.secs_addr, bytes(raw))
        return self.ioctl(uapi.SGX_IOC_ENCLAVE_CREATE, uapi.sgx_enclave_create(self.secs_addr))

    def add_arg(self, index: int, secinfo_flags: int | None = None, **kw: int) -> uapi.sgx_enclave_add_pages:
        seg = self.image.segments[index]
        flags = seg.secinfo_flags if secinfo_flags is None else secinfo_flags
        self.proc.write(self.secinfo_addr, uapi.sgx_secinfo(flags=flags))
        arg = uapi.sgx_enclave_add_pages(
            src=self.src + seg.offset, offset=seg.offset, length=seg.size,
            secinfo=self.secinfo_addr, flags=uapi.SGX_PAGE_MEASURE if seg.measure else 0,
        )
        for k, v in kw.items():
            setattr(arg, k, v & U64)
        return arg

    def add(self, index: int, **kw: int) -> uapi.sgx_enclave_add_pages:
        arg = self.add_arg(index, **kw)
        self.ioctl(uapi.SGX_IOC_ENCLAVE_ADD_PAGES, arg)
        return arg

    def add_all(self) -> None:
        for i in range(len(self.image.segments)):
            self.add(i)

    def init(self, sigstruct: bytes | None = None) -> int:
        self.proc.write(self.sig_addr, sigstruct if sigstruct is not None else self.sigstruct)
        return self.ioctl(uapi.SGX_IOC_ENCLAVE_INIT, uapi.sgx_enclave_init(self.sig_addr))

    def build(self) -> None:
        self.create()
        self.add_all()
        self.init()


@pytest.fixture
def b(machine: Machine, proc: Process, image: EnclaveImage, sigstruct: bytes) -> Builder:
    return Builder(machine, proc, image, sigstruct)


# -- dispatcher ---------------------------------------------------------------------------------------
def test_unknown_ioctls_are_enotty(b: Builder) -> None:
    assert errno_of(lambda: b.ioctl(0xC030A4FF, None)) == errno.ENOTTY
    # /dev/sgx_vepc's only ioctl is not handled by the enclave fd
    assert errno_of(lambda: b.ioctl(uapi.SGX_IOC_VEPC_REMOVE_ALL, None)) == errno.ENOTTY
    # a right number with the wrong size encoded is another number
    assert errno_of(lambda: b.ioctl(uapi.SGX_IOC_ENCLAVE_CREATE + (1 << 16), None)) == errno.ENOTTY


def test_ioctl_on_bad_fd_and_provision_fd(proc: Process) -> None:
    assert errno_of(lambda: proc.ioctl(99, uapi.SGX_IOC_ENCLAVE_CREATE, None)) == errno.EBADF
    pfd = proc.open("/dev/sgx_provision", os.O_RDONLY)
    assert errno_of(lambda: proc.ioctl(pfd, uapi.SGX_IOC_ENCLAVE_CREATE, None)) == errno.ENOTTY
    proc.close(pfd)


def test_no_enclave_device_without_flc(make_machine: Callable[..., Machine]) -> None:
    proc = make_machine(flc=False).spawn()
    assert errno_of(lambda: proc.open("/dev/sgx_enclave", os.O_RDWR)) == errno.ENOENT
    proc.close(proc.open("/dev/sgx_provision", os.O_RDONLY))
    assert errno_of(lambda: proc.open("/dev/nonexistent")) == errno.ENOENT


def test_concurrent_ioctl_on_one_enclave_is_ebusy(b: Builder) -> None:
    b.create()
    seen: list[int] = []
    other = b.proc.thread()

    def resched(thread: Thread | None) -> None:
        if not seen:
            seen.append(errno_of(lambda: other.ioctl(b.fd, uapi.SGX_IOC_ENCLAVE_INIT, uapi.sgx_enclave_init(0))))
            # unknown commands too: the busy bit is tested first
            seen.append(errno_of(lambda: other.ioctl(b.fd, 0xA4FF, None)))

    b.m.on_resched = resched
    b.add(0)
    b.m.on_resched = None
    assert seen == [errno.EBUSY, errno.EBUSY]
    for i in range(1, len(b.image.segments)):
        b.add(i)
    b.init()  # the flag was cleared


def test_ioctl_arg_as_user_pointer(b: Builder) -> None:
    """The argument may be an address: copy_from_user and copy_to_user then apply."""
    b.proc.write(b.secs_addr, secs_page(b.base, b.size))
    arg_addr = b.args + 3 * PAGE
    b.proc.write(arg_addr, uapi.sgx_enclave_create(b.secs_addr))
    assert b.ioctl(uapi.SGX_IOC_ENCLAVE_CREATE, arg_addr) == 0
    arg = b.add_arg(0)
    b.proc.write(arg_addr, arg)
    b.ioctl(uapi.SGX_IOC_ENCLAVE_ADD_PAGES, arg_addr)
    assert b.proc.get(arg_addr, uapi.sgx_enclave_add_pages).count == arg.length
    # a read-only argument page: the copy back faults after the work is done
    arg2 = b.add_arg(1)
    b.proc.write(arg_addr, arg2)
    b.proc.mprotect(arg_addr, PAGE, PROT_READ)
    assert errno_of(lambda: b.ioctl(uapi.SGX_IOC_ENCLAVE_ADD_PAGES, arg_addr)) == errno.EFAULT
    assert (b.encl.base + arg2.offset) >> 12 in b.encl.page_array


# -- CREATE -------------------------------------------------------------------------------------------
def test_create_already_created_precedes_bad_arg(b: Builder) -> None:
    b.create()
    assert errno_of(b.create) == errno.EINVAL
    assert errno_of(lambda: b.ioctl(uapi.SGX_IOC_ENCLAVE_CREATE, 0x10)) == errno.EINVAL


@pytest.mark.parametrize(
    "case",
    ["arg", "src_unmapped", "src_prot_none"],
)
def test_create_efault(b: Builder, case: str) -> None:
    if case == "arg":
        arg: Any = 0x1000
    elif case == "src_unmapped":
        arg = uapi.sgx_enclave_create(TASK_SIZE - PAGE)
    else:
        none = b.proc.mmap(0, PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS)
        arg = uapi.sgx_enclave_create(none)
    free = b.m.epc.nr_free_pages
    assert errno_of(lambda: b.ioctl(uapi.SGX_IOC_ENCLAVE_CREATE, arg)) == errno.EFAULT
    assert b.m.epc.nr_free_pages == free
    b.create()  # nothing was left half done


@pytest.mark.parametrize(
    ("secs", "expected"),
    [
        ({"size": 3 * PAGE}, errno.EINVAL),  # not a power of two: the driver refuses
        ({"size": 0}, errno.EINVAL),
        ({"size": 1 << 63}, errno.EINVAL),  # the backing file would be larger than loff_t
        ({"base": 0x1000}, errno.EIO),  # ECREATE: BASEADDR not aligned to SIZE
        ({"ssa_frame_size": 0}, errno.EIO),
        ({"xfrm": 0}, errno.EIO),
        ({"attributes": uapi.SGX_ATTR_MODE64BIT | uapi.SGX_ATTR_INIT}, errno.EIO),
        ({"miscselect": 2}, errno.EIO),
        ({"size": PAGE}, errno.EIO),  # a power of two, but ECREATE wants two pages at least
    ],
)
def test_create_einval_and_eio(b: Builder, secs: dict[str, int], expected: int) -> None:
    free = b.m.epc.nr_free_pages
    assert errno_of(lambda: b.create(**secs)) == expected
    assert b.m.epc.nr_free_pages == free  # VA and SECS pages went back
    assert b.encl.page_cnt == 0 and not b.encl.va_pages
    b.create()


def test_create_enomem_when_epc_holds_only_secs_and_va(make_machine: Callable[..., Machine]) -> None:
    m = make_machine(epc_size=4 * PAGE)
    proc = m.spawn()
    secs = proc.alloc(PAGE)
    fds = []
    for i in range(3):
        fd = proc.open("/dev/sgx_enclave")
        fds.append(fd)
        proc.write(secs, secs_page(0x10_0000_0000 + i * 0x10_0000, 0x10_0000))
        create = lambda fd=fd: proc.ioctl(fd, uapi.SGX_IOC_ENCLAVE_CREATE, uapi.sgx_enclave_create(secs))  # noqa: E731
        if i < 2:
            create()
        else:
            assert errno_of(create) == errno.ENOMEM  # no free page, nothing reclaimable
    assert m.epc.nr_free_pages == 0


def test_create_eintr_when_reclaim_meets_a_signal(
    make_machine: Callable[..., Machine], image: EnclaveImage, sigstruct: bytes
) -> None:
    m = make_machine(epc_size=32 * PAGE, ksgxd=False)
    proc = m.spawn()
    b1 = Builder(m, proc, image, sigstruct)
    b1.build()
    # Take every free page: the EPC holds nothing but b1's reclaimable pages now.
    held = [m.epc.alloc(None, False) for _ in range(m.epc.nr_free_pages)]
    b3 = Builder(m, proc, image, sigstruct)
    proc.main.signal_pending = True
    assert errno_of(b3.create) == errno.EINTR  # sgx_alloc_epc_page saw the signal
    assert not proc.main.signal_pending  # delivered on the way out
    assert not m.stats.pages_reclaimed
    b3.create()  # without a signal, direct reclaim makes room
    assert m.stats.pages_reclaimed
    for page in held:
        m.epc.free(page)


# -- ADD_PAGES ----------------------------------------------------------------------------------------
def test_add_pages_state_checks(b: Builder) -> None:
    assert errno_of(lambda: b.add(0)) == errno.EINVAL  # not created
    b.build()
    assert errno_of(lambda: b.add(0)) == errno.EINVAL  # initialized
    assert errno_of(lambda: b.ioctl(uapi.SGX_IOC_ENCLAVE_ADD_PAGES, 0x10)) == errno.EINVAL


_BAD_OFFSET_LENGTH: list[dict[str, int]] = [
    {"offset": 0x800},
    {"length": 0},
    {"length": 0x800},
    {"offset": U64 - PAGE + 1, "length": 2 * PAGE},  # overflow (also unaligned: both EINVAL)
    {"offset": (1 << 64) - PAGE, "length": 2 * PAGE},  # offset + length wraps
    {"offset": 0, "length": 0x20_0000},  # beyond ELRANGE
]


@pytest.mark.parametrize("kw", _BAD_OFFSET_LENGTH)
def test_add_pages_offset_length(b: Builder, kw: dict[str, int]) -> None:
    b.create()
    arg = b.add_arg(0, **kw)
    arg.secinfo = 0x10  # would be EFAULT: the offset/length check comes first
    assert errno_of(lambda: b.ioctl(uapi.SGX_IOC_ENCLAVE_ADD_PAGES, arg)) == errno.EINVAL
    assert arg.count == 0


def test_add_pages_last_page_of_elrange_is_valid(b: Builder) -> None:
    b.create()
    arg = b.add_arg(len(b.image.segments) - 1, offset=b.size - PAGE, length=PAGE)
    b.ioctl(uapi.SGX_IOC_ENCLAVE_ADD_PAGES, arg)
    assert arg.count == PAGE


def test_add_pages_src_alignment_before_offset(b: Builder) -> None:
    b.create()
    arg = b.add_arg(0, offset=0x800)
    arg.src += 8
    assert errno_of(lambda: b.ioctl(uapi.SGX_IOC_ENCLAVE_ADD_PAGES, arg)) == errno.EINVAL
    arg = b.add_arg(0)
    arg.src += 8
    assert errno_of(lambda: b.ioctl(uapi.SGX_IOC_ENCLAVE_ADD_PAGES, arg)) == errno.EINVAL


def test_add_pages_secinfo_pointer(b: Builder) -> None:
    b.create()
    arg = b.add_arg(0)
    arg.secinfo = TASK_SIZE - 8  # straddles the end of user space: access_ok fails
    assert errno_of(lambda: b.ioctl(uapi.SGX_IOC_ENCLAVE_ADD_PAGES, arg)) == errno.EFAULT
    arg.secinfo = 0x10
    assert errno_of(lambda: b.ioctl(uapi.SGX_IOC_ENCLAVE_ADD_PAGES, arg)) == errno.EFAULT


_REG, _TCS = uapi.SGX_SECINFO_REG, uapi.SGX_SECINFO_TCS


@pytest.mark.parametrize(
    "flags",
    [
        uapi.SGX_SECINFO_SECS | 3,
        uapi.SGX_SECINFO_VA | 3,
        uapi.SGX_SECINFO_TRIM | 3,
        0x500 | 3,
        _REG | uapi.SGX_SECINFO_W,  # W without R
        _REG | uapi.SGX_SECINFO_W | uapi.SGX_SECINFO_X,
        _TCS | uapi.SGX_SECINFO_R,  # a TCS must carry no permissions
        _REG | 3 | 0x8,  # PENDING is not for EADD: a reserved bit to the driver
        _REG | 3 | (1 << 16),
        _REG | 3 | (1 << 63),
    ],
)
def test_add_pages_invalid_secinfo(b: Builder, flags: int) -> None:
    b.create()
    arg = b.add_arg(2, secinfo_flags=flags)
    assert errno_of(lambda: b.ioctl(uapi.SGX_IOC_ENCLAVE_ADD_PAGES, arg)) == errno.EINVAL
    assert arg.count == 0 and not b.encl.page_array


def test_add_pages_secinfo_reserved_bytes(b: Builder) -> None:
    b.create()
    arg = b.add_arg(2)
    b.proc.write(b.secinfo_addr + 63, b"\x01")
    assert errno_of(lambda: b.ioctl(uapi.SGX_IOC_ENCLAVE_ADD_PAGES, arg)) == errno.EINVAL


def _src_cases(b: Builder, case: str) -> tuple[int, int]:
    """(src, expected errno) for the per-page source checks of __sgx_encl_add_page."""
    proc = b.proc
    if case == "no_vma_above":
        return TASK_SIZE - PAGE, errno.EFAULT
    if case == "noexec":
        src = proc.alloc(PAGE)
        vma = proc.mm.vma_lookup(src)
        assert vma is not None
        vma.flags &= ~VM_MAYEXEC  # what a noexec mount does to a mapping
        return src, errno.EACCES
    if case == "prot_none":
        return proc.mmap(0, PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS), errno.EFAULT
    if case == "enclave_mapping":  # GUP refuses VM_PFNMAP|VM_IO
        return proc.mmap(0, PAGE, PROT_READ, MAP_SHARED, b.fd, 0), errno.EFAULT
    if case == "hole_below_vma":  # find_vma finds the next VMA, get_user_pages fails
        hole = proc.mmap(0, 2 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS)
        proc.munmap(hole, PAGE)
        return hole, errno.EFAULT
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["no_vma_above", "noexec", "prot_none", "enclave_mapping", "hole_below_vma"])
def test_add_pages_source_checks(b: Builder, case: str) -> None:
    b.create()
    src, expected = _src_cases(b, case)
    arg = b.add_arg(2, src=src, length=PAGE)
    free = b.m.epc.nr_free_pages
    assert errno_of(lambda: b.ioctl(uapi.SGX_IOC_ENCLAVE_ADD_PAGES, arg)) == expected
    assert arg.count == 0  # the struct is copied back from the loop
    assert not b.encl.page_array and b.m.epc.nr_free_pages == free
    assert b.encl.page_cnt == 1  # just the SECS: the grow was undone


def test_add_pages_ebusy_partial_count(b: Builder) -> None:
    b.create()
    data = b.image.segments[2]
    b.add(2, offset=data.offset + 2 * PAGE, length=PAGE, src=b.src + data.offset + 2 * PAGE)
    arg = b.add_arg(2)
    assert errno_of(lambda: b.ioctl(uapi.SGX_IOC_ENCLAVE_ADD_PAGES, arg)) == errno.EBUSY
    assert arg.count == 2 * PAGE
    assert len(b.encl.page_array) == 3


def test_add_pages_eio_from_eadd_keeps_earlier_pages(b: Builder) -> None:
    b.create()
    tcs = b.image.segments[0]
    b.proc.write(b.src + tcs.offset + PAGE + 100, b"\x01")  # reserved TCS bytes: EADD #GP
    arg = b.add_arg(0)
    assert errno_of(lambda: b.ioctl(uapi.SGX_IOC_ENCLAVE_ADD_PAGES, arg)) == errno.EIO
    assert arg.count == PAGE
    assert len(b.encl.page_array) == 1 and b.encl.secs_child_cnt == 1


def test_add_pages_signal_before_first_page_is_eintr(b: Builder) -> None:
    b.create()
    arg = b.add_arg(2)
    arg.count = 12345
    b.proc.main.signal_pending = True
    assert errno_of(lambda: b.ioctl(uapi.SGX_IOC_ENCLAVE_ADD_PAGES, arg)) == errno.EINTR
    assert arg.count == 0


def test_add_pages_signal_later_returns_partial_success(b: Builder) -> None:
    b.create()
    arg = b.add_arg(2)
    calls = []

    def resched(thread: Thread | None) -> None:
        calls.append(1)
        if len(calls) == 3 and thread is not None:
            thread.signal_pending = True  # arrives while page 3 is being added

    b.m.on_resched = resched
    assert b.ioctl(uapi.SGX_IOC_ENCLAVE_ADD_PAGES, arg) == 0
    b.m.on_resched = None
    assert arg.count == 3 * PAGE


def test_add_pages_unknown_flags_are_ignored_and_measure_is_optional(
    b: Builder, key: rsa.RSAPrivateKey
) -> None:
    b.create()
    for i, seg in enumerate(b.image.segments):
        arg = b.add_arg(i, flags=(uapi.SGX_PAGE_MEASURE if seg.measure else 0) | 0xF0)
        b.ioctl(uapi.SGX_IOC_ENCLAVE_ADD_PAGES, arg)
    b.init()  # same MRENCLAVE: the extra flag bits did nothing


# -- INIT ---------------------------------------------------------------------------------------------
def test_init_state_and_pointer_checks(b: Builder) -> None:
    assert errno_of(b.init) == errno.EINVAL  # not created
    b.create()
    b.add_all()
    assert errno_of(lambda: b.ioctl(uapi.SGX_IOC_ENCLAVE_INIT, 0x10)) == errno.EFAULT
    assert errno_of(lambda: b.ioctl(uapi.SGX_IOC_ENCLAVE_INIT, uapi.sgx_enclave_init(0x10))) == errno.EFAULT
    # a SIGSTRUCT running off the end of a mapping
    tail = b.proc.alloc(2 * PAGE)
    b.proc.munmap(tail + PAGE, PAGE)
    arg = uapi.sgx_enclave_init(tail + PAGE - 100)
    assert errno_of(lambda: b.ioctl(uapi.SGX_IOC_ENCLAVE_INIT, arg)) == errno.EFAULT
    b.init()
    assert errno_of(b.init) == errno.EINVAL  # initialized


def _patched(sig: bytes, offset: int, fmt: str, value: int) -> bytes:
    raw = bytearray(sig)
    struct.pack_into(fmt, raw, offset, value)
    return bytes(raw)


def test_init_vendor(b: Builder, image: EnclaveImage, key: rsa.RSAPrivateKey) -> None:
    b.create()
    b.add_all()
    bad = _patched(b.sigstruct, 16, "<I", 0x1234)
    assert errno_of(lambda: b.init(bad)) == errno.EINVAL
    b.init(sign(image, key, vendor=0x8086))  # the other accepted value


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"attributes": 1 << 3, "attributemask": 1 << 3}, errno.EINVAL),  # reserved bit 3
        ({"attributes": 1 << 6, "attributemask": 1 << 6}, errno.EINVAL),  # CET: reserved
        ({"attributes": 1 << 40, "attributemask": 1 << 40}, errno.EINVAL),
        ({"miscselect": 2, "miscmask": 2}, errno.EINVAL),
        ({"xfrm": 3 | 4, "xfrmmask": 4}, errno.EINVAL),  # AVX: not in CPUID.(12H,1):ECX
        ({"attributes": 1 << 3, "attributemask": 0}, 0),  # unmasked: neither checks it
    ],
)
def test_init_reserved_bits_in_sigstruct(
    b: Builder, image: EnclaveImage, key: rsa.RSAPrivateKey, fields: dict[str, int], expected: int
) -> None:
    b.create()
    b.add_all()
    sig = sign(image, key, **fields)
    if expected:
        assert errno_of(lambda: b.init(sig)) == expected
    else:
        b.init(sig)


def test_init_eperm_carries_the_sgx_error(b: Builder, image: EnclaveImage, key: rsa.RSAPrivateKey) -> None:
    b.create()
    b.add_all()
    wrong = bytearray(b.sigstruct)
    wrong[960] ^= 1  # MRENCLAVE: the signature no longer verifies
    assert errno_of(lambda: b.init(bytes(wrong))) == errno.EPERM
    assert b.m.last_einit_error == SgxError.SGX_INVALID_SIGNATURE
    other = EnclaveImage(image.path, image.segments[:-1], image.src_size, image.encl_size, {})
    assert errno_of(lambda: b.init(sign(other, key))) == errno.EPERM  # measures differently
    assert b.m.last_einit_error == SgxError.SGX_INVALID_MEASUREMENT
    b.init()


def test_init_eacces_for_unpermitted_attributes(b: Builder) -> None:
    b.create(attributes=uapi.SGX_ATTR_MODE64BIT | uapi.SGX_ATTR_EINITTOKENKEY)
    b.add_all()
    assert errno_of(b.init) == errno.EACCES


def test_provision_grants_provisionkey_only_after_create(
    make_machine: Callable[..., Machine], image: EnclaveImage, sigstruct: bytes
) -> None:
    m = make_machine()
    proc = m.spawn()
    pfd = proc.open("/dev/sgx_provision", os.O_RDONLY)
    attrs = uapi.SGX_ATTR_MODE64BIT | uapi.SGX_ATTR_PROVISIONKEY
    # before CREATE: granted, then dropped by CREATE's attributes_mask
    b1 = Builder(m, proc, image, sigstruct)
    b1.ioctl(uapi.SGX_IOC_ENCLAVE_PROVISION, uapi.sgx_enclave_provision(pfd))
    b1.create(attributes=attrs)
    b1.add_all()
    assert errno_of(b1.init) == errno.EACCES
    # after CREATE: INIT goes ahead (SIGSTRUCT masks are zero, so EINIT accepts it)
    b2 = Builder(m, proc, image, sigstruct)
    b2.create(attributes=attrs)
    b2.ioctl(uapi.SGX_IOC_ENCLAVE_PROVISION, uapi.sgx_enclave_provision(pfd | (1 << 32)))
    b2.add_all()
    b2.init()


def test_provision_errors(b: Builder) -> None:
    other = b.proc.open("/dev/sgx_enclave")
    for arg, expected in [
        (0x10, errno.EFAULT),
        (uapi.sgx_enclave_provision(77), errno.EINVAL),  # no such fd
        (uapi.sgx_enclave_provision(other), errno.EINVAL),  # not /dev/sgx_provision
    ]:
        assert errno_of(lambda arg=arg: b.ioctl(uapi.SGX_IOC_ENCLAVE_PROVISION, arg)) == expected


def test_init_programs_lepubkeyhash_and_retries_unmasked_event(b: Builder, key: rsa.RSAPrivateKey) -> None:
    import hashlib

    from sgxemu.sign import mrsigner_of_key

    b.create()
    b.add_all()
    cpu = b.m.cpu
    cpu.einit_event_pending = True
    before = cpu.encls_count[EnclsLeaf.EINIT]
    b.init()
    assert cpu.encls_count[EnclsLeaf.EINIT] - before == 2  # SGX_UNMASKED_EVENT, then success
    msrs = b"".join(cpu.rdmsr(0x8C + i).to_bytes(8, "little") for i in range(4))
    assert msrs == mrsigner_of_key(key) == hashlib.sha256(b.sigstruct[128:512]).digest()


def test_init_unmasked_event_forever_then_signal(b: Builder, monkeypatch: pytest.MonkeyPatch) -> None:
    b.create()
    b.add_all()
    calls = []

    def einit(sig: bytes, token: bytes, secs: int) -> int:
        calls.append(1)
        b.proc.main.signal_pending = True  # arrives during the first sleep
        return int(SgxError.SGX_UNMASKED_EVENT)

    monkeypatch.setattr(b.m.encls, "einit", einit)
    assert errno_of(b.init) == errno.EINTR
    assert len(calls) == 20  # one round of spins, then the interrupted sleep


def test_init_fault_is_eio(b: Builder, monkeypatch: pytest.MonkeyPatch) -> None:
    b.create()
    b.add_all()
    monkeypatch.setattr(b.m.encls, "einit", lambda *a: kencls.SGX_ENCLS_FAULT_FLAG | 13)
    assert errno_of(b.init) == errno.EIO
    assert b.m.encls.warnings == [f"EINIT returned {kencls.SGX_ENCLS_FAULT_FLAG | 13} (0x4000000d)"]
    b.m.encls.warnings.clear()


def test_struct_sizes_match_request_numbers() -> None:
    assert ctypes.sizeof(uapi.sgx_enclave_add_pages) == (uapi.SGX_IOC_ENCLAVE_ADD_PAGES >> 16) & 0x3FFF


def test_enclave_mapped_before_create_then_fixed_mapping_works(b: Builder) -> None:
    """load.c's probes, then MAP_FIXED over the reservation after INIT."""
    for prot in (PROT_READ, PROT_READ | PROT_WRITE | 4):
        a = b.proc.mmap(0, PAGE, prot, MAP_SHARED, b.fd, 0)
        b.proc.munmap(a, PAGE)
    b.build()
    b.proc.mmap(b.base, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, b.fd, 0)
