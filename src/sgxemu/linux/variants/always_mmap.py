"""always-mmap: mmap and mprotect allowed with any rights inside ELRANGE (proposed, not merged).

The other end of the debate from V1's run bits: the kernel keeps no permission policy for enclave
pages at all and lets the EPCM alone decide. sgx_encl_may_map keeps only the ELRANGE rule
("Tighten accessible memory range after enclave initialization", V1 14/25), and the fault handler
no longer refuses a VMA wider than the page's vm_max_prot_bits. ioctls are those of Linux 6.0.
"""

from __future__ import annotations

import errno

from ..encl import SGX_ENCL_INITIALIZED, SgxEncl, SgxEnclPage
from ..errors import KernelError
from ..policy import Linux60


class AlwaysMmap(Linux60):
    """Linux 6.0 without vm_max_prot_bits checks: only ELRANGE constrains a mapping."""

    name = "always-mmap"

    # sgx_encl_may_map reduced to its ELRANGE test (READ_IMPLIES_EXEC is no reason to refuse)
    def may_map(
        self, encl: SgxEncl, start: int, end: int, vm_flags: int, personality: int
    ) -> None:
        if encl.test(SGX_ENCL_INITIALIZED) and (start < encl.base or end > encl.base + encl.size):
            raise KernelError(errno.EACCES)

    def fault_vma_allowed(self, entry: SgxEnclPage, vm_prot_bits: int) -> bool:
        return True
