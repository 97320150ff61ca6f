"""`--json` on every command: each registered command has it, and each prints exactly one JSON
object on one line of stdout (the per-command tests check the fields)."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from sgxemu.cli.main import COMMAND_MODULES, _register_commands, cli

COMMANDS = ("demo", "sign", "measure", "run", "selftest", "trace", "compare", "explore", "exec")


def run(*args: str | Path) -> Result:
    _register_commands()
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_object(r: Result) -> dict[str, Any]:
    assert r.exit_code == 0, r.output
    assert r.stdout.count("\n") == 1 and r.stdout.endswith("\n"), r.stdout
    obj = json.loads(r.stdout)
    assert isinstance(obj, dict)
    return obj


def one_page_sgxs(path: Path) -> Path:
    """The smallest SGXS stream: ECREATE of 4 KiB, one EADD of a REG R page, no EEXTEND."""
    block = lambda data: data.ljust(64, b"\0")  # noqa: E731
    path.write_bytes(block(struct.pack("<8sIQ", b"ECREATE\0", 1, 0x1000))
                     + block(struct.pack("<8sQQ", b"EADD\0\0\0\0", 0, 0x201)))  # fmt: skip
    return path


def test_every_command_has_json() -> None:
    _register_commands()
    assert set(cli.commands) == set(COMMANDS)
    assert len(COMMAND_MODULES) == len(COMMANDS) - 1  # demo lives in main.py
    for name, cmd in cli.commands.items():
        flags = {opt for p in cmd.params for opt in getattr(p, "opts", [])}
        assert "--json" in flags, name


def test_demo() -> None:
    d = one_object(run("demo", "--json"))
    assert d["mrenclave"] == d["mrenclave_offline"]


def test_sign(tmp_path: Path) -> None:
    d = one_object(run("sign", "--gen-key", tmp_path / "key.pem", "--json"))
    assert d["key_generated"] is True and len(d["mrsigner"]) == 64


def test_measure(tmp_path: Path) -> None:
    sgxs = one_page_sgxs(tmp_path / "one.sgxs")
    d = one_object(run("measure", sgxs, "--json"))
    # Without UNMEASRD records an SGXS stream's SHA-256 is its MRENCLAVE.
    assert (d["format"], d["eadd"], d["eextend"]) == ("sgxs", 1, 0)
    assert d["mrenclave"] == hashlib.sha256(sgxs.read_bytes()).hexdigest()


def test_run(elf_path: Path) -> None:
    d = one_object(run("run", elf_path, "--op", "put:0x1122", "--op", "get", "--json"))
    assert [o["op"] for o in d["ops"]] == ["put:0x1122", "get"] and d["ops"][1]["value"] == 0x1122


def test_selftest() -> None:
    d = one_object(run("selftest", "--engine", "scripted", "--epc", "1M", "-k", "clobbered_vdso_and_user_function", "--json"))
    assert [t["name"] for t in d["tests"]] == ["clobbered_vdso_and_user_function"] and d["ok"] is True


def test_trace() -> None:
    d = one_object(run("trace", "eaug-on-fault", "--json"))
    assert d["scenario"] == "eaug-on-fault" and d["ok"] is True


def test_compare() -> None:
    d = one_object(run("compare", "--flow", "jit-wx", "--kernel", "merged", "--kernel", "v1", "--json"))
    assert (d["flows"], d["kernels"]) == (["jit-wx"], ["merged", "v1"])
    assert [(r["flow"], r["kernel"], r["ok"]) for r in d["results"]] == [("jit-wx", "merged", True),
                                                                         ("jit-wx", "v1", False)]  # fmt: skip


def test_explore() -> None:
    d = one_object(run("explore", "--runtime", "jit-unchecked", "--adversary", "colluding",
                       "--kernel", "merged", "--bound", "3", "--json"))  # fmt: skip
    assert [(c["runtime"], c["prop"], c["adversary"], c["kernel"]) for c in d["cells"]] == [
        ("jit-unchecked", "wx", "colluding", "merged")
    ]


@pytest.mark.parametrize("args", [["--", "true"], ["--", "sh", "-c", "echo out; echo err >&2"]])
def test_exec(args: list[str]) -> None:
    """A program that never touches SGX (CPUID not emulated: the emulator never starts)."""
    d = one_object(run("exec", "--cpuid", "off", "--json", *args))
    assert (d["exit_status"], d["counters"]) == (0, None)
    assert d["stdout"] == ("out\n" if "sh" in args else "")
