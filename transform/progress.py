"""What the pipeline has done, and its stages' clocks: written by the reader, writer and
supervisor, read from other threads by status, metrics, /readyz and the watchdog."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from transform.model import Position


@dataclass
class PipelineState:
    """What the pipeline has done, for status, metrics and the demo (read from other threads)."""

    position: Position | None = None
    last_commit_at: float = 0.0
    last_event_time: float = 0.0  # source commit time of the last applied change
    caught_up_at: float = 0.0  # last heartbeat that found the writer idle with nothing queued
    # The writer's clocks. progress: rows or positions moved (a commit, a snapshot's rows, a
    # heartbeat that found it idle with nothing queued); never a retry. alive: its loop turned (an
    # item or an empty feed's timeout, a retry on schedule, a lock wait the guard saw bounded): a
    # stage that retries or waits in a bounded wait is alive without progress.
    progress_at: float = field(default_factory=time.time)
    alive_at: float = field(default_factory=time.time)
    starved_since: float = 0.0  # the writer waits on an empty feed since (0: items come)
    # The lag's clocks: when the writer last had anything from the reader (a heartbeat included),
    # and the origin (TxnChunk.origin) of the oldest transaction it holds uncommitted (0: none).
    heard_at: float = field(default_factory=time.time)
    open_origin: float = 0.0
    writer_wait: str = ""  # what the writer's statement waits for, when the guard found out
    rows_applied: int = 0
    transactions_applied: int = 0
    batches_committed: int = 0
    restarts: int = 0
    streams_started: int = 0  # the first start, restarts after errors, new starts to take up stopped tables
    started: bool = False  # connected, checked, schema in place (READY for systemd)
    streaming: bool = False
    snapshotting: bool = False
    lag_bytes: int | None = None
    writer_busy_since: float = 0.0  # monotonic start of the writer's current statement to staging
    snapshot_rows: dict[str, int] = field(default_factory=dict)
    last_error: str = ""  # why the last attempt to connect or stream failed (STATUS, /readyz)

    def lag_seconds(self, now: float, heartbeat: float) -> float:
        """How late staging is: the age of the oldest transaction received and not yet committed
        (its origin is within our transport's latency of its commit when we read it as it was
        written, within a second when we catch up: see TxnChunk.origin), so its error is well under
        the freshness it reports, not the binlog timestamp's second. Nothing held: 0 while the
        reader keeps bringing items (an idle source sends a heartbeat every period); after two
        periods of silence, the silence, so a stalled reader or writer shows a growing lag."""
        if self.open_origin:
            return max(0.0, now - self.open_origin)
        silence = now - self.heard_at
        return silence if silence >= 2 * heartbeat else 0.0

    def healthy(self, now: float, stall_seconds: float) -> bool:
        """Making progress, or idle and healthy (what /readyz asks)."""
        return now - self.progress_at < stall_seconds

    def alive(self, now: float, stall_seconds: float) -> bool:
        """Making progress, or turning: retrying on schedule, waiting in a bounded wait (what the
        watchdog asks: a restart can't end an outage, only a hang)."""
        return now - max(self.progress_at, self.alive_at) < stall_seconds


def copy_eta(copied: int, estimated: int, elapsed: float) -> float | None:
    """Seconds an online copy still needs at the rate it went so far (None: no rate yet, or past
    its estimate: the estimate is the source's statistics, not a count)."""
    if copied <= 0 or elapsed <= 0 or estimated <= copied:
        return None
    return (estimated - copied) / (copied / elapsed)


def retake_delay(stops: int, base: float, cap: float = 3600.0) -> float:
    """Seconds a stopped table waits before its next online copy, when it was stopped ``stops``
    times in a row, each time while its copy ran: none the first time (a one-off change), then
    ``base`` doubling up to ``cap``. Without the wait, a client that keeps writing the table in a
    form the binlog can't carry (STATEMENT format) restarts its copy, and the stream, for ever."""
    if stops <= 1 or base <= 0:
        return 0.0
    try:
        return min(math.ldexp(base, stops - 2), cap)
    except OverflowError:
        return cap
