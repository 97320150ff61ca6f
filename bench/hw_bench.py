"""Processor-model benchmarks: leaf costs per page, measured through the real leaves."""

from __future__ import annotations

import struct
import time
import tracemalloc
from collections.abc import Callable

from sgxemu.arch.constants import PAGE_SIZE, EnclsLeaf, EncluLeaf, PageType, SecinfoFlags
from sgxemu.hw.processor import Processor
from sgxemu.leafkit import Enclave, LeafKit

R, W = int(SecinfoFlags.R), int(SecinfoFlags.W)
REG = int(PageType.PT_REG) << 8
BASE = 0x4000_0000_0000


def _median(samples: list[float]) -> float:
    s = sorted(samples)
    return s[len(s) // 2]


def _kit(epc_mib: int = 256) -> LeafKit:
    return LeafKit(Processor(epc_size=epc_mib << 20))


def _build(kit: LeafKit, pages: int, measure: bool = True) -> tuple[Enclave, float]:
    """EADD (+16 EEXTEND) `pages` pages the way a kernel would; returns seconds spent."""
    size = 1 << max(13, (pages + 1).bit_length() + 12)
    encl = kit.ecreate(BASE, size)
    kmem, cpu = kit.kmem, kit.cpu
    kmem.write(0x2000, b"\x5a" * PAGE_SIZE)
    secinfo = kit.secinfo(REG | R | W)
    eadd = EnclsLeaf.EADD
    pageinfo = 0x1000
    t0 = time.perf_counter()
    for i in range(pages):
        pa = cpu.epc.address(kit.alloc_index())
        kmem.write(pageinfo, struct.pack("<4Q", BASE + i * PAGE_SIZE, 0x2000, secinfo, encl.secs_pa))
        cpu.encls(eadd, pageinfo, pa, mem=kmem)
        if measure:  # the 16 EEXTENDs of the kernel's sgx_encl_extend
            cpu.encls_eextend_page(encl.secs_pa, pa, mem=kmem)
        encl.pages[BASE + i * PAGE_SIZE] = pa
    return encl, time.perf_counter() - t0


def build_us_per_page(quick: bool) -> float:
    pages = 512 if quick else 4096
    runs = []
    for _ in range(3 if quick else 5):
        _, t = _build(_kit(), pages)
        runs.append(t / pages * 1e6)
    return _median(runs)


def eremove_us_per_page(quick: bool) -> float:
    pages = 1024 if quick else 8192
    runs = []
    for _ in range(3 if quick else 5):
        kit = _kit()
        encl, _ = _build(kit, pages, measure=False)
        pas = list(encl.pages.values())
        t0 = time.perf_counter()
        for pa in pas:
            kit.cpu.encls(EnclsLeaf.EREMOVE, 0, pa, mem=kit.kmem)
        runs.append((time.perf_counter() - t0) / pages * 1e6)
    return _median(runs)


def epcm_bytes_per_page(quick: bool) -> float:
    """Python heap per committed page (EPCM entry and its bookkeeping); contents excluded."""
    pages = 2048 if quick else 16384
    kit = _kit(epc_mib=128)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    _build(kit, pages, measure=False)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return (after - before) / pages


_KEY: list[object] = []


def _initialized(kit: LeafKit, pages: int) -> tuple[Enclave, int]:
    """An EINITed enclave with a TCS, its SSA page and a SECINFO page; room for `pages` more."""
    from sgxemu.hw.secs import SecsState
    from sgxemu.sign.sigstruct import generate_key, mrsigner_of_key, sign_sigstruct

    if not _KEY:
        _KEY.append(generate_key())
    key = _KEY[0]
    size = 1 << max(16, (pages + 8).bit_length() + 12)
    encl = kit.ecreate(BASE, size)
    tcs = bytearray(PAGE_SIZE)
    struct.pack_into("<QIIQ", tcs, 16, PAGE_SIZE, 0, 1, 0)
    kit.eadd(encl, BASE, bytes(tcs), int(PageType.PT_TCS) << 8)
    kit.eadd(encl, BASE + PAGE_SIZE, bytes(PAGE_SIZE), REG | R | W)
    kit.eadd(encl, BASE + 2 * PAGE_SIZE, bytes(PAGE_SIZE), REG | R | W)
    secs = kit.cpu.secs_of(kit.cpu.epc.index(encl.secs_pa))
    assert isinstance(secs, SecsState) and secs.measurement is not None
    sig = sign_sigstruct(key, enclavehash=secs.measurement.final(), attributes=4, xfrm=3,  # type: ignore[arg-type]
                         attributemask=0, xfrmmask=0, miscselect=0, miscmask=0, isvprodid=0,
                         isvsvn=0)
    kit.set_lepubkeyhash(mrsigner_of_key(key))  # type: ignore[arg-type]
    assert kit.einit(encl, sig) == 0
    return encl, BASE + 2 * PAGE_SIZE


def _accept_all(kit: LeafKit, encl: Enclave, secinfo: int, flags: int, lins: list[int]) -> None:
    regs = kit.eenter(encl.base)
    kit.enclave_store(secinfo, struct.pack("<Q", flags) + bytes(56))
    for lin in lins:
        assert kit.enclu(regs, EncluLeaf.EACCEPT, secinfo, lin) == 0
    kit.eexit(regs)


def _augmented(pages: int) -> tuple[LeafKit, Enclave, int, list[int], float]:
    """An initialized enclave whose `pages` new pages went through EAUG + EACCEPT.

    Returns the kit, the enclave, the SECINFO address, the pages, and seconds spent on them.
    """
    kit = _kit()
    encl, secinfo = _initialized(kit, pages)
    lins = [BASE + (16 + i) * PAGE_SIZE for i in range(pages)]
    t0 = time.perf_counter()
    for lin in lins:
        kit.eaug(encl, lin)
    _accept_all(kit, encl, secinfo, REG | R | W | int(SecinfoFlags.PENDING), lins)
    return kit, encl, secinfo, lins, time.perf_counter() - t0


def eaug_eaccept_us_per_page(quick: bool) -> float:
    pages = 512 if quick else 4096
    return _median([_augmented(pages)[4] / pages * 1e6 for _ in range(3 if quick else 5)])


def emodpr_etrack_eaccept_us_per_page(quick: bool) -> float:
    pages = 512 if quick else 4096
    runs = []
    for _ in range(3 if quick else 5):
        kit, encl, secinfo, lins, _ = _augmented(pages)
        t0 = time.perf_counter()
        for lin in lins:
            kit.emodpr(encl, lin, R)
        kit.etrack(encl)
        _accept_all(kit, encl, secinfo, REG | R | int(SecinfoFlags.PR), lins)
        runs.append((time.perf_counter() - t0) / pages * 1e6)
    return _median(runs)


def ewb_eldu_us_per_page(quick: bool) -> float:
    """EBLOCK + EWB + ELDU per page (one ETRACK per batch), contents preserved."""
    pages = 256 if quick else 2048
    runs = []
    for _ in range(3 if quick else 5):
        kit = _kit()
        encl, _ = _initialized(kit, pages)
        lins = [BASE + (16 + i) * PAGE_SIZE for i in range(pages)]
        for lin in lins:
            kit.eaug(encl, lin)
        vas = [kit.epa() for _ in range((pages + 511) // 512)]
        t0 = time.perf_counter()
        blobs = []
        for lin in lins:
            kit.eblock(encl.pages[lin])
        kit.etrack(encl)
        for i, lin in enumerate(lins):
            slot = vas[i // 512] + 8 * (i % 512)
            code, blob = kit.ewb(encl.pages.pop(lin), slot)
            assert code == 0
            blobs.append((lin, slot, blob))
        for lin, slot, blob in blobs:
            pa = kit.alloc()
            assert kit.eld(blob, pa, slot, encl.secs_pa) == 0
            encl.pages[lin] = pa
        runs.append((time.perf_counter() - t0) / pages * 1e6)
    return _median(runs)


BENCHMARKS: dict[str, Callable[[bool], float]] = {
    "build_us_per_page": build_us_per_page,
    "eremove_us_per_page": eremove_us_per_page,
    "ewb_eldu_us_per_page": ewb_eldu_us_per_page,
    "eaug_eaccept_us_per_page": eaug_eaccept_us_per_page,
    "emodpr_etrack_eaccept_us_per_page": emodpr_etrack_eaccept_us_per_page,
    "epcm_bytes_per_page": epcm_bytes_per_page,
}
TARGETS = {
    "build_us_per_page": ("<=", 15.0, "SGX1 hardware: 25-42 us per page"),
    "eremove_us_per_page": ("<=", 2.0, "hardware: ~1.8 us per page"),
    "ewb_eldu_us_per_page": ("<=", 30.0, "hardware: ~40,000 cycles per page"),
    "eaug_eaccept_us_per_page": ("<=", 10.0, "leaf level"),
    "emodpr_etrack_eaccept_us_per_page": ("<=", 10.0, "leaf level"),
    "epcm_bytes_per_page": ("<=", 200.0, "metadata per committed page"),
}

