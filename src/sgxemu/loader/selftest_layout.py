"""Load an enclave ELF by the rules of the Linux SGX selftest's loader.

Layout rules (no relocation processing anywhere):

* every ``PT_LOAD`` becomes one segment, in program-header order;
* the first must be exactly R|W and holds TCS pages (SECINFO flags 0x100);
* the others are REG pages whose permissions come from ``p_flags``;
* enclave offsets come from page-aligned *file* offsets relative to the first
  segment's, and sizes are ``p_filesz`` rounded up to a page (``p_memsz`` is
  ignored, so zero-init data must be in the file);
* an unmeasured, zero-filled RW heap follows the last segment;
* ELRANGE is the smallest power of two >= 4096 covering everything.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass, field
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from sgxemu.arch.constants import PAGE_SIZE, PageType, secinfo_flags

__all__ = [
    "PROT_EXEC",
    "PROT_READ",
    "PROT_WRITE",
    "EnclaveFormatError",
    "EnclaveImage",
    "Segment",
    "load_segments",
]

# mmap PROT_* bits; they equal the SECINFO R/W/X bits, which the rules rely on.
PROT_READ = 0x1
PROT_WRITE = 0x2
PROT_EXEC = 0x4

# ELF p_flags bits.
_PF_X = 0x1
_PF_W = 0x2
_PF_R = 0x4
_PF_RWX = _PF_R | _PF_W | _PF_X

_PT_LOAD = "PT_LOAD"


class EnclaveFormatError(ValueError):
    """The file is not an enclave image these loading rules accept."""


@dataclass(frozen=True)
class Segment:
    """One run of pages to EADD: ``data`` is exactly ``size`` bytes."""

    offset: int
    size: int
    prot: int
    secinfo_flags: int
    measure: bool
    data: bytes = field(repr=False)


@dataclass(frozen=True)
class EnclaveImage:
    """The segment table plus sizes and the symbols of ``.symtab``."""

    path: Path
    segments: list[Segment]
    src_size: int
    encl_size: int
    _symbols: dict[str, tuple[int, int]] = field(repr=False)

    def symbol(self, name: str) -> int:
        """``st_value`` of ``name`` in the first symbol table: an enclave offset."""
        try:
            return self._symbols[name][0]
        except KeyError:
            raise KeyError(f"symbol {name!r} not in .symtab of {self.path}") from None

    def symbol_size(self, name: str) -> int:
        """``st_size`` of ``name`` in the first symbol table."""
        try:
            return self._symbols[name][1]
        except KeyError:
            raise KeyError(f"symbol {name!r} not in .symtab of {self.path}") from None

    @property
    def tcs_offset(self) -> int:
        return self.segments[0].offset

    @property
    def data_offset(self) -> int:
        """Offset of the first RW segment after the TCS one (the heap counts)."""
        for seg in self.segments[1:]:
            if seg.prot == PROT_READ | PROT_WRITE:
                return seg.offset
        raise EnclaveFormatError(f"{self.path}: no RW segment after the TCS segment")

    @property
    def heap(self) -> Segment:
        return self.segments[-1]


def _round_up(value: int, align: int) -> int:
    return (value + align - 1) // align * align


def _encl_size(src_size: int) -> int:
    size = PAGE_SIZE
    while size < src_size:
        size <<= 1
    return size


def _prot_from_pflags(p_flags: int) -> int:
    prot = 0
    if p_flags & _PF_R:
        prot |= PROT_READ
    if p_flags & _PF_W:
        prot |= PROT_WRITE
    if p_flags & _PF_X:
        prot |= PROT_EXEC
    return prot


def _file_bytes(blob: bytes, start: int, size: int) -> bytes:
    # Pages past EOF read as zeros, as the tail of a file mapping does.
    chunk = blob[start : start + size]
    return chunk + bytes(size - len(chunk))


def _read_symbols(elf: ELFFile) -> dict[str, tuple[int, int]]:
    for section in elf.iter_sections():
        if isinstance(section, SymbolTableSection) and section["sh_type"] == "SHT_SYMTAB":
            symbols: dict[str, tuple[int, int]] = {}
            for sym in section.iter_symbols():
                if sym.name and sym.name not in symbols:
                    symbols[sym.name] = (int(sym["st_value"]), int(sym["st_size"]))
            return symbols
    return {}


def load_segments(elf_path: Path | str, heap_size: int = PAGE_SIZE) -> EnclaveImage:
    """Build the segment table of ``elf_path`` plus a ``heap_size``-byte heap."""
    path = Path(elf_path)
    if heap_size <= 0 or heap_size % PAGE_SIZE:
        raise ValueError(f"heap_size must be a positive multiple of {PAGE_SIZE}, got {heap_size}")
    blob = path.read_bytes()
    try:
        elf = ELFFile(io.BytesIO(blob))
        elfclass, machine = elf.elfclass, elf["e_machine"]
        loads = [ph for ph in elf.iter_segments() if ph["p_type"] == _PT_LOAD]
        symbols = _read_symbols(elf)
    except (ELFError, ValueError, KeyError, IndexError, struct.error) as exc:
        # Truncated or corrupt headers surface as any of these from pyelftools.
        raise EnclaveFormatError(f"{path}: not a valid ELF file ({exc})") from exc
    if elfclass != 64:
        raise EnclaveFormatError(f"{path}: ELF class is {elfclass}-bit, need 64-bit")
    if machine != "EM_X86_64":
        raise EnclaveFormatError(f"{path}: ELF machine is {machine}, need EM_X86_64")
    if not loads:
        raise EnclaveFormatError(f"{path}: no PT_LOAD segments")

    page_mask = ~(PAGE_SIZE - 1)
    segments: list[Segment] = []
    src_offset = 0
    for index, ph in enumerate(loads):
        p_flags = int(ph["p_flags"])
        if p_flags & ~_PF_RWX:
            raise EnclaveFormatError(
                f"{path}: PT_LOAD #{index} has flags {p_flags:#x} outside PF_R|PF_W|PF_X"
            )
        if index == 0:
            if p_flags != _PF_R | _PF_W:
                raise EnclaveFormatError(
                    f"{path}: TCS has invalid segment flags {p_flags:#x} "
                    "(first PT_LOAD must be exactly PF_R|PF_W)"
                )
            src_offset = int(ph["p_offset"]) & page_mask
            prot = PROT_READ | PROT_WRITE
            flags = secinfo_flags(PageType.PT_TCS)
        else:
            prot = _prot_from_pflags(p_flags)
            flags = secinfo_flags(PageType.PT_REG, prot)
        offset = (int(ph["p_offset"]) & page_mask) - src_offset
        if offset < 0:
            raise EnclaveFormatError(
                f"{path}: PT_LOAD #{index} lies before the TCS segment in the file"
            )
        size = _round_up(int(ph["p_filesz"]), PAGE_SIZE)
        data = _file_bytes(blob, src_offset + offset, size)
        segments.append(Segment(offset, size, prot, flags, True, data))

    last = segments[-1]
    heap = Segment(
        offset=last.offset + last.size,
        size=heap_size,
        prot=PROT_READ | PROT_WRITE,
        secinfo_flags=secinfo_flags(PageType.PT_REG, PROT_READ | PROT_WRITE),
        measure=False,
        data=bytes(heap_size),
    )
    segments.append(heap)
    src_size = heap.offset + heap.size
    return EnclaveImage(path, segments, src_size, _encl_size(src_size), symbols)
