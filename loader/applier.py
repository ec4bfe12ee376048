"""The applier: the micro-batch loop that takes source transactions off the queue and applies them to
staging, the star schema and the outbox, one PostgreSQL transaction per batch with its position.

When a batch writes and commits is decided by the pure policy in ``transform.batching``; what each
row does by ``loader.staging.StagingWriter``. Here: the loop, the XA and schema-change steps, the
backfills a schema change needs (read from the source through ``SourceRows``, which the capture side
provides), and the guard that cuts a staging connection gone silent. Metrics are reported to an
``ApplyObserver``; the stages' clocks are written to the shared ``PipelineState``.
"""

from __future__ import annotations

import contextlib
import queue
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import psycopg
import structlog

from loader import online
from loader.online import Chunk, ChunkGate, Fence, Key, Window, apply_chunk, fenced, fenced_item, refusal, watermarks
from loader.pg import cut, pg_connect
from loader.staging import StagingWriter
from transform.batching import Batching, BatchLimits
from transform.changes import carried, filled
from transform.errors import SoftcartError, SourceColumnGone, SourceTableGone
from transform.model import ApplyConfig, Heartbeat, Position, RowChange, SchemaChange, TxnChunk
from transform.progress import PipelineState
from transform.schema import Table
from transform.values import RowConverter, Unrepresentable

log = structlog.get_logger(__name__)


class Feed(Protocol):
    """The bounded queue between the binlog reader and the applier."""

    def get(self, timeout: float) -> TxnChunk | SchemaChange | Heartbeat: ...

    def empty(self) -> bool: ...


class SourceRows(Protocol):
    """Reads rows from the source for a backfill (a connection of its own; closed by ``close``)."""

    def select(self, part: Table, keys: list[tuple[Any, ...]] | None) -> Iterator[tuple[Any, ...]]:
        """Rows of ``part`` (the key and the wanted columns of a table), raw as a snapshot reads
        them; all of them, or those with ``keys``. Raises SourceColumnGone for a column the source
        no longer has."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class BatchDone:
    rows: int
    transactions: int
    seconds: float
    star_rows: int  # star rows changed by this batch
    dead_letters: dict[str, int]  # rows dead-lettered by this batch, by kind


class ApplyObserver(Protocol):
    """Where the applier reports what it did (the program's metrics)."""

    def read(self, changes: Sequence[RowChange]) -> None: ...

    def committed(self, done: BatchDone) -> None: ...

    def position(self, position: Position) -> None: ...

    def tables_stopped(self, n: int) -> None: ...

    def copied(self, table: str, rows: int, finished: bool) -> None:
        """An online copy's chunk of ``rows`` rows applied (``finished``: its last)."""
        ...


class Applier:
    def __init__(self, config: ApplyConfig, writer: StagingWriter, state: PipelineState, observer: ApplyObserver,
                 open_source: Callable[[], SourceRows], gate: ChunkGate | None = None) -> None:
        """``open_source()`` returns a ``SourceRows`` (a new source connection) for a backfill;
        ``gate``: where online copies hand their chunks over (loader/online.py)."""
        self.gate = gate
        self.config = config
        self.writer = writer
        self.state = state
        self.observer = observer
        self._open_source = open_source
        self.batch = Batching(BatchLimits(config.batch_max_rows, config.batch_max_seconds, config.chunk_rows))
        self._buffer: list[RowChange] = []
        self._last: TxnChunk | None = None  # the last whole transaction in the open batch
        self._counted = {"star": writer.star_rows_changed, **writer.dead_letters}  # as of the last commit
        self._lock_wait_seen = False
        self._lock_asked_at = 0.0
        self._fences: list[Fence] = []  # chunks applied whose position the stream has not passed
        self._window: Window | None = None  # the watermark method: between a chunk's watermarks

    # The loop ------------------------------------------------------------------------------------

    def run(self, stop: Any, feed: Feed) -> None:
        """Apply what ``feed`` brings until ``stop`` (an Event) is set; then commit a complete
        batch, roll back a partial one."""
        st, batch = self.state, self.batch
        while not stop.is_set():
            try:
                item = feed.get(timeout=batch.poll_timeout() if self.gate is None or not self.gate.active else 0.02)
            except queue.Empty:
                st.alive_at = now = time.time()
                if not st.starved_since:
                    st.starved_since = now
                self._chunk_at_boundary(None)
                if batch.on_empty_poll():
                    self._commit()
                continue
            st.alive_at = st.heard_at = time.time()
            st.starved_since = 0.0
            self._chunk_at_boundary(item)
            if isinstance(item, SchemaChange):
                self._passed(item.position)
                if batch.on_schema_change():
                    self._commit()  # everything before the statement, under the old definitions
                self._follow_schema(item)
            elif isinstance(item, Heartbeat):
                if batch.idle(len(self._buffer), feed.empty()):
                    st.caught_up_at = st.progress_at = time.time()
                    self._save_idle_position(item.position)
            elif self._take(item, feed):
                self._commit()
        if batch.at_stop():
            self._commit()
        else:
            self.writer.rollback()
            batch.rolled_back()
            self._buffer, self._last = [], None
            self.state.open_origin = 0.0

    def _chunk_at_boundary(self, item: TxnChunk | SchemaChange | Heartbeat | None) -> None:
        """At a source transaction's boundary, an online copy's chunk due before ``item`` (or now
        the queue is empty, or the source idle) goes into the open batch first."""
        if self.gate is None or self.batch.partial:
            return
        if isinstance(item, Heartbeat):
            self._fences = []  # the reader is at the binlog's end: past every chunk's position
        chunk = self.gate.idle() if item is None or isinstance(item, Heartbeat) else self.gate.before(item)
        if chunk is not None:
            self._apply_chunk(chunk)

    def _apply_chunk(self, chunk: Chunk, skip: Collection[Key] = ()) -> None:
        """An online copy's chunk into the open batch (on its own if the batch has no transaction),
        but for the keys in ``skip``; or refused, and the copier told."""
        gate = self.gate
        assert gate is not None
        refused = refusal(self.writer, chunk)
        if refused is not None:
            reason, final = refused
            (log.error if final else log.info)("online_copy_chunk_refused", table=chunk.table, reason=reason)
            gate.cancel(give_up=reason if final else "")
            return
        self._flush()
        with self.guarded():
            applied, stale = apply_chunk(self.writer, chunk, self.config.pipeline, skip)
        self.batch.add_rows(applied)
        if not chunk.watermark:
            self._fences.append(Fence(chunk.table, chunk.position, chunk.lo, chunk.hi))
        if self._last is None:  # no transaction in the batch: the chunk commits on its own
            with self.guarded():
                self.writer.commit(None, None, origin=f"online copy at {chunk.position}")
            self.batch.committed()
        self.state.progress_at = time.time()
        self.observer.copied(chunk.table, len(chunk.rows), chunk.hi is None and not stale)
        gate.applied(stale)

    def _watermark(self, kind: str, watermark: str) -> None:
        """The watermark method (loader/online.py): a low watermark opens the window of its
        chunk's table; the high one applies the chunk without the keys changed in the window."""
        gate = self.gate
        assert gate is not None
        if kind == "low":
            table = gate.low_watermark(watermark)
            if table is not None and table in self.writer.tables:
                self._window = Window(table, watermark, self.writer.tables[table].key_indexes())
            return
        window = self._window
        if window is None or window.watermark != watermark:
            return  # an old one (before a restart), or another copier's
        self._window = None
        chunk = gate.high_watermark(watermark)
        if chunk is None:
            return  # the copier gave it up
        self._apply_chunk(chunk, window.keys)

    def _fenced(self, item: TxnChunk) -> TxnChunk:
        """``item`` without the changes online-copied chunks hold already (loader/online.py)."""
        at = online.transaction_ends_by(item)
        if at is not None:
            self._passed(at)
        return fenced_item(item, self._fences, self._fence_keys(self._fences))

    def _fence_keys(self, fences: list[Fence]) -> dict[str, Sequence[int]]:
        return {f.table: self.writer.tables[f.table].key_indexes() for f in fences}

    def _passed(self, at: Position) -> None:
        """The stream is at ``at``: the fences of chunks read before it no longer hold."""
        self._fences = [f for f in self._fences if at.order() <= f.position.order()]

    def _keep(self) -> Callable[[tuple[RowChange, ...]], tuple[RowChange, ...]]:
        """What becomes of a held transaction's changes when they apply (they all hold: the
        transaction ends by each live fence's position): what the fences leave, with the columns
        their images lack read (:meth:`_filled`), noted by the open window."""
        fences, window = list(self._fences), self._window
        keys = self._fence_keys(fences)

        def keep(changes: tuple[RowChange, ...]) -> tuple[RowChange, ...]:
            if fences:
                changes = fenced(changes, fences, keys)
            if any(ch.absent for ch in changes):
                changes = tuple(self._filled(changes))
            if window is not None:
                window.note(changes)
            return changes

        return keep

    def _take(self, item: TxnChunk, feed: Feed) -> bool:
        """One slice of a source transaction into the open batch; True: commit now."""
        marks: list[tuple[str, str]] = []
        if self.gate is not None and self.gate.watermarks:  # only then are signal rows read
            item, marks = watermarks(item, self.config.pipeline)
        self.observer.read(item.changes)  # as the binlog has them, fenced or not
        if self._fences:
            item = self._fenced(item)
        st, batch, writer = self.state, self.batch, self.writer
        batch.begin_slice(time.monotonic())
        if not st.open_origin:
            st.open_origin = item.origin() or st.heard_at
        if item.hold:  # a prepared XA transaction's rows: kept, counted when its XA COMMIT applies them
            with self.guarded():
                writer.hold(item.changes)
        else:
            if writer.unlabeled_held and item.commit is not None and not item.xa_prepared:
                self._flush()  # an XA transaction committed in one phase, its first slices kept
                with self.guarded():
                    batch.add_rows(writer.apply_held("", keep=self._keep()))
            self._buffer.extend(item.changes)
            if self._window is not None:
                self._window.note(item.changes)
            batch.add_rows(item.rows)
        if item.commit is not None and (item.xa_commit or item.xa_rollback or item.xa_prepared or item.stops):
            self._flush()
            batch.add_rows(self._transaction_control(item, item.commit))
        if batch.write_buffer(len(self._buffer)):
            self._flush()
        ends = item.commit is not None
        if ends:
            self._last = item
        for kind, watermark in marks:  # after the transaction's own rows: a chunk saves its position
            self._watermark(kind, watermark)
        return batch.end_slice(ends, time.monotonic(), feed.empty())

    def _flush(self) -> None:
        """The buffered rows to staging, inside the open transaction."""
        buffer = self._buffer
        if not buffer:
            return
        if any(ch.absent for ch in buffer):
            buffer = self._filled(buffer)
        with self.guarded():
            self.writer.apply(buffer)
        self._buffer = []
        self.state.progress_at = time.time()  # a huge transaction is progress too

    def _commit(self) -> None:
        last, batch, writer = self._last, self.batch, self.writer
        assert last is not None and last.commit is not None
        self._flush()
        with self.guarded():
            writer.commit(last.commit, last.event_time or None)
        structlog.contextvars.bind_contextvars(position=str(last.commit))  # on every later line
        st = self.state
        now = time.time()
        self.observe_position(last.commit)
        st.last_commit_at = st.progress_at = now
        st.open_origin = 0.0
        if last.event_time:
            st.last_event_time = last.event_time
        st.rows_applied += batch.rows
        st.transactions_applied += batch.transactions
        st.batches_committed += 1
        dead = {kind: n - self._counted.get(kind, 0) for kind, n in writer.dead_letters.items()}
        self.observer.committed(BatchDone(batch.rows, batch.transactions, time.monotonic() - batch.started,
                                          writer.star_rows_changed - self._counted["star"], dead))
        self._counted = {"star": writer.star_rows_changed, **writer.dead_letters}
        log.debug("batch_committed", rows=batch.rows, transactions=batch.transactions, position=str(last.commit))
        batch.committed()
        self._last = None

    def observe_position(self, position: Position) -> None:
        self.state.position = position
        self.observer.position(position)

    # Steps that are not rows ---------------------------------------------------------------------

    def _transaction_control(self, item: TxnChunk, at: Position) -> int:
        """XA decisions, XA prepares and tables stopped by the transaction ending at ``at``, in the
        open batch; returns the rows a decision applied."""
        writer = self.writer
        applied = 0
        with self.guarded():
            if item.xa_prepared:
                writer.label_held(item.xa_prepared, at)
            if item.xa_commit:
                applied = writer.apply_held(item.xa_commit, item.xa_skip, self._keep())
            if item.xa_rollback:
                writer.drop_held(item.xa_rollback)
            if item.stops:
                writer.stop_tables(item.stops, at)
                self.observer.tables_stopped(len(writer.stopped))
        return applied

    def _follow_schema(self, change: SchemaChange) -> None:
        """Staging follows a schema change in one transaction with the statement's position: ALTERs,
        or a stopped table; a column added gets its existing rows' values from the source (read
        now: later changes to those rows are replayed on top, with full row images)."""
        writer = self.writer
        with self.guarded():
            backfill = writer.apply_schema_change(change)
        # a backfill streams for as long as the table is big: no guard
        if backfill:
            source = self._open_source()
            try:
                for table, columns in backfill:
                    writer.backfill(table, columns, self._source_values(source, table, columns))
            finally:
                source.close()
        with self.guarded():
            writer.commit(change.position, change.event_time or None)
        self.observe_position(change.position)
        self.state.last_commit_at = self.state.progress_at = time.time()
        self.observer.tables_stopped(len(writer.stopped))

    def _filled(self, changes: Sequence[RowChange]) -> list[RowChange]:
        """``changes`` with the columns their row images lack read from the source by key, before
        they apply (the star schema sees whole rows): rows written before a column of the followed
        definition existed (replayed after a lag across ALTERs), and another session's partial
        images (binlog_row_image MINIMAL or NOBLOB). Values are the source's current ones, as a
        column added gets: later changes replay on top (``transform.changes.filled``). A row read
        with a value staging can't hold makes its change a dead letter (staging keeps the row as it
        was); a column gone from the source since keeps the row's previous value (``carried``)."""
        writer = self.writer
        wanted: dict[str, tuple[set[str], dict[tuple[Any, ...], None]]] = {}
        for ch in changes:
            if ch.absent and ch.after is not None and ch.error is None and ch.table not in writer.stopped:
                table = writer.tables[ch.table]
                cols, keys = wanted.setdefault(ch.table, (set(), {}))
                cols.update(ch.absent)
                keys[tuple(ch.after[i] for i in table.key_indexes())] = None
        read: dict[str, tuple[list[str], dict[tuple[Any, ...], tuple[Any, ...]]]] = {}
        refused: dict[str, dict[tuple[Any, ...], str]] = {}  # a value staging can't hold: the change's dead letter
        source = self._open_source()
        try:
            for name, (cols, keys) in wanted.items():
                table = writer.tables[name]
                columns = [c for c in table.column_names if c in cols and c not in table.primary_key]
                got, values = self._current(source, table, columns, list(keys), refused.setdefault(name, {}))
                if got or not columns:  # else every column is gone: no row is known gone, nothing to fill
                    read[name] = (got, values)
                    log.info("absent_columns_filled", table=name, columns=got, rows=len(values), keys=len(keys))
        finally:
            source.close()
        out = filled(changes, writer.tables, read, refused)
        gone: dict[str, list[tuple[Any, ...]]] = {}  # still absent: gone from the source since
        for ch in out:
            if ch.absent and ch.after is not None and ch.error is None:
                image = ch.before if ch.before is not None else ch.after
                gone.setdefault(ch.table, []).append(tuple(image[i] for i in writer.tables[ch.table].key_indexes()))
        if not gone:
            return out
        return carried(out, writer.tables, {name: writer.rows_by_key(name, keys) for name, keys in gone.items()})

    def _current(self, source: SourceRows, table: Table, columns: list[str], keys: list[tuple[Any, ...]],
                 refused: dict[tuple[Any, ...], str]) -> tuple[list[str], dict[tuple[Any, ...], tuple[Any, ...]]]:
        """The source's current values of ``columns`` of the rows with ``keys``: the columns read
        (without those gone from the source since: a later DDL drops them) and their values by key."""
        n = len(table.primary_key)
        try:
            rows = [r for i in range(0, len(keys), 1000)
                    for r in self._source_values(source, table, columns, keys[i:i + 1000], refused)]
            return columns, {r[:n]: r[n:] for r in rows}
        except SourceTableGone:  # a later DROP or RENAME: the stream follows it when it gets there
            log.info("absent_columns_gone", table=table.name, columns=columns, reason="the table is gone")
            return [], {}
        except SourceColumnGone:
            if len(columns) == 1:
                log.info("absent_columns_gone", table=table.name, columns=columns)
                return [], {}
        parts = [self._current(source, table, [c], keys, refused) for c in columns]  # each alone: which are gone
        kept = [(cols[0], values) for cols, values in parts if cols]
        common = set.intersection(*(set(values) for _, values in kept)) if kept else set()
        return [c for c, _ in kept], {k: tuple(values[k][0] for _, values in kept) for k in common}

    def _source_values(self, source: SourceRows, table: Table, columns: list[str],
                       keys: list[tuple[Any, ...]] | None = None, refused: dict[tuple[Any, ...], str] | None = None
                       ) -> Iterator[tuple[Any, ...]]:
        """(key..., columns...) of every source row (or of those with ``keys``), converted; a row
        with a value that has no PostgreSQL form is dead-lettered, or noted in ``refused`` (by key,
        with the reason) for the caller to dead-letter the change it fills."""
        part = Table(table.name, tuple(c for c in table.columns if c.name in table.primary_key or c.name in columns),
                     table.primary_key)
        conv = RowConverter(part)
        names = part.column_names
        pick = [names.index(k) for k in table.primary_key] + [names.index(c) for c in columns]
        for raw in source.select(part, keys):
            try:
                row = conv.from_snapshot(raw)
            except Unrepresentable as exc:
                if refused is not None:
                    key_conv = RowConverter(Table(table.name, tuple(part.column(k) for k in part.primary_key),
                                                  part.primary_key))
                    refused[key_conv.from_snapshot([raw[i] for i in part.key_indexes()])] = str(exc)
                    continue
                self.writer.dead_letter(table.name, [raw[i] for i in part.key_indexes()], str(exc), repr(raw)[:10000])
                continue
            yield tuple(row[i] for i in pick)

    def _save_idle_position(self, at: Position | None) -> None:
        """Idle, with the source's binlog ended past our position by events we don't follow (a
        rotation, another schema's statements): save that end, so the position shows the truth
        and a reconcile waiting for staging to reach the source's position gets there."""
        now = self.state.position
        if at is None or now is None or (at.file, at.pos) <= (now.file, now.pos):
            return
        with self.guarded():  # as every statement to staging
            self.writer.commit(at, None)
        self.observe_position(at)
        log.debug("idle_position_saved", position=str(at))

    # The guard -----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def guarded(self) -> Iterator[None]:
        """Statements to staging inside are watched by ``guard``; a statement that ends (or fails)
        is no longer in flight."""
        self.state.writer_busy_since = time.monotonic()
        try:
            yield
        finally:
            self.state.writer_busy_since = 0.0

    def guard(self) -> None:
        """Called by the supervisor's loop. A statement to staging that takes longer than
        SOFTCART_READ_TIMEOUT_SECONDS means a network gone silent (a middlebox that acknowledges
        but never delivers defeats TCP's own timeouts): shut the socket, so the writer fails, and
        the supervisor reconnects."""
        busy = self.state.writer_busy_since
        if not busy:
            self.state.writer_wait, self._lock_wait_seen, self._lock_asked_at = "", False, 0.0
            return
        limit = self.config.staging.read_timeout_seconds
        waited = time.monotonic() - busy
        if waited < min(limit, self.config.stall_seconds / 2):
            return
        if self._waiting_for_a_lock():
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
        cut(self.writer.conn)

    def _waiting_for_a_lock(self) -> bool:
        """Is the writer's session waiting for a lock (a rebuild or a repair holding the apply lock)?
        Asked on a connection of its own (at most every 2 s; connected within 2 s, or the cut waited
        for a frozen staging's connect timeout too): a staging that answers is no silent network."""
        if time.monotonic() - self._lock_asked_at < 2.0:
            return self._lock_wait_seen
        self._lock_asked_at = time.monotonic()
        try:
            with pg_connect(replace(self.config.staging, connect_timeout_seconds=2.0), autocommit=True) as other:
                row = other.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s",
                                    (self.writer.conn.info.backend_pid,)).fetchone()
        except (SoftcartError, psycopg.Error):
            self._lock_wait_seen = False
            return False
        waiting = bool(row and row[0] == "Lock")
        if waiting and not self._lock_wait_seen:
            log.info("writer_waiting_for_lock", position=str(self.state.position),
                     limit_seconds=self.config.lock_wait_seconds)
        self._lock_wait_seen = waiting
        return waiting
