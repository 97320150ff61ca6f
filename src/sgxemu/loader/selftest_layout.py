"""Load an enclave ELF by the rules of the Linux SGX selftest's loader.

Layout rules:

* every ``PT_LOAD`` becomes one segment, in program-header order;
* the first must be exactly R|W and holds TCS pages (SECINFO flags 0x100);
* the others are REG pages whose permissions come from ``p_flags``;
* enclave offsets come from page-aligned *file* offsets relative to the first
  segment's, and sizes are ``p_filesz`` rounded up to a page (``p_memsz`` is
  ignored, so zero-init data must be in the file);
* an unmeasured, zero-filled RW heap follows the last segment;
* ELRANGE is the smallest power of two >= 4096 covering everything.

Relocations. A static-PIE keeps a table of ``R_X86_64_RELATIVE`` entries (8 bytes at an
address := load bias + addend; found and checked by `sgxemu.loader.elf_relocs`, which refuses
every other type). Each is placed here: its 8 bytes must lie in the file bytes of a PT_LOAD
that the layout adds (not the TCS segment, whose fields are offsets), and its value becomes
``base + target``, ``target`` being the addend moved from link addresses to enclave offsets
(the addend itself for an image linked at 0, as the test enclave is; the PT_LOADs must all be
one distance from their file offsets, or no single load bias exists). MRENCLAVE covers page
contents and offsets but not the base, so who applies them is a choice, `RelocationPolicy`:

* ``LOADER`` (the default): the loader applies them for a known base before EADD, as a
  loader that signs at load time can (the selftest's does, after mmap chose the base); so do
  `sgxemu run` and `sgxemu sign --base`. The image is then not measurable until
  `EnclaveImage.at_base` gave it a base (`BaseRequiredError` otherwise), and MRENCLAVE, hence
  the SIGSTRUCT, is for that base only. `sgxemu.linux.load.encl_build` does it after its mmap
  reservation and signs afterwards.
* ``ENCLAVE``: the enclave relocates itself after entry (Intel SDK trts; the kernel selftest
  enclave since 2023). The pages are added as the file has them and MRENCLAVE does not depend
  on the base; the table must then lie in a measured segment the enclave can read.

An image without relocations is the same under both, at every base.
"""

from __future__ import annotations

import enum
import io
import struct
from dataclasses import dataclass, field, replace
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from sgxemu.arch.constants import PAGE_SIZE, PageType, secinfo_flags
from sgxemu.loader.elf_relocs import DynamicRelocs, read_dynamic_relocs
from sgxemu.loader.errors import BaseRequiredError, EnclaveFormatError, RelocationError
from sgxemu.loader.sdk_metadata import ProgramHeader, parse_elf

__all__ = [
    "PROT_EXEC",
    "PROT_READ",
    "PROT_WRITE",
    "BaseRequiredError",
    "EnclaveFormatError",
    "EnclaveImage",
    "RelocationError",
    "RelocationPolicy",
    "Relocation",
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
_U64 = struct.Struct("<Q")


class RelocationPolicy(enum.Enum):
    """Who applies the image's ``R_X86_64_RELATIVE`` relocations (see the module docstring)."""

    LOADER = "loader"  # the loader, for a known base, before EADD: MRENCLAVE depends on the base
    ENCLAVE = "enclave"  # the enclave itself after entry: pages as in the file


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
class Relocation:
    """An ``R_X86_64_RELATIVE``: 8 bytes at enclave ``offset`` := enclave base + ``target``."""

    segment: int  # index into EnclaveImage.segments
    offset: int
    target: int


@dataclass(frozen=True)
class EnclaveImage:
    """The segment table plus sizes, the symbols of ``.symtab`` and the relocations.

    ``relocated_for`` is the base the segment data has its relocations applied for (None:
    as in the file).
    """

    path: Path
    segments: list[Segment]
    src_size: int
    encl_size: int
    _symbols: dict[str, tuple[int, int]] = field(repr=False)
    relocations: tuple[Relocation, ...] = ()
    relocation_policy: RelocationPolicy = RelocationPolicy.LOADER
    relocated_for: int | None = None

    @property
    def needs_base(self) -> bool:
        """True while the loader still has relocations to apply: the pages are not final."""
        return (
            self.relocation_policy is RelocationPolicy.LOADER
            and bool(self.relocations)
            and self.relocated_for is None
        )

    def check_measurable(self) -> None:
        """BaseRequiredError if MRENCLAVE is not defined yet (`needs_base`)."""
        if self.needs_base:
            raise BaseRequiredError(
                f"{self.path}: {len(self.relocations)} R_X86_64_RELATIVE relocations make the pages, "
                "hence MRENCLAVE, depend on the enclave base: apply them for a base first "
                "(EnclaveImage.at_base), or use RelocationPolicy.ENCLAVE if the enclave relocates itself"
            )

    def at_base(self, base: int) -> EnclaveImage:
        """The pages as the loader adds them at ``base``: relocated if the loader applies them.

        ``base`` must be naturally aligned (SECS.BASEADDR is a multiple of SECS.SIZE).
        """
        if base < 0 or base % self.encl_size or base + self.encl_size > 1 << 64:
            raise ValueError(
                f"enclave base {base:#x} is not a multiple of the ELRANGE size {self.encl_size:#x}"
            )
        if self.relocation_policy is RelocationPolicy.ENCLAVE or not self.relocations:
            return self
        if self.relocated_for == base:
            return self
        segments = _relocated(self.segments, self.relocations, base)
        return replace(self, segments=segments, relocated_for=base)

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


def _relocated(segments: list[Segment], relocations: tuple[Relocation, ...], base: int) -> list[Segment]:
    """Copies of the segments relocations patch, with ``base + target`` written at each."""
    patched = {r.segment: bytearray(segments[r.segment].data) for r in relocations}
    for r in relocations:
        _U64.pack_into(patched[r.segment], r.offset - segments[r.segment].offset, (base + r.target) % (1 << 64))
    return [replace(seg, data=bytes(patched[i])) if i in patched else seg for i, seg in enumerate(segments)]


def _place(
    loads: list[ProgramHeader], segments: list[Segment], src_offset: int, vaddr: int, size: int
) -> tuple[int, int] | None:
    """(segment index, enclave offset) of ``size`` bytes at link address ``vaddr``, if they are
    file bytes of one PT_LOAD and inside the pages the layout adds for it."""
    for index, p in enumerate(loads):
        if p.p_vaddr <= vaddr and vaddr + size <= p.p_vaddr + p.p_filesz:
            offset = p.p_offset + (vaddr - p.p_vaddr) - src_offset
            seg = segments[index]
            if seg.offset <= offset and offset + size <= seg.offset + seg.size:
                return index, offset
            return None
    return None


def _link_distance(path: Path, loads: list[ProgramHeader], src_offset: int) -> int:
    """Enclave offset minus link address, which must be one number for all PT_LOADs: the
    layout places segments by file offset, a RELATIVE value assumes one load bias."""
    distances = {p.p_offset - src_offset - p.p_vaddr for p in loads}
    if len(distances) != 1:
        raise RelocationError(
            f"{path}: the PT_LOADs' addresses are not one distance from their file offsets, so "
            "relocated pointers would be wrong in this layout; link with addresses equal to file "
            "offsets (as the test enclave's linker script does)"
        )
    return distances.pop()


def _check_table_readable(
    path: Path, found: DynamicRelocs, loads: list[ProgramHeader], segments: list[Segment], src_offset: int
) -> None:
    """RelocationPolicy.ENCLAVE: the enclave reads its own table, so it must be measured and in a
    segment it can read (not the TCS one), at the bytes the file has there."""
    for t in found.tables:
        where = _place(loads, segments, src_offset, t.vaddr, t.size)
        if (
            where is None
            or where[0] == 0
            or where[1] + src_offset != t.file_offset
            or not segments[where[0]].measure
        ):
            raise RelocationError(
                f"{path}: the enclave cannot relocate itself: its relocation table ({t.what} "
                f"{t.vaddr:#x}+{t.size:#x}) is not in a loaded, measured segment it can read; link "
                "it into a PT_LOAD after the TCS one, or let the loader apply the relocations"
            )


def _relocations(
    path: Path,
    blob: bytes,
    segments: list[Segment],
    src_offset: int,
    policy: RelocationPolicy,
) -> tuple[Relocation, ...]:
    try:
        elf = parse_elf(blob, accept_exec=True)
        found = read_dynamic_relocs(elf)
    except EnclaveFormatError as exc:
        raise type(exc)(f"{path}: {exc}") from exc
    loads = elf.loads
    if policy is RelocationPolicy.ENCLAVE:
        _check_table_readable(path, found, loads, segments, src_offset)
    if not found.relative:
        return ()
    distance = _link_distance(path, loads, src_offset)
    out: list[Relocation] = []
    for rela in found.relative:
        where = _place(loads, segments, src_offset, rela.r_offset, _U64.size)
        if where is None:
            raise RelocationError(
                f"{path}: R_X86_64_RELATIVE at {rela.r_offset:#x} patches bytes outside the file "
                "bytes of every PT_LOAD the loader adds; keep relocated data in initialized, loaded "
                "sections (.data, .data.rel.ro), not in .bss or past a segment's p_filesz"
            )
        if where[0] == 0:
            raise RelocationError(
                f"{path}: R_X86_64_RELATIVE at {rela.r_offset:#x} patches the TCS segment, whose "
                "fields are enclave offsets, not addresses; write them as link-time values"
            )
        out.append(Relocation(where[0], where[1], rela.r_addend + distance))
    return tuple(out)


def load_segments(
    elf_path: Path | str,
    heap_size: int = PAGE_SIZE,
    *,
    relocation_policy: RelocationPolicy = RelocationPolicy.LOADER,
    base: int | None = None,
) -> EnclaveImage:
    """Build the segment table of ``elf_path`` plus a ``heap_size``-byte heap.

    ``relocation_policy`` says who applies the relocations; with ``base`` the image comes back
    as the loader adds it there (`EnclaveImage.at_base`).
    """
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
    relocations = _relocations(path, blob, segments, src_offset, relocation_policy)
    image = EnclaveImage(
        path, segments, src_size, _encl_size(src_size), symbols, relocations, relocation_policy
    )
    return image if base is None else image.at_base(base)
