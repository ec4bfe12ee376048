"""The net effect of a batch equals applying its changes one by one."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from transform.changes import net_changes
from transform.model import Op, RowChange

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
