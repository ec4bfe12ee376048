"""Reduce a batch of row changes to the net effect per primary key (pure).

Applying the net effect (final row image per key, or a delete) is idempotent: applying it twice,
or on top of a state that already holds part of it, ends in the same state. That is what lets the
writer apply a batch set-based (COPY into a temporary table, then one merge) while keeping the
order of changes within the batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from transform.model import Op, RowChange
from transform.schema import Table

Key = tuple[Any, ...]
Row = tuple[Any, ...]


@dataclass(frozen=True)
class NetChanges:
    """The net effect of a batch on one table: rows to upsert and keys to delete (disjoint)."""

    upserts: dict[Key, Row]
    deletes: set[Key]

    @property
    def keys(self) -> set[Key]:
        return set(self.upserts) | self.deletes


def net_changes(changes: Iterable[RowChange], key_indexes: tuple[int, ...]) -> NetChanges:
    """The final state per key after ``changes`` (of one table), applied in order."""
    state: dict[Key, Row | None] = {}
    for ch in changes:
        if ch.op is not Op.INSERT:
            assert ch.before is not None
            state[tuple(ch.before[i] for i in key_indexes)] = None
        if ch.op is not Op.DELETE:
            assert ch.after is not None
            state[tuple(ch.after[i] for i in key_indexes)] = ch.after
    upserts = {k: r for k, r in state.items() if r is not None}
    deletes = {k for k, r in state.items() if r is None}
    return NetChanges(upserts, deletes)


def deletion(table: Table, key: Sequence[Any]) -> RowChange:
    """A delete of the row with primary key ``key`` when nothing else of it is known (its before
    image holds the key; a delete needs no more: star deltas read the current fact)."""
    before: list[Any] = [None] * len(table.columns)
    for i, v in zip(table.key_indexes(), key, strict=True):
        before[i] = v
    return RowChange(table.name, Op.DELETE, tuple(before), None)


def filled(changes: Sequence[RowChange], tables: Mapping[str, Table],
           values: Mapping[str, tuple[Sequence[str], Mapping[Key, Row]]],
           refused: Mapping[str, Mapping[Key, str]] | None = None) -> list[RowChange]:
    """``changes`` with their ``absent`` columns set from the source's current rows: ``values``
    per table, the columns read and those columns' values by primary key. A change whose row the
    source no longer has becomes a delete of its row (a later change in the binlog removed the row,
    so the end state is the same, and nothing half-known is applied meanwhile). Changes of tables
    not in ``values`` (nothing could be read) stay as they are. A change whose row the source
    has with a value staging can't hold (``refused``: the reason by key) can't be applied: it is
    dead-lettered with that reason, and staging keeps the row as it was (#30, item 13)."""
    out: list[RowChange] = []
    for ch in changes:
        read = values.get(ch.table)
        if not ch.absent or ch.after is None or ch.error is not None or read is None:
            out.append(ch)
            continue
        table = tables[ch.table]
        keys = table.key_indexes()
        key = tuple(ch.after[i] for i in keys)
        why = (refused or {}).get(ch.table, {}).get(key)
        if why is not None:
            out.append(RowChange(ch.table, ch.op, None, None, error=f"filling the columns its image lacks: {why}",
                                 raw=repr(dict(zip(table.column_names, ch.after, strict=True)))[:10000], key=key))
            continue
        current = read[1].get(key)
        if current is None:
            image = ch.before if ch.before is not None else ch.after
            out.append(deletion(table, [image[i] for i in keys]))
            continue
        row = list(ch.after)
        names = table.column_names
        for name, v in zip(read[0], current, strict=True):
            if name in ch.absent:
                row[names.index(name)] = v
        out.append(RowChange(ch.table, ch.op, ch.before, tuple(row),
                             absent=tuple(n for n in ch.absent if n not in read[0])))
    return out


def carried(changes: Sequence[RowChange], tables: Mapping[str, Table],
            staged: Mapping[str, Mapping[Key, Row]]) -> list[RowChange]:
    """``changes`` whose ``absent`` columns the source can't give any more (a later statement
    renamed or dropped them: :func:`filled` leaves them absent) with the values their rows had
    before: a partial image's absent column was not set by its statement, so its value is the
    row's previous one: the batch's own last image of that key, else ``staged`` (staging's rows
    by key, before the batch). Writing NULL there lost a renamed column's values (#30, item 7).
    A row known nowhere (deleted before in the batch, or not in staging) keeps NULL."""
    last: dict[tuple[str, Key], Row | None] = {}  # None: deleted in the batch
    out: list[RowChange] = []
    for ch in changes:
        table = tables.get(ch.table)
        if table is None or ch.error is not None:
            out.append(ch)
            continue
        picks = table.key_indexes()
        if ch.absent and ch.after is not None:
            image = ch.before if ch.before is not None else ch.after
            was = (ch.table, tuple(image[i] for i in picks))
            prev = last[was] if was in last else staged.get(ch.table, {}).get(was[1])
            if prev is not None:
                names = table.column_names
                row = list(ch.after)
                for name in ch.absent:
                    row[names.index(name)] = prev[names.index(name)]
                ch = dataclasses.replace(ch, after=tuple(row), absent=())
        if ch.before is not None:
            last[(ch.table, tuple(ch.before[i] for i in picks))] = None
        if ch.after is not None:
            last[(ch.table, tuple(ch.after[i] for i in picks))] = ch.after
        out.append(ch)
    return out
