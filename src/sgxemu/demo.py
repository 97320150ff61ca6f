"""A demonstration at the processor level: build and initialize an enclave through the leaves,
then walk one page through its whole SGX2 life cycle (EAUG, EACCEPT, EMODPR, ETRACK, EACCEPT,
EMODT to TRIM, EACCEPT, EREMOVE), recording the EPCM entry after every step.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from .arch.constants import (
    PAGE_SIZE,
    EncluLeaf,
    PageType,
    SecinfoFlags,
    SgxError,
    secinfo_flags,
)
from .hw.faults import SgxFault
from .leafkit import Enclave, LeafKit
from .sign.measure import EnclaveMeasurer
from .sign.sigstruct import generate_key, mrsigner_of_key, sign_sigstruct

R, W, X = int(SecinfoFlags.R), int(SecinfoFlags.W), int(SecinfoFlags.X)
PENDING, MODIFIED, PR = int(SecinfoFlags.PENDING), int(SecinfoFlags.MODIFIED), int(SecinfoFlags.PR)
BASE = 0x10_0000_0000
SIZE = 0x10000
TCS, SSA, CODE, DATA, PAGE = 0x0, 0x1000, 0x2000, 0x3000, 0x8000


@dataclass
class Step:
    action: str
    outcome: str
    epcm: str


@dataclass
class DemoResult:
    mrenclave: bytes
    mrenclave_offline: bytes
    mrsigner: bytes
    steps: list[Step] = field(default_factory=list)


def _tcs_page() -> bytes:
    tcs = bytearray(PAGE_SIZE)
    # OSSA, CSSA, NSSA, OENTRY (SDM Table 38-10); FS/GS limits as a 64-bit enclave leaves them.
    struct.pack_into("<QIIQ", tcs, 16, SSA, 0, 1, CODE)
    struct.pack_into("<II", tcs, 64, 0xFFFFFFFF, 0xFFFFFFFF)
    return bytes(tcs)


def _epcm_state(kit: LeafKit, encl: Enclave, lin: int) -> str:
    pa = encl.pages.get(lin)
    if pa is None:
        return "(no EPC page)"
    entry = kit.cpu.epcm.get(kit.cpu.epc.index(pa))
    if entry is None:
        return "free (VALID=0)"
    rights = "".join(c if entry.perms & b else "-" for c, b in (("R", R), ("W", W), ("X", X)))
    flags = [n.upper() for n in ("pending", "modified", "pr", "blocked") if getattr(entry, n)]
    return " ".join([entry.pt.name, rights, *flags])


def _code(rax: int) -> str:
    return "success" if rax == 0 else SgxError(rax).name


def run_demo() -> DemoResult:
    """Build, measure, sign and EINIT a small enclave, then walk one page through SGX2."""
    kit = LeafKit(epc_size=16 << 20, cpus=2)
    key = generate_key()
    pages = [
        (TCS, _tcs_page(), secinfo_flags(PageType.PT_TCS)),
        (SSA, bytes(PAGE_SIZE), secinfo_flags(PageType.PT_REG, R | W)),
        (CODE, b"\x0f\x01\xd7".ljust(PAGE_SIZE, b"\xcc"), secinfo_flags(PageType.PT_REG, R | X)),
        (DATA, bytes(PAGE_SIZE), secinfo_flags(PageType.PT_REG, R | W)),
    ]
    encl = kit.ecreate(BASE, SIZE)
    offline = EnclaveMeasurer(SIZE)
    for offset, data, flags in pages:
        kit.eadd(encl, BASE + offset, data, flags)
        offline.add_page(offset, data, flags)
    mrenclave = offline.mrenclave()
    sigstruct = sign_sigstruct(
        key, enclavehash=mrenclave, attributes=0x4, xfrm=3, attributemask=0, xfrmmask=0,
        miscselect=0, miscmask=0, isvprodid=1, isvsvn=1,
    )
    kit.set_lepubkeyhash(mrsigner_of_key(key))  # what Linux does with FLC before EINIT
    rax = kit.einit(encl, sigstruct)
    if rax:
        raise RuntimeError(f"EINIT failed: {_code(rax)}")
    secs = kit.cpu.secs_of(kit.cpu.epc.index(encl.secs_pa))
    assert secs is not None
    result = DemoResult(secs.mrenclave, mrenclave, secs.mrsigner)
    page = BASE + PAGE
    secinfo_at = BASE + DATA  # EACCEPT's SECINFO must be enclave memory

    def step(action: str, outcome: str) -> None:
        result.steps.append(Step(action, outcome, _epcm_state(kit, encl, page)))

    def eaccept(flags: int) -> str:
        regs = kit.eenter(BASE + TCS)
        kit.enclave_store(secinfo_at, struct.pack("<Q", flags) + bytes(56))
        rax = kit.enclu(regs, EncluLeaf.EACCEPT, secinfo_at, page)
        kit.eexit(regs)
        return _code(rax)

    def store_inside() -> str:
        regs = kit.eenter(BASE + TCS)
        try:
            kit.enclave_store(page, b"sgxemu!!")
            outcome = "store succeeds"
        except SgxFault as fault:
            outcome = f"store faults: {fault.vector.name} error code {fault.error_code:#06x}"
        kit.eexit(regs)
        return outcome

    kit.eaug(encl, page)
    step("kernel: EAUG", "success")
    step("enclave: store before EACCEPT", store_inside())
    step("enclave: EACCEPT(R|W|REG|PENDING)", eaccept(R | W | secinfo_flags(PageType.PT_REG) | PENDING))
    step("enclave: store", store_inside())
    step("kernel: EMODPR(R)", _code(kit.emodpr(encl, page, R)))
    step("enclave: EACCEPT before ETRACK", eaccept(R | secinfo_flags(PageType.PT_REG) | PR))
    step("kernel: ETRACK", _code(kit.etrack(encl)))
    step("enclave: EACCEPT(R|REG|PR)", eaccept(R | secinfo_flags(PageType.PT_REG) | PR))
    step("enclave: store", store_inside())
    step("kernel: EMODT(TRIM)", _code(kit.emodt(encl, page, PageType.PT_TRIM)))
    step("kernel: ETRACK", _code(kit.etrack(encl)))
    step("enclave: EACCEPT(TRIM|MODIFIED)", eaccept(secinfo_flags(PageType.PT_TRIM) | MODIFIED))
    pa = encl.pages[page]
    step("kernel: EREMOVE", _code(kit.eremove(encl, page)))
    freed = kit.cpu.epcm.get(kit.cpu.epc.index(pa)) is None
    result.steps[-1].epcm = "free (VALID=0)" if freed else "still valid"
    return result
