"""Scripted-engine benchmarks: the cost of one checked enclave access on the TLB-hit path."""

from __future__ import annotations

import struct
import sys
import time
from collections.abc import Callable

from sgxemu.arch.constants import PAGE_SIZE, Attribute, PageType, secinfo_flags
from sgxemu.exec.engine import ExitKind
from sgxemu.exec.scripted import ScriptedContext, ScriptedEngine, ScriptedProgram, Step
from sgxemu.hw.processor import Processor
from sgxemu.leafkit import LeafKit
from sgxemu.linux.usermem import UserMemory
from sgxemu.sign import EnclaveMeasurer, generate_key, mrsigner_of_key, sign_sigstruct

BASE = 0x10_0000_0000
SIZE = 0x8000
CODE, SSA, STACK, DATA = 0x1000, 0x2000, 0x3000, 0x4000


def _median(samples: list[float]) -> float:
    s = sorted(samples)
    return s[len(s) // 2]


def _engine(entry: Callable[[ScriptedContext], Step]) -> tuple[LeafKit, ScriptedEngine]:
    """One TCS, an SSA frame, a code, a stack and a data page; EINIT with a real SIGSTRUCT."""
    kit = LeafKit(Processor(epc_size=4 << 20, cpus=1), umem=UserMemory(arena_size=1 << 20))
    encl = kit.ecreate(BASE, SIZE)
    meas = EnclaveMeasurer(SIZE)
    rw = secinfo_flags(PageType.PT_REG, 3)
    tcs = struct.pack("<QQQIIQQQQII", 0, 0, SSA, 0, 1, CODE, 0, 0, 0, 0xFFFF_FFFF, 0xFFFF_FFFF)
    pages = [
        (0, tcs, secinfo_flags(PageType.PT_TCS)),
        (CODE, b"\xcc" * PAGE_SIZE, secinfo_flags(PageType.PT_REG, 5)),
        (SSA, b"", rw),
        (STACK, b"", rw),
        (DATA, b"", rw),
    ]
    for off, data, flags in pages:
        page = data.ljust(PAGE_SIZE, b"\0")
        kit.eadd(encl, BASE + off, page, flags)
        meas.add_page(off, page, flags)
    key = generate_key()
    sig = sign_sigstruct(
        key,
        enclavehash=meas.mrenclave(),
        attributes=int(Attribute.MODE64BIT),
        xfrm=3,
        attributemask=0,
        xfrmmask=0,
        miscselect=0,
        miscmask=0,
        isvprodid=0,
        isvsvn=0,
    )
    kit.set_lepubkeyhash(mrsigner_of_key(key))
    if kit.einit(encl, sig) != 0:
        raise RuntimeError("EINIT failed")
    program = ScriptedProgram({CODE: entry}, stack=lambda ctx: ctx.base + STACK + PAGE_SIZE)
    return kit, ScriptedEngine(kit.cpu, kit.cpu.lp(0), kit.umem, program)


def scripted_access_ns(quick: bool = False) -> float:
    """Median ns of one checked 8-byte load or store (TLB hit), timed inside the steps."""
    batches = 50 if quick else 400
    per_batch = 200
    samples: list[float] = []
    clock = time.perf_counter_ns

    def entry(ctx: ScriptedContext) -> Step:
        addr = ctx.base + DATA + 0x100
        ctx.store_u64(addr, 1)  # fill the TLB (write rights cover reads too)
        yield
        for b in range(batches):
            ops = range(per_batch)
            if b % 2:
                t0 = clock()
                for _ in ops:
                    ctx.load_u64(addr)
                t1 = clock()
            else:
                t0 = clock()
                for i in ops:
                    ctx.store_u64(addr, i)
                t1 = clock()
            samples.append((t1 - t0) / per_batch)
            yield
        ctx.eexit()

    kit, eng = _engine(entry)
    kit.eenter(BASE, 0, eng.regs)
    if eng.run().kind is not ExitKind.EEXIT:
        raise RuntimeError("benchmark enclave did not exit")
    return _median(samples)


def scripted_step_ns(quick: bool = False) -> float:
    """Engine overhead of one step (fetch check + generator resume), one load per step."""
    steps = 5_000 if quick else 50_000

    def entry(ctx: ScriptedContext) -> Step:
        addr = ctx.base + DATA
        for _ in range(steps):
            ctx.load_u64(addr)
            yield
        ctx.eexit()

    runs = []
    for _ in range(3):
        kit, eng = _engine(entry)
        kit.eenter(BASE, 0, eng.regs)
        t0 = time.perf_counter_ns()
        ex = eng.run()
        runs.append((time.perf_counter_ns() - t0) / ex.instructions)
    return _median(runs)


BENCHMARKS: dict[str, Callable[[bool], float]] = {
    "scripted_access_ns": scripted_access_ns,
    "scripted_step_ns": scripted_step_ns,
}
TARGETS = {
    "scripted_access_ns": ("<=", 2000.0, "one checked 8-byte access, TLB hit"),
    "scripted_step_ns": ("<=", 5000.0, "one step: fetch check, generator resume, one load"),
}


def main(argv: list[str]) -> int:
    quick = "--quick" in argv
    failed = False
    for name, fn in BENCHMARKS.items():
        value = fn(quick)
        op, target, what = TARGETS[name]
        ok = value <= target
        failed |= not ok
        print(f"{name:24} {value:10.1f}  (target {op} {target:g}: {what}) {'ok' if ok else 'MISSED'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
