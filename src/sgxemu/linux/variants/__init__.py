"""SGX2 driver designs of the 2021-22 review, each a policy subclass selected per machine.

`Machine(..., kernel=NAME)` with NAME one of `KERNELS`: "merged" (Linux >= 6.0, the default),
"v1" (Dec 2021), "v2" (Feb 2022), "soft-restrict" and "always-mmap" (proposals). The driver code
is shared; a variant differs only in the methods and attributes of `policy.Linux60`.
"""

from __future__ import annotations

from ..policy import Linux60
from .always_mmap import AlwaysMmap
from .merged import Merged
from .soft_restrict import SoftRestrict
from .v1 import V1
from .v2 import V2

KERNELS: dict[str, type[Linux60]] = {
    "merged": Merged,
    "v1": V1,
    "v2": V2,
    "soft-restrict": SoftRestrict,
    "always-mmap": AlwaysMmap,
}


def kernel_policy(name: str) -> Linux60:
    """A fresh policy object for the named design."""
    try:
        return KERNELS[name]()
    except KeyError:
        raise ValueError(f"unknown kernel {name!r}; choose one of {', '.join(KERNELS)}") from None


__all__ = ["KERNELS", "AlwaysMmap", "Merged", "SoftRestrict", "V1", "V2", "kernel_policy"]
