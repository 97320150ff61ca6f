"""The test enclave's operation protocol as a scripted program.

The same layout as `build_test_enclave()`'s ELF (offsets from `load_segments`) and the same
memory accesses, in the same order, as the compiled enclave (encl_entry.S, encl.c at -O2):
every access that can fault is its own step, so a fault reports the same vector, error code
and address, and ERESUME retries just that access. Accesses that cannot fault differently
(constant loads from the text page, register moves) are left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..arch.constants import PAGE_SIZE, EncluLeaf
from ..testenclave.protocol import (
    ENCL_OP_EACCEPT,
    ENCL_OP_EMODPE,
    ENCL_OP_GET_FROM_ADDRESS,
    ENCL_OP_GET_FROM_BUFFER,
    ENCL_OP_INIT_TCS_PAGE,
    ENCL_OP_PUT_TO_ADDRESS,
)
from .scripted import ScriptedContext, ScriptedEntry, ScriptedProgram, Step

if TYPE_CHECKING:
    from collections.abc import Generator

    from ..loader.selftest_layout import EnclaveImage

__all__ = ["SelftestLayout", "selftest_program"]

_MASK64 = (1 << 64) - 1
_ZERO8 = 0
_ZERO16 = bytes(16)


@dataclass(frozen=True)
class SelftestLayout:
    """Enclave offsets the program needs."""

    entry: int  # encl_entry (OENTRY of the static TCSs)
    dyn_entry: int  # encl_dyn_entry (TCSs made by INIT_TCS_PAGE)
    body: int  # encl_body: where the notional RIP sits while an op runs
    buffer: int  # encl_buffer: the data segment's first page
    stack1_top: int  # encl_stack_tcs1_top: TCS n's stack top is this + (TCS - base)

    @classmethod
    def from_image(cls, image: EnclaveImage) -> SelftestLayout:
        return cls(
            entry=image.symbol("encl_entry"),
            dyn_entry=image.symbol("encl_dyn_entry"),
            body=image.symbol("encl_body"),
            buffer=image.data_offset,
            stack1_top=image.symbol("encl_stack_tcs1_top"),
        )


def selftest_program(layout: SelftestLayout | EnclaveImage) -> ScriptedProgram:
    """The scripted test enclave: `encl_entry` and `encl_dyn_entry` run one op and EEXIT."""
    lay = layout if isinstance(layout, SelftestLayout) else SelftestLayout.from_image(layout)

    def static_stack(ctx: ScriptedContext) -> int:
        return (ctx.tcs + lay.stack1_top) & _MASK64  # RBX - __encl_base + encl_stack_tcs1_top

    def dyn_stack(ctx: ScriptedContext) -> int:
        return (ctx.tcs - 1) & ~15 & _MASK64  # the page below the TCS

    def entry(ctx: ScriptedContext) -> Step:
        yield from _stub(ctx, lay)

    return ScriptedProgram(
        {
            lay.entry: ScriptedEntry(entry, static_stack),
            lay.dyn_entry: ScriptedEntry(entry, dyn_stack),
        }
    )


def _stub(ctx: ScriptedContext, lay: SelftestLayout) -> Step:
    """encl_entry_core: save the untrusted RSP and the EEXIT target, call the body, EEXIT."""
    stub = ctx.rip
    ctx.push(ctx.ursp)  # push %rax (the untrusted RSP, after xchg)
    yield
    ctx.push(ctx.rcx)  # push %rcx
    yield
    ctx.push(stub)  # call encl_body (the return address is notional)
    yield
    ctx.jump(ctx.base + lay.body)
    yield from _body(ctx, lay)
    ctx.pop()  # ret
    yield
    ctx.jump(stub)
    target = ctx.pop()  # pop %rbx
    yield
    ursp = ctx.pop()  # pop %rax; mov %rax,%rsp
    yield
    ctx.eexit(target, rsp=ursp)  # mov $4,%eax; ENCLU


def _body(ctx: ScriptedContext, lay: SelftestLayout) -> Step:
    """encl_body's switch, access by access as gcc -O2 compiled it."""
    rdi = ctx.rdi
    op = ctx.load_u64(rdi)  # mov (%rdi),%rax
    yield
    if op == ENCL_OP_GET_FROM_ADDRESS:
        addr = ctx.load_u64(rdi + 16)
        yield
        value = ctx.load_u64(addr)
        yield
        ctx.store_u64(rdi + 8, value)
        yield
    elif op > ENCL_OP_GET_FROM_ADDRESS:  # unsigned: every type >= 8 is a NOP too
        ctx.push(ctx.urbp)  # push %rbp
        yield
        frame = ctx.sp
        assert frame is not None
        ctx.push(ctx.tcs)  # push %rbx (still the TCS address)
        yield
        ctx.sp = (frame - 8) & ~63  # and $-64,%rsp
        if op == ENCL_OP_EMODPE:
            yield from _secinfo_enclu(ctx, EncluLeaf.EMODPE)
        elif op == ENCL_OP_INIT_TCS_PAGE:
            yield from _init_tcs_page(ctx)
        elif op == ENCL_OP_EACCEPT:
            rax = yield from _secinfo_enclu(ctx, EncluLeaf.EACCEPT)
            ret = rax & 0xFFFF_FFFF
            if ret & 0x8000_0000:
                ret |= 0xFFFF_FFFF_0000_0000  # (int32_t)rax, sign-extended (cltq)
            ctx.store_u64(rdi + 24, ret)
            yield
        ctx.load_u64(frame - 8)  # mov -0x8(%rbp),%rbx
        yield
        ctx.sp = frame
        ctx.pop()  # leave
        yield
    elif op == ENCL_OP_GET_FROM_BUFFER:
        value = ctx.load_u64(ctx.base + lay.buffer)
        yield
        ctx.store_u64(rdi + 8, value)
        yield
    elif op == ENCL_OP_PUT_TO_ADDRESS:
        addr = ctx.load_u64(rdi + 16)
        yield
        value = ctx.load_u64(rdi + 8)
        yield
        ctx.store_u64(addr, value)
        yield
    else:  # ENCL_OP_PUT_TO_BUFFER
        value = ctx.load_u64(rdi + 8)
        yield
        ctx.store_u64(ctx.base + lay.buffer, value)
        yield


def _secinfo_enclu(ctx: ScriptedContext, leaf: EncluLeaf) -> Generator[None, None, int]:
    """do_eaccept / do_emodpe: SECINFO {flags} in the 64 bytes below the aligned RSP, ENCLU."""
    rdi = ctx.rdi
    sp = ctx.sp
    assert sp is not None
    si = sp - 64  # lea -0x40(%rsp),%rbx
    flags = ctx.load_u64(rdi + 16)
    yield
    ctx.store_u64(si + 0x38, _ZERO8)
    yield
    ctx.store(si + 0x08, _ZERO16)
    yield
    ctx.store_u64(si, flags)
    yield
    epc_addr = ctx.load_u64(rdi + 8)
    yield
    ctx.store(si + 0x18, _ZERO16)
    yield
    ctx.store(si + 0x28, _ZERO16)
    yield
    rax = ctx.enclu(leaf, si, epc_addr)
    yield
    return rax


def _init_tcs_page(ctx: ScriptedContext) -> Step:
    """do_init_tcs_page: rep stosb over the page (one step per page touched), then the fields."""
    rdi = ctx.rdi
    tcs = ctx.load_u64(rdi + 8)
    yield
    addr, end = tcs, tcs + PAGE_SIZE
    while addr < end:  # rep stosb faults at the first byte of a page it may not write
        n = min(end - addr, PAGE_SIZE - (addr & (PAGE_SIZE - 1)))
        ctx.store(addr & _MASK64, bytes(n))
        yield
        addr += n
    ssa = ctx.load_u64(rdi + 16)
    yield
    ctx.store_u64((tcs + 0x10) & _MASK64, ssa)  # OSSA
    yield
    ctx.store_u64((tcs + 0x18) & _MASK64, 1 << 32)  # CSSA = 0, NSSA = 1
    yield
    entry = ctx.load_u64(rdi + 24)
    yield
    ctx.store_u64((tcs + 0x20) & _MASK64, entry)  # OENTRY
    yield
    ctx.store_u64((tcs + 0x40) & _MASK64, _MASK64)  # FSLIMIT, GSLIMIT
    yield
