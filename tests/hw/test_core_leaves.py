"""The SGX1 building leaves one by one: ECREATE, EADD, EEXTEND, EREMOVE and EPA.

Spec 3.1, 3.2, 3.3, 3.5 and 3.10. Each leaf has its success path (the exact EPCM entry, the hidden
SECS state and the page contents afterwards) and one table row per check the spec lists, in the
spec's order, with the exact fault (class, address, error code). Every failing row also checks
that the machine is unchanged: EPCM entries, hidden SECS state (measurement included), the
contents of every valid EPC page and the EID counter. "Order" rows break two checks at once: the
earlier one must win.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from sgxemu.arch.constants import (
    Attribute,
    EnclsLeaf,
    EncluLeaf,
    PageType,
    SgxError,
    secinfo_flags,
)
from sgxemu.hw.epcm import TRACKED
from sgxemu.hw.faults import GeneralProtection, PageFault
from sgxemu.hw.measurement import eadd_block, ecreate_block, eextend_block
from sgxemu.hw.memory import PTE_ADDR_MASK
from sgxemu.hw.regs import AF, CF, OF, PF, SF, ZF, Reg, Registers
from sgxemu.hw.secs import SecsState
from sgxemu.leafkit import Enclave, LeafKit
from sgxemu.sign import mrsigner_of_key
from testkeys import key_a, plain_sigstruct

R, W, X = 1, 2, 4
PENDING, MODIFIED, PR = 0x08, 0x10, 0x20
SECS_T, TCS_T, REG, VA_T, TRIM = (
    PageType.PT_SECS,
    PageType.PT_TCS,
    PageType.PT_REG,
    PageType.PT_VA,
    PageType.PT_TRIM,
)
M64 = int(Attribute.MODE64BIT)

# #PF error codes of ENCLS operands (kernel accesses): P=1 W=2 SGX=0x8000.
PF_W = 0x8003  # an EPC page the leaf writes (the target page), not in EPC or in the wrong state
PF_R = 0x8001  # an EPC page the leaf reads (SECS of EADD, EEXTEND operands)
NP_R = 0x0  # an ordinary not-present fault on a read operand
NP_W = 0x2  # an ordinary not-present fault on a written operand

# Kernel scratch (non-EPC, identity-mapped by the kit's kernel FlatMemory).
PAGEINFO_AT = 0x10_0000
SECINFO_AT = 0x10_0040
SRC_AT = 0x10_1000
UNMAPPED = 0x20_0000  # its kernel PTE is cleared by every World
NONEPC = 0x30_0000

# A: 64-bit, uninitialized, target of EADD/EEXTEND. B: initialized. C: 32-bit, uninitialized.
A_BASE, A_SIZE = 0x1000_0000, 0x1_0000
A_TCS, A_SSA, A_DATA, A_FREE = A_BASE, A_BASE + 0x1000, A_BASE + 0x2000, A_BASE + 0x4000
B_BASE, B_SIZE = 0x2000_0000, 0x1_0000
B_TCS, B_SSA, B_DATA, B_SECINFO, B_DYN = (
    B_BASE,
    B_BASE + 0x1000,
    B_BASE + 0x2000,
    B_BASE + 0x3000,
    B_BASE + 0x4000,
)
C_BASE, C_SIZE = 0x5000_0000, 0x4000
NEW_BASE, NEW_SIZE = 0x4000_0000, 0x4000  # where successful ECREATE rows put their enclave


def tcs_image(ossa: int, *, oentry: int = 0x2000, **fields: int) -> bytes:
    """A TCS page: STATE, FLAGS, OSSA, CSSA, NSSA, OENTRY, AEP, OFSBASE, OGSBASE, FS/GSLIMIT."""
    v = {"state": 0, "flags": 0, "cssa": 0, "nssa": 1, "aep": 0, "fslimit": 0xFFF, "gslimit": 0xFFF}
    v.update(fields)
    head = struct.pack(
        "<QQQIIQQQQII", v["state"], v["flags"], ossa, v["cssa"], v["nssa"], oentry, v["aep"],
        0, 0, v["fslimit"], v["gslimit"],
    )  # fmt: skip
    return head.ljust(4096, b"\0")


def secinfo_bytes(flags: int) -> bytes:
    return struct.pack("<Q", flags) + bytes(56)


def patch(data: bytes, offset: int, new: bytes) -> bytes:
    return data[:offset] + new + data[offset + len(new) :]


def secs_src(
    *,
    size: int = NEW_SIZE,
    base: int = NEW_BASE,
    ssaframesize: int = 1,
    miscselect: int = 0,
    attributes: int = M64,
    xfrm: int = 3,
    **at: bytes,
) -> bytes:
    """An ECREATE source page; `at` patches raw bytes (`o<offset>=b"..."`)."""
    page = bytearray(4096)
    struct.pack_into("<QQII", page, 0, size, base, ssaframesize, miscselect)
    struct.pack_into("<QQ", page, 48, attributes, xfrm)
    out = bytes(page)
    for name, data in at.items():
        out = patch(out, int(name[1:]), data)
    return out


class World:
    """Three enclaves (A uninitialized, B initialized, C 32-bit), a VA page and a freed page."""

    def __init__(self, *, cpus: int = 2) -> None:
        self.kit = kit = LeafKit(epc_size=128 * 4096, cpus=cpus)
        self.cpu = kit.cpu
        self.kmem = kit.kmem
        self.a = a = kit.ecreate(A_BASE, A_SIZE)
        kit.eadd(a, A_TCS, tcs_image(0x1000), secinfo_flags(TCS_T), measure=False)
        kit.eadd(a, A_SSA, b"", secinfo_flags(REG, R | W), measure=False)
        kit.eadd(a, A_DATA, bytes(range(256)) * 16, secinfo_flags(REG, R | W), measure=False)
        # A page with contents, freed again: free EPC that held data (stale until scrubbed).
        stale = kit.eadd(a, A_BASE + 0x3000, b"\xa5" * 4096, secinfo_flags(REG, R | W), measure=False)
        assert kit.eremove(a, A_BASE + 0x3000) == 0
        self.free = stale
        self.b = b = kit.ecreate(B_BASE, B_SIZE)
        kit.eadd(b, B_TCS, tcs_image(0x1000), secinfo_flags(TCS_T), measure=False)
        kit.eadd(b, B_SSA, b"", secinfo_flags(REG, R | W), measure=False)
        kit.eadd(b, B_DATA, b"bdata" * 800, secinfo_flags(REG, R | W), measure=False)
        kit.eadd(b, B_SECINFO, b"", secinfo_flags(REG, R | W), measure=False)
        secs_b = self.secs(b)
        assert secs_b.measurement is not None
        kit.set_lepubkeyhash(mrsigner_of_key(key_a()))
        assert kit.einit(b, plain_sigstruct(secs_b.measurement.final())) == 0
        self.c = kit.ecreate(C_BASE, C_SIZE, attributes=0)
        self.va = kit.epa()
        self.kmem.set_pte(UNMAPPED, 0)

    # -- plumbing ---------------------------------------------------------------------------------
    def secs(self, encl: Enclave) -> SecsState:
        s = self.cpu.secs_of(self.cpu.epc.index(encl.secs_pa))
        assert s is not None
        return s

    def index(self, pa: int) -> int:
        return self.cpu.epc.index(pa & PTE_ADDR_MASK)

    def pageinfo(self, linaddr: int, srcpge: int, secinfo: int, secs: int) -> None:
        self.kmem.write(PAGEINFO_AT, struct.pack("<4Q", linaddr, srcpge, secinfo, secs))

    def snapshot(self) -> tuple[Any, ...]:
        cpu = self.cpu
        epcm = {
            i: (e.pt, e.perms, e.state, e.linaddr, e.epoch, None if e.secs is None else e.secs.index)
            for i, e in cpu.epcm.items()
        }
        secs = {s.index: secs_state(s) for s in cpu.enclaves()}
        pages = {i: cpu.epc.read(i, 0, 4096) for i in cpu.epcm}
        lps = [(lp.enclave_mode, lp.tcs_index) for lp in cpu.lps]
        return epcm, secs, pages, cpu.next_eid, lps

    # -- enclave B threads --------------------------------------------------------------------------
    def enter_b(self, lp: int = 1) -> Registers:
        return self.kit.eenter(B_TCS, lp=lp)

    def trim_b_data(self, *, accept: bool) -> World:
        """EMODT B's data page to TRIM; with `accept`, a thread of B accepts it and stays inside."""
        assert self.kit.emodt(self.b, B_DATA, TRIM) == 0
        assert self.kit.etrack(self.b) == 0
        if accept:
            regs = self.enter_b(1)
            self.cpu.epc.write(
                self.index(self.b.pages[B_SECINFO]), 0, secinfo_bytes(secinfo_flags(TRIM, 0, MODIFIED))
            )
            assert self.kit.enclu(regs, EncluLeaf.EACCEPT, B_SECINFO, B_DATA, lp=1) == 0
        return self


def secs_state(s: SecsState) -> tuple[Any, ...]:
    """Every hidden field of an SECS, the running measurement included."""
    m = s.measurement
    return (
        s.eid, s.baseaddr, s.size, s.ssaframesize, s.miscselect, s.attributes, s.xfrm,
        s.config_id, s.configsvn, s.isvprodid, s.isvsvn, s.isvextprodid, s.isvfamilyid,
        s.mrenclave, s.mrsigner, s.padding, None if m is None else (m.final(), m.update_counter),
        s.chldcnt, dict(s.inside), s.epoch,
    )  # fmt: skip


@pytest.fixture
def w() -> World:
    return World()


# -- expectations ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Gp:
    pass


@dataclass(frozen=True)
class Pf:
    addr: str | int  # an operand name ("rbx", "rcx", "srcpge", "secinfo", "secs") or an address
    code: int


@dataclass(frozen=True)
class Rax:
    code: int


OK = Rax(0)
GP = Gp()
Expect = Gp | Pf | Rax
Value = int | Callable[[World], int]
Fields = dict[str, Any]


def value(w: World, v: Value) -> int:
    return v(w) if callable(v) else v


def run_checked(w: World, expect: Expect, ops: dict[str, int], fn: Callable[[], int]) -> None:
    """Run a leaf; assert its outcome; on any failure, assert the machine is unchanged."""
    before = w.snapshot()
    if isinstance(expect, Rax):
        assert fn() == expect.code
        if expect.code:
            assert w.snapshot() == before
        return
    if isinstance(expect, Gp):
        with pytest.raises(GeneralProtection) as gp:
            fn()
        assert gp.value.error_code == 0
    else:
        with pytest.raises(PageFault) as pf:
            fn()
        addr = ops[expect.addr] if isinstance(expect.addr, str) else expect.addr
        assert (hex(pf.value.addr), hex(pf.value.error_code)) == (hex(addr), hex(expect.code))
    assert w.snapshot() == before


def _secs_pa(w: World) -> int:
    return w.a.secs_pa


def _unmap(addr: int) -> Callable[[World], None]:
    def setup(w: World) -> None:
        w.kmem.set_pte(addr, 0)

    return setup


def _unmap_free(w: World) -> None:
    w.kmem.set_pte(w.free, 0)


# ================================================================================================
# ECREATE (ENCLS 00h): RBX = PAGEINFO, RCX = the new SECS page
# ================================================================================================

SECS_SECINFO = secinfo_bytes(secinfo_flags(SECS_T))
KSS = int(Attribute.KSS)

ECREATE_ROWS: list[tuple[str, Fields, Expect]] = [
    ("ok", {}, OK),
    ("ok-exinfo", {"src": secs_src(miscselect=1)}, OK),
    ("ok-32bit", {"src": secs_src(attributes=0)}, OK),
    ("ok-all-settable-attributes", {"src": secs_src(attributes=M64 | 0x2 | 0x10 | 0x20 | 0x80 | 0x400)}, OK),
    ("ok-kss-configid-configsvn", {"src": secs_src(attributes=M64 | KSS, o192=b"\x11" * 64, o260=b"\x07\x00")}, OK),
    ("ok-ssaframesize-2", {"src": secs_src(ssaframesize=2)}, OK),
    ("ok-largest-64bit-size", {"src": secs_src(size=1 << 55, base=0)}, OK),
    ("ok-largest-32bit-size", {"src": secs_src(attributes=0, size=1 << 30, base=0)}, OK),
    ("ok-secinfo-rwx-and-state-bits", {"secinfo_raw": secinfo_bytes(secinfo_flags(SECS_T, R | W | X, PENDING | MODIFIED | PR))}, OK),
    # Only the reserved fields and the page type of SECINFO are checked; MRENCLAVE, MRSIGNER,
    # ISVPRODID and ISVSVN of the source are overwritten, not checked.
    ("ok-measurement-fields-cleared", {"src": secs_src(o64=b"\x01" * 32, o128=b"\x02" * 32, o256=b"\x03\x04\x05\x06")}, OK),
    # 1. Operand alignment.
    ("rbx-not-32-aligned", {"rbx": PAGEINFO_AT + 16}, GP),
    ("rcx-not-4k-aligned", {"rcx": lambda w: w.free + 0x800}, GP),
    # 2. RCX in EPC (after the normal paging checks).
    ("rcx-not-epc", {"rcx": NONEPC}, Pf("rcx", PF_W)),
    ("rcx-not-mapped", {"setup": _unmap_free}, Pf("rcx", NP_W)),
    ("pageinfo-not-mapped", {"rbx": UNMAPPED}, Pf("rbx", NP_R)),
    # 3. PAGEINFO field alignment.
    ("srcpge-not-4k-aligned", {"srcpge": SRC_AT + 0x100}, GP),
    ("secinfo-not-64-aligned", {"secinfo": SECINFO_AT + 0x20}, GP),
    # 4. Unused PAGEINFO fields.
    ("linaddr-not-zero", {"linaddr": 0x1000}, GP),
    ("secs-field-not-zero", {"secs": 0x1000}, GP),
    # 5. SECINFO: reserved FLAGS bits, reserved bytes 8-63, page type.
    ("secinfo-not-mapped", {"secinfo": UNMAPPED}, Pf("secinfo", NP_R)),
    ("secinfo-reserved-bit6", {"secinfo_raw": secinfo_bytes(secinfo_flags(SECS_T) | 0x40)}, GP),
    ("secinfo-reserved-bit7", {"secinfo_raw": secinfo_bytes(secinfo_flags(SECS_T) | 0x80)}, GP),
    ("secinfo-reserved-bit16", {"secinfo_raw": secinfo_bytes(secinfo_flags(SECS_T) | 1 << 16)}, GP),
    ("secinfo-reserved-bit63", {"secinfo_raw": secinfo_bytes(secinfo_flags(SECS_T) | 1 << 63)}, GP),
    ("secinfo-reserved-byte8", {"secinfo_raw": patch(SECS_SECINFO, 8, b"\x01")}, GP),
    ("secinfo-reserved-byte40", {"secinfo_raw": patch(SECS_SECINFO, 40, b"\x80")}, GP),
    ("secinfo-reserved-byte63", {"secinfo_raw": patch(SECS_SECINFO, 63, b"\x01")}, GP),
    ("secinfo-pt-tcs", {"secinfo_raw": secinfo_bytes(secinfo_flags(TCS_T))}, GP),
    ("secinfo-pt-reg", {"secinfo_raw": secinfo_bytes(secinfo_flags(REG, R | W))}, GP),
    ("secinfo-pt-va", {"secinfo_raw": secinfo_bytes(secinfo_flags(VA_T))}, GP),
    ("secinfo-pt-trim", {"secinfo_raw": secinfo_bytes(secinfo_flags(TRIM))}, GP),
    # 6. The EPC page must be free.
    ("rcx-valid-secs", {"rcx": _secs_pa}, Pf("rcx", PF_W)),
    ("rcx-valid-reg", {"rcx": lambda w: w.a.pages[A_DATA]}, Pf("rcx", PF_W)),
    ("rcx-valid-va", {"rcx": lambda w: w.va}, Pf("rcx", PF_W)),
    # 7. The source page is read, then the SECS checks of the pseudocode, in order.
    ("srcpge-not-mapped", {"srcpge": UNMAPPED}, Pf("srcpge", NP_R)),
    ("xfrm-x87-only", {"src": secs_src(xfrm=1)}, GP),
    ("xfrm-sse-only", {"src": secs_src(xfrm=2)}, GP),
    ("xfrm-zero", {"src": secs_src(xfrm=0)}, GP),
    ("xfrm-avx-not-supported", {"src": secs_src(xfrm=7)}, GP),
    ("xfrm-bit63", {"src": secs_src(xfrm=3 | 1 << 63)}, GP),
    ("miscselect-cpinfo-not-supported", {"src": secs_src(miscselect=2)}, GP),
    ("miscselect-bit31", {"src": secs_src(miscselect=1 << 31)}, GP),
    ("ssaframesize-zero", {"src": secs_src(ssaframesize=0)}, GP),
    ("base-not-canonical", {"src": secs_src(base=0x0000_8000_0000_0000)}, GP),
    ("base-not-canonical-high", {"src": secs_src(base=0x8000_0000_0000_0000)}, GP),
    ("base-above-4g-in-32bit", {"src": secs_src(attributes=0, base=1 << 32)}, GP),
    ("size-2^31-in-32bit", {"src": secs_src(attributes=0, size=1 << 31, base=0)}, GP),
    ("size-2^56-in-64bit", {"src": secs_src(size=1 << 56, base=0)}, GP),
    ("size-zero", {"src": secs_src(size=0)}, GP),
    ("size-one-page", {"src": secs_src(size=0x1000)}, GP),
    ("size-not-power-of-two", {"src": secs_src(size=0x6000, base=0x4000_0000)}, GP),
    ("base-not-size-aligned", {"src": secs_src(base=NEW_BASE + 0x2000)}, GP),
    ("attribute-init", {"src": secs_src(attributes=M64 | 1)}, GP),
    ("attribute-reserved-bit3", {"src": secs_src(attributes=M64 | 8)}, GP),
    ("attribute-cet-not-supported", {"src": secs_src(attributes=M64 | 0x40)}, GP),
    ("attribute-reserved-bit8", {"src": secs_src(attributes=M64 | 0x100)}, GP),
    ("attribute-reserved-bit63", {"src": secs_src(attributes=M64 | 1 << 63)}, GP),
    ("reserved-cet-leg-bitmap-offset", {"src": secs_src(o24=b"\x00\x10")}, GP),
    ("reserved-cet-attributes", {"src": secs_src(o32=b"\x01")}, GP),
    ("reserved-byte-47", {"src": secs_src(o47=b"\x01")}, GP),
    ("reserved-byte-96", {"src": secs_src(o96=b"\x01")}, GP),
    ("reserved-byte-191", {"src": secs_src(o191=b"\x01")}, GP),
    ("reserved-byte-262", {"src": secs_src(o262=b"\x01")}, GP),
    ("reserved-byte-4095", {"src": secs_src(o4095=b"\x01")}, GP),
    ("configid-without-kss", {"src": secs_src(o255=b"\x01")}, GP),
    ("configsvn-without-kss", {"src": secs_src(o260=b"\x01")}, GP),
    # Orders.
    ("rbx-alignment-before-rcx-not-epc", {"rbx": PAGEINFO_AT + 8, "rcx": NONEPC}, GP),
    ("rcx-not-epc-before-pageinfo-read", {"rcx": NONEPC, "rbx": UNMAPPED}, Pf("rcx", PF_W)),
    ("rcx-not-epc-before-pageinfo-fields", {"rcx": NONEPC, "linaddr": 0x1000}, Pf("rcx", PF_W)),
    ("field-alignment-before-secinfo-read", {"srcpge": SRC_AT + 8, "secinfo": UNMAPPED}, GP),
    ("pageinfo-fields-before-secinfo-read", {"secs": 0x1000, "secinfo": UNMAPPED}, GP),
    ("secinfo-before-rcx-valid", {"rcx": _secs_pa, "secinfo_raw": secinfo_bytes(secinfo_flags(REG))}, GP),
    ("secinfo-bytes-before-rcx-valid", {"rcx": _secs_pa, "secinfo_raw": patch(SECS_SECINFO, 9, b"\x01")}, GP),
    ("rcx-valid-before-source-read", {"rcx": _secs_pa, "srcpge": UNMAPPED}, Pf("rcx", PF_W)),
    ("rcx-valid-before-secs-contents", {"rcx": _secs_pa, "src": secs_src(xfrm=1)}, Pf("rcx", PF_W)),
]


@pytest.mark.parametrize(("case", "fields", "expect"), ECREATE_ROWS, ids=[r[0] for r in ECREATE_ROWS])
def test_ecreate(w: World, case: str, fields: Fields, expect: Expect) -> None:
    rcx = value(w, fields.get("rcx", lambda w: w.free))
    src = fields.get("src", secs_src())
    ops = {
        "rbx": fields.get("rbx", PAGEINFO_AT),
        "rcx": rcx,
        "linaddr": fields.get("linaddr", 0),
        "srcpge": fields.get("srcpge", SRC_AT),
        "secinfo": fields.get("secinfo", SECINFO_AT),
        "secs": fields.get("secs", 0),
    }
    w.kmem.write(SRC_AT, src)
    w.kmem.write(SECINFO_AT, fields.get("secinfo_raw", SECS_SECINFO))
    w.pageinfo(ops["linaddr"], ops["srcpge"], ops["secinfo"], ops["secs"])
    if "setup" in fields:
        fields["setup"](w)
    eid = w.cpu.next_eid
    before = w.snapshot()
    run_checked(w, expect, ops, lambda: w.kit.encls(EnclsLeaf.ECREATE, ops["rbx"], rcx))
    if expect != OK:
        return
    # The EPCM entry: a valid SECS page, no rights, no address, no state bits.
    index = w.index(rcx)
    e = w.cpu.epcm[index]
    assert (e.pt, e.perms, e.state, e.linaddr, e.epoch) == (SECS_T, 0, 0, 0, TRACKED)
    # The hidden state.
    s = w.cpu.secs_of(index)
    assert s is not None and e.secs is s and s.index == index
    size, base, ssaframesize, miscselect = struct.unpack_from("<QQII", src)
    attributes, xfrm = struct.unpack_from("<QQ", src, 48)
    assert (s.eid, w.cpu.next_eid) == (eid, eid + 1)
    assert (s.baseaddr, s.size, s.ssaframesize, s.miscselect) == (base, size, ssaframesize, miscselect)
    assert (s.attributes, s.xfrm, s.init) == (attributes, xfrm, False)
    assert (s.config_id, s.configsvn) == (src[192:256], struct.unpack_from("<H", src, 260)[0])
    assert (s.isvprodid, s.isvsvn, s.mrenclave, s.mrsigner) == (0, 0, bytes(32), bytes(32))
    assert (s.chldcnt, s.inside, s.epoch) == (0, {}, 0)
    assert s.measurement is not None
    assert s.measurement.update_counter == 1
    assert s.measurement.final() == hashlib.sha256(ecreate_block(ssaframesize, size)).digest()
    # The page holds the source with MRENCLAVE, MRSIGNER, ISVPRODID and ISVSVN zeroed.
    expected = patch(patch(patch(src, 64, bytes(32)), 128, bytes(32)), 256, bytes(4))
    assert w.cpu.epc.read(index, 0, 4096) == expected
    # Nothing else changed.
    epcm, secs, pages, _, lps = w.snapshot()
    del epcm[index], secs[index], pages[index]
    assert (epcm, secs, pages, lps) == (before[0], before[1], before[2], before[4])


def test_ecreate_eids_are_consecutive_and_never_reused(w: World) -> None:
    first = w.cpu.next_eid
    secs = []
    for i in range(3):
        encl = w.kit.ecreate(NEW_BASE + i * NEW_SIZE, NEW_SIZE)
        secs.append(w.secs(encl))
        assert w.kit.encls(EnclsLeaf.EREMOVE, 0, encl.secs_pa) == 0
    assert [s.eid for s in secs] == [first, first + 1, first + 2]
    assert w.cpu.next_eid == first + 3


# ================================================================================================
# EADD (ENCLS 01h): RBX = PAGEINFO{LINADDR, SRCPGE, SECINFO, SECS}, RCX = EPC page
# ================================================================================================

REG_RW = secinfo_flags(REG, R | W)
PAGE = bytes((i * 7 + 3) & 0xFF for i in range(4096))  # the default source page
TCS_SRC = tcs_image(0x5000, state=1, flags=0x3, cssa=5, aep=0x1234_5678, nssa=2)


def _a_secs(w: World) -> int:
    return w.a.secs_pa


EADD_ROWS: list[tuple[str, Fields, Expect]] = [
    ("ok-reg-rw", {}, OK),
    ("ok-reg-r", {"flags": secinfo_flags(REG, R)}, OK),
    ("ok-reg-rx", {"flags": secinfo_flags(REG, R | X)}, OK),
    ("ok-reg-rwx", {"flags": secinfo_flags(REG, R | W | X)}, OK),
    ("ok-reg-x-only", {"flags": secinfo_flags(REG, X)}, OK),
    ("ok-reg-no-rights", {"flags": secinfo_flags(REG)}, OK),
    # PENDING/MODIFIED/PR in SECINFO are not reserved: measured, never copied to the EPCM.
    ("ok-reg-state-bits-measured", {"flags": secinfo_flags(REG, R, PENDING | MODIFIED | PR)}, OK),
    ("ok-tcs", {"flags": secinfo_flags(TCS_T), "src": TCS_SRC}, OK),
    ("ok-tcs-rwx-forced-to-zero", {"flags": secinfo_flags(TCS_T, R | W | X), "src": TCS_SRC}, OK),
    ("ok-first-page", {"linaddr": A_BASE}, OK),  # duplicate LINADDR: not checked by EADD
    ("ok-last-page", {"linaddr": A_BASE + A_SIZE - 0x1000}, OK),
    ("ok-tcs-32bit-limits-fff", {"secs": lambda w: w.c.secs_pa, "linaddr": C_BASE, "flags": secinfo_flags(TCS_T), "src": tcs_image(0x1000, fslimit=0x1FFF, gslimit=0xFFF)}, OK),
    # 1. Operand alignment.
    ("rbx-not-32-aligned", {"rbx": PAGEINFO_AT + 8}, GP),
    ("rcx-not-4k-aligned", {"rcx": lambda w: w.free + 0x10}, GP),
    # 2. RCX in EPC.
    ("rcx-not-epc", {"rcx": NONEPC}, Pf("rcx", PF_W)),
    ("rcx-not-mapped", {"setup": _unmap_free}, Pf("rcx", NP_W)),
    ("pageinfo-not-mapped", {"rbx": UNMAPPED}, Pf("rbx", NP_R)),
    # 3. PAGEINFO field alignment.
    ("srcpge-not-4k-aligned", {"srcpge": SRC_AT + 0x800}, GP),
    ("secs-not-4k-aligned", {"secs": lambda w: w.a.secs_pa + 0x40}, GP),
    ("secinfo-not-64-aligned", {"secinfo": SECINFO_AT + 8}, GP),
    ("linaddr-not-4k-aligned", {"linaddr": A_FREE + 0x10}, GP),
    # 4. SECS in EPC.
    ("secs-not-epc", {"secs": NONEPC}, Pf("secs", PF_R)),
    ("secs-not-mapped", {"secs": UNMAPPED}, Pf("secs", NP_R)),
    # 5. SECINFO.
    ("secinfo-not-mapped", {"secinfo": UNMAPPED}, Pf("secinfo", NP_R)),
    ("secinfo-reserved-bit6", {"flags": REG_RW | 0x40}, GP),
    ("secinfo-reserved-bit7", {"flags": REG_RW | 0x80}, GP),
    ("secinfo-reserved-bit16", {"flags": REG_RW | 1 << 16}, GP),
    ("secinfo-reserved-bit63", {"flags": REG_RW | 1 << 63}, GP),
    ("secinfo-reserved-byte8", {"secinfo_raw": patch(secinfo_bytes(REG_RW), 8, b"\x01")}, GP),
    ("secinfo-reserved-byte47", {"secinfo_raw": patch(secinfo_bytes(REG_RW), 47, b"\x10")}, GP),
    ("secinfo-reserved-byte63", {"secinfo_raw": patch(secinfo_bytes(REG_RW), 63, b"\x01")}, GP),
    ("secinfo-pt-secs", {"flags": secinfo_flags(SECS_T)}, GP),
    ("secinfo-pt-va", {"flags": secinfo_flags(VA_T)}, GP),
    ("secinfo-pt-trim", {"flags": secinfo_flags(TRIM)}, GP),
    ("secinfo-pt-ss-first-without-cet", {"flags": 5 << 8 | R | W}, GP),
    ("secinfo-pt-undefined", {"flags": 0xFF << 8 | R}, GP),
    # 6. The EPC page must be free.
    ("rcx-valid-reg", {"rcx": lambda w: w.a.pages[A_DATA]}, Pf("rcx", PF_W)),
    ("rcx-valid-secs", {"rcx": _a_secs}, Pf("rcx", PF_W)),
    ("rcx-valid-va", {"rcx": lambda w: w.va}, Pf("rcx", PF_W)),
    # 7. The SECS operand must be a valid SECS page.
    ("secs-free-page", {"secs": lambda w: w.kit.alloc()}, Pf("secs", PF_R)),
    ("secs-reg-page", {"secs": lambda w: w.a.pages[A_DATA]}, Pf("secs", PF_R)),
    ("secs-tcs-page", {"secs": lambda w: w.a.pages[A_TCS]}, Pf("secs", PF_R)),
    ("secs-va-page", {"secs": lambda w: w.va}, Pf("secs", PF_R)),
    # 8. The source is read; type-specific checks.
    ("srcpge-not-mapped", {"srcpge": UNMAPPED}, Pf("srcpge", NP_R)),
    ("tcs-reserved-byte72", {"flags": secinfo_flags(TCS_T), "src": patch(tcs_image(0x1000), 72, b"\x01")}, GP),
    ("tcs-reserved-byte80-prevssp", {"flags": secinfo_flags(TCS_T), "src": patch(tcs_image(0x1000), 80, b"\x01")}, GP),
    ("tcs-reserved-byte4095", {"flags": secinfo_flags(TCS_T), "src": patch(tcs_image(0x1000), 4095, b"\x01")}, GP),
    ("tcs-32bit-fslimit", {"secs": lambda w: w.c.secs_pa, "linaddr": C_BASE, "flags": secinfo_flags(TCS_T), "src": tcs_image(0x1000, fslimit=0x1000)}, GP),
    ("tcs-32bit-gslimit", {"secs": lambda w: w.c.secs_pa, "linaddr": C_BASE, "flags": secinfo_flags(TCS_T), "src": tcs_image(0x1000, gslimit=0xFFE)}, GP),
    ("reg-w-without-r", {"flags": secinfo_flags(REG, W)}, GP),
    ("reg-wx-without-r", {"flags": secinfo_flags(REG, W | X)}, GP),
    # 9. LINADDR within ELRANGE.
    ("linaddr-below-elrange", {"linaddr": A_BASE - 0x1000}, GP),
    ("linaddr-at-elrange-end", {"linaddr": A_BASE + A_SIZE}, GP),
    ("linaddr-zero", {"linaddr": 0}, GP),
    # 10. The SECS must not be initialized.
    ("secs-initialized", {"secs": lambda w: w.b.secs_pa, "linaddr": B_DYN}, GP),
    # Orders.
    ("rbx-alignment-before-rcx-not-epc", {"rbx": PAGEINFO_AT + 8, "rcx": NONEPC}, GP),
    ("rcx-not-epc-before-field-alignment", {"rcx": NONEPC, "srcpge": SRC_AT + 8}, Pf("rcx", PF_W)),
    ("field-alignment-before-secs-not-epc", {"linaddr": A_FREE + 8, "secs": NONEPC}, GP),
    ("secs-not-epc-before-secinfo", {"secs": NONEPC, "flags": REG_RW | 0x40}, Pf("secs", PF_R)),
    ("secs-not-epc-before-secinfo-read", {"secs": NONEPC, "secinfo": UNMAPPED}, Pf("secs", PF_R)),
    ("secinfo-before-rcx-valid", {"rcx": _a_secs, "secinfo_raw": patch(secinfo_bytes(REG_RW), 16, b"\x01")}, GP),
    ("rcx-valid-before-secs-type", {"rcx": lambda w: w.a.pages[A_DATA], "secs": lambda w: w.va}, Pf("rcx", PF_W)),
    ("rcx-valid-before-initialized", {"rcx": lambda w: w.a.pages[A_DATA], "secs": lambda w: w.b.secs_pa, "linaddr": B_DYN}, Pf("rcx", PF_W)),
    ("secs-type-before-source-read", {"secs": lambda w: w.va, "srcpge": UNMAPPED}, Pf("secs", PF_R)),
    ("secs-type-before-tcs-contents", {"secs": lambda w: w.va, "flags": secinfo_flags(TCS_T), "src": patch(tcs_image(0x1000), 100, b"\x01")}, Pf("secs", PF_R)),
    ("source-read-before-linaddr-range", {"srcpge": UNMAPPED, "linaddr": A_BASE + A_SIZE}, Pf("srcpge", NP_R)),
]


@pytest.mark.parametrize(("case", "fields", "expect"), EADD_ROWS, ids=[r[0] for r in EADD_ROWS])
def test_eadd(w: World, case: str, fields: Fields, expect: Expect) -> None:
    rcx = value(w, fields.get("rcx", lambda w: w.free))
    flags: int = fields.get("flags", REG_RW)
    src: bytes = fields.get("src", PAGE)
    ops = {
        "rbx": fields.get("rbx", PAGEINFO_AT),
        "rcx": rcx,
        "linaddr": fields.get("linaddr", A_FREE),
        "srcpge": fields.get("srcpge", SRC_AT),
        "secinfo": fields.get("secinfo", SECINFO_AT),
        "secs": value(w, fields.get("secs", _a_secs)),
    }
    w.kmem.write(SRC_AT, src)
    w.kmem.write(SECINFO_AT, fields.get("secinfo_raw", secinfo_bytes(flags)))
    w.pageinfo(ops["linaddr"], ops["srcpge"], ops["secinfo"], ops["secs"])
    if "setup" in fields:
        fields["setup"](w)
    owner = w.cpu.secs_of(w.index(ops["secs"])) if expect == OK else None
    expected_measurement = None
    if owner is not None:
        assert owner.measurement is not None
        expected_measurement = owner.measurement.copy()
        is_tcs = flags >> 8 & 0xFF == TCS_T
        expected_measurement.eadd(ops["linaddr"] - owner.baseaddr, flags & ~7 if is_tcs else flags)
    before = w.snapshot()
    children = owner.chldcnt if owner is not None else 0
    run_checked(w, expect, ops, lambda: w.kit.encls(EnclsLeaf.EADD, ops["rbx"], rcx))
    if expect != OK:
        return
    assert owner is not None and expected_measurement is not None
    index = w.index(rcx)
    e = w.cpu.epcm[index]
    page_type = PageType(flags >> 8 & 0xFF)
    perms = 0 if page_type is TCS_T else flags & 7
    assert (e.pt, e.perms, e.state, e.linaddr, e.epoch) == (page_type, perms, 0, ops["linaddr"], TRACKED)
    assert e.secs is owner
    assert owner.chldcnt == children + 1
    assert owner.measurement is not None
    assert owner.measurement.final() == expected_measurement.final()
    assert owner.measurement.update_counter == expected_measurement.update_counter
    page = w.cpu.epc.read(index, 0, 4096)
    if page_type is TCS_T:
        # STATE, CSSA and AEP cleared, FLAGS.DBGOPTIN cleared (AEXNOTIFY kept), the rest as given.
        state, tflags, ossa, cssa, nssa, oentry, aep = struct.unpack_from("<QQQIIQQ", page)
        _, sflags, sossa, _, snssa, soentry, _ = struct.unpack_from("<QQQIIQQ", src)
        assert (state, tflags, cssa, aep) == (0, sflags & ~1, 0, 0)
        assert (ossa, nssa, oentry) == (sossa, snssa, soentry)
        assert page[48:] == src[48:]
    else:
        assert page == src
    # Nothing else changed but the new page and its owner's count and measurement.
    epcm, secs, pages, eid, lps = w.snapshot()
    del epcm[index], pages[index]
    secs[owner.index] = before[1][owner.index]
    assert (epcm, secs, pages, eid, lps) == (before[0], before[1], before[2], before[3], before[4])


def test_eadd_measures_like_the_offline_block_layout(w: World) -> None:
    """Two EADDs from ECREATE on: MRENCLAVE is SHA-256 over the ECREATE and two EADD blocks."""
    encl = w.kit.ecreate(NEW_BASE, NEW_SIZE)
    w.kit.eadd(encl, NEW_BASE, tcs_image(0x1000), secinfo_flags(TCS_T, R | W), measure=False)
    w.kit.eadd(encl, NEW_BASE + 0x1000, b"x", secinfo_flags(REG, R | X), measure=False)
    s = w.secs(encl)
    assert s.measurement is not None
    blocks = (
        ecreate_block(1, NEW_SIZE)
        + eadd_block(0, secinfo_flags(TCS_T))  # the TCS rights are forced to 0 before hashing
        + eadd_block(0x1000, secinfo_flags(REG, R | X))
    )
    assert s.measurement.final() == hashlib.sha256(blocks).digest()
    assert s.measurement.update_counter == 3


# ================================================================================================
# EEXTEND (ENCLS 06h): RBX = SECS, RCX = 256-byte chunk of an EPC page
# ================================================================================================

EEXTEND_ROWS: list[tuple[str, Value, Value, Expect]] = [
    ("ok-reg-first-chunk", _a_secs, lambda w: w.a.pages[A_DATA], OK),
    ("ok-reg-last-chunk", _a_secs, lambda w: w.a.pages[A_DATA] + 0xF00, OK),
    ("ok-tcs-chunk", _a_secs, lambda w: w.a.pages[A_TCS] + 0x100, OK),
    ("ok-empty-ssa-page", _a_secs, lambda w: w.a.pages[A_SSA] + 0x700, OK),
    # 1.-2. RBX.
    ("rbx-not-4k-aligned", lambda w: w.a.secs_pa + 0x100, lambda w: w.a.pages[A_DATA], GP),
    ("rbx-not-epc", NONEPC, lambda w: w.a.pages[A_DATA], Pf("rbx", PF_R)),
    ("rbx-not-mapped", UNMAPPED, lambda w: w.a.pages[A_DATA], Pf("rbx", NP_R)),
    # 3.-4. RCX.
    ("rcx-not-256-aligned", _a_secs, lambda w: w.a.pages[A_DATA] + 0x80, GP),
    ("rcx-not-epc", _a_secs, NONEPC + 0x100, Pf("rcx", PF_R)),
    ("rcx-not-mapped", _a_secs, UNMAPPED + 0x200, Pf("rcx", NP_R)),
    # 6.-7. The chunk's page: valid, REG or TCS.
    ("rcx-free-page", _a_secs, lambda w: w.free + 0x100, Pf("rcx", PF_R)),
    ("rcx-secs-page", _a_secs, _a_secs, Pf("rcx", PF_R)),
    ("rcx-va-page", _a_secs, lambda w: w.va + 0x300, Pf("rcx", PF_R)),
    # 8. RBX must be the SECS of that page.
    ("rbx-another-enclaves-secs", lambda w: w.c.secs_pa, lambda w: w.a.pages[A_DATA], GP),
    ("rbx-a-reg-page", lambda w: w.a.pages[A_SSA], lambda w: w.a.pages[A_DATA], GP),
    ("rbx-a-va-page", lambda w: w.va, lambda w: w.a.pages[A_DATA], GP),
    ("rbx-a-free-page", lambda w: w.free, lambda w: w.a.pages[A_DATA], GP),
    # 9. The SECS must not be initialized.
    ("secs-initialized", lambda w: w.b.secs_pa, lambda w: w.b.pages[B_DATA], GP),
    # Orders.
    ("rbx-alignment-before-rcx-not-epc", lambda w: w.a.secs_pa + 8, NONEPC, GP),
    ("rbx-not-epc-before-rcx-alignment", NONEPC, lambda w: w.a.pages[A_DATA] + 8, Pf("rbx", PF_R)),
    ("rcx-alignment-before-rcx-not-epc", _a_secs, NONEPC + 8, GP),
    ("rcx-not-epc-before-wrong-secs", lambda w: w.c.secs_pa, NONEPC, Pf("rcx", PF_R)),
    ("rcx-invalid-before-wrong-secs", lambda w: w.c.secs_pa, lambda w: w.free, Pf("rcx", PF_R)),
    ("rcx-type-before-wrong-secs", lambda w: w.c.secs_pa, lambda w: w.va, Pf("rcx", PF_R)),
]


@pytest.mark.parametrize(("case", "rbx", "rcx", "expect"), EEXTEND_ROWS, ids=[r[0] for r in EEXTEND_ROWS])
def test_eextend(w: World, case: str, rbx: Value, rcx: Value, expect: Expect) -> None:
    ops = {"rbx": value(w, rbx), "rcx": value(w, rcx)}
    secs = w.secs(w.a)
    assert secs.measurement is not None
    expected = secs.measurement.copy()
    index = w.index(ops["rcx"])
    if expect == OK:
        e = w.cpu.epcm[index]
        off = ops["rcx"] & 0xFFF
        expected.eextend(e.linaddr - A_BASE + off, w.cpu.epc.read(index, off, 256))
    before = w.snapshot()
    run_checked(w, expect, ops, lambda: w.kit.encls(EnclsLeaf.EEXTEND, ops["rbx"], ops["rcx"]))
    if expect != OK:
        return
    assert secs.measurement.final() == expected.final()
    assert secs.measurement.update_counter == before[1][secs.index][16][1] + 5
    epcm, all_secs, pages, eid, lps = w.snapshot()
    all_secs[secs.index] = before[1][secs.index]
    assert (epcm, all_secs, pages, eid, lps) == before


def test_eextend_hashes_header_and_data_exactly() -> None:
    """MRENCLAVE after ECREATE + EADD + EEXTEND equals SHA-256 over the blocks the SDM lists."""
    kit = LeafKit(epc_size=16 * 4096, cpus=1)
    data = bytes((i * 7) & 0xFF for i in range(4096))
    encl = kit.ecreate(NEW_BASE, NEW_SIZE)
    pa = kit.eadd(encl, NEW_BASE + 0x2000, data, secinfo_flags(REG, R | W), measure=False)
    for off in (0x300, 0x300, 0x000):  # any order, any repetition: MRENCLAVE just records it
        assert kit.encls(EnclsLeaf.EEXTEND, encl.secs_pa, pa + off) == 0
    secs = kit.cpu.secs_of(kit.cpu.epc.index(encl.secs_pa))
    assert secs is not None and secs.measurement is not None
    blocks = ecreate_block(1, NEW_SIZE) + eadd_block(0x2000, secinfo_flags(REG, R | W))
    for off in (0x300, 0x300, 0x000):
        blocks += eextend_block(0x2000 + off) + data[off : off + 256]
    assert secs.measurement.final() == hashlib.sha256(blocks).digest()
    assert secs.measurement.update_counter == 2 + 3 * 5


# ================================================================================================
# EREMOVE (ENCLS 03h): RCX = EPC page
# ================================================================================================

Setup = Callable[[World], object] | None

# (id, set-up, target, RAX, page freed, SECS whose child count drops by one)
EREMOVE_ROWS: list[tuple[str, Setup, Value, Expect, bool, str | None]] = [
    # 1. A free page: success, nothing changes.
    ("free-page", None, lambda w: w.free, OK, False, None),
    ("never-used-page", None, lambda w: w.kit.alloc(), OK, False, None),
    # 2. A VA page: freed (it has no owner).
    ("va-page", None, lambda w: w.va, OK, True, None),
    ("va-page-while-threads-inside", lambda w: w.enter_b(), lambda w: w.va, OK, True, None),
    # 3. An accepted trim: freed without the activity check.
    ("accepted-trim-while-a-thread-is-inside", lambda w: w.trim_b_data(accept=True), lambda w: w.b.pages[B_DATA], OK, True, "b"),
    # 4. SECS pages.
    ("secs-with-children", None, _a_secs, Rax(SgxError.SGX_CHILD_PRESENT), False, None),
    ("secs-with-children-while-active", lambda w: w.enter_b(), lambda w: w.b.secs_pa, Rax(SgxError.SGX_CHILD_PRESENT), False, None),
    ("secs-without-children", None, lambda w: w.kit.ecreate(NEW_BASE, NEW_SIZE).secs_pa, OK, True, None),
    # 5. A thread inside the owner.
    ("reg-page-while-active", lambda w: w.enter_b(), lambda w: w.b.pages[B_DATA], Rax(SgxError.SGX_ENCLAVE_ACT), False, None),
    ("tcs-in-use", lambda w: w.enter_b(), lambda w: w.b.pages[B_TCS], Rax(SgxError.SGX_ENCLAVE_ACT), False, None),
    ("unaccepted-trim-while-active", lambda w: (w.trim_b_data(accept=False), w.enter_b()), lambda w: w.b.pages[B_DATA], Rax(SgxError.SGX_ENCLAVE_ACT), False, None),
    # 6. Children freed, the count decremented; BLOCKED and PENDING are not checked.
    ("reg-page", None, lambda w: w.a.pages[A_DATA], OK, True, "a"),
    ("tcs-page", None, lambda w: w.a.pages[A_TCS], OK, True, "a"),
    ("initialized-enclave-page-idle", None, lambda w: w.b.pages[B_DATA], OK, True, "b"),
    ("unaccepted-trim-idle", lambda w: w.trim_b_data(accept=False), lambda w: w.b.pages[B_DATA], OK, True, "b"),
    ("blocked-page", lambda w: w.kit.eblock(w.b.pages[B_DATA]), lambda w: w.b.pages[B_DATA], OK, True, "b"),
    ("pending-page", lambda w: w.kit.eaug(w.b, B_DYN), lambda w: w.b.pages[B_DYN], OK, True, "b"),
    ("page-of-an-enclave-after-its-thread-left", lambda w: w.kit.eexit(w.enter_b(), lp=1), lambda w: w.b.pages[B_DATA], OK, True, "b"),
    # Operand checks.
    ("rcx-not-4k-aligned", None, lambda w: w.a.pages[A_DATA] + 0x10, GP, False, None),
    ("rcx-not-epc", None, NONEPC, Pf("rcx", PF_W), False, None),
    ("rcx-not-mapped", _unmap_free, lambda w: w.free, Pf("rcx", NP_W), False, None),
    ("rcx-alignment-before-not-epc", None, NONEPC + 0x10, GP, False, None),
]


@pytest.mark.parametrize(("case", "setup", "target", "expect", "freed", "owner"), EREMOVE_ROWS, ids=[r[0] for r in EREMOVE_ROWS])
def test_eremove(w: World, case: str, setup: Setup, target: Value, expect: Expect, freed: bool, owner: str | None) -> None:
    if setup is not None:
        setup(w)
    rcx = value(w, target)
    index = w.index(rcx)
    secs = {"a": w.secs(w.a), "b": w.secs(w.b)}.get(owner or "")
    children = secs.chldcnt if secs is not None else 0
    before = w.snapshot()
    run_checked(w, expect, {"rcx": rcx}, lambda: w.kit.encls(EnclsLeaf.EREMOVE, 0, rcx))
    if expect != OK:
        return
    epcm, all_secs, pages, eid, lps = w.snapshot()
    if not freed:
        assert (epcm, all_secs, pages, eid, lps) == before
        return
    assert index not in w.cpu.epcm
    del before[0][index], before[2][index]
    before[1].pop(index, None)  # a freed SECS takes its hidden state with it
    if secs is not None:
        assert secs.chldcnt == children - 1
        all_secs[secs.index] = before[1][secs.index]
    assert (epcm, all_secs, pages, eid, lps) == before[:5]


def test_eremove_then_eadd_reuses_the_page_with_the_new_contents(w: World) -> None:
    pa = w.a.pages[A_DATA]
    assert w.kit.eremove(w.a, A_DATA) == 0
    w.kmem.write(SRC_AT, b"\x33" * 4096)
    w.kmem.write(SECINFO_AT, secinfo_bytes(REG_RW))
    w.pageinfo(A_DATA, SRC_AT, SECINFO_AT, w.a.secs_pa)
    assert w.kit.encls(EnclsLeaf.EADD, PAGEINFO_AT, pa) == 0
    assert w.cpu.epc.read(w.index(pa), 0, 4096) == b"\x33" * 4096


def test_eremove_whole_enclave_children_first_then_secs(w: World) -> None:
    secs = w.secs(w.a)
    assert w.kit.encls(EnclsLeaf.EREMOVE, 0, w.a.secs_pa) == SgxError.SGX_CHILD_PRESENT
    for lin in list(w.a.pages):
        assert w.kit.eremove(w.a, lin) == 0
    assert secs.chldcnt == 0
    assert w.kit.encls(EnclsLeaf.EREMOVE, 0, w.a.secs_pa) == 0
    assert w.cpu.secs_of(w.index(w.a.secs_pa)) is None
    assert all(e.secs is not secs for e in w.cpu.epcm.values())


@pytest.mark.parametrize(
    ("case", "code"), [("success", 0), ("child-present", 13), ("enclave-active", 14)]
)
def test_eremove_flags_through_the_register_front(w: World, case: str, code: int) -> None:
    """ZF=1 on an error code, ZF=0 on success; CF, PF, AF, OF and SF are always cleared."""
    if case == "enclave-active":
        w.enter_b()
        target = w.b.pages[B_DATA]
    else:
        target = w.a.secs_pa if case == "child-present" else w.a.pages[A_DATA]
    regs = Registers(rax=EnclsLeaf.EREMOVE, rcx=target, rflags=0x2 | CF | PF | AF | ZF | SF | OF)
    w.cpu.encls_regs(regs, w.kmem)
    assert regs[Reg.RAX] == code
    assert regs[Reg.RFLAGS] == 0x2 | (ZF if code else 0)


# ================================================================================================
# EPA (ENCLS 0Ah): RBX = PT_VA, RCX = EPC page
# ================================================================================================

EPA_ROWS: list[tuple[str, Setup, int, Value, Expect]] = [
    ("ok-stale-page-zeroed", None, VA_T, lambda w: w.free, OK),
    ("ok-never-used-page", None, VA_T, lambda w: w.kit.alloc(), OK),
    # 1. RBX = PT_VA, RCX aligned.
    ("rbx-zero", None, 0, lambda w: w.free, GP),
    ("rbx-pt-reg", None, REG, lambda w: w.free, GP),
    ("rbx-pt-trim", None, TRIM, lambda w: w.free, GP),
    ("rbx-pt-va-with-high-bits", None, VA_T | 1 << 32, lambda w: w.free, GP),
    ("rcx-not-4k-aligned", None, VA_T, lambda w: w.free + 0x100, GP),
    # RCX in EPC.
    ("rcx-not-epc", None, VA_T, NONEPC, Pf("rcx", PF_W)),
    ("rcx-not-mapped", _unmap_free, VA_T, lambda w: w.free, Pf("rcx", NP_W)),
    # 2. The page must be free.
    ("rcx-valid-va", None, VA_T, lambda w: w.va, Pf("rcx", PF_W)),
    ("rcx-valid-reg", None, VA_T, lambda w: w.a.pages[A_DATA], Pf("rcx", PF_W)),
    ("rcx-valid-secs", None, VA_T, _a_secs, Pf("rcx", PF_W)),
    # Orders.
    ("rbx-before-rcx-not-epc", None, 0, NONEPC, GP),
    ("rcx-alignment-before-not-epc", None, VA_T, NONEPC + 8, GP),
    ("rbx-before-rcx-valid", None, 0, lambda w: w.va, GP),
]


@pytest.mark.parametrize(("case", "setup", "rbx", "rcx", "expect"), EPA_ROWS, ids=[r[0] for r in EPA_ROWS])
def test_epa(w: World, case: str, setup: Setup, rbx: int, rcx: Value, expect: Expect) -> None:
    if setup is not None:
        setup(w)
    target = value(w, rcx)
    before = w.snapshot()
    run_checked(w, expect, {"rcx": target}, lambda: w.kit.encls(EnclsLeaf.EPA, rbx, target))
    if expect != OK:
        return
    index = w.index(target)
    e = w.cpu.epcm[index]
    assert (e.pt, e.perms, e.state, e.linaddr, e.secs, e.epoch) == (VA_T, 0, 0, 0, None, TRACKED)
    assert w.cpu.epc.read(index, 0, 4096) == bytes(4096)  # every slot empty
    epcm, secs, pages, eid, lps = w.snapshot()
    del epcm[index], pages[index]
    assert (epcm, secs, pages, eid, lps) == before


def test_epa_page_is_freed_by_eremove_and_can_be_reused(w: World) -> None:
    va = w.kit.epa()
    assert w.kit.encls(EnclsLeaf.EREMOVE, 0, va) == 0
    assert w.index(va) not in w.cpu.epcm
    assert w.kit.encls(EnclsLeaf.EPA, VA_T, va) == 0
    assert w.cpu.epcm[w.index(va)].pt is VA_T
