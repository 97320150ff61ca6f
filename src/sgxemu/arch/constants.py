"""Architectural constants of SGX1 + SGX2, named as Intel SDM Vol. 3D names them.

Every value here is architectural (SDM tables 37-6, 38-3, 38-13, 38-16, 38-17, 41-1..41-3) or
taken from Linux's `asm/sgx.h` where the SDM and the kernel agree.
"""

from __future__ import annotations

from enum import IntEnum, IntFlag

PAGE_SIZE = 4096
PAGE_SHIFT = 12
PAGE_MASK = ~(PAGE_SIZE - 1)

# Opcodes (SDM Vol. 2D, ENCLS / ENCLU).
ENCLS_OPCODE = b"\x0f\x01\xcf"
ENCLU_OPCODE = b"\x0f\x01\xd7"


class EnclsLeaf(IntEnum):
    """ENCLS leaf numbers in EAX (SDM Table 41-1)."""

    ECREATE = 0x00
    EADD = 0x01
    EINIT = 0x02
    EREMOVE = 0x03
    EDBGRD = 0x04
    EDBGWR = 0x05
    EEXTEND = 0x06
    ELDB = 0x07
    ELDU = 0x08
    EBLOCK = 0x09
    EPA = 0x0A
    EWB = 0x0B
    ETRACK = 0x0C
    EAUG = 0x0D
    EMODPR = 0x0E
    EMODT = 0x0F


class EncluLeaf(IntEnum):
    """ENCLU leaf numbers in EAX (SDM Table 41-2)."""

    EREPORT = 0x00
    EGETKEY = 0x01
    EENTER = 0x02
    ERESUME = 0x03
    EEXIT = 0x04
    EACCEPT = 0x05
    EMODPE = 0x06
    EACCEPTCOPY = 0x07


class SgxError(IntEnum):
    """Error and information codes returned in RAX (SDM Table 41-3)."""

    SUCCESS = 0
    SGX_INVALID_SIG_STRUCT = 1
    SGX_INVALID_ATTRIBUTE = 2
    SGX_BLKSTATE = 3
    SGX_INVALID_MEASUREMENT = 4
    SGX_NOTBLOCKABLE = 5
    SGX_PG_INVLD = 6
    SGX_EPC_PAGE_CONFLICT = 7  # SDM16 name: SGX_LOCKFAIL
    SGX_INVALID_SIGNATURE = 8
    SGX_MAC_COMPARE_FAIL = 9
    SGX_PAGE_NOT_BLOCKED = 10
    SGX_NOT_TRACKED = 11
    SGX_VA_SLOT_OCCUPIED = 12
    SGX_CHILD_PRESENT = 13
    SGX_ENCLAVE_ACT = 14
    SGX_ENTRYEPOCH_LOCKED = 15
    SGX_INVALID_EINITTOKEN = 16
    SGX_PREV_TRK_INCMPL = 17
    SGX_PG_IS_SECS = 18
    SGX_PAGE_ATTRIBUTES_MISMATCH = 19
    SGX_PAGE_NOT_MODIFIABLE = 20
    SGX_PAGE_NOT_DEBUGGABLE = 21
    SGX_INVALID_COUNTER = 25
    SGX_PG_NONEPC = 26
    SGX_TRACK_NOT_REQUIRED = 27
    SGX_INVALID_CPUSVN = 32
    SGX_INVALID_ISVSVN = 64
    SGX_UNMASKED_EVENT = 128
    SGX_INVALID_KEYNAME = 256


class PageType(IntEnum):
    """EPCM page types (SDM Table 38-17)."""

    PT_SECS = 0
    PT_TCS = 1
    PT_REG = 2
    PT_VA = 3
    PT_TRIM = 4


class SecinfoFlags(IntFlag):
    """SECINFO.FLAGS bits (SDM Table 38-16). PAGE_TYPE occupies bits 15:8."""

    R = 0x01
    W = 0x02
    X = 0x04
    PENDING = 0x08
    MODIFIED = 0x10
    PR = 0x20


SECINFO_PERM_MASK = 0x07
SECINFO_PAGE_TYPE_SHIFT = 8
SECINFO_PAGE_TYPE_MASK = 0xFF << SECINFO_PAGE_TYPE_SHIFT
# Bits 7:6 and 63:16 of FLAGS are reserved (SDM Table 38-16).
SECINFO_FLAGS_RESERVED_MASK = ~(0x3F | SECINFO_PAGE_TYPE_MASK) & ((1 << 64) - 1)


def secinfo_flags(page_type: PageType, perms: int = 0, state: int = 0) -> int:
    """Compose a SECINFO.FLAGS value: permissions, state bits and the page type."""
    return (int(page_type) << SECINFO_PAGE_TYPE_SHIFT) | perms | state


class Attribute(IntFlag):
    """SECS.ATTRIBUTES.FLAGS bits (SDM Table 38-3; CET/KSS/AEXNOTIFY from later editions)."""

    INIT = 1 << 0
    DEBUG = 1 << 1
    MODE64BIT = 1 << 2
    PROVISIONKEY = 1 << 4
    EINITTOKEN_KEY = 1 << 5
    CET = 1 << 6
    KSS = 1 << 7
    AEXNOTIFY = 1 << 10


class Miscselect(IntFlag):
    """MISCSELECT bits (SDM Table 38-5)."""

    EXINFO = 1 << 0
    CPINFO = 1 << 1


class Xfrm(IntFlag):
    """XFRM (XCR0 format) feature bits."""

    X87 = 1 << 0
    SSE = 1 << 1
    AVX = 1 << 2


XFRM_LEGACY = int(Xfrm.X87 | Xfrm.SSE)


class TcsFlags(IntFlag):
    """TCS.FLAGS (SDM Table 38-10)."""

    DBGOPTIN = 1 << 0
    AEXNOTIFY = 1 << 1


class TcsState(IntEnum):
    """TCS.STATE at offset 0 (SDM16 misprints it STAGE)."""

    INACTIVE = 0
    ACTIVE = 1


class PfErrorCode(IntFlag):
    """Page-fault error-code bits (SDM Vol. 3A 4.7; SGX bit 15 from Table 38-13; Linux trap_pf.h)."""

    P = 1 << 0
    W = 1 << 1
    U = 1 << 2
    RSVD = 1 << 3
    I = 1 << 4  # noqa: E741  (the SDM's name: instruction fetch)
    PK = 1 << 5
    SS = 1 << 6
    SGX = 1 << 15


class Vector(IntEnum):
    """Exception vectors used by SGX (AEX EXITINFO, the vDSO run struct)."""

    DE = 0
    DB = 1
    BP = 3
    BR = 5
    UD = 6
    NM = 7
    GP = 13
    PF = 14
    MF = 16
    AC = 17
    XM = 19
    CP = 21


class ExitType(IntEnum):
    """EXITINFO.EXIT_TYPE (SDM Table 38-9)."""

    HARDWARE = 3
    SOFTWARE = 6


class KeyName(IntEnum):
    """KEYREQUEST.KEYNAME (SDM Table 38-22)."""

    EINITTOKEN_KEY = 0
    PROVISION_KEY = 1
    PROVISION_SEAL_KEY = 2
    REPORT_KEY = 3
    SEAL_KEY = 4


class KeyPolicy(IntFlag):
    """KEYREQUEST.KEYPOLICY (SDM Table 38-23)."""

    MRENCLAVE = 1 << 0
    MRSIGNER = 1 << 1
    NOISVPRODID = 1 << 2
    CONFIGID = 1 << 3
    ISVFAMILYID = 1 << 4
    ISVEXTPRODID = 1 << 5


KEYPOLICY_RESERVED_MASK = 0xFFC0
KEYPOLICY_KSS_MASK = 0x003C

# Structure sizes and alignments (SDM chapter 38).
SECS_SIZE = 4096
TCS_SIZE = 4096
PAGEINFO_SIZE = 32
PAGEINFO_ALIGN = 32
SECINFO_SIZE = 64
SECINFO_ALIGN = 64
PCMD_SIZE = 128
PCMD_ALIGN = 128
SIGSTRUCT_SIZE = 1808
EINITTOKEN_SIZE = 304
EINITTOKEN_ALIGN = 512
REPORT_SIZE = 432
REPORT_ALIGN = 512
REPORTDATA_SIZE = 64
REPORTDATA_ALIGN = 128
TARGETINFO_SIZE = 512
TARGETINFO_ALIGN = 512
KEYREQUEST_SIZE = 512
KEYREQUEST_ALIGN = 512
KEY_SIZE = 16
KEY_ALIGN = 16
GPRSGX_SIZE = 184
EXINFO_SIZE = 16
VA_SLOT_SIZE = 8
VA_SLOT_COUNT = 512
XSAVE_LEGACY_SIZE = 512
XSAVE_HEADER_SIZE = 64
EEXTEND_CHUNK = 256

# MSRs (SDM Vol. 4; SDM16 42.2.2).
IA32_FEATURE_CONTROL = 0x3A
IA32_SGXLEPUBKEYHASH0 = 0x8C
IA32_SGXLEPUBKEYHASH3 = 0x8F
FEATURE_CONTROL_LOCK = 1 << 0
FEATURE_CONTROL_SGX_LC = 1 << 17
FEATURE_CONTROL_SGX_ENABLE = 1 << 18

# SHA-256 of Intel's launch-enclave signing key: the reset value of IA32_SGXLEPUBKEYHASH.
INTEL_LE_PUBKEYHASH = bytes.fromhex(
    "acb77012053e05a63d413b8bbae8fb6c5d73b3f2996d91c43bbbf90959c0f8d4"
)

# SIGSTRUCT constant fields (SDM Table 38-19).
SIGSTRUCT_HEADER = bytes.fromhex("06000000e10000000000010000000000")
SIGSTRUCT_HEADER2 = bytes.fromhex("01010000600000006000000001000000")
SIGSTRUCT_VENDOR_INTEL = 0x8086
SIGSTRUCT_EXPONENT = 3

# The top 352 bytes of every valid PKCS#1 v1.5 SHA-256 encoded message (SDM EINIT, EGETKEY).
HARDCODED_PKCS1_5_PADDING = (
    b"\x00\x01" + b"\xff" * 330 + b"\x00" + bytes.fromhex("3031300d060960864801650304020105000420")
)

# CPUID.(EAX=12H) sub-leaf type field (SDM Table 37-6).
CPUID_SGX_LEAF = 0x12
CPUID_EPC_SECTION_INVALID = 0
CPUID_EPC_SECTION_VALID = 1
