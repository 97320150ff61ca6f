"""`sgxemu run` and `sgxemu sign` through CliRunner: outputs, JSON, and every bad input."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from sgxemu.cli.main import COMMAND_MODULES, _register_commands, cli
from sgxemu.linux.load import measure
from sgxemu.loader.selftest_layout import load_segments
from sgxemu.sign import load_key, mrsigner_of_key
from sgxemu.testenclave import build_test_enclave
from sgxemu.testenclave.protocol import MAGIC

PAGE = 4096


@pytest.fixture(scope="module")
def elf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_test_enclave(tmp_path_factory.mktemp("cli-encl"))


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli-key") / "key.pem"
    r = run("sign", "--gen-key", str(path))
    assert r.exit_code == 0, r.output
    return path


def run(*args: str | Path) -> Result:
    _register_commands()
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_line_error(r: Result, code: int, phrase: str) -> None:
    assert r.exit_code == code, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("Error: ") and phrase in lines[0], lines[0]
    assert "Traceback" not in r.output
    assert r.stdout == ""


def as_json(r: Result) -> Any:
    assert r.exit_code == 0, r.output
    assert r.stdout.count("\n") == 1, r.stdout
    return json.loads(r.stdout)


def test_registered() -> None:
    assert {"run", "sign"} <= set(COMMAND_MODULES)


# -- sign -------------------------------------------------------------------------------------------
def test_gen_key(tmp_path: Path) -> None:
    path = tmp_path / "k.pem"
    r = run("sign", "--gen-key", path)
    assert r.exit_code == 0, r.output
    key = load_key(path)
    assert key.key_size == 3072 and key.public_key().public_numbers().e == 3
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert f"MRSIGNER   {mrsigner_of_key(key).hex()}" in r.stdout
    d = as_json(run("sign", "--gen-key", tmp_path / "k2.pem", "--json"))
    assert d["key_generated"] is True and d["mrsigner"] == mrsigner_of_key(load_key(tmp_path / "k2.pem")).hex()


def test_sign_writes_sigstruct(elf: Path, key_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "encl.sig"
    r = run("sign", elf, "--key", key_file, "--out", out)
    assert r.exit_code == 0, r.output
    mrenclave = measure(load_segments(elf)).hex()
    assert f"MRENCLAVE  {mrenclave}" in r.stdout
    sig = out.read_bytes()
    assert len(sig) == 1808
    assert sig[960:992] == bytes.fromhex(mrenclave)  # SIGSTRUCT.ENCLAVEHASH


def test_sign_json_and_heap(elf: Path, key_file: Path, tmp_path: Path) -> None:
    d = as_json(run("sign", elf, "--key", key_file, "--out", tmp_path / "a.sig", "--json"))
    assert d["mrenclave"] == measure(load_segments(elf)).hex()
    assert d["mrsigner"] == mrsigner_of_key(load_key(key_file)).hex()
    assert (d["heap_size"], d["attributes"], d["xfrm"]) == (PAGE, "0x4", "0x3")
    big = as_json(run("sign", elf, "--key", key_file, "--out", tmp_path / "b.sig", "--heap", "1M", "--json"))
    assert big["enclave_size"] > d["enclave_size"] and big["mrenclave"] != d["mrenclave"]


def test_sign_default_out_is_cwd(elf: Path, key_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    d = as_json(run("sign", elf, "--key", key_file, "--json"))
    assert d["sigstruct"] == "test_encl.sig" and (tmp_path / "test_encl.sig").stat().st_size == 1808


def test_sign_and_gen_key_together(elf: Path, tmp_path: Path) -> None:
    d = as_json(run("sign", elf, "--gen-key", tmp_path / "new.pem", "--out", tmp_path / "s.sig", "--json"))
    assert d["key_generated"] and (tmp_path / "new.pem").exists() and (tmp_path / "s.sig").exists()


def test_mrenclave_of_sign_is_what_einit_measures(elf: Path, key_file: Path, tmp_path: Path) -> None:
    signed = as_json(run("sign", elf, "--key", key_file, "--out", tmp_path / "s.sig", "--json"))
    ran = as_json(run("run", elf, "--key", key_file, "--op", "nop", "--json"))
    assert ran["mrenclave"] == ran["mrenclave_offline"] == signed["mrenclave"]
    assert ran["mrsigner"] == signed["mrsigner"]


# -- run --------------------------------------------------------------------------------------------
def test_run_put_get(elf: Path) -> None:
    r = run("run", elf, "--op", f"put:{MAGIC:#x}", "--op", "get", "--op", "nop")
    assert r.exit_code == 0, r.output
    assert "EINIT; offline: matches" in r.stdout
    assert f"value {MAGIC:#x}" in r.stdout
    assert r.stdout.count("EEXIT") == 3


def test_run_json_edmm_flow(elf: Path) -> None:
    """augment, by hand: a store to an unbacked page is EAUGed and faults on PENDING; EACCEPT
    from TCS 1, ERESUME on TCS 0, read it back; then trim and remove it."""
    image = load_segments(elf)
    page = f"{image.src_size:#x}"
    d = as_json(run(
        "run", elf, "--json",
        "--op", f"mmap:{page}:0x1000",
        "--op", f"put-addr:{page}:0x55",
        "--op", "tcs:1",
        "--op", f"eaccept:{page}:R+W+REG+PENDING",
        "--op", "tcs:0",
        "--op", "resume",
        "--op", f"get-addr:{page}",
        "--op", f"modt:{page}:0x1000:TRIM",
        "--op", f"eaccept:{page}:TRIM|MODIFIED",
        "--op", f"remove:{page}:0x1000",
    ))
    base = d["base"]
    ops = d["ops"]
    assert ops[0] == {"op": f"mmap:{page}:0x1000", "ret": 0, "address": base + image.src_size}
    assert ops[1]["function"] == "ERESUME"
    assert ops[1]["exception"] == {
        "vector": 14, "name": "#PF", "error_code": 0x8007, "address": base + image.src_size,
        "function": "ERESUME",
    }
    assert ops[3]["tcs"] == 1 and ops[3]["eaccept_ret"] == "SUCCESS" and ops[3]["exception"] is None
    assert ops[5]["leaf"] == "ERESUME" and ops[5]["function"] == "EEXIT"
    assert ops[6]["value"] == 0x55
    assert (ops[7]["ret"], ops[7]["result"], ops[7]["count"]) == (0, 0, PAGE)
    assert ops[8]["eaccept_ret"] == "SUCCESS"
    assert (ops[9]["ret"], ops[9]["count"]) == (0, PAGE)
    assert d["tcs"] == [base, base + PAGE]


def test_run_symbols_and_errors_come_back(elf: Path) -> None:
    d = as_json(run(
        "run", elf, "--json",
        "--op", "put-addr:encl_buffer+0x1000:7",
        "--op", "get-addr:encl_buffer+0x1000",
        "--op", "eaccept:encl_buffer:R+W+REG+PENDING",  # an EADDed page: not pending
        "--op", "restrict:0x0:0x1000:R",  # a TCS page: EINVAL
    ))
    ops = d["ops"]
    assert ops[1]["value"] == 7
    assert ops[2]["eaccept_ret"] == "SGX_PAGE_ATTRIBUTES_MISMATCH"
    assert (ops[3]["ret"], ops[3]["errno"]) == (-1, "EINVAL")


def test_run_tcs_option(elf: Path) -> None:
    d = as_json(run("run", elf, "--tcs", "1", "--op", "nop", "--json"))
    assert d["ops"][0]["tcs"] == 1 and d["ops"][0]["function"] == "EEXIT"


@pytest.mark.parametrize(
    ("ops", "code", "phrase"),
    [
        (["frob:1"], 2, "--op 'frob:1': unknown op 'frob'"),
        (["put"], 2, "put takes 1 argument(s): put:VALUE"),
        (["put:zz"], 2, "VALUE 'zz' is not a number"),
        (["get-addr:no_such_symbol"], 2, "no symbol 'no_such_symbol' in test_encl.elf"),
        (["eaccept:0:R+Q"], 2, "FLAGS 'Q' is not one of R W X"),
        (["modt:0:0x1000:HUGE"], 2, "TYPE 'HUGE' is not one of SECS TCS REG VA TRIM"),
        (["tcs:7"], 2, "TCS 7 does not exist: the enclave has 2"),
        (["resume"], 2, "nothing to resume: no enclave call through TCS 0"),
    ],
)
def test_run_bad_ops(elf: Path, ops: list[str], code: int, phrase: str) -> None:
    args: list[str | Path] = ["run", elf]
    for op in ops:
        args += ["--op", op]
    one_line_error(run(*args), code, phrase)


def _truncated(elf: Path, tmp_path: Path) -> Path:
    p = tmp_path / "trunc.elf"
    p.write_bytes(elf.read_bytes()[:200])
    return p


def _not_elf(_elf: Path, tmp_path: Path) -> Path:
    p = tmp_path / "text.elf"
    p.write_text("hello\n")
    return p


def _wrong_layout(_elf: Path, tmp_path: Path) -> Path:
    return Path("/bin/sh").resolve()


@pytest.mark.parametrize("command", ["run", "sign"])
@pytest.mark.parametrize(
    ("make", "phrase"),
    [
        (_truncated, "not a valid ELF file"),
        (_not_elf, "not a valid ELF file"),
        (_wrong_layout, "first PT_LOAD must be exactly PF_R|PF_W"),
        (lambda _e, t: t / "missing.elf", "missing.elf: no such file; check the path"),
        (lambda _e, t: t, "not a regular file"),
    ],
)
def test_broken_enclave(
    command: str, make: Any, phrase: str, elf: Path, key_file: Path, tmp_path: Path
) -> None:
    path = make(elf, tmp_path)
    args = ["run", path, "--op", "nop"] if command == "run" else ["sign", path, "--key", key_file]
    one_line_error(run(*args), 1, phrase)


def _key_2048(tmp_path: Path) -> Path:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    k = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    p = tmp_path / "k2048.pem"
    p.write_bytes(k.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ))
    return p


def _garbage_key(tmp_path: Path) -> Path:
    p = tmp_path / "garbage.pem"
    p.write_text("not a key\n")
    return p


@pytest.mark.parametrize("command", ["run", "sign"])
@pytest.mark.parametrize(
    ("make", "phrase"),
    [
        (_key_2048, "must be RSA-3072 with public exponent 3; got RSA-2048 with exponent 65537"),
        (_garbage_key, "not an unencrypted PEM private key; make one with 'sgxemu sign --gen-key"),
        (lambda t: t / "nokey.pem", "key "),
    ],
)
def test_wrong_key(command: str, make: Any, phrase: str, elf: Path, tmp_path: Path) -> None:
    key = make(tmp_path)
    args = ["run", elf, "--key", key, "--op", "nop"] if command == "run" else ["sign", elf, "--key", key]
    one_line_error(run(*args), 1, phrase)


@pytest.mark.parametrize(
    ("args", "code", "phrase"),
    [
        (["--heap", "3"], 2, "--heap 3 is not a multiple of 4 KiB"),
        (["--heap", "2G"], 2, "--heap 2G is too large; use at most 1G"),
        (["--epc", "lots"], 2, "--epc 'lots' is not a size"),
        (["--epc", "16K"], 2, "--epc 16K is too small; use at least 64K"),
        (["--tcs", "9"], 1, "TCS 9 does not exist: the enclave has 2 (0..1); pick --tcs"),
        (["--kernel", "v0"], 1, "unknown kernel variant 'v0'"),
    ],
)
def test_run_bad_options(elf: Path, args: list[str], code: int, phrase: str) -> None:
    one_line_error(run("run", elf, "--op", "nop", *args), code, phrase)


def test_run_needs_an_op(elf: Path) -> None:
    one_line_error(run("run", elf), 2, "Missing option '--op'; see 'sgxemu run --help'")


@pytest.mark.parametrize(
    ("args", "phrase"),
    [
        ([], "no enclave given"),
        (["ELF"], "no key given; add --key KEY.pem, or --gen-key FILE"),
        (["ELF", "--key", "KEY", "--gen-key", "x.pem"], "--key and --gen-key both given"),
        (["--gen-key", "KEY"], "already exists; remove it or give --gen-key another file name"),
        (["--gen-key", "/nonexistent/dir/k.pem"], "cannot create /nonexistent/dir/k.pem"),
        (["ELF", "--key", "KEY", "--out", "/nonexistent/dir/x.sig"], "cannot write /nonexistent/dir/x.sig"),
        (["ELF", "--key", "KEY", "--heap", "1.5M"], "--heap '1.5M' is not a size"),
    ],
)
def test_sign_bad_input(args: list[str], phrase: str, elf: Path, key_file: Path) -> None:
    real = [str(elf) if a == "ELF" else str(key_file) if a == "KEY" else a for a in args]
    r = run("sign", *real)
    one_line_error(r, r.exit_code or 1, phrase)
    assert r.exit_code in (1, 2)


def test_debug_shows_traceback(elf: Path, tmp_path: Path) -> None:
    r = run("--debug", "sign", _not_elf(elf, tmp_path), "--gen-key", tmp_path / "k.pem")
    assert r.exit_code == 1
    assert "Traceback (most recent call last)" in r.stderr
    assert "EnclaveFormatError" in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("Error: ")
    assert not (tmp_path / "k.pem").exists()  # nothing written when the input is bad
