"""The register file as the processor model sees it.

ENCLU leaves and AEX read and write registers. Engines keep the real register file (Unicorn's,
or a plain list for scripted enclaves) and hand the processor a `RegisterFile` view, which lets
the native engine read only the registers a leaf touches.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import IntEnum
from typing import Protocol


class Reg(IntEnum):
    """Registers in GPRSGX order (SDM Table 38-8), then RIP-adjacent state the SSA also holds."""

    RAX = 0
    RCX = 1
    RDX = 2
    RBX = 3
    RSP = 4
    RBP = 5
    RSI = 6
    RDI = 7
    R8 = 8
    R9 = 9
    R10 = 10
    R11 = 11
    R12 = 12
    R13 = 13
    R14 = 14
    R15 = 15
    RFLAGS = 16
    RIP = 17
    FSBASE = 18
    GSBASE = 19


GPRS = tuple(Reg)[:16]

# RFLAGS bits the leaves touch.
CF = 1 << 0
PF = 1 << 2
AF = 1 << 4
ZF = 1 << 6
SF = 1 << 7
TF = 1 << 8
MASK64 = (1 << 64) - 1  # register values are 64-bit: a write wraps
IF = 1 << 9
DF = 1 << 10
OF = 1 << 11
NT = 1 << 14
RF = 1 << 16
VM = 1 << 17
AC = 1 << 18
ID = 1 << 21
ARITH_FLAGS = CF | PF | AF | ZF | SF | OF
RFLAGS_FIXED = 1 << 1  # bit 1 always reads as 1


class RegisterFile(Protocol):
    """Registers of the logical processor executing a leaf."""

    def __getitem__(self, reg: Reg) -> int: ...

    def __setitem__(self, reg: Reg, value: int) -> None: ...

    def get_all(self) -> list[int]:
        """Every register in `Reg` order (the same as reading each one): a new list."""
        ...

    def set_all(self, values: Sequence[int]) -> None:
        """Every register in `Reg` order (the same as writing each one); 64-bit values.

        The file may keep a list it is given as its own: the caller must not change it after.
        """
        ...

    def xsave(self) -> bytes:
        """The x87/SSE state in XSAVE legacy format (512 bytes)."""
        ...

    def xrstor(self, legacy: bytes) -> None:
        """Load x87/SSE state from a 512-byte XSAVE legacy area."""
        ...


# x87/SSE reset values an AEX leaves behind (SDM Table 40-1): FCW 037Fh, MXCSR 1F80h.
XSAVE_INIT_FCW = 0x037F
XSAVE_INIT_MXCSR = 0x1F80


def xsave_init_legacy() -> bytearray:
    """A 512-byte XSAVE legacy area in INIT state (FCW=037Fh, MXCSR=1F80h, all else 0)."""
    area = bytearray(512)
    area[0:2] = XSAVE_INIT_FCW.to_bytes(2, "little")
    area[24:28] = XSAVE_INIT_MXCSR.to_bytes(4, "little")
    area[28:32] = (0xFFFF).to_bytes(4, "little")  # MXCSR_MASK as reported by processors
    return area


class Registers:
    """A plain register file: used by scripted enclaves, the kernel model and tests."""

    __slots__ = ("values", "extended")

    def __init__(self, **initial: int) -> None:
        self.values = [0] * len(Reg)
        self.values[Reg.RFLAGS] = RFLAGS_FIXED
        self.extended = xsave_init_legacy()
        for name, value in initial.items():
            self.values[Reg[name.upper()]] = value

    def __getitem__(self, reg: Reg) -> int:
        return self.values[reg]

    def __setitem__(self, reg: Reg, value: int) -> None:
        self.values[reg] = value & 0xFFFF_FFFF_FFFF_FFFF

    def get_all(self) -> list[int]:
        return self.values[:]

    def set_all(self, values: Sequence[int]) -> None:
        assert len(values) == len(self.values)
        self.values[:] = values

    def xsave(self) -> bytes:
        return bytes(self.extended)

    def xrstor(self, legacy: bytes) -> None:
        self.extended[:] = legacy[:512]

    def copy(self) -> Registers:
        other = Registers()
        other.values = list(self.values)
        other.extended = bytearray(self.extended)
        return other

    def __repr__(self) -> str:
        shown = ", ".join(f"{r.name.lower()}={self.values[r]:#x}" for r in Reg if self.values[r])
        return f"Registers({shown})"


_RAX = Reg.RAX  # (an enum class attribute lookup costs a dict miss)
_RFLAGS = Reg.RFLAGS


class _RegisterSlots(Protocol):
    """What `set_result` needs: a `RegisterFile`, or a `get_all` list about to be `set_all`."""

    def __getitem__(self, reg: Reg, /) -> int: ...

    def __setitem__(self, reg: Reg, value: int, /) -> None: ...


def set_result(regs: _RegisterSlots, code: int, carry: bool = False) -> None:
    """RAX and RFLAGS for a leaf with an error code: ZF (or CF) flags a non-zero code."""
    flags = regs[_RFLAGS] & ~ARITH_FLAGS
    if code:
        flags |= CF if carry else ZF
    regs[_RFLAGS] = flags
    regs[_RAX] = code
