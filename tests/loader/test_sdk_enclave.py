"""Intel SGX SDK enclaves: parsing, MRENCLAVE as the SDK loader computes it, EINIT in the emulator.

Vector: Intel's signed TD Quoting Enclave (../shared/vectors/intel, BSD-3-Clause), whose
MRENCLAVE/MRSIGNER the vectors README gives.
"""

from __future__ import annotations

import errno
import struct

import pytest

from sgxemu import Machine
from sgxemu.arch.constants import PageType, SgxError
from sgxemu.hw.secs import SecsState
from sgxemu.linux.process import Process
from sgxemu.loader.errors import (
    EnclaveFormatError,
    InvalidMetadataError,
    NotAnEnclaveError,
    TruncatedFileError,
    UnknownMetadataVersionError,
    UnsignedEnclaveError,
)
from sgxemu.loader.linux_load import load_sdk
from sgxemu.loader.sdk import SdkEnclave, parse_sdk_enclave, si_flags_of
from sgxemu.loader.sdk_metadata import PF_R, PF_W, PF_X
from testkeys import VECTORS, needs_vectors

TDQE_PATH = VECTORS / "intel" / "libsgx_tdqe.signed.so"
TDQE_MRENCLAVE = "86fc4e0ec2c5ddcebac97062c0a0142a97c18a7a755147bcbc3fe17d6529781d"
TDQE_MRSIGNER = "dc9e2a7c6f948f17474e34a7fc43ed030f7c1563f1babddf6340c82e0e54a8c5"
MD_OFFSET = 0x123A19  # the metadata record in the file: unaligned (note header + 13-byte name)
MD_SIZE = 0x1028
TEXT_BYTE = 0x5000  # a byte of .text, inside the second PT_LOAD

pytestmark = needs_vectors


@pytest.fixture(scope="module")
def tdqe_bytes() -> bytes:
    return TDQE_PATH.read_bytes()


@pytest.fixture(scope="module")
def tdqe(tdqe_bytes: bytes) -> SdkEnclave:
    return parse_sdk_enclave(tdqe_bytes, str(TDQE_PATH))


def initialized_secs(machine: Machine) -> SecsState:
    """The SECS of the one enclave in the EPC (after EINIT)."""
    (entry,) = [e for e in machine.cpu.epcm.values() if e.pt == PageType.PT_SECS]
    assert entry.secs is not None
    return entry.secs


def patched(data: bytes, offset: int, new: bytes) -> bytes:
    return data[:offset] + new + data[offset + len(new) :]


def with_version(data: bytes, record: int, major: int, minor: int) -> bytes:
    return patched(data, record + 8, struct.pack("<Q", major << 32 | minor))


# -- measurement ----------------------------------------------------------------------------------
def test_tdqe_measures_to_the_readme_value(tdqe: SdkEnclave) -> None:
    m = tdqe.measure()
    assert m.mrenclave.hex() == TDQE_MRENCLAVE
    assert (m.eadd, m.eextend) == (417, 6096)
    assert m.update_counter == 1 + 417 + 5 * 6096


def test_embedded_sigstruct_verifies(tdqe: SdkEnclave) -> None:
    report = tdqe.check()
    assert report.format_ok and report.signature_ok and report.measurement_ok
    assert report.mrsigner.hex() == TDQE_MRSIGNER
    assert (report.fields.isvprodid, report.fields.isvsvn) == (2, 1)
    assert report.fields.vendor == 0x8086


def test_metadata_found_at_an_unaligned_offset(tdqe: SdkEnclave) -> None:
    assert tdqe.versions == ["1.4"]
    assert tdqe.metadata.file_offset == MD_OFFSET and MD_OFFSET % 4 == 1
    assert tdqe.metadata.enclave_size == 0x200000 and tdqe.metadata.ssa_frame_size == 1


def test_elf_flags_become_secinfo_rights(tdqe: SdkEnclave) -> None:
    assert si_flags_of(PF_R) == 0x201
    assert si_flags_of(PF_R | PF_X) == 0x205
    assert si_flags_of(PF_R | PF_W) == 0x203
    assert si_flags_of(PF_R | PF_W | PF_X) == 0x207
    by_offset = {p.offset: p for p in tdqe.plan.pages}
    assert by_offset[0x0].secinfo_flags == 0x201  # first LOAD: R
    assert by_offset[0x3000].secinfo_flags == 0x205  # .text: R+X
    assert by_offset[0x120000].secinfo_flags == 0x203  # data (unaligned p_vaddr 0x120830)
    assert by_offset[0x135000].secinfo_flags == 0x203  # .bss, zero and measured
    assert by_offset[0x135000].fully_measured and not any(by_offset[0x135000].data)


def test_unaligned_segment_start_is_a_partial_page(tdqe: SdkEnclave, tdqe_bytes: bytes) -> None:
    page = next(p for p in list(tdqe.plan.pages) if p.offset == 0x120000)
    assert not any(page.data[:0x830])
    assert page.data[0x830:] == tdqe_bytes[0x11F830:0x120000]


def test_layout_table_heap_stack_tcs_guards(tdqe: SdkEnclave) -> None:
    by_offset = {p.offset: p for p in tdqe.plan.pages}
    heap = by_offset[0x136000]  # HEAP_MIN: EADD only
    assert heap.secinfo_flags == 0x203 and not heap.measured
    assert not by_offset[0x137000].measured  # HEAP_INIT (EADD | POST_REMOVE)
    stack = by_offset[0x16A000]  # STACK_MIN: filled with 0xCCCCCCCC, measured
    assert stack.fully_measured and stack.data == b"\xcc" * 4096
    assert 0x15A000 not in by_offset  # guard pages are never added
    tcs = by_offset[0x1BE000]
    assert tcs.secinfo_flags == 0x100 and tcs.fully_measured
    ossa, cssa, nssa, oentry = struct.unpack_from("<QIIQ", tcs.data, 16)
    ofs, ogs = struct.unpack_from("<QQ", tcs.data, 48)
    assert (ossa, nssa) == (0x1BE000 + 0x1000, 2)  # template offsets rebased by the TCS rva
    assert ofs == ogs == 0x1BE000 + 0x13000
    assert oentry == 0x10FB89  # not rebased
    assert by_offset[0x1BF000].fully_measured and by_offset[0x1C0000].fully_measured  # SSA
    assert by_offset[0x1D1000].fully_measured  # TD
    assert max(by_offset) == 0x1D1000  # the thread group has load_times 0


def test_patch_table_is_applied_before_measuring(tdqe_bytes: bytes, tdqe: SdkEnclave) -> None:
    # The file on disk is not pre-patched: g_global_data (at its file offset) differs.
    patch = tdqe.metadata.patches()[0]
    src = tdqe.metadata.raw[patch.src : patch.src + patch.size]
    assert tdqe_bytes[patch.dst : patch.dst + patch.size] != src
    page = next(p for p in list(tdqe.plan.pages) if p.offset == patch.dst & ~0xFFF)
    assert src[: 0x1000 - (patch.dst & 0xFFF)] in page.data
    # Pre-patching the file changes nothing (the patches are idempotent) ...
    pre = patched(tdqe_bytes, patch.dst, src)
    assert parse_sdk_enclave(pre).measure().mrenclave.hex() == TDQE_MRENCLAVE
    # ... but an empty patch table measures the unpatched image: a different MRENCLAVE.
    no_patches = patched(tdqe_bytes, MD_OFFSET + 1872 + 4, struct.pack("<I", 0))
    assert parse_sdk_enclave(no_patches).measure().mrenclave.hex() != TDQE_MRENCLAVE


def test_several_metadata_copies(tdqe_bytes: bytes) -> None:
    record = tdqe_bytes[MD_OFFSET : MD_OFFSET + MD_SIZE]
    # sgx_sign 2.x writes 2.4, then compat copies; every copy measures the same.
    two = patched(tdqe_bytes, MD_OFFSET, record + record)
    two = with_version(two, MD_OFFSET, 2, 4)
    enc = parse_sdk_enclave(two)
    assert enc.versions == ["2.4", "1.4"] and enc.metadata.version_str == "2.4"
    assert enc.sigstructs_agree
    assert enc.measure().mrenclave.hex() == TDQE_MRENCLAVE
    # A first copy of a version this loader does not know is skipped for the next one.
    unknown_first = with_version(patched(tdqe_bytes, MD_OFFSET, record + record), MD_OFFSET, 5, 0)
    enc = parse_sdk_enclave(unknown_first)
    assert enc.versions == ["5.0", "1.4"] and enc.metadata.version_str == "1.4"
    assert enc.measure().mrenclave.hex() == TDQE_MRENCLAVE


@pytest.mark.parametrize("version", [(1, 5), (2, 1), (2, 2), (2, 3), (2, 4), (3, 3)])
def test_metadata_versions_in_the_wild_measure_alike(tdqe_bytes: bytes, version: tuple[int, int]) -> None:
    # The same tables under another version number give the same sequence (only 1.3 and the
    # ELRANGE forms 1x.y change it).
    enc = parse_sdk_enclave(with_version(tdqe_bytes, MD_OFFSET, *version))
    assert enc.metadata.version_str == f"{version[0]}.{version[1]}"
    assert enc.measure().mrenclave.hex() == TDQE_MRENCLAVE


def test_metadata_1_3_adds_the_padding_page(tdqe_bytes: bytes) -> None:
    # SDK 1.5 loader quirk: the last LOAD (0x120830 + 0x15050) ends at 0x135880, and
    # RU(end) = 0x136000 < RU(RU(memsz) + vaddr) = 0x137000, so one more zero page with its
    # flags is EADDed + EEXTENDed at 0x136000 after the segments.
    enc = parse_sdk_enclave(with_version(tdqe_bytes, MD_OFFSET, 1, 3))
    m = enc.measure()
    assert (m.eadd, m.eextend) == (418, 6112)
    assert m.mrenclave.hex() != TDQE_MRENCLAVE
    extra = list(enc.plan.pages)[309]
    assert (extra.offset, extra.secinfo_flags, extra.fully_measured) == (0x136000, 0x203, True)
    assert not any(extra.data)


def test_one_byte_change_in_a_measured_page_is_a_mismatch(tdqe_bytes: bytes) -> None:
    bad = patched(tdqe_bytes, TEXT_BYTE, bytes([tdqe_bytes[TEXT_BYTE] ^ 1]))
    report = parse_sdk_enclave(bad).check()
    assert report.signature_ok and report.measurement_ok is False
    assert "measurement mismatch" in report.problems()[0]


def test_change_outside_the_measured_image_is_not(tdqe_bytes: bytes) -> None:
    spare = MD_OFFSET + 0x3000  # unused space of the metadata block, not in any PT_LOAD
    enc = parse_sdk_enclave(patched(tdqe_bytes, spare, b"\x55"))
    assert enc.check().ok


# -- bad input ------------------------------------------------------------------------------------
def test_not_an_elf() -> None:
    with pytest.raises(NotAnEnclaveError, match="not an enclave"):
        parse_sdk_enclave(b"hello, world\n" * 10)


def test_elf_without_sgx_metadata_is_not_an_enclave(tdqe_bytes: bytes) -> None:
    at = tdqe_bytes.index(b".note.sgxmeta\0")
    renamed = patched(tdqe_bytes, at, b".note.sgxmetx")
    with pytest.raises(NotAnEnclaveError, match="no .note.sgxmeta section"):
        parse_sdk_enclave(renamed)


def test_unsigned_enclave(tdqe_bytes: bytes) -> None:
    zeroed = patched(tdqe_bytes, MD_OFFSET, bytes(0x5000))
    with pytest.raises(UnsignedEnclaveError, match="unsigned enclave"):
        parse_sdk_enclave(zeroed)


def test_unknown_metadata_version(tdqe_bytes: bytes) -> None:
    with pytest.raises(UnknownMetadataVersionError, match=r"unknown metadata version 4\.0"):
        parse_sdk_enclave(with_version(tdqe_bytes, MD_OFFSET, 4, 0))


@pytest.mark.parametrize("cut", [40, 0x800, 0x90000, -1])
def test_truncated_file(tdqe_bytes: bytes, cut: int) -> None:
    with pytest.raises(TruncatedFileError, match="truncated file"):
        parse_sdk_enclave(tdqe_bytes[:cut])  # -1: one byte short


def test_bad_metadata_is_refused(tdqe_bytes: bytes) -> None:
    bad_ssa = patched(tdqe_bytes, MD_OFFSET + 24, struct.pack("<I", 9))
    with pytest.raises(InvalidMetadataError, match="ssa_frame_size"):
        parse_sdk_enclave(bad_ssa)


def test_errors_are_one_line(tdqe_bytes: bytes) -> None:
    for data in (b"", tdqe_bytes[:100], with_version(tdqe_bytes, MD_OFFSET, 7, 1)):
        with pytest.raises(EnclaveFormatError) as info:
            parse_sdk_enclave(data)
        assert "\n" not in str(info.value) and str(info.value)


# -- loading through the Linux ABI ----------------------------------------------------------------
def test_einit_accepts_tdqe(machine: Machine, proc: Process, tdqe: SdkEnclave) -> None:
    encl = load_sdk(proc, tdqe)
    assert machine.last_einit_error == 0
    secs = initialized_secs(machine)  # what EINIT committed
    assert bytes(secs.mrenclave).hex() == TDQE_MRENCLAVE
    assert bytes(secs.mrsigner).hex() == TDQE_MRSIGNER
    assert (secs.isvprodid, secs.isvsvn) == (2, 1)
    # PROVISIONKEY (bit 4) is in its SIGSTRUCT and mask: the loader opened /dev/sgx_provision.
    assert encl.attributes == 0x14 and encl.xfrm == 0x3
    assert len(machine.cpu.epcm) >= 417 + 1  # the pages, the SECS (and VA pages)
    encl.delete()


def test_einit_refuses_a_one_byte_change(machine: Machine, proc: Process, tdqe_bytes: bytes) -> None:
    bad = parse_sdk_enclave(patched(tdqe_bytes, TEXT_BYTE, bytes([tdqe_bytes[TEXT_BYTE] ^ 1])))
    with pytest.raises(OSError) as info:
        load_sdk(proc, bad)
    assert info.value.errno == errno.EPERM
    assert machine.last_einit_error == SgxError.SGX_INVALID_MEASUREMENT
