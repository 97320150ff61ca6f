"""Registers of a Unicorn x86-64 instance, read and written around the Python binding.

The binding's `reg_read` costs about 2 µs; a raw `uc_reg_read` through ctypes about 0.5 µs and a
batch of 20 registers about the same as two single reads (unicorn-engine-notes.md §1). The view
the processor model gets (`UcRegisterView`) is lazy: nothing is read until a register is needed,
then all 20 in one batch; writes stay in a Python list and reach Unicorn in one batch just
before emulation resumes.

x87/SSE state is exchanged in the 512-byte FXSAVE/XSAVE legacy layout (SDM Vol. 1 Table 10-2)
built from Unicorn's FPU and XMM registers with `struct` (per-register Python conversion cost
10-13 µs each way); tests check it byte for byte against an FXSAVE64 executed inside Unicorn.
The view loads and saves it lazily too (see `UcRegisterView`).
"""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Sequence
from typing import Any

from unicorn import x86_const as ux
from unicorn.unicorn_py3.unicorn import uclib

from ..hw.regs import MASK64, Reg

_U64 = ctypes.c_uint64

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
_FX_END = 416  # end of XMM15; the rest of the 512 bytes is reserved
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
# The batch buffer: one 16-byte slot per register of _FPU_REGS (the 7 control registers, then
# ST0-ST7 at _UC_ST, XMM0-XMM15 at _UC_XMM).
_UC_HEAD = struct.Struct("<H14xH14xH14xH14xQ8xQ8xI12x")  # FCW FSW FTW(full) FOP FIP FDP MXCSR
_UC_ST = _UC_HEAD.size
_UC_XMM = _UC_ST + 8 * 16
_UC_END = 16 * _NFPU
_FX_TAIL = bytes(512 - _FX_END)  # FXSAVE stores 0 in the reserved bytes 416-511
# Abridged tag bits of four full tags (one byte of FPTAG): set when the tag is not empty (11b).
_ABRIDGE = bytes(sum(1 << i for i in range(4) if (b >> (2 * i)) & 3 != 3) for b in range(256))
# Full tag word of an abridged tag: empty (11b) or valid (00b); Unicorn keeps only empty or not.
_EXPAND = tuple(sum(3 << (2 * i) for i in range(8) if not b >> i & 1) for b in range(256))
_ST_MASK = sum(((1 << 80) - 1) << (128 * i) for i in range(8))  # the 10 bytes of each ST slot


# The same library without ctypes prototypes: calls skip argument conversion (3x faster). And
# they keep the GIL: these calls are short, and releasing and taking it back costs more than
# them (uc_emu_start goes through the binding, which releases it while code runs).
_LIB = ctypes.PyDLL(uclib._name)
REGS64 = struct.Struct(f"<{NREGS}Q")


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
        # x87/SSE: one 16-byte slot per register; the last batch read and its FXSAVE image.
        self._fpu = ctypes.create_string_buffer(16 * _NFPU)
        self._last_raw = b""
        self._last_area = b""
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

    def batch_args(self) -> tuple[Any, Any, tuple[Any, ...], Any]:
        """The batch read and write of all 20 `Reg` registers: the two C functions, their
        arguments (handle, register ids, value pointers, count) and the value slots, which
        `REGS64` packs and unpacks (the view calls them directly: a method call more costs)."""
        args = (self.handle, self._all_ids, self._all_ptrs, NREGS)
        return self._read_batch, self._write_batch, args, self._vals

    # -- x87 / SSE ---------------------------------------------------------------------------
    def fxsave(self) -> bytes:
        """The x87/SSE state in the 512-byte FXSAVE64 layout."""
        self._read_batch(self.handle, self._fpu_ids, self._fpu_ptrs, _NFPU)
        raw = self._fpu.raw
        if raw == self._last_raw:
            return self._last_area  # the same registers read as last time: the same image
        area = self._last_area = self._fxsave_area(raw)
        self._last_raw = raw
        return area

    @staticmethod
    def _fxsave_area(raw: bytes) -> bytes:
        fcw, fsw, tag, fop, fip, fdp, mxcsr = _UC_HEAD.unpack_from(raw)
        ftw = _ABRIDGE[tag & 0xFF] | _ABRIDGE[tag >> 8] << 4
        # ST(i) in 16-byte slots, top-relative as FXSAVE stores them; bytes 10-15 read as 0.
        st = (int.from_bytes(raw[_UC_ST:_UC_XMM], "little") & _ST_MASK).to_bytes(128, "little")
        head = _FX_HEAD.pack(fcw, fsw, ftw, fop & 0x7FF, fip, fdp, mxcsr, MXCSR_MASK)
        return head + st + raw[_UC_XMM:_UC_END] + _FX_TAIL

    def fxrstor(self, area: bytes) -> None:
        """Load x87/SSE state from a 512-byte FXSAVE64 layout."""
        fcw, fsw, ftw, fop, fip, fdp, mxcsr, _ = _FX_HEAD.unpack_from(area)
        # The ST and XMM slots of the batch are the area's own ST/XMM fields, in order
        # (Unicorn reads 10 bytes of each ST slot).
        buf = _UC_HEAD.pack(fcw, fsw, _EXPAND[ftw], fop, fip, fdp, mxcsr) + area[_FX_ST:_FX_END]
        ctypes.memmove(self._fpu, buf, _UC_END)
        self._write_batch(self.handle, self._fpu_ids, self._fpu_ptrs, _NFPU)


class UcRegisterView:
    """The `RegisterFile` the processor model sees: a write-back cache over Unicorn's registers.

    `values` holds every register once `loaded`: the first access after Unicorn ran reads all
    of them in one batch (a batch costs about two single reads, and every leaf reads several).
    `dirty`: some register was written since, and Unicorn does not have it yet; `sync()`
    writes the whole file in one batch before Unicorn runs again, `forget()` marks the values
    stale after it ran.

    The x87/SSE state is lazy too (`xsave`/`xrstor` exchange the 512-byte legacy area):

    * `_fx_known`: what an FXSAVE of Unicorn's current x87/SSE registers gives (None: not
      known). It is set by a read (`xsave`), by a load of an area known to be such an image,
      and by `reset_fx`; dropped whenever Unicorn runs (`forget`).
    * `_fx_pending`: the architectural state when Unicorn does not hold it yet (an `xrstor`
      not yet written); `sync()` writes it before code runs. `_fx_exact`: the pending area is
      itself an FXSAVE image (what `xsave` must report after loading it), so `xsave` can
      return it as is; otherwise `xsave` loads it into Unicorn and reads it back, which is
      what hardware reports after an XRSTOR of it (reserved fields, MXCSR_MASK, FOP bits).

    Loading an area equal to `_fx_known` writes nothing: Unicorn holds exactly that state
    (an FXSAVE image read back from Unicorn loads as the same registers). An AEX → ERESUME
    round trip therefore reads the x87/SSE registers once and writes them at most once.
    """

    __slots__ = (
        "raw", "values", "loaded", "dirty", "_held", "_fx_known", "_fx_pending", "_fx_exact",
        "_read", "_write", "_args", "_vals",
    )  # fmt: skip

    def __init__(self, raw: RawRegs) -> None:
        self.raw = raw
        self._read, self._write, self._args, self._vals = raw.batch_args()
        self.values = [0] * NREGS
        self.loaded = False
        self.dirty = False
        # The last batch read while it is still what Unicorn holds (nothing ran or was written
        # since), else None: `discard` goes back to it without reading again.
        self._held: tuple[int, ...] | None = None
        self._fx_known: bytes | None = None
        self._fx_pending: bytes | None = None
        self._fx_exact = False

    def __getitem__(self, reg: Reg) -> int:
        if not self.loaded:
            self.load_all()
        return self.values[reg]

    def __setitem__(self, reg: Reg, value: int) -> None:
        if not self.loaded:
            self.load_all()
        self.values[reg] = value & MASK64
        self.dirty = True

    # -- RegisterFile: every register at once -----------------------------------------------
    def get_all(self) -> list[int]:
        if not self.loaded:
            self.load_all()
        return self.values[:]

    def set_all(self, values: Sequence[int]) -> None:
        # Not masked: callers pass 64-bit fields, and a value out of range would make
        # `sync` fail (struct.error), never reach Unicorn truncated. A list is kept as is
        # (the caller gives it up: RegisterFile.set_all).
        assert len(values) == NREGS
        self.values = values if type(values) is list else list(values)
        self.loaded = True
        self.dirty = True

    # -- engine side ------------------------------------------------------------------------
    def load_all(self) -> None:
        """Make every register valid with one batch read."""
        if not self.loaded:
            self._read(*self._args)
            held = self._held = REGS64.unpack_from(self._vals)
            self.values = list(held)
            self.loaded = True

    def set_all_dirty(self) -> None:
        """Every register must be written back: Unicorn's CPU state was replaced."""
        assert self.loaded, "load_all() first"
        self.dirty = True
        self._held = None

    def sync(self) -> None:
        """Write the registers (one batch) and a pending x87/SSE state to Unicorn."""
        if self._fx_pending is not None:
            self._fx_flush()
        if self.dirty:
            REGS64.pack_into(self._vals, 0, *self.values)
            self._write(*self._args)
            self.dirty = False
            self._held = None

    def forget(self) -> None:
        """Unicorn ran: cached values are stale (every run starts with a `sync`)."""
        assert not self.dirty and self._fx_pending is None, "sync() before Unicorn runs"
        self.loaded = False
        self._held = None
        self._fx_known = None

    def reload(self) -> None:
        """`forget` then `load_all`, in one call (the ENCLU hook's first step)."""
        assert not self.dirty and self._fx_pending is None, "sync() before Unicorn runs"
        self._fx_known = None
        self._read(*self._args)
        held = self._held = REGS64.unpack_from(self._vals)
        self.values = list(held)
        self.loaded = True

    def discard(self) -> None:
        """Drop register writes not synced (a faulting instruction has no architectural effect).

        The view then holds what Unicorn holds: the last batch read when nothing was written to
        Unicorn since (`_held`), else nothing (the next access reads again). Only ENCLU leaves
        run inside a run, and none of them loads x87/SSE state: that state is left as it is.
        """
        self.dirty = False
        held = self._held
        if held is None:
            self.loaded = False
        else:
            self.values = list(held)
            self.loaded = True

    def reset_fx(self, held: bytes, state: bytes) -> None:
        """Unicorn's x87/SSE registers were replaced (a context restore) by the FXSAVE image
        `held`, while the architectural state is still the FXSAVE image `state`."""
        self._fx_known = held
        if state == held:
            self._fx_pending = None
        else:
            self._fx_pending = state
            self._fx_exact = True

    def _fx_flush(self) -> None:
        pending = self._fx_pending
        assert pending is not None
        self.raw.fxrstor(pending)
        self._fx_known = pending if self._fx_exact else None
        self._fx_pending = None

    # -- RegisterFile: x87/SSE in the XSAVE legacy layout ------------------------------------
    def xsave(self) -> bytes:
        if self._fx_pending is not None:
            if self._fx_exact:
                return self._fx_pending
            self._fx_flush()
        known = self._fx_known
        if known is None:
            known = self._fx_known = self.raw.fxsave()
        return known

    def xrstor(self, legacy: bytes) -> None:
        area = bytes(legacy[:512])
        if area == self._fx_known:
            self._fx_pending = None  # Unicorn holds exactly this state already
        elif area != self._fx_pending:
            self._fx_pending = area
            self._fx_exact = False

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{r.name.lower()}={self.values[r]:#x}" for r in Reg if self.loaded and self.values[r]
        )
        return f"UcRegisterView({shown})"
