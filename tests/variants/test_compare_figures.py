"""The comparison's figures, run on the machine, against values derived by hand from the flows
and the drivers' code; plus the CLI and the HTML report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric import rsa

from sgxemu.cli.compare import command
from sgxemu.cli.main import COMMAND_MODULES
from sgxemu.compare import FLOWS, ComparisonEnclave, make_enclave, run_comparison, run_flow
from sgxemu.compare.report import html_report, svg_chart

N = 3


@pytest.fixture(scope="module")
def enclave(elf_path: Path, key: rsa.RSAPrivateKey) -> ComparisonEnclave:
    return make_enclave(elf_path, key)


def test_restricting_n_pages(enclave: ComparisonEnclave) -> None:
    """relax-emodpe: one restriction of N pages, N EMODPE, and whatever the design adds."""
    merged = run_flow("relax-emodpe", "merged", N, enclave)
    assert merged.ok
    assert merged.ioctls == {"RESTRICT_PERMISSIONS": 1}
    assert merged.encls == {"EMODPR": N, "ETRACK": N}  # sgx_enclave_etrack once per page
    assert (merged.etracks, merged.ipis) == (N, N)  # one thread, one CPU in the mask
    assert merged.enclu["EACCEPT"] == N and merged.enclu["EMODPE"] == N
    assert merged.aexes == 1  # the one store the EPCM refused
    soft = run_flow("relax-emodpe", "soft-restrict", N, enclave)
    assert soft.ok
    assert soft.ioctls == {"RESTRICT_PERMISSIONS": 2}  # restrict, then raise the record again
    assert soft.encls == {} and (soft.etracks, soft.ipis) == (0, 0)
    assert "EACCEPT" not in soft.enclu
    v1 = run_flow("relax-emodpe", "v1", N, enclave)
    assert v1.ok
    assert v1.ioctls == {"PAGE_MODP": 2}  # the relax is a restriction too
    assert v1.encls == {"EMODPR": 2 * N, "ETRACK": 2 * N}
    v2 = run_flow("relax-emodpe", "v2", N, enclave)
    assert v2.ok
    assert v2.ioctls == {"RESTRICT_PERMISSIONS": 1, "RELAX_PERMISSIONS": 1}
    assert v2.encls == {"EMODPR": N, "ETRACK": N}  # RELAX: no ENCLS
    assert merged.enforcement == {"W after restricting to R": "EPCM"}
    for r in (soft, v1, v2):
        assert r.enforcement == {"W after restricting to R": "kernel record"}


@pytest.mark.parametrize("kernel", ["merged", "v1", "v2", "soft-restrict", "always-mmap"])
def test_shrinking_n_pages(enclave: ComparisonEnclave, kernel: str) -> None:
    """Trim (EMODT + ETRACK per page), EACCEPT per page, remove (EMODPR probe + EREMOVE)."""
    r = run_flow("heap-shrink", kernel, N, enclave)
    assert r.ok
    assert r.encls == {"EMODT": N, "ETRACK": N, "EMODPR": N, "EREMOVE": N}
    assert r.enclu == {"EENTER": N, "EACCEPT": N, "EEXIT": N}
    assert r.syscalls == {"ioctl": 2, "munmap": 1}


@pytest.mark.parametrize("kernel", ["merged", "v1", "v2", "soft-restrict", "always-mmap"])
def test_growing_n_pages(enclave: ComparisonEnclave, kernel: str) -> None:
    eaccept = run_flow("heap-grow-eaccept", kernel, N, enclave)
    assert eaccept.encls == {"EAUG": N} and eaccept.syscalls == {"mmap": 1}
    # Per page: EACCEPT #PFs (AEX), the kernel EAUGs, ERESUME re-runs EACCEPT; then a store.
    assert eaccept.enclu == {"EENTER": 2 * N, "EACCEPT": 2 * N, "ERESUME": N, "EEXIT": 2 * N}
    assert eaccept.aexes == N
    fault = run_flow("heap-grow-fault", kernel, N, enclave)
    assert fault.encls == {"EAUG": N}
    # Per page: #PF -> EAUG -> ERESUME -> #PF 0x8007 reported; EACCEPT on TCS 2; ERESUME.
    assert fault.enclu == {"EENTER": 2 * N, "ERESUME": 2 * N, "EEXIT": 2 * N, "EACCEPT": N}
    assert fault.aexes == 2 * N
    expected = "kernel record (mprotect EACCES)" if kernel in ("v1", "v2") else "EPCM"
    assert fault.enforcement == {"X on a grown heap page (host maps it R|X)": expected}


def test_jit(enclave: ComparisonEnclave) -> None:
    rs = {r.kernel: r for r in run_comparison(["jit-wx"], enclave=enclave)}
    assert rs["merged"].ok and rs["always-mmap"].ok and rs["soft-restrict"].ok
    assert (rs["v1"].ok, rs["v1"].failed_step, rs["v1"].reason) == (False, "PAGE_MODP", "EPERM")
    assert (rs["v2"].ok, rs["v2"].failed_step, rs["v2"].reason) == (
        False, "RELAX_PERMISSIONS", "EPERM")
    label = "W on JIT code (host re-maps it RW)"
    assert rs["merged"].enforcement == {label: "EPCM"}
    assert rs["soft-restrict"].enforcement == {label: "kernel record"}
    assert rs["soft-restrict"].encls == {}
    assert rs["soft-restrict"].first_page.endswith("EPCM rwx PT_REG")  # W never left the EPCM
    assert rs["merged"].first_page.endswith("EPCM r-x PT_REG")


def test_new_tcs_and_guards(enclave: ComparisonEnclave) -> None:
    for kernel in ("merged", "always-mmap"):
        r = run_flow("new-tcs", kernel, enclave=enclave)
        assert r.ok and r.encls == {"EAUG": 3, "EMODT": 1, "ETRACK": 1}
    assert run_flow("new-tcs", "merged", enclave=enclave).enforcement == {
        "X on the new TCS (host maps it R|X)": "kernel record (mprotect EACCES)"}
    assert run_flow("new-tcs", "always-mmap", enclave=enclave).enforcement == {
        "X on the new TCS (host maps it R|X)": "EPCM"}
    g = run_flow("guard-pages", "v1", N, enclave)
    assert g.ok and g.encls == {} and g.syscalls == {"mprotect": 2 * N}
    assert g.enforcement == {"any access to a PROT_NONE guard": "page table"}


def test_oversubscription_small(enclave: ComparisonEnclave) -> None:
    r = run_flow("oversubscription", "merged", 160, enclave)  # EPC: 128 pages
    assert r.ok and r.encls["EAUG"] == 160
    assert r.pages_reclaimed > 0 and r.encls["EWB"] >= r.pages_reclaimed and r.encls["ELDU"] > 0


def test_cli_json_and_html(tmp_path: Path) -> None:
    assert "compare" in COMMAND_MODULES
    out = tmp_path / "report.html"
    res = CliRunner().invoke(
        command, ["--json", "--flow", "guard-pages", "--kernel", "merged", "--kernel", "v2",
                  "--html", str(out)]
    )
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)  # one object, like every command's --json
    assert (data["flows"], data["kernels"]) == (["guard-pages"], ["merged", "v2"])
    assert [(d["flow"], d["kernel"], d["outcome"]) for d in data["results"]] == [
        ("guard-pages", "merged", "works"), ("guard-pages", "v2", "works")]
    page = out.read_text()
    assert "<svg" in page and "</html>" in page
    for external in ("<script", "<link", "src=", "href=", "url("):
        assert external not in page
    res = CliRunner().invoke(command, ["--flow", "jit-wx", "--kernel", "v1"])
    assert res.exit_code == 0 and "PAGE_MODP" in res.output and "EPERM" in res.output


def test_report_marks_failures(enclave: ComparisonEnclave) -> None:
    results = run_comparison(["jit-wx"], ["merged", "v1"], enclave)
    svg = svg_chart(results)
    assert svg.count("✗") == 3  # one hollow, crossed bar per metric panel for v1
    assert "PAGE_MODP: EPERM" in html_report(results)
    assert set(FLOWS) >= {"jit-wx"}
