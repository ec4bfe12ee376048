"""`softcart-sync run`: the pipeline as a well-behaved daemon.

The pipeline runs in a thread; the main thread is the service loop: it answers signals, serves
/metrics, /healthz and /readyz, tells systemd READY once started, keeps STATUS current, and pings
the watchdog only while every stage turns (makes progress, is idle and healthy, or retries on
schedule), so a hung stage gets the daemon restarted; a stage that turns without progress is a
stall, named by /readyz and the metrics (cdc.stages), which a restart would not end.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
from types import FrameType
from typing import Any

import psycopg
import structlog

from cdc.errors import as_ours
from cdc.flushing import FlushProgress, flush_loop, flush_stall_seconds
from cdc.http import HealthServer
from cdc.metrics import Metrics
from cdc.pipeline import Pipeline
from cdc.settings import Settings
from cdc.stages import describe, stage_views
from cdc.systemd import Notifier
from loader.flush import read_backlog
from loader.pg import pg_connect
from transform.errors import ConfigError, FatalError, SoftcartError
from transform.progress import PipelineState

log = structlog.get_logger("softcart")


def status_line(state: PipelineState, now: float, settings: Settings) -> str:
    """One line for systemd's STATUS= and for humans."""
    if state.snapshotting:
        rows = sum(state.snapshot_rows.values())
        return f"snapshotting: {rows} rows copied"
    if not state.streaming:
        if not state.restarts:
            return "connecting"
        return f"reconnecting (restart {state.restarts}): {state.last_error}"
    lag = state.lag_seconds(now, settings.heartbeat_seconds)
    behind = f", {state.lag_bytes} bytes behind" if state.lag_bytes else ""
    return f"streaming at {state.position}; lag {lag:.1f} s{behind}; {state.rows_applied} rows applied"


def readiness(state: PipelineState, now: float, settings: Settings,
              flush: FlushProgress | None = None) -> tuple[bool, str]:
    """What /readyz answers: ready only while streaming with no stage stalled (see cdc.stages);
    otherwise the first reason, naming the stage."""
    if not state.streaming:
        return False, "not streaming: " + status_line(state, now, settings)
    if flush is not None and not flush_alive(flush, now, settings):
        return False, (f"flusher stuck: no flush round has ended for {now - flush.alive_at:.0f} s"
                       + (f" (last error: {flush.error})" if flush.error else ""))
    for view in stage_views(state, flush, now, settings):
        if view.stalled:
            return False, describe(view, settings)
    return True, status_line(state, now, settings)


def flush_alive(flush: FlushProgress, now: float, settings: Settings) -> bool:
    """The flush thread's rounds keep ending (a warehouse that refuses or is down is an error it
    reports and retries, not a hang); a round past every bound of its waits is a hang."""
    return now - flush.alive_at < flush_stall_seconds(settings)


def watch_backlog(settings: Settings, metrics: Metrics) -> None:
    """The warehouse backlog on /metrics, read by each scrape on a staging session of its own
    (connect within 3 s, a statement within 5 s), not by the flush thread it watches."""
    quick = dataclasses.replace(settings.staging_config,
                                connect_timeout_seconds=min(settings.connect_timeout_seconds, 3.0),
                                read_timeout_seconds=min(settings.read_timeout_seconds, 10.0))

    def connect() -> psycopg.Connection[Any]:
        conn = pg_connect(quick, autocommit=True)
        conn.execute("SET statement_timeout = 5000")
        return conn

    metrics.backlog.attach(connect, lambda conn: read_backlog(conn, settings.pipeline_name))


def run_service(settings: Settings, notifier: Notifier | None = None, crash_point: str = "") -> int:
    notifier = notifier or Notifier()
    metrics = Metrics()
    pipeline = Pipeline(settings, metrics)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            os._exit(128 + signum)  # a second signal: at once
        log.info("stopping", signal=signal.Signals(signum).name, position=str(pipeline.state.position))
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    host, port = settings.metrics_address
    flush_progress = FlushProgress() if settings.warehouse_url is not None else None
    if flush_progress is not None:
        watch_backlog(settings, metrics)
    metrics.stages.views = lambda: stage_views(pipeline.state, flush_progress, time.time(), settings)
    http = HealthServer(host, port, metrics.registry,
                        lambda: readiness(pipeline.state, time.time(), settings, flush_progress))
    http.start()
    log.info("metrics_listening", address=f"{host}:{http.port}")
    errors: list[SoftcartError] = []

    def target() -> None:
        try:
            pipeline.run(stop)
        except SoftcartError as exc:
            errors.append(exc)
        except BaseException as exc:  # noqa: BLE001 - never exit 0 on a failure systemd should see
            errors.append(FatalError(f"{type(exc).__name__}: {exc}"))

    worker = threading.Thread(target=target, name="pipeline", daemon=True)
    worker.start()
    started = threading.Event()
    flusher = None if flush_progress is None else \
        _start_flusher(settings, stop, started, metrics, crash_point, flush_progress, errors)
    try:
        _loop(settings, pipeline, metrics, notifier, stop, worker, started, flush_progress)
    finally:
        stop.set()
        if flusher is not None:
            flusher.join(settings.shutdown_timeout_seconds)
        http.stop()
        metrics.backlog.close()
    if errors:
        log.error("fatal", error=str(errors[0]), position=str(pipeline.state.position))
        # a wrong setting is exit 2, like one found at start: systemd doesn't restart it (a restart
        # can't fix it; RestartPreventExitStatus=2), any other failure exit 1
        return 2 if isinstance(errors[0], ConfigError) else 1
    log.info("stopped", position=str(pipeline.state.position))
    return 0


def _start_flusher(settings: Settings, stop: threading.Event, started: threading.Event, metrics: Metrics,
                   crash_point: str, progress: FlushProgress, errors: list[SoftcartError]) -> threading.Thread:
    """The flush thread; its failure reaches the supervisor, which stops the daemon with it."""
    def flush_target() -> None:
        try:
            flush_loop(settings, stop, started, metrics, crash_point, progress)
        except BaseException as exc:  # noqa: BLE001 - the supervisor stops the daemon with it
            errors.append(FatalError(f"the flush thread failed: {as_ours(exc)}"))
            stop.set()

    flusher = threading.Thread(target=flush_target, name="flusher", daemon=True)
    flusher.start()
    return flusher


def _loop(settings: Settings, pipeline: Pipeline, metrics: Metrics, notifier: Notifier, stop: threading.Event,
          worker: threading.Thread, started: threading.Event, flush: FlushProgress | None = None) -> None:
    ready_sent = stopping_sent = False
    last_ping = last_status = 0.0
    deadline = float("inf")
    while worker.is_alive():
        worker.join(0.25)
        now = time.time()
        state = pipeline.state
        ok, _ = readiness(state, now, settings, flush)
        metrics.ready.set(1 if ok else 0)
        if stop.is_set():
            if not stopping_sent:
                notifier.stopping()
                stopping_sent = True
                deadline = time.monotonic() + settings.shutdown_timeout_seconds
            elif time.monotonic() > deadline:
                log.error("shutdown_timed_out", seconds=settings.shutdown_timeout_seconds,
                          position=str(state.position))
                os._exit(1)
            continue
        if not ready_sent and state.started:
            notifier.ready(status_line(state, now, settings))
            ready_sent = True
            started.set()
        elif ready_sent and now - last_status >= 2:
            notifier.status(status_line(state, now, settings))
            last_status = now
        interval = notifier.watchdog_interval
        flusher_ok = flush is None or flush_alive(flush, now, settings)
        if interval is not None and state.alive(now, settings.stall_seconds) and flusher_ok \
                and now - last_ping >= interval:
            notifier.watchdog()
            last_ping = now
