"""The explorer's enclave: one small layout shared by every runtime and both worlds.

Offsets are relative to the enclave base. Two TCSs: the runtime's main thread (TCS1, LP 0) and
an auxiliary thread (TCS2, LP 1) that the compromised-thread adversary uses for its write bug.
Each runtime adds the pages it needs (the JIT page P, a data page D, the heap page H, the page T
that becomes a TCS); only the pages a scenario lists are EADDed or may be EAUGed.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ..arch.constants import PAGE_SIZE, PageType, secinfo_flags

BASE = 0x10_0000_0000
SIZE = 0x10000

TCS1 = 0x0000
TCS2 = 0x1000
SSA1 = 0x2000  # one frame each (NSSA 1, SSAFRAMESIZE 1): no nested AEX is explored
SSA2 = 0x3000
CODE = 0x4000  # where the notional RIP of every scripted thread sits (R-X)
STACK = 0x5000  # both threads' scratch stacks: TCS1's top at +0x800, TCS2's at +0x1000
STATE = 0x6000  # the trusted runtime's own bookkeeping
P = 0x7000  # the JIT page
D = 0x8000  # a data page
H = 0x9000  # the heap page (EAUG)
T = 0xA000  # the page that becomes a new TCS (EAUG)

# Runtime state words in STATE.
SEALED = 0x00
GROWN = 0x08
TCS_READY = 0x10

# Marker values, chosen to be recognisable in traces.
CODE_MARK = 0xC0DE_C0DE_C0DE_C0DE
BUG_MARK = 0xBAD0_BAD0_BAD0_0000
KEY_MARK = 0x5EC2_E75E_C2E7_0001

# SECINFO rights and flags.
R, W, X = 1, 2, 4
PENDING, MODIFIED, PR = 0x08, 0x10, 0x20
REG = int(PageType.PT_REG) << 8
TCS_T = int(PageType.PT_TCS) << 8
TRIM_T = int(PageType.PT_TRIM) << 8

# PTE rights (PROT_* bits).
PROT_R, PROT_W, PROT_X = 1, 2, 4

NAMES = {
    TCS1: "TCS1", TCS2: "TCS2", SSA1: "SSA1", SSA2: "SSA2", CODE: "CODE", STACK: "STACK",
    STATE: "STATE", P: "P", D: "D", H: "H", T: "T",
}


def page_name(offset: int) -> str:
    page = offset & ~(PAGE_SIZE - 1)
    name = NAMES.get(page, f"{page:#x}")
    return name if offset == page else f"{name}+{offset - page:#x}"


def stack_top(base: int, tcs: int) -> int:
    """The initial scratch stack pointer of the thread entering through `tcs`."""
    return base + STACK + 0x800 * (1 + (tcs - base) // PAGE_SIZE)


def tcs_page(ossa: int, oentry: int = CODE, nssa: int = 1) -> bytes:
    """A TCS: OSSA, NSSA, OENTRY; FS/GS limits all ones."""
    raw = struct.pack("<QQQIIQQQQII", 0, 0, ossa, 0, nssa, oentry, 0, 0, 0, 0xFFFF_FFFF, 0xFFFF_FFFF)
    return raw.ljust(PAGE_SIZE, b"\0")


@dataclass(frozen=True)
class PageSpec:
    """One EADDed page: offset, SECINFO flags, PTE rights at start, contents."""

    offset: int
    flags: int
    prot: int
    data: bytes = b""


def base_pages() -> list[PageSpec]:
    rw = secinfo_flags(PageType.PT_REG, R | W)
    tcs = secinfo_flags(PageType.PT_TCS)
    return [
        PageSpec(TCS1, tcs, PROT_R | PROT_W, tcs_page(SSA1)),
        PageSpec(TCS2, tcs, PROT_R | PROT_W, tcs_page(SSA2)),
        PageSpec(SSA1, rw, PROT_R | PROT_W),
        PageSpec(SSA2, rw, PROT_R | PROT_W),
        PageSpec(CODE, secinfo_flags(PageType.PT_REG, R | X), PROT_R | PROT_X, b"\xcc" * PAGE_SIZE),
        PageSpec(STACK, rw, PROT_R | PROT_W),
        PageSpec(STATE, rw, PROT_R | PROT_W),
    ]
