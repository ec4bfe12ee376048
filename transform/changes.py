"""Reduce a batch of row changes to the net effect per primary key (pure).

Applying the net effect (final row image per key, or a delete) is idempotent: applying it twice,
or on top of a state that already holds part of it, ends in the same state. That is what lets the
writer apply a batch set-based (COPY into a temporary table, then one merge) while keeping the
order of changes within the batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
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
