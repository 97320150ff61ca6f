"""The Enclave Page Cache Map: one entry per valid EPC page (SDM 38.19, Table 38-27).

An absent entry is an entry with VALID = 0. Entries are small (six slots; the flag bits are
packed into two small ints, which Python shares rather than allocates) because a large EPC has
millions of them; the SDM's field names are properties over those ints.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..arch.constants import PageType
from .changelog import LOG_LIMIT, ChangeLog, LoggedDict

if TYPE_CHECKING:
    from .secs import SecsState

# Sentinel epoch: no tracking cycle is owed for this page (loaded by ELDU/ELDB, or never changed).
TRACKED = -1

# Bits of `EpcmEntry.perms` (SECINFO layout) and `EpcmEntry.state`.
R = 1
W = 2
X = 4
PENDING = 1
MODIFIED = 2
PR = 4
BLOCKED = 8
# A page that no access may translate: BLOCKED, PENDING or MODIFIED (SDM 38.5 / spec 6.1).
UNUSABLE = BLOCKED | PENDING | MODIFIED


# Every EPCM entry whose field was set, by `id` (the entry is alive while a check holds it):
# one log for all entries, so an entry needs no reference to its Epcm (memory: one per page).
# A set on another processor's entry only costs a check its shortcut.
ENTRY_CHANGES = ChangeLog()


def _flag(bit: int, doc: str) -> property:
    def get(self: EpcmEntry) -> bool:
        return bool(self.state & bit)

    def set_(self: EpcmEntry, on: bool) -> None:
        self.state = self.state | bit if on else self.state & ~bit

    return property(get, set_, doc=doc)


def _perm(bit: int, doc: str) -> property:
    def get(self: EpcmEntry) -> bool:
        return bool(self.perms & bit)

    def set_(self: EpcmEntry, on: bool) -> None:
        self.perms = self.perms | bit if on else self.perms & ~bit

    return property(get, set_, doc=doc)


class _EpcmFields:
    """The fields of an EPCM entry as plain slots (what `EpcmEntry.__new__` fills in)."""

    __slots__ = ("pt", "perms", "state", "secs", "linaddr", "epoch")
    pt: PageType
    perms: int
    state: int
    secs: SecsState | None
    linaddr: int
    epoch: int


_new_fields = object.__new__


class EpcmEntry(_EpcmFields):
    """EPCM entry of a valid page. `secs` is ENCLAVESECS (the SECS itself for a PT_SECS page).

    Every field set is noted in `ENTRY_CHANGES` (the entry's `id`).
    """

    __slots__ = ()

    # No __init__: __new__ makes the whole entry (object.__init__ then ignores the arguments).
    def __new__(
        cls,
        pt: PageType,
        secs: SecsState | None,
        linaddr: int = 0,
        perms: int = 0,
        state: int = 0,
    ) -> Any:
        # Filled in as plain fields, then given this class: a new entry has no history to log,
        # and stores through __setattr__ would cost three times as much.
        entry = _new_fields(_EpcmFields)
        entry.pt = pt
        entry.perms = perms & 7  # R, W, X
        entry.state = state  # PENDING, MODIFIED, PR, BLOCKED
        entry.secs = secs
        entry.linaddr = linaddr  # ENCLAVEADDRESS
        # Hidden tracking reference [model, spec 6.4]: SECS epoch at the last EBLOCK/EMODPR/EMODT.
        entry.epoch = TRACKED
        entry.__class__ = cls
        return entry

    def __setattr__(self, name: str, value: Any) -> None:
        log = ENTRY_CHANGES  # (`note`, inlined: every EPCM field store comes here)
        log.version += 1
        keys = log._log
        keys.append(id(self))
        if len(keys) > LOG_LIMIT:
            log._trim()
        object.__setattr__(self, name, value)

    r = _perm(R, "EPCM.R")
    w = _perm(W, "EPCM.W")
    x = _perm(X, "EPCM.X")
    pending = _flag(PENDING, "EPCM.PENDING: added by EAUG, not yet accepted")
    modified = _flag(MODIFIED, "EPCM.MODIFIED: type changed by EMODT, not yet accepted")
    pr = _flag(PR, "EPCM.PR: permissions restricted by EMODPR, not yet accepted")
    blocked = _flag(BLOCKED, "EPCM.BLOCKED: no new translations (EBLOCK, ELDB)")

    @property
    def state_flags(self) -> int:
        """PENDING, MODIFIED and PR in SECINFO bit positions."""
        return (self.state & (PENDING | MODIFIED | PR)) << 3

    def secinfo_flags(self) -> int:
        """The SECINFO.FLAGS EWB saves: PT, RWX, PENDING, MODIFIED, PR."""
        return (int(self.pt) << 8) | self.perms | self.state_flags

    def __repr__(self) -> str:
        bits = "".join(c if self.perms & b else "-" for c, b in (("R", R), ("W", W), ("X", X)))
        state = [n for n in ("pending", "modified", "pr", "blocked") if getattr(self, n)]
        return f"EpcmEntry({self.pt.name} {bits} {' '.join(state)} lin={self.linaddr:#x})"


class Epcm(LoggedDict[EpcmEntry]):
    """EPC index -> entry, with a change log (`version`, `changed_since`) of the indices whose
    entry was added, removed or replaced. Field sets of entries are logged apart, in
    `ENTRY_CHANGES`. A check that read entries (the entry-check memo, the native engine's TLB
    re-check at entry) knows from the two which ones changed since without reading them again.
    """

    __slots__ = ()


# An entry stored at an index that holds none (every leaf that creates an entry checks that
# first): no check can hold a free index, so the store needs no log. A plain dict store.
insert_at_free_index: Callable[[Epcm, int, EpcmEntry], None] = dict.__setitem__
