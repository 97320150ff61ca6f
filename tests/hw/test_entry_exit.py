"""Entering and leaving an enclave: EENTER (spec 4.1), EEXIT (4.2), AEX (4.3), ERESUME (4.4).

EENTER has one table row per check of 4.1 in order (TCS EPCM state, TCS fields, SSA frame pages,
targets, busy TCS) plus order rows; a failing entry changes nothing (EPCM, hidden SECS state, EPC
contents, logical processors, registers). AEX is driven the way engines drive it,
`aex(cpu, lp, regs, event)`, and the SSA frame is read back byte by byte at the offsets of SDM
Table 38-8 (GPRSGX), 38-9 (EXITINFO) and the MISC.EXINFO layout, independently of the model's own
structure definitions.
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from sgxemu.arch.constants import Attribute, EncluLeaf, PageType, SgxError, Vector, secinfo_flags
from sgxemu.hw.enclu.aex import aex
from sgxemu.hw.faults import (
    CpuException,
    GeneralProtection,
    InvalidOpcode,
    PageFault,
    SgxFault,
)
from sgxemu.hw.memory import PTE_ADDR_MASK, PTE_P, PTE_U, PTE_W, FlatMemory
from sgxemu.hw.regs import AC, AF, CF, DF, ID, IF, NT, OF, PF, RF, SF, TF, VM, ZF, Reg, Registers
from sgxemu.hw.secs import SecsState
from sgxemu.leafkit import AEP, HOST_RIP, Enclave, LeafKit
from sgxemu.sign import mrsigner_of_key
from testkeys import key_a, plain_sigstruct

R, W, X = 1, 2, 4
PENDING, MODIFIED = 0x08, 0x10
TCS_T, REG, TRIM = PageType.PT_TCS, PageType.PT_REG, PageType.PT_TRIM
M64 = int(Attribute.MODE64BIT)
AEXNOTIFY = int(Attribute.AEXNOTIFY)
IOPL3 = 3 << 12

# #PF error codes: P=1 W=2 U=4 SGX=0x8000.
PF_TCS = 0x8005  # the TCS operand (a user read) not in EPC or in the wrong EPCM state
PF_SSA = 0x8007  # an SSA page (a user write) not in EPC or in the wrong EPCM state

BASE, SIZE = 0x1000_0000, 0x10_0000
SSAFS, NSSA, NTCS = 2, 2, 3  # SSA frames of two pages: the XSAVE page and the GPRSGX page


def tcs_at(i: int) -> int:
    return BASE + 0x1_0000 * i


def ssa_page(i: int, frame: int, page: int = 0) -> int:
    return tcs_at(i) + 0x1000 + (frame * SSAFS + page) * 0x1000


def gpr_at(i: int, frame: int) -> int:
    """Linear address of GPRSGX in frame `frame` of TCS i: the last 184 bytes of the frame."""
    return ssa_page(i, frame) + SSAFS * 0x1000 - 184


OENTRY = 0x8_0000
CODE = BASE + OENTRY  # R-X
DATA = BASE + 0x8_1000  # RW
RO = BASE + 0x8_2000  # R--, right after DATA
SECINFO = BASE + 0x8_3000  # RW, where the enclave builds SECINFOs
OFSBASE, OGSBASE = 0x8_4000, 0x8_6000
DYN, DYN2 = BASE + 0x9_0000, BASE + 0x9_1000  # unbacked until a row EAUGs them
ALIEN = BASE + 0xA_0000  # a page of another (uninitialized) enclave at the same base
ALIEN_TCS = BASE + 0xB_0000  # a TCS of that enclave
ALIAS = BASE + 0xC_0000  # unmapped; rows map another page here
SECS_MAP = BASE + 0xD_0000  # the SECS page mapped into ELRANGE
UNBACKED = BASE + 0xE_0000  # ordinary memory inside ELRANGE
NONCANONICAL = 0x0000_8000_0000_0000

# GPRSGX layout (SDM Table 38-8), independent of the model's definitions.
GPR_OFF = {
    Reg.RAX: 0, Reg.RCX: 8, Reg.RDX: 16, Reg.RBX: 24, Reg.RSP: 32, Reg.RBP: 40, Reg.RSI: 48,
    Reg.RDI: 56, Reg.R8: 64, Reg.R9: 72, Reg.R10: 80, Reg.R11: 88, Reg.R12: 96, Reg.R13: 104,
    Reg.R14: 112, Reg.R15: 120, Reg.RFLAGS: 128, Reg.RIP: 136, Reg.FSBASE: 168, Reg.GSBASE: 176,
}  # fmt: skip
OFF_URSP, OFF_URBP, OFF_EXITINFO, OFF_AEXNOTIFY = 144, 152, 160, 167
# TCS layout (SDM Table 38-10): name -> (offset, struct code).
TCS_OFF = {
    "state": (0, "<Q"), "flags": (8, "<Q"), "ossa": (16, "<Q"), "cssa": (24, "<I"),
    "nssa": (28, "<I"), "oentry": (32, "<Q"), "aep": (40, "<Q"), "ofsbase": (48, "<Q"),
    "ogsbase": (56, "<Q"),
}  # fmt: skip


def tcs_image(ossa: int, *, flags: int = 0, nssa: int = NSSA, fslimit: int = 0xFFFF_FFFF) -> bytes:
    head = struct.pack(
        "<QQQIIQQQQII", 0, flags, ossa, 0, nssa, OENTRY, 0, OFSBASE, OGSBASE, fslimit, fslimit
    )
    return head.ljust(4096, b"\0")


def secinfo_bytes(flags: int) -> bytes:
    return struct.pack("<Q", flags) + bytes(56)


def einit(kit: LeafKit, encl: Enclave, secs: SecsState) -> None:
    assert secs.measurement is not None
    kit.set_lepubkeyhash(mrsigner_of_key(key_a()))
    assert kit.einit(encl, plain_sigstruct(secs.measurement.final())) == 0


class World:
    """An initialized 64-bit enclave: three TCSs with two 2-page SSA frames each, code and data."""

    def __init__(self, *, miscselect: int = 0, aexnotify: bool = False, tcs_flags: int = 0) -> None:
        self.kit = kit = LeafKit(epc_size=256 * 4096, cpus=4)
        self.cpu = kit.cpu
        assert isinstance(kit.umem, FlatMemory)
        self.umem: FlatMemory = kit.umem
        attributes = M64 | (AEXNOTIFY if aexnotify else 0)
        self.encl = encl = kit.ecreate(
            BASE, SIZE, attributes=attributes, ssaframesize=SSAFS, miscselect=miscselect
        )
        for i in range(NTCS):
            image = tcs_image(tcs_at(i) + 0x1000 - BASE, flags=tcs_flags)
            kit.eadd(encl, tcs_at(i), image, secinfo_flags(TCS_T), measure=False)
            for p in range(NSSA * SSAFS):
                kit.eadd(encl, ssa_page(i, 0, p), b"", secinfo_flags(REG, R | W), measure=False)
        kit.eadd(encl, CODE, b"\x90" * 4096, secinfo_flags(REG, R | X), measure=False)
        kit.eadd(encl, DATA, b"data" * 1024, secinfo_flags(REG, R | W), measure=False)
        kit.eadd(encl, RO, b"ro" * 2048, secinfo_flags(REG, R), measure=False)
        kit.eadd(encl, SECINFO, b"", secinfo_flags(REG, R | W), measure=False)
        self.secs = self.secs_of(encl)
        einit(kit, encl, self.secs)
        self.other = kit.ecreate(BASE, SIZE)
        kit.eadd(self.other, ALIEN, b"alien" * 800, secinfo_flags(REG, R | W), measure=False)
        kit.eadd(self.other, ALIEN_TCS, tcs_image(ALIEN - BASE), secinfo_flags(TCS_T), measure=False)
        self.map_raw(SECS_MAP, encl.secs_pa)
        self.umem.set_pte(UNBACKED, 0x5000 | PTE_P | PTE_W | PTE_U)
        for lin in (ALIAS, DYN, DYN2):
            self.unmap(lin)  # the process maps nothing there until a row does

    # -- plumbing ---------------------------------------------------------------------------------
    def secs_of(self, encl: Enclave) -> SecsState:
        s = self.cpu.secs_of(self.cpu.epc.index(encl.secs_pa))
        assert s is not None
        return s

    def map_raw(self, lin: int, pa: int, *, user: bool = True, write: bool = True) -> None:
        self.umem.set_pte(lin, pa | PTE_P | (PTE_W if write else 0) | (PTE_U if user else 0))

    def unmap(self, lin: int) -> None:
        self.umem.set_pte(lin, 0)

    def pa_of(self, lin: int) -> int:
        return self.umem.translate(lin) & PTE_ADDR_MASK

    def index_of(self, lin: int) -> int:
        return self.cpu.epc.index(self.pa_of(lin))

    def read(self, lin: int, size: int) -> bytes:
        """EPC bytes behind an enclave linear address (what the hardware holds, not what reads see)."""
        return self.cpu.epc.read(self.index_of(lin), lin & 0xFFF, size)

    def u64(self, lin: int) -> int:
        value: int = struct.unpack("<Q", self.read(lin, 8))[0]
        return value

    def poke(self, lin: int, data: bytes) -> World:
        self.cpu.epc.write(self.index_of(lin), lin & 0xFFF, data)
        return self

    def tcs(self, i: int, name: str) -> int:
        off, code = TCS_OFF[name]
        value: int = struct.unpack(code, self.read(tcs_at(i) + off, struct.calcsize(code)))[0]
        return value

    def poke_tcs(self, i: int, **fields: int) -> World:
        """Test set-up: write TCS fields directly in the EPC page."""
        for name, value in fields.items():
            off, code = TCS_OFF[name]
            self.poke(tcs_at(i) + off, struct.pack(code, value & ((1 << 8 * struct.calcsize(code)) - 1)))
        return self

    def block(self, lin: int) -> World:
        assert self.kit.eblock(self.pa_of(lin)) == 0
        return self

    def trim(self, lin: int) -> World:
        assert self.kit.emodt(self.encl, lin, TRIM) == 0
        assert self.kit.etrack(self.encl) == 0
        return self

    def aug(self, lin: int) -> World:
        self.kit.eaug(self.encl, lin)
        return self

    def made_tcs(self, lin: int) -> None:
        """EAUG, accepted by a helper thread (LP 3, TCS 2) and filled with a TCS, then EMODT TCS."""
        self.aug(lin)
        helper = self.kit.eenter(tcs_at(2), lp=3)
        self.poke(SECINFO, secinfo_bytes(secinfo_flags(REG, R | W, PENDING)))
        assert self.kit.enclu(helper, EncluLeaf.EACCEPT, SECINFO, lin, lp=3) == 0
        self.poke(lin, tcs_image(ssa_page(2, 0) - BASE))
        self.kit.eexit(helper, lp=3)
        assert self.kit.emodt(self.encl, lin, TCS_T) == 0
        assert self.kit.etrack(self.encl) == 0

    def snapshot(self) -> tuple[Any, ...]:
        cpu = self.cpu
        epcm = {
            i: (e.pt, e.perms, e.state, e.linaddr, e.epoch, None if e.secs is None else e.secs.index)
            for i, e in cpu.epcm.items()
        }
        secs = {}
        for s in cpu.enclaves():
            m = s.measurement
            secs[s.index] = (
                s.eid, s.attributes, s.mrenclave, s.chldcnt, dict(s.inside), s.epoch,
                None if m is None else (m.final(), m.update_counter),
            )  # fmt: skip
        pages = {i: cpu.epc.read(i, 0, 4096) for i in cpu.epcm}
        lps = [
            (
                lp.enclave_mode, None if lp.secs is None else lp.secs.index, lp.tcs_index,
                lp.tcs_lin, lp.aep, lp.ssa_frame_lin, lp.ssa_gpr_index, lp.ssa_gpr_offset,
                lp.ssa_xsave_index, lp.saved_fsbase, lp.saved_gsbase, lp.saved_tf, dict(lp.tlb),
            )  # fmt: skip
            for lp in cpu.lps
        ]
        return epcm, secs, pages, lps


# -- register files ----------------------------------------------------------------------------------

HOST_RSP, HOST_RBP = 0x7FFF_F000, 0x7FFF_F100
HOST_FS, HOST_GS = 0x7F00_0000_1000, 0x7F00_0000_2000
HOST_FLAGS = 0x2 | IF | CF


def host_regs(leaf: int, rbx: int, rcx: int = AEP, *, rflags: int = HOST_FLAGS) -> Registers:
    """What the host thread holds when it executes ENCLU at HOST_RIP."""
    regs = Registers()
    for r in Reg:
        regs[r] = 0x0101_0101_0000 * (int(r) + 1)
    regs[Reg.RAX], regs[Reg.RBX], regs[Reg.RCX] = leaf, rbx, rcx
    regs[Reg.RSP], regs[Reg.RBP] = HOST_RSP, HOST_RBP
    regs[Reg.RFLAGS], regs[Reg.RIP] = rflags, HOST_RIP
    regs[Reg.FSBASE], regs[Reg.GSBASE] = HOST_FS, HOST_GS
    regs.extended[:] = bytes((i * 3 + 1) & 0xFF for i in range(512))
    return regs


ENCLAVE_RIP = CODE + 0x42
ENCLAVE_FS, ENCLAVE_GS = BASE + 0x8_4000, BASE + 0x8_6000
ENCLAVE_FLAGS = 0x2 | CF | PF | AF | ZF | SF | OF | DF | IF | TF | NT | AC | ID | RF
ENCLAVE_X87 = bytes((i * 11 + 5) & 0xFF for i in range(512))


def enclave_state(regs: Registers, seed: int = 1) -> dict[Reg, int]:
    """Put enclave code's register state in `regs` (as if it ran to ENCLAVE_RIP); returns it."""
    for r in Reg:
        regs[r] = 0x1111_0000_0000 * seed + 0x100 * (int(r) + 1)
    regs[Reg.RSP], regs[Reg.RBP] = DATA + 0xF00 - 0x10 * seed, DATA + 0xF80
    regs[Reg.RFLAGS], regs[Reg.RIP] = ENCLAVE_FLAGS, ENCLAVE_RIP + seed
    regs[Reg.FSBASE], regs[Reg.GSBASE] = ENCLAVE_FS, ENCLAVE_GS
    regs.extended[:] = bytes((b + seed) & 0xFF for b in ENCLAVE_X87)
    return {r: regs[r] for r in Reg}


def run_enclu(w: World, regs: Registers, lp: int = 0) -> None:
    w.cpu.enclu(w.cpu.lp(lp), regs, w.umem)


def enter(w: World, tcs: int = 0, lp: int = 0, **kw: int) -> Registers:
    regs = host_regs(EncluLeaf.EENTER, tcs_at(tcs), **kw)
    run_enclu(w, regs, lp)
    return regs


@pytest.fixture
def w() -> World:
    return World()


# -- expectations ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Gp:
    pass


@dataclass(frozen=True)
class Pf:
    addr: int
    code: int


OK = None
GP = Gp()
Expect = Gp | Pf | None
Setup = Callable[[World], object] | None


def check_fails(w: World, regs: Registers, expect: Gp | Pf, lp: int = 0) -> None:
    """The leaf faults as expected; nothing changed, registers included (RIP stays on ENCLU)."""
    before = w.snapshot()
    saved = (list(regs.values), bytes(regs.extended))
    exc: type[SgxFault] = GeneralProtection if isinstance(expect, Gp) else PageFault
    with pytest.raises(exc) as info:
        run_enclu(w, regs, lp)
    if isinstance(expect, Pf):
        got = (hex(info.value.addr), hex(info.value.error_code))
        assert got == (hex(expect.addr), hex(expect.code))
    else:
        assert info.value.error_code == 0
    assert w.snapshot() == before
    assert (list(regs.values), bytes(regs.extended)) == saved


# ================================================================================================
# EENTER (ENCLU 02h): RBX = TCS, RCX = AEP
# ================================================================================================

S0, S1, S2 = ssa_page(0, 0, 0), ssa_page(0, 0, 1), ssa_page(0, 1, 0)  # TCS 0's SSA pages
G0 = gpr_at(0, 0)

EENTER_ROWS: list[tuple[str, Setup, int, int, Expect]] = [
    ("ok", None, tcs_at(0), AEP, OK),
    ("ok-second-frame", lambda w: w.poke_tcs(0, cssa=1), tcs_at(0), AEP, OK),
    ("ok-dbgoptin", lambda w: w.poke_tcs(0, flags=1), tcs_at(0), AEP, OK),
    ("ok-aexnotify-mismatch-allowed-with-dbgoptin", lambda w: w.poke_tcs(0, flags=3), tcs_at(0), AEP, OK),
    ("ok-aep-in-upper-half", None, tcs_at(0), 0xFFFF_8000_0000_1000, OK),
    ("ok-after-etrack", lambda w: w.kit.etrack(w.encl), tcs_at(0), AEP, OK),
    ("ok-other-tcs", None, tcs_at(1), AEP, OK),
    # 2. RBX: alignment, paging, EPC.
    ("rbx-not-4k-aligned", None, tcs_at(0) + 0x10, AEP, GP),
    ("rbx-not-mapped", None, ALIAS, AEP, Pf(ALIAS, 0x4)),
    ("rbx-supervisor-page", lambda w: w.map_raw(ALIAS, w.encl.pages[tcs_at(0)], user=False), ALIAS, AEP, Pf(ALIAS, 0x5)),
    ("rbx-not-epc", None, UNBACKED, AEP, Pf(UNBACKED, PF_TCS)),
    # 3. AEP canonical.
    ("aep-not-canonical", None, tcs_at(0), NONCANONICAL, GP),
    ("aep-not-canonical-high", None, tcs_at(0), 0xFFFF_0000_0000_0000, GP),
    # 5. The TCS EPCM entry: VALID, not BLOCKED, ENCLAVEADDRESS, PT_TCS, not PENDING/MODIFIED.
    ("tcs-free-epc-page", lambda w: w.map_raw(ALIAS, w.kit.alloc()), ALIAS, AEP, Pf(ALIAS, PF_TCS)),
    ("tcs-blocked", lambda w: w.block(tcs_at(2)), tcs_at(2), AEP, Pf(tcs_at(2), PF_TCS)),
    ("tcs-aliased", lambda w: w.map_raw(ALIAS, w.encl.pages[tcs_at(0)]), ALIAS, AEP, Pf(ALIAS, PF_TCS)),
    ("tcs-is-reg", None, DATA, AEP, Pf(DATA, PF_TCS)),
    ("tcs-is-secs", None, SECS_MAP, AEP, Pf(SECS_MAP, PF_TCS)),
    ("tcs-is-va", lambda w: w.map_raw(ALIAS, w.kit.epa()), ALIAS, AEP, Pf(ALIAS, PF_TCS)),
    ("tcs-pending", lambda w: w.aug(DYN), DYN, AEP, Pf(DYN, PF_TCS)),
    ("tcs-modified", lambda w: w.made_tcs(DYN), DYN, AEP, Pf(DYN, PF_TCS)),
    ("tcs-trimmed", lambda w: w.trim(tcs_at(2)), tcs_at(2), AEP, Pf(tcs_at(2), PF_TCS)),
    # 6. TCS fields and the enclave.
    ("ossa-not-4k-aligned", lambda w: w.poke_tcs(0, ossa=0x1080), tcs_at(0), AEP, GP),
    ("ofsbase-not-4k-aligned", lambda w: w.poke_tcs(0, ofsbase=OFSBASE + 8), tcs_at(0), AEP, GP),
    ("ogsbase-not-4k-aligned", lambda w: w.poke_tcs(0, ogsbase=OGSBASE + 0x800), tcs_at(0), AEP, GP),
    ("flags-reserved-bit2", lambda w: w.poke_tcs(0, flags=4), tcs_at(0), AEP, GP),
    ("flags-reserved-bit63", lambda w: w.poke_tcs(0, flags=1 << 63), tcs_at(0), AEP, GP),
    ("enclave-not-initialized", None, ALIEN_TCS, AEP, GP),
    ("aexnotify-flag-without-attribute", lambda w: w.poke_tcs(0, flags=2), tcs_at(0), AEP, GP),
    ("cssa-equals-nssa", lambda w: w.poke_tcs(0, cssa=2), tcs_at(0), AEP, GP),
    ("cssa-above-nssa", lambda w: w.poke_tcs(0, cssa=9), tcs_at(0), AEP, GP),
    ("nssa-zero", lambda w: w.poke_tcs(0, nssa=0), tcs_at(0), AEP, GP),
    # 8. The SSA frame: the XSAVE page, then the GPRSGX page (faults report TMP_GPR).
    ("ssa-not-mapped", lambda w: w.unmap(S0), tcs_at(0), AEP, Pf(S0, 0x6)),
    ("ssa-read-only-pte", lambda w: w.map_raw(S0, w.encl.pages[S0], write=False), tcs_at(0), AEP, Pf(S0, 0x7)),
    ("ssa-supervisor-pte", lambda w: w.map_raw(S0, w.encl.pages[S0], user=False), tcs_at(0), AEP, Pf(S0, 0x7)),
    ("ssa-not-epc", lambda w: w.umem.set_pte(S0, 0x6000 | PTE_P | PTE_W | PTE_U), tcs_at(0), AEP, Pf(S0, PF_SSA)),
    ("ssa-free-epc-page", lambda w: w.map_raw(S0, w.kit.alloc()), tcs_at(0), AEP, Pf(S0, PF_SSA)),
    ("ssa-blocked", lambda w: w.block(S0), tcs_at(0), AEP, Pf(S0, PF_SSA)),
    ("ssa-pending", lambda w: (w.aug(DYN), w.poke_tcs(0, ossa=DYN - BASE)), tcs_at(0), AEP, Pf(DYN, PF_SSA)),
    ("ssa-modified", lambda w: w.trim(S0), tcs_at(0), AEP, Pf(S0, PF_SSA)),
    ("ssa-aliased", lambda w: w.map_raw(S0, w.encl.pages[DATA]), tcs_at(0), AEP, Pf(S0, PF_SSA)),
    ("ssa-is-tcs", lambda w: w.poke_tcs(0, ossa=tcs_at(1) - BASE), tcs_at(0), AEP, Pf(tcs_at(1), PF_SSA)),
    ("ssa-read-only", lambda w: w.poke_tcs(0, ossa=RO - BASE), tcs_at(0), AEP, Pf(RO, PF_SSA)),
    ("ssa-code-page-rx", lambda w: w.poke_tcs(0, ossa=CODE - BASE), tcs_at(0), AEP, Pf(CODE, PF_SSA)),
    ("ssa-another-enclave", lambda w: w.poke_tcs(0, ossa=ALIEN - BASE), tcs_at(0), AEP, Pf(ALIEN, PF_SSA)),
    ("gpr-page-read-only", lambda w: w.poke_tcs(0, ossa=DATA - BASE), tcs_at(0), AEP, Pf(RO + 0x1000 - 184, PF_SSA)),
    ("gpr-page-blocked", lambda w: w.block(S1), tcs_at(0), AEP, Pf(G0, PF_SSA)),
    ("gpr-page-not-mapped", lambda w: w.unmap(S1), tcs_at(0), AEP, Pf(G0, 0x6)),
    ("gpr-page-another-enclave", lambda w: w.map_raw(S1, w.other.pages[ALIEN]), tcs_at(0), AEP, Pf(G0, PF_SSA)),
    ("second-frame-blocked", lambda w: (w.poke_tcs(0, cssa=1), w.block(S2)), tcs_at(0), AEP, Pf(S2, PF_SSA)),
    # 9.-10. Targets.
    ("oentry-not-canonical", lambda w: w.poke_tcs(0, oentry=NONCANONICAL - BASE), tcs_at(0), AEP, GP),
    ("fsbase-not-canonical", lambda w: w.poke_tcs(0, ofsbase=NONCANONICAL - BASE), tcs_at(0), AEP, GP),
    ("gsbase-not-canonical", lambda w: w.poke_tcs(0, ogsbase=NONCANONICAL - BASE), tcs_at(0), AEP, GP),
    # 11. The TCS must not be busy.
    ("tcs-active", lambda w: enter(w, tcs=0, lp=1), tcs_at(0), AEP, GP),
    # Orders.
    ("rbx-alignment-before-not-epc", None, UNBACKED + 0x10, AEP, GP),
    ("rbx-not-epc-before-aep", None, UNBACKED, NONCANONICAL, Pf(UNBACKED, PF_TCS)),
    ("aep-before-tcs-epcm", None, DATA, NONCANONICAL, GP),
    ("tcs-epcm-before-tcs-fields", lambda w: (w.poke_tcs(2, ossa=0x10), w.block(tcs_at(2))), tcs_at(2), AEP, Pf(tcs_at(2), PF_TCS)),
    ("tcs-fields-before-ssa", lambda w: (w.poke_tcs(0, flags=4), w.block(S0)), tcs_at(0), AEP, GP),
    ("cssa-before-ssa", lambda w: (w.poke_tcs(0, cssa=2), w.block(S0)), tcs_at(0), AEP, GP),
    ("xsave-page-before-gpr-page", lambda w: (w.block(S1), w.block(S0)), tcs_at(0), AEP, Pf(S0, PF_SSA)),
    ("ssa-before-oentry", lambda w: (w.poke_tcs(0, oentry=NONCANONICAL - BASE), w.block(S0)), tcs_at(0), AEP, Pf(S0, PF_SSA)),
    ("ssa-before-busy", lambda w: (enter(w, tcs=0, lp=1), w.block(S1)), tcs_at(0), AEP, Pf(G0, PF_SSA)),
    ("oentry-before-fsbase", lambda w: w.poke_tcs(0, oentry=NONCANONICAL - BASE, ofsbase=NONCANONICAL - BASE), tcs_at(0), AEP, GP),
]


@pytest.mark.parametrize(("case", "setup", "rbx", "rcx", "expect"), EENTER_ROWS, ids=[r[0] for r in EENTER_ROWS])
def test_eenter(w: World, case: str, setup: Setup, rbx: int, rcx: int, expect: Expect) -> None:
    eenter_row(w, setup, rbx, rcx, expect)


@pytest.mark.parametrize(("case", "setup", "rbx", "rcx", "expect"), EENTER_ROWS, ids=[r[0] for r in EENTER_ROWS])
def test_eenter_after_memoized_entries(
    w: World, case: str, setup: Setup, rbx: int, rcx: int, expect: Expect
) -> None:
    """Each row again after entries through every TCS passed (their checks are memoized):
    the memo must notice whatever the row changes."""
    warm_entries(w)
    eenter_row(w, setup, rbx, rcx, expect)


def warm_entries(w: World) -> None:
    """EENTER and EEXIT through each TCS, and an AEX + ERESUME + EEXIT through TCS 0."""
    for i in range(NTCS):
        leave_to_host(w, enter(w, tcs=i))
    after_aex(w, tcs=0)
    regs = os_regs(0)
    run_enclu(w, regs)
    leave_to_host(w, regs)
    assert {(tcs_at(i), False) for i in range(NTCS)} | {(tcs_at(0), True)} <= set(w.cpu.entry_checks)


def leave_to_host(w: World, regs: Registers, lp: int = 0) -> None:
    regs[Reg.RAX], regs[Reg.RBX] = EncluLeaf.EEXIT, HOST_RIP + 3
    run_enclu(w, regs, lp)


def eenter_row(w: World, setup: Setup, rbx: int, rcx: int, expect: Expect) -> None:
    if setup is not None:
        setup(w)
    regs = host_regs(EncluLeaf.EENTER, rbx, rcx, rflags=HOST_FLAGS | TF)
    lp = w.cpu.lp(0)
    flushes = lp.flushes
    lp.tlb[0x1234] = (-1, 1)  # a stale translation: entry flushes it
    if expect is not None:
        check_fails(w, regs, expect)
        assert lp.tlb == {0x1234: (-1, 1)} and lp.flushes == flushes
        return
    i = (rbx - BASE) // 0x1_0000
    cssa, flags = w.tcs(i, "cssa"), w.tcs(i, "flags")
    before = list(regs.values)
    run_enclu(w, regs)
    # Registers: RAX = CSSA, RCX = the return address, RIP = OENTRY, FS/GS from the TCS; TF is
    # cleared by an opt-out entry; nothing else changes.
    expected = list(before)
    expected[Reg.RAX] = cssa
    expected[Reg.RCX] = HOST_RIP + 3
    expected[Reg.RIP] = BASE + OENTRY
    expected[Reg.FSBASE], expected[Reg.GSBASE] = BASE + OFSBASE, BASE + OGSBASE
    if not flags & 1:
        expected[Reg.RFLAGS] &= ~TF
    assert regs.values == expected
    # The SSA frame CSSA receives URSP/URBP; the TCS is busy and remembers the AEP; CSSA is kept.
    frame = ssa_page(i, cssa)
    assert w.u64(gpr_at(i, cssa) + OFF_URSP) == HOST_RSP
    assert w.u64(gpr_at(i, cssa) + OFF_URBP) == HOST_RBP
    assert (w.tcs(i, "state"), w.tcs(i, "aep"), w.tcs(i, "cssa")) == (1, rcx, cssa)
    # The logical processor is inside, with its entry epoch; its TLB was flushed.
    assert lp.enclave_mode and lp.secs is w.secs
    assert (lp.tcs_index, lp.tcs_lin, lp.aep) == (w.index_of(rbx), rbx, rcx)
    assert (lp.ssa_frame_lin, lp.ssa_xsave_index) == (frame, w.index_of(frame))
    assert (lp.ssa_gpr_index, lp.ssa_gpr_offset) == (w.index_of(gpr_at(i, cssa)), gpr_at(i, cssa) & 0xFFF)
    assert (lp.saved_fsbase, lp.saved_gsbase, lp.saved_tf) == (HOST_FS, HOST_GS, True)
    assert w.secs.inside == {0: w.secs.epoch}
    assert lp.tlb == {} and lp.flushes == flushes + 1


def test_eenter_on_a_busy_tcs_from_a_second_lp_is_gp(w: World) -> None:
    enter(w, tcs=0, lp=0)
    check_fails(w, host_regs(EncluLeaf.EENTER, tcs_at(0)), GP, lp=1)
    assert not w.cpu.lp(1).enclave_mode
    assert w.secs.inside == {0: 0}


def test_eenter_and_eresume_inside_enclave_mode_are_gp(w: World) -> None:
    regs = enter(w)
    for leaf in (EncluLeaf.EENTER, EncluLeaf.ERESUME):
        regs[Reg.RAX], regs[Reg.RBX], regs[Reg.RCX] = leaf, tcs_at(1), AEP
        check_fails(w, regs, GP)


def test_eenter_records_the_entry_epoch(w: World) -> None:
    """Each LP inside is listed with the SECS epoch it entered in (the ETRACK model, spec 6.4)."""
    assert w.kit.etrack(w.encl) == 0
    assert w.kit.etrack(w.encl) == 0
    enter(w, tcs=0, lp=2)
    assert w.secs.inside == {2: 2}
    assert w.kit.etrack(w.encl) == 0  # LP 2 entered in the current epoch: a new cycle may start
    enter(w, tcs=1, lp=1)
    assert w.secs.inside == {2: 2, 1: 3}
    assert w.kit.etrack(w.encl) == SgxError.SGX_PREV_TRK_INCMPL  # LP 2 is from epoch 2


def test_eenter_into_a_32bit_enclave_from_64bit_mode_is_gp() -> None:
    """The current mode (always 64-bit here) must match SECS.ATTRIBUTES.MODE64BIT."""
    kit = LeafKit(epc_size=16 * 4096, cpus=1)
    base = 0x4000_0000
    encl = kit.ecreate(base, 0x8000, attributes=0)
    kit.eadd(encl, base, tcs_image(0x1000, nssa=1, fslimit=0xFFF), secinfo_flags(TCS_T), measure=False)
    kit.eadd(encl, base + 0x1000, b"", secinfo_flags(REG, R | W), measure=False)
    secs = kit.cpu.secs_of(kit.cpu.epc.index(encl.secs_pa))
    assert secs is not None
    einit(kit, encl, secs)
    assert secs.init and not secs.mode64bit
    regs = host_regs(EncluLeaf.EENTER, base)
    saved = list(regs.values)
    with pytest.raises(GeneralProtection):
        kit.cpu.enclu(kit.cpu.lp(0), regs, kit.umem)
    assert regs.values == saved
    assert not kit.cpu.lp(0).enclave_mode and secs.inside == {}
    assert struct.unpack("<Q", kit.cpu.epc.read(kit.cpu.epc.index(encl.pages[base]), 0, 8))[0] == 0


# ================================================================================================
# EEXIT (ENCLU 04h): RBX = target
# ================================================================================================


def test_eexit_returns_to_rbx_with_the_aep_in_rcx(w: World) -> None:
    regs = enter(w, tcs=1, rcx=AEP + 0x80)
    enclave = enclave_state(regs)
    w.kit.enclave_load(DATA, 8)  # a translation in the TLB
    lp = w.cpu.lp(0)
    assert lp.tlb
    flushes = lp.flushes
    regs[Reg.RAX], regs[Reg.RBX] = EncluLeaf.EEXIT, HOST_RIP + 0x100
    run_enclu(w, regs)
    expected = dict(enclave)
    expected[Reg.RAX] = EncluLeaf.EEXIT  # RAX keeps the leaf number
    expected[Reg.RBX] = HOST_RIP + 0x100
    expected[Reg.RIP] = HOST_RIP + 0x100
    expected[Reg.RCX] = AEP + 0x80
    expected[Reg.FSBASE], expected[Reg.GSBASE] = HOST_FS, HOST_GS
    expected[Reg.RFLAGS] = ENCLAVE_FLAGS & ~TF  # the opt-out entry saved TF = 0: EEXIT restores it
    assert {r: regs[r] for r in Reg} == expected
    assert bytes(regs.extended) == bytes((b + 1) & 0xFF for b in ENCLAVE_X87)  # untouched
    assert (w.tcs(1, "state"), w.tcs(1, "cssa")) == (0, 0)
    assert not lp.enclave_mode and lp.secs is None and lp.tcs_index == -1
    assert w.secs.inside == {}
    assert lp.tlb == {} and lp.flushes == flushes + 1


@pytest.mark.parametrize(
    ("case", "tcs_flags", "host_tf", "enclave_tf", "tf_inside", "tf_after"),
    [
        ("opt-out-restores-tf-1", 0, True, False, False, True),
        ("opt-out-restores-tf-0", 0, False, True, False, False),
        ("opt-out-restores-tf-1-over-enclave-tf", 0, True, True, False, True),
        ("opt-in-leaves-tf-alone", 1, True, False, True, False),
        ("opt-in-enclave-tf-stays", 1, False, True, False, True),
    ],
)
def test_eexit_trap_flag(w: World, case: str, tcs_flags: int, host_tf: bool, enclave_tf: bool, tf_inside: bool, tf_after: bool) -> None:
    """An opt-out entry saves and clears TF; EEXIT puts the saved TF back (SDM EENTER/EEXIT)."""
    w.poke_tcs(0, flags=tcs_flags)
    regs = enter(w, rflags=HOST_FLAGS | (TF if host_tf else 0))
    assert bool(regs[Reg.RFLAGS] & TF) == tf_inside
    regs[Reg.RFLAGS] = (regs[Reg.RFLAGS] & ~TF) | (TF if enclave_tf else 0)
    w.kit.eexit(regs)
    assert bool(regs[Reg.RFLAGS] & TF) == tf_after


@pytest.mark.parametrize("target", [NONCANONICAL, 0x8000_0000_0000_0000, 0xFFFF_7FFF_FFFF_F000])
def test_eexit_to_a_non_canonical_target_is_gp(w: World, target: int) -> None:
    regs = enter(w)
    enclave_state(regs)
    regs[Reg.RAX], regs[Reg.RBX] = EncluLeaf.EEXIT, target
    check_fails(w, regs, GP)
    assert w.cpu.lp(0).enclave_mode and w.tcs(0, "state") == 1


def test_eexit_to_an_address_inside_elrange_completes(w: World) -> None:
    regs = enter(w)
    regs[Reg.RAX], regs[Reg.RBX] = EncluLeaf.EEXIT, CODE
    run_enclu(w, regs)
    assert regs[Reg.RIP] == CODE and not w.cpu.lp(0).enclave_mode


def test_eexit_outside_enclave_mode_is_gp(w: World) -> None:
    check_fails(w, host_regs(EncluLeaf.EEXIT, HOST_RIP), GP)


# ================================================================================================
# AEX: exceptions and interrupts in enclave mode, with and without MISCSELECT.EXINFO
# ================================================================================================

EXIT_HW, EXIT_SW, VALID = 3, 6, 1 << 31

# (id, event factory, EXITINFO vector or None (not reported), exit type, reported only with EXINFO)
AEX_EVENTS: list[tuple[str, Callable[[], SgxFault | None], int | None, int, bool]] = [
    ("pf", lambda: PageFault(DATA + 0x123, 0x8007), 14, EXIT_HW, True),
    ("pf-not-present", lambda: PageFault(DYN + 0xFF8, 0x6), 14, EXIT_HW, True),
    ("gp", lambda: GeneralProtection(), 13, EXIT_HW, True),
    ("gp-with-error-code", lambda: GeneralProtection(0x1C), 13, EXIT_HW, True),
    ("ud", lambda: InvalidOpcode(), 6, EXIT_HW, False),
    ("bp", lambda: CpuException(Vector.BP), 3, EXIT_SW, False),
    ("de", lambda: CpuException(Vector.DE), 0, EXIT_HW, False),
    ("db", lambda: CpuException(Vector.DB), 1, EXIT_HW, False),
    ("br", lambda: CpuException(Vector.BR), 5, EXIT_HW, False),
    ("mf", lambda: CpuException(Vector.MF), 16, EXIT_HW, False),
    ("ac", lambda: CpuException(Vector.AC), 17, EXIT_HW, False),
    ("xm", lambda: CpuException(Vector.XM), 19, EXIT_HW, False),
    ("nm-not-reported", lambda: CpuException(Vector.NM), None, 0, False),
    ("interrupt", lambda: None, None, 0, False),
]


@pytest.mark.parametrize("exinfo", [False, True], ids=["no-exinfo", "exinfo"])
@pytest.mark.parametrize(("case", "event", "vector", "exit_type", "exinfo_only"), AEX_EVENTS, ids=[e[0] for e in AEX_EVENTS])
def test_aex(case: str, event: Callable[[], SgxFault | None], vector: int | None, exit_type: int, exinfo_only: bool, exinfo: bool) -> None:
    w = World(miscselect=1 if exinfo else 0)
    regs = enter(w, tcs=1, rflags=HOST_FLAGS | TF)
    enclave = enclave_state(regs)
    x87 = bytes(regs.extended)
    gpr = gpr_at(1, 0)
    # Poison what AEX must not write: the MISC area below GPRSGX, the reserved bytes after
    # EXITINFO (167 is AEXNOTIFY) and the XSAVE header past XSTATE_BV.
    w.poke(gpr - 16, b"\xaa" * 16)
    w.poke(gpr + 164, b"\xab\xac\xad\xae")
    w.poke(ssa_page(1, 0) + 512, b"\xbb" * 64)
    fault = event()
    lp = w.cpu.lp(0)
    flushes = lp.flushes
    aex(w.cpu, lp, regs, fault)
    # -- the SSA frame (frame 0 of TCS 1) --------------------------------------------------------
    for r, off in GPR_OFF.items():
        want = enclave[r] & ~TF if r is Reg.RFLAGS else enclave[r]
        assert w.u64(gpr + off) == want, r.name
    assert (w.u64(gpr + OFF_URSP), w.u64(gpr + OFF_URBP)) == (HOST_RSP, HOST_RBP)
    reported = vector is not None and (not exinfo_only or exinfo)
    info = VALID | exit_type << 8 | vector if reported and vector is not None else 0
    assert struct.unpack("<I", w.read(gpr + OFF_EXITINFO, 4))[0] == info
    assert w.read(gpr + 164, 4) == b"\xab\xac\xad\xae"
    if exinfo_only and exinfo:
        assert fault is not None
        maddr = fault.addr if vector == 14 else 0
        assert w.read(gpr - 16, 16) == struct.pack("<QII", maddr, fault.error_code, 0)
    else:
        assert w.read(gpr - 16, 16) == b"\xaa" * 16
    frame = ssa_page(1, 0)
    assert w.read(frame, 512) == x87  # the XSAVE legacy area
    assert w.read(frame + 512, 64) == struct.pack("<Q", 3) + bytes(56)  # XSTATE_BV = XFRM, header 0
    # -- the synthetic register state (SDM Table 40-1) --------------------------------------------
    assert regs[Reg.RAX] == EncluLeaf.ERESUME
    assert (regs[Reg.RBX], regs[Reg.RCX], regs[Reg.RIP]) == (tcs_at(1), AEP, AEP)
    zeroed = (Reg.RDX, Reg.RSI, Reg.RDI, Reg.R8, Reg.R9, Reg.R10, Reg.R11, Reg.R12, Reg.R13, Reg.R14, Reg.R15)
    assert [regs[r] for r in zeroed] == [0] * len(zeroed)
    assert (regs[Reg.RSP], regs[Reg.RBP]) == (HOST_RSP, HOST_RBP)
    # Arithmetic flags and RF cleared; TF back to the host's (an opt-out entry saved it).
    assert regs[Reg.RFLAGS] == (ENCLAVE_FLAGS & ~(CF | PF | AF | ZF | SF | OF | RF)) | TF
    assert (regs[Reg.FSBASE], regs[Reg.GSBASE]) == (HOST_FS, HOST_GS)
    fcw, fsw, mxcsr = 0x037F, 0, 0x1F80
    if vector == 16:
        fcw, fsw = 0x037E, 0x8081
    elif vector == 19:
        mxcsr = 0x1F01
    legacy = bytes(regs.extended)
    assert struct.unpack_from("<HH", legacy, 0) == (fcw, fsw)
    assert struct.unpack_from("<I", legacy, 24)[0] == mxcsr
    assert legacy[32:416] == bytes(384)  # ST0-7 and XMM0-15 at their initial value
    # -- the thread is out: CSSA advanced, TCS free, TLB flushed ---------------------------------
    assert (w.tcs(1, "cssa"), w.tcs(1, "state")) == (1, 0)
    assert not lp.enclave_mode and lp.secs is None and w.secs.inside == {}
    assert lp.flushes == flushes + 1


def test_aex_keeps_the_aexnotify_byte_and_leaves_other_frames_alone(w: World) -> None:
    regs = enter(w, tcs=0)
    w.poke(gpr_at(0, 0) + OFF_AEXNOTIFY, b"\x01")
    frame1 = w.read(S2, 4096), w.read(ssa_page(0, 1, 1), 4096)
    enclave_state(regs)
    aex(w.cpu, w.cpu.lp(0), regs, None)
    assert w.read(gpr_at(0, 0) + OFF_AEXNOTIFY, 1) == b"\x01"
    assert (w.read(S2, 4096), w.read(ssa_page(0, 1, 1), 4096)) == frame1


# ================================================================================================
# ERESUME (ENCLU 03h): RBX = TCS, RCX = AEP
# ================================================================================================

OS_FLAGS = 0x2 | IF | VM | TF  # what RFLAGS holds when the host executes ERESUME


def os_regs(tcs: int = 0, **kw: int) -> Registers:
    """The host after the AEX has been handled: garbage everywhere, RIP at the AEP."""
    regs = host_regs(EncluLeaf.ERESUME, tcs_at(tcs), **kw)
    regs[Reg.RIP] = AEP
    return regs


def after_aex(w: World, tcs: int = 0, lp: int = 0, seed: int = 1) -> dict[Reg, int]:
    """EENTER through TCS `tcs`, run to ENCLAVE_RIP with state `seed`, take an interrupt."""
    regs = enter(w, tcs=tcs, lp=lp)
    state = enclave_state(regs, seed)
    aex(w.cpu, w.cpu.lp(lp), regs, None)
    return state


def restored_flags(saved: int, outside: int) -> int:
    mask = CF | PF | AF | ZF | SF | DF | OF | NT | AC | ID | RF
    if (outside >> 12) & 3 == 3:
        mask |= IF
    return (outside & ~mask & ~VM & ~TF) | (saved & ~TF & mask)


@pytest.mark.parametrize("outside", [OS_FLAGS, 0x2 | VM, 0x2 | IF | IOPL3, 0x2 | IOPL3 | TF], ids=["if", "no-if", "iopl3-if", "iopl3-no-if"])
def test_eresume_restores_the_frame(w: World, outside: int) -> None:
    state = after_aex(w, tcs=0)
    regs = os_regs(0, rflags=outside)
    lp = w.cpu.lp(0)
    run_enclu(w, regs)
    for r in Reg:
        if r is not Reg.RFLAGS:
            assert regs[r] == state[r], r.name
    assert regs[Reg.RFLAGS] == restored_flags(ENCLAVE_FLAGS, outside)
    assert bytes(regs.extended) == bytes((b + 1) & 0xFF for b in ENCLAVE_X87)
    assert (w.tcs(0, "cssa"), w.tcs(0, "state"), w.tcs(0, "aep")) == (0, 1, AEP)
    assert lp.enclave_mode and lp.ssa_frame_lin == S0 and lp.ssa_gpr_offset == G0 & 0xFFF
    assert (lp.saved_fsbase, lp.saved_gsbase) == (HOST_FS, HOST_GS)
    assert w.secs.inside == {0: w.secs.epoch}


def test_eresume_loads_what_the_frame_holds(w: World) -> None:
    """The handler may edit the frame: ERESUME restores the frame, not some copy of it."""
    after_aex(w, tcs=0)
    w.poke(G0 + GPR_OFF[Reg.RAX], struct.pack("<Q", 0xFEED))
    w.poke(G0 + GPR_OFF[Reg.RIP], struct.pack("<Q", CODE + 0x800))
    w.poke(G0 + GPR_OFF[Reg.FSBASE], struct.pack("<Q", BASE + 0x1234_0000 & ~0xFFF))
    w.poke(S0 + 160, b"\x77" * 16)  # XMM0
    regs = os_regs(0)
    run_enclu(w, regs)
    assert (regs[Reg.RAX], regs[Reg.RIP], regs[Reg.FSBASE]) == (0xFEED, CODE + 0x800, BASE + 0x1234_0000 & ~0xFFF)
    assert regs.extended[160:176] == b"\x77" * 16


ERESUME_ROWS: list[tuple[str, Setup, int, int, Expect]] = [
    ("ok", None, 0, AEP, OK),
    ("ok-oentry-not-used", lambda w: w.poke_tcs(0, oentry=NONCANONICAL - BASE), 0, AEP, OK),
    ("ok-tcs-fsbase-not-used", lambda w: w.poke_tcs(0, ofsbase=NONCANONICAL - BASE), 0, AEP, OK),
    ("ok-unused-frame-blocked", lambda w: w.block(S2), 0, AEP, OK),
    ("cssa-zero", None, 1, AEP, GP),
    ("aep-not-canonical", None, 0, NONCANONICAL, GP),
    ("tcs-blocked", lambda w: w.block(tcs_at(0)), 0, AEP, Pf(tcs_at(0), PF_TCS)),
    ("flags-reserved", lambda w: w.poke_tcs(0, flags=8), 0, AEP, GP),
    ("frame-xsave-page-blocked", lambda w: w.block(S0), 0, AEP, Pf(S0, PF_SSA)),
    ("frame-gpr-page-blocked", lambda w: w.block(S1), 0, AEP, Pf(G0, PF_SSA)),
    ("frame-gpr-page-not-writable", lambda w: w.map_raw(S1, w.encl.pages[S1], write=False), 0, AEP, Pf(G0, 0x7)),
    ("saved-rip-not-canonical", lambda w: w.poke(G0 + 136, struct.pack("<Q", NONCANONICAL)), 0, AEP, GP),
    ("saved-fsbase-not-canonical", lambda w: w.poke(G0 + 168, struct.pack("<Q", NONCANONICAL)), 0, AEP, GP),
    ("saved-gsbase-not-canonical", lambda w: w.poke(G0 + 176, struct.pack("<Q", 0x8000_0000_0000_0000)), 0, AEP, GP),
    ("tcs-active", lambda w: run_enclu(w, os_regs(0), lp=1), 0, AEP, GP),
    ("cssa-zero-before-frame-checks", lambda w: w.block(ssa_page(1, 0)), 1, AEP, GP),
    ("frame-before-saved-rip", lambda w: (w.poke(G0 + 136, struct.pack("<Q", NONCANONICAL)), w.block(S0)), 0, AEP, Pf(S0, PF_SSA)),
]


@pytest.mark.parametrize(("case", "setup", "tcs", "rcx", "expect"), ERESUME_ROWS, ids=[r[0] for r in ERESUME_ROWS])
def test_eresume(w: World, case: str, setup: Setup, tcs: int, rcx: int, expect: Expect) -> None:
    eresume_row(w, setup, tcs, rcx, expect)


@pytest.mark.parametrize(("case", "setup", "tcs", "rcx", "expect"), ERESUME_ROWS, ids=[r[0] for r in ERESUME_ROWS])
def test_eresume_after_memoized_entries(
    w: World, case: str, setup: Setup, tcs: int, rcx: int, expect: Expect
) -> None:
    warm_entries(w)
    eresume_row(w, setup, tcs, rcx, expect)


def eresume_row(w: World, setup: Setup, tcs: int, rcx: int, expect: Expect) -> None:
    state = after_aex(w, tcs=0)
    if setup is not None:
        setup(w)
    regs = os_regs(tcs)
    regs[Reg.RCX] = rcx
    if expect is not None:
        check_fails(w, regs, expect)
        return
    run_enclu(w, regs)
    assert regs[Reg.RIP] == state[Reg.RIP] and w.tcs(0, "cssa") == 0


def test_eresume_outside_an_aex_is_gp_and_then_eenter_works(w: World) -> None:
    check_fails(w, os_regs(2), GP)
    enter(w, tcs=2)


# ================================================================================================
# Nested frames (NSSA = 2) and AEX-Notify
# ================================================================================================


def test_nested_frames(w: World) -> None:
    """EENTER, AEX, EENTER into frame 1 (the handler), AEX, ERESUME, EEXIT, ERESUME."""
    outer = after_aex(w, tcs=0, seed=1)
    assert w.tcs(0, "cssa") == 1
    regs = enter(w, tcs=0)
    assert regs[Reg.RAX] == 1  # the handler learns CSSA
    assert w.u64(gpr_at(0, 1) + OFF_URSP) == HOST_RSP
    inner = enclave_state(regs, seed=2)
    aex(w.cpu, w.cpu.lp(0), regs, CpuException(Vector.BP))
    assert w.tcs(0, "cssa") == 2
    assert w.u64(gpr_at(0, 1) + GPR_OFF[Reg.RIP]) == inner[Reg.RIP]
    assert w.u64(gpr_at(0, 0) + GPR_OFF[Reg.RIP]) == outer[Reg.RIP]
    check_fails(w, host_regs(EncluLeaf.EENTER, tcs_at(0)), GP)  # CSSA = NSSA: no frame left
    regs = os_regs(0)
    run_enclu(w, regs)  # back into the handler: frame 1
    assert {r: regs[r] for r in Reg if r is not Reg.RFLAGS} == {r: inner[r] for r in Reg if r is not Reg.RFLAGS}
    assert w.tcs(0, "cssa") == 1 and w.cpu.lp(0).ssa_frame_lin == S2
    regs[Reg.RAX], regs[Reg.RBX] = EncluLeaf.EEXIT, HOST_RIP + 3
    run_enclu(w, regs)  # the handler returns to the host
    assert w.tcs(0, "cssa") == 1
    regs = os_regs(0)
    run_enclu(w, regs)  # and the host resumes the interrupted code: frame 0
    assert {r: regs[r] for r in Reg if r is not Reg.RFLAGS} == {r: outer[r] for r in Reg if r is not Reg.RFLAGS}
    assert w.tcs(0, "cssa") == 0 and w.cpu.lp(0).ssa_frame_lin == S0


@pytest.fixture
def wn() -> World:
    """An enclave with ATTRIBUTES.AEXNOTIFY whose TCSs set FLAGS.AEXNOTIFY."""
    return World(aexnotify=True, tcs_flags=2)


def test_aexnotify_eresume_enters_the_next_frame(wn: World) -> None:
    w = wn
    regs = enter(w, tcs=0)
    w.poke(G0 + OFF_AEXNOTIFY, b"\x01")  # the enclave opts in on its current frame
    enclave_state(regs)
    aex(w.cpu, w.cpu.lp(0), regs, CpuException(Vector.UD))
    regs = os_regs(0)
    before = list(regs.values)
    run_enclu(w, regs)
    # EENTER semantics into frame CSSA = 1: no restore, RAX = CSSA, RCX = return address.
    expected = list(before)
    expected[Reg.RAX] = 1
    expected[Reg.RCX] = AEP + 3
    expected[Reg.RIP] = BASE + OENTRY
    expected[Reg.FSBASE], expected[Reg.GSBASE] = BASE + OFSBASE, BASE + OGSBASE
    expected[Reg.RFLAGS] &= ~TF
    assert regs.values == expected
    assert (w.tcs(0, "cssa"), w.tcs(0, "state")) == (1, 1)
    assert w.u64(gpr_at(0, 1) + OFF_URSP) == HOST_RSP
    assert w.cpu.lp(0).ssa_frame_lin == S2
    # The handler can still be interrupted and resumed normally (frame 1 has no opt-in).
    inner = enclave_state(regs, seed=3)
    aex(w.cpu, w.cpu.lp(0), regs, None)
    regs = os_regs(0)
    run_enclu(w, regs)
    assert regs[Reg.RIP] == inner[Reg.RIP] and w.tcs(0, "cssa") == 1


def test_aexnotify_without_the_opt_in_byte_resumes_normally(wn: World) -> None:
    state = after_aex(wn, tcs=0)
    regs = os_regs(0)
    run_enclu(wn, regs)
    assert regs[Reg.RIP] == state[Reg.RIP] and wn.tcs(0, "cssa") == 0


def test_aexnotify_byte_ignored_without_the_tcs_flag(wn: World) -> None:
    """DBGOPTIN=1 lets a TCS without FLAGS.AEXNOTIFY enter an AEXNOTIFY enclave."""
    w = wn
    w.poke_tcs(0, flags=1)
    regs = enter(w, tcs=0)
    w.poke(G0 + OFF_AEXNOTIFY, b"\x01")
    state = enclave_state(regs)
    aex(w.cpu, w.cpu.lp(0), regs, None)
    regs = os_regs(0)
    run_enclu(w, regs)
    assert regs[Reg.RIP] == state[Reg.RIP] and w.tcs(0, "cssa") == 0


def test_aexnotify_needs_a_free_frame(wn: World) -> None:
    """ERESUME's notify path enters frame CSSA, which must exist: CSSA = NSSA gives #GP."""
    w = wn
    after_aex(w, tcs=0)
    regs = enter(w, tcs=0)
    w.poke(gpr_at(0, 1) + OFF_AEXNOTIFY, b"\x01")
    enclave_state(regs, 2)
    aex(w.cpu, w.cpu.lp(0), regs, None)
    assert w.tcs(0, "cssa") == 2
    check_fails(w, os_regs(0), GP)


def test_aexnotify_checks_the_next_frames_pages(wn: World) -> None:
    w = wn
    regs = enter(w, tcs=0)
    w.poke(G0 + OFF_AEXNOTIFY, b"\x01")
    aex(w.cpu, w.cpu.lp(0), regs, None)
    w.block(ssa_page(0, 1, 1))
    check_fails(w, os_regs(0), Pf(gpr_at(0, 1), PF_SSA))


# -- the memoized entry checks (enclave_mode.check_entry) ---------------------------------------------


def test_a_repeated_entry_uses_the_memo(w: World, monkeypatch: pytest.MonkeyPatch) -> None:
    from sgxemu.hw import enclave_mode

    warm_entries(w)
    full: list[bool] = []
    check = enclave_mode._check_entry
    monkeypatch.setattr(
        enclave_mode, "_check_entry", lambda *a: (full.append(a[3]), check(*a))[1]
    )
    regs = enter(w, tcs=0)
    enclave_state(regs)
    aex(w.cpu, w.cpu.lp(0), regs, None)
    run_enclu(w, os_regs(0))
    assert full == []


def test_an_unchanged_memoized_entry_reads_no_pte(w: World) -> None:
    """While the change logs of the EPCM and the page table name none of the memo's pages
    since it last held, the memo reads no PTE (their A bits are set already); after a change
    to one of them it reads them again."""
    warm_entries(w)
    leave_to_host(w, enter(w, tcs=1))  # (the first entry wrote TCS.AEP: the memo is renewed)
    code = w.cpu.epcm[w.index_of(CODE)]
    ssa = w.cpu.epcm[w.index_of(ssa_page(1, 0, 0))]
    walked: list[int] = []
    translate = w.umem.translate
    w.umem.translate = lambda lin: (walked.append(lin), translate(lin))[1]  # type: ignore[method-assign]
    try:
        leave_to_host(w, enter(w, tcs=1))
        assert walked == []
        code.perms = R | X  # another page's entry changed: nothing the memo names
        w.umem.set_pte(DATA, None)  # and another page's PTE
        leave_to_host(w, enter(w, tcs=1))
        assert walked == []
        ssa.perms = R | W  # the same value, but a change of an SSA page's entry
        leave_to_host(w, enter(w, tcs=1))
        assert walked[0] == tcs_at(1) and ssa_page(1, 0, 0) in walked
        walked.clear()
        leave_to_host(w, enter(w, tcs=1))  # (stamped again by the last entry)
        assert walked == []
        w.umem.set_pte(tcs_at(1), w.umem.translate(tcs_at(1)))  # the same PTE, set again
        walked.clear()
        leave_to_host(w, enter(w, tcs=1))
        assert walked and walked[0] == tcs_at(1)
    finally:
        del w.umem.translate


def _epcm_copy(w: World, lin: int, **fields: Any) -> None:
    """Replace the EPCM entry of `lin` by a new object, with `fields` changed."""
    from sgxemu.hw.epcm import EpcmEntry

    index = w.index_of(lin)
    old = w.cpu.epcm[index]
    new = EpcmEntry(old.pt, old.secs, old.linaddr, old.perms)
    new.state, new.epoch = old.state, old.epoch
    for name, value in fields.items():
        setattr(new, name, value)
    w.cpu.epcm[index] = new


MEMO_ROWS: list[tuple[str, Callable[[World], Any], Expect]] = [
    # What no EENTER row changes: direct EPCM writes, replaced entries, the SECS fields.
    ("tcs-entry-same-fields", lambda w: _epcm_copy(w, tcs_at(0)), OK),
    ("tcs-entry-replaced-as-reg", lambda w: _epcm_copy(w, tcs_at(0), pt=REG), Pf(tcs_at(0), PF_TCS)),
    ("tcs-linaddr", lambda w: setattr(w.cpu.epcm[w.index_of(tcs_at(0))], "linaddr", tcs_at(1)), Pf(tcs_at(0), PF_TCS)),
    ("tcs-state", lambda w: setattr(w.cpu.epcm[w.index_of(tcs_at(0))], "state", 1), Pf(tcs_at(0), PF_TCS)),
    ("tcs-secs", lambda w: setattr(w.cpu.epcm[w.index_of(tcs_at(0))], "secs", w.secs_of(w.other)), GP),
    ("tcs-pte-other-tcs", lambda w: w.map_raw(tcs_at(0), w.encl.pages[tcs_at(1)]), Pf(tcs_at(0), PF_TCS)),
    ("tcs-aep-bytes", lambda w: w.poke_tcs(0, aep=0x1234), OK),
    ("ssa-entry-same-fields", lambda w: _epcm_copy(w, S0), OK),
    ("ssa-entry-replaced-read-only", lambda w: _epcm_copy(w, S0, perms=R), Pf(S0, PF_SSA)),
    ("ssa-perms", lambda w: setattr(w.cpu.epcm[w.index_of(S0)], "perms", R), Pf(S0, PF_SSA)),
    ("ssa-linaddr", lambda w: setattr(w.cpu.epcm[w.index_of(S0)], "linaddr", S1), Pf(S0, PF_SSA)),
    ("ssa-pt", lambda w: setattr(w.cpu.epcm[w.index_of(S0)], "pt", TRIM), Pf(S0, PF_SSA)),
    ("ssa-secs", lambda w: setattr(w.cpu.epcm[w.index_of(S0)], "secs", w.secs_of(w.other)), Pf(S0, PF_SSA)),
    ("gpr-perms", lambda w: setattr(w.cpu.epcm[w.index_of(S1)], "perms", R), Pf(G0, PF_SSA)),
    ("gpr-entry-replaced", lambda w: _epcm_copy(w, S1, perms=R | X), Pf(G0, PF_SSA)),
    ("gpr-pte", lambda w: w.map_raw(S1, w.encl.pages[S0]), Pf(G0, PF_SSA)),
    ("secs-not-mode64", lambda w: setattr(w.secs, "attributes", w.secs.attributes & ~M64), GP),
    ("secs-aexnotify", lambda w: setattr(w.secs, "attributes", w.secs.attributes | AEXNOTIFY), GP),
]


@contextlib.contextmanager
def epcm_restored(w: World) -> Iterator[None]:
    """Undo direct EPCM and SECS edits afterwards (the invariant checker runs after each test)."""
    cpu = w.cpu
    saved = {i: (e, e.pt, e.secs, e.linaddr, e.perms, e.state) for i, e in cpu.epcm.items()}
    attributes = w.secs.attributes
    yield
    lp = cpu.lp(0)
    if lp.enclave_mode:
        aex(cpu, lp, host_regs(0, 0), None)
    for i, (e, *fields) in saved.items():
        e.pt, e.secs, e.linaddr, e.perms, e.state = fields
        cpu.epcm[i] = e
    w.secs.attributes = attributes


@pytest.mark.parametrize(("case", "change", "expect"), MEMO_ROWS, ids=[r[0] for r in MEMO_ROWS])
def test_memoized_entry_check_sees_each_input(
    w: World, case: str, change: Callable[[World], Any], expect: Expect
) -> None:
    warm_entries(w)
    with epcm_restored(w):
        eenter_row(w, change, tcs_at(0), AEP, expect)


@pytest.mark.parametrize(("case", "change", "expect"), MEMO_ROWS, ids=[r[0] for r in MEMO_ROWS])
def test_memoized_resume_check_sees_each_input(
    w: World, case: str, change: Callable[[World], Any], expect: Expect
) -> None:
    warm_entries(w)
    with epcm_restored(w):
        eresume_row(w, change, 0, AEP, expect)


def test_memoized_entry_sees_a_new_ssa_frame_size(w: World) -> None:
    """SSAFRAMESIZE moves GPRSGX: one page per frame puts it on the XSAVE page."""
    warm_entries(w)
    w.secs.ssaframesize = 1
    enter(w, tcs=0)
    lp = w.cpu.lp(0)
    assert (lp.ssa_frame_lin, lp.ssa_gpr_index) == (S0, w.index_of(S0))
    assert lp.ssa_gpr_offset == 0x1000 - 184


def test_memoized_entry_sees_a_new_base(w: World) -> None:
    warm_entries(w)
    w.secs.baseaddr += 0x1000  # (test set-up only: ECREATE fixes it) every address moves
    regs = enter(w, tcs=0)
    assert (w.cpu.lp(0).ssa_frame_lin, regs[Reg.RIP]) == (S1, BASE + 0x1000 + OENTRY)
    leave_to_host(w, regs)
    w.secs.baseaddr -= 0x1000


def test_memoized_resume_reads_the_saved_state_again(w: World) -> None:
    warm_entries(w)
    after_aex(w, tcs=0, seed=2)
    w.poke(G0 + GPR_OFF[Reg.RIP], struct.pack("<Q", CODE + 0x900))
    regs = os_regs(0)
    run_enclu(w, regs)
    assert regs[Reg.RIP] == CODE + 0x900 and regs[Reg.RAX] == enclave_state(Registers(), 2)[Reg.RAX]


def test_aexnotify_resume_is_not_memoized() -> None:
    wn = World(aexnotify=True, tcs_flags=2)
    after_aex(wn, tcs=0)
    run_enclu(wn, os_regs(0))
    assert (tcs_at(0), True) not in wn.cpu.entry_checks
