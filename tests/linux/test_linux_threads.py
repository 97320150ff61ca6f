"""Several threads inside enclaves at once: IPIs from the ETRACK flows, TLB shootdowns from PTE
changes, EWB's slow path, and threads sharing a logical processor. A scripted enclave that
spins gives threads that are still inside when another thread enters the kernel."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from sgxemu import Machine, uapi
from sgxemu.exec.scripted import ScriptedContext, ScriptedEngine, ScriptedProgram, Step
from sgxemu.hw import invariants
from sgxemu.linux.encl import SgxEncl
from sgxemu.linux.load import LoadedEnclave, encl_build
from sgxemu.linux.process import Process, Thread
from sgxemu.linux.reclaim import sgx_reclaim_pages
from sgxemu.linux.vdso import EnclaveCall
from sgxemu.loader.selftest_layout import EnclaveImage

PAGE = 4096


def spin_program(image: EnclaveImage) -> ScriptedProgram:
    """RDI stores of the counter to enclave address RSI, then the value read back at RDX."""

    def entry(ctx: ScriptedContext) -> Step:
        for i in range(ctx.rdi):
            ctx.store_u64(ctx.rsi, i)
            yield
        value = ctx.load_u64(ctx.rsi)
        yield
        ctx.store_u64(ctx.rdx, value)  # out to untrusted memory
        yield
        ctx.eexit()

    def stack(ctx: ScriptedContext) -> int:
        return ctx.tcs + image.symbol("encl_stack_tcs1_top")

    return ScriptedProgram({image.symbol("encl_entry"): entry}, stack=stack)


class Spin:
    def __init__(self, make_machine: Callable[..., Machine], image: EnclaveImage, sigstruct: bytes, **kw: object) -> None:
        program = spin_program(image)
        self.m = make_machine(engine=lambda c, lp, mem: ScriptedEngine(c, lp, mem, program), slice_budget=10, **kw)
        self.proc: Process = self.m.spawn()
        self.e: LoadedEnclave = encl_build(self.proc, image, sigstruct=sigstruct)
        self.out = self.proc.alloc(PAGE)
        self.heap = self.e.base + image.heap.offset

    @property
    def encl(self) -> SgxEncl:
        encl = self.proc.fds[self.e.fd].private_data
        assert isinstance(encl, SgxEncl)
        return encl

    def start(self, thread: Thread, tcs_index: int, steps: int, target: int, slot: int = 0) -> tuple[EnclaveCall, uapi.sgx_enclave_run]:
        run = uapi.sgx_enclave_run()
        run.tcs = self.e.base + tcs_index * PAGE
        call = thread.start_enclave_call(steps, target, self.out + 8 * slot, uapi.EENTER, 0, 0, run)
        return call, run

    def result(self, slot: int = 0) -> int:
        return int.from_bytes(self.proc.read(self.out + 8 * slot, 8), "little")


@pytest.fixture
def spin(make_machine: Callable[..., Machine], image: EnclaveImage, sigstruct: bytes) -> Spin:
    return Spin(make_machine, image, sigstruct)


def test_etrack_ipi_kicks_a_thread_out(spin: Spin) -> None:
    a, b = spin.proc.main, spin.proc.thread()
    assert (a.lp, b.lp) == (0, 1)
    call, run = spin.start(a, 0, 50, spin.heap)
    call.step(5)
    assert call.inside and spin.m.cpu.lp(0).enclave_mode
    arg = uapi.sgx_enclave_restrict_permissions(spin.e.image.data_offset + PAGE, PAGE, 1)
    b.ioctl(spin.e.fd, uapi.SGX_IOC_ENCLAVE_RESTRICT_PERMISSIONS, arg)
    s = spin.m.stats
    assert s.ipi_rounds == 1 and s.ipis == 2 and s.ipi_aexes == 1
    assert not call.inside
    assert spin.m.wait(call) == 0
    assert run.function == uapi.EEXIT and (run.exception_vector, run.exception_addr) == (0, 0)
    assert spin.result() == 49


def test_reclaiming_a_page_in_use_forces_the_thread_out_and_back(spin: Spin) -> None:
    m = spin.m
    while m.epc.active:  # start from nothing resident: the thread loads what it uses
        sgx_reclaim_pages(m)
    call, run = spin.start(spin.proc.main, 0, 40, spin.heap)
    call.step(5)
    assert call.inside
    page = spin.encl.page_array[spin.heap >> 12]
    while page.epc_page is not None:  # the second scan finds it old (nothing runs meanwhile)
        sgx_reclaim_pages(m)
    assert m.stats.tlb_shootdowns >= 1  # zapping a PTE it used kicked the thread out
    invariants.check(m.cpu)
    assert m.wait(call) == 0
    assert spin.result() == 39  # the stores after the eviction went to the reloaded page


def test_ewb_slow_path_sends_ipis(spin: Spin) -> None:
    """A thread inside, a page it never touched: no PTE to zap, so no shootdown; EWB says
    NOT_TRACKED twice and the IPI round is what lets the third EWB through."""
    m = spin.m
    data = spin.e.base + spin.e.image.data_offset + PAGE  # not touched by the spinning thread
    call, run = spin.start(spin.proc.main, 0, 40, spin.heap)
    call.step(5)
    page = spin.encl.page_array[data >> 12]
    assert page.epc_page is not None
    etracks, rounds = m.stats.etracks, m.stats.ipi_rounds
    while page.epc_page is not None:
        sgx_reclaim_pages(m)
    assert m.stats.etracks > etracks and m.stats.ipi_rounds > rounds
    assert m.stats.ipi_aexes >= 1
    assert not m.encls.warnings
    assert m.wait(call) == 0 and spin.result() == 39


def test_threads_on_one_logical_processor_take_turns(spin: Spin) -> None:
    m = spin.m
    a, b = spin.proc.main, spin.proc.thread(lp=0)
    call_a, _ = spin.start(a, 0, 60, spin.heap, slot=0)
    call_b, _ = spin.start(b, 1, 60, spin.heap + 8, slot=1)
    assert m.wait(call_b) == 0
    assert m.wait(call_a) == 0
    assert m.stats.preemptions > 0
    assert spin.result(0) == 59 and spin.result(1) == 59
    invariants.check(m.cpu)


def test_two_logical_processors_run_concurrently(spin: Spin) -> None:
    m = spin.m
    a, b = spin.proc.main, spin.proc.thread()
    call_a, _ = spin.start(a, 0, 30, spin.heap, slot=0)
    call_b, _ = spin.start(b, 1, 30, spin.heap + 8, slot=1)
    m.run_slice()
    assert call_a.inside and call_b.inside  # both in enclave mode at once
    assert len(spin.e.proc.machine.cpu.lps[0].secs.inside) == 2  # type: ignore[union-attr]
    assert m.wait(call_a) == 0 and m.wait(call_b) == 0
    assert m.stats.preemptions == 0


def test_mprotect_shoots_down_a_thread_inside(spin: Spin) -> None:
    m = spin.m
    call, run = spin.start(spin.proc.main, 0, 40, spin.heap)
    call.step(5)
    spin.proc.thread().mprotect(spin.heap, PAGE, 1)  # read-only under the running thread
    assert m.stats.tlb_shootdowns == 1
    assert m.wait(call) == 0
    assert (run.function, run.exception_vector, run.exception_error_code) == (uapi.ERESUME, 14, 0x7)


def test_process_exit_with_a_thread_inside(spin: Spin) -> None:
    call, run = spin.start(spin.proc.main, 0, 40, spin.heap)
    call.step(5)
    spin.proc.exit()
    assert call.done and not spin.m.calls
    assert not spin.m.cpu.epcm
