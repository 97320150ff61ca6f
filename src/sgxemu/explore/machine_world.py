"""The machine-level world: an honest kernel of a chosen design (`Machine(kernel=...)`), an
honest host following the runtime's script, and the adversaries that do not control the kernel:
a compromised enclave thread (the write bug, on a second thread of the process) and an
unprivileged co-process with its own /dev/sgx_enclave (EPC pressure, its own ioctls, and
attempts on the victim's enclave that the kernel must refuse).

Everything below the moves is sgxemu itself: the Linux model with the kernel variant's policy
(ioctls, may_map, PTE rights, fault handler, reclaimer, IPIs), the vDSO call state machine, the
scripted engine and the processor model. The host's requests go through the comparison tool's
per-ABI clients (`sgxemu.compare.runtime.CLIENTS`), as a runtime library would issue them.

States are restored by replay from the root (a machine is too large to copy): a state is its
path plus a fingerprint of the machine (EPCM, contents, hidden SECS state, LPs and TLBs, page
tables with arena-relative frames, VMAs, every attribute of the driver's enclave and page
records, EPC free and active lists, backing store, vDSO call and scripted thread positions,
host position and monitors). Two paths with equal fingerprints are merged.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from typing import Any

from .. import uapi
from ..arch.constants import PAGE_SHIFT, PAGE_SIZE
from ..exec.scripted import ScriptedEngine
from ..hw.memory import PTE_ADDR_MASK
from ..linux.load import secs_page
from ..linux.machine import Machine
from ..linux.mman import MAP_FIXED, MAP_SHARED, PROT_READ, PROT_WRITE
from ..linux.process import Process, Thread
from ..sign import EnclaveMeasurer, sign_sigstruct
from .adversaries import COPROCESS, HOST
from .layout import BASE, SIZE, TCS1, TCS2, PageSpec, base_pages, page_name
from .properties import VIOLATED, Event, monitors
from .runtimes import (
    BUG,
    MODT_TCS,
    MODT_TRIM,
    MPROTECT,
    OP_NAMES,
    REMOVE,
    RESTRICT,
    Runtime,
    make_program,
)
from .world import THREAD, _thread_image, install_tlb_logs, normalize_events, signing_key

Move = tuple[Any, ...]

_SIGS: dict[tuple[Any, ...], bytes] = {}
_GROW_PAGES = (0x9000, 0xA000)
CO_CHUNK = 16  # pages a co-process adds in one move
# A compromised host's extra system calls on a page of the runtime's domain: make it writable
# again (mprotect), or ask the kernel for all rights back (the restrict request with RWX: a
# relax on soft-restrict, an EMODPR that cannot add rights elsewhere).
_HOST_SYSCALLS = (("mprotect", PROT_READ | PROT_WRITE), ("mprotect", PROT_READ | PROT_WRITE | 4), ("restrict", 7))  # H, T: mapped RW so the kernel can EAUG them on fault


def _sigstruct(pages: Sequence[PageSpec]) -> bytes:
    key_t = tuple((p.offset, p.flags, p.data) for p in pages)
    sig = _SIGS.get(key_t)
    if sig is None:
        meas = EnclaveMeasurer(SIZE)
        for p in pages:
            meas.add_page(p.offset, p.data.ljust(PAGE_SIZE, b"\0"), p.flags)
        sig = sign_sigstruct(
            signing_key(), enclavehash=meas.mrenclave(), attributes=int(uapi.SGX_ATTR_MODE64BIT),
            xfrm=3, attributemask=0, xfrmmask=0, miscselect=0, miscmask=0, isvprodid=0, isvsvn=0,
        )
        _SIGS[key_t] = sig
    return sig


class MState:
    """A machine-world state: the path that reaches it and the machine's fingerprint."""

    __slots__ = ("path", "fp", "violated", "_hash")

    def __init__(self, path: tuple[Move, ...], fp: tuple[Any, ...], violated: tuple[str, ...]) -> None:
        self.path = path
        self.fp = fp
        self.violated = violated
        self._hash = hash(fp)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MState) and self.fp == other.fp


class _Client:
    """What the comparison tool's ABI clients need from a runtime: ioctl, proc, secinfo."""

    def __init__(self, world: MachineWorld) -> None:
        self.world = world

    @property
    def proc(self) -> Process:
        return self.world.proc

    @property
    def secinfo(self) -> int:
        return self.world.secinfo_addr

    def ioctl(self, step: str, request: int, arg: Any) -> None:
        self.world.proc.ioctl(self.world.fd, request, arg)


class MachineWorld:
    """One runtime under an honest kernel of design `kernel`, with honest-kernel adversaries."""

    def __init__(
        self,
        rt: Runtime,
        adversary: Sequence[str],
        kernel: str = "merged",
        properties: Sequence[str] | None = None,
        *,
        epc_pages: int | None = None,
        co_pages: int = 3,
        bug_calls: int = 2,
        host_syscalls: int = 1,
    ) -> None:
        self.runtime = rt
        self.caps = frozenset(adversary)
        self.kernel = kernel
        self.props = tuple(properties if properties is not None else rt.properties)
        self.pages = base_pages() + list(rt.pages)
        # Room for the enclave (SECS, VA page, its pages, two EAUGs) and 70 pages more: free
        # pages stay above the kernel's high watermark (64) until a co-process adds its own
        # pages, CO_CHUNK at a time; below the low watermark (32) ksgxd reclaims, the victim's
        # pages included.
        self.epc_pages = epc_pages if epc_pages is not None else len(self.pages) + 4 + 70
        self.co_pages = co_pages
        self.bug_budget = bug_calls  # the write bug fires at most this many times
        self.sys_budget = host_syscalls  # a compromised host's extra system calls
        self._initial = {p.offset: p.data.ljust(PAGE_SIZE, b"\0") for p in self.pages}
        self.monitors = monitors(self.props, self.initial_word)
        self.trace: list[Any] = []
        self.event_tap: list[Event] | None = None
        self.m: Machine | None = None
        self.builds = 0
        self._build()
        self.root = self._capture(())
        self._live: MState = self.root

    def initial_word(self, off: int) -> int:
        data = self._initial.get(off & ~(PAGE_SIZE - 1))
        return 0 if data is None else int.from_bytes(data[off & 0xFFF : (off & 0xFFF) + 8], "little")

    # -- building a fresh machine (the root) ---------------------------------------------------------
    def _build(self) -> None:
        if self.m is not None:
            self.m.close()
        self.builds += 1
        trace = self.trace
        trace.clear()
        program = make_program(self.runtime, trace.append)
        self.program = program
        m = Machine(
            epc_size=self.epc_pages * PAGE_SIZE, cpus=2, seed=0, kernel=self.kernel,
            engine=lambda cpu, lp, mem: ScriptedEngine(cpu, lp, mem, program, trace=trace),
            arena_size=16 << 20,
        )
        self.m = m
        install_tlb_logs(m.cpu)
        self.inc: dict[int, tuple[int, bool]] = {}
        self.next_inc = 1
        self._instrument(m)
        proc = m.spawn()
        self.proc = proc
        self.threads: list[Thread] = [proc.main, proc.thread(lp=1)]
        fd = proc.open("/dev/sgx_enclave", os.O_RDWR)
        self.fd = fd
        scratch = proc.alloc(3 * PAGE_SIZE)
        self.secinfo_addr = scratch + PAGE_SIZE
        proc.write(scratch, secs_page(BASE, SIZE))
        proc.ioctl(fd, uapi.SGX_IOC_ENCLAVE_CREATE, uapi.sgx_enclave_create(src=scratch))
        src = proc.alloc(PAGE_SIZE)
        for spec in self.pages:
            proc.write(src, spec.data.ljust(PAGE_SIZE, b"\0"))
            proc.write(self.secinfo_addr, bytes(uapi.sgx_secinfo(flags=spec.flags)))
            arg = uapi.sgx_enclave_add_pages(
                src=src, offset=spec.offset, length=PAGE_SIZE, secinfo=self.secinfo_addr,
                flags=uapi.SGX_PAGE_MEASURE,
            )
            proc.ioctl(fd, uapi.SGX_IOC_ENCLAVE_ADD_PAGES, arg)
        sig = _sigstruct(self.pages)
        proc.write(scratch + 2 * PAGE_SIZE, sig)
        proc.ioctl(fd, uapi.SGX_IOC_ENCLAVE_INIT, uapi.sgx_enclave_init(sigstruct=scratch + 2 * PAGE_SIZE))
        for spec in self.pages:
            proc.mmap(BASE + spec.offset, PAGE_SIZE, spec.prot, MAP_SHARED | MAP_FIXED, fd, 0)
        for off in _GROW_PAGES:
            if off not in self._initial:
                proc.mmap(BASE + off, PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, 0)
        from ..compare.runtime import CLIENTS

        self.client = CLIENTS[self.kernel](_Client(self))  # type: ignore[arg-type]
        self.pos = 0
        self.calls: list[Any] = [None, None]
        self.scripted = [False, False]  # the running call is the honest script's
        self.outcomes: list[str] = []
        self.co: Process | None = None
        self.co_fd = -1
        self.co_added = 0
        self.bugs = 0
        self.sys_calls = 0
        self.mon_states: tuple[object, ...] = tuple(mon[2] for mon in self.monitors)
        normalize_events(trace, m.cpu, m.cpu.lps[0], proc.mm.mem, self.inc)  # EADDs, warm-up

    def _instrument(self, m: Machine) -> None:
        """Observe the kernel's EADD/EAUG/EWB/ELDU/EREMOVE (incarnations, paging events)."""
        enc = m.encls
        cpu = m.cpu
        world = self
        orig_eadd, orig_eaug, orig_ewb, orig_eldu, orig_eremove = enc.eadd, enc.eaug, enc.ewb, enc.eldu, enc.eremove

        def owner_is_victim(index: int) -> bool:
            e = cpu.epcm.get(index)
            return e is not None and e.secs is not None and e.secs.baseaddr == BASE

        def eadd(addr: int, contents: bytes, secinfo_raw: bytes, secs: int, epc: int) -> int:
            ret = orig_eadd(addr, contents, secinfo_raw, secs, epc)
            if ret == 0:
                world.trace.append(("inc", cpu.epc.index(epc), (world.next_inc, True)))
                world.next_inc += 1
            return ret

        def eaug(addr: int, secs: int, epc: int) -> int:
            ret = orig_eaug(addr, secs, epc)
            if ret == 0:
                world.trace.append(("inc", cpu.epc.index(epc), (world.next_inc, False)))
                world.next_inc += 1
            return ret

        def ewb(epc: int, va_slot: int) -> tuple[int, bytes, bytes]:
            index = cpu.epc.index(epc)
            victim = owner_is_victim(index)
            e = cpu.epcm.get(index)
            lin = e.linaddr if e is not None else 0
            plain = cpu.epc.read(index, 0, PAGE_SIZE)
            out = orig_ewb(epc, va_slot)
            if out[0] in (0, 12) and victim and lin:
                n, acc = world._current_inc(index)
                world._paged[(lin, va_slot)] = (n, acc)
                world.trace.append(("ewb", lin - BASE, n, plain))
                world.trace.append(("inc", index, None))
            return out

        def eldu(addr: int, contents: bytes, pcmd: bytes, secs: int, epc: int, va_slot: int) -> int:
            ret = orig_eldu(addr, contents, pcmd, secs, epc, va_slot)
            if ret == 0:
                index = cpu.epc.index(epc)
                e = cpu.epcm.get(index)
                if e is not None and e.secs is not None and e.secs.baseaddr == BASE and e.linaddr:
                    n, acc = world._paged.pop((e.linaddr, va_slot), (0, False))
                    world.trace.append(("inc", index, (n, acc)))
                    world.trace.append(("eldu", e.linaddr - BASE, n, cpu.epc.read(index, 0, PAGE_SIZE)))
            return ret

        def eremove(epc: int) -> int:
            ret = orig_eremove(epc)
            if ret == 0:
                world.trace.append(("inc", cpu.epc.index(epc), None))
            return ret

        self._paged: dict[tuple[int, int], tuple[int, bool]] = {}

        enc.eadd = eadd  # type: ignore[method-assign]
        enc.eaug = eaug  # type: ignore[method-assign]
        enc.ewb = ewb  # type: ignore[method-assign]
        enc.eldu = eldu  # type: ignore[method-assign]
        enc.eremove = eremove  # type: ignore[method-assign]

    def _current_inc(self, index: int) -> tuple[int, bool]:
        """A page's incarnation now: the last pending "inc" event of this move, else the map."""
        for ev in reversed(self.trace):
            if ev[0] == "inc" and ev[1] == index:
                return ev[2] if ev[2] is not None else (0, False)
        return self.inc.get(index, (0, False))

    # -- moves ------------------------------------------------------------------------------------
    def moves(self) -> list[Move]:
        out: list[Move] = []
        script = self.runtime.script
        if self.calls[0] is not None:
            out.append(("step", 0))
        elif self.pos < len(script):
            out.append(("host",))
        if THREAD in self.caps:
            if self.calls[1] is not None:
                out.append(("step", 1))
            elif self.bugs < self.bug_budget:
                out.extend(("bug", t) for t in self.runtime.bug_targets)
        if COPROCESS in self.caps and self.co_added < self.co_pages:
            out.append(("co", "add"))
        if HOST in self.caps and self.sys_calls < self.sys_budget:
            for page in self.runtime.kernel_pages:
                out.extend(("sys", kind, page, value) for kind, value in _HOST_SYSCALLS)
        return out

    def apply(self, move: Move) -> str:
        kind = move[0]
        if kind == "host":
            return self._host()
        if kind == "step":
            return self._step(move[1])
        if kind == "bug":
            self.bugs += 1
            self._start(1, BUG, move[1])
            return "vDSO EENTER"
        if kind == "co":
            return self._co(move[1])
        if kind == "call":
            self._start(0, move[1], move[2])
            return "vDSO EENTER"
        if kind == "sys":
            return self._sys(move[1], move[2], move[3])
        raise ValueError(f"unknown move {move!r}")

    def _sys(self, kind: str, page: int, value: int) -> str:
        """A compromised host's system call on its own enclave (the kernel is honest)."""
        self.sys_calls += 1
        try:
            if kind == "mprotect":
                self.proc.mprotect(BASE + page, PAGE_SIZE, value)
            elif kind == "restrict":
                self.client.restrict(page, PAGE_SIZE, value)
            elif kind == "mmap":
                self.proc.mmap(BASE + page, PAGE_SIZE, value, MAP_SHARED | MAP_FIXED, self.fd, 0)
        except OSError as e:
            return errno.errorcode.get(e.errno or 0, str(e.errno))
        return "ok"

    def _start(self, who: int, op: int, arg: int, scripted: bool = False) -> None:
        self.scripted[who] = scripted
        run = uapi.sgx_enclave_run()
        run.tcs = BASE + (TCS1 if who == 0 else TCS2)
        t = self.threads[who]
        self.calls[who] = t.start_enclave_call(op, BASE + arg if arg else 0, 0, uapi.EENTER, 0, 0, run)

    def _step(self, who: int) -> str:
        call = self.calls[who]
        assert call is not None
        m = self.m
        assert m is not None
        try:
            call.step(1)
        except RuntimeError as e:  # the vDSO model's livelock guard: the fault never resolves
            m.abort_call(call)
            self.calls[who] = None
            if who == 0 and self.scripted[0]:
                self.pos = len(self.runtime.script)  # the runtime is stuck for good
                self.outcomes.append("hung")
            return f"hung ({e})"
        if not call.done:
            return "ok"
        if call in m.calls:
            m.calls.remove(call)
        if call.thread.call is call:
            call.thread.call = call.parent
        self.calls[who] = None
        run = call.run
        if call.error is not None:
            what = f"signal {type(call.error).__name__}"
        elif run.function == uapi.EEXIT:
            what = "EEXIT"
        else:
            what = f"exception vector {run.exception_vector} code {run.exception_error_code:#x}"
        if who == 0 and self.scripted[0]:
            self.pos += 1
            self.outcomes.append(what)
        return what

    def _host(self) -> str:
        action = self.runtime.script[self.pos]
        kind = action[0]
        if kind == "ecall":
            op, arg = action[1], action[2]
            assert isinstance(op, int) and isinstance(arg, int)
            self._start(0, op, arg, scripted=True)
            return "vDSO EENTER"
        page, value = action[1], action[2]
        assert isinstance(page, int) and isinstance(value, int)
        self.pos += 1
        try:
            if kind == RESTRICT:
                self.client.restrict(page, PAGE_SIZE, value)
            elif kind == MPROTECT:
                self.proc.mprotect(BASE + page, PAGE_SIZE, value)
            elif kind == MODT_TRIM:
                self.client.modify_type(page, PAGE_SIZE, 4)
            elif kind == MODT_TCS:
                self.client.modify_type(page, PAGE_SIZE, 1)
            elif kind == REMOVE:
                self.client.remove(page, PAGE_SIZE)
        except OSError as e:
            what = errno.errorcode.get(e.errno or 0, str(e.errno))
            self.outcomes.append(what)
            return what
        self.outcomes.append("ok")
        return "ok"

    def _co(self, what: str) -> str:
        """The co-process: its own enclave, CO_CHUNK pages per "add" (EPC pressure). It has no
        handle on the victim's enclave (fds are per process); "ioctl-victim" and "map-victim"
        show what it gets when it tries (not explored: they change nothing)."""
        m = self.m
        assert m is not None
        if self.co is None:
            co = self.co = m.spawn()
            self.co_fd = co.open("/dev/sgx_enclave", os.O_RDWR)
            scratch = co.alloc(2 * PAGE_SIZE)
            self.co_scratch = scratch
            co.write(scratch, secs_page(0x20_0000_0000, 1 << 20))
            co.ioctl(self.co_fd, uapi.SGX_IOC_ENCLAVE_CREATE, uapi.sgx_enclave_create(src=scratch))
            self.co_src = co.alloc(CO_CHUNK * PAGE_SIZE)
        co = self.co
        try:
            if what == "add":
                src = self.co_src
                co.write(self.co_scratch + PAGE_SIZE, bytes(uapi.sgx_secinfo(flags=0x203)))
                arg = uapi.sgx_enclave_add_pages(
                    src=src, offset=self.co_added * CO_CHUNK * PAGE_SIZE, length=CO_CHUNK * PAGE_SIZE,
                    secinfo=self.co_scratch + PAGE_SIZE, flags=0,
                )
                self.co_added += 1
                co.ioctl(self.co_fd, uapi.SGX_IOC_ENCLAVE_ADD_PAGES, arg)
                return "ok"
            if what == "ioctl-victim":
                # The victim's fd number means nothing in another process (or names its own).
                remove = uapi.sgx_enclave_remove_pages(offset=0, length=PAGE_SIZE)
                co.ioctl(self.fd, uapi.SGX_IOC_ENCLAVE_REMOVE_PAGES, remove)
                return "ok"
            if what == "map-victim":
                co.mmap(BASE, PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, self.co_fd, 0)
                return "ok"
        except OSError as e:
            return errno.errorcode.get(e.errno or 0, str(e.errno))
        raise ValueError(what)

    # -- states -----------------------------------------------------------------------------------
    def step(self, move: Move) -> tuple[MState, str]:
        assert self.m is not None
        for lp in self.m.cpu.lps:
            lp.tlb.mark()  # type: ignore[attr-defined]
        outcome = self.apply(move)
        who = move[1] if move[0] == "step" else 0
        events = normalize_events(self.trace, self.m.cpu, self.m.cpu.lps[who], self.proc.mm.mem, self.inc)
        if self.event_tap is not None:
            self.event_tap.extend(events)
        if events:
            new = []
            for (_, update, _), st in zip(self.monitors, self.mon_states, strict=True):
                if st is not VIOLATED:
                    for ev in events:
                        st = update(st, ev)
                        if st is VIOLATED:
                            break
                new.append(st)
            self.mon_states = tuple(new)
        state = self._capture((*self._live.path, move))
        self._live = state
        return state, outcome

    def reset(self) -> MState:
        self.restore(self.root)
        return self.root

    def restore(self, state: MState) -> None:
        live = self._live
        if live is state or live.path == state.path:
            self._live = state
            return
        n = len(live.path)
        if state.path[:n] != live.path:
            self._build()
            self._live = self.root
        for move in state.path[len(self._live.path):]:
            self.step(move)
        self._live = state

    def violated(self, state: MState) -> list[str]:
        return list(state.violated)

    def _capture(self, path: tuple[Move, ...]) -> MState:
        violated = tuple(name for (name, _, _), st in zip(self.monitors, self.mon_states, strict=True) if st is VIOLATED)
        return MState(path, self._fingerprint(), violated)

    def _fingerprint(self) -> tuple[Any, ...]:
        m = self.m
        assert m is not None
        cpu = m.cpu
        buf = cpu.epc.buffer
        pages = []
        for index in sorted(cpu.epcm):
            e = cpu.epcm[index]
            off = index << PAGE_SHIFT
            pages.append((index, e.pt, e.perms, e.state, e.linaddr, e.epoch,
                          e.secs.eid if e.secs is not None else 0, buf[off : off + PAGE_SIZE]))
        secs = tuple((s.eid, s.chldcnt, tuple(sorted(s.inside.items())), s.epoch, s.attributes)
                     for s in cpu.enclaves())
        lps = tuple((lp.enclave_mode, lp.tcs_index, lp.ssa_frame_lin, tuple(sorted(lp.tlb.items())))
                    for lp in cpu.lps)
        procs = tuple(_proc_fp(p) for p in m.processes.values())
        epc = m.epc
        kernel = (
            epc.nr_free_pages, epc._next_fresh, tuple(p.index for p in epc._freed),
            tuple(p.index for p in epc.active), cpu.paging_version,
        )
        threads = []
        for i, t in enumerate(self.threads):
            call = self.calls[i]
            eng = t._engine
            cstate = None if call is None else (call.state, call.leaf, call.pending is not None, self.scripted[i])
            th = None
            if isinstance(eng, ScriptedEngine) and eng._thread is not None:
                th = _thread_image(eng._thread)
            regs = tuple(eng.regs.values) if isinstance(eng, ScriptedEngine) else ()
            threads.append((cstate, th, regs))
        susp = tuple(sorted(((k[1], k[2], k[3]), _thread_image(th)) for k, th in self.program.suspended.items()))
        host = (self.pos, tuple(self.outcomes), self.co_added, self.co is not None, self.bugs, self.sys_calls)
        return (tuple(pages), secs, lps, procs, kernel, tuple(threads), susp, host, self.mon_states,
                tuple(sorted(self.inc.items())))

    def describe(self, move: Move) -> str:
        kind = move[0]
        if kind == "host":
            return "host: next step of the runtime's script"
        if kind == "step":
            return f"enclave {'main' if move[1] == 0 else 'bug'} thread: one step (vDSO, kernel faults)"
        if kind == "bug":
            return f"host: EENTER TCS2 -> {OP_NAMES[BUG]}({page_name(move[1])}) [bug thread]"
        if kind == "call":
            target = f"({page_name(move[2])})" if move[2] else ""
            return f"compromised host: ECALL {OP_NAMES.get(move[1], move[1])}{target} (out of script)"
        if kind == "sys":
            what = {"mprotect": f"mprotect({page_name(move[2])}, {_prot(move[3])})",
                    "restrict": f"restrict request({page_name(move[2])}, {_prot(move[3])})"}.get(move[1], str(move))
            return f"compromised host: {what}"
        return f"co-process: {move[1]} {CO_CHUNK} pages to its own enclave"

    def describe_host(self, index: int) -> str:
        action = self.runtime.script[index]
        if action[0] == "ecall":
            arg = action[2]
            target = f"({page_name(arg)})" if isinstance(arg, int) and arg else ""
            return f"host: ECALL {OP_NAMES.get(action[1], action[1])}{target}"  # type: ignore[call-overload]
        kind, page, value = action[0], action[1], action[2]
        assert isinstance(page, int) and isinstance(value, int)
        if kind == RESTRICT:
            return f"host: restrict request({page_name(page)}, {_prot(value)})"
        if kind == MPROTECT:
            return f"host: mprotect({page_name(page)}, {_prot(value)})"
        if kind in (MODT_TRIM, MODT_TCS):
            return f"host: modify-type request({page_name(page)}, {'TRIM' if kind == MODT_TRIM else 'TCS'})"
        return f"host: remove request({page_name(page)})"

    def close(self) -> None:
        if self.m is not None:
            self.m.close()
            self.m = None


def _prot(value: int) -> str:
    return "".join(c if value & b else "-" for c, b in (("R", 1), ("W", 2), ("X", 4)))


def _proc_fp(p: Process) -> tuple[Any, ...]:
    mem = p.mm.mem
    base = getattr(mem, "arena_base", 0)
    ptes = []
    for page, pte in sorted(mem.ptes.items()):
        frame = pte & PTE_ADDR_MASK
        if base <= frame < base + getattr(mem, "arena_size", 0):
            pte = (pte & ~PTE_ADDR_MASK) | ((frame - base) << 1)  # arena-relative (tagged)
        ptes.append((page, pte))
    vmas = tuple((v.start, v.end, v.flags) for v in p.mm.vmas)
    encls = []
    for fd, f in sorted(p.fds.items()):
        encl = f.private_data
        if encl is None or not hasattr(encl, "page_array"):
            continue
        pages = tuple(sorted((k, _slots(pg)) for k, pg in encl.page_array.items()))
        backing = encl.backing
        bk = () if backing is None else (tuple(sorted(backing.contents.items())), tuple(sorted(backing.pcmd.items())))
        encls.append((fd, encl.flags, encl.page_cnt, encl.secs_child_cnt, _slots(encl.secs), pages,
                      tuple(va.slots for va in encl.va_pages), bk))
    return (p.pid, p.alive, tuple(ptes), vmas, tuple(encls))


def _slots(obj: Any) -> tuple[Any, ...]:
    """Every attribute of a driver page record, references reduced to identities that matter."""
    out = []
    names = getattr(type(obj), "__slots__", ()) or tuple(vars(obj))
    for name in names:
        if name == "encl":
            continue
        value = getattr(obj, name, None)
        if name in ("epc_page",):
            value = None if value is None else value.index
        elif name == "va_page":
            value = None if value is None else value.epc_page.index
        elif not isinstance(value, (int, str, bytes, type(None), bool)):
            value = repr(value)
        out.append((name, value))
    return tuple(out)
