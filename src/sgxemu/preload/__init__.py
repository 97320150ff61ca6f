"""Run unmodified SGX host programs against sgxemu: the in-process preload library.

`build_preload()` compiles ``libsgxemu_preload.so`` (C, with CPython embedded); loaded with
``LD_PRELOAD`` (what ``sgxemu exec`` does) it serves /dev/sgx_enclave, the vDSO's
``__vdso_sgx_enter_enclave``, ENCLU and CPUID from an sgxemu machine running in the same
process (`sgxemu.preload.runtime`). See docs/preload.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["PreloadBuildError", "build_preload"]

if TYPE_CHECKING:
    from .build import PreloadBuildError, build_preload


def __getattr__(name: str) -> Any:
    # Lazy: the runtime inside a host process must not pay for the build machinery.
    if name in __all__:
        from . import build

        return getattr(build, name)
    raise AttributeError(f"module 'sgxemu.preload' has no attribute {name!r}")
