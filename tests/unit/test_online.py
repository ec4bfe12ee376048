"""Online copies' decisions without I/O: which changes a fenced chunk holds already, what provably
ends by a chunk's position, and the gate's hand-over between copier and applier."""

from __future__ import annotations

import threading
import time

from hypothesis import given
from hypothesis import strategies as st

from loader.online import SIGNAL_TABLE, Chunk, ChunkGate, Fence, Window, ends_by, fenced, fenced_item, watermarks
from transform.model import Op, Position, RowChange, SchemaChange, TxnChunk

P = Position("mysql-bin.000002", 500)
KEYS = {"items": [0]}


def ins(k: int) -> RowChange:
    return RowChange("items", Op.INSERT, None, (k, "x"))


def upd(a: int, b: int) -> RowChange:
    return RowChange("items", Op.UPDATE, (a, "x"), (b, "y"))


def dele(k: int) -> RowChange:
    return RowChange("items", Op.DELETE, (k, "x"), None)


def test_a_fence_holds_its_range_and_leaves_the_rest() -> None:
    fence = Fence("items", P, (10,), (20,))
    kept = fenced((ins(5), ins(10), upd(15, 15), dele(19), dele(20), RowChange("other", Op.INSERT, None, (12,))),
                  [fence], {**KEYS, "other": [0]})
    assert kept == (ins(5), dele(20), RowChange("other", Op.INSERT, None, (12,)))
    assert fenced((ins(1),), [Fence("items", P, None, None)], KEYS) == ()


def test_a_primary_key_change_is_judged_as_a_delete_and_an_insert() -> None:
    fence = Fence("items", P, (10,), (20,))
    assert fenced((upd(15, 30),), [fence], KEYS) == (RowChange("items", Op.INSERT, None, (30, "y")),)
    assert fenced((upd(30, 15),), [fence], KEYS) == (RowChange("items", Op.DELETE, (30, "x"), None),)
    assert fenced((upd(12, 18),), [fence], KEYS) == ()
    bad = RowChange("items", Op.INSERT, None, None, error="no PostgreSQL form", key=(12,))
    assert fenced((bad,), [fence], KEYS) == (bad,), "a dead letter is recorded whatever the range"


def test_only_whole_applied_transactions_are_fenced_held_xa_rows_wait_for_their_commit() -> None:
    fence = Fence("items", P, None, None)
    by_p = Position("mysql-bin.000002", 400)
    whole = TxnChunk((ins(1), RowChange("other", Op.INSERT, None, (1,))), by_p)
    assert fenced_item(whole, [fence], KEYS).changes == (RowChange("other", Op.INSERT, None, (1,)),)
    slice_ = TxnChunk((ins(1),), None)
    assert fenced_item(slice_, [fence], KEYS) is slice_, "read where unknown: not provably by P"
    # a slice read before P: its transaction's events are contiguous and P is a boundary (#30 item 5)
    assert fenced_item(TxnChunk((ins(1),), None, read_at=by_p), [fence], KEYS).changes == ()
    prepared = TxnChunk((ins(1),), by_p, hold=True, xa_prepared="x1")
    assert fenced_item(prepared, [fence], KEYS) is prepared, "held until its XA COMMIT, judged then"
    held_slice = TxnChunk((ins(1),), None, hold=True, read_at=by_p)
    assert fenced_item(held_slice, [fence], KEYS) is held_slice
    assert fenced_item(whole, [], KEYS) is whole


@given(st.lists(st.integers(0, 40), min_size=1, max_size=30), st.integers(0, 40), st.integers(0, 40))
def test_fenced_keeps_exactly_the_changes_outside_every_range(keys: list[int], lo: int, span: int) -> None:
    fences = [Fence("items", P, (lo,), (lo + span,)), Fence("items", P, None, (3,))]
    kept = fenced(tuple(ins(k) for k in keys), fences, KEYS)
    assert [c.after[0] for c in kept if c.after] == [k for k in keys if not (lo <= k < lo + span or k < 3)]


def test_only_what_carries_its_end_at_or_before_p_provably_ends_by_it() -> None:
    before, after = Position("mysql-bin.000002", 499), Position("mysql-bin.000003", 4)
    assert ends_by(TxnChunk((), before), P) and ends_by(TxnChunk((), P), P)
    assert not ends_by(TxnChunk((), after), P)
    assert not ends_by(TxnChunk((ins(1),), None), P), "a slice read where unknown"
    assert ends_by(TxnChunk((ins(1),), None, read_at=before), P), "a slice read before P: its transaction too"
    assert not ends_by(TxnChunk((ins(1),), None, read_at=after), P)
    assert not ends_by(TxnChunk((ins(1),), None, hold=True, read_at=before), P), "XA PREPARE's rows"
    assert ends_by(SchemaChange("ALTER TABLE items ADD c INT", "alter", before, 0.0, ()), P)
    assert not ends_by(SchemaChange("ALTER TABLE items ADD c INT", "alter", after, 0.0, ()), P)


def chunk(p: Position) -> Chunk:
    return Chunk("items", p, ("id", "grp"), None, None, None, ((1, "a"),))


def test_the_gate_holds_the_applier_before_what_may_end_past_p_until_the_chunk_comes() -> None:
    gate, stop = ChunkGate(wait_seconds=5), threading.Event()
    taken, results = threading.Event(), []
    by_p = TxnChunk((ins(2),), Position("mysql-bin.000002", 400))
    past_p = TxnChunk((ins(3),), Position("mysql-bin.000002", 900))

    def copier() -> None:
        results.append(gate.request())
        gate.open(P)
        taken.wait(5)  # the chunk comes only once the applier has taken what ends by P
        ticket = gate.deliver(chunk(P))
        results.append(ticket is not None and gate.wait_applied(ticket, stop))

    t = threading.Thread(target=copier)
    t.start()
    deadline = time.monotonic() + 5
    while gate.position is None and time.monotonic() < deadline:
        assert gate.before(by_p) is None  # idle gate, or paused until the snapshot is open
    assert gate.before(by_p) is None, "what ends by P is taken while the chunk is read"
    taken.set()
    assert gate.before(past_p) == chunk(P), "what may end past P waits for the chunk"
    gate.applied()
    t.join(5)
    assert results == [True, True]
    assert gate.before(past_p) is None and gate.position is None


def test_a_copier_gets_no_pause_from_an_applier_that_is_not_there() -> None:
    assert not ChunkGate(wait_seconds=0.1).request()


def test_a_chunk_the_applier_could_not_wait_for_is_cancelled_and_read_again() -> None:
    gate = ChunkGate(wait_seconds=0.2)
    got: list[object] = []

    def applier() -> None:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            began = time.monotonic()
            got[:] = [gate.idle()]
            if time.monotonic() - began > 0.15:  # this call paused at the request, then waited 0.2 s
                return  # for the chunk, in vain

    t = threading.Thread(target=applier)
    t.start()
    assert gate.request()
    gate.open(P)
    t.join(5)
    assert got == [None] and gate.position is None
    assert gate.deliver(chunk(P)) is None, "too late: cancelled, the copier reads it again"


def test_progress_and_eta_in_status() -> None:
    from cdc.ops.status import render
    from transform.progress import copy_eta

    assert copy_eta(100, 1000, 10.0) == 90.0
    assert copy_eta(0, 1000, 10.0) is None and copy_eta(1200, 1000, 10.0) is None
    status = {"pipeline": "default", "state": "streaming position stored", "snapshot": [], "dead_letters": {},
              "batches": {}, "daemon": {"answering": False, "at": "127.0.0.1:9187", "why": "refused"},
              "online_copies": [
                  {"table": "items", "rows_copied": 100, "rows_estimated": 1000, "chunks": 2, "finished_at": None,
                   "eta_seconds": 90.0},
                  {"table": "tags", "rows_copied": 126, "rows_estimated": 120, "chunks": 18,
                   "finished_at": "2026-12-04T20:00:00+00:00", "eta_seconds": None},
                  {"table": "stops", "rows_copied": 0, "rows_estimated": 50, "chunks": 0, "finished_at": None,
                   "eta_seconds": None, "waits_for_take_up": True}]}
    text = render(status)
    assert "online copy    stops: asked, starts when the table is taken up (STOPPED above)" in text
    assert "online copy    items: 100 of ~1000 rows (10%), 2 chunks, ETA 0:01:30" in text
    assert "online copy    tags: 126 rows in 18 chunks, done 2026-12-04T20:00:00+00:00" in text


def test_a_stopped_table_is_shown_with_why_where_and_the_way_out_and_a_taken_up_one_as_done() -> None:
    from cdc.ops.status import render

    status = {"pipeline": "default", "state": "streaming position stored", "snapshot": [], "dead_letters": {},
              "batches": {}, "daemon": {"answering": False, "at": "127.0.0.1:9187", "why": "refused"},
              "stopped_tables": [
                  {"table": "items", "reason": "column a changed from int(11) to tinyint(4)",
                   "statement": "UPDATE items\n  SET a = 1 WHERE " + "id > 0 AND " * 20 + "TRUE",
                   "position": "mysql-bin.000003:4242", "stopped_at": "2026-12-06T10:00:00+00:00",
                   "taken_up_at": None, "fix": "copied again online by the running daemon"},
                  {"table": "notes", "reason": "partial JSON", "statement": "", "position": "mysql-bin.000003:9",
                   "stopped_at": "2026-12-06T09:00:00+00:00", "taken_up_at": "2026-12-06T09:05:00+00:00",
                   "fix": None}]}
    lines = render(status).splitlines()
    at = lines.index("STOPPED        items: not followed since 2026-12-06T10:00:00+00:00 at mysql-bin.000003:4242:"
                     " column a changed from int(11) to tinyint(4)")
    statement = lines[at + 1]
    assert statement.startswith("               statement: UPDATE items SET a = 1 WHERE id > 0 AND")  # one line
    assert statement.endswith("…") and len(statement) == len("               statement: ") + 100
    assert lines[at + 2] == "               copied again online by the running daemon"
    assert ("taken up       notes: copied again 2026-12-06T09:05:00+00:00 after its stop at"
            " 2026-12-06T09:00:00+00:00 (partial JSON)") in lines
    assert sum("notes" in line for line in lines) == 1, "a stop without a statement shows no statement line"



def test_a_stopped_table_that_waits_for_its_next_copy_says_until_when_and_why() -> None:
    from cdc.ops.status import stop_fix

    assert stop_fix(True, 4, "2026-12-06T10:00:08+00:00") == (
        "copied again online by the running daemon from 2026-12-06T10:00:08+00:00: stopped 4 times in a row while its"
        " copy ran, each next copy waits twice as long (SOFTCART_RETAKE_BACKOFF_SECONDS)")
    assert stop_fix(True, 1, None) == "copied again online by the running daemon"
    assert "`softcart-sync resnapshot`" in stop_fix(False, 3, None)


@given(st.integers(-3, 200), st.floats(0, 1e4), st.floats(1, 1e5))
def test_a_table_stopped_again_and_again_waits_twice_as_long_each_time_up_to_the_cap(
        stops: int, base: float, cap: float) -> None:
    from transform.progress import retake_delay

    wait, after = retake_delay(stops, base, cap), retake_delay(stops + 1, base, cap)
    if stops <= 1 or base == 0:
        assert wait == 0.0, "a one-off stop (or no backoff asked) is copied again at once"
    else:
        assert 0 < wait <= cap
        assert after == min(2 * wait, cap)
    assert retake_delay(2, base, cap) == (min(base, cap) if base else 0.0)


# The watermark method ----------------------------------------------------------------------------

def mark(pipeline: str, kind: str, watermark: str, op: Op = Op.UPDATE) -> RowChange:
    row = (pipeline, kind, watermark, "2026-12-06 00:00:00")
    return RowChange(SIGNAL_TABLE, op, row if op is Op.UPDATE else None, row)


def test_watermarks_are_taken_out_of_the_stream_and_only_this_pipelines_count() -> None:
    item = TxnChunk((mark("default", "low", "w1", Op.INSERT), ins(1), mark("other", "high", "w9"),
                     mark("default", "high", "w1")), P)
    rest, marks = watermarks(item, "default")
    assert rest.changes == (ins(1),) and rest.commit == P
    assert marks == [("low", "w1"), ("high", "w1")]
    plain = TxnChunk((ins(2),), P)
    assert watermarks(plain, "default") == (plain, [])


def test_a_window_notes_the_keys_its_table_changes_before_and_after_a_key_change() -> None:
    window = Window("items", "w1", [0])
    window.note((upd(3, 30), dele(4), ins(5), RowChange("other", Op.INSERT, None, (6,))))
    assert window.keys == {(3,), (30,), (4,), (5,)}


def watermarked(watermark: str) -> Chunk:
    return Chunk("items", Position("", 0), ("id", "v"), None, None, None, ((1, "x"),), watermark)


def test_the_gate_gives_a_watermarked_chunk_at_its_high_watermark_only() -> None:
    gate = ChunkGate(wait_seconds=1.0)
    assert gate.low_watermark("w1") is None, "nothing expected: an old watermark"
    gate.expect("w1", "items")
    assert gate.low_watermark("w0") is None and gate.low_watermark("w1") == "items"
    assert gate.high_watermark("w1") is None, "not delivered yet (the copier gave it up)"
    assert gate.deliver(watermarked("w0")) is None, "another watermark's chunk"
    ticket = gate.deliver(watermarked("w1"))
    assert ticket == 1
    assert gate.before(TxnChunk((ins(1),), P)) is None and gate.idle() is None, "the snapshot method's calls"
    assert gate.high_watermark("w2") is None
    assert gate.high_watermark("w1") == watermarked("w1")
    gate.applied()
    assert gate.wait_applied(ticket, threading.Event())
    assert gate.high_watermark("w1") is None, "applied once"


def test_a_cancelled_watermark_chunk_leaves_the_copier_waiting_no_more() -> None:
    gate = ChunkGate(wait_seconds=1.0)
    gate.expect("w1", "items")
    ticket = gate.deliver(watermarked("w1"))
    assert ticket is not None
    gate.cancel()
    assert not gate.wait_applied(ticket, threading.Event())
    assert gate.high_watermark("w1") is None and gate.low_watermark("w1") is None
