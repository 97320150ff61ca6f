"""The sixteen tests of tools/testing/selftests/sgx/main.c, as `sgxemu selftest` runs them.

The scenarios live in `sgxemu.selftests` (one implementation, shared with the CLI); here each
runs on the scripted test enclave and on the compiled one under the native engine, on an SGX2
machine (every test must pass) and on an SGX1 machine (the six SGX1 tests must pass; the ten
SGX2 tests must skip with the kernel's reason, which is asserted, and are then reported as
skipped). Machines come from `make_machine`, which checks the EPC is empty afterwards.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from sgxemu import Machine
from sgxemu.linux.mman import MAP_FIXED, MAP_SHARED, PROT_READ, PROT_WRITE
from sgxemu.selftests import (
    SCENARIOS,
    SGX1_SKIPS,
    Case,
    Outcome,
    SelftestConfig,
    SelftestSuite,
    TestResult,
)
from sgxemu.selftests.harness import ERESUME
from sgxemu.testenclave import protocol as P

ENGINES = ["scripted", "native"]
EPC = 1 << 20  # small: the oversubscription tests make a heap this large
PAGE = 4096


@pytest.fixture(scope="session")
def suite(elf_path: Path, key: rsa.RSAPrivateKey) -> SelftestSuite:
    return SelftestSuite(elf_path, key)


def _run(
    suite: SelftestSuite, make_machine: Callable[..., Machine], name: str, engine: str, sgx2: bool
) -> TestResult:
    return suite.run(name, SelftestConfig(epc_size=EPC, sgx2=sgx2, engine=engine), make_machine)


def _explain(r: TestResult) -> str:
    return "\n".join([f"{r.name}: {r.outcome.value} {r.reason}", *r.failures, *r.log, r.traceback])


def test_the_sixteen() -> None:
    assert len(SCENARIOS) == 16
    assert len(SGX1_SKIPS) == 10 and set(SGX1_SKIPS) <= set(SCENARIOS)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_selftest_sgx2(
    suite: SelftestSuite, make_machine: Callable[..., Machine], name: str, engine: str
) -> None:
    r = _run(suite, make_machine, name, engine, sgx2=True)
    assert r.outcome is Outcome.PASS, _explain(r)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_selftest_sgx1(
    suite: SelftestSuite, make_machine: Callable[..., Machine], name: str, engine: str
) -> None:
    r = _run(suite, make_machine, name, engine, sgx2=False)
    if name not in SGX1_SKIPS:
        assert r.outcome is Outcome.PASS, _explain(r)
        return
    assert r.outcome is Outcome.SKIP, _explain(r)
    assert r.reason == SGX1_SKIPS[name]
    assert not r.failures
    pytest.skip(f"skips on SGX1 as the kernel's test does (asserted): {r.reason}")


def test_oversubscription_reclaims(suite: SelftestSuite, make_machine: Callable[..., Machine]) -> None:
    """The heap is the whole EPC (get_total_epc_mem), so building the enclave evicts pages."""
    made: list[Machine] = []

    def factory(**kw: object) -> Machine:
        made.append(make_machine(**kw))
        return made[-1]

    r = suite.run("unclobbered_vdso_oversubscribed", SelftestConfig(epc_size=EPC, engine="scripted"), factory)
    assert r.outcome is Outcome.PASS, _explain(r)
    assert made[0].stats.pages_reclaimed > 0


@pytest.mark.parametrize("engine", ENGINES)
def test_sgx1_unbacked_write_is_reported_not_augmented(
    suite: SelftestSuite, make_machine: Callable[..., Machine], engine: str
) -> None:
    """Not one of the sixteen: augment's first step on SGX1, where no EAUG can happen."""
    m = make_machine(**suite.machine_kwargs(SelftestConfig(epc_size=EPC, sgx2=False, engine=engine)))
    t = Case(m, suite.image, suite.sigstruct)
    assert t.setup_test_encl(PAGE)
    t.reset_run()
    addr = t.encl_base + sum(seg.size for seg in t.segments)
    assert t.mmap(addr, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, t.fd, 0) == addr
    op = P.encl_op_put_to_addr(P.encl_op_header(P.ENCL_OP_PUT_TO_ADDRESS), P.MAGIC, addr)
    assert t.encl_call(op, True) == 0
    assert t.run.function == ERESUME
    assert (t.run.exception_vector, t.run.exception_error_code, t.run.exception_addr) == (14, 0x6, addr)
    t.teardown()
