"""Byte-exactness of the SGX architectural structures in sgxemu.arch.structs."""

from __future__ import annotations

import re
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sgxemu.arch import constants as C
from sgxemu.arch import structs as S

ALL: list[tuple[type[S.SgxStruct], int]] = [
    (S.Secs, C.SECS_SIZE),
    (S.Tcs, C.TCS_SIZE),
    (S.Gprsgx, C.GPRSGX_SIZE),
    (S.Exinfo, C.EXINFO_SIZE),
    (S.Secinfo, C.SECINFO_SIZE),
    (S.Pageinfo, C.PAGEINFO_SIZE),
    (S.Pcmd, C.PCMD_SIZE),
    (S.Sigstruct, C.SIGSTRUCT_SIZE),
    (S.Einittoken, C.EINITTOKEN_SIZE),
    (S.Report, C.REPORT_SIZE),
    (S.Targetinfo, C.TARGETINFO_SIZE),
    (S.Keyrequest, C.KEYREQUEST_SIZE),
]
IDS = [cls.__name__ for cls, _ in ALL]


@pytest.mark.parametrize(("cls", "size"), ALL, ids=IDS)
def test_size_and_default(cls: type[S.SgxStruct], size: int) -> None:
    assert size == cls.SIZE
    raw = cls().pack()
    assert raw == bytes(size)
    assert cls.unpack(raw) == cls()


@pytest.mark.parametrize(("cls", "size"), ALL, ids=IDS)
@settings(suppress_health_check=[HealthCheck.large_base_example, HealthCheck.data_too_large])
@given(data=st.data())
def test_roundtrip_any_bytes(cls: type[S.SgxStruct], size: int, data: st.DataObject) -> None:
    raw = data.draw(st.binary(min_size=size, max_size=size))
    obj = cls.unpack(raw)
    assert obj.pack() == raw
    assert cls.unpack(bytearray(raw)) == obj
    assert cls.unpack(memoryview(raw)) == obj


@pytest.mark.parametrize(("cls", "size"), ALL, ids=IDS)
def test_unpack_reads_prefix_and_rejects_short(cls: type[S.SgxStruct], size: int) -> None:
    raw = bytes(range(256)) * (size // 256 + 1)
    obj = cls.unpack(raw[:size] + b"\xaa" * 7)
    assert obj.pack() == raw[:size]
    assert cls.unpack_from(b"\x00" * 3 + raw[:size], 3).pack() == raw[:size]
    with pytest.raises(ValueError):
        cls.unpack(raw[: size - 1])


@pytest.mark.parametrize(("cls", "size"), ALL, ids=IDS)
def test_pack_into(cls: type[S.SgxStruct], size: int) -> None:
    raw = bytes((i * 7 + 3) & 0xFF for i in range(size))
    buf = bytearray(size + 16)
    cls.unpack(raw).pack_into(buf, 8)
    assert bytes(buf[8 : 8 + size]) == raw
    assert buf[:8] == bytes(8) and buf[8 + size :] == bytes(8)


@pytest.mark.parametrize(("cls", "size"), ALL, ids=IDS)
def test_every_field_lands_at_its_offset(cls: type[S.SgxStruct], size: int) -> None:
    # Set one field at a time to an all-0xFF value and find exactly its bytes in the image.
    offsets = sorted(cls.OFFSETS.items(), key=lambda kv: kv[1])
    ends = [o for _, o in offsets[1:]] + [size]
    for (name, off), end in zip(offsets, ends, strict=True):
        width = end - off
        default = getattr(cls(), name)
        if isinstance(default, bytes):
            value: object = b"\xff" * width
        elif isinstance(default, S.Secinfo):
            value = S.Secinfo.unpack(b"\xff" * S.Secinfo.SIZE)
        else:
            value = (1 << (8 * width)) - 1
        raw = cls(**{name: value}).pack()
        assert raw == bytes(off) + b"\xff" * width + bytes(size - end), name


def test_bytes_fields_must_have_exact_length() -> None:
    with pytest.raises(ValueError, match="mrenclave"):
        S.Secs(mrenclave=b"\x01" * 31).pack()
    with pytest.raises(ValueError):
        S.Secinfo(reserved=bytes(57)).pack()
    with pytest.raises(ValueError):
        S.Pcmd(mac=bytes(15)).pack()


def test_int_out_of_range_rejected() -> None:
    with pytest.raises(struct.error):
        S.Tcs(cssa=1 << 32).pack()


# ---- known offsets (SDM layouts) ---------------------------------------------------------


def le(value: int, width: int) -> bytes:
    return value.to_bytes(width, "little")


def test_secs_offsets() -> None:
    raw = S.Secs(
        size=0x10000,
        baseaddr=0x7F0000000000,
        ssaframesize=2,
        miscselect=1,
        attributes=0x6,
        xfrm=0x3,
        isvprodid=0x1234,
        isvsvn=0x5678,
        configsvn=0x9ABC,
    ).pack()
    assert raw[0:8] == le(0x10000, 8)
    assert raw[8:16] == le(0x7F0000000000, 8)
    assert raw[16:20] == le(2, 4)
    assert raw[20:24] == le(1, 4)
    assert raw[48:56] == le(6, 8)
    assert raw[56:64] == le(3, 8)
    assert raw[256:258] == le(0x1234, 2)
    assert raw[258:260] == le(0x5678, 2)
    assert raw[260:262] == le(0x9ABC, 2)
    assert S.Secs(mrenclave=b"\x11" * 32).pack()[64:96] == b"\x11" * 32
    assert S.Secs(mrsigner=b"\x22" * 32).pack()[128:160] == b"\x22" * 32
    assert S.Secs(config_id=b"\x33" * 64).pack()[192:256] == b"\x33" * 64
    assert S.SECS_OFF_ATTRIBUTES == 48 and S.SECS_OFF_XFRM == 56


def test_tcs_offsets() -> None:
    assert S.Tcs(cssa=5).pack()[24:28] == le(5, 4)
    raw = S.Tcs(
        state=1,
        flags=2,
        ossa=0x3000,
        nssa=4,
        oentry=0x1000,
        aep=0xDEAD,
        ofsbase=0x5000,
        ogsbase=0x6000,
        fslimit=0xFFF,
        gslimit=0xFFE,
    ).pack()
    assert raw[S.TCS_OFF_STATE : S.TCS_OFF_STATE + 8] == le(1, 8)
    assert raw[S.TCS_OFF_FLAGS : S.TCS_OFF_FLAGS + 8] == le(2, 8)
    assert raw[S.TCS_OFF_OSSA : S.TCS_OFF_OSSA + 8] == le(0x3000, 8)
    assert raw[S.TCS_OFF_NSSA : S.TCS_OFF_NSSA + 4] == le(4, 4)
    assert raw[S.TCS_OFF_OENTRY : S.TCS_OFF_OENTRY + 8] == le(0x1000, 8)
    assert raw[S.TCS_OFF_AEP : S.TCS_OFF_AEP + 8] == le(0xDEAD, 8)
    assert raw[S.TCS_OFF_OFSBASE : S.TCS_OFF_OFSBASE + 8] == le(0x5000, 8)
    assert raw[S.TCS_OFF_OGSBASE : S.TCS_OFF_OGSBASE + 8] == le(0x6000, 8)
    assert raw[64:68] == le(0xFFF, 4) and raw[68:72] == le(0xFFE, 4)
    expected = (0, 8, 16, 24, 28, 32, 40, 48, 56)
    got = (
        S.TCS_OFF_STATE,
        S.TCS_OFF_FLAGS,
        S.TCS_OFF_OSSA,
        S.TCS_OFF_CSSA,
        S.TCS_OFF_NSSA,
        S.TCS_OFF_OENTRY,
        S.TCS_OFF_AEP,
        S.TCS_OFF_OFSBASE,
        S.TCS_OFF_OGSBASE,
    )
    assert got == expected


def test_gprsgx_offsets() -> None:
    assert S.Gprsgx(rip=0x401000).pack()[136:144] == le(0x401000, 8)
    assert S.Gprsgx(fsbase=0xABC).pack()[168:176] == le(0xABC, 8)
    assert S.Gprsgx(gsbase=0xDEF).pack()[176:184] == le(0xDEF, 8)
    assert S.Gprsgx(exitinfo=0x8000030E).pack()[160:164] == le(0x8000030E, 4)
    assert S.Gprsgx(aexnotify=1).pack()[167] == 1
    assert S.GPRSGX_FIELDS[:4] == ("rax", "rcx", "rdx", "rbx")
    assert len(S.GPRSGX_FIELDS) == 20
    for i, name in enumerate(S.GPRSGX_FIELDS):
        assert S.GPRSGX_OFFSETS[name] == 8 * i
        regs = S.Gprsgx()
        setattr(regs, name, i + 1)
        assert regs.pack()[8 * i : 8 * i + 8] == le(i + 1, 8)


def test_exinfo_and_ssa_helpers() -> None:
    raw = S.Exinfo(maddr=0x1234000, errcd=0x8007).pack()
    assert raw[0:8] == le(0x1234000, 8) and raw[8:12] == le(0x8007, 4)
    assert S.ssa_gprsgx_offset(1) == 4096 - 184
    assert S.ssa_exinfo_offset(2) == 8192 - 184 - 16


def test_exitinfo() -> None:
    value = S.exitinfo(C.Vector.PF, C.ExitType.HARDWARE)
    assert value == 0x8000030E
    info = S.ExitInfo.decode(value)
    assert info == S.ExitInfo(vector=14, exit_type=3, valid=True)
    assert info.encode() == value
    assert S.ExitInfo.decode(0x603) == S.ExitInfo(vector=3, exit_type=6, valid=False)
    assert S.ExitInfo.decode(0xFFFFFFFF).encode() == 0x800007FF
    assert S.EXITINFO_RESERVED_MASK == 0x7FFFF800


def test_pageinfo_and_pcmd() -> None:
    raw = S.Pageinfo(linaddr=1, srcpge=2, secinfo=3, secs=4).pack()
    assert raw == le(1, 8) + le(2, 8) + le(3, 8) + le(4, 8)
    pi = S.Pageinfo()
    pi.pcmd = 0x77
    assert pi.secinfo == 0x77 and pi.pcmd == 0x77
    pcmd = S.Pcmd(secinfo=S.Secinfo(flags=0x201), enclaveid=9, mac=b"\x5a" * 16)
    raw = pcmd.pack()
    assert raw[0:8] == le(0x201, 8)
    assert raw[64:72] == le(9, 8)
    assert raw[112:128] == b"\x5a" * 16
    assert S.Pcmd.unpack(raw) == pcmd


def test_sigstruct_offsets_and_signed_data() -> None:
    sig = S.Sigstruct(
        header=C.SIGSTRUCT_HEADER,
        vendor=C.SIGSTRUCT_VENDOR_INTEL,
        date=0x20240101,
        header2=C.SIGSTRUCT_HEADER2,
        exponent=3,
        miscselect=1,
        miscmask=0xFFFFFFFF,
        attributes=0x4,
        xfrm=0x3,
        attributemask=0xFF,
        xfrmmask=0x7,
        enclavehash=b"\xee" * 32,
        isvprodid=7,
        isvsvn=8,
        modulus=b"\x01" * 384,
        signature=b"\x02" * 384,
        q1=b"\x03" * 384,
        q2=b"\x04" * 384,
    )
    raw = sig.pack()
    assert raw[0:16] == C.SIGSTRUCT_HEADER
    assert raw[16:20] == le(0x8086, 4)
    assert raw[24:40] == C.SIGSTRUCT_HEADER2
    assert raw[128:512] == b"\x01" * 384
    assert raw[512:516] == le(3, 4)
    assert raw[516:900] == b"\x02" * 384
    assert raw[900:904] == le(1, 4)
    assert raw[904:908] == le(0xFFFFFFFF, 4)
    assert raw[928:936] == le(4, 8)
    assert raw[936:944] == le(3, 8)
    assert raw[944:952] == le(0xFF, 8)
    assert raw[952:960] == le(7, 8)
    assert raw[960:992] == b"\xee" * 32
    assert raw[1024:1026] == le(7, 2) and raw[1026:1028] == le(8, 2)
    assert raw[1040:1424] == b"\x03" * 384
    assert raw[1424:1808] == b"\x04" * 384
    signed = sig.signed_data()
    assert len(signed) == 256
    assert signed == raw[0:128] + raw[900:1028]
    assert S.sigstruct_signed_data(raw) == signed
    assert S.Sigstruct(isvfamilyid=b"\x10" * 16).pack()[912:928] == b"\x10" * 16
    assert S.Sigstruct(isvextprodid=b"\x20" * 16).pack()[1008:1024] == b"\x20" * 16
    assert S.Sigstruct(cet_attributes=1, cet_attributes_mask=2).pack()[908:910] == b"\x01\x02"


def test_einittoken_offsets() -> None:
    tok = S.Einittoken(valid=1, attributes=0x6, xfrm=3, isvprodidle=5, mac=b"\x99" * 16)
    raw = tok.pack()
    assert raw[0:4] == le(1, 4)
    assert raw[48:56] == le(6, 8) and raw[56:64] == le(3, 8)
    assert raw[208:210] == le(5, 2)
    assert raw[288:304] == b"\x99" * 16
    assert tok.mac_data() == raw[:192]
    assert S.Einittoken(maskedmiscselectle=0xA).pack()[236:240] == le(0xA, 4)
    assert S.Einittoken(maskedattributesle=0xB).pack()[240:248] == le(0xB, 8)
    assert S.Einittoken(keyid=b"\x42" * 32).pack()[256:288] == b"\x42" * 32


def test_report_offsets() -> None:
    rep = S.Report(
        miscselect=1,
        attributes=0x7,
        xfrm=0x3,
        mrenclave=b"\x01" * 32,
        mrsigner=b"\x02" * 32,
        isvprodid=0x11,
        isvsvn=0x22,
        reportdata=b"\x03" * 64,
        keyid=b"\x04" * 32,
        mac=b"\x05" * 16,
    )
    raw = rep.pack()
    assert raw[16:20] == le(1, 4)
    assert raw[48:56] == le(7, 8)
    assert raw[64:96] == b"\x01" * 32
    assert raw[128:160] == b"\x02" * 32
    assert raw[256:258] == le(0x11, 2) and raw[258:260] == le(0x22, 2)
    assert raw[320:384] == b"\x03" * 64
    assert raw[384:416] == b"\x04" * 32
    assert raw[416:432] == b"\x05" * 16
    assert rep.mac_data() == raw[:384]
    assert S.REPORT_OFF_MAC == 416


def test_targetinfo_and_keyrequest_offsets() -> None:
    raw = S.Targetinfo(
        measurement=b"\x01" * 32, attributes=0x5, xfrm=0x3, configsvn=9, miscselect=1
    ).pack()
    assert raw[0:32] == b"\x01" * 32
    assert raw[32:40] == le(5, 8) and raw[40:48] == le(3, 8)
    assert raw[50:52] == le(9, 2)
    assert raw[52:56] == le(1, 4)
    raw = S.Keyrequest(
        keyname=C.KeyName.SEAL_KEY,
        keypolicy=C.KeyPolicy.MRSIGNER,
        isvsvn=3,
        cpusvn=b"\x07" * 16,
        attributemask=0xFF,
        xfrmmask=0x3,
        keyid=b"\x08" * 32,
        miscmask=0xFFFFFFFF,
        configsvn=2,
    ).pack()
    assert raw[0:2] == le(4, 2) and raw[2:4] == le(2, 2) and raw[4:6] == le(3, 2)
    assert raw[8:24] == b"\x07" * 16
    assert raw[24:32] == le(0xFF, 8) and raw[32:40] == le(3, 8)
    assert raw[40:72] == b"\x08" * 32
    assert raw[72:76] == le(0xFFFFFFFF, 4)
    assert raw[76:78] == le(2, 2)


def test_offset_constants_match_layouts() -> None:
    classes: dict[str, type[S.SgxStruct]] = {
        "SECS": S.Secs,
        "TCS": S.Tcs,
        "GPRSGX": S.Gprsgx,
        "EXINFO": S.Exinfo,
        "SECINFO": S.Secinfo,
        "PAGEINFO": S.Pageinfo,
        "PCMD": S.Pcmd,
        "SIGSTRUCT": S.Sigstruct,
        "EINITTOKEN": S.Einittoken,
        "REPORT": S.Report,
        "TARGETINFO": S.Targetinfo,
        "KEYREQUEST": S.Keyrequest,
    }
    seen = 0
    for name, value in vars(S).items():
        m = re.fullmatch(r"([A-Z]+)_OFF_(\w+)", name)
        if not m:
            continue
        field = "secinfo" if name == "PAGEINFO_OFF_PCMD" else m[2].lower()
        assert classes[m[1]].OFFSETS[field] == value, name
        seen += 1
    assert seen > 80


def test_va_slots() -> None:
    page = bytearray(C.PAGE_SIZE)
    assert S.va_slot_offset(0) == 0 and S.va_slot_offset(511) == 4088
    S.va_write_slot(page, 3, 0x1122334455667788)
    assert page[24:32] == le(0x1122334455667788, 8)
    assert S.va_read_slot(page, 3) == 0x1122334455667788
    assert S.va_read_slot(bytes(page), 4) == 0
    S.va_write_slot(memoryview(page), 3, 0)
    assert page == bytearray(C.PAGE_SIZE)
    with pytest.raises(IndexError):
        S.va_slot_offset(512)
    with pytest.raises(IndexError):
        S.va_slot_offset(-1)
