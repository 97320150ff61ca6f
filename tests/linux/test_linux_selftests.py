"""The sixteen scenarios of tools/testing/selftests/sgx/main.c, through the Linux model.

Each runs on the scripted test enclave and on the compiled one under the native engine, and
checks what the kernel selftest checks (return values, errno, count/result, run.function and
the exception fields). SGX2 scenarios are also run on an SGX1 machine, where they must skip
the way the selftest skips.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from sgxemu import Machine, uapi
from sgxemu.exec.scripted import ScriptedEngine
from sgxemu.exec.scripted_selftest import selftest_program
from sgxemu.linux.enclcall import EnclCaller
from sgxemu.linux.load import LoadedEnclave, encl_build, sign
from sgxemu.linux.process import MAP_FIXED, MAP_SHARED, Process
from sgxemu.linux.usermem import PROT_EXEC, PROT_READ, PROT_WRITE
from sgxemu.loader.selftest_layout import EnclaveImage, load_segments
from sgxemu.testenclave import protocol as P

PAGE = 4096
EEXIT, ERESUME = uapi.EEXIT, uapi.ERESUME
ENGINES = ["scripted", "native"]


class Selftest:
    """One FIXTURE(enclave) instance: setup_test_encl + the run struct."""

    def __init__(self, m: Machine, image: EnclaveImage, sigstruct: bytes) -> None:
        self.m = m
        self.image = image
        self.proc: Process = m.spawn()
        self.encl: LoadedEnclave = encl_build(self.proc, image, sigstruct=sigstruct)
        self.c = EnclCaller(self.proc, self.encl)
        self.base = self.encl.base
        self.D = self.encl.data_start
        self.T = image.src_size  # total_size: every segment, heap included

    def ioctl(self, request: int, arg: object) -> int:
        return self.proc.ioctl(self.encl.fd, request, arg)

    def errno_of(self, request: int, arg: object) -> int:
        with pytest.raises(OSError) as info:
            self.ioctl(request, arg)
        assert info.value.errno is not None
        return info.value.errno

    def probe_sgx2(self, request: int, cls: type) -> None:
        """The selftest's SGX2 probe: a zeroed struct; ENOTTY/ENODEV mean skip."""
        err = self.errno_of(request, cls())
        if err in (errno.ENOTTY, errno.ENODEV):
            pytest.skip("SGX2 ioctls not available")
        assert err == errno.EINVAL  # length 0

    def no_exc(self) -> None:
        assert self.c.exc() == (0, 0, 0)

    def eexit_ok(self, ret: int) -> None:
        assert ret == 0
        assert self.c.run.function == EEXIT
        self.no_exc()

    def teardown(self) -> None:
        self.encl.delete()


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def st_factory(
    make_machine: Callable[..., Machine], image: EnclaveImage, sigstruct: bytes, engine: str
) -> Callable[..., Selftest]:
    def make(**machine_kw: object) -> Selftest:
        if engine == "native":
            machine_kw.setdefault("engine", "native")
        return Selftest(make_machine(**machine_kw), image, sigstruct)

    return make


@pytest.fixture
def st(st_factory: Callable[..., Selftest]) -> Selftest:
    return st_factory()


def _sgx2_supported(st: Selftest) -> bool:
    return bool(st.proc.cpuid(0x12, 0)[0] & 2)


def test_unclobbered_vdso(st: Selftest) -> None:
    st.eexit_ok(st.c.put_buf(P.MAGIC))
    assert st.c.run.user_data == 0
    assert st.c.get_buf() == P.MAGIC
    assert st.c.run.function == EEXIT and st.c.run.user_data == 0


def _total_epc(proc: Process) -> int:
    """get_total_epc_mem(): the EPC sections CPUID reports."""
    total = 0
    for n in range(8):
        eax, _, ecx, edx = proc.cpuid(0x12, 2 + n)
        if eax & 0xF != 1:
            break
        total += (ecx & 0xFFFFF000) + ((edx & 0xFFFFF) << 32)
    return total


def _oversubscribed(
    make_machine: Callable[..., Machine], elf_path: Path, key: rsa.RSAPrivateKey, engine: str
) -> tuple[Machine, Selftest]:
    """An enclave whose heap alone is as large as the EPC (get_total_epc_mem)."""
    total = _total_epc(make_machine(epc_size=1 << 20).spawn())
    assert total == 1 << 20
    image = load_segments(elf_path, heap_size=total)
    if engine == "native":
        m = make_machine(epc_size=1 << 20, engine="native")
    else:
        program = selftest_program(image)
        m = make_machine(
            epc_size=1 << 20, engine=lambda c, lp, mem: ScriptedEngine(c, lp, mem, program)
        )
    return m, Selftest(m, image, sign(image, key))


def test_unclobbered_vdso_oversubscribed(
    make_machine: Callable[..., Machine], elf_path: Path, key: rsa.RSAPrivateKey, engine: str
) -> None:
    m, st = _oversubscribed(make_machine, elf_path, key, engine)
    assert st.encl.size > m.cpu.epc.size
    assert m.stats.pages_reclaimed > 0
    st.eexit_ok(st.c.put_buf(P.MAGIC))
    assert st.c.get_buf() == P.MAGIC
    st.teardown()


def test_unclobbered_vdso_oversubscribed_remove(
    make_machine: Callable[..., Machine], elf_path: Path, key: rsa.RSAPrivateKey, engine: str
) -> None:
    m, st = _oversubscribed(make_machine, elf_path, key, engine)
    st.probe_sgx2(uapi.SGX_IOC_ENCLAVE_MODIFY_TYPES, uapi.sgx_enclave_modify_types)
    st.eexit_ok(st.c.put_buf(P.MAGIC))
    assert st.c.get_buf() == P.MAGIC
    heap = st.image.heap
    mt = uapi.sgx_enclave_modify_types(heap.offset, heap.size, uapi.SGX_PAGE_TYPE_TRIM)
    assert st.ioctl(uapi.SGX_IOC_ENCLAVE_MODIFY_TYPES, mt) == 0
    assert mt.result == 0 and mt.count == heap.size
    for off in range(0, heap.size, PAGE):
        assert st.c.eaccept(st.base + heap.offset + off, 0x410) == 0
        st.eexit_ok(0)
    rp = uapi.sgx_enclave_remove_pages(heap.offset, heap.size)
    assert st.ioctl(uapi.SGX_IOC_ENCLAVE_REMOVE_PAGES, rp) == 0
    assert rp.count == heap.size
    st.teardown()


def test_clobbered_vdso(st: Selftest) -> None:
    st.eexit_ok(st.c.put_buf(P.MAGIC))
    assert st.c.get_buf() == P.MAGIC


def test_clobbered_vdso_and_user_function(st: Selftest) -> None:
    calls = []

    def handler(rdi: int, rsi: int, rdx: int, rsp: int, r8: int, r9: int, run: uapi.sgx_enclave_run) -> int:
        calls.append((rdi, rsi, rdx, r8, r9))
        run.user_data = 0
        return 0

    st.c.run.user_handler = st.proc.callback(handler)
    st.c.run.user_data = 0xDEADBEEF
    st.eexit_ok(st.c.put_buf(P.MAGIC))
    assert st.c.run.user_data == 0
    st.c.run.user_data = 0xDEADBEEF
    assert st.c.get_buf() == P.MAGIC
    assert st.c.run.user_data == 0
    assert len(calls) == 2


def test_tcs_entry(st: Selftest) -> None:
    st.eexit_ok(st.c.nop())
    st.c.run.tcs = st.base + PAGE
    st.eexit_ok(st.c.nop())


def test_pte_permissions(st: Selftest) -> None:
    c, D = st.c, st.D
    st.eexit_ok(c.put(D, P.MAGIC))
    assert c.get(D) == P.MAGIC
    st.no_exc()
    st.proc.mprotect(D, PAGE, PROT_READ)
    assert c.put(D, P.MAGIC2) == 0
    assert c.exc() == (14, 0x7, D)
    assert c.run.function == ERESUME
    c.clear_exc()
    st.proc.mprotect(D, PAGE, PROT_READ | PROT_WRITE)
    st.eexit_ok(c.put(D, P.MAGIC2, leaf=ERESUME))
    assert c.get(D) == P.MAGIC2
    st.no_exc()


def test_tcs_permissions(st: Selftest) -> None:
    st.probe_sgx2(uapi.SGX_IOC_ENCLAVE_RESTRICT_PERMISSIONS, uapi.sgx_enclave_restrict_permissions)
    ioc = uapi.sgx_enclave_restrict_permissions(st.image.tcs_offset, PAGE, uapi.SGX_SECINFO_R)
    assert st.errno_of(uapi.SGX_IOC_ENCLAVE_RESTRICT_PERMISSIONS, ioc) == errno.EINVAL
    assert ioc.result == 0 and ioc.count == 0


def test_epcm_permissions(st: Selftest) -> None:
    st.probe_sgx2(uapi.SGX_IOC_ENCLAVE_RESTRICT_PERMISSIONS, uapi.sgx_enclave_restrict_permissions)
    c, D = st.c, st.D
    st.eexit_ok(c.put(D, P.MAGIC))
    assert c.get(D) == P.MAGIC
    ioc = uapi.sgx_enclave_restrict_permissions(st.image.data_offset + PAGE, PAGE, uapi.SGX_SECINFO_R)
    assert st.ioctl(uapi.SGX_IOC_ENCLAVE_RESTRICT_PERMISSIONS, ioc) == 0
    assert ioc.result == 0 and ioc.count == PAGE
    assert c.eaccept(D, 0x221) == 0
    st.eexit_ok(0)
    assert c.put(D, P.MAGIC2) == 0
    assert c.run.function == ERESUME
    assert c.exc() == (14, 0x8007, D)
    c.clear_exc()
    c.run.tcs = st.base + PAGE  # TCS #1 has CSSA == NSSA now
    st.eexit_ok(c.emodpe(D, 0x3))
    c.run.tcs = st.base
    st.eexit_ok(c.put(D, P.MAGIC2, leaf=ERESUME))
    assert c.get(D) == P.MAGIC2
    st.eexit_ok(0)


def test_augment(st: Selftest) -> None:
    if not _sgx2_supported(st):
        pytest.skip("SGX2 not supported")
    c, T = st.c, st.T
    assert st.encl.size > T + PAGE
    addr = st.base + T
    st.proc.mmap(addr, PAGE, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_SHARED | MAP_FIXED, st.encl.fd, 0)
    c.clear_exc()
    assert c.put(addr, P.MAGIC) == 0
    assert c.run.function == ERESUME
    assert c.run.exception_vector == 14 and c.run.exception_addr == addr
    assert c.run.exception_error_code == 0x8007  # EAUGed, then the PENDING page refused the store
    c.clear_exc()
    c.run.tcs = st.base + PAGE
    assert c.eaccept(addr, 0x20B) == 0
    st.eexit_ok(0)
    c.run.tcs = st.base
    st.eexit_ok(c.put(addr, P.MAGIC, leaf=ERESUME))
    assert c.get(addr) == P.MAGIC
    st.eexit_ok(0)
    st.proc.munmap(addr, PAGE)


def test_augment_via_eaccept(st: Selftest) -> None:
    if not _sgx2_supported(st):
        pytest.skip("SGX2 not supported")
    c, T = st.c, st.T
    addr = st.base + T
    st.proc.mmap(addr, PAGE, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_SHARED | MAP_FIXED, st.encl.fd, 0)
    assert c.eaccept(addr, 0x20B) == 0
    st.eexit_ok(0)  # #PF -> EAUG -> EACCEPT again, all invisible
    st.eexit_ok(c.put(addr, P.MAGIC))
    assert c.get(addr) == P.MAGIC
    st.eexit_ok(0)
    st.proc.munmap(addr, PAGE)


def test_tcs_create(st: Selftest) -> None:
    st.probe_sgx2(uapi.SGX_IOC_ENCLAVE_MODIFY_TYPES, uapi.sgx_enclave_modify_types)
    c, T = st.c, st.T
    assert st.encl.size > T + 3 * PAGE
    st.proc.mmap(st.base + T, 3 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, st.encl.fd, 0)
    c.clear_exc()
    stack_end, tcs, ssa = st.base + T, st.base + T + PAGE, st.base + T + 2 * PAGE
    for page in (stack_end, ssa, tcs):
        assert c.eaccept(page, 0x20B) == 0
        st.eexit_ok(0)
    entry = st.image.symbol("encl_dyn_entry")
    op = P.encl_op_init_tcs_page(P.encl_op_header(P.ENCL_OP_INIT_TCS_PAGE), tcs, T + 2 * PAGE, entry)
    st.eexit_ok(c.call(op))
    mt = uapi.sgx_enclave_modify_types(T + PAGE, PAGE, uapi.SGX_PAGE_TYPE_TCS)
    assert st.ioctl(uapi.SGX_IOC_ENCLAVE_MODIFY_TYPES, mt) == 0
    assert mt.result == 0 and mt.count == PAGE
    assert c.eaccept(tcs, 0x110) == 0
    st.eexit_ok(0)
    c.run.tcs = tcs
    st.eexit_ok(c.put_buf(P.MAGIC))
    assert c.get_buf() == P.MAGIC
    st.eexit_ok(0)
    # Phase 2: trim all three, accept, remove, then a fresh page where the TCS was.
    mt = uapi.sgx_enclave_modify_types(T, 3 * PAGE, uapi.SGX_PAGE_TYPE_TRIM)
    assert st.ioctl(uapi.SGX_IOC_ENCLAVE_MODIFY_TYPES, mt) == 0
    assert mt.result == 0 and mt.count == 3 * PAGE
    c.run.tcs = st.base
    for page in (stack_end, tcs, ssa):
        assert c.eaccept(page, 0x410) == 0
        st.eexit_ok(0)
    rp = uapi.sgx_enclave_remove_pages(T, 3 * PAGE)
    assert st.ioctl(uapi.SGX_IOC_ENCLAVE_REMOVE_PAGES, rp) == 0
    assert rp.count == 3 * PAGE
    assert c.eaccept(tcs, 0x20B) == 0
    st.eexit_ok(0)
    st.eexit_ok(c.put(tcs, P.MAGIC))
    assert c.get(tcs) == P.MAGIC
    st.eexit_ok(0)
    st.proc.munmap(st.base + T, 3 * PAGE)


def _trim_d(st: Selftest) -> None:
    mt = uapi.sgx_enclave_modify_types(st.image.data_offset + PAGE, PAGE, uapi.SGX_PAGE_TYPE_TRIM)
    assert st.ioctl(uapi.SGX_IOC_ENCLAVE_MODIFY_TYPES, mt) == 0
    assert mt.result == 0 and mt.count == PAGE


def test_remove_added_page_no_eaccept(st: Selftest) -> None:
    st.probe_sgx2(uapi.SGX_IOC_ENCLAVE_MODIFY_TYPES, uapi.sgx_enclave_modify_types)
    st.eexit_ok(st.c.put(st.D, P.MAGIC))
    assert st.c.get(st.D) == P.MAGIC
    _trim_d(st)
    rp = uapi.sgx_enclave_remove_pages(st.image.data_offset + PAGE, PAGE)
    assert st.errno_of(uapi.SGX_IOC_ENCLAVE_REMOVE_PAGES, rp) == errno.EPERM
    assert rp.count == 0


def test_remove_added_page_invalid_access(st: Selftest) -> None:
    st.probe_sgx2(uapi.SGX_IOC_ENCLAVE_MODIFY_TYPES, uapi.sgx_enclave_modify_types)
    st.eexit_ok(st.c.put(st.D, P.MAGIC))
    assert st.c.get(st.D) == P.MAGIC
    _trim_d(st)
    st.c.get(st.D)
    assert st.c.run.function == ERESUME
    assert st.c.exc() == (14, 0x8005, st.D)


def test_remove_added_page_invalid_access_after_eaccept(st: Selftest) -> None:
    st.probe_sgx2(uapi.SGX_IOC_ENCLAVE_MODIFY_TYPES, uapi.sgx_enclave_modify_types)
    st.eexit_ok(st.c.put(st.D, P.MAGIC))
    assert st.c.get(st.D) == P.MAGIC
    _trim_d(st)
    assert st.c.eaccept(st.D, 0x410) == 0
    st.eexit_ok(0)
    st.c.get(st.D)
    assert st.c.run.function == ERESUME
    assert st.c.exc() == (14, 0x8005, st.D)


def test_remove_untouched_page(st: Selftest) -> None:
    st.probe_sgx2(uapi.SGX_IOC_ENCLAVE_MODIFY_TYPES, uapi.sgx_enclave_modify_types)
    _trim_d(st)
    assert st.c.eaccept(st.D, 0x410) == 0
    st.eexit_ok(0)
    rp = uapi.sgx_enclave_remove_pages(st.image.data_offset + PAGE, PAGE)
    assert st.ioctl(uapi.SGX_IOC_ENCLAVE_REMOVE_PAGES, rp) == 0
    assert rp.count == PAGE


# -- the same scenarios on an SGX1-only machine -----------------------------------------------------
@pytest.mark.parametrize(
    "scenario",
    [test_tcs_permissions, test_epcm_permissions, test_tcs_create, test_remove_untouched_page,
     test_augment, test_augment_via_eaccept],
)
def test_sgx2_scenarios_skip_on_sgx1(st_factory: Callable[..., Selftest], scenario: Callable[[Selftest], None]) -> None:
    st = st_factory(sgx2=False)
    with pytest.raises(pytest.skip.Exception):
        scenario(st)


def test_sgx1_unbacked_write_is_reported_not_augmented(st_factory: Callable[..., Selftest]) -> None:
    st = st_factory(sgx2=False)
    addr = st.base + st.T
    st.proc.mmap(addr, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, st.encl.fd, 0)
    assert st.c.put(addr, P.MAGIC) == 0
    assert st.c.run.function == ERESUME
    assert st.c.exc() == (14, 0x6, addr)  # SIGBUS from the fault handler, fixed up


def test_pte_permissions_on_sgx1(st_factory: Callable[..., Selftest]) -> None:
    test_pte_permissions(st_factory(sgx2=False))
