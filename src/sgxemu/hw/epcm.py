"""The Enclave Page Cache Map: one entry per valid EPC page (SDM 38.19, Table 38-27).

An absent entry is an entry with VALID = 0. Entries are small (six slots; the flag bits are
packed into two small ints, which Python shares rather than allocates) because a large EPC has
millions of them; the SDM's field names are properties over those ints.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..arch.constants import PageType

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

    Every field set counts as a change of the `Epcm` holding the entry (its `version`).
    """

    __slots__ = ("pt", "perms", "state", "secs", "linaddr", "epoch", "_owner")
    pt: PageType
    perms: int
    state: int
    secs: SecsState | None
    linaddr: int
    epoch: int
    _owner: Epcm | None

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
            owner.version += 1
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


class Epcm(dict[int, EpcmEntry]):
    """EPC index -> entry, counting its changes in `version`: an entry added or removed, or any
    field of an entry it holds set. A check that read entries (the entry-check memo, the
    native engine's TLB re-check at entry) knows none changed since by comparing versions.
    """

    __slots__ = ("version",)

    def __init__(self) -> None:
        super().__init__()
        self.version = 0

    def __setitem__(self, index: int, entry: EpcmEntry) -> None:
        self.version += 1
        old = dict.get(self, index)
        if old is not None and old is not entry:
            _SET_OWNER(old, None)
        _SET_OWNER(entry, self)
        dict.__setitem__(self, index, entry)

    def __delitem__(self, index: int) -> None:
        self.version += 1
        _SET_OWNER(dict.__getitem__(self, index), None)
        dict.__delitem__(self, index)

    def pop(self, index: int, *default: Any) -> Any:
        self.version += 1
        entry = dict.pop(self, index, *default)
        if isinstance(entry, EpcmEntry):
            _SET_OWNER(entry, None)
        return entry

    def popitem(self) -> tuple[int, EpcmEntry]:
        self.version += 1
        index, entry = dict.popitem(self)
        _SET_OWNER(entry, None)
        return index, entry

    def setdefault(self, index: int, default: EpcmEntry | None = None) -> EpcmEntry:
        if index not in self:
            assert default is not None
            self[index] = default
        return dict.__getitem__(self, index)

    def update(self, *args: Any, **kwargs: Any) -> None:
        for index, entry in dict(*args, **kwargs).items():
            self[index] = entry

    def __ior__(self, other: Any) -> Epcm:  # type: ignore[override,misc]
        self.update(other)
        return self

    def clear(self) -> None:
        self.version += 1
        for entry in dict.values(self):
            _SET_OWNER(entry, None)
        dict.clear(self)
