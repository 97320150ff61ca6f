"""`sgxemu trace`, through click's CliRunner on the real command group."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from sgxemu.cli.main import COMMAND_MODULES, _register_commands, cli

SCRIPT = '''
from sgxemu import uapi
from sgxemu.linux.mman import MAP_FIXED, MAP_SHARED
from sgxemu.linux.mman import PROT_READ, PROT_WRITE
from sgxemu.trace import begin, test_enclave


def scenario(machine):
    t = test_enclave(machine)
    begin(machine, "EACCEPT a fresh page from my script")
    addr = t.base + t.T
    t.proc.mmap(addr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, t.fd, 0)
    assert t.c.eaccept(addr, 0x20B) == 0
    assert t.c.run.function == uapi.EEXIT
'''


def run(*args: str | Path) -> Result:
    _register_commands()
    return CliRunner().invoke(cli, ["trace", *map(str, args)])


def one_line_error(result: Result, phrase: str) -> None:
    assert result.exit_code != 0, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and phrase in lines[0], result.stderr
    assert "Traceback" not in result.output


def test_registered() -> None:
    assert "trace" in COMMAND_MODULES


def test_list() -> None:
    r = run("--list")
    assert r.exit_code == 0, r.output
    for name in ("eaug-on-fault", "epcm-permissions", "tcs-create", "trim-remove", "augment"):
        assert name in r.stdout


def test_scenario_in_the_terminal() -> None:
    r = run("eaug-on-fault")
    assert r.exit_code == 0, r.output
    out = r.stdout
    for participant in ("host", "kernel", "CPU", "enclave T0", "enclave T1"):
        assert participant in out
    for step in (
        "mmap(encl+0xa000",
        "ENCLU[EENTER] TCS encl+0x0",
        "AEX: #PF 0x6 (W|U) at encl+0xa000",
        "ENCLS[EAUG] encl+0xa000 → 0 · REG RW- PENDING",
        "AEX: #PF 0x8007 (P|W|U|SGX) at encl+0xa000",
        "vDSO returns 0: run.function=ERESUME, exception 14 (0x8007)",
        "ENCLU[EACCEPT] encl+0xa000 → 0 · REG RW-",
        "ENCLU[ERESUME] TCS encl+0x0",
        "setup, folded",
    ):
        assert step in out, step
    assert "EPC/EPCM: 12 → 13 valid pages" in out


def test_json() -> None:
    r = run("eaug-on-fault", "--json")
    assert r.exit_code == 0, r.output
    obj = json.loads(r.stdout)
    assert obj["scenario"] == "eaug-on-fault" and obj["ok"] is True
    lanes = [p["title"] for p in obj["diagram"]["participants"]]
    assert lanes == ["host", "kernel", "CPU", "enclave T0", "enclave T1"]
    kinds = {e["kind"] for e in obj["events"]}
    assert {"syscall", "sysret", "encls", "enclu", "enter", "aex", "fault", "fault_end", "vdso_return"} <= kinds
    eaug = [e for e in obj["events"] if e["kind"] == "encls" and e["data"]["leaf"] == "EAUG"]
    assert len(eaug) == 1 and eaug[0]["data"]["rax"] == 0
    assert eaug[0]["data"]["page"]["flags"] == ["PENDING"]
    aex = [e for e in obj["events"] if e["kind"] == "aex"]
    assert [a["data"]["error_code"] for a in aex if a["phase"] > 0] == [0x6, 0x8007]
    before, after = obj["epc"]["before"], obj["epc"]["after"]
    assert before["resident"] == 12 and after["resident"] == 13
    new = [p for p in after["pages"] if p["offset"] == 0xA000]
    assert new and new[0]["type"] == "REG" and new[0]["rights"] == "RW-" and new[0]["flags"] == []


def test_other_builtin_flows() -> None:
    r = run("epcm-permissions", "--json")
    assert r.exit_code == 0, r.output
    events = json.loads(r.stdout)["events"]
    leaves = [e["data"].get("leaf") for e in events if e["kind"] in ("encls", "enclu")]
    assert "EMODPR" in leaves and "EMODPE" in leaves and "EACCEPT" in leaves
    r = run("trim-remove", "--json")
    assert r.exit_code == 0, r.output
    obj = json.loads(r.stdout)
    errnos = [e["data"].get("errno") for e in obj["events"] if e["kind"] == "sysret" and e["error"]]
    assert errnos == [1]  # REMOVE_PAGES before EACCEPT: EPERM
    assert not [p for p in obj["epc"]["after"]["pages"] if p["offset"] == 0x4000]


def test_reclaim_shows_evicted_pages() -> None:
    r = run("reclaim", "--json")
    assert r.exit_code == 0, r.output
    obj = json.loads(r.stdout)
    leaves = {e["data"].get("leaf") for e in obj["events"] if e["kind"] == "encls"}
    assert {"EWB", "ELDU", "EBLOCK", "ETRACK"} <= leaves
    after = obj["epc"]["after"]
    assert after["evicted"] > 0
    assert all(p["epc_index"] is None for p in after["pages"] if p["evicted"])


def test_selftest_by_name() -> None:
    pytest.importorskip("sgxemu.selftests")
    r = run("augment", "--json")
    assert r.exit_code == 0, r.output
    obj = json.loads(r.stdout)
    assert any(e["data"].get("leaf") == "EAUG" for e in obj["events"] if e["kind"] == "encls")


def test_script(tmp_path: Path) -> None:
    script = tmp_path / "flow.py"
    script.write_text(SCRIPT)
    r = run(script, "--json")
    assert r.exit_code == 0, r.output
    obj = json.loads(r.stdout)
    assert obj["scenario"] == "flow.py"
    texts = [s["text"] for s in obj["diagram"]["steps"]]
    assert "EACCEPT a fresh page from my script" in texts
    assert any("ENCLS[EAUG]" in t for t in texts)


def test_svg_and_html_files(tmp_path: Path) -> None:
    svg, page = tmp_path / "t.svg", tmp_path / "t.html"
    r = run("tcs-create", "--svg", svg, "--html", page)
    assert r.exit_code == 0, r.output
    assert f"wrote SVG: {svg}" in r.stdout
    for path in (svg, page):
        text = path.read_text()
        assert "enclave T0" in text and "ENCLS[EMODT]" in text and "EPC/EPCM after" in text
        # Self-contained: nothing fetched from anywhere.
        for ref in ("<script", " href=", " src=", "@import", "url(http", "<link", "<img"):
            assert ref not in text, ref
    assert svg.read_text().startswith('<svg xmlns="http://www.w3.org/2000/svg"')
    assert page.read_text().startswith("<!DOCTYPE html>")


# -- bad input: one clear line, non-zero exit ------------------------------------------------------
def test_unknown_scenario() -> None:
    one_line_error(run("no-such-flow"), "unknown scenario 'no-such-flow'")


def test_missing_script(tmp_path: Path) -> None:
    one_line_error(run(tmp_path / "missing.py"), "no such file")


def test_script_without_scenario(tmp_path: Path) -> None:
    script = tmp_path / "empty.py"
    script.write_text("x = 1\n")
    one_line_error(run(script), "defines no function `scenario(machine)`")


def test_script_with_syntax_error(tmp_path: Path) -> None:
    script = tmp_path / "broken.py"
    script.write_text("def scenario(machine)\n    pass\n")
    one_line_error(run(script), "syntax error")


def test_no_target() -> None:
    one_line_error(run(), "no scenario given")


def test_bad_epc_size() -> None:
    one_line_error(run("eaug-on-fault", "--epc", "12345"), "--epc")


def test_script_that_fails_keeps_its_trace(tmp_path: Path) -> None:
    script = tmp_path / "fails.py"
    script.write_text(
        "from sgxemu import uapi\n"
        "def scenario(machine):\n"
        "    p = machine.spawn()\n"
        "    fd = p.open('/dev/sgx_enclave')\n"
        "    p.ioctl(fd, uapi.SGX_IOC_ENCLAVE_INIT, uapi.sgx_enclave_init(sigstruct=0))\n"
    )
    svg = tmp_path / "fails.svg"
    r = run(script, "--svg", svg)
    assert r.exit_code == 1
    assert 'open("/dev/sgx_enclave")' in r.stdout
    assert "ioctl(fd 3, ENCLAVE_INIT" in r.stdout
    one_line_error(r, "the scenario stopped early: OSError")
    assert svg.exists() and "ENCLAVE_INIT" in svg.read_text()
