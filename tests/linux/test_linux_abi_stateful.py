"""Random sequences of system calls, SGX ioctls and vDSO enclave entries (hypothesis stateful).

Several processes share one machine whose EPC is small enough that the reclaimer runs. Each
process builds, maps, enters, reshapes and tears down enclaves of the test enclave, with valid
and malformed arguments. After every step:

* every system call either succeeded or raised OSError with an errno Linux gives for that call
  (`ALLOWED`, from docs/spec linux-sgx-driver.md §2.9 and the man pages of mmap/munmap/mprotect),
  and, where the arguments decide it, exactly the errno the kernel's check order gives;
* every vDSO call returned what the kernel documents (0, -EINVAL, or the user handler's value),
  with `struct sgx_enclave_run` describing an EEXIT or a #PF/#GP at a plausible place;
* what the enclave stored is what it reads back, whatever the reclaimer did meanwhile, and host
  accesses to enclave memory see the abort page;
* the processor invariants (`sgxemu.hw.invariants`) and the driver invariants
  (`sgxemu.linux.invariants`) hold;

and when every process has exited, no EPC page, VA page or backing page is left.

Run longer with SGXEMU_STATEFUL_EXAMPLES=500 (and SGXEMU_STATEFUL_STEPS=100).
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from functools import cache, partial
from typing import Any, TypeVar

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from sgxemu import Machine, uapi
from sgxemu.arch.constants import SgxError
from sgxemu.hw import invariants as hw_invariants
from sgxemu.linux import SIGBUS, SIGSEGV
from sgxemu.linux import invariants as linux_invariants
from sgxemu.linux.encl import SgxEncl
from sgxemu.linux.load import SECS_ATTRIBUTES, secs_page, sign
from sgxemu.linux.mman import (
    MAP_ANONYMOUS,
    MAP_FIXED,
    MAP_FIXED_NOREPLACE,
    MAP_PRIVATE,
    MAP_SHARED,
    PROT_EXEC,
    PROT_NONE,
    PROT_READ,
    PROT_WRITE,
)
from sgxemu.linux.process import Process, Thread
from sgxemu.linux.vdso import EnclaveCall
from sgxemu.loader.selftest_layout import EnclaveImage, load_segments
from sgxemu.sign import generate_key
from sgxemu.sign.sigstruct import sign_sigstruct
from sgxemu.testenclave import build_test_enclave
from sgxemu.testenclave import protocol as P

T = TypeVar("T")
E = errno
PAGE = 4096
CPUS = 3
EPC_PAGES = int(os.environ.get("SGXEMU_STATEFUL_EPC_PAGES", "64"))  # 256 KiB: ksgxd wakes
HEAP_PAGES = 8  # ELRANGE 128 KiB (32 pages): 17 added pages, 15 left for EAUG
MAX_PROCS = 3
MAX_ENCLAVES = 5  # open enclave fds on the machine
OP_SLOTS = 1024  # 64-byte op structs per process, used round robin
SENTINEL = 0x5A5A_0000  # `count` on input: unchanged when the kernel does not copy back
EENTER, ERESUME, EEXIT = uapi.EENTER, uapi.ERESUME, uapi.EEXIT
EXAMPLES = int(os.environ.get("SGXEMU_STATEFUL_EXAMPLES", "200"))
STEPS = int(os.environ.get("SGXEMU_STATEFUL_STEPS", "80"))

# -- what Linux can answer, per call (docs/spec linux-sgx-driver.md §2, §3; man 2 mmap/mprotect) --
# Every ioctl on an fd: EBADF (no such fd), ENOTTY (not /dev/sgx_enclave, or an unknown request:
# ENOIOCTLCMD), EBUSY (another ioctl on the same enclave is in progress).
_IOCTL = frozenset({E.EBADF, E.ENOTTY, E.EBUSY})
ALLOWED: dict[str, frozenset[int]] = {
    "open": frozenset({E.ENOENT}),
    "close": frozenset({E.EBADF}),
    "mmap": frozenset({E.EINVAL, E.EACCES, E.ENOMEM, E.EPERM, E.EBADF, E.ENODEV, E.EEXIST}),
    "munmap": frozenset({E.EINVAL}),
    "mprotect": frozenset({E.EINVAL, E.EACCES, E.ENOMEM}),
    # state / size not a power of 2 · bad arg or SECS pointer · no EPC · signal · ECREATE failed
    "CREATE": _IOCTL | {E.EINVAL, E.EFAULT, E.ENOMEM, E.EINTR, E.EIO},
    # state, src, offset/length, SECINFO · copy/no VMA/GUP · noexec src · offset in use · no EPC
    # · signal before the first page or during EPC allocation · EADD/EEXTEND failed
    "ADD_PAGES": _IOCTL | {E.EINVAL, E.EFAULT, E.EACCES, E.ENOMEM, E.EINTR, E.EIO},
    # state/vendor/reserved bits · copy · attribute not allowed · EINIT error · EINIT fault · signal
    "INIT": _IOCTL | {E.EINVAL, E.EFAULT, E.ENOMEM, E.EACCES, E.EPERM, E.EIO, E.EINTR},
    "PROVISION": _IOCTL | {E.EFAULT, E.EINVAL},
    "RESTRICT_PERMISSIONS": _IOCTL | {E.ENODEV, E.EINVAL, E.EAGAIN, E.EFAULT},
    "MODIFY_TYPES": _IOCTL | {E.ENODEV, E.EINVAL, E.EPERM, E.EAGAIN, E.EFAULT},
    "REMOVE_PAGES": _IOCTL | {E.ENODEV, E.EINVAL, E.EPERM, E.EAGAIN, E.EFAULT},
    "unknown ioctl": _IOCTL,
}
REQUESTS = {
    "CREATE": uapi.SGX_IOC_ENCLAVE_CREATE,
    "ADD_PAGES": uapi.SGX_IOC_ENCLAVE_ADD_PAGES,
    "INIT": uapi.SGX_IOC_ENCLAVE_INIT,
    "PROVISION": uapi.SGX_IOC_ENCLAVE_PROVISION,
    "RESTRICT_PERMISSIONS": uapi.SGX_IOC_ENCLAVE_RESTRICT_PERMISSIONS,
    "MODIFY_TYPES": uapi.SGX_IOC_ENCLAVE_MODIFY_TYPES,
    "REMOVE_PAGES": uapi.SGX_IOC_ENCLAVE_REMOVE_PAGES,
}
UNKNOWN_REQUESTS = [
    uapi.SGX_IOC_VEPC_REMOVE_ALL,  # only /dev/sgx_vepc handles it
    0,
    0x4010A400,  # CREATE's number with the wrong size
    0xC030A408,  # the next free number
    0x8008A402,  # INIT's number, read instead of write
    0x5401,  # TCGETS
]
SGX_CODES = frozenset(int(c) for c in SgxError)


def errname(code: int) -> str:
    return errno.errorcode.get(code, str(code)) if code else "ok"


# -- the test enclave, with a heap of HEAP_PAGES ---------------------------------------------------
@cache
def image() -> EnclaveImage:
    return load_segments(build_test_enclave(), heap_size=HEAP_PAGES * PAGE)


@cache
def key() -> Any:
    return generate_key()


@cache
def sigstructs() -> dict[str, bytes]:
    img = image()
    good = sign(img, key())
    bad_sig = bytearray(good)
    bad_sig[516] ^= 0x01  # the signature no longer verifies: EINIT says INVALID_SIGNATURE
    bad_vendor = bytearray(good)
    bad_vendor[16:20] = (0x1234).to_bytes(4, "little")
    reserved = sign(img, key(), attributes=SECS_ATTRIBUTES | 1 << 3, attributemask=1 << 3)
    wrong = sign_sigstruct(
        key(), enclavehash=bytes(32), attributes=SECS_ATTRIBUTES, xfrm=3, attributemask=0,
        xfrmmask=0, miscselect=0, miscmask=0, isvprodid=0, isvsvn=0,
    )
    return {"ok": good, "bad_sig": bytes(bad_sig), "bad_vendor": bytes(bad_vendor),
            "reserved": reserved, "wrong_mrenclave": wrong}


def expected_pages() -> list[tuple[int, int, bool, bytes]]:
    """(offset, SECINFO flags, measured, contents) of every page, in load.c's order."""
    out = []
    for seg in image().segments:
        for off in range(0, seg.size, PAGE):
            out.append((seg.offset + off, seg.secinfo_flags, seg.measure,
                        seg.data[off : off + PAGE]))
    return out


def size() -> int:
    return image().encl_size


# Enclave offsets the ops aim at: a buffer page, encl_buffer[0], heap pages, pages for EAUG,
# and pages the enclave may not write (the TCS, the code). Stacks and SSA frames are left alone:
# overwriting a stuck thread's saved state would send it anywhere.
def op_offsets() -> list[int]:
    img = image()
    data = img.data_offset
    heap = img.heap
    eaug = img.src_size
    return sorted({
        data, data + PAGE, data + PAGE + 8, data + 2 * PAGE - 8,
        heap.offset, heap.offset + PAGE + 16, heap.offset + heap.size - 8,
        eaug, eaug + 8, eaug + PAGE, eaug + 2 * PAGE + 0x100, size() - PAGE,
        img.tcs_offset, img.segments[1].offset + 0x40,
    })


def dyn_tcs_offsets() -> list[int]:
    """Where a TCS can be made at run time: its stack is the page below (encl_dyn_entry), its
    SSA frame the page above."""
    eaug = image().src_size
    return [eaug + PAGE, size() - 2 * PAGE]


# -- models ----------------------------------------------------------------------------------------
@dataclass
class TcsModel:
    """One thread's `struct sgx_enclave_run` for one TCS (the selftests reuse one per TCS)."""

    run: uapi.sgx_enclave_run


@dataclass
class EnclModel:
    p: PModel
    fd: int
    encl: SgxEncl
    base: int
    state: str = "open"  # open -> created -> init
    closed: bool = False
    std_secs: bool = False
    attributes: int = 0
    provisioned: bool = False
    pages: list[tuple[int, int, bool, bytes]] = field(default_factory=list)
    tcs: dict[int, TcsModel] = field(default_factory=dict)
    shadow: dict[int, int] = field(default_factory=dict)  # enclave address -> last value stored
    reshaped: set[int] = field(default_factory=set)  # offsets MODIFY_TYPES/REMOVE_PAGES touched

    def vm_max(self, offset: int) -> int | None:
        """vm_max_prot_bits of the page at `offset`: 7 (unconstrained) for an address with no
        page or an EAUG page, None when unknown (the page was retyped or removed)."""
        if offset in self.reshaped:
            return None
        for off, secinfo, _, _ in self.pages:
            if off == offset:
                tcs = secinfo & 0xFF00 == uapi.SGX_SECINFO_TCS
                return (secinfo & 7) | (3 if tcs else 0)
        return 7

    def run_for(self, offset: int) -> TcsModel:
        model = self.tcs.get(offset)
        if model is None:
            model = self.tcs[offset] = TcsModel(uapi.sgx_enclave_run(tcs=self.base + offset))
        return model


@dataclass
class Op:
    kind: int
    addr: int = 0
    value: int = 0
    flags: int = 0

    def struct(self) -> ctypes.Structure:
        h = P.encl_op_header(self.kind)
        if self.kind == P.ENCL_OP_PUT_TO_BUFFER:
            return P.encl_op_put_to_buf(h, self.value)
        if self.kind == P.ENCL_OP_GET_FROM_BUFFER:
            return P.encl_op_get_from_buf(h, 0)
        if self.kind == P.ENCL_OP_PUT_TO_ADDRESS:
            return P.encl_op_put_to_addr(h, self.value, self.addr)
        if self.kind == P.ENCL_OP_GET_FROM_ADDRESS:
            return P.encl_op_get_from_addr(h, 0, self.addr)
        if self.kind == P.ENCL_OP_EACCEPT:
            return P.encl_op_eaccept(h, self.addr, self.flags, 0)
        if self.kind == P.ENCL_OP_EMODPE:
            return P.encl_op_emodpe(h, self.addr, self.flags)
        if self.kind == P.ENCL_OP_INIT_TCS_PAGE:
            return P.encl_op_init_tcs_page(h, self.addr, self.value, self.flags)
        return P.encl_op_put_to_addr(h, 0, 0)  # NOP or an unknown op: just EEXIT

    @property
    def store_addr(self) -> int | None:
        """The enclave address this op writes, if any."""
        if self.kind == P.ENCL_OP_PUT_TO_ADDRESS:
            return self.addr
        return None


@dataclass
class BgCall:
    call: EnclaveCall
    e: EnclModel
    tcs: TcsModel
    leaf: int
    op: Op
    slot: int


@dataclass
class PModel:
    proc: Process
    ring: int  # OP_SLOTS op structs
    scratch: int  # SECS page, SECINFO page, SIGSTRUCT page
    src: int  # the image, as load.c maps the ELF file (read-only)
    heap_src: int  # zero pages
    untrusted: int  # an RW page the enclave may write too
    bg: Thread
    aux: Thread
    encls: list[EnclModel] = field(default_factory=list)
    prov_fds: list[int] = field(default_factory=list)
    next_slot: int = 0
    bg_call: BgCall | None = None
    records: list[tuple[int, ...]] = field(default_factory=list)
    script: list[int] = field(default_factory=list)
    handler: int = 0

    def slot(self) -> int:
        addr = self.ring + 64 * (self.next_slot % OP_SLOTS)
        self.next_slot += 1
        return addr


def pick(items: list[T], i: int) -> T:
    return items[i % len(items)]


class AbiMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.m = Machine(epc_size=EPC_PAGES * PAGE, sgx2=True, flc=True, cpus=CPUS,
                         engine="native", arena_size=1 << 30)
        self.procs: list[PModel] = []
        self.all_encls: list[SgxEncl] = []

    # -- helpers ---------------------------------------------------------------------------------
    def sys(self, name: str, fn: Callable[[], T], expect: Collection[int] | None = None,
            ) -> tuple[int, T | None]:
        """Run a system call: success or an errno from ALLOWED[name] (and from `expect`)."""
        try:
            value = fn()
        except OSError as exc:
            code = exc.errno or 0
            assert code in ALLOWED[name], f"{name} failed with {errname(code)}, which Linux never gives"
            if expect is not None:
                assert code in expect, (
                    f"{name} failed with {errname(code)}, expected {[errname(c) for c in expect]}")
            event(f"{name} -> {errname(code)}")
            return code, None
        if expect is not None:
            assert 0 in expect, f"{name} succeeded, expected {[errname(c) for c in expect]}"
        event(f"{name} -> ok")
        return 0, value

    def ioctl(self, p: PModel, fd: int, name: str, arg: Any, expect: Collection[int] | None = None,
              thread: Thread | None = None) -> int:
        t = thread or p.proc.main
        return self.sys(name, lambda: t.ioctl(fd, REQUESTS.get(name, 0), arg), expect)[0]

    def live_encls(self) -> list[EnclModel]:
        return [e for p in self.procs for e in p.encls]

    def open_encls(self) -> list[EnclModel]:
        return [e for e in self.live_encls() if not e.closed]

    def pick_created(self, i: int) -> EnclModel:
        """Mostly an enclave between CREATE and INIT, when there is one."""
        created = [e for e in self.open_encls() if e.state == "created"]
        return pick(created if created and i % 4 else self.open_encls(), i)

    def forget_shadow(self, e: EnclModel, start: int | None = None, end: int | None = None) -> None:
        if start is None or end is None:
            e.shadow.clear()
            return
        for addr in [a for a in e.shadow if start <= a < end]:
            del e.shadow[addr]

    # -- processes ---------------------------------------------------------------------------------
    @initialize(n=st.integers(1, 3))
    def start(self, n: int) -> None:
        """A process with an enclave built and mapped, as every selftest starts."""
        self.spawn()
        for _ in range(n):
            self.build(0)

    @precondition(lambda self: len(self.procs) < MAX_PROCS)
    @rule()
    def spawn(self) -> None:
        proc = self.m.spawn()
        rw = PROT_READ | PROT_WRITE
        anon = MAP_PRIVATE | MAP_ANONYMOUS
        img = image()
        ring = proc.mmap(0, OP_SLOTS * 64, rw, anon)
        scratch = proc.mmap(0, 3 * PAGE, rw, anon)
        src = proc.mmap(0, img.src_size, rw, anon)
        for seg in img.segments[:-1]:
            proc.write(src + seg.offset, seg.data)
        proc.mprotect(src, img.src_size, PROT_READ)
        heap_src = proc.mmap(0, img.heap.size, rw, anon)
        untrusted = proc.mmap(0, PAGE, rw, anon)
        n = len(self.procs)
        p = PModel(proc, ring, scratch, src, heap_src, untrusted,
                   bg=proc.thread(lp=1 + n % (CPUS - 1)), aux=proc.thread(lp=CPUS - 1))

        def handler(rdi: int, rsi: int, rdx: int, rsp: int, r8: int, r9: int,
                    run: uapi.sgx_enclave_run) -> int:
            p.records.append((run.function, run.exception_vector, run.exception_error_code,
                              run.exception_addr, rdi, rsi, rdx))
            return p.script.pop(0) if p.script else 0

        p.handler = proc.callback(handler)
        self.procs.append(p)

    @precondition(lambda self: len(self.procs) > 1)
    @rule(i=st.integers(0, 7))
    def exit(self, i: int) -> None:
        p = pick(self.procs, i)
        self.procs.remove(p)
        p.proc.exit()
        linux_invariants.check_released(self.m, self.all_encls)

    @precondition(lambda self: bool(self.procs))
    @rule()
    def exit_all(self) -> None:
        """Every process exits: nothing may be left behind (the machine carries on)."""
        for p in list(self.procs):
            p.proc.exit()
        self.procs.clear()
        self.assert_empty()
        self.spawn()
        self.build(0)

    def assert_empty(self) -> None:
        m = self.m
        assert not m.processes
        assert not m.calls, m.calls
        assert not m.cpu.epcm, f"{len(m.cpu.epcm)} EPC pages left after every process exited"
        assert m.epc.nr_free_pages == m.epc.npages
        assert not m.epc.active
        linux_invariants.check_released(m, self.all_encls)
        assert not m.encls.warnings, m.encls.warnings

    # -- files ---------------------------------------------------------------------------------------
    @precondition(lambda self: bool(self.procs) and len(self.open_encls()) < MAX_ENCLAVES)
    @rule(i=st.integers(0, 7))
    def open_enclave(self, i: int) -> None:
        p = pick(self.procs, i)
        code, fd = self.sys("open", lambda: p.proc.open("/dev/sgx_enclave", os.O_RDWR), {0})
        assert fd is not None
        # A naturally aligned ELRANGE inside a PROT_NONE reservation with one ELRANGE of guard
        # on each side, so that mappings "outside ELRANGE" never land on the harness's memory.
        area = p.proc.mmap(0, 4 * size(), PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS)
        base = (area + 2 * size() - 1) & ~(size() - 1)
        encl = p.proc.fds[fd].private_data
        assert isinstance(encl, SgxEncl)
        self.all_encls.append(encl)
        p.encls.append(EnclModel(p, fd, encl, base))

    @precondition(lambda self: bool(self.procs))
    @rule(i=st.integers(0, 7), path=st.sampled_from(["/dev/sgx_provision", "/dev/sgx_vepc",
                                                      "/dev/sgx"]))
    def open_other(self, i: int, path: str) -> None:
        p = pick(self.procs, i)
        expect = {0} if path == "/dev/sgx_provision" else {E.ENOENT}
        code, fd = self.sys("open", lambda: p.proc.open(path, os.O_RDWR), expect)
        if fd is not None:
            p.prov_fds.append(fd)

    @precondition(lambda self: bool(self.open_encls()))
    @rule(i=st.integers(0, 15))
    def close_enclave(self, i: int) -> None:
        e = pick(self.open_encls(), i)
        self.sys("close", lambda: e.p.proc.close(e.fd), {0})
        e.closed = True  # its mappings keep the enclave alive; the fd number may be reused

    @precondition(lambda self: bool(self.procs))
    @rule(i=st.integers(0, 7), fd=st.sampled_from([-1, 99, 1 << 20]))
    def close_bad(self, i: int, fd: int) -> None:
        p = pick(self.procs, i)
        self.sys("close", lambda: p.proc.close(fd), {E.EBADF})

    # -- building ------------------------------------------------------------------------------------
    def create(self, e: EnclModel, variant: str, signal: bool = False) -> int:
        p = e.p
        attributes = SECS_ATTRIBUTES
        base, sz = e.base, size()
        if variant == "debug":
            attributes |= uapi.SGX_ATTR_DEBUG
        elif variant == "provision":
            attributes |= uapi.SGX_ATTR_PROVISIONKEY
        elif variant == "reserved_attr":
            attributes |= 1 << 3
        elif variant == "size_not_pow2":
            sz = 3 * PAGE
        elif variant == "base_misaligned":
            base += PAGE
        p.proc.write(p.scratch, secs_page(base, sz, attributes))
        arg: Any = uapi.sgx_enclave_create(src=p.scratch)
        if variant == "bad_src":
            arg.src = 0x1000  # below mmap_min_addr: never mapped
        elif variant == "arg_unmapped":
            arg = 0x2000
        if e.state != "open":
            expect: set[int] = {E.EINVAL}
        elif variant in ("bad_src", "arg_unmapped"):
            expect = {E.EFAULT}
        elif variant == "size_not_pow2":
            expect = {E.EINVAL}
        elif variant in ("base_misaligned", "reserved_attr"):
            expect = {E.EIO}
        elif self.m.epc.nr_free_pages >= 2:
            expect = {0}  # a VA page and the SECS
        else:
            expect = {0, E.ENOMEM, E.EINTR} if signal else {0, E.ENOMEM}
        p.proc.main.signal_pending = signal
        code = self.ioctl(p, e.fd, "CREATE", arg, expect)
        if code == 0:
            e.state = "created"
            e.std_secs = variant in ("ok", "debug", "provision")
            e.attributes = attributes
            e.provisioned = False  # CREATE sets attributes_mask afresh
        return code

    def add(self, e: EnclModel, offset: int, length: int, src: int, secinfo: int, measure: bool,
            variant: str = "ok", signal: bool = False, mid_signal: bool = False,
            busy: bool = False) -> int:
        p = e.p
        secinfo_addr = p.scratch + PAGE
        raw = secinfo.to_bytes(8, "little") + bytes(56)
        if variant == "secinfo_reserved_bytes":
            raw = raw[:8] + b"\x01" + bytes(55)
        p.proc.write(secinfo_addr, raw)
        arg: Any = uapi.sgx_enclave_add_pages(
            src=src, offset=offset, length=length, secinfo=secinfo_addr,
            flags=uapi.SGX_PAGE_MEASURE if measure else 0, count=SENTINEL)
        if variant == "secinfo_unmapped":
            arg.secinfo = 0x3000
        if variant == "arg_unmapped":
            arg = 0x4000
        perm, pt = secinfo & 7, secinfo & 0xFF00
        secinfo_bad = (
            pt not in (uapi.SGX_SECINFO_REG, uapi.SGX_SECINFO_TCS)
            or (perm & 2 and not perm & 1)
            or (pt == uapi.SGX_SECINFO_TCS and perm)
            or secinfo & uapi.SGX_SECINFO_RESERVED_MASK
            or variant == "secinfo_reserved_bytes"
        )
        range_bad = (offset % PAGE or not length or length % PAGE or offset + length >= 1 << 64
                     or offset + length > size())
        pre_loop = True
        if e.state != "created":
            expect: set[int] = {E.EINVAL}
        elif variant == "arg_unmapped":
            expect = {E.EFAULT}
        elif src % PAGE or range_bad:
            expect = {E.EINVAL}
        elif variant == "secinfo_unmapped":
            expect = {E.EFAULT}
        elif secinfo_bad:
            expect = {E.EINVAL}
        elif signal:
            expect, pre_loop = {E.EINTR}, False
        else:
            # The loop: any page may fail (no EPC, no VMA at src, an offset already in use).
            # (EBUSY here is an offset already populated: the concurrent ioctl of a `busy` run
            # is the one that gets EBUSY for the enclave being busy.)
            expect, pre_loop = set(ALLOWED["ADD_PAGES"]) - {E.ENOTTY, E.EBADF} | {0}, False
        hook_results: list[int] = []
        main = p.proc.main

        def hook(thread: Thread | None) -> None:
            if thread is not main:
                return
            if busy and not hook_results:
                code, _ = self.sys("CREATE", lambda: p.aux.ioctl(
                    e.fd, uapi.SGX_IOC_ENCLAVE_CREATE, uapi.sgx_enclave_create(p.scratch)),
                    {E.EBUSY})
                hook_results.append(code)
            if mid_signal:
                main.signal_pending = True

        main.signal_pending = signal
        self.m.on_resched = hook if busy or mid_signal else None
        try:
            code = self.ioctl(p, e.fd, "ADD_PAGES", arg, expect)
        finally:
            self.m.on_resched = None
        if isinstance(arg, int):
            return code
        if pre_loop:
            assert arg.count == SENTINEL, "a pre-loop failure copied the struct back"
            return code
        assert arg.count % PAGE == 0 and arg.count <= length
        if code == 0:
            if mid_signal and length > PAGE:
                assert arg.count == PAGE, "a signal after the first page stops the loop there"
            elif not mid_signal:
                assert arg.count == length
        elif code == E.EINTR and signal:
            assert arg.count == 0
        else:
            assert arg.count < length
        for off in range(0, arg.count, PAGE):
            contents = p.proc.read(src + off, PAGE) if src else bytes(PAGE)
            e.pages.append((offset + off, secinfo, measure, contents))
        return code

    def init(self, e: EnclModel, variant: str) -> int:
        p = e.p
        sig_addr = p.scratch + 2 * PAGE
        sig = sigstructs().get(variant, sigstructs()["ok"])
        p.proc.write(sig_addr, sig)
        arg: Any = uapi.sgx_enclave_init(sigstruct=sig_addr)
        if variant == "sig_unmapped":
            arg.sigstruct = 0x5000
        elif variant == "arg_unmapped":
            arg = 0x6000
        if e.state != "created":
            expect = {E.EINVAL}
        elif variant in ("sig_unmapped", "arg_unmapped"):
            expect = {E.EFAULT}
        elif variant == "bad_vendor":
            expect = {E.EINVAL}
        elif e.attributes & uapi.SGX_ATTR_PROVISIONKEY and not e.provisioned:
            expect = {E.EACCES}
        elif variant == "reserved":
            expect = {E.EINVAL}
        elif variant in ("bad_sig", "wrong_mrenclave") or not e.std_secs:
            expect = {E.EPERM}
        elif e.pages == expected_pages():
            expect = {0}
        else:
            expect = {E.EPERM}
        code = self.ioctl(p, e.fd, "INIT", arg, expect)
        if code == 0:
            e.state = "init"
        return code

    def map_segments(self, e: EnclModel) -> None:
        """Every segment MAP_SHARED|MAP_FIXED with its protection, as setup_test_encl does."""
        proc = e.p.proc
        for seg in image().segments:
            addr, length, prot = e.base + seg.offset, seg.size, seg.prot
            self.sys("mmap", partial(proc.mmap, addr, length, prot, MAP_SHARED | MAP_FIXED,
                                     e.fd, 0), {0})

    @precondition(lambda self: bool(self.procs) and len(self.open_encls()) < MAX_ENCLAVES)
    @rule(i=st.integers(0, 7))
    def build(self, i: int) -> None:
        """open + CREATE + ADD_PAGES per segment + INIT + mmap, as load.c does; each step may
        fail only for want of EPC."""
        self.open_enclave(i)
        e = pick(self.procs, i).encls[-1]
        if self.create(e, "ok"):
            return
        for seg in image().segments:
            src = e.p.heap_src if seg is image().heap else e.p.src + seg.offset
            if self.add(e, seg.offset, seg.size, src, seg.secinfo_flags, seg.measure):
                return
        if self.init(e, "ok") == 0:
            self.map_segments(e)

    @precondition(lambda self: bool(self.procs) and len(self.open_encls()) < MAX_ENCLAVES)
    @rule(i=st.integers(0, 7), segments=st.integers(0, 3))
    def build_partly(self, i: int, segments: int) -> None:
        """open + CREATE + ADD_PAGES of the first few segments: an enclave to add to or INIT."""
        self.open_enclave(i)
        e = pick(self.procs, i).encls[-1]
        if self.create(e, "ok"):
            return
        for seg in image().segments[:segments]:
            src = e.p.heap_src if seg is image().heap else e.p.src + seg.offset
            if self.add(e, seg.offset, seg.size, src, seg.secinfo_flags, seg.measure):
                return

    @precondition(lambda self: bool(self.open_encls()))
    @rule(i=st.integers(0, 15), variant=st.sampled_from(
        ["ok", "ok", "debug", "provision", "reserved_attr", "size_not_pow2", "base_misaligned",
         "bad_src", "arg_unmapped"]), signal=st.booleans())
    def ioctl_create(self, i: int, variant: str, signal: bool) -> None:
        self.create(pick(self.open_encls(), i), variant, signal)

    @precondition(lambda self: bool(self.open_encls()))
    @rule(i=st.integers(0, 15), seg=st.integers(0, 3), page=st.integers(-1, 8),
          npages=st.sampled_from([1, 1, 2, 3]), variant=st.sampled_from(
              ["ok", "ok", "ok", "wrong_src", "src_unaligned", "offset_unaligned", "len0",
               "len_unaligned", "beyond", "overflow", "w_without_r", "bad_type", "tcs_perms",
               "reserved_flag", "secinfo_reserved_bytes", "secinfo_unmapped", "src_unmapped",
               "src_other", "arg_unmapped"]),
          measure=st.sampled_from([None, True, False]),
          how=st.sampled_from(["plain", "plain", "signal", "mid_signal", "busy"]))
    def ioctl_add_pages(self, i: int, seg: int, page: int, npages: int, variant: str,
                        measure: bool | None, how: str) -> None:
        """A segment (page == -1) or a run of its pages, with one thing wrong (or nothing)."""
        e = self.pick_created(i)
        p = e.p
        img = image()
        s = img.segments[seg % len(img.segments)]
        offset, length = s.offset, s.size
        if page >= 0:
            offset = s.offset + (page * PAGE) % s.size
            length = min(npages * PAGE, s.offset + s.size - offset)
        src = (p.heap_src if s is img.heap else p.src + s.offset) + offset - s.offset
        flags = s.secinfo_flags
        if variant == "wrong_src":
            src = p.heap_src if s is not img.heap else p.src
        elif variant == "src_unaligned":
            src += 0x10
        elif variant == "offset_unaligned":
            offset += 0x800
        elif variant == "len0":
            length = 0
        elif variant == "len_unaligned":
            length += 0x10
        elif variant == "beyond":
            offset = size() - PAGE
            length = 2 * PAGE
        elif variant == "overflow":
            length = (1 << 64) - PAGE
        elif variant == "w_without_r":
            flags = uapi.SGX_SECINFO_REG | uapi.SGX_SECINFO_W
        elif variant == "bad_type":
            flags = uapi.SGX_SECINFO_TRIM | 3
        elif variant == "tcs_perms":
            flags = uapi.SGX_SECINFO_TCS | 1
        elif variant == "reserved_flag":
            flags |= 1 << 3
        elif variant == "src_unmapped":
            src = e.base - size()  # the PROT_NONE guard: a VMA, but GUP fails
        elif variant == "src_other":
            src = p.ring  # readable, but not the image: a measurement mismatch later
        self.add(e, offset, length, src, flags, s.measure if measure is None else measure,
                 variant, signal=how == "signal", mid_signal=how == "mid_signal",
                 busy=how == "busy")

    @precondition(lambda self: bool(self.open_encls()))
    @rule(i=st.integers(0, 15), variant=st.sampled_from(
        ["ok", "ok", "ok", "bad_sig", "bad_vendor", "reserved", "wrong_mrenclave",
         "sig_unmapped", "arg_unmapped"]))
    def ioctl_init(self, i: int, variant: str) -> None:
        e = self.pick_created(i)
        if self.init(e, variant) == 0 and variant == "ok":
            self.map_segments(e)

    @precondition(lambda self: bool(self.open_encls()))
    @rule(i=st.integers(0, 15), which=st.sampled_from(["provision", "provision", "enclave",
                                                        "bad", "arg_unmapped"]))
    def ioctl_provision(self, i: int, which: str) -> None:
        e = pick(self.open_encls(), i)
        p = e.p
        if which == "provision" and not p.prov_fds:
            self.open_other(self.procs.index(p), "/dev/sgx_provision")
        fd = {"provision": p.prov_fds[-1] if p.prov_fds else 99, "enclave": e.fd,
              "bad": 1 << 40, "arg_unmapped": 0}[which]
        arg: Any = uapi.sgx_enclave_provision(fd=fd)
        expect = {0} if which == "provision" else {E.EINVAL}
        if which == "arg_unmapped":
            arg, expect = 0x7000, {E.EFAULT}
        code = self.ioctl(p, e.fd, "PROVISION", arg, expect)
        if code == 0 and e.state == "created":
            e.provisioned = True

    @precondition(lambda self: bool(self.procs))
    @rule(i=st.integers(0, 15), request=st.sampled_from(UNKNOWN_REQUESTS),
          fd_kind=st.sampled_from(["enclave", "provision", "bad"]))
    def ioctl_unknown(self, i: int, request: int, fd_kind: str) -> None:
        p = pick(self.procs, i)
        mine = [e for e in p.encls if not e.closed]
        if fd_kind == "enclave" and mine:
            fd, expect = pick(mine, i).fd, {E.ENOTTY}
        elif fd_kind == "provision" and p.prov_fds:
            fd, expect = p.prov_fds[0], {E.ENOTTY}
        else:
            fd, expect = 1 << 16, {E.EBADF}
        self.sys("unknown ioctl", lambda: p.proc.ioctl(fd, request, 0), expect)

    @precondition(lambda self: bool(self.procs))
    @rule(i=st.integers(0, 15), name=st.sampled_from(sorted(REQUESTS)))
    def ioctl_on_provision_fd(self, i: int, name: str) -> None:
        """/dev/sgx_provision has no ioctls at all."""
        p = pick(self.procs, i)
        if not p.prov_fds:
            return
        self.ioctl(p, p.prov_fds[0], name, uapi.sgx_enclave_create(), {E.ENOTTY})

    # -- SGX2 ioctls ------------------------------------------------------------------------------
    OFFSETS = st.one_of(st.integers(0, 33).map(lambda n: n * PAGE),
                        st.sampled_from([o & ~(PAGE - 1) for o in op_offsets()]),
                        st.sampled_from([0x800, 0x4010, (1 << 64) - PAGE]))
    LENGTHS = st.one_of(st.sampled_from([1, 1, 2, 3, 4, 8]).map(lambda n: n * PAGE),
                        st.sampled_from([0, 0x800, 0x20000, (1 << 64) - PAGE]))

    def sgx2(self, e: EnclModel, name: str, arg: Any, offset: int, length: int, bad: bool,
             nonzero_out: bool, bad_type: bool = False) -> None:
        """An SGX2 ioctl: the pre-loop checks in the kernel's order, then the page loop."""
        range_bad = (offset % PAGE or not length or length % PAGE or offset + length >= 1 << 64
                     or offset + length > size())
        if e.state != "init":
            expect: set[int] | None = {E.EINVAL}
        elif range_bad or bad or nonzero_out:
            expect = {E.EINVAL}
        else:
            expect = None
        pre_loop = expect is not None
        if not pre_loop and bad_type:
            expect = {E.EINVAL}  # MODIFY_TYPES to neither TCS nor TRIM: copied back, count 0
        count_in = arg.count
        code = self.ioctl(e.p, e.fd, name, arg, expect)
        if pre_loop:
            assert arg.count == count_in, "a pre-loop failure copied the struct back"
            return
        assert arg.count % PAGE == 0 and arg.count <= length
        result = getattr(arg, "result", 0)
        if code == 0:
            assert arg.count == length and result == 0
        else:
            assert arg.count < length
            assert result == 0 or result in SGX_CODES, result
            assert result == 0 or code == E.EFAULT, "result is set only with EFAULT"
            if arg.count:
                event(f"{name}: partial progress, then {errname(code)}")
            if code != E.EAGAIN:
                # The loop stopped at the page after `count`: on its own, it fails again (a
                # count that hides progress would make this retry succeed).
                again = type(arg).from_buffer_copy(bytes(arg))
                again.offset, again.length, again.count = offset + arg.count, PAGE, 0
                if hasattr(again, "result"):
                    again.result = 0
                retry = self.ioctl(e.p, e.fd, name, again, ALLOWED[name] - {E.EAGAIN})
                assert again.count == 0, "the retried page was done after all"
                del retry
        if name != "RESTRICT_PERMISSIONS":  # EMODPR keeps the contents; EMODT/REMOVE may not
            self.forget_shadow(e, e.base + offset, e.base + offset + arg.count + PAGE)
            e.reshaped.update(range(offset, offset + arg.count + PAGE, PAGE))

    @precondition(lambda self: bool(self.open_encls()))
    @rule(i=st.integers(0, 15), offset=OFFSETS, length=LENGTHS,
          perms=st.sampled_from([0, 1, 1, 3, 5, 7, 2, 8]), nonzero=st.sampled_from(
              [None] * 8 + ["result", "count"]))
    def restrict_permissions(self, i: int, offset: int, length: int, perms: int,
                             nonzero: str | None) -> None:
        e = pick(self.open_encls(), i)
        arg = uapi.sgx_enclave_restrict_permissions(offset, length, perms)
        if nonzero:
            setattr(arg, nonzero, SENTINEL)
        bad = bool(perms & ~7) or (perms & 2 and not perms & 1)
        self.sgx2(e, "RESTRICT_PERMISSIONS", arg, offset, length, bool(bad), bool(nonzero))

    @precondition(lambda self: bool(self.open_encls()))
    @rule(i=st.integers(0, 15), offset=OFFSETS, length=LENGTHS,
          page_type=st.sampled_from([4, 4, 4, 1, 2, 0, 3, 0x104]), nonzero=st.sampled_from(
              [None] * 8 + ["result", "count"]))
    def modify_types(self, i: int, offset: int, length: int, page_type: int,
                     nonzero: str | None) -> None:
        e = pick(self.open_encls(), i)
        arg = uapi.sgx_enclave_modify_types(offset, length, page_type)
        if nonzero:
            setattr(arg, nonzero, SENTINEL)
        self.sgx2(e, "MODIFY_TYPES", arg, offset, length, bool(page_type & ~0xFF),
                  bool(nonzero), bad_type=page_type not in (1, 4))

    @precondition(lambda self: bool(self.open_encls()))
    @rule(i=st.integers(0, 15), offset=OFFSETS, length=LENGTHS, nonzero=st.booleans())
    def remove_pages(self, i: int, offset: int, length: int, nonzero: bool) -> None:
        e = pick(self.open_encls(), i)
        arg = uapi.sgx_enclave_remove_pages(offset, length)
        if nonzero:
            arg.count = SENTINEL
        self.sgx2(e, "REMOVE_PAGES", arg, offset, length, False, nonzero)

    # -- mmap, munmap, mprotect --------------------------------------------------------------------
    @precondition(lambda self: bool(self.live_encls()))
    @rule(i=st.integers(0, 15), page=st.integers(-4, 36), npages=st.sampled_from([1, 1, 2, 4, 32]),
          prot=st.integers(0, 7), how=st.sampled_from(
              ["shared_fixed", "shared_fixed", "shared_fixed", "private_fixed", "shared_hint",
               "unaligned", "noreplace", "bad_offset", "bad_fd", "provision_fd", "anonymous"]))
    def mmap(self, i: int, page: int, npages: int, prot: int, how: str) -> None:
        e = pick(self.live_encls(), i)
        p = e.p
        addr = e.base + page * PAGE
        length = min(npages, 2 * size() // PAGE - page) * PAGE  # within the guard areas
        flags = MAP_SHARED | MAP_FIXED
        fd, offset = e.fd, 0
        expect: set[int] | None = None
        if e.closed and how not in ("anonymous",):
            how = "bad_fd"  # the fd number may belong to something else now
        if how == "private_fixed":
            flags, expect = MAP_PRIVATE | MAP_FIXED, {E.EINVAL}
        elif how == "shared_hint":
            flags = MAP_SHARED
        elif how == "unaligned":
            addr, expect = addr + 0x10, {E.EINVAL}
        elif how == "noreplace":
            flags = MAP_SHARED | MAP_FIXED_NOREPLACE
        elif how == "bad_offset":
            offset, expect = 0x10, {E.EINVAL}
        elif how == "bad_fd":
            fd, expect = 1 << 16, {E.EBADF}
        elif how == "provision_fd":
            if not p.prov_fds:
                return
            fd, expect = p.prov_fds[0], {E.ENODEV}
        elif how == "anonymous":
            fd, flags, expect = -1, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, {0}
        if how == "shared_fixed":
            # sgx_encl_may_map: ELRANGE only once initialized; never beyond a page's maximum.
            inside = e.base <= addr and addr + length <= e.base + size()
            limits = [e.vm_max(addr - e.base + off) for off in range(0, length, PAGE)]
            beyond_max = any(m is not None and prot & ~m for m in limits)
            if (e.state == "init" and not inside) or beyond_max:
                expect = {E.EACCES}
            elif None not in limits:
                expect = {0}
        code, got = self.sys("mmap", lambda: p.proc.mmap(addr, length, prot, flags, fd, offset),
                             expect)
        if code == 0 and flags & (MAP_FIXED | MAP_FIXED_NOREPLACE):
            assert got == addr

    @precondition(lambda self: bool(self.live_encls()))
    @rule(i=st.integers(0, 15), page=st.integers(-4, 36), npages=st.sampled_from([1, 2, 8, 32]),
          how=st.sampled_from(["ok", "ok", "unaligned", "len0"]))
    def munmap(self, i: int, page: int, npages: int, how: str) -> None:
        e = pick(self.live_encls(), i)
        addr, expect = e.base + page * PAGE, {0}
        length = min(npages, 2 * size() // PAGE - page) * PAGE  # within the guard areas
        if how == "unaligned":
            addr, expect = addr + 8, {E.EINVAL}
        elif how == "len0":
            length, expect = 0, {E.EINVAL}
        self.sys("munmap", lambda: e.p.proc.munmap(addr, length), expect)

    @precondition(lambda self: bool(self.live_encls()))
    @rule(i=st.integers(0, 15), page=st.integers(-2, 34), npages=st.sampled_from([1, 1, 2, 8]),
          prot=st.integers(0, 8), unaligned=st.booleans())
    def mprotect(self, i: int, page: int, npages: int, prot: int, unaligned: bool) -> None:
        e = pick(self.live_encls(), i)
        addr = e.base + page * PAGE + (0x10 if unaligned else 0)
        expect = {E.EINVAL} if unaligned or prot & ~7 else None
        self.sys("mprotect", lambda: e.p.proc.mprotect(addr, npages * PAGE, prot), expect)

    # -- host accesses to enclave memory -------------------------------------------------------
    @precondition(lambda self: bool(self.live_encls()))
    @rule(i=st.integers(0, 15), offset=st.sampled_from(op_offsets()), write=st.booleans())
    def host_access(self, i: int, offset: int, write: bool) -> None:
        """Outside enclave mode EPC reads as all ones and writes are dropped (abort page)."""
        e = pick(self.live_encls(), i)
        addr = e.base + offset
        vma = e.p.proc.mm.vma_lookup(addr)
        enclave_mapping = vma is not None and vma.private is not None
        try:
            if write:
                e.p.proc.write(addr, b"\x00" * 8)
            else:
                data = e.p.proc.read(addr, 8)
                if enclave_mapping:
                    assert data == b"\xff" * 8, f"a host read of {addr:#x} saw {data.hex()}"
        except (SIGSEGV, SIGBUS) as sig:
            event(f"host access -> {type(sig).__name__}")
            assert sig.addr == addr
            return
        event("host access -> abort page")

    # -- enclave entries -------------------------------------------------------------------------
    def make_op(self, e: EnclModel, kind: str, target: int, value: int, flags: int) -> Op:
        p = e.p
        # Outside ELRANGE: a slot of the process's untrusted page, one per enclave (the shadow
        # is kept per enclave).
        addr = p.untrusted + 8 * (1 + p.encls.index(e) % 511) if target < 0 else e.base + target
        if kind == "put":
            return Op(P.ENCL_OP_PUT_TO_ADDRESS, addr, value)
        if kind == "get":
            return Op(P.ENCL_OP_GET_FROM_ADDRESS, addr)
        if kind == "put_buf":
            return Op(P.ENCL_OP_PUT_TO_BUFFER, e.base + image().data_offset, value)
        if kind == "get_buf":
            return Op(P.ENCL_OP_GET_FROM_BUFFER, e.base + image().data_offset)
        if kind == "eaccept":
            return Op(P.ENCL_OP_EACCEPT, addr, flags=flags)
        if kind == "emodpe":
            return Op(P.ENCL_OP_EMODPE, addr, flags=flags & 7)
        if kind == "init_tcs":
            off = pick(dyn_tcs_offsets(), target)
            return Op(P.ENCL_OP_INIT_TCS_PAGE, e.base + off, value=off + PAGE,
                      flags=image().symbol("encl_dyn_entry"))
        if kind == "unknown":
            return Op(P.ENCL_OP_MAX + 3)
        return Op(P.ENCL_OP_NOP)

    def tcs_for(self, e: EnclModel, which: int) -> TcsModel:
        if which < 2:
            return e.run_for(which * PAGE)
        return e.run_for(pick(dyn_tcs_offsets(), which))

    def prepare(self, e: EnclModel, tcs: TcsModel, op: Op, handler: str, reserved: bool,
                ) -> tuple[int, list[int]]:
        """Write the op, reset the run struct as the selftests do; (op address, script)."""
        p = e.p
        slot = p.slot()
        p.proc.write(slot, bytes(op.struct()))
        run = tcs.run
        run.function = 0
        run.exception_vector = run.exception_error_code = 0
        run.exception_addr = 0
        run.user_data = 0x1234
        ctypes.memset(ctypes.addressof(run) + 40, 0, 216)
        if reserved:
            run.reserved[100] = 1
        script = {"none": [], "zero": [0], "negative": [-7], "bad_leaf": [1],
                  "resume": [ERESUME, 0]}[handler]
        run.user_handler = p.handler if script else 0
        return slot, script

    def check_call(self, e: EnclModel, tcs: TcsModel, leaf: int, op: Op, slot: int, ret: int,
                   records: list[tuple[int, ...]], script: list[int], reserved: bool,
                   background: bool) -> None:
        """What the vDSO returned and left in the run struct; the enclave's stores and loads."""
        run = tcs.run
        assert run.user_data == 0x1234, "the vDSO touched user_data"
        if reserved or leaf not in (EENTER, ERESUME):
            assert ret == -E.EINVAL and not records and run.function == 0
            event("vdso -> EINVAL")
            return
        if script:
            final = script[len(records) - 1] if len(records) <= len(script) else 0
            assert len(records) == len(script), (records, script)
            assert ret == (-E.EINVAL if final == 1 else final), (ret, script)
            exits = [r[:4] for r in records]
            for r in records:
                if r[0] != EEXIT:  # after a reported exception: trapnr, error code, address
                    assert (r[4], r[5] & 0xFFFF, r[6]) == (r[1], r[2], r[3]), r
        else:
            assert ret == 0, ret
            exits = [(run.function, run.exception_vector, run.exception_error_code,
                      run.exception_addr)]
        entries = [leaf] + [s for s in script if s > 0][: len(exits) - 1]
        for entry, (function, vector, code, addr) in zip(entries, exits, strict=False):
            if function == EEXIT:
                if not script:
                    assert (vector, code, addr) == (0, 0, 0), "EEXIT with exception fields"
                event("vdso -> EEXIT")
                continue
            event(f"vdso -> vector {vector} function {function}")
            assert vector in (13, 14), f"vector {vector}"
            assert function in (ERESUME, entry), (function, entry)
            if vector == 14:
                assert code & 0x4, f"#PF error code {code:#x} without U"
            else:
                assert addr == 0
        # The enclave's memory: a store completed by this very EENTER is remembered; a load it
        # completed must see the last remembered store. Completions through ERESUME (of an op
        # stuck earlier, maybe another thread's) make everything uncertain.
        first_exit = exits[0][0] == EEXIT
        if background or leaf == ERESUME or any(
                ent == ERESUME and ex[0] == EEXIT for ent, ex in zip(entries, exits, strict=False)):
            if any(ex[0] == EEXIT for ex in exits):
                self.forget_shadow(e)
            return
        if not first_exit:
            return
        shadow_key = op.addr
        if op.kind in (P.ENCL_OP_PUT_TO_ADDRESS, P.ENCL_OP_PUT_TO_BUFFER):
            if shadow_key not in self.inflight():
                e.shadow[shadow_key] = op.value
        elif op.kind in (P.ENCL_OP_GET_FROM_ADDRESS, P.ENCL_OP_GET_FROM_BUFFER):
            got = P.encl_op_get_from_addr.from_buffer_copy(e.p.proc.read(slot, 24)).value
            if shadow_key in e.shadow and shadow_key not in self.inflight():
                assert got == e.shadow[shadow_key], (
                    f"the enclave read {got:#x} at {shadow_key:#x}, stored "
                    f"{e.shadow[shadow_key]:#x}")
                event("enclave read back its store")
        elif op.kind == P.ENCL_OP_EACCEPT:
            got = P.encl_op_eaccept.from_buffer_copy(e.p.proc.read(slot, 32)).ret
            assert got == 0 or got in SGX_CODES, f"EACCEPT returned {got:#x}"
            event(f"EACCEPT -> {got}")
        elif op.kind == P.ENCL_OP_INIT_TCS_PAGE:
            self.forget_shadow(e, op.addr, op.addr + PAGE)

    @precondition(lambda self: bool(self.live_encls()))
    @rule(i=st.integers(0, 15), which=st.sampled_from([0, 0, 0, 1, 1, 2, 3]),
          leaf=st.sampled_from([EENTER] * 8 + [ERESUME] * 2 + [1, 4]),
          kind=st.sampled_from(["put", "put", "get", "get", "put_buf", "get_buf", "eaccept",
                                "eaccept", "emodpe", "init_tcs", "nop", "unknown"]),
          where=st.sampled_from([-1] + op_offsets()), value=st.integers(0, (1 << 64) - 1),
          flags=st.sampled_from([0x20B, 0x20B, 0x410, 0x110, 0x221, 0x223, 0x220, 0x225,
                                 0x203, 0x20F, 0x8, 0x0, 0x1, 0x3, 0x7, 0x4]),
          handler=st.sampled_from(["none"] * 6 + ["zero", "negative", "bad_leaf", "resume"]),
          reserved=st.sampled_from([False] * 15 + [True]))
    def enter(self, i: int, which: int, leaf: int, kind: str, where: int, value: int,
              flags: int, handler: str, reserved: bool) -> None:
        e = pick(self.live_encls(), i)
        self.do_enter(e, which, leaf, kind, where, value, flags, handler, reserved)

    def do_enter(self, e: EnclModel, which: int, leaf: int, kind: str, target: int,
                 value: int = 0, flags: int = 0, handler: str = "none", reserved: bool = False,
                 ) -> None:
        """__vdso_sgx_enter_enclave on the main thread, and its outcome checked."""
        p = e.p
        tcs = self.tcs_for(e, which)
        op = self.make_op(e, kind, target, value, flags)
        slot, script = self.prepare(e, tcs, op, handler, reserved)
        p.records.clear()
        p.script = list(script)
        ret = p.proc.vdso_sgx_enter_enclave(slot, 0, 0, leaf, 0, 0, tcs.run)
        self.check_call(e, tcs, leaf, op, slot, ret, list(p.records), script, reserved, False)
        self.reap_background()

    # -- a second thread, inside an enclave between slices -----------------------------------------
    def inflight(self) -> set[int]:
        """Addresses a background call may store to at any moment."""
        return {p.bg_call.op.addr for p in self.procs
                if p.bg_call is not None and p.bg_call.op.store_addr is not None}

    @precondition(lambda self: any(p.bg_call is None and p.encls for p in self.procs))
    @rule(i=st.integers(0, 15), which=st.sampled_from([0, 1, 1, 2]),
          kind=st.sampled_from(["put", "get", "nop", "eaccept", "emodpe"]),
          where=st.sampled_from([-1] + op_offsets()), value=st.integers(0, 1 << 63),
          flags=st.sampled_from([0x20B, 0x410, 0x221, 0x3, 0x7]),
          budget=st.sampled_from([1, 3, 10, 30, 100]))
    def start_background(self, i: int, which: int, kind: str, where: int, value: int,
                         flags: int, budget: int) -> None:
        """A second thread enters; the machine runs it in slices of a few instructions, so it
        may sit inside the enclave while the main thread makes system calls (IPIs, zaps)."""
        ps = [p for p in self.procs if p.bg_call is None and p.encls]
        p = pick(ps, i)
        e = pick(p.encls, i)
        shared = self.tcs_for(e, which)
        tcs = TcsModel(uapi.sgx_enclave_run(tcs=shared.run.tcs))  # each thread its own run
        op = self.make_op(e, kind, where, value, flags)
        slot, _ = self.prepare(e, tcs, op, "none", False)
        if op.store_addr is not None:
            e.shadow.pop(op.store_addr, None)
        call = p.bg.start_enclave_call(slot, 0, 0, EENTER, 0, 0, tcs.run)
        p.bg_call = BgCall(call, e, tcs, EENTER, op, slot)
        self.run_slices(1, budget)  # a few instructions: it may stay inside

    @precondition(lambda self: bool(self.m.calls))
    @rule(n=st.integers(1, 3), budget=st.sampled_from([1, 5, 20, 60, 200]))
    def run_slices(self, n: int, budget: int) -> None:
        for _ in range(n):
            self.m.run_slice(budget)
        for call in self.m.calls:
            if call.inside:
                event("a thread sits inside an enclave between slices")
        self.reap_background()

    @precondition(lambda self: bool(self.m.calls))
    @rule()
    def finish_background(self) -> None:
        for p in self.procs:
            if p.bg_call is not None:
                self.m.wait(p.bg_call.call)
        self.reap_background()

    def reap_background(self) -> None:
        for p in self.procs:
            bg = p.bg_call
            if bg is None or not bg.call.done:
                continue
            p.bg_call = None
            assert bg.call.error is None, bg.call.error
            assert bg.call.result is not None
            self.check_call(bg.e, bg.tcs, bg.leaf, bg.op, bg.slot, bg.call.result, [], [],
                            False, True)
            self.forget_shadow(bg.e)

    # -- the selftest flows, as macros (each call checked like any other) ------------------------
    @precondition(lambda self: any(e.state == "init" for e in self.live_encls()))
    @rule(i=st.integers(0, 15), page=st.integers(0, 14), accept=st.booleans(),
          value=st.integers(0, 1 << 63))
    def augment(self, i: int, page: int, accept: bool, value: int) -> None:
        """augment / augment_via_eaccept: map an unbacked page RWX, EACCEPT it, store, load."""
        e = pick([e for e in self.live_encls() if e.state == "init"], i)
        offset = min(image().src_size + page * PAGE, size() - PAGE)
        if not e.closed:
            self.sys("mmap", lambda: e.p.proc.mmap(e.base + offset, PAGE, PROT_READ | PROT_WRITE | PROT_EXEC,
                                                   MAP_SHARED | MAP_FIXED, e.fd, 0))
        if accept:
            self.do_enter(e, 1, EENTER, "eaccept", offset, flags=0x20B)
        self.do_enter(e, 0, EENTER, "put", offset, value)
        self.do_enter(e, 0, EENTER, "get", offset)

    @precondition(lambda self: any(e.state == "init" and not e.closed for e in self.live_encls()))
    @rule(i=st.integers(0, 15), offset=st.sampled_from(op_offsets()), accept=st.booleans())
    def trim_and_remove(self, i: int, offset: int, accept: bool) -> None:
        """remove_added_page / remove_untouched_page: TRIM, EACCEPT, REMOVE_PAGES."""
        e = pick([e for e in self.live_encls() if e.state == "init" and not e.closed], i)
        offset &= ~(PAGE - 1)
        trim = uapi.sgx_enclave_modify_types(offset, PAGE, uapi.SGX_PAGE_TYPE_TRIM)
        self.sgx2(e, "MODIFY_TYPES", trim, offset, PAGE, False, False)
        if accept:
            self.do_enter(e, 0, EENTER, "eaccept", offset, flags=0x410)
        remove = uapi.sgx_enclave_remove_pages(offset, PAGE)
        self.sgx2(e, "REMOVE_PAGES", remove, offset, PAGE, False, False)

    @precondition(lambda self: any(e.state == "init" and not e.closed for e in self.live_encls()))
    @rule(i=st.integers(0, 15), which=st.integers(0, 1))
    def tcs_create(self, i: int, which: int) -> None:
        """tcs_create: EAUG a stack, a TCS and an SSA page, INIT_TCS_PAGE, MODIFY_TYPES to TCS,
        EACCEPT {TCS|MODIFIED}, then enter through the new TCS."""
        e = pick([e for e in self.live_encls() if e.state == "init" and not e.closed], i)
        tcs_off = dyn_tcs_offsets()[which]
        self.sys("mmap", lambda: e.p.proc.mmap(e.base + tcs_off - PAGE, 3 * PAGE,
                                               PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED,
                                               e.fd, 0))
        for off in (tcs_off - PAGE, tcs_off + PAGE, tcs_off):
            self.do_enter(e, 0, EENTER, "eaccept", off, flags=0x20B)
        self.do_enter(e, 0, EENTER, "init_tcs", which)
        arg = uapi.sgx_enclave_modify_types(tcs_off, PAGE, uapi.SGX_PAGE_TYPE_TCS)
        self.sgx2(e, "MODIFY_TYPES", arg, tcs_off, PAGE, False, False)
        self.do_enter(e, 0, EENTER, "eaccept", tcs_off, flags=0x110)
        self.do_enter(e, 2 + which, EENTER, "put_buf", 0, 0x1122)
        self.do_enter(e, 2 + which, EENTER, "get_buf", 0)

    # -- invariants --------------------------------------------------------------------------------
    @invariant()
    def processor_is_consistent(self) -> None:
        hw_invariants.check(self.m.cpu)

    @invariant()
    def driver_is_consistent(self) -> None:
        linux_invariants.check(self.m)
        assert not self.m.encls.warnings, self.m.encls.warnings

    def teardown(self) -> None:
        stats = self.m.stats
        event(f"pages reclaimed: {'some' if stats.pages_reclaimed else 'none'}")
        event(f"IPIs that forced an AEX: {'some' if stats.ipi_aexes else 'none'}")
        event(f"TLB shootdowns of a thread inside: {'some' if stats.tlb_shootdowns else 'none'}")
        try:
            for p in list(self.procs):
                p.proc.exit()
            self.procs.clear()
            self.assert_empty()
        finally:
            self.m.cpu.close()


AbiMachine.TestCase.settings = settings(
    max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestLinuxAbi = AbiMachine.TestCase
