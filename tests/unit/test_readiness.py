"""/readyz and the watchdog see every stage: the stream's progress and the flush thread's rounds (pure)."""

from __future__ import annotations

from cdc.flushing import FlushProgress, flush_stall_seconds
from cdc.service import flush_alive, readiness
from cdc.settings import load_settings
from transform.progress import PipelineState

S = load_settings(environ={}, source_url="mysql://u@h/db", staging_url="postgresql://u@h/db",
                  warehouse_url="postgresql://u@h/dw", stall_seconds=60, lock_wait_seconds=120,
                  warehouse_receive_timeout_seconds=600, retry_max_seconds=30)


def streaming(now: float) -> PipelineState:
    st = PipelineState(streaming=True, started=True)
    st.progress_at = now - 1
    return st


def test_a_flush_round_past_every_bound_of_its_waits_makes_the_daemon_unready() -> None:
    now = 1_000_000.0
    assert flush_stall_seconds(S) == 120 + 600 + 30 + 60
    # one reply is the warehouse's or staging's, whichever bound is longer (#36 item 2)
    assert flush_stall_seconds(S.model_copy(update={"read_timeout_seconds": 900})) == 120 + 900 + 30 + 60
    fresh = FlushProgress(alive_at=now - 5, ok_at=now - 5)
    assert readiness(streaming(now), now, S, fresh)[0]
    # a warehouse that is down is reported and retried: rounds keep ending (alive, no watchdog
    # restart), but past its limit nothing loaded is a stall that /readyz names (a retry is not progress)
    failing = FlushProgress(alive_at=now - 5, ok_at=now - 5000, error="warehouse dw: connection refused")
    assert flush_alive(failing, now, S)
    ok, why = readiness(streaming(now), now, S, failing)
    assert not ok and why == ("flusher stalled: no flush round succeeded for 5000 s"
                              " (last error: warehouse dw: connection refused)")
    briefly = FlushProgress(alive_at=now - 5, ok_at=now - 30, error="warehouse dw: connection refused")
    assert readiness(streaming(now), now, S, briefly)[0]  # failing, within the stall limit (60 s)
    # rounds that fail are named after the stall limit from the last success, not after the sum
    # of every wait's bound (a dead warehouse showed after ~64 min with the defaults, #36 item 3)
    dead = FlushProgress(alive_at=now - 5, ok_at=now - 61, error="warehouse dw: connection refused")
    ok, why = readiness(streaming(now), now, S, dead)
    assert not ok and why.startswith("flusher stalled: no flush round succeeded for 61 s")
    under_way = FlushProgress(alive_at=now - 300, ok_at=now - 300)  # one long round, no error yet
    assert readiness(streaming(now), now, S, under_way)[0]  # within the sum of its waits (810 s)
    stuck = FlushProgress(alive_at=now - 811, error="warehouse dw: timeout")
    ok, why = readiness(streaming(now), now, S, stuck)
    assert not ok and why == "flusher stuck: no flush round has ended for 811 s (last error: warehouse dw: timeout)"
    assert not flush_alive(stuck, now, S)
    assert readiness(streaming(now), now, S, None)[0]  # no warehouse: no flusher


def test_while_it_can_not_connect_status_and_readyz_say_why() -> None:
    from cdc.service import status_line

    st = PipelineState(restarts=3,
                       last_error="source mysql://u@h:3306/db: connection refused; check SOFTCART_SOURCE_URL")
    line = status_line(st, 1_000_000.0, S)  # systemctl status shows it while the start waits
    assert line.startswith("reconnecting (restart 3): source mysql://u@h:3306/db") and "SOFTCART_SOURCE_URL" in line
    ok, why = readiness(st, 1_000_000.0, S)
    assert not ok and "SOFTCART_SOURCE_URL" in why


def test_a_retry_keeps_the_writer_alive_for_the_watchdog_but_is_not_progress() -> None:
    now = 1_000_000.0
    st = PipelineState(streaming=True, started=True)
    st.progress_at, st.alive_at = now - 300, now - 1  # retrying, or waiting for a lock, for 5 min
    assert st.alive(now, 60) and not st.healthy(now, 60)
    st.writer_wait = "waiting for a lock in staging (a rebuild holds it)"
    ok, why = readiness(st, now, S)
    assert not ok and why == "writer stalled: nothing committed to staging for 300 s (waiting for a lock in " \
        "staging (a rebuild holds it))"
    st.alive_at = now - 61  # and a writer that stopped turning is a hang: the watchdog stops
    assert not st.alive(now, 60)


def test_a_reader_bringing_nothing_is_named_not_the_writer_waiting_for_it() -> None:
    from cdc.stages import stage_views

    now = 1_000_000.0
    st = PipelineState(streaming=True, started=True)
    st.progress_at, st.starved_since = now - 90, now - 80  # no heartbeat for 80 s
    views = {v.stage: v for v in stage_views(st, None, now, S)}
    assert views["reader"].stalled and views["reader"].seconds == 80
    assert not views["writer"].stalled and views["writer"].starved
    ok, why = readiness(st, now, S)
    assert not ok and why.startswith("reader stalled: nothing from the source for 80 s, not even a heartbeat")
    st.progress_at = st.starved_since = now - 3  # a heartbeat came 3 s ago and found it idle: both fine
    assert readiness(st, now, S)[0] and not any(v.stalled for v in stage_views(st, None, now, S))


def test_while_reconnecting_reader_and_writer_stall_past_the_limit_with_the_last_error() -> None:
    from cdc.stages import stage_views

    now = 1_000_000.0
    st = PipelineState(restarts=9, last_error="staging db: can't connect (Connection refused)")
    st.progress_at, st.alive_at = now - 61, now - 1
    views = stage_views(st, FlushProgress(alive_at=now, ok_at=now), now, S)
    assert [(v.stage, v.stalled) for v in views] == [("reader", True), ("writer", True), ("flusher", False)]
    assert views[1].why == "last error: staging db: can't connect (Connection refused)"
    assert st.alive(now, 60)  # retrying on schedule: the watchdog is still fed


def test_stage_metrics_are_computed_at_scrape() -> None:
    from prometheus_client import generate_latest

    from cdc.metrics import Metrics
    from cdc.stages import stage_views

    st = PipelineState(streaming=True, started=True)
    m = Metrics()
    clock = [1_000_000.0]
    st.progress_at = clock[0] - 1
    m.stages.views = lambda: stage_views(st, None, clock[0], S)
    assert 'softcart_stage_stalled{stage="writer"} 0.0' in generate_latest(m.registry).decode()
    clock[0] += 120  # nothing changed in the state: the scrape alone sees the stall grow
    text = generate_latest(m.registry).decode()
    assert 'softcart_stage_stalled{stage="writer"} 1.0' in text
    assert 'softcart_stage_seconds_since_progress{stage="writer"} 121.0' in text
    assert 'softcart_stage_stall_limit_seconds{stage="writer"} 60.0' in text
