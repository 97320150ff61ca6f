"""What the V1 and V2 series had in common: the kernel's record of each page's current rights.

`struct sgx_encl_page` carried `vm_run_prot_bits` beside `vm_max_prot_bits` (V1 05/25 "x86/sgx:
Introduce runtime protection bits"). It starts equal to the maximum and follows every permission
ioctl; mmap/mprotect are checked against it, PTEs are installed as VMA rights ∩ run bits (V1 03/25
"Support VMA permissions exceeding enclave permissions"), and a write fault on a present read-only
PTE asks the driver (V1 04/25 "Add pfn_mkwrite() handler for present PTEs"). Pages EAUG'd on
fault get RW as both maximum and run bits, and their EPC page is allocated with reclaim.

The loops here are the per-page bodies of those series' ioctls; the ioctl entry points (which
differ in request number and argument struct) are in `v1.py` and `v2.py`.
"""

from __future__ import annotations

import ctypes
import errno
from typing import TYPE_CHECKING, Protocol

from ... import uapi
from ...arch.constants import PAGE_SHIFT, PAGE_SIZE, PageType
from ..encl import (
    SGX_SECINFO_R,
    SGX_SECINFO_W,
    VM_FAULT_SIGBUS,
    SgxEncl,
    SgxEnclPage,
    sgx_encl_may_map,
    sgx_zap_enclave_ptes,
)
from ..encls import encls_failed, encls_faulted
from ..errors import KernelError
from ..ioctl import _load, sgx_enclave_etrack, sgx_enclave_modify_types
from ..policy import Linux60
from ..reclaim import sgx_reclaim_direct
from ..vma import VM_WRITE, Vma

if TYPE_CHECKING:
    from ..machine import Machine
    from ..process import Thread

U64 = (1 << 64) - 1


class _RangeOut(Protocol):
    """The fields every page loop reads and writes (offset, length in; count out)."""

    offset: int
    length: int
    count: int


class _ResultOut(_RangeOut, Protocol):
    result: int


def vm_prot_from_secinfo(secinfo_perm: int) -> int:
    """vm_prot_from_secinfo (V2 ioctl.c): SECINFO R/W/X -> VM_READ/WRITE/EXEC (same values)."""
    return secinfo_perm & uapi.SGX_SECINFO_PERMISSION_MASK


# sgx_perm_from_user_secinfo (V2 ioctl.c)
def sgx_perm_from_user_secinfo(t: Thread, addr: int) -> int:
    raw = t.copy_from_user(addr & U64, ctypes.sizeof(uapi.sgx_secinfo))
    flags = int.from_bytes(raw[:8], "little")
    if flags & ~uapi.SGX_SECINFO_PERMISSION_MASK:
        raise KernelError(errno.EINVAL)
    if any(raw[8:]):
        raise KernelError(errno.EINVAL)
    if flags & uapi.SGX_SECINFO_W and not flags & uapi.SGX_SECINFO_R:
        raise KernelError(errno.EINVAL)
    return flags


# sgx_page_modp (V1) / sgx_enclave_restrict_perm (V2): EMODPR + ETRACK, run bits, zap
def sgx_runbits_restrict(m: Machine, encl: SgxEncl, params: _ResultOut, secinfo_perm: int) -> None:
    """Every request is a restriction: the run bits take the new value, the PTEs go, and EMODPR
    runs (a no-op on the EPCM rights when relaxing, but it still sets EPCM.PR)."""
    vm_prot = vm_prot_from_secinfo(secinfo_perm)
    c = 0
    try:
        while c < params.length:
            addr = encl.base + params.offset + c
            sgx_reclaim_direct(m)  # V1 24/25 "Free up EPC pages directly"
            entry = _load(m, encl, addr)
            if entry.type != PageType.PT_REG:
                raise KernelError(errno.EINVAL)
            if entry.vm_max_prot_bits & vm_prot != vm_prot:
                raise KernelError(errno.EPERM)  # never beyond the vetted maximum
            assert entry.epc_page is not None
            if m.epc.unmark_reclaimable(entry.epc_page):
                raise KernelError(errno.EAGAIN)
            run_prot_restore = entry.vm_run_prot_bits
            entry.vm_run_prot_bits = vm_prot  # before the zap: new faults see the new rights
            try:
                sgx_zap_enclave_ptes(m, encl, addr)
                ret = m.encls.emodpr(secinfo_perm, entry.epc_page.pa)
                if encls_faulted(ret):
                    m.encls.warn(ret, "EMODPR")
                    raise KernelError(errno.EFAULT)
                if encls_failed(ret):
                    params.result = ret
                    raise KernelError(errno.EFAULT)
            except KernelError:
                entry.vm_run_prot_bits = run_prot_restore
                m.epc.mark_reclaimable(entry.epc_page)
                raise
            try:
                sgx_enclave_etrack(m, encl)  # its failure keeps the new run bits
            finally:
                m.epc.mark_reclaimable(entry.epc_page)
            c += PAGE_SIZE
    finally:
        params.count = c


# sgx_enclave_relax_perm (V2): no ENCLS at all, only the kernel's record and the PTEs
def sgx_runbits_set(m: Machine, encl: SgxEncl, params: _RangeOut, secinfo_perm: int) -> None:
    vm_prot = vm_prot_from_secinfo(secinfo_perm)
    c = 0
    try:
        while c < params.length:
            addr = encl.base + params.offset + c
            entry = encl.page_array.get(addr >> PAGE_SHIFT)  # xa_load: no ELDU
            if entry is None:
                raise KernelError(errno.EFAULT)
            if entry.type != PageType.PT_REG:
                raise KernelError(errno.EINVAL)
            if entry.vm_max_prot_bits & vm_prot != vm_prot:
                raise KernelError(errno.EPERM)
            entry.vm_run_prot_bits = vm_prot
            sgx_zap_enclave_ptes(m, encl, addr)
            c += PAGE_SIZE
    finally:
        params.count = c


# sgx_page_modt (V1) / sgx_enclave_modt (V2): the merged loop, plus run bits = max for a new TCS
def sgx_runbits_modify_types(
    m: Machine, encl: SgxEncl, params: _ResultOut, page_type: int
) -> None:
    modt = uapi.sgx_enclave_modify_types(params.offset, params.length, page_type)
    try:
        sgx_enclave_modify_types(m, encl, modt)
    finally:
        params.result = modt.result
        params.count = modt.count
        for c in range(0, modt.count, PAGE_SIZE):
            entry = encl.page_array.get((encl.base + params.offset + c) >> PAGE_SHIFT)
            if entry is not None and entry.type == PageType.PT_TCS:
                entry.vm_run_prot_bits = entry.vm_max_prot_bits  # RW, as vm_max


class RunBitsPTEs(Linux60):
    """PTEs that follow the kernel's record: VMA ∩ run bits, and pfn_mkwrite asking it."""

    name = "runbits-ptes"
    wants_writenotify = True  # .pfn_mkwrite set: mprotect leaves shared PTEs read-only

    # sgx_vma_fault (V1 03/25 + 05/25): vmf_insert_pfn_prot with VMA ∩ run bits
    def pte_prot(self, vma: Vma, entry: SgxEnclPage) -> int:
        prot = vma.prot & entry.vm_run_prot_bits
        if not prot:
            # [inferred] A PROT_NONE PTE is "present" to the mm: the next fault goes through
            # do_numa_page, which restores vma->vm_page_prot (read-only under write-notify).
            return vma.prot & ~VM_WRITE
        return prot

    # sgx_vma_pfn_mkwrite (V1 04/25, run bits since 05/25)
    def pfn_mkwrite(self, vma: Vma, addr: int) -> int:
        encl = vma.private
        if encl is None:
            return VM_FAULT_SIGBUS
        entry = encl.page_array.get(addr >> PAGE_SHIFT)
        if entry is None or not entry.vm_run_prot_bits & VM_WRITE:
            return VM_FAULT_SIGBUS  # the user sees #PF 0x7, not the EPCM's 0x8007
        return super().pfn_mkwrite(vma, addr)  # wp_pfn_shared: the PTE becomes writable


class RunBitsPolicy(RunBitsPTEs):
    """The permission model V1 and V2 shared; subclasses give the ioctl table."""

    name = "runbits"
    # EAUG can only make RW pages, and the series kept X out of reach (no user policy yet)
    eaug_secinfo = SGX_SECINFO_R | SGX_SECINFO_W
    eaug_reclaim = True  # sgx_alloc_epc_page(encl_page, true) in V2's sgx_encl_eaug_page

    # sgx_encl_may_map against vm_run_prot_bits (V1 05/25)
    def may_map(
        self, encl: SgxEncl, start: int, end: int, vm_flags: int, personality: int
    ) -> None:
        sgx_encl_may_map(
            encl, start, end, vm_flags, personality, rights=lambda p: p.vm_run_prot_bits
        )

    # V1 03/25 dropped sgx_encl_load_page's VMA check: VMAs may exceed the current rights
    def fault_vma_allowed(self, entry: SgxEnclPage, vm_prot_bits: int) -> bool:
        return True
