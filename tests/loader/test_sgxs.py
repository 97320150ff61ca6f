"""SGXS streams and detached SIGSTRUCTs: measurement, verification, EINIT in the emulator.

Vectors: fortanix/rust-sgx test_enclave.sgxs/.sig and report.sgxs (MPL-2.0), and the small
enarx/sgx hasher vectors (Apache-2.0), all listed in ../shared/vectors/README.md.
"""

from __future__ import annotations

import errno
import hashlib
import struct
from pathlib import Path

import pytest

from sgxemu import Machine
from sgxemu.arch.constants import PageType, SgxError
from sgxemu.linux.process import Process
from sgxemu.loader.errors import (
    NotAnEnclaveError,
    PartialMeasurementError,
    SgxsFormatError,
    SigstructFormatError,
    TruncatedFileError,
    UnsignedEnclaveError,
    UnsupportedEnclaveError,
)
from sgxemu.loader.linux_load import check_loadable, load_sgxs
from sgxemu.loader.sgxs import SgxsEnclave, parse_sgxs, read_sigstruct
from testkeys import VECTORS, needs_vectors

FORTANIX = VECTORS / "fortanix-rust-sgx"
SGXS_PATH = FORTANIX / "test_enclave.sgxs"
SIG_PATH = FORTANIX / "test_enclave.sig"
ENCLAVEHASH = "784acfd7d5096a8f0fbd3265760bff21b120f62407a9a9e5ba31aa3c8ed198fc"
MRSIGNER = "fb4bab3d6036ac1d730fa83d7366df1dd2dfeac194ef335d6854d8a6c6475542"
REPORT_SHA256 = "a06a560b26f5e397b2d7872fac66fe4b43bf4f507296ee048f110be6fb1a2290"

pytestmark = needs_vectors

# enarx/sgx hasher tests: SSAFRAMESIZE 1, pages of 0x7b from offset 0, EADD + 16 EEXTEND each.
SMALL_VECTORS = [
    ([0x100], "e65386abb3825eef720dca6fad7e65b92c6081385c07f6631155f5cfc9093341"),
    ([0x201], "007570d409d7640c631e66ecbb672790fb21bf70195f8cfbc9d171bb0f470ff2"),
    ([0x203], "81b8355b859127cdb0b6dc2524c68b5b94b56274167aaeadad3b27d1a52f08db"),
    ([0x207], "afd1e92d30bd76928b6e3fc038774245f6748ece3a61baad3b6e7a13abed5006"),
    ([0x205], "4ccfa9f06b01a6ec6c355b6b87ee7b8423f6e61ffe0603af230227af72fe4937"),
    ([0x100, 0x201, 0x201], "e90b112375a3c46a8e89a9826c6c33051df198be09f51b1055ad115a2b7c2e54"),
]


def ecreate(ssa: int, size: int) -> bytes:
    return struct.pack("<8sIQ44x", b"ECREATE", ssa, size)


def eadd(offset: int, flags: int) -> bytes:
    return struct.pack("<8sQQ40x", b"EADD", offset, flags)


def eextend(offset: int, data: bytes, tag: bytes = b"EEXTEND") -> bytes:
    return struct.pack("<8sQ48x", tag, offset) + data


def page_records(offset: int, flags: int, fill: int, chunks: list[int] | None = None) -> bytes:
    out = eadd(offset, flags)
    for c in range(16) if chunks is None else chunks:
        out += eextend(offset + 256 * c, bytes([fill]) * 256)
    return out


def records(data: bytes) -> list[tuple[int, bytes]]:
    """(file offset, tag) of every record."""
    out, pos = [], 0
    while pos < len(data):
        tag = data[pos : pos + 8]
        out.append((pos, tag))
        pos += 320 if tag in (b"EEXTEND\0", b"UNMEASRD") else 64
    return out


@pytest.fixture(scope="module")
def sgxs_bytes() -> bytes:
    return SGXS_PATH.read_bytes()


@pytest.fixture(scope="module")
def enclave(sgxs_bytes: bytes) -> SgxsEnclave:
    return parse_sgxs(sgxs_bytes, str(SGXS_PATH))


def test_test_enclave_measures_to_its_sigstruct(enclave: SgxsEnclave, sgxs_bytes: bytes) -> None:
    m = enclave.measure()
    assert m.mrenclave.hex() == ENCLAVEHASH == hashlib.sha256(sgxs_bytes).hexdigest()
    assert (m.eadd, m.eextend) == (9, 144)
    assert (enclave.plan.size, enclave.plan.ssaframesize) == (0x40000, 1)
    report = enclave.check(read_sigstruct(SIG_PATH))
    assert report.ok and report.format_ok and report.signature_ok and report.measurement_ok
    assert report.mrsigner.hex() == MRSIGNER
    assert report.fields.isvprodid == 0xFFFF


def test_unsigned_report_stream(enclave: SgxsEnclave) -> None:
    data = (FORTANIX / "report.sgxs").read_bytes()
    enc = parse_sgxs(data)
    assert enc.measure().mrenclave.hex() == REPORT_SHA256
    assert enc.check(read_sigstruct(SIG_PATH)).measurement_ok is False


@pytest.mark.parametrize(("flags", "expected"), SMALL_VECTORS)
def test_small_vectors(flags: list[int], expected: str) -> None:
    size = 4096
    while size < 4096 * len(flags):
        size <<= 1
    stream = ecreate(1, size) + b"".join(page_records(i * 4096, f, 0x7B) for i, f in enumerate(flags))
    assert parse_sgxs(stream).measure().mrenclave.hex() == expected


def test_unmeasured_chunks_are_loaded_not_measured() -> None:
    measured = ecreate(1, 0x2000) + page_records(0, 0x203, 1)
    data_only = ecreate(1, 0x2000) + eadd(0, 0x203) + b"".join(
        eextend(256 * c, bytes([1]) * 256, b"UNMEASRD") for c in range(16)
    )
    enc = parse_sgxs(data_only)
    assert enc.unmeasured_chunks == 16 and next(enc.plan.pages).data == bytes([1]) * 4096
    assert enc.measure().eextend == 0
    assert enc.measure().mrenclave != parse_sgxs(measured).measure().mrenclave
    check_loadable(enc.plan)  # an unmeasured page is fine for ADD_PAGES (flags 0)


def test_one_byte_change_is_a_measurement_mismatch(sgxs_bytes: bytes) -> None:
    at = next(pos for pos, tag in records(sgxs_bytes) if tag == b"EEXTEND\0") + 64 + 17
    bad = sgxs_bytes[:at] + bytes([sgxs_bytes[at] ^ 0x80]) + sgxs_bytes[at + 1 :]
    report = parse_sgxs(bad).check(read_sigstruct(SIG_PATH))
    assert report.signature_ok and report.measurement_ok is False


# -- pages the Linux ABI cannot express -----------------------------------------------------------
def test_partially_measured_page_cannot_be_loaded() -> None:
    stream = ecreate(1, 0x2000) + page_records(0, 0x203, 2, chunks=[0, 1, 2])
    enc = parse_sgxs(stream)
    assert enc.measure().eextend == 3  # measuring follows the stream exactly
    with pytest.raises(PartialMeasurementError, match=r"page 0x0 EEXTENDs chunks \[0, 1, 2\]"):
        check_loadable(enc.plan)


def test_reordered_chunks_cannot_be_loaded() -> None:
    stream = ecreate(1, 0x2000) + page_records(0, 0x203, 2, chunks=list(range(15, -1, -1)))
    with pytest.raises(PartialMeasurementError):
        check_loadable(parse_sgxs(stream).plan)


def test_partial_page_is_refused_before_any_ioctl(proc: Process, sgxs_bytes: bytes) -> None:
    recs = records(sgxs_bytes)
    pos = [p for p, tag in recs if tag == b"EEXTEND\0"][5]
    bad = sgxs_bytes[:pos] + b"UNMEASRD" + sgxs_bytes[pos + 8 :]
    with pytest.raises(PartialMeasurementError):
        load_sgxs(proc, parse_sgxs(bad), read_sigstruct(SIG_PATH))
    assert not proc.fds or all(f.f_op.name != "sgx_enclave" for f in proc.fds.values())


# -- bad input ------------------------------------------------------------------------------------
def test_not_an_sgxs_stream() -> None:
    with pytest.raises(NotAnEnclaveError):
        parse_sgxs(b"\0" * 128)


def test_truncated_stream(sgxs_bytes: bytes) -> None:
    for cut in (30, 64 + 100, len(sgxs_bytes) - 1):
        with pytest.raises(TruncatedFileError, match="truncated file"):
            parse_sgxs(sgxs_bytes[:cut])


def test_unknown_record_and_non_canonical_streams() -> None:
    with pytest.raises(SgxsFormatError, match="unknown record tag"):
        parse_sgxs(ecreate(1, 0x2000) + b"EBLOCK\0\0" + bytes(56))
    with pytest.raises(SgxsFormatError, match="does not increase"):
        parse_sgxs(ecreate(1, 0x4000) + page_records(0x1000, 0x201, 0) + page_records(0, 0x201, 0))
    with pytest.raises(SgxsFormatError, match="outside the last EADDed page"):
        parse_sgxs(ecreate(1, 0x4000) + eextend(0, bytes(256)))
    with pytest.raises(SgxsFormatError, match="R/W/X"):
        parse_sgxs(ecreate(1, 0x4000) + eadd(0, 0x103))
    with pytest.raises(SgxsFormatError, match="second ECREATE"):
        parse_sgxs(ecreate(1, 0x4000) + ecreate(1, 0x4000))


def test_unsized_stream_is_unsupported() -> None:
    with pytest.raises(UnsupportedEnclaveError, match="UNSIZED"):
        parse_sgxs(struct.pack("<8sIQ44x", b"UNSIZED", 1, 0))


def test_detached_sigstruct_size(tmp_path: Path) -> None:
    short = tmp_path / "short.sig"
    short.write_bytes(SIG_PATH.read_bytes()[:1000])
    with pytest.raises(TruncatedFileError):
        read_sigstruct(short)
    long = tmp_path / "long.sig"
    long.write_bytes(SIG_PATH.read_bytes() + b"\0")
    with pytest.raises(SigstructFormatError):
        read_sigstruct(long)


# -- loading through the Linux ABI ----------------------------------------------------------------
def test_einit_accepts_test_enclave(machine: Machine, proc: Process, enclave: SgxsEnclave) -> None:
    encl = load_sgxs(proc, enclave, read_sigstruct(SIG_PATH))
    assert machine.last_einit_error == 0
    (secs,) = [e.secs for e in machine.cpu.epcm.values() if e.pt == PageType.PT_SECS]
    assert secs is not None
    assert bytes(secs.mrenclave).hex() == ENCLAVEHASH and bytes(secs.mrsigner).hex() == MRSIGNER
    assert (encl.attributes, encl.xfrm, encl.size) == (0x4, 0x3, 0x40000)
    encl.delete()


def test_einit_refuses_a_one_byte_change(machine: Machine, proc: Process, sgxs_bytes: bytes) -> None:
    at = [pos for pos, tag in records(sgxs_bytes) if tag == b"EEXTEND\0"][-1] + 64
    bad = sgxs_bytes[:at] + bytes([sgxs_bytes[at] ^ 1]) + sgxs_bytes[at + 1 :]
    with pytest.raises(OSError) as info:
        load_sgxs(proc, parse_sgxs(bad), read_sigstruct(SIG_PATH))
    assert info.value.errno == errno.EPERM
    assert machine.last_einit_error == SgxError.SGX_INVALID_MEASUREMENT


def test_sgxs_needs_a_sigstruct_to_load(proc: Process, enclave: SgxsEnclave) -> None:
    with pytest.raises(UnsignedEnclaveError):
        load_sgxs(proc, enclave, None)
