"""The sixteen TEST_F(enclave, ...) of tools/testing/selftests/sgx/main.c (Linux >= 6.0), in
its order, each asserting what the C test asserts (EXPECT_* records and goes on, ASSERT_*
ends the test) and skipping where it skips.
"""

from __future__ import annotations

import ctypes
import errno
from collections.abc import Callable

from .. import uapi
from ..linux.mman import MAP_FAILED, MAP_FIXED, MAP_SHARED, PROT_EXEC, PROT_READ, PROT_WRITE
from ..testenclave import protocol as P
from .harness import EEXIT, ERESUME, PAGE_SIZE, Case

MAGIC = P.MAGIC
MAGIC2 = P.MAGIC2
ENCL_HEAP_SIZE_DEFAULT = PAGE_SIZE

# enum sgx_secinfo_page_state (main.c)
SGX_SECINFO_PENDING = 1 << 3
SGX_SECINFO_MODIFIED = 1 << 4
SGX_SECINFO_PR = 1 << 5
SGX_SECINFO_R, SGX_SECINFO_W = uapi.SGX_SECINFO_R, uapi.SGX_SECINFO_W
SGX_SECINFO_REG, SGX_SECINFO_TCS, SGX_SECINFO_TRIM = (
    uapi.SGX_SECINFO_REG, uapi.SGX_SECINFO_TCS, uapi.SGX_SECINFO_TRIM,
)

SGX_CPUID = 0x12
SGX_CPUID_EPC = 2
SGX_CPUID_EPC_MASK = 0xF
SGX_CPUID_EPC_INVALID = 0
SGX_CPUID_EPC_SECTION = 1

# The skip reasons of main.c.
NO_SGX2 = "System does not support SGX2"
NO_SGX2_CPUID = "SGX2 not supported"
NO_EAUG = "Kernel does not support adding pages to initialized enclave"


def sgx2_supported(t: Case) -> bool:
    return bool(t.cpuid(SGX_CPUID, 0)[0] & 0x2)


def get_total_epc_mem(t: Case) -> int:
    """Sum of the EPC sections CPUID.(EAX=12H, ECX>=2) reports."""
    total = 0
    section = 0
    while True:
        eax, _, ecx, edx = t.cpuid(SGX_CPUID, section + SGX_CPUID_EPC)
        kind = eax & SGX_CPUID_EPC_MASK
        if kind == SGX_CPUID_EPC_INVALID or kind != SGX_CPUID_EPC_SECTION:
            break
        total += (ecx & 0xFFFFF000) + ((edx & 0xFFFFF) << 32)
        section += 1
    return total


def _probe_modify_types(t: Case) -> None:
    """The SGX2 check before the MODIFY_TYPES tests: a zeroed struct must fail."""
    ret = t.ioctl(uapi.SGX_IOC_ENCLAVE_MODIFY_TYPES, uapi.sgx_enclave_modify_types())
    if ret == -1:
        if t.errno == errno.ENOTTY:
            t.skip("Kernel does not support SGX_IOC_ENCLAVE_MODIFY_TYPES ioctl()")
        elif t.errno == errno.ENODEV:
            t.skip(NO_SGX2)
    t.expect_eq(ret, -1, "ioctl(SGX_IOC_ENCLAVE_MODIFY_TYPES, {0})")


def _probe_restrict_permissions(t: Case) -> None:
    """The SGX2 check of tcs_permissions and epcm_permissions (an ASSERT first)."""
    ret = t.ioctl(uapi.SGX_IOC_ENCLAVE_RESTRICT_PERMISSIONS, uapi.sgx_enclave_restrict_permissions())
    errno_save = t.errno if ret == -1 else 0
    t.assert_eq(ret, -1, "ioctl(SGX_IOC_ENCLAVE_RESTRICT_PERMISSIONS, {0})")
    if errno_save == errno.ENOTTY:
        t.skip("Kernel does not support SGX_IOC_ENCLAVE_RESTRICT_PERMISSIONS ioctl()")
    elif errno_save == errno.ENODEV:
        t.skip(NO_SGX2)


def _ioctl_ok(t: Case, request: int, arg: object, name: str) -> None:
    """ret = ioctl(...); EXPECT_EQ(ret, 0); EXPECT_EQ(errno_save, 0);"""
    ret = t.ioctl(request, arg)
    errno_save = t.errno if ret == -1 else 0
    t.expect_eq(ret, 0, f"ioctl({name})")
    t.expect_eq(errno_save, 0, f"errno after ioctl({name})")


def _put_buf(value: int) -> P.encl_op_put_to_buf:
    return P.encl_op_put_to_buf(P.encl_op_header(P.ENCL_OP_PUT_TO_BUFFER), value)


def _get_buf() -> P.encl_op_get_from_buf:
    return P.encl_op_get_from_buf(P.encl_op_header(P.ENCL_OP_GET_FROM_BUFFER), 0)


def _put_addr(value: int, addr: int) -> P.encl_op_put_to_addr:
    return P.encl_op_put_to_addr(P.encl_op_header(P.ENCL_OP_PUT_TO_ADDRESS), value, addr)


def _get_addr(addr: int) -> P.encl_op_get_from_addr:
    return P.encl_op_get_from_addr(P.encl_op_header(P.ENCL_OP_GET_FROM_ADDRESS), 0, addr)


def _eaccept(addr: int, flags: int) -> P.encl_op_eaccept:
    return P.encl_op_eaccept(P.encl_op_header(P.ENCL_OP_EACCEPT), addr, flags, 0)


def _call_expect_clean(t: Case, op: ctypes.Structure, what: str) -> None:
    """EXPECT_EQ(ENCL_CALL(op, &self->run, true), 0); EXPECT_EEXIT; exception fields 0."""
    t.expect_eq(t.encl_call(op, True), 0, f"ENCL_CALL({what})")
    t.expect_eexit()
    t.expect_no_exception()


def _eaccept_expect_ok(t: Case, op: P.encl_op_eaccept) -> None:
    _call_expect_clean(t, op, "eaccept_op")
    t.expect_eq(op.ret, 0, "eaccept_op.ret")


def _total_size(t: Case) -> int:
    return sum(seg.size for seg in t.segments)


# -- the tests ----------------------------------------------------------------------------------------
def _put_get_buf(t: Case, clobbered: bool) -> None:
    """The put/get-buffer pair of the vDSO tests."""
    put_op = _put_buf(MAGIC)
    t.expect_eq(t.encl_call(put_op, clobbered), 0, "ENCL_CALL(put_op)")
    t.expect_eexit()
    t.expect_eq(t.run.user_data, 0, "run.user_data")
    get_op = _get_buf()
    t.expect_eq(t.encl_call(get_op, clobbered), 0, "ENCL_CALL(get_op)")
    t.expect_eq(get_op.value, MAGIC, "get_op.value")
    t.expect_eexit()
    t.expect_eq(t.run.user_data, 0, "run.user_data")


def unclobbered_vdso(t: Case) -> None:
    t.assert_true(t.setup_test_encl(ENCL_HEAP_SIZE_DEFAULT), "setup_test_encl")
    t.reset_run()
    _put_get_buf(t, clobbered=False)


def unclobbered_vdso_oversubscribed(t: Case) -> None:
    total_mem = get_total_epc_mem(t)
    t.assert_ne(total_mem, 0, "get_total_epc_mem()")
    t.assert_true(t.setup_test_encl(total_mem), "setup_test_encl(total_mem)")
    t.reset_run()
    _put_get_buf(t, clobbered=False)


def unclobbered_vdso_oversubscribed_remove(t: Case) -> None:
    # "Create enclave with additional heap that is as big as all available physical SGX memory."
    total_mem = get_total_epc_mem(t)
    t.assert_ne(total_mem, 0, "get_total_epc_mem()")
    t.th_log(f"Creating an enclave with {total_mem} bytes heap may take a while ...")
    t.assert_true(t.setup_test_encl(total_mem), "setup_test_encl(total_mem)")
    _probe_modify_types(t)
    t.reset_run()
    heap = t.segments[-1]
    _put_get_buf(t, clobbered=False)

    modt_ioc = uapi.sgx_enclave_modify_types(heap.offset, heap.size, uapi.SGX_PAGE_TYPE_TRIM)
    t.th_log(f"Changing type of {heap.size} bytes to trimmed may take a while ...")
    _ioctl_ok(t, uapi.SGX_IOC_ENCLAVE_MODIFY_TYPES, modt_ioc, "SGX_IOC_ENCLAVE_MODIFY_TYPES")
    t.expect_eq(modt_ioc.result, 0, "modt_ioc.result")
    t.expect_eq(modt_ioc.count, heap.size, "modt_ioc.count")

    addr = t.encl_base + heap.offset
    eaccept_op = _eaccept(0, SGX_SECINFO_TRIM | SGX_SECINFO_MODIFIED)
    t.th_log(f"Entering enclave to run EACCEPT for each page of {heap.size} bytes may take a while ...")
    for i in range(0, heap.size, PAGE_SIZE):
        eaccept_op.epc_addr = addr + i
        eaccept_op.ret = 0
        t.expect_eq(t.encl_call(eaccept_op, True), 0, "ENCL_CALL(eaccept_op)")
        t.expect_no_exception()
        t.assert_eq(eaccept_op.ret, 0, f"eaccept_op.ret (page {i // PAGE_SIZE})")
        t.assert_eq(t.run.function, EEXIT, "run.function")

    remove_ioc = uapi.sgx_enclave_remove_pages(heap.offset, heap.size)
    t.th_log(f"Removing {heap.size} bytes from enclave may take a while ...")
    _ioctl_ok(t, uapi.SGX_IOC_ENCLAVE_REMOVE_PAGES, remove_ioc, "SGX_IOC_ENCLAVE_REMOVE_PAGES")
    t.expect_eq(remove_ioc.count, heap.size, "remove_ioc.count")


def clobbered_vdso(t: Case) -> None:
    t.assert_true(t.setup_test_encl(ENCL_HEAP_SIZE_DEFAULT), "setup_test_encl")
    t.reset_run()
    _put_get_buf(t, clobbered=True)


def _test_handler(
    rdi: int, rsi: int, rdx: int, ursp: int, r8: int, r9: int, run: uapi.sgx_enclave_run
) -> int:
    run.user_data = 0
    return 0


def clobbered_vdso_and_user_function(t: Case) -> None:
    t.assert_true(t.setup_test_encl(ENCL_HEAP_SIZE_DEFAULT), "setup_test_encl")
    t.reset_run()
    t.run.user_handler = t.proc.callback(_test_handler)
    t.run.user_data = 0xDEADBEEF
    _put_get_buf(t, clobbered=True)


def tcs_entry(t: Case) -> None:
    """Sanity check that it is possible to enter either of the two hardcoded TCS."""
    t.assert_true(t.setup_test_encl(ENCL_HEAP_SIZE_DEFAULT), "setup_test_encl")
    t.reset_run()
    op = P.encl_op_header(P.ENCL_OP_NOP)
    _call_expect_clean(t, op, "op")
    t.run.tcs = t.encl_base + PAGE_SIZE  # the next TCS
    _call_expect_clean(t, op, "op")


def pte_permissions(t: Case) -> None:
    """RW -> RO PTE on the second data page: a regular #PF; back to RW and ERESUME."""
    t.assert_true(t.setup_test_encl(ENCL_HEAP_SIZE_DEFAULT), "setup_test_encl")
    t.reset_run()
    data_start = t.encl_base + t.encl_get_data_offset() + PAGE_SIZE

    put_addr_op = _put_addr(MAGIC, data_start)
    _call_expect_clean(t, put_addr_op, "put_addr_op")
    get_addr_op = _get_addr(data_start)
    t.expect_eq(t.encl_call(get_addr_op, True), 0, "ENCL_CALL(get_addr_op)")
    t.expect_eq(get_addr_op.value, MAGIC, "get_addr_op.value")
    t.expect_eexit()
    t.expect_no_exception()

    if t.mprotect(data_start, PAGE_SIZE, PROT_READ):
        t.th_log("mprotect: failed")
    put_addr_op.value = MAGIC2
    t.expect_eq(t.encl_call(put_addr_op, True), 0, "ENCL_CALL(put_addr_op)")
    t.expect_eq(t.run.exception_vector, 14, "run.exception_vector")
    t.expect_eq(t.run.exception_error_code, 0x7, "run.exception_error_code")
    t.expect_eq(t.run.exception_addr, data_start, "run.exception_addr")
    t.clear_exception()

    if t.mprotect(data_start, PAGE_SIZE, PROT_READ | PROT_WRITE):
        t.th_log("mprotect: failed")
    t.expect_eq(t.vdso_sgx_enter_enclave(put_addr_op, ERESUME), 0, "vdso_sgx_enter_enclave(ERESUME)")
    t.expect_eexit()
    t.expect_no_exception()

    get_addr_op.value = 0
    t.expect_eq(t.encl_call(get_addr_op, True), 0, "ENCL_CALL(get_addr_op)")
    t.expect_eq(get_addr_op.value, MAGIC2, "get_addr_op.value")
    t.expect_eexit()
    t.expect_no_exception()


def tcs_permissions(t: Case) -> None:
    """Modifying permissions of TCS page should not be possible."""
    t.assert_true(t.setup_test_encl(ENCL_HEAP_SIZE_DEFAULT), "setup_test_encl")
    t.reset_run()
    _probe_restrict_permissions(t)
    ioc = uapi.sgx_enclave_restrict_permissions(t.encl_get_tcs_offset(), PAGE_SIZE, SGX_SECINFO_R)
    ret = t.ioctl(uapi.SGX_IOC_ENCLAVE_RESTRICT_PERMISSIONS, ioc)
    errno_save = t.errno if ret == -1 else 0
    t.expect_eq(ret, -1, "ioctl(SGX_IOC_ENCLAVE_RESTRICT_PERMISSIONS)")
    t.expect_eq(errno_save, errno.EINVAL, "errno")
    t.expect_eq(ioc.result, 0, "ioc.result")
    t.expect_eq(ioc.count, 0, "ioc.count")


def epcm_permissions(t: Case) -> None:
    """EMODPR from outside, EMODPE from inside; a #PF when the VMA allows what the EPCM does not."""
    t.assert_true(t.setup_test_encl(ENCL_HEAP_SIZE_DEFAULT), "setup_test_encl")
    t.reset_run()
    _probe_restrict_permissions(t)
    data_start = t.encl_base + t.encl_get_data_offset() + PAGE_SIZE

    put_addr_op = _put_addr(MAGIC, data_start)
    _call_expect_clean(t, put_addr_op, "put_addr_op")
    get_addr_op = _get_addr(data_start)
    t.expect_eq(t.encl_call(get_addr_op, True), 0, "ENCL_CALL(get_addr_op)")
    t.expect_eq(get_addr_op.value, MAGIC, "get_addr_op.value")
    t.expect_eexit()
    t.expect_no_exception()

    restrict_ioc = uapi.sgx_enclave_restrict_permissions(
        t.encl_get_data_offset() + PAGE_SIZE, PAGE_SIZE, SGX_SECINFO_R
    )
    _ioctl_ok(t, uapi.SGX_IOC_ENCLAVE_RESTRICT_PERMISSIONS, restrict_ioc, "SGX_IOC_ENCLAVE_RESTRICT_PERMISSIONS")
    t.expect_eq(restrict_ioc.result, 0, "restrict_ioc.result")
    t.expect_eq(restrict_ioc.count, 4096, "restrict_ioc.count")

    eaccept_op = _eaccept(data_start, SGX_SECINFO_R | SGX_SECINFO_REG | SGX_SECINFO_PR)
    _eaccept_expect_ok(t, eaccept_op)

    put_addr_op.value = MAGIC2
    t.expect_eq(t.encl_call(put_addr_op, True), 0, "ENCL_CALL(put_addr_op)")
    t.expect_eq(t.run.function, ERESUME, "run.function")
    t.expect_eq(t.run.exception_vector, 14, "run.exception_vector")
    t.expect_eq(t.run.exception_error_code, 0x8007, "run.exception_error_code")
    t.expect_eq(t.run.exception_addr, data_start, "run.exception_addr")
    t.clear_exception()

    # The AEX leaves TCS #1 busy at its SSA: EMODPE from TCS #2.
    t.run.tcs = t.encl_base + PAGE_SIZE
    emodpe_op = P.encl_op_emodpe(
        P.encl_op_header(P.ENCL_OP_EMODPE), data_start, SGX_SECINFO_R | SGX_SECINFO_W
    )
    _call_expect_clean(t, emodpe_op, "emodpe_op")

    t.run.tcs = t.encl_base
    t.expect_eq(t.vdso_sgx_enter_enclave(put_addr_op, ERESUME), 0, "vdso_sgx_enter_enclave(ERESUME)")
    t.expect_eexit()
    t.expect_no_exception()

    get_addr_op.value = 0
    t.expect_eq(t.encl_call(get_addr_op, True), 0, "ENCL_CALL(get_addr_op)")
    t.expect_eq(get_addr_op.value, MAGIC2, "get_addr_op.value")
    t.expect_eexit()
    t.expect_eq(t.run.user_data, 0, "run.user_data")
    t.expect_no_exception()


def augment(t: Case) -> None:
    """EAUG on the #PF of a write to an unbacked page of ELRANGE, then EACCEPT from TCS #2."""
    if not sgx2_supported(t):
        t.skip(NO_SGX2_CPUID)
    t.assert_true(t.setup_test_encl(ENCL_HEAP_SIZE_DEFAULT), "setup_test_encl")
    t.reset_run()
    total_size = _total_size(t)
    t.expect_lt(total_size + PAGE_SIZE, t.encl_size, "total_size + PAGE_SIZE < encl_size")

    addr = t.mmap(
        t.encl_base + total_size, PAGE_SIZE, PROT_READ | PROT_WRITE | PROT_EXEC,
        MAP_SHARED | MAP_FIXED, t.fd, 0,
    )
    t.expect_ne(addr, MAP_FAILED, "mmap")
    t.clear_exception()

    put_addr_op = _put_addr(MAGIC, addr)
    t.expect_eq(t.encl_call(put_addr_op, True), 0, "ENCL_CALL(put_addr_op)")
    t.expect_eq(t.run.function, ERESUME, "run.function")
    t.expect_eq(t.run.exception_vector, 14, "run.exception_vector")
    t.expect_eq(t.run.exception_addr, addr, "run.exception_addr")
    if t.run.exception_error_code == 0x6:
        t.munmap(addr, PAGE_SIZE)
        t.skip(NO_EAUG)
    t.expect_eq(t.run.exception_error_code, 0x8007, "run.exception_error_code")
    t.clear_exception()

    t.run.tcs = t.encl_base + PAGE_SIZE  # handle the AEX by EACCEPT from another entry point
    eaccept_op = _eaccept(
        t.encl_base + total_size, SGX_SECINFO_R | SGX_SECINFO_W | SGX_SECINFO_REG | SGX_SECINFO_PENDING
    )
    _eaccept_expect_ok(t, eaccept_op)

    t.run.tcs = t.encl_base
    t.expect_eq(t.vdso_sgx_enter_enclave(put_addr_op, ERESUME), 0, "vdso_sgx_enter_enclave(ERESUME)")
    t.expect_eexit()
    t.expect_no_exception()

    get_addr_op = _get_addr(addr)
    t.expect_eq(t.encl_call(get_addr_op, True), 0, "ENCL_CALL(get_addr_op)")
    t.expect_eq(get_addr_op.value, MAGIC, "get_addr_op.value")
    t.expect_eexit()
    t.expect_no_exception()
    t.munmap(addr, PAGE_SIZE)


def augment_via_eaccept(t: Case) -> None:
    """EACCEPT of an unbacked page: #PF -> EAUG -> EACCEPT again, invisible to user space."""
    if not sgx2_supported(t):
        t.skip(NO_SGX2_CPUID)
    t.assert_true(t.setup_test_encl(ENCL_HEAP_SIZE_DEFAULT), "setup_test_encl")
    t.reset_run()
    total_size = _total_size(t)
    t.expect_lt(total_size + PAGE_SIZE, t.encl_size, "total_size + PAGE_SIZE < encl_size")

    addr = t.mmap(
        t.encl_base + total_size, PAGE_SIZE, PROT_READ | PROT_WRITE | PROT_EXEC,
        MAP_SHARED | MAP_FIXED, t.fd, 0,
    )
    t.expect_ne(addr, MAP_FAILED, "mmap")
    t.clear_exception()

    eaccept_op = _eaccept(
        t.encl_base + total_size, SGX_SECINFO_R | SGX_SECINFO_W | SGX_SECINFO_REG | SGX_SECINFO_PENDING
    )
    t.expect_eq(t.encl_call(eaccept_op, True), 0, "ENCL_CALL(eaccept_op)")
    r = t.run
    if r.exception_vector == 14 and r.exception_error_code == 4 and r.exception_addr == t.encl_base + total_size:
        t.munmap(addr, PAGE_SIZE)
        t.skip(NO_EAUG)
    t.expect_eexit()
    t.expect_no_exception()
    t.expect_eq(eaccept_op.ret, 0, "eaccept_op.ret")

    put_addr_op = _put_addr(MAGIC, addr)
    _call_expect_clean(t, put_addr_op, "put_addr_op")
    get_addr_op = _get_addr(addr)
    t.expect_eq(t.encl_call(get_addr_op, True), 0, "ENCL_CALL(get_addr_op)")
    t.expect_eq(get_addr_op.value, MAGIC, "get_addr_op.value")
    t.expect_eexit()
    t.expect_no_exception()
    t.munmap(addr, PAGE_SIZE)


def tcs_create(t: Case) -> None:
    """Phase 1: EAUG stack, SSA and a page made a TCS, run from it. Phase 2: remove all three,
    then a regular page where the TCS was."""
    t.assert_true(t.setup_test_encl(ENCL_HEAP_SIZE_DEFAULT), "setup_test_encl")
    t.reset_run()
    _probe_modify_types(t)
    total_size = _total_size(t)
    t.expect_lt(total_size + 3 * PAGE_SIZE, t.encl_size, "total_size + 3 * PAGE_SIZE < encl_size")

    addr = t.mmap(
        t.encl_base + total_size, 3 * PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, t.fd, 0
    )
    t.expect_ne(addr, MAP_FAILED, "mmap")
    t.clear_exception()
    stack_end = t.encl_base + total_size
    tcs = t.encl_base + total_size + PAGE_SIZE
    ssa = t.encl_base + total_size + 2 * PAGE_SIZE

    eaccept_op = _eaccept(stack_end, SGX_SECINFO_R | SGX_SECINFO_W | SGX_SECINFO_REG | SGX_SECINFO_PENDING)
    t.expect_eq(t.encl_call(eaccept_op, True), 0, "ENCL_CALL(eaccept_op)")
    r = t.run
    if r.exception_vector == 14 and r.exception_error_code == 4 and r.exception_addr == stack_end:
        t.munmap(addr, 3 * PAGE_SIZE)
        t.skip(NO_EAUG)
    t.expect_eexit()
    t.expect_no_exception()
    t.expect_eq(eaccept_op.ret, 0, "eaccept_op.ret")
    eaccept_op.epc_addr = ssa
    _eaccept_expect_ok(t, eaccept_op)
    eaccept_op.epc_addr = tcs
    _eaccept_expect_ok(t, eaccept_op)

    val_64 = t.encl_get_entry("encl_dyn_entry")
    t.expect_ne(val_64, 0, "encl_get_entry(encl_dyn_entry)")
    init_tcs_page_op = P.encl_op_init_tcs_page(
        P.encl_op_header(P.ENCL_OP_INIT_TCS_PAGE), tcs, total_size + 2 * PAGE_SIZE, val_64
    )
    _call_expect_clean(t, init_tcs_page_op, "init_tcs_page_op")

    modt_ioc = uapi.sgx_enclave_modify_types(total_size + PAGE_SIZE, PAGE_SIZE, uapi.SGX_PAGE_TYPE_TCS)
    _ioctl_ok(t, uapi.SGX_IOC_ENCLAVE_MODIFY_TYPES, modt_ioc, "SGX_IOC_ENCLAVE_MODIFY_TYPES")
    t.expect_eq(modt_ioc.result, 0, "modt_ioc.result")
    t.expect_eq(modt_ioc.count, 4096, "modt_ioc.count")

    eaccept_op.epc_addr = tcs
    eaccept_op.flags = SGX_SECINFO_TCS | SGX_SECINFO_MODIFIED
    eaccept_op.ret = 0
    _eaccept_expect_ok(t, eaccept_op)

    t.run.tcs = tcs  # run the workload from the new TCS
    put_buf_op = _put_buf(MAGIC)
    _call_expect_clean(t, put_buf_op, "put_buf_op")
    get_buf_op = _get_buf()
    t.expect_eq(t.encl_call(get_buf_op, True), 0, "ENCL_CALL(get_buf_op)")
    t.expect_eq(get_buf_op.value, MAGIC, "get_buf_op.value")
    t.expect_eexit()
    t.expect_no_exception()

    # Phase 2.
    modt_ioc = uapi.sgx_enclave_modify_types(total_size, 3 * PAGE_SIZE, uapi.SGX_PAGE_TYPE_TRIM)
    _ioctl_ok(t, uapi.SGX_IOC_ENCLAVE_MODIFY_TYPES, modt_ioc, "SGX_IOC_ENCLAVE_MODIFY_TYPES")
    t.expect_eq(modt_ioc.result, 0, "modt_ioc.result")
    t.expect_eq(modt_ioc.count, 3 * PAGE_SIZE, "modt_ioc.count")

    t.run.tcs = t.encl_base
    eaccept_op.epc_addr = stack_end
    eaccept_op.flags = SGX_SECINFO_TRIM | SGX_SECINFO_MODIFIED
    eaccept_op.ret = 0
    _eaccept_expect_ok(t, eaccept_op)
    eaccept_op.epc_addr = tcs
    eaccept_op.ret = 0
    _eaccept_expect_ok(t, eaccept_op)
    eaccept_op.epc_addr = ssa
    eaccept_op.ret = 0
    _eaccept_expect_ok(t, eaccept_op)

    remove_ioc = uapi.sgx_enclave_remove_pages(total_size, 3 * PAGE_SIZE)
    _ioctl_ok(t, uapi.SGX_IOC_ENCLAVE_REMOVE_PAGES, remove_ioc, "SGX_IOC_ENCLAVE_REMOVE_PAGES")
    t.expect_eq(remove_ioc.count, 3 * PAGE_SIZE, "remove_ioc.count")

    eaccept_op.epc_addr = tcs
    eaccept_op.flags = SGX_SECINFO_R | SGX_SECINFO_W | SGX_SECINFO_REG | SGX_SECINFO_PENDING
    eaccept_op.ret = 0
    _eaccept_expect_ok(t, eaccept_op)

    put_addr_op = _put_addr(MAGIC, tcs)
    _call_expect_clean(t, put_addr_op, "put_addr_op")
    get_addr_op = _get_addr(tcs)
    t.expect_eq(t.encl_call(get_addr_op, True), 0, "ENCL_CALL(get_addr_op)")
    t.expect_eq(get_addr_op.value, MAGIC, "get_addr_op.value")
    t.expect_eexit()
    t.expect_no_exception()
    t.munmap(addr, 3 * PAGE_SIZE)


def _write_read_data_start(t: Case) -> tuple[int, P.encl_op_get_from_addr]:
    """The sanity check of the remove_* tests: MAGIC to the second data page and back."""
    data_start = t.encl_base + t.encl_get_data_offset() + PAGE_SIZE
    put_addr_op = _put_addr(MAGIC, data_start)
    _call_expect_clean(t, put_addr_op, "put_addr_op")
    get_addr_op = _get_addr(data_start)
    t.expect_eq(t.encl_call(get_addr_op, True), 0, "ENCL_CALL(get_addr_op)")
    t.expect_eq(get_addr_op.value, MAGIC, "get_addr_op.value")
    t.expect_eexit()
    t.expect_no_exception()
    return data_start, get_addr_op


def _trim_data_page(t: Case) -> None:
    ioc = uapi.sgx_enclave_modify_types(
        t.encl_get_data_offset() + PAGE_SIZE, PAGE_SIZE, uapi.SGX_PAGE_TYPE_TRIM
    )
    _ioctl_ok(t, uapi.SGX_IOC_ENCLAVE_MODIFY_TYPES, ioc, "SGX_IOC_ENCLAVE_MODIFY_TYPES")
    t.expect_eq(ioc.result, 0, "ioc.result")
    t.expect_eq(ioc.count, 4096, "ioc.count")


def _expect_sgx_read_fault(t: Case, data_start: int) -> None:
    """The page is present for the kernel, not for SGX: a #PF with the SGX bit."""
    t.expect_eq(t.run.function, ERESUME, "run.function")
    t.expect_eq(t.run.exception_vector, 14, "run.exception_vector")
    t.expect_eq(t.run.exception_error_code, 0x8005, "run.exception_error_code")
    t.expect_eq(t.run.exception_addr, data_start, "run.exception_addr")


def remove_added_page_no_eaccept(t: Case) -> None:
    """REMOVE_PAGES without the enclave's EACCEPT must fail with EPERM."""
    t.assert_true(t.setup_test_encl(ENCL_HEAP_SIZE_DEFAULT), "setup_test_encl")
    t.reset_run()
    _probe_modify_types(t)
    _write_read_data_start(t)
    _trim_data_page(t)
    remove_ioc = uapi.sgx_enclave_remove_pages(t.encl_get_data_offset() + PAGE_SIZE, PAGE_SIZE)
    ret = t.ioctl(uapi.SGX_IOC_ENCLAVE_REMOVE_PAGES, remove_ioc)
    errno_save = t.errno if ret == -1 else 0
    t.expect_eq(ret, -1, "ioctl(SGX_IOC_ENCLAVE_REMOVE_PAGES)")
    t.expect_eq(errno_save, errno.EPERM, "errno")
    t.expect_eq(remove_ioc.count, 0, "remove_ioc.count")


def remove_added_page_invalid_access(t: Case) -> None:
    """A read of a trimmed page instead of EACCEPT."""
    t.assert_true(t.setup_test_encl(ENCL_HEAP_SIZE_DEFAULT), "setup_test_encl")
    t.reset_run()
    _probe_modify_types(t)
    data_start, get_addr_op = _write_read_data_start(t)
    _trim_data_page(t)
    get_addr_op.value = 0
    t.expect_eq(t.encl_call(get_addr_op, True), 0, "ENCL_CALL(get_addr_op)")
    _expect_sgx_read_fault(t, data_start)


def remove_added_page_invalid_access_after_eaccept(t: Case) -> None:
    """EACCEPT of the trim, no REMOVE_PAGES, then a read of the page."""
    t.assert_true(t.setup_test_encl(ENCL_HEAP_SIZE_DEFAULT), "setup_test_encl")
    t.reset_run()
    _probe_modify_types(t)
    data_start, get_addr_op = _write_read_data_start(t)
    _trim_data_page(t)
    eaccept_op = _eaccept(data_start, SGX_SECINFO_TRIM | SGX_SECINFO_MODIFIED)
    _eaccept_expect_ok(t, eaccept_op)
    get_addr_op.value = 0
    t.expect_eq(t.encl_call(get_addr_op, True), 0, "ENCL_CALL(get_addr_op)")
    _expect_sgx_read_fault(t, data_start)


def remove_untouched_page(t: Case) -> None:
    t.assert_true(t.setup_test_encl(ENCL_HEAP_SIZE_DEFAULT), "setup_test_encl")
    _probe_modify_types(t)
    t.reset_run()
    data_start = t.encl_base + t.encl_get_data_offset() + PAGE_SIZE
    _trim_data_page(t)
    eaccept_op = _eaccept(data_start, SGX_SECINFO_TRIM | SGX_SECINFO_MODIFIED)
    _eaccept_expect_ok(t, eaccept_op)
    remove_ioc = uapi.sgx_enclave_remove_pages(t.encl_get_data_offset() + PAGE_SIZE, PAGE_SIZE)
    _ioctl_ok(t, uapi.SGX_IOC_ENCLAVE_REMOVE_PAGES, remove_ioc, "SGX_IOC_ENCLAVE_REMOVE_PAGES")
    t.expect_eq(remove_ioc.count, 4096, "remove_ioc.count")


Scenario = Callable[[Case], None]

# main.c's order.
SCENARIOS: dict[str, Scenario] = {
    fn.__name__: fn
    for fn in (
        unclobbered_vdso,
        unclobbered_vdso_oversubscribed,
        unclobbered_vdso_oversubscribed_remove,
        clobbered_vdso,
        clobbered_vdso_and_user_function,
        tcs_entry,
        pte_permissions,
        tcs_permissions,
        epcm_permissions,
        augment,
        augment_via_eaccept,
        tcs_create,
        remove_added_page_no_eaccept,
        remove_added_page_invalid_access,
        remove_added_page_invalid_access_after_eaccept,
        remove_untouched_page,
    )
}

# What each SGX2 test reports when it skips on an SGX1 processor (the kernel's ENODEV, or the
# CPUID bit for the two augment tests).
SGX1_SKIPS: dict[str, str] = {
    "unclobbered_vdso_oversubscribed_remove": NO_SGX2,
    "tcs_permissions": NO_SGX2,
    "epcm_permissions": NO_SGX2,
    "augment": NO_SGX2_CPUID,
    "augment_via_eaccept": NO_SGX2_CPUID,
    "tcs_create": NO_SGX2,
    "remove_added_page_no_eaccept": NO_SGX2,
    "remove_added_page_invalid_access": NO_SGX2,
    "remove_added_page_invalid_access_after_eaccept": NO_SGX2,
    "remove_untouched_page": NO_SGX2,
}
