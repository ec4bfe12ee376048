"""Wires the stages: binlog reader (cdc.capture.feed, a thread or a process) -> bounded queue ->
the applier (loader.applier, a thread), supervised.

Before streaming, ``run_once`` connects, checks the source, takes the snapshot or decides where to
resume (cdc.capture.positions) and copies tables added to the settings. The supervisor (the
caller's thread) restarts both stages from the position saved in PostgreSQL after a transient
failure, with capped exponential backoff; a fatal failure ends ``run`` with the error. Either
worker's exception reaches the supervisor, sorted by cdc.errors.as_ours.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
import structlog

from cdc.capture import mysql
from cdc.capture.feed import SourceFeed
from cdc.capture.flavor import Flavor
from cdc.capture.lag import LagProbe
from cdc.capture.online import (
    Copy,
    OnlineCopier,
    copy_method,
    ensure_signal_table,
    pending_copies,
    retake_stopped,
    start_online_copies,
)
from cdc.capture.positions import Resume, resume_from, unavailable
from cdc.capture.snapshot import SourceRows, take_snapshot
from cdc.errors import as_ours
from cdc.metrics import Metrics
from cdc.ops.check import refuse_unready_source
from cdc.settings import Settings
from loader.applier import Applier, BatchDone
from loader.checkpoint import load_position, load_source, lock_apply
from loader.ddl import (
    ensure_schema,
    forget_tables,
    load_definitions,
    retakes_due,
    snapshot_positions,
    stopped_tables,
)
from loader.online import ChunkGate
from loader.pg import INSTANCE, holders_text, lock_holders, pg_connect
from loader.staging import StagingWriter
from loader.star import StarSchema
from transform import rowcodec
from transform.errors import ConfigError, FatalError, SoftcartError, TableUnusable, TransientError
from transform.model import Position, RowChange
from transform.progress import PipelineState
from transform.schema import Table

log = structlog.get_logger(__name__)

_STOP = object()


def star_schema(settings: Settings, tables: dict[str, Table]) -> StarSchema | None:
    """The star schema the settings ask for, or None when it is turned off."""
    if not settings.star_table:
        return None
    if settings.star_table not in tables and "star_table" not in settings.model_fields_set:
        log.info("star_schema_off", reason=f"{settings.star_table} is not among the synced tables")
        return None
    if settings.star_table not in tables:
        raise ConfigError(f"SOFTCART_STAR_TABLE {settings.star_table!r} is not among SOFTCART_SOURCE_TABLES; "
                          "add it there, or set SOFTCART_STAR_TABLE= (empty) to turn the star schema off")
    return StarSchema(tables[settings.star_table], mysql.day_zone(settings), settings.star_deltas == "sql")


_PIPELINE_KEY = "hashtext('softcart-sync pipeline ' || %s)::bigint"


def hold_pipeline_lock(pg: psycopg.Connection[Any], pipeline: str) -> None:
    """One writer per pipeline: a session advisory lock held as long as ``pg`` lives.

    A network that went silent can leave our previous session alive on the server (no FIN ever
    came; the server's keepalive takes hours), holding the lock: a holder with this process's
    application name is that session, and is terminated; any other holder is another daemon."""
    for _ in range(2):
        row = pg.execute(f"SELECT pg_try_advisory_lock({_PIPELINE_KEY})", (pipeline,)).fetchone()
        if row and row[0]:
            return
        mine = pg.info.backend_pid
        stale = [h.pid for h in lock_holders(pg, _PIPELINE_KEY, (pipeline,)) if h.application == INSTANCE
                 and h.pid != mine]
        if not stale:
            break
        for pid in stale:
            log.warning("stale_session_terminated", backend_pid=pid,
                        reason="our own earlier session still holds the pipeline lock")
            pg.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))
    holders = lock_holders(pg, _PIPELINE_KEY, (pipeline,))
    hint = f" (held by {holders_text(holders)}: a daemon that is gone, a session left by a crash or a cut network)" \
        if holders else ""
    raise TransientError(f"another softcart-sync is running pipeline {pipeline!r} on this staging database{hint}")


class Pipeline:
    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.state = PipelineState()
        self.metrics = metrics or Metrics()
        self._observer = _MetricsObserver(self.metrics)  # what the applier did, on the metrics
        self.metrics.queue_capacity.set(settings.queue_chunks)
        # computed at each scrape: a stalled writer's lag grows on /metrics though nothing sets it
        self.metrics.lag_seconds.set_function(lambda: self.state.lag_seconds(time.time(), settings.heartbeat_seconds))
        self._feed: SourceFeed | None = None
        self.metrics.queue_depth.set_function(self._queue_depth)
        self._binlogs: list[tuple[str, int]] = []
        self._lock_wait_logged = False
        self._lock_asked_at = 0.0
        self._retake: list[str] = []  # stopped tables whose copy is asked: the stream starts anew for them

    def _queue_depth(self) -> float:
        """Slices waiting for the writer, counted by whoever scrapes (a stuck stage can't freeze it)."""
        feed = self._feed
        try:
            return feed.qsize() if feed is not None else 0
        except (OSError, ValueError):  # closed while we looked
            return 0

    # Supervisor --------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Stream until ``stop`` is set; raise on a fatal error."""
        delay = 0.5
        while not stop.is_set():
            started = time.monotonic()
            try:
                try:
                    self.run_once(stop)
                except Exception as raw:  # every failure becomes transient or fatal, none escapes unsorted
                    raise as_ours(raw) from raw
            except TransientError as exc:
                self.state.streaming = False
                self.state.restarts += 1
                self.state.last_error = str(exc)
                self.state.alive_at = time.time()  # retrying on schedule: alive, not progress
                self.metrics.errors.labels("transient").inc()
                self.metrics.restarts.inc()
                if time.monotonic() - started > 60:
                    delay = 0.5
                log.warning("pipeline_retrying", error=str(exc), retry_in_seconds=round(delay, 2),
                            position=str(self.state.position))
                stop.wait(delay)
                delay = min(delay * 2, self.settings.retry_max_seconds)
            except SoftcartError:
                self.state.streaming = False
                self.metrics.errors.labels("fatal").inc()
                raise

    def prepare(self) -> tuple[dict[str, Table], Flavor]:
        """Connect to the source, read the configured tables' definitions (each must be followable)."""
        tables, flavor, unusable = self._read_source()
        if unusable:
            raise next(iter(unusable.values()))
        return tables, flavor

    def _read_source(self) -> tuple[dict[str, Table], Flavor, dict[str, TableUnusable]]:
        """The source's flavour and the configured tables' definitions, and apart those that can't
        be followed as they are now (a table stopped for that waits for its fix: ``run_once``)."""
        conn = mysql.connect(self.settings)
        try:
            flavor = mysql.flavor(conn)
            refuse_unready_source(self.settings, conn, flavor)
            tables: dict[str, Table] = {}
            unusable: dict[str, TableUnusable] = {}
            for t in self.settings.source_tables:
                try:
                    tables[t] = mysql.read_table(conn, self.settings.source.database, t)
                except TableUnusable as exc:
                    unusable[t] = exc
            self._binlogs = mysql.binary_logs(conn)
        finally:
            conn.close()
        return tables, flavor, unusable

    def run_once(self, stop: threading.Event) -> None:
        tables, flavor, unusable = self._read_source()
        pg = pg_connect(self.settings.staging_config, autocommit=True)
        self.metrics.connected.labels("staging").set(1)
        try:
            hold_pipeline_lock(pg, self.settings.pipeline_name)
            current = tables
            tables, followed = self._followed(pg, current, unusable)
            writer, position = self.open_writer(pg, tables)
            writer.recopy_stopped = bool(copy_method(self.settings.online_copy, flavor))
            writer.retake_backoff = self.settings.retake_backoff_seconds
            self._retake = []
            self._stopped_at_start(writer)
            self.state.started = True
            self.state.alive_at = time.time()
            why: str | None = None  # the saved position can't be resumed here
            try:
                resume = self._identify(pg, writer, flavor, position)
            except FatalError as exc:
                resume, why = None, str(exc)
            if resume is not None and resume.by_gtid:
                log.warning("source_changed", note=resume.note, gtid=resume.position.gtid,
                            fix="tables added to the settings now are copied at the next start")
                position = resume.position
            if position is None:
                self.state.snapshotting = True
                self.metrics.snapshot_tables.labels("total").set(len(tables))
                self.metrics.snapshot_tables.labels("done").set(0)
                position = take_snapshot(self.settings, tables, flavor, writer, self._snapshot_progress)
                self.metrics.snapshot_tables.labels("done").set(len(tables))
                self.state.snapshotting = False
            elif why is not None or (position.file and (why := unavailable(position, self._binlogs)) is not None):
                self.metrics.binlog_purged.set(1)
                if not self.settings.auto_resnapshot:
                    raise FatalError(why)
                if unusable:  # a new snapshot takes every table as it is now
                    raise next(iter(unusable.values()))
                log.warning("resnapshotting", reason=why, position=str(position))
                # a new snapshot takes the source's definitions as they are now
                source, tables = writer.source, current
                writer, _ = self.open_writer(pg, tables)
                writer.source = source
                position = take_snapshot(self.settings, tables, flavor, writer, self._snapshot_progress)
                self.metrics.binlog_purged.set(0)
            elif position.file:
                log.info("resuming", position=str(position))
                self._follow_settings(pg, writer, tables, flavor, followed)
                retake_stopped(self.settings, pg, writer, tables, flavor, current)
            fenced = fences(pg, self.settings.pipeline_name, position) if position.file else {}
            self._observe_position(position)
            self._stream(stop, tables, flavor, writer, position, fenced)
        except psycopg.OperationalError as exc:
            raise TransientError(f"staging connection lost: {str(exc).strip()}") from None
        finally:
            self.state.snapshotting = False
            self.metrics.connected.labels("staging").set(0)
            pg.close()

    def _followed(self, pg: psycopg.Connection[Any], current: dict[str, Table], unusable: dict[str, TableUnusable]
                  ) -> tuple[dict[str, Table], dict[str, Table]]:
        """The definitions to resume with, and those staging follows (saved with the snapshot's
        position, so none before the first snapshot): a schema change made while we were stopped
        is followed when its statement comes in the stream. Only a table stopped already may be
        one the source's definition can't follow now: it waits for the statement that fixes it."""
        followed = load_definitions(pg, self.settings.pipeline_name)
        for name, error in unusable.items():
            if name not in followed or name not in stopped_tables(pg, self.settings.pipeline_name):
                raise error
        tables = {name: followed.get(name) or current[name] for name in self.settings.source_tables
                  if name in current or name in followed}
        return tables, followed

    def open_writer(self, pg: psycopg.Connection[Any], tables: dict[str, Table]) -> tuple[StagingWriter,
                                                                                          Position | None]:
        """Schemas in place (staging, softcart, star), the writer, and the stored position."""
        ensure_schema(pg, tables)
        star = star_schema(self.settings, tables)
        position = load_position(pg, self.settings.pipeline_name)
        if star is not None:
            with pg.transaction(), pg.cursor() as cur:
                lock_apply(pg, self.settings.pipeline_name)
                created = star.ensure_schema(cur)
                if created and position is not None:
                    log.info("star_schema_created_rebuilding", position=str(position))
                    built = star.rebuild(pg)
                    log.info("star_schema_built", facts=built.facts, invalid=len(built.invalid))
        writer = StagingWriter(pg, tables, self.settings.pipeline_name, star)
        writer.lock_wait = self.settings.lock_wait_seconds
        return writer, position

    def _identify(self, pg: psycopg.Connection[Any], writer: StagingWriter, flavor: Flavor,
                  position: Position | None) -> Resume | None:
        """Who the source is (saved with every position from now on), and where to resume on it
        given the server the saved position was read from (None: nothing saved yet). Raises
        FatalError for a position that means nothing on this server."""
        conn = mysql.connect(self.settings)
        try:
            facts = mysql.source_facts(conn, self.settings, flavor, position)
        finally:
            conn.close()
        writer.source = (facts.server_id, facts.uuid)
        if position is None:
            return None
        return resume_from(position, load_source(pg, self.settings.pipeline_name), facts)

    def _follow_settings(self, pg: psycopg.Connection[Any], writer: StagingWriter, tables: dict[str, Table],
                         flavor: Flavor, followed: dict[str, Table]) -> None:
        """Tables added to SOFTCART_SOURCE_TABLES since the last run are copied now, before the
        stream resumes (their binlog events up to the copy's position are then left out: the
        fences); tables removed are forgotten, so that added back they are copied again."""
        pipeline = self.settings.pipeline_name
        removed = sorted(set(followed) - set(tables))
        if removed:
            forget_tables(pg, pipeline, removed)
            log.warning("tables_unfollowed", tables=removed,
                        note="no longer in SOFTCART_SOURCE_TABLES: their staging tables are left as they are; "
                             "added back, they are copied again")
        added = {name: t for name, t in tables.items() if name not in followed}
        if not added:
            return
        if copy_method(self.settings.online_copy, flavor):
            start_online_copies(self.settings, writer, added, flavor)
            return
        log.info("tables_added", tables=list(added), note="copied before the stream resumes")
        self.state.snapshotting = True
        try:
            take_snapshot(self.settings, added, flavor, writer, self._snapshot_progress, added=True)
        finally:
            self.state.snapshotting = False

    def _stopped_at_start(self, writer: StagingWriter) -> None:
        self.metrics.tables_stopped.set(len(writer.stopped))
        for name, reason in writer.stopped.items():
            log.error("table_stopped", table=name, reason=reason,
                      fix="copied online again with its new definition" if writer.recopy_stopped
                      else "its rows are skipped; `softcart-sync resnapshot` takes it again")

    def _restart_asked(self) -> bool:
        """Is the stream to start anew (stopped tables to take up: ``_pending_copies``)?"""
        if self._retake:
            log.info("stream_restarting", tables=self._retake, reason="tables stopped by a schema change are to be"
                     " copied again")
        return bool(self._retake)

    def _pending_copies(self, tables: dict[str, Table]) -> dict[str, Copy]:
        """The online copies recorded and not finished (asked on a staging session of its own).
        Those of tables stopped by a schema change are taken up by a new start of the stream."""
        with pg_connect(self.settings.staging_config, autocommit=True) as pg:
            copies = pending_copies(pg, self.settings.pipeline_name, tables)
            stopped = set(stopped_tables(pg, self.settings.pipeline_name)) & set(copies)
            retake = sorted(stopped & retakes_due(pg, self.settings.pipeline_name))  # the others wait their turn
        if retake:
            self._retake = retake  # the supervisor's loop ends the stream; the next start takes them up
        copies = {name: c for name, c in copies.items() if name not in stopped}
        for name in copies:
            self.metrics.online_copy_active.labels(name).set(1)
        return copies

    def resnapshot(self) -> Position:
        """Take a new snapshot now (the daemon must be stopped): staging, star schema and position
        are replaced in one PostgreSQL transaction, and the warehouse gets a full reload."""
        tables, flavor = self.prepare()
        with pg_connect(self.settings.staging_config, autocommit=True) as pg:
            try:
                hold_pipeline_lock(pg, self.settings.pipeline_name)
            except TransientError:
                raise ConfigError(f"the daemon for pipeline {self.settings.pipeline_name!r} is running: "
                                  "stop it first (systemctl stop softcart-sync)") from None
            writer, _ = self.open_writer(pg, tables)
            self._identify(pg, writer, flavor, None)
            return take_snapshot(self.settings, tables, flavor, writer, self._snapshot_progress)

    def _snapshot_progress(self, table: str, rows: int) -> None:
        self.state.snapshot_rows[table] = rows
        self.state.progress_at = time.time()
        self.metrics.snapshot_rows.labels(table).set(rows)

    def _observe_position(self, position: Position) -> None:
        self.state.position = position
        self._observer.position(position)

    def _stream(self, stop: threading.Event, tables: dict[str, Table], flavor: Flavor,
                writer: StagingWriter, position: Position, fenced: dict[str, Position] | None = None) -> None:
        inner = threading.Event()
        errors: list[BaseException] = []
        if fenced:
            log.info("tables_fenced", tables={t: str(p) for t, p in fenced.items()},
                     note="copied past the stream's position: their events up to it are in the copy")
        method = copy_method(self.settings.online_copy, flavor)
        signal = ensure_signal_table(self.settings) if method == "signal" else None
        feed = SourceFeed(self.settings, tables, flavor, position, fenced, signal)
        self._feed = feed
        gate = ChunkGate(max(10.0, self.settings.read_timeout_seconds), method == "signal") if method else None
        applier = Applier(self.settings.apply_config, writer, self.state, self._observer,
                          lambda: SourceRows(self.settings), gate)

        def writer_loop() -> None:
            structlog.contextvars.bind_contextvars(position=str(position))
            applier.run(inner, feed)

        feed.start()
        threads = [_worker("staging-writer", writer_loop, inner, errors)]
        if gate is not None:
            copier = OnlineCopier(self.settings, flavor, lambda: self._pending_copies(tables), gate, method)
            threads.append(_worker("online-copier", lambda: copier.run(inner), inner, errors))
        self.state.streaming = True
        self.state.streams_started += 1
        self.state.alive_at = time.time()
        self.state.starved_since = 0.0
        self.metrics.connected.labels("source").set(1)
        log.info("streaming", position=str(position), source=flavor.name,
                 row_decoder="compiled" if rowcodec.NATIVE else "python (transform._rowcodec not built)")
        lag_probe = LagProbe(self.settings)
        try:
            while not inner.is_set():
                if stop.wait(0.2) or self._restart_asked():
                    break
                if not feed.alive() and not inner.is_set():
                    inner.wait(1.0)  # the writer takes the reader's last items and its error first
                    if not errors:
                        errors.append(TransientError("the binlog reader ended unexpectedly"))
                    break
                applier.guard()
                if self.state.position is not None:
                    self.state.lag_bytes = lag_probe.lag_bytes(self.state.position)
                    if self.state.lag_bytes is not None:
                        self.metrics.lag_bytes.set(self.state.lag_bytes)
        finally:
            inner.set()
            if gate is not None:
                gate.close()
            feed.close()
            self._feed = None
            lag_probe.close()
            for t in threads:
                t.join(self.settings.shutdown_timeout_seconds)
            self.state.streaming = False
            self.metrics.connected.labels("source").set(0)
        if errors:
            raise as_ours(errors[0])


def daemon_running(settings: Settings) -> bool:
    """Is a daemon running this pipeline (it holds the pipeline lock)?"""
    with pg_connect(settings.staging_config, autocommit=True) as pg:
        row = pg.execute(f"SELECT pg_try_advisory_lock({_PIPELINE_KEY})", (settings.pipeline_name,)).fetchone()
        return not (row and row[0])  # ours, if we got it, goes with the session


def _worker(name: str, work: Callable[[], None], inner: threading.Event, errors: list[BaseException]
            ) -> threading.Thread:
    """A stage's thread, started; its exception is handed to the supervisor (and ends the others)."""
    def target() -> None:
        try:
            work()
        except BaseException as exc:  # noqa: BLE001 - handed to the supervisor
            errors.append(exc)
            inner.set()

    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    return thread


def fences(pg: psycopg.Connection[Any], pipeline: str, position: Position) -> dict[str, Position]:
    """Tables copied at a position past the stream's (added to the settings while it was behind):
    each with that position, up to which the binlog's events for it are in its copy already."""
    out = {}
    for table, text in snapshot_positions(pg, pipeline).items():
        copied = Position.parse(text)
        if copied.order() > position.order():
            out[table] = copied
    return out


class _MetricsObserver:
    """What the applier did, on the program's metrics (loader.applier.ApplyObserver)."""

    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def read(self, changes: Sequence[RowChange]) -> None:
        for ch in changes:
            self.m.events_read.labels(ch.table, ch.op.value).inc()

    def committed(self, done: BatchDone) -> None:
        m = self.m
        m.rows_applied.inc(done.rows)
        m.transactions_applied.inc(done.transactions)
        m.batch_rows.observe(done.rows)
        m.batch_seconds.observe(done.seconds)
        m.last_commit.labels("staging").set(time.time())
        m.star_rows.inc(done.star_rows)
        for kind, n in done.dead_letters.items():
            m.dead_letters.labels(kind).inc(n)

    def position(self, position: Position) -> None:
        self.m.position_offset.set(position.pos)
        suffix = position.file.rpartition(".")[2]
        if suffix.isdigit():
            self.m.position_file.set(int(suffix))

    def tables_stopped(self, n: int) -> None:
        self.m.tables_stopped.set(n)

    def copied(self, table: str, rows: int, finished: bool) -> None:
        self.m.online_copy_rows.labels(table).inc(rows)
        self.m.online_copy_active.labels(table).set(0 if finished else 1)
        if finished:
            log.info("online_copy_finished", table=table)
