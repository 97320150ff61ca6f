"""Build sgxemu's test enclave and check its layout against the selftest rules.

gcc is required: a missing compiler makes these tests fail, never skip.
"""

from __future__ import annotations

import ctypes
import re
import shutil
import struct
import subprocess
from pathlib import Path

import capstone
import pytest
from elftools.elf.elffile import ELFFile

from sgxemu.loader.selftest_layout import (
    PROT_EXEC,
    PROT_READ,
    PROT_WRITE,
    EnclaveFormatError,
    EnclaveImage,
    load_segments,
)
from sgxemu.testenclave import EnclaveBuildError, build_test_enclave, protocol
from sgxemu.testenclave.build import ELF_NAME, source_hash

PAGE = 4096
RW = PROT_READ | PROT_WRITE
RX = PROT_READ | PROT_EXEC
PF_X, PF_W, PF_R = 1, 2, 4

# STATE FLAGS OSSA CSSA NSSA OENTRY AEP OFSBASE OGSBASE FSLIMIT GSLIMIT
TCS_FMT = "<QQQIIQQQQII"
TCS_HDR = struct.calcsize(TCS_FMT)


@pytest.fixture(scope="module")
def elf_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_test_enclave(tmp_path_factory.mktemp("encl"))


@pytest.fixture(scope="module")
def image(elf_path: Path) -> EnclaveImage:
    return load_segments(elf_path)


def _text_section(elf_path: Path) -> tuple[int, bytes]:
    with elf_path.open("rb") as f:
        sec = ELFFile(f).get_section_by_name(".text")
        assert sec is not None
        return int(sec["sh_addr"]), bytes(sec.data())


# --- build -------------------------------------------------------------------


def test_build_is_cached(tmp_path: Path) -> None:
    first = build_test_enclave(tmp_path)
    mtime = first.stat().st_mtime_ns
    second = build_test_enclave(tmp_path)
    assert first == second == tmp_path / ELF_NAME
    assert second.stat().st_mtime_ns == mtime


def test_default_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    elf = build_test_enclave()
    assert elf.parent == tmp_path / "sgxemu" / f"testenclave-{source_hash()[:16]}"
    assert elf.is_file()


def test_missing_compiler_is_typed_error(tmp_path: Path) -> None:
    with pytest.raises(EnclaveBuildError, match="not found on PATH"):
        build_test_enclave(tmp_path, cc="sgxemu-no-such-compiler")


def test_failing_compiler_is_typed_error(tmp_path: Path) -> None:
    false = shutil.which("false")
    assert false is not None
    with pytest.raises(EnclaveBuildError) as info:
        build_test_enclave(tmp_path, cc=false)
    assert "exit 1" in str(info.value)
    assert "\n" not in str(info.value)
    assert not (tmp_path / ELF_NAME).exists()


# --- ELF shape -----------------------------------------------------------------


def test_elf_header_and_segments(elf_path: Path) -> None:
    with elf_path.open("rb") as f:
        elf = ELFFile(f)
        assert elf.elfclass == 64
        assert elf["e_machine"] == "EM_X86_64"
        assert elf["e_type"] == "ET_DYN"
        types = [ph["p_type"] for ph in elf.iter_segments()]
        loads = [ph for ph in elf.iter_segments() if ph["p_type"] == "PT_LOAD"]
        assert [ph["p_flags"] for ph in loads] == [PF_R | PF_W, PF_R | PF_X, PF_R | PF_W]
        # Nothing would ever apply a relocation, so there must be none.
        assert "PT_DYNAMIC" not in types and "PT_INTERP" not in types
        sec_types = {s["sh_type"] for s in elf.iter_sections()}
        assert not sec_types & {"SHT_RELA", "SHT_REL", "SHT_DYNAMIC", "SHT_DYNSYM"}
        assert elf.get_section_by_name(".got") is None


# --- layout per the selftest loader ----------------------------------------------


def test_segment_table(image: EnclaveImage) -> None:
    tcs, text, data, heap = image.segments
    assert (tcs.offset, tcs.size, tcs.prot, tcs.secinfo_flags) == (0, 2 * PAGE, RW, 0x100)
    assert (text.prot, text.secinfo_flags) == (RX, 0x205)
    assert (data.prot, data.secinfo_flags) == (RW, 0x203)
    assert text.offset == tcs.offset + tcs.size
    assert data.offset == text.offset + text.size
    assert all(s.measure for s in (tcs, text, data))
    for seg in image.segments:
        assert seg.offset % PAGE == 0 and seg.size % PAGE == 0
        assert len(seg.data) == seg.size
    assert heap.offset == data.offset + data.size
    assert (heap.size, heap.prot, heap.secinfo_flags, heap.measure) == (PAGE, RW, 0x203, False)
    assert heap.data == bytes(PAGE)
    assert image.src_size == heap.offset + heap.size
    size = image.encl_size
    assert size >= max(PAGE, image.src_size) and size & (size - 1) == 0
    assert size // 2 < image.src_size or size == PAGE
    assert image.tcs_offset == 0
    assert image.data_offset == data.offset


@pytest.mark.parametrize("index", [0, 1])
def test_tcs_pages(image: EnclaveImage, index: int) -> None:
    page = image.segments[0].data[index * PAGE : (index + 1) * PAGE]
    state, flags, ossa, cssa, nssa, oentry, aep, ofs, ogs, fslim, gslim = struct.unpack_from(
        TCS_FMT, page
    )
    assert (state, flags, cssa, nssa) == (0, 0, 0, 1)
    assert ossa == image.symbol(f"encl_ssa_tcs{index + 1}")
    assert oentry == image.symbol("encl_entry")
    assert (aep, ofs, ogs) == (0, 0, 0)
    assert (fslim, gslim) == (0xFFFFFFFF, 0xFFFFFFFF)
    assert page[TCS_HDR:] == bytes(PAGE - TCS_HDR)


def test_data_segment_layout(image: EnclaveImage) -> None:
    data = image.segments[2]
    end = data.offset + data.size
    buf = image.symbol("encl_buffer")
    assert buf == image.data_offset
    assert image.symbol_size("encl_buffer") == 2 * PAGE
    # data_offset + 0x1000 is a page owned by encl_buffer alone.
    assert buf + 2 * PAGE <= image.symbol("encl_ssa_tcs1")
    ssa1, ssa2 = image.symbol("encl_ssa_tcs1"), image.symbol("encl_ssa_tcs2")
    st1, st2 = image.symbol("encl_stack_tcs1"), image.symbol("encl_stack_tcs2")
    for off in (ssa1, ssa2, st1, st2):
        assert off % PAGE == 0 and data.offset <= off and off + PAGE <= end
    assert len({ssa1, ssa2, st1, st2}) == 4
    # encl_entry adds the TCS offset to the first stack's top.
    assert image.symbol("encl_stack_tcs1_top") == st1 + PAGE
    assert st2 == st1 + PAGE and image.symbol("encl_stack_tcs2_top") == st2 + PAGE


def test_entry_symbols_in_text(image: EnclaveImage) -> None:
    text = image.segments[1]
    for name in ("encl_entry", "encl_dyn_entry", "encl_body"):
        assert text.offset <= image.symbol(name) < text.offset + text.size
    assert image.symbol("encl_entry") != image.symbol("encl_dyn_entry")


# --- no VEX / AVX ----------------------------------------------------------------

_LEGACY_PREFIXES = frozenset({0x66, 0x67, 0xF0, 0xF2, 0xF3, 0x2E, 0x36, 0x3E, 0x26, 0x64, 0x65})


def _is_vex_like(code: bytes) -> bool:
    i = 0
    while i < len(code) and code[i] in _LEGACY_PREFIXES:
        i += 1
    if i >= len(code):
        return False
    op = code[i]
    if op in (0xC4, 0xC5, 0x62):  # VEX3, VEX2, EVEX (LES/LDS/BOUND are invalid in 64-bit)
        return True
    # XOP: 8F with map_select >= 8 (8F /0 with a small map field is POP r/m).
    return op == 0x8F and i + 1 < len(code) and (code[i + 1] & 0x1F) >= 8


def test_no_vex_instructions_capstone(elf_path: Path) -> None:
    addr, code = _text_section(elf_path)
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    decoded = 0
    enclu = 0
    for insn in md.disasm(code, addr):
        raw = bytes(insn.bytes)
        decoded += len(raw)
        text = f"{insn.mnemonic} {insn.op_str}"
        assert not _is_vex_like(raw), f"VEX/EVEX instruction at {insn.address:#x}: {text}"
        assert "ymm" not in insn.op_str and "zmm" not in insn.op_str, text
        enclu += raw == b"\x0f\x01\xd7"
    # The sweep must cover the whole section, or something went undecoded.
    assert decoded == len(code)
    assert enclu >= 3  # EEXIT, EACCEPT, EMODPE


def test_no_vex_instructions_objdump(elf_path: Path) -> None:
    objdump = shutil.which("objdump")
    assert objdump is not None, "objdump (binutils) is needed alongside gcc"
    out = subprocess.run(
        [objdump, "-d", "-j", ".text", str(elf_path)], capture_output=True, text=True, check=True
    ).stdout
    assert "encl_entry" in out
    assert "%ymm" not in out and "%zmm" not in out
    mnemonics = re.findall(r"^\s*[0-9a-f]+:\s+(?:[0-9a-f]{2} )+\s*(\S+)", out, re.M)
    assert mnemonics
    bad = [m for m in mnemonics if m.startswith("v") and m not in ("verr", "verw")]
    assert not bad, bad


# --- protocol ----------------------------------------------------------------------


def test_protocol_matches_enclave_source() -> None:
    src = (Path(protocol.__file__).parent / "encl.c").read_text()
    ops = {m[0]: int(m[1]) for m in re.findall(r"(ENCL_OP_[A-Z_]+) = (\d+)", src)}
    assert ops == {name: getattr(protocol, name) for name in ops}
    assert ops["ENCL_OP_MAX"] == 8 and len(ops) == 9
    sizes = {
        protocol.encl_op_header: 8,
        protocol.encl_op_put_to_buf: 16,
        protocol.encl_op_get_from_buf: 16,
        protocol.encl_op_put_to_addr: 24,
        protocol.encl_op_get_from_addr: 24,
        protocol.encl_op_eaccept: 32,
        protocol.encl_op_emodpe: 24,
        protocol.encl_op_init_tcs_page: 32,
    }
    for cls, size in sizes.items():
        assert ctypes.sizeof(cls) == size, cls.__name__
    assert protocol.encl_op_eaccept.ret.offset == 24
    assert protocol.encl_op_put_to_addr.addr.offset == 16


# --- loader rejects bad input ----------------------------------------------------


def _patched(elf_path: Path, tmp_path: Path, edits: dict[int, bytes]) -> Path:
    blob = bytearray(elf_path.read_bytes())
    for off, val in edits.items():
        blob[off : off + len(val)] = val
    out = tmp_path / "patched.elf"
    out.write_bytes(bytes(blob))
    return out


def _phdr_flags_offset(elf_path: Path, index: int) -> int:
    with elf_path.open("rb") as f:
        elf = ELFFile(f)
        return int(elf["e_phoff"]) + index * int(elf["e_phentsize"]) + 4


def test_loader_rejects_non_elf(tmp_path: Path) -> None:
    bad = tmp_path / "x.elf"
    bad.write_bytes(b"this is not an ELF file\n")
    with pytest.raises(EnclaveFormatError, match="not a valid ELF"):
        load_segments(bad)


def test_loader_rejects_truncated(elf_path: Path, tmp_path: Path) -> None:
    bad = tmp_path / "x.elf"
    bad.write_bytes(elf_path.read_bytes()[:80])
    with pytest.raises(EnclaveFormatError):
        load_segments(bad)


def test_loader_rejects_elf32(tmp_path: Path) -> None:
    ident = b"\x7fELF" + bytes([1, 1, 1]) + bytes(9)
    hdr = ident + struct.pack("<HHIIIIIHHHHHH", 2, 3, 1, 0, 0, 0, 0, 52, 32, 0, 40, 0, 0)
    bad = tmp_path / "x.elf"
    bad.write_bytes(hdr)
    with pytest.raises(EnclaveFormatError, match="64-bit"):
        load_segments(bad)


def test_loader_rejects_wrong_machine(elf_path: Path, tmp_path: Path) -> None:
    bad = _patched(elf_path, tmp_path, {18: struct.pack("<H", 183)})  # EM_AARCH64
    with pytest.raises(EnclaveFormatError, match="EM_X86_64"):
        load_segments(bad)


def test_loader_rejects_bad_tcs_flags(elf_path: Path, tmp_path: Path) -> None:
    off = _phdr_flags_offset(elf_path, 0)
    bad = _patched(elf_path, tmp_path, {off: struct.pack("<I", PF_R | PF_W | PF_X)})
    with pytest.raises(EnclaveFormatError, match="TCS has invalid segment flags"):
        load_segments(bad)


def test_loader_rejects_flags_outside_rwx(elf_path: Path, tmp_path: Path) -> None:
    off = _phdr_flags_offset(elf_path, 2)
    bad = _patched(elf_path, tmp_path, {off: struct.pack("<I", PF_R | PF_W | 0x10)})
    with pytest.raises(EnclaveFormatError, match="outside"):
        load_segments(bad)


def test_loader_heap_size_and_missing_symbol(elf_path: Path) -> None:
    with pytest.raises(ValueError, match="heap_size"):
        load_segments(elf_path, heap_size=100)
    img = load_segments(elf_path, heap_size=3 * PAGE)
    assert img.segments[-1].size == 3 * PAGE and not img.segments[-1].measure
    with pytest.raises(KeyError):
        img.symbol("no_such_symbol")
