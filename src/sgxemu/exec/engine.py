"""The contract between an OS model and an execution engine.

The OS (the Linux model's vDSO, or a test) owns a thread: a logical processor, an address space
and an engine holding that thread's registers. It executes ENCLU[EENTER/ERESUME] through the
processor with the engine's registers, then lets the engine run enclave code until the thread
leaves enclave mode or its time slice ends. A slice that ends leaves the thread inside: on real
hardware it would still be running on its own CPU; only an AEX takes it out.

Physical addresses of non-EPC memory are host addresses of the memory that backs them, so an
engine can map them directly; `AddressSpace.translate` returns such PTEs for untrusted pages.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from ..hw.faults import SgxFault
from ..hw.lp import LogicalProcessor
from ..hw.memory import AddressSpace
from ..hw.processor import Processor
from ..hw.regs import RegisterFile


class ExitKind(Enum):
    EEXIT = "eexit"  # the enclave executed EEXIT: RIP is the target, RCX the AEP
    AEX = "aex"  # an exception (or an interrupt) caused an AEX: registers are synthetic
    SLICE = "slice"  # the budget ran out; the thread is still inside the enclave


@dataclass(frozen=True, slots=True)
class EngineExit:
    kind: ExitKind
    event: SgxFault | None = None  # the exception that caused the AEX (None: an interrupt)
    instructions: int = 0  # enclave instructions retired in this run (native engine: counted)


class Engine(Protocol):
    """Runs enclave code for one thread (one logical processor)."""

    cpu: Processor
    lp: LogicalProcessor
    mem: AddressSpace

    @property
    def regs(self) -> RegisterFile:
        """The thread's register file (valid between runs, inside or outside the enclave)."""
        ...

    def run(self, budget: int | None = None) -> EngineExit:
        """Run enclave code from the current RIP until EEXIT, an AEX or `budget` instructions.

        Precondition: the logical processor is in enclave mode (after EENTER/ERESUME).
        Faults inside the enclave are turned into an AEX here (`hw.enclu.aex.aex`), so on
        return with kind AEX the processor state is already the post-AEX state.
        """
        ...

    def interrupt(self) -> EngineExit:
        """Take an interrupt now: an AEX with no exception (used for TLB-shootdown IPIs)."""
        ...

    def flush_tlb(self) -> None:
        """Drop cached translations (the processor does this at entry and exit)."""
        ...
