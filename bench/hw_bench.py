"""Processor-model benchmarks: leaf costs per page, measured through the real leaves."""

from __future__ import annotations

import struct
import time
import tracemalloc
from collections.abc import Callable

from sgxemu.arch.constants import PAGE_SIZE, EnclsLeaf, PageType, SecinfoFlags
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
    eadd, eextend = EnclsLeaf.EADD, EnclsLeaf.EEXTEND
    pageinfo = 0x1000
    t0 = time.perf_counter()
    for i in range(pages):
        pa = cpu.epc.address(kit.alloc_index())
        kmem.write(pageinfo, struct.pack("<4Q", BASE + i * PAGE_SIZE, 0x2000, secinfo, encl.secs_pa))
        cpu.encls(eadd, pageinfo, pa, mem=kmem)
        if measure:
            for off in range(0, PAGE_SIZE, 256):
                cpu.encls(eextend, encl.secs_pa, pa + off, mem=kmem)
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


BENCHMARKS: dict[str, Callable[[bool], float]] = {
    "build_us_per_page": build_us_per_page,
    "eremove_us_per_page": eremove_us_per_page,
    "epcm_bytes_per_page": epcm_bytes_per_page,
}
TARGETS = {
    "build_us_per_page": ("<=", 15.0, "SGX1 hardware: 25-42 us per page"),
    "eremove_us_per_page": ("<=", 2.0, "hardware: ~1.8 us per page"),
    "epcm_bytes_per_page": ("<=", 200.0, "metadata per committed page"),
}

