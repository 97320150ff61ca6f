"""MRENCLAVE: the processor's running SHA-256 over 64-byte measurement blocks.

Pure (no I/O). Used by the ECREATE/EADD/EEXTEND/EINIT leaves and by offline signing tools.
Block layouts: SDM ECREATE / EADD / EEXTEND pseudocode; SDM16 §39.4.1 (spec §9.1).
All integers are little-endian.
"""

from __future__ import annotations

import hashlib
import struct
from typing import Final

from sgxemu.arch.constants import EEXTEND_CHUNK
from sgxemu.arch.structs import Buffer

MEAS_BLOCK_SIZE: Final = 64
# Blocks hashed per EEXTEND: its header plus 256 data bytes (SDM EEXTEND).
EEXTEND_BLOCKS: Final = 1 + EEXTEND_CHUNK // MEAS_BLOCK_SIZE

# '8s' pads the tags to 8 bytes with NULs: "ECREATE\0", "EADD\0\0\0\0", "EEXTEND\0".
_ECREATE: Final = struct.Struct("<8sIQ44x")  # tag, SSAFRAMESIZE u32, SIZE u64, zeros
_EADD: Final = struct.Struct("<8sQQ40x")  # tag, offset u64, SECINFO.FLAGS u64, SECINFO reserved
_EEXTEND: Final = struct.Struct("<8sQ48x")  # tag, offset u64, zeros
# The EEXTEND header and its 256 data bytes, packed in one call (the leaf's hot path).
_EEXTEND_DATA: Final = struct.Struct("<8sQ48x256s")
# A page as its 16 EEXTEND chunks, split in one call (the page-measuring hot path).
_PAGE_CHUNKS: Final = struct.Struct(f"{EEXTEND_CHUNK}s" * (4096 // EEXTEND_CHUNK))
# Where chunk k's header keeps offset bits 15:8 (byte 1 of the u64 at header byte 8), k >= 1.
_HEADER_OFFSET_BYTE1: Final = tuple(
    (k * (MEAS_BLOCK_SIZE + EEXTEND_CHUNK) + 9, k) for k in range(1, 4096 // EEXTEND_CHUNK)
)

_U32_MAX: Final = (1 << 32) - 1
_U64_MAX: Final = (1 << 64) - 1


def _check_range(name: str, value: int, maximum: int) -> None:
    if not 0 <= value <= maximum:
        raise ValueError(f"{name} {value:#x} out of range")


def ecreate_block(ssaframesize: int, size: int) -> bytes:
    """The ECREATE block (SDM ECREATE). BASEADDR and ATTRIBUTES are not measured.

    Bytes 20..27 (CET_LEG_BITMAP_OFFSET in the newest SDM) are 0: the same pseudocode
    then clears bits 511:160, so they never reach the hash.
    """
    _check_range("SSAFRAMESIZE", ssaframesize, _U32_MAX)
    _check_range("SIZE", size, _U64_MAX)
    return _ECREATE.pack(b"ECREATE", ssaframesize, size)


def eadd_block(offset: int, secinfo_flags: int) -> bytes:
    """The EADD block (SDM EADD): offset = LINADDR - BASEADDR, then SECINFO[0:48].

    SECINFO reserved bytes are 0 by EADD's checks, so FLAGS determines the block. The
    caller passes FLAGS as measured: EADD clears R/W/X of a TCS before hashing.
    """
    _check_range("offset", offset, _U64_MAX)
    _check_range("SECINFO.FLAGS", secinfo_flags, _U64_MAX)
    return _EADD.pack(b"EADD", offset, secinfo_flags)


def eextend_block(offset: int) -> bytes:
    """The EEXTEND header block (SDM EEXTEND); the 256 data bytes follow it in the hash."""
    _check_range("offset", offset, _U64_MAX)
    if offset % EEXTEND_CHUNK:
        raise ValueError(f"EEXTEND offset {offset:#x} not 256-byte aligned")
    return _EEXTEND.pack(b"EEXTEND", offset)


class MeasurementState:
    """MRENCLAVE running state + update counter, hidden SECS state (SDM16 Table 38-2 note).

    The counter is in 64-byte blocks; SHA256FINAL's length field is counter * 512 bits,
    which is exactly what hashlib's padding encodes.
    """

    __slots__ = ("_h", "update_counter")

    def __init__(self) -> None:
        self._h = hashlib.sha256()
        self.update_counter = 0

    def ecreate(self, ssaframesize: int, size: int) -> None:
        """SHA256INITIALIZE, then hash the ECREATE block (SDM ECREATE)."""
        block = ecreate_block(ssaframesize, size)
        self._h = hashlib.sha256(block)
        self.update_counter = 1

    def eadd(self, offset: int, secinfo_flags: int) -> None:
        """Hash the EADD block (SDM EADD); page contents are not measured."""
        self._h.update(eadd_block(offset, secinfo_flags))
        self.update_counter += 1

    def eadd_checked(self, offset: int, secinfo_flags: int) -> None:
        """`eadd` for a caller that has checked its arguments (the EADD leaf): both are u64."""
        self._h.update(_EADD.pack(b"EADD", offset, secinfo_flags))
        self.update_counter += 1

    def eextend(self, offset: int, chunk256: Buffer) -> None:
        """Hash the EEXTEND header and 256 data bytes (SDM EEXTEND); counter += 5."""
        if len(chunk256) != EEXTEND_CHUNK:
            raise ValueError(f"EEXTEND chunk must be {EEXTEND_CHUNK} bytes, got {len(chunk256)}")
        if offset & (EEXTEND_CHUNK - 1):
            raise ValueError(f"EEXTEND offset {offset:#x} not 256-byte aligned")
        # Hot path: one update() of header + data. pack() raises on offsets beyond u64.
        self._h.update(_EEXTEND.pack(b"EEXTEND", offset) + chunk256)
        self.update_counter += EEXTEND_BLOCKS

    def eextend_checked(self, offset: int, chunk256: bytes) -> None:
        """`eextend` for a caller that has checked its arguments (the EEXTEND leaf).

        `chunk256` is exactly 256 bytes and `offset` a 256-byte aligned u64: ELRANGE offsets.
        """
        self._h.update(_EEXTEND_DATA.pack(b"EEXTEND", offset, chunk256))
        self.update_counter += EEXTEND_BLOCKS

    def eextend_page_checked(self, page_offset: int, page: bytes) -> None:
        """16 `eextend_checked` calls over a 4096-byte page at a page-aligned ELRANGE offset."""
        # Chunk k's header is chunk 0's with k in offset bits 11:8 (zero in a page offset).
        header = _EEXTEND.pack(b"EEXTEND", page_offset)
        blocks = bytearray(header)
        blocks += header.join(_PAGE_CHUNKS.unpack(page))
        byte1 = header[9]
        for pos, k in _HEADER_OFFSET_BYTE1:
            blocks[pos] = byte1 | k
        self._h.update(blocks)
        self.update_counter += EEXTEND_BLOCKS * (4096 // EEXTEND_CHUNK)

    def final(self) -> bytes:
        """SHA256FINAL (SDM EINIT): the MRENCLAVE digest. The running state is kept."""
        return self._h.digest()

    def copy(self) -> MeasurementState:
        """An independent copy of the running state and counter."""
        other = MeasurementState.__new__(MeasurementState)
        other._h = self._h.copy()
        other.update_counter = self.update_counter
        return other
