"""The Python side of the preload library: one sgxemu `Machine` serving the host process.

The C library (sgxemu_preload.c) forwards every device call and every ENCLU here. The host
process is one emulated `Process` whose memory is the host's own (`HostMemory`): the driver
model, the fault handler, the reclaimer and the processor model are exactly those the Python
API uses; only the page table of untrusted memory is read from the host kernel.

Calls from C (all return an int; a negative value is -errno):

* `open(path, flags, host_fd)`, `close(host_fd)`, `dup(old, new)`, `ioctl(host_fd, request, arg)`
* `mmap(addr, length, prot, flags, host_fd, offset)` -> address, `munmap(addr, length)`,
  `mprotect(addr, length, prot)`, `forget(addr, length)` (a host mapping replaced an enclave one)
* `enclu(block)`: execute the ENCLU whose registers are in the thread's block, and whatever
  follows until control returns to host code: EEXIT, or an AEX the kernel hands back to user
  space (the vDSO's exception fixup, or a signal), or an AEX for a pending host signal.
* `patch_cpuid(path, base)`: the CPUID fallback (see docs/preload.md).
* `at_exit()`: the process exits; with SGXEMU_STATS set, write its counters (`preload.stats`).

Threads: each host thread gets its own model `Thread` (its own logical processor, round robin)
and its own engine (one Unicorn instance). One lock serializes the model; a thread running
enclave code holds it, and another thread that needs it stops that run at the next block
boundary (`uc_emu_stop`), so the first thread parks *inside* the enclave (where an IPI or a TLB
shootdown reaches it as on hardware) and the other proceeds.
"""

from __future__ import annotations

import bisect
import ctypes
import errno
import os
import struct
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, cast

from .. import uapi
from ..arch.constants import PAGE_MASK, PAGE_SIZE, Vector
from ..exec.engine import ExitKind
from ..hw.epc import MAP_NORESERVE  # the host's flag (its mmap module may lack it)
from ..hw.faults import PageFault, SgxFault
from ..hw.regs import Reg
from ..linux.errors import KernelError, Signal, oserror
from ..linux.fault import do_user_addr_fault
from ..linux.hostmem import HostMemory, HostMm
from ..linux.machine import Machine
from ..linux.mman import (
    MAP_ANONYMOUS,
    MAP_FIXED,
    MAP_FIXED_NOREPLACE,
    MAP_PRIVATE,
    MAP_TYPE,
    PROT_NONE,
    PROT_WRITE,
)
from ..linux.process import Process, Thread
from ..linux.usermem import UserMemory
from .config import PreloadConfig
from .stats import STATS_ENV, counters, write_stats

ABI_VERSION = 4
RESUME = 0
SIGNAL = 1
_AGAIN = -1  # internal: execute the ENCLU at RIP again (the vDSO's AEP)
_LIVELOCK = 1000
_DEBUG = bool(os.environ.get("SGXEMU_DEBUG"))

# struct sgxemu_block (sgxemu_preload.h)
B_SIGNO, B_SICODE, B_SIADDR, B_XSTATE = 20, 21, 22, 23
B_FX = 192
NGPR = 18
_GPRS = struct.Struct(f"<{NGPR}Q")


# si_code values (asm-generic/siginfo.h)
_SI_KERNEL = 0x80
_ILL_ILLOPN = 2
_FPE_INTDIV = 1
_FPE_FLTINV = 7
_BUS_ADRALN = 1
_TRAP_BRKPT = 1
_TRAP_TRACE = 2

_VOIDP = ctypes.c_void_p
_U64 = ctypes.c_uint64


class _Api(ctypes.Structure):
    """struct sgxemu_api (sgxemu_preload.h)."""

    _fields_ = [
        ("abi_version", _U64),
        ("vdso_enclu", _U64),
        ("vdso_fixup", _U64),
        ("vdso_base", _U64),
        ("cpuid_mode", _U64),
        ("host_mmap", _VOIDP),
        ("host_munmap", _VOIDP),
        ("host_mprotect", _VOIDP),
        ("set_ranges", _VOIDP),
        ("set_cpuid", _VOIDP),
        ("set_engine", _VOIDP),
        ("take_signal_exit", _VOIDP),
        ("patch_text", _VOIDP),
        ("add_patched", _VOIDP),
        ("uc_emu_stop", _VOIDP),
        ("block_address", _VOIDP),
        ("host_generation", _U64),
    ]


class _CpuidEntry(ctypes.Structure):
    _fields_ = [
        ("leaf", ctypes.c_uint32),
        ("subleaf", ctypes.c_uint32),
        ("regs", ctypes.c_uint32 * 4),
        ("mask", ctypes.c_uint32 * 4),
    ]


_FN_MMAP = ctypes.CFUNCTYPE(_U64, _U64, _U64, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long)
_FN_MUNMAP = ctypes.CFUNCTYPE(ctypes.c_long, _U64, _U64)
_FN_MPROTECT = ctypes.CFUNCTYPE(ctypes.c_long, _U64, _U64, ctypes.c_int)
_FN_RANGES = ctypes.CFUNCTYPE(None, ctypes.POINTER(_U64), _U64)
_FN_CPUID = ctypes.CFUNCTYPE(None, ctypes.POINTER(_CpuidEntry), _U64)
_FN_U64 = ctypes.CFUNCTYPE(None, _U64)
_FN_TAKE = ctypes.CFUNCTYPE(_U64)
_FN_PATCH = ctypes.CFUNCTYPE(ctypes.c_long, _U64, ctypes.c_char_p, _U64)


def _neg_errno(exc: BaseException) -> int:
    if isinstance(exc, OSError) and exc.errno:
        return -exc.errno
    if isinstance(exc, KernelError):
        return -(oserror(exc.errno).errno or errno.EIO)
    return -errno.EIO


class _HostCall:
    """What `Machine` sees of a host thread inside the emulation (duck-types `EnclaveCall`)."""

    busy = True  # never stepped by Machine.run_slice: its own host thread runs it
    done = False
    parent = None

    def __init__(self, thread: Thread) -> None:
        self.thread = thread
        self.pending: Any = None  # an AEX forced from outside (IPI, preemption)
        self.parked = False  # between runs, the model lock released

    @property
    def inside(self) -> bool:
        return self.parked and self.pending is None and self.thread.engine.lp.enclave_mode

    def abort(self) -> None:
        """Process exit: nothing to unwind here (the host thread is gone)."""


class _ThreadState:
    def __init__(self, rt: Runtime, thread: Thread, block: int) -> None:
        self.thread = thread
        self.block = (_U64 * 24).from_address(block)
        self.raw = memoryview(self.block).cast("B")  # the same bytes, for struct
        self.fx = (ctypes.c_char * 512).from_address(block + B_FX)
        self.call = _HostCall(thread)
        engine: Any = thread.engine  # a NativeEngine: its register view and Unicorn handle
        self.engine = engine
        self.view: Any = engine.view
        self.handle = int(engine._h.value)
        rt.api_set_engine(self.handle)
        self.last_fault: tuple[int, int] | None = None
        self.repeats = 0


class ModelLock:
    """The lock that serializes the model, with preemption of a thread running enclave code."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self.waiting = 0
        self.holder: _ThreadState | None = None

    def acquire(self, ts: _ThreadState | None) -> None:
        if self._mutex.acquire(blocking=False):
            self.holder = ts
            return
        self.waiting += 1
        try:
            while not self._mutex.acquire(timeout=0.002):
                holder = self.holder
                if holder is not None:
                    _UC_EMU_STOP(ctypes.c_void_p(holder.handle))
        finally:
            self.waiting -= 1
        self.holder = ts

    def release(self) -> None:
        self.holder = None
        self._mutex.release()

    def handover(self, ts: _ThreadState) -> None:
        """Let a waiting thread in, then continue."""
        self.release()
        deadline = time.monotonic() + 0.05
        while self.waiting and self.holder is None and time.monotonic() < deadline:
            time.sleep(0)
        self.acquire(ts)


def _uc_emu_stop_fn() -> Any:
    from ..exec.native_regs import _LIB

    return _LIB.uc_emu_stop


_UC_EMU_STOP: Any = None


class Runtime:
    """One per host process: the machine, the process, the fd map, the threads."""

    def __init__(self, api_addr: int, config: PreloadConfig | None = None) -> None:
        global _UC_EMU_STOP
        self.api = _Api.from_address(api_addr)
        if self.api.abi_version != ABI_VERSION:
            raise RuntimeError(
                f"preload library ABI {self.api.abi_version} != runtime ABI {ABI_VERSION}: "
                "rebuild it (sgxemu exec does)"
            )
        self.config = config if config is not None else PreloadConfig.from_env()
        cfg = self.config
        self.api_mmap = _FN_MMAP(self.api.host_mmap)
        self.api_munmap = _FN_MUNMAP(self.api.host_munmap)
        self.api_mprotect = _FN_MPROTECT(self.api.host_mprotect)
        self.api_set_ranges = _FN_RANGES(self.api.set_ranges)
        self.api_set_cpuid = _FN_CPUID(self.api.set_cpuid)
        self.api_set_engine = _FN_U64(self.api.set_engine)
        self.api_take_signal = _FN_TAKE(self.api.take_signal_exit)
        self.api_patch_text = _FN_PATCH(self.api.patch_text)
        self.api_add_patched = _FN_U64(self.api.add_patched)
        self.vdso_enclu = int(self.api.vdso_enclu)
        self.vdso_fixup = int(self.api.vdso_fixup)
        self.machine = Machine(
            epc_size=cfg.epc_size, sgx2=cfg.sgx2, flc=cfg.flc, cpus=cfg.cpus, seed=cfg.seed,
            engine="native", kernel=cfg.kernel, dev_noexec=cfg.dev_noexec,
        )  # fmt: skip
        epc = self.machine.cpu.epc
        buf = ctypes.addressof(ctypes.c_char.from_buffer(epc.buffer))
        self.mem = HostMemory((epc.base, epc.end), hidden=[(buf, buf + epc.size)])
        self.proc: Process = self.machine.spawn(mm=HostMm(cast(UserMemory, self.mem)))
        self.pid = os.getpid()
        self.fds: dict[int, int] = {}  # host fd -> model fd
        self.lock = ModelLock()
        self._local = threading.local()
        self._main_taken = False
        # SGXEMU_SLICE=N: enclave code runs N instructions at a time (a test and debugging
        # knob: other threads get the model between slices; Unicorn's count hook is slow).
        self.slice: int | None = int(os.environ.get("SGXEMU_SLICE") or 0) or None
        self._host_gen = -1
        self._publish_cpuid()
        os.register_at_fork(after_in_child=self._after_fork_child)

    # -- start-up ----------------------------------------------------------------------------
    def _publish_cpuid(self) -> None:
        """The answers CPUID gives the host program: leaf 7's SGX bits and all of leaf 0x12."""
        cpu = self.machine.cpu
        entries: list[_CpuidEntry] = []
        _, ebx, ecx, _ = cpu.cpuid(7, 0)
        e = _CpuidEntry(7, 0)
        e.regs[1], e.regs[2] = ebx & (1 << 2), ecx & (1 << 30)
        e.mask[1], e.mask[2] = 1 << 2, 1 << 30
        entries.append(e)
        for sub in range(0, 2 + len(cpu.epc.sections) + 4):
            e = _CpuidEntry(0x12, sub)
            for i, value in enumerate(cpu.cpuid(0x12, sub)):
                e.regs[i] = value
                e.mask[i] = 0xFFFF_FFFF
            entries.append(e)
        arr = (_CpuidEntry * len(entries))(*entries)
        self.api_set_cpuid(arr, len(entries))

    def _after_fork_child(self) -> None:
        """The child has a copy of everything and one thread: the one that forked."""
        self.lock = ModelLock()
        me = getattr(self._local, "ts", None)
        m = self.machine
        m.calls[:] = [c for c in m.calls if me is not None and c is me.call]
        self.mem.invalidate()
        self.pid = os.getpid()

    # -- threads -------------------------------------------------------------------------------
    def _model_thread(self) -> Thread:
        t: Thread | None = getattr(self._local, "thread", None)
        if t is None:
            if threading.get_native_id() == os.getpid() and not self._main_taken:
                t = self.proc.main  # the host's main thread is the process's main thread
                self._main_taken = True
            else:
                t = self.proc.thread()
            self._local.thread = t
        return t

    def _thread_state(self, block: int) -> _ThreadState:
        ts: _ThreadState | None = getattr(self._local, "ts", None)
        if ts is None:
            global _UC_EMU_STOP
            if _UC_EMU_STOP is None:
                _UC_EMU_STOP = _uc_emu_stop_fn()
                self.api.uc_emu_stop = ctypes.cast(_UC_EMU_STOP, ctypes.c_void_p).value
            ts = _ThreadState(self, self._model_thread(), block)
            self._local.ts = ts
        return ts

    # -- system calls ------------------------------------------------------------------------
    def _syscall(self, fn: Any) -> int:
        self.lock.acquire(getattr(self._local, "ts", None))
        try:
            self.mem.invalidate()
            return int(fn())
        except (OSError, KernelError) as exc:
            if _DEBUG:
                traceback.print_exc()
            return _neg_errno(exc)
        except Signal:  # a host access the model could not complete
            if _DEBUG:
                traceback.print_exc()
            return -errno.EFAULT
        finally:
            self.lock.release()

    def open(self, path: bytes, flags: int, host_fd: int) -> int:
        def body() -> int:
            mfd = self._model_thread().open(os.fsdecode(path), flags)
            self.fds[host_fd] = mfd
            return 0

        return self._syscall(body)

    def close(self, host_fd: int) -> int:
        def body() -> int:
            mfd = self.fds.pop(host_fd, None)
            if mfd is None:
                raise OSError(errno.EBADF, "not a device fd")
            self._model_thread().close(mfd)
            self._publish_ranges()
            return 0

        return self._syscall(body)

    def dup(self, old: int, new: int) -> int:
        def body() -> int:
            mfd = self.fds.get(old)
            if mfd is None:
                raise OSError(errno.EBADF, "not a device fd")
            fds = self.proc.fds
            copy = 3
            while copy in fds:
                copy += 1
            fds[copy] = fds[mfd].get()
            self.fds[new] = copy
            return 0

        return self._syscall(body)

    def ioctl(self, host_fd: int, request: int, arg: int) -> int:
        def body() -> int:
            mfd = self.fds.get(host_fd)
            if mfd is None:
                raise OSError(errno.EBADF, "not a device fd")
            t = self._model_thread()
            if request & 0xFFFF_FFFF == uapi.SGX_IOC_ENCLAVE_PROVISION:
                # The argument names a host fd; the model knows its own fd numbers.
                params = uapi.sgx_enclave_provision.from_buffer_copy(
                    t.copy_from_user(arg, ctypes.sizeof(uapi.sgx_enclave_provision))
                )
                host = params.fd & 0xFFFF_FFFF
                params.fd = self.fds.get(host, 1 << 31)  # not a device fd: no model fd either
                return t.ioctl(mfd, request, params)
            return t.ioctl(mfd, request, arg)

        return self._syscall(body)

    def _host_map(self, addr: int, length: int, flags: int) -> int:
        """A PROT_NONE reservation in the host (the enclave range is never host memory)."""
        host_flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE
        host_flags |= flags & (MAP_FIXED | MAP_FIXED_NOREPLACE)
        got = int(self.api_mmap(addr, length, PROT_NONE, host_flags, -1, 0))
        if got >= (1 << 64) - 4096:
            raise OSError(-(got - (1 << 64)), "host mmap failed")
        return got

    def mmap(self, addr: int, length: int, prot: int, flags: int, host_fd: int, offset: int) -> int:
        def body() -> int:
            mfd = self.fds.get(host_fd)
            if mfd is None:
                raise OSError(errno.EBADF, "not a device fd")
            t = self._model_thread()
            size = (length + PAGE_SIZE - 1) & PAGE_MASK
            if flags & (MAP_FIXED | MAP_FIXED_NOREPLACE):
                if flags & MAP_FIXED_NOREPLACE:
                    got = self._host_map(addr, size, flags) if size else addr
                    try:
                        return t.mmap(addr, length, prot, flags, mfd, offset)
                    except BaseException:
                        if size:
                            self.api_munmap(got, size)
                        raise
                try:
                    result = t.mmap(addr, length, prot, flags, mfd, offset)
                except OSError as exc:
                    if self._unmapped_before(mfd, prot, flags, exc) and size:
                        self.api_munmap(addr, size)  # the old mapping is gone: a hole
                    raise
                self._host_map(addr, size, MAP_FIXED)
                return result
            if not length or offset & ~PAGE_MASK or flags & MAP_TYPE == MAP_PRIVATE:
                return t.mmap(addr, length, prot, flags, mfd, offset)  # fails as the kernel does
            got = self._host_map(addr, size, 0)
            try:
                return t.mmap(got, length, prot, flags | MAP_FIXED, mfd, offset)
            except BaseException:
                self.api_munmap(got, size)
                raise

        try:
            return self._syscall(body)
        finally:
            self._publish_ranges()

    def _unmapped_before(self, mfd: int, prot: int, flags: int, exc: OSError) -> bool:
        """Did a failing MAP_FIXED mmap get past mmap_region's unmapping of the old range?"""
        if exc.errno != errno.EACCES:
            return False
        file = self.proc.fds.get(mfd)
        if file is None:
            return False
        from ..linux.file import FMODE_READ, FMODE_WRITE

        if not file.f_mode & FMODE_READ:
            return False
        shared = flags & MAP_TYPE in (0x01, 0x03)
        return not (shared and prot & PROT_WRITE and not file.f_mode & FMODE_WRITE)

    def munmap(self, addr: int, length: int) -> int:
        def body() -> int:
            self._model_thread().munmap(addr, length)
            ret = int(self.api_munmap(addr, length))
            if ret < 0:
                raise OSError(-ret, "host munmap failed")
            return 0

        try:
            return self._syscall(body)
        finally:
            self._publish_ranges()

    def forget(self, addr: int, length: int) -> int:
        def body() -> int:
            self.proc.do_munmap(addr & PAGE_MASK, addr + ((length + PAGE_SIZE - 1) & PAGE_MASK))
            return 0

        try:
            return self._syscall(body)
        finally:
            self._publish_ranges()

    def mprotect(self, addr: int, length: int, prot: int) -> int:
        def body() -> int:
            self._model_thread().mprotect(addr, length, prot)
            return 0

        return self._syscall(body)

    def _publish_ranges(self) -> None:
        """Tell the C side which host ranges are enclave mappings (munmap/mprotect go here)."""
        spans: list[list[int]] = []
        for v in self.proc.mm.vmas:
            if v.file is None:
                continue
            if spans and spans[-1][1] == v.start:
                spans[-1][1] = v.end
            else:
                spans.append([v.start, v.end])
        flat = (_U64 * (2 * len(spans) or 1))(*[x for s in spans for x in s])
        self.api_set_ranges(flat, len(spans))

    # -- ENCLU ---------------------------------------------------------------------------------
    def enclu(self, block: int) -> int:
        ts = self._thread_state(block)
        self.lock.acquire(ts)
        try:
            return self._enclu(ts)
        finally:
            self.lock.release()

    def _enclu(self, ts: _ThreadState) -> int:
        m = self.machine
        t = ts.thread
        engine = ts.engine
        view = ts.view
        lp = engine.lp
        mem = self.mem
        b = ts.block
        gen = self.api.host_generation
        if gen != self._host_gen:
            self._host_gen = gen
            mem.invalidate()  # the host's mappings changed since they were last read
        view.load_all()  # FS/GS bases stay the engine's (EENTER loads the enclave's)
        view.values[0:NGPR] = _GPRS.unpack_from(ts.raw)
        view.set_all_dirty()
        if self.config.xstate:
            view.xrstor(bytes(ts.fx))
        call = ts.call
        call.pending = None
        calls: list[Any] = m.calls  # the host call stands in for an EnclaveCall
        calls.append(call)
        t.call = cast(Any, call)
        action = RESUME
        try:
            while True:
                m.claim_lp(t)
                try:
                    m.cpu.enclu(lp, view, mem)
                except SgxFault as fault:
                    action = self._exception(ts, fault, aex=False)
                    if action == _AGAIN:
                        continue
                    break
                if not lp.enclave_mode:
                    break
                action = self._run(ts)
                if action != _AGAIN:
                    break
        finally:
            if call in calls:
                calls.remove(call)
            t.call = None
            m.kernel_exit(t)
            view.load_all()  # (after EEXIT every register is already known: no read)
            _GPRS.pack_into(ts.raw, 0, *view.values[0:NGPR])
            if self.config.xstate:
                ctypes.memmove(ts.fx, view.xsave(), 512)
                b[B_XSTATE] = 1
        return action

    def _run(self, ts: _ThreadState) -> int:
        """Run enclave code until control leaves the emulation."""
        m = self.machine
        engine = ts.engine
        call = ts.call
        while True:
            ex = call.pending
            if ex is not None:
                call.pending = None
            else:
                ex = engine.run(self.slice)
            if _DEBUG:
                print(f"sgxemu: run -> {ex.kind.name} {ex.event!r} rip={ts.view[Reg.RIP]:#x}",
                      file=sys.stderr)
            if ex.kind is ExitKind.SLICE:
                if self.api_take_signal():
                    engine.interrupt()  # the signal's interrupt: an AEX, back at the AEP
                    m.stats.aexes += 1
                    return RESUME  # C unblocks the signal: the handler runs, then ERESUME
                if self.lock.waiting:
                    call.parked = True
                    try:
                        self.lock.handover(ts)
                    finally:
                        call.parked = False
                continue
            if ex.kind is ExitKind.EEXIT:
                return RESUME
            m.stats.aexes += 1
            if ex.event is None:  # an interrupt (IPI, TLB shootdown, preemption)
                if self.api_take_signal():
                    return RESUME
                return self._back_to_aep(ts)
            return self._exception(ts, ex.event, aex=True)

    def _back_to_aep(self, ts: _ThreadState) -> int:
        """The kernel returns to the AEP: our vDSO's ENCLU runs again at once, else host code."""
        return _AGAIN if ts.view[Reg.RIP] == self.vdso_enclu else RESUME

    def _exception(self, ts: _ThreadState, fault: SgxFault, aex: bool) -> int:
        """A trap at an ENCLU or an AEX: the kernel resolves it, or fixes it up, or signals."""
        m = self.machine
        t = ts.thread
        view = ts.view
        vector = int(fault.vector)
        addr = 0
        sig: Signal | None = None
        if isinstance(fault, PageFault):
            # After an AEX the OS sees the faulting page only (the low 12 bits are cleared).
            addr = fault.addr & PAGE_MASK if aex else fault.addr
            # A host page: its mapping may have changed behind the cache (glibc's own mmap,
            # munmap and mprotect calls are not interposed), so the fault path reads it afresh.
            if dict.get(self.mem.ptes, addr >> 12) is None:
                self.mem.invalidate()
            sig = do_user_addr_fault(m, t, addr, fault.error_code)
            m.fault_exit(t)
            if sig is None:
                key = (addr, fault.error_code)
                ts.repeats = ts.repeats + 1 if key == ts.last_fault else 0
                ts.last_fault = key
                if ts.repeats > _LIVELOCK:
                    raise RuntimeError(
                        f"the fault at {addr:#x} ({fault.error_code:#x}) never resolves"
                    )
                if self.api_take_signal():
                    return RESUME
                return self._back_to_aep(ts)
        ts.last_fault = None
        rip = view[Reg.RIP]
        if rip == self.vdso_enclu and vector not in (int(Vector.DB), int(Vector.BP)):
            # fixup_vdso_exception: the vDSO reports it through struct sgx_enclave_run
            view[Reg.RIP] = self.vdso_fixup
            view[Reg.RDI] = vector
            view[Reg.RSI] = fault.error_code
            view[Reg.RDX] = addr
            return RESUME
        signo, code, where = _signal_for(vector, sig, addr, rip)
        b = ts.block
        b[B_SIGNO], b[B_SICODE], b[B_SIADDR] = signo, code, where
        return SIGNAL

    # -- CPUID fallback ---------------------------------------------------------------------------
    # -- exit ----------------------------------------------------------------------------------
    def at_exit(self) -> int:
        """The process exits (the library's destructor): leave the counters where
        SGXEMU_STATS says (`sgxemu exec --json` reads them). Never fails the exit."""
        directory = os.environ.get(STATS_ENV)
        if not directory:
            return 0
        try:
            write_stats(directory, os.getpid(), counters(self.machine, self.proc, self.config.kernel))
        except Exception:  # a full disk or a removed directory must not change the exit
            if _DEBUG:
                traceback.print_exc()
            return -errno.EIO
        return 0

    def patch_cpuid(self, path: bytes, base: int) -> int:
        """Make the CPUID instructions of a loaded object trap (UD2), for the SIGILL handler."""
        try:
            sites = [base + v for v in cached_cpuid_sites(os.fsdecode(path))]
        except Exception as exc:  # an unreadable object: say so once, keep going
            print(f"sgxemu: cannot scan {os.fsdecode(path)} for CPUID: {exc}", file=sys.stderr)
            return 0
        done = 0
        for site in sites:
            if self.api_patch_text(site, b"\x0f\x0b", 2) == 0:
                self.api_add_patched(site)
                done += 1
            else:
                print(f"sgxemu: cannot patch CPUID at {site:#x}", file=sys.stderr)
        return done


def _signal_for(vector: int, sig: Signal | None, addr: int, rip: int) -> tuple[int, int, int]:
    """The signal Linux sends for an exception in user mode (traps.c, fault.c)."""
    import signal as _signal

    if sig is not None:
        return sig.signo, sig.code, addr
    if vector == Vector.UD:
        return int(_signal.SIGILL), _ILL_ILLOPN, rip
    if vector == Vector.DE:
        return int(_signal.SIGFPE), _FPE_INTDIV, rip
    if vector in (Vector.MF, Vector.XM):
        return int(_signal.SIGFPE), _FPE_FLTINV, rip
    if vector == Vector.BP:
        return int(_signal.SIGTRAP), _SI_KERNEL, 0
    if vector == Vector.DB:
        return int(_signal.SIGTRAP), _TRAP_TRACE, rip
    if vector == Vector.AC:
        return int(_signal.SIGBUS), _BUS_ADRALN, addr
    return int(_signal.SIGSEGV), _SI_KERNEL, 0


# -- CPUID sites -----------------------------------------------------------------------------------
_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_SHDR = struct.Struct("<IIQQQQIIQQ")
_SHF_EXECINSTR = 0x4
_SHT_SYMTAB, _SHT_DYNSYM = 2, 11
_SYM = struct.Struct("<IBBHQQ")
_STT_FUNC = 2
_LEAD = 96  # bytes swept before a candidate when no function start is known


def find_cpuid_sites(path: str, base: int) -> list[int]:
    """Addresses (base + vaddr) of CPUID instructions in the executable sections of `path`.

    Candidates are the 0F A2 byte pairs; each is confirmed by a linear sweep (capstone) from
    the start of the function containing it (from .symtab/.dynsym), or from two points before
    it when the object has no symbols there, and kept only if an instruction starts exactly
    there and is CPUID (data in code or overlapping decodings are thereby skipped).
    """
    with open(path, "rb") as f:
        blob = f.read()
    if blob[:4] != b"\x7fELF" or blob[4] != 2:
        return []
    hdr = _EHDR.unpack_from(blob, 0)
    shoff, shentsize, shnum = hdr[6], hdr[11], hdr[12]
    sections = [_SHDR.unpack_from(blob, shoff + i * shentsize) for i in range(shnum)]
    funcs: list[int] = []
    for sh in sections:
        if sh[1] in (_SHT_SYMTAB, _SHT_DYNSYM) and sh[9]:
            for off in range(sh[4], sh[4] + sh[5], sh[9]):
                _, info, _, shndx, value, size = _SYM.unpack_from(blob, off)
                if info & 0xF == _STT_FUNC and shndx and size:
                    funcs.append(value)
    funcs.sort()
    candidates: list[tuple[int, int, int]] = []  # (vaddr, section vaddr, section file offset)
    for sh in sections:
        if not sh[2] & _SHF_EXECINSTR or sh[1] == 8:  # SHT_NOBITS
            continue
        data = blob[sh[4] : sh[4] + sh[5]]
        pos = data.find(b"\x0f\xa2")
        while pos >= 0:
            candidates.append((sh[3] + pos, sh[3], sh[4]))
            pos = data.find(b"\x0f\xa2", pos + 1)
    if not candidates:
        return []
    from capstone import CS_ARCH_X86, CS_MODE_64, Cs

    md = Cs(CS_ARCH_X86, CS_MODE_64)
    md.skipdata = True
    sites = []
    for vaddr, sec_va, sec_off in candidates:
        i = bisect.bisect_right(funcs, vaddr) - 1
        starts = [funcs[i]] if i >= 0 and vaddr - funcs[i] < 1 << 20 else []
        if not starts:
            starts = [max(sec_va, vaddr - _LEAD), max(sec_va, vaddr - _LEAD + 37)]
        ok = True
        for start in starts:
            code = blob[sec_off + (start - sec_va) : sec_off + (vaddr - sec_va) + 2]
            hit = False
            for address, size, mnemonic, _ in md.disasm_lite(code, start):
                if address == vaddr:
                    hit = mnemonic == "cpuid" and size == 2
                    break
                if address > vaddr:
                    break
            ok = ok and hit
        if ok:
            sites.append(base + vaddr)
    return sites


def _cache_root() -> Path:
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "sgxemu" / "cpuid-sites"


def cpuid_cache_file(path: str) -> Path:
    """Where the CPUID sites of a file are remembered: named after its device, inode, size and
    modification time (the preload library reads the same file in C, before Python starts)."""
    st = os.stat(path)
    return _cache_root() / f"{st.st_dev:x}-{st.st_ino:x}-{st.st_size:x}-{st.st_mtime_ns:x}.txt"


def cached_cpuid_sites(path: str) -> list[int]:
    """`find_cpuid_sites(path, 0)`, remembered per file: one hexadecimal address a line (an
    empty file: none). The sweep needs capstone, whose import alone costs tens of milliseconds,
    and with the cache a program that has no CPUID starts without Python at all."""
    cache = cpuid_cache_file(path)
    try:
        return [int(v, 16) for v in cache.read_text().split()]
    except (OSError, ValueError):
        pass
    sites = find_cpuid_sites(path, 0)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text("".join(f"{v:x}\n" for v in sites))
        os.replace(tmp, cache)
    except OSError:
        pass  # a read-only home: scan again next time
    return sites


_RUNTIME: Runtime | None = None


def bootstrap(api_addr: int) -> Runtime:
    """Called once by the preload library when the process first needs the emulator."""
    global _RUNTIME
    _RUNTIME = Runtime(api_addr)
    return _RUNTIME


def current() -> Runtime | None:
    """The runtime of this process, when it runs under the preload library."""
    return _RUNTIME


__all__ = ["PreloadConfig", "Runtime", "bootstrap", "cached_cpuid_sites", "current", "find_cpuid_sites"]
