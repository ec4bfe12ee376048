"""The lag tells the truth: its error is our transport's latency when caught up, under a second
when catching up, never the binlog timestamp's whole second (pure)."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from transform.model import Position, TxnChunk
from transform.progress import PipelineState

AT = Position("mysql-bin.000001", 4)


@given(commit=st.floats(1.6e9, 1.8e9), latency=st.floats(0, 3600))
def test_the_origin_is_within_min_latency_and_a_second_of_the_true_commit(commit: float, latency: float) -> None:
    # what the source writes: the commit time truncated to the second; what we stamp: its receipt
    chunk = TxnChunk((), AT, float(math.floor(commit)), received_at=commit + latency)
    origin = chunk.origin()
    assert origin >= math.floor(commit)  # never before the second it was written in
    error = abs(origin - commit)
    assert error <= min(latency, 1.0) + 1e-6


def test_a_chunk_without_a_receipt_falls_back_to_the_binlog_time() -> None:
    assert TxnChunk((), AT, 100.0).origin() == 100.0
    assert TxnChunk((), AT, 0.0, received_at=5.5).origin() == 5.5


def test_lag_is_the_age_of_the_oldest_transaction_held_uncommitted() -> None:
    now = 1_000_000.0
    s = PipelineState()
    s.heard_at = now - 0.1
    assert s.lag_seconds(now, 1.0) == 0.0  # nothing held, the reader brings heartbeats: caught up
    s.open_origin = now - 0.02  # a transaction read 20 ms ago, in the open batch
    assert math.isclose(s.lag_seconds(now, 1.0), 0.02)
    s.open_origin = now - 40  # a writer stalled on it: grows
    assert s.lag_seconds(now, 1.0) == 40


def test_silence_past_two_heartbeats_is_lag() -> None:
    now = 1_000_000.0
    s = PipelineState()
    s.heard_at = now - 1.9
    assert s.lag_seconds(now, 1.0) == 0.0
    s.heard_at = now - 30  # a reader stalled (or a network gone silent): grows
    assert s.lag_seconds(now, 1.0) == 30
