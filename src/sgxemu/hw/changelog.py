"""Change logs: how many times a table changed, and which keys, for checks that must know
whether what they read before is still as it was (the entry-check memo, the native engine's
TLB re-check at entry).

`version` counts every change (even one that stores the same value); `changed_since(v)` lists
the keys changed after version `v`, as long as the log reaches back that far. Reads cost
nothing more than a dict's; a change costs an append.
"""

from __future__ import annotations

from collections.abc import Set as AbstractSet
from typing import Any, TypeVar

LOG_LIMIT = 1024  # keys kept; an older version reads as "anything may have changed"

_V = TypeVar("_V")


class LoggedDict(dict[int, _V]):
    """A dict of int keys whose every mutation is logged (`note`)."""

    __slots__ = ("version", "_log", "_log_base")

    def __init__(self) -> None:
        super().__init__()
        self.version = 0
        self._log: list[int] = []  # the keys changed, oldest first
        self._log_base = 0  # the version before the change _log[0] records

    def note(self, key: int) -> None:
        """One change of `key`."""
        self.version += 1
        log = self._log
        log.append(key)
        if len(log) > LOG_LIMIT:
            self._trim()

    def _trim(self) -> None:
        del self._log[: LOG_LIMIT // 2]
        self._log_base += LOG_LIMIT // 2

    def changed_since(self, version: int) -> list[int] | None:
        """The keys changed after `version` (with repeats), or None when the log no longer
        reaches back to it."""
        i = version - self._log_base
        return self._log[i:] if i >= 0 else None

    def unchanged_since(self, version: int, keys: AbstractSet[int]) -> bool:
        """None of `keys` changed after `version` (False when the log cannot tell)."""
        if version == self.version:
            return True
        i = version - self._log_base
        return i >= 0 and keys.isdisjoint(self._log[i:])

    # -- every mutation of the dict, noted --------------------------------------------------
    def __setitem__(self, key: int, value: _V) -> None:
        self.version += 1  # (`note`, inlined: every PTE store comes here)
        log = self._log
        log.append(key)
        if len(log) > LOG_LIMIT:
            self._trim()
        dict.__setitem__(self, key, value)

    def __delitem__(self, key: int) -> None:
        self.version += 1  # (`note`, inlined: EWB and EREMOVE come here)
        log = self._log
        log.append(key)
        if len(log) > LOG_LIMIT:
            self._trim()
        dict.__delitem__(self, key)

    def pop(self, key: int, *default: Any) -> Any:
        self.note(key)
        return dict.pop(self, key, *default)

    def popitem(self) -> tuple[int, _V]:
        key = next(reversed(self))  # (the item dict.popitem takes)
        return key, self.pop(key)

    def setdefault(self, key: int, default: Any = None) -> Any:
        if key not in self:
            self[key] = default
        return dict.__getitem__(self, key)

    def update(self, *args: Any, **kwargs: Any) -> None:
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def __ior__(self, other: Any) -> LoggedDict[_V]:  # type: ignore[override,misc]
        self.update(other)
        return self

    def clear(self) -> None:
        """A change of every key: the log restarts (older versions read as unknown)."""
        self.version += 1
        self._log.clear()
        self._log_base = self.version
        dict.clear(self)


class ChangeLog(LoggedDict[None]):
    """A change log with no table: keys are noted by its owner (`note`), nothing is stored."""

    __slots__ = ()
