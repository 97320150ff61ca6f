"""EINIT (SDM EINIT, spec 3.4 and 8): every check in order, the commit, launch tokens, vectors."""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

import testkeys
from sgxemu.arch.constants import (
    EINITTOKEN_SIZE,
    HARDCODED_PKCS1_5_PADDING,
    INTEL_LE_PUBKEYHASH,
    KEYREQUEST_SIZE,
    PAGE_SIZE,
    Attribute,
    EnclsLeaf,
    EncluLeaf,
    KeyName,
    PageType,
    PfErrorCode,
    SgxError,
    secinfo_flags,
)
from sgxemu.arch.structs import Einittoken, Keyrequest, Tcs
from sgxemu.hw.faults import GeneralProtection, PageFault, SgxFault
from sgxemu.hw.keys import einittoken_key, einittoken_mac
from sgxemu.hw.secs import SecsState
from sgxemu.leafkit import Enclave, LeafKit
from sgxemu.sign import EnclaveMeasurer, mrsigner_of_key, sign_sigstruct
from testkeys import VECTORS, needs_vectors

ENARX = VECTORS / "enarx-sgx"

TCS_FLAGS = secinfo_flags(PageType.PT_TCS)  # 0x100
REG_RW = secinfo_flags(PageType.PT_REG, 0x3)  # 0x203
REG_RWX = secinfo_flags(PageType.PT_REG, 0x7)  # 0x207
M64 = int(Attribute.MODE64BIT)
SIZE = 0x8000
PF_SGX = int(PfErrorCode.P | PfErrorCode.SGX)

# Kernel scratch addresses for operands the kit's einit() does not place (non-EPC, 4 KiB aligned).
SIG_AT = 0x20_0000
TOKEN_AT = 0x20_1000
NON_EPC = 0x30_0000


@pytest.fixture(scope="module")
def key_a() -> rsa.RSAPrivateKey:
    return testkeys.key_a()


@pytest.fixture(scope="module")
def key_b() -> rsa.RSAPrivateKey:
    return testkeys.key_b()


# -- building ------------------------------------------------------------------------------------


def tcs_page() -> bytes:
    """A TCS with one SSA frame at +0x1000 and the entry point at +0x2000."""
    return Tcs(ossa=0x1000, nssa=1, oentry=0x2000, fslimit=0xFFF, gslimit=0xFFF).pack()


@dataclass
class Built:
    encl: Enclave
    mrenclave: bytes
    pages: list[tuple[int, bytes, int]] = field(default_factory=list)


def build(
    kit: LeafKit,
    base: int,
    *,
    attributes: int = M64,
    miscselect: int = 0,
    xfrm: int = 3,
) -> Built:
    """ECREATE + TCS, SSA and one data page, all measured; the offline MRENCLAVE alongside."""
    encl = kit.ecreate(base, SIZE, attributes=attributes, xfrm=xfrm, miscselect=miscselect)
    m = EnclaveMeasurer(SIZE, ssaframesize=1)
    pages = [(0, tcs_page(), TCS_FLAGS), (0x1000, bytes(PAGE_SIZE), REG_RW)]
    pages.append((0x2000, bytes(range(256)) * 16, REG_RWX))
    for off, data, flags in pages:
        kit.eadd(encl, base + off, data, flags)
        m.add_page(off, data, flags)
    return Built(encl, m.mrenclave(), pages)


def sign(key: rsa.RSAPrivateKey, mrenclave: bytes, **kw: int | bytes) -> bytes:
    fields: dict[str, int | bytes] = dict(
        attributes=0, xfrm=0, attributemask=0, xfrmmask=0, miscselect=0, miscmask=0,
        isvprodid=0x1234, isvsvn=7,
    )  # fmt: skip
    fields.update(kw)
    return sign_sigstruct(key, enclavehash=mrenclave, **fields)  # type: ignore[arg-type]


def patch(raw: bytes, offset: int, data: bytes) -> bytes:
    return raw[:offset] + data + raw[offset + len(data) :]


def flip(raw: bytes, offset: int, bit: int = 0) -> bytes:
    return patch(raw, offset, bytes([raw[offset] ^ (1 << bit)]))


def secs_state(kit: LeafKit, encl: Enclave) -> SecsState:
    secs = kit.cpu.secs_of(kit.cpu.epc.index(encl.secs_pa))
    assert secs is not None
    return secs


def snapshot(kit: LeafKit, encl: Enclave) -> tuple[object, ...]:
    """Everything EINIT could touch: hidden SECS state, the SECS page, the EPCM, the MSRs."""
    cpu = kit.cpu
    index = cpu.epc.index(encl.secs_pa)
    s = secs_state(kit, encl)
    assert s.measurement is not None
    return (
        s.attributes, s.mrenclave, s.mrsigner, s.isvprodid, s.isvsvn, s.isvextprodid,
        s.isvfamilyid, s.padding, s.measurement.final(), s.measurement.update_counter,
        s.chldcnt, bytes(cpu.epc.page(index)), sorted(cpu.epcm), cpu.lepubkeyhash,
    )  # fmt: skip


def run_einit(kit: LeafKit, sig: bytes, token: bytes, rbx: int, rcx: int, rdx: int) -> int:
    kit.kmem.write(rbx & ~0xFFF, bytes(PAGE_SIZE))
    kit.kmem.write(rbx, sig)
    kit.kmem.write(rdx, token)
    return kit.encls(EnclsLeaf.EINIT, rbx, rcx, rdx)


# -- success ---------------------------------------------------------------------------------------


def test_einit_success_commits_identity(key_a: rsa.RSAPrivateKey) -> None:
    kit = LeafKit()
    b = build(kit, 0x10_0000)
    mrsigner = mrsigner_of_key(key_a)
    kit.set_lepubkeyhash(mrsigner)
    assert kit.cpu.lepubkeyhash == mrsigner
    isvextprodid = bytes(range(16))
    sig = sign(key_a, b.mrenclave, isvextprodid=isvextprodid)
    assert kit.einit(b.encl, sig) == SgxError.SUCCESS
    s = secs_state(kit, b.encl)
    assert s.init and s.attributes == M64 | Attribute.INIT
    assert s.mrenclave == b.mrenclave
    assert s.mrsigner == mrsigner
    assert (s.isvprodid, s.isvsvn) == (0x1234, 7)
    assert s.isvextprodid == isvextprodid and s.isvfamilyid == bytes(16)
    assert s.padding == HARDCODED_PKCS1_5_PADDING
    assert s.measurement is None
    page = bytes(kit.cpu.epc.page(kit.cpu.epc.index(b.encl.secs_pa)))
    assert struct.unpack_from("<Q", page, 48)[0] == M64 | Attribute.INIT
    assert page[64:96] == b.mrenclave and page[128:160] == mrsigner
    assert struct.unpack_from("<HH", page, 256) == (0x1234, 7)
    # The enclave is now enterable, and EADD refuses to extend it.
    regs = kit.eenter(0x10_0000)
    assert kit.cpu.lps[0].enclave_mode and regs[17] == 0x10_2000
    with pytest.raises(GeneralProtection):
        kit.eadd(b.encl, 0x10_3000, bytes(PAGE_SIZE), REG_RW)


def test_einit_sets_rax_and_flags_through_registers(key_a: rsa.RSAPrivateKey) -> None:
    from sgxemu.hw.regs import CF, ZF, Reg, Registers

    kit = LeafKit()
    b = build(kit, 0x10_0000)
    kit.kmem.write(SIG_AT, sign(key_a, b.mrenclave))
    kit.kmem.write(TOKEN_AT, bytes(EINITTOKEN_SIZE))
    regs = Registers(rax=EnclsLeaf.EINIT, rbx=SIG_AT, rcx=b.encl.secs_pa, rdx=TOKEN_AT)
    regs[Reg.RFLAGS] |= CF
    kit.cpu.encls_regs(regs, kit.kmem)  # LEPUBKEYHASH is Intel's: error 16, ZF=1, CF=0
    assert regs[Reg.RAX] == SgxError.SGX_INVALID_EINITTOKEN
    assert regs[Reg.RFLAGS] & (ZF | CF) == ZF
    kit.set_lepubkeyhash(mrsigner_of_key(key_a))
    regs[Reg.RAX] = EnclsLeaf.EINIT
    kit.cpu.encls_regs(regs, kit.kmem)
    assert regs[Reg.RAX] == 0 and regs[Reg.RFLAGS] & (ZF | CF) == 0


def test_vendor_intel_and_unmasked_attribute_differences_are_accepted(
    key_a: rsa.RSAPrivateKey,
) -> None:
    kit = LeafKit()
    b = build(kit, 0x10_0000, miscselect=1)
    kit.set_lepubkeyhash(mrsigner_of_key(key_a))
    # Bits outside the masks may differ; masked bits match.
    sig = sign(
        key_a, b.mrenclave, vendor=0x8086, attributes=int(Attribute.DEBUG) | M64,
        attributemask=M64, xfrm=0x7, xfrmmask=0x3, miscselect=0, miscmask=0xFFFF_FFFE,
    )  # fmt: skip
    assert kit.einit(b.encl, sig) == SgxError.SUCCESS


def test_kss_enclave_takes_isvfamilyid(key_a: rsa.RSAPrivateKey) -> None:
    kit = LeafKit()
    b = build(kit, 0x10_0000, attributes=M64 | Attribute.KSS)
    kit.set_lepubkeyhash(mrsigner_of_key(key_a))
    family = b"\x5a" * 16
    assert kit.einit(b.encl, sign(key_a, b.mrenclave, isvfamilyid=family)) == 0
    assert secs_state(kit, b.encl).isvfamilyid == family


# -- one row per check, in the SDM's order ------------------------------------------------------


@dataclass
class Ctx:
    kit: LeafKit
    built: Built
    key: rsa.RSAPrivateKey
    other_key: rsa.RSAPrivateKey
    sig: bytes
    token: bytes = bytes(EINITTOKEN_SIZE)
    rbx: int = SIG_AT
    rcx: int = 0
    rdx: int = TOKEN_AT
    attributes: int = M64


Expect = int | tuple[type[SgxFault], str, int]  # an error code, or (fault, address name, code)

# A row: (id, SECS attributes, how to change the good call, expected outcome).
Row = tuple[str, int, Callable[[Ctx], None], Expect]


def _set(**kw: object) -> Callable[[Ctx], None]:
    def apply(c: Ctx) -> None:
        for k, v in kw.items():
            setattr(c, k, v(c) if callable(v) else v)

    return apply


def _resign(**kw: int | bytes) -> Callable[[Ctx], None]:
    def apply(c: Ctx) -> None:
        c.sig = sign(c.key, c.built.mrenclave, **kw)

    return apply


def _all(*changes: Callable[[Ctx], None]) -> Callable[[Ctx], None]:
    def apply(c: Ctx) -> None:
        for change in changes:
            change(c)

    return apply


def _sig(f: Callable[[bytes], bytes]) -> Callable[[Ctx], None]:
    def apply(c: Ctx) -> None:
        c.sig = f(c.sig)

    return apply


def _event(c: Ctx) -> None:
    c.kit.cpu.einit_event_pending = True


def _reg_page(c: Ctx) -> None:
    c.rcx = c.built.encl.pages[c.built.encl.base + 0x2000]


def _free_page(c: Ctx) -> None:
    c.rcx = c.kit.alloc()


def _signer_is_other(c: Ctx) -> None:
    c.kit.set_lepubkeyhash(mrsigner_of_key(c.other_key))


def _lepubkeyhash_intel(c: Ctx) -> None:
    c.kit.set_lepubkeyhash(INTEL_LE_PUBKEYHASH)


INVALID_SIG_STRUCT = SgxError.SGX_INVALID_SIG_STRUCT
INVALID_SIGNATURE = SgxError.SGX_INVALID_SIGNATURE
INVALID_ATTRIBUTE = SgxError.SGX_INVALID_ATTRIBUTE
GP = (GeneralProtection, "", 0)
PF_RCX = (PageFault, "rcx", PF_SGX)

ROWS: list[Row] = [
    # 1. alignment: SIGSTRUCT and SECS 4 KiB, EINITTOKEN 512 bytes
    ("sigstruct-misaligned", M64, _set(rbx=SIG_AT + 0x800), GP),
    ("secs-misaligned", M64, _set(rcx=lambda c: c.rcx + 0x40), GP),
    ("token-misaligned", M64, _set(rdx=TOKEN_AT + 0x100), GP),
    # 2. the SECS operand must resolve within the EPC
    ("secs-not-epc", M64, _set(rcx=NON_EPC), PF_RCX),
    # 3. SIGSTRUCT format
    ("header", M64, _sig(lambda s: flip(s, 3)), INVALID_SIG_STRUCT),
    ("vendor", M64, _resign(vendor=1), INVALID_SIG_STRUCT),
    ("header2", M64, _sig(lambda s: flip(s, 30)), INVALID_SIG_STRUCT),
    ("exponent", M64, _sig(lambda s: patch(s, 512, b"\x01\x00\x01\x00")), INVALID_SIG_STRUCT),
    ("reserved-44", M64, _sig(lambda s: flip(s, 100)), INVALID_SIG_STRUCT),
    ("reserved-910", M64, _sig(lambda s: flip(s, 910)), INVALID_SIG_STRUCT),
    ("reserved-992", M64, _sig(lambda s: flip(s, 1000)), INVALID_SIG_STRUCT),
    ("reserved-1028", M64, _sig(lambda s: flip(s, 1030)), INVALID_SIG_STRUCT),
    ("format-before-secs-check", M64, _all(_free_page, _sig(lambda s: flip(s, 0))),
     INVALID_SIG_STRUCT),
    # 4. the event window
    ("unmasked-event", M64, _event, SgxError.SGX_UNMASKED_EVENT),
    ("event-before-signature", M64, _all(_event, _sig(lambda s: flip(s, 600))),
     SgxError.SGX_UNMASKED_EVENT),
    ("format-before-event", M64, _all(_event, _sig(lambda s: flip(s, 3))), INVALID_SIG_STRUCT),
    # 5. RSA signature, with Q1 and Q2
    ("signature-bit", M64, _sig(lambda s: flip(s, 700)), INVALID_SIGNATURE),
    ("q1", M64, _sig(lambda s: flip(s, 1100)), INVALID_SIGNATURE),
    ("q2", M64, _sig(lambda s: flip(s, 1500)), INVALID_SIGNATURE),
    ("signed-field-changed", M64, _sig(lambda s: flip(s, 1026)), INVALID_SIGNATURE),
    ("modulus", M64, _sig(lambda s: flip(s, 200)), INVALID_SIGNATURE),
    ("signature-before-secs-check", M64, _all(_reg_page, _sig(lambda s: flip(s, 700))),
     INVALID_SIGNATURE),
    # 6. E(RCX) must be a valid PT_SECS page
    ("secs-free-page", M64, _free_page, PF_RCX),
    ("secs-is-reg-page", M64, _reg_page, PF_RCX),
    # 7. ISVFAMILYID needs KSS
    ("isvfamilyid-without-kss", M64, _resign(isvfamilyid=b"\x01" + bytes(15)), INVALID_SIG_STRUCT),
    # 9. measurement
    ("enclavehash", M64, lambda c: setattr(c, "sig", sign(c.key, bytes(32))),
     SgxError.SGX_INVALID_MEASUREMENT),
    ("measurement-before-attributes", M64,
     lambda c: setattr(c, "sig", sign(c.key, bytes(32), attributes=2, attributemask=2)),
     SgxError.SGX_INVALID_MEASUREMENT),
    # 11. EINITTOKEN_KEY only for the LE's signer (checked before the token path's 16)
    ("controlled-attribute", M64 | Attribute.EINITTOKEN_KEY, _signer_is_other, INVALID_ATTRIBUTE),
    # 12. ATTRIBUTES under ATTRIBUTEMASK, both halves
    ("attribute-mask-flags", M64, _resign(attributes=2, attributemask=2), INVALID_ATTRIBUTE),
    ("attribute-mask-xfrm", M64, _resign(xfrm=7, xfrmmask=4), INVALID_ATTRIBUTE),
    ("attribute-mask-before-token", M64,
     _all(_resign(attributes=0, attributemask=M64), _lepubkeyhash_intel), INVALID_ATTRIBUTE),
    # 13. MISCSELECT under MISCMASK
    ("misc-mask", M64, _resign(miscselect=1, miscmask=1), INVALID_ATTRIBUTE),
    # 14. no token (VALID bit 0 clear): the signer must be the authorized LE key
    ("no-token-wrong-signer", M64, _signer_is_other, SgxError.SGX_INVALID_EINITTOKEN),
    ("no-token-intel-hash", M64, _lepubkeyhash_intel, SgxError.SGX_INVALID_EINITTOKEN),
    ("no-token-other-bits-ignored", M64,
     _set(token=struct.pack("<I", 0xFFFF_FFFE) + bytes(EINITTOKEN_SIZE - 4)), SgxError.SUCCESS),
]


@pytest.mark.parametrize(
    ("attributes", "change", "expect"), [r[1:] for r in ROWS], ids=[r[0] for r in ROWS]
)
def test_einit_check(
    key_a: rsa.RSAPrivateKey,
    key_b: rsa.RSAPrivateKey,
    attributes: int,
    change: Callable[[Ctx], None],
    expect: Expect,
) -> None:
    kit = LeafKit()
    b = build(kit, 0x10_0000, attributes=attributes)
    kit.set_lepubkeyhash(mrsigner_of_key(key_a))
    c = Ctx(kit, b, key_a, key_b, sign(key_a, b.mrenclave), rcx=b.encl.secs_pa)
    change(c)
    event = kit.cpu.einit_event_pending
    before = snapshot(kit, b.encl)
    if isinstance(expect, int):
        assert run_einit(kit, c.sig, c.token, c.rbx, c.rcx, c.rdx) == expect
        if expect == SgxError.SUCCESS:
            assert secs_state(kit, b.encl).init
            return
    else:
        fault, reg, code = expect
        with pytest.raises(fault) as info:
            run_einit(kit, c.sig, c.token, c.rbx, c.rcx, c.rdx)
        assert type(info.value) is fault
        assert info.value.addr == (c.rcx if reg == "rcx" else 0)
        assert info.value.error_code == code
    # A failing EINIT changes nothing and can be retried; only the event window takes the event.
    assert snapshot(kit, b.encl) == before
    assert kit.cpu.einit_event_pending == (event and expect != SgxError.SGX_UNMASKED_EVENT)
    kit.cpu.einit_event_pending = False
    kit.set_lepubkeyhash(mrsigner_of_key(key_a))
    assert kit.einit(b.encl, sign(key_a, b.mrenclave)) == SgxError.SUCCESS


def test_already_initialized_is_gp(key_a: rsa.RSAPrivateKey) -> None:
    kit = LeafKit()
    b = build(kit, 0x10_0000)
    kit.set_lepubkeyhash(mrsigner_of_key(key_a))
    sig = sign(key_a, b.mrenclave)
    assert kit.einit(b.encl, sig) == 0
    with pytest.raises(GeneralProtection) as info:
        kit.einit(b.encl, sig)
    assert info.value.error_code == 0
    # ...but the earlier checks still come first: a bad signature is reported as such.
    assert kit.einit(b.encl, flip(sig, 700)) == SgxError.SGX_INVALID_SIGNATURE


def test_unmasked_event_is_consumed_and_retry_succeeds(key_a: rsa.RSAPrivateKey) -> None:
    kit = LeafKit()
    b = build(kit, 0x10_0000)
    kit.set_lepubkeyhash(mrsigner_of_key(key_a))
    sig = sign(key_a, b.mrenclave)
    kit.cpu.einit_event_pending = True
    assert kit.einit(b.encl, sig) == SgxError.SGX_UNMASKED_EVENT
    assert not kit.cpu.einit_event_pending
    assert not secs_state(kit, b.encl).init
    assert kit.einit(b.encl, sig) == SgxError.SUCCESS


def test_sigstruct_page_not_present_is_ordinary_pf(key_a: rsa.RSAPrivateKey) -> None:
    kit = LeafKit()
    b = build(kit, 0x10_0000)
    kit.kmem.set_pte(SIG_AT, 0)
    with pytest.raises(PageFault) as info:
        kit.encls(EnclsLeaf.EINIT, SIG_AT, b.encl.secs_pa, TOKEN_AT)
    assert (info.value.addr, info.value.error_code) == (SIG_AT, 0)
    # The SECS #PF comes first: it precedes the copies of SIGSTRUCT and EINITTOKEN.
    with pytest.raises(PageFault) as info:
        kit.encls(EnclsLeaf.EINIT, SIG_AT, NON_EPC, TOKEN_AT)
    assert (info.value.addr, info.value.error_code) == (NON_EPC, PF_SGX)


# -- launch tokens ----------------------------------------------------------------------------------

LE_BASE = 0x40_0000_0000
APP_BASE = 0x10_0000
KEYREQ = LE_BASE + 0x3000  # in the LE's data page (offset 0x3000)
KEYOUT = LE_BASE + 0x3200
TOKEN_KEYID = bytes(range(32, 64))


def build_le(kit: LeafKit, key: rsa.RSAPrivateKey, *, debug: bool = False) -> Built:
    """A launch enclave: EINITTOKEN_KEY attribute, one more RW data page for its requests."""
    attrs = M64 | Attribute.EINITTOKEN_KEY | (Attribute.DEBUG if debug else 0)
    b = build(kit, LE_BASE, attributes=attrs)
    m = EnclaveMeasurer(SIZE, ssaframesize=1)
    for off, data, flags in b.pages:
        m.add_page(off, data, flags)
    kit.eadd(b.encl, LE_BASE + 0x3000, bytes(PAGE_SIZE), REG_RW)
    m.add_page(0x3000, bytes(PAGE_SIZE), REG_RW)
    b.mrenclave = m.mrenclave()
    kit.set_lepubkeyhash(mrsigner_of_key(key))
    assert kit.einit(b.encl, sign(key, b.mrenclave, isvprodid=0x20, isvsvn=3)) == 0
    return b


def mint_token(
    kit: LeafKit, le: Built, app: Built, app_mrsigner: bytes, app_attributes: int
) -> tuple[Einittoken, bytes]:
    """What a launch enclave does: EGETKEY(EINITTOKEN_KEY) inside, then MAC the token with it."""
    req = Keyrequest(
        keyname=KeyName.EINITTOKEN_KEY, isvsvn=3, attributemask=0xFFFF_FFFF_FFFF_FFFF,
        xfrmmask=0x3, keyid=TOKEN_KEYID, miscmask=0xFFFF_FFFF,
    )  # fmt: skip
    assert len(req.pack()) == KEYREQUEST_SIZE
    regs = kit.eenter(LE_BASE)
    kit.enclave_store(KEYREQ, req.pack())
    assert kit.enclu(regs, EncluLeaf.EGETKEY, KEYREQ, KEYOUT) == 0
    key = kit.enclave_load(KEYOUT, 16)
    kit.eexit(regs)
    s = secs_state(kit, le.encl)
    token = Einittoken(
        valid=1, attributes=app_attributes, xfrm=3, mrenclave=app.mrenclave,
        mrsigner=app_mrsigner, cpusvnle=bytes(16), isvprodidle=s.isvprodid, isvsvnle=3,
        maskedmiscselectle=s.miscselect, maskedattributesle=s.attributes, maskedxfrmle=s.xfrm,
        keyid=TOKEN_KEYID,
    )  # fmt: skip
    token.mac = einittoken_mac(key, token.pack())
    return token, key


def test_launch_enclave_mints_a_token_einit_accepts(
    key_a: rsa.RSAPrivateKey, key_b: rsa.RSAPrivateKey
) -> None:
    kit = LeafKit()
    le = build_le(kit, key_b)
    app = build(kit, APP_BASE)
    token, key = mint_token(kit, le, app, mrsigner_of_key(key_a), M64)
    # EINIT derives the same key from the token's LE fields.
    assert einittoken_key(kit.cpu, token) == key
    assert kit.cpu.lepubkeyhash == mrsigner_of_key(key_b) != mrsigner_of_key(key_a)
    assert kit.einit(app.encl, sign(key_a, app.mrenclave), token.pack()) == SgxError.SUCCESS
    s = secs_state(kit, app.encl)
    assert s.init and s.mrsigner == mrsigner_of_key(key_a)


def _remac(field_name: str, value: object) -> Callable[[Einittoken, bytes], Einittoken]:
    def apply(t: Einittoken, key: bytes) -> Einittoken:
        setattr(t, field_name, value)
        t.mac = einittoken_mac(key, t.pack())
        return t

    return apply


def _raw(field_name: str, value: object) -> Callable[[Einittoken, bytes], Einittoken]:
    def apply(t: Einittoken, key: bytes) -> Einittoken:
        setattr(t, field_name, value)
        return t

    return apply


TOKEN_ROWS: list[tuple[str, Callable[[Einittoken, bytes], Einittoken], int]] = [
    ("valid-upper-bits", _remac("valid", 3), SgxError.SGX_INVALID_EINITTOKEN),
    ("reserved1", _remac("reserved1", b"\x01" + bytes(43)), SgxError.SGX_INVALID_EINITTOKEN),
    ("reserved2", _remac("reserved2", bytes(31) + b"\x80"), SgxError.SGX_INVALID_EINITTOKEN),
    ("reserved3", _remac("reserved3", b"\x01" + bytes(31)), SgxError.SGX_INVALID_EINITTOKEN),
    ("reserved4", _raw("reserved4", b"\x01" + bytes(23)), SgxError.SGX_INVALID_EINITTOKEN),
    ("cpusvnle-beyond", _raw("cpusvnle", b"\x01" + bytes(15)), SgxError.SGX_INVALID_CPUSVN),
    ("mac", _raw("mac", bytes(16)), SgxError.SGX_INVALID_EINITTOKEN),
    ("le-field-changed-without-key", _raw("isvsvnle", 2), SgxError.SGX_INVALID_EINITTOKEN),
    ("keyid-changed", _raw("keyid", bytes(32)), SgxError.SGX_INVALID_EINITTOKEN),
    ("mrenclave", _remac("mrenclave", bytes(32)), SgxError.SGX_INVALID_MEASUREMENT),
    ("mrsigner", _remac("mrsigner", bytes(32)), SgxError.SGX_INVALID_MEASUREMENT),
    ("attributes", _remac("attributes", M64 | int(Attribute.DEBUG)), SgxError.SGX_INVALID_EINITTOKEN),
    ("xfrm", _remac("xfrm", 7), SgxError.SGX_INVALID_EINITTOKEN),
    ("attributes-with-init", _remac("attributes", M64 | int(Attribute.INIT)),
     SgxError.SGX_INVALID_EINITTOKEN),
]


@pytest.mark.parametrize(
    ("change", "expect"), [r[1:] for r in TOKEN_ROWS], ids=[r[0] for r in TOKEN_ROWS]
)
def test_token_check(
    key_a: rsa.RSAPrivateKey,
    key_b: rsa.RSAPrivateKey,
    change: Callable[[Einittoken, bytes], Einittoken],
    expect: int,
) -> None:
    kit = LeafKit()
    le = build_le(kit, key_b)
    app = build(kit, APP_BASE)
    token, key = mint_token(kit, le, app, mrsigner_of_key(key_a), M64)
    sig = sign(key_a, app.mrenclave)
    before = snapshot(kit, app.encl)
    assert kit.einit(app.encl, sig, change(token, key).pack()) == expect
    assert snapshot(kit, app.encl) == before
    good, _ = mint_token(kit, le, app, mrsigner_of_key(key_a), M64)
    assert kit.einit(app.encl, sig, good.pack()) == SgxError.SUCCESS


def test_token_is_bound_to_lepubkeyhash(key_a: rsa.RSAPrivateKey, key_b: rsa.RSAPrivateKey) -> None:
    kit = LeafKit()
    le = build_le(kit, key_b)
    app = build(kit, APP_BASE)
    token, _ = mint_token(kit, le, app, mrsigner_of_key(key_a), M64)
    kit.set_lepubkeyhash(bytes(32))  # another LE is authorized now: the token key changes
    assert kit.einit(app.encl, sign(key_a, app.mrenclave), token.pack()) == 16


def test_debug_launch_enclave_launches_only_debug_enclaves(
    key_a: rsa.RSAPrivateKey, key_b: rsa.RSAPrivateKey
) -> None:
    kit = LeafKit()
    le = build_le(kit, key_b, debug=True)
    prod = build(kit, APP_BASE)
    token, _ = mint_token(kit, le, prod, mrsigner_of_key(key_a), M64)
    assert token.maskedattributesle & Attribute.DEBUG
    assert kit.einit(prod.encl, sign(key_a, prod.mrenclave), token.pack()) == 16
    dbg = build(kit, 0x20_0000, attributes=M64 | Attribute.DEBUG)
    token, _ = mint_token(kit, le, dbg, mrsigner_of_key(key_a), M64 | int(Attribute.DEBUG))
    assert kit.einit(dbg.encl, sign(key_a, dbg.mrenclave), token.pack()) == 0


def test_token_cannot_grant_controlled_attribute(
    key_a: rsa.RSAPrivateKey, key_b: rsa.RSAPrivateKey
) -> None:
    """A valid token does not let a foreign signer set EINITTOKEN_KEY (check 11 precedes)."""
    kit = LeafKit()
    le = build_le(kit, key_b)
    app = build(kit, APP_BASE, attributes=M64 | Attribute.EINITTOKEN_KEY)
    attrs = M64 | int(Attribute.EINITTOKEN_KEY)
    token, _ = mint_token(kit, le, app, mrsigner_of_key(key_a), attrs)
    assert kit.einit(app.encl, sign(key_a, app.mrenclave), token.pack()) == 2


# -- third-party vectors -------------------------------------------------------------------------

ENARX_MRENCLAVE = "b999536238fcf4e9d360ef6cd3e0c20ef8a684c7b93f74a9c4a4c6d517d61fc0"
ENARX_MRSIGNER = "2f9f8fd4fe12d77232f1d87571ca8252ca27714efe7705e46222cffd5a22e8c4"


def build_enarx(kit: LeafKit, image: bytes) -> Enclave:
    """encl.bin as its README says: SIZE 0x8000, SSAFRAMESIZE 1, TCS + 5 REG RWX, all measured."""
    base = 0x80_0000  # naturally aligned
    encl = kit.ecreate(base, 0x8000, attributes=M64, ssaframesize=1)
    for i in range(len(image) // PAGE_SIZE):
        flags = TCS_FLAGS if i == 0 else REG_RWX
        kit.eadd(encl, base + i * PAGE_SIZE, image[i * PAGE_SIZE : (i + 1) * PAGE_SIZE], flags)
    return encl


@needs_vectors
def test_enarx_encl_ss_attribute_masks_admit_the_secs() -> None:
    raw = (ENARX / "encl.ss").read_bytes()
    attributes, xfrm, attributemask, xfrmmask = struct.unpack_from("<QQQQ", raw, 928)
    miscselect, miscmask = struct.unpack_from("<II", raw, 900)
    # The masks are all zero: any SECS ATTRIBUTES / MISCSELECT satisfy them; MODE64BIT is chosen.
    assert (attributes, xfrm, attributemask, xfrmmask) == (M64, 3, 0, 0)
    assert (miscselect, miscmask) == (0, 0)


@needs_vectors
def test_enarx_vector_einit_accepts() -> None:
    image = (ENARX / "encl.bin").read_bytes()
    sig = (ENARX / "encl.ss").read_bytes()
    kit = LeafKit()
    encl = build_enarx(kit, image)
    kit.set_lepubkeyhash(bytes.fromhex(ENARX_MRSIGNER))
    assert kit.einit(encl, sig) == SgxError.SUCCESS
    s = secs_state(kit, encl)
    assert s.mrenclave.hex() == ENARX_MRENCLAVE
    assert s.mrsigner.hex() == ENARX_MRSIGNER
    assert (s.isvprodid, s.isvsvn) == (0, 0)
    assert s.padding == HARDCODED_PKCS1_5_PADDING


@needs_vectors
def test_enarx_vector_one_bit_in_a_measured_page() -> None:
    image = bytearray((ENARX / "encl.bin").read_bytes())
    image[3 * PAGE_SIZE + 0x123] ^= 0x10
    kit = LeafKit()
    encl = build_enarx(kit, bytes(image))
    kit.set_lepubkeyhash(bytes.fromhex(ENARX_MRSIGNER))
    assert kit.einit(encl, (ENARX / "encl.ss").read_bytes()) == SgxError.SGX_INVALID_MEASUREMENT


@needs_vectors
def test_enarx_vector_one_bit_in_the_signature() -> None:
    kit = LeafKit()
    encl = build_enarx(kit, (ENARX / "encl.bin").read_bytes())
    kit.set_lepubkeyhash(bytes.fromhex(ENARX_MRSIGNER))
    sig = flip((ENARX / "encl.ss").read_bytes(), 516 + 200, 5)
    assert kit.einit(encl, sig) == SgxError.SGX_INVALID_SIGNATURE


@needs_vectors
def test_enarx_vector_with_intel_lepubkeyhash() -> None:
    kit = LeafKit()
    assert kit.cpu.lepubkeyhash == INTEL_LE_PUBKEYHASH  # the reset value
    encl = build_enarx(kit, (ENARX / "encl.bin").read_bytes())
    assert kit.einit(encl, (ENARX / "encl.ss").read_bytes()) == SgxError.SGX_INVALID_EINITTOKEN


@needs_vectors
def test_intel_le_sigstruct_passes_format_and_rsa() -> None:
    """Intel's production LE SIGSTRUCT is well-formed and verifies: EINIT only stops at the SECS."""
    sig = (VECTORS / "intel" / "le_prod_css.bin").read_bytes()
    kit = LeafKit()
    pa = kit.alloc()  # not a valid SECS
    with pytest.raises(PageFault) as info:
        run_einit(kit, sig, bytes(EINITTOKEN_SIZE), SIG_AT, pa, TOKEN_AT)
    assert (info.value.addr, info.value.error_code) == (pa, PF_SGX)
    assert run_einit(kit, flip(sig, 516), bytes(304), SIG_AT, pa, TOKEN_AT) == 8
