"""The kernel model's optional tracing hook (`Machine.tracer`).

When a tracer is attached, system calls, user page faults and the end of each vDSO call are
reported to it. `linux` defines only this protocol; `sgxemu.trace` implements it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, TypeVar

if TYPE_CHECKING:
    from .errors import Signal
    from .machine import Machine
    from .process import Thread
    from .vdso import EnclaveCall

_T = TypeVar("_T")
FaultFn = Callable[["Machine", "Thread", int, int], "Signal | None"]


class KernelTracer(Protocol):
    def syscall(self, thread: Thread, name: str, fn: Callable[[], _T]) -> Callable[[], _T]:
        """Wrap a system call's body (a closure over its arguments): record entry and exit."""
        ...

    def user_fault(
        self, m: Machine, thread: Thread, addr: int, error_code: int, fn: FaultFn
    ) -> Signal | None:
        """Run the page-fault handler `fn` and record the fault and its outcome."""
        ...

    def vdso_return(self, call: EnclaveCall, result: int) -> None:
        """A __vdso_sgx_enter_enclave call returns `result` to its caller."""
        ...
