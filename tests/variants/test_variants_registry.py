"""The kernel registry, Machine(kernel=...), and the request numbers and structs of V1 and V2."""

from __future__ import annotations

import ctypes
from collections.abc import Callable

import pytest

from sgxemu import Machine, uapi
from sgxemu.linux.policy import Linux60
from sgxemu.linux.variants import KERNELS, V1, V2, AlwaysMmap, Merged, SoftRestrict, kernel_policy
from sgxemu.uapi_variants import v1, v2


def test_registry_names_and_classes() -> None:
    assert list(KERNELS) == ["merged", "v1", "v2", "soft-restrict", "always-mmap"]
    assert {
        "merged": Merged, "v1": V1, "v2": V2, "soft-restrict": SoftRestrict,
        "always-mmap": AlwaysMmap,
    } == KERNELS
    for name, cls in KERNELS.items():
        assert issubclass(cls, Linux60)
        assert cls.name == name
        assert kernel_policy(name).name == name


def test_unknown_kernel_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown kernel 'v3'"):
        kernel_policy("v3")


def test_machine_default_is_merged(make_machine: Callable[..., Machine]) -> None:
    assert make_machine().policy.name == "merged"
    assert make_machine(kernel="v2").policy.name == "v2"


# Hand-computed: dir(RW=3)<<30 | size<<16 | 0xA4<<8 | nr.
@pytest.mark.parametrize(
    "value, expected",
    [
        (v1.SGX_IOC_PAGE_MODP, 0xC028A405),
        (v1.SGX_IOC_PAGE_MODT, 0xC028A406),
        (v1.SGX_IOC_PAGE_REMOVE, 0xC018A407),
        (v2.SGX_IOC_ENCLAVE_RELAX_PERMISSIONS, 0xC020A405),
        (v2.SGX_IOC_ENCLAVE_RESTRICT_PERMISSIONS, 0xC028A406),
        (v2.SGX_IOC_ENCLAVE_MODIFY_TYPE, 0xC028A407),
        (v2.SGX_IOC_ENCLAVE_REMOVE_PAGES, 0xC018A408),
    ],
)
def test_request_numbers(value: int, expected: int) -> None:
    assert value == expected


def test_number_collisions_with_the_merged_abi() -> None:
    # V1's three numbers are the merged ones: same sizes, same slots.
    assert v1.SGX_IOC_PAGE_MODP == uapi.SGX_IOC_ENCLAVE_RESTRICT_PERMISSIONS
    assert v1.SGX_IOC_PAGE_MODT == uapi.SGX_IOC_ENCLAVE_MODIFY_TYPES
    assert v1.SGX_IOC_PAGE_REMOVE == uapi.SGX_IOC_ENCLAVE_REMOVE_PAGES
    # V2's RESTRICT sits where the merged MODIFY_TYPES does; the others are V2-only.
    assert v2.SGX_IOC_ENCLAVE_RESTRICT_PERMISSIONS == uapi.SGX_IOC_ENCLAVE_MODIFY_TYPES
    merged = {
        uapi.SGX_IOC_ENCLAVE_RESTRICT_PERMISSIONS, uapi.SGX_IOC_ENCLAVE_MODIFY_TYPES,
        uapi.SGX_IOC_ENCLAVE_REMOVE_PAGES,
    }
    assert v2.SGX_IOC_ENCLAVE_RELAX_PERMISSIONS not in merged
    assert v2.SGX_IOC_ENCLAVE_MODIFY_TYPE not in merged
    assert v2.SGX_IOC_ENCLAVE_REMOVE_PAGES not in merged


@pytest.mark.parametrize(
    "cls, fields",
    [
        (v1.sgx_page_modp, ["offset", "length", "prot", "result", "count"]),
        (v1.sgx_page_modt, ["offset", "length", "type", "result", "count"]),
        (v1.sgx_page_remove, ["offset", "length", "count"]),
        (v2.sgx_enclave_relax_perm, ["offset", "length", "secinfo", "count"]),
        (v2.sgx_enclave_restrict_perm, ["offset", "length", "secinfo", "result", "count"]),
        (v2.sgx_enclave_modt, ["offset", "length", "secinfo", "result", "count"]),
        (v2.sgx_enclave_remove_pages, ["offset", "length", "count"]),
    ],
)
def test_struct_layouts(cls: type[ctypes.Structure], fields: list[str]) -> None:
    assert [f[0] for f in cls._fields_] == fields
    assert all(f[1] is ctypes.c_uint64 for f in cls._fields_)
    assert ctypes.sizeof(cls) == 8 * len(fields)
    for i, name in enumerate(fields):
        assert getattr(cls, name).offset == 8 * i


@pytest.mark.parametrize("kernel", list(KERNELS))
def test_ioctl_tables(kernel: str) -> None:
    p = kernel_policy(kernel)
    for cmd in (uapi.SGX_IOC_ENCLAVE_CREATE, uapi.SGX_IOC_ENCLAVE_ADD_PAGES,
                uapi.SGX_IOC_ENCLAVE_INIT, uapi.SGX_IOC_ENCLAVE_PROVISION):
        assert p.ioctl_handler(cmd) is not None  # unchanged by the SGX2 series
    sgx2 = {
        "merged": {0xC028A405, 0xC028A406, 0xC018A407},
        "v1": {0xC028A405, 0xC028A406, 0xC018A407},
        "v2": {0xC020A405, 0xC028A406, 0xC028A407, 0xC018A408},
        "soft-restrict": {0xC028A405, 0xC028A406, 0xC018A407},
        "always-mmap": {0xC028A405, 0xC028A406, 0xC018A407},
    }[kernel]
    candidates = sgx2 | {0xC020A405, 0xC028A407, 0xC018A408, 0xC028A405, 0xC018A407}
    assert {c for c in candidates if p.ioctl_handler(c) is not None} == sgx2


def test_policy_points() -> None:
    rwx, rw = 7, 3
    assert (Merged.eaug_secinfo, Merged.eaug_reclaim, Merged.wants_writenotify) == (rwx, False, False)
    for cls in (V1, V2):
        assert (cls.eaug_secinfo, cls.eaug_reclaim, cls.wants_writenotify) == (rw, True, True)
    assert (SoftRestrict.eaug_secinfo, SoftRestrict.wants_writenotify) == (rwx, True)
    assert (AlwaysMmap.eaug_secinfo, AlwaysMmap.wants_writenotify) == (rwx, False)
