"""`sgxemu measure`, through click's CliRunner on the real command group."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from click.testing import CliRunner, Result

from sgxemu.cli.main import COMMAND_MODULES, _register_commands, cli
from testkeys import VECTORS, needs_vectors

TDQE = VECTORS / "intel" / "libsgx_tdqe.signed.so"
SGXS = VECTORS / "fortanix-rust-sgx" / "test_enclave.sgxs"
SIG = VECTORS / "fortanix-rust-sgx" / "test_enclave.sig"
REPORT = VECTORS / "fortanix-rust-sgx" / "report.sgxs"
TDQE_MRENCLAVE = "86fc4e0ec2c5ddcebac97062c0a0142a97c18a7a755147bcbc3fe17d6529781d"
TDQE_MRSIGNER = "dc9e2a7c6f948f17474e34a7fc43ed030f7c1563f1babddf6340c82e0e54a8c5"
SGXS_HASH = "784acfd7d5096a8f0fbd3265760bff21b120f62407a9a9e5ba31aa3c8ed198fc"
SGXS_MRSIGNER = "fb4bab3d6036ac1d730fa83d7366df1dd2dfeac194ef335d6854d8a6c6475542"
MD_OFFSET = 0x123A19

pytestmark = needs_vectors


def run(*args: str | Path) -> Result:
    _register_commands()
    return CliRunner().invoke(cli, ["measure", *map(str, args)])


def bad_input(result: Result, phrase: str) -> None:
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and phrase in lines[0], result.stderr
    assert "Traceback" not in result.output


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_registered() -> None:
    assert "measure" in COMMAND_MODULES


def test_sdk_enclave_text() -> None:
    r = run(TDQE)
    assert r.exit_code == 0, r.output
    out = r.stdout
    assert f"MRENCLAVE    {TDQE_MRENCLAVE}  (417 EADD, 6096 EEXTEND)" in out
    assert f"MRSIGNER     {TDQE_MRSIGNER}" in out
    assert "ISVPRODID    2" in out and "ISVSVN       1" in out
    assert "0x14 (MODE64BIT|PROVISIONKEY)" in out
    assert "signature    valid" in out and "measurement  matches" in out


def test_sdk_enclave_json() -> None:
    r = run(TDQE, "--json")
    assert r.exit_code == 0
    d = json.loads(r.stdout)
    assert d["mrenclave"] == TDQE_MRENCLAVE and d["mrsigner"] == TDQE_MRSIGNER
    assert (d["sigstruct"]["isvprodid"], d["sigstruct"]["isvsvn"]) == (2, 1)
    assert d["sigstruct"]["attributes"] == 0x14 and d["sigstruct"]["xfrm"] == 3
    assert d["signature_valid"] and d["measurement_matches"] and d["ok"]
    assert (d["eadd"], d["eextend"], d["metadata_version"]) == (417, 6096, "1.4")


def test_sgxs_with_detached_sig() -> None:
    r = run(SGXS, "--sig", SIG, "--json")
    assert r.exit_code == 0
    d = json.loads(r.stdout)
    assert d["mrenclave"] == SGXS_HASH == d["sigstruct"]["enclavehash"]
    assert d["mrsigner"] == SGXS_MRSIGNER and d["sigstruct"]["isvprodid"] == 0xFFFF
    assert d["ok"]


def test_sgxs_without_sig_prints_the_measurement() -> None:
    r = run(REPORT)
    assert r.exit_code == 0
    assert "a06a560b26f5e397b2d7872fac66fe4b43bf4f507296ee048f110be6fb1a2290" in r.stdout
    assert "none" in r.stdout


def test_measurement_mismatch_exits_nonzero_and_says_so(tmp_path: Path) -> None:
    data = TDQE.read_bytes()
    bad = write(tmp_path, "bad.signed.so", data[:0x5000] + bytes([data[0x5000] ^ 1]) + data[0x5001:])
    r = run(bad)
    assert r.exit_code == 1
    assert "measurement  MISMATCH" in r.stdout and "signature    valid" in r.stdout
    assert "measurement mismatch" in r.stderr and "signature invalid" not in r.stderr
    r = run(bad, "--json")
    assert r.exit_code == 1
    d = json.loads(r.stdout)
    assert d["signature_valid"] and not d["measurement_matches"] and not d["ok"]


def test_wrong_sigstruct_is_a_mismatch() -> None:
    r = run(REPORT, "--sig", SIG)
    assert r.exit_code == 1 and "measurement mismatch" in r.stderr


def test_bad_signature_is_reported(tmp_path: Path) -> None:
    sig = bytearray(SIG.read_bytes())
    sig[1026] ^= 1  # ISVSVN: part of the signed body
    r = run(SGXS, "--sig", write(tmp_path, "bad.sig", bytes(sig)))
    assert r.exit_code == 1
    assert "signature    INVALID" in r.stdout and "signature invalid" in r.stderr


def test_not_an_enclave(tmp_path: Path) -> None:
    bad_input(run(write(tmp_path, "notes.txt", b"just text\n")), "not an enclave")


def test_elf_without_metadata(tmp_path: Path) -> None:
    data = TDQE.read_bytes()
    at = data.index(b".note.sgxmeta\0")
    path = write(tmp_path, "plain.so", data[:at] + b".note.sgxmetx" + data[at + 13 :])
    bad_input(run(path), "not an enclave")


def test_unsigned_enclave(tmp_path: Path) -> None:
    data = TDQE.read_bytes()
    path = write(tmp_path, "unsigned.so", data[:MD_OFFSET] + bytes(0x5000) + data[MD_OFFSET + 0x5000 :])
    bad_input(run(path), "unsigned enclave")


def test_unknown_metadata_version(tmp_path: Path) -> None:
    data = TDQE.read_bytes()
    v = MD_OFFSET + 8
    path = write(tmp_path, "v9.so", data[:v] + struct.pack("<Q", 9 << 32) + data[v + 8 :])
    bad_input(run(path), "unknown metadata version 9.0")


def test_truncated_files(tmp_path: Path) -> None:
    bad_input(run(write(tmp_path, "cut.so", TDQE.read_bytes()[:0x10000])), "truncated file")
    bad_input(run(write(tmp_path, "cut.sgxs", SGXS.read_bytes()[:1000])), "truncated file")
    bad_input(run(SGXS, "--sig", write(tmp_path, "cut.sig", SIG.read_bytes()[:100])), "truncated file")


def test_missing_file(tmp_path: Path) -> None:
    bad_input(run(tmp_path / "nope.so"), "No such file")


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    _register_commands()
    path = write(tmp_path, "notes.txt", b"just text\n")
    r = CliRunner().invoke(cli, ["--debug", "measure", str(path)])
    assert r.exit_code == 2 and "Traceback" in r.stderr and "NotAnEnclaveError" in r.stderr
