"""__vdso_sgx_enter_enclave (arch/x86/entry/vdso/vsgx.S) and the kernel paths it relies on.

One ENCLU instruction in the vDSO is both the EENTER/ERESUME point and the AEP. Around it:
the leaf and `run.reserved` checks, the exception fixup (extable.c: every trap on that ENCLU
except #DB and #BP lands in the vDSO's handler, with trap number, error code and address in
RDI/RSI/RDX), the user handler loop, and the kernel's own handling of the #PF that caused an
AEX: a fault the kernel resolves (ELDU, EAUG) is followed by ERESUME at the AEP and is
invisible; an SGX-flagged or unresolvable one is reported through `struct sgx_enclave_run`.

An `EnclaveCall` is that function as a state machine the machine steps, so several threads can
be inside enclaves at once and an IPI can interrupt one of them between slices.
"""

from __future__ import annotations

import ctypes
import errno
from typing import TYPE_CHECKING

from .. import uapi
from ..arch.constants import PAGE_MASK, EncluLeaf, Vector
from ..exec.engine import EngineExit, ExitKind
from ..hw.faults import PageFault, SgxFault
from ..hw.regs import Reg
from .errors import SEGV_MAPERR, SIGSEGV, SIGTRAP
from .fault import do_user_addr_fault
from .process import VDSO_ENCLU

if TYPE_CHECKING:
    from .process import Thread

EENTER = int(EncluLeaf.EENTER)
ERESUME = int(EncluLeaf.ERESUME)
EEXIT = int(EncluLeaf.EEXIT)
_RESERVED = slice(40, 256)
_NO_RESERVED = bytes(256 - 40)  # run.reserved must be all zero
_SLICE, _AEX, _EEXIT_EXIT = ExitKind.SLICE, ExitKind.AEX, ExitKind.EEXIT
_MASK64 = 0xFFFF_FFFF_FFFF_FFFF
_RAX, _RCX, _RDX, _RBX, _RSP, _RBP, _RSI, _RDI, _R8, _R9, _RIP = (
    Reg.RAX, Reg.RCX, Reg.RDX, Reg.RBX, Reg.RSP, Reg.RBP, Reg.RSI, Reg.RDI, Reg.R8, Reg.R9,
    Reg.RIP,
)  # fmt: skip
_NOT_FIXED_UP = (int(Vector.DB), int(Vector.BP))  # fixup_vdso_exception (extable.c)
_LIVELOCK = 1000  # identical resolved faults in a row: the model is stuck (a bug, not Linux)

# States of a call.
_VALIDATE, _ENCLU, _RUN, _EXIT, _DONE = range(5)


def _s32(value: int) -> int:
    value &= 0xFFFF_FFFF
    return value - (1 << 32) if value & 0x8000_0000 else value


class EnclaveCall:
    """One __vdso_sgx_enter_enclave invocation by a thread."""

    __slots__ = (
        "thread", "machine", "engine", "parent", "busy", "run", "leaf", "state",
        "done", "result", "pending", "error", "entries", "_last_fault", "_repeats",
    )  # fmt: skip

    def __init__(
        self, thread: Thread, rdi: int, rsi: int, rdx: int, function: int, r8: int, r9: int,
        run: uapi.sgx_enclave_run,
    ) -> None:
        self.thread = thread
        self.machine = thread.machine
        # The thread's engine is made once and kept for its life: look it up once per call.
        self.engine = engine = thread.engine
        self.parent = thread.call  # a call made from this thread's user handler nests
        self.busy = False  # being stepped (its user handler may be running)
        self.run = run
        self.leaf = function & 0xFFFF_FFFF  # %ecx -> %eax
        self.state = _VALIDATE
        self.done = False  # state == _DONE, kept as a flag: the scheduler tests it per step
        self.result: int | None = None
        self.pending: EngineExit | None = None  # an AEX forced from outside (IPI, preemption)
        self.error: BaseException | None = None  # a signal the vDSO does not fix up
        self.entries = 0
        self._last_fault: tuple[int, int] | None = None
        self._repeats = 0
        regs = engine.regs
        values = regs.get_all()
        values[_RDI] = rdi & _MASK64
        values[_RSI] = rsi & _MASK64
        values[_RDX] = rdx & _MASK64
        values[_R8] = r8 & _MASK64
        values[_R9] = r9 & _MASK64
        # The vDSO frame on the thread's stack: return address, saved RBP and RBX.
        values[_RSP] = (thread.stack_top - 64) & _MASK64
        values[_RBP] = (thread.stack_top - 48) & _MASK64
        regs.set_all(values)

    @property
    def inside(self) -> bool:
        """The thread is in enclave mode on its logical processor (between slices)."""
        return self.state == _RUN and self.pending is None

    def abort(self) -> None:
        self._finish(0)

    def _finish(self, result: int) -> None:
        self.result = result
        self.state = _DONE
        self.done = True
        m = self.machine
        if m.tracer is not None:
            m.tracer.vdso_return(self, result)
        m.kernel_exit(self.thread)

    def step(self, budget: int | None) -> None:
        """Advance until the call is done or the thread's slice ends inside the enclave."""
        self.busy = True
        try:
            self._step(budget)
        finally:
            self.busy = False

    def _step(self, budget: int | None) -> None:
        while self.state != _DONE:
            if self.state == _VALIDATE:
                self._validate()
            elif self.state == _ENCLU:
                self._enclu()
            elif self.state == _RUN:
                if not self._run(budget):
                    return
            else:
                self._exit()

    # .Lenter_enclave
    def _validate(self) -> None:
        if not EENTER <= self.leaf <= ERESUME:
            self._finish(-errno.EINVAL)
            return
        if bytes(self.run)[_RESERVED] != _NO_RESERVED:
            self._finish(-errno.EINVAL)
            return
        regs = self.engine.regs
        values = regs.get_all()
        values[_RAX] = self.leaf
        values[_RBX] = self.run.tcs  # (a c_uint64 field)
        values[_RCX] = VDSO_ENCLU  # the AEP is the ENCLU itself
        values[_RIP] = VDSO_ENCLU
        regs.set_all(values)
        self.state = _ENCLU

    # .Lenclu_eenter_eresume
    def _enclu(self) -> None:
        m = self.machine
        engine = self.engine
        m.claim_lp(self.thread)
        try:
            m.cpu.enclu(engine.lp, engine.regs, engine.mem)
        except SgxFault as fault:
            self._exception(fault, aex=False)
            return
        self.entries += 1
        self.state = _RUN

    def _run(self, budget: int | None) -> bool:
        engine = self.engine
        if self.pending is not None:
            ex, self.pending = self.pending, None
        else:
            ex = engine.run(budget)
        kind = ex.kind
        if kind is _SLICE:
            return False
        if kind is _AEX:
            self.machine.stats.aexes += 1
        if kind is _EEXIT_EXIT:
            # EEXIT lands after the ENCLU ("unless the enclave is doing something fancy").
            self.run.function = EEXIT
            self.state = _EXIT
            return True
        if ex.event is None:
            self.state = _ENCLU  # an interrupt: back at the AEP, ERESUME
            return True
        self._exception(ex.event, aex=True)
        return True

    def _exception(self, fault: SgxFault, aex: bool) -> None:
        """A trap at the vDSO's ENCLU: the kernel handles it, or the vDSO fixup reports it."""
        addr = 0
        if isinstance(fault, PageFault):
            t = self.thread
            m = self.machine
            # After an AEX the OS sees the faulting page only (the low 12 bits are cleared).
            addr = fault.addr & PAGE_MASK if aex else fault.addr
            sig = do_user_addr_fault(m, t, addr, fault.error_code)
            m.fault_exit(t)
            if sig is None:
                key = (addr, fault.error_code)
                self._repeats = self._repeats + 1 if key == self._last_fault else 0
                self._last_fault = key
                if self._repeats > _LIVELOCK:
                    raise RuntimeError(f"the fault at {addr:#x} ({fault.error_code:#x}) never resolves")
                self.state = _ENCLU  # retry the ENCLU: ERESUME after an AEX, else the leaf
                return
        vector = int(fault.vector)
        if vector in _NOT_FIXED_UP:
            self.error = SIGTRAP(addr)
            self._finish(0)
            return
        regs = self.engine.regs
        self.run.function = regs[Reg.RAX] & 0xFFFF_FFFF
        self.run.exception_vector = vector
        self.run.exception_error_code = fault.error_code & 0xFFFF
        self.run.exception_addr = addr
        regs[Reg.RDI] = vector
        regs[Reg.RSI] = fault.error_code
        regs[Reg.RDX] = addr
        self._last_fault = None
        self.state = _EXIT

    # .Lhandle_exit
    def _exit(self) -> None:
        t = self.thread
        run = self.run
        if not run.user_handler:
            self._finish(0)
            return
        handler = t.process.callbacks.get(run.user_handler)
        if handler is None:
            self.error = SIGSEGV(run.user_handler, SEGV_MAPERR)  # a call through a bad pointer
            self._finish(0)
            return
        regs = self.engine.regs
        rsp = regs[Reg.RSP]
        ret = _s32(
            handler(
                _signed(regs[Reg.RDI]), _signed(regs[Reg.RSI]), _signed(regs[Reg.RDX]),
                _signed(rsp), _signed(regs[Reg.R8]), _signed(regs[Reg.R9]), run,
            )
        )
        regs[Reg.RSP] = rsp  # "undo the post-exit %rsp adjustment"
        if ret <= 0:
            self._finish(ret)
            return
        self.leaf = ret
        self.state = _VALIDATE


def _signed(value: int) -> int:
    """The handler's arguments are C longs."""
    return ctypes.c_long(value).value
