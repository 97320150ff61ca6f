"""The platform around the leaves: CPUID, the launch-control MSRs, the EPC size and sections,
SGX1-only parts, abort-page semantics, several logical processors, and API misuse.

Spec 1.1 (CPUID.(EAX=12H) enumeration), 2.1-2.2 (leaf envelope), 6.2 (abort page), 8 (FLC and
IA32_SGXLEPUBKEYHASH); SDM16 Table 37-6 for the CPUID sub-leaf encodings.
"""

from __future__ import annotations

import resource
import struct

import pytest

from sgxemu.arch.constants import (
    INTEL_LE_PUBKEYHASH,
    Attribute,
    EnclsLeaf,
    EncluLeaf,
    PageType,
    SgxError,
    secinfo_flags,
)
from sgxemu.hw.access import outside_read
from sgxemu.hw.epc import EPC_BASE
from sgxemu.hw.faults import GeneralProtection, InvalidOpcode, PageFault, SgxUsageError
from sgxemu.hw.memory import PTE_P, PTE_U, PTE_W, FlatMemory
from sgxemu.hw.operands import write_operand
from sgxemu.hw.processor import Processor, ProcessorConfig
from sgxemu.hw.regs import Reg, Registers
from sgxemu.hw.secs import SecsState
from sgxemu.leafkit import Enclave, LeafKit
from sgxemu.sign import mrsigner_of_key
from testkeys import key_a, plain_sigstruct

R, W, X = 1, 2, 4
MIB = 1 << 20
TCS_T, REG, VA_T = PageType.PT_TCS, PageType.PT_REG, PageType.PT_VA
IA32_FEATURE_CONTROL = 0x3A
LEPUBKEYHASH = (0x8C, 0x8D, 0x8E, 0x8F)


def decode_section(eax: int, ebx: int, ecx: int, edx: int) -> tuple[int, int, int, int]:
    """(type, base, property, size) of a CPUID.(12H, 2+n) sub-leaf (SDM16 Table 37-6)."""
    base = (eax & 0xFFFF_F000) | (ebx & 0xF_FFFF) << 32
    size = (ecx & 0xFFFF_F000) | (edx & 0xF_FFFF) << 32
    return eax & 0xF, base, ecx & 0xF, size


# ================================================================================================
# CPUID
# ================================================================================================


@pytest.mark.parametrize(("sgx2", "eax"), [(True, 0b11), (False, 0b01)], ids=["sgx2", "sgx1-only"])
def test_cpuid_12h_subleaf_0(sgx2: bool, eax: int) -> None:
    cpu = Processor(epc_size=MIB, sgx2=sgx2, cpus=1)
    a, b, c, d = cpu.cpuid(0x12, 0)
    assert a == eax  # bit 0 SGX1, bit 1 SGX2; no ENCLV (5) nor ENCLS C-variants (6)
    assert b == 0x1  # MISCSELECT: EXINFO only
    assert c == 0
    assert (d & 0xFF, d >> 8 & 0xFF, d >> 16) == (31, 56, 0)  # MaxEnclaveSize_Not64, _64


def test_cpuid_12h_subleaf_1_reports_the_settable_attributes() -> None:
    cpu = Processor(epc_size=MIB, cpus=1)
    a, b, c, d = cpu.cpuid(0x12, 1)
    settable = (
        Attribute.DEBUG | Attribute.MODE64BIT | Attribute.PROVISIONKEY | Attribute.EINITTOKEN_KEY
        | Attribute.KSS | Attribute.AEXNOTIFY
    )  # fmt: skip
    assert (a, b) == (int(settable), 0)  # INIT, CET and the reserved bits are not settable
    assert (c, d) == (0x3, 0)  # XFRM: x87 and SSE


@pytest.mark.parametrize(
    ("size", "sections"),
    [(MIB, 1), (128 * MIB, 1), (64 * MIB, 4), (1 << 40, 1), (1 << 40, 4), (96 * 4096, 3)],
    ids=["1mib", "128mib", "64mib-4-sections", "1tib", "1tib-4-sections", "3-sections"],
)
def test_cpuid_12h_epc_sections(size: int, sections: int) -> None:
    cpu = Processor(epc_size=size, epc_sections=sections, cpus=1)
    found = []
    n = 2
    while True:
        raw = cpu.cpuid(0x12, n)
        if raw[0] & 0xF == 0:
            assert raw == (0, 0, 0, 0)  # the invalid sub-leaf that ends the list is all zero
            break
        found.append(decode_section(*raw))
        n += 1
    per = size // sections
    assert found == [(1, EPC_BASE + i * per, 1, per) for i in range(sections)]
    assert cpu.cpuid(0x12, 2 + sections + 5) == (0, 0, 0, 0)
    # The sections tile the EPC the leaves accept, and nothing else.
    assert (found[0][1], found[-1][1] + found[-1][3]) == (cpu.epc.base, cpu.epc.end)
    assert cpu.epc.npages == size // 4096
    cpu.close()


def test_cpuid_12h_epc_base_high_bits_are_in_ebx() -> None:
    cpu = Processor(epc_size=MIB, cpus=1)
    eax, ebx, _, _ = cpu.cpuid(0x12, 2)
    assert EPC_BASE >> 32 != 0  # the EPC sits above 4 GiB: EBX carries bits 51:32
    assert (eax & 0xFFFF_F000, ebx) == (EPC_BASE & 0xFFFF_F000, EPC_BASE >> 32)


@pytest.mark.parametrize(("flc", "ecx"), [(True, 1 << 30), (False, 0)], ids=["flc", "no-flc"])
def test_cpuid_7_sgx_and_sgx_lc(flc: bool, ecx: int) -> None:
    cpu = Processor(epc_size=MIB, flc=flc, cpus=1)
    a, b, c, d = cpu.cpuid(7, 0)
    assert b & (1 << 2)  # CPUID.(7,0):EBX[2] SGX
    assert c & (1 << 30) == ecx  # CPUID.(7,0):ECX[30] SGX_LC
    assert (a, d) == (0, 0)


def test_cpuid_other_leaves_read_as_zero() -> None:
    cpu = Processor(epc_size=MIB, cpus=1)
    assert cpu.cpuid(0x1) == (0, 0, 0, 0)
    assert cpu.cpuid(7, 1) == (0, 0, 0, 0)


# ================================================================================================
# IA32_FEATURE_CONTROL and IA32_SGXLEPUBKEYHASH0..3
# ================================================================================================


@pytest.mark.parametrize(("flc", "value"), [(True, 1 | 1 << 17 | 1 << 18), (False, 1 | 1 << 18)], ids=["flc", "no-flc"])
def test_feature_control(flc: bool, value: int) -> None:
    """Locked, SGX enabled, SGX launch control enabled only with FLC."""
    assert Processor(epc_size=MIB, flc=flc, cpus=1).rdmsr(IA32_FEATURE_CONTROL) == value


@pytest.mark.parametrize("flc", [True, False], ids=["flc", "no-flc"])
def test_lepubkeyhash_resets_to_intels_key_hash(flc: bool) -> None:
    cpu = Processor(epc_size=MIB, flc=flc, cpus=1)
    words = [cpu.rdmsr(m) for m in LEPUBKEYHASH]
    assert b"".join(w.to_bytes(8, "little") for w in words) == INTEL_LE_PUBKEYHASH
    assert words[0] == int.from_bytes(INTEL_LE_PUBKEYHASH[:8], "little")


def test_lepubkeyhash_is_writable_with_flc_as_little_endian_words() -> None:
    cpu = Processor(epc_size=MIB, cpus=1)
    cpu.wrmsr(0x8E, 0x0102_0304_0506_0708)
    expected = INTEL_LE_PUBKEYHASH[:16] + bytes.fromhex("0807060504030201") + INTEL_LE_PUBKEYHASH[24:]
    assert cpu.lepubkeyhash == expected
    assert cpu.rdmsr(0x8E) == 0x0102_0304_0506_0708
    digest = bytes(range(32))
    for i, msr in enumerate(LEPUBKEYHASH):
        cpu.wrmsr(msr, int.from_bytes(digest[8 * i : 8 * i + 8], "little"))
    assert cpu.lepubkeyhash == digest
    assert [cpu.rdmsr(m) for m in LEPUBKEYHASH] == [
        int.from_bytes(digest[i : i + 8], "little") for i in range(0, 32, 8)
    ]


@pytest.mark.parametrize("msr", LEPUBKEYHASH)
def test_lepubkeyhash_write_without_flc_is_gp(msr: int) -> None:
    cpu = Processor(epc_size=MIB, flc=False, cpus=1)
    with pytest.raises(GeneralProtection):
        cpu.wrmsr(msr, 0x1234)
    assert cpu.lepubkeyhash == INTEL_LE_PUBKEYHASH


def test_lepubkeyhash_write_needs_the_lc_bit_and_the_lock() -> None:
    cpu = Processor(epc_size=MIB, cpus=1)
    cpu.feature_control &= ~1  # not locked
    with pytest.raises(GeneralProtection):
        cpu.wrmsr(0x8C, 1)
    assert cpu.lepubkeyhash == INTEL_LE_PUBKEYHASH


@pytest.mark.parametrize("msr", [0x8B, 0x90, 0x10, 0xFFFF_FFFF])
def test_unknown_msrs_are_gp(msr: int) -> None:
    cpu = Processor(epc_size=MIB, cpus=1)
    with pytest.raises(GeneralProtection):
        cpu.rdmsr(msr)
    with pytest.raises(GeneralProtection):
        cpu.wrmsr(msr, 0)


def test_einit_checks_the_signer_against_the_written_hash() -> None:
    """Without writing LEPUBKEYHASH (Intel's hash), a zero token fails with 16; after, it passes."""
    kit = LeafKit(epc_size=16 * 4096, cpus=1)
    encl, secs = build(kit, 0x1000_0000)
    assert secs.measurement is not None
    sig = plain_sigstruct(secs.measurement.final())
    assert kit.einit(encl, sig) == SgxError.SGX_INVALID_EINITTOKEN
    kit.set_lepubkeyhash(mrsigner_of_key(key_a()))
    assert kit.einit(encl, sig) == 0


# ================================================================================================
# A 1 TiB EPC
# ================================================================================================


def _rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4


def test_one_tib_epc_costs_no_memory() -> None:
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    rss = _rss_kib()
    cpu = Processor(epc_size=1 << 40, cpus=1)
    kit = LeafKit(cpu)
    assert cpu.epc.npages == 1 << 28
    last = cpu.epc.address(cpu.epc.npages - 1)
    assert cpu.epc.end == last + 4096
    # EPA on the very last page, then on the first, EREMOVE both.
    for pa in (last, cpu.epc.address(0), cpu.epc.address(1 << 27)):
        assert kit.encls(EnclsLeaf.EPA, VA_T, pa) == 0
        e = cpu.epcm[cpu.epc.index(pa)]
        assert (e.pt, e.secs) == (VA_T, None)
        assert cpu.epc.read(cpu.epc.index(pa), 0, 4096) == bytes(4096)
    assert cpu.free_pages == (1 << 28) - 3
    # One page past the end is not EPC.
    with pytest.raises(PageFault) as pf:
        kit.encls(EnclsLeaf.EPA, VA_T, cpu.epc.end)
    assert (pf.value.addr, pf.value.error_code) == (cpu.epc.end, 0x8003)
    for pa in (last, cpu.epc.address(0), cpu.epc.address(1 << 27)):
        assert kit.encls(EnclsLeaf.EREMOVE, 0, pa) == 0
    assert not cpu.epcm
    # An enclave at the top of the EPC works too (the kit allocates from its cursor).
    kit._next_free = cpu.epc.npages - 8
    encl, secs = build(kit, 0x1000_0000)
    assert all(cpu.epc.index(pa) >= cpu.epc.npages - 8 for pa in (encl.secs_pa, *encl.pages.values()))
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - maxrss < 8 * 1024
    assert _rss_kib() - rss < 8 * 1024
    assert secs.chldcnt == 2
    cpu.close()


# ================================================================================================
# SGX1-only parts
# ================================================================================================


def build(kit: LeafKit, base: int, *, nssa: int = 1) -> tuple[Enclave, SecsState]:
    """A 64-bit enclave: a TCS at base (OENTRY base+0x2000), its SSA frame(s) after it."""
    encl = kit.ecreate(base, 0x8000)
    tcs = struct.pack("<QQQIIQQQQII", 0, 0, 0x1000, 0, nssa, 0x2000, 0, 0, 0, 0xFFF, 0xFFF)
    kit.eadd(encl, base, tcs, secinfo_flags(TCS_T), measure=False)
    for i in range(nssa):
        kit.eadd(encl, base + 0x1000 * (i + 1), b"", secinfo_flags(REG, R | W), measure=False)
    secs = kit.cpu.secs_of(kit.cpu.epc.index(encl.secs_pa))
    assert secs is not None
    return encl, secs


def initialized(kit: LeafKit, base: int, *, nssa: int = 1) -> tuple[Enclave, SecsState]:
    encl, secs = build(kit, base, nssa=nssa)
    assert secs.measurement is not None
    kit.set_lepubkeyhash(mrsigner_of_key(key_a()))
    assert kit.einit(encl, plain_sigstruct(secs.measurement.final())) == 0
    return encl, secs


def test_sgx1_only_part_refuses_the_sgx2_leaves() -> None:
    kit = LeafKit(epc_size=32 * 4096, cpus=2, sgx2=False)
    cpu = kit.cpu
    base = 0x1000_0000
    encl, secs = initialized(kit, base)
    snapshot = (dict(cpu.epcm), secs.chldcnt, cpu.encls_count[:])
    kit.kmem.write(0x1000, struct.pack("<4Q", base + 0x3000, 0, 0, encl.secs_pa))
    free = kit.alloc()
    for leaf, rbx in (
        (EnclsLeaf.EAUG, 0x1000),
        (EnclsLeaf.EMODPR, kit.secinfo(secinfo_flags(REG, R))),
        (EnclsLeaf.EMODT, kit.secinfo(secinfo_flags(PageType.PT_TRIM))),
    ):
        target = free if leaf is EnclsLeaf.EAUG else encl.pages[base + 0x1000]
        with pytest.raises(GeneralProtection):
            kit.encls(leaf, rbx, target)
    assert (dict(cpu.epcm), secs.chldcnt, cpu.encls_count) == snapshot
    regs = kit.eenter(base)
    assert cpu.lp(0).enclave_mode
    for uleaf in (EncluLeaf.EACCEPT, EncluLeaf.EMODPE, EncluLeaf.EACCEPTCOPY):
        with pytest.raises(GeneralProtection):
            kit.enclu(regs, uleaf, base + 0x1000, base + 0x1000, base + 0x1000)
    assert cpu.lp(0).enclave_mode  # still inside: a faulting ENCLU is not an exit
    kit.eexit(regs)
    assert cpu.cpuid(0x12, 0)[0] & 0b10 == 0


@pytest.mark.parametrize("leaf", [0x10, 0x11, 0x12, 0x13, 0x14, 0x1F, 0x20, 0xFFFF_FFFF])
def test_unimplemented_encls_leaves_are_gp(leaf: int) -> None:
    kit = LeafKit(epc_size=16 * 4096, cpus=1)
    with pytest.raises(GeneralProtection):
        kit.cpu.encls(leaf, 0, kit.alloc(), 0, mem=kit.kmem)
    assert not kit.cpu.epcm


@pytest.mark.parametrize("leaf", [0x08, 0x09, 0x0A, 0x100])
def test_unimplemented_enclu_leaves_are_gp(leaf: int) -> None:
    cpu = Processor(epc_size=MIB, cpus=1)
    regs = Registers(rax=leaf)
    with pytest.raises(GeneralProtection):
        cpu.enclu(cpu.lp(0), regs, FlatMemory(cpu.epc.base, cpu.epc.end))


def test_upper_half_of_eax_is_ignored() -> None:
    kit = LeafKit(epc_size=16 * 4096, cpus=1)
    pa = kit.alloc()
    assert kit.cpu.encls((1 << 32) | EnclsLeaf.EPA, VA_T, pa, mem=kit.kmem) == 0
    assert kit.cpu.epcm[kit.cpu.epc.index(pa)].pt is VA_T


def test_sgx_disabled_in_feature_control() -> None:
    """SGX_ENABLE = 0: ENCLS raises #GP, ENCLU #UD (spec 2.2)."""
    kit = LeafKit(epc_size=16 * 4096, cpus=1)
    kit.cpu.feature_control &= ~(1 << 18)
    with pytest.raises(GeneralProtection):
        kit.encls(EnclsLeaf.EPA, VA_T, kit.alloc())
    with pytest.raises(InvalidOpcode):
        kit.eenter(0x1000_0000)
    assert not kit.cpu.epcm


# ================================================================================================
# Abort-page semantics: EPC seen from outside enclave mode
# ================================================================================================


def test_outside_read_of_epc_is_all_ones() -> None:
    kit = LeafKit(epc_size=32 * 4096, cpus=2)
    base = 0x1000_0000
    encl, _ = initialized(kit, base)
    data = base + 0x3000
    secret_pa = encl.pages[base + 0x1000]
    kit.cpu.epc.write(kit.cpu.epc.index(secret_pa), 0, b"secret" * 600)
    umem = kit.umem
    assert isinstance(umem, FlatMemory)
    umem.set_pte(data, secret_pa | PTE_P | PTE_W | PTE_U)
    assert outside_read(kit.cpu, umem, data, 64) == b"\xff" * 64
    assert outside_read(kit.cpu, umem, data + 0xFF0, 16) == b"\xff" * 16
    # Also from CPU 1 while CPU 0 is inside the enclave: what counts is the reader's mode.
    kit.eenter(base, lp=0)
    assert outside_read(kit.cpu, umem, base, 8) == b"\xff" * 8  # the TCS
    # A read straddling ordinary memory and EPC: each page on its own terms.
    umem.write(data - 8, b"ordinary")
    assert outside_read(kit.cpu, umem, data - 8, 16) == b"ordinary" + b"\xff" * 8
    # The normal paging checks still apply.
    umem.set_pte(data + 0x1000, 0)
    with pytest.raises(PageFault) as pf:
        outside_read(kit.cpu, umem, data + 0x1000, 4)
    assert (pf.value.addr, pf.value.error_code) == (data + 0x1000, 0x4)
    umem.set_pte(data + 0x1000, secret_pa | PTE_P)
    with pytest.raises(PageFault) as pf:
        outside_read(kit.cpu, umem, data + 0x1000, 4)
    assert (pf.value.addr, pf.value.error_code) == (data + 0x1000, 0x5)
    assert outside_read(kit.cpu, umem, data + 0x1000, 4, user=False) == b"\xff" * 4


def test_encls_source_operands_in_epc_read_as_all_ones() -> None:
    kit = LeafKit(epc_size=32 * 4096, cpus=1)
    cpu, kmem = kit.cpu, kit.kmem
    base = 0x1000_0000
    encl, secs = build(kit, base)
    secret_pa = kit.eadd(encl, base + 0x3000, b"secret" * 600, secinfo_flags(REG, R | W), measure=False)
    # EADD copying from an EPC page copies the abort pattern, not the secret.
    pa = kit.alloc()
    kmem.write(0x1040, struct.pack("<Q", secinfo_flags(REG, R | W)) + bytes(56))
    kmem.write(0x1000, struct.pack("<4Q", base + 0x4000, secret_pa, 0x1040, encl.secs_pa))
    assert kit.encls(EnclsLeaf.EADD, 0x1000, pa) == 0
    assert cpu.epc.read(cpu.epc.index(pa), 0, 4096) == b"\xff" * 4096
    snapshot = (sorted(cpu.epcm), secs.chldcnt, cpu.next_eid)
    # A PAGEINFO in EPC reads as all ones: SRCPGE is misaligned.
    with pytest.raises(GeneralProtection):
        kit.encls(EnclsLeaf.ECREATE, secret_pa, kit.alloc())
    # A SECINFO in EPC: every reserved FLAGS bit set.
    kmem.write(0x1000, struct.pack("<4Q", base + 0x5000, 0x2000, secret_pa + 0x40, encl.secs_pa))
    with pytest.raises(GeneralProtection):
        kit.encls(EnclsLeaf.EADD, 0x1000, kit.alloc())
    # A SIGSTRUCT in EPC: its HEADER is all ones.
    kmem.write(0x4800, bytes(304))
    assert kit.encls(EnclsLeaf.EINIT, secret_pa, encl.secs_pa, 0x4800) == SgxError.SGX_INVALID_SIG_STRUCT
    assert (sorted(cpu.epcm), secs.chldcnt, cpu.next_eid) == snapshot


def test_writes_to_epc_from_outside_are_dropped() -> None:
    kit = LeafKit(epc_size=16 * 4096, cpus=1)
    encl, _ = build(kit, 0x1000_0000)
    pa = encl.pages[0x1000_0000]
    before = kit.cpu.epc.read(kit.cpu.epc.index(pa), 0, 4096)
    write_operand(kit.cpu, kit.kmem, pa, b"\x00" * 64, False)
    assert kit.cpu.epc.read(kit.cpu.epc.index(pa), 0, 4096) == before


# ================================================================================================
# Several logical processors
# ================================================================================================


def test_several_lps_inside_one_enclave_on_different_tcss() -> None:
    kit = LeafKit(epc_size=64 * 4096, cpus=4)
    cpu = kit.cpu
    base = 0x1000_0000
    encl = kit.ecreate(base, 0x1_0000)
    for i in range(3):
        tcs = struct.pack("<QQQIIQQQQII", 0, 0, 0x4000 + 0x1000 * i, 0, 1, 0x8000, 0, 0, 0, 0xFFF, 0xFFF)
        kit.eadd(encl, base + 0x1000 * i, tcs, secinfo_flags(TCS_T), measure=False)
        kit.eadd(encl, base + 0x4000 + 0x1000 * i, b"", secinfo_flags(REG, R | W), measure=False)
    kit.eadd(encl, base + 0x8000, b"\x90" * 16, secinfo_flags(REG, R | X), measure=False)
    secs = cpu.secs_of(cpu.epc.index(encl.secs_pa))
    assert secs is not None and secs.measurement is not None
    kit.set_lepubkeyhash(mrsigner_of_key(key_a()))
    assert kit.einit(encl, plain_sigstruct(secs.measurement.final())) == 0
    regs = [kit.eenter(base + 0x1000 * i, lp=i + 1) for i in range(3)]  # LPs 1, 2, 3
    assert secs.inside == {1: 0, 2: 0, 3: 0}
    tcs_indexes = {cpu.lp(i).tcs_index for i in (1, 2, 3)}
    assert tcs_indexes == {cpu.epc.index(encl.pages[base + 0x1000 * i]) for i in range(3)}
    for i in range(3):
        lp = cpu.lp(i + 1)
        assert lp.enclave_mode and lp.secs is secs and lp.tcs_lin == base + 0x1000 * i
        assert lp.ssa_frame_lin == base + 0x4000 + 0x1000 * i
        state = struct.unpack("<Q", cpu.epc.read(lp.tcs_index, 0, 8))[0]
        assert state == 1
    assert not cpu.lp(0).enclave_mode
    # Every TCS is busy: LP 0 cannot enter through any of them.
    for i in range(3):
        with pytest.raises(GeneralProtection):
            kit.eenter(base + 0x1000 * i, lp=0)
    assert kit.eremove(encl, base + 0x8000) == SgxError.SGX_ENCLAVE_ACT
    # Each LP leaves on its own; the enclave is active until the last one is out.
    kit.eexit(regs[1], lp=2)
    assert secs.inside == {1: 0, 3: 0}
    kit.enclave_store(base + 0x4000 + 0x10, b"lp1", lp=1)
    assert kit.enclave_load(base + 0x4000 + 0x10, 3, lp=3) == b"lp1"
    kit.eexit(regs[0], lp=1)
    assert kit.eremove(encl, base + 0x8000) == SgxError.SGX_ENCLAVE_ACT
    kit.eexit(regs[2], lp=3)
    assert secs.inside == {}
    assert kit.eremove(encl, base + 0x8000) == 0
    # A freed TCS can be entered by another LP.
    assert kit.eenter(base + 0x1000, lp=0)[Reg.RIP] == base + 0x8000


# ================================================================================================
# API misuse
# ================================================================================================


@pytest.mark.parametrize("cpus", [0, -1])
def test_a_processor_needs_a_logical_processor(cpus: int) -> None:
    with pytest.raises(SgxUsageError):
        Processor(epc_size=MIB, cpus=cpus)
    with pytest.raises(SgxUsageError):
        Processor(ProcessorConfig(epc_size=MIB, cpus=cpus))


@pytest.mark.parametrize("index", [4, 5, -1, 1000])
def test_unknown_logical_processor(index: int) -> None:
    kit = LeafKit(epc_size=16 * 4096, cpus=4)
    with pytest.raises(SgxUsageError):
        kit.cpu.lp(index)
    with pytest.raises(SgxUsageError):
        kit.eenter(0x1000_0000, lp=index)


def test_config_and_overrides_together_are_refused() -> None:
    with pytest.raises(SgxUsageError):
        Processor(ProcessorConfig(epc_size=MIB), cpus=2)


def test_default_configuration() -> None:
    cfg = ProcessorConfig()
    assert (cfg.epc_size, cfg.epc_sections, cfg.sgx2, cfg.flc, cfg.cpus) == (128 * MIB, 1, True, True, 4)
    cpu = Processor(cfg)
    assert len(cpu.lps) == 4 and [lp.index for lp in cpu.lps] == [0, 1, 2, 3]
    assert cpu.free_pages == 128 * MIB // 4096
    cpu.close()


@pytest.mark.parametrize(("size", "sections"), [(0, 1), (4096 * 3, 2), (100, 1)])
def test_bad_epc_geometry_is_refused(size: int, sections: int) -> None:
    with pytest.raises(ValueError):
        Processor(epc_size=size, epc_sections=sections, cpus=1)


def test_power_cycle_loses_the_epc_and_changes_the_pagingkey_a() -> None:
    kit = LeafKit(epc_size=16 * 4096, cpus=2)
    cpu = kit.cpu
    initialized(kit, 0x1000_0000)
    kit.eenter(0x1000_0000, lp=1)
    key = cpu.base_pk
    cpu.power_cycle()
    assert not cpu.epcm and cpu.enclaves() == []
    assert not cpu.lp(1).enclave_mode and cpu.lp(1).secs is None
    assert cpu.base_pk != key
    assert all(cpu.epc.read(i, 0, 4096) == bytes(4096) for i in range(16))
    with pytest.raises(PageFault) as pf:  # the TCS page is free again
        kit.eenter(0x1000_0000, lp=1)
    assert (pf.value.addr, pf.value.error_code) == (0x1000_0000, 0x8005)
