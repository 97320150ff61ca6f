"""Where kernel variants differ, each in one method: which ioctls exist, may_map, PTE rights.

`Linux60` is the merged SGX2 driver (Linux >= 6.0). The variants of the 2021-22 review (V1's
run-time permission bits and pfn_mkwrite, soft-restrict, always-mmap) subclass it and replace
one or more of these methods; nothing else in the driver depends on the variant.
"""

from __future__ import annotations

from ..hw.memory import PTE_W
from .encl import VM_FAULT_NOPAGE, SgxEncl, SgxEnclPage, sgx_encl_may_map
from .ioctl import SGX_IOCTLS_LINUX_6_0, Handler
from .vma import Vma


class Linux60:
    """The merged driver (SGX2 support as of Linux 6.0, unchanged in later mainline)."""

    name = "linux-6.0"

    def ioctl_handler(self, cmd: int) -> Handler | None:
        """The ioctl table (sgx_ioctl's switch)."""
        return SGX_IOCTLS_LINUX_6_0.get(cmd)

    def may_map(
        self, encl: SgxEncl, start: int, end: int, vm_flags: int, personality: int
    ) -> None:
        """mmap/mprotect veto (sgx_encl_may_map): raise KernelError(EACCES)."""
        sgx_encl_may_map(encl, start, end, vm_flags, personality)

    def pte_prot(self, vma: Vma, entry: SgxEnclPage) -> int:
        """Rights of the PTE the fault handler installs: the VMA's (vmf_insert_pfn)."""
        return vma.prot

    def pfn_mkwrite(self, vma: Vma, addr: int) -> int:
        """A write to a present read-only PTE of a writable shared VMA: with no .pfn_mkwrite
        the core mm makes the PTE writable (wp_pfn_shared -> wp_page_reuse)."""
        assert vma.mm is not None
        ptes = vma.mm.mem.ptes
        key = addr >> 12
        ptes[key] = ptes.get(key, 0) | PTE_W
        return VM_FAULT_NOPAGE


KernelPolicy = Linux60
