"""The six SGX2 leaves one by one: the success path and one row per check the SDM lists.

EAUG (spec 3.13), EMODPR (3.14), EMODT (3.15), EACCEPT (4.7), EACCEPTCOPY (4.8), EMODPE (4.9).
Every failing row also checks that the machine is unchanged (EPCM, EPC contents, child counts,
and for ENCLU the registers: RIP stays on the faulting ENCLU).
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
from sgxemu.hw.epcm import TRACKED, EpcmEntry
from sgxemu.hw.faults import GeneralProtection, PageFault
from sgxemu.hw.memory import PTE_ADDR_MASK, PTE_P, PTE_U, PTE_W
from sgxemu.hw.regs import CF, ZF, Reg, Registers
from sgxemu.hw.secs import SecsState
from sgxemu.leafkit import LeafKit
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

# #PF error codes: P=1 W=2 U=4 SGX=0x8000.
PF_KERNEL_W = 0x8003  # ENCLS operand the leaf writes (the target page)
PF_KERNEL_R = 0x8001  # ENCLS operand the leaf reads (the SECS of EAUG)
PF_USER_R = 0x8005  # ENCLU operand read by enclave (SECINFO, EACCEPT/EMODPE target, source)
PF_USER_W = 0x8007  # ENCLU operand written by the enclave (EACCEPTCOPY destination)

BASE = 0x1000_0000
SIZE = 0x4_0000
NTCS = 3


def tcs_at(i: int) -> int:
    """TCS i; its one-page SSA frame follows it."""
    return BASE + 0x2000 * i


SECINFO = BASE + 0x6000  # RW: where the enclave builds its SECINFO
DATA = BASE + 0x7000  # RW
CODE = BASE + 0x8000  # R-X, OENTRY
RO = BASE + 0x9000  # R--
XO = BASE + 0xA000  # --X
ALIEN = BASE + 0xB000  # another enclave's page, at the same linear address
ALIAS = BASE + 0xC000  # DATA's EPC page mapped a second time (ENCLAVEADDRESS mismatch)
SECS_MAP = BASE + 0xD000  # the SECS page mapped into ELRANGE
VA_MAP = BASE + 0xE000  # a VA page mapped into ELRANGE
UNBACKED = BASE + 0xF000  # inside ELRANGE, mapped to ordinary memory
DYN = BASE + 0x1_0000  # EAUG area
DYN2 = BASE + 0x1_1000
OUTSIDE = BASE + SIZE  # first page past ELRANGE
KERNEL_NONEPC = 0x8000  # kernel scratch that is not EPC
PAGEINFO = 0x1000  # where LeafKit.pageinfo writes


def tcs_image(ossa: int, **fields: int) -> bytes:
    v = {"state": 0, "flags": 0, "cssa": 0, "nssa": 1, "aep": 0, "fslimit": 0xFFFFFFFF}
    v.update(fields)
    head = struct.pack(
        "<QQQIIQQQQII",
        v["state"], v["flags"], ossa, v["cssa"], v["nssa"], CODE - BASE, v["aep"], 0, 0,
        v["fslimit"], 0xFFFFFFFF,
    )
    return head.ljust(4096, b"\0")


def secinfo_bytes(flags: int) -> bytes:
    return struct.pack("<Q", flags) + bytes(56)


def einit(kit: LeafKit, encl: Any, secs: SecsState) -> None:
    """EINIT for real: sign the running MRENCLAVE, make the signer the launch key, initialize."""
    assert secs.measurement is not None
    sig = plain_sigstruct(secs.measurement.final())
    kit.set_lepubkeyhash(mrsigner_of_key(key_a()))
    assert kit.einit(encl, sig) == 0
    assert secs.init


class World:
    """An initialized 64-bit enclave with three TCSs, plus an uninitialized second enclave."""

    def __init__(self, *, sgx2: bool = True) -> None:
        self.kit = kit = LeafKit(epc_size=1 << 20, cpus=4, sgx2=sgx2)
        self.cpu = kit.cpu
        self.encl = encl = kit.ecreate(BASE, SIZE)
        for i in range(NTCS):
            kit.eadd(encl, tcs_at(i), tcs_image(tcs_at(i) + 0x1000 - BASE), secinfo_flags(TCS_T))
            kit.eadd(encl, tcs_at(i) + 0x1000, b"", secinfo_flags(REG, R | W))
        kit.eadd(encl, SECINFO, b"", secinfo_flags(REG, R | W))
        kit.eadd(encl, DATA, b"data" * 1024, secinfo_flags(REG, R | W))
        kit.eadd(encl, CODE, b"\x90" * 4096, secinfo_flags(REG, R | X))
        kit.eadd(encl, RO, b"ro" * 2048, secinfo_flags(REG, R))
        kit.eadd(encl, XO, b"xo" * 2048, secinfo_flags(REG, X))
        self.secs = self.secs_at(encl.secs_pa)
        einit(kit, encl, self.secs)
        # A second, uninitialized enclave at the same base: its page shows up at ALIEN.
        self.other = kit.ecreate(BASE, SIZE)
        kit.eadd(self.other, ALIEN, b"alien" * 800, secinfo_flags(REG, R | W))
        self.other_secs = self.secs_at(self.other.secs_pa)
        self.map_raw(ALIAS, encl.pages[DATA])
        self.map_raw(SECS_MAP, encl.secs_pa)
        self.va_pa = kit.alloc()
        assert kit.encls(EnclsLeaf.EPA, VA_T, self.va_pa) == 0
        self.map_raw(VA_MAP, self.va_pa)
        kit.umem.set_pte(UNBACKED, 0x5000 | PTE_P | PTE_W | PTE_U)

    # -- plumbing ---------------------------------------------------------------------------------
    def secs_at(self, pa: int) -> SecsState:
        secs = self.cpu.secs_of(self.cpu.epc.index(pa))
        assert secs is not None
        return secs

    def map_raw(self, lin: int, pa: int) -> None:
        self.kit.umem.set_pte(lin, pa | PTE_P | PTE_W | PTE_U)

    def index_of(self, lin: int) -> int:
        """EPC index behind a process linear address."""
        return self.cpu.epc.index(self.kit.umem.translate(lin) & PTE_ADDR_MASK)

    def entry(self, lin: int) -> EpcmEntry:
        return self.cpu.epcm[self.index_of(lin)]

    def page(self, lin: int) -> bytes:
        return self.cpu.epc.read(self.index_of(lin), 0, 4096)

    def poke(self, lin: int, data: bytes) -> None:
        """Put bytes in an EPC page directly (test set-up of contents the enclave would write)."""
        self.cpu.epc.write(self.index_of(lin), lin & 0xFFF, data)

    def snapshot(self) -> tuple[Any, ...]:
        epcm = {
            i: (e.pt, e.perms, e.pending, e.modified, e.pr, e.blocked, e.linaddr, e.epoch, id(e.secs))
            for i, e in self.cpu.epcm.items()
        }
        counts = [(s.chldcnt, s.epoch, dict(s.inside)) for s in self.cpu.enclaves()]
        return epcm, counts, hashlib.sha256(self.cpu.epc.view).digest()

    # -- enclave threads ------------------------------------------------------------------------
    def enter(self, lp: int, tcs: int | None = None) -> Registers:
        return self.kit.eenter(tcs_at(lp if tcs is None else tcs), lp=lp)

    def exit(self, regs: Registers, lp: int) -> None:
        self.kit.eexit(regs, lp=lp)

    def enclu(self, regs: Registers, leaf: EncluLeaf, lp: int, rbx: int, rcx: int, rdx: int = 0) -> int:
        return self.kit.enclu(regs, leaf, rbx, rcx, rdx, lp=lp)

    # -- page states the rows start from (driven through the real leaves) ------------------------
    def helper_accept(self, lin: int, flags: int, data: bytes | None = None) -> None:
        """A helper thread (LP 3 through TCS 2) EACCEPTs `lin` with `flags`, then fills it."""
        regs = self.enter(3, tcs=2)
        self.poke(SECINFO, secinfo_bytes(flags))
        assert self.enclu(regs, EncluLeaf.EACCEPT, 3, SECINFO, lin) == 0
        if data is not None:
            self.poke(lin, data)
        self.exit(regs, 3)

    def augmented(self, lin: int = DYN, data: bytes | None = None) -> None:
        """EAUG + EACCEPT: an ordinary RW- page (with `data` written by the enclave)."""
        self.kit.eaug(self.encl, lin)
        self.helper_accept(lin, secinfo_flags(REG, R | W, PENDING), data)

    def trimmed(self, lin: int = DATA, *, accept: bool) -> None:
        assert self.kit.emodt(self.encl, lin, TRIM) == 0
        assert self.kit.etrack(self.encl) == 0
        if accept:
            self.helper_accept(lin, secinfo_flags(TRIM, 0, MODIFIED))

    def made_tcs(self, lin: int = DYN, *, image: bytes | None = None) -> None:
        """An augmented page holding a TCS image, EMODT'd to TCS and tracked, not yet accepted."""
        self.augmented(lin, image if image is not None else tcs_image(DYN2 - BASE))
        assert self.kit.emodt(self.encl, lin, TCS_T) == 0
        assert self.kit.etrack(self.encl) == 0

    def restricted(self, lin: int = DATA, perms: int = R, *, track: bool = True) -> None:
        assert self.kit.emodpr(self.encl, lin, perms) == 0
        if track:
            assert self.kit.etrack(self.encl) == 0

    def blocked(self, lin: int) -> None:
        assert self.kit.encls(EnclsLeaf.EBLOCK, 0, self.encl.pages[lin]) == 0


@pytest.fixture
def w() -> World:
    return World()  # not closed here: the conftest invariant check reads it after the test


Setup = Callable[[World], object] | None


@dataclass(frozen=True)
class Gp:
    pass


@dataclass(frozen=True)
class Pf:
    addr: str | int  # an operand name ("rbx", "rcx", "rdx", "secs") or an address
    code: int


@dataclass(frozen=True)
class Rax:
    code: int


OK = Rax(0)
GP = Gp()
Expect = Gp | Pf | Rax


def run_checked(w: World, expect: Expect, operands: dict[str, int], fn: Callable[[], int]) -> int | None:
    """Run a leaf; assert its outcome; on a fault, assert the machine is unchanged."""
    before = w.snapshot()
    if isinstance(expect, Rax):
        code = fn()
        assert code == expect.code
        if code:
            assert w.snapshot() == before
        return code
    if isinstance(expect, Gp):
        with pytest.raises(GeneralProtection) as gp:
            fn()
        assert gp.value.error_code == 0
    else:
        with pytest.raises(PageFault) as pf:
            fn()
        addr = operands[expect.addr] if isinstance(expect.addr, str) else expect.addr
        assert (pf.value.addr, pf.value.error_code) == (addr, expect.code)
    assert w.snapshot() == before
    return None


# ================================================================================================
# EAUG (ENCLS 0Dh): RBX = PAGEINFO, RCX = EPC page
# ================================================================================================

def _free(w: World) -> int:
    return w.kit.alloc()


EAUG_ROWS: list[tuple[str, dict[str, Any], Expect]] = [
    ("ok", {}, OK),
    ("rbx-not-32-aligned", {"rbx": PAGEINFO + 8}, GP),
    ("rcx-not-4k-aligned", {"rcx": lambda w: _free(w) + 0x40}, GP),
    ("rcx-not-epc", {"rcx": KERNEL_NONEPC}, Pf("rcx", PF_KERNEL_W)),
    ("secinfo-not-64-aligned", {"secinfo": 0x1048}, GP),
    ("secs-not-4k-aligned", {"secs": lambda w: w.encl.secs_pa + 0x40}, GP),
    ("linaddr-not-4k-aligned", {"linaddr": DYN + 0x10}, GP),
    ("srcpge-not-zero", {"srcpge": 0x2000}, GP),
    ("secs-not-epc", {"secs": KERNEL_NONEPC}, Pf("secs", PF_KERNEL_R)),
    ("rcx-already-valid", {"rcx": lambda w: w.encl.pages[DATA]}, Pf("rcx", PF_KERNEL_W)),
    # CET shadow-stack types are the only legal SECINFO; CET is not modelled.
    ("secinfo-given", {"secinfo": 0x1040, "secinfo_flags": secinfo_flags(REG, R | W)}, GP),
    ("secs-is-reg-page", {"secs": lambda w: w.encl.pages[DATA]}, Pf("secs", PF_KERNEL_R)),
    ("secs-is-free-page", {"secs": _free}, Pf("secs", PF_KERNEL_R)),
    ("secs-not-initialized", {"secs": lambda w: w.other.secs_pa}, GP),
    ("linaddr-below-elrange", {"linaddr": BASE - 0x1000}, GP),
    ("linaddr-past-elrange", {"linaddr": OUTSIDE}, GP),
    # Order: the target's VALID #PF precedes the SECINFO, SECS-type and INIT checks.
    (
        "valid-rcx-before-uninit-secs",
        {"rcx": lambda w: w.encl.pages[DATA], "secs": lambda w: w.other.secs_pa},
        Pf("rcx", PF_KERNEL_W),
    ),
    ("srcpge-before-secs-not-epc", {"srcpge": 0x2000, "secs": KERNEL_NONEPC}, GP),
]


@pytest.mark.parametrize(("case", "fields", "expect"), EAUG_ROWS, ids=[r[0] for r in EAUG_ROWS])
def test_eaug(w: World, case: str, fields: dict[str, Any], expect: Expect) -> None:
    def value(name: str, default: int) -> int:
        v = fields.get(name, default)
        return int(v(w)) if callable(v) else int(v)

    rcx = value("rcx", w.kit.alloc())
    index = w.cpu.epc.index(rcx & ~0xFFF)
    if index >= 0 and index not in w.cpu.epcm:
        w.cpu.epc.write(index, 0, b"\xa5" * 4096)  # stale contents of a freed page,
        w.cpu.epc.release(index)  # released as EREMOVE and EWB release pages
    linaddr = value("linaddr", DYN)
    ops = {
        "linaddr": linaddr,
        "srcpge": value("srcpge", 0),
        "secinfo": value("secinfo", 0),
        "secs": value("secs", w.encl.secs_pa),
    }
    w.kit.secinfo(fields.get("secinfo_flags", 0))
    w.kit.pageinfo(ops["linaddr"], ops["srcpge"], ops["secinfo"], ops["secs"])
    ops["rbx"] = value("rbx", PAGEINFO)
    ops["rcx"] = rcx
    children = w.secs.chldcnt
    run_checked(w, expect, ops, lambda: w.kit.encls(EnclsLeaf.EAUG, ops["rbx"], rcx))
    if expect == OK:
        e = w.cpu.epcm[w.cpu.epc.index(rcx)]
        assert (e.pt, e.perms, e.pending, e.modified, e.pr, e.blocked) == (REG, R | W, True, False, False, False)
        assert (e.linaddr, e.secs) == (DYN, w.secs)
        assert w.cpu.epc.read(w.cpu.epc.index(rcx), 0, 4096) == bytes(4096)  # zeroed
        assert w.secs.chldcnt == children + 1


def test_eaug_does_not_touch_the_measurement(w: World) -> None:
    secs_page = w.cpu.epc.index(w.encl.secs_pa)
    before = (w.secs.mrenclave, w.cpu.epc.read(secs_page, 0, 4096))
    w.kit.eaug(w.encl, DYN)
    assert (w.secs.mrenclave, w.cpu.epc.read(secs_page, 0, 4096)) == before


def test_sgx2_leaves_are_gp_on_an_sgx1_processor() -> None:
    world = World(sgx2=False)
    with pytest.raises(GeneralProtection):
        world.kit.eaug(world.encl, DYN)
    for leaf in (EnclsLeaf.EMODPR, EnclsLeaf.EMODT):
        with pytest.raises(GeneralProtection):
            world.kit.encls(leaf, world.kit.secinfo(secinfo_flags(TRIM)), world.encl.pages[DATA])
    regs = world.enter(0)
    for uleaf in (EncluLeaf.EACCEPT, EncluLeaf.EMODPE, EncluLeaf.EACCEPTCOPY):
        with pytest.raises(GeneralProtection):
            world.enclu(regs, uleaf, 0, SECINFO, DATA)


# ================================================================================================
# EMODPR (ENCLS 0Eh) and EMODT (ENCLS 0Fh): RBX = SECINFO (kernel), RCX = EPC page
# ================================================================================================

SECINFO_K = 0x1040  # where LeafKit.secinfo writes

# (id, set-up, target (process lin or callable giving a kernel address), SECINFO bytes, expect)
ModRow = tuple[str, Setup, "int | Callable[[World], int]", bytes, Expect]


def _target(w: World, t: int | Callable[[World], int]) -> int:
    if callable(t):
        return t(w)
    return w.cpu.epc.address(w.index_of(t))


EMODPR_ROWS: list[ModRow] = [
    ("ok-restrict-to-r", None, DATA, secinfo_bytes(secinfo_flags(REG, R)), OK),
    ("ok-mask-removes-nothing", None, DATA, secinfo_bytes(secinfo_flags(REG, R | W | X)), OK),
    ("ok-restrict-to-none", None, DATA, secinfo_bytes(0), OK),
    ("ok-x-only-mask", None, CODE, secinfo_bytes(X), OK),
    ("ok-page-type-field-ignored", None, DATA, secinfo_bytes(secinfo_flags(TCS_T, R)), OK),
    ("rbx-not-64-aligned", None, DATA, b"", GP),
    ("rcx-not-4k-aligned", None, lambda w: w.encl.pages[DATA] + 0x100, secinfo_bytes(R), GP),
    ("rcx-not-epc", None, lambda w: KERNEL_NONEPC, secinfo_bytes(R), Pf("rcx", PF_KERNEL_W)),
    ("secinfo-reserved-flag-bit6", None, DATA, secinfo_bytes(R | 0x40), GP),
    ("secinfo-reserved-flag-bit16", None, DATA, secinfo_bytes(R | 1 << 16), GP),
    ("secinfo-reserved-byte", None, DATA, secinfo_bytes(R)[:8] + b"\x01" + bytes(55), GP),
    ("secinfo-w-without-r", None, DATA, secinfo_bytes(W), GP),
    ("target-not-valid", None, _free, secinfo_bytes(R), Pf("rcx", PF_KERNEL_W)),
    ("target-pending", lambda w: w.kit.eaug(w.encl, DYN), DYN, secinfo_bytes(R), Rax(20)),
    ("target-modified", lambda w: w.trimmed(DATA, accept=False), DATA, secinfo_bytes(R), Rax(20)),
    ("target-modified-tcs", lambda w: w.made_tcs(DYN), DYN, secinfo_bytes(R), Rax(20)),
    ("target-tcs", None, tcs_at(0), secinfo_bytes(R), Pf("rcx", PF_KERNEL_W)),
    ("target-accepted-trim", lambda w: w.trimmed(DATA, accept=True), DATA, secinfo_bytes(R), Pf("rcx", PF_KERNEL_W)),
    ("target-secs", None, lambda w: w.encl.secs_pa, secinfo_bytes(R), Pf("rcx", PF_KERNEL_W)),
    ("target-va", None, lambda w: w.va_pa, secinfo_bytes(R), Pf("rcx", PF_KERNEL_W)),
    ("enclave-not-initialized", None, ALIEN, secinfo_bytes(R), GP),
    # Order: SECINFO checks come before the target's VALID check.
    ("secinfo-before-valid", None, _free, secinfo_bytes(W), GP),
]

EMODT_ROWS: list[ModRow] = [
    ("ok-reg-to-trim", None, DATA, secinfo_bytes(secinfo_flags(TRIM)), OK),
    ("ok-reg-to-tcs", None, DATA, secinfo_bytes(secinfo_flags(TCS_T)), OK),
    ("ok-tcs-to-trim", None, tcs_at(2), secinfo_bytes(secinfo_flags(TRIM)), OK),
    ("ok-restricted-page-loses-pr", lambda w: w.restricted(DATA, R), DATA, secinfo_bytes(secinfo_flags(TRIM)), OK),
    ("ok-rwx-field-ignored", None, DATA, secinfo_bytes(secinfo_flags(TRIM, R | W | X)), OK),
    ("rbx-not-64-aligned", None, DATA, b"", GP),
    ("rcx-not-4k-aligned", None, lambda w: w.encl.pages[DATA] + 0x100, secinfo_bytes(secinfo_flags(TRIM)), GP),
    ("rcx-not-epc", None, lambda w: KERNEL_NONEPC, secinfo_bytes(secinfo_flags(TRIM)), Pf("rcx", PF_KERNEL_W)),
    ("secinfo-reserved-flag", None, DATA, secinfo_bytes(secinfo_flags(TRIM) | 0x80), GP),
    ("secinfo-reserved-byte", None, DATA, secinfo_bytes(secinfo_flags(TRIM))[:63] + b"\x01", GP),
    ("new-type-reg", None, DATA, secinfo_bytes(secinfo_flags(REG)), GP),
    ("new-type-secs", None, DATA, secinfo_bytes(secinfo_flags(SECS_T)), GP),
    ("new-type-va", None, DATA, secinfo_bytes(secinfo_flags(VA_T)), GP),
    ("new-type-undefined", None, DATA, secinfo_bytes(7 << 8), GP),
    ("target-not-valid", None, _free, secinfo_bytes(secinfo_flags(TRIM)), Pf("rcx", PF_KERNEL_W)),
    ("tcs-to-tcs", None, tcs_at(2), secinfo_bytes(secinfo_flags(TCS_T)), Pf("rcx", PF_KERNEL_W)),
    ("trim-to-trim", lambda w: w.trimmed(DATA, accept=True), DATA, secinfo_bytes(secinfo_flags(TRIM)), Pf("rcx", PF_KERNEL_W)),
    # The type check precedes the PENDING/MODIFIED one: an un-accepted trim still faults.
    ("modified-trim-to-tcs", lambda w: w.trimmed(DATA, accept=False), DATA, secinfo_bytes(secinfo_flags(TCS_T)), Pf("rcx", PF_KERNEL_W)),
    ("target-secs", None, lambda w: w.encl.secs_pa, secinfo_bytes(secinfo_flags(TRIM)), Pf("rcx", PF_KERNEL_W)),
    ("target-va", None, lambda w: w.va_pa, secinfo_bytes(secinfo_flags(TRIM)), Pf("rcx", PF_KERNEL_W)),
    ("target-pending", lambda w: w.kit.eaug(w.encl, DYN), DYN, secinfo_bytes(secinfo_flags(TRIM)), Rax(20)),
    ("target-modified-tcs-to-trim", lambda w: w.made_tcs(DYN), DYN, secinfo_bytes(secinfo_flags(TRIM)), Rax(20)),
    ("enclave-not-initialized", None, ALIEN, secinfo_bytes(secinfo_flags(TRIM)), GP),
    ("secinfo-before-valid", None, _free, secinfo_bytes(secinfo_flags(REG)), GP),
]


def _run_mod(w: World, leaf: EnclsLeaf, setup: Setup, target: Any, secinfo: bytes, expect: Expect) -> tuple[int, EpcmEntry | None]:
    if setup is not None:
        setup(w)
    rcx = _target(w, target)
    rbx = SECINFO_K + 8 if not secinfo else SECINFO_K
    w.kit.kmem.write(SECINFO_K, secinfo or secinfo_bytes(R))
    entry = w.cpu.epcm.get(w.cpu.epc.index(rcx & ~0xFFF))
    run_checked(w, expect, {"rcx": rcx}, lambda: w.kit.encls(leaf, rbx, rcx))
    return rcx, entry


@pytest.mark.parametrize(("case", "setup", "target", "secinfo", "expect"), EMODPR_ROWS, ids=[r[0] for r in EMODPR_ROWS])
def test_emodpr(w: World, case: str, setup: Setup, target: Any, secinfo: bytes, expect: Expect) -> None:
    assert w.kit.etrack(w.encl) == 0  # epoch 1: the recorded tracking reference is visible
    if expect == OK:
        old = w.entry(target).perms
    _, e = _run_mod(w, EnclsLeaf.EMODPR, setup, target, secinfo, expect)
    if expect == OK:
        assert e is not None
        mask = struct.unpack_from("<Q", secinfo)[0] & 7
        assert (e.pt, e.perms, e.pr, e.pending, e.modified) == (REG, old & mask, True, False, False)
        assert e.epoch == w.secs.epoch == 1


@pytest.mark.parametrize(("case", "setup", "target", "secinfo", "expect"), EMODT_ROWS, ids=[r[0] for r in EMODT_ROWS])
def test_emodt(w: World, case: str, setup: Setup, target: Any, secinfo: bytes, expect: Expect) -> None:
    assert w.kit.etrack(w.encl) == 0
    _, e = _run_mod(w, EnclsLeaf.EMODT, setup, target, secinfo, expect)
    if expect == OK:
        assert e is not None
        new_pt = PageType(struct.unpack_from("<Q", secinfo)[0] >> 8 & 0xFF)
        assert (e.pt, e.perms, e.pr, e.pending, e.modified) == (new_pt, 0, False, False, True)
        assert e.epoch == w.secs.epoch


def test_encls_error_codes_set_zf_through_the_register_front(w: World) -> None:
    """EMODPR/EMODT report 20 with ZF=1 (and CF=0) through ENCLS's RAX/RFLAGS."""
    w.kit.eaug(w.encl, DYN)
    for leaf, flags in ((EnclsLeaf.EMODPR, R), (EnclsLeaf.EMODT, secinfo_flags(TRIM))):
        regs = Registers(rax=leaf, rbx=w.kit.secinfo(flags), rcx=w.encl.pages[DYN], rflags=0x2 | CF)
        w.cpu.encls_regs(regs, w.kit.kmem)
        assert regs[Reg.RAX] == SgxError.SGX_PAGE_NOT_MODIFIABLE
        assert regs[Reg.RFLAGS] & (ZF | CF) == ZF


# ================================================================================================
# EACCEPT (ENCLU 05h): RBX = SECINFO (in the enclave), RCX = page; executed by LP 0 through TCS 0
# ================================================================================================

# (id, set-up, rbx, rcx, SECINFO written at rbx (None: leave the page alone), expect)
EnclRow = tuple[str, Setup, int, int, "int | bytes | None", Expect]

ACCEPT_PENDING = secinfo_flags(REG, R | W, PENDING)
ACCEPT_TRIM = secinfo_flags(TRIM, 0, MODIFIED)
ACCEPT_TCS = secinfo_flags(TCS_T, 0, MODIFIED)


def _aug(w: World) -> None:
    w.kit.eaug(w.encl, DYN)


EACCEPT_ROWS: list[EnclRow] = [
    ("ok-pending", _aug, SECINFO, DYN, ACCEPT_PENDING, OK),
    ("ok-pending-with-pr-bit", _aug, SECINFO, DYN, ACCEPT_PENDING | PR, OK),
    ("ok-restriction", lambda w: w.restricted(DATA, R), SECINFO, DATA, secinfo_flags(REG, R, PR), OK),
    ("ok-pr-on-unrestricted-page", None, SECINFO, DATA, secinfo_flags(REG, R | W, PR), OK),
    ("ok-trim", lambda w: w.trimmed(DATA, accept=False), SECINFO, DATA, ACCEPT_TRIM, OK),
    ("ok-tcs", lambda w: w.made_tcs(DYN), SECINFO, DYN, ACCEPT_TCS, OK),
    ("ok-secinfo-not-at-page-start", _aug, SECINFO + 0x40, DYN, ACCEPT_PENDING, OK),
    # 1. SECINFO operand: alignment, ELRANGE, EPC.
    ("rbx-not-64-aligned", _aug, SECINFO + 8, DYN, None, GP),
    ("rbx-outside-elrange", _aug, OUTSIDE, DYN, None, GP),
    ("rbx-not-epc", _aug, UNBACKED, DYN, None, Pf("rbx", PF_USER_R)),
    ("rbx-not-mapped", lambda w: (_aug(w), w.kit.umem.set_pte(SECINFO, 0)), SECINFO, DYN, None, Pf("rbx", 0x4)),
    # 2. The SECINFO page's EPCM entry.
    ("secinfo-page-not-valid", lambda w: w.map_raw(UNBACKED, w.kit.alloc()), UNBACKED, DATA, None, Pf("rbx", PF_USER_R)),
    ("secinfo-page-not-readable", None, XO, DATA, None, Pf("rbx", PF_USER_R)),
    ("secinfo-page-pending", lambda w: w.kit.eaug(w.encl, DYN2), DYN2, DATA, None, Pf("rbx", PF_USER_R)),
    ("secinfo-page-modified", lambda w: w.trimmed(SECINFO, accept=False), SECINFO, DATA, None, Pf("rbx", PF_USER_R)),
    ("secinfo-page-blocked", lambda w: w.blocked(SECINFO), SECINFO, DATA, ACCEPT_PENDING, Pf("rbx", PF_USER_R)),
    ("secinfo-page-tcs", None, tcs_at(2), DATA, None, Pf("rbx", PF_USER_R)),
    ("secinfo-page-other-enclave", None, ALIEN, DATA, None, Pf("rbx", PF_USER_R)),
    ("secinfo-page-aliased", None, ALIAS, DATA, None, Pf("rbx", PF_USER_R)),
    # 3. SECINFO reserved bits and bytes.
    ("secinfo-reserved-flag", _aug, SECINFO, DYN, ACCEPT_PENDING | 0x40, GP),
    ("secinfo-reserved-high", _aug, SECINFO, DYN, ACCEPT_PENDING | 1 << 40, GP),
    ("secinfo-reserved-byte", _aug, SECINFO, DYN, secinfo_bytes(ACCEPT_PENDING)[:32] + b"\x01" + bytes(31), GP),
    # 4. Target operand: alignment, ELRANGE, EPC, paging.
    ("rcx-not-4k-aligned", _aug, SECINFO, DYN + 0x40, ACCEPT_PENDING, GP),
    ("rcx-outside-elrange", _aug, SECINFO, OUTSIDE, ACCEPT_PENDING, GP),
    ("rcx-not-epc", None, SECINFO, UNBACKED, ACCEPT_PENDING, Pf("rcx", PF_USER_R)),
    # Not present: an ordinary #PF (U, read); Linux EAUGs the page and the EACCEPT re-executes.
    ("rcx-not-mapped", lambda w: w.kit.umem.set_pte(DYN, 0), SECINFO, DYN, ACCEPT_PENDING, Pf("rcx", 0x4)),
    # 5. The requested combination.
    ("reg-without-pending-or-pr", _aug, SECINFO, DYN, secinfo_flags(REG, R | W), GP),
    ("reg-with-modified", _aug, SECINFO, DYN, ACCEPT_PENDING | MODIFIED, GP),
    ("trim-without-modified", lambda w: w.trimmed(DATA, accept=False), SECINFO, DATA, secinfo_flags(TRIM), GP),
    ("trim-with-pending", lambda w: w.trimmed(DATA, accept=False), SECINFO, DATA, ACCEPT_TRIM | PENDING, GP),
    ("trim-with-pr", lambda w: w.trimmed(DATA, accept=False), SECINFO, DATA, ACCEPT_TRIM | PR, GP),
    ("tcs-with-pending", lambda w: w.made_tcs(DYN), SECINFO, DYN, ACCEPT_TCS | PENDING, GP),
    ("type-secs", None, SECINFO, DATA, secinfo_flags(SECS_T, 0, MODIFIED), GP),
    ("type-va", None, SECINFO, DATA, secinfo_flags(VA_T, 0, MODIFIED), GP),
    # 6. The target's EPCM entry.
    ("target-not-valid", lambda w: w.map_raw(DYN, w.kit.alloc()), SECINFO, DYN, ACCEPT_PENDING, Pf("rcx", PF_USER_R)),
    ("target-blocked", lambda w: (_aug(w), w.blocked(DYN)), SECINFO, DYN, ACCEPT_PENDING, Pf("rcx", PF_USER_R)),
    ("target-secs", None, SECINFO, SECS_MAP, ACCEPT_TRIM, Pf("rcx", PF_USER_R)),
    ("target-va", None, SECINFO, VA_MAP, ACCEPT_TRIM, Pf("rcx", PF_USER_R)),
    ("target-other-enclave", None, SECINFO, ALIEN, secinfo_flags(REG, R | W, PR), Pf("rcx", PF_USER_R)),
    # 8. Compare with the EPCM -> 19.
    ("wrong-rwx", _aug, SECINFO, DYN, secinfo_flags(REG, R, PENDING), Rax(19)),
    ("wrong-rwx-x", _aug, SECINFO, DYN, secinfo_flags(REG, R | W | X, PENDING), Rax(19)),
    ("pending-not-set", None, SECINFO, DATA, ACCEPT_PENDING, Rax(19)),
    ("pending-missing", _aug, SECINFO, DYN, secinfo_flags(REG, R | W, PR), Rax(19)),
    ("type-differs", lambda w: w.trimmed(DATA, accept=False), SECINFO, DATA, ACCEPT_TCS, Rax(19)),
    ("modified-not-set", None, SECINFO, tcs_at(2), ACCEPT_TCS, Rax(19)),
    ("already-accepted-trim", lambda w: w.trimmed(DATA, accept=True), SECINFO, DATA, ACCEPT_TRIM, Rax(19)),
    ("address-differs", None, SECINFO, ALIAS, secinfo_flags(REG, R | W, PR), Rax(19)),
    # 9. Tracking -> 11.
    ("restriction-not-tracked", lambda w: w.restricted(DATA, R, track=False), SECINFO, DATA, secinfo_flags(REG, R, PR), Rax(11)),
    ("trim-not-tracked", lambda w: w.kit.emodt(w.encl, DATA, TRIM), SECINFO, DATA, ACCEPT_TRIM, Rax(11)),
    # 10. TCS contents.
    ("tcs-reserved-byte", lambda w: w.made_tcs(DYN, image=tcs_image(DYN2 - BASE)[:100] + b"\x01" + bytes(3995)), SECINFO, DYN, ACCEPT_TCS, GP),
    ("tcs-cet-field", lambda w: w.made_tcs(DYN, image=tcs_image(DYN2 - BASE)[:80] + b"\x01" + bytes(4015)), SECINFO, DYN, ACCEPT_TCS, GP),
    ("tcs-dbgoptin", lambda w: w.made_tcs(DYN, image=tcs_image(DYN2 - BASE, flags=1)), SECINFO, DYN, ACCEPT_TCS, GP),
    ("tcs-cssa-ge-nssa", lambda w: w.made_tcs(DYN, image=tcs_image(DYN2 - BASE, cssa=1, nssa=1)), SECINFO, DYN, ACCEPT_TCS, GP),
    ("tcs-nssa-zero", lambda w: w.made_tcs(DYN, image=tcs_image(DYN2 - BASE, nssa=0)), SECINFO, DYN, ACCEPT_TCS, GP),
    ("tcs-aep", lambda w: w.made_tcs(DYN, image=tcs_image(DYN2 - BASE, aep=0x1234)), SECINFO, DYN, ACCEPT_TCS, GP),
    ("tcs-state", lambda w: w.made_tcs(DYN, image=tcs_image(DYN2 - BASE, state=1)), SECINFO, DYN, ACCEPT_TCS, GP),
    # Orders the SDM fixes.
    ("secinfo-page-fault-before-reserved", None, XO, DATA, ACCEPT_PENDING | 0x40, Pf("rbx", PF_USER_R)),
    ("reserved-before-rcx-not-epc", None, SECINFO, UNBACKED, ACCEPT_PENDING | 0x40, GP),
    ("combination-before-target-fault", lambda w: w.map_raw(DYN, w.kit.alloc()), SECINFO, DYN, secinfo_flags(REG, R | W), GP),
    ("mismatch-before-tracking", lambda w: w.restricted(DATA, R, track=False), SECINFO, DATA, secinfo_flags(REG, R | W, PR), Rax(19)),
    ("tracking-before-tcs-contents", lambda w: (w.augmented(DYN, tcs_image(0, state=1)), w.kit.emodt(w.encl, DYN, TCS_T)), SECINFO, DYN, ACCEPT_TCS, Rax(11)),
]


def _put_secinfo(w: World, rbx: int, secinfo: int | bytes | None) -> None:
    if secinfo is None:
        return
    data = secinfo if isinstance(secinfo, bytes) else secinfo_bytes(secinfo)
    w.poke(rbx & ~0x3F, data)  # unaligned rows: the bytes sit on the 64-byte line


def _check_enclu(
    w: World, regs: Registers, expect: Expect, leaf: EncluLeaf, rbx: int, rcx: int, rdx: int = 0
) -> None:
    """ENCLU `leaf` on LP 0 with the operands loaded; error codes complete, faults leave RIP."""
    regs[Reg.RAX], regs[Reg.RBX], regs[Reg.RCX], regs[Reg.RDX] = leaf, rbx, rcx, rdx
    saved = list(regs.values)

    def run() -> int:
        w.cpu.enclu(w.cpu.lp(0), regs, w.kit.umem)
        return regs[Reg.RAX]

    run_checked(w, expect, {"rbx": rbx, "rcx": rcx, "rdx": rdx}, run)
    if isinstance(expect, Rax):
        assert regs[Reg.RIP] == saved[Reg.RIP] + 3
        assert regs[Reg.RFLAGS] & (ZF | CF) == (ZF if expect.code else 0)
    else:
        assert regs.values == saved  # a fault leaves RIP on the ENCLU and every register as it was


@pytest.mark.parametrize(("case", "setup", "rbx", "rcx", "secinfo", "expect"), EACCEPT_ROWS, ids=[r[0] for r in EACCEPT_ROWS])
def test_eaccept(w: World, case: str, setup: Setup, rbx: int, rcx: int, secinfo: int | bytes | None, expect: Expect) -> None:
    if setup is not None:
        setup(w)
    regs = w.enter(0)
    _put_secinfo(w, rbx, secinfo)
    regs[Reg.RFLAGS] |= CF
    target = w.index_of(rcx & ~0xFFF)
    _check_enclu(w, regs, expect, EncluLeaf.EACCEPT, rbx, rcx)
    if expect == OK:
        e = w.cpu.epcm[target]
        assert (e.pending, e.modified, e.pr) == (False, False, False)
        assert e.perms == (secinfo if isinstance(secinfo, int) else 0) & 7


def test_eaccept_from_a_thread_that_entered_before_etrack_is_not_tracked(w: World) -> None:
    """The caller counts: it entered before the ETRACK, so the cycle cannot be complete."""
    regs = w.enter(0)
    w.restricted(DATA, R)
    w.poke(SECINFO, secinfo_bytes(secinfo_flags(REG, R, PR)))
    assert w.enclu(regs, EncluLeaf.EACCEPT, 0, SECINFO, DATA) == SgxError.SGX_NOT_TRACKED
    assert w.entry(DATA).pr
    w.exit(regs, 0)
    regs = w.enter(0)
    assert w.enclu(regs, EncluLeaf.EACCEPT, 0, SECINFO, DATA) == 0
    assert not w.entry(DATA).pr


def test_eaccept_pending_needs_no_tracking(w: World) -> None:
    """EAUG records no tracking reference: EACCEPT right after it, by a thread already inside."""
    regs = w.enter(0)
    w.kit.eaug(w.encl, DYN)
    assert w.entry(DYN).epoch == TRACKED
    w.poke(SECINFO, secinfo_bytes(ACCEPT_PENDING))
    assert w.enclu(regs, EncluLeaf.EACCEPT, 0, SECINFO, DYN) == 0


def test_eaccept_in_a_32bit_enclave_checks_the_tcs_limits() -> None:
    """FSLIMIT/GSLIMIT low 12 bits must be FFFh in a 32-bit enclave; the check is reached
    through the leaf directly (the emulator cannot enter 32-bit enclaves)."""
    from sgxemu.hw.enclu import eaccept as mod

    world = World()
    world.secs.attributes &= ~Attribute.MODE64BIT
    world.poke(DATA, tcs_image(0, fslimit=0x1000))
    with pytest.raises(GeneralProtection):
        mod._check_tcs(world.cpu, world.index_of(DATA), world.secs)
    world.poke(DATA, tcs_image(0, fslimit=0x1FFF))
    mod._check_tcs(world.cpu, world.index_of(DATA), world.secs)
    world.secs.attributes |= Attribute.MODE64BIT


# ================================================================================================
# EACCEPTCOPY (ENCLU 07h): RBX = SECINFO, RCX = destination (pending), RDX = source
# ================================================================================================

CopyRow = tuple[str, Setup, int, int, int, "int | bytes | None", Expect]
COPY_RW = secinfo_flags(REG, R | W)

EACCEPTCOPY_ROWS: list[CopyRow] = [
    ("ok-rw", _aug, SECINFO, DYN, DATA, COPY_RW, OK),
    ("ok-r-x", _aug, SECINFO, DYN, DATA, secinfo_flags(REG, R | X), OK),
    ("ok-r", _aug, SECINFO, DYN, DATA, secinfo_flags(REG, R), OK),
    ("ok-rwx", _aug, SECINFO, DYN, DATA, secinfo_flags(REG, R | W | X), OK),
    ("ok-x-only", _aug, SECINFO, DYN, DATA, secinfo_flags(REG, X), OK),
    ("ok-state-bits-ignored", _aug, SECINFO, DYN, DATA, COPY_RW | PENDING | PR, OK),
    ("ok-source-read-only", _aug, SECINFO, DYN, RO, COPY_RW, OK),
    # 1. Alignment, ELRANGE, EPC.
    ("rbx-not-64-aligned", _aug, SECINFO + 4, DYN, DATA, None, GP),
    ("rcx-not-4k-aligned", _aug, SECINFO, DYN + 64, DATA, COPY_RW, GP),
    ("rdx-not-4k-aligned", _aug, SECINFO, DYN, DATA + 64, COPY_RW, GP),
    ("rbx-outside-elrange", _aug, OUTSIDE, DYN, DATA, None, GP),
    ("rcx-outside-elrange", _aug, SECINFO, OUTSIDE, DATA, COPY_RW, GP),
    ("rdx-outside-elrange", _aug, SECINFO, DYN, OUTSIDE, COPY_RW, GP),
    ("rbx-not-epc", _aug, UNBACKED, DYN, DATA, None, Pf("rbx", PF_USER_R)),
    ("rcx-not-epc", None, SECINFO, UNBACKED, DATA, COPY_RW, Pf("rcx", PF_USER_W)),
    ("rdx-not-epc", _aug, SECINFO, DYN, UNBACKED, COPY_RW, Pf("rdx", PF_USER_R)),
    ("rcx-not-mapped", lambda w: w.kit.umem.set_pte(DYN, 0), SECINFO, DYN, DATA, COPY_RW, Pf("rcx", 0x6)),
    ("rcx-mapped-read-only", lambda w: (_aug(w), w.kit.map(w.encl, DYN, w.encl.pages[DYN], write=False)), SECINFO, DYN, DATA, COPY_RW, Pf("rcx", 0x7)),
    # 2. The SECINFO page.
    ("secinfo-page-not-readable", _aug, XO, DYN, DATA, None, Pf("rbx", PF_USER_R)),
    ("secinfo-page-pending", lambda w: (_aug(w), w.kit.eaug(w.encl, DYN2)), DYN2, DYN, DATA, None, Pf("rbx", PF_USER_R)),
    ("secinfo-page-other-enclave", _aug, ALIEN, DYN, DATA, None, Pf("rbx", PF_USER_R)),
    ("secinfo-page-aliased", _aug, ALIAS, DYN, DATA, None, Pf("rbx", PF_USER_R)),
    # 3. SECINFO contents.
    ("secinfo-reserved-flag", _aug, SECINFO, DYN, DATA, COPY_RW | 0x80, GP),
    ("secinfo-reserved-byte", _aug, SECINFO, DYN, DATA, secinfo_bytes(COPY_RW)[:63] + b"\x02", GP),
    ("secinfo-w-without-r", _aug, SECINFO, DYN, DATA, secinfo_flags(REG, W), GP),
    ("secinfo-type-tcs", _aug, SECINFO, DYN, DATA, secinfo_flags(TCS_T), GP),
    ("secinfo-type-trim", _aug, SECINFO, DYN, DATA, secinfo_flags(TRIM), GP),
    # 4. The source page.
    ("source-not-valid", lambda w: (_aug(w), w.map_raw(DYN2, w.kit.alloc())), SECINFO, DYN, DYN2, COPY_RW, Pf("rdx", PF_USER_R)),
    ("source-not-readable", _aug, SECINFO, DYN, XO, COPY_RW, Pf("rdx", PF_USER_R)),
    ("source-pending", lambda w: (_aug(w), w.kit.eaug(w.encl, DYN2)), SECINFO, DYN, DYN2, COPY_RW, Pf("rdx", PF_USER_R)),
    ("source-modified", lambda w: (_aug(w), w.trimmed(RO, accept=False)), SECINFO, DYN, RO, COPY_RW, Pf("rdx", PF_USER_R)),
    ("source-blocked", lambda w: (_aug(w), w.blocked(DATA)), SECINFO, DYN, DATA, COPY_RW, Pf("rdx", PF_USER_R)),
    ("source-tcs", _aug, SECINFO, DYN, tcs_at(2), COPY_RW, Pf("rdx", PF_USER_R)),
    ("source-other-enclave", _aug, SECINFO, DYN, ALIEN, COPY_RW, Pf("rdx", PF_USER_R)),
    ("source-aliased", _aug, SECINFO, DYN, ALIAS, COPY_RW, Pf("rdx", PF_USER_R)),
    # 5. and 7. The destination: errors, not faults.
    ("dest-not-pending", None, SECINFO, DATA, RO, COPY_RW, Rax(19)),
    ("dest-not-valid", lambda w: w.map_raw(DYN, w.kit.alloc()), SECINFO, DYN, DATA, COPY_RW, Rax(19)),
    ("dest-modified", lambda w: w.trimmed(RO, accept=False), SECINFO, RO, DATA, COPY_RW, Rax(19)),
    ("dest-blocked", lambda w: (_aug(w), w.blocked(DYN)), SECINFO, DYN, DATA, COPY_RW, Rax(19)),
    ("dest-tcs", None, SECINFO, tcs_at(2), DATA, COPY_RW, Rax(19)),
    ("dest-secs", None, SECINFO, SECS_MAP, DATA, COPY_RW, Rax(19)),
    ("dest-other-enclave", None, SECINFO, ALIEN, DATA, COPY_RW, Rax(19)),
    ("dest-not-rw", lambda w: (_aug(w), setattr(w.entry(DYN), "x", True)), SECINFO, DYN, DATA, COPY_RW, Rax(19)),
    ("dest-address-differs", lambda w: (_aug(w), w.map_raw(ALIAS, w.encl.pages[DYN])), SECINFO, ALIAS, DATA, COPY_RW, Rax(19)),
    # Orders the SDM fixes.
    ("rdx-not-epc-before-secinfo-page", _aug, XO, DYN, UNBACKED, None, Pf("rdx", PF_USER_R)),
    ("secinfo-w-without-r-before-source", _aug, SECINFO, DYN, XO, secinfo_flags(REG, W), GP),
    ("source-fault-before-dest-error", None, SECINFO, DATA, XO, COPY_RW, Pf("rdx", PF_USER_R)),
]


@pytest.mark.parametrize(("case", "setup", "rbx", "rcx", "rdx", "secinfo", "expect"), EACCEPTCOPY_ROWS, ids=[r[0] for r in EACCEPTCOPY_ROWS])
def test_eacceptcopy(w: World, case: str, setup: Setup, rbx: int, rcx: int, rdx: int, secinfo: int | bytes | None, expect: Expect) -> None:
    if setup is not None:
        setup(w)
    regs = w.enter(0)
    _put_secinfo(w, rbx, secinfo)
    source = w.page(rdx) if expect == OK else b""
    _check_enclu(w, regs, expect, EncluLeaf.EACCEPTCOPY, rbx, rcx, rdx)
    if expect == OK:
        assert isinstance(secinfo, int)
        e = w.entry(rcx)
        assert (e.pt, e.perms, e.pending, e.modified, e.pr) == (REG, secinfo & 7, False, False, False)
        assert w.page(rcx) == source == w.page(rdx)


# ================================================================================================
# EMODPE (ENCLU 06h): RBX = SECINFO (RWX OR-mask), RCX = page
# ================================================================================================

EMODPE_ROWS: list[EnclRow] = [
    ("ok-r-to-rw", None, SECINFO, RO, R | W, OK),
    ("ok-r-to-rx", None, SECINFO, RO, X, OK),
    ("ok-x-to-rwx", None, SECINFO, XO, R | W, OK),
    ("ok-no-extension", None, SECINFO, DATA, 0, OK),
    ("ok-type-and-state-bits-ignored", None, SECINFO, RO, secinfo_flags(TRIM, W, PENDING | MODIFIED | PR), OK),
    ("ok-restricted-page", lambda w: w.restricted(DATA, R, track=False), SECINFO, DATA, W, OK),
    # 1. Alignment, ELRANGE, EPC.
    ("rbx-not-64-aligned", None, SECINFO + 32, RO, None, GP),
    ("rcx-not-4k-aligned", None, SECINFO, RO + 8, W, GP),
    ("rbx-outside-elrange", None, OUTSIDE, RO, None, GP),
    ("rcx-outside-elrange", None, SECINFO, OUTSIDE, W, GP),
    ("rbx-not-epc", None, UNBACKED, RO, None, Pf("rbx", PF_USER_R)),
    ("rcx-not-epc", None, SECINFO, UNBACKED, W, Pf("rcx", PF_USER_R)),
    # 2. The SECINFO page.
    ("secinfo-page-not-readable", None, XO, RO, None, Pf("rbx", PF_USER_R)),
    ("secinfo-page-pending", lambda w: w.kit.eaug(w.encl, DYN), DYN, RO, None, Pf("rbx", PF_USER_R)),
    ("secinfo-page-blocked", lambda w: w.blocked(SECINFO), SECINFO, RO, W, Pf("rbx", PF_USER_R)),
    ("secinfo-page-other-enclave", None, ALIEN, RO, None, Pf("rbx", PF_USER_R)),
    # 3. SECINFO reserved.
    ("secinfo-reserved-flag", None, SECINFO, RO, W | 0x40, GP),
    ("secinfo-reserved-byte", None, SECINFO, RO, secinfo_bytes(W)[:8] + b"\x10" + bytes(55), GP),
    # 4. and 6. The target page.
    ("target-not-valid", lambda w: w.map_raw(DYN, w.kit.alloc()), SECINFO, DYN, W, Pf("rcx", PF_USER_R)),
    ("target-pending", lambda w: w.kit.eaug(w.encl, DYN), SECINFO, DYN, X, Pf("rcx", PF_USER_R)),
    ("target-modified", lambda w: w.trimmed(RO, accept=False), SECINFO, RO, W, Pf("rcx", PF_USER_R)),
    ("target-accepted-trim", lambda w: w.trimmed(RO, accept=True), SECINFO, RO, W, Pf("rcx", PF_USER_R)),
    ("target-blocked", lambda w: w.blocked(RO), SECINFO, RO, W, Pf("rcx", PF_USER_R)),
    ("target-tcs", None, SECINFO, tcs_at(2), W, Pf("rcx", PF_USER_R)),
    ("target-other-enclave", None, SECINFO, ALIEN, W, Pf("rcx", PF_USER_R)),
    ("target-aliased", None, SECINFO, ALIAS, X, Pf("rcx", PF_USER_R)),
    # 7. W without R on a page without R.
    ("w-without-r-on-unreadable-page", None, SECINFO, XO, W, GP),
    # Orders.
    ("target-fault-before-w-without-r", lambda w: w.blocked(XO), SECINFO, XO, W, Pf("rcx", PF_USER_R)),
    ("rcx-not-epc-before-secinfo-page", None, XO, UNBACKED, None, Pf("rcx", PF_USER_R)),
]


@pytest.mark.parametrize(("case", "setup", "rbx", "rcx", "secinfo", "expect"), EMODPE_ROWS, ids=[r[0] for r in EMODPE_ROWS])
def test_emodpe(w: World, case: str, setup: Setup, rbx: int, rcx: int, secinfo: int | bytes | None, expect: Expect) -> None:
    if setup is not None:
        setup(w)
    regs = w.enter(0)
    _put_secinfo(w, rbx, secinfo)
    old = w.entry(rcx).perms if expect == OK else 0
    pr = w.entry(rcx).pr if expect == OK else False
    regs[Reg.RFLAGS] |= ZF | CF
    rip = regs[Reg.RIP]
    if expect == OK:
        w.enclu(regs, EncluLeaf.EMODPE, 0, rbx, rcx)
        assert isinstance(secinfo, int)
        e = w.entry(rcx)
        assert (e.perms, e.pr, e.pending, e.modified) == (old | secinfo & 7, pr, False, False)
        # No error code: RAX keeps the leaf number and RFLAGS is untouched.
        assert regs[Reg.RAX] == EncluLeaf.EMODPE
        assert regs[Reg.RFLAGS] & (ZF | CF) == ZF | CF
        assert regs[Reg.RIP] == rip + 3
    else:
        _check_enclu(w, regs, expect, EncluLeaf.EMODPE, rbx, rcx)


def test_sgx2_enclu_leaves_outside_enclave_mode_are_gp(w: World) -> None:
    regs = Registers()
    for leaf in (EncluLeaf.EACCEPT, EncluLeaf.EMODPE, EncluLeaf.EACCEPTCOPY):
        with pytest.raises(GeneralProtection):
            w.enclu(regs, leaf, 0, SECINFO, DATA, DATA)
