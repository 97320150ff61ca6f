"""Enclave runtimes that follow the SGX2 protocols, as scripted enclaves, each with careless
versions that skip one check.

A runtime is a set of ECALLs (operation number in RDI, an address in RSI) run by
`sgxemu.exec.scripted`: every load, store, fetch and ENCLU goes through the processor model.
The runtime keeps its own bookkeeping in the STATE page, as a real trusted runtime keeps it in
enclave memory, and announces what it believes (`sealed`, `grown`, `trimmed`, `tcs_ready`) as
trace events: the properties compare those beliefs with what the machine then lets happen.

Rule for every operation: at most one side-effecting access per step, and it is the step's last
access (an EEXIT may follow), so a fault restarts exactly one instruction, as on hardware.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..arch.constants import PAGE_SIZE, PageType, secinfo_flags
from ..exec.scripted import ScriptedContext, ScriptedProgram, Step
from .layout import (
    BUG_MARK,
    CODE,
    CODE_MARK,
    GROWN,
    KEY_MARK,
    MODIFIED,
    PENDING,
    PR,
    PROT_R,
    PROT_W,
    PROT_X,
    REG,
    SEALED,
    SSA2,
    STATE,
    TCS_READY,
    TCS_T,
    TRIM_T,
    D,
    H,
    P,
    PageSpec,
    R,
    T,
    W,
    X,
    stack_top,
    tcs_page,
)

Event = tuple[object, ...]
Emit = Callable[[Event], None]

# ECALL numbers (RDI).
WRITE, SEAL, EXEC, GROW, USE, TRIM, ADD_TCS, ACCEPT_TCS, BUG, RELAX = range(1, 11)
OP_NAMES = {
    WRITE: "JIT_WRITE", SEAL: "JIT_SEAL", EXEC: "JIT_EXEC", GROW: "HEAP_GROW", USE: "HEAP_USE",
    TRIM: "HEAP_TRIM", ADD_TCS: "TCS_ADD", ACCEPT_TCS: "TCS_ACCEPT", BUG: "BUG_WRITE",
    RELAX: "RELAX",
}

# Host requests of the honest script (Machine world): what the untrusted runtime asks the kernel.
RESTRICT, MPROTECT, MODT_TRIM, MODT_TCS, REMOVE = "restrict", "mprotect", "trim", "make_tcs", "remove"

HostAction = tuple[object, ...]  # ("ecall", op, arg) or (request, page, perms)


@dataclass(frozen=True)
class Runtime:
    """One runtime version: its pages, the calls a host may make, and what it promises."""

    name: str
    family: str
    summary: str
    careless: str = ""  # the check this version skips ("" for the careful one)
    knobs: frozenset[str] = frozenset()  # "unchecked", "noaccept", "anyaddr"
    pages: tuple[PageSpec, ...] = ()
    calls: tuple[tuple[int, int], ...] = ()  # (op, RSI offset) a controlled host may issue
    script: tuple[HostAction, ...] = ()  # the honest host's sequence
    properties: tuple[str, ...] = ()
    # The malicious kernel's operand domains (enclave offsets, rights).
    kernel_pages: tuple[int, ...] = ()
    emodpr_perms: tuple[int, ...] = (R, R | X)
    emodt_types: tuple[int, ...] = (int(PageType.PT_TRIM),)
    aug_pages: tuple[int, ...] = ()
    pte_rights: tuple[int, ...] = (0, PROT_R, PROT_R | PROT_W, PROT_R | PROT_X, PROT_R | PROT_W | PROT_X)
    bug_targets: tuple[int, ...] = ()
    needs_emodpr: bool = False  # the protocol restricts through EMODPR (absent under soft-restrict)
    # Moves run honestly before the exploration starts (the runtime's set-up); the explored
    # root is the state after them. ("run", who) steps a thread until it leaves the enclave.
    prelude: tuple[tuple[object, ...], ...] = ()
    # When set, the malicious kernel's move kinds are limited to these (targeted questions,
    # e.g. "EMODPR but never ETRACK").
    kernel_moves: frozenset[str] | None = None
    extra: dict[str, int] = field(default_factory=dict)


def make_program(rt: Runtime, emit: Emit) -> ScriptedProgram:
    """The runtime as a scripted program; `emit` receives its belief events (never on replay)."""
    unchecked = "unchecked" in rt.knobs
    noaccept = "noaccept" in rt.knobs
    anyaddr = "anyaddr" in rt.knobs

    def say(ctx: ScriptedContext, event: Event) -> None:
        if not ctx.replaying:
            emit(event)

    def eaccept(ctx: ScriptedContext, addr: int, flags: int) -> int:
        rax = ctx.eaccept(addr, flags)
        say(ctx, ("eaccept", addr - ctx.base, flags, rax))
        return rax

    def done(ctx: ScriptedContext) -> Step:
        ctx.eexit()
        yield

    def op_write(ctx: ScriptedContext) -> Step:
        b = ctx.base
        if ctx.load_u64(b + STATE + SEALED) == 0:
            ctx.store_u64(b + P, CODE_MARK)
        ctx.eexit()
        yield

    def op_seal(ctx: ScriptedContext) -> Step:
        b = ctx.base
        ok = True
        if not noaccept:
            rax = eaccept(ctx, b + P, REG | R | X | PR)
            yield
            ok = rax == 0 or unchecked
        if ok:
            ctx.store_u64(b + STATE + SEALED, 1)
            say(ctx, ("sealed", P))
        ctx.eexit()
        yield

    def op_exec(ctx: ScriptedContext) -> Step:
        b = ctx.base
        if ctx.load_u64(b + STATE + SEALED):
            ctx.jump(b + P)
            yield  # the next step fetches from P
            say(ctx, ("exec", P))
            ctx.jump(b + CODE)
        ctx.eexit()
        yield

    def op_grow(ctx: ScriptedContext) -> Step:
        b = ctx.base
        addr = ctx.rsi
        if not anyaddr and addr != b + H:
            yield from done(ctx)
            return
        rax = eaccept(ctx, addr, REG | R | W | PENDING)
        yield
        if rax == 0 or unchecked:
            ctx.store_u64(b + STATE + GROWN, 1)
            say(ctx, ("grown", addr - b))
        ctx.eexit()
        yield

    def op_use(ctx: ScriptedContext) -> Step:
        b = ctx.base
        ctx.load_u64(b + D)  # the key the runtime keeps in D
        yield
        if ctx.load_u64(b + STATE + GROWN):
            value = ctx.load_u64(b + H)
            ctx.store_u64(b + H, value + 1)
        ctx.eexit()
        yield

    def op_trim(ctx: ScriptedContext) -> Step:
        b = ctx.base
        rax = eaccept(ctx, b + H, TRIM_T | MODIFIED)
        yield
        if rax == 0 or unchecked:
            ctx.store_u64(b + STATE + GROWN, 0)
            say(ctx, ("trimmed", H))
        ctx.eexit()
        yield

    def op_add_tcs(ctx: ScriptedContext) -> Step:
        b = ctx.base
        rax = eaccept(ctx, b + T, REG | R | W | PENDING)
        yield
        if rax == 0:
            ctx.store(b + T, tcs_page(SSA2)[:64])
        ctx.eexit()
        yield

    def op_accept_tcs(ctx: ScriptedContext) -> Step:
        b = ctx.base
        rax = eaccept(ctx, b + T, TCS_T | MODIFIED)
        yield
        if rax == 0 or unchecked:
            ctx.store_u64(b + STATE + TCS_READY, 1)
            say(ctx, ("tcs_ready", T))
        ctx.eexit()
        yield

    def op_relax(ctx: ScriptedContext) -> Step:
        b = ctx.base
        addr = ctx.rsi
        if anyaddr or addr == b + D:
            ctx.emodpe(addr, REG | R | W)
            say(ctx, ("relaxed", addr - b))
        ctx.eexit()
        yield

    def op_bug(ctx: ScriptedContext) -> Step:
        target = ctx.rsi
        ctx.store_u64(target, BUG_MARK)
        yield
        ctx.store_u64(target, BUG_MARK + 1)
        ctx.eexit()
        yield

    ops: dict[int, Callable[[ScriptedContext], Step]] = {
        WRITE: op_write, SEAL: op_seal, EXEC: op_exec, GROW: op_grow, USE: op_use, TRIM: op_trim,
        ADD_TCS: op_add_tcs, ACCEPT_TCS: op_accept_tcs, RELAX: op_relax, BUG: op_bug,
    }

    def entry(ctx: ScriptedContext) -> Step:
        fn = ops.get(ctx.rdi)
        if fn is None:
            yield from done(ctx)
        else:
            yield from fn(ctx)

    return ScriptedProgram({CODE: entry}, stack=_stack, code_offset=CODE)


def _stack(ctx: ScriptedContext) -> int:
    return stack_top(ctx.base, ctx.tcs)


_RWX = secinfo_flags(PageType.PT_REG, R | W | X)
_RW = secinfo_flags(PageType.PT_REG, R | W)
_RO = secinfo_flags(PageType.PT_REG, R)
_ALL = PROT_R | PROT_W | PROT_X
_JIT_PAGES = (PageSpec(P, _RWX, _ALL),)
_KEY = KEY_MARK.to_bytes(8, "little")
_DATA_PTES = (0, PROT_R | PROT_W)  # data pages: mapped or not (execute rights are beside the point)
_CODE_PTES = (0, PROT_R | PROT_W, PROT_R | PROT_X, PROT_R | PROT_W | PROT_X)


def _jit(name: str, summary: str, careless: str = "", knobs: frozenset[str] = frozenset(),
         *, emodpr: bool = True) -> Runtime:
    seal: tuple[HostAction, ...] = (
        ((RESTRICT, P, R | X), ("ecall", SEAL, 0)) if emodpr else ((MPROTECT, P, PROT_R | PROT_X), ("ecall", SEAL, 0))
    )
    return Runtime(
        name, "jit", summary, careless, knobs, pages=_JIT_PAGES,
        calls=((WRITE, 0), (SEAL, 0), (EXEC, 0)),
        script=(("ecall", WRITE, 0), *seal, ("ecall", EXEC, 0)),
        properties=("wx",), kernel_pages=(P,), bug_targets=(P,), needs_emodpr=emodpr, pte_rights=_CODE_PTES,
        prelude=(("call", 0, WRITE, 0), ("run", 0)),
    )


def _heap(name: str, summary: str, careless: str = "", knobs: frozenset[str] = frozenset()) -> Runtime:
    return Runtime(
        name, "heap", summary, careless, knobs,
        pages=(PageSpec(D, _RW, PROT_R | PROT_W, _KEY),),
        calls=((GROW, H), (GROW, D), (USE, 0)),
        script=(("ecall", GROW, H), ("ecall", USE, 0), ("ecall", USE, 0)),
        properties=("integrity", "accepted_reads", "paging_fresh"),
        kernel_pages=(H, D), aug_pages=(H, D), emodpr_perms=(R,), bug_targets=(), pte_rights=_DATA_PTES,
        prelude=(("eaug", H), ("call", 0, GROW, H), ("run", 0)),
    )


def _trim(name: str, summary: str, careless: str = "", knobs: frozenset[str] = frozenset()) -> Runtime:
    return Runtime(
        name, "trim", summary, careless, knobs,
        pages=(PageSpec(D, _RW, PROT_R | PROT_W, _KEY),),
        calls=((GROW, H), (USE, 0), (TRIM, 0)),
        script=(("ecall", GROW, H), ("ecall", USE, 0), (MODT_TRIM, H, 0), ("ecall", TRIM, 0),
                (REMOVE, H, 0)),
        properties=("trim_gone", "integrity"),
        kernel_pages=(H,), aug_pages=(H,), emodpr_perms=(), bug_targets=(H,), pte_rights=_DATA_PTES,
        prelude=(("eaug", H), ("call", 0, GROW, H), ("run", 0), ("call", 0, USE, 0), ("run", 0)),
    )


def _tcs(name: str, summary: str, careless: str = "", knobs: frozenset[str] = frozenset()) -> Runtime:
    return Runtime(
        name, "tcs", summary, careless, knobs,
        calls=((ADD_TCS, 0), (ACCEPT_TCS, 0)),
        script=(("ecall", ADD_TCS, 0), (MODT_TCS, T, 0), ("ecall", ACCEPT_TCS, 0)),
        properties=("tcs_sealed",),
        kernel_pages=(T,), aug_pages=(T,), emodpr_perms=(), pte_rights=_DATA_PTES,
        emodt_types=(int(PageType.PT_TCS), int(PageType.PT_TRIM)), bug_targets=(T,),
        prelude=(("eaug", T), ("call", 0, ADD_TCS, 0), ("run", 0)),
    )


def _relax(name: str, summary: str, careless: str = "", knobs: frozenset[str] = frozenset()) -> Runtime:
    return Runtime(
        name, "relax", summary, careless, knobs,
        pages=(*_JIT_PAGES, PageSpec(D, _RO, PROT_R)),
        calls=((WRITE, 0), (RELAX, D), (RELAX, P)),
        script=(("ecall", WRITE, 0), (RESTRICT, P, R | X), ("ecall", SEAL, 0), ("ecall", RELAX, D),
                (MPROTECT, D, PROT_R | PROT_W)),
        properties=("wx",), kernel_pages=(P,), emodpr_perms=(R | X,), bug_targets=(P,), pte_rights=_CODE_PTES,
        needs_emodpr=True,
        prelude=(("call", 0, WRITE, 0), ("run", 0), ("emodpr", P, R | X), ("etrack",),
                 ("call", 0, SEAL, 0), ("run", 0)),
    )


_U = frozenset({"unchecked"})
_A = frozenset({"anyaddr"})

RUNTIMES: dict[str, Runtime] = {
    r.name: r
    for r in (
        _jit("jit", "JIT W^X: write P, restrict to R-X (EMODPR), EACCEPT and check, execute"),
        _jit("jit-unchecked", "JIT W^X, EACCEPT's result ignored", "EACCEPT's return value", _U),
        _jit("jit-noaccept", "JIT W^X, EACCEPT omitted (trusts the restrict ioctl)", "the EACCEPT",
             frozenset({"noaccept"})),
        _jit("jit-noemodpr", "JIT W^X by page tables only (mprotect R-X, no EMODPR)", "EMODPR and EACCEPT",
             frozenset({"noaccept"}), emodpr=False),
        _heap("heap", "heap growth: EACCEPT a PENDING page at its own heap address, check, use"),
        _heap("heap-unchecked", "heap growth, EACCEPT's result ignored", "EACCEPT's return value", _U),
        _heap("heap-anyaddr", "heap growth at the address the host names", "the address range", _A),
        _trim("trim", "trim: EACCEPT(TRIM|MODIFIED), check, then the kernel removes the page"),
        _trim("trim-unchecked", "trim, EACCEPT's result ignored", "EACCEPT's return value", _U),
        _tcs("tcs", "TCS creation: EACCEPT a fresh page, write the TCS, EACCEPT(TCS|MODIFIED)"),
        _tcs("tcs-unchecked", "TCS creation, the EACCEPT(TCS) result ignored", "EACCEPT's return value", _U),
        _relax("relax", "relax with EMODPE, only on its data page D"),
        _relax("relax-anyaddr", "relax with EMODPE at the address the host names", "the address", _A),
    )
}

# For a kernel whose restriction runs no EMODPR (soft-restrict), an EMODPR-based protocol
# cannot complete: the runtime written for that kernel seals by page tables only.
NO_EMODPR_FALLBACK = {"jit": "jit-noemodpr", "jit-unchecked": "jit-noemodpr",
                      "jit-noaccept": "jit-noemodpr"}


def runtime(name: str) -> Runtime:
    try:
        return RUNTIMES[name]
    except KeyError:
        raise ValueError(f"no runtime {name!r}; choose from {', '.join(RUNTIMES)}") from None


__all__ = [
    "OP_NAMES", "PAGE_SIZE", "RUNTIMES", "Runtime", "make_program", "runtime", "BUG", "CODE_MARK",
    "BUG_MARK",
]
