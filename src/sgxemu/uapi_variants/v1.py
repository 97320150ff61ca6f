"""uapi <asm/sgx.h> of SGX2 series V1 (Dec 2021): one ioctl to change permissions, one to change
page types, one to remove pages (patches 10, 16 and 17 of 25).

The three numbers equal the merged ones (0x05-0x07, same sizes): a program built for Linux 6.0
that restricts permissions gets V1's MODP, whose `prot` sits where `permissions` does.
"""

from __future__ import annotations

import ctypes

from ..uapi import _IOWR, SGX_MAGIC

_u64 = ctypes.c_uint64


class sgx_page_modp(ctypes.Structure):
    """SGX_IOC_PAGE_MODP argument: prot is PROT_* (= SECINFO R/W/X bits); result and count out."""

    _fields_ = [
        ("offset", _u64),
        ("length", _u64),
        ("prot", _u64),
        ("result", _u64),
        ("count", _u64),
    ]


class sgx_page_modt(ctypes.Structure):
    """SGX_IOC_PAGE_MODT argument: type is an SGX_PAGE_TYPE_* value."""

    _fields_ = [
        ("offset", _u64),
        ("length", _u64),
        ("type", _u64),
        ("result", _u64),
        ("count", _u64),
    ]


class sgx_page_remove(ctypes.Structure):
    """SGX_IOC_PAGE_REMOVE argument (renamed sgx_enclave_remove_pages in V2, same fields)."""

    _fields_ = [
        ("offset", _u64),
        ("length", _u64),
        ("count", _u64),
    ]


SGX_IOC_PAGE_MODP = _IOWR(SGX_MAGIC, 0x05, sgx_page_modp)
SGX_IOC_PAGE_MODT = _IOWR(SGX_MAGIC, 0x06, sgx_page_modt)
SGX_IOC_PAGE_REMOVE = _IOWR(SGX_MAGIC, 0x07, sgx_page_remove)

IOCTL_NAMES: dict[int, str] = {
    SGX_IOC_PAGE_MODP: "SGX_IOC_PAGE_MODP",
    SGX_IOC_PAGE_MODT: "SGX_IOC_PAGE_MODT",
    SGX_IOC_PAGE_REMOVE: "SGX_IOC_PAGE_REMOVE",
}

for _cls, _size in ((sgx_page_modp, 40), (sgx_page_modt, 40), (sgx_page_remove, 24)):
    if ctypes.sizeof(_cls) != _size:  # a wrong size would silently change the numbers
        raise AssertionError(f"{_cls.__name__} is {ctypes.sizeof(_cls)} bytes, expected {_size}")
