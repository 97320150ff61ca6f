"""The host program's own memory as a process's memory (the preload library's `UserMemory`).

Under the preload library the emulated process *is* the host process: an untrusted linear
address is a host virtual address, and the "physical address" a PTE carries for an untrusted
page is the host page itself (identity), so the native engine maps host memory with
`mem_map_ptr` at the same addresses and enclave code reads and writes the host's stacks and
buffers directly. Only EPC pages have real page-table entries here (the driver installs them
with `map_frame`); every other page's entry is computed from the host's mapping of it, read
from the kernel (`PROCMAP_QUERY` on /proc/self/maps, Linux >= 6.11, else the text of
/proc/self/maps), so host page permissions are respected: a store to a read-only host page is
#PF with error code W|U|P (0x7), a load from an unmapped one #PF U (0x4), as on hardware.

`HostMm` is the matching `Mm`: model VMAs (the enclave mappings the driver knows) first, and
for any other address a VMA synthesized from the host's mapping, so the kernel model's fault
path and `get_user_pages` treat host memory the way Linux treats the process's own VMAs.

What the host kernel decides is not modelled again: populating anonymous pages, copy-on-write
and stack growth happen in the host when the engine touches the memory. Residency is not known,
so a host page that is mapped with some access right is always reported present.
"""

from __future__ import annotations

import bisect
import contextlib
import ctypes
import errno
import fcntl
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..arch.constants import PAGE_MASK, PAGE_SHIFT, PAGE_SIZE
from ..hw.memory import PTE_A, PTE_ADDR_MASK, PTE_P
from .mman import PROT_EXEC, PROT_READ, PROT_WRITE
from .usermem import pte_for
from .vma import VM_MAYEXEC, VM_MAYREAD, VM_MAYSHARE, VM_MAYWRITE, VM_SHARED, Mm, Vma

__all__ = ["HostMappings", "HostMemory", "HostMm", "host_prot"]

# PROCMAP_QUERY (include/uapi/linux/fs.h): _IOWR('f', 17, struct procmap_query), 104 bytes.
_PROCMAP_QUERY = 0xC068_6611
_QUERY = struct.Struct("<QQQQQQQQQIIIIQQ")
_Q_READ, _Q_WRITE, _Q_EXEC, _Q_SHARED = 0x1, 0x2, 0x4, 0x8


@dataclass(frozen=True, slots=True)
class HostRange:
    """One host mapping: [start, end), PROT_* bits, shared or private."""

    start: int
    end: int
    prot: int
    shared: bool


class HostMappings:
    """Looks up the host mapping of an address, with a small cache the caller invalidates.

    The cache holds every range looked up since the last `invalidate()`; the preload runtime
    invalidates it at every emulated ENCLU and after every host mapping change it forwards.
    """

    def __init__(self) -> None:
        self._fd = -1
        self._query_ok = True
        self._buf = bytearray(_QUERY.size)
        self._starts: list[int] = []
        self._ranges: list[HostRange] = []
        self._full = False  # the cache holds the whole of /proc/self/maps
        self.queries = 0  # kernel look-ups made (for tests and benchmarks)

    def invalidate(self) -> None:
        self._starts.clear()
        self._ranges.clear()
        self._full = False

    def close(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1

    def lookup(self, addr: int) -> HostRange | None:
        """The host mapping containing `addr`, or None."""
        starts = self._starts
        i = bisect.bisect_right(starts, addr) - 1
        if i >= 0 and addr < self._ranges[i].end:
            return self._ranges[i]
        if self._full:
            return None
        found = self._query(addr) if self._query_ok else None
        if not self._query_ok:
            self._load_all()
            return self.lookup(addr) if self._full else None
        if found is not None:
            j = bisect.bisect_left(starts, found.start)
            if j < len(starts) and starts[j] == found.start:
                self._ranges[j] = found
            else:
                starts.insert(j, found.start)
                self._ranges.insert(j, found)
        return found

    def _query(self, addr: int) -> HostRange | None:
        if self._fd < 0:
            self._fd = os.open("/proc/self/maps", os.O_RDONLY | os.O_CLOEXEC)
        buf = self._buf
        _QUERY.pack_into(buf, 0, _QUERY.size, 0, addr, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        self.queries += 1
        try:
            fcntl.ioctl(self._fd, _PROCMAP_QUERY, buf, True)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return None
            self._query_ok = False  # ENOTTY/EINVAL: a kernel older than 6.11
            return None
        _, _, _, start, end, flags, *_ = _QUERY.unpack_from(buf)
        prot = (
            (PROT_READ if flags & _Q_READ else 0)
            | (PROT_WRITE if flags & _Q_WRITE else 0)
            | (PROT_EXEC if flags & _Q_EXEC else 0)
        )
        return HostRange(start, end, prot, bool(flags & _Q_SHARED))

    def _load_all(self) -> None:
        """Fallback: parse the whole of /proc/self/maps into the cache."""
        self.queries += 1
        with open("/proc/self/maps", encoding="ascii", errors="replace") as f:
            text = f.read()
        self._starts.clear()
        self._ranges.clear()
        for line in text.splitlines():
            parts = line.split(None, 2)
            if len(parts) < 2:
                continue
            lo, _, hi = parts[0].partition("-")
            perms = parts[1]
            prot = (
                (PROT_READ if perms[0:1] == "r" else 0)
                | (PROT_WRITE if perms[1:2] == "w" else 0)
                | (PROT_EXEC if perms[2:3] == "x" else 0)
            )
            self._starts.append(int(lo, 16))
            self._ranges.append(HostRange(int(lo, 16), int(hi, 16), prot, perms[3:4] == "s"))
        self._full = True


def host_prot(addr: int) -> int | None:
    """PROT_* of the host mapping containing `addr` (None: unmapped). Uncached."""
    found = HostMappings().lookup(addr)
    return None if found is None else found.prot


class _EpcPtes(dict[int, int]):
    """The page table of a `HostMemory`: stored entries are EPC pages only.

    `get` answers for host pages too (computed from the host mapping), so the kernel model's
    page walks (`Thread._page`, `handle_mm_fault`) see host memory as present where the host
    maps it; storing an entry that maps a host page (the accessed bit a walk sets, the write
    bit `wp_page_reuse` sets) changes nothing, because the host's own page table is the truth.
    """

    def __init__(self, mem: HostMemory) -> None:
        super().__init__()
        self._mem = mem

    def get(self, key: int, default: Any = None) -> Any:
        pte = dict.get(self, key)
        if pte is not None:
            return pte
        host = self._mem.host_pte(key << PAGE_SHIFT)
        return host if host else default

    def __setitem__(self, key: int, pte: int) -> None:
        if self._mem.is_epc(pte & PTE_ADDR_MASK):
            dict.__setitem__(self, key, pte)


class HostMemory:
    """Page table + untrusted memory of the host process itself (an `AddressSpace`).

    `epc` is the host range of the EPC buffer (and any other host range enclave code must not
    see as untrusted memory): pages there read as not present.
    """

    host_memory = True  # Process skips the model's own vDSO page and thread stacks

    def __init__(
        self, epc_pa: tuple[int, int], hidden: Iterable[tuple[int, int]] = ()
    ) -> None:
        self._epc_lo, self._epc_hi = epc_pa
        self._hidden = sorted(hidden)
        self.maps = HostMappings()
        self.ptes: dict[int, int] = _EpcPtes(self)
        self._host_ptes: dict[int, int] = {}  # page number -> entry, until invalidate()

    # -- host pages --------------------------------------------------------------------------
    def is_epc(self, pa: int) -> bool:
        return self._epc_lo <= pa < self._epc_hi

    def invalidate(self) -> None:
        """Host mappings may have changed: look them up again."""
        self.maps.invalidate()
        self._host_ptes.clear()

    def _hidden_page(self, page: int) -> bool:
        return any(lo <= page < hi for lo, hi in self._hidden)

    def host_range(self, lin: int) -> HostRange | None:
        if self._hidden and self._hidden_page(lin & PAGE_MASK):
            return None
        return self.maps.lookup(lin)

    def host_pte(self, lin: int) -> int:
        """The entry of a host page: the page itself as frame, rights from its mapping."""
        key = lin >> PAGE_SHIFT
        pte = self._host_ptes.get(key)
        if pte is None:
            found = self.host_range(lin)
            pte = 0 if found is None else pte_for(lin & PAGE_MASK, found.prot)
            self._host_ptes[key] = pte
        return pte

    # -- the UserMemory interface -------------------------------------------------------------
    def map_anonymous(self, lin: int, size: int, prot: int) -> None:
        """The host kernel populates host pages itself: nothing to do."""

    def map_frame(self, lin: int, pa: int, prot: int) -> None:
        dict.__setitem__(self.ptes, lin >> PAGE_SHIFT, pte_for(pa, prot))

    def _pages(self, lin: int, size: int) -> list[int]:
        first = lin >> PAGE_SHIFT
        last = (lin + size + PAGE_SIZE - 1) >> PAGE_SHIFT
        if last - first <= len(self.ptes):
            return [k for k in range(first, last) if dict.__contains__(self.ptes, k)]
        return [k for k in self.ptes if first <= k < last]

    def unmap(self, lin: int, size: int) -> None:
        for key in self._pages(lin, size):
            dict.pop(self.ptes, key, None)

    def zap(self, lin: int) -> None:
        dict.pop(self.ptes, lin >> PAGE_SHIFT, None)

    def protect(self, lin: int, size: int, prot: int) -> None:
        for key in self._pages(lin, size):
            pte = dict.__getitem__(self.ptes, key)
            dict.__setitem__(self.ptes, key, pte_for(pte & PTE_ADDR_MASK, prot))

    def has_frame(self, lin: int) -> bool:
        return self.host_range(lin) is not None

    def translate(self, lin: int) -> int:
        key = lin >> PAGE_SHIFT
        pte = dict.get(self.ptes, key)
        if pte is not None:
            if pte & PTE_P and not pte & PTE_A:
                pte |= PTE_A  # the walk sets the accessed bit (the reclaimer ages it)
                dict.__setitem__(self.ptes, key, pte)
            return pte
        pte = self._host_ptes.get(key)
        return pte if pte is not None else self.host_pte(lin)

    def read(self, lin: int, size: int) -> bytes:
        return ctypes.string_at(lin, size)

    def write(self, lin: int, data: bytes) -> None:
        ctypes.memmove(lin, bytes(data), len(data))

    def close(self) -> None:
        dict.clear(self.ptes)
        self.maps.close()


class HostMm(Mm):
    """An `Mm` whose gaps are the host's own mappings (synthesized read-only views)."""

    def find_vma(self, addr: int) -> Vma | None:
        vma = super().find_vma(addr)
        if vma is not None and vma.start <= addr:
            return vma
        host = self._host_vma(addr)
        return host if host is not None else vma

    def vma_lookup(self, addr: int) -> Vma | None:
        vma = super().vma_lookup(addr)
        if vma is not None:
            return vma
        return self._host_vma(addr)

    def _host_vma(self, addr: int) -> Vma | None:
        mem = self.mem
        if not isinstance(mem, HostMemory):
            return None
        found = mem.host_range(addr)
        if found is None:
            return None
        # The model's own VMAs cut the host range (an enclave VMA inside a host reservation).
        start, end = found.start, found.end
        for v in self.vmas:
            if v.end <= addr:
                start = max(start, v.end)
            elif v.start > addr:
                end = min(end, v.start)
                break
        flags = found.prot | VM_MAYREAD | VM_MAYWRITE | VM_MAYEXEC
        if found.shared:
            flags |= VM_SHARED | VM_MAYSHARE
        return Vma(start, end, flags, name="[host]", mm=self)
