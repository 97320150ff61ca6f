"""EREPORT, EGETKEY and key derivation (SDM EREPORT/EGETKEY, Table 38-66; spec 4.5, 4.6, 10)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

import testkeys
from sgxemu.arch.constants import (
    HARDCODED_PKCS1_5_PADDING,
    PAGE_SIZE,
    Attribute,
    EncluLeaf,
    KeyName,
    KeyPolicy,
    PageType,
    PfErrorCode,
    SgxError,
    secinfo_flags,
)
from sgxemu.arch.structs import Keyrequest, Report, Targetinfo, Tcs
from sgxemu.hw.faults import GeneralProtection, PageFault, SgxFault
from sgxemu.hw.keys import (
    SERIALIZED_SIZE,
    KeyDependencies,
    attributes128,
    cmac,
    cpusvn_beyond,
    derive_key,
    report_mac,
)
from sgxemu.hw.memory import PTE_P, PTE_U, PTE_W
from sgxemu.hw.processor import Processor
from sgxemu.hw.regs import ZF, Reg, Registers
from sgxemu.hw.secs import SecsState
from sgxemu.leafkit import Enclave, LeafKit
from sgxemu.sign import EnclaveMeasurer, mrsigner_of_key, sign_sigstruct

M64 = int(Attribute.MODE64BIT)
TCS_FLAGS = secinfo_flags(PageType.PT_TCS)
REG_R = secinfo_flags(PageType.PT_REG, 0x1)
REG_RW = secinfo_flags(PageType.PT_REG, 0x3)
REG_RWX = secinfo_flags(PageType.PT_REG, 0x7)
SIZE = 0x8000
A, B, C = 0x10_0000, 0x20_0000, 0x30_0000
OUTSIDE = 0x60_0000  # not in any ELRANGE

# Offsets inside the enclave: data page 0x3000 holds the operands, 0x5000 is read-only.
KEYREQ, KEYOUT, TINFO, RDATA, REPORT = 0x3000, 0x3200, 0x3400, 0x3600, 0x3800
RO_PAGE, DATA2, UNBACKED = 0x5000, 0x4000, 0x7000

PF_U = int(PfErrorCode.U)
PF_EPC_R = int(PfErrorCode.P | PfErrorCode.SGX | PfErrorCode.U)  # 0x8005
PF_EPC_W = PF_EPC_R | int(PfErrorCode.W)  # 0x8007


@pytest.fixture(scope="module")
def key_a() -> rsa.RSAPrivateKey:
    return testkeys.key_a()


@pytest.fixture(scope="module")
def key_b() -> rsa.RSAPrivateKey:
    return testkeys.key_b()


# -- enclaves ----------------------------------------------------------------------------------------


@dataclass
class Encl:
    """An initialized enclave the kit built, and the logical processor it runs on."""

    kit: LeafKit
    encl: Enclave
    lp: int = 0
    regs: Registers | None = None

    @property
    def base(self) -> int:
        return self.encl.base

    @property
    def secs(self) -> SecsState:
        s = self.kit.cpu.secs_of(self.kit.cpu.epc.index(self.encl.secs_pa))
        assert s is not None
        return s

    def enter(self) -> Encl:
        self.regs = self.kit.eenter(self.base, self.lp)
        return self

    def exit(self) -> None:
        assert self.regs is not None
        self.kit.eexit(self.regs, self.lp)
        self.regs = None

    def store(self, off: int, data: bytes) -> None:
        self.kit.enclave_store(self.base + off, data, self.lp)

    def load(self, off: int, size: int) -> bytes:
        return self.kit.enclave_load(self.base + off, size, self.lp)

    def enclu(self, leaf: EncluLeaf, rbx: int = 0, rcx: int = 0, rdx: int = 0) -> int:
        assert self.regs is not None
        return self.kit.enclu(self.regs, leaf, rbx, rcx, rdx, lp=self.lp)

    def egetkey(self, req: Keyrequest) -> tuple[int, bytes]:
        """EGETKEY with the request at KEYREQ; (RAX, the 16 bytes at KEYOUT afterwards)."""
        self.store(KEYREQ, req.pack())
        rax = self.enclu(EncluLeaf.EGETKEY, self.base + KEYREQ, self.base + KEYOUT)
        return rax, self.load(KEYOUT, 16)

    def key(self, req: Keyrequest) -> bytes:
        rax, key = self.egetkey(req)
        assert rax == 0
        return key

    def ereport(self, ti: Targetinfo, reportdata: bytes = bytes(64)) -> Report:
        self.store(TINFO, ti.pack())
        self.store(RDATA, reportdata)
        self.enclu(EncluLeaf.EREPORT, self.base + TINFO, self.base + RDATA, self.base + REPORT)
        return Report.unpack(self.load(REPORT, Report.SIZE))


def build(
    kit: LeafKit,
    base: int,
    key: rsa.RSAPrivateKey,
    *,
    attributes: int = M64,
    miscselect: int = 0,
    isvprodid: int = 1,
    isvsvn: int = 2,
    code: bytes = b"",
    isvfamilyid: bytes = bytes(16),
    isvextprodid: bytes = bytes(16),
    lp: int = 0,
) -> Encl:
    """TCS, SSA, code, two RW data pages and a read-only page; signed with `key` and EINITed."""
    tcs = Tcs(ossa=0x1000, nssa=1, oentry=0x2000, fslimit=0xFFF, gslimit=0xFFF).pack()
    pages = [
        (0x0000, tcs, TCS_FLAGS),
        (0x1000, bytes(PAGE_SIZE), REG_RW),
        (0x2000, code.ljust(PAGE_SIZE, b"\xcc"), REG_RWX),
        (0x3000, bytes(PAGE_SIZE), REG_RW),
        (DATA2, bytes(PAGE_SIZE), REG_RW),
        (RO_PAGE, seal().pack().ljust(PAGE_SIZE, b"\x77"), REG_R),  # a valid KEYREQUEST
    ]
    encl = kit.ecreate(base, SIZE, attributes=attributes, miscselect=miscselect)
    m = EnclaveMeasurer(SIZE, ssaframesize=1)
    for off, data, flags in pages:
        kit.eadd(encl, base + off, data, flags)
        m.add_page(off, data, flags)
    sig = sign_sigstruct(
        key, enclavehash=m.mrenclave(), attributes=0, xfrm=0, attributemask=0, xfrmmask=0,
        miscselect=0, miscmask=0, isvprodid=isvprodid, isvsvn=isvsvn, isvfamilyid=isvfamilyid,
        isvextprodid=isvextprodid,
    )  # fmt: skip
    kit.set_lepubkeyhash(mrsigner_of_key(key))
    assert kit.einit(encl, sig) == SgxError.SUCCESS
    return Encl(kit, encl, lp)


def targetinfo_of(e: Encl) -> Targetinfo:
    s = e.secs
    return Targetinfo(
        measurement=s.mrenclave, attributes=s.attributes, xfrm=s.xfrm, miscselect=s.miscselect,
        config_id=s.config_id, configsvn=s.configsvn,
    )  # fmt: skip


def seal(policy: int = KeyPolicy.MRENCLAVE, **kw: object) -> Keyrequest:
    req = Keyrequest(keyname=KeyName.SEAL_KEY, keypolicy=policy)
    for k, v in kw.items():
        setattr(req, k, v)
    return req


def report_req(keyid: bytes) -> Keyrequest:
    return Keyrequest(keyname=KeyName.REPORT_KEY, keyid=keyid)


# -- EREPORT -> EGETKEY(REPORT) ---------------------------------------------------------------------


def test_report_mac_verifies_inside_the_target(key_a: rsa.RSAPrivateKey, key_b: rsa.RSAPrivateKey) -> None:
    kit = LeafKit()
    a = build(kit, A, key_a, isvprodid=5, isvsvn=9, miscselect=1)
    t = build(kit, B, key_b, code=b"target")
    other = build(kit, C, key_b, code=b"other")
    a.enter()
    rip = a.regs[Reg.RIP] if a.regs else 0
    data = bytes(range(64))
    report = a.ereport(targetinfo_of(t), data)
    assert a.regs is not None and a.regs[Reg.RIP] == rip + 3
    assert a.regs[Reg.RAX] == EncluLeaf.EREPORT  # no error code
    a.exit()
    s = a.secs
    assert report.cpusvn == kit.cpu.cpusvn
    assert report.miscselect == 1
    assert report.attributes == M64 | Attribute.INIT and report.xfrm == 3
    assert report.mrenclave == s.mrenclave and report.mrsigner == mrsigner_of_key(key_a)
    assert (report.isvprodid, report.isvsvn) == (5, 9)
    assert report.reportdata == data
    assert report.keyid == kit.cpu.report_keyid
    assert report.reserved1 == bytes(11) and report.reserved4 == bytes(42)
    # The target derives the report key with the report's KEYID and checks the MAC.
    t.enter()
    key = t.key(report_req(report.keyid))
    t.exit()
    assert report_mac(key, report.pack()) == report.mac
    assert cmac(key, report.pack()[:384]) == report.mac
    # Any other enclave gets another key; so does the target with another KEYID.
    other.enter()
    assert report_mac(other.key(report_req(report.keyid)), report.pack()) != report.mac
    other.exit()
    t.enter()
    assert report_mac(t.key(report_req(bytes(32))), report.pack()) != report.mac
    t.exit()


def test_report_key_binds_the_targetinfo_fields(key_a: rsa.RSAPrivateKey) -> None:
    """A TARGETINFO that differs from the target in any bound field makes an unverifiable MAC."""
    kit = LeafKit()
    a = build(kit, A, key_a)
    t = build(kit, B, key_a, code=b"t")
    good = targetinfo_of(t)
    variants = [
        replace(good, measurement=bytes(32)),
        replace(good, attributes=good.attributes & ~int(Attribute.INIT)),
        replace(good, xfrm=7),
        replace(good, miscselect=1),
        replace(good, configsvn=1),
        replace(good, config_id=b"\x01" + bytes(63)),
    ]
    a.enter()
    reports = [a.ereport(ti) for ti in [good, *variants]]
    a.exit()
    t.enter()
    key = t.key(report_req(kit.cpu.report_keyid))
    t.exit()
    assert [report_mac(key, r.pack()) == r.mac for r in reports] == [True] + [False] * len(variants)


def test_self_report_with_zero_targetinfo(key_a: rsa.RSAPrivateKey) -> None:
    kit = LeafKit()
    a = build(kit, A, key_a).enter()
    report = a.ereport(Targetinfo())
    assert report.mrenclave == a.secs.mrenclave and report.mrsigner == a.secs.mrsigner
    # It is MACed for MRENCLAVE 0 with the enclave's own PADDING (= the hard-coded one).
    deps = KeyDependencies(
        keyname=KeyName.REPORT_KEY, ownerepoch=kit.cpu.owner_epoch, keyid=kit.cpu.report_keyid,
        seal_key_fuses=kit.cpu.seal_fuses, cpusvn=kit.cpu.cpusvn, padding=HARDCODED_PKCS1_5_PADDING,
    )  # fmt: skip
    assert report_mac(derive_key(kit.cpu, deps), report.pack()) == report.mac


# -- EGETKEY: exact dependency records per KEYNAME ----------------------------------------------------


def test_key_records_match_table_38_66(key_a: rsa.RSAPrivateKey) -> None:
    """Each KEYNAME binds exactly the fields of the SDM table, the others zero."""
    kit = LeafKit()
    attrs = M64 | Attribute.PROVISIONKEY | Attribute.EINITTOKEN_KEY | Attribute.KSS
    e = build(
        kit, A, key_a, attributes=attrs, miscselect=1, isvprodid=0x33, isvsvn=4,
        isvfamilyid=b"\xfa" * 16, isvextprodid=b"\xe0" * 16,
    ).enter()  # fmt: skip
    s, cpu = e.secs, kit.cpu
    keyid = bytes(range(100, 132))
    amask, xmask, mmask = 0xFFFF_FFFF_FFFF_FFF0, 0x2, 0xFFFF_FFF0
    all_policy = int(KeyPolicy.MRENCLAVE | KeyPolicy.MRSIGNER | KeyPolicy.CONFIGID
                     | KeyPolicy.ISVFAMILYID | KeyPolicy.ISVEXTPRODID)  # fmt: skip
    common = dict(isvsvn=3, attributemask=amask, xfrmmask=xmask, keyid=keyid, miscmask=mmask)
    sealed_attrs = attributes128((amask | 3) & s.attributes, xmask & s.xfrm)
    full_mask = attributes128(amask, xmask)
    rows: list[tuple[Keyrequest, KeyDependencies]] = [
        (
            seal(all_policy, **common),
            KeyDependencies(
                keyname=4, isvprodid=0x33, isvsvn=3, isvextprodid=s.isvextprodid,
                isvfamilyid=s.isvfamilyid, ownerepoch=cpu.owner_epoch, attributes=sealed_attrs,
                attributesmask=full_mask, mrenclave=s.mrenclave, mrsigner=s.mrsigner, keyid=keyid,
                seal_key_fuses=cpu.seal_fuses, padding=s.padding, miscselect=mmask & 1,
                miscmask=~mmask & 0xFFFF_FFFF, configid=s.config_id, keypolicy=all_policy,
            ),
        ),
        (
            seal(int(KeyPolicy.NOISVPRODID), **common),
            KeyDependencies(
                keyname=4, isvsvn=3, ownerepoch=cpu.owner_epoch, attributes=sealed_attrs,
                attributesmask=full_mask, keyid=keyid, seal_key_fuses=cpu.seal_fuses,
                padding=s.padding, miscselect=mmask & 1, miscmask=~mmask & 0xFFFF_FFFF,
                keypolicy=int(KeyPolicy.NOISVPRODID),
            ),
        ),
        (
            Keyrequest(keyname=KeyName.REPORT_KEY, **common),
            KeyDependencies(
                keyname=3, ownerepoch=cpu.owner_epoch, attributes=attributes128(s.attributes, 3),
                mrenclave=s.mrenclave, keyid=keyid, seal_key_fuses=cpu.seal_fuses,
                cpusvn=cpu.cpusvn, padding=HARDCODED_PKCS1_5_PADDING, miscselect=1,
                configid=s.config_id, configsvn=s.configsvn,
            ),
        ),
        (
            Keyrequest(keyname=KeyName.EINITTOKEN_KEY, **common),
            KeyDependencies(
                keyname=0, isvprodid=0x33, isvsvn=3, ownerepoch=cpu.owner_epoch,
                attributes=sealed_attrs, mrsigner=s.mrsigner, keyid=keyid,
                seal_key_fuses=cpu.seal_fuses, padding=s.padding, miscselect=mmask & 1,
            ),
        ),
        (
            Keyrequest(keyname=KeyName.PROVISION_KEY, keypolicy=all_policy, **common),
            KeyDependencies(
                keyname=1, isvprodid=0x33, isvsvn=3, attributes=sealed_attrs,
                attributesmask=full_mask, mrsigner=s.mrsigner, padding=s.padding,
                miscselect=mmask & 1, miscmask=~mmask & 0xFFFF_FFFF,
            ),
        ),
        (
            Keyrequest(keyname=KeyName.PROVISION_SEAL_KEY, keypolicy=all_policy, **common),
            KeyDependencies(
                keyname=2, isvprodid=0x33, isvsvn=3, isvextprodid=s.isvextprodid,
                isvfamilyid=s.isvfamilyid, attributes=sealed_attrs, attributesmask=full_mask,
                mrsigner=s.mrsigner, seal_key_fuses=cpu.seal_fuses, padding=s.padding,
                miscselect=mmask & 1, miscmask=~mmask & 0xFFFF_FFFF, configid=s.config_id,
                keypolicy=all_policy,
            ),
        ),
    ]
    for req, deps in rows:
        assert e.key(req) == derive_key(cpu, deps), KeyName(req.keyname).name


# -- seal keys: every bound field matters, and only those --------------------------------------------


def test_seal_keys_differ_per_bound_field(key_a: rsa.RSAPrivateKey) -> None:
    kit = LeafKit()
    e = build(kit, A, key_a, attributes=M64 | Attribute.KSS, miscselect=1).enter()
    base = seal(int(KeyPolicy.MRENCLAVE), isvsvn=1)
    variants = {
        "base": base,
        "policy-mrsigner": replace(base, keypolicy=int(KeyPolicy.MRSIGNER)),
        "policy-both": replace(base, keypolicy=int(KeyPolicy.MRENCLAVE | KeyPolicy.MRSIGNER)),
        "policy-noisvprodid": replace(base, keypolicy=int(KeyPolicy.MRENCLAVE | KeyPolicy.NOISVPRODID)),
        "policy-configid": replace(base, keypolicy=int(KeyPolicy.MRENCLAVE | KeyPolicy.CONFIGID)),
        "isvsvn-0": replace(base, isvsvn=0),
        "isvsvn-2": replace(base, isvsvn=2),
        "keyid": replace(base, keyid=b"\x01" + bytes(31)),
        "attributemask-debug": replace(base, attributemask=int(Attribute.DEBUG)),
        "attributemask-mode64": replace(base, attributemask=M64),
        "xfrmmask": replace(base, xfrmmask=3),
        "miscmask": replace(base, miscmask=1),
        "miscmask-unset-bit": replace(base, miscmask=2),
    }
    keys = {name: e.key(req) for name, req in variants.items()}
    assert len(set(keys.values())) == len(keys), keys
    assert e.key(base) == keys["base"]  # deterministic


def test_seal_key_policies_across_enclaves(key_a: rsa.RSAPrivateKey, key_b: rsa.RSAPrivateKey) -> None:
    kit = LeafKit()
    encls = {
        "a1": build(kit, A, key_a, code=b"one"),
        "a2": build(kit, B, key_a, code=b"two"),  # same signer and product, other MRENCLAVE
        "b": build(kit, C, key_b, code=b"one"),  # same code, other signer
        "a-prod": build(kit, 0x40_0000, key_a, code=b"one", isvprodid=9),
    }
    by_enclave = int(KeyPolicy.MRENCLAVE)
    by_signer = int(KeyPolicy.MRSIGNER)
    keys: dict[tuple[str, int], bytes] = {}
    for name, e in encls.items():
        e.enter()
        for policy in (by_enclave, by_signer):
            keys[name, policy] = e.key(seal(policy))
        e.exit()
    assert encls["a1"].secs.mrenclave == encls["a-prod"].secs.mrenclave
    assert keys["a1", by_signer] == keys["a2", by_signer]
    assert keys["a1", by_enclave] != keys["a2", by_enclave]
    assert keys["a1", by_signer] != keys["b", by_signer]
    assert encls["a1"].secs.mrenclave == encls["b"].secs.mrenclave
    # MRENCLAVE policy does not bind the signer: same code and product, same key.
    assert keys["a1", by_enclave] == keys["b", by_enclave]
    assert keys["a1", by_signer] != keys["a-prod", by_signer]  # ISVPRODID is bound
    assert keys["a1", by_enclave] != keys["a-prod", by_enclave]


def test_keys_per_seed(key_a: rsa.RSAPrivateKey) -> None:
    """Same seed, same keys on another processor; another seed, other keys (spec 10.2)."""
    requests = [
        seal(int(KeyPolicy.MRENCLAVE)),
        seal(int(KeyPolicy.MRSIGNER)),
        report_req(bytes(32)),
    ]

    def keys(seed: int) -> list[bytes]:
        kit = LeafKit(Processor(seed=seed))
        e = build(kit, A, key_a).enter()
        return [e.key(r) for r in requests]

    k0, k0_again, k1 = keys(0), keys(0), keys(1)
    assert k0 == k0_again
    assert all(x != y for x, y in zip(k0, k1, strict=True))


def test_report_verifies_only_on_the_same_platform(key_a: rsa.RSAPrivateKey) -> None:
    kit0, kit1 = LeafKit(Processor(seed=0)), LeafKit(Processor(seed=1))
    a = build(kit0, A, key_a).enter()
    t0, t1 = build(kit0, B, key_a, code=b"t"), build(kit1, B, key_a, code=b"t")
    report = a.ereport(targetinfo_of(t0))
    a.exit()
    assert kit0.cpu.report_keyid != kit1.cpu.report_keyid
    t0.enter()
    assert report_mac(t0.key(report_req(report.keyid)), report.pack()) == report.mac
    t1.enter()
    assert report_mac(t1.key(report_req(report.keyid)), report.pack()) != report.mac


def test_provision_key_survives_an_owner_change(key_a: rsa.RSAPrivateKey) -> None:
    kit = LeafKit()
    e = build(kit, A, key_a, attributes=M64 | Attribute.PROVISIONKEY).enter()
    reqs = [
        Keyrequest(keyname=KeyName.PROVISION_KEY),
        Keyrequest(keyname=KeyName.PROVISION_SEAL_KEY),
        seal(),
    ]
    before = [e.key(r) for r in reqs]
    kit.cpu.owner_epoch = b"\x42" * 16
    after = [e.key(r) for r in reqs]
    assert before[:2] == after[:2] and before[2] != after[2]
    # PROVISION ignores KEYID; PROVISION_SEAL additionally binds the seal fuses.
    assert e.key(Keyrequest(keyname=KeyName.PROVISION_KEY, keyid=b"\x09" * 32)) == before[0]
    kit.cpu.seal_fuses = b"\x13" * 16
    assert e.key(reqs[0]) == before[0] and e.key(reqs[1]) != before[1]


# -- EGETKEY error codes: one row per check -------------------------------------------------------


KeyRow = tuple[str, int, Keyrequest, int]
KEY_ROWS: list[KeyRow] = [
    ("seal-isvsvn-too-high", M64, seal(isvsvn=3), SgxError.SGX_INVALID_ISVSVN),
    ("seal-isvsvn-equal", M64, seal(isvsvn=2), SgxError.SUCCESS),
    ("seal-cpusvn-beyond", M64, seal(cpusvn=b"\x01" + bytes(15)), SgxError.SGX_INVALID_CPUSVN),
    ("seal-cpusvn-before-isvsvn", M64, seal(isvsvn=3, cpusvn=bytes(15) + b"\x01"),
     SgxError.SGX_INVALID_CPUSVN),
    ("seal-configsvn-too-high", M64 | Attribute.KSS, seal(configsvn=1), SgxError.SGX_INVALID_ISVSVN),
    ("report-no-svn-checks", M64,
     Keyrequest(keyname=KeyName.REPORT_KEY, isvsvn=99, cpusvn=b"\xff" * 16), SgxError.SUCCESS),
    ("einittoken-without-attribute", M64, Keyrequest(keyname=KeyName.EINITTOKEN_KEY),
     SgxError.SGX_INVALID_ATTRIBUTE),
    ("einittoken-attribute-before-svn", M64, Keyrequest(keyname=KeyName.EINITTOKEN_KEY, isvsvn=9),
     SgxError.SGX_INVALID_ATTRIBUTE),
    ("einittoken-isvsvn", M64 | Attribute.EINITTOKEN_KEY,
     Keyrequest(keyname=KeyName.EINITTOKEN_KEY, isvsvn=3), SgxError.SGX_INVALID_ISVSVN),
    ("einittoken-cpusvn", M64 | Attribute.EINITTOKEN_KEY,
     Keyrequest(keyname=KeyName.EINITTOKEN_KEY, cpusvn=b"\x02" * 16), SgxError.SGX_INVALID_CPUSVN),
    ("provision-without-attribute", M64, Keyrequest(keyname=KeyName.PROVISION_KEY),
     SgxError.SGX_INVALID_ATTRIBUTE),
    ("provision-seal-without-attribute", M64, Keyrequest(keyname=KeyName.PROVISION_SEAL_KEY),
     SgxError.SGX_INVALID_ATTRIBUTE),
    ("provision-isvsvn", M64 | Attribute.PROVISIONKEY,
     Keyrequest(keyname=KeyName.PROVISION_KEY, isvsvn=3), SgxError.SGX_INVALID_ISVSVN),
    ("provision-seal-cpusvn", M64 | Attribute.PROVISIONKEY,
     Keyrequest(keyname=KeyName.PROVISION_SEAL_KEY, cpusvn=b"\x01" * 16), SgxError.SGX_INVALID_CPUSVN),
    ("provision-ok", M64 | Attribute.PROVISIONKEY, Keyrequest(keyname=KeyName.PROVISION_KEY),
     SgxError.SUCCESS),
    ("keyname-5", M64, Keyrequest(keyname=5), SgxError.SGX_INVALID_KEYNAME),
    ("keyname-ffff", M64, Keyrequest(keyname=0xFFFF, isvsvn=9), SgxError.SGX_INVALID_KEYNAME),
]


@pytest.mark.parametrize(
    ("attributes", "req", "expect"), [r[1:] for r in KEY_ROWS], ids=[r[0] for r in KEY_ROWS]
)
def test_egetkey_error_codes(
    key_a: rsa.RSAPrivateKey, attributes: int, req: Keyrequest, expect: int
) -> None:
    kit = LeafKit()
    e = build(kit, A, key_a, attributes=attributes).enter()
    sentinel = b"\xa5" * 16
    e.store(KEYOUT, sentinel)
    assert e.regs is not None
    e.regs[Reg.RFLAGS] |= 0x8D5  # CF PF AF ZF SF OF set: all are cleared or set by the leaf
    rip = e.regs[Reg.RIP]
    rax, out = e.egetkey(req)
    assert rax == expect
    assert e.regs[Reg.RIP] == rip + 3
    assert e.regs[Reg.RFLAGS] & 0x8D5 == (ZF if expect else 0)
    if expect:
        assert out == sentinel  # the output is not modified on an error
    else:
        assert out != sentinel


GpRow = tuple[str, int, Keyrequest]
GP_ROWS: list[GpRow] = [
    ("reserved1", M64, seal(reserved1=b"\x00\x01")),
    ("reserved2-first", M64, seal(reserved2=b"\x01" + bytes(433))),
    ("reserved2-last", M64, seal(reserved2=bytes(433) + b"\x80")),
    ("keypolicy-bit6", M64, seal(int(KeyPolicy.MRENCLAVE) | 1 << 6)),
    ("keypolicy-bit15", M64, seal(1 << 15)),
    ("keypolicy-reserved-even-with-kss", M64 | Attribute.KSS, seal(1 << 9)),
    ("kss-policy-noisvprodid", M64, seal(int(KeyPolicy.NOISVPRODID))),
    ("kss-policy-configid", M64, seal(int(KeyPolicy.CONFIGID))),
    ("kss-policy-isvfamilyid", M64, seal(int(KeyPolicy.ISVFAMILYID))),
    ("kss-policy-isvextprodid", M64, seal(int(KeyPolicy.ISVEXTPRODID))),
    ("kss-configsvn", M64, seal(configsvn=1)),
    ("format-before-keyname", M64, Keyrequest(keyname=7, keypolicy=1 << 6)),
    ("format-before-attribute", M64, Keyrequest(keyname=KeyName.PROVISION_KEY, keypolicy=1 << 7)),
]


@pytest.mark.parametrize(("attributes", "req"), [r[1:] for r in GP_ROWS], ids=[r[0] for r in GP_ROWS])
def test_egetkey_keyrequest_format_gp(
    key_a: rsa.RSAPrivateKey, attributes: int, req: Keyrequest
) -> None:
    kit = LeafKit()
    e = build(kit, A, key_a, attributes=attributes).enter()
    e.store(KEYOUT, b"\x5a" * 16)
    e.store(KEYREQ, req.pack())
    assert e.regs is not None
    regs_before = e.regs.copy()
    with pytest.raises(GeneralProtection) as info:
        e.enclu(EncluLeaf.EGETKEY, A + KEYREQ, A + KEYOUT)
    assert info.value.error_code == 0
    assert e.regs[Reg.RIP] == regs_before[Reg.RIP] and e.regs[Reg.RFLAGS] == regs_before[Reg.RFLAGS]
    assert e.load(KEYOUT, 16) == b"\x5a" * 16


# -- operand checks (EREPORT and EGETKEY) -----------------------------------------------------------


@dataclass
class Op:
    """An operand set-up: the kit, the enclave, a second enclave, for remapping pages."""

    kit: LeafKit
    e: Encl
    other: Encl


def _map(off: int, target: Callable[[Op], int], perms: int = PTE_P | PTE_U | PTE_W) -> Callable[[Op], None]:
    def apply(o: Op) -> None:
        o.kit.umem.set_pte(A + off, target(o) | perms)

    return apply


def _epcm(off: int, **state: bool) -> Callable[[Op], None]:
    """Put the page's EPCM entry into a state another leaf (EBLOCK, EAUG, EMODT) would leave."""

    def apply(o: Op) -> None:
        entry = o.kit.cpu.epcm[o.kit.cpu.epc.index(o.e.encl.pages[A + off])]
        for k, v in state.items():
            setattr(entry, k, v)

    return apply


def _nothing(o: Op) -> None:
    return None


FREE_PAGE = _map(UNBACKED, lambda o: o.kit.alloc())
OTHER_ENCLAVE = _map(UNBACKED, lambda o: o.other.encl.pages[B + DATA2])
ALIAS = _map(UNBACKED, lambda o: o.e.encl.pages[A + DATA2])  # ENCLAVEADDRESS is A+DATA2
TCS_PAGE = _map(UNBACKED, lambda o: o.e.encl.pages[A])
NOT_PRESENT = _map(DATA2, lambda o: 0, perms=0)
READ_ONLY_PTE = _map(DATA2, lambda o: o.e.encl.pages[A + DATA2], perms=PTE_P | PTE_U)

GP = (GeneralProtection, None, 0)

# (id, set-up, KEYREQUEST offset or absolute, output offset or absolute, expected fault)
# Offsets are enclave-relative below SIZE; absolute addresses are used as they are.
OpRow = tuple[str, Callable[[Op], None], int, int, tuple[type[SgxFault], str | None, int]]
EGETKEY_ROWS: list[OpRow] = [
    ("keyrequest-misaligned", _nothing, KEYREQ + 0x100, KEYOUT, GP),
    ("keyrequest-outside-elrange", _nothing, OUTSIDE, KEYOUT, GP),
    ("keyrequest-not-epc", _nothing, UNBACKED, KEYOUT, (PageFault, "rbx", PF_EPC_R)),
    ("keyrequest-not-present", NOT_PRESENT, DATA2, KEYOUT, (PageFault, "rbx", PF_U)),
    ("keyrequest-epcm-invalid", FREE_PAGE, UNBACKED, KEYOUT, (PageFault, "rbx", PF_EPC_R)),
    ("keyrequest-other-enclave", OTHER_ENCLAVE, UNBACKED, KEYOUT, (PageFault, "rbx", PF_EPC_R)),
    ("keyrequest-wrong-linaddr", ALIAS, UNBACKED, KEYOUT, (PageFault, "rbx", PF_EPC_R)),
    ("keyrequest-tcs", TCS_PAGE, UNBACKED, KEYOUT, (PageFault, "rbx", PF_EPC_R)),
    ("keyrequest-blocked", _epcm(DATA2, blocked=True), DATA2, KEYOUT, (PageFault, "rbx", PF_EPC_R)),
    ("keyrequest-pending", _epcm(DATA2, pending=True), DATA2, KEYOUT, (PageFault, "rbx", PF_EPC_R)),
    ("keyrequest-modified", _epcm(DATA2, modified=True), DATA2, KEYOUT, (PageFault, "rbx", PF_EPC_R)),
    ("keyrequest-not-readable", _epcm(DATA2, r=False, w=False), DATA2, KEYOUT, (PageFault, "rbx", PF_EPC_R)),
    ("keyrequest-in-ro-page-ok", _nothing, RO_PAGE, KEYOUT, (SgxFault, "ok", 0)),
    ("output-misaligned", _nothing, KEYREQ, KEYOUT + 8, GP),
    ("output-outside-elrange", _nothing, KEYREQ, OUTSIDE, GP),
    ("output-not-epc", _nothing, KEYREQ, UNBACKED, (PageFault, "rcx", PF_EPC_W)),
    ("output-read-only-pte", READ_ONLY_PTE, KEYREQ, DATA2, (PageFault, "rcx", PF_U | 3)),
    ("output-read-only-epcm", _nothing, KEYREQ, RO_PAGE, (PageFault, "rcx", PF_EPC_W)),
    ("output-other-enclave", OTHER_ENCLAVE, KEYREQ, UNBACKED, (PageFault, "rcx", PF_EPC_W)),
    ("output-pending", _epcm(DATA2, pending=True), KEYREQ, DATA2, (PageFault, "rcx", PF_EPC_W)),
    ("keyrequest-first", _nothing, UNBACKED, OUTSIDE, (PageFault, "rbx", PF_EPC_R)),
]


def _addr(off: int) -> int:
    return A + off if off < SIZE else off


@pytest.mark.parametrize(
    ("setup", "rbx", "rcx", "expect"), [r[1:] for r in EGETKEY_ROWS], ids=[r[0] for r in EGETKEY_ROWS]
)
def test_egetkey_operands(
    key_a: rsa.RSAPrivateKey,
    setup: Callable[[Op], None],
    rbx: int,
    rcx: int,
    expect: tuple[type[SgxFault], str | None, int],
) -> None:
    kit = LeafKit()
    e = build(kit, A, key_a)
    other = build(kit, B, key_a, code=b"other")
    e.enter()
    e.store(KEYREQ, seal().pack())
    e.store(KEYOUT, b"\x3c" * 16)
    setup(Op(kit, e, other))
    assert e.regs is not None
    before = e.regs.copy()
    fault, reg, code = expect
    if reg == "ok":  # a read-only page is fine for the KEYREQUEST
        assert e.enclu(EncluLeaf.EGETKEY, _addr(rbx), _addr(rcx)) == 0
        return
    with pytest.raises(fault) as info:
        e.enclu(EncluLeaf.EGETKEY, _addr(rbx), _addr(rcx))
    assert type(info.value) is fault
    assert info.value.error_code == code
    assert info.value.addr == {"rbx": _addr(rbx), "rcx": _addr(rcx), None: 0}[reg]
    assert e.regs[Reg.RIP] == before[Reg.RIP] and e.regs[Reg.RFLAGS] == before[Reg.RFLAGS]
    assert kit.cpu.epc.read(kit.cpu.epc.index(e.encl.pages[A + 0x3000]), 0x200, 16) == b"\x3c" * 16


EREPORT_ROWS: list[tuple[str, Callable[[Op], None], int, int, int, tuple[type[SgxFault], str | None, int]]] = [
    ("targetinfo-misaligned", _nothing, TINFO + 0x100, RDATA, REPORT, GP),
    ("targetinfo-outside-elrange", _nothing, OUTSIDE, RDATA, REPORT, GP),
    ("targetinfo-not-epc", _nothing, UNBACKED, RDATA, REPORT, (PageFault, "rbx", PF_EPC_R)),
    ("targetinfo-tcs", TCS_PAGE, UNBACKED, RDATA, REPORT, (PageFault, "rbx", PF_EPC_R)),
    ("targetinfo-blocked", _epcm(DATA2, blocked=True), DATA2, RDATA, REPORT, (PageFault, "rbx", PF_EPC_R)),
    ("reportdata-misaligned", _nothing, TINFO, RDATA + 0x40, REPORT, GP),
    ("reportdata-outside-elrange", _nothing, TINFO, OUTSIDE, REPORT, GP),
    ("reportdata-epcm-invalid", FREE_PAGE, TINFO, UNBACKED, REPORT, (PageFault, "rcx", PF_EPC_R)),
    ("reportdata-pending", _epcm(DATA2, pending=True), TINFO, DATA2, REPORT, (PageFault, "rcx", PF_EPC_R)),
    ("reportdata-not-present", NOT_PRESENT, TINFO, DATA2, REPORT, (PageFault, "rcx", PF_U)),
    ("output-misaligned", _nothing, TINFO, RDATA, REPORT + 0x100, GP),
    ("output-outside-elrange", _nothing, TINFO, RDATA, OUTSIDE, GP),
    ("output-read-only-epcm", _nothing, TINFO, RDATA, RO_PAGE, (PageFault, "rdx", PF_EPC_W)),
    ("output-modified", _epcm(DATA2, modified=True), TINFO, RDATA, DATA2, (PageFault, "rdx", PF_EPC_W)),
    ("output-other-enclave", OTHER_ENCLAVE, TINFO, RDATA, UNBACKED, (PageFault, "rdx", PF_EPC_W)),
    ("targetinfo-first", _nothing, UNBACKED, OUTSIDE, OUTSIDE, (PageFault, "rbx", PF_EPC_R)),
    ("reportdata-before-output", _nothing, TINFO, UNBACKED, OUTSIDE, (PageFault, "rcx", PF_EPC_R)),
]


@pytest.mark.parametrize(
    ("setup", "rbx", "rcx", "rdx", "expect"),
    [r[1:] for r in EREPORT_ROWS],
    ids=[r[0] for r in EREPORT_ROWS],
)
def test_ereport_operands(
    key_a: rsa.RSAPrivateKey,
    setup: Callable[[Op], None],
    rbx: int,
    rcx: int,
    rdx: int,
    expect: tuple[type[SgxFault], str | None, int],
) -> None:
    kit = LeafKit()
    e = build(kit, A, key_a)
    other = build(kit, B, key_a, code=b"other")
    e.enter()
    e.store(REPORT, b"\x3c" * 432)
    setup(Op(kit, e, other))
    assert e.regs is not None
    rip = e.regs[Reg.RIP]
    fault, reg, code = expect
    with pytest.raises(fault) as info:
        e.enclu(EncluLeaf.EREPORT, _addr(rbx), _addr(rcx), _addr(rdx))
    assert type(info.value) is fault
    assert info.value.error_code == code
    assert info.value.addr == {"rbx": _addr(rbx), "rcx": _addr(rcx), "rdx": _addr(rdx), None: 0}[reg]
    assert e.regs[Reg.RIP] == rip
    index = kit.cpu.epc.index(e.encl.pages[A + 0x3000])
    assert kit.cpu.epc.read(index, REPORT - 0x3000, 432) == b"\x3c" * 432


TI_ROWS = [
    ("cet-attributes", Targetinfo(cet_attributes=1)),
    ("reserved1", Targetinfo(reserved1=b"\x01")),
    ("reserved2", Targetinfo(reserved2=bytes(7) + b"\x01")),
    ("reserved3-first", Targetinfo(reserved3=b"\x01" + bytes(383))),
    ("reserved3-last", Targetinfo(reserved3=bytes(383) + b"\x80")),
]


@pytest.mark.parametrize("ti", [r[1] for r in TI_ROWS], ids=[r[0] for r in TI_ROWS])
def test_ereport_targetinfo_reserved_gp(key_a: rsa.RSAPrivateKey, ti: Targetinfo) -> None:
    kit = LeafKit()
    e = build(kit, A, key_a).enter()
    e.store(REPORT, b"\x3c" * 432)
    e.store(TINFO, ti.pack())
    with pytest.raises(GeneralProtection):
        e.enclu(EncluLeaf.EREPORT, A + TINFO, A + RDATA, A + REPORT)
    assert e.load(REPORT, 432) == b"\x3c" * 432
    # The operand checks come first: a misplaced output is still reported as such.
    with pytest.raises(PageFault) as info:
        e.enclu(EncluLeaf.EREPORT, A + TINFO, A + RDATA, A + RO_PAGE)
    assert info.value.error_code == PF_EPC_W


def test_enclu_leaves_outside_enclave_mode_gp(key_a: rsa.RSAPrivateKey) -> None:
    kit = LeafKit()
    build(kit, A, key_a)
    for leaf in (EncluLeaf.EREPORT, EncluLeaf.EGETKEY):
        with pytest.raises(GeneralProtection):
            kit.enclu(Registers(), leaf, A + TINFO, A + RDATA, A + REPORT)


# -- keys.py units -----------------------------------------------------------------------------------


def test_key_dependencies_serialization() -> None:
    d = KeyDependencies()
    assert len(d.serialize()) == SERIALIZED_SIZE == 2 * 3 + 16 * 5 + 32 * 3 + 16 * 2 + 352 + 8 + 64 + 4
    # Each field lands in its own bytes: changing any one changes the serialization.
    changed = [
        replace(d, keyname=1), replace(d, isvprodid=1), replace(d, isvsvn=1),
        replace(d, isvextprodid=b"\x01" * 16), replace(d, isvfamilyid=b"\x01" * 16),
        replace(d, ownerepoch=b"\x01" * 16), replace(d, attributes=1 << 127),
        replace(d, attributesmask=1), replace(d, mrenclave=b"\x01" * 32),
        replace(d, mrsigner=b"\x01" * 32), replace(d, keyid=b"\x01" * 32),
        replace(d, seal_key_fuses=b"\x01" * 16), replace(d, cpusvn=b"\x01" * 16),
        replace(d, padding=b"\x01" * 352), replace(d, miscselect=1), replace(d, miscmask=1),
        replace(d, configid=b"\x01" * 64), replace(d, configsvn=1), replace(d, keypolicy=1),
    ]  # fmt: skip
    blobs = {x.serialize() for x in changed} | {d.serialize()}
    assert len(blobs) == len(changed) + 1
    with pytest.raises(ValueError):
        KeyDependencies(mrenclave=bytes(31))
    with pytest.raises(ValueError):
        KeyDependencies(attributes=1 << 128)


def test_derive_key_depends_on_root_key_only_through_the_processor() -> None:
    p0, p0b, p1 = Processor(seed=0), Processor(seed=0), Processor(seed=1)
    d = KeyDependencies(keyname=KeyName.SEAL_KEY)
    assert derive_key(p0, d) == derive_key(p0b, d) != derive_key(p1, d)
    assert len(derive_key(p0, d)) == 16
    assert derive_key(p0, d) == cmac(p0.root_key, d.serialize())


def test_cmac_is_aes128_cmac_rfc4493() -> None:
    key = bytes.fromhex("2b7e151628aed2a6abf7158809cf4f3c")
    assert cmac(key, b"").hex() == "bb1d6929e95937287fa37d129b756746"
    msg = bytes.fromhex("6bc1bee22e409f96e93d7e117393172a")
    assert cmac(key, msg).hex() == "070a16b46b4d4144f79bdd9dd04a287c"


@pytest.mark.parametrize(
    ("requested", "current", "beyond"),
    [
        (bytes(16), bytes(16), False),
        (b"\x01" + bytes(15), bytes(16), True),
        (bytes(15) + b"\x01", bytes(16), True),
        (b"\x02\x03" + bytes(14), b"\x02\x04" + bytes(14), False),
        (b"\x03\x01" + bytes(14), b"\x02\x04" + bytes(14), True),  # not an integer compare
    ],
)
def test_cpusvn_beyond(requested: bytes, current: bytes, beyond: bool) -> None:
    assert cpusvn_beyond(requested, current) is beyond


def test_cpusvn_check_follows_the_platform_cpusvn(key_a: rsa.RSAPrivateKey) -> None:
    kit = LeafKit()
    kit.cpu.cpusvn = b"\x02" * 16
    e = build(kit, A, key_a).enter()
    k_low = e.key(seal(cpusvn=b"\x01" * 16))
    k_cur = e.key(seal(cpusvn=b"\x02" * 16))
    assert k_low != k_cur  # the requested CPUSVN is bound
    assert e.egetkey(seal(cpusvn=b"\x02" * 15 + b"\x03"))[0] == SgxError.SGX_INVALID_CPUSVN
    report = e.ereport(Targetinfo())
    assert report.cpusvn == b"\x02" * 16
