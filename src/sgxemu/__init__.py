"""sgxemu: a faithful emulator of Intel SGX2 and the Linux SGX driver ABI."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Machine", "__version__"]

if TYPE_CHECKING:
    from .linux.machine import Machine


def __getattr__(name: str) -> Any:
    # Lazy, so `import sgxemu` (and the CLI) stays cheap.
    if name == "Machine":
        from .linux.machine import Machine

        return Machine
    raise AttributeError(f"module 'sgxemu' has no attribute {name!r}")
