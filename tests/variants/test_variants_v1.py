"""V1 (Dec 2021): SGX_IOC_PAGE_MODP/MODT/REMOVE, run bits, pfn_mkwrite, EAUG'd pages capped at RW."""

from __future__ import annotations

import errno
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from variants_support import Built

from sgxemu import Machine, uapi
from sgxemu.arch.constants import EnclsLeaf
from sgxemu.hw.memory import PTE_P, PTE_W
from sgxemu.linux.enclcall import EnclCaller
from sgxemu.linux.load import encl_build, sign
from sgxemu.linux.mman import MAP_FIXED, MAP_SHARED, PROT_EXEC, PROT_READ, PROT_WRITE
from sgxemu.loader.selftest_layout import load_segments
from sgxemu.testenclave import protocol as P
from sgxemu.uapi_variants import v1, v2

PAGE = 4096
EMODPR, ETRACK, EMODT = EnclsLeaf.EMODPR, EnclsLeaf.ETRACK, EnclsLeaf.EMODT
MODP = v1.SGX_IOC_PAGE_MODP


@pytest.fixture
def b(build: Callable[..., Built]) -> Built:
    return build("v1")


def _pte(b: Built, addr: int) -> int:
    return b.proc.mm.mem.ptes.get(addr >> 12, 0)


@pytest.mark.parametrize(
    "fields",
    [
        dict(),  # length 0
        dict(length=PAGE, offset=1),
        dict(length=PAGE, prot=0x8),  # not a PROT_ bit
        dict(length=PAGE, prot=PROT_WRITE),  # W without R
        dict(length=PAGE, prot=PROT_READ, result=1),
        dict(length=PAGE, prot=PROT_READ, count=1),
        dict(length=1 << 30, prot=PROT_READ),  # beyond the enclave
    ],
)
def test_modp_prechecks_einval(b: Built, fields: dict[str, int]) -> None:
    arg = v1.sgx_page_modp(**fields)
    if "offset" not in fields and fields:
        arg.offset = b.d_off
    before = b.encls(EMODPR)
    assert b.errno_of(MODP, arg) == errno.EINVAL
    assert b.encls(EMODPR) == before


def test_modp_enodev_without_sgx2(build: Callable[..., Built]) -> None:
    b = build("v1", sgx2=False)
    assert b.errno_of(MODP, v1.sgx_page_modp()) == errno.ENODEV


def test_modp_on_tcs_einval(b: Built) -> None:
    """V1's tcs_permissions selftest: EINVAL, result 0, count 0."""
    arg = v1.sgx_page_modp(b.image.tcs_offset, PAGE, PROT_READ)
    assert b.errno_of(MODP, arg) == errno.EINVAL
    assert (arg.result, arg.count) == (0, 0)


@pytest.mark.parametrize("prot", [PROT_READ | PROT_WRITE | PROT_EXEC, PROT_READ | PROT_EXEC])
def test_modp_beyond_vetted_rights_eperm(b: Built, prot: int) -> None:
    arg = v1.sgx_page_modp(b.d_off, PAGE, prot)  # the data page was added RW
    assert b.errno_of(MODP, arg) == errno.EPERM
    assert arg.count == 0
    assert b.encls(EMODPR) == 0


def test_modp_restricts_updates_run_bits_and_zaps(b: Built) -> None:
    assert b.c.put(b.D, P.MAGIC) == 0
    assert _pte(b, b.D) & PTE_P
    n = 3
    arg = v1.sgx_page_modp(b.d_off, n * PAGE, PROT_READ)
    assert b.ioctl(MODP, arg) == 0
    assert (arg.result, arg.count) == (0, n * PAGE)
    assert b.encls(EMODPR) == n and b.encls(ETRACK) == n
    assert not _pte(b, b.D) & PTE_P  # zapped
    encl = b.proc.fds[b.encl.fd].private_data
    page = encl.page_array[b.D >> 12]
    assert (page.vm_max_prot_bits, page.vm_run_prot_bits) == (3, 1)
    # mmap/mprotect are checked against the run bits now.
    with pytest.raises(OSError) as e:
        b.proc.mprotect(b.D, PAGE, PROT_READ | PROT_WRITE)
    assert e.value.errno == errno.EACCES
    b.proc.mprotect(b.D, PAGE, PROT_READ)  # within the run bits: fine


def test_pte_is_vma_and_run_bits_and_pfn_mkwrite_sigbus(b: Built) -> None:
    """V1's epcm_permissions: after MODP(R) a write sees #PF 0x7 (the kernel), not 0x8007."""
    c, D = b.c, b.D
    assert c.put(D, P.MAGIC) == 0
    assert b.ioctl(MODP, v1.sgx_page_modp(b.d_off, PAGE, PROT_READ)) == 0
    assert c.eaccept(D, 0x221) == 0
    assert c.put(D, P.MAGIC2) == 0
    assert c.exc() == (14, 0x7, D) and c.run.function == uapi.ERESUME
    vma = b.proc.mm.vma_lookup(D)
    assert vma is not None and vma.prot == PROT_READ | PROT_WRITE
    assert _pte(b, D) & PTE_P and not _pte(b, D) & PTE_W  # RW VMA ∩ R run bits
    c.clear_exc()
    c.run.tcs = b.encl.base + PAGE
    assert c.emodpe(D, 0x3) == 0
    c.run.tcs = b.encl.base
    assert c.put(D, P.MAGIC2, leaf=uapi.ERESUME) == 0
    assert c.exc() == (14, 0x7, D)  # the EPCM allows it now, the kernel still does not
    c.clear_exc()
    # Relaxing is a restriction in V1: EMODPR runs (and sets PR), run bits follow.
    assert b.ioctl(MODP, v1.sgx_page_modp(b.d_off, PAGE, PROT_READ | PROT_WRITE)) == 0
    assert b.encls(EMODPR) == 2
    assert c.put(D, P.MAGIC2, leaf=uapi.ERESUME) == 0
    assert c.exc() == (0, 0, 0) and c.run.function == uapi.EEXIT
    assert c.get(D) == P.MAGIC2
    assert c.eaccept(D, 0x223) == 0  # the dangling PR the no-op EMODPR left


def test_mprotect_leaves_ptes_read_only_under_write_notify(b: Built) -> None:
    c, D = b.c, b.D
    assert c.put(D, P.MAGIC) == 0
    b.proc.mprotect(D, PAGE, PROT_READ)
    b.proc.mprotect(D, PAGE, PROT_READ | PROT_WRITE)
    assert _pte(b, D) & PTE_P and not _pte(b, D) & PTE_W  # vm_page_prot without W
    assert c.put(D, P.MAGIC2) == 0 and c.exc() == (0, 0, 0)  # pfn_mkwrite: run bits have W
    assert _pte(b, D) & PTE_W


def test_eaug_pages_capped_at_rw(b: Built, build: Callable[..., Built]) -> None:
    c = b.c
    addr = b.encl.base + b.T
    # Unbacked addresses are unconstrained, as in the merged driver.
    b.proc.mmap(addr, PAGE, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_SHARED | MAP_FIXED, b.encl.fd, 0)
    assert c.eaccept(addr, 0x20B) == 0
    encl = b.proc.fds[b.encl.fd].private_data
    page = encl.page_array[addr >> 12]
    assert (page.vm_max_prot_bits, page.vm_run_prot_bits) == (3, 3)
    with pytest.raises(OSError) as e:
        b.proc.mprotect(addr, PAGE, PROT_READ | PROT_EXEC)
    assert e.value.errno == errno.EACCES
    assert b.errno_of(MODP, v1.sgx_page_modp(b.T, PAGE, PROT_READ | PROT_EXEC)) == errno.EPERM
    # The merged driver gives the same page RWX as its maximum.
    m = build("merged")
    maddr = m.encl.base + m.T
    m.proc.mmap(maddr, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, m.encl.fd, 0)
    assert m.c.eaccept(maddr, 0x20B) == 0
    m.proc.mprotect(maddr, PAGE, PROT_READ | PROT_EXEC)


def test_modt_and_remove(b: Built) -> None:
    """V1's tcs_create, phase 1 and 2, with PAGE_MODT and PAGE_REMOVE."""
    c, T, base = b.c, b.T, b.encl.base
    b.proc.mmap(base + T, 3 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, b.encl.fd, 0)
    stack, tcs, ssa = base + T, base + T + PAGE, base + T + 2 * PAGE
    for page in (stack, ssa, tcs):
        assert c.eaccept(page, 0x20B) == 0
    entry = b.image.symbol("encl_dyn_entry")
    op = P.encl_op_init_tcs_page(P.encl_op_header(P.ENCL_OP_INIT_TCS_PAGE), tcs, T + 2 * PAGE, entry)
    assert c.call(op) == 0 and c.exc() == (0, 0, 0)
    mt = v1.sgx_page_modt(T + PAGE, PAGE, uapi.SGX_PAGE_TYPE_TCS)
    assert b.ioctl(v1.SGX_IOC_PAGE_MODT, mt) == 0
    assert (mt.result, mt.count) == (0, PAGE)
    encl = b.proc.fds[b.encl.fd].private_data
    assert encl.page_array[tcs >> 12].vm_run_prot_bits == 3  # run = max = RW for a TCS
    assert c.eaccept(tcs, 0x110) == 0
    c.run.tcs = tcs
    assert c.put_buf(P.MAGIC) == 0 and c.get_buf() == P.MAGIC
    c.run.tcs = base
    mt = v1.sgx_page_modt(T, 3 * PAGE, uapi.SGX_PAGE_TYPE_TRIM)
    assert b.ioctl(v1.SGX_IOC_PAGE_MODT, mt) == 0 and mt.count == 3 * PAGE
    rp = v1.sgx_page_remove(T, PAGE)
    assert b.errno_of(v1.SGX_IOC_PAGE_REMOVE, rp) == errno.EPERM  # not EACCEPTed yet
    assert rp.count == 0
    for page in (stack, tcs, ssa):
        assert c.eaccept(page, 0x410) == 0
    rp = v1.sgx_page_remove(T, 3 * PAGE)
    assert b.ioctl(v1.SGX_IOC_PAGE_REMOVE, rp) == 0 and rp.count == 3 * PAGE
    assert b.encls(EMODT) == 1 + 3


def test_modt_bad_type_einval_count_zero(b: Built) -> None:
    mt = v1.sgx_page_modt(b.d_off, PAGE, uapi.SGX_PAGE_TYPE_REG)
    assert b.errno_of(v1.SGX_IOC_PAGE_MODT, mt) == errno.EINVAL
    assert mt.count == 0
    mt = v1.sgx_page_modt(b.d_off, PAGE, 0x100)
    assert b.errno_of(v1.SGX_IOC_PAGE_MODT, mt) == errno.EINVAL


@pytest.mark.parametrize(
    "request_", [v2.SGX_IOC_ENCLAVE_RELAX_PERMISSIONS, v2.SGX_IOC_ENCLAVE_MODIFY_TYPE,
                 v2.SGX_IOC_ENCLAVE_REMOVE_PAGES]
)
def test_v2_numbers_enotty(b: Built, request_: int) -> None:
    assert b.errno_of(request_, v2.sgx_enclave_modt()) == errno.ENOTTY


def test_eaug_reclaims_directly(
    make_machine: Callable[..., Machine], elf_path: Path, key: rsa.RSAPrivateKey
) -> None:
    """V2's sgx_encl_eaug_page allocated with reclaim: no ksgxd needed when the EPC is full."""
    image = load_segments(elf_path, heap_size=1 << 20)
    m = make_machine(kernel="v1", epc_size=1 << 20, ksgxd=False, image=image)
    proc = m.spawn()
    encl = encl_build(proc, image, sigstruct=sign(image, key))
    c = EnclCaller(proc, encl)
    base = encl.base + image.src_size
    n = 48
    proc.mmap(base, n * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, encl.fd, 0)
    before = m.stats.reclaim_batches
    for i in range(n):
        assert c.eaccept(base + i * PAGE, 0x20B) == 0
    assert m.stats.reclaim_batches > before
    assert m.stats.ksgxd_runs == 0
