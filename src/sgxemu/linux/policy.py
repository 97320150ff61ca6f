"""Where kernel variants differ, each in one method or attribute: which ioctls exist,
may_map, PTE rights, pfn_mkwrite, the fault handler's VMA check and how EAUG'd pages start.

`Linux60` is the merged SGX2 driver (Linux >= 6.0). The variants of the 2021-22 review (V1's
run-time permission bits and pfn_mkwrite, soft-restrict, always-mmap) subclass it in
`sgxemu.linux.variants` and replace one or more of these; nothing else in the driver depends on
the variant.
"""

from __future__ import annotations

from ..hw.memory import PTE_W
from .encl import (
    SGX_SECINFO_R,
    SGX_SECINFO_W,
    SGX_SECINFO_X,
    VM_FAULT_NOPAGE,
    SgxEncl,
    SgxEnclPage,
    sgx_encl_may_map,
)
from .ioctl import SGX_IOCTLS_LINUX_6_0, Handler
from .vma import Vma


class Linux60:
    """The merged driver (SGX2 support as of Linux 6.0, unchanged in later mainline)."""

    name = "linux-6.0"
    # SECINFO rights whose VM bits become vm_max_prot_bits of a page EAUG'd on fault (RWX
    # since V3 "x86/sgx: Support adding of pages to an initialized enclave").
    eaug_secinfo = SGX_SECINFO_R | SGX_SECINFO_W | SGX_SECINFO_X
    # EPC and VA pages for EAUG come without direct reclaim (V4 "Support VA page allocation
    # without reclaiming"); -EBUSY becomes VM_FAULT_NOPAGE.
    eaug_reclaim = False
    # No .pfn_mkwrite, so no write-notify: mprotect gives present PTEs the VMA's rights.
    wants_writenotify = False

    def ioctl_handler(self, cmd: int) -> Handler | None:
        """The ioctl table (sgx_ioctl's switch)."""
        return SGX_IOCTLS_LINUX_6_0.get(cmd)

    def may_map(
        self, encl: SgxEncl, start: int, end: int, vm_flags: int, personality: int
    ) -> None:
        """mmap/mprotect veto (sgx_encl_may_map): raise KernelError(EACCES)."""
        sgx_encl_may_map(encl, start, end, vm_flags, personality)

    def fault_vma_allowed(self, entry: SgxEnclPage, vm_prot_bits: int) -> bool:
        """sgx_encl_load_page_in_vma: may a VMA with these rights fault the page in (else
        SIGBUS)? The VMA must not exceed the page's vm_max_prot_bits."""
        return entry.vm_max_prot_bits & vm_prot_bits == vm_prot_bits

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
