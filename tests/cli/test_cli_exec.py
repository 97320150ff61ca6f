"""`sgxemu exec --json` through CliRunner: one JSON object about the run of the C host program
(tests/preload/host.c, built by the `built` fixture of tests/conftest.py), its stdout captured
into the object, the machine it ran on and the counters its emulator left at exit."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from click.testing import CliRunner, Result

from hostprog import sgxemu_exec
from sgxemu.cli.main import _register_commands, cli


def run(*args: str) -> Result:
    _register_commands()
    return CliRunner().invoke(cli, list(args))


def one_object(r: Result, code: int = 0) -> Any:
    assert r.exit_code == code, r.output
    assert r.stdout.count("\n") == 1, r.stdout
    return json.loads(r.stdout)


def host_args(built: dict[str, Any], *scenarios: str) -> list[str]:
    return [str(built["host"]), str(built["elf"]), str(built["sig_path"]), *scenarios]


def test_json_describes_the_run(built: dict[str, Any]) -> None:
    argv = host_args(built, "tcs_entry")
    d = one_object(run("exec", "--epc", "8M", "--kernel", "v2", "--json", "--", *argv))
    assert (d["program"], d["path"], d["args"]) == (argv[0], argv[0], argv[1:])
    assert (d["exit_status"], d["signal"]) == (0, None)
    assert d["machine"] == {"epc_size": 8 << 20, "sgx2": True, "kernel": "v2", "cpus": 4, "seed": 0,
                            "flc": True, "xstate": False, "cpuid": "auto", "dev_noexec": False}  # fmt: skip
    # The program's stdout, captured whole: what it prints without --json.
    plain = sgxemu_exec("--epc", "8M", "--kernel", "v2", "--", *argv)
    assert plain.returncode == 0, plain.stderr
    assert d["stdout"] == plain.stdout
    assert d["stdout"].splitlines()[-2:] == ["tcs_entry ret=0,0 function=4,4 exc=4:0:0:0", "done"]


def test_json_counters_are_the_emulators(built: dict[str, Any]) -> None:
    d = one_object(run("exec", "--epc", "8M", "--json", "--", *host_args(built, "tcs_entry")))
    c = d["counters"]
    segments = int(re.search(r"^built size=\S+ segments=(\d+)$", d["stdout"], re.M).group(1))  # type: ignore[union-attr]
    # host.c: one enclave, one ADD_PAGES per segment, then INIT; one open of /dev/sgx_enclave.
    assert c["ioctls"] == {"SGX_IOC_ENCLAVE_CREATE": 1, "SGX_IOC_ENCLAVE_ADD_PAGES": segments,
                           "SGX_IOC_ENCLAVE_INIT": 1}  # fmt: skip
    assert c["enclaves_created"] == c["encls"]["ECREATE"] == 1
    assert c["encls"]["EINIT"] == 1
    assert c["syscalls"]["open"] == 1 and c["syscalls"]["ioctl"] == sum(c["ioctls"].values())
    assert c["enclave_entries"] == c["enclu"]["EENTER"] + c["enclu"].get("ERESUME", 0)
    assert c["enclave_entries"] >= c["enclu"]["EEXIT"] >= 1
    assert {"aexes", "etracks", "ipis", "pages_reclaimed", "page_faults"} <= set(c)


def test_json_exit_status_is_the_programs(built: dict[str, Any]) -> None:
    """host.c without arguments prints its usage on stderr and exits 2, before any SGX call:
    with CPUID not emulated nothing starts the emulator, so there are no counters."""
    d = one_object(run("exec", "--cpuid", "off", "--json", "--", str(built["host"])), code=2)
    assert (d["exit_status"], d["signal"], d["stdout"], d["counters"]) == (2, None, "", None)
    assert d["args"] == [] and d["machine"]["cpuid"] == "off"


def test_json_program_killed_by_a_signal() -> None:
    d = one_object(run("exec", "--cpuid", "off", "--json", "--", "sh", "-c", "echo hi; kill -TERM $$"),
                   code=128 + 15)  # fmt: skip
    assert (d["exit_status"], d["signal"], d["stdout"]) == (None, "SIGTERM", "hi\n")
    assert d["program"] == "sh" and d["path"].endswith("/sh")


@pytest.mark.parametrize(("sig", "num"), [("SEGV", 11), ("ILL", 4)])
def test_a_sent_sigsegv_or_sigill_kills_as_without_the_preload(sig: str, num: int) -> None:
    """The preload catches SIGSEGV/SIGILL for its traps; one sent with kill() (no faulting
    instruction to repeat) still ends the program with that signal."""
    d = one_object(run("exec", "--cpuid", "off", "--json", "--", "sh", "-c", f"echo hi; kill -{sig} $$"),
                   code=128 + num)  # fmt: skip
    assert (d["exit_status"], d["signal"], d["stdout"]) == (None, f"SIG{sig}", "hi\n")


def test_json_print_env() -> None:
    d = one_object(run("exec", "--sgx1", "--epc", "16M", "--print-env", "--json"))
    assert d["env"]["SGXEMU_SGX1"] == "1" and d["env"]["SGXEMU_EPC"] == str(16 << 20)
    assert d["env"]["LD_PRELOAD"].endswith("libsgxemu_preload.so")
    assert (d["machine"]["sgx2"], d["machine"]["epc_size"]) == (False, 16 << 20)


def test_json_errors_stay_one_line() -> None:
    r = run("exec", "--json", "--", "/no/such/program")
    assert r.exit_code == 1 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: program '/no/such/program' not found")
