"""A picture of the EPC and its EPCM at one moment: every valid page, and every evicted one.

`snapshot(machine)` lists each valid EPC page (its EPCM entry: owner, type, rights, PENDING /
MODIFIED / PR / BLOCKED, linear address) and each enclave page the kernel has evicted to its
backing store (type, rights and state from the PCMD's SECINFO, which EWB leaves in plain text).
`snapshot_cpu(processor)` does the same for a bare processor (no kernel: nothing is evicted).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from ..arch.constants import PageType
from ..hw.epcm import BLOCKED, MODIFIED, PENDING, PR

if TYPE_CHECKING:
    from ..hw.epcm import EpcmEntry
    from ..hw.processor import Processor
    from ..linux.encl import SgxEncl
    from ..linux.machine import Machine

_TYPE_NAMES = {int(t): t.name[3:] for t in PageType}  # PT_REG -> REG
_SECINFO_PENDING, _SECINFO_MODIFIED, _SECINFO_PR = 0x08, 0x10, 0x20


def rights(perms: int) -> str:
    """EPCM R/W/X bits as `RW-`."""
    return "".join(c if perms & b else "-" for c, b in (("R", 1), ("W", 2), ("X", 4)))


@dataclass(frozen=True)
class PageView:
    """One enclave page as the picture shows it."""

    owner: int | None  # EID of the owning enclave (None: a VA page, owned by no enclave)
    type: str  # SECS, TCS, REG, VA, TRIM
    rights: str  # "RW-"; "---" for non-REG pages
    flags: tuple[str, ...]  # PENDING, MODIFIED, PR, BLOCKED
    offset: int | None  # linear address - enclave base (None for SECS and VA pages)
    linaddr: int | None
    epc_index: int | None  # None when evicted
    evicted: bool = False

    @property
    def key(self) -> tuple[Any, ...]:
        """What identifies the page across snapshots (its EPC slot may change on reload)."""
        if self.type == "VA":
            return ("VA", self.epc_index)
        if self.type == "SECS":
            return ("SECS", self.owner)
        return ("page", self.owner, self.offset)

    @property
    def label(self) -> str:
        if self.type == "SECS":
            return "SECS"
        if self.type == "VA":
            return "VA"
        return f"+{self.offset:#x}" if self.offset is not None else "?"

    def describe(self) -> str:
        flags = " ".join(self.flags)
        where = "evicted" if self.evicted else f"EPC {self.epc_index}"
        owner = f"enclave {self.owner}" if self.owner is not None else "no enclave"
        return f"{self.label} {self.type} {self.rights} {flags} ({owner}, {where})".replace("  ", " ")

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["flags"] = list(self.flags)
        return out


@dataclass(frozen=True)
class EnclaveView:
    eid: int
    base: int
    size: int


@dataclass
class EpcSnapshot:
    """Every valid EPC page and every evicted enclave page, with the EPC's size."""

    label: str
    npages: int
    pages: list[PageView] = field(default_factory=list)
    enclaves: list[EnclaveView] = field(default_factory=list)

    @property
    def resident(self) -> int:
        return sum(1 for p in self.pages if not p.evicted)

    @property
    def evicted(self) -> int:
        return sum(1 for p in self.pages if p.evicted)

    def by_key(self) -> dict[tuple[Any, ...], PageView]:
        return {p.key: p for p in self.pages}

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "epc_pages": self.npages,
            "resident": self.resident,
            "evicted": self.evicted,
            "enclaves": [asdict(e) for e in self.enclaves],
            "pages": [p.to_json() for p in self.pages],
        }


def _state_flags(state: int) -> tuple[str, ...]:
    return tuple(
        name
        for bit, name in ((PENDING, "PENDING"), (MODIFIED, "MODIFIED"), (PR, "PR"), (BLOCKED, "BLOCKED"))
        if state & bit
    )


def page_view(index: int, entry: EpcmEntry) -> PageView:
    """The view of one valid EPC page from its EPCM entry."""
    secs = entry.secs
    pt = int(entry.pt)
    owner = secs.eid if secs is not None else None
    offset = linaddr = None
    if pt not in (int(PageType.PT_SECS), int(PageType.PT_VA)):
        linaddr = entry.linaddr
        offset = entry.linaddr - secs.baseaddr if secs is not None else None
    return PageView(
        owner=owner,
        type=_TYPE_NAMES.get(pt, str(pt)),
        rights=rights(entry.perms),
        flags=_state_flags(entry.state),
        offset=offset,
        linaddr=linaddr,
        epc_index=index,
    )


def snapshot_cpu(cpu: Processor, label: str = "") -> EpcSnapshot:
    snap = EpcSnapshot(label, cpu.epc.npages)
    for index in sorted(cpu.epcm):
        snap.pages.append(page_view(index, cpu.epcm[index]))
    snap.enclaves = sorted(
        (EnclaveView(s.eid, s.baseaddr, s.size) for s in cpu.enclaves()), key=lambda e: e.eid
    )
    return snap


def live_enclaves(machine: Machine) -> list[SgxEncl]:
    """Every driver enclave still reachable from a process (by an fd or a mapping)."""
    from ..linux.encl import SgxEncl

    seen: dict[int, SgxEncl] = {}
    for proc in machine.processes.values():
        for file in proc.fds.values():
            if isinstance(file.private_data, SgxEncl):
                seen.setdefault(id(file.private_data), file.private_data)
        for vma in proc.mm.vmas:
            if vma.private is not None:
                seen.setdefault(id(vma.private), vma.private)
    return [e for e in seen.values() if not e.released]


def _evicted_pages(encl: SgxEncl, eid: int | None) -> list[PageView]:
    out: list[PageView] = []
    backing = encl.backing
    entries = [encl.secs, *sorted(encl.page_array.values(), key=lambda p: p.addr)]
    for page in entries:
        if page.epc_page is not None or page.va_page is None:
            continue  # resident, or not in the backing store (being added, or no SECS yet)
        index = (encl.size >> 12) if page is encl.secs else (page.addr - encl.base) >> 12
        pcmd = backing.pcmd.get(index) if backing is not None else None
        flags = struct.unpack_from("<Q", pcmd)[0] if pcmd else 0
        pt = (flags >> 8) & 0xFF if page is not encl.secs else int(PageType.PT_SECS)
        state = tuple(
            name
            for bit, name in ((_SECINFO_PENDING, "PENDING"), (_SECINFO_MODIFIED, "MODIFIED"), (_SECINFO_PR, "PR"))
            if flags & bit
        )
        is_secs = page is encl.secs
        out.append(
            PageView(
                owner=eid,
                type=_TYPE_NAMES.get(pt, str(pt)),
                rights=rights(flags & 7),
                flags=state,
                offset=None if is_secs else page.addr - encl.base,
                linaddr=None if is_secs else page.addr,
                epc_index=None,
                evicted=True,
            )
        )
    return out


def snapshot(
    machine: Machine, label: str = "", known: Iterable[EnclaveView] = ()
) -> EpcSnapshot:
    """The EPC, the EPCM and the kernel's evicted pages of `machine`.

    `known`: enclaves seen earlier (by a tracer), so one whose SECS is evicted keeps its EID.
    """
    cpu = machine.cpu
    snap = snapshot_cpu(cpu, label)
    known_by_eid = {e.eid: e for e in known}
    known_by_eid.update({e.eid: e for e in snap.enclaves})
    known = known_by_eid.values()
    for encl in live_enclaves(machine):
        eid = None
        if encl.secs.epc_page is not None:
            secs = cpu.secs_of(encl.secs.epc_page.index)
            eid = secs.eid if secs is not None else None
        else:
            eid = next((e.eid for e in known if e.base == encl.base), None)
            if eid is not None and all(e.eid != eid for e in snap.enclaves):
                snap.enclaves.append(known_by_eid[eid])
        snap.pages.extend(_evicted_pages(encl, eid))
    snap.enclaves.sort(key=lambda e: e.eid)
    return snap
