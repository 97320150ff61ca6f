"""Modelled processor faults.

A leaf either completes, returns an SGX error code in RAX, or raises one of these. They are the
architectural outcome, not a Python error: callers (engines, the kernel model) catch them.
"""

from __future__ import annotations

from ..arch.constants import Vector


class SgxFault(Exception):
    """An exception the processor delivers (vector, error code, faulting address)."""

    vector: Vector = Vector.GP

    def __init__(self, error_code: int = 0, addr: int = 0) -> None:
        super().__init__(error_code, addr)
        self.error_code = error_code
        self.addr = addr

    def __repr__(self) -> str:
        return f"{type(self).__name__}(error_code={self.error_code:#x}, addr={self.addr:#x})"

    __str__ = __repr__


class GeneralProtection(SgxFault):
    """#GP(0)."""

    vector = Vector.GP

    def __init__(self, error_code: int = 0) -> None:
        super().__init__(error_code, 0)


class PageFault(SgxFault):
    """#PF(addr) with an x86 page-fault error code (bit 15 = SGX)."""

    vector = Vector.PF

    def __init__(self, addr: int, error_code: int) -> None:
        super().__init__(error_code, addr)


class InvalidOpcode(SgxFault):
    """#UD."""

    vector = Vector.UD

    def __init__(self) -> None:
        super().__init__(0, 0)


class DeviceNotAvailable(SgxFault):
    """#NM (ENCLU with CR0.TS=1)."""

    vector = Vector.NM

    def __init__(self) -> None:
        super().__init__(0, 0)


class CpuException(SgxFault):
    """Any other exception raised by enclave code (#DE, #BP, #MF, ...), reported with its vector."""

    def __init__(self, vector: Vector, error_code: int = 0, addr: int = 0) -> None:
        super().__init__(error_code, addr)
        self.vector = vector


class SgxUsageError(Exception):
    """A Python-API misuse of the model (not an architectural event): e.g. an unknown CPU index."""
