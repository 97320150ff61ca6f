"""Enclave code written in Python, run step by step against the processor model.

A `ScriptedProgram` maps entry offsets (OENTRY, relative to the enclave base) to generator
functions `fn(ctx)`. EENTER at base+OENTRY starts the function for that offset; every `yield`
ends one step, the unit `run(budget)` counts and the unit of restart. Each step first fetches
at the thread's notional RIP (an executable enclave page), and every load, store and ENCLU goes
through `hw.access` and `Processor.enclu`: the same checks and the same per-LP TLB model as
native code.

A fault in a step is an AEX. Python cannot rewind a generator, so the faulting one is dropped
and, after ERESUME, rebuilt by replay: the function is run again from its entry with the logged
results of its loads and ENCLUs (no hardware access) up to the faulting step, which then runs
for real, as the faulting instruction would. Programs must therefore be deterministic functions
of what `ctx` returns, must not catch `SgxFault`, and should keep one faulting access per step
to restart exactly one instruction. A thread suspended by an AEX is kept per processor, keyed by
(processor, EID, TCS, SSA frame) in the program, so ERESUME picks it up on any logical
processor whose engine runs the same program object, and nested AEXs stack.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..arch.constants import PAGE_SIZE, EncluLeaf
from ..hw.access import EXECUTE, READ, WRITE, enclave_access, enclave_read, enclave_write
from ..hw.enclu.aex import aex
from ..hw.faults import InvalidOpcode, SgxFault, SgxUsageError
from ..hw.regs import Reg, Registers
from .engine import EngineExit, ExitKind

if TYPE_CHECKING:
    from ..hw.lp import LogicalProcessor
    from ..hw.memory import AddressSpace
    from ..hw.processor import Processor

__all__ = [
    "EntryFn",
    "ScriptedContext",
    "ScriptedEngine",
    "ScriptedEntry",
    "ScriptedProgram",
    "StackFn",
    "Step",
    "TraceEvent",
]

Step = Generator[None, None, None]
EntryFn = Callable[["ScriptedContext"], Step]
StackFn = Callable[["ScriptedContext"], int]
TraceEvent = tuple[object, ...]

_MASK64 = (1 << 64) - 1
_OFF_MASK = PAGE_SIZE - 1
_LAST_U64 = PAGE_SIZE - 8  # last page offset where 8 bytes fit in one page
_U64 = struct.Struct("<Q")
# In-enclave leaves that never change CSSA. Any other (EDECCSSA) may lower it, which makes
# threads suspended at the frames above it stale.
_CSSA_NEUTRAL = frozenset(
    {
        EncluLeaf.EREPORT,
        EncluLeaf.EGETKEY,
        EncluLeaf.EEXIT,
        EncluLeaf.EACCEPT,
        EncluLeaf.EMODPE,
        EncluLeaf.EACCEPTCOPY,
    }
)
_SECINFO_SIZE = 64
_TARGETINFO_SIZE = 512
_REPORTDATA_SIZE = 64
_REPORT_SIZE = 432
_KEYREQUEST_SIZE = 512
_KEY_SIZE = 16


@dataclass(frozen=True)
class ScriptedEntry:
    """One entry point: its code and where its thread's enclave stack starts (the scratch area)."""

    fn: EntryFn
    stack: StackFn | None = None


class ScriptedProgram:
    """Enclave behaviour in Python: entry offset -> generator function.

    `stack(ctx)` gives the initial enclave stack pointer of a thread (a per-program convention,
    e.g. "the page below the TCS"); SECINFO, TARGETINFO and friends are built below it with
    checked stores, as native code builds them on its stack. `code_offset`, when given, is where
    the notional RIP sits (an executable page); otherwise it stays at the entry point.
    """

    def __init__(
        self,
        entries: Mapping[int, EntryFn | ScriptedEntry],
        *,
        stack: StackFn | None = None,
        code_offset: int | None = None,
    ) -> None:
        self.entries: dict[int, ScriptedEntry] = {}
        for offset, entry in entries.items():
            if not isinstance(entry, ScriptedEntry):
                entry = ScriptedEntry(entry)
            if entry.stack is None and stack is not None:
                entry = ScriptedEntry(entry.fn, stack)
            self.entries[offset] = entry
        self.code_offset = code_offset
        # Threads taken out by an AEX: (id(processor), EID, TCS, SSA frame) -> thread. Kept here,
        # not beside the processor, so dropping the program frees them (a thread holds its cpu).
        self.suspended: dict[tuple[int, int, int, int], _Thread] = {}


class ScriptedContext:
    """What a scripted thread sees: its entry registers, memory and ENCLU, all checked.

    Entry values (fixed for the life of the thread): `base`, `size` (ELRANGE), `entry`
    (base+OENTRY), `tcs` (RBX), `cssa` (RAX), `rcx` (the return address EENTER left),
    `rdi`, `rsi`, `rdx`, `r8`, `r9`, `ursp`/`urbp` (the untrusted stack) and `entry_regs`.
    `sp` is the thread's enclave stack pointer (None when the program declares no stack).
    """

    __slots__ = (
        "base",
        "size",
        "entry",
        "tcs",
        "cssa",
        "rcx",
        "rdi",
        "rsi",
        "rdx",
        "r8",
        "r9",
        "ursp",
        "urbp",
        "entry_regs",
        "sp",
        "_start_rip",
        "_rip",
        "_stack_fn",
        "_cpu",
        "_lp",
        "_mem",
        "_regs",
        "_epc",
        "_program",
        "_trace",
        "_log",
        "_pos",
        "_replaying",
        "_exited",
        "_faulted",
    )

    def __init__(
        self, engine: ScriptedEngine, entry: ScriptedEntry, code_offset: int | None
    ) -> None:
        regs = engine.regs
        secs = engine.lp.secs
        assert secs is not None
        self.base = secs.baseaddr
        self.size = secs.size
        self.entry = regs[Reg.RIP]
        self.tcs = regs[Reg.RBX]
        self.cssa = regs[Reg.RAX]
        self.rcx = regs[Reg.RCX]
        self.rdi = regs[Reg.RDI]
        self.rsi = regs[Reg.RSI]
        self.rdx = regs[Reg.RDX]
        self.r8 = regs[Reg.R8]
        self.r9 = regs[Reg.R9]
        self.ursp = regs[Reg.RSP]
        self.urbp = regs[Reg.RBP]
        self.entry_regs = tuple(regs[r] for r in Reg)
        self._start_rip = self.entry if code_offset is None else self.base + code_offset
        self._stack_fn = entry.stack
        self._log: list[object] = []
        self._replaying = False
        self._bind(engine)
        self._reset()

    # -- engine side ---------------------------------------------------------------------------
    def _bind(self, engine: ScriptedEngine) -> None:
        """Run on `engine` (an ERESUME may happen on another logical processor)."""
        self._cpu = engine.cpu
        self._lp = engine.lp
        self._mem = engine.mem
        self._regs = engine.regs
        self._epc = engine.cpu.epc
        self._program = engine.program
        self._trace = engine.trace

    def _reset(self) -> None:
        """Back to the state at entry (for a replay)."""
        self._rip = self._start_rip
        self.sp = self._stack_fn(self) if self._stack_fn is not None else None
        self._pos = 0
        self._exited = False
        self._faulted: SgxFault | None = None

    def _replayed(self) -> object:
        if self._pos >= len(self._log):
            raise SgxUsageError("scripted program is not deterministic: replay ran past its log")
        value = self._log[self._pos]
        self._pos += 1
        return value

    def _replayed_int(self) -> int:
        value = self._replayed()
        if not isinstance(value, int):
            raise SgxUsageError("scripted program is not deterministic: replay log mismatch")
        return value

    def _replayed_bytes(self) -> bytes:
        value = self._replayed()
        if not isinstance(value, bytes):
            raise SgxUsageError("scripted program is not deterministic: replay log mismatch")
        return value

    # -- state -----------------------------------------------------------------------------------
    @property
    def rax(self) -> int:
        """RAX at entry: CSSA."""
        return self.cssa

    @property
    def rbx(self) -> int:
        """RBX at entry: the TCS address."""
        return self.tcs

    @property
    def rip(self) -> int:
        """The notional RIP: where this thread's steps fetch."""
        return self._rip

    @property
    def replaying(self) -> bool:
        """True while the engine replays steps already executed (no hardware is touched)."""
        return self._replaying

    def jump(self, addr: int) -> None:
        """Move the notional RIP (the next steps fetch there)."""
        self._rip = addr & _MASK64

    def set_reg(self, reg: Reg, value: int) -> None:
        """Set a register of the thread (saved in the SSA by an AEX, like any register)."""
        if not self._replaying:
            self._regs[reg] = value

    # -- memory ---------------------------------------------------------------------------------
    def load(self, addr: int, size: int) -> bytes:
        """A checked data read (split at page boundaries, each page checked)."""
        if self._replaying:
            return self._replayed_bytes()
        try:
            data = enclave_read(self._cpu, self._lp, self._mem, addr, size)
        except SgxFault as fault:
            self._faulted = fault
            raise
        self._log.append(data)
        if self._trace is not None:
            self._trace.append(("load", addr, data))
        return data

    def store(self, addr: int, data: bytes) -> None:
        """A checked data write: every page is checked before any byte is written."""
        if self._replaying:
            return
        try:
            enclave_write(self._cpu, self._lp, self._mem, addr, bytes(data))
        except SgxFault as fault:
            self._faulted = fault
            raise
        if self._trace is not None:
            self._trace.append(("store", addr, bytes(data)))

    def load_u64(self, addr: int) -> int:
        """A checked 8-byte little-endian load."""
        if self._replaying:
            return self._replayed_int()
        if addr & _OFF_MASK > _LAST_U64:
            split = int.from_bytes(self.load(addr, 8), "little")
            self._log[-1] = split
            return split
        try:
            index = enclave_access(self._cpu, self._lp, self._mem, addr, READ)
        except SgxFault as fault:
            self._faulted = fault
            raise
        raw = self._epc.read(index, addr & _OFF_MASK, 8) if index >= 0 else self._mem.read(addr, 8)
        value: int = _U64.unpack(raw)[0]
        self._log.append(value)
        if self._trace is not None:
            self._trace.append(("load", addr, value))
        return value

    def store_u64(self, addr: int, value: int) -> None:
        """A checked 8-byte little-endian store."""
        if self._replaying:
            return
        data = _U64.pack(value & _MASK64)
        if addr & _OFF_MASK > _LAST_U64:
            self.store(addr, data)
            return
        try:
            index = enclave_access(self._cpu, self._lp, self._mem, addr, WRITE)
        except SgxFault as fault:
            self._faulted = fault
            raise
        if index >= 0:
            self._epc.write(index, addr & _OFF_MASK, data)
        else:
            self._mem.write(addr, data)
        if self._trace is not None:
            self._trace.append(("store", addr, data))

    # -- the enclave stack (the thread's scratch area) --------------------------------------------
    def _need_stack(self) -> int:
        if self.sp is None:
            raise SgxUsageError("this scripted entry declares no enclave stack (ScriptedProgram stack=)")
        return self.sp

    def alloca(self, size: int, align: int = 16) -> int:
        """Reserve `size` bytes below the stack pointer, aligned; returns their address."""
        self.sp = (self._need_stack() - size) & ~(align - 1)
        return self.sp

    def push(self, value: int) -> None:
        sp = self._need_stack() - 8
        self.store_u64(sp, value)
        self.sp = sp

    def pop(self) -> int:
        sp = self._need_stack()
        value = self.load_u64(sp)
        self.sp = sp + 8
        return value

    # -- ENCLU --------------------------------------------------------------------------------
    def enclu(self, leaf: int, rbx: int = 0, rcx: int = 0, rdx: int = 0) -> int:
        """ENCLU through `Processor.enclu` with the thread's registers; returns RAX."""
        if self._replaying:
            return self._replayed_int()
        regs = self._regs
        regs[Reg.RAX] = leaf
        regs[Reg.RBX] = rbx
        regs[Reg.RCX] = rcx
        regs[Reg.RDX] = rdx
        regs[Reg.RIP] = self._rip
        lp = self._lp
        try:
            self._cpu.enclu(lp, regs, self._mem)
        except SgxFault as fault:
            self._faulted = fault
            raise
        rax = regs[Reg.RAX]
        if not lp.enclave_mode:
            self._exited = True  # EEXIT: RIP is the target now
        else:
            regs[Reg.RIP] = self._rip  # the leaf advanced RIP past a notional instruction
            self._log.append(rax)
            if leaf not in _CSSA_NEUTRAL:
                _prune_stale(self._program, self._cpu, lp)
        if self._trace is not None:
            self._trace.append(("enclu", leaf, rax))
        return rax

    def _secinfo(self, flags: int) -> int:
        si = self.alloca(_SECINFO_SIZE, 64)
        self.store(si, _U64.pack(flags & _MASK64) + bytes(_SECINFO_SIZE - 8))
        return si

    def eaccept(self, addr: int, flags: int) -> int:
        """EACCEPT with a SECINFO built on the enclave stack; returns RAX (an SGX error code)."""
        sp = self._need_stack()
        rax = self.enclu(EncluLeaf.EACCEPT, self._secinfo(flags), addr)
        self.sp = sp
        return rax

    def emodpe(self, addr: int, flags: int) -> None:
        """EMODPE (no error code) with a SECINFO built on the enclave stack."""
        sp = self._need_stack()
        self.enclu(EncluLeaf.EMODPE, self._secinfo(flags), addr)
        self.sp = sp

    def eacceptcopy(self, dst: int, src: int, flags: int) -> int:
        """EACCEPTCOPY of enclave page `src` into pending page `dst`; returns RAX."""
        sp = self._need_stack()
        rax = self.enclu(EncluLeaf.EACCEPTCOPY, self._secinfo(flags), dst, src)
        self.sp = sp
        return rax

    def ereport(
        self, targetinfo: bytes = bytes(_TARGETINFO_SIZE), reportdata: bytes = bytes(_REPORTDATA_SIZE)
    ) -> bytes:
        """EREPORT with its three operands on the enclave stack; returns the 432-byte REPORT."""
        sp = self._need_stack()
        out = self.alloca(_REPORT_SIZE, 512)
        ti = self.alloca(_TARGETINFO_SIZE, 512)
        rd = self.alloca(_REPORTDATA_SIZE, 128)
        self.store(ti, bytes(targetinfo).ljust(_TARGETINFO_SIZE, b"\0"))
        self.store(rd, bytes(reportdata).ljust(_REPORTDATA_SIZE, b"\0"))
        self.enclu(EncluLeaf.EREPORT, ti, rd, out)
        report = self.load(out, _REPORT_SIZE)
        self.sp = sp
        return report

    def egetkey(self, keyrequest: bytes) -> tuple[int, bytes]:
        """EGETKEY with the KEYREQUEST on the enclave stack: (RAX, the 16-byte output)."""
        sp = self._need_stack()
        req = self.alloca(_KEYREQUEST_SIZE, 512)
        out = self.alloca(_KEY_SIZE, 16)
        self.store(req, bytes(keyrequest).ljust(_KEYREQUEST_SIZE, b"\0"))
        self.store(out, bytes(_KEY_SIZE))
        rax = self.enclu(EncluLeaf.EGETKEY, req, out)
        key = self.load(out, _KEY_SIZE)
        self.sp = sp
        return rax, key

    def eexit(self, target: int | None = None, *, rsp: int | None = None) -> None:
        """EEXIT to `target` (default: the return address EENTER left in RCX).

        RSP is set back to `rsp` (default: the untrusted RSP at entry) first, as a runtime's
        exit stub does.
        """
        self.set_reg(Reg.RSP, self.ursp if rsp is None else rsp)
        self.enclu(EncluLeaf.EEXIT, self.rcx if target is None else target)


class _Thread:
    """A scripted thread: its entry, context, generator (None: rebuild by replay) and log."""

    __slots__ = ("entry", "ctx", "gen", "steps")

    def __init__(self, entry: ScriptedEntry, ctx: ScriptedContext) -> None:
        self.entry = entry
        self.ctx = ctx
        self.gen: Step | None = entry.fn(ctx)
        if not isinstance(self.gen, Generator):
            raise SgxUsageError(f"scripted entry {entry.fn!r} is not a generator function")
        self.steps = 0  # steps completed (the replay length)


def _drop_frames_from(program: ScriptedProgram, key: tuple[int, int, int, int]) -> None:
    """Forget threads of this TCS saved at frame `key[3]` or above."""
    table = program.suspended
    for k in [k for k in table if k[:3] == key[:3] and k[3] >= key[3]]:
        del table[k]


def _prune_stale(program: ScriptedProgram, cpu: Processor, lp: LogicalProcessor) -> None:
    """After a leaf that may lower CSSA: threads saved at frame CSSA or above cannot resume."""
    secs = lp.secs
    if secs is None or lp.tcs_index < 0:
        return
    ossa = _U64.unpack(cpu.epc.read(lp.tcs_index, 16, 8))[0]
    cssa = struct.unpack("<I", cpu.epc.read(lp.tcs_index, 24, 4))[0]
    frame_lin = secs.baseaddr + ossa + cssa * secs.ssaframesize * PAGE_SIZE
    _drop_frames_from(program, (id(cpu), secs.eid, lp.tcs_lin, frame_lin))


class ScriptedEngine:
    """An `Engine` whose enclave code is a `ScriptedProgram` (one per logical processor).

    `trace`, when a list, receives one tuple per step, access, ENCLU and exit: a deterministic
    record of the run (linear addresses and values only).
    """

    def __init__(
        self,
        cpu: Processor,
        lp: LogicalProcessor,
        mem: AddressSpace,
        program: ScriptedProgram,
        *,
        regs: Registers | None = None,
        trace: list[TraceEvent] | None = None,
    ) -> None:
        self.cpu = cpu
        self.lp = lp
        self.mem = mem
        self.program = program
        self.trace = trace
        self._regs = regs if regs is not None else Registers()
        self._thread: _Thread | None = None

    @property
    def regs(self) -> Registers:
        return self._regs

    def flush_tlb(self) -> None:
        self.lp.tlb.clear()  # the LP's TLB is the only translation cache a scripted thread uses

    # -- entering --------------------------------------------------------------------------------
    def _frame_key(self) -> tuple[int, int, int, int]:
        lp = self.lp
        assert lp.secs is not None
        return id(self.cpu), lp.secs.eid, lp.tcs_lin, lp.ssa_frame_lin

    def _attach(self) -> _Thread:
        """The thread the processor just entered: a suspended one (ERESUME) or a new one."""
        key = self._frame_key()
        thread = self.program.suspended.pop(key, None)
        if thread is None:
            # EENTER into frame CSSA: anything recorded at this frame or above is stale.
            _drop_frames_from(self.program, key)
            secs = self.lp.secs
            assert secs is not None
            offset = self._regs[Reg.RIP] - secs.baseaddr
            entry = self.program.entries.get(offset)
            if entry is None:
                raise SgxUsageError(f"no scripted entry at enclave offset {offset:#x}")
            thread = _Thread(entry, ScriptedContext(self, entry, self.program.code_offset))
        else:
            thread.ctx._bind(self)
        self._thread = thread
        return thread

    def _replay(self, thread: _Thread) -> Step:
        """Rebuild a thread dropped by a fault: rerun its completed steps from the log."""
        ctx = thread.ctx
        ctx._reset()
        ctx._replaying = True
        try:
            gen = thread.entry.fn(ctx)
            for _ in range(thread.steps):
                gen.send(None)
        except StopIteration:
            raise SgxUsageError("scripted program is not deterministic: replay ended early") from None
        finally:
            ctx._replaying = False
        if ctx._pos != len(ctx._log):
            raise SgxUsageError("scripted program is not deterministic: replay log left over")
        thread.gen = gen
        return gen

    # -- running ---------------------------------------------------------------------------------
    def run(self, budget: int | None = None) -> EngineExit:
        lp = self.lp
        if not lp.enclave_mode:
            raise SgxUsageError("run() needs the thread inside an enclave (EENTER/ERESUME first)")
        thread = self._thread if self._thread is not None else self._attach()
        gen = thread.gen if thread.gen is not None else self._replay(thread)
        ctx = thread.ctx
        log = ctx._log
        regs, cpu, mem, trace = self._regs, self.cpu, self.mem, self.trace
        done = 0
        while budget is None or done < budget:
            rip = ctx._rip
            regs[Reg.RIP] = rip
            try:
                enclave_access(cpu, lp, mem, rip, EXECUTE)
            except SgxFault as fault:
                return self._aex(thread, fault, done)  # nothing ran: the generator is intact
            if trace is not None:
                trace.append(("step", lp.index, ctx.tcs, thread.steps, rip))
            mark = len(log)
            try:
                gen.send(None)
            except StopIteration:
                if not ctx._exited:
                    # Falling off the end of the program runs into a ud2.
                    del log[mark:]
                    thread.gen = None
                    return self._aex(thread, InvalidOpcode(), done)
            except SgxFault as fault:
                del log[mark:]
                thread.gen = None
                ctx._faulted = None
                return self._aex(thread, fault, done)
            except Exception as exc:
                if ctx._exited:
                    raise SgxUsageError("scripted enclave code ran after its EEXIT") from exc
                raise
            if ctx._faulted is not None:
                raise SgxUsageError(f"scripted program swallowed {ctx._faulted!r}")
            done += 1
            thread.steps += 1
            if ctx._exited:
                gen.close()
                self._thread = None
                if trace is not None:
                    trace.append(("exit", ExitKind.EEXIT.value, regs[Reg.RIP]))
                return EngineExit(ExitKind.EEXIT, None, done)
        return EngineExit(ExitKind.SLICE, None, done)

    def interrupt(self) -> EngineExit:
        if not self.lp.enclave_mode:
            raise SgxUsageError("interrupt() needs the thread inside an enclave")
        thread = self._thread if self._thread is not None else self._attach()
        return self._aex(thread, None, 0)

    def _aex(self, thread: _Thread, event: SgxFault | None, done: int) -> EngineExit:
        ctx = thread.ctx
        regs = self._regs
        regs[Reg.RIP] = ctx._rip  # the step is retried from here after ERESUME
        if ctx.sp is not None:
            regs[Reg.RSP] = ctx.sp
        self.program.suspended[self._frame_key()] = thread
        aex(self.cpu, self.lp, regs, event)
        self._thread = None
        if self.trace is not None:
            if event is None:
                self.trace.append(("exit", ExitKind.AEX.value, None, 0, 0))
            else:
                self.trace.append(
                    ("exit", ExitKind.AEX.value, int(event.vector), event.error_code, event.addr)
                )
        return EngineExit(ExitKind.AEX, event, done)
