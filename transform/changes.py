"""Reduce a batch of row changes to the net effect per primary key (pure).

Applying the net effect (final row image per key, or a delete) is idempotent: applying it twice,
or on top of a state that already holds part of it, ends in the same state. That is what lets the
writer apply a batch set-based (COPY into a temporary table, then one merge) while keeping the
order of changes within the batch.
"""

from __future__ import annotations

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
           values: Mapping[str, tuple[Sequence[str], Mapping[Key, Row]]]) -> list[RowChange]:
    """``changes`` with their ``absent`` columns set from the source's current rows: ``values``
    per table, the columns read and those columns' values by primary key. A change whose row the
    source no longer has becomes a delete of its row (a later change in the binlog removed the row,
    so the end state is the same, and nothing half-known is applied meanwhile). Changes of tables
    not in ``values`` (nothing could be read) stay as they are."""
    out: list[RowChange] = []
    for ch in changes:
        read = values.get(ch.table)
        if not ch.absent or ch.after is None or ch.error is not None or read is None:
            out.append(ch)
            continue
        table = tables[ch.table]
        keys = table.key_indexes()
        current = read[1].get(tuple(ch.after[i] for i in keys))
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
