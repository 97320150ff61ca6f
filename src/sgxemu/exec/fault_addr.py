"""The exact linear address of a data access that faulted, from the faulting instruction.

Unicorn's TLB-fill hook sees only the page of a refused access, but #PF must report the address
of the access (CR2, and MISC.EXINFO.MADDR in the SSA). The instruction at RIP is decoded with
capstone and each of its memory accesses evaluated with the current registers: the access of
the refused kind (read or write) that touches the faulting page gives the address, which is the
page start when the access began on the page before (SDM Vol. 3A 4.7: CR2 holds the address
that caused the fault). Implicit stack, string and FXSAVE/XSAVE accesses are modelled; anything
else falls back to the page start.
"""

from __future__ import annotations

from collections.abc import Callable

from capstone import CS_ARCH_X86, CS_MODE_64, Cs, CsError
from capstone import x86_const as cx

from ..arch.constants import PAGE_MASK, PAGE_SIZE

READ = 1
WRITE = 2

# capstone register id -> name of the matching `Reg`, for address registers.
_GPR64 = {
    cx.X86_REG_RAX: "RAX", cx.X86_REG_RCX: "RCX", cx.X86_REG_RDX: "RDX", cx.X86_REG_RBX: "RBX",
    cx.X86_REG_RSP: "RSP", cx.X86_REG_RBP: "RBP", cx.X86_REG_RSI: "RSI", cx.X86_REG_RDI: "RDI",
    cx.X86_REG_R8: "R8", cx.X86_REG_R9: "R9", cx.X86_REG_R10: "R10", cx.X86_REG_R11: "R11",
    cx.X86_REG_R12: "R12", cx.X86_REG_R13: "R13", cx.X86_REG_R14: "R14", cx.X86_REG_R15: "R15",
}  # fmt: skip
_GPR32 = {
    cx.X86_REG_EAX: "RAX", cx.X86_REG_ECX: "RCX", cx.X86_REG_EDX: "RDX", cx.X86_REG_EBX: "RBX",
    cx.X86_REG_ESP: "RSP", cx.X86_REG_EBP: "RBP", cx.X86_REG_ESI: "RSI", cx.X86_REG_EDI: "RDI",
    cx.X86_REG_R8D: "R8", cx.X86_REG_R9D: "R9", cx.X86_REG_R10D: "R10", cx.X86_REG_R11D: "R11",
    cx.X86_REG_R12D: "R12", cx.X86_REG_R13D: "R13", cx.X86_REG_R14D: "R14", cx.X86_REG_R15D: "R15",
}  # fmt: skip
_PUSHES = frozenset({"push", "pushfq", "pushf", "call"})
_POPS = frozenset({"pop", "popfq", "popf", "ret"})
# Instructions whose memory operand is a whole save area (capstone reports 8 bytes).
_AREAS = {
    "fxsave": 512, "fxsave64": 512, "fxrstor": 512, "fxrstor64": 512,
    "xsave": 576, "xsave64": 576, "xsaveopt": 576, "xsaveopt64": 576,
    "xrstor": 576, "xrstor64": 576, "fnsave": 108, "frstor": 108,
    "fnstenv": 28, "fldenv": 28,
}  # fmt: skip

RegReader = Callable[[str], int]
Access = tuple[int, int, int]  # (address, size, READ/WRITE bits)


class FaultDecoder:
    """Decodes faulting instructions (one capstone handle with details on)."""

    def __init__(self) -> None:
        self._md = Cs(CS_ARCH_X86, CS_MODE_64)
        self._md.detail = True

    def accesses(self, code: bytes, rip: int, reg: RegReader) -> list[Access]:
        """The memory accesses of the instruction at the start of `code`."""
        try:
            insn = next(self._md.disasm(code, rip, 1), None)
        except CsError:
            return []
        if insn is None:
            return []
        out: list[Access] = []
        addr32 = 0x67 in insn.prefix
        words = insn.mnemonic.split()
        base_mnemonic = words[-1] if words else ""
        opsize = 2 if 0x66 in insn.prefix and base_mnemonic in ("push", "pop") else 8
        for op in insn.operands:
            if op.type != cx.X86_OP_MEM:
                continue
            if (
                base_mnemonic == "lea"
                or base_mnemonic.startswith("prefetch")
                or base_mnemonic == "nop"
            ):
                continue  # no memory access
            m = op.mem
            ea = m.disp
            if m.base == cx.X86_REG_RIP:
                ea += rip + insn.size
            elif m.base != cx.X86_REG_INVALID:
                ea += _reg_value(m.base, reg)
            if m.index != cx.X86_REG_INVALID:
                ea += _reg_value(m.index, reg) * m.scale
            if addr32:
                ea &= 0xFFFF_FFFF
            if m.segment == cx.X86_REG_FS:
                ea += reg("FSBASE")
            elif m.segment == cx.X86_REG_GS:
                ea += reg("GSBASE")
            ea &= 0xFFFF_FFFF_FFFF_FFFF
            size = _AREAS.get(base_mnemonic, op.size or 1)
            kind = op.access & (READ | WRITE) or READ
            out.append((ea, size, kind))
        # Implicit stack accesses (SDM Vol. 1 6.2).
        rsp = None
        if base_mnemonic in _PUSHES:
            rsp = reg("RSP")
            out.append(((rsp - opsize) & 0xFFFF_FFFF_FFFF_FFFF, opsize, WRITE))
        elif base_mnemonic in _POPS:
            rsp = reg("RSP")
            out.append((rsp, opsize, READ))
        elif base_mnemonic == "leave":
            out.append((reg("RBP"), 8, READ))
        return out


def _reg_value(cs_reg: int, reg: RegReader) -> int:
    name = _GPR64.get(cs_reg)
    if name is not None:
        return reg(name)
    name = _GPR32.get(cs_reg)
    if name is not None:
        return reg(name) & 0xFFFF_FFFF
    return 0


def exact_address(accesses: list[Access], page: int, kind: int) -> tuple[int, int]:
    """The faulting address within `page` for a refused access of `kind` (READ or WRITE),
    and the kinds of the access found (READ | WRITE for a read-modify-write operand)."""
    for ea, size, k in accesses:
        if not k & kind:
            continue
        lo, hi = ea, ea + max(size, 1)
        if hi <= page or lo >= page + PAGE_SIZE:
            continue
        return max(lo, page), k
    return page, kind


def fault_page(addr: int) -> int:
    return addr & PAGE_MASK
