"""The ctypes mirror of the Linux SGX uapi matches the kernel ABI byte for byte."""

from __future__ import annotations

import ctypes

import pytest

from sgxemu import uapi as U
from sgxemu.arch import structs as S


@pytest.mark.parametrize(
    ("cls", "size"),
    [
        (U.sgx_enclave_create, 8),
        (U.sgx_enclave_add_pages, 48),
        (U.sgx_enclave_init, 8),
        (U.sgx_enclave_provision, 8),
        (U.sgx_enclave_restrict_permissions, 40),
        (U.sgx_enclave_modify_types, 40),
        (U.sgx_enclave_remove_pages, 24),
        (U.sgx_enclave_run, 256),
        (U.sgx_secs, 4096),
        (U.sgx_tcs, 4096),
        (U.sgx_pageinfo, 32),
        (U.sgx_secinfo, 64),
        (U.sgx_pcmd, 128),
        (U.sgx_sigstruct_header, 128),
        (U.sgx_sigstruct_body, 128),
        (U.sgx_sigstruct, 1808),
    ],
)
def test_sizes(cls: type[ctypes.Structure], size: int) -> None:
    assert ctypes.sizeof(cls) == size


def off(cls: type[ctypes.Structure], name: str) -> int:
    return int(getattr(cls, name).offset)


def test_enclave_run_layout() -> None:
    r = U.sgx_enclave_run
    assert off(r, "tcs") == 0
    assert off(r, "function") == 8
    assert off(r, "exception_vector") == 12
    assert off(r, "exception_error_code") == 14
    assert off(r, "exception_addr") == 16
    assert off(r, "user_handler") == 24
    assert off(r, "user_data") == 32
    assert off(r, "reserved") == 40
    assert r.reserved.size == 216


def test_ioctl_arg_layouts() -> None:
    names = ["src", "offset", "length", "secinfo", "flags", "count"]
    assert [off(U.sgx_enclave_add_pages, n) for n in names] == [0, 8, 16, 24, 32, 40]
    names = ["offset", "length", "permissions", "result", "count"]
    assert [off(U.sgx_enclave_restrict_permissions, n) for n in names] == [0, 8, 16, 24, 32]
    names = ["offset", "length", "page_type", "result", "count"]
    assert [off(U.sgx_enclave_modify_types, n) for n in names] == [0, 8, 16, 24, 32]
    names = ["offset", "length", "count"]
    assert [off(U.sgx_enclave_remove_pages, n) for n in names] == [0, 8, 16]
    assert off(U.sgx_enclave_init, "sigstruct") == 0
    assert off(U.sgx_enclave_provision, "fd") == 0


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SGX_IOC_ENCLAVE_CREATE", 0x4008A400),
        ("SGX_IOC_ENCLAVE_ADD_PAGES", 0xC030A401),
        ("SGX_IOC_ENCLAVE_INIT", 0x4008A402),
        ("SGX_IOC_ENCLAVE_PROVISION", 0x4008A403),
        ("SGX_IOC_VEPC_REMOVE_ALL", 0x0000A404),
        ("SGX_IOC_ENCLAVE_RESTRICT_PERMISSIONS", 0xC028A405),
        ("SGX_IOC_ENCLAVE_MODIFY_TYPES", 0xC028A406),
        ("SGX_IOC_ENCLAVE_REMOVE_PAGES", 0xC018A407),
    ],
)
def test_ioctl_numbers(name: str, value: int) -> None:
    assert getattr(U, name) == value


def test_constants() -> None:
    assert U.SGX_MAGIC == 0xA4
    assert U.SGX_PAGE_MEASURE == 1
    assert (U.EENTER, U.ERESUME, U.EEXIT) == (2, 3, 4)
    types = (
        U.SGX_PAGE_TYPE_SECS,
        U.SGX_PAGE_TYPE_TCS,
        U.SGX_PAGE_TYPE_REG,
        U.SGX_PAGE_TYPE_VA,
        U.SGX_PAGE_TYPE_TRIM,
    )
    assert types == (0, 1, 2, 3, 4)
    assert int(U.sgx_page_type.SGX_PAGE_TYPE_TRIM) == 4
    assert (U.SGX_SECINFO_R, U.SGX_SECINFO_W, U.SGX_SECINFO_X) == (1, 2, 4)
    assert U.SGX_SECINFO_REG == 0x200 and U.SGX_SECINFO_TCS == 0x100
    assert U.SGX_SECINFO_PERMISSION_MASK == 0x7
    assert U.SGX_SECINFO_PAGE_TYPE_MASK == 0xFF00
    assert U.SGX_SECINFO_RESERVED_MASK == 0xFFFF_FFFF_FFFF_00F8
    assert U.SGX_ATTR_DEBUG == 0x2 and U.SGX_ATTR_MODE64BIT == 0x4
    assert U.SGX_ATTR_PROVISIONKEY == 0x10 and U.SGX_ATTR_EINITTOKENKEY == 0x20
    assert U.SGX_ATTR_KSS == 0x80 and U.SGX_ATTR_ASYNC_EXIT_NOTIFY == 0x400
    assert U.SGX_ATTR_RESERVED_MASK == 0xFFFF_FFFF_FFFF_FB48
    assert U.SGX_ATTR_UNPRIV_MASK == 0x486
    assert U.SGX_ATTR_PRIV_MASK == 0x30
    # Reserved, unprivileged, privileged and INIT partition the 64 attribute bits.
    parts = [U.SGX_ATTR_RESERVED_MASK, U.SGX_ATTR_UNPRIV_MASK, U.SGX_ATTR_PRIV_MASK, 1]
    assert sum(parts) == (1 << 64) - 1
    assert U.SGX_MISC_EXINFO == 1
    assert U.SGX_SSA_GPRS_SIZE == 184 and U.SGX_SSA_MISC_EXINFO_SIZE == 16
    assert U.SGX_MODULUS_SIZE == 384 and U.SGX_LAUNCH_TOKEN_SIZE == 304


def test_enclave_run_bytes() -> None:
    run = U.sgx_enclave_run(tcs=0x7000, function=U.EENTER, exception_vector=14)
    run.exception_error_code = 0x8007
    raw = bytes(run)
    assert raw[0:8] == (0x7000).to_bytes(8, "little")
    assert raw[8:12] == (2).to_bytes(4, "little")
    assert raw[12:14] == (14).to_bytes(2, "little")
    assert raw[14:16] == (0x8007).to_bytes(2, "little")
    assert raw[40:] == bytes(216)


def test_arch_offsets_agree_with_structs() -> None:
    assert off(U.sgx_secs, "attributes") == S.SECS_OFF_ATTRIBUTES
    assert off(U.sgx_secs, "mrenclave") == S.SECS_OFF_MRENCLAVE
    assert off(U.sgx_secs, "config_id") == S.SECS_OFF_CONFIG_ID
    assert off(U.sgx_secs, "config_svn") == S.SECS_OFF_CONFIGSVN
    assert off(U.sgx_tcs, "ssa_index") == S.TCS_OFF_CSSA
    assert off(U.sgx_tcs, "exit_addr") == S.TCS_OFF_AEP
    assert off(U.sgx_tcs, "reserved") == 72
    assert off(U.sgx_pcmd, "enclave_id") == S.PCMD_OFF_ENCLAVEID
    assert off(U.sgx_pcmd, "mac") == S.PCMD_OFF_MAC
    assert off(U.sgx_sigstruct, "modulus") == S.SIGSTRUCT_OFF_MODULUS
    assert off(U.sgx_sigstruct, "exponent") == S.SIGSTRUCT_OFF_EXPONENT
    assert off(U.sgx_sigstruct, "signature") == S.SIGSTRUCT_OFF_SIGNATURE
    assert off(U.sgx_sigstruct, "body") == S.SIGSTRUCT_OFF_MISCSELECT
    assert off(U.sgx_sigstruct, "q1") == S.SIGSTRUCT_OFF_Q1
    assert off(U.sgx_sigstruct, "q2") == S.SIGSTRUCT_OFF_Q2
    body = S.SIGSTRUCT_OFF_MISCSELECT
    assert body + off(U.sgx_sigstruct_body, "attributes") == S.SIGSTRUCT_OFF_ATTRIBUTES
    assert body + off(U.sgx_sigstruct_body, "mrenclave") == S.SIGSTRUCT_OFF_ENCLAVEHASH
    assert body + off(U.sgx_sigstruct_body, "isvsvn") == S.SIGSTRUCT_OFF_ISVSVN
    assert off(U.sgx_sigstruct_header, "vendor") == S.SIGSTRUCT_OFF_VENDOR
    assert off(U.sgx_sigstruct_header, "swdefined") == S.SIGSTRUCT_OFF_SWDEFINED


def test_ctypes_and_dataclass_images_agree() -> None:
    raw = bytes((i * 13 + 1) & 0xFF for i in range(1808))
    cs = U.sgx_sigstruct.from_buffer_copy(raw)
    py = S.Sigstruct.unpack(raw)
    assert bytes(cs) == py.pack()
    assert cs.body.attributes == py.attributes
    assert bytes(cs.body.mrenclave) == py.enclavehash
    assert cs.header.vendor == py.vendor
    raw = bytes((i * 5 + 9) & 0xFF for i in range(4096))
    secs = U.sgx_secs.from_buffer_copy(raw)
    pys = S.Secs.unpack(raw)
    assert secs.size == pys.size and secs.base == pys.baseaddr
    assert secs.ssa_frame_size == pys.ssaframesize and secs.xfrm == pys.xfrm
    tcs = U.sgx_tcs.from_buffer_copy(raw)
    pyt = S.Tcs.unpack(raw)
    assert (tcs.ssa_offset, tcs.ssa_index, tcs.entry_offset) == (pyt.ossa, pyt.cssa, pyt.oentry)


def test_typedef_prototypes() -> None:
    seen: list[int] = []

    def handler(rdi: int, rsi: int, rdx: int, rsp: int, r8: int, r9: int, run: object) -> int:
        seen.extend((rdi, rsi, rdx, rsp, r8, r9))
        return 0

    cb = U.sgx_enclave_user_handler_t(handler)
    run = U.sgx_enclave_run()
    assert cb(1, 2, 3, 4, 5, 6, ctypes.pointer(run)) == 0
    assert seen == [1, 2, 3, 4, 5, 6]
