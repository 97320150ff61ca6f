"""Linux-level benchmarks: the whole stack (vDSO, AEX, kernel fault, driver, reclaimer) on the
native engine, through the Python API a host program uses.

* `fault_eaug_eaccept_us_per_page`: an enclave touching N fresh pages, as a runtime growing
  its heap does: one __vdso_sgx_enter_enclave into an enclave that EACCEPTs the pages in a
  loop (bench/accept_loop_encl.c, on the test enclave's entry code and layout). Per page:
  EACCEPT takes a #PF (AEX), the kernel's fault handler EAUGs the page, the vDSO ERESUMEs and
  EACCEPT succeeds.
* `fault_eaug_eaccept_ecall_us_per_page`: the same per page, plus an enclave call per page
  (the selftests' augment_via_eaccept over and over: EENTER and EEXIT through the vDSO, the
  test enclave's EACCEPT op). Reported, no target.
* `selftest_suite_s`: the 16 kernel selftests (sgxemu.selftests) on an 8 MiB EPC, end to end.
* `oversubscribed_remove_s`: the `unclobbered_vdso_oversubscribed_remove` selftest at 128 MiB
  EPC (a 128 MiB heap: ADD, TRIM, EACCEPT and REMOVE of 32768 pages, with the reclaimer).
"""

from __future__ import annotations

import contextlib
import dataclasses
import struct
import time
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

from sgxemu import Machine, uapi
from sgxemu.arch.constants import PAGE_SIZE
from sgxemu.linux.load import encl_build, sign
from sgxemu.linux.mman import MAP_FIXED, MAP_SHARED, PROT_READ, PROT_WRITE
from sgxemu.linux.process import Process
from sgxemu.loader.selftest_layout import EnclaveImage, load_segments
from sgxemu.testenclave import build_test_enclave
from sgxemu.testenclave import protocol as P

SECINFO_REG_RW_PENDING = 0x20B  # R | W | PENDING | PT_REG << 8
_ACCEPT_RANGE = struct.Struct("<5Q")  # accept_loop_encl.c: first, count, flags, ret, accepted


@cache
def _key() -> Any:
    from sgxemu.sign import generate_key

    return generate_key()


@cache
def _image(encl_size: int) -> EnclaveImage:
    """The test enclave with its one-page heap, in an ELRANGE of `encl_size` bytes."""
    image = load_segments(build_test_enclave())
    return dataclasses.replace(image, encl_size=max(encl_size, image.encl_size))


def _accept_loop_image(encl_size: int) -> EnclaveImage:
    """The benchmark enclave (accept_loop_encl.c), built like the test enclave, in an ELRANGE
    of `encl_size` bytes."""
    from importlib import resources

    from sgxemu.buildcache import cached_build, content_digest, default_cache_root
    from sgxemu.testenclave.build import ENCLAVE_CFLAGS, EnclaveBuildError

    pkg = resources.files("sgxemu.testenclave")
    sources = {
        "encl_entry.S": pkg.joinpath("encl_entry.S").read_bytes(),
        "encl.lds": pkg.joinpath("encl.lds").read_bytes(),
        "encl.c": (Path(__file__).parent / "accept_loop_encl.c").read_bytes(),
    }
    digest = content_digest(("gcc", *ENCLAVE_CFLAGS), sources)
    elf = cached_build(
        what="the EACCEPT-loop benchmark enclave",
        cc="gcc",
        sources=sources,
        digest=digest,
        out_dir=default_cache_root() / f"acceptloop-{digest[:16]}",
        product="accept_loop.elf",
        argv=lambda cc: [cc, *ENCLAVE_CFLAGS, "-o", "accept_loop.elf", "encl_entry.S", "encl.c"],
        error=EnclaveBuildError,
    )
    image = load_segments(elf)
    return dataclasses.replace(image, encl_size=max(encl_size, image.encl_size))


@contextlib.contextmanager
def _augmentable(image: EnclaveImage, pages: int) -> Iterator[tuple[Process, int, int, Any]]:
    """`image` built in a fresh process on the native engine, its ELRANGE beyond the image
    mapped for EAUG on fault (at least `pages` pages): (process, first such page, a page of
    user memory for the op, the vDSO run struct)."""
    with Machine(epc_size=128 << 20, engine="native") as m:
        proc = m.spawn()
        e = encl_build(proc, image, sigstruct=sign(image, _key()))
        start = e.base + image.src_size
        length = e.size - image.src_size
        assert length >= pages * PAGE_SIZE
        proc.mmap(start, length, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, e.fd, 0)
        yield proc, start, proc.alloc(PAGE_SIZE), uapi.sgx_enclave_run(tcs=e.tcs)


def fault_eaug_eaccept_us_per_page(quick: bool = False) -> float:
    """µs per fresh page an enclave EACCEPTs in a loop: #PF, AEX, EAUG, ERESUME, EACCEPT.

    The median of 8 enclave calls of 32 pages each (256 on a full run)."""
    batch = 32 if quick else 256
    pages = 8 * batch
    image = _accept_loop_image(1 << (pages * PAGE_SIZE * 2 - 1).bit_length())
    with _augmentable(image, pages + 1) as (proc, start, op_addr, run):

        def accept(first: int, count: int) -> None:
            proc.write(op_addr, _ACCEPT_RANGE.pack(first, count, SECINFO_REG_RW_PENDING, 0, 0))
            assert proc.main.vdso_sgx_enter_enclave(op_addr, 0, 0, uapi.EENTER, 0, 0, run) == 0
            assert run.function == uapi.EEXIT
            ret, accepted = _ACCEPT_RANGE.unpack(proc.read(op_addr, _ACCEPT_RANGE.size))[3:]
            assert (ret, accepted) == (0, count), (ret, accepted)

        accept(start, 1)  # warm up: the first entry translates the enclave's code
        faults = proc.page_faults
        samples = []
        for first in range(start + PAGE_SIZE, start + (pages + 1) * PAGE_SIZE, batch * PAGE_SIZE):
            t0 = time.perf_counter()
            accept(first, batch)
            samples.append((time.perf_counter() - t0) / batch * 1e6)
        assert proc.page_faults - faults == pages, "every page must fault (EAUG)"
    return sorted(samples)[len(samples) // 2]


def fault_eaug_eaccept_ecall_us_per_page(quick: bool = False) -> float:
    """µs per page of EACCEPT on a fresh page, one enclave call each: EENTER, #PF, AEX, EAUG,
    ERESUME, EACCEPT, EEXIT."""
    pages = 256 if quick else 2048
    image = _image(1 << (pages * PAGE_SIZE * 2 - 1).bit_length())
    with _augmentable(image, pages + 1) as (proc, start, op_addr, run):
        op = P.encl_op_eaccept(P.encl_op_header(P.ENCL_OP_EACCEPT), 0, SECINFO_REG_RW_PENDING, 0)
        enter = proc.main.vdso_sgx_enter_enclave
        faults = proc.page_faults

        def accept(addr: int) -> None:
            op.epc_addr = addr
            proc.write(op_addr, op)
            assert enter(op_addr, 0, 0, uapi.EENTER, 0, 0, run) == 0
            assert run.function == uapi.EEXIT

        accept(start)  # warm up: the first entry translates the enclave's code
        t0 = time.perf_counter()
        for i in range(1, pages + 1):
            accept(start + i * PAGE_SIZE)
        elapsed = time.perf_counter() - t0
        result = P.encl_op_eaccept.from_buffer_copy(proc.read(op_addr, 32))
        assert result.ret == 0, result.ret
        assert proc.page_faults - faults >= pages + 1, "every page must fault (EAUG)"
    return elapsed / pages * 1e6


def _selftests() -> Any:
    from sgxemu.selftests import SelftestConfig, SelftestSuite

    return SelftestConfig, SelftestSuite


def selftest_suite_s(quick: bool = False) -> float:
    """Seconds for the 16 selftests on an 8 MiB EPC (each on a fresh machine)."""
    config_cls, suite_cls = _selftests()
    suite = suite_cls(key=_key())
    suite.image(PAGE_SIZE)  # load the ELF outside the timing
    t0 = time.perf_counter()
    results = suite.run_all(config_cls(epc_size=8 << 20, engine="native"))
    elapsed = time.perf_counter() - t0
    failed = [(r.name, r.reason) for r in results if r.outcome != "PASS"]
    assert len(results) == 16 and not failed, failed
    return elapsed


def oversubscribed_remove_s(quick: bool = False) -> float:
    """Seconds for unclobbered_vdso_oversubscribed_remove at 128 MiB EPC (32 MiB on --quick)."""
    config_cls, suite_cls = _selftests()
    suite = suite_cls(key=_key())
    epc = (32 if quick else 128) << 20
    suite.sigstruct(suite.image(epc))  # signing (a hash of every page) is not the kernel's work
    t0 = time.perf_counter()
    result = suite.run("unclobbered_vdso_oversubscribed_remove",
                       config_cls(epc_size=epc, engine="native"))
    elapsed = time.perf_counter() - t0
    assert result.outcome == "PASS", (result.reason, result.traceback)
    return elapsed


BENCHMARKS: dict[str, Callable[[bool], float]] = {
    "fault_eaug_eaccept_us_per_page": fault_eaug_eaccept_us_per_page,
    "fault_eaug_eaccept_ecall_us_per_page": fault_eaug_eaccept_ecall_us_per_page,
    "selftest_suite_s": selftest_suite_s,
    "oversubscribed_remove_s": oversubscribed_remove_s,
}
TARGETS: dict[str, tuple[str, float, str]] = {
    "fault_eaug_eaccept_us_per_page": (
        "<=", 60.0, "AEX+fault+EAUG+ERESUME+EACCEPT per page, in enclave calls of 256 pages (32 on --quick)"),
    "fault_eaug_eaccept_ecall_us_per_page": (
        "", float("nan"), "the same plus EENTER+EEXIT through the vDSO per page; report only"),
    "selftest_suite_s": ("", float("nan"), "16 kernel selftests, 8 MiB EPC, native engine; report only"),
    "oversubscribed_remove_s": (
        "<=", 60.0, "128 MiB EPC (32 MiB with --quick); on hardware this selftest takes minutes"),
}

if __name__ == "__main__":
    import sys

    quick = "--quick" in sys.argv
    for name, fn in BENCHMARKS.items():
        print(f"{name}: {fn(quick):.2f}")
