"""Paging crypto shared by EWB and ELDB/ELDU: AES-GCM under CR_BASE_PK (SDM EWB/ELDU, spec 11).

The page is sealed with AES-GCM: key CR_BASE_PK (new at every power cycle), IV built from the
64-bit version kept in a VA slot, and a 128-byte MAC header as additional authenticated data.
The header binds the enclave (EID), the linear address and the saved EPCM flags, so a blob can
be loaded only once (the slot is cleared), only at its own address, with its own flags, into its
own enclave, and only on the boot that wrote it.

This module also says what an SECS carries across EWB/ELDU besides its architectural bytes: the
hidden state the processor keeps inside the SECS page (spec 1.3).
"""

from __future__ import annotations

import struct
from functools import lru_cache

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..arch.constants import PAGE_SIZE, PCMD_SIZE
from ..arch.structs import PCMD_OFF_MAC, PCMD_OFF_RESERVED, PCMD_OFF_SECINFO
from .secs import SecsState

MAC_HEADER_SIZE = 128
MAC_SIZE = 16
# [choice] The header layout is micro-architectural (spec 11): EID u64 @0, LINADDR u64 @8,
# SECINFO (64 bytes) @16, RSVD (48 bytes) @80. ELD* copy PCMD.RESERVED (40 bytes) into RSVD[0:40].
_HEADER = struct.Struct("<QQ64s48s")
_PCMD_RESERVED_SIZE = PCMD_OFF_MAC - PCMD_OFF_RESERVED  # 40
_U64_MASK = (1 << 64) - 1


def mac_header(eid: int, linaddr: int, secinfo: bytes, rsvd: bytes = b"") -> bytes:
    """The 128-byte MAC header {EID, LINADDR, SECINFO, RSVD} that AES-GCM authenticates."""
    if len(secinfo) != 64 or len(rsvd) > 48:
        raise ValueError("MAC header: SECINFO is 64 bytes and RSVD at most 48")
    return _HEADER.pack(eid & _U64_MASK, linaddr & _U64_MASK, secinfo, rsvd.ljust(48, b"\0"))


# The same layout for EWB, whose SECINFO is FLAGS alone and RSVD all zero (struct pads).
_EWB_HEADER = struct.Struct("<QQQ56x48x")


def ewb_header(eid: int, linaddr: int, flags: int) -> bytes:
    """`mac_header(eid, linaddr, SECINFO with only FLAGS set)`: the header EWB authenticates."""
    return _EWB_HEADER.pack(eid & _U64_MASK, linaddr & _U64_MASK, flags)


def header_from_pcmd(eid: int, linaddr: int, pcmd: bytes) -> bytes:
    """The header ELD* rebuild: SECINFO and RSVD from the PCMD, LINADDR from PAGEINFO."""
    # mac_header without its length checks: both slices have fixed sizes (64 and 40 bytes).
    return _HEADER.pack(
        eid & _U64_MASK,
        linaddr & _U64_MASK,
        pcmd[PCMD_OFF_SECINFO : PCMD_OFF_SECINFO + 64],
        pcmd[PCMD_OFF_RESERVED : PCMD_OFF_RESERVED + _PCMD_RESERVED_SIZE],  # padded to 48
    )


def iv(version: int) -> bytes:
    """The 96-bit GCM IV `version << 32`.

    [choice] Big-endian, so the version fills bytes 0..7 and the low 32 bits (bytes 8..11) are 0.
    """
    return ((version & _U64_MASK) << 32).to_bytes(12, "big")


@lru_cache(maxsize=8)
def _cipher(key: bytes) -> AESGCM:
    """One AESGCM object per paging key (the key schedule is computed once)."""
    return AESGCM(key)


def seal(key: bytes, version: int, header: bytes, page: bytes | memoryview) -> tuple[bytes, bytes]:
    """AES-GCM encrypt a 4 KiB page: (ciphertext, 16-byte MAC)."""
    out = _cipher(key).encrypt(iv(version), page, header)
    return out[:-MAC_SIZE], out[-MAC_SIZE:]


def unseal(key: bytes, version: int, header: bytes, ciphertext: bytes, mac: bytes) -> bytes | None:
    """AES-GCM decrypt and verify: the plaintext page, or None when the MAC does not match."""
    try:
        return _cipher(key).decrypt(iv(version), ciphertext + mac, header)
    except InvalidTag:
        return None


# SECINFO (FLAGS, then 56 zero bytes), ENCLAVEID, RESERVED (40 zero bytes), MAC.
_PCMD = struct.Struct("<Q56xQ40x16s")
assert _PCMD.size == PCMD_SIZE


def pcmd_image(flags: int, enclaveid: int, mac: bytes) -> bytes:
    """The PCMD EWB writes: SECINFO (FLAGS only), ENCLAVEID, RESERVED = 0, MAC."""
    return _PCMD.pack(flags, enclaveid & _U64_MASK, mac)


# --------------------------------------------------------------------------------------------
# Hidden SECS state across EWB/ELDU

# [choice] While an SECS is paged out its hidden state travels inside the encrypted page, in the
# reserved tail of the SECS (bytes 3072..4095, which ECREATE requires to be zero and nothing
# architectural uses). The resident model keeps that state in `SecsState`, so the tail of a
# resident SECS page reads as zero again after ELDU. The one piece that cannot be serialized,
# the running SHA-256 of an uninitialized enclave (or whatever `measurement` object is still
# attached), stays in the package, in `Processor.parked_measurements` keyed by EID; the
# serialized state records whether one was parked.
SECS_HIDDEN_OFFSET = 3072
# (SecsState attribute, struct code) in serialization order; "parked" is the measurement flag.
SECS_HIDDEN_FIELDS: tuple[tuple[str, str], ...] = (
    ("eid", "Q"),
    ("baseaddr", "Q"),
    ("size", "Q"),
    ("ssaframesize", "I"),
    ("miscselect", "I"),
    ("attributes", "Q"),
    ("xfrm", "Q"),
    ("configsvn", "H"),
    ("isvprodid", "H"),
    ("isvsvn", "H"),
    ("epoch", "Q"),
    ("config_id", "64s"),
    ("isvextprodid", "16s"),
    ("isvfamilyid", "16s"),
    ("mrenclave", "32s"),
    ("mrsigner", "32s"),
    ("padding", "352s"),
    ("parked", "B"),
)
# What does not travel: the page index (ELDU's destination), the child count (0, or EWB would
# have refused), the LPs inside (none without a TCS) and the measurement object (parked).
SECS_NOT_SERIALIZED = frozenset({"index", "chldcnt", "inside", "measurement"})
_SECS_HIDDEN = struct.Struct("<" + "".join(code for _, code in SECS_HIDDEN_FIELDS))
assert SECS_HIDDEN_OFFSET + _SECS_HIDDEN.size <= PAGE_SIZE


def secs_plaintext(page: bytes | memoryview, secs: SecsState, parked: bool) -> bytes:
    """The SECS page as EWB encrypts it: architectural bytes plus the serialized hidden state."""
    values = [
        int(parked) if name == "parked" else getattr(secs, name) for name, _ in SECS_HIDDEN_FIELDS
    ]
    tail = _SECS_HIDDEN.pack(*values).ljust(PAGE_SIZE - SECS_HIDDEN_OFFSET, b"\0")
    return bytes(page[:SECS_HIDDEN_OFFSET]) + tail


def secs_restore(plaintext: bytes, index: int) -> tuple[bytes, SecsState, bool]:
    """Undo `secs_plaintext`: (resident page bytes, SecsState at `index`, measurement parked?).

    The child count is 0 (EWB refused an SECS with children) and no LP is inside.
    """
    values = dict(
        zip(
            (name for name, _ in SECS_HIDDEN_FIELDS),
            _SECS_HIDDEN.unpack_from(plaintext, SECS_HIDDEN_OFFSET),
            strict=True,
        )
    )
    parked = bool(values.pop("parked"))
    secs = SecsState(index, 0, 0, 0, 0, 0, 0, 0)
    for name, value in values.items():
        setattr(secs, name, value)
    secs.measurement = None
    page = bytes(plaintext[:SECS_HIDDEN_OFFSET]) + bytes(PAGE_SIZE - SECS_HIDDEN_OFFSET)
    return page, secs, parked
