"""The Enclave Page Cache Map: one entry per valid EPC page (SDM 38.19, Table 38-27).

An absent entry is an entry with VALID = 0. Entries are small (six slots; the flag bits are
packed into two small ints, which Python shares rather than allocates) because a large EPC has
millions of them; the SDM's field names are properties over those ints.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..arch.constants import PageType
from .changelog import LoggedDict

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


class EpcmEntry:
    """EPCM entry of a valid page. `secs` is ENCLAVESECS (the SECS itself for a PT_SECS page).

    Every field set counts as a change of the `Epcm` holding the entry (its change log).
    """

    __slots__ = ("pt", "perms", "state", "secs", "linaddr", "epoch", "_owner", "_index")
    pt: PageType
    perms: int
    state: int
    secs: SecsState | None
    linaddr: int
    epoch: int
    _owner: Epcm | None
    _index: int  # where `_owner` holds it

    def __init__(
        self,
        pt: PageType,
        secs: SecsState | None,
        linaddr: int = 0,
        perms: int = 0,
    ) -> None:
        # (Slot stores that skip __setattr__: a new entry belongs to no Epcm yet.)
        _SET_PT(self, pt)
        _SET_PERMS(self, perms & 7)  # R, W, X
        _SET_STATE(self, 0)  # PENDING, MODIFIED, PR, BLOCKED
        _SET_SECS(self, secs)
        _SET_LINADDR(self, linaddr)  # ENCLAVEADDRESS
        # Hidden tracking reference [model, spec 6.4]: SECS epoch at the last EBLOCK/EMODPR/EMODT.
        _SET_EPOCH(self, TRACKED)
        _SET_OWNER(self, None)

    def __setattr__(self, name: str, value: Any) -> None:
        owner = self._owner
        if owner is not None:
            owner.note(self._index)
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


_SLOTS: dict[str, Any] = dict(EpcmEntry.__dict__)  # the slot descriptors
_SET_PT = _SLOTS["pt"].__set__
_SET_PERMS = _SLOTS["perms"].__set__
_SET_STATE = _SLOTS["state"].__set__
_SET_SECS = _SLOTS["secs"].__set__
_SET_LINADDR = _SLOTS["linaddr"].__set__
_SET_EPOCH = _SLOTS["epoch"].__set__
_SET_OWNER = _SLOTS["_owner"].__set__
_SET_INDEX = _SLOTS["_index"].__set__


class Epcm(LoggedDict[EpcmEntry]):
    """EPC index -> entry, with a change log (`version`, `changed_since`) of the indices whose
    entry was added, removed or replaced, or had a field set (the entry notes it). A check
    that read entries (the entry-check memo, the native engine's TLB re-check at entry) knows
    which ones changed since without reading them again.
    """

    __slots__ = ()

    def __setitem__(self, index: int, entry: EpcmEntry) -> None:
        old = dict.get(self, index)
        if old is not None and old is not entry:
            _SET_OWNER(old, None)
        _SET_OWNER(entry, self)
        _SET_INDEX(entry, index)
        super().__setitem__(index, entry)

    def __delitem__(self, index: int) -> None:
        _SET_OWNER(dict.__getitem__(self, index), None)
        super().__delitem__(index)

    def pop(self, index: int, *default: Any) -> Any:
        entry = super().pop(index, *default)
        if isinstance(entry, EpcmEntry):
            _SET_OWNER(entry, None)
        return entry

    def clear(self) -> None:
        for entry in dict.values(self):
            _SET_OWNER(entry, None)
        super().clear()
