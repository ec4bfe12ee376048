"""The net effect of a batch equals applying its changes one by one; partial row images filled from
the source's current rows end where the source is."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from transform.changes import carried, filled, net_changes
from transform.model import Op, RowChange
from transform.schema import Column, Table

KEYS = st.integers(0, 5)


@st.composite
def change_sequences(draw: st.DrawFn) -> list[RowChange]:
    """Valid sequences against an evolving table of (id, value) rows."""
    state: dict[int, tuple[Any, ...]] = {}
    out = []
    for _ in range(draw(st.integers(0, 30))):
        key = draw(KEYS)
        value = draw(st.integers(0, 100))
        if key not in state:
            row = (key, value)
            out.append(RowChange("t", Op.INSERT, None, row))
            state[key] = row
        elif draw(st.booleans()):
            out.append(RowChange("t", Op.DELETE, state.pop(key), None))
        else:
            new_key = draw(KEYS)
            if new_key != key and new_key in state:
                continue
            before = state.pop(key)
            after = (new_key, value)
            out.append(RowChange("t", Op.UPDATE, before, after))
            state[new_key] = after
    return out


def apply_one_by_one(start: dict[int, tuple[Any, ...]], changes: list[RowChange]) -> dict[int, tuple[Any, ...]]:
    state = dict(start)
    for ch in changes:
        if ch.before is not None:
            del state[ch.before[0]]
        if ch.after is not None:
            state[ch.after[0]] = ch.after
    return state


@given(change_sequences())
def test_net_effect_equals_sequential_application(changes: list[RowChange]) -> None:
    final = apply_one_by_one({}, changes)
    net = net_changes(changes, (0,))
    assert not set(net.upserts) & net.deletes
    state: dict[int, tuple[Any, ...]] = {}
    # Applying the net effect to any state that held the batch's starting rows gives the same end.
    for key in net.deletes:
        state.pop(key[0], None)
    for key, row in net.upserts.items():
        state[key[0]] = row
    assert state == final


def test_primary_key_change_deletes_the_old_key() -> None:
    net = net_changes([RowChange("t", Op.UPDATE, (1, "a"), (2, "a"))], (0,))
    assert net.deletes == {(1,)} and net.upserts == {(2,): (2, "a")}


def test_delete_then_reinsert_is_an_upsert() -> None:
    net = net_changes([RowChange("t", Op.DELETE, (1, "a"), None), RowChange("t", Op.INSERT, None, (1, "b"))], (0,))
    assert net.deletes == set() and net.upserts == {(1,): (1, "b")}


T = Table("t", (Column("id", "int", "int", False), Column("v", "int", "int")), ("id",))


@given(change_sequences(), st.data())
def test_partial_images_filled_from_the_source_end_where_the_source_is(changes: list[RowChange],
                                                                        data: st.DataObject) -> None:
    """Some after images lack their value (another session's binlog_row_image MINIMAL): filled
    from the source's current rows, which are where the whole history ends, applying them one by
    one ends there too; nothing absent is left, and a row gone from the source is never upserted."""
    final = apply_one_by_one({}, changes)
    partial = [RowChange("t", ch.op, ch.before, (ch.after[0], None), absent=("v",))
               if ch.after is not None and data.draw(st.booleans()) else ch for ch in changes]
    current = {(k,): (row[1],) for k, row in final.items()}
    out = filled(partial, {"t": T}, {"t": (["v"], current)})
    state: dict[int, tuple[Any, ...]] = {}
    for ch in out:  # as staging applies them: a delete of a row not there is nothing
        if ch.before is not None:
            state.pop(ch.before[0], None)
        if ch.after is not None:
            state[ch.after[0]] = ch.after
    assert state == final
    assert not any(ch.absent for ch in out)
    assert all(ch.after is None or (ch.after[0],) in current for ch, was in zip(out, partial, strict=True)
               if was.absent)


def test_fill_leaves_what_it_could_not_read() -> None:
    """A table the source could not be read for (a column dropped since), a change already
    dead-lettered, and a whole image stay as they are; a column not read stays absent."""
    wide = Table("w", (*T.columns, Column("x", "int", "int")), ("id",))
    kept = [RowChange("t", Op.INSERT, None, (1, None), absent=("v",)),
            RowChange("w", Op.INSERT, None, (1, 5, None), error="bad", absent=("x",)),
            RowChange("w", Op.INSERT, None, (2, 6, 7))]
    assert filled(kept, {"t": T, "w": wide}, {"w": (["x"], {(1,): (3,), (2,): (4,)})}) == kept
    part = RowChange("w", Op.UPDATE, (1, None, None), (1, None, 9), absent=("v", "x"))
    assert filled([part], {"w": wide}, {"w": (["v"], {(1,): (8,)})}) == [
        RowChange("w", Op.UPDATE, (1, None, None), (1, 8, 9), absent=("x",))]


W = Table("w", (Column("id", "int", "int", False), Column("v", "int", "int"), Column("c", "int", "int")), ("id",))


def test_columns_gone_from_the_source_keep_the_rows_previous_value() -> None:
    """What a fill could not read (renamed or dropped since) is the row's previous value: the
    batch's own last image of the key, else staging's row; a row deleted before in the batch, or
    not in staging, keeps NULL."""
    staged = {"w": {(1,): (1, 0, 10), (3,): (3, 0, 30)}}
    changes = [
        RowChange("w", Op.UPDATE, (1, 0, None), (1, 5, None), absent=("c",)),  # staging's 10
        RowChange("w", Op.INSERT, None, (2, 1, 21)),
        RowChange("w", Op.UPDATE, (2, 1, None), (2, 6, None), absent=("c",)),  # the batch's 21
        RowChange("w", Op.DELETE, (3, 0, 30), None),
        RowChange("w", Op.INSERT, None, (3, 9, None), absent=("c",)),  # deleted before: unknown
        RowChange("w", Op.UPDATE, (4, 0, None), (4, 1, None), absent=("c",)),  # nowhere: unknown
        RowChange("w", Op.UPDATE, (1, 5, None), (7, 5, None), absent=("c",)),  # a key change: the old key's row
    ]
    out = carried(changes, {"w": W}, staged)
    assert [ch.after for ch in out] == [(1, 5, 10), (2, 1, 21), (2, 6, 21), None, (3, 9, None), (4, 1, None),
                                        (7, 5, 10)]
    assert [ch.absent for ch in out] == [(), (), (), (), ("c",), ("c",), ()]
