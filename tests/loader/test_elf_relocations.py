"""Relocations of static-PIE enclave ELFs: found, checked, applied for the base (or left to the
enclave), measured, signed, loaded through the Linux model and run on the native engine.

The enclave is a variant of the project's test enclave (`reloc_enclave/`: a C body that calls
through a table of function pointers and reaches its buffer through a pointer variable, with
the project's own encl_entry.S), built with gcc at test time.
"""

from __future__ import annotations

import errno
import json
import struct
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from cryptography.hazmat.primitives.asymmetric import rsa
from elftools.elf.elffile import ELFFile
from elftools.elf.enums import ENUM_RELOC_TYPE_x64

from sgxemu import Machine, uapi
from sgxemu.arch.structs import Sigstruct
from sgxemu.buildcache import BuildError, cached_build, content_digest
from sgxemu.cli.main import _register_commands, cli
from sgxemu.linux.enclcall import EnclCaller
from sgxemu.linux.load import LoadedEnclave, encl_build, measure, sign
from sgxemu.loader.selftest_layout import (
    BaseRequiredError,
    EnclaveFormatError,
    EnclaveImage,
    RelocationError,
    RelocationPolicy,
    load_segments,
)
from sgxemu.sign import generate_key
from sgxemu.testenclave import protocol as P
from sgxemu.testenclave.build import ENCLAVE_CFLAGS

PAGE = 4096
R_X86_64_RELATIVE = ENUM_RELOC_TYPE_x64["R_X86_64_RELATIVE"]
SOURCES = Path(__file__).parent / "reloc_enclave"
ELF_NAME = "reloc_encl.elf"
PT_NULL = 0
PT_DYNAMIC = 2
ENCLAVE = RelocationPolicy.ENCLAVE


def _flags(self_relocate: bool) -> list[str]:
    """The test enclave's flags with this variant's linker script."""
    link = [f for f in ENCLAVE_CFLAGS if f.startswith("-Wl,-T,encl.lds,")]
    assert len(link) == 1, ENCLAVE_CFLAGS
    flags = [f for f in ENCLAVE_CFLAGS if f is not link[0]]
    flags.append(link[0].replace("encl.lds", "encl_reloc.lds"))
    return flags + (["-DENCL_SELF_RELOCATE"] if self_relocate else [])


def build_reloc_enclave(out_dir: Path, *, self_relocate: bool = False) -> Path:
    sources = {p.name: p.read_bytes() for p in SOURCES.iterdir() if p.suffix in (".c", ".lds")}
    sources["encl_entry.S"] = resources.files("sgxemu.testenclave").joinpath("encl_entry.S").read_bytes()
    flags = _flags(self_relocate)
    return cached_build(
        what="the relocating test enclave",
        cc="gcc",
        sources=sources,
        digest=content_digest(("gcc", *flags), sources),
        out_dir=out_dir,
        product=ELF_NAME,
        argv=lambda cc: [cc, *flags, "-o", ELF_NAME, "encl_entry.S", "encl_reloc.c"],
        error=BuildError,
    )


@pytest.fixture(scope="module")
def elf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_reloc_enclave(tmp_path_factory.mktemp("reloc-encl"))


@pytest.fixture(scope="module")
def self_relocating_elf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_reloc_enclave(tmp_path_factory.mktemp("reloc-encl-self"), self_relocate=True)


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return generate_key()


@pytest.fixture
def machine() -> Iterator[Machine]:
    m = Machine(epc_size=4 << 20, engine="native")
    yield m
    for proc in list(m.processes.values()):
        proc.exit()
    assert not m.cpu.epcm, "EPC not empty after every process exited"
    m.close()


# -- helpers over the ELF file ----------------------------------------------------------------------
def _rela_entries(path: Path) -> list[tuple[int, int, int, int]]:
    """(file offset of the entry, r_offset, type, addend) of every .rela.dyn entry."""
    with path.open("rb") as f:
        sec = ELFFile(f).get_section_by_name(".rela.dyn")
        assert sec is not None
        base = int(sec["sh_offset"])
        return [
            (base + i * 24, int(r["r_offset"]), int(r["r_info_type"]), int(r["r_addend"]))
            for i, r in enumerate(sec.iter_relocations())
        ]


def _patched(src: Path, dst: Path, edits: dict[int, bytes]) -> Path:
    blob = bytearray(src.read_bytes())
    for off, value in edits.items():
        blob[off : off + len(value)] = value
    dst.write_bytes(bytes(blob))
    return dst


def _phdr_type_offset(path: Path, p_type: str) -> int:
    with path.open("rb") as f:
        elf = ELFFile(f)
        for i, ph in enumerate(elf.iter_segments()):
            if ph["p_type"] == p_type:
                return int(elf["e_phoff"]) + i * int(elf["e_phentsize"])
    raise AssertionError(f"no {p_type}")


def _without_pt_dynamic(elf: Path, dst: Path) -> Path:
    return _patched(elf, dst, {_phdr_type_offset(elf, "PT_DYNAMIC"): struct.pack("<I", PT_NULL)})


def _without_sections(elf: Path, dst: Path) -> Path:
    """Section headers gone (e_shoff, e_shnum, e_shstrndx = 0): only PT_DYNAMIC is left."""
    return _patched(elf, dst, {0x28: struct.pack("<Q", 0), 0x3C: struct.pack("<HH", 0, 0)})


def _einit_mrenclave(encl: LoadedEnclave) -> bytes:
    page = encl.proc.fds[encl.fd].private_data.secs.epc_page
    assert page is not None
    secs = encl.proc.machine.cpu.secs_of(page.index)
    assert secs is not None
    return bytes(secs.mrenclave)


# -- the file and its table -------------------------------------------------------------------------
def test_linker_emits_relative_relocations(elf: Path) -> None:
    entries = _rela_entries(elf)
    assert len(entries) >= 6  # five table slots and the buffer pointer
    assert {t for _, _, t, _ in entries} == {R_X86_64_RELATIVE}
    with elf.open("rb") as f:
        e = ELFFile(f)
        assert e["e_type"] == "ET_DYN"
        assert any(ph["p_type"] == "PT_DYNAMIC" for ph in e.iter_segments())
        symtab = e.get_section_by_name(".symtab")
        table = symtab.get_symbol_by_name("encl_op_table")[0]  # type: ignore[union-attr]
    slots = {r_offset for _, r_offset, _, _ in entries}
    assert {table["st_value"] + 8 * i for i in range(5)} <= slots


def test_relocations_placed_at_enclave_offsets(elf: Path) -> None:
    image = load_segments(elf)
    entries = _rela_entries(elf)
    assert [(r.offset, r.target) for r in image.relocations] == [(o, a) for _, o, _, a in entries]
    assert all(image.segments[r.segment].prot == 0x3 for r in image.relocations)  # .data.rel.ro in RW
    ptr = image.symbol("encl_buffer_ptr")
    assert any(r.offset == ptr and r.target == image.symbol("encl_buffer") for r in image.relocations)


def test_table_found_through_pt_dynamic_or_sections_alike(elf: Path, tmp_path: Path) -> None:
    both = load_segments(elf).relocations
    sections_only = load_segments(_without_pt_dynamic(elf, tmp_path / "nodyn.elf")).relocations
    dynamic_only = load_segments(_without_sections(elf, tmp_path / "nosec.elf")).relocations
    assert both == sections_only == dynamic_only and both


def test_pt_dynamic_and_sections_must_agree(elf: Path, tmp_path: Path) -> None:
    with elf.open("rb") as f:
        dyn = ELFFile(f).get_section_by_name(".dynamic")
        assert dyn is not None
        tags = [(t.entry.d_tag, int(t.entry.d_val)) for t in dyn.iter_tags()]
        index = [tag for tag, _ in tags].index("DT_RELASZ")
        off = int(dyn["sh_offset"]) + 16 * index + 8
        size = tags[index][1]
    bad = _patched(elf, tmp_path / "short.elf", {off: struct.pack("<Q", size - 24)})
    with pytest.raises(RelocationError, match="disagree"):
        load_segments(bad)


# -- refusals ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("r_type", "name"),
    [(6, "R_X86_64_GLOB_DAT"), (7, "R_X86_64_JUMP_SLOT"), (1, "R_X86_64_64"),
     (18, "R_X86_64_TPOFF64"), (37, "R_X86_64_IRELATIVE")],
)
def test_unsupported_type_is_refused(elf: Path, tmp_path: Path, r_type: int, name: str) -> None:
    entry, r_offset, _, _ = _rela_entries(elf)[1]
    sym = 1 if r_type in (1, 6, 7) else 0
    bad = _patched(elf, tmp_path / "bad.elf", {entry + 8: struct.pack("<Q", sym << 32 | r_type)})
    for policy in RelocationPolicy:
        with pytest.raises(EnclaveFormatError, match=f"{name} at {r_offset:#x}") as info:
            load_segments(bad, relocation_policy=policy)
        assert "-static-pie" in str(info.value) and "\n" not in str(info.value)


def test_relocation_outside_loaded_file_bytes_is_refused(elf: Path, tmp_path: Path) -> None:
    entry = _rela_entries(elf)[0][0]
    beyond = load_segments(elf).src_size + 0x10000
    bad = _patched(elf, tmp_path / "far.elf", {entry: struct.pack("<Q", beyond)})
    with pytest.raises(RelocationError, match=f"RELATIVE at {beyond:#x} patches bytes outside"):
        load_segments(bad)
    tcs = _patched(elf, tmp_path / "tcs.elf", {entry: struct.pack("<Q", 0x20)})
    with pytest.raises(RelocationError, match="TCS segment"):
        load_segments(tcs)


def test_self_relocation_needs_a_readable_table(elf: Path, tmp_path: Path) -> None:
    """Found through the sections only, with .rela.dyn's address moved out of every PT_LOAD:
    the loader can still read it from the file, the enclave could not."""
    nodyn = _without_pt_dynamic(elf, tmp_path / "nodyn.elf")
    with nodyn.open("rb") as f:
        e = ELFFile(f)
        index = next(i for i, s in enumerate(e.iter_sections()) if s.name == ".rela.dyn")
        sh_addr_at = int(e["e_shoff"]) + index * int(e["e_shentsize"]) + 16
    bad = _patched(nodyn, tmp_path / "unloaded.elf", {sh_addr_at: struct.pack("<Q", 0x400000)})
    assert load_segments(bad).relocations == load_segments(elf).relocations
    with pytest.raises(RelocationError, match="cannot relocate itself"):
        load_segments(bad, relocation_policy=ENCLAVE)
    assert load_segments(elf, relocation_policy=ENCLAVE).relocations  # the real layout is fine


def test_no_mrenclave_without_a_base(elf: Path, key: rsa.RSAPrivateKey) -> None:
    image = load_segments(elf)
    assert image.needs_base
    with pytest.raises(BaseRequiredError, match="depend on the enclave base"):
        measure(image)
    with pytest.raises(BaseRequiredError):
        sign(image, key)
    with pytest.raises(ValueError, match="not a multiple of the ELRANGE size"):
        image.at_base(image.encl_size // 2)


# -- measurement ------------------------------------------------------------------------------------
def test_mrenclave_depends_on_the_base_only_when_the_loader_relocates(elf: Path) -> None:
    image = load_segments(elf)
    size = image.encl_size
    at_a, at_b = image.at_base(0x10 * size), image.at_base(0x20 * size)
    assert measure(at_a) != measure(at_b)
    assert measure(at_a) == measure(load_segments(elf, base=0x10 * size))
    assert measure(at_b.at_base(0x10 * size)) == measure(at_a)  # re-applying overwrites all 8 bytes
    ptr = image.symbol("encl_buffer_ptr")
    data = at_a.segments[2]
    value = struct.unpack_from("<Q", data.data, ptr - data.offset)[0]
    assert value == 0x10 * size + image.symbol("encl_buffer")
    own = load_segments(elf, relocation_policy=ENCLAVE)
    assert own.at_base(0x10 * size) is own and not own.needs_base
    assert [s.data for s in own.segments] == [s.data for s in image.segments]  # pages as in the file


def test_test_enclave_without_relocations_is_unchanged(elf_path: Path) -> None:
    """The project's test enclave: no relocations, pages exactly the file's (load.c's rule), the
    same image under either policy and at every base."""
    image = load_segments(elf_path)
    assert image.relocations == () and not image.needs_base
    blob = elf_path.read_bytes()
    with elf_path.open("rb") as f:
        loads = [ph for ph in ELFFile(f).iter_segments() if ph["p_type"] == "PT_LOAD"]
    src = int(loads[0]["p_offset"]) & ~(PAGE - 1)
    for seg, ph in zip(image.segments, loads, strict=False):
        start = int(ph["p_offset"]) & ~(PAGE - 1)
        assert seg.data == blob[start : start + seg.size].ljust(seg.size, b"\0")
        assert seg.offset == start - src
    assert image.at_base(image.encl_size * 7) is image
    other = load_segments(elf_path, relocation_policy=ENCLAVE)
    assert [s.data for s in other.segments] == [s.data for s in image.segments]
    assert measure(other) == measure(image)


# -- through the Linux model, on the native engine --------------------------------------------------
def test_loader_relocates_for_the_real_base(elf: Path, key: rsa.RSAPrivateKey, machine: Machine) -> None:
    image = load_segments(elf)
    proc = machine.spawn()
    encl = encl_build(proc, image, key)
    assert encl.image.relocated_for == encl.base
    caller = EnclCaller(proc, encl)
    assert caller.put_buf(P.MAGIC) == 0 and caller.run.function == uapi.EEXIT
    assert caller.get_buf() == P.MAGIC  # both calls went through the function-pointer table
    assert caller.get(encl.base + image.symbol("encl_buffer_ptr")) == encl.base + image.symbol("encl_buffer")
    offline = measure(load_segments(elf).at_base(encl.base))
    assert _einit_mrenclave(encl) == offline == Sigstruct.unpack(encl.sigstruct).enclavehash
    assert measure(image.at_base(encl.base + 2 * encl.size)) != offline


def test_unrelocated_table_jumps_outside_the_enclave(elf: Path, key: rsa.RSAPrivateKey, machine: Machine) -> None:
    """The same file with the relocations left to an enclave that does not apply them."""
    image = load_segments(elf, relocation_policy=ENCLAVE)
    encl = encl_build(machine.spawn(), image, key)
    caller = EnclCaller(encl.proc, encl)
    caller.call(P.encl_op_get_from_buf(P.encl_op_header(P.ENCL_OP_GET_FROM_BUFFER), 0))
    # The table holds the bare offset of do_get_from_buffer: fetching there is outside ELRANGE,
    # #GP(0) (SDM 38.3), reported by the vDSO after the AEX.
    assert caller.exc() == (13, 0, 0) and caller.run.function == uapi.ERESUME


def test_enclave_relocates_itself(self_relocating_elf: Path, key: rsa.RSAPrivateKey, machine: Machine) -> None:
    image = load_segments(self_relocating_elf, relocation_policy=ENCLAVE)
    offline = measure(image)  # no base needed: the pages are the file's
    encl = encl_build(machine.spawn(), image, key)
    caller = EnclCaller(encl.proc, encl)
    assert caller.put_buf(P.MAGIC2) == 0 and caller.get_buf() == P.MAGIC2
    assert caller.get(encl.base + image.symbol("encl_buffer_ptr")) == encl.base + image.symbol("encl_buffer")
    assert _einit_mrenclave(encl) == offline


# -- CLI --------------------------------------------------------------------------------------------
def _cli(*args: str | Path) -> Result:
    _register_commands()
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_cli_sign_needs_a_base(elf: Path, tmp_path: Path) -> None:
    key_file = tmp_path / "key.pem"
    assert _cli("sign", "--gen-key", key_file).exit_code == 0
    r = _cli("sign", elf, "--key", key_file, "--out", tmp_path / "s.sig")
    assert r.exit_code == 1 and r.stdout == "" and not (tmp_path / "s.sig").exists()
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "--base" in lines[0] and "depend on the enclave base" in lines[0], r.stderr
    image: EnclaveImage = load_segments(elf)
    base = 0x40 * image.encl_size
    r = _cli("sign", elf, "--key", key_file, "--out", tmp_path / "s.sig", "--base", hex(base), "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["mrenclave"] == measure(image.at_base(base)).hex() and d["relocated_for"] == base
    assert (tmp_path / "s.sig").read_bytes()[960:992].hex() == d["mrenclave"]
    r = _cli("sign", elf, "--key", key_file, "--out", tmp_path / "e.sig", "--relocations", "enclave", "--json")
    assert json.loads(r.stdout)["mrenclave"] == measure(load_segments(elf, relocation_policy=ENCLAVE)).hex()
    r = _cli("sign", elf, "--key", key_file, "--base", hex(base + PAGE))
    assert r.exit_code == 1 and "not a multiple of the ELRANGE size" in r.stderr


def test_cli_run_relocates_and_signs_after(elf: Path) -> None:
    r = _cli("run", elf, "--op", f"put:{P.MAGIC:#x}", "--op", "get", "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["ops"][1]["value"] == P.MAGIC
    assert d["mrenclave"] == d["mrenclave_offline"] == measure(load_segments(elf).at_base(d["base"])).hex()


def test_encl_build_at_a_fixed_base(elf: Path, key: rsa.RSAPrivateKey, machine: Machine) -> None:
    """ELRANGE at a chosen base: an offline SIGSTRUCT for that base EINITs; a base already
    mapped gives EEXIST and a misaligned one is refused before any call."""
    image = load_segments(elf)
    base = 0x40 * image.encl_size
    proc = machine.spawn()
    offline_sig = sign(image.at_base(base), key)
    encl = encl_build(proc, image, sigstruct=offline_sig, base=base)
    assert encl.base == base and encl.image.relocated_for == base
    assert _einit_mrenclave(encl) == measure(image.at_base(base))
    caller = EnclCaller(proc, encl)
    assert caller.put_buf(P.MAGIC) == 0 and caller.get_buf() == P.MAGIC
    with pytest.raises(OSError) as exc:
        encl_build(proc, image, key, base=base)  # that range is the first enclave's
    assert exc.value.errno == errno.EEXIST
    fds_before = dict(proc.fds)
    with pytest.raises(ValueError, match="not a multiple of the enclave size"):
        encl_build(proc, image, key, base=base + PAGE)
    assert proc.fds == fds_before  # refused before anything was opened or mapped


def test_cli_sign_base_and_run_base_agree(elf: Path, tmp_path: Path) -> None:
    key_file = tmp_path / "key.pem"
    assert _cli("sign", "--gen-key", key_file).exit_code == 0
    base = 0x40 * load_segments(elf).encl_size
    signed = json.loads(_cli("sign", elf, "--key", key_file, "--out", tmp_path / "s.sig",
                             "--base", hex(base), "--json").stdout)  # fmt: skip
    r = _cli("run", elf, "--key", key_file, "--base", hex(base), "--op", "get", "--json")
    assert r.exit_code == 0, r.output
    ran = json.loads(r.stdout)
    assert ran["base"] == base and ran["mrenclave"] == signed["mrenclave"]
    r = _cli("run", elf, "--base", hex(base + PAGE), "--op", "get")
    assert r.exit_code != 0 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "not a multiple of the enclave size" in lines[0], r.stderr
