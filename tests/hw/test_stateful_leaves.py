"""Random leaf sequences over several enclaves and logical processors (hypothesis stateful).

After every step the invariant checker holds; nothing but a modelled fault (`SgxFault`) ever
escapes a leaf; and a leaf that faults, or returns an error code that the SDM says changes
nothing, leaves the whole processor state exactly as it was.
"""

from __future__ import annotations

import struct
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    multiple,
    precondition,
    rule,
)

from sgxemu.arch.constants import (
    PAGE_SIZE,
    EnclsLeaf,
    EncluLeaf,
    PageType,
    SgxError,
    secinfo_flags,
)
from sgxemu.hw import invariants
from sgxemu.hw.faults import SgxFault
from sgxemu.hw.processor import Processor
from sgxemu.hw.regs import Registers
from sgxemu.leafkit import Enclave, LeafKit, PagedOut
from sgxemu.sign.sigstruct import generate_key, mrsigner_of_key, sign_sigstruct

KEY = generate_key()
CPUS = 3
EPC_PAGES = 48
SIZE = 0x10000  # 16 pages of ELRANGE per enclave
BASES = [0x10_0000_0000 + i * SIZE for i in range(4)]
SECINFO_AT = 0xF000  # the enclave page that holds EACCEPT's SECINFO (offset in ELRANGE)

PERMS = st.sampled_from([0, 1, 3, 5, 7, 2])  # 2 (W without R) is invalid
OFFSETS = st.integers(0, SIZE // PAGE_SIZE - 1).map(lambda i: i * PAGE_SIZE)
STATE_FLAGS = st.sampled_from([0, 0x08, 0x10, 0x20, 0x18])


def snapshot(cpu: Processor) -> Any:
    """Everything a failed leaf must not change (EPCM, hidden SECS state, LPs, EPC contents)."""
    epcm = {
        i: (e.pt, e.perms, e.state, e.secs.eid if e.secs else None, e.linaddr, e.epoch)
        for i, e in cpu.epcm.items()
    }
    secs = {
        s.eid: (s.index, s.attributes, s.chldcnt, dict(s.inside), s.epoch, s.mrenclave,
                s.measurement.final() if s.measurement else None)
        for s in cpu.enclaves()
    }
    lps = [(lp.enclave_mode, lp.tcs_index) for lp in cpu.lps]
    contents = {i: bytes(cpu.epc.page(i)) for i in cpu.epcm}
    return epcm, secs, lps, contents, cpu.lepubkeyhash


class LeafMachine(RuleBasedStateMachine):
    enclaves = Bundle("enclaves")
    blobs = Bundle("blobs")

    def __init__(self) -> None:
        super().__init__()
        self.kit = LeafKit(epc_size=EPC_PAGES * PAGE_SIZE, cpus=CPUS)
        self.cpu = self.kit.cpu
        self.regs = [Registers() for _ in range(CPUS)]
        self.va: list[int] = []
        self.va_next = 0
        self.used_bases: set[int] = set()

    # -- helpers -------------------------------------------------------------------------------
    def attempt(self, fn: Any, *, unchanged_codes: frozenset[int] = frozenset(range(1, 300))) -> Any:
        """Run a leaf: a fault or an error code in `unchanged_codes` must change nothing."""
        before = snapshot(self.cpu)
        try:
            result = fn()
        except SgxFault:
            assert snapshot(self.cpu) == before, "a faulting leaf changed the processor state"
            return None
        if isinstance(result, int) and result in unchanged_codes:
            assert snapshot(self.cpu) == before, f"error {result} changed the processor state"
        return result

    def lin(self, encl: Enclave, offset: int) -> int:
        return encl.base + offset

    # -- ENCLS ---------------------------------------------------------------------------------
    @precondition(lambda self: len(self.cpu.epcm) < EPC_PAGES - 4)
    @rule(target=enclaves, base=st.sampled_from(BASES), attrs=st.sampled_from([4, 6, 0x14, 5]),
          misc=st.sampled_from([0, 1, 2]))
    def ecreate(self, base: int, attrs: int, misc: int) -> Any:
        result = self.attempt(lambda: self.kit.ecreate(base, SIZE, attributes=attrs, miscselect=misc))
        return result if result is not None else multiple()

    @precondition(lambda self: len(self.cpu.epcm) < EPC_PAGES - 8)
    @rule(target=enclaves, base=st.sampled_from(BASES), misc=st.sampled_from([0, 1]))
    def build_ready(self, base: int, misc: int) -> Any:
        """A runnable enclave: two TCSs, their SSA pages, a SECINFO page, data pages, EINIT."""
        if base in {s.baseaddr for s in self.cpu.enclaves()}:
            return multiple()
        kit = self.kit
        encl = kit.ecreate(base, SIZE, miscselect=misc)
        for tcs, ssa in ((0x0, 0xC000), (0x1000, 0xD000)):
            data = bytearray(PAGE_SIZE)
            struct.pack_into("<QIIQ", data, 16, ssa, 0, 1, 0x2000)
            kit.eadd(encl, base + tcs, bytes(data), secinfo_flags(PageType.PT_TCS))
            kit.eadd(encl, base + ssa, bytes(PAGE_SIZE), secinfo_flags(PageType.PT_REG, 3))
        for off, perms in ((0x2000, 5), (0x3000, 3), (0x4000, 1), (SECINFO_AT, 3)):
            kit.eadd(encl, base + off, bytes(PAGE_SIZE), secinfo_flags(PageType.PT_REG, perms))
        secs = self.cpu.secs_of(self.cpu.epc.index(encl.secs_pa))
        assert secs is not None and secs.measurement is not None
        sig = sign_sigstruct(KEY, enclavehash=secs.measurement.final(), attributes=4, xfrm=3,
                             attributemask=0, xfrmmask=0, miscselect=0, miscmask=0,
                             isvprodid=0, isvsvn=0)
        kit.set_lepubkeyhash(mrsigner_of_key(KEY))
        assert kit.einit(encl, sig) == 0
        return encl

    @precondition(lambda self: len(self.cpu.epcm) < EPC_PAGES - 2)
    @rule(encl=enclaves, offset=OFFSETS, kind=st.sampled_from(["tcs", "reg"]), perms=PERMS,
          measure=st.booleans())
    def eadd(self, encl: Enclave, offset: int, kind: str, perms: int, measure: bool) -> None:
        if kind == "tcs":
            data = bytearray(PAGE_SIZE)
            struct.pack_into("<QIIQ", data, 16, SECINFO_AT - PAGE_SIZE, 0, 1, 0)
            flags = secinfo_flags(PageType.PT_TCS)
        else:
            data, flags = bytearray(b"\x11" * PAGE_SIZE), secinfo_flags(PageType.PT_REG, perms)
        self.attempt(lambda: self.kit.eadd(encl, self.lin(encl, offset), bytes(data), flags,
                                           measure=measure))

    @rule(encl=enclaves, sign_ok=st.booleans())
    def einit(self, encl: Enclave, sign_ok: bool) -> None:
        secs = self.cpu.secs_of(self.cpu.epc.index(encl.secs_pa))
        if secs is None or secs.measurement is None:
            return
        mrenclave = secs.measurement.final() if sign_ok else bytes(32)
        sig = sign_sigstruct(KEY, enclavehash=mrenclave, attributes=secs.attributes & ~1,
                             xfrm=3, attributemask=0, xfrmmask=0, miscselect=0, miscmask=0,
                             isvprodid=0, isvsvn=0)
        self.kit.set_lepubkeyhash(mrsigner_of_key(KEY))
        self.attempt(lambda: self.kit.einit(encl, sig))

    @rule(encl=enclaves, offset=OFFSETS)
    def eaug(self, encl: Enclave, offset: int) -> None:
        if len(self.cpu.epcm) >= EPC_PAGES - 1:
            return
        self.attempt(lambda: self.kit.eaug(encl, self.lin(encl, offset)))

    @rule(encl=enclaves, offset=OFFSETS, perms=PERMS)
    def emodpr(self, encl: Enclave, offset: int, perms: int) -> None:
        if self.lin(encl, offset) in encl.pages:
            self.attempt(lambda: self.kit.emodpr(encl, self.lin(encl, offset), perms))

    @rule(encl=enclaves, offset=OFFSETS, pt=st.sampled_from([PageType.PT_TCS, PageType.PT_TRIM,
                                                            PageType.PT_REG]))
    def emodt(self, encl: Enclave, offset: int, pt: PageType) -> None:
        if self.lin(encl, offset) in encl.pages:
            self.attempt(lambda: self.kit.emodt(encl, self.lin(encl, offset), pt))

    @rule(encl=enclaves)
    def etrack(self, encl: Enclave) -> None:
        self.attempt(lambda: self.kit.etrack(encl))

    @rule(encl=enclaves, offset=OFFSETS)
    def eremove(self, encl: Enclave, offset: int) -> None:
        lin = self.lin(encl, offset)
        if lin in encl.pages:
            self.attempt(lambda: self.kit.eremove(encl, lin))

    @rule(encl=consumes(enclaves))
    def eremove_secs(self, encl: Enclave) -> None:
        result = self.attempt(lambda: self.kit.encls(EnclsLeaf.EREMOVE, 0, encl.secs_pa))
        if result != 0:
            return
        # The SECS is gone; pages still listed for it are gone too only if it had no children.
        encl.pages.clear()

    @precondition(lambda self: len(self.cpu.epcm) < EPC_PAGES - 1 and len(self.va) < 2)
    @rule()
    def epa(self) -> None:
        pa = self.attempt(self.kit.epa)
        if pa is not None:
            self.va.append(pa)

    @rule(encl=enclaves, offset=OFFSETS)
    def eblock(self, encl: Enclave, offset: int) -> None:
        pa = encl.pages.get(self.lin(encl, offset))
        if pa is not None:
            self.attempt(lambda: self.kit.eblock(pa))

    @precondition(lambda self: bool(self.va))
    @rule(target=blobs, encl=enclaves, offset=OFFSETS, block_first=st.booleans())
    def ewb(self, encl: Enclave, offset: int, block_first: bool) -> Any:
        lin = self.lin(encl, offset)
        pa = encl.pages.get(lin)
        if pa is None:
            return multiple()
        if block_first:
            self.attempt(lambda: self.kit.eblock(pa))
            self.attempt(lambda: self.kit.etrack(encl))
        slot = self.va[0] + 8 * (self.va_next % 512)
        self.va_next += 1
        result = self.attempt(lambda: self.kit.ewb(pa, slot),
                              unchanged_codes=frozenset({SgxError.SGX_PAGE_NOT_BLOCKED,
                                                         SgxError.SGX_NOT_TRACKED,
                                                         SgxError.SGX_CHILD_PRESENT}))
        if result is None or result[0] not in (0, SgxError.SGX_VA_SLOT_OCCUPIED):
            return multiple()
        del encl.pages[lin]
        return (encl, lin, slot, result[1])

    @rule(item=consumes(blobs), blocked=st.booleans())
    def eldu(self, item: tuple[Enclave, int, int, PagedOut], blocked: bool) -> None:
        encl, lin, slot, blob = item
        if len(self.cpu.epcm) >= EPC_PAGES:
            return
        pa = self.kit.alloc()
        code = self.attempt(lambda: self.kit.eld(blob, pa, slot, encl.secs_pa, blocked=blocked))
        if code == 0:
            self.kit.map(encl, lin, pa)
            encl.pages[lin] = pa

    # -- ENCLU -----------------------------------------------------------------------------------
    @rule(lp=st.integers(0, CPUS - 1), encl=enclaves, offset=st.sampled_from([0, 0x1000, 0x2000]),
          resume=st.booleans())
    def enter(self, lp: int, encl: Enclave, offset: int, resume: bool) -> None:
        if self.cpu.lps[lp].enclave_mode:
            return
        leaf = self.kit.eresume if resume else self.kit.eenter
        self.attempt(lambda: leaf(self.lin(encl, offset), lp, self.regs[lp]))

    @rule(lp=st.integers(0, CPUS - 1))
    def eexit(self, lp: int) -> None:
        if self.cpu.lps[lp].enclave_mode:
            self.attempt(lambda: self.kit.eexit(self.regs[lp], lp))

    @rule(lp=st.integers(0, CPUS - 1), offset=OFFSETS, leaf=st.sampled_from(
        [EncluLeaf.EACCEPT, EncluLeaf.EMODPE]), pt=st.sampled_from(
        [PageType.PT_REG, PageType.PT_TCS, PageType.PT_TRIM]), perms=PERMS, state=STATE_FLAGS)
    def accept_or_extend(self, lp: int, offset: int, leaf: EncluLeaf, pt: PageType, perms: int,
                         state: int) -> None:
        cpu_lp = self.cpu.lps[lp]
        if not cpu_lp.enclave_mode or cpu_lp.secs is None:
            return
        base = cpu_lp.secs.baseaddr
        secinfo = base + SECINFO_AT
        flags = secinfo_flags(pt, perms, state)

        self.attempt(
            lambda: self.kit.enclave_store(secinfo, struct.pack("<Q", flags) + bytes(56), lp)
        )
        self.attempt(lambda: self.kit.enclu(self.regs[lp], leaf, secinfo, base + offset, lp=lp),
                     unchanged_codes=frozenset({SgxError.SGX_PAGE_ATTRIBUTES_MISMATCH,
                                                     SgxError.SGX_NOT_TRACKED}))

    @rule(lp=st.integers(0, CPUS - 1), encl=enclaves, tcs=st.sampled_from([0, 0x1000]),
          ops=st.lists(st.tuples(st.sampled_from(["eaccept", "emodpe", "store", "load"]),
                                 OFFSETS, st.sampled_from([PageType.PT_REG, PageType.PT_TCS,
                                                           PageType.PT_TRIM]), PERMS,
                                 STATE_FLAGS), max_size=4))
    def visit(self, lp: int, encl: Enclave, tcs: int, ops: list[Any]) -> None:
        """EENTER, a few in-enclave operations, EEXIT: the common path, made frequent."""
        if self.cpu.lps[lp].enclave_mode:
            return
        if self.attempt(lambda: self.kit.eenter(encl.base + tcs, lp, self.regs[lp])) is None:
            return
        secinfo = encl.base + SECINFO_AT
        for op, offset, pt, perms, state in ops:
            target = encl.base + offset
            if op in ("eaccept", "emodpe"):
                flags = secinfo_flags(pt, perms, state)
                self.attempt(lambda f=flags: self.kit.enclave_store(
                    secinfo, struct.pack("<Q", f) + bytes(56), lp))
                leaf = EncluLeaf.EACCEPT if op == "eaccept" else EncluLeaf.EMODPE
                self.attempt(lambda lf=leaf, t=target: self.kit.enclu(
                    self.regs[lp], lf, secinfo, t, lp=lp), unchanged_codes=frozenset(
                    {SgxError.SGX_PAGE_ATTRIBUTES_MISMATCH, SgxError.SGX_NOT_TRACKED}))
            elif op == "store":
                self.attempt(lambda t=target: self.kit.enclave_store(t, b"\x5a" * 8, lp))
            else:
                self.attempt(lambda t=target: self.kit.enclave_load(t, 8, lp))
        self.attempt(lambda: self.kit.eexit(self.regs[lp], lp))

    @invariant()
    def processor_is_consistent(self) -> None:
        invariants.check(self.cpu)

    def teardown(self) -> None:
        self.cpu.close()


LeafMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=60, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestLeafSequences = LeafMachine.TestCase
