"""V2 (Feb 2022): RELAX_PERMISSIONS (kernel record only), RESTRICT_PERMISSIONS (EMODPR), both
and MODIFY_TYPE through SECINFO pointers; REMOVE_PAGES at 0x08."""

from __future__ import annotations

import errno
from collections.abc import Callable

import pytest
from variants_support import Built

from sgxemu import uapi
from sgxemu.arch.constants import EnclsLeaf
from sgxemu.hw.epcm import PR
from sgxemu.hw.memory import PTE_P
from sgxemu.linux.mman import MAP_FIXED, MAP_SHARED, PROT_READ, PROT_WRITE
from sgxemu.testenclave import protocol as P
from sgxemu.uapi_variants import v2

PAGE = 4096
EMODPR, ETRACK = EnclsLeaf.EMODPR, EnclsLeaf.ETRACK
RELAX = v2.SGX_IOC_ENCLAVE_RELAX_PERMISSIONS
RESTRICT = v2.SGX_IOC_ENCLAVE_RESTRICT_PERMISSIONS
MODT = v2.SGX_IOC_ENCLAVE_MODIFY_TYPE
REMOVE = v2.SGX_IOC_ENCLAVE_REMOVE_PAGES


@pytest.fixture
def b(build: Callable[..., Built]) -> Built:
    return build("v2")


def _secinfo(b: Built, flags: int, reserved: bytes = b"") -> int:
    """A SECINFO in the process's memory (the ioctls take its address)."""
    addr = b.proc.alloc(PAGE)
    si = uapi.sgx_secinfo(flags=flags)
    for i, byte in enumerate(reserved):
        si.reserved[i] = byte
    b.proc.put(addr, si)
    return addr


def _total_encls(b: Built) -> int:
    return sum(b.m.cpu.encls_count)


def test_relax_runs_no_encls_and_updates_the_record(b: Built) -> None:
    c, D = b.c, b.D
    assert b.ioctl(RESTRICT, v2.sgx_enclave_restrict_perm(b.d_off, PAGE, _secinfo(b, 1))) == 0
    assert c.eaccept(D, 0x221) == 0
    before = _total_encls(b)
    c.get(D)  # faults the PTE back in
    assert b.proc.mm.mem.ptes.get(D >> 12, 0) & PTE_P
    arg = v2.sgx_enclave_relax_perm(b.d_off, PAGE, _secinfo(b, 3))
    assert b.ioctl(RELAX, arg) == 0
    assert arg.count == PAGE
    assert _total_encls(b) == before  # no ENCLS at all
    assert not b.proc.mm.mem.ptes.get(D >> 12, 0) & PTE_P  # but the PTEs are gone
    encl = b.proc.fds[b.encl.fd].private_data
    assert encl.page_array[D >> 12].vm_run_prot_bits == 3
    b.proc.mprotect(D, PAGE, PROT_READ | PROT_WRITE)


@pytest.mark.parametrize(
    "flags, reserved, err",
    [
        (0x7 | 0x200, b"", errno.EINVAL),  # a page type in the SECINFO
        (0x8, b"", errno.EINVAL),  # the PENDING bit
        (0x2, b"", errno.EINVAL),  # W without R
        (0x1, b"\x01", errno.EINVAL),  # reserved bytes
    ],
)
@pytest.mark.parametrize("request_", [RELAX, RESTRICT])
def test_secinfo_checks(b: Built, request_: int, flags: int, reserved: bytes, err: int) -> None:
    cls = v2.sgx_enclave_relax_perm if request_ == RELAX else v2.sgx_enclave_restrict_perm
    arg = cls(b.d_off, PAGE, _secinfo(b, flags, reserved))
    assert b.errno_of(request_, arg) == err
    assert arg.count == 0


@pytest.mark.parametrize("request_", [RELAX, RESTRICT])
def test_secinfo_pointer_efault(b: Built, request_: int) -> None:
    cls = v2.sgx_enclave_relax_perm if request_ == RELAX else v2.sgx_enclave_restrict_perm
    assert b.errno_of(request_, cls(b.d_off, PAGE, 0x10)) == errno.EFAULT


def test_relax_errnos(b: Built) -> None:
    rwx = _secinfo(b, 7)
    assert b.errno_of(RELAX, v2.sgx_enclave_relax_perm(b.d_off, PAGE, rwx)) == errno.EPERM
    arg = v2.sgx_enclave_relax_perm(b.image.tcs_offset, PAGE, _secinfo(b, 1))
    assert b.errno_of(RELAX, arg) == errno.EINVAL  # not a REG page
    arg = v2.sgx_enclave_relax_perm(b.T, PAGE, _secinfo(b, 1))
    assert b.errno_of(RELAX, arg) == errno.EFAULT  # no page there
    arg = v2.sgx_enclave_relax_perm(b.d_off, PAGE, _secinfo(b, 1), count=1)
    assert b.errno_of(RELAX, arg) == errno.EINVAL


def test_restrict_costs_one_emodpr_and_etrack_per_page(b: Built) -> None:
    n = 4
    arg = v2.sgx_enclave_restrict_perm(b.d_off, n * PAGE, _secinfo(b, 1))
    assert b.ioctl(RESTRICT, arg) == 0
    assert (arg.result, arg.count) == (0, n * PAGE)
    assert (b.encls(EMODPR), b.encls(ETRACK)) == (n, n)
    arg = v2.sgx_enclave_restrict_perm(b.image.tcs_offset, PAGE, _secinfo(b, 1))
    assert b.errno_of(RESTRICT, arg) == errno.EINVAL and arg.count == 0


def test_v2_epcm_permissions(b: Built) -> None:
    """epcm_permissions the V2 way: RESTRICT, EACCEPT, #PF 0x7, EMODPE, still 0x7, RELAX."""
    c, D = b.c, b.D
    assert c.put(D, P.MAGIC) == 0
    assert b.ioctl(RESTRICT, v2.sgx_enclave_restrict_perm(b.d_off, PAGE, _secinfo(b, 1))) == 0
    assert c.eaccept(D, 0x221) == 0
    assert c.put(D, P.MAGIC2) == 0
    assert c.exc() == (14, 0x7, D) and c.run.function == uapi.ERESUME
    c.clear_exc()
    c.run.tcs = b.encl.base + PAGE
    assert c.emodpe(D, 0x3) == 0
    c.run.tcs = b.encl.base
    assert c.put(D, P.MAGIC2, leaf=uapi.ERESUME) == 0
    assert c.exc() == (14, 0x7, D)
    c.clear_exc()
    restricts = b.encls(EMODPR)
    assert b.ioctl(RELAX, v2.sgx_enclave_relax_perm(b.d_off, PAGE, _secinfo(b, 3))) == 0
    assert b.encls(EMODPR) == restricts
    assert c.put(D, P.MAGIC2, leaf=uapi.ERESUME) == 0
    assert c.exc() == (0, 0, 0) and c.run.function == uapi.EEXIT
    assert c.get(D) == P.MAGIC2
    encl = b.proc.fds[b.encl.fd].private_data
    epcm = b.m.cpu.epcm[encl.page_array[D >> 12].epc_page.index]
    assert not epcm.state & PR  # RELAX ran no EMODPR: no PR for the enclave to accept


def test_modify_type_and_remove(b: Built) -> None:
    c, T, base = b.c, b.T, b.encl.base
    b.proc.mmap(base + T, 3 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, b.encl.fd, 0)
    stack, tcs, ssa = base + T, base + T + PAGE, base + T + 2 * PAGE
    for page in (stack, ssa, tcs):
        assert c.eaccept(page, 0x20B) == 0
    entry = b.image.symbol("encl_dyn_entry")
    op = P.encl_op_init_tcs_page(P.encl_op_header(P.ENCL_OP_INIT_TCS_PAGE), tcs, T + 2 * PAGE, entry)
    assert c.call(op) == 0
    bad = v2.sgx_enclave_modt(T + PAGE, PAGE, _secinfo(b, 0x100 | 0x3))  # perms in it
    assert b.errno_of(MODT, bad) == errno.EINVAL
    mt = v2.sgx_enclave_modt(T + PAGE, PAGE, _secinfo(b, uapi.SGX_SECINFO_TCS))
    assert b.ioctl(MODT, mt) == 0 and (mt.result, mt.count) == (0, PAGE)
    assert c.eaccept(tcs, 0x110) == 0
    c.run.tcs = tcs
    assert c.put_buf(P.MAGIC) == 0 and c.get_buf() == P.MAGIC
    c.run.tcs = base
    mt = v2.sgx_enclave_modt(T, 3 * PAGE, _secinfo(b, uapi.SGX_SECINFO_TRIM))
    assert b.ioctl(MODT, mt) == 0 and mt.count == 3 * PAGE
    for page in (stack, tcs, ssa):
        assert c.eaccept(page, 0x410) == 0
    rp = v2.sgx_enclave_remove_pages(T, 3 * PAGE)
    assert b.ioctl(REMOVE, rp) == 0 and rp.count == 3 * PAGE


def test_merged_numbers(b: Built) -> None:
    arg = uapi.sgx_enclave_restrict_permissions(b.d_off, PAGE, 1)
    assert b.errno_of(uapi.SGX_IOC_ENCLAVE_RESTRICT_PERMISSIONS, arg) == errno.ENOTTY
    rp = uapi.sgx_enclave_remove_pages(b.d_off, PAGE)
    assert b.errno_of(uapi.SGX_IOC_ENCLAVE_REMOVE_PAGES, rp) == errno.ENOTTY
    # The merged MODIFY_TYPES number is V2's RESTRICT: page_type 4 read as a SECINFO pointer.
    mt = uapi.sgx_enclave_modify_types(b.d_off, PAGE, uapi.SGX_PAGE_TYPE_TRIM)
    assert b.errno_of(uapi.SGX_IOC_ENCLAVE_MODIFY_TYPES, mt) == errno.EFAULT
