"""SIGSTRUCT format check, EINIT-style RSA verification, MRSIGNER and signing.

Vectors come from ../shared/vectors (see its README for origins and licences).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from sgxemu.arch.constants import (
    HARDCODED_PKCS1_5_PADDING,
    INTEL_LE_PUBKEYHASH,
    SIGSTRUCT_SIZE,
)
from sgxemu.arch.structs import Sigstruct
from sgxemu.hw.launch import (
    RESERVED_RANGES,
    mrsigner,
    sigstruct_format_valid,
    sigstruct_signature_padding,
)
from sgxemu.sign import (
    SigningError,
    generate_key,
    load_key,
    mrsigner_of_key,
    sign_sigstruct,
)
from testkeys import VECTORS, needs_vectors

ENARX = VECTORS / "enarx-sgx"
FORTANIX = VECTORS / "fortanix-rust-sgx"
INTEL = VECTORS / "intel"

U64 = (1 << 64) - 1

OFF = Sigstruct.OFFSETS


def _read(path: Path) -> bytes:
    return path.read_bytes()


def _flip(data: bytes, byte: int, bit: int = 0) -> bytes:
    out = bytearray(data)
    out[byte] ^= 1 << bit
    return bytes(out)


def _le(path: Path) -> int:
    return int.from_bytes(path.read_bytes(), "little")


@pytest.fixture(scope="module")
def fresh_key() -> rsa.RSAPrivateKey:
    return generate_key()


# --- third-party SIGSTRUCTs -----------------------------------------------------------


@needs_vectors
def test_enarx_encl_ss() -> None:
    sig = _read(ENARX / "encl.ss")
    assert len(sig) == SIGSTRUCT_SIZE
    assert sigstruct_format_valid(sig)
    assert sigstruct_signature_padding(sig) == HARDCODED_PKCS1_5_PADDING
    assert Sigstruct.unpack(sig).enclavehash.hex() == (
        "b999536238fcf4e9d360ef6cd3e0c20ef8a684c7b93f74a9c4a4c6d517d61fc0"
    )
    assert mrsigner(Sigstruct.unpack(sig).modulus).hex() == (
        "2f9f8fd4fe12d77232f1d87571ca8252ca27714efe7705e46222cffd5a22e8c4"
    )


@needs_vectors
def test_enarx_encl_pem_is_the_signer() -> None:
    key = load_key(ENARX / "encl.pem")
    assert mrsigner_of_key(key).hex() == (
        "2f9f8fd4fe12d77232f1d87571ca8252ca27714efe7705e46222cffd5a22e8c4"
    )


@needs_vectors
def test_raw_rsa_vector_sig1() -> None:
    n = _le(FORTANIX / "sig1.key_n.bin")
    s = _le(FORTANIX / "sig1.sig.bin")
    q1 = _le(FORTANIX / "sig1.q1.bin")
    q2 = _le(FORTANIX / "sig1.q2.bin")
    digest = _read(FORTANIX / "sig1.data.bin")
    # EINIT's division-free check (SDM EINIT): both remainders in [0, n).
    r1 = s * s - q1 * n
    r2 = s * r1 - q2 * n
    assert 0 <= r1 < n
    assert 0 <= r2 < n
    assert r2 == pow(s, 3, n)
    assert r2.to_bytes(384, "big") == HARDCODED_PKCS1_5_PADDING + digest
    # The signer's formulas reproduce the stored Q1/Q2.
    assert q1 == s * s // n
    assert q2 == s * (s * s % n) // n


@needs_vectors
def test_deterministic_sigstruct_sig1() -> None:
    key = load_key(FORTANIX / "sig1.key.pem")
    expected = _read(FORTANIX / "sig1.sigstruct.bin")
    got = sign_sigstruct(
        key,
        vendor=0,
        date=0x20160109,
        attributes=4,
        xfrm=3,
        miscselect=0,
        miscmask=0xFFFFFFFF,
        attributemask=~2 & U64,
        xfrmmask=~0xE4 & U64,
        enclavehash=bytes.fromhex(
            "c50673624a6cb17c1c6c2a4e6906f47a170c4629b8723781d1017ef376f1a75d"
        ),
        isvprodid=0,
        isvsvn=0,
    )
    assert got == expected
    assert sigstruct_format_valid(got)
    assert sigstruct_signature_padding(got) == HARDCODED_PKCS1_5_PADDING
    mr = "83d719e77deaca1470f6baf62a4d774303c899db69020f9c70ee1dfc08c7ce9e"
    assert mrsigner(Sigstruct.unpack(expected).modulus).hex() == mr
    assert mrsigner_of_key(key).hex() == mr


@needs_vectors
def test_intel_le_prod_css() -> None:
    sig = _read(INTEL / "le_prod_css.bin")
    assert sigstruct_format_valid(sig)
    assert sigstruct_signature_padding(sig) == HARDCODED_PKCS1_5_PADDING
    assert Sigstruct.unpack(sig).enclavehash.hex() == (
        "7881af9f9def547da9908c008f29cde9bd78064e36ac7e14c83c294ca4806150"
    )
    assert mrsigner(Sigstruct.unpack(sig).modulus) == INTEL_LE_PUBKEYHASH
    assert INTEL_LE_PUBKEYHASH.hex() == (
        "acb77012053e05a63d413b8bbae8fb6c5d73b3f2996d91c43bbbf90959c0f8d4"
    )


@needs_vectors
def test_fortanix_test_enclave_sig() -> None:
    sig = _read(FORTANIX / "test_enclave.sig")
    sgxs = _read(FORTANIX / "test_enclave.sgxs")
    assert sigstruct_format_valid(sig)
    assert sigstruct_signature_padding(sig) == HARDCODED_PKCS1_5_PADDING
    assert mrsigner(Sigstruct.unpack(sig).modulus).hex() == (
        "fb4bab3d6036ac1d730fa83d7366df1dd2dfeac194ef335d6854d8a6c6475542"
    )
    hexhash = "784acfd7d5096a8f0fbd3265760bff21b120f62407a9a9e5ba31aa3c8ed198fc"
    assert Sigstruct.unpack(sig).enclavehash.hex() == hexhash
    assert hashlib.sha256(sgxs).hexdigest() == hexhash
    assert Sigstruct.unpack(sig).isvprodid == 0xFFFF  # ISVPRODID


# --- tampering ------------------------------------------------------------------------

ALL_VALID = ["enarx-sgx/encl.ss", "intel/le_prod_css.bin", "fortanix-rust-sgx/test_enclave.sig"]

# One byte in each region: signed head, signed body (ENCLAVEHASH, ISVSVN), SIGNATURE, Q1, Q2.
FLIP_OFFSETS = {
    "signed-header": OFF["header"] + 4,
    "signed-vendor": OFF["vendor"],
    "signed-date": OFF["date"],
    "signed-reserved1": OFF["reserved1"] + 6,
    "signed-miscselect": OFF["miscselect"],
    "signed-isvfamilyid": OFF["isvfamilyid"],
    "signed-attributes": OFF["attributes"],
    "signed-enclavehash": OFF["enclavehash"] + 10,
    "signed-isvsvn": OFF["isvsvn"] + 1,
    "signature-low": OFF["signature"],
    "signature-high": OFF["signature"] + 383,
    "q1-low": OFF["q1"],
    "q1-high": OFF["q1"] + 383,
    "q2-low": OFF["q2"],
    "q2-high": OFF["q2"] + 383,
    "modulus": OFF["modulus"] + 172,
}


@needs_vectors
@pytest.mark.parametrize("name", ALL_VALID)
@pytest.mark.parametrize("where", sorted(FLIP_OFFSETS))
def test_one_bit_flip_breaks_signature(name: str, where: str) -> None:
    sig = _read(VECTORS / name)
    assert sigstruct_signature_padding(sig) is not None
    for bit in (0, 7):
        assert sigstruct_signature_padding(_flip(sig, FLIP_OFFSETS[where], bit)) is None


@needs_vectors
@pytest.mark.parametrize(
    "offset",
    [0, 4, 15, 24, 39, 512, 513, 515, 16, 17, 18, 19],
    ids=lambda o: f"byte{o}",
)
def test_header_vendor_exponent_changes_fail_format(offset: int) -> None:
    sig = _read(ENARX / "encl.ss")
    assert sigstruct_format_valid(sig)
    assert not sigstruct_format_valid(_flip(sig, offset))


@needs_vectors
@pytest.mark.parametrize("rng", RESERVED_RANGES, ids=lambda r: f"{r[0]}-{r[1]}")
def test_reserved_bytes_fail_format(rng: tuple[int, int]) -> None:
    sig = _read(ENARX / "encl.ss")
    lo, hi = rng
    for off in (lo, hi - 1):
        assert not sigstruct_format_valid(_flip(sig, off, 3))


def test_reserved_ranges_are_the_newest_layout() -> None:
    assert RESERVED_RANGES == ((44, 128), (910, 912), (992, 1008), (1028, 1040))


@needs_vectors
def test_vendor_intel_and_newer_fields_pass_format() -> None:
    sig = bytearray(_read(ENARX / "encl.ss"))
    sig[16:20] = (0x8086).to_bytes(4, "little")
    sig[908] = 1  # CET_ATTRIBUTES
    sig[909] = 1  # CET_ATTRIBUTES_MASK
    sig[912] = 1  # ISVFAMILYID
    sig[1008] = 1  # ISVEXTPRODID
    sig[20] = 0x55  # DATE, not interpreted
    sig[40] = 0x55  # SWDEFINED, not interpreted
    assert sigstruct_format_valid(bytes(sig))
    sig[16:20] = (0x8087).to_bytes(4, "little")
    assert not sigstruct_format_valid(bytes(sig))


def test_wrong_length_is_rejected() -> None:
    with pytest.raises(ValueError):
        sigstruct_format_valid(bytes(1807))
    with pytest.raises(ValueError):
        sigstruct_signature_padding(bytes(1809))
    with pytest.raises(ValueError):
        mrsigner(bytes(383))


def test_zero_sigstruct_fails_both_checks() -> None:
    assert not sigstruct_format_valid(bytes(SIGSTRUCT_SIZE))
    assert sigstruct_signature_padding(bytes(SIGSTRUCT_SIZE)) is None


# --- signing with fresh and bad keys --------------------------------------------------


def test_fresh_key_signs_verifiable_sigstruct(fresh_key: rsa.RSAPrivateKey) -> None:
    assert fresh_key.key_size == 3072
    assert fresh_key.public_key().public_numbers().e == 3
    mrenclave = hashlib.sha256(b"enclave").digest()
    sig = sign_sigstruct(
        fresh_key,
        enclavehash=mrenclave,
        attributes=0x4,
        xfrm=3,
        attributemask=0,
        xfrmmask=0,
        miscselect=0,
        miscmask=0,
        isvprodid=0x1234,
        isvsvn=7,
        vendor=0x8086,
        date=0x20240101,
        swdefined=9,
        isvfamilyid=bytes(range(16)),
        isvextprodid=bytes(range(16, 32)),
    )
    assert len(sig) == SIGSTRUCT_SIZE
    assert sigstruct_format_valid(sig)
    assert sigstruct_signature_padding(sig) == HARDCODED_PKCS1_5_PADDING
    assert Sigstruct.unpack(sig).enclavehash == mrenclave
    assert mrsigner(Sigstruct.unpack(sig).modulus) == mrsigner_of_key(fresh_key)
    assert Sigstruct.unpack(sig).isvprodid == 0x1234
    assert Sigstruct.unpack(sig).isvsvn == 7
    assert Sigstruct.unpack(sig).isvfamilyid == bytes(range(16))
    assert Sigstruct.unpack(sig).isvextprodid == bytes(range(16, 32))


def test_fresh_key_pem_round_trip(fresh_key: rsa.RSAPrivateKey) -> None:
    pem = fresh_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    assert mrsigner_of_key(load_key(pem)) == mrsigner_of_key(fresh_key)


def test_non_e3_key_is_refused() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    with pytest.raises(SigningError, match="exponent"):
        load_key(pem)
    with pytest.raises(SigningError):
        sign_sigstruct(
            key,
            enclavehash=bytes(32),
            attributes=4,
            xfrm=3,
            attributemask=0,
            xfrmmask=0,
            miscselect=0,
            miscmask=0,
            isvprodid=0,
            isvsvn=0,
        )
    with pytest.raises(SigningError):
        mrsigner_of_key(key)


def test_wrong_size_and_non_rsa_keys_are_refused() -> None:
    small = rsa.generate_private_key(public_exponent=3, key_size=2048)
    pem = small.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(SigningError, match="RSA-3072"):
        load_key(pem)
    ec_pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(SigningError, match="RSA"):
        load_key(ec_pem)
    with pytest.raises(SigningError, match="PEM"):
        load_key(b"not a key")


def _sign_minimal(
    key: rsa.RSAPrivateKey,
    enclavehash: bytes = bytes(32),
    isvsvn: int = 0,
    isvfamilyid: bytes = bytes(16),
) -> bytes:
    return sign_sigstruct(
        key,
        enclavehash=enclavehash,
        attributes=4,
        xfrm=3,
        attributemask=0,
        xfrmmask=0,
        miscselect=0,
        miscmask=0,
        isvprodid=0,
        isvsvn=isvsvn,
        isvfamilyid=isvfamilyid,
    )


def test_field_range_checks(fresh_key: rsa.RSAPrivateKey) -> None:
    assert sigstruct_signature_padding(_sign_minimal(fresh_key)) is not None
    with pytest.raises(ValueError):
        _sign_minimal(fresh_key, enclavehash=bytes(31))
    with pytest.raises(ValueError):
        _sign_minimal(fresh_key, isvsvn=0x10000)
    with pytest.raises(ValueError):
        _sign_minimal(fresh_key, isvfamilyid=bytes(15))
