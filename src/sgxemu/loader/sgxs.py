"""SGXS measurement streams (`.sgxs`, fortanix/rust-sgx) and detached SIGSTRUCTs (`.sig`).

An SGXS file is the sequence of 64-byte measurement blocks itself: ECREATE, then per page an
EADD block followed by its EEXTEND blocks, each EEXTEND block followed by the 256 bytes it
measures. Two extensions: UNMEASRD (a 256-byte chunk loaded but not measured) and UNSIZED
(an ECREATE whose SIZE is filled in later). With no UNMEASRD records the file's SHA-256 is
the MRENCLAVE. Canonical-stream rules as in rust-sgx `sgxs::CanonicalSgxsReader`.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from sgxemu.arch.constants import (
    EEXTEND_CHUNK,
    PAGE_SIZE,
    SECINFO_FLAGS_RESERVED_MASK,
    SECINFO_PAGE_TYPE_MASK,
    SECINFO_PAGE_TYPE_SHIFT,
    SECINFO_PERM_MASK,
    SIGSTRUCT_SIZE,
    PageType,
)
from sgxemu.loader.errors import (
    NotAnEnclaveError,
    SgxsFormatError,
    SigstructFormatError,
    TruncatedFileError,
    UnsupportedEnclaveError,
)
from sgxemu.loader.plan import (
    EnclavePlan,
    Measurement,
    PageRun,
    SigstructReport,
    check_sigstruct,
    measure_plan,
)

__all__ = ["SgxsEnclave", "is_sgxs", "load_sgxs", "parse_sgxs", "read_sigstruct"]

TAG_ECREATE: Final = b"ECREATE\0"
TAG_UNSIZED: Final = b"UNSIZED\0"
TAG_EADD: Final = b"EADD\0\0\0\0"
TAG_EEXTEND: Final = b"EEXTEND\0"
TAG_UNMEASRD: Final = b"UNMEASRD"
BLOCK: Final = 64
_ECREATE: Final = struct.Struct("<8sIQ")
_EADD: Final = struct.Struct("<8sQQ")
_EEXTEND: Final = struct.Struct("<8sQ")


def is_sgxs(data: bytes) -> bool:
    """Whether `data` starts like an SGXS stream."""
    return data[:8] in (TAG_ECREATE, TAG_UNSIZED)


@dataclass
class SgxsEnclave:
    name: str
    plan: EnclavePlan
    unmeasured_chunks: int  # UNMEASRD records
    file_sha256: bytes
    _measurement: Measurement | None = field(default=None, repr=False)

    def measure(self) -> Measurement:
        if self._measurement is None:
            self._measurement = measure_plan(self.plan)
        return self._measurement

    def check(self, sigstruct: bytes) -> SigstructReport:
        return check_sigstruct(sigstruct, self.measure().mrenclave)


class _Page:
    __slots__ = ("offset", "flags", "data", "chunks", "seen")

    def __init__(self, offset: int, flags: int) -> None:
        self.offset = offset
        self.flags = flags
        self.data = bytearray(PAGE_SIZE)
        self.chunks: list[int] = []
        self.seen = 0  # bitmask of chunks given (measured or not)

    def freeze(self) -> PageRun:
        return PageRun(self.offset, 1, self.flags, bytes(self.data), tuple(self.chunks))


def parse_sgxs(data: bytes, name: str = "<sgxs>") -> SgxsEnclave:
    """Parse a canonical SGXS stream into a page plan (SgxsFormatError if not canonical)."""
    if not is_sgxs(data):
        raise NotAnEnclaveError("not an enclave: neither an ELF file nor an SGXS stream")
    if data[:8] == TAG_UNSIZED:
        raise UnsupportedEnclaveError("unsupported SGXS stream: UNSIZED (the enclave size is not filled in)")
    if len(data) < BLOCK:
        raise TruncatedFileError(f"truncated file: the ECREATE record needs {BLOCK} bytes, the file has {len(data)}")
    _tag, ssaframesize, size = _ECREATE.unpack_from(data, 0)
    pages: list[PageRun] = []
    page: _Page | None = None
    unmeasured = 0
    pos = BLOCK
    while pos < len(data):
        if pos + BLOCK > len(data):
            raise TruncatedFileError(f"truncated file: a record at {pos:#x} is cut short at {len(data):#x}")
        tag = data[pos : pos + 8]
        if tag == TAG_EADD:
            _t, offset, flags = _EADD.unpack_from(data, pos)
            _check_eadd(data, pos, offset, flags, page)
            if page is not None:
                pages.append(page.freeze())
            page = _Page(offset, flags)
            pos += BLOCK
        elif tag in (TAG_EEXTEND, TAG_UNMEASRD):
            _t, offset = _EEXTEND.unpack_from(data, pos)
            end = pos + BLOCK + EEXTEND_CHUNK
            if end > len(data):
                raise TruncatedFileError(f"truncated file: the record at {pos:#x} needs data up to {end:#x}")
            if page is None or offset & (EEXTEND_CHUNK - 1) or not 0 <= offset - page.offset < PAGE_SIZE:
                raise SgxsFormatError(f"SGXS stream not canonical: chunk at {offset:#x} (record {pos:#x}) outside the last EADDed page")
            chunk = (offset - page.offset) // EEXTEND_CHUNK
            if page.seen & (1 << chunk):
                raise SgxsFormatError(f"SGXS stream not canonical: chunk at {offset:#x} given twice")
            page.seen |= 1 << chunk
            page.data[chunk * EEXTEND_CHUNK : (chunk + 1) * EEXTEND_CHUNK] = data[pos + BLOCK : end]
            if tag == TAG_EEXTEND:
                page.chunks.append(chunk)
            else:
                unmeasured += 1
            pos = end
        elif tag in (TAG_ECREATE, TAG_UNSIZED):
            raise SgxsFormatError(f"SGXS stream not canonical: a second ECREATE at {pos:#x}")
        else:
            raise SgxsFormatError(f"SGXS stream: unknown record tag {tag!r} at {pos:#x}")
    if page is not None:
        pages.append(page.freeze())
    plan = EnclavePlan(size, ssaframesize, pages, "sgxs", None)
    return SgxsEnclave(name, plan, unmeasured, hashlib.sha256(data).digest())


def _check_eadd(data: bytes, pos: int, offset: int, flags: int, last: _Page | None) -> None:
    if offset & (PAGE_SIZE - 1):
        raise SgxsFormatError(f"SGXS stream not canonical: EADD offset {offset:#x} not page aligned")
    if last is not None and offset <= last.offset:
        raise SgxsFormatError(f"SGXS stream not canonical: EADD offset {offset:#x} does not increase")
    page_type = (flags & SECINFO_PAGE_TYPE_MASK) >> SECINFO_PAGE_TYPE_SHIFT
    if page_type == PageType.PT_TCS and flags & SECINFO_PERM_MASK:
        raise SgxsFormatError(f"SGXS stream not canonical: TCS at {offset:#x} with R/W/X set")
    if page_type not in (PageType.PT_REG, PageType.PT_TCS) or flags & SECINFO_FLAGS_RESERVED_MASK or any(data[pos + 24 : pos + BLOCK]):
        raise SgxsFormatError(f"SGXS stream: EADD at {offset:#x} has a SECINFO EADD would refuse ({flags:#x})")


def load_sgxs(path: str | Path) -> SgxsEnclave:
    p = Path(path)
    return parse_sgxs(p.read_bytes(), str(p))


def read_sigstruct(path: str | Path) -> bytes:
    """A detached SIGSTRUCT file: exactly 1808 bytes."""
    raw = Path(path).read_bytes()
    if len(raw) < SIGSTRUCT_SIZE:
        raise TruncatedFileError(f"truncated file: a SIGSTRUCT needs {SIGSTRUCT_SIZE} bytes, the file has {len(raw)}")
    if len(raw) > SIGSTRUCT_SIZE:
        raise SigstructFormatError(f"not a SIGSTRUCT: the file has {len(raw)} bytes, a SIGSTRUCT has {SIGSTRUCT_SIZE}")
    return raw
