"""SIGSTRUCT signing with RSA-3072, e = 3 (SDM16 §38.13, Table 38-19; spec §9.2).

RSA key handling and PKCS#1 v1.5 signing come from `cryptography`; Q1/Q2 are plain ints.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from sgxemu.arch.constants import (
    SIGSTRUCT_EXPONENT,
    SIGSTRUCT_HEADER,
    SIGSTRUCT_HEADER2,
)
from sgxemu.arch.structs import Sigstruct
from sgxemu.hw.launch import RSA_KEY_BYTES, mrsigner

RSA_KEY_BITS = RSA_KEY_BYTES * 8  # 3072


class SigningError(Exception):
    """The key or the request cannot produce a SIGSTRUCT that EINIT would accept."""


def _check_key(key: rsa.RSAPrivateKey) -> None:
    if not isinstance(key, rsa.RSAPrivateKey):
        raise SigningError(f"SIGSTRUCT keys must be RSA, got {type(key).__name__}")
    e = key.public_key().public_numbers().e
    if key.key_size != RSA_KEY_BITS or e != SIGSTRUCT_EXPONENT:
        raise SigningError(
            f"SIGSTRUCT keys must be RSA-{RSA_KEY_BITS} with public exponent "
            f"{SIGSTRUCT_EXPONENT}; got RSA-{key.key_size} with exponent {e}"
        )


def generate_key() -> rsa.RSAPrivateKey:
    """A fresh RSA-3072 key with e = 3, as EINIT requires."""
    return rsa.generate_private_key(public_exponent=SIGSTRUCT_EXPONENT, key_size=RSA_KEY_BITS)


def load_key(pem: bytes | Path) -> rsa.RSAPrivateKey:
    """Load an unencrypted PEM private key; SigningError unless it is RSA-3072 with e = 3."""
    data = pem.read_bytes() if isinstance(pem, Path) else pem
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise SigningError(f"cannot load PEM private key: {exc}") from exc
    if not isinstance(key, rsa.RSAPrivateKey):
        raise SigningError(f"SIGSTRUCT keys must be RSA, got {type(key).__name__}")
    _check_key(key)
    return key


def _modulus_le(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_numbers().n.to_bytes(RSA_KEY_BYTES, "little")


def mrsigner_of_key(key: rsa.RSAPrivateKey) -> bytes:
    """MRSIGNER EINIT would compute for SIGSTRUCTs signed with `key` (SDM EINIT)."""
    _check_key(key)
    return mrsigner(_modulus_le(key))


def _uint(name: str, value: int, nbytes: int) -> int:
    if not 0 <= value < 1 << (8 * nbytes):
        raise ValueError(f"{name} {value:#x} does not fit in {nbytes} bytes")
    return value


def sign_sigstruct(
    key: rsa.RSAPrivateKey,
    *,
    enclavehash: bytes,
    attributes: int,
    xfrm: int,
    attributemask: int,
    xfrmmask: int,
    miscselect: int,
    miscmask: int,
    isvprodid: int,
    isvsvn: int,
    vendor: int = 0,
    date: int = 0,
    swdefined: int = 0,
    isvfamilyid: bytes = bytes(16),
    isvextprodid: bytes = bytes(16),
) -> bytes:
    """A signed 1808-byte SIGSTRUCT. PKCS#1 v1.5 SHA-256 over the signed 256 bytes;
    MODULUS, SIGNATURE, Q1 = ⌊s²/n⌋ and Q2 = ⌊s·(s² mod n)/n⌋ stored little-endian."""
    _check_key(key)
    n = key.public_key().public_numbers().n
    st = Sigstruct(
        header=SIGSTRUCT_HEADER,
        vendor=_uint("VENDOR", vendor, 4),
        date=_uint("DATE", date, 4),
        header2=SIGSTRUCT_HEADER2,
        swdefined=_uint("SWDEFINED", swdefined, 4),
        modulus=n.to_bytes(RSA_KEY_BYTES, "little"),
        exponent=SIGSTRUCT_EXPONENT,
        miscselect=_uint("MISCSELECT", miscselect, 4),
        miscmask=_uint("MISCMASK", miscmask, 4),
        isvfamilyid=bytes(isvfamilyid),
        attributes=_uint("ATTRIBUTES", attributes, 8),
        xfrm=_uint("XFRM", xfrm, 8),
        attributemask=_uint("ATTRIBUTEMASK", attributemask, 8),
        xfrmmask=_uint("XFRMMASK", xfrmmask, 8),
        enclavehash=bytes(enclavehash),
        isvextprodid=bytes(isvextprodid),
        isvprodid=_uint("ISVPRODID", isvprodid, 2),
        isvsvn=_uint("ISVSVN", isvsvn, 2),
    )
    # signed_data() packs, so wrong-length byte fields raise ValueError here.
    sig_be = key.sign(st.signed_data(), padding.PKCS1v15(), hashes.SHA256())
    s = int.from_bytes(sig_be, "big")
    st.signature = s.to_bytes(RSA_KEY_BYTES, "little")
    st.q1 = (s * s // n).to_bytes(RSA_KEY_BYTES, "little")
    st.q2 = (s * (s * s % n) // n).to_bytes(RSA_KEY_BYTES, "little")
    return st.pack()
