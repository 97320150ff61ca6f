"""Registers of a Unicorn x86-64 instance, read and written around the Python binding.

The binding's `reg_read` costs about 2 µs; a raw `uc_reg_read` through ctypes about 0.5 µs and a
batch of 20 registers about the same as two single reads (unicorn-engine-notes.md §1). The view
the processor model gets (`UcRegisterView`) is lazy: a leaf reads only the registers it needs,
writes stay in a Python cache and reach Unicorn in one batch just before emulation resumes.

x87/SSE state is exchanged in the 512-byte FXSAVE/XSAVE legacy layout (SDM Vol. 1 Table 10-2)
built from Unicorn's FPU and XMM registers; tests check it byte for byte against an FXSAVE64
executed inside Unicorn.
"""

from __future__ import annotations

import ctypes
import struct
from typing import Any

from unicorn import x86_const as ux
from unicorn.unicorn_py3.unicorn import uclib

from ..hw.regs import Reg

_U64 = ctypes.c_uint64
MASK64 = 0xFFFF_FFFF_FFFF_FFFF

# Unicorn register ids in `Reg` order (GPRSGX order, then RFLAGS, RIP, FS/GS bases).
UC_REG_IDS: tuple[int, ...] = (
    ux.UC_X86_REG_RAX, ux.UC_X86_REG_RCX, ux.UC_X86_REG_RDX, ux.UC_X86_REG_RBX,
    ux.UC_X86_REG_RSP, ux.UC_X86_REG_RBP, ux.UC_X86_REG_RSI, ux.UC_X86_REG_RDI,
    ux.UC_X86_REG_R8, ux.UC_X86_REG_R9, ux.UC_X86_REG_R10, ux.UC_X86_REG_R11,
    ux.UC_X86_REG_R12, ux.UC_X86_REG_R13, ux.UC_X86_REG_R14, ux.UC_X86_REG_R15,
    ux.UC_X86_REG_RFLAGS, ux.UC_X86_REG_RIP, ux.UC_X86_REG_FS_BASE, ux.UC_X86_REG_GS_BASE,
)  # fmt: skip
NREGS = len(UC_REG_IDS)
assert len(Reg) == NREGS

# FXSAVE legacy area offsets (SDM Vol. 1 Table 10-2, 64-bit format).
_FX_HEAD = struct.Struct("<HHBxHQQII")  # FCW FSW FTW(abridged) FOP FIP FDP MXCSR MXCSR_MASK
_FX_ST = 32
_FX_XMM = 160
MXCSR_MASK = 0xFFFF  # what FXSAVE reports on processors with DAZ (and what hw.regs uses)

# x87/SSE registers exchanged by xsave()/xrstor(): (id, size in bytes).
_FPU_REGS: tuple[tuple[int, int], ...] = (
    (ux.UC_X86_REG_FPCW, 2),
    (ux.UC_X86_REG_FPSW, 2),  # written before the ST registers: it sets TOP
    (ux.UC_X86_REG_FPTAG, 2),
    (ux.UC_X86_REG_FOP, 2),
    (ux.UC_X86_REG_FIP, 8),
    (ux.UC_X86_REG_FDP, 8),
    (ux.UC_X86_REG_MXCSR, 4),
    *((ux.UC_X86_REG_ST0 + i, 10) for i in range(8)),
    *((ux.UC_X86_REG_XMM0 + i, 16) for i in range(16)),
)
_NFPU = len(_FPU_REGS)


# The same library without ctypes prototypes: calls skip argument conversion (3x faster).
_LIB = ctypes.CDLL(uclib._name)
_REGS64 = struct.Struct(f"<{NREGS}Q")


class RawRegs:
    """Single and batched register access to one Unicorn instance through the C API."""

    def __init__(self, handle: Any) -> None:
        self.handle = ctypes.c_void_p(handle.value)
        self._read = _LIB.uc_reg_read
        self._write = _LIB.uc_reg_write
        self._read_batch = _LIB.uc_reg_read_batch
        self._write_batch = _LIB.uc_reg_write_batch
        self._v = _U64()
        self._pv = ctypes.byref(self._v)
        # One 8-byte slot per `Reg`, in `Reg` order, for whole-file batches.
        self._vals = (_U64 * NREGS)()
        self._all_ids = (ctypes.c_int * NREGS)(*UC_REG_IDS)
        base = ctypes.addressof(self._vals)
        self._all_ptrs = (ctypes.c_void_p * NREGS)(*(base + 8 * i for i in range(NREGS)))
        # x87/SSE: one 16-byte slot per register.
        self._fpu = ctypes.create_string_buffer(16 * _NFPU)
        fbase = ctypes.addressof(self._fpu)
        self._fpu_ids = (ctypes.c_int * _NFPU)(*(rid for rid, _ in _FPU_REGS))
        self._fpu_ptrs = (ctypes.c_void_p * _NFPU)(*(fbase + 16 * i for i in range(_NFPU)))

    def read(self, reg_id: int) -> int:
        """A 64-bit register (narrower ones: mask the result)."""
        self._read(self.handle, reg_id, self._pv)
        return self._v.value

    def write(self, reg_id: int, value: int) -> None:
        self._v.value = value & MASK64
        self._write(self.handle, reg_id, self._pv)

    def read_all(self) -> tuple[int, ...]:
        """All 20 `Reg` registers in one call."""
        self._read_batch(self.handle, self._all_ids, self._all_ptrs, NREGS)
        return _REGS64.unpack_from(self._vals)

    def write_all(self, values: list[int]) -> None:
        """All 20 `Reg` registers in one call."""
        _REGS64.pack_into(self._vals, 0, *values)
        self._write_batch(self.handle, self._all_ids, self._all_ptrs, NREGS)

    # -- x87 / SSE ---------------------------------------------------------------------------
    def fxsave(self) -> bytes:
        """The x87/SSE state in the 512-byte FXSAVE64 layout."""
        self._read_batch(self.handle, self._fpu_ids, self._fpu_ptrs, _NFPU)
        raw = self._fpu.raw
        fcw, fsw, ftw_full, fop = (
            int.from_bytes(raw[16 * i : 16 * i + 2], "little") for i in range(4)
        )
        fip = int.from_bytes(raw[64:72], "little")
        fdp = int.from_bytes(raw[80:88], "little")
        mxcsr = int.from_bytes(raw[96:100], "little")
        # Abridged tag: bit i set when physical register i is not empty (tag != 11b).
        ftw = 0
        for i in range(8):
            if (ftw_full >> (2 * i)) & 3 != 3:
                ftw |= 1 << i
        area = bytearray(512)
        _FX_HEAD.pack_into(area, 0, fcw, fsw, ftw, fop & 0x7FF, fip, fdp, mxcsr, MXCSR_MASK)
        for i in range(8):  # ST(i), top-relative, as FXSAVE stores them
            s = 16 * (7 + i)
            area[_FX_ST + 16 * i : _FX_ST + 16 * i + 10] = raw[s : s + 10]
        for i in range(16):
            s = 16 * (15 + i)
            area[_FX_XMM + 16 * i : _FX_XMM + 16 * i + 16] = raw[s : s + 16]
        return bytes(area)

    def fxrstor(self, area: bytes) -> None:
        """Load x87/SSE state from a 512-byte FXSAVE64 layout."""
        fcw, fsw, ftw, fop, fip, fdp, mxcsr, _ = _FX_HEAD.unpack_from(area, 0)
        ftw_full = 0
        for i in range(8):
            if not ftw >> i & 1:
                ftw_full |= 3 << (2 * i)  # empty; Unicorn keeps only empty / not empty
        buf = bytearray(16 * _NFPU)
        for k, v in enumerate((fcw, fsw, ftw_full, fop)):
            buf[16 * k : 16 * k + 2] = v.to_bytes(2, "little")
        buf[64:72] = fip.to_bytes(8, "little")
        buf[80:88] = fdp.to_bytes(8, "little")
        buf[96:100] = mxcsr.to_bytes(4, "little")
        for i in range(8):
            buf[16 * (7 + i) : 16 * (7 + i) + 10] = area[_FX_ST + 16 * i : _FX_ST + 16 * i + 10]
        for i in range(16):
            buf[16 * (15 + i) : 16 * (15 + i) + 16] = area[_FX_XMM + 16 * i : _FX_XMM + 16 * i + 16]
        ctypes.memmove(self._fpu, bytes(buf), len(buf))
        self._write_batch(self.handle, self._fpu_ids, self._fpu_ptrs, _NFPU)


class UcRegisterView:
    """The `RegisterFile` the processor model sees: a write-back cache over Unicorn's registers.

    `valid[i]`: `values[i]` holds the current value; `dirty[i]`: it still has to reach Unicorn
    (`_pending` lists the dirty registers in the order they were first written). A read of a
    register not cached loads every register in one batch: a batch costs about two single
    reads, and a leaf reads several (EENTER reads eight). The engine calls `sync()` before
    Unicorn runs and `forget()` after it ran.
    """

    __slots__ = ("raw", "values", "valid", "dirty", "_pending", "_fx_override")

    def __init__(self, raw: RawRegs) -> None:
        self.raw = raw
        self.values = [0] * NREGS
        self.valid = [False] * NREGS
        self.dirty = [False] * NREGS
        self._pending: list[int] = []
        self._fx_override: bytes | None = None

    def __getitem__(self, reg: Reg) -> int:
        if self.valid[reg]:
            return self.values[reg]
        self.load_all()
        return self.values[reg]

    def __setitem__(self, reg: Reg, value: int) -> None:
        self.values[reg] = value & MASK64
        self.valid[reg] = True
        if not self.dirty[reg]:
            self.dirty[reg] = True
            self._pending.append(reg)

    def load_all(self) -> None:
        """Make every register valid with one batch read (dirty values win)."""
        fresh = list(self.raw.read_all())
        values = self.values
        for i in self._pending:
            fresh[i] = values[i]
        self.values = fresh
        self.valid = [True] * NREGS

    def set_all_dirty(self) -> None:
        """Every (valid) register must be written back: Unicorn's CPU state was replaced."""
        assert all(self.valid), "load_all() first"
        self.dirty = [True] * NREGS
        self._pending = list(range(NREGS))

    def sync(self) -> None:
        """Write the dirty registers to Unicorn (a whole-file batch beats a partial one)."""
        pending = self._pending
        if not pending:
            return
        if len(pending) <= 2:
            for i in sorted(pending):
                self.raw.write(UC_REG_IDS[i], self.values[i])
        else:
            if not all(self.valid):
                self.load_all()
            self.raw.write_all(self.values)
        self.dirty = [False] * NREGS
        self._pending = []

    def forget(self) -> None:
        """Unicorn ran: cached values are stale (there are no dirty ones at this point)."""
        self.valid = list(self.dirty)
        self._fx_override = None

    def discard(self) -> None:
        """Drop pending writes (a faulting instruction has no architectural effect)."""
        self.dirty = [False] * NREGS
        self._pending = []
        self.valid = [False] * NREGS

    def override_xsave(self, area: bytes) -> None:
        """Report `area` from xsave() until the next xrstor() (state saved before a reset)."""
        self._fx_override = area

    # -- RegisterFile: x87/SSE in the XSAVE legacy layout ------------------------------------
    def xsave(self) -> bytes:
        if self._fx_override is not None:
            return self._fx_override
        return self.raw.fxsave()

    def xrstor(self, legacy: bytes) -> None:
        self._fx_override = None
        self.raw.fxrstor(bytes(legacy[:512]))

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{r.name.lower()}={self.values[r]:#x}" for r in Reg if self.valid[r] and self.values[r]
        )
        return f"UcRegisterView({shown})"
