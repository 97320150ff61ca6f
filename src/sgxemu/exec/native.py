"""Native execution of x86-64 enclave code on Unicorn 2.1 (the `Engine` contract of engine.py).

Design (unicorn-engine-notes.md, "Recommended architecture"):

* One Unicorn instance per engine (one thread on one logical processor), in virtual-TLB mode.
  Physical memory is mapped once: the whole EPC buffer at `cpu.epc.base`, and the untrusted
  memory of the address space at its host addresses (`mem.backing_regions()`; an address space
  without that method gets host memory mapped on demand in 2 MiB aligned chunks the first time
  one of its pages is touched). `mem_protect`/per-page `mem_map` are never used.
* Every Unicorn TLB miss asks the processor model (`hw.access.tlb_fill`, through the LP's own
  TLB `lp.tlb`) for the page's effective rights: page-table rights intersected with the EPCM.
  Entries are W^X (a write fill never grants X, a fetch fill never grants W), which keeps stores
  on Unicorn's fast path and forces a fetch fill (hence a code scan, see vex.py) before code on
  a page runs. A flush of `lp.tlb` (counted in `lp.flushes`) invalidates Unicorn's TLB before
  the next run, so a translation made before an EMODPR on another LP stays usable until this
  thread leaves the enclave, as on hardware (the flush re-checks the few pages the thread used
  instead of clearing Unicorn's tables when it can: `_entry_flush`).
* A refused fill becomes the modelled fault. Unicorn reports only the page; the exact #PF
  address is recovered by decoding the faulting instruction (fault_addr.py); a fetch fault on a
  page the code ran into is re-run up to the instruction that touches it, so RIP is exact too.
* ENCLU (0F 01 D7) arrives as an invalid instruction and is executed by `cpu.enclu` on a lazy
  register view (native_regs.py); EEXIT ends the run. Enclave code runs at CPL 3 (an IRETQ
  trampoline at start-up), so privileged instructions raise #GP; instructions illegal in enclave
  mode raise #UD (code hooks on scanned pages, plus Unicorn's SYSCALL/SYSENTER/CPUID/IN/OUT
  instruction hooks and INT n through the interrupt hook).
* Faults become an AEX (`hw.enclu.aex.aex`). Unicorn never delivers exceptions itself, so
  QEMU's double-fault bookkeeping is reset after each one by restoring a CPU context saved at
  start-up (without it a #DE followed by a #GP is reported as #DF).
* Budgets use Unicorn's instruction count, whose per-instruction hook makes code 15-25 times
  slower, so it is armed only for runs with a budget; switching between budgeted and
  unbudgeted runs drops the translation cache. `EngineExit.instructions` is the count of a
  budgeted run, read from Unicorn's internal counter (located by a probe at start-up), and 0
  for a run without a budget.

x86 extensions the engine does not execute (they raise #UD or are refused):
AVX, AVX2, FMA, F16C, AVX-512 and every other VEX/EVEX/XOP-encoded instruction except BMI1/BMI2
(Unicorn mis-executes VEX.128 three-operand forms silently, so VEX code is refused with #UD
before it runs: see vex.py for exactly what is covered); SHA-NI; ADX (not in Unicorn's default
CPU model); XSAVEC/XSAVES; RDPID; RDPKRU/WRPKRU; TSX (XBEGIN/XTEST); CET; AMX. SSE to SSE4.2,
AES-NI, PCLMULQDQ, POPCNT, LZCNT/TZCNT, BMI1/BMI2, MOVBE, CRC32, RDRAND/RDSEED, FXSAVE and
XSAVE/XSAVEOPT work. MXCSR exception flags are not updated by SSE arithmetic and #XM is never
raised (QEMU 5 limitation); LOCK is not atomic across engines (run threads on one host thread).
"""

from __future__ import annotations

import bisect
import ctypes
import mmap
import struct
import weakref
from typing import Any

from unicorn import x86_const as ux
from unicorn.unicorn_const import (
    UC_ARCH_X86,
    UC_CTL_IO_WRITE,
    UC_CTL_TB_FLUSH,
    UC_CTL_TCG_BUFFER_SIZE,
    UC_CTL_TLB_FLUSH,
    UC_CTL_TLB_TYPE,
    UC_ERR_OK,
    UC_HOOK_CODE,
    UC_HOOK_INSN,
    UC_HOOK_INSN_INVALID,
    UC_HOOK_INTR,
    UC_HOOK_TLB_FILL,
    UC_MODE_64,
    UC_PROT_ALL,
    UC_TLB_VIRTUAL,
)
from unicorn.unicorn_py3.unicorn import uclib

from ..arch.constants import PAGE_MASK, PAGE_SHIFT, PAGE_SIZE, Vector
from ..hw.access import EXECUTE, READ, WRITE, tlb_fill
from ..hw.enclu.aex import aex
from ..hw.epcm import ENTRY_CHANGES, EpcmEntry
from ..hw.faults import (
    CpuException,
    DeviceNotAvailable,
    GeneralProtection,
    InvalidOpcode,
    PageFault,
    SgxFault,
    SgxUsageError,
)
from ..hw.lp import LogicalProcessor
from ..hw.memory import PTE_ADDR_MASK, AddressSpace, page_table_of
from ..hw.operands import canonical
from ..hw.processor import Processor
from ..hw.regs import MASK64, Reg, RegisterFile, xsave_init_legacy
from .engine import EngineExit, ExitKind
from .fault_addr import FaultDecoder, exact_address
from .native_regs import _LIB, RawRegs, UcRegisterView
from .vex import MAX_INSN, SWEEP_LEAD, Sweeper

# -- raw C API -------------------------------------------------------------------------------------
_CB_TLB_FILL = ctypes.CFUNCTYPE(
    ctypes.c_bool, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p
)
_CB_INSN_INVALID = ctypes.CFUNCTYPE(ctypes.c_bool, ctypes.c_void_p, ctypes.c_void_p)
_CB_INTR = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_void_p)
_CB_CODE = ctypes.CFUNCTYPE(
    None, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint32, ctypes.c_void_p
)
_CB_SYSCALL = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)
_CB_CPUID = ctypes.CFUNCTYPE(ctypes.c_uint32, ctypes.c_void_p, ctypes.c_void_p)
_CB_IN = ctypes.CFUNCTYPE(
    ctypes.c_uint32, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_void_p
)
_CB_OUT = ctypes.CFUNCTYPE(
    None, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint32, ctypes.c_void_p
)


def _ctl_code(ctl: int, op: int, nargs: int = 0) -> int:
    return (op << 30) | (nargs << 26) | ctl


# uc_emu_start without a prototype (arguments passed as C objects), releasing the GIL as the
# binding does.
_EMU_START = ctypes.CDLL(uclib._name).uc_emu_start
_CTL_TLB_FLUSH = _ctl_code(UC_CTL_TLB_FLUSH, UC_CTL_IO_WRITE)
_CTL_TB_FLUSH = _ctl_code(UC_CTL_TB_FLUSH, UC_CTL_IO_WRITE)
_UC_ERR_EXCEPTION = 21

# Unicorn access types (uc_mem_type) -> processor-model access kinds.
_ACCESS = {16: READ, 17: WRITE, 18: EXECUTE}

# -- the system area: GDT and the CPL-3 trampoline (kernel-half addresses, never user-visible) --
_SYS_LIN = 0xFFFF_FFFF_FFE0_0000
_SYS_SIZE = 0x4000
_SYS_GDT = 0x800
_SYS_LANDING = 0x10  # CPL-3 code after IRETQ: three NOPs
_SYS_FRAME = 0x2000
_GDT = struct.pack(
    "<5Q",
    0,
    0x00AF_9B00_0000_FFFF,  # 08h: 64-bit code, DPL 0
    0x00CF_9300_0000_FFFF,  # 10h: data, DPL 0
    0x00CF_F300_0000_FFFF,  # 18h: data, DPL 3 (SS 1Bh)
    0x00AF_FB00_0000_FFFF,  # 20h: 64-bit code, DPL 3 (CS 23h)
)
_USER_CS = 0x23
_USER_SS = 0x1B
_PROBE_COUNTS = (0x5A5A_1234, 0x0BAD_F00D)

# Exception vectors QEMU raises at CPL 3 (anything else from the interrupt hook is INT n).
_CPU_VECTORS = frozenset({0, 1, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 14, 16, 17, 18, 19})
_REPORTED = {
    0: Vector.DE, 1: Vector.DB, 3: Vector.BP, 5: Vector.BR, 16: Vector.MF, 17: Vector.AC,
    19: Vector.XM,
}  # fmt: skip
_ENCLU = b"\x0f\x01\xd7"
_ENCLU_BAD_PREFIXES = frozenset({0x66, 0xF0, 0xF2, 0xF3})  # #UD (SDM ENCLU: NP, no LOCK)

_CHUNK = 2 << 20  # on-demand host mapping granule
_REVALIDATE_MAX = 32  # pages checked again at entry instead of flushing Unicorn's TLB
_EEXIT = EngineExit(ExitKind.EEXIT, None, 0)  # immutable: shared by every uncounted EEXIT
_AEX = ExitKind.AEX
# Sweep results per processor: (EPC index, linear page) -> (content, flagged addresses).
_SCANS: weakref.WeakKeyDictionary[Processor, dict[tuple[int, int], tuple[bytes, frozenset[int]]]]
_SCANS = weakref.WeakKeyDictionary()

# Module-level copies of the registers the hot paths use (enum attribute lookups are slow).
_RIP = Reg.RIP

# Why a run stopped early (besides a fault).
_STOP_EEXIT = 1
# The ENCLU hook stopped the run (a leaf's fault, #UD) with the view holding the registers it
# read: nothing ran since, so they are Unicorn's and need no second read for the AEX.
_STOP_HELD = 2
_RESTART_TB_FLUSH = 1
_RESTART_MAP = 2


class NativeEngine:
    """Runs enclave code for one thread on one logical processor, natively on Unicorn."""

    def __init__(
        self,
        cpu: Processor,
        lp: LogicalProcessor,
        mem: AddressSpace,
        *,
        tcg_buffer_size: int = 128 << 20,
    ) -> None:
        self.cpu = cpu
        self.lp = lp
        self.mem = mem
        # The raw C API throughout: the binding's wrappers are slow and untyped.
        handle = ctypes.c_void_p()
        _check(uclib.uc_open(UC_ARCH_X86, UC_MODE_64, ctypes.byref(handle)), "uc_open")
        self._h = handle
        self._ctx = ctypes.c_void_p()
        self._finalizer = weakref.finalize(self, _release, handle, self._ctx)
        self._closed = False  # close() ran (the finalizer runs then, or at exit: never earlier)
        # The translation cache is reserved, not committed (Unicorn's default is 1 GiB).
        _check(uclib.uc_ctl(handle, _ctl_code(UC_CTL_TCG_BUFFER_SIZE, UC_CTL_IO_WRITE, 1),
                            ctypes.c_uint32(tcg_buffer_size)), "TCG buffer size")  # fmt: skip
        _check(uclib.uc_ctl(handle, _ctl_code(UC_CTL_TLB_TYPE, UC_CTL_IO_WRITE, 1),
                            ctypes.c_int(UC_TLB_VIRTUAL)), "virtual TLB")  # fmt: skip
        self._raw = RawRegs(handle)
        # uc_emu_start's arguments as C objects, updated in place (no per-call conversion).
        self._emu_args = (handle, ctypes.c_uint64(), ctypes.c_uint64(), ctypes.c_uint64(0),
                          ctypes.c_size_t())  # fmt: skip
        self._hv = self._raw.handle  # the handle as a plain pointer for prototype-less calls
        self._regs = UcRegisterView(self._raw)
        self.regs: RegisterFile = self._regs  # (the Engine protocol's `regs`: a plain attribute)
        self._sweeper = Sweeper(sgx2=cpu.sgx2)
        self._epc_base = cpu.epc.base
        self._decoder = FaultDecoder()
        # Physical memory: the EPC, the system area, untrusted memory.
        epc = cpu.epc
        self._map_ptr(epc.base, epc.size, _host_address(epc.buffer))
        self._sys = mmap.mmap(-1, _SYS_SIZE)
        self._sys_pa = (epc.end + _CHUNK - 1) & ~(_CHUNK - 1)
        self._map_ptr(self._sys_pa, _SYS_SIZE, _host_address(self._sys))
        self._ranges: list[tuple[int, int]] = []  # untrusted host ranges mapped, sorted
        regions = getattr(mem, "backing_regions", None)
        self._on_demand = regions is None
        if regions is not None:
            for base, size in regions():
                self._map_host(base, size)
        # Per-run state, set by the hooks.
        self._boot = True
        self._stop = 0
        self._restart = 0
        self._restart_arg = 0
        self._fault: SgxFault | None = None
        self._fault_rip: int | None = None
        self._fault_access = 0
        self._fault_exact = False
        self._error: BaseException | None = None
        self._tlb_stale = False
        self._granted: dict[int, tuple[int, int]] = {}  # Unicorn TLB content: page -> (pa, perms)
        # The last tlb_fill of each granted page, for _revalidate: page -> (PTE, EPCM entry,
        # its fields, (index, rights), the grant the result was checked against or None),
        # valid for the SECS in _fills_secs.
        self._fills: dict[int, tuple[int, EpcmEntry | None, tuple[Any, ...], tuple[int, int],
                                     tuple[int, int] | None]] = {}
        self._fills_secs: tuple[Any, ...] = ()
        # The last _revalidate that passed: the SECS fields (None once Unicorn's TLB changed:
        # a grant, a flush), (EPCM version, page-table version) when its pages were last
        # found unchanged, the lp.tlb entries it made, the EPC pages among them and the code
        # pages it compared ((EPC offset, content)). See _entry_flush.
        self._page_table = page_table_of(mem)
        self._clean: tuple[Any, ...] | None = None
        self._clean_at = (0, 0, 0)
        self._clean_hits: dict[int, tuple[int, int]] = {}
        self._clean_indices: frozenset[int] = frozenset()
        self._clean_entries: tuple[EpcmEntry, ...] = ()  # (alive: their ids are log keys)
        self._clean_entry_ids: frozenset[int] = frozenset()
        self._clean_code: list[tuple[int, bytes]] = []
        self._counting = True  # the start-up runs armed Unicorn's count hook
        self._maint = False
        self._until = 0
        self._pending_fetch: tuple[SgxFault, int] | None = None
        # Code pages scanned: EPC index -> (linear page, content); flagged addresses -> hook.
        self._scanned: dict[int, tuple[int, bytes]] = {}
        self._flag_hooks: dict[int, int] = {}
        self._keep: list[Any] = []
        self._install_hooks()
        self._enter_cpl3()
        self._counter = self._probe_counter()
        # x87/SSE in INIT state: FCW 037Fh, MXCSR 1F80h, all tags empty (Unicorn starts with
        # FCW = MXCSR = 0 and every x87 register tagged valid).
        self._raw.fxrstor(bytes(xsave_init_legacy()))
        self._raw.write(ux.UC_X86_REG_RFLAGS, 0x202)
        # CPL 3 and no exception in flight: restored after every exception (see _deliver).
        _check(uclib.uc_context_alloc(handle, ctypes.byref(self._ctx)), "context")
        _check(uclib.uc_context_save(handle, self._ctx), "context save")
        self._regs.forget()
        self._ctx_fx = self._regs.xsave()  # the x87/SSE state of that context, as FXSAVE gives it
        self._boot = False
        self._flush_tlb_now()
        self._flushes = lp.flushes  # the LP flushes this engine's translations are as of

    # -- Engine protocol ---------------------------------------------------------------------------
    @property
    def view(self) -> UcRegisterView:
        """The register view with its engine-specific extras (load_all, sync, ...)."""
        return self._regs

    def flush_tlb(self) -> None:
        # Deferred to the next run: nothing executes in between, and it may be called from a hook.
        self._tlb_stale = True

    def run(self, budget: int | None = None) -> EngineExit:
        if self._closed:
            raise SgxUsageError("NativeEngine.run: the engine is closed")
        if not self.lp.enclave_mode:
            raise SgxUsageError("NativeEngine.run: the logical processor is not in enclave mode")
        if budget is not None and budget <= 0:
            return EngineExit(ExitKind.SLICE, None, 0)
        regs = self._regs
        remaining = budget
        retired = 0
        lp = self.lp
        while True:
            if self._tlb_stale or lp.flushes != self._flushes:
                self._flushes = lp.flushes
                self._entry_flush()
            regs.sync()
            rip = regs.values[_RIP] if regs.loaded else regs[_RIP]
            self._stop = 0
            self._restart = 0
            self._fault = None
            self._fault_rip = None
            self._fault_exact = False
            self._fault_access = 0
            count = remaining if remaining is not None else 0
            if (count > 0) != self._counting:
                self._switch_counting(count > 0)
                regs[_RIP] = rip
                regs.sync()
            args = self._emu_args
            args[1].value = rip
            args[2].value = self._until
            args[4].value = count
            status = _EMU_START(*args)
            if self._stop == _STOP_EEXIT and not count and not self._until:
                return _EEXIT  # the common exit, with nothing to account for (see below)
            # Unicorn's counter matters only to a counted run (see _retired).
            started = self._counter.value if count and self._counter is not None else 0
            if not self._stop:
                regs.forget()  # (else the hook loaded every register and nothing ran since)
            if self._error is not None:
                error, self._error = self._error, None
                raise error
            until, self._until = self._until, 0
            if until:
                # Translation blocks made for this run end at `until`: drop them.
                _LIB.uc_ctl(self._hv, _CTL_TB_FLUSH)
            done = self._retired(started, count) if count else 0  # (0 for an uncounted run)
            retired += done
            if remaining is not None:
                remaining -= done
            if self._stop == _STOP_EEXIT:
                return EngineExit(ExitKind.EEXIT, None, retired) if retired else _EEXIT
            if self._restart:
                self._do_restart()
                if remaining is not None and remaining <= 0:
                    return EngineExit(ExitKind.SLICE, None, retired)
                continue
            if self._pending_fetch is not None and self._fault is None:
                fault, at = self._pending_fetch
                self._pending_fetch = None
                if regs[Reg.RIP] == at:
                    return self._deliver(fault, at, retired)
                # Something else stopped the run first (a slice end): resume later.
            if self._fault is not None:
                fault = self._fault
                if not self._fault_exact and isinstance(fault, PageFault):
                    rerun = self._locate_page_fault(fault, remaining)
                    if rerun:
                        continue
                    fault = self._fault
                assert fault is not None
                return self._deliver(fault, self._fault_rip, retired, self._stop == _STOP_HELD)
            if status == UC_ERR_OK:
                return EngineExit(ExitKind.SLICE, None, retired)
            raise RuntimeError(
                f"Unicorn stopped with {_strerror(status)} at RIP {regs[Reg.RIP]:#x}"
            )

    def interrupt(self) -> EngineExit:
        if self._closed:
            raise SgxUsageError("NativeEngine.interrupt: the engine is closed")
        if not self.lp.enclave_mode:
            raise SgxUsageError(
                "NativeEngine.interrupt: the logical processor is not in enclave mode"
            )
        self._regs.load_all()
        aex(self.cpu, self.lp, self._regs, None)
        return EngineExit(ExitKind.AEX, None, 0)

    def close(self) -> None:
        """Detach from the logical processor and release the Unicorn instance (idempotent).

        Call it before the processor's EPC is closed: Unicorn maps the EPC buffer directly.
        """
        self._closed = True
        self._finalizer()

    # -- start-up ------------------------------------------------------------------------------------
    def _install_hooks(self) -> None:
        self._hook(UC_HOOK_TLB_FILL, _CB_TLB_FILL(self._on_fill))
        self._hook(UC_HOOK_INSN_INVALID, _CB_INSN_INVALID(self._on_invalid))
        self._hook(UC_HOOK_INTR, _CB_INTR(self._on_intr))
        self._c_code = _CB_CODE(self._on_flagged)
        self._keep.append(self._c_code)
        sys_cb = _CB_SYSCALL(self._on_syscall)
        self._hook(UC_HOOK_INSN, sys_cb, 1, 0, ux.UC_X86_INS_SYSCALL)
        self._hook(UC_HOOK_INSN, sys_cb, 1, 0, ux.UC_X86_INS_SYSENTER)
        self._hook(UC_HOOK_INSN, _CB_CPUID(self._on_cpuid), 1, 0, ux.UC_X86_INS_CPUID)
        self._hook(UC_HOOK_INSN, _CB_IN(self._on_in), 1, 0, ux.UC_X86_INS_IN)
        self._hook(UC_HOOK_INSN, _CB_OUT(self._on_out), 1, 0, ux.UC_X86_INS_OUT)

    def _hook(self, kind: int, cb: Any, begin: int = 1, end: int = 0, *extra: int) -> int:
        handle = ctypes.c_size_t()
        args = [ctypes.c_int(x) for x in extra]
        status = uclib.uc_hook_add(self._h, ctypes.byref(handle), kind, cb, None, begin, end, *args)
        _check(status, "hook")
        self._keep.append(cb)
        return int(handle.value)

    def _enter_cpl3(self) -> None:
        """IRETQ to a DPL-3 code segment: privileged instructions then raise #GP."""
        s = self._sys
        s[_SYS_GDT : _SYS_GDT + len(_GDT)] = _GDT
        s[0:2] = b"\x48\xcf"  # iretq
        s[_SYS_LANDING : _SYS_LANDING + 4] = b"\x90\x90\x90\x90"
        frame = struct.pack(
            "<5Q", _SYS_LIN + _SYS_LANDING, _USER_CS, 0x2, _SYS_LIN + _SYS_FRAME, _USER_SS
        )
        s[_SYS_FRAME : _SYS_FRAME + len(frame)] = frame
        gdtr = _Mmr(0, _SYS_LIN + _SYS_GDT, len(_GDT) - 1, 0)
        _check(uclib.uc_reg_write(self._h, ux.UC_X86_REG_GDTR, ctypes.byref(gdtr)), "GDTR")
        self._raw.write(ux.UC_X86_REG_RSP, _SYS_LIN + _SYS_FRAME)
        status = uclib.uc_emu_start(self._h, _SYS_LIN, _SYS_LIN + _SYS_LANDING, 0, _PROBE_COUNTS[0])
        cs = self._raw.read(ux.UC_X86_REG_CS) & 0xFFFF
        if status != UC_ERR_OK or cs != _USER_CS:
            raise RuntimeError(f"CPL-3 trampoline failed: {_strerror(status)}, CS={cs:#x}")

    def _switch_counting(self, on: bool) -> None:
        """Arm or disarm Unicorn's count hook outside enclave code.

        Unicorn adds or removes the hook at emu_start and, on removal, looks up the pages it
        instrumented (TLB fills that are not accesses of the enclave) and drops every
        translation block. An empty run in the system area does it here; blocks translated
        without the hook are dropped too, or they would not count. RIP is the caller's to
        restore.
        """
        landing = _SYS_LIN + _SYS_LANDING
        self._maint = True
        try:
            status = uclib.uc_emu_start(self._h, landing, landing, 0, 1 if on else 0)
        finally:
            self._maint = False
        _check(status, "count hook")
        _LIB.uc_ctl(self._hv, _CTL_TB_FLUSH)
        self._flush_tlb_now()  # Unicorn's TLB only caches lp.tlb: stale rights survive there
        self._counting = on

    def _probe_counter(self) -> ctypes.c_uint64 | None:
        """Find Unicorn's executed-instruction counter (struct uc_struct, next to the count).

        Unicorn 2.1 has no API for it; the probe runs known code twice with different counts
        and accepts only an offset that held the right values both times.
        """
        base = int(self._h.value or 0)
        found: set[int] | None = None
        for i, count in enumerate(_PROBE_COUNTS):
            start = _SYS_LIN + _SYS_LANDING
            status = uclib.uc_emu_start(self._h, start, start + 3 + i, 0, count)
            if status != UC_ERR_OK:
                return None
            blob = ctypes.string_at(base, 4096)
            hits = set()
            for off in range(0, len(blob) - 16, 8):
                a, b = struct.unpack_from("<QQ", blob, off)
                if b == count and a == 3 + i:
                    hits.add(off)
            found = hits if found is None else found & hits
        if not found or len(found) != 1:
            return None
        return ctypes.c_uint64.from_address(base + found.pop())

    # -- memory ------------------------------------------------------------------------------------
    def _map_ptr(self, pa: int, size: int, host: int) -> None:
        _check(uclib.uc_mem_map_ptr(self._h, pa, size, UC_PROT_ALL, host), f"map {pa:#x}")

    def _map_host(self, base: int, size: int) -> None:
        self._map_ptr(base, size, base)
        bisect.insort(self._ranges, (base, base + size))

    def _backed(self, pa: int) -> bool:
        ranges = self._ranges
        i = bisect.bisect_right(ranges, (pa, 1 << 64)) - 1
        return i >= 0 and ranges[i][0] <= pa < ranges[i][1]

    def _flush_tlb_now(self) -> None:
        self._tlb_stale = False
        self._granted.clear()
        self._fills.clear()
        self._clean = None
        _LIB.uc_ctl(self._hv, _CTL_TLB_FLUSH)

    def _entry_flush(self) -> None:
        """The flush an enclave entry or exit requires (SDM 42.12), done before code runs.

        Unicorn's only TLB flush clears every table (tens of KiB) and the refills cost a Python
        call each. When the thread used few pages since the last flush, they are checked again
        instead, as the processor model would fill them now (`tlb_fill`, which also caches them
        in `lp.tlb`): if every one still grants at least what Unicorn holds, Unicorn's entries
        are what fresh fills would give, and stay. That amounts to the processor filling these
        translations speculatively at entry, which the architecture permits; the EPCM and page
        tables are consulted at the entry, so a change made before it is always seen.

        The check of a page is shortened when nothing `tlb_fill` reads for it changed since it
        last ran for that page (`_fills`): `tlb_fill` is a function of the active SECS (its
        identity, base and size), the page's PTE (`mem.translate`, read again here, which sets
        the accessed bit as the walk would) and, for an EPC page, the EPCM entry (the same
        object, with the same SECS, linear address, type, state and permissions). When all are
        equal, a fill would give the recorded (index, rights) again, and that is what goes into
        `lp.tlb`. The code-page content check stays as it is. And when Unicorn was given no
        new page since the last pass (`_clean`) and the change logs of the EPCM and the page
        table name none of its pages, only the code pages are compared.
        """
        self._tlb_stale = False
        # None of the pages changed since the last pass (no EPCM entry, no PTE, no grant:
        # every grant goes through _on_fill, which drops _clean): each would be found as then.
        # Only code content is compared again (EPC bytes change without a log: a store by
        # another engine, a leaf, a direct write).
        clean = self._clean
        secs = self.lp.secs
        table = self._page_table
        if (
            clean is not None
            and table is not None
            and secs is not None
            and not self.lp.tlb
            and clean == (secs, secs.baseaddr, secs.size)
        ):
            cpu = self.cpu
            epcm = cpu.epcm
            now = (epcm.version, ENTRY_CHANGES.version, table.version)
            at = self._clean_at
            if at == now or (
                (at[0] == now[0] or epcm.unchanged_since(at[0], self._clean_indices))
                and (at[1] == now[1] or ENTRY_CHANGES.unchanged_since(at[1], self._clean_entry_ids))
                and (at[2] == now[2] or table.unchanged_since(at[2], self._clean_hits.keys()))
            ):
                self._clean_at = now
                self.lp.tlb.update(self._clean_hits)
                buf = cpu.epc.buffer
                for off, content in self._clean_code:
                    if buf[off : off + PAGE_SIZE] != content:
                        self._flush_tlb_now()
                        return
                return
        granted = self._granted
        if not granted or len(granted) > _REVALIDATE_MAX or not self._revalidate():
            self._flush_tlb_now()

    def _revalidate(self) -> bool:
        lp, cpu = self.lp, self.cpu
        tlb = lp.tlb
        secs = lp.secs
        assert secs is not None
        table = self._page_table
        buf = cpu.epc.buffer
        self._clean = None
        epcm_get = cpu.epcm.get
        translate = self.mem.translate
        fills = self._fills
        if self._fills_secs != (secs, secs.baseaddr, secs.size):
            fills.clear()
            self._fills_secs = (secs, secs.baseaddr, secs.size)
        scanned = self._scanned
        code: list[tuple[int, bytes]] = []
        for vpn, held in self._granted.items():
            last = fills.get(vpn)
            # The usual case: the fill inputs are as recorded, and the record was checked
            # against this very grant (last[4]): the checks of _revalidate_page depend on
            # nothing else (the hit, the grant, the PTE), so only the code content is compared.
            if (
                last is not None
                and last[4] is held
                and vpn not in tlb
                and translate(vpn << PAGE_SHIFT) == last[0]
                and (
                    (e := last[1]) is None
                    or (
                        epcm_get(last[3][0]) is e
                        and (e.secs, e.linaddr, e.pt, e.state, e.perms) == last[2]
                    )
                )
            ):
                hit = tlb[vpn] = last[3]
                if held[1] & EXECUTE:
                    index = hit[0]
                    cached = scanned.get(index)
                    off = index << PAGE_SHIFT
                    if cached is None or cached[1] != buf[off : off + PAGE_SIZE]:
                        return False
                    code.append((off, cached[1]))
            elif not self._revalidate_page(vpn, held):
                return False
            elif held[1] & EXECUTE:
                index = tlb[vpn][0]
                code.append((index << PAGE_SHIFT, self._scanned[index][1]))
        if table is not None:
            self._clean = (secs, secs.baseaddr, secs.size)
            self._clean_at = (cpu.epcm.version, ENTRY_CHANGES.version, table.version)
            hits = self._clean_hits = {vpn: tlb[vpn] for vpn in self._granted}
            indices = [index for index, _ in hits.values() if index >= 0]
            self._clean_indices = frozenset(indices)
            entries = self._clean_entries = tuple(cpu.epcm[i] for i in indices)
            self._clean_entry_ids = frozenset(map(id, entries))
            self._clean_code = code
        return True

    def _revalidate_page(self, vpn: int, held: tuple[int, int]) -> bool:
        """Check one page Unicorn holds (`held`: its frame and rights) as a fresh fill would."""
        lp, cpu, mem = self.lp, self.cpu, self.mem
        tlb = lp.tlb
        translate = mem.translate
        fills = self._fills
        pa, perms = held
        acc = EXECUTE if perms & EXECUTE else WRITE if perms & WRITE else READ
        hit = tlb.get(vpn)
        known = 0
        current = False  # fills[vpn] holds what a fill reads now
        if hit is None or not hit[1] & acc:
            lin = vpn << PAGE_SHIFT
            last = fills.get(vpn)
            if (
                last is not None
                and translate(lin) == last[0]
                and (
                    (e := last[1]) is None
                    or (
                        cpu.epcm.get(last[3][0]) is e
                        and (e.secs, e.linaddr, e.pt, e.state, e.perms) == last[2]
                    )
                )
            ):
                hit = tlb[vpn] = last[3]
                known = last[0]  # the PTE just read (nonzero: it was present)
            else:
                try:
                    tlb_fill(cpu, lp, mem, lin, acc)
                except SgxFault:
                    return False
                hit = tlb[vpn]
                self._record_fill(vpn, hit)
            current = True
        index, rights = hit
        if perms & ~rights:
            return False
        if index >= 0:
            if self._epc_base + (index << PAGE_SHIFT) != pa:
                return False
            if perms & EXECUTE:
                cached = self._scanned.get(index)
                off = index << PAGE_SHIFT
                if cached is None or cached[1] != cpu.epc.buffer[off : off + PAGE_SIZE]:
                    return False
        elif (known or translate(vpn << PAGE_SHIFT)) & PTE_ADDR_MASK != pa:
            return False
        if current:
            fills[vpn] = (*fills[vpn][:4], held)  # checked against this grant
        return True

    def _record_fill(self, vpn: int, hit: tuple[int, int]) -> None:
        """What a tlb_fill of `vpn` that gave `hit` read: its PTE (reading it again changes
        nothing: the walk set its A bit) and, for an EPC page, the EPCM entry and its fields.
        The grant it was checked against comes later (None: not yet)."""
        index = hit[0]
        e = self.cpu.epcm.get(index) if index >= 0 else None
        fields = () if e is None else (e.secs, e.linaddr, e.pt, e.state, e.perms)
        self._fills[vpn] = (self.mem.translate(vpn << PAGE_SHIFT), e, fields, hit, None)

    # -- hooks ---------------------------------------------------------------------------------------
    def _on_fill(self, _uc: Any, va: int, access: int, entry: int, _ud: Any) -> bool:
        """A Unicorn TLB miss: the processor model decides (SDM 38.3, spec 6.1)."""
        try:
            if self._boot or self._maint:
                if _SYS_LIN <= va < _SYS_LIN + _SYS_SIZE:
                    _set_entry(entry, self._sys_pa + (va - _SYS_LIN), 7)
                    return True
                if self._maint:
                    # Unicorn's own look-ups while it drops the count hook: a harmless page
                    # (nothing runs; the TLB is flushed afterwards).
                    _set_entry(entry, self._sys_pa, 7)
                    return True
                return False
            acc = 1 << (access - 16)  # UC_MEM_READ/WRITE/FETCH (16/17/18) -> READ/WRITE/EXECUTE
            vpn = va >> PAGE_SHIFT
            lp = self.lp
            hit = lp.tlb.get(vpn)
            if hit is None or not hit[1] & acc:
                if not canonical(va):
                    raise GeneralProtection()  # [choice] #SS for stack references is not modelled
                tlb_fill(self.cpu, lp, self.mem, va, acc)
                hit = lp.tlb[vpn]
            index, rights = hit
            if index >= 0:
                pa = self._epc_base + (index << PAGE_SHIFT)
                if acc == EXECUTE:
                    if not self._check_code(index, va & PAGE_MASK):
                        return False
                    perms = rights & (READ | EXECUTE)
                else:
                    perms = rights & (READ | WRITE)
            else:
                pa = self.mem.translate(va) & PTE_ADDR_MASK
                if not self._backed(pa):
                    if not self._on_demand or pa == 0:
                        raise SgxUsageError(
                            f"untrusted page {va & PAGE_MASK:#x} (frame {pa:#x}) has no host memory"
                        )
                    self._restart = _RESTART_MAP
                    self._restart_arg = pa
                    self._fault_access = acc
                    return False
                perms = rights & (READ | WRITE)
            _set_entry(entry, pa, perms)
            self._granted[vpn] = (pa, perms)
            self._clean = None
            return True
        except SgxFault as fault:
            self._fault = _event(fault)
            self._fault_access = _ACCESS.get(access, READ)
            return False
        except BaseException as exc:  # a bug: surface it from run()
            self._error = exc
            return False

    def _on_invalid(self, _uc: Any, _ud: Any) -> bool:
        """#UD from Unicorn: ENCLU is executed by the processor model, anything else is #UD."""
        try:
            if self._fault is not None:
                return False  # a backstop #UD earlier in this block: deliver that first
            regs = self._regs
            regs.reload()  # one batch: the leaf reads several registers
            rip = regs.values[_RIP]
            code = self._code_bytes(rip, 3)  # ENCLU without prefixes, usually
            if code != _ENCLU:
                code = self._code_bytes(rip, MAX_INSN)
            i = 0
            while code[:3] != _ENCLU and (
                i < len(code)
                and i < MAX_INSN - 3
                and (
                    code[i] in (0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65, 0x67)
                    or 0x40 <= code[i] <= 0x4F
                    or code[i] in _ENCLU_BAD_PREFIXES
                )
            ):
                i += 1
            if code[i : i + 3] != _ENCLU or (
                i and any(b in _ENCLU_BAD_PREFIXES for b in code[:i])
            ):
                self._fault = InvalidOpcode()
                self._fault_exact = True
                self._stop = _STOP_HELD
                return False
            try:
                self.cpu.enclu(self.lp, regs, self.mem)
            except SgxFault as fault:
                regs.discard()
                self._fault = _event(fault)
                self._fault_exact = True
                self._stop = _STOP_HELD
                return False
            if not self.lp.enclave_mode:
                # EEXIT: the new RIP etc. stay in the view. Unicorn stops as for an unhandled
                # #UD (cheaper than uc_emu_stop); the next run starts from the view anyway.
                self._stop = _STOP_EEXIT
                return False
            regs.values[_RIP] = (rip + i + 3) & MASK64  # (loaded: the leaf ran on the view)
            regs.dirty = True
            regs.sync()
            return True
        except BaseException as exc:
            self._error = exc
            return False

    def _on_intr(self, _uc: Any, intno: int, _ud: Any) -> None:
        """An exception (or INT n) raised by Unicorn at CPL 3."""
        try:
            rip = self._raw.read(ux.UC_X86_REG_RIP)
            fault: SgxFault
            at: int | None = None
            if intno == 3 and self._code_bytes(rip - 2, 2) == b"\xcd\x03":
                fault, at = InvalidOpcode(), rip - 2  # INT 3 (CD 03) is INT n: #UD
            elif intno not in _CPU_VECTORS:
                fault, at = InvalidOpcode(), rip - 2  # INT n: illegal in enclave mode
            elif intno in _REPORTED:
                fault = CpuException(_REPORTED[intno])
            elif intno == 6:
                fault = InvalidOpcode()
            elif intno == 7:
                fault = DeviceNotAvailable()
            else:
                # #GP (and #TS/#NP/#SS/#DF/#MC, which QEMU raises only where hardware gives
                # #GP for a flat 64-bit user) [choice].
                fault = GeneralProtection()
            self._fault = fault
            self._fault_rip = at
            self._fault_exact = True
            _LIB.uc_emu_stop(self._hv)
        except BaseException as exc:
            self._error = exc
            _LIB.uc_emu_stop(self._hv)

    def _on_flagged(self, _uc: Any, address: int, _size: int, _ud: Any) -> None:
        """A code hook on a flagged instruction start: #UD before it executes."""
        try:
            code = self._code_bytes(address, MAX_INSN)
            insn = next(self._sweeper.sweep(code, address), None)
            if insn is None or insn[0] != address or not insn[2]:
                return  # the page changed since the scan: nothing illegal here any more
            self._fault = InvalidOpcode()
            self._fault_rip = address
            self._fault_exact = True
            _LIB.uc_emu_stop(self._hv)
        except BaseException as exc:
            self._error = exc
            _LIB.uc_emu_stop(self._hv)

    def _backstop(self) -> None:
        """SYSCALL/SYSENTER/CPUID/IN/OUT the scan missed: #UD at the instruction.

        Unicorn runs the rest of the translation block after CPUID/IN/OUT hooks; the address
        gets a code hook so that the next execution is exact.
        """
        rip = self._raw.read(ux.UC_X86_REG_RIP)
        self._fault = InvalidOpcode()
        self._fault_rip = rip
        self._fault_exact = True
        self._flag(rip)
        self._restart = 0
        _LIB.uc_emu_stop(self._hv)

    def _on_syscall(self, _uc: Any, _ud: Any) -> None:
        try:
            self._backstop()
        except BaseException as exc:
            self._error = exc

    def _on_cpuid(self, _uc: Any, _ud: Any) -> int:
        try:
            self._backstop()
        except BaseException as exc:
            self._error = exc
        return 1  # skip: no register is written

    def _on_in(self, _uc: Any, _port: int, _size: int, _ud: Any) -> int:
        try:
            self._backstop()
        except BaseException as exc:
            self._error = exc
        return 0

    def _on_out(self, _uc: Any, _port: int, _size: int, _value: int, _ud: Any) -> None:
        try:
            self._backstop()
        except BaseException as exc:
            self._error = exc

    # -- code pages --------------------------------------------------------------------------------
    def _check_code(self, index: int, page: int) -> bool:
        """Scan a code page on its first fetch fill, and again whenever its content changed."""
        off = index << PAGE_SHIFT
        content = self.cpu.epc.buffer[off : off + PAGE_SIZE]
        cached = self._scanned.get(index)
        if cached is not None and cached[0] == page and cached[1] == content:
            return True
        self._scanned[index] = (page, content)
        shared = _SCANS.setdefault(self.cpu, {})
        known = shared.get((index, page))
        if known is not None and known[0] == content:
            flagged = known[1]  # another engine swept this page already
        else:
            before = self._peek(page - SWEEP_LEAD, SWEEP_LEAD)
            after = self._peek(page + PAGE_SIZE, MAX_INSN)
            window = before + content + after
            rip = self._raw.read(ux.UC_X86_REG_RIP)
            found, _ = self._sweeper.scan(
                window, page - len(before), page - MAX_INSN, page + PAGE_SIZE, (rip,)
            )
            flagged = frozenset(found)
            shared[(index, page)] = (content, flagged)
        for addr in flagged:
            self._flag(addr)
        if cached is not None:
            # Translation blocks may hold the old code (the processor model or another
            # engine wrote the page): drop them and fill again.
            self._restart = _RESTART_TB_FLUSH
            self._fault_access = EXECUTE
            return False
        return True

    def _flag(self, addr: int) -> None:
        if addr not in self._flag_hooks:
            self._flag_hooks[addr] = self._hook(UC_HOOK_CODE, self._c_code, addr, addr)
            self._keep.pop()  # the shared callback is already kept

    def _peek(self, lin: int, size: int) -> bytes:
        """Bytes of an EPC page mapped at `lin` (for the scan only; b"" when there is none)."""
        if lin < 0:
            return b""
        pte = self.mem.translate(lin)
        index = self.cpu.epc.index(pte & PTE_ADDR_MASK) if pte & 1 else -1
        if index < 0:
            return b""
        off = (index << PAGE_SHIFT) + (lin & ~PAGE_MASK)
        return self.cpu.epc.buffer[off : off + size]

    def _code_bytes(self, lin: int, size: int) -> bytes:
        """Up to `size` bytes of enclave code at `lin`, through this LP's translations."""
        off = lin & ~PAGE_MASK
        if off + size <= PAGE_SIZE:  # within one page (the usual case): the loop's first step
            hit = self.lp.tlb.get(lin >> PAGE_SHIFT)
            if hit is None or hit[0] < 0:
                return b""
            start = (hit[0] << PAGE_SHIFT) + off
            return self.cpu.epc.buffer[start : start + size]
        out = b""
        epc = self.cpu.epc
        while size > 0:
            hit = self.lp.tlb.get(lin >> PAGE_SHIFT)
            if hit is None or hit[0] < 0:
                break
            off = lin & ~PAGE_MASK
            n = min(size, PAGE_SIZE - off)
            start = (hit[0] << PAGE_SHIFT) + off
            out += epc.buffer[start : start + n]
            lin += n
            size -= n
        return out

    # -- stops ---------------------------------------------------------------------------------------
    def _retired(self, started: int, count: int) -> int:
        """Instructions this emu_start retired, from Unicorn's counter of started ones.

        Unicorn counts an instruction when it starts (each REP iteration separately), so a
        faulting instruction is counted but did not retire; a fetch refused before a block
        ran was never counted, and a trap (INT3, single-step) retired.
        """
        if self._counter is None or not count:
            return 0  # not counted without a budget (the count hook costs 15-25x in speed)
        fault = self._fault
        if self._stop == _STOP_EEXIT:
            return started
        if fault is not None:
            if fault.vector in (Vector.BP, Vector.DB) or (
                self._fault_access == EXECUTE and not self._fault_exact
            ):
                return started
            return max(started - 1, 0)
        if self._restart:
            return started if self._fault_access == EXECUTE else max(started - 1, 0)
        return min(started, count)  # the budget ran out: the next one was counted, not run

    def _do_restart(self) -> None:
        kind, self._restart = self._restart, 0
        if kind == _RESTART_TB_FLUSH:
            _LIB.uc_ctl(self._hv, _CTL_TB_FLUSH)
        elif kind == _RESTART_MAP:
            pa = self._restart_arg
            chunk = pa & ~(_CHUNK - 1)
            self._map_host(chunk, _CHUNK)

    def _locate_page_fault(self, fault: PageFault, remaining: int | None) -> bool:
        """Make a refused fill's #PF exact; True when a re-run is needed first."""
        regs = self._regs
        rip = regs[Reg.RIP]
        page = fault.addr & PAGE_MASK
        if self._fault_access == EXECUTE:
            if rip & PAGE_MASK == page or rip > page:
                self._fault = PageFault(max(rip, page), fault.error_code)
                return False
            # The block at RIP runs into `page`: stop at the instruction that touches it.
            at = self._first_insn_touching(rip, page)
            if at == rip:
                self._fault = PageFault(page, fault.error_code)
                return False
            self._until = at
            self._pending_fetch = (PageFault(page, fault.error_code), at)
            return True
        code = self._code_bytes(rip, MAX_INSN)
        reader = self._reg_by_name
        accesses = self._decoder.accesses(code, rip, reader)
        kind = WRITE if self._fault_access == WRITE else READ
        addr, kinds = exact_address(accesses, page, kind)
        error_code = fault.error_code
        if kind == READ and kinds & WRITE:
            # A read-modify-write operand: Unicorn loads first, hardware reports the write
            # (SDM Vol. 3A 4.7, W/R = the access is a write).
            try:
                tlb_fill(self.cpu, self.lp, self.mem, addr, WRITE)
            except PageFault as as_write:
                error_code = as_write.error_code
            except SgxFault:
                pass
        self._fault = PageFault(addr, error_code)
        return False

    def _reg_by_name(self, name: str) -> int:
        return self._regs[Reg[name]]

    def _first_insn_touching(self, rip: int, page: int) -> int:
        code = self._code_bytes(rip, page - rip)
        pos = 0
        for a, size, _reason in self._sweeper.sweep(code, rip):
            if a != rip + pos:
                break  # undecodable byte: Unicorn would have raised #UD there
            if a + size >= page:
                return a if a + size > page else a + size
            pos += size
        return rip + pos

    def _deliver(
        self, fault: SgxFault, rip: int | None, retired: int, held: bool = False
    ) -> EngineExit:
        """AEX for `fault` with RIP at `rip` (default: the current RIP). `held`: the ENCLU hook
        stopped the run (a leaf's fault, or #UD): QEMU itself raised only #UD."""
        regs = self._regs
        regs.load_all()
        if rip is not None:
            regs[_RIP] = rip
        if not held:
            legacy = regs.xsave()
            # Reset QEMU's exception bookkeeping (old_exception, which makes a second fault a
            # #DF) by restoring the start-up CPU state, then write every register back: Unicorn
            # never delivered the exception. The x87/SSE registers now hold the start-up state;
            # the architectural one is still `legacy` (the view writes it before code runs
            # again, unless an xrstor replaces it). A #UD is not recorded there (it is neither
            # contributory nor a #PF), so a held stop needs none of this, as EEXIT does not.
            _check(_LIB.uc_context_restore(self._hv, self._ctx), "context restore")
            regs.set_all_dirty()
            regs.reset_fx(self._ctx_fx, legacy)
        aex(self.cpu, self.lp, regs, fault)
        return EngineExit(_AEX, fault, retired)


class _Mmr(ctypes.Structure):
    _fields_ = [  # uc_x86_mmr (GDTR/IDTR/LDTR/TR)
        ("selector", ctypes.c_uint16),
        ("base", ctypes.c_uint64),
        ("limit", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
    ]


def _event(fault: SgxFault) -> SgxFault:
    """A fault raised by the processor model, kept as the event to deliver.

    It is an architectural event, not an error: its traceback goes. Kept, the traceback's
    frames (and the callers' frames they link to) would hold the EngineExit that carries the
    fault: a reference cycle per fault, left to the cyclic garbage collector.
    """
    return fault.with_traceback(None)


def _strerror(status: int) -> str:
    text = uclib.uc_strerror(status)
    return f"{text.decode() if isinstance(text, bytes) else text} ({status})"


def _check(status: int, what: str) -> None:
    if status != UC_ERR_OK:
        raise RuntimeError(f"unicorn: {what}: {_strerror(status)}")


def _release(handle: ctypes.c_void_p, ctx: ctypes.c_void_p) -> None:
    """Free the Unicorn instance (weakref finalizer: must not reference the engine)."""
    if ctx.value:
        uclib.uc_context_free(ctx)
        ctx.value = None
    if handle.value:
        uclib.uc_close(handle)
        handle.value = None


def _host_address(buffer: Any) -> int:
    """Host address of a writable buffer (the temporary export is released at once)."""
    obj = ctypes.c_char.from_buffer(buffer)
    addr = ctypes.addressof(obj)
    del obj
    return addr


class _TlbEntry(ctypes.Structure):
    _fields_ = [("paddr", ctypes.c_uint64), ("perms", ctypes.c_int)]  # struct uc_tlb_entry


_entry_at = _TlbEntry.from_address


def _set_entry(entry: int, pa: int, perms: int) -> None:
    e = _entry_at(entry)
    e.paddr = pa
    e.perms = perms


__all__ = ["NativeEngine"]
