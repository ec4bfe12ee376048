"""/readyz and the watchdog see every stage: the stream's progress and the flush thread's rounds (pure)."""

from __future__ import annotations

from cdc.flushing import FlushProgress, flush_stall_seconds
from cdc.pipeline import PipelineState
from cdc.service import flush_alive, readiness
from cdc.settings import load_settings

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
    fresh = FlushProgress(alive_at=now - 5, ok_at=now - 5)
    assert readiness(streaming(now), now, S, fresh)[0]
    # a warehouse that is down is reported and retried, rounds keep ending: ready
    failing = FlushProgress(alive_at=now - 5, ok_at=now - 5000, error="warehouse dw: connection refused")
    assert readiness(streaming(now), now, S, failing)[0] and flush_alive(failing, now, S)
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
