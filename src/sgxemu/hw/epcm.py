"""The Enclave Page Cache Map: one entry per valid EPC page (SDM 38.19, Table 38-27).

An absent entry is an entry with VALID = 0. Entries are kept small (`__slots__`, flags as
separate fields so reads are plain attribute loads on the hot paths).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..arch.constants import PageType

if TYPE_CHECKING:
    from .secs import SecsState

# Sentinel epoch: no tracking cycle is owed for this page (loaded by ELDU/ELDB, or never changed).
TRACKED = -1


class EpcmEntry:
    """EPCM entry of a valid page. `secs` is ENCLAVESECS (the SECS itself for a PT_SECS page)."""

    __slots__ = (
        "pt",
        "r",
        "w",
        "x",
        "pending",
        "modified",
        "pr",
        "blocked",
        "secs",
        "linaddr",
        "epoch",
    )

    def __init__(
        self,
        pt: PageType,
        secs: SecsState | None,
        linaddr: int = 0,
        perms: int = 0,
    ) -> None:
        self.pt = pt
        self.r = bool(perms & 1)
        self.w = bool(perms & 2)
        self.x = bool(perms & 4)
        self.pending = False
        self.modified = False
        self.pr = False
        self.blocked = False
        self.secs = secs
        self.linaddr = linaddr  # ENCLAVEADDRESS
        # Hidden tracking reference [model, spec 6.4]: SECS epoch at the last EBLOCK/EMODPR/EMODT.
        self.epoch = TRACKED

    @property
    def perms(self) -> int:
        return self.r | (self.w << 1) | (self.x << 2)

    @perms.setter
    def perms(self, value: int) -> None:
        self.r = bool(value & 1)
        self.w = bool(value & 2)
        self.x = bool(value & 4)

    @property
    def state_flags(self) -> int:
        """PENDING, MODIFIED and PR in SECINFO bit positions."""
        return (self.pending << 3) | (self.modified << 4) | (self.pr << 5)

    def secinfo_flags(self) -> int:
        """The SECINFO.FLAGS EWB saves: PT, RWX, PENDING, MODIFIED, PR."""
        return (int(self.pt) << 8) | self.perms | self.state_flags

    def __repr__(self) -> str:
        bits = "".join(
            c if on else "-"
            for c, on in (("R", self.r), ("W", self.w), ("X", self.x))
        )
        state = [n for n in ("pending", "modified", "pr", "blocked") if getattr(self, n)]
        return f"EpcmEntry({self.pt.name} {bits} {' '.join(state)} lin={self.linaddr:#x})"
