"""uapi <asm/sgx.h> of SGX2 series V2 (Feb 2022): relaxing and restricting split in two ioctls,
permissions and page types passed as a pointer to a whole SECINFO (patches 14, 15, 22, 23 of 32).

Numbers: RELAX 0x05, RESTRICT 0x06, MODIFY_TYPE 0x07, REMOVE_PAGES 0x08. Only REMOVE_PAGES keeps
its struct in the merged ABI, where it moved to 0x07; V2's RESTRICT has the number of the merged
MODIFY_TYPES (both 40 bytes at 0x06).
"""

from __future__ import annotations

import ctypes

from ..uapi import _IOWR, SGX_MAGIC

_u64 = ctypes.c_uint64


class sgx_enclave_relax_perm(ctypes.Structure):
    """SGX_IOC_ENCLAVE_RELAX_PERMISSIONS argument: secinfo points to a SECINFO (R/W/X only)."""

    _fields_ = [
        ("offset", _u64),
        ("length", _u64),
        ("secinfo", _u64),
        ("count", _u64),
    ]


class sgx_enclave_restrict_perm(ctypes.Structure):
    """SGX_IOC_ENCLAVE_RESTRICT_PERMISSIONS argument (V2): secinfo pointer; result, count out."""

    _fields_ = [
        ("offset", _u64),
        ("length", _u64),
        ("secinfo", _u64),
        ("result", _u64),
        ("count", _u64),
    ]


class sgx_enclave_modt(ctypes.Structure):
    """SGX_IOC_ENCLAVE_MODIFY_TYPE argument: the new type in the SECINFO's type field."""

    _fields_ = [
        ("offset", _u64),
        ("length", _u64),
        ("secinfo", _u64),
        ("result", _u64),
        ("count", _u64),
    ]


class sgx_enclave_remove_pages(ctypes.Structure):
    """SGX_IOC_ENCLAVE_REMOVE_PAGES argument (the layout the merged ABI kept)."""

    _fields_ = [
        ("offset", _u64),
        ("length", _u64),
        ("count", _u64),
    ]


SGX_IOC_ENCLAVE_RELAX_PERMISSIONS = _IOWR(SGX_MAGIC, 0x05, sgx_enclave_relax_perm)
SGX_IOC_ENCLAVE_RESTRICT_PERMISSIONS = _IOWR(SGX_MAGIC, 0x06, sgx_enclave_restrict_perm)
SGX_IOC_ENCLAVE_MODIFY_TYPE = _IOWR(SGX_MAGIC, 0x07, sgx_enclave_modt)
SGX_IOC_ENCLAVE_REMOVE_PAGES = _IOWR(SGX_MAGIC, 0x08, sgx_enclave_remove_pages)

IOCTL_NAMES: dict[int, str] = {
    SGX_IOC_ENCLAVE_RELAX_PERMISSIONS: "SGX_IOC_ENCLAVE_RELAX_PERMISSIONS",
    SGX_IOC_ENCLAVE_RESTRICT_PERMISSIONS: "SGX_IOC_ENCLAVE_RESTRICT_PERMISSIONS (V2)",
    SGX_IOC_ENCLAVE_MODIFY_TYPE: "SGX_IOC_ENCLAVE_MODIFY_TYPE",
    SGX_IOC_ENCLAVE_REMOVE_PAGES: "SGX_IOC_ENCLAVE_REMOVE_PAGES (V2)",
}

for _cls, _size in (
    (sgx_enclave_relax_perm, 32),
    (sgx_enclave_restrict_perm, 40),
    (sgx_enclave_modt, 40),
    (sgx_enclave_remove_pages, 24),
):
    if ctypes.sizeof(_cls) != _size:  # a wrong size would silently change the numbers
        raise AssertionError(f"{_cls.__name__} is {ctypes.sizeof(_cls)} bytes, expected {_size}")
