"""soft-restrict: RESTRICT_PERMISSIONS (merged number and struct) only sets the kernel's record
and zaps PTEs — no EMODPR, no ETRACK, no IPI; the EPCM keeps its rights."""

from __future__ import annotations

import errno
from collections.abc import Callable

import pytest
from variants_support import Built

from sgxemu import uapi
from sgxemu.arch.constants import EnclsLeaf
from sgxemu.hw.epcm import PR, W
from sgxemu.hw.memory import PTE_P
from sgxemu.linux.mman import PROT_READ, PROT_WRITE
from sgxemu.testenclave import protocol as P

PAGE = 4096
RESTRICT = uapi.SGX_IOC_ENCLAVE_RESTRICT_PERMISSIONS


@pytest.fixture
def b(build: Callable[..., Built]) -> Built:
    return build("soft-restrict")


def _epcm(b: Built, addr: int):  # type: ignore[no-untyped-def]
    encl = b.proc.fds[b.encl.fd].private_data
    return b.m.cpu.epcm[encl.page_array[addr >> 12].epc_page.index]


def test_restrict_runs_no_encls(b: Built) -> None:
    assert b.c.put(b.D, P.MAGIC) == 0
    n = 4
    before = list(b.m.cpu.encls_count)
    etracks, ipis = b.m.stats.etracks, b.m.stats.ipis
    arg = uapi.sgx_enclave_restrict_permissions(b.d_off, n * PAGE, uapi.SGX_SECINFO_R)
    assert b.ioctl(RESTRICT, arg) == 0
    assert (arg.result, arg.count) == (0, n * PAGE)
    assert b.m.cpu.encls_count == before  # no EMODPR, no ETRACK, no ELDU
    assert (b.m.stats.etracks, b.m.stats.ipis) == (etracks, ipis)
    assert b.m.cpu.encls_count[EnclsLeaf.EMODPR] == 0
    assert not b.proc.mm.mem.ptes.get(b.D >> 12, 0) & PTE_P
    encl = b.proc.fds[b.encl.fd].private_data
    assert encl.page_array[b.D >> 12].vm_run_prot_bits == 1
    epcm = _epcm(b, b.D)
    assert epcm.perms & W and not epcm.state & PR  # the hardware never heard of it


def test_only_the_kernel_record_refuses_the_write(b: Built) -> None:
    c, D = b.c, b.D
    arg = uapi.sgx_enclave_restrict_permissions(b.d_off, PAGE, uapi.SGX_SECINFO_R)
    assert b.ioctl(RESTRICT, arg) == 0
    assert c.put(D, P.MAGIC2) == 0
    assert c.exc() == (14, 0x7, D)  # pfn_mkwrite on the record, not the EPCM (0x8007)
    c.clear_exc()
    # mmap rules are the merged ones (vm_max): mprotect RW is allowed, the PTE stays RO.
    b.proc.mprotect(D, PAGE, PROT_READ)
    b.proc.mprotect(D, PAGE, PROT_READ | PROT_WRITE)
    assert c.put(D, P.MAGIC2, leaf=uapi.ERESUME) == 0
    assert c.exc() == (14, 0x7, D)
    c.clear_exc()
    # The same ioctl raises the record again; no EMODPE needed, the EPCM never lost W.
    arg = uapi.sgx_enclave_restrict_permissions(b.d_off, PAGE, uapi.SGX_SECINFO_R | uapi.SGX_SECINFO_W)
    assert b.ioctl(RESTRICT, arg) == 0
    assert c.put(D, P.MAGIC2, leaf=uapi.ERESUME) == 0 and c.exc() == (0, 0, 0)
    assert c.get(D) == P.MAGIC2


@pytest.mark.parametrize(
    "offset_of, perms, result, err",
    [
        ("data", 0x7, 0, errno.EPERM),  # beyond vm_max (RW)
        ("data", 0x8, 0, errno.EINVAL),
        ("data", 0x2, 0, errno.EINVAL),  # W without R
        ("data", 0x1, 1, errno.EINVAL),  # result set on input
        ("tcs", 0x1, 0, errno.EINVAL),  # not a REG page
    ],
)
def test_restrict_errnos(b: Built, offset_of: str, perms: int, result: int, err: int) -> None:
    off = b.d_off if offset_of == "data" else b.image.tcs_offset
    arg = uapi.sgx_enclave_restrict_permissions(off, PAGE, perms, result)
    assert b.errno_of(RESTRICT, arg) == err
    assert arg.count == 0


def test_enodev_without_sgx2(build: Callable[..., Built]) -> None:
    b = build("soft-restrict", sgx2=False)
    assert b.errno_of(RESTRICT, uapi.sgx_enclave_restrict_permissions()) == errno.ENODEV
