"""SGX architectural structures, byte-exact (SDM Vol. 3D chapter 38; later-edition fields marked †).

Every structure is a slotted dataclass with a class constant ``SIZE``, ``pack()`` (exactly SIZE
bytes) and ``unpack()`` (reads the first SIZE bytes). Reserved areas are kept verbatim as
``bytes`` fields, so ``pack(unpack(b)) == b`` for any input: the emulator must be able to see,
and reject, non-zero reserved bytes rather than silently dropping them.

Field names are the SDM names in lowercase. A 128-bit ATTRIBUTES field is split into its FLAGS
half (``attributes``/``...mask``) and its XFRM half (``xfrm``/``xfrmmask``), because every leaf
tests the two halves separately.

The ``*_OFF_*`` constants are literal byte offsets for hot paths that poke EPC memory directly;
each class also carries ``OFFSETS`` (field name -> offset) derived from its format.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from operator import attrgetter
from types import MappingProxyType
from typing import Any, ClassVar, Self, TypeVar

from sgxemu.arch.constants import (
    EINITTOKEN_SIZE,
    EXINFO_SIZE,
    GPRSGX_SIZE,
    KEYREQUEST_SIZE,
    PAGE_SIZE,
    PAGEINFO_SIZE,
    PCMD_SIZE,
    REPORT_SIZE,
    SECINFO_SIZE,
    SECS_SIZE,
    SIGSTRUCT_SIZE,
    TARGETINFO_SIZE,
    TCS_SIZE,
    VA_SLOT_COUNT,
    VA_SLOT_SIZE,
)

Buffer = bytes | bytearray | memoryview

_T = TypeVar("_T", bound="SgxStruct")
_TOKEN = re.compile(r"(\d*)([QIHBs])")
_U64 = struct.Struct("<Q")


class SgxStruct:
    """Common pack/unpack machinery; layouts are attached by `_layout`."""

    __slots__ = ()

    SIZE: ClassVar[int]
    FIELDS: ClassVar[tuple[str, ...]]
    OFFSETS: ClassVar[Mapping[str, int]]
    _STRUCT: ClassVar[struct.Struct]
    _GET: ClassVar[Callable[[Any], tuple[Any, ...]]]
    _BYTES: ClassVar[tuple[tuple[int, int], ...]]  # (field index, exact length) of bytes fields
    __dataclass_fields__: ClassVar[dict[str, Any]]

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # replaced by @dataclass
        raise TypeError("SgxStruct is abstract")

    def _values(self) -> tuple[Any, ...]:
        return self._checked(type(self)._GET(self))

    def _checked(self, vals: tuple[Any, ...]) -> tuple[Any, ...]:
        for i, n in self._BYTES:
            # struct would silently pad or truncate; a wrong length is always a caller bug.
            if len(vals[i]) != n:
                name = self.FIELDS[i]
                raise ValueError(
                    f"{type(self).__name__}.{name} must be {n} bytes, got {len(vals[i])}"
                )
        return vals

    def pack(self) -> bytes:
        """The structure's exact in-memory image (SIZE bytes)."""
        return self._STRUCT.pack(*self._values())

    def pack_into(self, buffer: bytearray | memoryview, offset: int = 0) -> None:
        """Write the image straight into an EPC page or other writable buffer."""
        self._STRUCT.pack_into(buffer, offset, *self._values())

    @classmethod
    def unpack(cls, data: Buffer) -> Self:
        """Decode the first SIZE bytes of `data`."""
        return cls.unpack_from(data, 0)

    @classmethod
    def unpack_from(cls, data: Buffer, offset: int = 0) -> Self:
        """Decode SIZE bytes of `data` starting at `offset`."""
        if offset < 0 or len(data) - offset < cls.SIZE:
            raise ValueError(f"{cls.__name__} needs {cls.SIZE} bytes at offset {offset}")
        return cls(*cls._STRUCT.unpack_from(data, offset))


def _layout(fmt: str, size: int) -> Callable[[type[_T]], type[_T]]:
    """Attach a little-endian struct layout to a dataclass and check it against `size`.

    One format token per dataclass field, in declaration order; so offsets follow from the
    format and cannot drift from the field list.
    """

    def apply(cls: type[_T]) -> type[_T]:
        names = tuple(cls.__dataclass_fields__)
        tokens = _TOKEN.findall(fmt)
        if len(tokens) != len(names):
            raise TypeError(f"{cls.__name__}: {len(tokens)} format items for {len(names)} fields")
        offsets: dict[str, int] = {}
        byte_fields: list[tuple[int, int]] = []
        off = 0
        for i, (name, (count, code)) in enumerate(zip(names, tokens, strict=True)):
            offsets[name] = off
            if code == "s":
                byte_fields.append((i, int(count or 1)))
                off += int(count or 1)
            elif count:
                raise TypeError(f"{cls.__name__}: repeat counts only allowed on 's' ({name})")
            else:
                off += struct.calcsize("<" + code)
        compiled = struct.Struct("<" + fmt)
        if compiled.size != size or off != size:
            raise TypeError(f"{cls.__name__}: layout is {compiled.size} bytes, expected {size}")
        cls.SIZE = size
        cls.FIELDS = names
        cls.OFFSETS = MappingProxyType(offsets)
        cls._STRUCT = compiled
        cls._GET = attrgetter(*names)
        cls._BYTES = tuple(byte_fields)
        return cls

    return apply


# --------------------------------------------------------------------------------------------
# SECS


SECS_OFF_SIZE = 0
SECS_OFF_BASEADDR = 8
SECS_OFF_SSAFRAMESIZE = 16
SECS_OFF_MISCSELECT = 20
SECS_OFF_CET_LEG_BITMAP_OFFSET = 24
SECS_OFF_CET_ATTRIBUTES = 32
SECS_OFF_ATTRIBUTES = 48
SECS_OFF_XFRM = 56
SECS_OFF_MRENCLAVE = 64
SECS_OFF_MRSIGNER = 128
SECS_OFF_CONFIG_ID = 192
SECS_OFF_ISVPRODID = 256
SECS_OFF_ISVSVN = 258
SECS_OFF_CONFIGSVN = 260
SECS_OFF_RESERVED4 = 262  # hidden, implementation-placed SECS state lives in here


@_layout("QQIIQB15sQQ32s32s32s32s64sHHH3834s", SECS_SIZE)
@dataclass(slots=True)
class Secs(SgxStruct):
    """SGX Enclave Control Structure (SDM Table 38-2; † CET/KSS fields from later editions)."""

    size: int = 0
    baseaddr: int = 0
    ssaframesize: int = 0
    miscselect: int = 0
    cet_leg_bitmap_offset: int = 0  # †
    cet_attributes: int = 0  # †
    reserved1: bytes = bytes(15)
    attributes: int = 0  # ATTRIBUTES.FLAGS
    xfrm: int = 0  # ATTRIBUTES.XFRM
    mrenclave: bytes = bytes(32)
    reserved2: bytes = bytes(32)
    mrsigner: bytes = bytes(32)
    reserved3: bytes = bytes(32)
    config_id: bytes = bytes(64)  # †
    isvprodid: int = 0
    isvsvn: int = 0
    configsvn: int = 0  # †
    reserved4: bytes = bytes(3834)


# --------------------------------------------------------------------------------------------
# TCS


TCS_OFF_STATE = 0
TCS_OFF_FLAGS = 8
TCS_OFF_OSSA = 16
TCS_OFF_CSSA = 24
TCS_OFF_NSSA = 28
TCS_OFF_OENTRY = 32
TCS_OFF_AEP = 40
TCS_OFF_OFSBASE = 48
TCS_OFF_OGSBASE = 56
TCS_OFF_FSLIMIT = 64
TCS_OFF_GSLIMIT = 68
TCS_OFF_OCETSSA = 72
TCS_OFF_PREVSSP = 80
TCS_OFF_RESERVED = 88


@_layout("QQQIIQQQQIIQQ4008s", TCS_SIZE)
@dataclass(slots=True)
class Tcs(SgxStruct):
    """Thread Control Structure (SDM Table 38-9; † CET fields OCETSSA/PREVSSP from later editions)."""

    state: int = 0  # SDM16 misprints "STAGE"
    flags: int = 0
    ossa: int = 0
    cssa: int = 0
    nssa: int = 0
    oentry: int = 0
    aep: int = 0
    ofsbase: int = 0  # OFSBASGX
    ogsbase: int = 0  # OGSBASGX
    fslimit: int = 0
    gslimit: int = 0
    ocetssa: int = 0  # † reserved without CET
    prevssp: int = 0  # † reserved without CET
    reserved: bytes = bytes(4008)


# --------------------------------------------------------------------------------------------
# SSA frame: GPRSGX and MISC.EXINFO

# The 20 consecutive u64 registers at the start of GPRSGX; field i sits at offset 8*i.
GPRSGX_FIELDS: tuple[str, ...] = (
    "rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
    "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
    "rflags", "rip", "ursp", "urbp",
)  # fmt: skip

GPRSGX_OFF_RFLAGS = 128
GPRSGX_OFF_RIP = 136
GPRSGX_OFF_URSP = 144
GPRSGX_OFF_URBP = 152
GPRSGX_OFF_EXITINFO = 160
GPRSGX_OFF_AEXNOTIFY = 167
GPRSGX_OFF_FSBASE = 168
GPRSGX_OFF_GSBASE = 176


@_layout("Q" * 20 + "I3sBQQ", GPRSGX_SIZE)
@dataclass(slots=True)
class Gprsgx(SgxStruct):
    """GPRSGX, the last 184 bytes of an SSA frame (SDM Table 38-8; † AEXNOTIFY byte)."""

    rax: int = 0
    rcx: int = 0
    rdx: int = 0
    rbx: int = 0
    rsp: int = 0
    rbp: int = 0
    rsi: int = 0
    rdi: int = 0
    r8: int = 0
    r9: int = 0
    r10: int = 0
    r11: int = 0
    r12: int = 0
    r13: int = 0
    r14: int = 0
    r15: int = 0
    rflags: int = 0
    rip: int = 0
    ursp: int = 0
    urbp: int = 0
    exitinfo: int = 0
    reserved: bytes = bytes(3)
    aexnotify: int = 0  # † bit 0
    fsbase: int = 0
    gsbase: int = 0


GPRSGX_OFFSETS: Mapping[str, int] = Gprsgx.OFFSETS


EXITINFO_VECTOR_MASK = 0xFF
EXITINFO_EXIT_TYPE_SHIFT = 8
EXITINFO_EXIT_TYPE_MASK = 0x7 << EXITINFO_EXIT_TYPE_SHIFT
EXITINFO_VALID = 1 << 31
EXITINFO_RESERVED_MASK = 0x7FFFF800  # bits 30:11


def exitinfo(vector: int, exit_type: int) -> int:
    """A valid GPRSGX.EXITINFO value for an exception AEX (SDM Table 38-9)."""
    return EXITINFO_VALID | ((exit_type & 0x7) << EXITINFO_EXIT_TYPE_SHIFT) | (vector & 0xFF)


@dataclass(frozen=True, slots=True)
class ExitInfo:
    """Decoded GPRSGX.EXITINFO: VECTOR 7:0, EXIT_TYPE 10:8, VALID 31 (SDM Table 38-9)."""

    vector: int = 0
    exit_type: int = 0
    valid: bool = False

    def encode(self) -> int:
        value = ((self.exit_type & 0x7) << EXITINFO_EXIT_TYPE_SHIFT) | (self.vector & 0xFF)
        return (value | EXITINFO_VALID) if self.valid else value

    @classmethod
    def decode(cls, value: int) -> Self:
        """Decode; reserved bits 30:11 are ignored."""
        return cls(
            vector=value & EXITINFO_VECTOR_MASK,
            exit_type=(value & EXITINFO_EXIT_TYPE_MASK) >> EXITINFO_EXIT_TYPE_SHIFT,
            valid=bool(value & EXITINFO_VALID),
        )


EXINFO_OFF_MADDR = 0
EXINFO_OFF_ERRCD = 8


@_layout("QI4s", EXINFO_SIZE)
@dataclass(slots=True)
class Exinfo(SgxStruct):
    """MISC.EXINFO, the 16 bytes just below GPRSGX (SDM Table 38-11)."""

    maddr: int = 0
    errcd: int = 0
    reserved: bytes = bytes(4)


def ssa_gprsgx_offset(ssaframesize: int) -> int:
    """Offset of GPRSGX within one SSA frame of `ssaframesize` pages."""
    return ssaframesize * PAGE_SIZE - GPRSGX_SIZE


def ssa_exinfo_offset(ssaframesize: int) -> int:
    """Offset of MISC.EXINFO within one SSA frame (immediately below GPRSGX)."""
    return ssaframesize * PAGE_SIZE - GPRSGX_SIZE - EXINFO_SIZE


# --------------------------------------------------------------------------------------------
# SECINFO, PAGEINFO, PCMD

SECINFO_OFF_FLAGS = 0


@_layout("Q56s", SECINFO_SIZE)
@dataclass(slots=True)
class Secinfo(SgxStruct):
    """Security Information (SDM Table 38-15)."""

    flags: int = 0
    reserved: bytes = bytes(56)


PAGEINFO_OFF_LINADDR = 0
PAGEINFO_OFF_SRCPGE = 8
PAGEINFO_OFF_SECINFO = 16
PAGEINFO_OFF_PCMD = 16
PAGEINFO_OFF_SECS = 24


@_layout("QQQQ", PAGEINFO_SIZE)
@dataclass(slots=True)
class Pageinfo(SgxStruct):
    """Paging Information (SDM Table 38-14).

    The third field is the SECINFO pointer for ECREATE/EADD/EAUG and the PCMD pointer for
    EWB/ELDB/ELDU; `pcmd` is an alias of `secinfo`.
    """

    linaddr: int = 0
    srcpge: int = 0
    secinfo: int = 0
    secs: int = 0

    @property
    def pcmd(self) -> int:
        return self.secinfo

    @pcmd.setter
    def pcmd(self, value: int) -> None:
        self.secinfo = value


PCMD_OFF_SECINFO = 0
PCMD_OFF_ENCLAVEID = 64
PCMD_OFF_RESERVED = 72
PCMD_OFF_MAC = 112


@_layout("64sQ40s16s", PCMD_SIZE)
@dataclass(slots=True)
class Pcmd(SgxStruct):
    """Paging Crypto MetaData (SDM Table 38-18); `secinfo` is a nested Secinfo."""

    secinfo: Secinfo = field(default_factory=Secinfo)
    enclaveid: int = 0
    reserved: bytes = bytes(40)
    mac: bytes = bytes(16)

    def _values(self) -> tuple[Any, ...]:
        return self._checked((self.secinfo.pack(), self.enclaveid, self.reserved, self.mac))

    @classmethod
    def unpack_from(cls, data: Buffer, offset: int = 0) -> Self:
        if offset < 0 or len(data) - offset < cls.SIZE:
            raise ValueError(f"{cls.__name__} needs {cls.SIZE} bytes at offset {offset}")
        raw, eid, reserved, mac = cls._STRUCT.unpack_from(data, offset)
        return cls(Secinfo.unpack(raw), eid, reserved, mac)


# --------------------------------------------------------------------------------------------
# SIGSTRUCT and EINITTOKEN

SIGSTRUCT_OFF_HEADER = 0
SIGSTRUCT_OFF_VENDOR = 16
SIGSTRUCT_OFF_DATE = 20
SIGSTRUCT_OFF_HEADER2 = 24
SIGSTRUCT_OFF_SWDEFINED = 40
SIGSTRUCT_OFF_MODULUS = 128
SIGSTRUCT_OFF_EXPONENT = 512
SIGSTRUCT_OFF_SIGNATURE = 516
SIGSTRUCT_OFF_MISCSELECT = 900
SIGSTRUCT_OFF_MISCMASK = 904
SIGSTRUCT_OFF_CET_ATTRIBUTES = 908
SIGSTRUCT_OFF_CET_ATTRIBUTES_MASK = 909
SIGSTRUCT_OFF_ISVFAMILYID = 912
SIGSTRUCT_OFF_ATTRIBUTES = 928
SIGSTRUCT_OFF_XFRM = 936
SIGSTRUCT_OFF_ATTRIBUTEMASK = 944
SIGSTRUCT_OFF_XFRMMASK = 952
SIGSTRUCT_OFF_ENCLAVEHASH = 960
SIGSTRUCT_OFF_ISVEXTPRODID = 1008
SIGSTRUCT_OFF_ISVPRODID = 1024
SIGSTRUCT_OFF_ISVSVN = 1026
SIGSTRUCT_OFF_Q1 = 1040
SIGSTRUCT_OFF_Q2 = 1424
# The RSA-signed bytes: HEADER..reserved1 and MISCSELECT..ISVSVN (256 bytes in all).
SIGSTRUCT_SIGNED_RANGES: tuple[tuple[int, int], ...] = ((0, 128), (900, 1028))


def sigstruct_signed_data(raw: Buffer) -> bytes:
    """The signed 256 bytes of a packed SIGSTRUCT, without decoding it."""
    return bytes(raw[0:128]) + bytes(raw[900:1028])


@_layout("16sII16sI84s384sI384sIIBB2s16sQQQQ32s16s16sHH12s384s384s", SIGSTRUCT_SIZE)
@dataclass(slots=True)
class Sigstruct(SgxStruct):
    """Enclave Signature Structure (SDM Table 38-19; † CET/KSS fields from later editions).

    modulus, signature, q1 and q2 are little-endian integers, stored as in memory.
    """

    header: bytes = bytes(16)
    vendor: int = 0
    date: int = 0
    header2: bytes = bytes(16)
    swdefined: int = 0
    reserved1: bytes = bytes(84)
    modulus: bytes = bytes(384)
    exponent: int = 0
    signature: bytes = bytes(384)
    miscselect: int = 0
    miscmask: int = 0
    cet_attributes: int = 0  # †
    cet_attributes_mask: int = 0  # †
    reserved2: bytes = bytes(2)
    isvfamilyid: bytes = bytes(16)  # †
    attributes: int = 0
    xfrm: int = 0
    attributemask: int = 0
    xfrmmask: int = 0
    enclavehash: bytes = bytes(32)
    reserved3: bytes = bytes(16)
    isvextprodid: bytes = bytes(16)  # †
    isvprodid: int = 0
    isvsvn: int = 0
    reserved4: bytes = bytes(12)
    q1: bytes = bytes(384)
    q2: bytes = bytes(384)

    def signed_data(self) -> bytes:
        """Bytes [0,128) + [900,1028) of the packed form: the message EINIT verifies."""
        return sigstruct_signed_data(self.pack())


EINITTOKEN_OFF_VALID = 0
EINITTOKEN_OFF_ATTRIBUTES = 48
EINITTOKEN_OFF_XFRM = 56
EINITTOKEN_OFF_MRENCLAVE = 64
EINITTOKEN_OFF_MRSIGNER = 128
EINITTOKEN_OFF_CPUSVNLE = 192
EINITTOKEN_OFF_ISVPRODIDLE = 208
EINITTOKEN_OFF_ISVSVNLE = 210
EINITTOKEN_OFF_MASKEDMISCSELECTLE = 236
EINITTOKEN_OFF_MASKEDATTRIBUTESLE = 240
EINITTOKEN_OFF_MASKEDXFRMLE = 248
EINITTOKEN_OFF_KEYID = 256
EINITTOKEN_OFF_MAC = 288
EINITTOKEN_MAC_DATA_SIZE = 192


@_layout("I44sQQ32s32s32s32s16sHH24sIQQ32s16s", EINITTOKEN_SIZE)
@dataclass(slots=True)
class Einittoken(SgxStruct):
    """EINIT token (SDM Table 38-20). reserved4 may hold † CET_MASKED_ATTRIBUTES_LE (offset unverified)."""

    valid: int = 0
    reserved1: bytes = bytes(44)
    attributes: int = 0
    xfrm: int = 0
    mrenclave: bytes = bytes(32)
    reserved2: bytes = bytes(32)
    mrsigner: bytes = bytes(32)
    reserved3: bytes = bytes(32)
    cpusvnle: bytes = bytes(16)
    isvprodidle: int = 0
    isvsvnle: int = 0
    reserved4: bytes = bytes(24)
    maskedmiscselectle: int = 0
    maskedattributesle: int = 0
    maskedxfrmle: int = 0
    keyid: bytes = bytes(32)
    mac: bytes = bytes(16)

    def mac_data(self) -> bytes:
        """Bytes [0,192): the part covered by the token MAC."""
        return self.pack()[:EINITTOKEN_MAC_DATA_SIZE]


# --------------------------------------------------------------------------------------------
# REPORT, TARGETINFO, KEYREQUEST

REPORT_OFF_CPUSVN = 0
REPORT_OFF_MISCSELECT = 16
REPORT_OFF_CET_ATTRIBUTES = 20
REPORT_OFF_ISVEXTPRODID = 32
REPORT_OFF_ATTRIBUTES = 48
REPORT_OFF_XFRM = 56
REPORT_OFF_MRENCLAVE = 64
REPORT_OFF_MRSIGNER = 128
REPORT_OFF_CONFIG_ID = 192
REPORT_OFF_ISVPRODID = 256
REPORT_OFF_ISVSVN = 258
REPORT_OFF_CONFIGSVN = 260
REPORT_OFF_ISVFAMILYID = 304
REPORT_OFF_REPORTDATA = 320
REPORT_OFF_KEYID = 384
REPORT_OFF_MAC = 416
REPORT_MAC_DATA_SIZE = 384


@_layout("16sIB11s16sQQ32s32s32s32s64sHHH42s16s64s32s16s", REPORT_SIZE)
@dataclass(slots=True)
class Report(SgxStruct):
    """EREPORT output (SDM Table 38-21; † CET/KSS fields from later editions)."""

    cpusvn: bytes = bytes(16)
    miscselect: int = 0
    cet_attributes: int = 0  # †
    reserved1: bytes = bytes(11)
    isvextprodid: bytes = bytes(16)  # †
    attributes: int = 0
    xfrm: int = 0
    mrenclave: bytes = bytes(32)
    reserved2: bytes = bytes(32)
    mrsigner: bytes = bytes(32)
    reserved3: bytes = bytes(32)
    config_id: bytes = bytes(64)  # †
    isvprodid: int = 0
    isvsvn: int = 0
    configsvn: int = 0  # †
    reserved4: bytes = bytes(42)
    isvfamilyid: bytes = bytes(16)  # †
    reportdata: bytes = bytes(64)
    keyid: bytes = bytes(32)
    mac: bytes = bytes(16)

    def mac_data(self) -> bytes:
        """Bytes [0,384): the part covered by the report MAC."""
        return self.pack()[:REPORT_MAC_DATA_SIZE]


TARGETINFO_OFF_MEASUREMENT = 0
TARGETINFO_OFF_ATTRIBUTES = 32
TARGETINFO_OFF_XFRM = 40
TARGETINFO_OFF_CET_ATTRIBUTES = 48
TARGETINFO_OFF_CONFIGSVN = 50
TARGETINFO_OFF_MISCSELECT = 52
TARGETINFO_OFF_CONFIG_ID = 64


@_layout("32sQQBsHI8s64s384s", TARGETINFO_SIZE)
@dataclass(slots=True)
class Targetinfo(SgxStruct):
    """EREPORT target (SDM Table 38-22; † CET/KSS fields from later editions)."""

    measurement: bytes = bytes(32)
    attributes: int = 0
    xfrm: int = 0
    cet_attributes: int = 0  # †
    reserved1: bytes = bytes(1)
    configsvn: int = 0  # †
    miscselect: int = 0
    reserved2: bytes = bytes(8)
    config_id: bytes = bytes(64)  # †
    reserved3: bytes = bytes(384)


KEYREQUEST_OFF_KEYNAME = 0
KEYREQUEST_OFF_KEYPOLICY = 2
KEYREQUEST_OFF_ISVSVN = 4
KEYREQUEST_OFF_CPUSVN = 8
KEYREQUEST_OFF_ATTRIBUTEMASK = 24
KEYREQUEST_OFF_XFRMMASK = 32
KEYREQUEST_OFF_KEYID = 40
KEYREQUEST_OFF_MISCMASK = 72
KEYREQUEST_OFF_CONFIGSVN = 76


@_layout("HHH2s16sQQ32sIH434s", KEYREQUEST_SIZE)
@dataclass(slots=True)
class Keyrequest(SgxStruct):
    """EGETKEY request (SDM Table 38-23). reserved1 may hold † CET_ATTRIBUTES_MASK (unverified)."""

    keyname: int = 0
    keypolicy: int = 0
    isvsvn: int = 0
    reserved1: bytes = bytes(2)
    cpusvn: bytes = bytes(16)
    attributemask: int = 0
    xfrmmask: int = 0
    keyid: bytes = bytes(32)
    miscmask: int = 0
    configsvn: int = 0  # †
    reserved2: bytes = bytes(434)


# --------------------------------------------------------------------------------------------
# VA pages: 512 little-endian u64 version slots; 0 means empty.


def va_slot_offset(index: int) -> int:
    """Byte offset of slot `index` within a VA page."""
    if not 0 <= index < VA_SLOT_COUNT:
        raise IndexError(f"VA slot index {index} out of range")
    return index * VA_SLOT_SIZE


def va_read_slot(page: Buffer, index: int) -> int:
    """The version stored in slot `index` of a 4096-byte VA page."""
    return int(_U64.unpack_from(page, va_slot_offset(index))[0])


def va_write_slot(page: bytearray | memoryview, index: int, version: int) -> None:
    """Store `version` (0 clears) in slot `index` of a 4096-byte VA page."""
    _U64.pack_into(page, va_slot_offset(index), version)
