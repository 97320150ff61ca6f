"""The enclave-runtime flows the comparison runs on every kernel design.

Each flow has a setup (not measured), a body (measured) and probes (run after the body, not
measured) that find out which mechanism refuses an access the flow's permissions forbid. Flows
talk to the kernel only through `Runtime` and its per-ABI client, as a runtime library would.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..linux.mman import PROT_EXEC, PROT_NONE, PROT_READ, PROT_WRITE
from ..linux.vma import VM_EXEC, VM_WRITE
from ..testenclave import protocol as P
from .runtime import (
    PAGE,
    SECINFO_MODIFIED,
    SECINFO_PENDING,
    SECINFO_PR,
    SECINFO_REG,
    FlowFailed,
    Runtime,
)

R, W, X = 0x1, 0x2, 0x4
RW = R | W
SECINFO_TCS, SECINFO_TRIM = 0x100, 0x400
PT_TCS, PT_TRIM = 1, 4
JIT_CODE = 0xC3C3_C3C3_C3C3_C3C3  # "ret" bytes: what the JIT wrote


@dataclass(frozen=True)
class Flow:
    name: str
    title: str
    body: Callable[[Runtime, int], None]
    setup: Callable[[Runtime, int], None] | None = None
    probe: Callable[[Runtime, int], None] | None = None
    n: int = 4  # the default size of the flow, in `unit`s
    unit: str = "pages"
    epc_size: int = 4 << 20


def _addr(rt: Runtime, i: int) -> int:
    return rt.base + rt.free_offset + i * PAGE


def _accept_pr(rt: Runtime, n: int, perms: int, tcs: int = 0) -> None:
    for i in range(n):
        rt.accept(_addr(rt, i), perms | SECINFO_REG | SECINFO_PR, f"EACCEPT({perms:#x}|PR)", tcs)


# -- heap growth ---------------------------------------------------------------------------------
def heap_grow_fault(rt: Runtime, n: int) -> None:
    """Store to new heap pages: #PF -> EAUG, the PENDING page refuses the store (0x8007), a second
    thread EACCEPTs, the first resumes (the selftest `augment` pattern)."""
    rt.mmap(rt.free_offset, n * PAGE, PROT_READ | PROT_WRITE, "mmap heap")
    for i in range(n):
        fault = rt.put(_addr(rt, i), P.MAGIC)
        if fault is None or fault.error_code != 0x8007:
            raise FlowFailed("store to a new page", f"expected #PF 0x8007, got {fault}")
        rt.accept(_addr(rt, i), RW | SECINFO_REG | SECINFO_PENDING, "EACCEPT(PENDING)", tcs=1)
        rt.ok(rt.resume(0), "ERESUME the store")


def heap_grow_eaccept(rt: Runtime, n: int) -> None:
    """EACCEPT new heap pages first (#PF -> EAUG -> EACCEPT again, invisible), then use them."""
    rt.mmap(rt.free_offset, n * PAGE, PROT_READ | PROT_WRITE, "mmap heap")
    for i in range(n):
        rt.accept(_addr(rt, i), RW | SECINFO_REG | SECINFO_PENDING, "EACCEPT(PENDING)")
        rt.ok(rt.put(_addr(rt, i), P.MAGIC), "store")


def probe_heap_exec(rt: Runtime, n: int) -> None:
    """Can a grown heap page be executed if the host maps it executable?"""
    label = "X on a grown heap page (host maps it R|X)"
    try:
        rt.mprotect(rt.free_offset, PAGE, PROT_READ | PROT_EXEC)
    except FlowFailed as e:
        rt.note(label, f"kernel record (mprotect {e.reason})")
        return
    rt.note(label, rt.mechanism(rt.execute(_addr(rt, 0), tcs=1), VM_EXEC))


# -- heap shrink ---------------------------------------------------------------------------------
def heap_shrink_setup(rt: Runtime, n: int) -> None:
    rt.grow(rt.free_offset, n)


def heap_shrink(rt: Runtime, n: int) -> None:
    """Trim (MODIFY_TYPES -> TRIM), EACCEPT(TRIM|MODIFIED) each page, REMOVE, munmap."""
    rt.client.modify_type(rt.free_offset, n * PAGE, PT_TRIM)
    for i in range(n):
        rt.accept(_addr(rt, i), SECINFO_TRIM | SECINFO_MODIFIED, "EACCEPT(TRIM)")
    rt.client.remove(rt.free_offset, n * PAGE)
    rt.proc.munmap(rt.base + rt.free_offset, n * PAGE)


# -- JIT W^X -------------------------------------------------------------------------------------
def jit_setup(rt: Runtime, n: int) -> None:
    rt.grow(rt.free_offset, n)


def jit_wx(rt: Runtime, n: int) -> None:
    """Write code into RW pages, drop W (restrict to R, EACCEPT), add X (EMODPE), make the
    kernel and the mapping agree (R|X), execute every page."""
    for i in range(n):
        rt.ok(rt.put(_addr(rt, i), JIT_CODE), "write code")
    if rt.client.restrict(rt.free_offset, n * PAGE, R):
        _accept_pr(rt, n, R)
    for i in range(n):
        rt.ok(rt.emodpe(_addr(rt, i), R | X), "EMODPE(R|X)")
    if rt.client.announce(rt.free_offset, n * PAGE, R | X):
        _accept_pr(rt, n, R | X)
    rt.mprotect(rt.free_offset, n * PAGE, PROT_READ | PROT_EXEC, "mprotect(R|X)")
    for i in range(n):
        rt.ok(rt.execute(_addr(rt, i)), "execute")


def probe_jit(rt: Runtime, n: int) -> None:
    """After W^X, does anything stop a write if the host makes the mapping writable again?"""
    label = "W on JIT code (host re-maps it RW)"
    try:
        rt.mprotect(rt.free_offset, PAGE, PROT_READ | PROT_WRITE)
    except FlowFailed as e:
        rt.note(label, f"kernel record (mprotect {e.reason})")
        return
    rt.note(label, rt.mechanism(rt.put(_addr(rt, 0), 0, tcs=1), VM_WRITE))


# -- relaxing with EMODPE ------------------------------------------------------------------------
def relax_setup(rt: Runtime, n: int) -> None:
    rt.grow(rt.free_offset, n)


def relax_emodpe(rt: Runtime, n: int) -> None:
    """Restrict N pages to R; a store faults; a second thread EMODPEs them back to RW and tells
    the kernel if it must; the store is resumed (the selftest `epcm_permissions` pattern)."""
    if rt.client.restrict(rt.free_offset, n * PAGE, R):
        _accept_pr(rt, n, R)
    fault = rt.put(_addr(rt, 0), P.MAGIC2)
    rt.note("W after restricting to R", rt.mechanism(fault, VM_WRITE))
    for i in range(n):
        rt.ok(rt.emodpe(_addr(rt, i), RW, tcs=1), "EMODPE(RW)")
    if rt.client.announce(rt.free_offset, n * PAGE, RW):
        _accept_pr(rt, n, RW, tcs=1)
    if fault is not None:
        rt.ok(rt.resume(0), "ERESUME the store")
    for i in range(1, n):
        rt.ok(rt.put(_addr(rt, i), P.MAGIC2), "store")


# -- a new TCS -----------------------------------------------------------------------------------
def new_tcs(rt: Runtime, n: int) -> None:
    """selftest `tcs_create` phase 1: three EAUG'd pages (stack, TCS, SSA), INIT_TCS_PAGE,
    MODIFY_TYPES -> TCS, EACCEPT(TCS|MODIFIED), then work on the new thread."""
    off = rt.free_offset
    rt.mmap(off, 3 * PAGE, PROT_READ | PROT_WRITE, "mmap")
    stack, tcs, ssa = (_addr(rt, i) for i in range(3))
    for page in (stack, ssa, tcs):
        rt.accept(page, RW | SECINFO_REG | SECINFO_PENDING, "EACCEPT(PENDING)")
    entry = rt.image.symbol("encl_dyn_entry")
    op = P.encl_op_init_tcs_page(P.encl_op_header(P.ENCL_OP_INIT_TCS_PAGE), tcs, off + 2 * PAGE, entry)
    rt.ok(rt.enter(op), "INIT_TCS_PAGE")
    rt.client.modify_type(off + PAGE, PAGE, PT_TCS)
    rt.accept(tcs, SECINFO_TCS | SECINFO_MODIFIED, "EACCEPT(TCS|MODIFIED)")
    rt.tcs.append(tcs)
    for _ in range(n):
        rt.ok(rt.enter(P.encl_op_put_to_buf(P.encl_op_header(P.ENCL_OP_PUT_TO_BUFFER), P.MAGIC), tcs=2), "call on the new TCS")


def probe_tcs(rt: Runtime, n: int) -> None:
    label = "X on the new TCS (host maps it R|X)"
    try:
        rt.mprotect(rt.free_offset + PAGE, PAGE, PROT_READ | PROT_EXEC)
    except FlowFailed as e:
        rt.note(label, f"kernel record (mprotect {e.reason})")
        return
    rt.note(label, rt.mechanism(rt.execute(_addr(rt, 1), tcs=1), VM_EXEC))


# -- PROT_NONE guard pages -----------------------------------------------------------------------
def guard_setup(rt: Runtime, n: int) -> None:
    rt.grow(rt.free_offset, 2 * n)


def guard_pages(rt: Runtime, n: int) -> None:
    """Every other page of a grown region becomes a PROT_NONE guard; a store to each guard must
    fault; the runtime lifts the guard and resumes."""
    for i in range(n):
        rt.mprotect(rt.free_offset + (2 * i + 1) * PAGE, PAGE, PROT_NONE, "mprotect(NONE)")
    for i in range(n):
        guard = _addr(rt, 2 * i + 1)
        fault = rt.put(guard, P.MAGIC)
        if fault is None:
            raise FlowFailed("store to a guard page", "not refused")
        rt.note("any access to a PROT_NONE guard", rt.mechanism(fault, VM_WRITE))
        rt.mprotect(guard - rt.base, PAGE, PROT_READ | PROT_WRITE, "mprotect(RW)")
        rt.ok(rt.resume(0), "ERESUME the store")


# -- oversubscription ----------------------------------------------------------------------------
def oversubscription(rt: Runtime, n: int) -> None:
    """Grow a heap larger than the EPC (EACCEPT-driven), write every page, read every page back:
    the reclaimer writes pages out (EWB) and faults bring them back (ELDU)."""
    rt.mmap(rt.free_offset, n * PAGE, PROT_READ | PROT_WRITE, "mmap heap")
    for i in range(n):
        rt.accept(_addr(rt, i), RW | SECINFO_REG | SECINFO_PENDING, "EACCEPT(PENDING)")
        rt.ok(rt.put(_addr(rt, i), P.MAGIC ^ i), "store")
    for i in range(n):
        value, fault = rt.get(_addr(rt, i))
        rt.ok(fault, "load")
        if value != P.MAGIC ^ i:
            raise FlowFailed("load", f"page {i} lost its contents")


FLOWS: dict[str, Flow] = {
    f.name: f
    for f in (
        Flow("heap-grow-fault", "heap growth by EAUG on a store fault", heap_grow_fault,
             probe=probe_heap_exec),
        Flow("heap-grow-eaccept", "heap growth by EAUG on EACCEPT", heap_grow_eaccept,
             probe=probe_heap_exec),
        Flow("heap-shrink", "heap shrink: trim, accept, remove", heap_shrink, heap_shrink_setup),
        Flow("jit-wx", "JIT W^X: write code, restrict to R|X, execute", jit_wx, jit_setup,
             probe_jit),
        Flow("relax-emodpe", "restrict to R, relax back to RW with EMODPE", relax_emodpe,
             relax_setup),
        Flow("new-tcs", "a new TCS at run time", new_tcs, probe=probe_tcs, n=2,
             unit="calls on it"),
        Flow("guard-pages", "PROT_NONE guard pages", guard_pages, guard_setup, n=2,
             unit="guards"),
        Flow("oversubscription", "heap larger than the EPC", oversubscription, n=192,
             epc_size=512 << 10),
    )
}
