"""EPC oversubscription (main.c): allocation, watermarks, aging, EBLOCK/ETRACK/EWB, ELDU,
SECS eviction, VA pages, and that every page comes back at teardown."""

from __future__ import annotations

import errno
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from sgxemu import Machine, uapi
from sgxemu.exec.scripted import ScriptedEngine
from sgxemu.exec.scripted_selftest import selftest_program
from sgxemu.hw import invariants
from sgxemu.linux.encl import SgxEncl
from sgxemu.linux.enclcall import EnclCaller
from sgxemu.linux.epc import SGX_NR_HIGH_PAGES, SGX_NR_LOW_PAGES
from sgxemu.linux.errors import KernelError
from sgxemu.linux.load import LoadedEnclave, encl_build, sign
from sgxemu.linux.mman import MAP_FIXED, MAP_SHARED, PROT_READ, PROT_WRITE
from sgxemu.linux.reclaim import sgx_reclaim_pages
from sgxemu.loader.selftest_layout import EnclaveImage, load_segments
from sgxemu.testenclave import protocol as P

PAGE = 4096


def _encl(e: LoadedEnclave) -> SgxEncl:
    encl = e.proc.fds[e.fd].private_data
    assert isinstance(encl, SgxEncl)
    return encl


def _machine_for(
    make_machine: Callable[..., Machine], image: EnclaveImage, engine: str, **kw: object
) -> Machine:
    if engine == "native":
        return make_machine(engine="native", **kw)
    program = selftest_program(image)
    return make_machine(engine=lambda c, lp, mem: ScriptedEngine(c, lp, mem, program), **kw)


@pytest.mark.parametrize("engine", ["scripted", "native"])
def test_enclave_twice_the_epc_keeps_every_page(
    make_machine: Callable[..., Machine], elf_path: Path, key: rsa.RSAPrivateKey, engine: str
) -> None:
    epc = 128 * PAGE
    image = load_segments(elf_path, heap_size=2 * epc)
    m = _machine_for(make_machine, image, engine, epc_size=epc)
    proc = m.spawn()
    e = encl_build(proc, image, sigstruct=sign(image, key))
    assert e.size > 2 * epc
    c = EnclCaller(proc, e)
    heap = e.base + image.heap.offset
    for i in range(0, image.heap.size, PAGE):
        assert c.put(heap + i + 8 * (i // PAGE % 500), P.MAGIC ^ i) == 0
        assert c.run.function == uapi.EEXIT
    for i in range(image.heap.size - PAGE, -PAGE, -PAGE):  # backwards: the oldest are evicted
        assert c.get(heap + i + 8 * (i // PAGE % 500)) == P.MAGIC ^ i
    s = m.stats
    assert s.pages_reclaimed > 2 * (epc // PAGE)
    assert s.etracks > 0
    invariants.check(m.cpu)
    encl = _encl(e)
    assert encl.page_cnt == len(encl.page_array) + 1  # + the SECS
    e.delete()
    assert not m.cpu.epcm


def test_a_va_page_per_512_pages(
    make_machine: Callable[..., Machine], elf_path: Path, key: rsa.RSAPrivateKey
) -> None:
    image = load_segments(elf_path, heap_size=520 * PAGE)
    m = _machine_for(make_machine, image, "scripted", epc_size=256 * PAGE)
    proc = m.spawn()
    e = encl_build(proc, image, sigstruct=sign(image, key))
    encl = _encl(e)
    assert encl.page_cnt == len(image.segments[0].data) // PAGE + 531 - 2 or encl.page_cnt > 512
    assert len(encl.va_pages) == 2  # the SECS and 511 pages fill the first
    slots = sum(bin(v.slots).count("1") for v in encl.va_pages)
    evicted = sum(1 for p in encl.page_array.values() if p.epc_page is None)
    assert slots == evicted + (encl.secs.epc_page is None)
    e.delete()


def test_watermarks_and_ksgxd(make_machine: Callable[..., Machine], elf_path: Path, key: rsa.RSAPrivateKey) -> None:
    epc = 256 * PAGE
    image = load_segments(elf_path, heap_size=220 * PAGE)
    m = _machine_for(make_machine, image, "scripted", epc_size=epc)
    proc = m.spawn()
    encl_build(proc, image, sigstruct=sign(image, key))
    # ADD_PAGES left fewer than SGX_NR_LOW_PAGES free: ksgxd ran at the syscall's exit and
    # reclaimed up to the high watermark.
    assert m.stats.ksgxd_runs >= 1
    assert m.epc.nr_free_pages >= SGX_NR_HIGH_PAGES


def test_starved_ksgxd_leaves_direct_reclaim(
    make_machine: Callable[..., Machine], elf_path: Path, key: rsa.RSAPrivateKey
) -> None:
    image = load_segments(elf_path, heap_size=200 * PAGE)
    m = _machine_for(make_machine, image, "scripted", epc_size=128 * PAGE, ksgxd=False)
    proc = m.spawn()
    e = encl_build(proc, image, sigstruct=sign(image, key))
    assert m.stats.ksgxd_runs == 0 and m.stats.reclaim_batches > 0
    assert m.epc.nr_free_pages < SGX_NR_LOW_PAGES
    c = EnclCaller(proc, e)
    c.put_buf(P.MAGIC)
    assert c.get_buf() == P.MAGIC


def test_allocator_errors(machine: Machine) -> None:
    epc = machine.epc
    held = [epc.alloc(None, False) for _ in range(epc.nr_free_pages)]
    with pytest.raises(KernelError) as info:
        epc.alloc(None, True)
    assert info.value.errno == errno.ENOMEM  # nothing free, nothing reclaimable
    for page in held:
        epc.free(page)


def test_young_pages_survive_one_scan(caller: EnclCaller) -> None:
    m = caller.proc.machine
    e = caller.e
    caller.put_buf(P.MAGIC)  # the TCS, stack, SSA, buffer pages are young now
    buf = _encl(e).page_array[(e.base + e.image.data_offset) >> 12]
    assert buf.epc_page is not None
    sgx_reclaim_pages(m)  # the first scan only ages it (its PTE's accessed bit was set)
    assert buf.epc_page is not None
    while buf.epc_page is not None:
        sgx_reclaim_pages(m)
    assert caller.get_buf() == P.MAGIC


def test_secs_goes_with_its_last_child_and_comes_back(caller: EnclCaller) -> None:
    m = caller.proc.machine
    encl = _encl(caller.e)
    secs_backing = encl.size >> 12
    while m.epc.active:
        sgx_reclaim_pages(m)
    assert encl.secs_child_cnt == 0 and encl.secs.epc_page is None
    assert encl.backing is not None and secs_backing in encl.backing.contents
    caller.get_buf()
    assert encl.secs.epc_page is not None
    assert secs_backing not in encl.backing.contents  # ELDU truncated it


def test_eaug_under_pressure_retries_after_ksgxd(caller: EnclCaller) -> None:
    """EAUG allocates without reclaim: -EBUSY -> VM_FAULT_NOPAGE, ksgxd runs, the retry works."""
    e, proc = caller.e, caller.proc
    m = proc.machine
    caller.put_buf(P.MAGIC)
    held = [m.epc.alloc(None, False) for _ in range(m.epc.nr_free_pages)]
    addr = e.base + e.image.src_size
    proc.mmap(addr, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, e.fd, 0)
    runs = m.stats.ksgxd_runs
    assert caller.eaccept(addr, 0x20B) == 0
    assert m.stats.ksgxd_runs > runs
    assert caller.get_buf() == P.MAGIC
    for page in held:
        m.epc.free(page)


def test_many_enclaves_share_a_small_epc(
    make_machine: Callable[..., Machine], image: EnclaveImage, sigstruct: bytes
) -> None:
    m = make_machine(epc_size=48 * PAGE)
    procs = [m.spawn() for _ in range(4)]
    callers = [EnclCaller(p, encl_build(p, image, sigstruct=sigstruct)) for p in procs]
    for rounds in range(3):
        for c in callers:
            c.put_buf(P.MAGIC + rounds * 100 + c.proc.pid)
        for c in callers:
            assert c.get_buf() == P.MAGIC + rounds * 100 + c.proc.pid
    assert m.stats.pages_reclaimed > 0
    invariants.check(m.cpu)
    for c in callers:
        c.e.delete()
    assert not m.cpu.epcm


def test_close_with_evicted_pages_frees_va_and_backing(caller: EnclCaller) -> None:
    m = caller.proc.machine
    encl = _encl(caller.e)
    while m.epc.active:
        sgx_reclaim_pages(m)
    assert len(m.cpu.epcm) == len(encl.va_pages)  # only the VA page is left resident
    caller.e.delete()
    assert not m.cpu.epcm and encl.released and encl.backing is None
