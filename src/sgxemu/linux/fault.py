"""The x86 user page-fault path (arch/x86/mm/fault.c, mm/memory.c), as far as SGX needs it.

`do_user_addr_fault` returns None when the fault was handled (the access is retried) or the
`Signal` the task would get. The vDSO's exception fixup and the kernel's own user accesses
(copy_from_user: EFAULT) decide what to make of a signal.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..arch.constants import PAGE_MASK, PAGE_SHIFT, PAGE_SIZE, PfErrorCode
from ..hw.memory import PTE_P, PTE_W
from .encl import VM_FAULT_OOM, VM_FAULT_SIGBUS
from .errors import BUS_ADRERR, SEGV_ACCERR, SEGV_MAPERR, SIGBUS, SIGSEGV, Signal
from .vma import VM_EXEC, VM_READ, VM_WRITE, Vma

if TYPE_CHECKING:
    from .machine import Machine
    from .process import Thread

X86_PF_PROT = int(PfErrorCode.P)
X86_PF_WRITE = int(PfErrorCode.W)
X86_PF_USER = int(PfErrorCode.U)
X86_PF_INSTR = int(PfErrorCode.I)
X86_PF_PK = int(PfErrorCode.PK)
X86_PF_SGX = int(PfErrorCode.SGX)


# access_error (fault.c)
def access_error(error_code: int, vma: Vma) -> bool:
    if error_code & X86_PF_PK:
        return True
    # The kernel cannot fix what the EPCM refused: always an access error.
    if error_code & X86_PF_SGX:
        return True
    if error_code & X86_PF_WRITE:
        return not vma.flags & VM_WRITE
    if error_code & X86_PF_PROT:
        return True  # read of a present page
    return not vma.flags & (VM_READ | VM_WRITE | VM_EXEC)


# handle_mm_fault (memory.c), reduced to the cases our VMAs have
def handle_mm_fault(m: Machine, vma: Vma, addr: int, error_code: int) -> int:
    assert vma.mm is not None
    mem = vma.mm.mem
    key = addr >> PAGE_SHIFT
    pte = mem.ptes.get(key, 0)
    if pte & PTE_P:
        if error_code & X86_PF_WRITE and not pte & PTE_W:
            if vma.ops is not None:
                return m.policy.pfn_mkwrite(vma, addr & PAGE_MASK)
            mem.ptes[key] = pte | PTE_W  # wp_page_reuse: a private page we own
        return 0  # spurious: a stale translation, the retry will see the PTE
    if vma.ops is not None:
        return vma.ops.fault(vma, addr & PAGE_MASK)
    mem.map_anonymous(addr & PAGE_MASK, PAGE_SIZE, vma.prot)  # do_anonymous_page
    return 0


def do_user_addr_fault(m: Machine, thread: Thread, addr: int, error_code: int) -> Signal | None:
    if m.tracer is not None:
        return m.tracer.user_fault(m, thread, addr, error_code, _do_user_addr_fault)
    return _do_user_addr_fault(m, thread, addr, error_code)


# do_user_addr_fault (fault.c)
def _do_user_addr_fault(m: Machine, thread: Thread, addr: int, error_code: int) -> Signal | None:
    proc = thread.process
    proc.page_faults += 1
    vma = proc.mm.vma_lookup(addr)
    if vma is None:
        return SIGSEGV(addr, SEGV_MAPERR)
    if access_error(error_code, vma):
        return SIGSEGV(addr, SEGV_ACCERR)
    ret = handle_mm_fault(m, vma, addr, error_code)
    if ret & (VM_FAULT_SIGBUS | VM_FAULT_OOM):
        return SIGBUS(addr, BUS_ADRERR)
    return None
