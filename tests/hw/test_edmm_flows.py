"""The EDMM handshakes end to end (spec 5, 6.1, 6.4), and what each skipped or reordered step gives.

An OS side (ENCLS through LeafKit) and enclave threads (LeafKit.eenter on logical processors
0..2, through TCS 0..2) take turns. Enclave data accesses go through `hw.access`, so the #PF
error codes are those the Linux selftests record on hardware: 0x8007 for a write to a PENDING
or read-only page, 0x8005 for a read of a TRIM page.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest

from sgxemu.arch.constants import EnclsLeaf, EncluLeaf, PageType, SgxError, secinfo_flags
from sgxemu.hw.access import EXECUTE, READ, enclave_access
from sgxemu.hw.enclu.aex import aex
from sgxemu.hw.faults import GeneralProtection, PageFault
from sgxemu.hw.regs import Reg, Registers
from sgxemu.hw.secs import SecsState
from sgxemu.leafkit import Enclave, LeafKit
from sgxemu.sign import mrsigner_of_key
from testkeys import key_a, plain_sigstruct

R, W, X = 1, 2, 4
PENDING, MODIFIED, PR = 0x08, 0x10, 0x20
REG, TCS, TRIM = PageType.PT_REG, PageType.PT_TCS, PageType.PT_TRIM

BASE = 0x2000_0000
SIZE = 0x2_0000
SECINFO = BASE + 0x6000  # RW page where the enclave builds SECINFOs
DATA = BASE + 0x7000  # RW
CODE = BASE + 0x8000  # R-X: OENTRY
RO = BASE + 0x9000  # R--
DYN = BASE + 0x1_0000  # EAUG area
DYN2 = BASE + 0x1_1000
OUTSIDE = BASE + SIZE

PF_WRITE = 0x8007  # P | W | U | SGX: write to a PENDING, MODIFIED or read-only page
PF_READ = 0x8005  # P | U | SGX: read of a TRIM / TCS / PENDING page


def tcs_at(i: int) -> int:
    return BASE + 0x2000 * i  # its SSA frame is the next page


def tcs_image(ossa: int) -> bytes:
    fields = (0, 0, ossa, 0, 1, CODE - BASE, 0, 0, 0, 0xFFFFFFFF, 0xFFFFFFFF)
    return struct.pack("<QQQIIQQQQII", *fields).ljust(4096, b"\0")


def secinfo(flags: int) -> bytes:
    return struct.pack("<Q", flags) + bytes(56)


class Flow:
    """One initialized enclave (three TCSs) and the moves of the OS and the enclave threads."""

    def __init__(self) -> None:
        self.kit = kit = LeafKit(epc_size=1 << 20, cpus=4)
        self.cpu = kit.cpu
        self.encl = kit.ecreate(BASE, SIZE)
        for i in range(3):
            kit.eadd(self.encl, tcs_at(i), tcs_image(tcs_at(i) + 0x1000 - BASE), secinfo_flags(TCS))
            kit.eadd(self.encl, tcs_at(i) + 0x1000, b"", secinfo_flags(REG, R | W))
        kit.eadd(self.encl, SECINFO, b"", secinfo_flags(REG, R | W))
        kit.eadd(self.encl, DATA, b"D" * 4096, secinfo_flags(REG, R | W))
        kit.eadd(self.encl, CODE, b"\x90" * 4096, secinfo_flags(REG, R | X))
        kit.eadd(self.encl, RO, b"r" * 4096, secinfo_flags(REG, R))
        self.secs = self.secs_of(self.encl)
        self.init(self.encl, self.secs)
        self.regs: dict[int, Registers] = {}

    def secs_of(self, encl: Enclave) -> SecsState:
        secs = self.cpu.secs_of(self.cpu.epc.index(encl.secs_pa))
        assert secs is not None
        return secs

    def init(self, encl: Enclave, secs: SecsState) -> None:
        assert secs.measurement is not None
        sig = plain_sigstruct(secs.measurement.final())
        self.kit.set_lepubkeyhash(mrsigner_of_key(key_a()))
        assert self.kit.einit(encl, sig) == 0

    def entry(self, lin: int) -> Any:
        return self.cpu.epcm.get(self.cpu.epc.index(self.encl.pages[lin]))

    # -- enclave threads: thread i runs on LP i through TCS i ------------------------------------
    def enter(self, lp: int, tcs: int | None = None) -> Registers:
        self.regs[lp] = self.kit.eenter(tcs if tcs is not None else tcs_at(lp), lp=lp)
        return self.regs[lp]

    def exit(self, lp: int) -> None:
        self.kit.eexit(self.regs.pop(lp), lp=lp)

    def interrupt(self, lp: int, event: PageFault | None = None) -> None:
        """An AEX on `lp` (an IPI when `event` is None, else the fault the thread just took)."""
        aex(self.cpu, self.cpu.lp(lp), self.regs[lp], event)

    def resume(self, lp: int) -> None:
        self.kit.eresume(tcs_at(lp), lp=lp, regs=self.regs[lp])

    def store(self, lp: int, lin: int, data: bytes) -> None:
        self.kit.enclave_store(lin, data, lp=lp)

    def load(self, lp: int, lin: int, size: int = 8) -> bytes:
        return self.kit.enclave_load(lin, size, lp=lp)

    def enclu(self, lp: int, leaf: EncluLeaf, rbx: int, rcx: int, rdx: int = 0) -> int:
        return self.kit.enclu(self.regs[lp], leaf, rbx, rcx, rdx, lp=lp)

    def eaccept(self, lp: int, lin: int, flags: int) -> int:
        self.store(lp, SECINFO, secinfo(flags))
        return self.enclu(lp, EncluLeaf.EACCEPT, SECINFO, lin)

    def eacceptcopy(self, lp: int, dst: int, src: int, flags: int) -> int:
        self.store(lp, SECINFO, secinfo(flags))
        return self.enclu(lp, EncluLeaf.EACCEPTCOPY, SECINFO, dst, src)

    def emodpe(self, lp: int, lin: int, perms: int) -> None:
        self.store(lp, SECINFO, secinfo(perms))
        self.enclu(lp, EncluLeaf.EMODPE, SECINFO, lin)

    # -- the OS -------------------------------------------------------------------------------------
    def eaug(self, lin: int) -> int:
        return self.kit.eaug(self.encl, lin)

    def emodpr(self, lin: int, perms: int) -> int:
        return self.kit.emodpr(self.encl, lin, perms)

    def emodt(self, lin: int, page_type: PageType) -> int:
        return self.kit.emodt(self.encl, lin, page_type)

    def etrack(self) -> int:
        return self.kit.etrack(self.encl)

    def eremove(self, lin: int) -> int:
        return self.kit.eremove(self.encl, lin)


@pytest.fixture
def f() -> Flow:
    return Flow()


def fault(fn: Any, *args: Any) -> tuple[int, int]:
    """(address, error code) of the #PF `fn(*args)` raises."""
    with pytest.raises(PageFault) as pf:
        fn(*args)
    return pf.value.addr, pf.value.error_code


def epcm_state(e: Any) -> tuple[Any, ...]:
    return e.pt, e.perms, e.pending, e.modified, e.pr


# ================================================================================================
# EAUG -> EACCEPT (spec 5.1)
# ================================================================================================


def test_eaug_then_eaccept(f: Flow) -> None:
    f.enter(0)
    children = f.secs.chldcnt
    f.eaug(DYN)
    assert f.secs.chldcnt == children + 1
    assert epcm_state(f.entry(DYN)) == (REG, R | W, True, False, False)
    # Before the EACCEPT the page is unusable (selftest `augment`: a write gives 0x8007).
    assert fault(f.store, 0, DYN, b"x") == (DYN, PF_WRITE)
    assert fault(f.load, 0, DYN) == (DYN, PF_READ)
    # No ETRACK is needed for a PENDING-only change, even for a thread inside since before.
    assert f.eaccept(0, DYN, secinfo_flags(REG, R | W, PENDING)) == 0
    assert epcm_state(f.entry(DYN)) == (REG, R | W, False, False, False)
    assert f.load(0, DYN, 4096) == bytes(4096)
    f.store(0, DYN + 8, b"hello")
    assert f.load(0, DYN + 8, 5) == b"hello"


def test_eaccept_on_an_unmapped_address_is_an_ordinary_fault_then_succeeds(f: Flow) -> None:
    """Selftest `augment_via_eaccept`: #PF code 4, the kernel EAUGs, ERESUME re-runs EACCEPT."""
    regs = f.enter(0)
    f.kit.umem.set_pte(DYN, 0)
    f.store(0, SECINFO, secinfo(secinfo_flags(REG, R | W, PENDING)))
    rip = regs[Reg.RIP]
    with pytest.raises(PageFault) as pf:
        f.enclu(0, EncluLeaf.EACCEPT, SECINFO, DYN)
    assert (pf.value.addr, pf.value.error_code) == (DYN, 0x4)
    assert regs[Reg.RIP] == rip
    f.interrupt(0, pf.value)
    f.eaug(DYN)
    f.resume(0)
    assert (regs[Reg.RIP], regs[Reg.RBX], regs[Reg.RCX]) == (rip, SECINFO, DYN)
    f.cpu.enclu(f.cpu.lp(0), regs, f.kit.umem)  # the same ENCLU, re-executed
    assert regs[Reg.RAX] == 0 and regs[Reg.RIP] == rip + 3
    assert not f.entry(DYN).pending


def test_eaccept_with_the_wrong_rwx_is_19_and_the_page_stays_pending(f: Flow) -> None:
    f.enter(0)
    f.eaug(DYN)
    assert f.eaccept(0, DYN, secinfo_flags(REG, R, PENDING)) == SgxError.SGX_PAGE_ATTRIBUTES_MISMATCH
    assert f.eaccept(0, DYN, secinfo_flags(REG, R | W | X, PENDING)) == 19
    assert f.entry(DYN).pending
    assert fault(f.store, 0, DYN, b"x") == (DYN, PF_WRITE)
    assert f.eaccept(0, DYN, secinfo_flags(REG, R | W, PENDING)) == 0


def test_eaug_preconditions(f: Flow) -> None:
    # On an uninitialized enclave: #GP.
    other = f.kit.ecreate(BASE, SIZE)
    with pytest.raises(GeneralProtection):
        f.kit.eaug(other, DYN)
    # Outside ELRANGE: #GP.
    with pytest.raises(GeneralProtection):
        f.eaug(OUTSIDE)
    with pytest.raises(GeneralProtection):
        f.eaug(BASE - 0x1000)
    # Onto a valid EPC page: #PF(RCX).
    target = f.encl.pages[DATA]
    f.kit.pageinfo(DYN, 0, 0, f.encl.secs_pa)
    with pytest.raises(PageFault) as pf:
        f.kit.encls(EnclsLeaf.EAUG, 0x1000, target)
    assert (pf.value.addr, pf.value.error_code) == (target, 0x8003)
    assert f.cpu.epc.index(target) in f.cpu.epcm and f.entry(DATA).pt is REG


# ================================================================================================
# EMODPR -> ETRACK -> EACCEPT (spec 5.2)
# ================================================================================================


def test_emodpr_etrack_eaccept(f: Flow) -> None:
    f.enter(0)
    f.store(0, DATA, b"before")
    assert f.emodpr(DATA, R) == 0
    assert epcm_state(f.entry(DATA)) == (REG, R, False, False, True)
    assert f.etrack() == 0
    f.interrupt(0)  # the IPI that follows ETRACK
    f.resume(0)
    assert f.eaccept(0, DATA, secinfo_flags(REG, R, PR)) == 0
    assert epcm_state(f.entry(DATA)) == (REG, R, False, False, False)
    # The restriction holds (selftest `epcm_permissions`: 0x8007), and reads still work.
    assert fault(f.store, 0, DATA, b"after") == (DATA, PF_WRITE)
    assert f.load(0, DATA, 6) == b"before"


def test_eaccept_before_etrack_is_not_tracked(f: Flow) -> None:
    assert f.emodpr(DATA, R) == 0
    f.enter(0)
    assert f.eaccept(0, DATA, secinfo_flags(REG, R, PR)) == SgxError.SGX_NOT_TRACKED
    assert f.entry(DATA).pr
    assert f.etrack() == 0
    # This thread entered before the ETRACK: the cycle is incomplete until it has left.
    assert f.eaccept(0, DATA, secinfo_flags(REG, R, PR)) == SgxError.SGX_NOT_TRACKED
    f.exit(0)
    f.enter(0)
    assert f.eaccept(0, DATA, secinfo_flags(REG, R, PR)) == 0


def test_emodpr_on_a_pending_page_is_20(f: Flow) -> None:
    f.eaug(DYN)
    assert f.emodpr(DYN, R) == SgxError.SGX_PAGE_NOT_MODIFIABLE
    assert epcm_state(f.entry(DYN)) == (REG, R | W, True, False, False)


def test_stale_tlb_until_the_old_thread_exits(f: Flow) -> None:
    """A thread that cached write rights before EMODPR keeps writing until it leaves (spec 6.4);
    a thread entering afterwards faults; EACCEPT waits for every thread from before the ETRACK."""
    f.enter(0)
    f.store(0, DATA, b"A")  # LP 0 caches RW for DATA
    assert f.emodpr(DATA, R) == 0
    f.store(0, DATA, b"B")  # the stale translation still allows the write
    assert f.load(0, DATA, 1) == b"B"
    f.enter(1)  # a fresh translation sees the restriction
    pf1 = fault(f.store, 1, DATA, b"C")
    assert pf1 == (DATA, PF_WRITE)
    assert f.load(1, DATA, 1) == b"B"
    with pytest.raises(PageFault) as taken:
        f.store(1, DATA, b"C")
    f.interrupt(1, taken.value)  # the fault exits LP 1 (AEX)
    assert f.etrack() == 0
    assert f.etrack() == SgxError.SGX_PREV_TRK_INCMPL  # LP 0 is still inside from before
    f.enter(2)
    assert f.eaccept(2, DATA, secinfo_flags(REG, R, PR)) == SgxError.SGX_NOT_TRACKED
    assert f.eaccept(0, DATA, secinfo_flags(REG, R, PR)) == SgxError.SGX_NOT_TRACKED
    f.store(0, DATA, b"D")  # still stale for LP 0
    assert fault(f.store, 2, DATA, b"E") == (DATA, PF_WRITE)
    f.exit(0)
    assert f.eaccept(2, DATA, secinfo_flags(REG, R, PR)) == 0
    assert epcm_state(f.entry(DATA)) == (REG, R, False, False, False)
    f.enter(0)  # its TLB was flushed on exit: now it faults too
    assert fault(f.store, 0, DATA, b"F") == (DATA, PF_WRITE)
    f.resume(1)  # LP 1 retries its write after ERESUME: still denied
    assert fault(f.store, 1, DATA, b"C") == (DATA, PF_WRITE)
    assert f.load(2, DATA, 1) == b"D"


# ================================================================================================
# EMODT -> ETRACK -> EACCEPT (spec 5.4)
# ================================================================================================


def test_emodt_trim_etrack_eaccept_eremove(f: Flow) -> None:
    f.enter(0)
    assert f.emodt(DATA, TRIM) == 0
    assert epcm_state(f.entry(DATA)) == (TRIM, 0, False, True, False)
    # Selftest `remove_added_page_invalid_access`: a read gives 0x8005.
    assert fault(f.load, 0, DATA) == (DATA, PF_READ)
    # Linux's REMOVE_PAGES probe: EMODPR on a not-yet-accepted trim is 20 ...
    assert f.emodpr(DATA, R | W | X) == SgxError.SGX_PAGE_NOT_MODIFIABLE
    # ... and EREMOVE refuses while a thread is inside (`remove_added_page_no_eaccept`).
    assert f.eremove(DATA) == SgxError.SGX_ENCLAVE_ACT
    assert f.etrack() == 0
    f.exit(0)
    f.enter(0)
    assert f.eaccept(0, DATA, secinfo_flags(TRIM, 0, MODIFIED)) == 0
    assert epcm_state(f.entry(DATA)) == (TRIM, 0, False, False, False)
    # After the EACCEPT: reads still 0x8005 (`..._invalid_access_after_eaccept`) ...
    assert fault(f.load, 0, DATA) == (DATA, PF_READ)
    # ... the probe now faults, and EMODT on an accepted TRIM faults too.
    pa = f.encl.pages[DATA]
    assert fault(f.emodpr, DATA, R | W | X) == (pa, 0x8003)
    assert fault(f.emodt, DATA, TRIM) == (pa, 0x8003)
    assert fault(f.emodt, DATA, TCS) == (pa, 0x8003)
    # EREMOVE frees an accepted trim without the enclave-activity check.
    children = f.secs.chldcnt
    assert f.eremove(DATA) == 0
    assert f.cpu.epc.index(pa) not in f.cpu.epcm
    assert f.secs.chldcnt == children - 1


def test_eremove_of_a_reg_page_with_a_thread_inside(f: Flow) -> None:
    f.enter(1)
    assert f.eremove(RO) == SgxError.SGX_ENCLAVE_ACT
    assert f.entry(RO).pt is REG
    f.exit(1)
    assert f.eremove(RO) == 0


def test_emodt_to_tcs_then_eenter(f: Flow) -> None:
    """Selftest `tcs_create` / SDM16 39.5.8: a new thread control structure at run time."""
    f.enter(0)
    for lin in (DYN, DYN2):
        f.eaug(lin)
        assert f.eaccept(0, lin, secinfo_flags(REG, R | W, PENDING)) == 0
    f.store(0, DYN, tcs_image(DYN2 - BASE))  # the enclave writes the TCS image
    f.exit(0)
    assert f.emodt(DYN, TCS) == 0
    assert epcm_state(f.entry(DYN)) == (TCS, 0, False, True, False)
    # Not usable for entry while MODIFIED.
    assert fault(f.kit.eenter, DYN, 3) == (DYN, PF_READ)
    f.enter(0)  # entered before the ETRACK
    assert f.eaccept(0, DYN, secinfo_flags(TCS, 0, MODIFIED)) == SgxError.SGX_NOT_TRACKED
    f.exit(0)
    assert f.etrack() == 0
    f.enter(0)
    assert f.eaccept(0, DYN, secinfo_flags(TCS, 0, MODIFIED)) == 0
    assert epcm_state(f.entry(DYN)) == (TCS, 0, False, False, False)
    assert fault(f.load, 0, DYN) == (DYN, PF_READ)  # a TCS is no data page
    regs = f.kit.eenter(DYN, lp=3)
    assert (regs[Reg.RIP], regs[Reg.RAX]) == (CODE, 0)
    assert f.cpu.lp(3).enclave_mode and f.cpu.lp(3).tcs_lin == DYN
    f.kit.eexit(regs, lp=3)


# ================================================================================================
# EMODPE (spec 5.3) and EACCEPTCOPY (spec 5.1)
# ================================================================================================


def test_emodpe_after_a_permission_fault(f: Flow) -> None:
    """Selftest `epcm_permissions`: #PF 0x8007, EMODPE from a second TCS, ERESUME, the write works."""
    f.enter(0)
    with pytest.raises(PageFault) as pf:
        f.store(0, RO, b"w")
    assert (pf.value.addr, pf.value.error_code) == (RO, PF_WRITE)
    f.interrupt(0, pf.value)
    f.enter(1)
    f.emodpe(1, RO, R | W)
    assert epcm_state(f.entry(RO)) == (REG, R | W, False, False, False)
    f.exit(1)
    f.resume(0)
    f.store(0, RO, b"w")
    assert f.load(0, RO, 2) == b"wr"


@pytest.mark.parametrize("perms", [R | W, R | X, R, R | W | X], ids=["rw", "r-x", "r", "rwx"])
def test_eacceptcopy(f: Flow, perms: int) -> None:
    f.enter(0)
    code = bytes(range(256)) * 16
    f.store(0, DATA, code)
    f.eaug(DYN)
    assert f.eacceptcopy(0, DYN, DATA, secinfo_flags(REG, perms)) == 0
    assert epcm_state(f.entry(DYN)) == (REG, perms, False, False, False)
    assert f.load(0, DYN, 4096) == code
    lp = f.cpu.lp(0)
    index = f.cpu.epc.index(f.encl.pages[DYN])
    if perms & X:
        assert enclave_access(f.cpu, lp, f.kit.umem, DYN, EXECUTE) == index
    else:
        assert fault(enclave_access, f.cpu, lp, f.kit.umem, DYN, EXECUTE) == (DYN, 0x8015)
    if perms & W:
        f.store(0, DYN, b"!")
    else:
        assert fault(f.store, 0, DYN, b"!") == (DYN, PF_WRITE)
    assert enclave_access(f.cpu, lp, f.kit.umem, DYN, READ) == index


def test_eacceptcopy_onto_a_non_pending_page_is_19(f: Flow) -> None:
    f.enter(0)
    f.eaug(DYN)
    assert f.eaccept(0, DYN, secinfo_flags(REG, R | W, PENDING)) == 0
    before = f.load(0, DYN, 4096)
    assert f.eacceptcopy(0, DYN, DATA, secinfo_flags(REG, R | X)) == 19
    assert f.eacceptcopy(0, RO, DATA, secinfo_flags(REG, R)) == 19
    assert epcm_state(f.entry(DYN)) == (REG, R | W, False, False, False)
    assert f.load(0, DYN, 4096) == before
