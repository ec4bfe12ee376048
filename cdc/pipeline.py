"""Wires the stages: binlog reader (thread or process) -> bounded queue -> staging writer thread, supervised.

The supervisor (the caller's thread) restarts both stages from the position saved in PostgreSQL
after a transient failure, with capped exponential backoff; a fatal failure ends ``run`` with the
error. Either worker's exception reaches the supervisor.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pymysql
import pymysql.cursors
import structlog

from cdc import mysql
from cdc.check import refuse_unready_source
from cdc.feed import SourceFeed
from cdc.flavor import Flavor
from cdc.metrics import Metrics
from cdc.positions import Resume, resume_from, unavailable
from cdc.settings import Settings
from cdc.snapshot import quote_mysql, select_list, take_snapshot
from loader.ddl import ensure_schema, forget_tables, load_definitions, snapshot_positions
from loader.pg import INSTANCE, cut, holders_text, lock_holders, pg_connect
from loader.staging import StagingWriter, load_position, load_source, lock_apply
from loader.star import StarSchema
from transform.errors import ConfigError, FatalError, SoftcartError, TransientError
from transform.model import Heartbeat, Position, RowChange, SchemaChange, TxnChunk
from transform.schema import Table
from transform.values import RowConverter, Unrepresentable

log = structlog.get_logger(__name__)

_STOP = object()


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
    return StarSchema(tables[settings.star_table], settings.zone, settings.star_deltas == "sql")


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
        self.metrics.queue_capacity.set(settings.queue_chunks)
        # computed at each scrape: a stalled writer's lag grows on /metrics though nothing sets it
        self.metrics.lag_seconds.set_function(lambda: self.state.lag_seconds(time.time(), settings.heartbeat_seconds))
        self._feed: SourceFeed | None = None
        self.metrics.queue_depth.set_function(self._queue_depth)
        self._binlogs: list[tuple[str, int]] = []
        self._lock_wait_logged = False
        self._lock_asked_at = 0.0

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
                    raise _as_ours(raw) from raw
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
        """Connect to the source, read the configured tables' definitions."""
        conn = mysql.connect(self.settings)
        try:
            flavor = mysql.flavor(conn)
            refuse_unready_source(self.settings, conn, flavor)
            tables = {t: mysql.read_table(conn, self.settings.source.database, t)
                      for t in self.settings.source_tables}
            self._binlogs = mysql.binary_logs(conn)
        finally:
            conn.close()
        return tables, flavor

    def run_once(self, stop: threading.Event) -> None:
        tables, flavor = self.prepare()
        pg = pg_connect(self.settings.staging_config, autocommit=True)
        self.metrics.connected.labels("staging").set(1)
        try:
            hold_pipeline_lock(pg, self.settings.pipeline_name)
            # Resume with the definitions staging follows (saved with the snapshot's position, so
            # none before the first snapshot): a schema change made while we were stopped is
            # followed when its statement comes in the stream.
            followed = load_definitions(pg, self.settings.pipeline_name)
            current, tables = tables, {name: followed.get(name, t) for name, t in tables.items()}
            writer, position = self.open_writer(pg, tables)
            self.metrics.tables_stopped.set(len(writer.stopped))
            for name, reason in writer.stopped.items():
                log.error("table_stopped", table=name, reason=reason,
                          fix="its rows are skipped; `softcart-sync resnapshot` takes it again")
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
            fenced = fences(pg, self.settings.pipeline_name, position) if position.file else {}
            self._observe_position(position)
            self._stream(stop, tables, flavor, writer, position, fenced)
        except psycopg.OperationalError as exc:
            raise TransientError(f"staging connection lost: {str(exc).strip()}") from None
        finally:
            self.state.snapshotting = False
            self.metrics.connected.labels("staging").set(0)
            pg.close()

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
        log.info("tables_added", tables=list(added), note="copied before the stream resumes")
        self.state.snapshotting = True
        try:
            take_snapshot(self.settings, added, flavor, writer, self._snapshot_progress, added=True)
        finally:
            self.state.snapshotting = False

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

    @contextlib.contextmanager
    def _guarded(self) -> Iterator[None]:
        """Statements to staging inside are watched by _guard_writer; a statement that ends (or
        fails) is no longer in flight."""
        self.state.writer_busy_since = time.monotonic()
        try:
            yield
        finally:
            self.state.writer_busy_since = 0.0

    def _guard_writer(self, writer: StagingWriter) -> None:
        """A statement to staging that takes longer than SOFTCART_READ_TIMEOUT_SECONDS means a
        network gone silent (a middlebox that acknowledges but never delivers defeats TCP's own
        timeouts): shut the socket, so the writer fails, and the supervisor reconnects."""
        busy = self.state.writer_busy_since
        if not busy:
            self.state.writer_wait, self._lock_wait_logged, self._lock_asked_at = "", False, 0.0
            return
        limit = self.settings.read_timeout_seconds
        waited = time.monotonic() - busy
        if waited < min(limit, self.settings.stall_seconds / 2):
            return
        if self._waiting_for_a_lock(writer):
            # staging answers: the writer waits for a lock (bounded by SOFTCART_LOCK_WAIT_SECONDS)
            self.state.alive_at = time.time()
            self.state.writer_wait = ("waiting for a lock in staging (a rebuild, a repair or another session"
                                      " holds it; bounded by SOFTCART_LOCK_WAIT_SECONDS)")
            return
        if waited < limit:
            return
        self.state.writer_busy_since = 0.0
        log.warning("staging_unresponsive", seconds=round(time.monotonic() - busy, 1),
                    position=str(self.state.position))
        cut(writer.conn)

    def _waiting_for_a_lock(self, writer: StagingWriter) -> bool:
        """Is the writer's session waiting for a lock (a rebuild or a repair holding the apply lock)?
        Asked on a connection of its own (at most every 2 s): a staging that answers is no silent
        network."""
        if time.monotonic() - self._lock_asked_at < 2.0:
            return self._lock_wait_logged
        self._lock_asked_at = time.monotonic()
        try:
            with pg_connect(self.settings.staging_config, autocommit=True) as other:
                row = other.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s",
                                    (writer.conn.info.backend_pid,)).fetchone()
        except (SoftcartError, psycopg.Error):
            self._lock_wait_logged = False
            return False
        waiting = bool(row and row[0] == "Lock")
        if waiting and not self._lock_wait_logged:
            log.info("writer_waiting_for_lock", position=str(self.state.position),
                     limit_seconds=self.settings.lock_wait_seconds)
        self._lock_wait_logged = waiting
        return waiting

    def _observe_position(self, position: Position) -> None:
        self.state.position = position
        self.metrics.position_offset.set(position.pos)
        suffix = position.file.rpartition(".")[2]
        if suffix.isdigit():
            self.metrics.position_file.set(int(suffix))

    def _stream(self, stop: threading.Event, tables: dict[str, Table], flavor: Flavor,
                writer: StagingWriter, position: Position, fenced: dict[str, Position] | None = None) -> None:
        inner = threading.Event()
        errors: list[BaseException] = []
        if fenced:
            log.info("tables_fenced", tables={t: str(p) for t, p in fenced.items()},
                     note="copied past the stream's position: their events up to it are in the copy")
        feed = SourceFeed(self.settings, tables, flavor, position, fenced)
        self._feed = feed

        def writer_loop() -> None:
            structlog.contextvars.bind_contextvars(position=str(position))
            try:
                self._write(inner, feed, writer)
            except BaseException as exc:  # noqa: BLE001 - handed to the supervisor
                errors.append(exc)
                inner.set()

        feed.start()
        threads = [threading.Thread(target=writer_loop, name="staging-writer", daemon=True)]
        for t in threads:
            t.start()
        self.state.streaming = True
        self.state.alive_at = time.time()
        self.state.starved_since = 0.0
        self.metrics.connected.labels("source").set(1)
        log.info("streaming", position=str(position), source=flavor.name)
        lag_probe = LagProbe(self.settings)
        try:
            while not inner.is_set():
                if stop.wait(0.2):
                    break
                if not feed.alive() and not inner.is_set():
                    inner.wait(1.0)  # the writer takes the reader's last items and its error first
                    if not errors:
                        errors.append(TransientError("the binlog reader ended unexpectedly"))
                    break
                self._guard_writer(writer)
                if self.state.position is not None:
                    self.state.lag_bytes = lag_probe.lag_bytes(self.state.position)
                    if self.state.lag_bytes is not None:
                        self.metrics.lag_bytes.set(self.state.lag_bytes)
        finally:
            inner.set()
            feed.close()
            self._feed = None
            lag_probe.close()
            for t in threads:
                t.join(self.settings.shutdown_timeout_seconds)
            self.state.streaming = False
            self.metrics.connected.labels("source").set(0)
        if errors:
            raise _as_ours(errors[0])

    # Writer --------------------------------------------------------------------------------------

    def _write(self, stop: threading.Event, q: SourceFeed, writer: StagingWriter) -> None:
        s = self.settings
        buffer: list[RowChange] = []
        batch_rows = 0
        batch_started = 0.0
        partial = False  # inside a source transaction whose end we haven't seen
        commit: TxnChunk | None = None  # last complete transaction in the open batch
        txns = 0

        def flush() -> None:
            nonlocal buffer
            if buffer:
                with self._guarded():
                    writer.apply(buffer)
                if any(ch.absent for ch in buffer):
                    self._fill_absent(writer, buffer)
                buffer = []
                self.state.progress_at = time.time()  # a huge transaction is progress too

        m = self.metrics
        counted = {"star": writer.star_rows_changed, **writer.dead_letters}  # as of the last commit

        def do_commit() -> None:
            nonlocal batch_rows, commit, txns
            assert commit is not None and commit.commit is not None
            flush()
            with self._guarded():
                writer.commit(commit.commit, commit.event_time or None)
            structlog.contextvars.bind_contextvars(position=str(commit.commit))  # on every later line
            st = self.state
            now = time.time()
            self._observe_position(commit.commit)
            st.last_commit_at = st.progress_at = now
            st.open_origin = 0.0
            if commit.event_time:
                st.last_event_time = commit.event_time
            st.rows_applied += batch_rows
            st.transactions_applied += txns
            st.batches_committed += 1
            m.rows_applied.inc(batch_rows)
            m.transactions_applied.inc(txns)
            m.batch_rows.observe(batch_rows)
            m.batch_seconds.observe(time.monotonic() - batch_started)
            m.last_commit.labels("staging").set(now)
            m.star_rows.inc(writer.star_rows_changed - counted["star"])
            counted["star"] = writer.star_rows_changed
            for kind, n in writer.dead_letters.items():
                m.dead_letters.labels(kind).inc(n - counted.get(kind, 0))
                counted[kind] = n
            log.debug("batch_committed", rows=batch_rows, transactions=txns, position=str(commit.commit))
            batch_rows, txns, commit = 0, 0, None

        st = self.state
        while not stop.is_set():
            try:
                item = q.get(timeout=0.05 if commit is not None else 0.5)
            except queue.Empty:
                st.alive_at = now = time.time()
                if not st.starved_since:
                    st.starved_since = now
                if commit is not None and not partial:
                    do_commit()
                continue
            st.alive_at = st.heard_at = time.time()
            st.starved_since = 0.0
            if isinstance(item, SchemaChange):
                if commit is not None:
                    do_commit()  # everything before the statement, under the old definitions
                self._follow_schema(writer, item)
                continue
            if isinstance(item, Heartbeat):
                if commit is None and not partial and not buffer and q.empty():
                    self.state.caught_up_at = self.state.progress_at = time.time()
                    self._save_idle_position(writer, item.position)
                continue
            if batch_rows == 0 and commit is None and not partial:
                batch_started = time.monotonic()
            if not st.open_origin:
                st.open_origin = item.origin() or st.heard_at
            for ch in item.changes:
                m.events_read.labels(ch.table, ch.op.value).inc()
            if item.hold:  # a prepared XA transaction's rows: kept, counted when its XA COMMIT applies them
                with self._guarded():
                    writer.hold(item.changes)
            else:
                if writer.unlabeled_held and item.commit is not None and not item.xa_prepared:
                    flush()  # an XA transaction committed in one phase, its first slices kept
                    with self._guarded():
                        batch_rows += writer.apply_held("")
                buffer.extend(item.changes)
                batch_rows += item.rows
            if item.commit is not None and (item.xa_commit or item.xa_rollback or item.xa_prepared or item.stops):
                flush()
                batch_rows += self._transaction_control(writer, item, item.commit)
            if len(buffer) >= s.chunk_rows:
                flush()
            if item.commit is None:
                partial = True
                continue
            partial = False
            commit = item
            txns += 1
            if (batch_rows >= s.batch_max_rows or time.monotonic() - batch_started >= s.batch_max_seconds
                    or q.empty()):
                do_commit()
        # Stopping: commit what ends at a transaction boundary, abandon a half-read transaction.
        if commit is not None and not partial:
            do_commit()
        else:
            writer.rollback()
            self.state.open_origin = 0.0


    def _transaction_control(self, writer: StagingWriter, item: TxnChunk, at: Position) -> int:
        """XA decisions, XA prepares and tables stopped by the transaction ending at ``at``, in the
        open batch; returns the rows a decision applied."""
        applied = 0
        with self._guarded():
            if item.xa_prepared:
                writer.label_held(item.xa_prepared, at)
            if item.xa_commit:
                applied = writer.apply_held(item.xa_commit, item.xa_skip)
            if item.xa_rollback:
                writer.drop_held(item.xa_rollback)
            if item.stops:
                writer.stop_tables(item.stops, at)
                self.metrics.tables_stopped.set(len(writer.stopped))
        return applied

    def _follow_schema(self, writer: StagingWriter, change: SchemaChange) -> None:
        """Staging follows a schema change in one transaction with the statement's position: ALTERs,
        or a stopped table; a column added gets its existing rows' values from the source (read
        now: later changes to those rows are replayed on top, with full row images)."""
        with self._guarded():
            backfill = writer.apply_schema_change(change)
        # a backfill streams for as long as the table is big: no guard
        if backfill:
            conn = mysql.connect(self.settings)
            try:
                for table, columns in backfill:
                    writer.backfill(table, columns, _source_values(conn, table, columns, writer))
            finally:
                conn.close()
        with self._guarded():
            writer.commit(change.position, change.event_time or None)
        self._observe_position(change.position)
        self.state.last_commit_at = self.state.progress_at = time.time()
        self.metrics.tables_stopped.set(len(writer.stopped))

    def _fill_absent(self, writer: StagingWriter, changes: list[RowChange]) -> None:
        """Rows written before a column of the followed definition existed (replayed after a lag
        across several ALTERs) get that column's value from the source by key, in the open batch,
        as a column added does for every row: later changes to those rows replay on top."""
        wanted: dict[str, tuple[set[str], dict[tuple[Any, ...], None]]] = {}
        for ch in changes:
            if ch.absent and ch.after is not None and ch.table not in writer.stopped:
                table = writer.tables[ch.table]
                cols, keys = wanted.setdefault(ch.table, (set(), {}))
                cols.update(ch.absent)
                keys[tuple(ch.after[i] for i in table.key_indexes())] = None
        conn = mysql.connect(self.settings)
        try:
            for name, (cols, keys) in wanted.items():
                table = writer.tables[name]
                columns = [c for c in table.column_names if c in cols and c not in table.primary_key]
                listed = list(keys)
                try:
                    rows = [r for i in range(0, len(listed), 1000)
                            for r in _source_values(conn, table, columns, writer, listed[i:i + 1000])]
                except pymysql.err.OperationalError as exc:
                    if exc.args and exc.args[0] == 1054:  # gone from the source since: a later DDL drops it
                        log.info("absent_columns_gone", table=name, columns=columns)
                        continue
                    raise
                with self._guarded():
                    writer.backfill(table, columns, rows)
                log.info("absent_columns_filled", table=name, columns=columns, rows=len(rows))
        finally:
            conn.close()

    def _save_idle_position(self, writer: StagingWriter, at: Position | None) -> None:
        """Idle, with the source's binlog ended past our position by events we don't follow (a
        rotation, another schema's statements): save that end, so the position shows the truth
        and a reconcile waiting for staging to reach the source's position gets there."""
        now = self.state.position
        if at is None or now is None or (at.file, at.pos) <= (now.file, now.pos):
            return
        with self._guarded():  # as every statement to staging
            writer.commit(at, None)
        self._observe_position(at)
        log.debug("idle_position_saved", position=str(at))


def fences(pg: psycopg.Connection[Any], pipeline: str, position: Position) -> dict[str, Position]:
    """Tables copied at a position past the stream's (added to the settings while it was behind):
    each with that position, up to which the binlog's events for it are in its copy already."""
    out = {}
    for table, text in snapshot_positions(pg, pipeline).items():
        copied = Position.parse(text)
        if copied.order() > position.order():
            out[table] = copied
    return out


def _source_values(conn: pymysql.connections.Connection, table: Table, columns: list[str],
                   writer: StagingWriter, keys: list[tuple[Any, ...]] | None = None) -> Iterator[tuple[Any, ...]]:
    """(key..., columns...) of every source row (or of those with ``keys``), converted; a value
    with no PostgreSQL form is dead-lettered."""
    part = Table(table.name, tuple(c for c in table.columns if c.name in table.primary_key or c.name in columns),
                 table.primary_key)
    conv = RowConverter(part)
    names = part.column_names
    pick = [names.index(k) for k in table.primary_key] + [names.index(c) for c in columns]
    where: str = ""
    params: tuple[Any, ...] = ()
    if keys is not None:
        key_list = ", ".join(quote_mysql(k) for k in table.primary_key)
        one = "(" + ", ".join(["%s"] * len(table.primary_key)) + ")"
        where = f" WHERE ({key_list}) IN ({', '.join([one] * len(keys))})"
        params = tuple(v for k in keys for v in k)
    with conn.cursor(pymysql.cursors.SSCursor) as cur:
        cur.execute(f"SELECT {select_list(part)} FROM {quote_mysql(table.name)}{where}", params)
        for raw in cur:
            try:
                row = conv.from_snapshot(raw)
            except Unrepresentable as exc:
                writer.dead_letter(table.name, [raw[i] for i in part.key_indexes()], str(exc), repr(raw)[:10000])
                continue
            yield tuple(row[i] for i in pick)


class LagProbe:
    """How many binlog bytes the source has written past our position (asked every few seconds on
    a connection of its own; ``None`` while the source can't be asked)."""

    def __init__(self, settings: Settings, every_seconds: float = 5.0) -> None:
        self._settings = settings
        self._every = every_seconds
        self._next = 0.0
        self._last: int | None = None
        self._conn: Any = None

    def lag_bytes(self, position: Position) -> int | None:
        now = time.monotonic()
        if now < self._next:
            return self._last
        self._next = now + self._every
        try:
            if self._conn is None:
                self._conn = mysql.connect(self._settings)
            with self._conn.cursor() as cur:
                cur.execute("SHOW BINARY LOGS")
                logs = [(str(r[0]), int(r[1])) for r in cur.fetchall()]
            self._last = binlog_bytes_behind(logs, position)
        except Exception:  # noqa: BLE001 - a metric, not a reason to stop; the stream reports real faults
            self.close()
            self._last = None
        return self._last

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None


def binlog_bytes_behind(logs: list[tuple[str, int]], position: Position) -> int | None:
    """Bytes from ``position`` to the end of the last binlog, given SHOW BINARY LOGS (name, size)."""
    total, seen = 0, False
    for name, size in logs:
        if name == position.file:
            seen = True
            total += max(0, size - position.pos)
        elif seen:
            total += size
    return total if seen else None


def _as_ours(exc: BaseException) -> BaseException:
    if isinstance(exc, SoftcartError):
        return exc
    if isinstance(exc, psycopg.OperationalError):
        return TransientError(f"staging connection lost: {str(exc).strip()}")
    if isinstance(exc, pymysql.err.OperationalError | pymysql.err.InterfaceError):
        return TransientError(f"source connection lost: {exc}")
    return FatalError(f"{type(exc).__name__}: {exc}")
