"""Intel SGX SDK enclaves (`*.signed.so`): the pages the SDK loader adds, and MRENCLAVE.

The SDK signs by running its own loader (`CLoader`, psw/urts/loader.cpp) against a SHA-256
"creator", so reproducing that loader's sequence of EADD/EEXTEND is what "measured exactly as
on hardware" means. The order, per `CLoader::build_image`:

1. ECREATE with metadata.ssa_frame_size and metadata.enclave_size (or the ELRANGE size);
2. the patch table is applied to the file image (it is not pre-patched on disk);
3. every PT_LOAD in program-header order (`build_sections` / `build_mem_region`);
4. the layout table: heap, stacks, TCS, SSA, TD, guards, groups (`build_contexts`).

See `docs/loading-sdk-enclaves.md` and `sgx-sdk-enclave-format.md`.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from sgxemu.arch.constants import PAGE_SIZE
from sgxemu.loader.errors import (
    InvalidMetadataError,
    TruncatedFileError,
    UnsupportedEnclaveError,
)
from sgxemu.loader.plan import (
    ALL_CHUNKS,
    NO_CHUNKS,
    ZERO_PAGE,
    EnclavePlan,
    Measurement,
    PageRun,
    SigstructReport,
    check_sigstruct,
    measure_plan,
)
from sgxemu.loader.sdk_metadata import (
    MD_OFF_DATA_V2,
    PAGE_ATTR_EADD,
    PAGE_ATTR_EEXTEND,
    PF_R,
    PF_W,
    PF_X,
    SSA_FRAME_SIZE_MAX,
    SSA_FRAME_SIZE_MIN,
    TCS_POLICY_UNBIND,
    ElfFile,
    LayoutEntry,
    LayoutGroup,
    Metadata,
    parse_elf,
    read_metadata_copies,
    reloc_pages,
    select_metadata,
    validate_segments,
)

__all__ = ["SdkEnclave", "load_sdk_enclave", "parse_sdk_enclave"]

SI_FLAG_R = 0x1
SI_FLAG_W = 0x2
SI_FLAG_X = 0x4
SI_FLAG_REG = 0x200
SI_FLAGS_TCS = 0x100
_TCS_OFFSETS = (16, 48, 56)  # OSSA, OFSBASE, OGSBASE: rebased by the page's rva
_U64 = (1 << 64) - 1
ENCLAVE_MAX_SIZE_64 = 0x1FFFFFFFFF  # binparser.h: the largest enclave_size the loader takes


def _round_page(value: int) -> int:
    return (value + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)


def si_flags_of(p_flags: int) -> int:
    """ELF p_flags (X=1, W=2, R=4) to SECINFO.FLAGS (REG | R=1, W=2, X=4): page_attr_to_si_flags."""
    flags = SI_FLAG_REG
    if p_flags & PF_R:
        flags |= SI_FLAG_R
    if p_flags & PF_W:
        flags |= SI_FLAG_W
    if p_flags & PF_X:
        flags |= SI_FLAG_X
    return flags


@dataclass
class SdkEnclave:
    """A parsed SDK enclave: every metadata copy, the one used, and the pages to add."""

    name: str
    copies: list[Metadata]
    metadata: Metadata
    plan: EnclavePlan
    elrange: tuple[int, int, int] | None = None
    _measurement: Measurement | None = field(default=None, repr=False)

    @property
    def versions(self) -> list[str]:
        return [md.version_str for md in self.copies]

    @property
    def sigstruct(self) -> bytes:
        return self.metadata.sigstruct

    @property
    def sigstructs_agree(self) -> bool:
        return all(md.sigstruct == self.sigstruct for md in self.copies)

    def measure(self) -> Measurement:
        if self._measurement is None:
            self._measurement = measure_plan(self.plan)
        return self._measurement

    def check(self, sigstruct: bytes | None = None) -> SigstructReport:
        """Verify `sigstruct` (default: the embedded one) against the measurement."""
        return check_sigstruct(self.sigstruct if sigstruct is None else sigstruct, self.measure().mrenclave)


class _Builder:
    """Collects the runs of pages the way CLoader's add_enclave_page calls arrive."""

    def __init__(self, reloc: frozenset[int] | None) -> None:
        self.runs: list[PageRun] = []
        self.reloc = reloc

    def add(self, rva: int, flags: int, data: bytes, measure: bool) -> None:
        self.runs.append(PageRun(rva, 1, flags, data, ALL_CHUNKS if measure else NO_CHUNKS))

    def add_run(self, rva: int, size: int, flags: int, data: bytes, measure: bool) -> None:
        # CLoader::build_pages: the same source page for every page of the run.
        if size:
            self.runs.append(PageRun(rva, size // PAGE_SIZE, flags, data, ALL_CHUNKS if measure else NO_CHUNKS))

    def mem_region(self, raw: bytes | memoryview, rva: int, vsize: int, flags: int, reloc: bool) -> None:
        """CLoader::build_mem_region: file bytes page by page, then zero pages up to vsize."""
        raw_size = len(raw)
        offset = 0
        while offset < raw_size:
            cur = rva + offset
            po = cur & (PAGE_SIZE - 1)
            n = min(PAGE_SIZE - po, raw_size - offset)
            f = flags
            if reloc and self.reloc is not None and cur >> 12 in self.reloc and not flags & SI_FLAG_W:
                f = flags | SI_FLAG_W  # DT_TEXTREL page in a read-only segment
            if n == PAGE_SIZE:
                page = bytes(raw[offset : offset + PAGE_SIZE])
            else:  # build_partial_page: zero page with the bytes at their in-page offset
                buf = bytearray(PAGE_SIZE)
                buf[po : po + n] = raw[offset : offset + n]
                page = bytes(buf)
            self.add(cur - po, f, page, True)
            offset += PAGE_SIZE - po
        if vsize > offset:
            cur = rva + offset
            size = _round_page(vsize - offset + (cur & (PAGE_SIZE - 1)))
            self.add_run(cur & ~(PAGE_SIZE - 1), size, flags, ZERO_PAGE, True)


def _check_buffer(md: Metadata, offset: int, size: int, what: str) -> None:
    """CLoader::is_metadata_buffer."""
    if not (MD_OFF_DATA_V2 <= offset < md.size and offset + size <= md.size):
        raise InvalidMetadataError(f"invalid metadata: {what} [{offset:#x}, +{size:#x}) outside the metadata")


def _check_enclave_range(md: Metadata, offset: int, size: int, what: str) -> None:
    """CLoader::is_enclave_buffer."""
    if not (offset < md.enclave_size and offset + size <= md.enclave_size):
        raise InvalidMetadataError(f"invalid metadata: {what} [{offset:#x}, +{size:#x}) outside the enclave")


def validate_metadata(md: Metadata) -> list[LayoutEntry | LayoutGroup]:
    """CLoader::validate_metadata / validate_layout_table / validate_patch_table."""
    if md.tcs_policy > TCS_POLICY_UNBIND:
        raise InvalidMetadataError(f"invalid metadata: tcs_policy {md.tcs_policy}")
    if not SSA_FRAME_SIZE_MIN <= md.ssa_frame_size <= SSA_FRAME_SIZE_MAX:
        raise InvalidMetadataError(f"invalid metadata: ssa_frame_size {md.ssa_frame_size}")
    size = md.enclave_size
    if size > ENCLAVE_MAX_SIZE_64:
        raise InvalidMetadataError(f"invalid metadata: enclave_size {size:#x} is too large")
    if size == 0 or size & (size - 1):
        raise InvalidMetadataError(f"invalid metadata: enclave_size {size:#x} is not a power of two")
    for index, what in ((0, "patch directory"), (1, "layout directory")):
        _check_buffer(md, *md.dir(index), what)
    layout = md.layout()
    spans: list[tuple[int, int]] = []
    for i, item in enumerate(layout):
        if isinstance(item, LayoutEntry):
            spans.append((item.rva, item.page_count * PAGE_SIZE))
            if item.content_offset:
                _check_buffer(md, item.content_offset, item.content_size, "layout content")
            continue
        if item.entry_count > i:
            raise InvalidMetadataError(f"invalid metadata: layout group {i} repeats {item.entry_count} entries")
        step = 0
        for _ in range(item.load_times):
            step += item.load_step
            if step > md.enclave_size:
                raise InvalidMetadataError(f"invalid metadata: layout group {i} steps outside the enclave")
            for prev in layout[i - item.entry_count : i]:
                if isinstance(prev, LayoutGroup):
                    raise InvalidMetadataError(f"invalid metadata: layout group {i} contains a group")
                spans.append((prev.rva + step, prev.page_count * PAGE_SIZE))
    spans.sort()
    for j, (rva, length) in enumerate(spans):
        if rva & (PAGE_SIZE - 1):
            raise InvalidMetadataError(f"invalid metadata: layout rva {rva:#x} not page aligned")
        _check_enclave_range(md, rva, length, "layout entry")
        if j + 1 < len(spans) and rva + length > spans[j + 1][0]:
            raise InvalidMetadataError(f"invalid metadata: layout entries overlap at {spans[j + 1][0]:#x}")
    for patch in md.patches():
        _check_buffer(md, patch.src, patch.size, "patch source")
        _check_enclave_range(md, patch.dst, patch.size, "patch destination")
    return layout


def _build_sections(b: _Builder, elf: ElfFile, image: bytearray, md: Metadata) -> None:
    """CLoader::build_sections: PT_LOADs in header order (+ the metadata 1.3 padding page)."""
    view = memoryview(image)
    quirk_13 = (md.major, md.minor) == (1, 3)
    last = None
    max_rva = 0
    sections = []
    for p in elf.loads:
        flags = si_flags_of(p.p_flags)
        if flags == SI_FLAG_REG:  # elfparser.cpp build_section refuses a LOAD without rights
            raise InvalidMetadataError(f"invalid enclave: LOAD segment at {p.p_vaddr:#x} has no permissions")
        sections.append((p, flags))

    def pad_page(sec: tuple[int, int, int], next_rva: int | None) -> None:
        rva, vsize, flags = sec
        end = _round_page(rva + vsize)
        if end < _round_page(_round_page(vsize) + rva) and (next_rva is None or end < next_rva & ~(PAGE_SIZE - 1)):
            b.add(end, flags, ZERO_PAGE, True)

    for p, flags in sections:
        if quirk_13 and last is not None:
            pad_page(last, p.p_vaddr)
        if p.p_vaddr > max_rva:
            max_rva = p.p_vaddr
            last = (p.p_vaddr, p.p_memsz, flags)
        b.mem_region(view[p.p_offset : p.p_offset + p.p_filesz], p.p_vaddr, p.p_memsz, flags, True)
    if quirk_13 and last is not None:
        pad_page(last, None)


def _build_context(b: _Builder, md: Metadata, entry: LayoutEntry, delta: int) -> None:
    """CLoader::build_context for one layout entry at rva + delta."""
    if not entry.attributes & PAGE_ATTR_EADD:
        return  # POST_ADD-only (EDMM) and guard entries: nothing is added at build time
    rva = (delta + entry.rva) & _U64
    size = entry.page_count * PAGE_SIZE
    measure = bool(entry.attributes & PAGE_ATTR_EEXTEND)
    if entry.content_offset:
        content = md.raw[entry.content_offset : entry.content_offset + entry.content_size]
        if entry.si_flags == SI_FLAGS_TCS:
            if len(content) > PAGE_SIZE:
                raise InvalidMetadataError(f"invalid metadata: TCS template of {len(content)} bytes")
            page = bytearray(PAGE_SIZE)
            page[: len(content)] = content
            for off in _TCS_OFFSETS:  # the template's offsets become enclave offsets
                value = struct.unpack_from("<Q", page, off)[0]
                struct.pack_into("<Q", page, off, (value + rva) & _U64)
            b.add_run(rva, size, entry.si_flags, bytes(page), measure)
        else:  # content like a segment: always EADD + EEXTEND
            b.mem_region(content, rva, size, entry.si_flags, False)
    elif entry.si_flags:
        fill = struct.pack("<I", entry.content_size) * (PAGE_SIZE // 4) if entry.content_size else ZERO_PAGE
        b.add_run(rva, size, entry.si_flags, fill, measure)


def _build_contexts(b: _Builder, md: Metadata, layout: list[LayoutEntry | LayoutGroup], delta: int) -> None:
    """CLoader::build_contexts: a group replays the entry_count entries before it, load_times
    times, at delta = j * load_step (j = 1..load_times; not added to an outer delta)."""
    for i, item in enumerate(layout):
        if isinstance(item, LayoutEntry):
            _build_context(b, md, item, delta)
            continue
        step = 0
        for _ in range(item.load_times):
            step += item.load_step
            _build_contexts(b, md, layout[i - item.entry_count : i], step)


def _shift(runs: Iterable[PageRun], delta: int) -> list[PageRun]:
    return [PageRun((r.offset + delta) & _U64, r.count, r.secinfo_flags, r.data, r.chunks) for r in runs]


def parse_sdk_enclave(data: bytes, name: str = "<enclave>") -> SdkEnclave:
    """Parse an SDK enclave and build its page plan (nothing is measured yet)."""
    elf = parse_elf(data)
    copies = read_metadata_copies(elf)
    md = select_metadata(copies)
    validate_segments(elf)
    layout = validate_metadata(md)
    if md.has_extend_entries():
        raise UnsupportedEnclaveError(
            f"unsupported enclave: metadata {md.version_str} has DIR_EXTEND entries (FIPS DSO), not implemented"
        )
    elrange = md.elrange_config()
    size = md.enclave_size
    if elrange is not None:
        image_addr, start, el_size = elrange
        if (el_size == 0 or el_size & (el_size - 1) or start > image_addr or start & (el_size - 1)
                or image_addr % PAGE_SIZE or image_addr + md.enclave_size > start + el_size):
            raise InvalidMetadataError("invalid metadata: inconsistent ELRANGE configuration")
        size = el_size
    b = _Builder(reloc_pages(elf))  # before patching: the patches clear the section headers
    image = bytearray(data)
    for patch in md.patches():
        if patch.dst + patch.size > len(image):
            raise TruncatedFileError(
                f"truncated file: a patch writes up to {patch.dst + patch.size:#x}, the file has {len(image):#x}"
            )
        image[patch.dst : patch.dst + patch.size] = md.raw[patch.src : patch.src + patch.size]
    _build_sections(b, elf, image, md)
    _build_contexts(b, md, layout, 0)
    runs = b.runs
    if elrange is not None:
        runs = _shift(runs, elrange[0] - elrange[1])
    plan = EnclavePlan(size, md.ssa_frame_size, runs, "sdk", md.sigstruct)
    return SdkEnclave(name, copies, md, plan, elrange)


def load_sdk_enclave(path: str | Path) -> SdkEnclave:
    p = Path(path)
    return parse_sdk_enclave(p.read_bytes(), str(p))
