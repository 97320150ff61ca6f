"""The change counters the entry checks rely on: `Epcm.version` and `PageTable.version`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from sgxemu.arch.constants import PageType
from sgxemu.hw.changelog import LOG_LIMIT
from sgxemu.hw.epcm import ENTRY_CHANGES, PENDING, Epcm, EpcmEntry, insert_at_free_index
from sgxemu.hw.memory import FlatMemory, PageTable, page_table_of
from sgxemu.linux.usermem import UserMemory


def _entry() -> EpcmEntry:
    return EpcmEntry(PageType.PT_REG, None, 0x1000, 3)


PAGE_TABLE_CHANGES: list[tuple[str, Callable[[PageTable], Any]]] = [
    ("setitem", lambda t: t.__setitem__(1, 7)),
    ("setitem-same-value", lambda t: t.__setitem__(0, 5)),
    ("delitem", lambda t: t.__delitem__(0)),
    ("pop", lambda t: t.pop(0)),
    ("pop-absent", lambda t: t.pop(9, None)),
    ("popitem", lambda t: t.popitem()),
    ("setdefault", lambda t: t.setdefault(2, 1)),
    ("update", lambda t: t.update({3: 1})),
    ("ior", lambda t: t.__ior__({3: 1})),
    ("clear", lambda t: t.clear()),
]


@pytest.mark.parametrize(("case", "change"), PAGE_TABLE_CHANGES, ids=[c[0] for c in PAGE_TABLE_CHANGES])
def test_every_page_table_mutation_counts(case: str, change: Callable[[PageTable], Any]) -> None:
    table = PageTable()
    dict.__setitem__(table, 0, 5)
    change(table)
    assert table.version == 1


def test_page_table_reads_do_not_count() -> None:
    table = PageTable()
    table[0] = 5
    assert (table.get(0), table[0], 0 in table, list(table), len(table)) == (5, 5, True, [0], 1)
    assert table.version == 1


def test_address_spaces_offer_their_page_table() -> None:
    flat = FlatMemory(0x8000_0000, 0x8010_0000)
    assert page_table_of(flat) is flat.overrides
    flat.set_pte(0x1000, 0)
    assert flat.overrides.version == 1
    umem = UserMemory(arena_size=1 << 20)
    assert page_table_of(umem) is umem.ptes
    umem.map_anonymous(0x10000, 0x1000, 3)
    before = umem.ptes.version
    umem.translate(0x10000)  # the walk sets the accessed bit: a change
    assert umem.ptes.version == before + 1
    umem.translate(0x10000)  # nothing left to set
    assert umem.ptes.version == before + 1
    umem.close()
    assert page_table_of(object()) is None


EPCM_CHANGES: list[tuple[str, Callable[[Epcm], Any]]] = [
    ("add", lambda m: m.__setitem__(2, _entry())),
    ("replace", lambda m: m.__setitem__(1, _entry())),
    ("delete", lambda m: m.__delitem__(1)),
    ("pop", lambda m: m.pop(1)),
    ("popitem", lambda m: m.popitem()),
    ("setdefault-new", lambda m: m.setdefault(2, _entry())),
    ("update", lambda m: m.update({2: _entry()})),
    ("clear", lambda m: m.clear()),
]


@pytest.mark.parametrize(("case", "change"), EPCM_CHANGES, ids=[c[0] for c in EPCM_CHANGES])
def test_every_epcm_change_counts(case: str, change: Callable[[Epcm], Any]) -> None:
    epcm = Epcm()
    epcm[1] = _entry()
    before = epcm.version
    change(epcm)
    assert epcm.version == before + 1


FIELD_SETS: list[tuple[str, Callable[[EpcmEntry], Any]]] = [
    ("perms", lambda e: setattr(e, "perms", 1)),
    ("state", lambda e: setattr(e, "state", 8)),
    ("pt", lambda e: setattr(e, "pt", PageType.PT_TRIM)),
    ("secs", lambda e: setattr(e, "secs", None)),
    ("linaddr", lambda e: setattr(e, "linaddr", 0)),
    ("epoch", lambda e: setattr(e, "epoch", 4)),
    ("flag-property", lambda e: setattr(e, "blocked", True)),
    ("perm-property", lambda e: setattr(e, "x", True)),
]


@pytest.mark.parametrize(("case", "change"), FIELD_SETS, ids=[c[0] for c in FIELD_SETS])
def test_every_entry_field_set_is_logged(case: str, change: Callable[[EpcmEntry], Any]) -> None:
    epcm = Epcm()
    e = epcm[1] = _entry()
    other = _entry()
    v, before = epcm.version, ENTRY_CHANGES.version
    change(e)
    assert set(ENTRY_CHANGES.changed_since(before) or ()) == {id(e)}
    assert epcm.version == v  # (the table's own log: entries added, removed, replaced)
    assert not ENTRY_CHANGES.unchanged_since(before, frozenset({id(e)}))
    assert ENTRY_CHANGES.unchanged_since(before, frozenset({id(other)}))


def test_a_new_entry_logs_nothing() -> None:
    before = ENTRY_CHANGES.version
    _entry()
    assert ENTRY_CHANGES.version == before


def test_a_new_entry_has_its_fields() -> None:
    e = EpcmEntry(PageType.PT_TCS, None, 0x5000, 0xF)
    assert (e.pt, e.perms, e.state, e.secs, e.linaddr, e.epoch) == (PageType.PT_TCS, 7, 0, None, 0x5000, -1)


def test_change_log_names_the_keys_changed_since_a_version() -> None:
    table = PageTable()
    table[1] = 5
    v = table.version
    table[2] = 6
    table.pop(1)
    assert table.changed_since(v) == [2, 1]
    assert table.changed_since(table.version) == []
    assert table.unchanged_since(v, frozenset({3, 4}))
    assert not table.unchanged_since(v, frozenset({1}))
    assert table.unchanged_since(table.version, frozenset({1}))


def test_change_log_forgets_old_versions_but_never_lies() -> None:
    table = PageTable()
    for i in range(LOG_LIMIT + 1):
        table[i] = i
    assert table.version == LOG_LIMIT + 1
    assert table.changed_since(0) is None  # trimmed: unknown
    assert not table.unchanged_since(0, frozenset({10**9}))
    v = table.version - 3
    assert table.changed_since(v) == [LOG_LIMIT - 2, LOG_LIMIT - 1, LOG_LIMIT]
    w = table.version
    table.clear()
    assert table.changed_since(w) is None and table.changed_since(table.version) == []


def test_epcm_log_names_the_indices_of_entries_added_and_removed() -> None:
    epcm = Epcm()
    epcm[7] = _entry()
    epcm[9] = _entry()
    v = epcm.version
    epcm[7] = _entry()  # replaced
    del epcm[9]
    assert epcm.changed_since(v) == [7, 9]
    assert epcm.setdefault(7) is epcm[7] and epcm.version == v + 2


def test_a_free_index_refilled_is_seen_through_its_removal() -> None:
    """Leaves store new entries at free indices without a log entry: a check that held the
    index saw it occupied, so the removal that freed it is in the log."""
    epcm = Epcm()
    epcm[3] = _entry()
    v = epcm.version
    del epcm[3]
    insert_at_free_index(epcm, 3, _entry())
    assert epcm.changed_since(v) == [3] and epcm.version == v + 1
    assert not epcm.unchanged_since(v, frozenset({3}))


def test_a_new_entry_takes_its_state() -> None:
    e = EpcmEntry(PageType.PT_REG, None, 0x2000, 3, PENDING)
    assert (e.state, e.pending, type(e)) == (PENDING, True, EpcmEntry)
