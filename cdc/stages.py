"""Each stage's stall, seen from outside it (pure): the reader (binlog to the queue), the writer
(queue to staging and the star schema) and the flusher (outbox to the warehouse).

A stage *progresses* when rows or positions move through it, or when it is idle and proves it is
healthy (a heartbeat from the source went through the reader and found the writer with nothing
to do; a flush round ended with nothing to load). A retry is never progress. A stage is *stalled*
when it has not progressed for its limit: /readyz names it, `softcart_stage_stalled{stage}` is 1
and the alert SoftcartStageStalled fires. The watchdog asks less: that every stage still *turns*
(a retry on schedule, a bounded wait), because a restart can end a hang but not an outage.

- reader: stalled when the writer has waited on an empty feed for SOFTCART_STALL_SECONDS (an idle
  source still sends a heartbeat every SOFTCART_HEARTBEAT_SECONDS);
- writer: stalled when nothing was committed to staging for SOFTCART_STALL_SECONDS while the
  reader is not the one stalled;
- flusher: stalled when its rounds fail and none succeeded for the stall limit, or when no round
  succeeded for the sum of its waits' bounds (a round under way: see
  :func:`cdc.flushing.flush_stall_seconds`).

While the pipeline reconnects, nothing moves through the reader or the writer: both stall once
the limit passes (the last error, in /readyz and STATUS, names the setting or server at fault).
"""

from __future__ import annotations

from dataclasses import dataclass

from cdc.flushing import FlushProgress, flush_stall_seconds
from cdc.settings import Settings
from transform.progress import PipelineState

STAGES = ("reader", "writer", "flusher")


@dataclass(frozen=True)
class StageView:
    stage: str
    seconds: float  # without progress (the reader: waiting for the source)
    limit: float
    why: str = ""  # what it waits for, when known
    starved: bool = False  # nothing comes from the stage before it: not its own stall

    @property
    def stalled(self) -> bool:
        return self.seconds >= self.limit and not self.starved


def stage_views(state: PipelineState, flush: FlushProgress | None, now: float, settings: Settings) -> list[StageView]:
    limit = settings.stall_seconds
    writer = max(0.0, now - state.progress_at)
    if not state.streaming:  # reconnecting: nothing moves through either
        why = f"last error: {state.last_error}" if state.last_error else ""
        views = [StageView("reader", writer, limit, why), StageView("writer", writer, limit, why)]
    else:
        reader = now - state.starved_since if state.starved_since else 0.0
        # a writer with nothing to do because the reader brings nothing is not stalled itself
        views = [StageView("reader", reader, limit),
                 StageView("writer", writer, limit, state.writer_wait, starved=reader >= limit)]
    if flush is not None:
        # A round that failed (its error reported) is named after the stall limit from the last one
        # that succeeded; only a round still under way gets the sum of its waits' bounds (a dead
        # warehouse was named after lock wait + receive limit + backoff + stall: ~64 min, #36)
        flush_limit = limit if flush.error else flush_stall_seconds(settings)
        views.append(StageView("flusher", max(0.0, now - flush.ok_at), flush_limit,
                               f"last error: {flush.error}" if flush.error else ""))
    return views


def describe(view: StageView, settings: Settings) -> str:
    """One line for /readyz: which stage, for how long, and why when known."""
    n = f"{view.seconds:.0f} s"
    if view.stage == "reader":
        text = (f"reader stalled: nothing from the source for {n}, not even a heartbeat (one comes every"
                f" SOFTCART_HEARTBEAT_SECONDS={settings.heartbeat_seconds:g} s when it is idle)")
    elif view.stage == "writer":
        text = f"writer stalled: nothing committed to staging for {n}"
    else:
        text = f"flusher stalled: no flush round succeeded for {n}"
    return text + (f" ({view.why})" if view.why else "")
