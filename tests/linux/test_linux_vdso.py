"""__vdso_sgx_enter_enclave: input checks, EEXIT, exception fixup and the user handler (vsgx.S,
extable.c), on the scripted and the native test enclave."""

from __future__ import annotations

import errno
from collections.abc import Callable

import pytest

from sgxemu import Machine, uapi
from sgxemu.arch.constants import Vector
from sgxemu.exec.scripted import ScriptedContext, ScriptedEngine, ScriptedProgram, Step
from sgxemu.hw.faults import CpuException
from sgxemu.linux import SIGSEGV, SIGTRAP
from sgxemu.linux.enclcall import EnclCaller
from sgxemu.linux.load import encl_build
from sgxemu.linux.mman import PROT_READ, PROT_WRITE
from sgxemu.linux.process import VDSO_ENCLU
from sgxemu.loader.selftest_layout import EnclaveImage
from sgxemu.testenclave import protocol as P

PAGE = 4096
EENTER, ERESUME, EEXIT = uapi.EENTER, uapi.ERESUME, uapi.EEXIT


@pytest.fixture(params=["scripted", "native"])
def c(request: pytest.FixtureRequest, make_machine: Callable[..., Machine], image: EnclaveImage, sigstruct: bytes) -> EnclCaller:
    kw = {"engine": "native"} if request.param == "native" else {}
    proc = make_machine(**kw).spawn()
    return EnclCaller(proc, encl_build(proc, image, sigstruct=sigstruct))


@pytest.mark.parametrize("leaf", [0, 1, 4, 5, 0xFFFF_FFFF])
def test_bad_leaf_is_einval(c: EnclCaller, leaf: int) -> None:
    assert c.call(P.encl_op_header(P.ENCL_OP_NOP), leaf) == -errno.EINVAL
    assert c.run.function == 0  # nothing touched


def test_leaf_is_an_unsigned_int(c: EnclCaller) -> None:
    assert c.call(P.encl_op_header(P.ENCL_OP_NOP), EENTER | (1 << 32)) == 0
    assert c.run.function == EEXIT


@pytest.mark.parametrize("byte", [40, 47, 48, 255])
def test_reserved_must_be_zero(c: EnclCaller, byte: int) -> None:
    c.run.reserved[byte - 40] = 1
    assert c.nop() == -errno.EINVAL
    c.run.reserved[byte - 40] = 0
    assert c.nop() == 0


def test_eexit_leaves_exception_fields_alone(c: EnclCaller) -> None:
    c.run.exception_vector, c.run.exception_error_code, c.run.exception_addr = 1, 2, 3
    c.run.user_data = 0x1234
    assert c.nop() == 0
    assert c.run.function == EEXIT and c.exc() == (1, 2, 3) and c.run.user_data == 0x1234


def test_eenter_faults_are_fixed_up_with_the_leaf(c: EnclCaller) -> None:
    e = c.e
    # not a mapping at all: SIGSEGV -> vector 14, U (read), the TCS address
    c.run.tcs = 0x10_0000_0000
    assert c.nop() == 0
    assert (c.run.function, *c.exc()) == (EENTER, 14, 0x4, 0x10_0000_0000)
    # an enclave page that is not a TCS: the EPCM refuses it (an SGX-flagged #PF)
    c.clear_exc()
    c.run.tcs = e.data_start
    assert c.nop() == 0
    assert (c.run.function, *c.exc()) == (EENTER, 14, 0x8005, e.data_start)
    # a TCS with no free SSA frame: #GP, address 0
    c.clear_exc()
    c.run.tcs = e.tcs
    e.proc.mprotect(e.data_start, PAGE, PROT_READ)
    c.put(e.data_start, 1)  # AEX: TCS #1 now has CSSA == NSSA
    assert c.run.function == ERESUME and c.exc() == (14, 0x7, e.data_start)
    c.clear_exc()
    assert c.nop() == 0
    assert (c.run.function, *c.exc()) == (EENTER, 13, 0, 0)
    e.proc.mprotect(e.data_start, PAGE, PROT_READ | PROT_WRITE)
    assert c.call(P.encl_op_header(P.ENCL_OP_NOP), ERESUME) == 0  # finishes the store
    assert c.run.function == EEXIT


def test_handler_sees_exit_and_exception_arguments(c: EnclCaller) -> None:
    e = c.e
    seen: list[tuple[int, int, int, int]] = []

    def handler(rdi: int, rsi: int, rdx: int, rsp: int, r8: int, r9: int, run: uapi.sgx_enclave_run) -> int:
        seen.append((rdi, rsi, rdx, rsp))
        return -7 if run.function == EEXIT else 0

    c.run.user_handler = e.proc.callback(handler)
    assert c.nop() == -7  # <= 0 goes back to the caller as is
    assert seen[-1][3] == e.proc.main.stack_top - 64  # the untrusted RSP at exit
    e.proc.mprotect(e.data_start, PAGE, PROT_READ)
    assert c.put(e.data_start, 1) == 0
    # never touched: no PTE yet, so the refused write is a not-present fault (W|U)
    assert seen[-1][:3] == (14, 0x6, e.data_start)  # trap number, error code, address


def test_handler_can_resume_the_enclave(c: EnclCaller) -> None:
    """A handler that fixes the fault and returns ERESUME: the caller sees only the EEXIT."""
    e = c.e
    calls = []

    def handler(rdi: int, rsi: int, rdx: int, rsp: int, r8: int, r9: int, run: uapi.sgx_enclave_run) -> int:
        calls.append(run.function)
        if run.function == ERESUME:
            e.proc.mprotect(e.data_start, PAGE, PROT_READ | PROT_WRITE)
            return ERESUME
        return 0

    e.proc.mprotect(e.data_start, PAGE, PROT_READ)
    c.run.user_handler = e.proc.callback(handler)
    assert c.put(e.data_start, P.MAGIC) == 0
    assert calls == [ERESUME, EEXIT] and c.run.function == EEXIT
    assert c.get(e.data_start) == P.MAGIC


def test_handler_leaf_is_validated_again(c: EnclCaller) -> None:
    c.run.user_handler = c.proc.callback(lambda *a: 9)
    assert c.nop() == -errno.EINVAL
    c.run.user_handler = c.proc.callback(lambda *a: (1 << 32) - 1)  # -1 as a C int
    assert c.nop() == -1


def test_handler_through_a_bad_pointer(c: EnclCaller) -> None:
    c.run.user_handler = 0x1234
    with pytest.raises(SIGSEGV):
        c.nop()


def _raising_program(image: EnclaveImage, vector: Vector) -> ScriptedProgram:
    def entry(ctx: ScriptedContext) -> Step:
        yield
        raise CpuException(vector)

    return ScriptedProgram({image.symbol("encl_entry"): entry})


@pytest.mark.parametrize(("vector", "fixed"), [(Vector.BP, False), (Vector.DB, False), (Vector.UD, True), (Vector.DE, True)])
def test_traps_other_than_db_and_bp_are_fixed_up(
    make_machine: Callable[..., Machine], image: EnclaveImage, sigstruct: bytes, vector: Vector, fixed: bool
) -> None:
    program = _raising_program(image, vector)
    m = make_machine(engine=lambda cpu, lp, mem: ScriptedEngine(cpu, lp, mem, program))
    proc = m.spawn()
    c = EnclCaller(proc, encl_build(proc, image, sigstruct=sigstruct))
    if fixed:
        assert c.nop() == 0
        assert (c.run.function, *c.exc()) == (ERESUME, int(vector), 0, 0)
    else:
        with pytest.raises(SIGTRAP):
            c.nop()


def test_interrupts_are_invisible(c: EnclCaller) -> None:
    """An AEX without an exception (an IPI) resumes through the AEP with ERESUME."""
    m = c.proc.machine
    c.put_buf(0)  # fault every page in first, so the only extra entry is the interrupt's
    call = c.proc.main.start_enclave_call(c.op, 0, 0, EENTER, 0, 0, c.run)
    c.proc.put(c.op, P.encl_op_put_to_buf(P.encl_op_header(P.ENCL_OP_PUT_TO_BUFFER), P.MAGIC))
    call.step(1)  # one instruction (or step), then the slice ends inside the enclave
    assert c.proc.machine.cpu.lp(0).enclave_mode
    m.on_each_cpu_mask({0})
    assert m.stats.ipi_aexes == 1
    assert m.wait(call) == 0
    assert c.run.function == EEXIT and c.exc() == (0, 0, 0)
    assert c.get_buf() == P.MAGIC
    assert call.entries == 2  # EENTER, then ERESUME after the interrupt


def test_the_aep_is_the_vdso_enclu(c: EnclCaller) -> None:
    call = c.proc.main.start_enclave_call(c.op, 0, 0, EENTER, 0, 0, c.run)
    c.proc.put(c.op, P.encl_op_header(P.ENCL_OP_NOP))
    call.step(1)
    assert c.proc.machine.cpu.lp(0).aep == VDSO_ENCLU
    c.proc.machine.wait(call)


def test_a_handler_may_call_into_the_enclave_again(c: EnclCaller) -> None:
    """A nested __vdso_sgx_enter_enclave from the user handler (on the other TCS)."""
    inner = EnclCaller(c.proc, c.e)
    inner.run.tcs = c.e.base + PAGE
    got: list[int] = []

    def handler(rdi: int, rsi: int, rdx: int, rsp: int, r8: int, r9: int, run: uapi.sgx_enclave_run) -> int:
        if not got:
            got.append(inner.get_buf())
        return 0

    c.put_buf(P.MAGIC2)
    c.run.user_handler = c.proc.callback(handler)
    assert c.put_buf(P.MAGIC) == 0
    assert got == [P.MAGIC] and inner.run.function == EEXIT
    assert c.proc.main.call is None
