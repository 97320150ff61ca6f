"""The SIGSTRUCT checks EINIT performs before it looks at the SECS (pure, no I/O).

SDM EINIT pseudocode; SIGSTRUCT layout SDM16 Table 38-19 plus the newest SDM fields (spec §9).
"""

from __future__ import annotations

import hashlib

from sgxemu.arch.constants import (
    HARDCODED_PKCS1_5_PADDING,
    SIGSTRUCT_EXPONENT,
    SIGSTRUCT_HEADER,
    SIGSTRUCT_HEADER2,
    SIGSTRUCT_SIZE,
    SIGSTRUCT_VENDOR_INTEL,
)
from sgxemu.arch.structs import Buffer, Sigstruct, sigstruct_signed_data

RSA_KEY_BYTES = 384  # RSA-3072 (SDM16 §38.13)
PADDING_SIZE = len(HARDCODED_PKCS1_5_PADDING)  # 352: SECS.PADDING (SDM EINIT)

# Reserved under the newest layout: 44..127 (84 B), 910..911 (2 B), 992..1007 (16 B),
# 1028..1039 (12 B). CET_ATTRIBUTES(_MASK) at 908/909, ISVFAMILYID at 912 and
# ISVEXTPRODID at 1008 were reserved in SDM16 but are fields now, so they are not checked.
RESERVED_FIELDS: tuple[str, ...] = ("reserved1", "reserved2", "reserved3", "reserved4")
RESERVED_RANGES: tuple[tuple[int, int], ...] = tuple(
    (Sigstruct.OFFSETS[f], Sigstruct.OFFSETS[f] + len(getattr(Sigstruct(), f)))
    for f in RESERVED_FIELDS
)


def _parse(sig: Buffer) -> Sigstruct:
    if len(sig) != SIGSTRUCT_SIZE:
        raise ValueError(f"SIGSTRUCT must be {SIGSTRUCT_SIZE} bytes, got {len(sig)}")
    return Sigstruct.unpack(sig)


def sigstruct_format_valid(sig: Buffer) -> bool:
    """EINIT's SIGSTRUCT format check; False means SGX_INVALID_SIG_STRUCT (SDM EINIT)."""
    st = _parse(sig)
    if st.header != SIGSTRUCT_HEADER or st.header2 != SIGSTRUCT_HEADER2:
        return False
    if st.vendor not in (0, SIGSTRUCT_VENDOR_INTEL) or st.exponent != SIGSTRUCT_EXPONENT:
        return False
    return not any(any(getattr(st, f)) for f in RESERVED_FIELDS)


def sigstruct_signature_padding(sig: Buffer) -> bytes | None:
    """EINIT's RSA check with Q1/Q2 (SDM EINIT); the 352-byte SECS.PADDING, or None.

    None means SGX_INVALID_SIGNATURE. The hardware avoids division: r1 = s² − q1·n and
    r2 = s·r1 − q2·n must both lie in [0, n); then r2 = s³ mod n is the encoded message.
    EXPONENT is taken to be 3 (the format check enforces it); s < n is not checked.
    """
    st = _parse(sig)
    n = int.from_bytes(st.modulus, "little")
    s = int.from_bytes(st.signature, "little")
    q1 = int.from_bytes(st.q1, "little")
    q2 = int.from_bytes(st.q2, "little")
    r1 = s * s - q1 * n
    if not 0 <= r1 < n:
        return None
    r2 = s * r1 - q2 * n
    if not 0 <= r2 < n:
        return None
    em = r2.to_bytes(RSA_KEY_BYTES, "big")
    expected = HARDCODED_PKCS1_5_PADDING + hashlib.sha256(sigstruct_signed_data(sig)).digest()
    if em != expected:
        return None
    return em[:PADDING_SIZE]


def mrsigner(modulus_le: Buffer) -> bytes:
    """MRSIGNER: SHA-256 of the 384 MODULUS bytes as stored, little-endian (SDM EINIT)."""
    if len(modulus_le) != RSA_KEY_BYTES:
        raise ValueError(f"modulus must be {RSA_KEY_BYTES} bytes, got {len(modulus_le)}")
    return hashlib.sha256(modulus_le).digest()
