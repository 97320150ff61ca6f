"""A machine: one SGX processor, the Linux SGX subsystem, processes, and a deterministic
scheduler for threads inside enclaves.

`Machine(epc_size=..., sgx2=..., flc=..., cpus=..., seed=..., engine=..., kernel=...)`;
`spawn()` makes a process. `kernel` picks the driver design (`sgxemu.linux.variants`). `engine` chooses how enclave code runs: "native" (Unicorn), or any callable
`(cpu, lp, mem) -> Engine` (e.g. a scripted engine bound to a program).
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..exec.engine import Engine
from ..hw.lp import LogicalProcessor
from ..hw.memory import AddressSpace
from ..hw.processor import Processor, ProcessorConfig
from .driver import SgxDriver
from .encls import Encls
from .epc import SgxEpc
from .policy import Linux60
from .process import Process
from .reclaim import ksgxd, sgx_reclaim_pages
from .usermem import DEFAULT_ARENA
from .variants import kernel_policy

if TYPE_CHECKING:
    from .process import Thread
    from .tracehook import KernelTracer
    from .vdso import EnclaveCall
    from .vma import Mm

EngineFactory = Callable[[Processor, LogicalProcessor, AddressSpace], Engine]

DEFAULT_SLICE = 10_000  # instructions per turn when several threads are inside enclaves


@dataclass
class MachineStats:
    etracks: int = 0  # ETRACKs issued by the kernel
    ipi_rounds: int = 0  # on_each_cpu_mask calls (sgx_enclave_etrack, EWB slow path)
    ipis: int = 0  # CPUs targeted by those rounds
    ipi_aexes: int = 0  # threads an IPI forced out of an enclave
    tlb_shootdowns: int = 0  # threads a PTE change (zap, munmap, mprotect) forced out
    preemptions: int = 0  # threads forced out to share a logical processor
    reclaim_batches: int = 0
    pages_reclaimed: int = 0
    ksgxd_runs: int = 0
    aexes: int = 0  # asynchronous exits seen by vDSO calls (faults and interrupts)


def _resolve_engine(engine: str | EngineFactory | None) -> EngineFactory:
    if callable(engine):
        return engine
    name = engine or "native"
    module = importlib.import_module(f"sgxemu.exec.{name}")
    factory = getattr(module, "engine_factory", None) or getattr(module, "NativeEngine", None)
    if factory is None:
        raise ValueError(f"sgxemu.exec.{name} provides no engine factory")
    return factory  # type: ignore[no-any-return]


class Machine:
    """The emulated computer: processor, kernel, processes."""

    def __init__(
        self,
        epc_size: int = 128 << 20,
        sgx2: bool = True,
        flc: bool = True,
        cpus: int = 4,
        seed: int = 0,
        engine: str | EngineFactory | None = None,
        *,
        epc_sections: int = 1,
        policy: Linux60 | None = None,
        kernel: str = "merged",
        arena_size: int = DEFAULT_ARENA,
        slice_budget: int = DEFAULT_SLICE,
        ksgxd: bool = True,
        dev_noexec: bool = False,
    ) -> None:
        self.cpu = Processor(
            ProcessorConfig(
                epc_size=epc_size, epc_sections=epc_sections, sgx2=sgx2, flc=flc, cpus=cpus,
                seed=seed,
            )
        )
        # The driver design: "merged" (Linux >= 6.0) or a 2021-22 variant (linux/variants).
        self.policy = policy if policy is not None else kernel_policy(kernel)
        self.stats = MachineStats()
        self.encls = Encls(self.cpu)
        self.epc = SgxEpc(self.cpu)
        self.epc.reclaim_pages = lambda: sgx_reclaim_pages(self)
        self.epc.wake_ksgxd = self._wake_ksgxd
        self.epc.cond_resched = self.cond_resched
        self.driver = SgxDriver(self)
        self.processes: dict[int, Process] = {}
        self.calls: list[EnclaveCall] = []
        self.arena_size = arena_size
        self.slice_budget = slice_budget
        self._engine_spec = engine
        self._engine_factory: EngineFactory | None = None
        self._next_pid = 100
        self._ksgxd_woken = False
        self.ksgxd_enabled = ksgxd  # False: a starved ksgxd (only direct reclaim frees pages)
        self.dev_noexec = dev_noexec  # /dev mounted noexec: no PROT_EXEC enclave mappings
        self.last_einit_error = 0
        # Test hook: called at the kernel's cond_resched() points with the current thread
        # (e.g. to issue a concurrent ioctl and see EBUSY, or to post a signal).
        self.on_resched: Callable[[Thread | None], None] | None = None
        # Optional event recorder (sgxemu.trace): system calls, user faults, vDSO returns.
        # `sgxemu.trace.Tracer.attach` sets it together with `cpu.tracer`.
        self.tracer: KernelTracer | None = None

    def __repr__(self) -> str:
        return f"Machine(epc={self.cpu.epc.npages} pages, free={self.epc.nr_free_pages})"

    # -- processes --------------------------------------------------------------------------------
    def spawn(self, *, mm: Mm | None = None) -> Process:
        """A new process; `mm` replaces its address space (the preload's host memory)."""
        pid = self._next_pid
        self._next_pid += 1
        proc = Process(self, pid, self.arena_size, mm=mm)
        self.processes[pid] = proc
        return proc

    def make_engine(self, lp: LogicalProcessor, mem: AddressSpace) -> Engine:
        if self._engine_factory is None:
            self._engine_factory = _resolve_engine(self._engine_spec)
        return self._engine_factory(self.cpu, lp, mem)

    def close(self) -> None:
        """Every process exits; the EPC is then empty."""
        for proc in list(self.processes.values()):
            proc.exit()
        self.cpu.close()

    def __enter__(self) -> Machine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- kernel services --------------------------------------------------------------------------
    def etrack(self, secs_pa: int) -> int:
        self.stats.etracks += 1
        return self.encls.etrack(secs_pa)

    def on_each_cpu_mask(self, cpus: set[int]) -> None:
        """IPIs (sgx_ipi_cb does nothing): a thread inside an enclave there takes an AEX."""
        self.stats.ipi_rounds += 1
        self.stats.ipis += len(cpus)
        for lp in sorted(cpus):
            if self._interrupt_lp(lp):
                self.stats.ipi_aexes += 1

    def flush_tlb_mm(self, proc: Process) -> None:
        """A TLB shootdown after PTE changes: IPIs to the CPUs running the mm."""
        for t in proc.threads:
            if self._interrupt(t):
                self.stats.tlb_shootdowns += 1

    def zap_vma_ptes(self, proc: Process, addr: int) -> None:
        mem = proc.mm.mem
        if mem.ptes.pop(addr >> 12, 0):
            self.flush_tlb_mm(proc)

    def _interrupt(self, t: Thread) -> bool:
        """Force an AEX on a thread that is inside an enclave between slices."""
        call = t.call
        if call is None or not call.inside:
            return False
        call.pending = t.engine.interrupt()
        return True

    def _interrupt_lp(self, lp: int) -> bool:
        return any(call.thread.lp == lp and self._interrupt(call.thread) for call in self.calls)

    def claim_lp(self, t: Thread) -> None:
        """Before `t` enters: a thread of another call inside on the same LP is preempted."""
        for call in self.calls:
            other = call.thread
            if other is not t and other.lp == t.lp and self._interrupt(other):
                self.stats.preemptions += 1
                return

    def cond_resched(self, thread: Thread | None) -> None:
        if self.on_resched is not None:
            self.on_resched(thread)

    def _wake_ksgxd(self) -> None:
        self._ksgxd_woken = True

    def kernel_exit(self, thread: Thread | None) -> None:
        """The end of a system call or of a vDSO call: ksgxd, if woken, runs now."""
        if self._ksgxd_woken and self.ksgxd_enabled:
            self._ksgxd_woken = False
            self.stats.ksgxd_runs += 1
            ksgxd(self)

    def fault_exit(self, thread: Thread | None) -> None:
        """The end of a page fault. ksgxd runs here only if the fault could not get a page
        (-EBUSY -> VM_FAULT_NOPAGE): on hardware the thread would touch the page it just got
        (setting the accessed bit) long before ksgxd scanned it, so running the reclaimer
        right after every fault would evict what the retry needs."""
        if self.epc.starved:
            self.epc.starved = False
            self.kernel_exit(thread)

    # -- scheduling -------------------------------------------------------------------------------
    def wait(self, call: EnclaveCall) -> int:
        """Run the active calls round robin until `call` is done; its return value."""
        while not call.done:
            self.run_slice()
        if call.error is not None:
            raise call.error
        assert call.result is not None
        return call.result

    def run_slice(self, budget: int | None = None) -> None:
        """Give every active call one turn (a slice when several are active, or `budget`
        instructions each when given: a thread may then stop inside its enclave)."""
        if budget is None:
            budget = self.slice_budget if len(self.calls) > 1 else None
        for call in list(self.calls):
            if call.done or call.busy:
                continue  # busy: its user handler is what is running now
            try:
                call.step(budget)
            except BaseException:
                # An emulator error (not an architectural event): leave the machine usable.
                with contextlib.suppress(Exception):
                    self.abort_call(call)
                raise
            if call.done:
                self._retire(call)

    def _retire(self, call: EnclaveCall) -> None:
        if call in self.calls:
            self.calls.remove(call)
        if call.thread.call is call:
            call.thread.call = call.parent

    def abort_call(self, call: EnclaveCall) -> None:
        """The thread is killed: out of the enclave first (an AEX), then gone."""
        self._interrupt(call.thread)
        call.abort()
        self._retire(call)
