"""The dynamic relocations of a static-PIE enclave ELF, found and checked, not yet applied.

A static-PIE links every symbol at link time, so what is left for run time is a table of
``R_X86_64_RELATIVE`` entries: "8 bytes at ``r_offset`` := load bias + ``r_addend``". No
dynamic linker exists inside an enclave, so that is the only kind either an enclave loader
or the enclave itself can apply; ``R_X86_64_NONE`` is skipped and anything else (a symbol,
GOT/PLT slots, TLS, ifuncs) is refused with `RelocationError`.

The table is found the way a runtime finds it, through ``PT_DYNAMIC`` (``DT_RELA`` /
``DT_RELASZ`` / ``DT_RELAENT``, plus ``DT_JMPREL`` / ``DT_PLTRELSZ``), or, in a file without
``PT_DYNAMIC``, through its allocated ``SHT_RELA`` sections (``.rela.dyn``, ``.rela.plt``).
When a file has both, they must name the same entries: a loader reading one and an enclave
reading the other must not disagree. Entries are identified by their file position, so a
``DT_RELASZ`` that also covers ``.rela.plt`` (as GNU ld emits it) counts each entry once.

Placing the entries in the enclave (which segment, which enclave offset) is the layout's
business: see `sgxemu.loader.selftest_layout`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from sgxemu.loader.errors import RelocationError
from sgxemu.loader.sdk_metadata import (
    DT_JMPREL,
    DT_PLTRELSZ,
    DT_REL,
    DT_RELA,
    DT_RELAENT,
    DT_RELASZ,
    DT_RELR,
    PT_DYNAMIC,
    R_X86_64_NONE,
    R_X86_64_RELATIVE,
    RELA_SIZE,
    ElfFile,
    ProgramHeader,
    Rela,
    read_dynamic,
    read_rela,
)

__all__ = ["DynamicRelocs", "RelaTable", "file_offset_of", "read_dynamic_relocs", "relocation_type_name"]

DT_NEEDED: Final = 1
DT_PLTREL: Final = 20
SHT_RELA: Final = 4
SHT_REL: Final = 9
SHT_RELR: Final = 19
SHF_ALLOC: Final = 0x2

# Names of the x86-64 relocation types a compiler or linker may leave behind (psABI).
_TYPE_NAMES: Final = {
    0: "R_X86_64_NONE", 1: "R_X86_64_64", 2: "R_X86_64_PC32", 3: "R_X86_64_GOT32",
    4: "R_X86_64_PLT32", 5: "R_X86_64_COPY", 6: "R_X86_64_GLOB_DAT", 7: "R_X86_64_JUMP_SLOT",
    8: "R_X86_64_RELATIVE", 9: "R_X86_64_GOTPCREL", 10: "R_X86_64_32", 11: "R_X86_64_32S",
    12: "R_X86_64_16", 13: "R_X86_64_PC16", 14: "R_X86_64_8", 15: "R_X86_64_PC8",
    16: "R_X86_64_DTPMOD64", 17: "R_X86_64_DTPOFF64", 18: "R_X86_64_TPOFF64",
    19: "R_X86_64_TLSGD", 20: "R_X86_64_TLSLD", 21: "R_X86_64_DTPOFF32",
    22: "R_X86_64_GOTTPOFF", 23: "R_X86_64_TPOFF32", 24: "R_X86_64_PC64",
    25: "R_X86_64_GOTOFF64", 26: "R_X86_64_GOTPC32", 32: "R_X86_64_SIZE32",
    33: "R_X86_64_SIZE64", 36: "R_X86_64_TLSDESC", 37: "R_X86_64_IRELATIVE",
    38: "R_X86_64_RELATIVE64",
}

_HOW_TO_FIX: Final = (
    "link the enclave with -static-pie (-nostdlib) so that no dynamic symbol, GOT/PLT slot, "
    "TLS or ifunc is left for a dynamic linker"
)


def relocation_type_name(r_type: int) -> str:
    return _TYPE_NAMES.get(r_type, f"type {r_type}")


@dataclass(frozen=True)
class RelaTable:
    """One Elf64_Rela table: ``what`` says how it was found (``DT_RELA``, ``.rela.dyn``...)."""

    what: str
    vaddr: int
    file_offset: int
    size: int


@dataclass(frozen=True)
class DynamicRelocs:
    """The tables a runtime would read and their ``R_X86_64_RELATIVE`` entries, in table order."""

    tables: tuple[RelaTable, ...]
    relative: tuple[Rela, ...]


def file_offset_of(loads: list[ProgramHeader], vaddr: int, size: int) -> int | None:
    """File offset of ``size`` bytes at ``vaddr`` if one PT_LOAD's file bytes hold them all."""
    for p in loads:
        if p.p_vaddr <= vaddr and vaddr + size <= p.p_vaddr + p.p_filesz:
            return p.p_offset + (vaddr - p.p_vaddr)
    return None


def _refuse_other_forms(elf: ElfFile, tags: dict[int, int]) -> None:
    """Tables in a form nothing here applies would silently be skipped: refuse them."""
    if DT_NEEDED in tags:
        raise RelocationError(
            f"the ELF is dynamically linked (DT_NEEDED): an enclave has no dynamic linker; {_HOW_TO_FIX}"
        )
    if DT_REL in tags or any(s.sh_type == SHT_REL and s.sh_flags & SHF_ALLOC for s in elf.sections):
        raise RelocationError("Elf64_Rel relocations (DT_REL) are not used on x86-64; relink the enclave")
    if DT_RELR in tags or any(s.sh_type == SHT_RELR and s.sh_flags & SHF_ALLOC for s in elf.sections):
        raise RelocationError(
            "packed relative relocations (DT_RELR) are not supported; link with -z nopack-relative-relocs"
        )
    if DT_JMPREL in tags and tags.get(DT_PLTREL, DT_RELA) != DT_RELA:
        raise RelocationError("DT_JMPREL holds Elf64_Rel entries (DT_PLTREL is not DT_RELA); relink")


def _dynamic_tables(elf: ElfFile, tags: dict[int, int]) -> list[RelaTable]:
    entsize = tags.get(DT_RELAENT, RELA_SIZE)
    if DT_RELA in tags and entsize != RELA_SIZE:
        raise RelocationError(f"DT_RELAENT is {entsize}, an Elf64_Rela is {RELA_SIZE} bytes")
    tables = []
    for what, addr_tag, size_tag in (("DT_RELA", DT_RELA, DT_RELASZ), ("DT_JMPREL", DT_JMPREL, DT_PLTRELSZ)):
        if addr_tag not in tags or not tags.get(size_tag, 0):
            continue
        vaddr, size = tags[addr_tag], tags[size_tag]
        offset = file_offset_of(elf.loads, vaddr, size)
        if offset is None:
            raise RelocationError(
                f"{what} table {vaddr:#x}+{size:#x} is not inside the file bytes of any PT_LOAD; relink"
            )
        tables.append(RelaTable(what, vaddr, offset, size))
    return tables


def _section_tables(elf: ElfFile) -> list[RelaTable]:
    return [
        RelaTable(s.name, s.sh_addr, s.sh_offset, s.sh_size)
        for s in elf.sections
        if s.sh_type == SHT_RELA and s.sh_flags & SHF_ALLOC and s.sh_size
    ]


def _entries(elf: ElfFile, tables: list[RelaTable]) -> dict[int, Rela]:
    """Entries keyed by file position, so overlapping tables count each entry once."""
    entries: dict[int, Rela] = {}
    for t in tables:
        if t.size % RELA_SIZE:
            raise RelocationError(f"{t.what} table size {t.size:#x} is not a multiple of {RELA_SIZE}")
        for i, rela in enumerate(read_rela(elf.data, t.file_offset, t.size)):
            entries[t.file_offset + i * RELA_SIZE] = rela
    return entries


def _check_type(rela: Rela) -> None:
    if rela.type in (R_X86_64_NONE, R_X86_64_RELATIVE):
        return
    symbol = f" against symbol #{rela.sym}" if rela.sym else ""
    raise RelocationError(
        f"unsupported relocation {relocation_type_name(rela.type)} at {rela.r_offset:#x}{symbol}: "
        f"only R_X86_64_RELATIVE can be applied without a dynamic linker; {_HOW_TO_FIX}"
    )


def read_dynamic_relocs(elf: ElfFile) -> DynamicRelocs:
    """The relocation tables of ``elf`` and their RELATIVE entries; RelocationError otherwise."""
    has_dynamic = any(p.p_type == PT_DYNAMIC for p in elf.phdrs)
    tags = dict(read_dynamic(elf.data, elf.phdrs))
    _refuse_other_forms(elf, tags)
    by_sections = _section_tables(elf)
    tables = _dynamic_tables(elf, tags) if has_dynamic else by_sections
    entries = _entries(elf, tables)
    if has_dynamic and elf.sections:
        from_sections = _entries(elf, by_sections)
        if from_sections.keys() != entries.keys():
            dyn = ", ".join(f"{t.what} {t.vaddr:#x}+{t.size:#x}" for t in tables) or "none"
            sec = ", ".join(f"{t.what} {t.vaddr:#x}+{t.size:#x}" for t in by_sections) or "none"
            raise RelocationError(
                f"PT_DYNAMIC and the section headers disagree on the relocations "
                f"(PT_DYNAMIC: {dyn}; sections: {sec}); relink the enclave"
            )
    ordered = [entries[k] for k in sorted(entries)]
    for rela in ordered:
        _check_type(rela)
    relative = tuple(r for r in ordered if r.type == R_X86_64_RELATIVE)
    return DynamicRelocs(tuple(tables), relative)
