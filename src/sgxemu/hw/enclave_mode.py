"""Entering and leaving enclave mode: the checks EENTER and ERESUME share, and the bookkeeping
every entry and exit (EENTER, ERESUME, EEXIT, AEX) does (SDM EENTER/ERESUME, 42.12).

These functions work on `values`, every register in `Reg` order as `RegisterFile.get_all`
returns them; the leaf writes the list back with `set_all` when it is done (one batch each way
instead of a call per register).
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any, NamedTuple

from ..arch.constants import (
    GPRSGX_SIZE,
    PAGE_MASK,
    PAGE_SHIFT,
    PAGE_SIZE,
    Attribute,
    PageType,
    TcsFlags,
    TcsState,
)
from ..arch.structs import (
    GPRSGX_OFF_AEXNOTIFY,
    GPRSGX_OFF_FSBASE,
    GPRSGX_OFF_RIP,
    GPRSGX_OFF_URSP,
)
from .epcm import ENTRY_CHANGES, UNUSABLE, Epcm, EpcmEntry
from .faults import GeneralProtection
from .memory import PageTable, page_table_of
from .operands import CANONICAL_HIGH, epc_page, epcm_fault
from .regs import MASK64, TF, Reg

if TYPE_CHECKING:
    from .lp import LogicalProcessor
    from .memory import AddressSpace
    from .processor import Processor
    from .secs import SecsState

TCS_FIELDS = struct.Struct("<QQQIIQQQQII")  # STATE .. GSLIMIT (SDM Table 38-10)
_TCS_SIZE = TCS_FIELDS.size  # bytes 0..71: every TCS field the entry checks read
U64 = struct.Struct("<Q")
_URSP_URBP = struct.Struct("<QQ")  # GPRSGX.URSP and GPRSGX.URBP, adjacent
_FS_GS = _URSP_URBP  # GPRSGX.FSBASE and GPRSGX.GSBASE, adjacent too
# Plain ints for the entry/exit hot path (IntFlag arithmetic costs a Python call each).
_DBGOPTIN = int(TcsFlags.DBGOPTIN)
_TCS_AEXNOTIFY = int(TcsFlags.AEXNOTIFY)
_ATTR_AEXNOTIFY = int(Attribute.AEXNOTIFY)
_INIT = int(Attribute.INIT)
_MODE64BIT = int(Attribute.MODE64BIT)
_ACTIVE = int(TcsState.ACTIVE)
_ACTIVE_BYTES = U64.pack(TcsState.ACTIVE)
_INACTIVE_BYTES = U64.pack(TcsState.INACTIVE)
_PT_TCS = PageType.PT_TCS
_PT_REG = PageType.PT_REG
_OFFSET_MASK = PAGE_SIZE - 1
# Module-level copies of the registers (an enum class attribute lookup costs a dict miss).
_RAX = Reg.RAX
_RCX = Reg.RCX
_RBX = Reg.RBX
_RSP = Reg.RSP
_RBP = Reg.RBP
_RFLAGS = Reg.RFLAGS
_RIP = Reg.RIP
_FSBASE = Reg.FSBASE
_GSBASE = Reg.GSBASE
_tuple_new = tuple.__new__  # NamedTuple construction without its Python-level __new__
# TCS.FLAGS bits 63:2 are reserved. (Not `~(TcsFlags...)`: inverting an IntFlag keeps only the
# defined members' bits, so that mask would be 0.)
_TCS_FLAGS_RESERVED = ~int(TcsFlags.DBGOPTIN | TcsFlags.AEXNOTIFY) & 0xFFFF_FFFF_FFFF_FFFF


class Tcs(NamedTuple):
    state: int
    flags: int
    ossa: int
    cssa: int
    nssa: int
    oentry: int
    aep: int
    ofsbase: int
    ogsbase: int
    fslimit: int
    gslimit: int


class Entry(NamedTuple):
    """What the shared EENTER/ERESUME checks found."""

    tcs_index: int
    tcs: Tcs
    secs: SecsState
    frame_lin: int  # linear address of the SSA frame used
    xsave_index: int
    gpr_index: int
    gpr_offset: int
    notify: bool  # ERESUME takes the AEX-Notify path (enter frame CSSA at OENTRY)
    # Where an entry at OENTRY goes: SECS.BASEADDR + TCS.OENTRY, + OFSBASE, + OGSBASE.
    oentry_lin: int
    fsbase_lin: int
    gsbase_lin: int


def read_tcs(cpu: Processor, index: int) -> Tcs:
    return _tuple_new(Tcs, TCS_FIELDS.unpack_from(cpu.epc.buffer, index << PAGE_SHIFT))


class EntryCheck:
    """What a passed entry check read, besides the registers and the SSA contents: the PTE of
    the TCS, its EPCM entry (the object and the fields checked), TCS bytes 0..71, the SECS
    fields used, and for each SSA page checked its linear address, PTE, EPC index, EPCM entry
    and fields. `page_table` and `stamp`: the address space's `PageTable` (None: it has none)
    and the versions of the EPCM, of `ENTRY_CHANGES` and of the page table when all of that
    was last found as recorded; `vpns`, `indices` and `entry_ids`: the change-log keys of the
    pages, EPC pages and EPCM entries it names."""

    __slots__ = (
        "tcs_pte", "tcs_epcm", "tcs_fields", "tcs_raw", "secs_fields", "ssa", "entry",
        "page_table", "stamp", "vpns", "indices", "entry_ids",
    )  # fmt: skip

    def __init__(
        self,
        tcs_pte: int,
        tcs_epcm: EpcmEntry,
        tcs_fields: tuple[Any, ...],
        tcs_raw: bytes,
        secs_fields: tuple[int, int, int],
        ssa: tuple[tuple[int, int, int, EpcmEntry, tuple[Any, ...]], ...],
        entry: Entry,
        page_table: PageTable | None,
        stamp: tuple[int, int, int],
        vpns: frozenset[int],
        indices: frozenset[int],
    ) -> None:
        self.tcs_pte = tcs_pte
        self.tcs_epcm = tcs_epcm
        self.tcs_fields = tcs_fields
        self.tcs_raw = tcs_raw
        self.secs_fields = secs_fields
        self.ssa = ssa
        self.entry = entry
        self.page_table = page_table
        self.stamp = stamp
        self.vpns = vpns
        self.indices = indices
        self.entry_ids = frozenset([id(tcs_epcm), *(id(e) for _, _, _, e, _ in ssa)])


def check_entry(cpu: Processor, values: list[int], mem: AddressSpace, resume: bool) -> Entry:
    """The EENTER/ERESUME checks in SDM order; ERESUME uses frame CSSA-1.

    The checks through the SSA frame are a function of what `EntryCheck` records (the TCS
    linear address is the key, RCX is tested again): when all of it reads as it did at the
    last entry through this TCS that passed them, they pass again with the same result, and
    only ERESUME's checks of the saved RIP and FS/GS bases (SSA contents) run. The memo reads
    PTEs in the checks' own order and gives up at the first difference, so a PTE is read (its
    A bit set) only where the full check would read it; the full check then runs from the
    start. When neither the EPCM nor the page table changed at all since the memo last held
    (`EntryCheck.stamp`), the PTEs and EPCM entries it names are as recorded without reading
    them (the walks that set their A bits happened before).
    """
    memo = cpu.entry_checks.get((values[_RBX], resume))
    if memo is not None:
        top = values[_RCX] >> 47  # (the AEP check reads no PTE: it may come first here)
        table = memo.page_table
        if (not top or top == CANONICAL_HIGH) and (
            (
                getattr(mem, "page_table", None) is table
                and table is not None
                and (
                    memo.stamp == (cpu.epcm.version, ENTRY_CHANGES.version, table.version)
                    or _unchanged(cpu.epcm, table, memo)
                )
            )
            or _pages_as_recorded(cpu, values, mem, memo)
        ):
            entry = memo.entry
            off = entry.tcs_index << PAGE_SHIFT
            secs = entry.secs
            if cpu.epc.buffer[off : off + _TCS_SIZE] == memo.tcs_raw and (
                (secs.attributes, secs.baseaddr, secs.ssaframesize) == memo.secs_fields
            ):
                if resume:
                    _check_resume_target(cpu, entry)
                return entry
    return _check_entry(cpu, values, mem, resume)


def _unchanged(epcm: Epcm, table: PageTable, memo: EntryCheck) -> bool:
    """No PTE or EPCM entry the memo names changed since its stamp (which then moves on)."""
    at = memo.stamp
    now = (epcm.version, ENTRY_CHANGES.version, table.version)
    if (
        (at[0] == now[0] or epcm.unchanged_since(at[0], memo.indices))
        and (at[1] == now[1] or ENTRY_CHANGES.unchanged_since(at[1], memo.entry_ids))
        and (at[2] == now[2] or table.unchanged_since(at[2], memo.vpns))
    ):
        memo.stamp = now
        return True
    return False


def _pages_as_recorded(
    cpu: Processor, values: list[int], mem: AddressSpace, memo: EntryCheck
) -> bool:
    """The TCS and SSA pages: their PTEs and EPCM entries as `memo` recorded them."""
    translate = mem.translate
    if translate(values[_RBX]) != memo.tcs_pte:
        return False
    epcm = cpu.epcm
    epcm_get = epcm.get
    e = memo.tcs_epcm
    if epcm_get(memo.entry.tcs_index) is not e or (
        (e.state, e.linaddr, e.pt, e.secs) != memo.tcs_fields
    ):
        return False
    for lin, pte, index, e, fields in memo.ssa:
        if translate(lin) != pte:
            return False
        # (The same PTE names the same EPC page `index`.)
        if epcm_get(index) is not e or (e.state, e.linaddr, e.pt, e.secs, e.perms) != fields:
            return False
    table = memo.page_table
    if getattr(mem, "page_table", None) is table is not None:
        memo.stamp = (epcm.version, ENTRY_CHANGES.version, table.version)  # (as recorded)
    return True


def _check_resume_target(cpu: Processor, entry: Entry) -> None:
    """A plain ERESUME goes back to the saved RIP with the saved FS/GS bases: check those."""
    gpr = (entry.gpr_index << PAGE_SHIFT) + entry.gpr_offset
    buf = cpu.epc.buffer
    target = U64.unpack_from(buf, gpr + GPRSGX_OFF_RIP)[0]
    fsbase, gsbase = _FS_GS.unpack_from(buf, gpr + GPRSGX_OFF_FSBASE)
    top = target >> 47
    fs_top = fsbase >> 47
    gs_top = gsbase >> 47
    if (
        (top and top != CANONICAL_HIGH)
        or (fs_top and fs_top != CANONICAL_HIGH)
        or (gs_top and gs_top != CANONICAL_HIGH)
    ):
        raise GeneralProtection()


def _record(
    cpu: Processor, mem: AddressSpace, entry: Entry, tcs_lin: int, resume: bool
) -> None:
    """Keep what a passed check read (AEX-Notify entries, which may check a second frame,
    are not kept). Reading the PTEs again changes nothing: the check's walk set their A bits."""
    if entry.notify or (resume and entry.tcs.flags & _TCS_AEXNOTIFY):
        return
    translate = mem.translate
    epcm = cpu.epcm
    e = epcm[entry.tcs_index]
    secs = entry.secs
    frame_lin = entry.frame_lin
    gpr_lin = frame_lin + secs.ssaframesize * PAGE_SIZE - GPRSGX_SIZE
    pages = [(frame_lin, entry.xsave_index)]
    if gpr_lin & PAGE_MASK != frame_lin:
        pages.append((gpr_lin, entry.gpr_index))  # else GPRSGX lies on the XSAVE page
    ssa = []
    for lin, index in pages:
        s = epcm[index]
        fields = (s.state, s.linaddr, s.pt, s.secs, s.perms)
        ssa.append((lin, translate(lin), index, s, fields))
    off = entry.tcs_index << PAGE_SHIFT
    table = page_table_of(mem)
    cpu.entry_checks[(tcs_lin, resume)] = EntryCheck(
        translate(tcs_lin),
        e,
        (e.state, e.linaddr, e.pt, e.secs),
        bytes(cpu.epc.buffer[off : off + _TCS_SIZE]),
        (secs.attributes, secs.baseaddr, secs.ssaframesize),
        tuple(ssa),
        entry,
        table,
        (epcm.version, ENTRY_CHANGES.version, table.version if table is not None else -1),
        frozenset([tcs_lin >> PAGE_SHIFT, *(lin >> PAGE_SHIFT for lin, _ in pages)]),
        frozenset([entry.tcs_index, *(index for _, index in pages)]),
    )


def _check_entry(cpu: Processor, values: list[int], mem: AddressSpace, resume: bool) -> Entry:
    """The full check. A hot path (every entry): the alignment checks, `secs.init`,
    `secs.mode64bit` and the canonical-address tests (bits 63:47 all zeros or all ones) are
    inlined."""
    tcs_lin = values[_RBX]
    if tcs_lin & _OFFSET_MASK:
        raise GeneralProtection()
    tcs_index = epc_page(cpu, mem, tcs_lin, False, True)
    top = values[_RCX] >> 47
    if top and top != CANONICAL_HIGH:  # AEP not canonical
        raise GeneralProtection()
    e = cpu.epcm.get(tcs_index)
    if e is None or e.state & UNUSABLE or e.linaddr != tcs_lin or e.pt is not _PT_TCS:
        raise epcm_fault(tcs_lin, user=True)
    secs = e.secs
    assert secs is not None
    tcs = read_tcs(cpu, tcs_index)
    state, flags, ossa, cssa, nssa, oentry, _aep, ofsbase, ogsbase, _fslimit, _gslimit = tcs
    if ossa & _OFFSET_MASK or ofsbase & _OFFSET_MASK or ogsbase & _OFFSET_MASK:
        raise GeneralProtection()
    if flags & _TCS_FLAGS_RESERVED:
        raise GeneralProtection()
    attributes = secs.attributes
    if not attributes & _INIT or not attributes & _MODE64BIT:
        raise GeneralProtection()  # uninitialized, or a 32-bit enclave entered from 64-bit mode
    if not flags & _DBGOPTIN and bool(flags & _TCS_AEXNOTIFY) != bool(
        attributes & _ATTR_AEXNOTIFY
    ):
        raise GeneralProtection()
    if resume:
        if cssa == 0:
            raise GeneralProtection()
        frame = cssa - 1
    else:
        if cssa >= nssa:
            raise GeneralProtection()
        frame = cssa
    frame_lin, xsave_index, gpr_index, gpr_lin = _ssa_frame(cpu, mem, secs, ossa, frame)
    notify = False
    if resume:
        gpr = gpr_lin & ~PAGE_MASK
        # AEX-Notify: TCS.FLAGS.AEXNOTIFY and bit 0 of the frame's GPRSGX.AEXNOTIFY byte make
        # ERESUME an entry into frame CSSA, which must exist and pass the same page checks.
        notify = bool(flags & _TCS_AEXNOTIFY) and bool(
            cpu.epc.buffer[(gpr_index << PAGE_SHIFT) + gpr + GPRSGX_OFF_AEXNOTIFY] & 1
        )
        if notify:
            if cssa >= nssa:
                raise GeneralProtection()
            frame_lin, xsave_index, gpr_index, gpr_lin = _ssa_frame(cpu, mem, secs, ossa, cssa)
    base = secs.baseaddr
    oentry_lin = base + oentry
    fsbase_lin = base + ofsbase
    gsbase_lin = base + ogsbase
    if resume and not notify:
        # A plain ERESUME goes back to the saved RIP with the saved FS/GS bases: check those.
        gpr = (gpr_index << PAGE_SHIFT) + (gpr_lin & ~PAGE_MASK)
        buf = cpu.epc.buffer
        target = U64.unpack_from(buf, gpr + GPRSGX_OFF_RIP)[0]
        fsbase, gsbase = _FS_GS.unpack_from(buf, gpr + GPRSGX_OFF_FSBASE)
    else:
        target, fsbase, gsbase = oentry_lin, fsbase_lin, gsbase_lin
    top = target >> 47
    if top and top != CANONICAL_HIGH:
        raise GeneralProtection()
    fs_top = fsbase >> 47
    gs_top = gsbase >> 47
    if (fs_top and fs_top != CANONICAL_HIGH) or (gs_top and gs_top != CANONICAL_HIGH):
        raise GeneralProtection()
    if state == _ACTIVE:
        raise GeneralProtection()
    entry = _tuple_new(
        Entry,
        (tcs_index, tcs, secs, frame_lin, xsave_index, gpr_index, gpr_lin & ~PAGE_MASK, notify,
         oentry_lin, fsbase_lin, gsbase_lin),
    )  # fmt: skip
    _record(cpu, mem, entry, tcs_lin, resume)
    return entry


def _ssa_frame(
    cpu: Processor, mem: AddressSpace, secs: SecsState, ossa: int, frame: int
) -> tuple[int, int, int, int]:
    """Check SSA frame `frame`: (frame address, XSAVE page index, GPR page index, GPR address).

    The XSAVE area (576 bytes: its first page) and the page holding GPRSGX are checked; a
    fault on the GPR page reports the GPRSGX address (SDM EENTER: #PF(DS:TMP_GPR)).
    """
    frame_size = secs.ssaframesize * PAGE_SIZE
    frame_lin = secs.baseaddr + ossa + frame * frame_size
    gpr_lin = frame_lin + frame_size - GPRSGX_SIZE
    xsave_index = _ssa_page(cpu, mem, secs, frame_lin)
    if gpr_lin & PAGE_MASK == frame_lin:
        gpr_index = xsave_index
    else:
        gpr_index = _ssa_page(cpu, mem, secs, gpr_lin)
    return frame_lin, xsave_index, gpr_index, gpr_lin


def _ssa_page(cpu: Processor, mem: AddressSpace, secs: SecsState, lin: int) -> int:
    """An SSA page must be writable, REG, RW, of this enclave and at its own address.

    Faults report `lin`: the page for an XSAVE page, the GPRSGX address for the GPR page.
    """
    page = lin & PAGE_MASK
    index = epc_page(cpu, mem, lin, True, True)  # the paging R/W check first, then "in EPC"
    e = cpu.epcm.get(index)
    if (
        e is None
        or e.state & UNUSABLE
        or e.linaddr != page
        or e.pt is not _PT_REG
        or e.secs is not secs
        or e.perms & 3 != 3  # R and W
    ):
        raise epcm_fault(lin, write=True, user=True)
    return index


def enter(cpu: Processor, lp: LogicalProcessor, values: list[int], entry: Entry) -> None:
    """Enclave mode on: the CR_* registers, the TCS busy, FS/GS swapped, the TLB flushed."""
    tcs_index, tcs, secs, frame_lin, xsave_index, gpr_index, gpr_offset = entry[:7]
    lp.enclave_mode = True
    lp.secs = secs
    lp.tcs_index = tcs_index
    lp.tcs_lin = values[_RBX]
    aep = lp.aep = values[_RCX]
    lp.ssa_frame_lin = frame_lin
    lp.ssa_xsave_index = xsave_index
    lp.ssa_gpr_index = gpr_index
    lp.ssa_gpr_offset = gpr_offset
    lp.saved_fsbase = values[_FSBASE]
    lp.saved_gsbase = values[_GSBASE]
    rflags = values[_RFLAGS]
    lp.saved_tf = rflags & TF != 0
    if not tcs.flags & _DBGOPTIN:
        values[_RFLAGS] = rflags & ~TF  # opt-out entry suppresses single-stepping
    buf = cpu.epc.buffer
    off = tcs_index << PAGE_SHIFT
    buf[off : off + 8] = _ACTIVE_BYTES  # TCS.STATE
    U64.pack_into(buf, off + 40, aep)  # TCS.AEP
    secs.inside[lp.index] = secs.epoch
    lp.flush_tlb()


def leave(cpu: Processor, lp: LogicalProcessor, values: list[int]) -> None:
    """Enclave mode off (EEXIT, AEX): TCS free again, FS/GS back, the TLB flushed."""
    secs = lp.secs
    assert secs is not None
    buf = cpu.epc.buffer
    off = lp.tcs_index << PAGE_SHIFT
    buf[off : off + 8] = _INACTIVE_BYTES  # TCS.STATE
    values[_FSBASE] = lp.saved_fsbase
    values[_GSBASE] = lp.saved_gsbase
    tcs_flags = U64.unpack_from(buf, off + 8)[0]
    if not tcs_flags & _DBGOPTIN:
        # An opt-out entry saved TF and cleared it: the exit puts the saved value back (SDM EEXIT).
        flags = values[_RFLAGS] & ~TF
        values[_RFLAGS] = flags | TF if lp.saved_tf else flags
    secs.inside.pop(lp.index, None)
    lp.enclave_mode = False
    lp.secs = None
    lp.tcs_index = -1
    lp.flush_tlb()


def enter_at_oentry(
    cpu: Processor, lp: LogicalProcessor, values: list[int], entry: Entry
) -> None:
    """EENTER's effects (also ERESUME's AEX-Notify path): save URSP/URBP, jump to OENTRY."""
    enter(cpu, lp, values, entry)
    gpr = (entry.gpr_index << PAGE_SHIFT) + entry.gpr_offset
    _URSP_URBP.pack_into(cpu.epc.buffer, gpr + GPRSGX_OFF_URSP, values[_RSP], values[_RBP])
    values[_RCX] = (values[_RIP] + 3) & MASK64  # the instruction after ENCLU
    values[_RAX] = entry.tcs.cssa
    # (check_entry found these three canonical: < 2^64)
    values[_RIP], values[_FSBASE], values[_GSBASE] = entry[8:]
