"""The batching policy (transform.batching): when a micro-batch writes and commits."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from transform.batching import Batching, BatchLimits

LIMITS = BatchLimits(max_rows=100, max_seconds=1.0, chunk_rows=30)


def test_a_transaction_in_slices_commits_only_at_its_end() -> None:
    b = Batching(LIMITS)
    writes = 0
    buffered = 0
    for i in range(50):  # 50 slices of 20 rows: 1,000 rows, ten times max_rows
        b.begin_slice(now=i * 0.1)
        b.add_rows(20)
        buffered += 20
        if b.write_buffer(buffered):
            writes += 1
            buffered = 0
        last = i == 49
        assert b.end_slice(last, now=i * 0.1, queue_empty=True) is last
        assert b.on_empty_poll() is last
        assert b.at_stop() is last
    assert writes == 1000 // 100  # every fifth slice: the buffer reached max_rows (more than chunk_rows)
    assert b.rows == 1000 and b.transactions == 1


def test_the_buffer_is_written_at_the_larger_of_the_batch_size_and_a_slice() -> None:
    assert not Batching(LIMITS).write_buffer(99) and Batching(LIMITS).write_buffer(100)
    wide = Batching(BatchLimits(max_rows=10, max_seconds=1.0, chunk_rows=30))
    assert not wide.write_buffer(29) and wide.write_buffer(30)


def test_commits_when_full_old_or_nothing_more_comes() -> None:
    b = Batching(LIMITS)
    b.begin_slice(now=0.0)
    b.add_rows(10)
    assert not b.end_slice(True, now=0.1, queue_empty=False)  # small, young, more queued: wait
    b.begin_slice(now=0.2)
    assert b.started == 0.0  # the batch's age counts from its first slice
    b.add_rows(90)
    assert b.end_slice(True, now=0.2, queue_empty=False)  # full
    b.committed()
    assert b.empty and b.rows == 0 and b.transactions == 0
    b.begin_slice(now=5.0)
    b.add_rows(1)
    assert b.end_slice(True, now=6.0, queue_empty=False)  # open max_seconds
    b.committed()
    b.begin_slice(now=7.0)
    b.add_rows(1)
    assert b.end_slice(True, now=7.0, queue_empty=True)  # the stream is not ahead of us


def test_a_complete_batch_commits_on_an_empty_poll_and_before_a_schema_change() -> None:
    b = Batching(LIMITS)
    assert not b.on_empty_poll() and not b.on_schema_change() and not b.at_stop()
    assert b.poll_timeout() == 0.5
    b.begin_slice(now=0.0)
    b.add_rows(1)
    b.end_slice(True, now=0.0, queue_empty=False)
    assert b.poll_timeout() == 0.05  # a complete batch waits only briefly for company
    assert b.on_empty_poll() and b.on_schema_change() and b.at_stop()


def test_idle_only_with_nothing_open_buffered_or_queued() -> None:
    b = Batching(LIMITS)
    assert b.idle(buffered=0, queue_empty=True)
    assert not b.idle(buffered=0, queue_empty=False)
    assert not b.idle(buffered=1, queue_empty=True)
    b.begin_slice(now=0.0)
    b.end_slice(False, now=0.0, queue_empty=True)  # a held XA slice: no rows, but partial
    assert not b.idle(buffered=0, queue_empty=True)
    b.rolled_back()
    assert b.idle(buffered=0, queue_empty=True)


slices = st.lists(st.tuples(st.integers(0, 60), st.booleans(), st.floats(0, 0.5), st.booleans()), max_size=60)


@given(slices)
def test_never_commits_inside_a_transaction_and_never_holds_more_than_it_must(events: list[tuple[int, bool, float,
                                                                                                  bool]]) -> None:
    """Whatever comes: a commit is asked only at a transaction's end; a batch left open at a
    transaction's end is under max_rows, younger than max_seconds, and has more coming; after a
    commit the next batch starts empty and counts from its own first slice."""
    b = Batching(LIMITS)
    now = 0.0
    rows_since_commit = txns = 0
    for rows, ends, dt, queue_empty in events:
        now += dt
        first = b.empty
        b.begin_slice(now)
        if first:
            assert b.started == now
        b.add_rows(rows)
        rows_since_commit += rows
        commit = b.end_slice(ends, now, queue_empty)
        txns += ends
        assert b.rows == rows_since_commit and b.transactions == txns
        if not ends:
            assert not commit and not b.on_empty_poll() and not b.at_stop()
            continue
        assert b.on_empty_poll() and b.at_stop()
        if commit:
            assert b.rows >= LIMITS.max_rows or now - b.started >= LIMITS.max_seconds or queue_empty
            b.committed()
            rows_since_commit = txns = 0
            assert b.empty
        else:
            assert b.rows < LIMITS.max_rows and now - b.started < LIMITS.max_seconds and not queue_empty
