"""MRENCLAVE against third-party vectors (../shared/vectors, see its README for origins)."""

from __future__ import annotations

import hashlib
import struct

import pytest

from sgxemu.arch.constants import PAGE_SIZE
from sgxemu.hw.measurement import (
    MeasurementState,
    eadd_block,
    ecreate_block,
    eextend_block,
)
from sgxemu.sign import EnclaveMeasurer
from testkeys import VECTORS, needs_vectors

TCS = 0x100
REG_R = 0x201
REG_RW = 0x203
REG_RWX = 0x207
REG_RX = 0x205

# enarx/sgx hasher tests (Apache-2.0): ECREATE SSAFRAMESIZE 1, pages of 0x7b from offset 0.
SMALL_VECTORS: list[tuple[list[int], str]] = [
    ([], "fc95d7343a6f0e5fcf1339266178171acf2c980548ca6119cc5e0ac5bc59f6f6"),
    ([TCS], "e65386abb3825eef720dca6fad7e65b92c6081385c07f6631155f5cfc9093341"),
    ([REG_R], "007570d409d7640c631e66ecbb672790fb21bf70195f8cfbc9d171bb0f470ff2"),
    ([REG_RW], "81b8355b859127cdb0b6dc2524c68b5b94b56274167aaeadad3b27d1a52f08db"),
    ([REG_RWX], "afd1e92d30bd76928b6e3fc038774245f6748ece3a61baad3b6e7a13abed5006"),
    ([REG_RX], "4ccfa9f06b01a6ec6c355b6b87ee7b8423f6e61ffe0603af230227af72fe4937"),
    ([TCS, REG_R, REG_R], "e90b112375a3c46a8e89a9826c6c33051df198be09f51b1055ad115a2b7c2e54"),
]


def _next_pow2(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


@pytest.mark.parametrize(("flags", "expected"), SMALL_VECTORS)
def test_small_mrenclave_vectors(flags: list[int], expected: str) -> None:
    m = EnclaveMeasurer(_next_pow2(len(flags) * PAGE_SIZE), ssaframesize=1)
    page = b"\x7b" * PAGE_SIZE
    for i, f in enumerate(flags):
        m.add_page(i * PAGE_SIZE, page, f)
    assert m.mrenclave().hex() == expected
    assert m.update_counter == 1 + (1 + 16 * 5) * len(flags)


def test_three_page_vector_uses_size_0x4000() -> None:
    assert _next_pow2(3 * PAGE_SIZE) == 0x4000


@needs_vectors
def test_enarx_encl_bin_matches_encl_ss_enclavehash() -> None:
    image = (VECTORS / "enarx-sgx" / "encl.bin").read_bytes()
    sig = (VECTORS / "enarx-sgx" / "encl.ss").read_bytes()
    assert len(image) == 6 * PAGE_SIZE
    m = EnclaveMeasurer(0x8000, ssaframesize=1)
    for i in range(len(image) // PAGE_SIZE):
        flags = TCS if i == 0 else REG_RWX
        m.add_page(i * PAGE_SIZE, image[i * PAGE_SIZE : (i + 1) * PAGE_SIZE], flags)
    expected = "b999536238fcf4e9d360ef6cd3e0c20ef8a684c7b93f74a9c4a4c6d517d61fc0"
    assert sig[960:992].hex() == expected
    assert m.mrenclave().hex() == expected


def _replay_sgxs(stream: bytes) -> tuple[MeasurementState, dict[bytes, int]]:
    """Replay an SGXS stream (its records are the measurement blocks themselves),
    checking every record against the block builders."""
    state = MeasurementState()
    counts: dict[bytes, int] = {}
    pos = 0
    while pos < len(stream):
        block = stream[pos : pos + 64]
        tag = block[:8]
        counts[tag] = counts.get(tag, 0) + 1
        if tag == b"ECREATE\0":
            ssa, size = struct.unpack_from("<IQ", block, 8)
            assert ecreate_block(ssa, size) == block
            state.ecreate(ssa, size)
            pos += 64
        elif tag == b"EADD\0\0\0\0":
            offset, flags = struct.unpack_from("<QQ", block, 8)
            assert eadd_block(offset, flags) == block
            state.eadd(offset, flags)
            pos += 64
        elif tag == b"EEXTEND\0":
            (offset,) = struct.unpack_from("<Q", block, 8)
            assert eextend_block(offset) == block
            state.eextend(offset, stream[pos + 64 : pos + 320])
            pos += 320
        else:
            raise AssertionError(f"unexpected SGXS record {tag!r} at {pos:#x}")
    assert state.update_counter * 64 == len(stream)
    return state, counts


@needs_vectors
def test_fortanix_test_enclave_sgxs_replay() -> None:
    stream = (VECTORS / "fortanix-rust-sgx" / "test_enclave.sgxs").read_bytes()
    sig = (VECTORS / "fortanix-rust-sgx" / "test_enclave.sig").read_bytes()
    state, counts = _replay_sgxs(stream)
    assert counts == {b"ECREATE\0": 1, b"EADD\0\0\0\0": 9, b"EEXTEND\0": 144}
    expected = "784acfd7d5096a8f0fbd3265760bff21b120f62407a9a9e5ba31aa3c8ed198fc"
    assert hashlib.sha256(stream).hexdigest() == expected
    assert state.final().hex() == expected
    assert sig[960:992].hex() == expected


@needs_vectors
def test_fortanix_report_sgxs_replay() -> None:
    stream = (VECTORS / "fortanix-rust-sgx" / "report.sgxs").read_bytes()
    state, _ = _replay_sgxs(stream)
    expected = "a06a560b26f5e397b2d7872fac66fe4b43bf4f507296ee048f110be6fb1a2290"
    assert state.final().hex() == expected


def test_block_layouts() -> None:
    assert ecreate_block(1, 0x8000) == (
        b"ECREATE\0" + (1).to_bytes(4, "little") + (0x8000).to_bytes(8, "little") + bytes(44)
    )
    assert eadd_block(0x3000, 0x207) == (
        b"EADD\0\0\0\0" + (0x3000).to_bytes(8, "little") + (0x207).to_bytes(8, "little") + bytes(40)
    )
    assert eextend_block(0x3100) == b"EEXTEND\0" + (0x3100).to_bytes(8, "little") + bytes(48)
    for b in (ecreate_block(1, 1), eadd_block(0, 0), eextend_block(0)):
        assert len(b) == 64


def test_block_argument_checks() -> None:
    with pytest.raises(ValueError):
        eextend_block(0x80)
    with pytest.raises(ValueError):
        eadd_block(-1, 0)
    with pytest.raises(ValueError):
        ecreate_block(1 << 32, 0)
    st = MeasurementState()
    st.ecreate(1, 0x2000)
    with pytest.raises(ValueError):
        st.eextend(0, bytes(255))
    with pytest.raises(ValueError):
        st.eextend(0x10, bytes(256))
    assert st.update_counter == 1


def test_state_equals_plain_sha256_and_copy_is_independent() -> None:
    st = MeasurementState()
    st.ecreate(2, 0x10000)
    st.eadd(0x1000, 0x201)
    chunk = bytes(range(256))
    st.eextend(0x1000, memoryview(chunk))
    plain = hashlib.sha256(
        ecreate_block(2, 0x10000) + eadd_block(0x1000, 0x201) + eextend_block(0x1000) + chunk
    )
    assert st.final() == plain.digest()
    assert st.final() == plain.digest()  # final() does not consume the state
    assert st.update_counter == 1 + 1 + 5
    snap = st.copy()
    st.eadd(0x2000, 0x201)
    assert snap.final() == plain.digest()
    assert snap.update_counter == 7
    assert st.final() != snap.final()
    # ECREATE starts a fresh measurement.
    st.ecreate(2, 0x10000)
    assert st.update_counter == 1
    assert st.final() == hashlib.sha256(ecreate_block(2, 0x10000)).digest()


def test_measurer_rejects_tcs_with_permissions_and_bad_pages() -> None:
    m = EnclaveMeasurer(0x2000)
    with pytest.raises(ValueError, match="TCS"):
        m.add_page(0, bytes(PAGE_SIZE), TCS | 0x3)
    with pytest.raises(ValueError):
        m.add_page(0, bytes(100), REG_R)
    with pytest.raises(ValueError):
        m.add_page(0x800, bytes(PAGE_SIZE), REG_R)
    assert m.update_counter == 1


def test_measurer_unmeasured_page_is_eadd_only() -> None:
    m = EnclaveMeasurer(0x2000)
    m.add_page(0x1000, b"\x01" * PAGE_SIZE, REG_RW, measure=False)
    expected = hashlib.sha256(ecreate_block(1, 0x2000) + eadd_block(0x1000, REG_RW)).digest()
    assert m.mrenclave() == expected
    assert m.update_counter == 2
