"""The Linux SGX ABI as ctypes: uapi ``<asm/sgx.h>`` plus the arch structs of kernel ``asm/sgx.h``.

Names, field names, packing and sizes follow the kernel headers, so host code written against
them can be ported line by line. The uapi structs are naturally aligned (no ``__packed``); the
arch structs are ``__packed`` (``_pack_ = 1``). The kernel's extra ``__aligned(N)`` on
sgx_pageinfo (32), sgx_secinfo (64) and sgx_pcmd (128) does not change their sizes and cannot be
expressed in ctypes on Python 3.11; callers must place them at such addresses themselves.

vDSO typedefs (uapi), for reference::

    typedef int (*sgx_enclave_user_handler_t)(long rdi, long rsi, long rdx,
                                              long rsp, long r8, long r9,
                                              struct sgx_enclave_run *run);

    typedef int (*vdso_sgx_enter_enclave_t)(unsigned long rdi, unsigned long rsi,
                                            unsigned long rdx, unsigned int function,
                                            unsigned long r8, unsigned long r9,
                                            struct sgx_enclave_run *run);

``function`` is the ENCLU leaf (EENTER or ERESUME). The handler's return value: <= 0 is
returned to the caller as is; > 0 is the next leaf to run.
"""

from __future__ import annotations

import ctypes
from enum import IntEnum

from sgxemu.arch.constants import (
    EINITTOKEN_SIZE,
    EXINFO_SIZE,
    GPRSGX_SIZE,
    Attribute,
    EncluLeaf,
    Miscselect,
    PageType,
    SecinfoFlags,
    TcsFlags,
)

# --------------------------------------------------------------------------------------------
# ioctl number encoding (asm-generic/ioctl.h, x86 layout). Lower-case class names and the
# _IO* helpers keep the kernel spellings on purpose.

_IOC_NRBITS = 8
_IOC_TYPEBITS = 8
_IOC_SIZEBITS = 14
_IOC_NRSHIFT = 0
_IOC_TYPESHIFT = _IOC_NRSHIFT + _IOC_NRBITS
_IOC_SIZESHIFT = _IOC_TYPESHIFT + _IOC_TYPEBITS
_IOC_DIRSHIFT = _IOC_SIZESHIFT + _IOC_SIZEBITS
_IOC_NONE = 0
_IOC_WRITE = 1
_IOC_READ = 2


def _IOC(direction: int, type_: int, nr: int, size: int) -> int:
    if not 0 <= size < (1 << _IOC_SIZEBITS):
        raise ValueError(f"ioctl argument size {size} does not fit")
    return (
        (direction << _IOC_DIRSHIFT)
        | (type_ << _IOC_TYPESHIFT)
        | (nr << _IOC_NRSHIFT)
        | (size << _IOC_SIZESHIFT)
    )


def _IO(type_: int, nr: int) -> int:
    return _IOC(_IOC_NONE, type_, nr, 0)


def _IOR(type_: int, nr: int, argtype: type[ctypes.Structure]) -> int:
    return _IOC(_IOC_READ, type_, nr, ctypes.sizeof(argtype))


def _IOW(type_: int, nr: int, argtype: type[ctypes.Structure]) -> int:
    return _IOC(_IOC_WRITE, type_, nr, ctypes.sizeof(argtype))


def _IOWR(type_: int, nr: int, argtype: type[ctypes.Structure]) -> int:
    return _IOC(_IOC_READ | _IOC_WRITE, type_, nr, ctypes.sizeof(argtype))


# --------------------------------------------------------------------------------------------
# uapi: arch/x86/include/uapi/asm/sgx.h

_u8 = ctypes.c_uint8
_u16 = ctypes.c_uint16
_u32 = ctypes.c_uint32
_u64 = ctypes.c_uint64

SGX_MAGIC = 0xA4


class sgx_page_flags(IntEnum):
    """Flags for sgx_enclave_add_pages.flags (uapi enum sgx_page_flags)."""

    SGX_PAGE_MEASURE = 0x01


SGX_PAGE_MEASURE = int(sgx_page_flags.SGX_PAGE_MEASURE)


class sgx_enclave_create(ctypes.Structure):
    """SGX_IOC_ENCLAVE_CREATE argument (uapi struct sgx_enclave_create)."""

    _fields_ = [("src", _u64)]


class sgx_enclave_add_pages(ctypes.Structure):
    """SGX_IOC_ENCLAVE_ADD_PAGES argument (uapi struct sgx_enclave_add_pages)."""

    _fields_ = [
        ("src", _u64),
        ("offset", _u64),
        ("length", _u64),
        ("secinfo", _u64),
        ("flags", _u64),
        ("count", _u64),
    ]


class sgx_enclave_init(ctypes.Structure):
    """SGX_IOC_ENCLAVE_INIT argument (uapi struct sgx_enclave_init)."""

    _fields_ = [("sigstruct", _u64)]


class sgx_enclave_provision(ctypes.Structure):
    """SGX_IOC_ENCLAVE_PROVISION argument (uapi struct sgx_enclave_provision)."""

    _fields_ = [("fd", _u64)]


class sgx_enclave_restrict_permissions(ctypes.Structure):
    """SGX_IOC_ENCLAVE_RESTRICT_PERMISSIONS argument (uapi struct of the same name)."""

    _fields_ = [
        ("offset", _u64),
        ("length", _u64),
        ("permissions", _u64),
        ("result", _u64),
        ("count", _u64),
    ]


class sgx_enclave_modify_types(ctypes.Structure):
    """SGX_IOC_ENCLAVE_MODIFY_TYPES argument (uapi struct sgx_enclave_modify_types)."""

    _fields_ = [
        ("offset", _u64),
        ("length", _u64),
        ("page_type", _u64),
        ("result", _u64),
        ("count", _u64),
    ]


class sgx_enclave_remove_pages(ctypes.Structure):
    """SGX_IOC_ENCLAVE_REMOVE_PAGES argument (uapi struct sgx_enclave_remove_pages)."""

    _fields_ = [
        ("offset", _u64),
        ("length", _u64),
        ("count", _u64),
    ]


class sgx_enclave_run(ctypes.Structure):
    """vDSO __vdso_sgx_enter_enclave control block (uapi struct sgx_enclave_run, 256 bytes)."""

    _fields_ = [
        ("tcs", _u64),
        ("function", _u32),
        ("exception_vector", _u16),
        ("exception_error_code", _u16),
        ("exception_addr", _u64),
        ("user_handler", _u64),
        ("user_data", _u64),
        ("reserved", _u8 * 216),  # must be zero on every (re)entry
    ]


SGX_IOC_ENCLAVE_CREATE = _IOW(SGX_MAGIC, 0x00, sgx_enclave_create)
SGX_IOC_ENCLAVE_ADD_PAGES = _IOWR(SGX_MAGIC, 0x01, sgx_enclave_add_pages)
SGX_IOC_ENCLAVE_INIT = _IOW(SGX_MAGIC, 0x02, sgx_enclave_init)
SGX_IOC_ENCLAVE_PROVISION = _IOW(SGX_MAGIC, 0x03, sgx_enclave_provision)
SGX_IOC_VEPC_REMOVE_ALL = _IO(SGX_MAGIC, 0x04)
SGX_IOC_ENCLAVE_RESTRICT_PERMISSIONS = _IOWR(SGX_MAGIC, 0x05, sgx_enclave_restrict_permissions)
SGX_IOC_ENCLAVE_MODIFY_TYPES = _IOWR(SGX_MAGIC, 0x06, sgx_enclave_modify_types)
SGX_IOC_ENCLAVE_REMOVE_PAGES = _IOWR(SGX_MAGIC, 0x07, sgx_enclave_remove_pages)

# ctypes prototypes of the uapi typedefs (long = c_long; x86-64 LP64).
sgx_enclave_user_handler_t = ctypes.CFUNCTYPE(
    ctypes.c_int,
    ctypes.c_long,
    ctypes.c_long,
    ctypes.c_long,
    ctypes.c_long,
    ctypes.c_long,
    ctypes.c_long,
    ctypes.POINTER(sgx_enclave_run),
)
vdso_sgx_enter_enclave_t = ctypes.CFUNCTYPE(
    ctypes.c_int,
    ctypes.c_ulong,
    ctypes.c_ulong,
    ctypes.c_ulong,
    ctypes.c_uint,
    ctypes.c_ulong,
    ctypes.c_ulong,
    ctypes.POINTER(sgx_enclave_run),
)

# --------------------------------------------------------------------------------------------
# Kernel arch/x86/include/asm/sgx.h and asm/enclu.h constants

EENTER = int(EncluLeaf.EENTER)
ERESUME = int(EncluLeaf.ERESUME)
EEXIT = int(EncluLeaf.EEXIT)

SGX_MODULUS_SIZE = 384
SGX_LAUNCH_TOKEN_SIZE = EINITTOKEN_SIZE

SGX_MISC_EXINFO = int(Miscselect.EXINFO)
SGX_MISC_RESERVED_MASK = ((1 << 64) - 1) & ~1  # bits 63:1
SGX_SSA_GPRS_SIZE = GPRSGX_SIZE
SGX_SSA_MISC_EXINFO_SIZE = EXINFO_SIZE

SGX_ATTR_INIT = int(Attribute.INIT)
SGX_ATTR_DEBUG = int(Attribute.DEBUG)
SGX_ATTR_MODE64BIT = int(Attribute.MODE64BIT)
SGX_ATTR_PROVISIONKEY = int(Attribute.PROVISIONKEY)
SGX_ATTR_EINITTOKENKEY = int(Attribute.EINITTOKEN_KEY)
SGX_ATTR_KSS = int(Attribute.KSS)
SGX_ATTR_ASYNC_EXIT_NOTIFY = int(Attribute.AEXNOTIFY)
# Bit 3, bit 6 (CET: not supported by the kernel), bits 9:8 and 63:11.
SGX_ATTR_RESERVED_MASK = (1 << 3) | (1 << 6) | (0x3 << 8) | (((1 << 64) - 1) & ~((1 << 11) - 1))
SGX_ATTR_UNPRIV_MASK = (
    SGX_ATTR_DEBUG | SGX_ATTR_MODE64BIT | SGX_ATTR_KSS | SGX_ATTR_ASYNC_EXIT_NOTIFY
)
SGX_ATTR_PRIV_MASK = SGX_ATTR_PROVISIONKEY | SGX_ATTR_EINITTOKENKEY

SGX_SECS_RESERVED1_SIZE = 24
SGX_SECS_RESERVED2_SIZE = 32
SGX_SECS_RESERVED3_SIZE = 32
SGX_SECS_RESERVED4_SIZE = 3834

SGX_TCS_DBGOPTIN = int(TcsFlags.DBGOPTIN)
SGX_TCS_RESERVED_MASK = ((1 << 64) - 1) & ~1  # bits 63:1 (pre-AEX-notify kernel header)
SGX_TCS_RESERVED_SIZE = 4024


class sgx_page_type(IntEnum):
    """EPCM page types (kernel enum sgx_page_type)."""

    SGX_PAGE_TYPE_SECS = int(PageType.PT_SECS)
    SGX_PAGE_TYPE_TCS = int(PageType.PT_TCS)
    SGX_PAGE_TYPE_REG = int(PageType.PT_REG)
    SGX_PAGE_TYPE_VA = int(PageType.PT_VA)
    SGX_PAGE_TYPE_TRIM = int(PageType.PT_TRIM)


SGX_PAGE_TYPE_SECS = int(sgx_page_type.SGX_PAGE_TYPE_SECS)
SGX_PAGE_TYPE_TCS = int(sgx_page_type.SGX_PAGE_TYPE_TCS)
SGX_PAGE_TYPE_REG = int(sgx_page_type.SGX_PAGE_TYPE_REG)
SGX_PAGE_TYPE_VA = int(sgx_page_type.SGX_PAGE_TYPE_VA)
SGX_PAGE_TYPE_TRIM = int(sgx_page_type.SGX_PAGE_TYPE_TRIM)
SGX_NR_PAGE_TYPES = 5
SGX_PAGE_TYPE_MASK = 0xFF

SGX_SECINFO_R = int(SecinfoFlags.R)
SGX_SECINFO_W = int(SecinfoFlags.W)
SGX_SECINFO_X = int(SecinfoFlags.X)
SGX_SECINFO_SECS = SGX_PAGE_TYPE_SECS << 8
SGX_SECINFO_TCS = SGX_PAGE_TYPE_TCS << 8
SGX_SECINFO_REG = SGX_PAGE_TYPE_REG << 8
SGX_SECINFO_VA = SGX_PAGE_TYPE_VA << 8
SGX_SECINFO_TRIM = SGX_PAGE_TYPE_TRIM << 8
SGX_SECINFO_PERMISSION_MASK = 0x7
SGX_SECINFO_PAGE_TYPE_MASK = SGX_PAGE_TYPE_MASK << 8
SGX_SECINFO_RESERVED_MASK = ((1 << 64) - 1) & ~(
    SGX_SECINFO_PERMISSION_MASK | SGX_SECINFO_PAGE_TYPE_MASK
)

SGX_PCMD_RESERVED_SIZE = 40
SGX_SIGSTRUCT_RESERVED1_SIZE = 84
SGX_SIGSTRUCT_RESERVED2_SIZE = 20
SGX_SIGSTRUCT_RESERVED3_SIZE = 32
SGX_SIGSTRUCT_RESERVED4_SIZE = 12


# --------------------------------------------------------------------------------------------
# Kernel arch structs (asm/sgx.h). These are the kernel's pre-CET/KSS-detail views: e.g. the
# sigstruct body keeps bytes 908..927 as reserved2 where later SDMs place CET/ISVFAMILYID.


class sgx_secs(ctypes.Structure):
    """SECS as the kernel declares it (asm/sgx.h struct sgx_secs, 4096 bytes, packed)."""

    _pack_ = 1
    _fields_ = [
        ("size", _u64),
        ("base", _u64),
        ("ssa_frame_size", _u32),
        ("miscselect", _u32),
        ("reserved1", _u8 * SGX_SECS_RESERVED1_SIZE),
        ("attributes", _u64),
        ("xfrm", _u64),
        ("mrenclave", _u32 * 8),
        ("reserved2", _u8 * SGX_SECS_RESERVED2_SIZE),
        ("mrsigner", _u32 * 8),
        ("reserved3", _u8 * SGX_SECS_RESERVED3_SIZE),
        ("config_id", _u32 * 16),
        ("isv_prod_id", _u16),
        ("isv_svn", _u16),
        ("config_svn", _u16),
        ("reserved4", _u8 * SGX_SECS_RESERVED4_SIZE),
    ]


class sgx_tcs(ctypes.Structure):
    """TCS as the kernel declares it (asm/sgx.h struct sgx_tcs, 4096 bytes, packed)."""

    _pack_ = 1
    _fields_ = [
        ("state", _u64),
        ("flags", _u64),
        ("ssa_offset", _u64),
        ("ssa_index", _u32),
        ("nr_ssa_frames", _u32),
        ("entry_offset", _u64),
        ("exit_addr", _u64),
        ("fs_offset", _u64),
        ("gs_offset", _u64),
        ("fs_limit", _u32),
        ("gs_limit", _u32),
        ("reserved", _u8 * SGX_TCS_RESERVED_SIZE),
    ]


class sgx_pageinfo(ctypes.Structure):
    """PAGEINFO (asm/sgx.h struct sgx_pageinfo, 32 bytes, packed, aligned 32)."""

    _pack_ = 1
    _fields_ = [
        ("addr", _u64),
        ("contents", _u64),
        ("metadata", _u64),  # SECINFO or PCMD pointer
        ("secs", _u64),
    ]


class sgx_secinfo(ctypes.Structure):
    """SECINFO (asm/sgx.h struct sgx_secinfo, 64 bytes, packed, aligned 64)."""

    _pack_ = 1
    _fields_ = [
        ("flags", _u64),
        ("reserved", _u8 * 56),
    ]


class sgx_pcmd(ctypes.Structure):
    """PCMD (asm/sgx.h struct sgx_pcmd, 128 bytes, packed, aligned 128)."""

    _pack_ = 1
    _fields_ = [
        ("secinfo", sgx_secinfo),
        ("enclave_id", _u64),
        ("reserved", _u8 * SGX_PCMD_RESERVED_SIZE),
        ("mac", _u8 * 16),
    ]


class sgx_sigstruct_header(ctypes.Structure):
    """Signed first 128 bytes of SIGSTRUCT (asm/sgx.h struct sgx_sigstruct_header, packed)."""

    _pack_ = 1
    _fields_ = [
        ("header1", _u64 * 2),
        ("vendor", _u32),
        ("date", _u32),
        ("header2", _u64 * 2),
        ("swdefined", _u32),
        ("reserved1", _u8 * SGX_SIGSTRUCT_RESERVED1_SIZE),
    ]


class sgx_sigstruct_body(ctypes.Structure):
    """Signed 128 bytes at offset 900 of SIGSTRUCT (asm/sgx.h struct sgx_sigstruct_body, packed)."""

    _pack_ = 1
    _fields_ = [
        ("miscselect", _u32),
        ("misc_mask", _u32),
        ("reserved2", _u8 * SGX_SIGSTRUCT_RESERVED2_SIZE),
        ("attributes", _u64),
        ("xfrm", _u64),
        ("attributes_mask", _u64),
        ("xfrm_mask", _u64),
        ("mrenclave", _u8 * 32),
        ("reserved3", _u8 * SGX_SIGSTRUCT_RESERVED3_SIZE),
        ("isvprodid", _u16),
        ("isvsvn", _u16),
    ]


class sgx_sigstruct(ctypes.Structure):
    """SIGSTRUCT (asm/sgx.h struct sgx_sigstruct, 1808 bytes, packed)."""

    _pack_ = 1
    _fields_ = [
        ("header", sgx_sigstruct_header),
        ("modulus", _u8 * SGX_MODULUS_SIZE),
        ("exponent", _u32),
        ("signature", _u8 * SGX_MODULUS_SIZE),
        ("body", sgx_sigstruct_body),
        ("reserved4", _u8 * SGX_SIGSTRUCT_RESERVED4_SIZE),
        ("q1", _u8 * SGX_MODULUS_SIZE),
        ("q2", _u8 * SGX_MODULUS_SIZE),
    ]


def _check_sizes() -> None:
    # Import-time guard: a wrong size here would silently change every ioctl number.
    expected: dict[type[ctypes.Structure], int] = {
        sgx_enclave_create: 8,
        sgx_enclave_add_pages: 48,
        sgx_enclave_init: 8,
        sgx_enclave_provision: 8,
        sgx_enclave_restrict_permissions: 40,
        sgx_enclave_modify_types: 40,
        sgx_enclave_remove_pages: 24,
        sgx_enclave_run: 256,
        sgx_secs: 4096,
        sgx_tcs: 4096,
        sgx_pageinfo: 32,
        sgx_secinfo: 64,
        sgx_pcmd: 128,
        sgx_sigstruct_header: 128,
        sgx_sigstruct_body: 128,
        sgx_sigstruct: 1808,
    }
    for cls, size in expected.items():
        if ctypes.sizeof(cls) != size:
            raise AssertionError(f"{cls.__name__} is {ctypes.sizeof(cls)} bytes, expected {size}")


_check_sizes()
