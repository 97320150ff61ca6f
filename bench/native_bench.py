"""Native-engine benchmarks: enclave round trips and straight-line throughput on Unicorn."""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from typing import Any

from sgxemu.arch.constants import PAGE_SIZE, EncluLeaf, PageType, secinfo_flags
from sgxemu.arch.structs import Tcs
from sgxemu.exec.engine import ExitKind
from sgxemu.exec.native import NativeEngine
from sgxemu.hw.processor import Processor
from sgxemu.hw.regs import Reg
from sgxemu.leafkit import AEP, HOST_RIP, Enclave, LeafKit
from sgxemu.linux.mman import PROT_READ, PROT_WRITE
from sgxemu.linux.usermem import UserMemory
from sgxemu.sign import EnclaveMeasurer, generate_key, mrsigner_of_key, sign_sigstruct

BASE = 0x10_0000_0000
UBUF = 0x5000_0000
_KEY: list[Any] = []


def _median(samples: list[float]) -> float:
    s = sorted(samples)
    return s[len(s) // 2]


def _key() -> Any:
    if not _KEY:
        _KEY.append(generate_key())
    return _KEY[0]


def _kit() -> tuple[LeafKit, UserMemory]:
    umem = UserMemory(arena_size=1 << 30)
    kit = LeafKit(Processor(cpus=1, epc_size=16 << 20), umem=umem)
    umem.map_anonymous(UBUF, 0x10000, PROT_READ | PROT_WRITE)
    return kit, umem


def _einit(kit: LeafKit, encl: Enclave, m: EnclaveMeasurer) -> None:
    key = _key()
    kit.set_lepubkeyhash(mrsigner_of_key(key))
    sig = sign_sigstruct(
        key, enclavehash=m.mrenclave(), attributes=0, xfrm=0, attributemask=0, xfrmmask=0,
        miscselect=0, miscmask=0, isvprodid=0, isvsvn=0,
    )  # fmt: skip
    assert kit.einit(encl, sig) == 0


def _test_enclave() -> tuple[LeafKit, UserMemory]:
    """sgxemu's test enclave, built leaf by leaf and EINITed."""
    from sgxemu.loader.selftest_layout import PROT_EXEC, load_segments
    from sgxemu.testenclave import build_test_enclave

    image = load_segments(build_test_enclave())
    kit, umem = _kit()
    encl = kit.ecreate(BASE, image.encl_size)
    m = EnclaveMeasurer(image.encl_size)
    tcs_flags = secinfo_flags(PageType.PT_TCS)
    for seg in image.segments:
        for off in range(0, seg.size, PAGE_SIZE):
            lin, data = BASE + seg.offset + off, seg.data[off : off + PAGE_SIZE]
            kit.eadd(encl, lin, data, seg.secinfo_flags, measure=seg.measure)
            m.add_page(seg.offset + off, data, seg.secinfo_flags, seg.measure)
            tcs = seg.secinfo_flags == tcs_flags
            kit.map(encl, lin, encl.pages[lin], write=tcs or bool(seg.prot & PROT_WRITE),
                    execute=not tcs and bool(seg.prot & PROT_EXEC))  # fmt: skip
    _einit(kit, encl, m)
    return kit, umem


def eenter_eexit_us(quick: bool = False) -> float:
    """Median µs of EENTER -> NOP op -> EEXIT through `cpu.enclu` + `engine.run`."""
    kit, umem = _test_enclave()
    cpu = kit.cpu
    lp = cpu.lp(0)
    eng = NativeEngine(cpu, lp, umem)
    umem.write(UBUF, struct.pack("<Q", 4))  # ENCL_OP_NOP
    regs = eng.regs
    enclu, run = cpu.enclu, eng.run
    eenter = EncluLeaf.EENTER
    rax, rbx, rcx, rip, rdi, rsp = Reg.RAX, Reg.RBX, Reg.RCX, Reg.RIP, Reg.RDI, Reg.RSP

    def once() -> None:
        # The caller's registers, set as the vDSO model sets them (one batch).
        values = regs.get_all()
        values[rax] = eenter
        values[rbx] = BASE
        values[rcx] = AEP
        values[rip] = HOST_RIP
        values[rdi] = UBUF
        values[rsp] = UBUF + 0x8000
        regs.set_all(values)
        enclu(lp, regs, umem)
        run()

    once()  # translate once
    n = 300 if quick else 2000
    batches = []
    for _ in range(5 if quick else 9):
        t0 = time.perf_counter()
        for _ in range(n):
            once()
        batches.append((time.perf_counter() - t0) / n * 1e6)
    assert eng.regs[Reg.RIP] == HOST_RIP + 3
    eng.close()
    return _median(batches)


def _straight_line_code(units: int) -> tuple[bytes, int]:
    """RCX times `units` x 6 instructions (loads, stores, ALU), then EEXIT to the entry's RCX.

    The data page lies just below the code (RSP = its top). Returns (code, instructions per
    iteration).
    """
    body = b""
    for k in range(units):
        a, b = (-8 * (k % 16 + 1)) & 0xFF, (-8 * ((k + 5) % 16 + 1)) & 0xFF
        body += bytes([0x48, 0x8B, 0x44, 0x24, a])  # mov rax, [rsp - ...]
        body += bytes.fromhex("4801d8")  # add rax, rbx
        body += bytes([0x48, 0x89, 0x44, 0x24, b])  # mov [rsp - ...], rax
        body += bytes.fromhex("4831c3488d34184801f2")  # xor rbx,rax; lea rsi,[rax+rbx]; add rdx,rsi
    code = bytes.fromhex("4989cd488b0f")  # mov r13, rcx ; mov rcx, [rdi]
    code += b"\x48\x8d\x25" + struct.pack(
        "<i", -(len(code) + 7)
    )  # lea rsp, [rip - ...]: code start
    loop = len(code)
    code += body + bytes.fromhex("48ffc9")  # dec rcx
    code += b"\x0f\x85" + struct.pack("<i", loop - (len(code) + 6))  # jnz loop
    code += bytes.fromhex("4c89ebb8040000000f01d7")  # mov rbx, r13 ; mov eax, 4 ; EEXIT
    return code, 6 * units + 2


def native_minstr_per_s(quick: bool = False) -> float:
    """Millions of enclave instructions per second on straight-line code (no budget)."""
    code, per_iteration = _straight_line_code(600)
    pages = (len(code) + PAGE_SIZE - 1) // PAGE_SIZE
    kit, umem = _kit()
    size = 1 << max(16, (pages + 3).bit_length() + 12)
    encl = kit.ecreate(BASE, size)
    m = EnclaveMeasurer(size)
    tcs = Tcs(ossa=PAGE_SIZE, nssa=1, oentry=3 * PAGE_SIZE).pack()
    rw, rx = secinfo_flags(PageType.PT_REG, 3), secinfo_flags(PageType.PT_REG, 5)
    layout = [
        (0, tcs, secinfo_flags(PageType.PT_TCS), True, False),
        (PAGE_SIZE, b"", rw, True, False),  # SSA
        (2 * PAGE_SIZE, b"", rw, True, False),  # data (the stack)
    ]
    for i in range(pages):
        layout.append(
            ((3 + i) * PAGE_SIZE, code[i * PAGE_SIZE : (i + 1) * PAGE_SIZE], rx, False, True)
        )
    for off, data, flags, write, execute in layout:
        page = data.ljust(PAGE_SIZE, b"\0")
        kit.eadd(encl, BASE + off, page, flags)
        m.add_page(off, page, flags)
        kit.map(encl, BASE + off, encl.pages[BASE + off], write=write, execute=execute)
    _einit(kit, encl, m)
    cpu = kit.cpu
    eng = NativeEngine(cpu, cpu.lp(0), umem)
    iterations = 300 if quick else 3000
    umem.write(UBUF, struct.pack("<Q", iterations))
    samples = []
    for _ in range(4 if quick else 6):
        regs = eng.regs
        regs[Reg.RAX], regs[Reg.RBX], regs[Reg.RCX] = EncluLeaf.EENTER, BASE, AEP
        regs[Reg.RIP], regs[Reg.RDI] = HOST_RIP, UBUF
        cpu.enclu(eng.lp, regs, umem)
        t0 = time.perf_counter()
        ex = eng.run()
        dt = time.perf_counter() - t0
        assert ex.kind is ExitKind.EEXIT
        samples.append((iterations * per_iteration + 6) / dt / 1e6)
    eng.close()
    return _median(samples[1:])  # the first run translates


BENCHMARKS: dict[str, Callable[[bool], float]] = {
    "native_eenter_eexit_us": eenter_eexit_us,
    "native_minstr_per_s": native_minstr_per_s,
}
TARGETS = {
    "native_eenter_eexit_us": ("<=", 10.0, "hardware: ~2-3 us per EENTER+EEXIT pair"),
    "native_minstr_per_s": (">=", 300.0, "Unicorn TCG, straight-line load/store/ALU code"),
}

if __name__ == "__main__":
    for name, fn in BENCHMARKS.items():
        print(f"{name}: {fn(False):.2f}")
