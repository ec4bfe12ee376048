"""The daemon's flush thread: every SOFTCART_FLUSH_INTERVAL_SECONDS (sooner past
SOFTCART_FLUSH_ROWS pending changes) it batches the star schema's changes into the spool and loads
pending batches into the warehouse, in its own thread, so a slow or absent warehouse never stalls
the binlog stream. Warehouse errors are retried with capped exponential backoff; batches wait in
the spool meanwhile."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import structlog

from cdc.errors import as_ours
from cdc.metrics import Metrics
from cdc.settings import Settings
from loader.backends import open_warehouse
from loader.flush import Flusher
from loader.pg import guard_replies, pg_connect
from loader.spool import Spool, SpooledBatch
from transform.errors import SoftcartError, TransientError

log = structlog.get_logger(__name__)


@dataclass
class FlushProgress:
    """What the flush thread shows the service loop (read from another thread): ``alive_at`` moves
    at the end of every round whatever its outcome (a round that hangs stops it), ``ok_at`` only
    when a round flushed without error (its progress: loaded, or found nothing to load)."""

    alive_at: float = field(default_factory=time.time)
    ok_at: float = field(default_factory=time.time)  # from the start: none has had time to fail yet
    error: str = ""


def flush_stall_seconds(settings: Settings) -> float:
    """How long one flush round may take before the thread counts as stuck: every wait in it is
    bounded (the loader's lock, one reply: the warehouse's or staging's, the backoff), so past
    their sum it hangs."""
    reply = max(settings.warehouse_receive_timeout_seconds, settings.read_timeout_seconds)
    return settings.lock_wait_seconds + reply + settings.retry_max_seconds + settings.stall_seconds


def open_flusher(settings: Settings, crash_point: str = "") -> Flusher:
    """The one way the program makes a Flusher: the spool folder prepared, the warehouse opened
    from the settings, a staging session of its own, the loader lock's wait bounded by
    SOFTCART_LOCK_WAIT_SECONDS. ``Flusher.close`` ends the warehouse connection and the session."""
    spool = Spool(settings.spool_dir)
    spool.prepare()
    warehouse = open_warehouse(settings.warehouse_config)
    try:
        conn = pg_connect(settings.staging_config, autocommit=True)
    except BaseException:
        warehouse.close()
        raise
    # each call on the flusher's staging session is bounded by our clock: a reply's time, and a
    # lock wait's (which staging's lock_timeout bounds while the server runs)
    guard_replies(conn, settings.read_timeout_seconds + settings.lock_wait_seconds)
    return Flusher(conn, spool, warehouse, settings.pipeline_name, crash_point, settings.lock_wait_seconds)


def flush_loop(settings: Settings, stop: threading.Event, started: threading.Event, metrics: Metrics,
               crash_point: str = "", progress: FlushProgress | None = None) -> None:
    """Run until ``stop``; waits for ``started`` (schemas in place) first."""
    progress = progress or FlushProgress()
    while not started.wait(0.5):
        progress.alive_at = progress.ok_at = time.time()  # nothing to flush before the stream starts
        if stop.is_set():
            return
    delay = 1.0
    flusher: Flusher | None = None
    next_flush = time.monotonic()
    while not stop.is_set():
        progress.alive_at = time.time()
        try:
            if flusher is None:
                flusher = open_flusher(settings, crash_point)
            pending = flusher.pending_outbox_rows()
            if time.monotonic() >= next_flush or pending >= settings.flush_rows:
                next_flush = time.monotonic() + settings.flush_interval_seconds
                flusher.create_batch()
                flusher.load_pending(lambda b, s: _loaded(metrics, b, s))
                metrics.connected.labels("warehouse").set(1)
            progress.ok_at, progress.error = time.time(), ""
            delay = 1.0
            stop.wait(1.0)
        except Exception as raw:
            exc = as_ours(raw)
            if not isinstance(raw, SoftcartError):
                if not isinstance(exc, TransientError):
                    # a fault of ours: to the supervisor, which stops the daemon with it (exit 1)
                    raise exc from raw
                # e.g. the staging connection dropped: start afresh
                metrics.errors.labels("unexpected").inc()
                log.warning("flush_restarting", error=str(exc))
                if flusher is not None:
                    flusher.close()
                flusher = None
            progress.error = str(exc)
            if isinstance(exc, TransientError):
                metrics.connected.labels("warehouse").set(0)
                metrics.errors.labels("transient").inc()
                log.warning("flush_retrying", error=str(exc), retry_in_seconds=delay)
                next_flush = 0.0  # retry the load as soon as the backoff ends
                stop.wait(delay)
                delay = min(delay * 2, settings.retry_max_seconds)
            else:  # a set-up error (ConfigError names the fix): retried slowly, loudly
                metrics.errors.labels("fatal").inc()
                log.error("flush_failed", error=str(exc))
                stop.wait(settings.retry_max_seconds)
    if flusher is not None:
        flusher.close()


def _loaded(metrics: Metrics, batch: SpooledBatch, seconds: float) -> None:
    metrics.flush_seconds.observe(seconds)
    metrics.batches_loaded.inc()
    metrics.warehouse_rows.inc(sum(batch.row_counts.values()))
    metrics.last_commit.labels("warehouse").set(time.time())
