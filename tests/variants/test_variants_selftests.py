"""The sixteen kernel selftests (`sgxemu.selftests`) on every driver design.

Each (kernel, test) pair either applies, and must PASS unchanged, or is listed in
`NOT_APPLICABLE` with the reason. A not-applicable pair is still run, and its test checks that
the stated reason is exactly what happens (the test's own probe skips with the kernel's message,
or it fails with the stated first failure), so the table cannot go stale and nothing is skipped
silently. Where the design had its own version of the test, the port is named: V1's selftests
(read from the V1 series) expected #PF 0x7 in epcm_permissions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from sgxemu import Machine
from sgxemu.linux.variants import KERNELS
from sgxemu.selftests import SCENARIOS, Outcome, SelftestConfig, SelftestSuite, TestResult

EPC = 1 << 20


@dataclass(frozen=True)
class NotApplicable:
    reason: str
    outcome: Outcome  # SKIP (the test's own ENOTTY probe) or FAIL
    first: str  # the SKIP reason, or the first failure, as the harness reports it
    port: str = ""  # the test of this repository that covers the design's own version


_V2_NO_RESTRICT = NotApplicable(
    "V2 has no ioctl 0xC028A405 (its RESTRICT_PERMISSIONS is 0x06 and takes a SECINFO "
    "pointer): the test's probe gets ENOTTY and skips, as the kernel selftest would",
    Outcome.SKIP, "Kernel does not support SGX_IOC_ENCLAVE_RESTRICT_PERMISSIONS ioctl()",
    "test_variants_v2.py::test_v2_epcm_permissions",
)
_V2_MODT_IS_RESTRICT = NotApplicable(
    "the merged MODIFY_TYPES number (0xC028A406) is V2's RESTRICT_PERMISSIONS: the probe passes "
    "(EINVAL for length 0), then page_type is read as a SECINFO pointer: EFAULT",
    Outcome.FAIL, "ioctl(SGX_IOC_ENCLAVE_MODIFY_TYPES): expected 0, got -1",
    "test_variants_v2.py::test_modify_type_and_remove",
)
NOT_APPLICABLE: dict[tuple[str, str], NotApplicable] = {
    ("v1", "epcm_permissions"): NotApplicable(
        "V1 zaps the PTE and installs it as VMA ∩ run bits: the store after EMODPR + EACCEPT "
        "sees #PF 0x7 from pfn_mkwrite, not the EPCM's 0x8007 (V1's own selftest expects 0x7)",
        Outcome.FAIL, "run.exception_error_code: expected 0x8007, got 7",
        "test_variants_v1.py::test_pte_is_vma_and_run_bits_and_pfn_mkwrite_sigbus",
    ),
    ("v2", "tcs_permissions"): _V2_NO_RESTRICT,
    ("v2", "epcm_permissions"): _V2_NO_RESTRICT,
    ("v2", "tcs_create"): _V2_MODT_IS_RESTRICT,
    ("v2", "remove_added_page_no_eaccept"): _V2_MODT_IS_RESTRICT,
    ("v2", "remove_added_page_invalid_access"): _V2_MODT_IS_RESTRICT,
    ("v2", "remove_added_page_invalid_access_after_eaccept"): _V2_MODT_IS_RESTRICT,
    ("v2", "remove_untouched_page"): _V2_MODT_IS_RESTRICT,
    ("v2", "unclobbered_vdso_oversubscribed_remove"): _V2_MODT_IS_RESTRICT,
    ("soft-restrict", "epcm_permissions"): NotApplicable(
        "RESTRICT never reaches the EPCM: there is no PR to EACCEPT (SGX_PAGE_ATTRIBUTES_MISMATCH)"
        " and the store is refused by the kernel's record (#PF 0x7), not the EPCM (0x8007)",
        Outcome.FAIL, "eaccept_op.ret: expected 0, got 0x13",
        "test_variants_soft_restrict.py::test_only_the_kernel_record_refuses_the_write",
    ),
}

PAIRS = [(k, s) for k in KERNELS for s in SCENARIOS]
APPLIES = [p for p in PAIRS if p not in NOT_APPLICABLE]
NA = list(NOT_APPLICABLE)


@pytest.fixture(scope="module")
def suite(elf_path: Path, key: rsa.RSAPrivateKey) -> SelftestSuite:
    return SelftestSuite(elf_path, key)


def _run(suite: SelftestSuite, make_machine: Callable[..., Machine], kernel: str, name: str) -> TestResult:
    return suite.run(name, SelftestConfig(epc_size=EPC, engine="scripted", kernel=kernel), make_machine)


def _explain(r: TestResult) -> str:
    return "\n".join([f"{r.name}: {r.outcome.value} {r.reason}", *r.failures, *r.log, r.traceback])


def test_every_pair_is_classified() -> None:
    assert len(SCENARIOS) == 16
    assert set(NOT_APPLICABLE) <= set(PAIRS)
    assert not any(k == "merged" for k, _ in NOT_APPLICABLE)  # merged: all sixteen apply
    assert len(APPLIES) + len(NA) == len(KERNELS) * 16


@pytest.mark.parametrize("kernel, name", APPLIES, ids=[f"{k}-{s}" for k, s in APPLIES])
def test_selftest_applies(
    suite: SelftestSuite, make_machine: Callable[..., Machine], kernel: str, name: str
) -> None:
    r = _run(suite, make_machine, kernel, name)
    assert r.outcome is Outcome.PASS, _explain(r)


@pytest.mark.parametrize("kernel, name", NA, ids=[f"{k}-{s}" for k, s in NA])
def test_selftest_not_applicable(
    suite: SelftestSuite, make_machine: Callable[..., Machine], kernel: str, name: str,
    record_property: Callable[[str, object], None],
) -> None:
    na = NOT_APPLICABLE[(kernel, name)]
    record_property("not_applicable", na.reason)
    r = _run(suite, make_machine, kernel, name)
    assert r.outcome is na.outcome, _explain(r)
    assert r.reason == na.first, _explain(r)
    path, test = na.port.split("::")
    assert f"def {test}(" in (Path(__file__).parent / path).read_text(), na.port
