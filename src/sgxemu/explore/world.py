"""The leaf-level world the explorer searches: the real processor model, a page table, a
malicious kernel's records, scripted enclave threads and the property monitors.

Everything runs on `sgxemu.hw.Processor` (the model the rest of sgxemu uses): ENCLS with chosen
operands through `Processor.encls`, EENTER/ERESUME/AEX through `Processor.enclu` and
`hw.enclu.aex`, enclave code through `ScriptedEngine` (every access through `hw.access`).

A state is an immutable tuple of parts (EPC pages with their EPCM entries and contents, hidden
SECS state, paging counter, logical processors with their TLBs, register files, page table,
kernel records and sealed blobs, scripted threads, page incarnations, monitors, host status).
`capture()` builds it after a move, reusing the parent's part objects where nothing changed, and
`restore()` writes back only the parts (and pages) whose objects differ from the live ones: a
search step costs about as much as the move itself. Threads are rebuilt by the scripted engine's
own replay (their generators cannot be copied).

A page *incarnation* is a fresh id given to every page EADDed or EAUGed; EWB carries it into
the blob and ELDU back onto the new EPC page. It is bookkeeping for the monitors only (which
page served an access, and whether the enclave EADDed or EACCEPTed that page).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from operator import attrgetter
from typing import TYPE_CHECKING, Any, NamedTuple

from ..arch.constants import (
    PAGE_SHIFT,
    PAGE_SIZE,
    Attribute,
    EnclsLeaf,
    EncluLeaf,
    PageType,
    SgxError,
)
from ..exec.engine import ExitKind
from ..exec.scripted import ScriptedContext, ScriptedEngine, ScriptedProgram, _Thread
from ..hw.epcm import EpcmEntry
from ..hw.faults import SgxFault, SgxUsageError
from ..hw.memory import PTE_ADDR_MASK, PTE_P, PTE_U, PTE_W, PTE_XD
from ..hw.processor import Processor
from ..hw.regs import Reg, Registers
from ..leafkit import LeafKit, PagedOut
from ..sign import EnclaveMeasurer, generate_key, mrsigner_of_key, sign_sigstruct
from .layout import BASE, SIZE, STACK, TCS1, TCS2, PageSpec, base_pages, page_name
from .properties import VIOLATED, Event, monitors
from .runtimes import BUG, OP_NAMES, Runtime, make_program

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

Move = tuple[Any, ...]


class State:
    """An explored state: its parts (compared), their hashes (combined into the state's hash,
    each computed once per new part) and an index of its EPC pages."""

    __slots__ = ("parts", "phash", "pages", "_hash")

    def __init__(self, parts: tuple[Any, ...], phash: tuple[int, ...], pages: dict[int, tuple[Any, ...]]) -> None:
        self.parts = parts
        self.phash = phash
        self.pages = pages
        self._hash = hash(phash)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return isinstance(other, State) and (self.parts is other.parts or self.parts == other.parts)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_state_from_parts, (self.parts,))


def _state_from_parts(parts: tuple[Any, ...]) -> State:
    return State(parts, tuple(map(hash, parts)), {t[0]: t for t in parts[0]})


# Parts each kind of move can change (the others are shared with the parent state):
# 0 pages, 1 SECS, 2 paging counter, 3 LPs, 4 registers, 5 PTEs, 6 kernel records,
# 7 threads, 8 incarnations, 9 monitors, 10 host status.
_THREAD_PARTS = (0, 1, 3, 4, 7, 8, 9, 10)
_KERNEL_PARTS = (0, 1, 2, 5, 6, 8, 9)
_CHANGES: dict[str, tuple[int, ...]] = {
    "pte": (5,), "call": _THREAD_PARTS, "step": _THREAD_PARTS, "resume": _THREAD_PARTS,
    "aex": _THREAD_PARTS,
}
_ALL_PARTS = tuple(range(11))

# Adversary capabilities (see adversaries.py for the named combinations).
KERNEL = "kernel"  # malicious kernel: ENCLS with chosen operands, page tables, AEX, host control
THREAD = "thread"  # compromised enclave thread: an arbitrary-write primitive on TCS2

AEP = 0x40_1000
HOST_RIP = 0x40_0000
URSP = 0x30_0FF0
UNTRUSTED_FRAME = 0x7000_0000_0000  # the frame untrusted PTEs name (never EPC)
IDLE, INSIDE, SUSPENDED = 0, 1, 2
_TCS = (TCS1, TCS2)
_NO_EVENT_PAGES = frozenset({STACK})  # SECINFO scratch: no read/write events
_EPCM_FIELDS = attrgetter("pt", "perms", "state", "linaddr", "epoch")
_PT_REG = PageType.PT_REG
_U64 = struct.Struct("<Q")
_VIOLATED = VIOLATED
_SLOT_OCCUPIED = int(SgxError.SGX_VA_SLOT_OCCUPIED)

_KEY: list[RSAPrivateKey] = []


def signing_key() -> RSAPrivateKey:
    """One RSA-3072 key per process (generating it takes about a second). Its MRSIGNER ends up
    in the SECS page, so worlds compared across processes must share it (`signing_key_pem`)."""
    if not _KEY:
        _KEY.append(generate_key())
    return _KEY[0]


def signing_key_pem() -> bytes:
    from cryptography.hazmat.primitives import serialization

    return signing_key().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def use_signing_key(pem: bytes) -> None:
    """Adopt the key another process made (a distributed search's workers)."""
    from ..sign import load_key

    _KEY[:] = [load_key(pem)]


def rights_pte(frame: int, prot: int) -> int:
    """The PTE a kernel installs for an EPC frame with PROT_* rights (0: not present)."""
    if not prot:
        return 0
    return frame | PTE_P | PTE_U | (PTE_W if prot & 2 else 0) | (0 if prot & 4 else PTE_XD)


def pte_rights(pte: int) -> int:
    if not pte & PTE_P:
        return 0
    return 1 | (2 if pte & PTE_W else 0) | (0 if pte & PTE_XD else 4)


class WorldMemory:
    """The process address space: ELRANGE PTEs the kernel controls; other addresses are
    untrusted memory, which no explored program touches (a write there is a usage error)."""

    __slots__ = ("ptes", "lo", "hi")

    def __init__(self, lo: int, hi: int) -> None:
        self.ptes: dict[int, int] = {}
        self.lo = lo
        self.hi = hi

    def translate(self, lin: int) -> int:
        pte = self.ptes.get(lin >> PAGE_SHIFT)
        if pte is not None:
            return pte
        if self.lo <= lin < self.hi:
            return 0
        return UNTRUSTED_FRAME | PTE_P | PTE_W | PTE_U | PTE_XD

    def read(self, lin: int, size: int) -> bytes:
        return bytes(size)

    def write(self, lin: int, data: bytes) -> None:
        raise SgxUsageError(f"explorer world: untrusted write at {lin:#x} is not modelled")


class Blob(NamedTuple):
    """What an EWB left in main memory, as the kernel keeps it (a value: compared by contents)."""

    off: int
    slot: int
    paged: PagedOut
    inc: int
    accepted: bool
    plain: bytes  # the contents that went out (for the paging monitor)


class LeafWorld:
    """One runtime, one adversary, a set of properties, on a fresh processor."""

    def __init__(
        self,
        rt: Runtime,
        adversary: Sequence[str],
        properties: Sequence[str] | None = None,
        *,
        epc_pages: int = 64,
    ) -> None:
        self.runtime = rt
        self.caps = frozenset(adversary)
        self.props = tuple(properties if properties is not None else rt.properties)
        self.cpu = Processor(epc_size=epc_pages * PAGE_SIZE, cpus=2, seed=0)
        self.epc = self.cpu.epc
        install_tlb_logs(self.cpu)
        self.kit = LeafKit(self.cpu)
        self.mem = WorldMemory(BASE, BASE + SIZE)
        self.trace: list[Any] = []
        self.program: ScriptedProgram = make_program(rt, self.trace.append)
        self.engines = [
            ScriptedEngine(self.cpu, self.cpu.lp(i), self.mem, self.program, regs=Registers(), trace=self.trace)
            for i in range(2)
        ]
        self._build()
        self.monitors = monitors(self.props, self.initial_word)
        self.host = [IDLE, IDLE]
        self.kpages: dict[int, int] = dict(self._root_kpages)
        self.blobs: tuple[Blob, ...] = ()
        self._live: State | None = None
        self._dirty: set[int] | None = None
        self.paranoid = False  # check every capture against a full one (tests)
        self.event_tap: list[Event] | None = None  # when a list, receives every move's events
        self._live_threads: dict[tuple[Any, ...], _Thread] = {}
        self.mon_states: tuple[object, ...] = tuple(m[2] for m in self.monitors)
        self.prelude_outcomes: list[str] = []
        self._live = self.capture(None)
        for move in rt.prelude:
            if move[0] == "run":
                outcome = "ok"
                who = int(move[1])  # type: ignore[call-overload]
                while self.host[who] == INSIDE:
                    outcome = self.step(("step", who))[1]
                self.prelude_outcomes.append(outcome)
            else:
                self.prelude_outcomes.append(self.step(move)[1])
        self.root = self.capture(None)

    def reset(self) -> State:
        self.restore(self.root)
        return self.root

    # -- building the enclave (real ECREATE/EADD/EEXTEND/EINIT) --------------------------------------
    def _build(self) -> None:
        kit, cpu = self.kit, self.cpu
        pages: list[PageSpec] = base_pages() + list(self.runtime.pages)
        encl = kit.ecreate(BASE, SIZE, ssaframesize=1)
        self.secs_pa = encl.secs_pa
        self.secs_index = cpu.epc.index(encl.secs_pa)
        meas = EnclaveMeasurer(SIZE)
        self._initial: dict[int, bytes] = {}
        kpages: dict[int, int] = {}
        self.inc: dict[int, tuple[int, bool]] = {}
        self.next_inc = 1
        for spec in pages:
            data = spec.data.ljust(PAGE_SIZE, b"\0")
            pa = kit.eadd(encl, BASE + spec.offset, data, spec.flags)
            meas.add_page(spec.offset, data, spec.flags)
            index = cpu.epc.index(pa)
            kpages[spec.offset] = index
            self.mem.ptes[(BASE + spec.offset) >> PAGE_SHIFT] = rights_pte(pa, spec.prot)
            self._initial[spec.offset] = data
            self.inc[index] = (self.next_inc, True)
            self.next_inc += 1
        key = signing_key()
        sig = sign_sigstruct(
            key, enclavehash=meas.mrenclave(), attributes=int(Attribute.MODE64BIT), xfrm=3,
            attributemask=0, xfrmmask=0, miscselect=0, miscmask=0, isvprodid=0, isvsvn=0,
        )
        kit.set_lepubkeyhash(mrsigner_of_key(key))
        if kit.einit(encl, sig) != 0:
            raise RuntimeError("explorer world: EINIT failed")
        self.va_pa = kit.epa()
        self.va_index = cpu.epc.index(self.va_pa)
        secs = cpu.secs_of(self.secs_index)
        assert secs is not None
        self.secs = secs
        self._root_kpages = kpages

    def initial_word(self, off: int) -> int:
        """The EADDed contents of the 8 bytes at enclave offset `off` (0 for EAUGed pages)."""
        data = self._initial.get(off & ~(PAGE_SIZE - 1))
        if data is None:
            return 0
        o = off & (PAGE_SIZE - 1)
        value: int = _U64.unpack_from(data, o)[0]
        return value

    # -- moves ----------------------------------------------------------------------------------------
    def moves(self) -> list[Move]:
        """The moves enabled in the live state, in a fixed order."""
        rt = self.runtime
        out: list[Move] = []
        kernel = KERNEL in self.caps
        host = self.host
        for who in (0, 1):
            status = host[who]
            if who == 1 and THREAD not in self.caps:
                continue
            if status == IDLE:
                if who == 0:
                    out.extend(("call", 0, op, arg) for op, arg in rt.calls)
                else:
                    out.extend(("call", 1, BUG, t) for t in rt.bug_targets)
            elif status == INSIDE:
                out.append(("step", who))
                if kernel:
                    out.append(("aex", who))
            else:
                out.append(("resume", who))
        if not kernel:
            return out
        allowed = rt.kernel_moves
        if allowed is not None:
            out.extend(m for m in self._kernel_moves() if m[0] in allowed)
            return out
        out.extend(self._kernel_moves())
        return out

    def _kernel_moves(self) -> list[Move]:
        rt = self.runtime
        out: list[Move] = []
        kp = self.kpages
        for off in rt.kernel_pages:
            if off not in kp:
                continue
            out.extend(("emodpr", off, perms) for perms in rt.emodpr_perms)
            out.extend(("emodt", off, t) for t in rt.emodt_types)
            out.append(("eblock", off))
            out.append(("ewb", off))
            out.append(("eremove", off))
        out.append(("etrack",))
        for off in rt.aug_pages:
            if off not in kp:
                out.append(("eaug", off))
        for i, blob in enumerate(self.blobs):
            if blob.off not in kp:
                out.append(("eldu", i))
        ptes = self.mem.ptes
        for off in rt.kernel_pages:
            index = kp.get(off)
            if index is None:
                continue
            current = pte_rights(ptes.get((BASE + off) >> PAGE_SHIFT, 0))
            frame = ptes.get((BASE + off) >> PAGE_SHIFT, 0) & PTE_ADDR_MASK
            if frame != self.cpu.epc.address(index):
                current = -1  # the PTE names another frame: any rights re-point it
            out.extend(("pte", off, r) for r in rt.pte_rights if r != current)
        return out

    def apply(self, move: Move) -> str:
        """Perform one move on the live state; returns what happened (for traces)."""
        try:
            return self._apply(move)
        except SgxUsageError:
            raise
        except SgxFault as fault:
            return f"{type(fault).__name__}{_fault_text(fault)}"

    def _apply(self, move: Move) -> str:
        kind = move[0]
        cpu = self.cpu
        if kind == "step":
            who = move[1]
            eng = self.engines[who]
            ex = eng.run(1)
            if ex.kind is ExitKind.EEXIT:
                self.host[who] = IDLE
                return "EEXIT"
            if ex.kind is ExitKind.AEX:
                self.host[who] = SUSPENDED
                return "AEX " + (_fault_text(ex.event) if ex.event is not None else "(interrupt)")
            return "ok"
        if kind == "call":
            who, op, arg = move[1], move[2], move[3]
            regs = self.engines[who].regs
            regs[Reg.RDI] = op
            regs[Reg.RSI] = BASE + arg if arg else 0
            regs[Reg.RSP] = URSP
            regs[Reg.RBP] = 0
            regs[Reg.RAX] = EncluLeaf.EENTER
            regs[Reg.RBX] = BASE + _TCS[who]
            regs[Reg.RCX] = AEP
            regs[Reg.RIP] = HOST_RIP
            cpu.enclu(cpu.lp(who), regs, self.mem)
            self.host[who] = INSIDE
            return "EENTER ok"
        if kind == "resume":
            who = move[1]
            regs = self.engines[who].regs
            regs[Reg.RAX] = EncluLeaf.ERESUME
            regs[Reg.RBX] = BASE + _TCS[who]
            regs[Reg.RCX] = AEP
            regs[Reg.RIP] = AEP
            cpu.enclu(cpu.lp(who), regs, self.mem)
            self.host[who] = INSIDE
            return "ERESUME ok"
        if kind == "aex":
            who = move[1]
            self.engines[who].interrupt()
            self.host[who] = SUSPENDED
            return "AEX (interrupt)"
        return self._kernel(move)

    def _kernel(self, move: Move) -> str:
        kind = move[0]
        kit, cpu, kp = self.kit, self.cpu, self.kpages
        # The only EPC pages an ENCLS leaf of this kind can change: its target (or the page it
        # allocates), the VA page (EWB/ELDU) and the SECS. Checked against a full comparison
        # when `paranoid` is set.
        dirty = self._dirty = {self.va_index, self.secs_index}
        if kind in ("emodpr", "emodt", "eblock", "eremove", "ewb") and move[1] in kp:
            dirty.add(kp[move[1]])
        elif kind in ("eaug", "eldu"):
            dirty.add(self._free_index())
        if kind == "etrack":
            return _rax(kit.encls(EnclsLeaf.ETRACK, 0, self.secs_pa))
        if kind == "pte":
            off, prot = move[1], move[2]
            self.mem.ptes[(BASE + off) >> PAGE_SHIFT] = rights_pte(cpu.epc.address(kp[off]), prot)
            return "ok"
        if kind == "eaug":
            off = move[1]
            index = self._free_index()
            pa = cpu.epc.address(index)
            rax = kit.encls(EnclsLeaf.EAUG, kit.pageinfo(BASE + off, 0, 0, self.secs_pa), pa)
            if rax == 0:
                kp[off] = index
                self.inc[index] = (self.next_inc, False)
                self.next_inc += 1
                self.mem.ptes[(BASE + off) >> PAGE_SHIFT] = rights_pte(pa, 3)
            return _rax(rax)
        if kind == "eldu":
            blob = self.blobs[move[1]]
            index = self._free_index()
            pa = cpu.epc.address(index)
            rax = kit.eld(blob.paged, pa, self.va_pa + 8 * blob.slot, self.secs_pa)
            if rax == 0:
                kp[blob.off] = index
                self.inc[index] = (blob.inc, blob.accepted)
                plain = cpu.epc.read(index, 0, PAGE_SIZE)
                self.trace.append(("eldu", blob.off, blob.inc, plain))
            return _rax(rax)
        off = move[1]
        index = kp[off]
        pa = cpu.epc.address(index)
        if kind == "emodpr":
            return _rax(kit.encls(EnclsLeaf.EMODPR, kit.secinfo((int(_PT_REG) << 8) | move[2]), pa))
        if kind == "emodt":
            return _rax(kit.encls(EnclsLeaf.EMODT, kit.secinfo(move[2] << 8), pa))
        if kind == "eblock":
            return _rax(kit.encls(EnclsLeaf.EBLOCK, 0, pa))
        if kind == "eremove":
            rax = kit.encls(EnclsLeaf.EREMOVE, 0, pa)
            if rax == 0:
                del kp[off]
                self.inc.pop(index, None)
            return _rax(rax)
        if kind == "ewb":
            slot = len(self.blobs)
            plain = cpu.epc.read(index, 0, PAGE_SIZE)
            rax, paged = kit.ewb(pa, self.va_pa + 8 * slot)
            if rax == 0 or rax == _SLOT_OCCUPIED:  # written out all the same
                inc, accepted = self.inc.pop(index, (0, False))
                self.blobs = (*self.blobs, Blob(off, slot, paged, inc, accepted, plain))
                del kp[off]
                self.trace.append(("ewb", off, inc, plain))
            return _rax(rax)
        raise SgxUsageError(f"unknown move {move!r}")

    def _free_index(self) -> int:
        epcm = self.cpu.epcm
        for i in range(self.cpu.epc.npages):
            if i not in epcm:
                return i
        raise MemoryError("explorer world: EPC full")

    # -- events -------------------------------------------------------------------------------------
    def _events(self, move: Move) -> list[Event]:
        """Normalize the raw trace of one move into monitor events."""
        who = move[1] if move[0] in ("step", "aex") else 0
        return normalize_events(self.trace, self.cpu, self.cpu.lps[who], self.mem, self.inc)

    # -- snapshots --------------------------------------------------------------------------------
    def step(self, move: Move) -> tuple[State, str]:
        """Apply `move` to the live state and capture the result (monitors updated)."""
        parent = self._live
        self._dirty = None
        for lp in self.cpu.lps:
            lp.tlb.mark()  # type: ignore[attr-defined]
        outcome = self.apply(move)
        kind = move[0]
        events = self._events(move) if self.trace else None
        if self.event_tap is not None and events:
            self.event_tap.extend(events)
        state = self.capture(parent, events, _CHANGES.get(kind, _KERNEL_PARTS))
        if self.paranoid:
            self._check_capture(state, move)
        return state, outcome

    def _check_capture(self, state: State, move: Move) -> None:
        """The incremental capture equals a full one from scratch (paranoid mode)."""
        mons, objs = self.mon_states, self._live_threads
        self._dirty = None
        full = self.capture(None)
        self.mon_states = mons
        parts = list(full.parts)
        parts[9] = state.parts[9]  # monitors are folded, not captured
        if tuple(parts) != state.parts:
            bad = [i for i, (a, b) in enumerate(zip(parts, state.parts, strict=True)) if a != b]
            raise AssertionError(f"explorer: capture after {move!r} missed changes in parts {bad}")
        self._live = state
        self._live_threads = objs

    def capture(
        self, parent: State | None, events: list[Event] | None = None, changed: tuple[int, ...] = _ALL_PARTS
    ) -> State:
        """The live state as an immutable value, sharing unchanged parts with `parent`."""
        if parent is None:
            changed = _ALL_PARTS
            pp: tuple[Any, ...] = (None,) * 11
            ph: tuple[int, ...] = (0,) * 11
            pages_map: dict[int, tuple[Any, ...]] = {}
        else:
            pp, ph, pages_map = parent.parts, parent.phash, parent.pages
        parts = list(pp)
        hashes = list(ph)
        objs = self._live_threads
        for i in changed:
            if i == 0:
                value, pages_map = self._pages_part(parent)
            elif i == 1:
                secs = self.secs
                value = (secs.chldcnt, tuple(sorted(secs.inside.items())), secs.epoch)
            elif i == 2:
                value = (self.cpu.paging_version,)
            elif i == 3:
                value = tuple(_lp_part(lp) for lp in self.cpu.lps)
            elif i == 4:
                value = tuple(_regs_part(eng.regs) for eng in self.engines)
            elif i == 5:
                value = tuple(sorted(self.mem.ptes.items()))
            elif i == 6:
                value = (tuple(sorted(self.kpages.items())), self.blobs)
            elif i == 7:
                value, objs = self._thread_part()
            elif i == 8:
                value = (tuple(sorted(self.inc.items())), self.next_inc)
            elif i == 9:
                value = self._fold(events)
            else:
                value = tuple(self.host)
            old = pp[i]
            if value is old:
                continue
            if old is not None and value == old:
                continue
            parts[i] = value
            hashes[i] = hash(value)
        state = State(tuple(parts), tuple(hashes), pages_map)
        self._live = state
        self._live_threads = objs
        return state

    def _pages_part(self, parent: State | None) -> tuple[tuple[Any, ...], dict[int, tuple[Any, ...]]]:
        """EPCM entries and contents of every valid page (each compared with the parent's)."""
        epcm = self.cpu.epcm
        buf = self.epc.buffer
        prev_map = parent.pages if parent is not None else {}
        pages: list[tuple[Any, ...]] = []
        index_map: dict[int, tuple[Any, ...]] = {}
        same = parent is not None and len(prev_map) == len(epcm)
        dirty = self._dirty if parent is not None else None
        for index in sorted(epcm):
            prev = prev_map.get(index)
            if dirty is not None and prev is not None and index not in dirty:
                pages.append(prev)
                index_map[index] = prev
                continue
            e = epcm[index]
            fields = _EPCM_FIELDS(e)
            owner = e.secs.eid if e.secs is not None else 0
            if prev is not None and prev[1] == fields and prev[2] == owner:
                off = index << PAGE_SHIFT
                content = buf[off : off + PAGE_SIZE]
                if content == prev[3]:
                    pages.append(prev)
                    index_map[index] = prev
                    continue
            else:
                off = index << PAGE_SHIFT
                content = buf[off : off + PAGE_SIZE]
                if prev is not None and prev[3] == content:
                    content = prev[3]
            same = False
            t = (index, fields, owner, content)
            pages.append(t)
            index_map[index] = t
        if same and parent is not None:
            return parent.parts[0], parent.pages
        return tuple(pages), index_map

    def _fold(self, events: list[Event] | None) -> tuple[object, ...]:
        mons = self.mon_states
        if not events:
            return mons
        new = []
        for (_, update, _), st in zip(self.monitors, mons, strict=True):
            if st is not _VIOLATED:
                for ev in events:
                    st = update(st, ev)
                    if st is _VIOLATED:
                        break
            new.append(st)
        self.mon_states = tuple(new)
        return self.mon_states

    def _thread_part(self) -> tuple[tuple[Any, ...], dict[tuple[Any, ...], _Thread]]:
        items: list[tuple[Any, ...]] = []
        objs: dict[tuple[Any, ...], _Thread] = {}
        for i, eng in enumerate(self.engines):
            th = eng._thread
            if th is not None:
                running: tuple[Any, ...] = ("run", i)
                items.append((running, *_thread_image(th)))
                objs[running] = th
        for key, th in self.program.suspended.items():
            where: tuple[Any, ...] = ("susp", key[1], key[2], key[3])
            items.append((where, *_thread_image(th)))
            objs[where] = th
        items.sort(key=_where_key)
        return tuple(items), objs

    def restore(self, state: State) -> None:
        """Make `state` the live state, writing back only what differs."""
        live_state = self._live
        if live_state is state:
            return
        cpu = self.cpu
        force = live_state is None
        live: tuple[Any, ...] = live_state.parts if live_state is not None else (None,) * 11
        parts = state.parts
        if force or live[0] is not parts[0]:
            self._restore_pages(state, live_state)
        if force or live[1] is not parts[1]:
            chld, inside, epoch = parts[1]
            secs = self.secs
            secs.chldcnt = chld
            secs.inside = dict(inside)
            secs.epoch = epoch
        cpu.paging_version = parts[2][0]
        if force or live[3] is not parts[3]:
            for lp, part in zip(cpu.lps, parts[3], strict=True):
                _restore_lp(lp, part, self.secs)
        if force or live[4] is not parts[4]:
            for eng, (values, ext) in zip(self.engines, parts[4], strict=True):
                regs = eng.regs
                assert isinstance(regs, Registers)
                regs.values[:] = values
                if regs.extended != ext:
                    regs.extended[:] = ext
        if force or live[5] is not parts[5]:
            self.mem.ptes.clear()
            self.mem.ptes.update(parts[5])
        if force or live[6] is not parts[6]:
            self.kpages = dict(parts[6][0])
            self.blobs = parts[6][1]
        if force or live[7] is not parts[7]:
            self._restore_threads(parts[7], None if force else live[7])
        if force or live[8] is not parts[8]:
            self.inc = dict(parts[8][0])
            self.next_inc = parts[8][1]
        self.mon_states = parts[9]
        self.host = list(parts[10])
        self.trace.clear()
        self._live = state

    def _restore_pages(self, state: State, live: State | None) -> None:
        cpu = self.cpu
        epcm = cpu.epcm
        epc = cpu.epc
        buf = epc.buffer
        target: dict[int, tuple[Any, ...]] = state.pages
        live_map: dict[int, tuple[Any, ...]] = live.pages if live is not None else {}
        for index in [i for i in epcm if i not in target]:
            del epcm[index]
            epc.dirty.add(index)
        secs = self.secs
        for index, t in target.items():
            cur = live_map.get(index)
            if cur is t and index in epcm:
                continue
            (pt, perms, st, lin, epoch), owner, content = t[1], t[2], t[3]
            e = epcm.get(index)
            if e is None:
                e = EpcmEntry(pt, None)
                epcm[index] = e
            e.pt = pt
            e.perms = perms
            e.state = st
            e.linaddr = lin
            e.epoch = epoch
            e.secs = secs if owner else None
            if cur is None or cur[3] is not content:
                off = index << PAGE_SHIFT
                buf[off : off + PAGE_SIZE] = content
            epc.dirty.discard(index)

    def _restore_threads(self, target: tuple[Any, ...], live: tuple[Any, ...] | None) -> None:
        live_imgs = {item[0]: item for item in live} if live is not None else {}
        objs = self._live_threads
        program = self.program
        program.suspended.clear()
        for eng in self.engines:
            eng._thread = None
        cpu_id = id(self.cpu)
        new_objs: dict[tuple[Any, ...], _Thread] = {}
        for item in target:
            where = item[0]
            th = objs.get(where)
            if th is None or live_imgs.get(where) != item or th.steps != item[-2]:
                th = self._rebuild_thread(item)
            new_objs[where] = th
            if where[0] == "run":
                self.engines[where[1]]._thread = th
            else:
                program.suspended[(cpu_id, where[1], where[2], where[3])] = th
        self._live_threads = new_objs

    def _rebuild_thread(self, item: tuple[Any, ...]) -> _Thread:
        (where, entry_off, bound, core, log, steps, _sp) = item
        entry = self.program.entries[entry_off]
        th = object.__new__(_Thread)
        ctx = object.__new__(ScriptedContext)
        (ctx.base, ctx.size, ctx.entry, ctx.tcs, ctx.cssa, ctx.rcx, ctx.rdi, ctx.rsi, ctx.rdx,
         ctx.r8, ctx.r9, ctx.ursp, ctx.urbp, ctx.entry_regs, ctx._start_rip, ctx._rip,
         ctx._exited) = core
        ctx.sp = _sp
        ctx._stack_fn = entry.stack
        ctx._log = list(log)
        ctx._pos = 0
        ctx._replaying = False
        ctx._faulted = None
        ctx._bind(self.engines[bound])
        th.entry = entry
        th.ctx = ctx
        th.gen = None  # rebuilt by the engine's replay on its next run
        th.steps = steps
        return th

    # -- property verdicts -------------------------------------------------------------------------
    def violated(self, state: State) -> list[str]:
        return [name for (name, _, _), st in zip(self.monitors, state.parts[9], strict=True) if st is _VIOLATED]

    def describe(self, move: Move) -> str:
        return describe_move(move)

    def close(self) -> None:
        self.cpu.close()


class TlbLog(dict[int, tuple[int, int]]):
    """A logical processor's TLB (a plain dict to the processor model) that also remembers every
    translation filled since the world last cleared `fills`: an EEXIT or AEX at the end of a
    step flushes the TLB, and the monitors still need to know which EPC page served each access."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.fills: dict[int, int] = {}
        self.before: dict[int, tuple[int, int]] = {}

    def __setitem__(self, page: int, value: tuple[int, int]) -> None:
        self.fills[page] = value[0]
        dict.__setitem__(self, page, value)

    def mark(self) -> None:
        """Start of a move: forget fills, remember what was cached."""
        self.fills.clear()
        self.before = dict(self)

    def served(self, page: int) -> int | None:
        index = self.fills.get(page)
        if index is None:
            hit = self.before.get(page)
            index = hit[0] if hit is not None else None
        return index


def install_tlb_logs(cpu: Processor) -> None:
    for lp in cpu.lps:
        if not isinstance(lp.tlb, TlbLog):
            lp.tlb = TlbLog(lp.tlb)


def _peek(mem: Any, addr: int) -> int:
    """The PTE of `addr` without a page walk's side effects (no accessed bit)."""
    pte: int = mem.ptes.get(addr >> PAGE_SHIFT, 0)
    return pte


def normalize_events(
    raw: list[Any], cpu: Processor, lp: Any, mem: Any, inc: dict[int, tuple[int, bool]]
) -> list[Event]:
    """Turn one move's raw trace (engine accesses, runtime beliefs, kernel events) into monitor
    events; clears `raw`. 8-byte words; SECINFO scratch on the stack page is left out."""
    if not raw:
        return []
    out: list[Event] = []
    lo = BASE
    tlb = lp.tlb
    for ev in raw:
        kind = ev[0]
        if kind == "load" or kind == "store":
            addr = ev[1]
            off = addr - lo
            if not 0 <= off < SIZE or off & ~(PAGE_SIZE - 1) in _NO_EVENT_PAGES:
                continue
            data = ev[2]
            # The page that served the access: the translation the LP used (filled during this
            # move, or cached before it), else the PTE's frame.
            index = tlb.served(addr >> PAGE_SHIFT) if isinstance(tlb, TlbLog) else None
            if index is None:
                index = cpu.epc.index(_peek(mem, addr) & PTE_ADDR_MASK)
            n, acc = inc.get(index, (0, False))
            words = [data] if isinstance(data, int) else [
                int.from_bytes(data[i : i + 8].ljust(8, b"\0"), "little") for i in range(0, len(data), 8)
            ]
            for i, w in enumerate(words):
                if kind == "load":
                    out.append(("read", off + 8 * i, w, n, acc))
                else:
                    out.append(("write", off + 8 * i, w, n))
        elif kind == "eaccept":
            out.append(ev)
            if ev[3] == 0:
                index = cpu.epc.index(_peek(mem, BASE + ev[1]) & PTE_ADDR_MASK)
                if index in inc:
                    inc[index] = (inc[index][0], True)
        elif kind == "inc":  # the kernel changed a page's incarnation mid-move (machine world)
            if ev[2] is None:
                inc.pop(ev[1], None)
            else:
                inc[ev[1]] = ev[2]
        elif kind in ("step", "enclu", "exit"):
            continue
        else:
            out.append(ev)
    raw.clear()
    return out


def _regs_part(regs: Any) -> tuple[tuple[int, ...], bytes]:
    return tuple(regs.values), bytes(regs.extended)


def _where_key(item: tuple[Any, ...]) -> tuple[Any, ...]:
    where = item[0]
    return (where[0], *where[1:])


def _thread_image(th: _Thread) -> tuple[Any, ...]:
    ctx = th.ctx
    entry_off = ctx.entry - ctx.base
    bound = ctx._lp.index
    core = (ctx.base, ctx.size, ctx.entry, ctx.tcs, ctx.cssa, ctx.rcx, ctx.rdi, ctx.rsi, ctx.rdx,
            ctx.r8, ctx.r9, ctx.ursp, ctx.urbp, ctx.entry_regs, ctx._start_rip, ctx._rip, ctx._exited)
    return (entry_off if entry_off in ctx._program.entries else _entry_offset(th), bound, core,
            tuple(ctx._log), th.steps, ctx.sp)


def _entry_offset(th: _Thread) -> int:
    for off, entry in th.ctx._program.entries.items():
        if entry is th.entry:
            return off
    raise SgxUsageError("scripted thread with an unknown entry")


def _lp_part(lp: Any) -> tuple[Any, ...]:
    secs = lp.secs
    return (
        lp.enclave_mode, secs.eid if secs is not None else 0, lp.tcs_index, lp.tcs_lin, lp.aep,
        lp.ssa_gpr_index, lp.ssa_gpr_offset, lp.ssa_xsave_index, lp.ssa_frame_lin, lp.saved_fsbase,
        lp.saved_gsbase, lp.saved_tf, tuple(sorted(lp.tlb.items())), lp.event_pending,
    )


def _restore_lp(lp: Any, part: tuple[Any, ...], secs: Any) -> None:
    (lp.enclave_mode, eid, lp.tcs_index, lp.tcs_lin, lp.aep, lp.ssa_gpr_index, lp.ssa_gpr_offset,
     lp.ssa_xsave_index, lp.ssa_frame_lin, lp.saved_fsbase, lp.saved_gsbase, lp.saved_tf, tlb,
     lp.event_pending) = part
    lp.secs = secs if eid else None
    lp.tlb = TlbLog(tlb)


def _rax(rax: int) -> str:
    if rax == 0:
        return "ok"
    try:
        return SgxError(rax).name
    except ValueError:
        return f"rax={rax}"


def _fault_text(fault: SgxFault | None) -> str:
    if fault is None:
        return ""
    addr = getattr(fault, "addr", None)
    code = getattr(fault, "error_code", 0)
    where = f" at {page_name(addr - BASE)}" if isinstance(addr, int) and BASE <= addr < BASE + SIZE else ""
    name = type(fault).__name__
    return f"#{'PF' if name == 'PageFault' else name} code={code:#x}{where}"


_PERMS = {0: "---", 1: "R--", 3: "RW-", 5: "R-X", 7: "RWX", 2: "-W-", 4: "--X", 6: "-WX"}
_WHO = ("main", "bug")


def describe_move(move: Move) -> str:
    kind = move[0]
    if kind == "call":
        who, op, arg = move[1], move[2], move[3]
        tcs = "TCS1" if who == 0 else "TCS2"
        target = f"({page_name(arg)})" if arg else ""
        return f"host: EENTER {tcs} -> {OP_NAMES.get(op, op)}{target} [{_WHO[who]} thread]"
    if kind == "step":
        return f"enclave {_WHO[move[1]]} thread: one step"
    if kind == "run":
        return f"enclave {_WHO[move[1]]} thread: runs to its EEXIT"
    if kind == "resume":
        return f"host: ERESUME {_WHO[move[1]]} thread"
    if kind == "aex":
        return f"kernel: interrupt {_WHO[move[1]]} thread (AEX)"
    if kind == "pte":
        return f"kernel: PTE of {page_name(move[1])} := {_PERMS.get(move[2], move[2])}"
    if kind == "emodpr":
        return f"kernel: EMODPR {page_name(move[1])} to {_PERMS.get(move[2], move[2])}"
    if kind == "emodt":
        return f"kernel: EMODT {page_name(move[1])} to {PageType(move[2]).name}"
    if kind == "eldu":
        return f"kernel: ELDU blob #{move[1]}"
    if kind == "etrack":
        return "kernel: ETRACK"
    return f"kernel: {kind.upper()} {page_name(move[1])}"
