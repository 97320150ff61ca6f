"""Flows to trace: built-in scenarios, the kernel selftests, and user scripts.

A scenario is a function `scenario(machine) -> None` that drives a `sgxemu.Machine`. The
built-in ones load the project's test enclave the way the kernel selftest does (`test_enclave`),
call `begin(machine, title)` once the enclave is up (so the trace shows the interesting part and
the "before" EPC picture is taken there), and check what the selftest checks: a flow that does
not behave raises `ScenarioError`.

A script is a Python file defining `def scenario(machine) -> None`; it may use `test_enclave`
and `begin` from `sgxemu.trace` too.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import uapi
from ..linux.enclcall import EnclCaller
from ..linux.load import LoadedEnclave, encl_build, sign
from ..linux.mman import MAP_FIXED, MAP_SHARED, PROT_EXEC, PROT_READ, PROT_WRITE
from ..linux.process import Process
from ..testenclave import protocol as P

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import rsa

    from ..linux.machine import Machine
    from ..loader.selftest_layout import EnclaveImage

PAGE = 4096
ScenarioFn = Callable[["Machine"], None]


class ScenarioError(Exception):
    """A scenario did not behave as it should (or could not be loaded)."""


def expect(cond: bool, what: str) -> None:
    if not cond:
        raise ScenarioError(what)


def _exc(c: EnclCaller) -> str:
    vector, code, addr = c.exc()
    return f"vector {vector}, error code {code:#x}, address {addr:#x}"


# -- the test enclave ----------------------------------------------------------------------------
@functools.cache
def test_image() -> EnclaveImage:
    """The project's test enclave (built with gcc once, then cached), laid out like the selftest's."""
    from ..loader.selftest_layout import load_segments
    from ..testenclave import build_test_enclave

    return load_segments(build_test_enclave())


@functools.cache
def _key() -> rsa.RSAPrivateKey:
    from ..sign import generate_key

    return generate_key()


@functools.cache
def _sigstruct() -> bytes:
    return sign(test_image(), _key())


def make_machine(engine: str = "scripted", **kw: Any) -> Machine:
    """A machine that runs the test enclave: "scripted" (fast, Python) or "native" (the ELF)."""
    from ..linux.machine import Machine

    kw.setdefault("epc_size", 4 << 20)
    kw.setdefault("arena_size", 1 << 30)
    if engine == "scripted":
        from ..exec.scripted import ScriptedEngine
        from ..exec.scripted_selftest import selftest_program

        program = selftest_program(test_image())
        return Machine(engine=lambda cpu, lp, mem: ScriptedEngine(cpu, lp, mem, program), **kw)
    return Machine(engine=engine, **kw)


@dataclass
class TestEnclave:
    """What the selftest's setup_test_encl leaves: a process, the loaded enclave, ENCL_CALL."""

    __test__ = False  # not a pytest class

    machine: Machine
    proc: Process
    encl: LoadedEnclave
    c: EnclCaller
    image: EnclaveImage
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def base(self) -> int:
        return self.encl.base

    @property
    def T(self) -> int:  # noqa: N802  (the selftest's name: total size of the loaded segments)
        return self.image.src_size

    @property
    def D(self) -> int:  # noqa: N802  (the selftest's data page)
        return self.encl.data_start

    @property
    def fd(self) -> int:
        return self.encl.fd

    def eexit_ok(self, ret: int) -> None:
        expect(ret == 0, f"the vDSO returned {ret}, expected 0")
        expect(self.c.run.function == uapi.EEXIT, f"run.function is {self.c.run.function}, expected EEXIT")
        expect(self.c.exc() == (0, 0, 0), f"unexpected exception: {_exc(self.c)}")


def test_enclave(machine: Machine, *, warm: bool = True) -> TestEnclave:
    """Spawn a process and load, initialize and map the test enclave in it (selftest setup).

    `warm`: enter once on each of the two TCSs, so the page-table entries of the code, TCS, SSA
    and stack pages exist and a trace of what follows is not interleaved with those faults.
    """
    proc = machine.spawn()
    image = test_image()
    encl = encl_build(proc, image, sigstruct=_sigstruct())
    t = TestEnclave(machine, proc, encl, EnclCaller(proc, encl), image)
    if warm:
        for tcs in (t.base, t.base + PAGE):
            t.c.run.tcs = tcs
            t.eexit_ok(t.c.nop())
        t.c.run.tcs = t.base
    return t


test_enclave.__test__ = False  # type: ignore[attr-defined]  # not a pytest test


def begin(machine: Machine, title: str) -> None:
    """Mark the end of the setup in a trace (no effect when the machine is not traced)."""
    tracer = getattr(machine, "tracer", None)
    if tracer is not None and hasattr(tracer, "begin"):
        tracer.begin(title)


def section(machine: Machine, title: str) -> None:
    """Start a new titled part of the flow in a trace (no effect when not traced)."""
    tracer = getattr(machine, "tracer", None)
    if tracer is not None and hasattr(tracer, "section"):
        tracer.section(title)


def _sgx2(t: TestEnclave) -> None:
    expect(bool(t.proc.cpuid(0x12, 0)[0] & 2), "this machine has no SGX2: the flow needs it")


# -- built-in scenarios --------------------------------------------------------------------------
def eaug_on_fault(machine: Machine) -> None:
    """The kernel selftest `augment`: a store to a fresh page, EAUG on fault, EACCEPT, retry."""
    t = test_enclave(machine)
    _sgx2(t)
    c, addr = t.c, t.base + t.T
    begin(machine, "map a page with no EPC page behind it")
    t.proc.mmap(addr, PAGE, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_SHARED | MAP_FIXED, t.fd, 0)
    c.clear_exc()
    section(machine, "store to it: #PF, EAUG on fault, then the PENDING page refuses the store")
    expect(c.put(addr, P.MAGIC) == 0, "the vDSO call failed")
    expect(c.run.function == uapi.ERESUME, "the store was not reported as an exception")
    expect(c.exc() == (14, 0x8007, addr), f"expected #PF 0x8007 at the page, got {_exc(c)}")
    c.clear_exc()
    section(machine, "EACCEPT the page from a second TCS")
    c.run.tcs = t.base + PAGE
    expect(c.eaccept(addr, 0x20B) == 0, "EACCEPT(R|W|REG|PENDING) failed")
    t.eexit_ok(0)
    section(machine, "ERESUME the first TCS: the store completes")
    c.run.tcs = t.base
    t.eexit_ok(c.put(addr, P.MAGIC, leaf=uapi.ERESUME))
    section(machine, "read the value back")
    expect(c.get(addr) == P.MAGIC, "the value read back differs")
    t.eexit_ok(0)


def epcm_permissions(machine: Machine) -> None:
    """The kernel selftest `epcm_permissions`: EMODPR to read-only, EACCEPT, a store faults,
    EMODPE from a second TCS restores write, ERESUME completes the store."""
    t = test_enclave(machine)
    _sgx2(t)
    c, D = t.c, t.D
    begin(machine, "write the data page, then restrict it to R")
    t.eexit_ok(c.put(D, P.MAGIC))
    ioc = uapi.sgx_enclave_restrict_permissions(t.image.data_offset + PAGE, PAGE, uapi.SGX_SECINFO_R)
    expect(t.proc.ioctl(t.fd, uapi.SGX_IOC_ENCLAVE_RESTRICT_PERMISSIONS, ioc) == 0, "ioctl failed")
    expect(ioc.result == 0 and ioc.count == PAGE, "EMODPR did not cover the page")
    section(machine, "EACCEPT(R|REG|PR), then a store faults (#PF 0x8007)")
    expect(c.eaccept(D, 0x221) == 0, "EACCEPT(R|REG|PR) failed")
    t.eexit_ok(0)
    expect(c.put(D, P.MAGIC2) == 0, "the vDSO call failed")
    expect(c.exc() == (14, 0x8007, D), f"expected #PF 0x8007, got {_exc(c)}")
    c.clear_exc()
    section(machine, "EMODPE(R|W) from TCS 1, then ERESUME TCS 0")
    c.run.tcs = t.base + PAGE
    t.eexit_ok(c.emodpe(D, 0x3))
    c.run.tcs = t.base
    t.eexit_ok(c.put(D, P.MAGIC2, leaf=uapi.ERESUME))
    expect(c.get(D) == P.MAGIC2, "the value read back differs")


def tcs_create(machine: Machine) -> None:
    """The kernel selftest `tcs_create`: EAUG three pages, make one a TCS (EMODT), enter on it,
    then trim all three and remove them."""
    t = test_enclave(machine)
    _sgx2(t)
    c, T = t.c, t.T
    stack_end, tcs, ssa = t.base + T, t.base + T + PAGE, t.base + T + 2 * PAGE
    begin(machine, "map three fresh pages and EACCEPT each (EAUG on fault)")
    t.proc.mmap(t.base + T, 3 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, t.fd, 0)
    c.clear_exc()
    for page in (stack_end, ssa, tcs):
        expect(c.eaccept(page, 0x20B) == 0, f"EACCEPT of {page:#x} failed")
        t.eexit_ok(0)
    section(machine, "write a TCS into the middle page, EMODT it to PT_TCS, EACCEPT")
    entry = t.image.symbol("encl_dyn_entry")
    op = P.encl_op_init_tcs_page(P.encl_op_header(P.ENCL_OP_INIT_TCS_PAGE), tcs, T + 2 * PAGE, entry)
    t.eexit_ok(c.call(op))
    mt = uapi.sgx_enclave_modify_types(T + PAGE, PAGE, uapi.SGX_PAGE_TYPE_TCS)
    expect(t.proc.ioctl(t.fd, uapi.SGX_IOC_ENCLAVE_MODIFY_TYPES, mt) == 0, "MODIFY_TYPES failed")
    expect(c.eaccept(tcs, 0x110) == 0, "EACCEPT(TCS|MODIFIED) failed")
    t.eexit_ok(0)
    section(machine, "enter on the new TCS")
    c.run.tcs = tcs
    t.eexit_ok(c.put_buf(P.MAGIC))
    expect(c.get_buf() == P.MAGIC, "the value read back differs")
    section(machine, "trim the three pages, EACCEPT each, REMOVE_PAGES")
    mt = uapi.sgx_enclave_modify_types(T, 3 * PAGE, uapi.SGX_PAGE_TYPE_TRIM)
    expect(t.proc.ioctl(t.fd, uapi.SGX_IOC_ENCLAVE_MODIFY_TYPES, mt) == 0, "MODIFY_TYPES failed")
    c.run.tcs = t.base
    for page in (stack_end, tcs, ssa):
        expect(c.eaccept(page, 0x410) == 0, f"EACCEPT(TRIM|MODIFIED) of {page:#x} failed")
        t.eexit_ok(0)
    rp = uapi.sgx_enclave_remove_pages(T, 3 * PAGE)
    expect(t.proc.ioctl(t.fd, uapi.SGX_IOC_ENCLAVE_REMOVE_PAGES, rp) == 0, "REMOVE_PAGES failed")
    expect(rp.count == 3 * PAGE, "not every page was removed")


def trim_remove(machine: Machine) -> None:
    """Shrink an enclave: MODIFY_TYPES(TRIM) on a used data page, EACCEPT(TRIM|MODIFIED) from
    inside, REMOVE_PAGES (EREMOVE); then REMOVE_PAGES on a page not yet accepted fails."""
    t = test_enclave(machine)
    _sgx2(t)
    c, D = t.c, t.D
    off = t.image.data_offset + PAGE
    begin(machine, "write the data page, then trim it")
    t.eexit_ok(c.put(D, P.MAGIC))
    mt = uapi.sgx_enclave_modify_types(off, PAGE, uapi.SGX_PAGE_TYPE_TRIM)
    expect(t.proc.ioctl(t.fd, uapi.SGX_IOC_ENCLAVE_MODIFY_TYPES, mt) == 0, "MODIFY_TYPES failed")
    expect(mt.result == 0 and mt.count == PAGE, "EMODT did not cover the page")
    section(machine, "REMOVE_PAGES before EACCEPT: refused")
    rp = uapi.sgx_enclave_remove_pages(off, PAGE)
    try:
        t.proc.ioctl(t.fd, uapi.SGX_IOC_ENCLAVE_REMOVE_PAGES, rp)
    except OSError as e:
        expect(e.errno == 1, f"expected EPERM, got {e.errno}")
    else:
        raise ScenarioError("REMOVE_PAGES of an unaccepted TRIM page succeeded")
    section(machine, "EACCEPT(TRIM|MODIFIED), then REMOVE_PAGES: EREMOVE")
    expect(c.eaccept(D, 0x410) == 0, "EACCEPT(TRIM|MODIFIED) failed")
    t.eexit_ok(0)
    rp = uapi.sgx_enclave_remove_pages(off, PAGE)
    expect(t.proc.ioctl(t.fd, uapi.SGX_IOC_ENCLAVE_REMOVE_PAGES, rp) == 0, "REMOVE_PAGES failed")
    expect(rp.count == PAGE, "the page was not removed")


def reclaim(machine: Machine) -> None:
    """An enclave larger than the EPC: the reclaimer writes pages back (EBLOCK, ETRACK, EWB) and
    a later access loads one again on fault (ELDU)."""
    from ..linux.load import encl_build as build
    from ..loader.selftest_layout import load_segments
    from ..testenclave import build_test_enclave

    total = machine.cpu.epc.size
    image = load_segments(build_test_enclave(), heap_size=total)
    if machine.cpu.epc.size > (1 << 20):
        raise ScenarioError("the reclaim scenario needs a 1 MiB EPC (it sets its own machine)")
    proc = machine.spawn()
    begin(machine, "build an enclave whose heap alone fills the EPC: ksgxd evicts pages")
    encl = build(proc, image, sigstruct=sign(image, _key()))
    c = EnclCaller(proc, encl)
    section(machine, "touch the first heap page again: ELDU on fault")
    heap = encl.base + image.heap.offset
    c.put(heap, P.MAGIC)
    expect(c.get(heap) == P.MAGIC, "the value read back differs")
    expect(machine.stats.pages_reclaimed > 0, "nothing was reclaimed")


@dataclass(frozen=True)
class Scenario:
    name: str
    summary: str
    fn: ScenarioFn
    machine: dict[str, Any] = field(default_factory=dict)
    engine: str | None = None  # None: what the caller chooses


BUILTIN: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("eaug-on-fault", "selftest augment: a store to a fresh page, EAUG on fault", eaug_on_fault),
        Scenario("epcm-permissions", "selftest epcm_permissions: EMODPR, EACCEPT, EMODPE", epcm_permissions),
        Scenario("tcs-create", "selftest tcs_create: a new TCS by EAUG + EMODT, then trim", tcs_create),
        Scenario("trim-remove", "trim a page, EACCEPT it, REMOVE_PAGES (EREMOVE)", trim_remove),
        Scenario("reclaim", "an enclave larger than the EPC: EWB by ksgxd, ELDU on fault", reclaim,
                 machine={"epc_size": 1 << 20}),
    )
}


def _selftest_fn(name: str) -> ScenarioFn:
    """A ported kernel selftest (`sgxemu.selftests`) as a scenario: the trace's setup ends where
    the test's setup_test_encl does; a failed EXPECT/ASSERT or a SKIP raises ScenarioError."""
    from ..selftests import SCENARIOS
    from ..selftests.harness import AssertionAbort, Case, Skip

    test = SCENARIOS[name]

    def image(heap_size: int) -> EnclaveImage:
        from ..loader.selftest_layout import load_segments
        from ..testenclave import build_test_enclave

        return test_image() if heap_size == PAGE else load_segments(build_test_enclave(), heap_size=heap_size)

    def sigstruct(img: EnclaveImage) -> bytes:
        return _sigstruct() if img is test_image() else sign(img, _key())

    class TracedCase(Case):
        def setup_test_encl(self, heap_size: int) -> bool:
            ok = super().setup_test_encl(heap_size)
            if ok:
                begin(self.machine, f"kernel selftest {name}")
            return ok

    def run(machine: Machine) -> None:
        case = TracedCase(machine, image, sigstruct)
        try:
            test(case)
        except Skip as e:
            raise ScenarioError(f"the selftest skipped: {e.reason}") from e
        except AssertionAbort:
            pass
        if case.failures:
            raise ScenarioError(f"the selftest failed: {case.failures[0]}")

    run.__doc__ = test.__doc__
    return run


def selftest_scenarios() -> dict[str, Scenario]:
    """The kernel selftest scenarios of `sgxemu.selftests` (main.c's names), when present."""
    try:
        from ..selftests import SCENARIOS
    except ImportError:
        return {}
    found: dict[str, Scenario] = {}
    for name, test in SCENARIOS.items():
        doc = (test.__doc__ or "").strip().splitlines()
        machine = {"epc_size": 1 << 20} if "oversubscribed" in name else {}
        found[name] = Scenario(
            name, f"kernel selftest: {doc[0] if doc else name}", _selftest_fn(name), machine
        )
    return found


def all_scenarios() -> dict[str, Scenario]:
    """The built-in flows, then the kernel selftests by their main.c names."""
    out = dict(BUILTIN)
    for name, sc in selftest_scenarios().items():
        out.setdefault(name, sc)
    return out


def load_script(path: str | Path) -> ScenarioFn:
    """The `scenario(machine)` function of a Python file; ScenarioError with one clear line."""
    p = Path(path)
    if not p.is_file():
        raise ScenarioError(f"{p}: no such file (give a scenario name or a Python script)")
    spec = importlib.util.spec_from_file_location(f"sgxemu_trace_script_{abs(hash(str(p)))}", p)
    if spec is None or spec.loader is None:
        raise ScenarioError(f"{p}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        raise ScenarioError(f"{p}:{e.lineno}: syntax error: {e.msg}") from e
    fn = getattr(module, "scenario", None)
    if not callable(fn):
        raise ScenarioError(f"{p}: defines no function `scenario(machine)`")
    return fn  # type: ignore[no-any-return]
