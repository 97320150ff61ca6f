"""The native engine: real x86-64 enclave code on Unicorn against the processor model.

Two enclaves: sgxemu's own test enclave (the selftest protocol), built leaf by leaf into EPC
with a `UserMemory` process, signed and EINITed; and a tiny assembly enclave built here for
what the test enclave cannot do (FS/GS, loops, faulting and illegal instructions, NSSA = 2).
gcc and ld are required.
"""

from __future__ import annotations

import ctypes
import struct
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from sgxemu.arch.constants import (
    EXINFO_SIZE,
    GPRSGX_SIZE,
    PAGE_SIZE,
    EncluLeaf,
    Miscselect,
    PageType,
    SecinfoFlags,
    SgxError,
    Vector,
    secinfo_flags,
)
from sgxemu.arch.structs import Tcs
from sgxemu.exec.engine import EngineExit, ExitKind
from sgxemu.exec.fault_addr import READ, WRITE, FaultDecoder, exact_address
from sgxemu.exec.native import NativeEngine
from sgxemu.exec.vex import Sweeper
from sgxemu.hw.faults import PageFault, SgxUsageError
from sgxemu.hw.processor import Processor
from sgxemu.hw.regs import Reg, xsave_init_legacy
from sgxemu.leafkit import AEP, HOST_RIP, Enclave, LeafKit
from sgxemu.linux.mman import PROT_READ, PROT_WRITE
from sgxemu.linux.usermem import UserMemory
from sgxemu.loader.selftest_layout import PROT_EXEC, EnclaveImage, load_segments
from sgxemu.sign import EnclaveMeasurer, generate_key, mrsigner_of_key, sign_sigstruct
from sgxemu.testenclave import build_test_enclave
from sgxemu.testenclave import protocol as P

R, W, X = int(SecinfoFlags.R), int(SecinfoFlags.W), int(SecinfoFlags.X)
PENDING, MODIFIED, PR = int(SecinfoFlags.PENDING), int(SecinfoFlags.MODIFIED), int(SecinfoFlags.PR)
REG_T, TCS_T, TRIM_T = PageType.PT_REG, PageType.PT_TCS, PageType.PT_TRIM
EXINFO = int(Miscselect.EXINFO)
BASE = 0x10_0000_0000
UBUF = 0x5000_0000  # untrusted op buffer (RW); UBUF + 0x1000 is read-only
USTACK = 0x5100_0000
PF_W_SGX = 0x8007
PF_R_SGX = 0x8005
EXITINFO_VALID = 1 << 31


@pytest.fixture(scope="module")
def key() -> Any:
    return generate_key()


# -- building ----------------------------------------------------------------------------------


@dataclass
class World:
    kit: LeafKit
    umem: UserMemory
    encl: Enclave
    base: int
    engines: list[NativeEngine] = field(default_factory=list)

    @property
    def cpu(self) -> Processor:
        return self.kit.cpu

    def engine(self, lp: int = 0) -> NativeEngine:
        eng = NativeEngine(self.cpu, self.cpu.lp(lp), self.umem)
        self.engines.append(eng)
        return eng

    def index(self, lin: int) -> int:
        return self.cpu.epc.index(self.encl.pages[lin & ~0xFFF])

    def epc_read(self, lin: int, size: int) -> bytes:
        return self.cpu.epc.read(self.index(lin), lin & 0xFFF, size)

    def close(self) -> None:
        for eng in self.engines:
            eng.close()
        self.engines.clear()


def _process(kit: LeafKit) -> None:
    kit.umem.map_anonymous(UBUF, 0x4000, PROT_READ | PROT_WRITE)  # type: ignore[union-attr]
    kit.umem.protect(UBUF + 0x1000, PAGE_SIZE, PROT_READ)  # type: ignore[union-attr]
    kit.umem.map_anonymous(USTACK, 0x4000, PROT_READ | PROT_WRITE)  # type: ignore[union-attr]


def _sign_and_init(kit: LeafKit, encl: Enclave, key: Any, mrenclave: bytes) -> None:
    kit.set_lepubkeyhash(mrsigner_of_key(key))
    sig = sign_sigstruct(
        key, enclavehash=mrenclave, attributes=0, xfrm=0, attributemask=0, xfrmmask=0,
        miscselect=0, miscmask=0, isvprodid=1, isvsvn=1,
    )  # fmt: skip
    assert kit.einit(encl, sig) == 0


def _add(kit: LeafKit, m: EnclaveMeasurer, encl: Enclave, off: int, data: bytes, flags: int,
         prot: int, measure: bool = True) -> None:  # fmt: skip
    lin = encl.base + off
    kit.eadd(encl, lin, data, flags, measure=measure)
    m.add_page(off, data.ljust(PAGE_SIZE, b"\0"), flags, measure)
    kit.map(
        encl, lin, encl.pages[lin], write=bool(prot & PROT_WRITE), execute=bool(prot & PROT_EXEC)
    )


@pytest.fixture(scope="module")
def image() -> EnclaveImage:
    return load_segments(build_test_enclave())


def build_test_world(key: Any, image: EnclaveImage, *, miscselect: int = 0) -> World:
    umem = UserMemory(arena_size=1 << 30)
    kit = LeafKit(Processor(cpus=2, epc_size=8 << 20), umem=umem)
    _process(kit)
    encl = kit.ecreate(BASE, image.encl_size, miscselect=miscselect)
    m = EnclaveMeasurer(image.encl_size)
    for seg in image.segments:
        for off in range(0, seg.size, PAGE_SIZE):
            data = seg.data[off : off + PAGE_SIZE]
            prot = seg.prot if seg.secinfo_flags != secinfo_flags(TCS_T) else PROT_READ | PROT_WRITE
            _add(kit, m, encl, seg.offset + off, data, seg.secinfo_flags, prot, seg.measure)
    _sign_and_init(kit, encl, key, m.mrenclave())
    return World(kit, umem, encl, BASE)


@pytest.fixture
def tw(key: Any, image: EnclaveImage) -> Iterator[World]:
    w = build_test_world(key, image, miscselect=EXINFO)
    yield w
    w.close()


# -- running -------------------------------------------------------------------------------------


def eenter(w: World, eng: NativeEngine, tcs: int, rdi: int = UBUF, rsi: int = 0,
           budget: int | None = None) -> EngineExit:  # fmt: skip
    r = eng.regs
    r[Reg.RAX] = EncluLeaf.EENTER
    r[Reg.RBX] = tcs
    r[Reg.RCX] = AEP
    r[Reg.RIP] = HOST_RIP
    r[Reg.RDI] = rdi
    r[Reg.RSI] = rsi
    r[Reg.RSP] = USTACK + 0x3000
    r[Reg.RBP] = USTACK + 0x3F00
    w.cpu.enclu(eng.lp, r, w.umem)
    return eng.run(budget)


def eresume(w: World, eng: NativeEngine, budget: int | None = None) -> EngineExit:
    """What the AEP does: ENCLU[ERESUME] with the synthetic registers the AEX left."""
    r = eng.regs
    assert r[Reg.RAX] == EncluLeaf.ERESUME and r[Reg.RIP] == AEP
    w.cpu.enclu(eng.lp, r, w.umem)
    return eng.run(budget)


def op_call(w: World, eng: NativeEngine, tcs: int, op: ctypes.Structure) -> tuple[EngineExit, Any]:
    w.umem.write(UBUF, bytes(op))
    ex = eenter(w, eng, tcs)
    return ex, type(op).from_buffer_copy(w.umem.read(UBUF, ctypes.sizeof(op)))


def put_buf(value: int) -> P.encl_op_put_to_buf:
    op = P.encl_op_put_to_buf()
    op.header.type, op.value = P.ENCL_OP_PUT_TO_BUFFER, value
    return op


def get_buf() -> P.encl_op_get_from_buf:
    op = P.encl_op_get_from_buf()
    op.header.type = P.ENCL_OP_GET_FROM_BUFFER
    return op


def put_addr(addr: int, value: int) -> P.encl_op_put_to_addr:
    op = P.encl_op_put_to_addr()
    op.header.type, op.value, op.addr = P.ENCL_OP_PUT_TO_ADDRESS, value, addr
    return op


def get_addr(addr: int) -> P.encl_op_get_from_addr:
    op = P.encl_op_get_from_addr()
    op.header.type, op.addr = P.ENCL_OP_GET_FROM_ADDRESS, addr
    return op


def eaccept_op(addr: int, flags: int) -> P.encl_op_eaccept:
    op = P.encl_op_eaccept()
    op.header.type, op.epc_addr, op.flags = P.ENCL_OP_EACCEPT, addr, flags
    return op


def gprsgx(w: World, frame_lin: int, frame_size: int = PAGE_SIZE) -> dict[str, int]:
    """GPRSGX of the SSA frame at `frame_lin`, read back from the EPC (SDM Table 38-8)."""
    gpr = frame_lin + frame_size - GPRSGX_SIZE
    raw = w.epc_read(gpr, GPRSGX_SIZE)
    names = [r.name for r in Reg][:16] + ["RFLAGS", "RIP", "URSP", "URBP"]
    out = dict(zip(names, struct.unpack_from("<20Q", raw), strict=True))
    out["EXITINFO"] = struct.unpack_from("<I", raw, 160)[0]
    out["FSBASE"], out["GSBASE"] = struct.unpack_from("<QQ", raw, 168)
    maddr, errcd, _ = struct.unpack("<QII", w.epc_read(gpr - EXINFO_SIZE, EXINFO_SIZE))
    out["MADDR"], out["ERRCD"] = maddr, errcd
    return out


def cssa(w: World, tcs: int) -> int:
    return struct.unpack("<I", w.epc_read(tcs + 24, 4))[0]


def _check_pf(ex: EngineExit, addr: int, code: int) -> None:
    assert ex.kind is ExitKind.AEX
    assert isinstance(ex.event, PageFault), ex.event
    assert (ex.event.vector, ex.event.error_code, ex.event.addr) == (Vector.PF, code, addr)


# -- the selftest protocol, natively ------------------------------------------------------------------


def test_native_put_get_buffer_on_both_tcs(tw: World) -> None:
    e0, e1 = tw.engine(0), tw.engine(1)
    tcs1, tcs2 = BASE, BASE + PAGE_SIZE
    ex, _ = op_call(tw, e0, tcs1, put_buf(0x1122334455667788))
    assert ex.kind is ExitKind.EEXIT and ex.event is None
    assert ex.instructions == 0  # counted only for runs with a budget
    # EEXIT: RIP = RBX (the return address the enclave kept), RCX = AEP, RAX = 4 (SDM EEXIT).
    r = e0.regs
    assert (r[Reg.RIP], r[Reg.RCX], r[Reg.RAX]) == (HOST_RIP + 3, AEP, EncluLeaf.EEXIT)
    assert not e0.lp.enclave_mode and cssa(tw, tcs1) == 0
    ex, out = op_call(tw, e1, tcs2, get_buf())
    assert ex.kind is ExitKind.EEXIT and out.value == 0x1122334455667788
    ex, out = op_call(tw, e0, tcs2, put_buf(7))
    ex, out = op_call(tw, e1, tcs1, get_buf())
    assert out.value == 7


@pytest.mark.parametrize("which", [0, 1])
def test_native_put_get_address_and_nop(tw: World, image: EnclaveImage, which: int) -> None:
    eng = tw.engine(which)
    tcs = BASE + which * PAGE_SIZE
    buffer2 = BASE + image.data_offset + PAGE_SIZE  # encl_buffer's second page
    ex, _ = op_call(tw, eng, tcs, put_addr(buffer2 + 8, 0xA5A5))
    assert ex.kind is ExitKind.EEXIT
    assert tw.epc_read(buffer2 + 8, 8) == struct.pack("<Q", 0xA5A5)
    ex, out = op_call(tw, eng, tcs, get_addr(buffer2 + 8))
    assert out.value == 0xA5A5
    ex, _ = op_call(tw, eng, tcs, put_addr(UBUF + 0x800, 0xBEEF))  # untrusted store
    assert struct.unpack("<Q", tw.umem.read(UBUF + 0x800, 8))[0] == 0xBEEF
    ex, out = op_call(tw, eng, tcs, get_addr(UBUF + 0x800))
    assert out.value == 0xBEEF
    nop = P.encl_op_header()
    nop.type = P.ENCL_OP_NOP
    ex, _ = op_call(tw, eng, tcs, nop)
    assert ex.kind is ExitKind.EEXIT
    nop.type = P.ENCL_OP_MAX + 3  # ignored: the stub just EEXITs
    ex, _ = op_call(tw, eng, tcs, nop)
    assert ex.kind is ExitKind.EEXIT


def test_native_eaccept_and_emodpe(tw: World) -> None:
    eng = tw.engine()
    dyn = BASE + 0xC000
    tw.kit.eaug(tw.encl, dyn)
    # The page is PENDING: a store faults with the SGX bit (selftest: 0x8007).
    ex, _ = op_call(tw, eng, BASE, put_addr(dyn + 0x10, 1))
    _check_pf(ex, dyn + 0x10, PF_W_SGX)
    # TCS 1 now has CSSA = NSSA = 1; the rest runs on TCS 2.
    tw2, tcs2 = tw, BASE + PAGE_SIZE
    ex, out = op_call(tw2, eng, tcs2, eaccept_op(dyn, secinfo_flags(REG_T, R | W, PENDING)))
    assert ex.kind is ExitKind.EEXIT and out.ret == 0
    ex, _ = op_call(tw2, eng, tcs2, put_addr(dyn + 0x10, 0x77))
    assert ex.kind is ExitKind.EEXIT and tw.epc_read(dyn + 0x10, 8) == struct.pack("<Q", 0x77)
    # EACCEPT again: nothing pending any more -> SGX_PAGE_ATTRIBUTES_MISMATCH.
    ex, out = op_call(tw2, eng, tcs2, eaccept_op(dyn, secinfo_flags(REG_T, R | W, PENDING)))
    assert out.ret == SgxError.SGX_PAGE_ATTRIBUTES_MISMATCH
    op = P.encl_op_emodpe()
    op.header.type, op.epc_addr, op.flags = P.ENCL_OP_EMODPE, dyn, secinfo_flags(REG_T, X)
    ex, _ = op_call(tw2, eng, tcs2, op)
    assert ex.kind is ExitKind.EEXIT
    e = tw.cpu.epcm[tw.index(dyn)]
    assert (e.r, e.w, e.x) == (True, True, True)


def test_native_a_faulting_enclu_leaf_is_an_aex_at_the_enclu(
    tw: World, image: EnclaveImage
) -> None:
    eng = tw.engine()
    hole = BASE + 0xF000  # inside ELRANGE, no page: EACCEPT raises #PF(RCX) (SDM EACCEPT)
    ex, _ = op_call(tw, eng, BASE, eaccept_op(hole, secinfo_flags(REG_T, R | W, PENDING)))
    assert ex.kind is ExitKind.AEX and isinstance(ex.event, PageFault)
    assert ex.event.addr == hole
    g = gprsgx(tw, BASE + image.symbol("encl_ssa_tcs1"))
    assert tw.epc_read(g["RIP"], 3) == b"\x0f\x01\xd7"  # RIP at the ENCLU
    assert g["RAX"] == EncluLeaf.EACCEPT and g["RCX"] == hole  # registers as before the leaf
    assert (g["MADDR"], g["ERRCD"]) == (hole, ex.event.error_code)


@pytest.mark.parametrize("which", [0, 1])
def test_native_init_tcs_page_and_enter_through_it(
    tw: World, image: EnclaveImage, which: int
) -> None:
    """The selftest's dynamic TCS: EAUG, EACCEPT, INIT_TCS_PAGE, EMODT(TCS), EACCEPT, EENTER."""
    eng = tw.engine(which)
    kit = tw.kit
    host = BASE + which * PAGE_SIZE  # the static TCS running the ops
    stack, tcs, ssa = BASE + 0xB000, BASE + 0xC000, BASE + 0xD000
    for page in (stack, tcs, ssa):
        kit.eaug(tw.encl, page)
        ex, out = op_call(tw, eng, host, eaccept_op(page, secinfo_flags(REG_T, R | W, PENDING)))
        assert ex.kind is ExitKind.EEXIT and out.ret == 0
    op = P.encl_op_init_tcs_page()
    op.header.type = P.ENCL_OP_INIT_TCS_PAGE
    op.tcs_page, op.ssa, op.entry = tcs, ssa - BASE, image.symbol("encl_dyn_entry")
    ex, _ = op_call(tw, eng, host, op)
    assert ex.kind is ExitKind.EEXIT
    raw = tw.epc_read(tcs, 64)
    assert struct.unpack_from("<QQQIIQ", raw) == (0, 0, ssa - BASE, 0, 1, op.entry)
    assert kit.emodt(tw.encl, tcs, TCS_T) == 0
    assert kit.etrack(tw.encl) == 0
    ex, out = op_call(tw, eng, host, eaccept_op(tcs, secinfo_flags(TCS_T, 0, MODIFIED)))
    assert out.ret == 0
    # The new thread runs on the stack page below its TCS.
    ex, _ = op_call(tw, eng, tcs, put_buf(0xD1D1))
    assert ex.kind is ExitKind.EEXIT
    ex, out = op_call(tw, eng, BASE + (1 - which) * PAGE_SIZE, get_buf())
    assert out.value == 0xD1D1


# -- faults, AEX, ERESUME -------------------------------------------------------------------------


def test_native_pte_read_only_store_faults_at_the_exact_address(tw: World) -> None:
    eng = tw.engine()
    target = UBUF + 0x1000 + 0x128  # PTE present, read-only
    ex, _ = op_call(tw, eng, BASE, put_addr(target, 5))
    _check_pf(ex, target, 0x7)  # P | W | U, no SGX bit: the page tables refused it
    # AEX left the synthetic state (SDM Table 40-1).
    r = eng.regs
    assert (r[Reg.RAX], r[Reg.RBX], r[Reg.RCX], r[Reg.RIP]) == (EncluLeaf.ERESUME, BASE, AEP, AEP)
    assert (r[Reg.RSP], r[Reg.RBP]) == (USTACK + 0x3000, USTACK + 0x3F00)
    assert all(r[g] == 0 for g in (Reg.RDX, Reg.RSI, Reg.RDI, Reg.R8, Reg.R15))
    assert cssa(tw, BASE) == 1 and not eng.lp.enclave_mode


def test_native_aex_writes_the_ssa_frame_and_eresume_completes(
    tw: World, image: EnclaveImage
) -> None:
    eng = tw.engine()
    target = UBUF + 0x1000 + 0x128
    ex, _ = op_call(tw, eng, BASE, put_addr(target, 0xC0FFEE))
    _check_pf(ex, target, 0x7)
    frame = BASE + image.symbol("encl_ssa_tcs1")
    g = gprsgx(tw, frame)
    # The store instruction in do_put_to_address: a `mov %reg, (%reg)` in the text segment.
    text = image.segments[1]
    assert BASE + text.offset <= g["RIP"] < BASE + text.offset + text.size
    assert g["EXITINFO"] == EXITINFO_VALID | (3 << 8) | Vector.PF  # EXINFO: #PF reported
    assert (g["MADDR"], g["ERRCD"]) == (target, 0x7)
    assert (g["URSP"], g["URBP"]) == (USTACK + 0x3000, USTACK + 0x3F00)
    assert g["FSBASE"] == BASE and g["GSBASE"] == BASE  # OFSBASE = OGSBASE = 0
    assert g["RDI"] == UBUF or g["RSI"] == UBUF or UBUF in g.values()
    xsave = tw.epc_read(frame, 512 + 64)
    assert xsave[0:2] == b"\x7f\x03" and xsave[24:28] == (0x1F80).to_bytes(4, "little")
    assert struct.unpack_from("<Q", xsave, 512)[0] == 3  # XSTATE_BV = XFRM
    # The OS fixes the PTE; ERESUME re-executes the store, which now completes.
    tw.umem.protect(UBUF + 0x1000, PAGE_SIZE, PROT_READ | PROT_WRITE)
    ex = eresume(tw, eng)
    assert ex.kind is ExitKind.EEXIT
    assert struct.unpack("<Q", tw.umem.read(target, 8))[0] == 0xC0FFEE
    assert cssa(tw, BASE) == 0
    assert eng.regs[Reg.RIP] == HOST_RIP + 3


def test_native_epcm_faults_carry_the_sgx_bit(tw: World, image: EnclaveImage) -> None:
    kit = tw.kit
    e0, e1 = tw.engine(0), tw.engine(1)
    buffer2 = BASE + image.data_offset + PAGE_SIZE
    # EPCM without W (EMODPR), PTE still writable: 0x8007 at the exact address.
    assert kit.emodpr(tw.encl, buffer2, R) == 0
    ex, _ = op_call(tw, e0, BASE, put_addr(buffer2 + 0x18, 1))
    _check_pf(ex, buffer2 + 0x18, PF_W_SGX)
    assert gprsgx(tw, BASE + image.symbol("encl_ssa_tcs1"))["MADDR"] == buffer2 + 0x18
    # A PENDING page: 0x8007.
    dyn = BASE + 0xC000
    kit.eaug(tw.encl, dyn)
    ex, _ = op_call(tw, e1, BASE + PAGE_SIZE, put_addr(dyn + 0x20, 1))
    _check_pf(ex, dyn + 0x20, PF_W_SGX)


def test_native_entry_sees_rights_changed_while_outside(tw: World, image: EnclaveImage) -> None:
    """The same thread re-entering: pages it used before must be checked again (SDM 42.12)."""
    eng = tw.engine()
    buffer2 = BASE + image.data_offset + PAGE_SIZE
    tcs2 = BASE + PAGE_SIZE
    ex, _ = op_call(tw, eng, BASE, put_addr(buffer2, 1))
    assert ex.kind is ExitKind.EEXIT
    ex, _ = op_call(tw, eng, BASE, put_addr(UBUF + 0x2008, 1))
    assert ex.kind is ExitKind.EEXIT
    tw.umem.protect(UBUF + 0x2000, PAGE_SIZE, PROT_READ)  # page tables, while outside
    ex, _ = op_call(tw, eng, BASE, put_addr(UBUF + 0x2008, 2))
    _check_pf(ex, UBUF + 0x2008, 0x7)
    assert tw.kit.emodpr(tw.encl, buffer2, R) == 0  # EPCM, while outside
    ex, _ = op_call(tw, eng, tcs2, put_addr(buffer2, 2))
    _check_pf(ex, buffer2, PF_W_SGX)


def test_native_get_on_a_trim_page_faults_0x8005(tw: World, image: EnclaveImage) -> None:
    kit = tw.kit
    eng = tw.engine()
    buffer2 = BASE + image.data_offset + PAGE_SIZE
    assert kit.emodt(tw.encl, buffer2, TRIM_T) == 0
    assert kit.etrack(tw.encl) == 0
    ex, _ = op_call(tw, eng, BASE, get_addr(buffer2 + 0x30))
    _check_pf(ex, buffer2 + 0x30, PF_R_SGX)


def test_native_without_exinfo_pf_is_not_reported_in_exitinfo(
    key: Any, image: EnclaveImage
) -> None:
    w = build_test_world(key, image, miscselect=0)
    try:
        eng = w.engine()
        ex, _ = op_call(w, eng, BASE, put_addr(UBUF + 0x1000, 1))
        _check_pf(ex, UBUF + 0x1000, 0x7)
        g = gprsgx(w, BASE + image.symbol("encl_ssa_tcs1"))
        assert g["EXITINFO"] == 0 and g["MADDR"] == 0
    finally:
        w.close()


# -- a tiny assembly enclave ------------------------------------------------------------------------

MINI_SIZE = 0x10000
M_TCS1, M_CODE, M_SSA1, M_P, M_RO, M_STACK1 = 0x0000, 0x1000, 0x3000, 0x5000, 0x6000, 0x7000
M_FS, M_GS, M_TCS2, M_SSA2, M_STACK2, M_DYN = 0x8000, 0x9000, 0xA000, 0xB000, 0xC000, 0xE000

MINI_TESTS = [
    "fsgs", "loop", "store_ro", "vex", "syscall", "cpuid", "int80", "movcr0", "hlt", "in",
    "sgdt", "encls", "div0", "int3", "ud2", "fxsave", "fp_fault", "spin", "store_uro", "push",
    "movs", "straddle", "store_p", "eaccept", "report", "sysenter", "nop", "int_3",
    "fallthrough", "jmp_p", "jmp_out", "rmw",
]  # fmt: skip
T = {name: i for i, name in enumerate(MINI_TESTS)}

MINI_ASM = (
    r"""
    .intel_syntax noprefix
    .text
    .globl _start
    # Section-relative symbols, so that [rip + SYM] is RIP-relative (the code is at +0x1000).
    .set ENCL_BASE, _start - 0x1000
    .set TCS2, ENCL_BASE + 0xA000
    .set STACK1_TOP, ENCL_BASE + 0x8000
    .set STACK2_TOP, ENCL_BASE + 0xD000
    .set PAGE_P, ENCL_BASE + 0x5000
    .set PAGE_RO, ENCL_BASE + 0x6000
    .set SSA0_GPR, ENCL_BASE + 0x3000 + 0x1000 - 184
    .set SCRATCH, ENCL_BASE + 0x8100
_start:
    mov r14, rsp
    mov r13, rcx
    lea rsp, [rip + STACK1_TOP]
    lea rdx, [rip + TCS2]
    cmp rbx, rdx
    jne 1f
    lea rsp, [rip + STACK2_TOP]
1:  lea rdx, [rip + table]
    movsxd rax, dword ptr [rdx + rsi*4]
    add rax, rdx
    jmp rax
done:
    mov rsp, r14
    mov rbx, r13
    mov eax, 4
    .byte 0x0f, 0x01, 0xd7
    ud2
t_fsgs:
    rdfsbase rax
    mov [rdi], rax
    rdgsbase rax
    mov [rdi + 8], rax
    mov rax, fs:[0]
    mov [rdi + 16], rax
    mov rax, gs:[8]
    mov [rdi + 24], rax
    jmp done
t_loop:
    mov rdx, [rdi]
2:  mov qword ptr [rip + PAGE_P], rdx
    dec rdx
    jnz 2b
    jmp done
t_store_ro:  mov qword ptr [rip + PAGE_RO + 0x10], rsi
    jmp done
t_vex:       vpxor xmm0, xmm1, xmm2
    jmp done
t_syscall:   syscall
    jmp done
t_cpuid:     cpuid
    jmp done
t_int80:     int 0x80
    jmp done
t_movcr0:    mov rax, cr0
    jmp done
t_hlt:       hlt
    jmp done
t_in:        in al, 0x80
    jmp done
t_sgdt:      sgdt [rdi]
    jmp done
t_encls:     .byte 0x0f, 0x01, 0xcf
    jmp done
t_div0:      xor ecx, ecx
    div ecx
    jmp done
t_int3:      int3
    jmp done
t_ud2:       ud2
    jmp done
t_fxsave:    fxsave64 [rdi]
    jmp done
t_fp_fault:
    movdqu xmm0, [rdi + 0x800]
    movdqu xmm1, [rdi + 0x810]
    fldpi
    mov qword ptr [rdi + 0x1000], rsi
    fxsave64 [rdi + 0x2000]
    jmp done
t_spin:
3:  cmp qword ptr [rdi], 0
    je 3b
    jmp done
t_store_uro: mov qword ptr [rdi + 0x1008], rsi
    jmp done
t_push:
    lea rsp, [rdi + 0x1010]
    push rsi
    jmp done
t_movs:
    lea rsi, [rdi]
    lea rdi, [rdi + 0x1000 - 16]
    mov ecx, 4
    rep movsq
    jmp done
t_straddle:  mov qword ptr [rdi + 0x1000 - 4], rsi
    jmp done
t_store_p:   mov qword ptr [rip + PAGE_P], rsi
    jmp done
t_eaccept:
    lea rbx, [rip + SCRATCH]
    mov rax, [rdi]
    mov [rbx], rax
    mov rcx, [rdi + 8]
    mov eax, 5
    .byte 0x0f, 0x01, 0xd7
    mov [rdi + 16], rax
    jmp done
t_report:
    lea rdx, [rip + SSA0_GPR]
    mov eax, dword ptr [rdx + 160]
    mov [rdi], rax
    mov rax, [rdx + 136]
    mov [rdi + 8], rax
    jmp done
t_sysenter:  sysenter
    jmp done
t_nop:       jmp done
t_int_3:     .byte 0xcd, 0x03
    jmp done
t_jmp_p:
    lea rax, [rip + PAGE_P + 0x40]
    jmp rax
t_jmp_out:   jmp rdi
t_rmw:       add qword ptr [rdi + 0x4010], 1
    jmp done
    .balign 4
table:
"""
    + "".join(f"    .long t_{name} - table\n" for name in MINI_TESTS)
    + r"""
    # The last bytes of the second code page run into the SSA page (not executable).
    .org 0x1FF8
t_fallthrough:
    inc qword ptr [rdi]
    nop
    nop
    nop
    mov rax, [rdi]
"""
)


@pytest.fixture(scope="module")
def mini_code(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    d = tmp_path_factory.mktemp("mini")
    (d / "mini.S").write_text(MINI_ASM)
    subprocess.run(["gcc", "-c", "mini.S", "-o", "mini.o"], cwd=d, check=True)
    subprocess.run(
        ["ld", "-Ttext=0x1000", "--oformat", "binary", "-o", "mini.bin", "mini.o"],
        cwd=d,
        check=True,
    )
    code = (d / "mini.bin").read_bytes()
    assert len(code) == 0x2001  # the straddling MOV's last byte is past the two code pages
    return code[: 2 * PAGE_SIZE]


@dataclass
class Mini:
    w: World
    tcs1: int
    tcs2: int


def build_mini_world(key: Any, code: bytes, *, miscselect: int = EXINFO) -> Mini:
    umem = UserMemory(arena_size=1 << 30)
    kit = LeafKit(Processor(cpus=2, epc_size=8 << 20), umem=umem)
    _process(kit)
    encl = kit.ecreate(BASE, MINI_SIZE, miscselect=miscselect)
    m = EnclaveMeasurer(MINI_SIZE)
    tcs1 = Tcs(ossa=M_SSA1, nssa=2, oentry=M_CODE, ofsbase=M_FS, ogsbase=M_GS,
               fslimit=0xFFF, gslimit=0xFFF).pack()  # fmt: skip
    tcs2 = Tcs(ossa=M_SSA2, nssa=1, oentry=M_CODE, ofsbase=M_FS, ogsbase=M_GS,
               fslimit=0xFFF, gslimit=0xFFF).pack()  # fmt: skip
    rw, rx = PROT_READ | PROT_WRITE, PROT_READ | PROT_EXEC
    reg_rw, reg_rx, reg_r = (secinfo_flags(REG_T, p) for p in (R | W, R | X, R))
    fs = struct.pack("<QQ", 0xF5F5_0000, 0)
    gs = struct.pack("<QQ", 0, 0x6565_0000)
    pages = [
        (M_TCS1, tcs1, secinfo_flags(TCS_T), rw), (M_CODE, code[:PAGE_SIZE], reg_rx, rx),
        (M_CODE + PAGE_SIZE, code[PAGE_SIZE:], reg_rx, rx), (M_SSA1, b"", reg_rw, rw),
        (M_SSA1 + PAGE_SIZE, b"", reg_rw, rw), (M_P, b"", reg_rw, rw), (M_RO, b"", reg_r, rw),
        (M_STACK1, b"", reg_rw, rw), (M_FS, fs, reg_rw, rw), (M_GS, gs, reg_rw, rw),
        (M_TCS2, tcs2, secinfo_flags(TCS_T), rw), (M_SSA2, b"", reg_rw, rw),
        (M_STACK2, b"", reg_rw, rw),
    ]  # fmt: skip
    for off, data, flags, prot in pages:
        _add(kit, m, encl, off, data, flags, prot)
    _sign_and_init(kit, encl, key, m.mrenclave())
    return Mini(World(kit, umem, encl, BASE), BASE + M_TCS1, BASE + M_TCS2)


@pytest.fixture
def mini(key: Any, mini_code: bytes) -> Iterator[Mini]:
    mw = build_mini_world(key, mini_code)
    yield mw
    mw.w.close()


def run_mini(mw: Mini, eng: NativeEngine, test: str, *, tcs: int | None = None,
             budget: int | None = None) -> EngineExit:  # fmt: skip
    return eenter(mw.w, eng, mw.tcs1 if tcs is None else tcs, UBUF, T[test], budget)


def test_native_fs_gs_bases_come_from_the_tcs(mini: Mini) -> None:
    w = mini.w
    eng = w.engine()
    eng.regs[Reg.FSBASE] = 0x1111_0000  # the host's own bases, restored at EEXIT
    eng.regs[Reg.GSBASE] = 0x2222_0000
    ex = run_mini(mini, eng, "fsgs")
    assert ex.kind is ExitKind.EEXIT
    fsb, gsb, fs0, gs8 = struct.unpack("<4Q", w.umem.read(UBUF, 32))
    assert (fsb, gsb) == (BASE + M_FS, BASE + M_GS)  # base + OFSBASE / OGSBASE
    assert (fs0, gs8) == (0xF5F5_0000, 0x6565_0000)
    assert (eng.regs[Reg.FSBASE], eng.regs[Reg.GSBASE]) == (0x1111_0000, 0x2222_0000)


@pytest.mark.parametrize(
    ("test", "vector"),
    [
        ("vex", Vector.UD), ("syscall", Vector.UD), ("sysenter", Vector.UD), ("cpuid", Vector.UD),
        ("int80", Vector.UD), ("int_3", Vector.UD), ("in", Vector.UD), ("sgdt", Vector.UD),
        ("encls", Vector.UD), ("ud2", Vector.UD), ("movcr0", Vector.GP), ("hlt", Vector.GP),
        ("div0", Vector.DE),
    ],
)  # fmt: skip
def test_native_illegal_and_faulting_instructions(mini: Mini, mini_code: bytes, test: str,
                                                  vector: Vector) -> None:  # fmt: skip
    w = mini.w
    eng = w.engine()
    before = bytes(w.umem.read(UBUF, 64))
    ex = run_mini(mini, eng, test)
    assert ex.kind is ExitKind.AEX and ex.event is not None
    assert ex.event.vector == vector, ex.event
    g = gprsgx(w, BASE + M_SSA1)
    # RIP is the instruction itself (a fault; INT n is #UD before it executes).
    insn = g["RIP"] - BASE - M_CODE
    assert 0 <= insn < len(mini_code)
    first = next(Sweeper().sweep(mini_code[insn : insn + 15], g["RIP"]))
    assert first[0] == g["RIP"]
    if vector in (Vector.UD, Vector.DE):
        assert g["EXITINFO"] == EXITINFO_VALID | (3 << 8) | vector
    else:  # #GP with EXINFO: reported, MADDR 0
        assert g["EXITINFO"] == EXITINFO_VALID | (3 << 8) | vector and g["MADDR"] == 0
    assert w.umem.read(UBUF, 64) == before  # nothing ran after the instruction (sgdt: no store)


def test_native_vex_is_refused_before_it_runs(mini: Mini) -> None:
    w = mini.w
    eng = w.engine()
    ex = run_mini(mini, eng, "vex")
    assert ex.event is not None and ex.event.vector == Vector.UD
    g = gprsgx(w, BASE + M_SSA1)
    assert w.epc_read(g["RIP"], 4) == bytes.fromhex("c5f1efc2")  # vpxor xmm0, xmm1, xmm2


def test_native_int3_is_a_software_breakpoint(mini: Mini) -> None:
    w = mini.w
    eng = w.engine()
    ex = run_mini(mini, eng, "int3")
    assert ex.event is not None and ex.event.vector == Vector.BP
    g = gprsgx(w, BASE + M_SSA1)
    assert g["EXITINFO"] == EXITINFO_VALID | (6 << 8) | Vector.BP
    assert w.epc_read(g["RIP"] - 1, 1) == b"\xcc"  # a trap: RIP is after INT3


def test_native_de_then_gp_is_not_a_double_fault(mini: Mini) -> None:
    """Unicorn never delivers exceptions: QEMU's #DF bookkeeping must be reset after each."""
    w = mini.w
    eng = w.engine()
    ex = run_mini(mini, eng, "div0")
    assert ex.event is not None and ex.event.vector == Vector.DE
    ex = run_mini(mini, eng, "movcr0")  # EENTER into frame 1 (NSSA = 2)
    assert ex.event is not None and ex.event.vector == Vector.GP
    assert cssa(w, mini.tcs1) == 2


def test_native_leaf_fault_then_cpu_fault_is_not_a_double_fault(mini: Mini) -> None:
    """A leaf's fault stops Unicorn at its #UD, which QEMU's #DF bookkeeping does not record:
    a CPU exception after it is itself, and the interrupted x87/SSE state is saved."""
    w = mini.w
    eng = w.engine()
    w.umem.write(UBUF + 0x3000, struct.pack("<QQ", secinfo_flags(REG_T, R, PR), BASE + M_P + 8))
    ex = eenter(w, eng, mini.tcs1, UBUF + 0x3000, T["eaccept"])  # RCX not page-aligned
    assert ex.event is not None and ex.event.vector == Vector.GP
    g = gprsgx(w, BASE + M_SSA1)
    assert w.epc_read(g["RIP"], 3) == b"\x0f\x01\xd7"
    fcw, mxcsr = struct.unpack_from("<H22xI", w.epc_read(BASE + M_SSA1, 28))  # its XSAVE area
    assert (fcw, mxcsr) == (0x37F, 0x1F80)
    ex = run_mini(mini, eng, "div0")  # EENTER into frame 1 (NSSA = 2)
    assert ex.event is not None and ex.event.vector == Vector.DE
    assert cssa(w, mini.tcs1) == 2


def test_native_nested_ssa_frames(mini: Mini, mini_code: bytes) -> None:
    """A fault, an EENTER into frame 1 that reads frame 0, then ERESUME of frame 0."""
    w = mini.w
    eng = w.engine()
    ex = run_mini(mini, eng, "store_uro")
    _check_pf(ex, UBUF + 0x1008, 0x7)
    assert cssa(w, mini.tcs1) == 1
    g = gprsgx(w, BASE + M_SSA1)
    # GPRSGX holds the interrupted state (SDM Table 38-8): the dispatcher's registers.
    assert (g["RDI"], g["RSI"], g["RBX"]) == (UBUF, T["store_uro"], mini.tcs1)
    assert (g["R13"], g["R14"]) == (HOST_RIP + 3, USTACK + 0x3000)  # EEXIT target, user RSP
    assert g["RSP"] == BASE + M_STACK1 + PAGE_SIZE and g["RFLAGS"] & 0x2
    assert g["RIP"] == BASE + M_CODE + mini_code.index(bytes.fromhex("4889b708100000"))
    rip0 = g["RIP"]
    ex = run_mini(mini, eng, "report")  # the AEP path's EENTER: RAX = CSSA = 1
    assert ex.kind is ExitKind.EEXIT
    info, rip = struct.unpack("<QQ", w.umem.read(UBUF, 16))
    assert (info, rip) == (EXITINFO_VALID | (3 << 8) | Vector.PF, rip0)
    assert cssa(w, mini.tcs1) == 1  # EENTER/EEXIT leave CSSA alone
    w.umem.protect(UBUF + 0x1000, PAGE_SIZE, PROT_READ | PROT_WRITE)
    r = eng.regs
    r[Reg.RAX], r[Reg.RBX], r[Reg.RCX], r[Reg.RIP] = EncluLeaf.ERESUME, mini.tcs1, AEP, AEP
    ex = eresume(w, eng)
    assert ex.kind is ExitKind.EEXIT and cssa(w, mini.tcs1) == 0
    assert struct.unpack("<Q", w.umem.read(UBUF + 0x1008, 8))[0] == T["store_uro"]


@pytest.mark.parametrize(
    ("test", "addr", "code"),
    [
        ("store_ro", BASE + M_RO + 0x10, PF_W_SGX),  # EPCM R, PTE RW
        ("push", UBUF + 0x1008, 0x7),
        ("movs", UBUF + 0x1000, 0x7),
        ("straddle", UBUF + 0x1000, 0x7),
        ("rmw", UBUF + 0x4010, 0x6),  # not present; a read-modify-write reports W
    ],
)
def test_native_exact_fault_addresses(mini: Mini, test: str, addr: int, code: int) -> None:
    w = mini.w
    eng = w.engine()
    ex = run_mini(mini, eng, test)
    _check_pf(ex, addr, code)
    g = gprsgx(w, BASE + M_SSA1)
    assert (g["MADDR"], g["ERRCD"]) == (addr, code)
    if test == "movs":
        assert g["RCX"] == 2  # two of four quadwords were copied before the fault
        assert w.umem.read(UBUF + 0x1000 - 16, 16) == w.umem.read(UBUF, 16)


def test_native_x87_sse_state_matches_fxsave_and_survives_aex(mini: Mini) -> None:
    w = mini.w
    eng = w.engine()
    xmm0, xmm1 = bytes(range(16)), bytes(range(100, 116))
    w.umem.write(UBUF + 0x800, xmm0 + xmm1)
    ex = run_mini(mini, eng, "fp_fault")
    _check_pf(ex, UBUF + 0x1000, 0x7)
    area = w.epc_read(BASE + M_SSA1, 512)
    assert area[160:176] == xmm0 and area[176:192] == xmm1
    assert area[32:42] == bytes.fromhex("35c26821a2da0fc90040")  # ST0 = pi
    assert area[4] == 0x80  # abridged tag: physical register 7 in use
    # After the AEX the registers hold the INIT state (SDM Table 40-1).
    assert eng.view.xsave()[:32] == bytes(xsave_init_legacy()[:32])
    w.umem.protect(UBUF + 0x1000, PAGE_SIZE, PROT_READ | PROT_WRITE)
    ex = eresume(w, eng)
    assert ex.kind is ExitKind.EEXIT
    saved = w.umem.read(UBUF + 0x2000, 512)  # FXSAVE64 executed by the enclave after ERESUME
    assert saved[160:192] == xmm0 + xmm1 and saved[32:42] == area[32:42]
    assert saved[0:8] == area[0:8]


def test_native_register_view_xsave_is_fxsave64(mini: Mini) -> None:
    w = mini.w
    eng = w.engine()
    ex = run_mini(mini, eng, "fp_fault")
    assert ex.kind is ExitKind.AEX
    w.umem.protect(UBUF + 0x1000, PAGE_SIZE, PROT_READ | PROT_WRITE)
    eresume(w, eng)
    # The enclave's own FXSAVE64 against the view's xsave() of the same state.
    ex = run_mini(mini, eng, "fxsave")
    theirs = w.umem.read(UBUF, 512)
    ours = eng.view.xsave()
    assert ours[:416] == theirs[:416]


def _fxsave_image(area: bytes) -> bytes:
    """What FXSAVE64 reports after FXRSTOR64 of `area` (SDM Vol. 1 Table 10-2): FOP bits 10:0,
    MXCSR_MASK FFFFh, bytes 10-15 of each ST slot and bytes 416-511 zero (a reference model)."""
    out = bytearray(area[:416]) + bytes(96)
    out[5] = 0
    out[6:8] = (int.from_bytes(area[6:8], "little") & 0x7FF).to_bytes(2, "little")
    out[28:32] = (0xFFFF).to_bytes(4, "little")
    for i in range(8):
        out[32 + 16 * i + 10 : 32 + 16 * i + 16] = bytes(6)
    return bytes(out)


def _random_legacy(rnd: Any) -> bytearray:
    """A random x87/SSE state in the legacy layout, with junk in every ignored field."""
    area = bytearray(rnd.randbytes(512))
    area[6:24] = bytes(18)  # FOP, FIP, FDP: QEMU's FXSAVE64 stores 0 there (Unicorn holds them)
    area[24:28] = (0x1F80 | rnd.randrange(0x40)).to_bytes(4, "little")  # MXCSR, valid bits
    return area


def test_native_raw_fxsave_fxrstor_round_trip_random_states(tw: World) -> None:
    """Loading any legacy area and reading it back gives its FXSAVE image (FOP, FIP and FDP
    as loaded: Unicorn keeps them); reading twice gives the same bytes."""
    import random

    raw = tw.engine().view.raw
    rnd = random.Random(11)
    for _ in range(300):
        area = bytes(rnd.randbytes(512))
        raw.fxrstor(area)
        image = raw.fxsave()
        assert image == _fxsave_image(area)
        assert raw.fxsave() == image
        raw.fxrstor(image)
        assert raw.fxsave() == image


def test_native_view_xsave_after_xrstor_without_execution(mini: Mini) -> None:
    """xrstor() is lazy: xsave() before any code ran reports what FXSAVE64 would, and the
    enclave's own FXSAVE64 of that state agrees byte for byte."""
    import random

    w = mini.w
    eng = w.engine()
    view = eng.view
    rnd = random.Random(7)
    area = _random_legacy(rnd)
    area[6:8] = b"\xff\xff"  # FOP: the view reports bits 10:0, as FXSAVE defines it
    view.xrstor(bytes(area))
    assert view.xsave()[6:8] == b"\xff\x07" and view.xsave() == _fxsave_image(area)
    for _ in range(6):
        area = _random_legacy(rnd)
        view.xrstor(bytes(area))
        assert view.xsave() == _fxsave_image(area)
        view.xrstor(bytes(area))  # again, then straight into the enclave
        ex = run_mini(mini, eng, "fxsave")
        assert ex.kind is ExitKind.EEXIT
        theirs = w.umem.read(UBUF, 512)
        assert theirs[:416] == _fxsave_image(area)[:416]
        assert view.xsave() == _fxsave_image(area)


def test_native_x87_sse_state_survives_aex_and_eresume_bit_exactly(mini: Mini) -> None:
    """The SSA receives the exact state; AEX leaves INIT (all 512 bytes); ERESUME puts the
    saved state back, as the enclave's FXSAVE64 after the resume shows."""
    w = mini.w
    eng = w.engine()
    w.umem.write(UBUF + 0x800, bytes(range(32)))
    ex = run_mini(mini, eng, "fp_fault")
    _check_pf(ex, UBUF + 0x1000, 0x7)
    area = w.epc_read(BASE + M_SSA1, 512)
    assert eng.view.xsave() == bytes(xsave_init_legacy())
    w.umem.protect(UBUF + 0x1000, PAGE_SIZE, PROT_READ | PROT_WRITE)
    assert eresume(w, eng).kind is ExitKind.EEXIT
    assert w.umem.read(UBUF + 0x2000, 416) == area[:416]
    assert eng.view.xsave()[:416] == area[:416]


def test_native_aex_right_after_eresume_saves_the_loaded_state(mini: Mini) -> None:
    """ERESUME loads the SSA's x87/SSE area; an AEX before any instruction ran saves what
    FXSAVE reports for it (reserved fields cleared), not the bytes as they were."""
    import random

    w = mini.w
    eng = w.engine()
    ex = run_mini(mini, eng, "fp_fault")
    _check_pf(ex, UBUF + 0x1000, 0x7)
    area = _random_legacy(random.Random(3))
    area[416:512] = b"\xa5" * 96
    index = w.index(BASE + M_SSA1)
    w.cpu.epc.write(index, 0, bytes(area))  # the enclave may write its own SSA frame
    r = eng.regs
    w.cpu.enclu(eng.lp, r, w.umem)  # ERESUME
    ex = eng.interrupt()
    assert ex.kind is ExitKind.AEX and ex.event is None
    assert w.epc_read(BASE + M_SSA1, 512) == _fxsave_image(area)
    assert eng.view.xsave() == bytes(xsave_init_legacy())
    assert eresume(w, eng).kind is ExitKind.AEX  # the store faults again (the page is RO)
    assert w.epc_read(BASE + M_SSA1, 512)[160:416] == bytes(area[160:416])


def test_native_entry_rechecks_pages_changed_behind_the_model(mini: Mini) -> None:
    """Pages Unicorn keeps across entries are checked against the EPCM and page tables as they
    are at the entry, however they were changed (here: written directly, as no leaf would)."""
    w = mini.w
    eng = w.engine()
    p = BASE + M_P
    w.umem.write(UBUF, struct.pack("<Q", 3))
    assert run_mini(mini, eng, "loop").kind is ExitKind.EEXIT  # P written: a W translation
    assert run_mini(mini, eng, "store_p").kind is ExitKind.EEXIT
    e = w.cpu.epcm[w.index(p)]
    e.perms = R  # the EPCM field, in place
    _check_pf(run_mini(mini, eng, "store_p"), p, PF_W_SGX)
    e.perms = R | W
    eresume_to_exit = eresume(w, eng)
    assert eresume_to_exit.kind is ExitKind.EEXIT
    # The same fields in a new entry object: still the same rights, the store works.
    clone = type(e)(e.pt, e.secs, e.linaddr, e.perms)
    w.cpu.epcm[w.index(p)] = clone
    assert run_mini(mini, eng, "store_p").kind is ExitKind.EEXIT
    # The page table entry of an untrusted page the enclave wrote: now read-only.
    assert run_mini(mini, eng, "fxsave").kind is ExitKind.EEXIT
    w.umem.protect(UBUF, PAGE_SIZE, PROT_READ)
    _check_pf(run_mini(mini, eng, "fxsave"), UBUF, 0x7)


def test_native_budget_slices_and_instruction_counts(mini: Mini) -> None:
    w = mini.w
    eng = w.engine()
    w.umem.write(UBUF, struct.pack("<Q", 50))
    whole = run_mini(mini, eng, "loop", budget=10**6)
    assert whole.kind is ExitKind.EEXIT and whole.instructions == 10 + 1 + 3 * 50 + 1 + 4
    w.umem.write(UBUF, struct.pack("<Q", 50))
    first = run_mini(mini, eng, "loop", budget=7)
    assert first.kind is ExitKind.SLICE and first.instructions == 7
    assert eng.lp.enclave_mode
    total, slices = first.instructions, 1
    while True:
        ex = eng.run(7)
        total += ex.instructions
        slices += 1
        if ex.kind is ExitKind.EEXIT:
            break
        assert ex.kind is ExitKind.SLICE and ex.instructions == 7
    assert total == whole.instructions and slices > 10


def test_native_interrupt_is_an_aex_without_exception(mini: Mini) -> None:
    w = mini.w
    eng = w.engine()
    w.umem.write(UBUF, bytes(8))
    ex = run_mini(mini, eng, "spin", budget=100)
    assert ex.kind is ExitKind.SLICE
    ex = eng.interrupt()
    assert ex.kind is ExitKind.AEX and ex.event is None
    g = gprsgx(w, BASE + M_SSA1)
    assert g["EXITINFO"] == 0
    w.umem.write(UBUF, struct.pack("<Q", 1))
    ex = eresume(w, eng)
    assert ex.kind is ExitKind.EEXIT


def test_native_stale_tlb_until_the_thread_leaves(mini: Mini) -> None:
    """EMODPR on another LP: the running thread keeps its cached write right until it exits."""
    w = mini.w
    kit = w.kit
    lp1, lp2 = w.engine(0), w.engine(1)
    p = BASE + M_P
    w.umem.write(UBUF, struct.pack("<Q", 1000))
    ex = run_mini(mini, lp1, "loop", budget=40)  # has written P: a W translation is cached
    assert ex.kind is ExitKind.SLICE
    assert kit.emodpr(w.encl, p, R) == 0
    assert kit.etrack(w.encl) == 0
    before = w.epc_read(p, 8)
    ex = lp1.run(40)
    assert ex.kind is ExitKind.SLICE and w.epc_read(p, 8) != before  # still writing P
    # A thread entering now sees the new EPCM rights.
    w.umem.write(UBUF + 0x3000, bytes(8))
    ex = eenter(w, lp2, mini.tcs2, UBUF + 0x3000, T["store_p"])
    _check_pf(ex, p, PF_W_SGX)
    # The tracking cycle is not over while LP1 is inside: EACCEPT says so.
    lp2_tcs = mini.tcs1  # TCS 2 is in frame 1 now (NSSA 1): use TCS 1 after LP1 exits
    ex = lp1.run()
    assert ex.kind is ExitKind.EEXIT
    w.umem.write(UBUF + 0x3000, struct.pack("<QQ", secinfo_flags(REG_T, R, PR), p))
    ex = eenter(w, lp2, lp2_tcs, UBUF + 0x3000, T["eaccept"])
    assert ex.kind is ExitKind.EEXIT
    assert struct.unpack("<Q", w.umem.read(UBUF + 0x3010, 8))[0] == 0
    e = w.cpu.epcm[w.index(p)]
    assert (e.r, e.w, e.pr) == (True, False, False)


def test_native_eaccept_before_tracking_completes_is_not_tracked(mini: Mini) -> None:
    w = mini.w
    kit = w.kit
    lp1, lp2 = w.engine(0), w.engine(1)
    p = BASE + M_P
    w.umem.write(UBUF, struct.pack("<Q", 1000))
    assert run_mini(mini, lp1, "loop", budget=40).kind is ExitKind.SLICE
    assert kit.emodpr(w.encl, p, R) == 0
    assert kit.etrack(w.encl) == 0
    w.umem.write(UBUF + 0x3000, struct.pack("<QQ", secinfo_flags(REG_T, R, PR), p))
    ex = eenter(w, lp2, mini.tcs2, UBUF + 0x3000, T["eaccept"])
    assert ex.kind is ExitKind.EEXIT
    assert struct.unpack("<Q", w.umem.read(UBUF + 0x3010, 8))[0] == SgxError.SGX_NOT_TRACKED


def test_native_code_rewritten_by_the_model_is_retranslated(mini: Mini) -> None:
    """EPC writes outside Unicorn (here: the test, as ELDU would) must not run stale blocks."""
    w = mini.w
    eng = w.engine()
    assert run_mini(mini, eng, "nop").kind is ExitKind.EEXIT
    table = jump_table(w)
    slot = table + 4 * T["nop"]
    t_nop = table + struct.unpack("<i", w.epc_read(slot, 4))[0]
    w.cpu.epc.write(w.index(t_nop), t_nop & 0xFFF, b"\xcc")  # its JMP becomes INT3
    ex = run_mini(mini, eng, "nop")
    assert ex.event is not None and ex.event.vector == Vector.BP
    assert gprsgx(w, BASE + M_SSA1)["RIP"] == t_nop + 1


def test_native_unchanged_entry_reads_no_page_table_but_compares_code(mini: Mini) -> None:
    """Neither the EPCM nor a PTE changed since the last entry: the entry checks (EENTER's and
    the engine's page re-check) read no PTE, yet code rewritten in the EPC is still seen, and
    an EPCM change is read again."""
    w = mini.w
    eng = w.engine()
    for _ in range(3):
        assert run_mini(mini, eng, "nop").kind is ExitKind.EEXIT
    walked: list[int] = []
    translate = w.umem.translate
    w.umem.translate = lambda lin: (walked.append(lin), translate(lin))[1]  # type: ignore[method-assign]
    try:
        assert run_mini(mini, eng, "nop").kind is ExitKind.EEXIT
        assert walked == []
        # Changes the logs record, on pages the thread did not use: still nothing read.
        ro = w.cpu.epcm[w.index(BASE + M_RO)]
        ro.perms = ro.perms
        w.umem.protect(BASE + M_P, PAGE_SIZE, PROT_READ | PROT_WRITE)
        assert run_mini(mini, eng, "nop").kind is ExitKind.EEXIT
        assert walked == []
        table = jump_table(w)
        t_nop = table + struct.unpack("<i", w.epc_read(table + 4 * T["nop"], 4))[0]
        w.cpu.epc.write(w.index(t_nop), t_nop & 0xFFF, b"\xcc")  # no version counts this
        ex = run_mini(mini, eng, "nop")
        assert ex.event is not None and ex.event.vector == Vector.BP
        assert gprsgx(w, BASE + M_SSA1)["RIP"] == t_nop + 1
        assert walked  # the code change made the re-check fail: Unicorn's TLB was refilled
    finally:
        del w.umem.translate


def test_native_fetch_faults_are_exact(mini: Mini) -> None:
    w = mini.w
    eng = w.engine()
    # Falling off the code into the SSA page (PTE NX): the INC before it runs, the MOV that
    # straddles the boundary faults at the boundary (P | U | I = 0x15).
    w.umem.write(UBUF, struct.pack("<Q", 41))
    ex = run_mini(mini, eng, "fallthrough", budget=1000)
    _check_pf(ex, BASE + M_SSA1, 0x15)
    assert struct.unpack("<Q", w.umem.read(UBUF, 8))[0] == 42
    g = gprsgx(w, BASE + M_SSA1)
    assert g["RIP"] == BASE + M_SSA1 - 2 and g["MADDR"] == BASE + M_SSA1
    assert ex.instructions == 10 + 4  # dispatch, then INC and three NOPs


def test_native_fetch_from_data_and_outside_elrange(mini: Mini) -> None:
    w = mini.w
    e0, e1 = w.engine(0), w.engine(1)
    target = BASE + M_P + 0x40
    ex = run_mini(mini, e0, "jmp_p")
    _check_pf(ex, target, 0x15)  # the PTE is NX
    assert gprsgx(w, BASE + M_SSA1)["RIP"] == target
    # PTE executable, EPCM not: the SGX bit.
    w.kit.map(w.encl, BASE + M_P, w.encl.pages[BASE + M_P], write=True, execute=True)
    ex = run_mini(mini, e0, "jmp_p")  # frame 1
    _check_pf(ex, target, 0x8015)
    # Code fetch outside ELRANGE: #GP(0) (SDM 38.3).
    ex = run_mini(mini, e1, "jmp_out", tcs=mini.tcs2)
    assert ex.event is not None and ex.event.vector == Vector.GP
    assert gprsgx(w, BASE + M_SSA2)["RIP"] == UBUF


def jump_table(w: World) -> int:
    """Linear address of the mini enclave's jump table (found from the dispatch LEA)."""
    code = w.epc_read(BASE + M_CODE, 64)
    # lea rdx, [rip + table] right after the second `lea rsp` block: find 48 8d 15 disp32.
    i = code.index(b"\x48\x8d\x15", code.index(b"\x48\x8d\x15") + 1)
    disp = struct.unpack_from("<i", code, i + 3)[0]
    return BASE + M_CODE + i + 7 + disp


# -- pieces --------------------------------------------------------------------------------------------


def test_native_fault_decoder_accesses() -> None:
    regs = {"RAX": 0x1000, "RCX": 3, "RSP": 0x8010, "RSI": 0x2000, "RDI": 0x3FF8, "RBP": 0,
            "FSBASE": 0x70000, "GSBASE": 0}  # fmt: skip
    d = FaultDecoder()

    def acc(hexcode: str, rip: int = 0x400000) -> list[tuple[int, int, int]]:
        return d.accesses(bytes.fromhex(hexcode), rip, lambda n: regs[n])

    assert acc("48890408") == [(0x1000 + 3, 8, WRITE)]  # mov [rax+rcx], rax
    assert acc("488b0511000000") == [(0x400000 + 7 + 0x11, 8, READ)]  # rip-relative
    assert acc("64488b042510000000") == [(0x70010, 8, READ)]  # fs:[0x10]
    assert acc("50") == [(0x8008, 8, WRITE)]  # push rax
    assert acc("c3") == [(0x8010, 8, READ)]  # ret
    assert (0x3FF8, 8, WRITE) in acc("48a5") and (0x2000, 8, READ) in acc("48a5")
    assert acc("0fae00")[0][1] == 512  # fxsave [rax]
    # An 8-byte store at 0x3FFC straddles into 0x4000: the fault on the second page is there.
    assert exact_address([(0x3FFC, 8, WRITE)], 0x4000, WRITE) == (0x4000, WRITE)
    assert exact_address([(0x3FFC, 8, WRITE)], 0x3000, WRITE) == (0x3FFC, WRITE)
    assert exact_address([(0x3FFC, 8, READ)], 0x4000, WRITE) == (0x4000, WRITE)  # the page
    assert exact_address([(0x4010, 8, READ | WRITE)], 0x4000, READ) == (0x4010, READ | WRITE)


def test_native_sweeper_flags_vex_and_illegal_but_not_bmi() -> None:
    code = bytes.fromhex("4889c5c5f1efc2900fa2c4e260f2c18ed80fa1ff28cd80cc")
    flagged, starts = Sweeper().scan(code, 0x1000, 0x1000, 0x2000)
    assert sorted(flagged) == [0x1003, 0x1008, 0x100F, 0x1011, 0x1013, 0x1015]
    assert {0x1000, 0x100A, 0x1017} <= starts  # mov, andn (BMI1: allowed), int3


class HiddenBacking:
    """The process without `backing_regions()`: the engine maps host memory on demand."""

    def __init__(self, inner: UserMemory) -> None:
        self.inner = inner

    def translate(self, lin: int) -> int:
        return self.inner.translate(lin)

    def read(self, lin: int, size: int) -> bytes:
        return self.inner.read(lin, size)

    def write(self, lin: int, data: bytes) -> None:
        self.inner.write(lin, data)


def test_native_untrusted_memory_mapped_on_demand(tw: World) -> None:
    mem = HiddenBacking(tw.umem)
    eng = NativeEngine(tw.cpu, tw.cpu.lp(0), mem)
    try:
        tw.umem.write(UBUF, bytes(put_addr(UBUF + 0x800, 0x5151)))
        r = eng.regs
        r[Reg.RAX], r[Reg.RBX], r[Reg.RCX], r[Reg.RIP] = EncluLeaf.EENTER, BASE, AEP, HOST_RIP
        r[Reg.RDI], r[Reg.RSP] = UBUF, USTACK + 0x3000
        tw.cpu.enclu(eng.lp, r, mem)
        assert eng.run().kind is ExitKind.EEXIT
        assert struct.unpack("<Q", tw.umem.read(UBUF + 0x800, 8))[0] == 0x5151
    finally:
        eng.close()
    with pytest.raises(SgxUsageError):
        eng.run()


def test_native_engines_sharing_a_logical_processor_are_all_flushed(tw: World) -> None:
    """Every engine on a logical processor sees each flush of it (`lp.flushes`) at its next
    run: each entry re-checks what Unicorn holds, however many engines share the LP."""
    lp = tw.cpu.lp(0)
    a, b = tw.engine(0), tw.engine(0)
    seen = (a._flushes, b._flushes)
    assert seen == (lp.flushes, lp.flushes)
    tw.umem.write(UBUF, bytes(put_addr(UBUF + 0x800, 0x77)))
    r = a.regs
    r[Reg.RAX], r[Reg.RBX], r[Reg.RCX], r[Reg.RIP] = EncluLeaf.EENTER, BASE, AEP, HOST_RIP
    r[Reg.RDI], r[Reg.RSP] = UBUF, USTACK + 0x3000
    tw.cpu.enclu(lp, r, tw.umem)  # the entry flushes LP 0
    assert a.run().kind is ExitKind.EEXIT and a._flushes == lp.flushes - 1  # (and the EEXIT)
    assert b._flushes == seen[1] < lp.flushes  # b acts on them when it runs next


def test_native_run_requires_enclave_mode(tw: World) -> None:
    eng = tw.engine()
    with pytest.raises(SgxUsageError):
        eng.run()
    with pytest.raises(SgxUsageError):
        eng.interrupt()


def test_native_entry_check_notices_a_new_grant(mini: Mini) -> None:
    """The per-page entry check skips its rights/frame comparison only for the very grant it
    last checked (`_fills`): a grant Unicorn replaced since is checked again."""
    w = mini.w
    eng = w.engine()
    vpn = (BASE + M_P) >> 12
    assert run_mini(mini, eng, "store_p").kind is ExitKind.EEXIT
    assert run_mini(mini, eng, "store_p").kind is ExitKind.EEXIT  # P checked at this entry
    held = eng._granted[vpn]
    assert eng._fills[vpn][4] is held
    r = eng.regs
    r[Reg.RAX], r[Reg.RBX], r[Reg.RCX], r[Reg.RIP] = EncluLeaf.EENTER, mini.tcs1, AEP, HOST_RIP
    r[Reg.RDI], r[Reg.RSI], r[Reg.RSP] = UBUF, T["store_p"], USTACK + 0x3000
    w.cpu.enclu(eng.lp, r, w.umem)  # inside, before the engine's entry check
    # Each made-up grant is recorded as _on_fill records one (it drops `_clean`).
    eng._granted[vpn], eng._clean = (held[0], held[1]), None  # the same grant, refilled
    assert eng._revalidate() and eng._fills[vpn][4] is eng._granted[vpn]  # checked again, kept
    eng._granted[vpn], eng._clean = (held[0], held[1] | 4), None  # executable: never scanned
    assert not eng._revalidate()
    eng._granted[vpn], eng._clean = (held[0] + 0x1000, held[1]), None  # not the EPCM's frame
    assert not eng._revalidate()
    eng._flush_tlb_now()  # (Unicorn never held these made-up grants)
    assert eng.run().kind is ExitKind.EEXIT


def test_native_aex_after_a_faulting_leaf_reuses_the_hook_registers(
    tw: World, image: EnclaveImage
) -> None:
    """Nothing runs between the ENCLU hook's register read and the AEX of the leaf's fault:
    the AEX saves those values without a second read, and they are the registers at the ENCLU."""
    eng = tw.engine()
    eng.view.load_all()  # (the host side's register writes below read nothing then)
    reads: list[int] = []
    view = eng.view
    read_batch = view._read  # the view's batch read (uc_reg_read_batch)
    view._read = lambda *a: (reads.append(1), read_batch(*a))[1]
    hole = BASE + 0xF000
    ex, _ = op_call(tw, eng, BASE, eaccept_op(hole, secinfo_flags(REG_T, R | W, PENDING)))
    assert ex.kind is ExitKind.AEX and isinstance(ex.event, PageFault)
    assert len(reads) == 1  # the hook's
    g = gprsgx(tw, BASE + image.symbol("encl_ssa_tcs1"))
    assert tw.epc_read(g["RIP"], 3) == b"\x0f\x01\xd7"
    assert g["RAX"] == EncluLeaf.EACCEPT and g["RCX"] == hole
