"""The containers of an Intel SGX SDK enclave: its ELF structure and `.note.sgxmeta` metadata.

Pure parsing, no measurement. Layouts follow the SDK headers as summarised in
`sgx-sdk-enclave-format.md` (metadata.h `metadata_t`, `layout_t`, `patch_entry_t`;
elfparser.cpp for the ELF checks). Everything is little-endian and ELF64.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Final

from sgxemu.arch.constants import PAGE_SIZE, SIGSTRUCT_SIZE
from sgxemu.loader.errors import (
    InvalidMetadataError,
    NotAnEnclaveError,
    TruncatedFileError,
    UnknownMetadataVersionError,
    UnsignedEnclaveError,
    UnsupportedEnclaveError,
)

__all__ = [
    "METADATA_MAGIC",
    "ElfFile",
    "LayoutEntry",
    "LayoutGroup",
    "Metadata",
    "PatchEntry",
    "ProgramHeader",
    "Rela",
    "parse_elf",
    "read_dynamic",
    "read_rela",
    "read_metadata_copies",
    "select_metadata",
]

# -- ELF64 ----------------------------------------------------------------------------------------
_EHDR: Final = struct.Struct("<16sHHIQQQIHHHHHH")  # 64 bytes
_PHDR: Final = struct.Struct("<IIQQQQQQ")  # 56 bytes
_SHDR: Final = struct.Struct("<IIQQQQIIQQ")  # 64 bytes
_NHDR: Final = struct.Struct("<III")  # Elf64_Nhdr: namesz, descsz, type
_DYN: Final = struct.Struct("<qQ")
_RELA: Final = struct.Struct("<QQq")  # Elf64_Rela: r_offset, r_info, r_addend

ELF_MAGIC: Final = b"\x7fELF"
ELFCLASS64: Final = 2
ELFDATA2LSB: Final = 1
EV_CURRENT: Final = 1
ET_EXEC: Final = 2
ET_DYN: Final = 3
EM_X86_64: Final = 62
PT_LOAD: Final = 1
PT_DYNAMIC: Final = 2
PT_TLS: Final = 7
DT_NULL: Final = 0
DT_PLTRELSZ: Final = 2
DT_RELA: Final = 7
DT_RELASZ: Final = 8
DT_RELAENT: Final = 9
DT_REL: Final = 17
DT_RELSZ: Final = 18
DT_TEXTREL: Final = 22
DT_JMPREL: Final = 23
DT_NUM: Final = 35
DT_RELR: Final = 36
RELA_SIZE: Final = _RELA.size
R_X86_64_NONE: Final = 0
R_X86_64_RELATIVE: Final = 8
PF_X: Final = 1
PF_W: Final = 2
PF_R: Final = 4

SGXMETA_SECTION: Final = ".note.sgxmeta"
SGXMETA_NAME: Final = b"sgx_metadata\0"

# -- metadata_t -----------------------------------------------------------------------------------
METADATA_MAGIC: Final = 0x86A80294635D0E4C
_MD_HEAD: Final = struct.Struct("<QQIIIIIIQQQ")  # magic .. attributes{flags,xfrm}: 64 bytes
MD_OFF_CSS: Final = 64
MD_OFF_DIRS: Final = MD_OFF_CSS + SIGSTRUCT_SIZE  # 1872
MD_OFF_DATA_V2: Final = MD_OFF_DIRS + 2 * 8  # data[] with DIR_NUM = 2 (SDK 1.x/2.x headers)
MD_OFF_DIR_ELRANGE: Final = MD_OFF_DIRS + 2 * 8  # ELRANGE dir: first 8 bytes after dirs[2]
MD_OFF_DIR_EXTEND: Final = MD_OFF_DIRS + 3 * 8
MD_MIN_SIZE: Final = MD_OFF_DATA_V2
DIR_PATCH: Final = 0
DIR_LAYOUT: Final = 1
_DIR: Final = struct.Struct("<II")
_LAYOUT: Final = struct.Struct("<HHIQIIQ")  # layout_entry_t, 32 bytes
_GROUP: Final = struct.Struct("<HHIQ16x")  # layout_group_t, 32 bytes
_PATCH: Final = struct.Struct("<QII16x")  # patch_entry_t, 32 bytes
_ELRANGE: Final = struct.Struct("<QQQ")
LAYOUT_SIZE: Final = 32
PATCH_SIZE: Final = 32
GROUP_FLAG: Final = 0x1000

# Page attributes of a layout entry (se_page_attr.h).
PAGE_ATTR_EADD: Final = 0x1
PAGE_ATTR_EEXTEND: Final = 0x2
PAGE_ATTR_EREMOVE: Final = 0x4
PAGE_ATTR_POST_ADD: Final = 0x8
PAGE_ATTR_POST_REMOVE: Final = 0x10
PAGE_ATTR_DYN_THREAD: Final = 0x20
PAGE_ATTR_GROW_DOWN: Final = 0x40

TCS_POLICY_UNBIND: Final = 1
SSA_FRAME_SIZE_MIN: Final = 1
SSA_FRAME_SIZE_MAX: Final = 4
SGX_MAJOR_VERSION_GAP: Final = 10  # 1x.y: the ELRANGE variants of x.y
URTS_MAJOR: Final = 3  # the newest metadata major the current urts understands

# Layout ids of metadata 1.3 (SDK 1.5) and of every later version (metadata.h).
_LAYOUT_NAMES_V13: Final = {1: "HEAP", 2: "TCS", 3: "TD", 4: "SSA", 5: "STACK", 0x1006: "THREAD_GROUP", 7: "GUARD"}
_LAYOUT_NAMES: Final = {
    1: "HEAP_MIN", 2: "HEAP_INIT", 3: "HEAP_MAX", 4: "TCS", 5: "TD", 6: "SSA", 7: "STACK_MAX",
    8: "STACK_MIN", 0x1009: "THREAD_GROUP", 10: "GUARD", 11: "HEAP_DYN_MIN", 12: "HEAP_DYN_INIT",
    13: "HEAP_DYN_MAX", 14: "TCS_DYN", 15: "TD_DYN", 16: "SSA_DYN", 17: "STACK_DYN_MAX",
    18: "STACK_DYN_MIN", 0x1013: "THREAD_GROUP_DYN", 20: "RSRV_MIN", 21: "RSRV_INIT",
    22: "RSRV_MAX", 23: "USER_REGION",
}


def _need(data: bytes, end: int, what: str) -> None:
    if end > len(data):
        raise TruncatedFileError(
            f"truncated file: {what} needs {end:#x} bytes, the file has {len(data):#x}"
        )


@dataclass(frozen=True, slots=True)
class ProgramHeader:
    p_type: int
    p_flags: int
    p_offset: int
    p_vaddr: int
    p_filesz: int
    p_memsz: int
    p_align: int


@dataclass(frozen=True, slots=True)
class SectionHeader:
    name: str
    sh_type: int
    sh_addr: int
    sh_offset: int
    sh_size: int
    sh_addralign: int
    sh_flags: int = 0


@dataclass
class ElfFile:
    """The parts of an ELF64 shared object the SDK loader reads."""

    data: bytes = field(repr=False)
    phdrs: list[ProgramHeader]
    sections: list[SectionHeader]
    dynamic: dict[int, int]  # d_tag -> d_val for tags < DT_NUM (elfparser.cpp parse_dyn)

    @property
    def loads(self) -> list[ProgramHeader]:
        return [p for p in self.phdrs if p.p_type == PT_LOAD]

    def section(self, name: str) -> SectionHeader | None:
        return next((s for s in self.sections if s.name == name), None)

    def section_at(self, addr: int) -> SectionHeader | None:
        """The first section whose sh_addr is `addr` (elfparser.cpp get_section_by_addr)."""
        return next((s for s in self.sections if s.sh_addr == addr), None)


def parse_elf(data: bytes, *, accept_exec: bool = False) -> ElfFile:
    """ELF header, program and section headers, dynamic tags; typed errors for bad input.

    SDK enclaves are shared objects; `accept_exec` also takes ET_EXEC, which the kernel
    selftest's loader accepts (an enclave linked with -static instead of -static-pie).
    """
    if len(data) < 4 or data[:4] != ELF_MAGIC:
        raise NotAnEnclaveError("not an enclave: neither an ELF file nor an SGXS stream")
    _need(data, _EHDR.size, "the ELF header")
    (ident, e_type, e_machine, _ver, _entry, e_phoff, e_shoff, _flags, _ehsize, e_phentsize,
     e_phnum, e_shentsize, e_shnum, e_shstrndx) = _EHDR.unpack_from(data, 0)
    if ident[4] != ELFCLASS64:
        raise UnsupportedEnclaveError("unsupported enclave: only 64-bit (ELFCLASS64) enclaves are supported")
    types = (ET_DYN, ET_EXEC) if accept_exec else (ET_DYN,)
    if ident[5] != ELFDATA2LSB or ident[6] != EV_CURRENT or e_type not in types or e_machine != EM_X86_64:
        raise NotAnEnclaveError("not an enclave: the ELF file is not an x86-64 shared object")
    if e_phentsize != _PHDR.size or (e_shnum and e_shentsize != _SHDR.size):
        raise InvalidMetadataError("invalid enclave: unexpected ELF header entry sizes")
    _need(data, e_phoff + e_phnum * _PHDR.size, "the program header table")
    phdrs = []
    for i in range(e_phnum):
        p_type, p_flags, p_offset, p_vaddr, _paddr, p_filesz, p_memsz, p_align = _PHDR.unpack_from(
            data, e_phoff + i * _PHDR.size
        )
        phdrs.append(ProgramHeader(p_type, p_flags, p_offset, p_vaddr, p_filesz, p_memsz, p_align))
    _need(data, e_shoff + e_shnum * _SHDR.size, "the section header table")
    raw_sh = [_SHDR.unpack_from(data, e_shoff + i * _SHDR.size) for i in range(e_shnum)]
    sections: list[SectionHeader] = []
    if raw_sh:
        if e_shstrndx >= e_shnum:
            raise InvalidMetadataError("invalid enclave: e_shstrndx outside the section table")
        strtab_off, strtab_size = raw_sh[e_shstrndx][4], raw_sh[e_shstrndx][5]
        _need(data, strtab_off + strtab_size, "the section name table")
        strtab = data[strtab_off : strtab_off + strtab_size]
        for sh_name, sh_type, sh_flags, sh_addr, sh_offset, sh_size, _l, _i, sh_addralign, _e in raw_sh:
            end = strtab.find(b"\0", sh_name)
            name = strtab[sh_name : end if end >= 0 else len(strtab)].decode("latin-1")
            sections.append(SectionHeader(name, sh_type, sh_addr, sh_offset, sh_size, sh_addralign, sh_flags))
    return ElfFile(data, phdrs, sections, _parse_dynamic(data, phdrs))


def read_dynamic(data: bytes, phdrs: list[ProgramHeader]) -> list[tuple[int, int]]:
    """Every (d_tag, d_val) of the first PT_DYNAMIC, in order, up to DT_NULL."""
    tags: list[tuple[int, int]] = []
    for p in phdrs:
        if p.p_type != PT_DYNAMIC:
            continue
        off, end = p.p_offset, p.p_offset + p.p_filesz
        _need(data, end, "the dynamic segment")
        while off + _DYN.size <= end:
            tag, val = _DYN.unpack_from(data, off)
            if tag == DT_NULL:
                break
            tags.append((tag, val))
            off += _DYN.size
        break
    return tags


def _parse_dynamic(data: bytes, phdrs: list[ProgramHeader]) -> dict[int, int]:
    """Tags below DT_NUM of the first PT_DYNAMIC, the last one winning (elfparser.cpp parse_dyn)."""
    return {tag: val for tag, val in read_dynamic(data, phdrs) if 0 <= tag < DT_NUM}


@dataclass(frozen=True, slots=True)
class Rela:
    """One Elf64_Rela entry."""

    r_offset: int
    r_info: int
    r_addend: int

    @property
    def type(self) -> int:
        return self.r_info & 0xFFFFFFFF

    @property
    def sym(self) -> int:
        return self.r_info >> 32


def read_rela(data: bytes, offset: int, size: int) -> list[Rela]:
    """The Elf64_Rela entries of the `size`-byte table at file `offset` (a partial last entry
    is ignored, as elfparser.cpp does)."""
    _need(data, offset + size, "a relocation table")
    return [Rela(*_RELA.unpack_from(data, off)) for off in range(offset, offset + size - _RELA.size + 1, _RELA.size)]


def validate_segments(elf: ElfFile) -> None:
    """elfparser.cpp validate_segment: file bounds, page-aligned LOADs, no LOAD overlap."""
    spans: list[tuple[int, int]] = []
    for p in elf.phdrs:
        _need(elf.data, p.p_offset + p.p_filesz, f"a segment at file offset {p.p_offset:#x}")
        if p.p_type != PT_LOAD:
            continue
        if p.p_align % PAGE_SIZE:
            raise InvalidMetadataError(
                f"invalid enclave: LOAD segment at {p.p_vaddr:#x} is not page aligned (align {p.p_align:#x})"
            )
        align = max(p.p_align, 1)
        span = (p.p_vaddr, (p.p_vaddr + p.p_memsz + align - 1) // align * align - 1)
        for other in spans:
            if span[0] <= other[1] and other[0] <= span[1]:
                raise InvalidMetadataError(f"invalid enclave: LOAD segments overlap at {span[0]:#x}")
        spans.append(span)


def reloc_pages(elf: ElfFile) -> frozenset[int] | None:
    """Page frames touched by relocations when the ELF has DT_TEXTREL, else None.

    elfparser.cpp get_reloc_bitmap: DT_RELA and DT_JMPREL tables found through the section
    at their address; a relocation within 8 bytes of a page end also marks the next page.
    """
    if DT_TEXTREL not in elf.dynamic:
        return None
    frames: set[int] = set()
    tables = []
    if DT_JMPREL in elf.dynamic:
        tables.append((elf.dynamic[DT_JMPREL], elf.dynamic.get(DT_PLTRELSZ, 0)))
    if DT_RELA in elf.dynamic:
        tables.append((elf.dynamic[DT_RELA], elf.dynamic.get(DT_RELASZ, 0)))
    for addr, size in tables:
        sec = elf.section_at(addr)
        if sec is None:
            continue
        for rela in read_rela(elf.data, sec.sh_offset, size):
            if rela.type == R_X86_64_NONE:
                continue
            frames.add(rela.r_offset >> 12)
            if rela.r_offset & (PAGE_SIZE - 1) > PAGE_SIZE - 8:
                frames.add((rela.r_offset >> 12) + 1)
    # Frames beyond the image (highest-rva LOAD end) are outside the SDK's bitmap.
    loads = elf.loads
    if loads:
        top = max(loads, key=lambda p: p.p_vaddr)
        nbits = ((top.p_vaddr + top.p_memsz + PAGE_SIZE - 1) // PAGE_SIZE + 7) // 8 * 8
        frames = {f for f in frames if f < nbits}
    return frozenset(frames)


# -- metadata -------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class LayoutEntry:
    id: int
    attributes: int
    page_count: int
    rva: int
    content_size: int
    content_offset: int
    si_flags: int


@dataclass(frozen=True, slots=True)
class LayoutGroup:
    id: int
    entry_count: int
    load_times: int
    load_step: int


@dataclass(frozen=True, slots=True)
class PatchEntry:
    dst: int  # file offset
    src: int  # metadata offset
    size: int


@dataclass
class Metadata:
    """One `metadata_t` record; `raw` is its `size` bytes (offsets inside are relative to it)."""

    raw: bytes = field(repr=False)
    file_offset: int  # where the record starts in the file (may be unaligned)
    version: int
    size: int
    tcs_policy: int
    ssa_frame_size: int
    max_save_buffer_size: int
    desired_misc_select: int
    tcs_min_pool: int
    enclave_size: int
    attributes: int
    xfrm: int

    @property
    def major(self) -> int:
        return self.version >> 32

    @property
    def minor(self) -> int:
        return self.version & 0xFFFFFFFF

    @property
    def version_str(self) -> str:
        return f"{self.major}.{self.minor}"

    @property
    def supported(self) -> bool:
        """Majors 1-3 and their ELRANGE variants 11-13 (urts validate_metadata accepts major%10 <= 3)."""
        return self.major in (1, 2, 3, 11, 12, 13)

    @property
    def elrange(self) -> bool:
        return self.major > SGX_MAJOR_VERSION_GAP

    @property
    def supports_extend(self) -> bool:
        """Versions whose dirs[] hold a DIR_EXTEND entry (FIPS DSO)."""
        major = self.major % SGX_MAJOR_VERSION_GAP
        return (major == 1 and self.minor >= 5) or (major == 3 and self.minor >= 2)

    @property
    def sigstruct(self) -> bytes:
        return self.raw[MD_OFF_CSS:MD_OFF_DIRS]

    def layout_name(self, layout_id: int) -> str:
        names = _LAYOUT_NAMES_V13 if (self.major, self.minor) == (1, 3) else _LAYOUT_NAMES
        return names.get(layout_id, f"id {layout_id:#x}")

    def dir(self, index: int) -> tuple[int, int]:
        off = MD_OFF_DIRS + index * _DIR.size
        if off + _DIR.size > len(self.raw):
            return (0, 0)
        offset, size = _DIR.unpack_from(self.raw, off)
        return offset, size

    def _table(self, index: int, entry_size: int, what: str) -> list[bytes]:
        offset, size = self.dir(index)
        if size % entry_size:
            raise InvalidMetadataError(f"invalid metadata: {what} size {size} is not a multiple of {entry_size}")
        return [self.raw[o : o + entry_size] for o in range(offset, offset + size, entry_size)]

    def layout(self) -> list[LayoutEntry | LayoutGroup]:
        out: list[LayoutEntry | LayoutGroup] = []
        for raw in self._table(DIR_LAYOUT, LAYOUT_SIZE, "layout table"):
            if _LAYOUT.unpack_from(raw)[0] & GROUP_FLAG:
                out.append(LayoutGroup(*_GROUP.unpack(raw)))
            else:
                out.append(LayoutEntry(*_LAYOUT.unpack(raw)))
        return out

    def patches(self) -> list[PatchEntry]:
        return [PatchEntry(*_PATCH.unpack(r)) for r in self._table(DIR_PATCH, PATCH_SIZE, "patch table")]

    def elrange_config(self) -> tuple[int, int, int] | None:
        """(enclave_image_address, elrange_start_address, elrange_size) for 1x.y metadata."""
        if not self.elrange:
            return None
        offset, _size = _DIR.unpack_from(self.raw, MD_OFF_DIR_ELRANGE)
        if offset < MD_MIN_SIZE or offset + _ELRANGE.size > len(self.raw):
            raise InvalidMetadataError("invalid metadata: ELRANGE entry outside the metadata")
        image, start, size = _ELRANGE.unpack_from(self.raw, offset)
        return image, start, size

    def has_extend_entries(self) -> bool:
        return self.supports_extend and self.dir(3)[1] != 0


def read_metadata_copies(elf: ElfFile) -> list[Metadata]:
    """Every `metadata_t` in `.note.sgxmeta`, in file order (elfparser.cpp get_meta_property).

    The records start right after the note name, hence usually at an unaligned offset.
    """
    sec = elf.section(SGXMETA_SECTION)
    if sec is None:
        raise NotAnEnclaveError(
            f"not an enclave: the ELF file has no {SGXMETA_SECTION} section (not an SGX SDK enclave)"
        )
    data = elf.data
    _need(data, sec.sh_offset + _NHDR.size, f"the {SGXMETA_SECTION} note header")
    namesz, descsz, _type = _NHDR.unpack_from(data, sec.sh_offset)
    align = max(sec.sh_addralign, 1)
    if sec.sh_size != (_NHDR.size + namesz + descsz + align - 1) // align * align:
        raise InvalidMetadataError(f"invalid enclave: {SGXMETA_SECTION} section size does not match its note")
    name_off = sec.sh_offset + _NHDR.size
    _need(data, name_off + namesz, f"the {SGXMETA_SECTION} note name")
    if data[name_off : name_off + namesz] != SGXMETA_NAME:
        raise InvalidMetadataError(f'invalid enclave: the {SGXMETA_SECTION} note is not named "sgx_metadata"')
    start = name_off + namesz
    _need(data, start + descsz, "the metadata block")
    block = data[start : start + descsz]
    copies: list[Metadata] = []
    pos = 0
    while pos + _MD_HEAD.size <= len(block):
        head = _MD_HEAD.unpack_from(block, pos)
        if head[0] != METADATA_MAGIC:
            break
        size = head[2]
        if size < MD_MIN_SIZE or pos + size > len(block):
            raise InvalidMetadataError(
                f"invalid metadata: record at {start + pos:#x} has size {size:#x} "
                f"(block {len(block):#x} bytes)"
            )
        copies.append(Metadata(block[pos : pos + size], start + pos, *head[1:]))
        pos += size
    if not copies:
        magic = struct.unpack_from("<Q", block, 0)[0] if len(block) >= 8 else 0
        if magic == 0:
            raise UnsignedEnclaveError("unsigned enclave: the metadata block is empty (run sgx_sign first)")
        raise InvalidMetadataError(f"invalid metadata: bad magic {magic:#018x}")
    return copies


def select_metadata(copies: list[Metadata]) -> Metadata:
    """The first copy with a supported version (the current urts reads the first copy; older
    ones picked the newest they knew, and every copy measures the same)."""
    for md in copies:
        if md.supported:
            if not any(md.sigstruct[128 : 128 + 384]):  # MODULUS all zero
                raise UnsignedEnclaveError("unsigned enclave: the embedded SIGSTRUCT is empty")
            return md
    found = ", ".join(md.version_str for md in copies)
    raise UnknownMetadataVersionError(
        f"unknown metadata version {found} (supported: majors 1, 2, 3 and their ELRANGE forms 11-13)"
    )
