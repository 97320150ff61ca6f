"""ScriptedEngine: the test enclave's protocol, faults, AEX/ERESUME, nested AEX, the stale-TLB
hazard and deterministic stepping, on enclaves built leaf by leaf and initialized by EINIT.

The tests on the test enclave run twice: with the scripted program and with the compiled
enclave on the native engine, asserting the same values, so both engines agree exactly."""

from __future__ import annotations

import contextlib
import ctypes
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from sgxemu.arch.constants import (
    GPRSGX_SIZE,
    PAGE_SIZE,
    Attribute,
    EncluLeaf,
    PageType,
    SgxError,
    Vector,
    secinfo_flags,
)
from sgxemu.exec.engine import Engine, EngineExit, ExitKind
from sgxemu.exec.scripted import (
    ScriptedContext,
    ScriptedEngine,
    ScriptedProgram,
    Step,
    TraceEvent,
)
from sgxemu.exec.scripted_selftest import SelftestLayout, selftest_program
from sgxemu.hw.faults import PageFault, SgxFault, SgxUsageError
from sgxemu.hw.processor import Processor
from sgxemu.hw.regs import Reg
from sgxemu.leafkit import AEP, HOST_RIP, Enclave, LeafKit
from sgxemu.linux.mman import PROT_READ, PROT_WRITE
from sgxemu.linux.usermem import UserMemory
from sgxemu.loader.selftest_layout import EnclaveImage, load_segments
from sgxemu.sign import EnclaveMeasurer, mrsigner_of_key, sign_sigstruct
from sgxemu.testenclave import EnclaveBuildError, build_test_enclave
from sgxemu.testenclave.protocol import (
    ENCL_OP_EACCEPT,
    ENCL_OP_EMODPE,
    ENCL_OP_GET_FROM_ADDRESS,
    ENCL_OP_GET_FROM_BUFFER,
    ENCL_OP_INIT_TCS_PAGE,
    ENCL_OP_NOP,
    ENCL_OP_PUT_TO_ADDRESS,
    ENCL_OP_PUT_TO_BUFFER,
    MAGIC,
    MAGIC2,
    encl_op_eaccept,
    encl_op_emodpe,
    encl_op_get_from_addr,
    encl_op_get_from_buf,
    encl_op_header,
    encl_op_init_tcs_page,
    encl_op_put_to_addr,
    encl_op_put_to_buf,
)
from testkeys import key_a

SCR_ENGINES = ("scripted", "native")

SCR_BASE = 0x10_0000_0000
SCR_OP = 0x20_0000  # untrusted op structs (one 256-byte slot per logical processor)
SCR_URSP = 0x30_0ff0  # a plausible untrusted stack pointer
SCR_R, SCR_W, SCR_X = 1, 2, 4
SCR_PENDING, SCR_MODIFIED, SCR_PR = 0x8, 0x10, 0x20
SCR_REG, SCR_TCS, SCR_TRIM = 0x200, 0x100, 0x400


# -- building and initializing enclaves -----------------------------------------------------------


@pytest.fixture(scope="module")
def scr_key() -> rsa.RSAPrivateKey:
    return key_a()


@pytest.fixture(scope="module")
def scr_image() -> EnclaveImage:
    try:
        return load_segments(build_test_enclave())
    except EnclaveBuildError as exc:
        pytest.skip(f"test enclave not buildable: {exc}")


@dataclass(frozen=True)
class ScrPage:
    offset: int
    data: bytes
    flags: int  # SECINFO flags
    prot: int  # PTE rights (PROT_*)
    measure: bool = True


def scr_build(
    kit: LeafKit,
    key: rsa.RSAPrivateKey,
    base: int,
    size: int,
    pages: list[ScrPage],
    *,
    miscselect: int = 0,
) -> Enclave:
    """ECREATE, EADD/EEXTEND and map every page, sign the measurement, EINIT (real leaves)."""
    encl = kit.ecreate(base, size, miscselect=miscselect)
    meas = EnclaveMeasurer(size)
    for page in pages:
        data = page.data.ljust(PAGE_SIZE, b"\0")
        pa = kit.eadd(encl, base + page.offset, data, page.flags, measure=page.measure)
        kit.map(encl, base + page.offset, pa, write=bool(page.prot & 2), execute=bool(page.prot & 4))
        meas.add_page(page.offset, data, page.flags, page.measure)
    sig = sign_sigstruct(
        key,
        enclavehash=meas.mrenclave(),
        attributes=int(Attribute.MODE64BIT),
        xfrm=3,
        attributemask=0,
        xfrmmask=0,
        miscselect=miscselect,
        miscmask=0,
        isvprodid=0,
        isvsvn=0,
    )
    kit.set_lepubkeyhash(mrsigner_of_key(key))
    assert kit.einit(encl, sig) == SgxError.SUCCESS
    return encl


def scr_tcs(ossa: int, oentry: int, nssa: int = 1) -> bytes:
    return struct.pack("<QQQIIQQQQII", 0, 0, ossa, 0, nssa, oentry, 0, 0, 0, 0xFFFF_FFFF, 0xFFFF_FFFF)


def scr_new_kit() -> LeafKit:
    umem = UserMemory(arena_size=16 << 20)
    umem.map_anonymous(SCR_OP, PAGE_SIZE, PROT_READ | PROT_WRITE)
    return LeafKit(Processor(epc_size=16 << 20, cpus=2), umem=umem)


def scr_tcs_cssa(kit: LeafKit, encl: Enclave, tcs: int) -> int:
    pa = encl.pages[tcs]
    return int(struct.unpack("<I", kit.cpu.epc.read(kit.cpu.epc.index(pa), 24, 4))[0])


def scr_epc_u64(kit: LeafKit, encl: Enclave, lin: int) -> int:
    pa = encl.pages[lin & ~(PAGE_SIZE - 1)]
    raw = kit.cpu.epc.read(kit.cpu.epc.index(pa), lin & (PAGE_SIZE - 1), 8)
    return int.from_bytes(raw, "little")


# -- the test enclave under the scripted engine ---------------------------------------------------


@dataclass
class ScrSelftest:
    """The selftest enclave built with LeafKit on a UserMemory process; one engine per LP."""

    kit: LeafKit
    encl: Enclave
    layout: SelftestLayout
    engines: list[Engine] = field(default_factory=list)

    @property
    def base(self) -> int:
        return self.encl.base

    @property
    def tcs1(self) -> int:
        return self.base

    @property
    def tcs2(self) -> int:
        return self.base + PAGE_SIZE

    @property
    def data_start(self) -> int:
        """The second encl_buffer page, the one the selftests modify."""
        return self.base + self.layout.buffer + PAGE_SIZE

    def op_addr(self, lp: int) -> int:
        return SCR_OP + 0x100 * lp

    def enter(self, op: ctypes.Structure, tcs: int, lp: int = 0, budget: int | None = None) -> EngineExit:
        self.kit.umem.write(self.op_addr(lp), bytes(op))
        eng = self.engines[lp]
        eng.regs[Reg.RDI] = self.op_addr(lp)
        eng.regs[Reg.RSP] = SCR_URSP
        scr_enclu(self.kit, eng, EncluLeaf.EENTER, tcs, HOST_RIP)
        return eng.run(budget)

    def resume(self, tcs: int, lp: int = 0) -> EngineExit:
        eng = self.engines[lp]
        scr_enclu(self.kit, eng, EncluLeaf.ERESUME, tcs, AEP)
        return eng.run()

    def result(self, cls: type[Any], lp: int = 0) -> Any:
        return cls.from_buffer_copy(self.kit.umem.read(self.op_addr(lp), ctypes.sizeof(cls)))

    def call(self, op: ctypes.Structure, tcs: int | None = None, lp: int = 0) -> Any:
        """Run one op to EEXIT and return the op struct as the enclave left it."""
        ex = self.enter(op, self.tcs1 if tcs is None else tcs, lp)
        assert ex.kind is ExitKind.EEXIT, ex
        return self.result(type(op), lp)

    def eaccept(self, addr: int, flags: int, tcs: int | None = None, lp: int = 0) -> int:
        op = encl_op_eaccept(encl_op_header(ENCL_OP_EACCEPT), addr, flags, 0)
        return int(self.call(op, tcs, lp).ret)

    def get(self, addr: int, tcs: int | None = None, lp: int = 0) -> int:
        op = encl_op_get_from_addr(encl_op_header(ENCL_OP_GET_FROM_ADDRESS), 0, addr)
        return int(self.call(op, tcs, lp).value)

    def put(self, addr: int, value: int) -> encl_op_put_to_addr:
        return encl_op_put_to_addr(encl_op_header(ENCL_OP_PUT_TO_ADDRESS), value, addr)

    def getop(self, addr: int) -> encl_op_get_from_addr:
        return encl_op_get_from_addr(encl_op_header(ENCL_OP_GET_FROM_ADDRESS), 0, addr)


def scr_enclu(kit: LeafKit, eng: Engine, leaf: EncluLeaf, tcs: int, rip: int) -> None:
    """EENTER/ERESUME from host code at `rip` with the engine's registers (AEP = AEP)."""
    regs = eng.regs
    regs[Reg.RAX], regs[Reg.RBX], regs[Reg.RCX], regs[Reg.RIP] = leaf, tcs, AEP, rip
    kit.cpu.enclu(eng.lp, regs, kit.umem)


@pytest.fixture(params=SCR_ENGINES)
def scr_st(
    request: pytest.FixtureRequest, scr_image: EnclaveImage, scr_key: rsa.RSAPrivateKey
) -> Iterator[ScrSelftest]:
    kit = scr_new_kit()
    pages = [
        ScrPage(seg.offset + off, seg.data[off : off + PAGE_SIZE], seg.secinfo_flags, seg.prot, seg.measure)
        for seg in scr_image.segments
        for off in range(0, seg.size, PAGE_SIZE)
    ]
    encl = scr_build(kit, scr_key, SCR_BASE, scr_image.encl_size, pages)
    layout = SelftestLayout.from_image(scr_image)
    st = ScrSelftest(kit, encl, layout)
    if request.param == "scripted":
        program = selftest_program(layout)
        st.engines = [ScriptedEngine(kit.cpu, kit.cpu.lp(i), kit.umem, program) for i in range(2)]
    else:
        native = pytest.importorskip("sgxemu.exec.native")
        st.engines = [native.NativeEngine(kit.cpu, kit.cpu.lp(i), kit.umem) for i in range(2)]
    yield st
    for eng in st.engines:
        close = getattr(eng, "close", None)
        if close is not None:
            close()


def scr_assert_pf(ex: EngineExit, addr: int, code: int) -> None:
    assert ex.kind is ExitKind.AEX
    assert isinstance(ex.event, PageFault)
    assert (ex.event.vector, ex.event.error_code, ex.event.addr) == (Vector.PF, code, addr)


def test_scr_layout_from_image(scr_st: ScrSelftest, scr_image: EnclaveImage) -> None:
    lay = scr_st.layout
    assert lay.buffer == scr_image.data_offset == scr_image.symbol("encl_buffer")
    assert lay.entry == scr_image.symbol("encl_entry")
    assert scr_st.kit.cpu.enclaves()[0].init


def test_scr_buffer_and_address_ops(scr_st: ScrSelftest) -> None:
    st = scr_st
    put = encl_op_put_to_buf(encl_op_header(ENCL_OP_PUT_TO_BUFFER), MAGIC)
    st.call(put)
    got = st.call(encl_op_get_from_buf(encl_op_header(ENCL_OP_GET_FROM_BUFFER), 0))
    assert got.value == MAGIC
    assert scr_epc_u64(st.kit, st.encl, st.base + st.layout.buffer) == MAGIC
    # EEXIT register state: target = EENTER's RCX, RCX = AEP, RSP back to the untrusted one.
    regs = st.engines[0].regs
    assert (regs[Reg.RIP], regs[Reg.RCX], regs[Reg.RSP], regs[Reg.RAX]) == (HOST_RIP + 3, AEP, SCR_URSP, 4)
    st.call(st.put(st.data_start, MAGIC2), tcs=st.tcs2, lp=1)
    assert st.get(st.data_start) == MAGIC2
    # Untrusted memory is reachable too (a data access outside ELRANGE).
    st.kit.umem.write(SCR_OP + 0x800, MAGIC.to_bytes(8, "little"))
    assert st.get(SCR_OP + 0x800) == MAGIC
    for op_type in (ENCL_OP_NOP, 8, 0xFFFF_FFFF_FFFF_FFFF):
        st.call(encl_op_header(op_type))
    assert scr_tcs_cssa(st.kit, st.encl, st.tcs1) == 0


def test_scr_static_stacks_are_used(scr_st: ScrSelftest) -> None:
    """The entry stub saves the untrusted RSP at the top of TCS n's stack page."""
    st = scr_st
    st.call(encl_op_header(ENCL_OP_NOP), tcs=st.tcs2, lp=1)
    top = st.tcs2 + st.layout.stack1_top
    assert scr_epc_u64(st.kit, st.encl, top - 8) == SCR_URSP
    assert scr_epc_u64(st.kit, st.encl, top - 16) == HOST_RIP + 3


def test_scr_pte_read_only_fault(scr_st: ScrSelftest) -> None:
    st = scr_st
    assert isinstance(st.kit.umem, UserMemory)
    st.kit.umem.protect(st.data_start, PAGE_SIZE, PROT_READ)
    ex = st.enter(st.put(st.data_start + 8, MAGIC), st.tcs1)
    scr_assert_pf(ex, st.data_start + 8, 0x7)
    regs = st.engines[0].regs
    assert (regs[Reg.RAX], regs[Reg.RBX], regs[Reg.RCX], regs[Reg.RIP]) == (3, st.tcs1, AEP, AEP)
    assert regs[Reg.RSP] == SCR_URSP  # the synthetic state takes URSP from the SSA
    assert scr_tcs_cssa(st.kit, st.encl, st.tcs1) == 1
    # The OS fixes the PTE; ERESUME retries the store and the op completes.
    st.kit.umem.protect(st.data_start, PAGE_SIZE, PROT_READ | PROT_WRITE)
    assert st.resume(st.tcs1).kind is ExitKind.EEXIT
    assert st.get(st.data_start + 8, tcs=st.tcs2, lp=1) == MAGIC


def test_scr_epcm_restricted_fault_and_emodpe(scr_st: ScrSelftest) -> None:
    """The selftest `epcm_permissions` flow."""
    st = scr_st
    kit = st.kit
    assert kit.emodpr(st.encl, st.data_start, SCR_R) == 0
    assert kit.etrack(st.encl) == 0
    assert st.eaccept(st.data_start, SCR_R | SCR_REG | SCR_PR) == 0
    ex = st.enter(st.put(st.data_start, MAGIC), st.tcs1)
    scr_assert_pf(ex, st.data_start, 0x8007)
    emodpe = encl_op_emodpe(encl_op_header(ENCL_OP_EMODPE), st.data_start, SCR_R | SCR_W)
    st.call(emodpe, tcs=st.tcs2, lp=1)
    assert st.resume(st.tcs1).kind is ExitKind.EEXIT
    assert st.get(st.data_start, tcs=st.tcs2, lp=1) == MAGIC


def test_scr_pending_fault_then_eaccept_and_eresume(scr_st: ScrSelftest) -> None:
    """The selftest `augment` flow: the faulting store completes after EACCEPT."""
    st = scr_st
    page = st.base + 0xC000
    st.kit.eaug(st.encl, page)
    ex = st.enter(st.put(page + 0x10, MAGIC), st.tcs1)
    scr_assert_pf(ex, page + 0x10, 0x8007)
    assert st.eaccept(page, SCR_R | SCR_W | SCR_REG | SCR_PENDING, tcs=st.tcs2, lp=1) == 0
    ex = st.resume(st.tcs1)
    assert ex.kind is ExitKind.EEXIT
    assert scr_epc_u64(st.kit, st.encl, page + 0x10) == MAGIC
    assert scr_tcs_cssa(st.kit, st.encl, st.tcs1) == 0


def test_scr_eaccept_on_unmapped_page_faults_then_retries(scr_st: ScrSelftest) -> None:
    """The selftest `augment_via_eaccept` flow: #PF 4 on the EACCEPT, EAUG, ERESUME, ret 0."""
    st = scr_st
    page = st.base + 0xD000
    op = encl_op_eaccept(encl_op_header(ENCL_OP_EACCEPT), page, SCR_R | SCR_W | SCR_REG | SCR_PENDING, 7)
    scr_assert_pf(st.enter(op, st.tcs1), page, 0x4)
    st.kit.eaug(st.encl, page)
    assert st.resume(st.tcs1).kind is ExitKind.EEXIT
    assert st.result(encl_op_eaccept).ret == 0
    st.call(st.put(page, MAGIC2))
    assert st.get(page) == MAGIC2


def test_scr_eaccept_mismatch_returns_error(scr_st: ScrSelftest) -> None:
    st = scr_st
    page = st.base + 0xC000
    st.kit.eaug(st.encl, page)
    assert st.eaccept(page, SCR_R | SCR_REG | SCR_PENDING) == SgxError.SGX_PAGE_ATTRIBUTES_MISMATCH


def test_scr_trim_read_fault(scr_st: ScrSelftest) -> None:
    """Selftests `remove_added_page_invalid_access` (+ after EACCEPT), then EREMOVE."""
    st = scr_st
    kit = st.kit
    st.call(st.put(st.data_start, MAGIC))
    assert kit.emodt(st.encl, st.data_start, PageType.PT_TRIM) == 0
    assert kit.etrack(st.encl) == 0
    scr_assert_pf(st.enter(st.getop(st.data_start), st.tcs1), st.data_start, 0x8005)
    assert st.eaccept(st.data_start, SCR_TRIM | SCR_MODIFIED, tcs=st.tcs2, lp=1) == 0
    scr_assert_pf(st.enter(st.getop(st.data_start), st.tcs2, lp=1), st.data_start, 0x8005)
    assert kit.eremove(st.encl, st.data_start) == 0
    # ERESUME retries the load: no PTE any more, so an ordinary not-present read fault (U).
    scr_assert_pf(st.resume(st.tcs1), st.data_start, 0x4)


def _scr_add_tcs(st: ScrSelftest) -> int:
    """The selftest `tcs_create` flow: EAUG stack/TCS/SSA, EACCEPT, INIT_TCS_PAGE, EMODT, EACCEPT."""
    kit = st.kit
    stack, tcs, ssa = st.base + 0xA000, st.base + 0xB000, st.base + 0xE000
    free = _scr_free_tcs(st)
    for page in (stack, tcs, ssa):
        kit.eaug(st.encl, page)
        assert st.eaccept(page, SCR_R | SCR_W | SCR_REG | SCR_PENDING, tcs=free, lp=1) == 0
    init = encl_op_init_tcs_page(
        encl_op_header(ENCL_OP_INIT_TCS_PAGE), tcs, ssa - st.base, st.layout.dyn_entry
    )
    st.call(init, tcs=free, lp=1)
    assert kit.emodt(st.encl, tcs, PageType.PT_TCS) == 0
    assert kit.etrack(st.encl) == 0
    assert st.eaccept(tcs, SCR_TCS | SCR_MODIFIED, tcs=free, lp=1) == 0
    return tcs


def _scr_free_tcs(st: ScrSelftest) -> int:
    for tcs in (st.tcs1, st.tcs2):
        if scr_tcs_cssa(st.kit, st.encl, tcs) == 0:
            return tcs
    raise AssertionError("no free TCS")


def test_scr_tcs_create_and_dyn_entry(scr_st: ScrSelftest) -> None:
    st = scr_st
    tcs = _scr_add_tcs(st)
    put = encl_op_put_to_buf(encl_op_header(ENCL_OP_PUT_TO_BUFFER), MAGIC2)
    st.call(put, tcs=tcs)
    got = st.call(encl_op_get_from_buf(encl_op_header(ENCL_OP_GET_FROM_BUFFER), 0), tcs=tcs)
    assert got.value == MAGIC2
    # encl_dyn_entry's stack is the page below the TCS: the untrusted RSP was pushed there.
    assert scr_epc_u64(st.kit, st.encl, ((tcs - 1) & ~15) - 8) == SCR_URSP


def test_scr_init_tcs_page_image(scr_st: ScrSelftest) -> None:
    st = scr_st
    page = st.base + 0xC000
    st.kit.eaug(st.encl, page)
    assert st.eaccept(page, SCR_R | SCR_W | SCR_REG | SCR_PENDING) == 0
    st.call(st.put(page + 0x800, MAGIC))
    init = encl_op_init_tcs_page(encl_op_header(ENCL_OP_INIT_TCS_PAGE), page, 0x7000, 0x1234)
    st.call(init)
    raw = st.kit.cpu.epc.read(st.kit.cpu.epc.index(st.encl.pages[page]), 0, PAGE_SIZE)
    assert raw == scr_tcs(0x7000, 0x1234).ljust(PAGE_SIZE, b"\0")


def test_scr_init_tcs_page_fault_on_pending(scr_st: ScrSelftest) -> None:
    """rep stosb faults at the first byte of the TCS page while it is still PENDING."""
    st = scr_st
    page = st.base + 0xC000
    st.kit.eaug(st.encl, page)
    init = encl_op_init_tcs_page(encl_op_header(ENCL_OP_INIT_TCS_PAGE), page, 0x7000, 0x1234)
    scr_assert_pf(st.enter(init, st.tcs1), page, 0x8007)


# -- custom enclaves: nested AEX, stale TLB, determinism ------------------------------------------

SCR_CODE = 0x2000
SCR_SSA1, SCR_SSA2 = 0x3000, 0x5000  # two frames each (NSSA 2)
SCR_STACK_TOP1 = 0x8000  # TCS n's stack top is this + (TCS - base)
SCR_DATA, SCR_DATA2 = 0x9000, 0xA000
SCR_AUG = 0x10000  # EAUG'd pages go from here
SCR_SIZE = 0x20000


def scr_custom(
    key: rsa.RSAPrivateKey,
    entry: Callable[[ScriptedContext], Step],
    *,
    trace: list[TraceEvent] | None = None,
) -> tuple[LeafKit, Enclave, list[ScriptedEngine]]:
    kit = scr_new_kit()
    rw, rx = secinfo_flags(PageType.PT_REG, SCR_R | SCR_W), secinfo_flags(PageType.PT_REG, SCR_R | SCR_X)
    tcs = secinfo_flags(PageType.PT_TCS)
    pages = [
        ScrPage(0x0000, scr_tcs(SCR_SSA1, SCR_CODE, nssa=2), tcs, PROT_READ | PROT_WRITE),
        ScrPage(0x1000, scr_tcs(SCR_SSA2, SCR_CODE, nssa=2), tcs, PROT_READ | PROT_WRITE),
        ScrPage(SCR_CODE, b"\xcc" * PAGE_SIZE, rx, PROT_READ | 4),
    ]
    pages += [ScrPage(off, b"", rw, PROT_READ | PROT_WRITE) for off in range(0x3000, 0xB000, PAGE_SIZE)]
    encl = scr_build(kit, key, SCR_BASE, SCR_SIZE, pages, miscselect=1)  # EXINFO on
    program = ScriptedProgram(
        {SCR_CODE: entry}, stack=lambda ctx: ctx.tcs + SCR_STACK_TOP1
    )
    engines = [
        ScriptedEngine(kit.cpu, kit.cpu.lp(i), kit.umem, program, trace=trace) for i in range(2)
    ]
    return kit, encl, engines


def scr_enter(kit: LeafKit, eng: ScriptedEngine, tcs: int, budget: int | None = None, **regs: int) -> EngineExit:
    for name, value in regs.items():
        eng.regs[Reg[name.upper()]] = value
    kit.eenter(tcs, eng.lp.index, eng.regs)
    return eng.run(budget)


def scr_resume(kit: LeafKit, eng: ScriptedEngine, tcs: int, budget: int | None = None) -> EngineExit:
    kit.eresume(tcs, eng.lp.index, eng.regs)
    return eng.run(budget)


def test_scr_nested_aex(scr_key: rsa.RSAPrivateKey) -> None:
    """CSSA 0 faults; an entry at CSSA 1 reads EXINFO, fixes it and faults itself (CSSA 2);
    each level resumes in turn, the outer one on the other logical processor."""
    base = SCR_BASE
    a, b = base + SCR_AUG, base + SCR_AUG + PAGE_SIZE
    record = base + SCR_DATA
    accept = SCR_R | SCR_W | SCR_REG | SCR_PENDING

    def entry(ctx: ScriptedContext) -> Step:
        if ctx.rdi == 0:  # main
            ctx.store_u64(a, MAGIC)
            yield
        elif ctx.rdi == 1:  # the handler, entered at CSSA 1: frame CSSA-1 holds the AEX
            gpr = ctx.base + SCR_SSA1 + ctx.cssa * PAGE_SIZE - GPRSGX_SIZE
            maddr = ctx.load_u64(gpr - 16)
            yield
            errcd = ctx.load_u64(gpr - 8) & 0xFFFF_FFFF
            yield
            ctx.store_u64(record, maddr)
            ctx.store_u64(record + 8, errcd)
            ctx.store_u64(record + 16, ctx.cssa)
            yield
            ctx.store_u64(record + 24, ctx.eaccept(maddr & ~(PAGE_SIZE - 1), accept))
            yield
            ctx.store_u64(b, MAGIC2)  # also PENDING: a nested AEX
            yield
        else:  # a helper thread accepts the page at RSI
            ctx.store_u64(record + 32, ctx.eaccept(ctx.rsi, accept))
            yield
        ctx.eexit()

    kit, encl, (e0, e1) = scr_custom(scr_key, entry)
    kit.eaug(encl, a)
    kit.eaug(encl, b)
    tcs1, tcs2 = base, base + PAGE_SIZE
    scr_assert_pf(scr_enter(kit, e0, tcs1, rdi=0), a, 0x8007)
    assert scr_tcs_cssa(kit, encl, tcs1) == 1
    scr_assert_pf(scr_enter(kit, e0, tcs1, rdi=1), b, 0x8007)
    assert scr_tcs_cssa(kit, encl, tcs1) == 2
    assert scr_enter(kit, e1, tcs2, rdi=2, rsi=b).kind is ExitKind.EEXIT
    assert scr_resume(kit, e0, tcs1).kind is ExitKind.EEXIT  # the handler (frame 1) finishes
    assert scr_tcs_cssa(kit, encl, tcs1) == 1
    assert scr_resume(kit, e1, tcs1).kind is ExitKind.EEXIT  # main (frame 0), on LP1
    assert scr_tcs_cssa(kit, encl, tcs1) == 0
    assert [scr_epc_u64(kit, encl, record + i) for i in range(0, 40, 8)] == [a, 0x8007, 1, 0, 0]
    assert scr_epc_u64(kit, encl, a) == MAGIC
    assert scr_epc_u64(kit, encl, b) == MAGIC2


def test_scr_stale_tlb_survives_emodpr(scr_key: rsa.RSAPrivateKey) -> None:
    """LP1, inside with write rights cached, keeps writing after EMODPR+ETRACK; a new entry
    faults 0x8007; EACCEPT(PR) is refused (NOT_TRACKED) until LP1 leaves."""
    base = SCR_BASE
    page, result = base + SCR_DATA2, base + SCR_DATA

    def entry(ctx: ScriptedContext) -> Step:
        if ctx.rdi == 0:
            for i in range(8):
                ctx.store_u64(page, i)
                yield
        elif ctx.rdi == 1:
            ctx.store_u64(page + 8, MAGIC)
            yield
        else:
            ctx.store_u64(result, ctx.eaccept(page, SCR_R | SCR_REG | SCR_PR))
            yield
        ctx.eexit()

    kit, encl, (e0, e1) = scr_custom(scr_key, entry)
    tcs1, tcs2 = base, base + PAGE_SIZE
    assert scr_enter(kit, e1, tcs2, budget=3, rdi=0).kind is ExitKind.SLICE
    assert kit.emodpr(encl, page, SCR_R) == 0
    assert kit.etrack(encl) == 0
    ex = e1.run(3)
    assert (ex.kind, ex.instructions) == (ExitKind.SLICE, 3)
    assert scr_epc_u64(kit, encl, page) == 5  # stale translation: the writes still land
    scr_assert_pf(scr_enter(kit, e0, tcs1, rdi=1), page + 8, 0x8007)
    assert scr_enter(kit, e0, tcs1, rdi=2).kind is ExitKind.EEXIT  # at CSSA 1
    assert scr_epc_u64(kit, encl, result) == SgxError.SGX_NOT_TRACKED
    assert e1.run().kind is ExitKind.EEXIT
    assert scr_epc_u64(kit, encl, page) == 7
    assert scr_enter(kit, e0, tcs1, rdi=2).kind is ExitKind.EEXIT
    assert scr_epc_u64(kit, encl, result) == 0


def test_scr_interrupt_and_slices(scr_key: rsa.RSAPrivateKey) -> None:
    base = SCR_BASE
    page = base + SCR_DATA

    def entry(ctx: ScriptedContext) -> Step:
        for i in range(5):
            ctx.store_u64(page + 8 * i, i + 1)
            yield
        ctx.eexit()

    kit, encl, (e0, _) = scr_custom(scr_key, entry)
    tcs1 = base
    assert scr_enter(kit, e0, tcs1, budget=2).kind is ExitKind.SLICE
    ex = e0.interrupt()
    assert (ex.kind, ex.event) == (ExitKind.AEX, None)
    gpr = kit.cpu.epc.index(encl.pages[base + SCR_SSA1]), PAGE_SIZE - GPRSGX_SIZE
    assert kit.cpu.epc.read(gpr[0], gpr[1] + 160, 4) == bytes(4)  # EXITINFO: no event
    assert e0.regs[Reg.RIP] == AEP and scr_tcs_cssa(kit, encl, tcs1) == 1
    ex = scr_resume(kit, e0, tcs1, budget=0)
    assert (ex.kind, ex.instructions) == (ExitKind.SLICE, 0)
    ex = e0.run()
    assert (ex.kind, ex.instructions) == (ExitKind.EEXIT, 4)  # 3 stores + the EEXIT step
    assert [scr_epc_u64(kit, encl, page + 8 * i) for i in range(5)] == [1, 2, 3, 4, 5]


def test_scr_replay_keeps_values_loaded_before_the_fault(scr_key: rsa.RSAPrivateKey) -> None:
    """A value loaded before a faulting step is not reloaded after ERESUME (on hardware it sits
    in a register): the replay hands back the logged value."""
    base = SCR_BASE
    x, y, pending = base + SCR_DATA, base + SCR_DATA + 8, base + SCR_AUG

    def entry(ctx: ScriptedContext) -> Step:
        if ctx.rdi == 0:
            v = ctx.load_u64(x)
            yield
            ctx.store_u64(pending, v)
            yield
            ctx.store_u64(y, v)
            yield
        elif ctx.rdi == 1:
            ctx.store_u64(x, 2)
            ctx.eaccept(pending, SCR_R | SCR_W | SCR_REG | SCR_PENDING)
            yield
        else:
            ctx.store_u64(x, 1)
            yield
        ctx.eexit()

    kit, encl, (e0, e1) = scr_custom(scr_key, entry)
    kit.eaug(encl, pending)
    tcs1, tcs2 = base, base + PAGE_SIZE
    assert scr_enter(kit, e0, tcs1, rdi=2).kind is ExitKind.EEXIT
    scr_assert_pf(scr_enter(kit, e0, tcs1, rdi=0), pending, 0x8007)
    assert scr_enter(kit, e1, tcs2, rdi=1).kind is ExitKind.EEXIT
    assert scr_resume(kit, e0, tcs1).kind is ExitKind.EEXIT
    assert [scr_epc_u64(kit, encl, a) for a in (x, pending, y)] == [2, 1, 1]


def test_scr_code_fetch_checked(scr_key: rsa.RSAPrivateKey) -> None:
    """The notional RIP must be on an executable page: a fetch from an NX PTE is #PF 0x15, from
    an EPCM page without X #PF 0x8015."""
    base = SCR_BASE

    def entry(ctx: ScriptedContext) -> Step:
        ctx.jump(ctx.base + SCR_DATA)
        yield
        ctx.eexit()

    kit, encl, (e0, _) = scr_custom(scr_key, entry)
    data = base + SCR_DATA
    scr_assert_pf(scr_enter(kit, e0, base), data, 0x15)
    kit.map(encl, data, encl.pages[data], write=True, execute=True)
    scr_assert_pf(scr_resume(kit, e0, base), data, 0x8015)


def test_scr_usage_errors(scr_key: rsa.RSAPrivateKey) -> None:
    base = SCR_BASE

    def swallow(ctx: ScriptedContext) -> Step:
        with contextlib.suppress(SgxFault):
            ctx.load_u64(ctx.base + SCR_AUG)  # ELRANGE, no EPC page
        yield
        ctx.eexit()

    kit, encl, (e0, _) = scr_custom(scr_key, swallow)
    kit.eenter(base, 0, e0.regs)
    with pytest.raises(SgxUsageError, match="swallowed"):
        e0.run()
    outside = ScriptedEngine(kit.cpu, kit.cpu.lp(1), kit.umem, e0.program)
    with pytest.raises(SgxUsageError):
        outside.run()


def test_scr_falling_off_the_end_is_ud(scr_key: rsa.RSAPrivateKey) -> None:
    def entry(ctx: ScriptedContext) -> Step:
        yield

    kit, encl, (e0, _) = scr_custom(scr_key, entry)
    ex = scr_enter(kit, e0, SCR_BASE)
    assert ex.kind is ExitKind.AEX and ex.event is not None and ex.event.vector == Vector.UD


def _scr_two_thread_run(key: rsa.RSAPrivateKey) -> tuple[list[TraceEvent], list[int], list[str]]:
    base = SCR_BASE
    counter, pending = base + SCR_DATA, base + SCR_AUG

    def entry(ctx: ScriptedContext) -> Step:
        for _ in range(4):
            v = ctx.load_u64(counter)
            yield
            ctx.store_u64(counter, v + 1)
            yield
        if ctx.rdi == 0:
            ctx.store_u64(pending + 8 * ctx.rsi, v)  # faults until accepted
            yield
        else:
            ctx.store_u64(counter + 8, ctx.eaccept(pending, SCR_R | SCR_W | SCR_REG | SCR_PENDING))
            yield
        ctx.eexit()

    trace: list[TraceEvent] = []
    kit, encl, (e0, e1) = scr_custom(key, entry, trace=trace)
    kit.eaug(encl, pending)
    tcs1, tcs2 = base, base + PAGE_SIZE
    exits: list[str] = []
    kit.eenter(tcs1, 0, e0.regs)
    e1.regs[Reg.RDI] = 1
    kit.eenter(tcs2, 1, e1.regs)
    live = {0: (e0, tcs1), 1: (e1, tcs2)}
    turn = 0
    while live:
        who = sorted(live)[turn % len(live)]
        eng, tcs = live[who]
        ex = eng.interrupt() if turn == 5 else eng.run(1 + turn % 2)
        exits.append(f"{who}:{ex.kind.value}:{ex.instructions}")
        if ex.kind is ExitKind.EEXIT:
            del live[who]
        elif ex.kind is ExitKind.AEX:
            kit.eresume(tcs, who, eng.regs)
        turn += 1
    values = [scr_epc_u64(kit, encl, counter), scr_epc_u64(kit, encl, counter + 8)]
    values.append(scr_epc_u64(kit, encl, pending))
    return trace, values, exits


def test_scr_stepping_is_deterministic(scr_key: rsa.RSAPrivateKey) -> None:
    first = _scr_two_thread_run(scr_key)
    second = _scr_two_thread_run(scr_key)
    assert first == second
    trace, values, exits = first
    assert {e[1] for e in trace if e[0] == "step"} == {0, 1}
    assert any(":aex:" in e for e in exits)
    assert values[1] == 0  # the EACCEPT succeeded


def test_scr_ereport_egetkey_eacceptcopy(scr_key: rsa.RSAPrivateKey) -> None:
    """The convenience leaves build their operands on the enclave stack with checked stores."""
    base = SCR_BASE
    record, src, dst = base + SCR_DATA, base + SCR_DATA2, base + SCR_AUG
    seal = struct.pack("<HH", 4, 1).ljust(512, b"\0")  # SEAL key bound to MRENCLAVE
    bad = struct.pack("<HH", 9, 0).ljust(512, b"\0")  # no such KEYNAME

    def entry(ctx: ScriptedContext) -> Step:
        report = ctx.ereport(reportdata=b"\x5a" * 64)
        ctx.store(record, report[64:96])  # MRENCLAVE
        ctx.store(record + 32, report[320:384])  # REPORTDATA
        yield
        rax1, key1 = ctx.egetkey(seal)
        rax2, key2 = ctx.egetkey(seal)
        rax3, key3 = ctx.egetkey(bad)
        ctx.store(record + 96, struct.pack("<QQQ", rax1, rax2, rax3) + key1 + key2 + key3)
        yield
        ctx.store_u64(src, MAGIC)
        ctx.store_u64(record + 168, ctx.eacceptcopy(dst, src, SCR_R | SCR_X | SCR_REG))
        yield
        ctx.jump(dst)  # the copied page is executable now
        yield
        ctx.jump(ctx.base + SCR_CODE)
        ctx.store_u64(record + 176, ctx.load_u64(dst))
        yield
        ctx.eexit()

    kit, encl, (e0, _) = scr_custom(scr_key, entry)
    kit.eaug(encl, dst)
    assert scr_enter(kit, e0, base).kind is ExitKind.EEXIT
    raw = kit.cpu.epc.read(kit.cpu.epc.index(encl.pages[record]), 0, 184)
    secs = kit.cpu.enclaves()[0]
    assert raw[0:32] == secs.mrenclave and any(secs.mrenclave)
    assert raw[32:96] == b"\x5a" * 64
    rax1, rax2, rax3 = struct.unpack("<QQQ", raw[96:120])
    key1, key2, key3 = raw[120:136], raw[136:152], raw[152:168]
    assert (rax1, rax2, rax3) == (0, 0, SgxError.SGX_INVALID_KEYNAME)
    assert key1 == key2 and any(key1) and key3 == bytes(16)
    assert struct.unpack("<QQ", raw[168:184]) == (0, MAGIC)
    e = kit.cpu.epcm[kit.cpu.epc.index(encl.pages[dst])]
    assert (e.perms, e.pending) == (SCR_R | SCR_X, False)


def test_scr_stack_and_op_struct_faults(scr_st: ScrSelftest) -> None:
    """Faults on the enclave stack and on the untrusted op struct, at the exact access."""
    st = scr_st
    umem = st.kit.umem
    assert isinstance(umem, UserMemory)
    top = st.tcs1 + st.layout.stack1_top
    umem.protect(top - PAGE_SIZE, PAGE_SIZE, PROT_READ)
    scr_assert_pf(st.enter(encl_op_header(ENCL_OP_NOP), st.tcs1), top - 8, 0x7)  # push %rax
    # The op struct in a read-only untrusted page: GET_FROM_BUFFER's store to op->value.
    ro = SCR_OP + 0x2000
    umem.map_anonymous(ro, PAGE_SIZE, PROT_READ | PROT_WRITE)
    umem.write(ro, bytes(encl_op_get_from_buf(encl_op_header(ENCL_OP_GET_FROM_BUFFER), 0)))
    umem.protect(ro, PAGE_SIZE, PROT_READ)
    eng = st.engines[1]
    eng.regs[Reg.RDI], eng.regs[Reg.RSP] = ro, SCR_URSP
    scr_enclu(st.kit, eng, EncluLeaf.EENTER, st.tcs2, HOST_RIP)
    scr_assert_pf(eng.run(), ro + 8, 0x7)
    # Unmapped meanwhile: the retried store now faults not-present (W|U).
    umem.unmap(ro, PAGE_SIZE)
    scr_assert_pf(st.resume(st.tcs2, lp=1), ro + 8, 0x6)
