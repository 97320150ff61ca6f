"""The processor's optional tracing hook (`Processor.tracer`).

The processor calls a tracer, when one is attached, from its ENCLS and ENCLU fronts and from
AEX. The tracer runs the leaf itself (so it sees the result or the fault) and must return or
raise exactly what the leaf does. `hw` defines only this protocol; `sgxemu.trace` implements it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .faults import SgxFault
    from .leaves import EnclsFn, EncluFn
    from .lp import LogicalProcessor
    from .memory import AddressSpace
    from .processor import Processor
    from .regs import RegisterFile


class CpuTracer(Protocol):
    def encls(
        self, cpu: Processor, leaf: int, rbx: int, rcx: int, rdx: int, mem: AddressSpace,
        fn: EnclsFn,
    ) -> int:
        """Run `fn(cpu, mem, rbx, rcx, rdx)` and return its RAX (or let its fault through)."""
        ...

    def enclu(
        self, cpu: Processor, lp: LogicalProcessor, regs: RegisterFile, mem: AddressSpace,
        fn: EncluFn,
    ) -> None:
        """Run `fn(cpu, lp, regs, mem)` (or let its fault through)."""
        ...

    def aex(
        self, cpu: Processor, lp: LogicalProcessor, regs: RegisterFile, event: SgxFault | None
    ) -> None:
        """An AEX is about to be performed on `lp` (still in enclave mode)."""
        ...
