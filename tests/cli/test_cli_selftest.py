"""`sgxemu selftest` (and the group's error handling, `demo` included) through CliRunner."""

from __future__ import annotations

import json
from typing import Any

import pytest
from click.testing import CliRunner, Result

import sgxemu.testenclave
from sgxemu.cli.main import COMMAND_MODULES, _register_commands, cli
from sgxemu.selftests import SCENARIOS, SGX1_SKIPS, Case
from sgxemu.testenclave import EnclaveBuildError


def run(*args: str) -> Result:
    _register_commands()
    return CliRunner().invoke(cli, list(args))


def one_line_error(r: Result, code: int, phrase: str) -> None:
    """A non-zero exit, one `Error:` line on stderr naming the problem, nothing else."""
    assert r.exit_code == code, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("Error: ") and phrase in lines[0], lines[0]
    assert "Traceback" not in r.output
    assert r.stdout == ""


def as_json(r: Result) -> Any:
    assert r.stdout.count("\n") == 1, r.stdout  # one object, one line
    return json.loads(r.stdout)


def test_registered() -> None:
    assert "selftest" in COMMAND_MODULES


def test_default_run_passes_all_sixteen() -> None:
    """What ./main.sh runs: the native engine, an 8M EPC."""
    r = run("selftest")
    assert r.exit_code == 0, r.output
    out = r.stdout
    assert "EPC 8M, SGX2, kernel merged, engine native" in out
    for name in SCENARIOS:
        assert name in out
    assert out.count("PASS") == 16
    assert "16 tests: 16 passed, 0 failed, 0 skipped" in out


def test_json() -> None:
    r = run("selftest", "--json", "--engine", "scripted", "--epc", "1M")
    assert r.exit_code == 0, r.output
    d = as_json(r)
    assert d["config"] == {"epc_size": 1 << 20, "sgx2": True, "engine": "scripted", "kernel": "merged"}
    assert [t["name"] for t in d["tests"]] == list(SCENARIOS)
    assert {t["result"] for t in d["tests"]} == {"PASS"}
    assert (d["passed"], d["failed"], d["skipped"], d["ok"]) == (16, 0, 0, True)


def test_sgx1_skips_the_ten_sgx2_tests() -> None:
    r = run("selftest", "--sgx1", "--json", "--engine", "scripted", "--epc", "1M")
    assert r.exit_code == 0, r.output
    d = as_json(r)
    for t in d["tests"]:
        if t["name"] in SGX1_SKIPS:
            assert (t["result"], t["reason"]) == ("SKIP", SGX1_SKIPS[t["name"]])
        else:
            assert t["result"] == "PASS", t
    assert (d["passed"], d["failed"], d["skipped"]) == (6, 0, 10)


def test_sgx1_table_shows_the_reason() -> None:
    r = run("selftest", "--sgx1", "-k", "augment", "--epc", "1M")
    assert r.exit_code == 0, r.output
    assert r.stdout.count("SKIP") == 2 and "SGX2 not supported" in r.stdout
    assert "2 tests: 0 passed, 0 failed, 2 skipped" in r.stdout


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("augment", ["augment", "augment_via_eaccept"]),
        ("remove_*", [n for n in SCENARIOS if n.startswith("remove_")]),
        ("tcs_entry", ["tcs_entry"]),
    ],
)
def test_k_selects(pattern: str, expected: list[str]) -> None:
    r = run("selftest", "-k", pattern, "--json", "--engine", "scripted", "--epc", "1M")
    assert r.exit_code == 0, r.output
    assert [t["name"] for t in as_json(r)["tests"]] == expected


def test_kernel_variant_is_passed_through() -> None:
    r = run("selftest", "--kernel", "merged", "-k", "tcs_entry", "--json", "--epc", "1M")
    assert r.exit_code == 0, r.output
    assert as_json(r)["config"]["kernel"] == "merged"


def _failing(t: Case) -> None:
    t.expect_eq(1, 2, "run.function")
    t.expect_eq(3, 4, "run.user_data")


def _crashing(t: Case) -> None:
    raise RuntimeError("the model broke")


def test_a_failing_test_fails_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(SCENARIOS, "tcs_entry", _failing)
    r = run("selftest", "-k", "tcs_entry", "--epc", "1M")
    assert r.exit_code == 1, r.output
    assert "FAIL" in r.stdout and "run.function: expected 2, got 1" in r.stdout
    assert "run.user_data: expected 4, got 3" in r.stdout  # every failed EXPECT is listed
    assert "1 tests: 0 passed, 1 failed, 0 skipped" in r.stdout
    r = run("selftest", "-k", "tcs_entry", "--epc", "1M", "--json")
    assert r.exit_code == 1
    d = as_json(r)
    assert d["ok"] is False and d["tests"][0]["result"] == "FAIL"
    assert d["tests"][0]["failures"] == ["run.function: expected 2, got 1", "run.user_data: expected 4, got 3"]


def test_a_crashing_test_is_a_failure_with_its_traceback_under_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(SCENARIOS, "tcs_entry", _crashing)
    r = run("selftest", "-k", "tcs_entry", "--epc", "1M")
    assert r.exit_code == 1
    assert "emulator error: RuntimeError: the model broke" in r.stdout
    assert "Traceback" not in r.output
    r = run("--debug", "selftest", "-k", "tcs_entry", "--epc", "1M")
    assert r.exit_code == 1
    assert "Traceback" in r.stdout and "the model broke" in r.stdout


@pytest.mark.parametrize(
    ("args", "code", "phrase"),
    [
        (["--epc", "8X"], 2, "--epc '8X' is not a size"),
        (["--epc", "12345"], 2, "not a multiple of 4 KiB"),
        (["--epc", "0"], 2, "--epc 0 is too small; use at least 256K"),
        (["--epc", "4G"], 2, "--epc 4G is too large; use at most 1G"),
        (["--kernel", "v9"], 1, "unknown kernel variant 'v9'; choose one of merged"),
        (["-k", "no_such_test"], 1, "no test matches -k 'no_such_test'"),
        (["--engine", "qemu"], 2, "Invalid value for '--engine'"),
        (["--frobnicate"], 2, "No such option '--frobnicate'; see 'sgxemu selftest --help'"),
    ],
)
def test_bad_input(args: list[str], code: int, phrase: str) -> None:
    one_line_error(run("selftest", *args), code, phrase)


def test_no_compiler_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_gcc(*_a: object, **_k: object) -> None:
        raise EnclaveBuildError("cannot build the test enclave: compiler 'gcc' not found on PATH")

    monkeypatch.setattr(sgxemu.testenclave, "build_test_enclave", no_gcc)
    one_line_error(run("selftest"), 1, "compiler 'gcc' not found on PATH; install gcc")


def test_unknown_command() -> None:
    one_line_error(run("frobnicate"), 2, "No such command 'frobnicate'")


def test_debug_shows_the_traceback_of_bad_input() -> None:
    r = run("--debug", "selftest", "--kernel", "v9")
    assert r.exit_code == 1
    assert "Traceback (most recent call last)" in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("Error: unknown kernel variant")


# -- demo: its JSON, and the group's handling of an unexpected error ------------------------------
def test_demo_json() -> None:
    r = run("demo", "--json")
    assert r.exit_code == 0, r.output
    d = as_json(r)
    assert d["mrenclave"] == d["mrenclave_offline"] and len(d["steps"]) >= 9


def test_demo_internal_error_is_one_line_and_debug_shows_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    import sgxemu.demo

    def broken() -> None:
        raise ValueError("EPC exploded")

    monkeypatch.setattr(sgxemu.demo, "run_demo", broken)
    one_line_error(run("demo"), 1, "internal error: ValueError: EPC exploded")
    r = run("--debug", "demo")
    assert r.exit_code == 1
    assert "Traceback (most recent call last)" in r.stderr and "EPC exploded" in r.stderr
