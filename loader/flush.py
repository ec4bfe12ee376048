"""The flush: pending outbox keys -> a CSV batch in the spool -> the warehouse, exactly once.

1. ``create_batch``: in one PostgreSQL transaction, take the outbox rows since the last flush,
   read the current star-schema rows of their keys (a key whose row is gone becomes a delete),
   write the batch into the spool (fsync, atomic rename into pending/), record it in
   ``softcart.batch`` and advance ``softcart.flush_state``. A crash before the commit leaves only a
   folder PostgreSQL doesn't know, which the next flush overwrites.
2. ``load_pending``: load pending batches in order. The warehouse commits the data with a ledger
   row in one unit of work; then the batch is marked loaded. A crash between the two is healed by
   the ledger: the replay is skipped. A batch the warehouse refuses moves to failed/; later
   batches touching the same keys wait behind it, so the order per key is never broken.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import structlog
from psycopg import sql

from loader.checkpoint import APPLY_LOCK
from loader.ddl import META
from loader.pg import fed, holders_text, lock_holders, lock_wait_limit
from loader.spool import Spool, SpooledBatch
from loader.star import STAR
from loader.warehouse import TABLES, BatchIdTaken, BatchRejected, Warehouse, WTable
from transform.errors import ConfigError, TransientError
from transform.star_sql import key_match

log = structlog.get_logger(__name__)
Conn = psycopg.Connection[Any]


@dataclass(frozen=True)
class FlushResult:
    created: int | None  # id of the batch created, if any
    loaded: int
    skipped: int  # already in the warehouse's ledger
    failed: int
    waiting: int  # pending batches that could not be loaded now


def _outbox_keys(t: WTable, last: int, hi: int) -> sql.Composed:
    """The distinct keys of ``t`` in outbox rows ``last`` < id <= ``hi``, named as the key columns."""
    return sql.SQL("SELECT DISTINCT {} FROM {}.outbox_keys o WHERE o.id > {} AND o.id <= {} AND o.tbl = {}").format(
        sql.SQL(", ").join(sql.SQL("o.k{} AS {}").format(sql.Literal(i + 1), sql.Identifier(k))
                           for i, k in enumerate(t.key)),
        sql.Identifier(META), sql.Literal(last), sql.Literal(hi), sql.Literal(t.name))


def _keys_sql(t: WTable, last: int, hi: int) -> sql.Composed:
    """Current rows of the outbox's keys for ``t``, with op U, or D where the row is gone."""
    ks = [sql.Identifier(k) for k in t.key]
    cols = sql.SQL(", ").join(
        sql.SQL("k.{}").format(sql.Identifier(c)) if c in t.key else sql.SQL("r.{}").format(sql.Identifier(c))
        for c in t.columns)
    return sql.SQL(
        "SELECT CASE WHEN r.{first} IS NULL THEN 'D' ELSE 'U' END, {cols} FROM ({keys}) k"
        " LEFT JOIN {star}.{table} r ON {join} ORDER BY {order}").format(join=key_match(t.key, "r", "k"),
        first=ks[0], cols=cols, keys=_outbox_keys(t, last, hi), star=sql.Identifier(STAR),
        table=sql.Identifier(t.name), order=sql.SQL(", ").join(sql.SQL("k.{}").format(k) for k in ks))


def _all_sql(t: WTable) -> sql.Composed:
    return sql.SQL("SELECT 'U', {} FROM {}.{} ORDER BY {}").format(
        sql.SQL(", ").join(sql.Identifier(c) for c in t.columns), sql.Identifier(STAR), sql.Identifier(t.name),
        sql.SQL(", ").join(sql.Identifier(k) for k in t.key))


@dataclass(frozen=True)
class Retrying:
    """The pending batch failing to load longest: it is retried, and seen."""

    batch: int
    attempts: int
    since: dt.datetime
    seconds: float
    error: str


def retrying_batch(conn: Conn, pipeline: str) -> Retrying | None:
    row = conn.execute(sql.SQL(
        "SELECT id, attempts, first_failed_at, EXTRACT(EPOCH FROM now() - first_failed_at), error FROM {}.batch"
        " WHERE pipeline = %s AND state = 'pending' AND first_failed_at IS NOT NULL ORDER BY first_failed_at"
        " LIMIT 1").format(sql.Identifier(META)), (pipeline,)).fetchone()
    return Retrying(int(row[0]), int(row[1]), row[2], float(row[3]), str(row[4] or "")) if row else None


@dataclass(frozen=True)
class Backlog:
    """What waits to reach the warehouse: star-schema changes not yet in a batch, batches pending
    and failed, the oldest pending batch's age, and the batch failing longest (attempts, seconds)."""

    outbox_rows: int
    pending: int
    failed: int
    oldest_pending_seconds: float
    attempts: int
    failing_seconds: float


#: Outbox keys not yet in a batch (of pipeline %(p)s).
PENDING_OUTBOX = sql.SQL("SELECT count(*) FROM {m}.outbox_keys WHERE id > COALESCE((SELECT last_outbox_id"
                         " FROM {m}.flush_state WHERE pipeline = %(p)s), 0)").format(m=sql.Identifier(META))


def read_backlog(conn: Conn, pipeline: str) -> Backlog:
    """One query, from any session (what a scrape runs: it can't freeze with the flusher)."""
    row: Any = conn.execute(sql.SQL(
        "SELECT ({pending}),"
        " count(*) FILTER (WHERE state = 'pending'), count(*) FILTER (WHERE state = 'failed'),"
        " COALESCE(EXTRACT(EPOCH FROM now() - min(created_at) FILTER (WHERE state = 'pending')), 0),"
        " COALESCE((array_agg(attempts ORDER BY first_failed_at) FILTER (WHERE state = 'pending'"
        "  AND first_failed_at IS NOT NULL))[1], 0),"
        " COALESCE(EXTRACT(EPOCH FROM now() - min(first_failed_at) FILTER (WHERE state = 'pending')), 0)"
        " FROM {m}.batch WHERE pipeline = %(p)s").format(pending=PENDING_OUTBOX, m=sql.Identifier(META)),
        {"p": pipeline}).fetchone()
    return Backlog(int(row[0]), int(row[1]), int(row[2]), float(row[3]), int(row[4]), float(row[5]))


#: one loader at a time per pipeline (a session advisory lock)
FLUSH_LOCK = "hashtext('softcart-sync flush ' || %s)"


class Flusher:
    def __init__(self, conn: Conn, spool: Spool, warehouse: Warehouse, pipeline: str,
                 crash_point: str = "", lock_wait_seconds: float = 120.0) -> None:
        if not conn.autocommit:
            raise ValueError("Flusher needs an autocommit connection")
        self.conn = conn
        self.spool = spool
        self.warehouse = warehouse
        self.pipeline = pipeline
        self._crash_point = crash_point  # test hook: die at that point, as SIGKILL would
        self._lock_wait = lock_wait_seconds

    def close(self) -> None:
        """End the warehouse connection and the staging session."""
        try:
            self.warehouse.close()
        finally:
            self.conn.close()

    def pending_outbox_rows(self) -> int:
        row = self.conn.execute(PENDING_OUTBOX, {"p": self.pipeline}).fetchone()
        return int(row[0]) if row else 0

    def create_batch(self) -> int | None:
        """Move the outbox into a new spooled batch (None when it is empty). One batch maker at a
        time (the flush lock). Outbox ids are taken at insert, not at commit: our snapshot must
        start when no writer is in flight, so that no id below the top one we see can appear
        later. Every outbox writer holds the apply lock for its whole transaction; we hold it
        only while our snapshot is taken, not while the batch is built: the stream goes on."""
        conn = self.conn
        with self._session_lock("flush"):
            self._same_spool(record=False)  # recorded with the batch, on the row its transaction locks
            self._advisory("pg_advisory_lock", "apply")
            holding = True
            try:
                with conn.transaction():
                    conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                    # the snapshot starts here; a staging's first row is not numbered past the ledger yet
                    conn.execute(sql.SQL("INSERT INTO {}.flush_state (pipeline, ids_fenced) VALUES (%s, false)"
                                         " ON CONFLICT DO NOTHING").format(sql.Identifier(META)), (self.pipeline,))
                    self._advisory("pg_advisory_unlock", "apply")
                    holding = False
                    made = self._build_batch()
            finally:
                if holding and self._idle():
                    self._advisory("pg_advisory_unlock", "apply")
        if made is None:
            return None
        batch_id, rows, full, position = made
        log.info("batch_created", batch=batch_id, rows=rows, full_reload=full, position=position)
        return batch_id

    def _build_batch(self) -> tuple[int, dict[str, int], bool, str | None] | None:
        conn = self.conn
        (last,) = conn.execute(sql.SQL("SELECT last_outbox_id FROM {}.flush_state WHERE pipeline = %s"
                                       " FOR UPDATE").format(sql.Identifier(META)), (self.pipeline,)).fetchone() \
            or (0,)
        hi_row = conn.execute(sql.SQL("SELECT max(id), bool_or(tbl = '*') FROM {}.outbox WHERE id > %s")
                              .format(sql.Identifier(META)), (last,)).fetchone()
        if hi_row is None or hi_row[0] is None:
            return None
        hi, full = int(hi_row[0]), bool(hi_row[1])
        pos_row = conn.execute(sql.SQL("SELECT binlog_file || ':' || binlog_pos FROM {}.position"
                                       " WHERE pipeline = %s").format(sql.Identifier(META)),
                               (self.pipeline,)).fetchone()
        position = str(pos_row[0]) if pos_row else None
        # The CSV comes from PostgreSQL: COPY streams it into the spool, Python only moves bytes.
        # The batch's keys (for the loader's per-key ordering after a failure) are its files' key
        # columns, read only then (batch_keys); the row's ``keys`` is left empty (earlier versions
        # built it as JSON here: a quarter of a second of PostgreSQL's time per 50,000 keys).
        uid = str(uuid.uuid4())
        (batch_id,) = conn.execute(
            sql.SQL("INSERT INTO {}.batch (pipeline, outbox_from, outbox_to, position, full_reload, rows, keys, uid)"
                    " VALUES (%s, %s, %s, %s, %s, '{{}}', '{{}}', %s) RETURNING id").format(sql.Identifier(META)),
            (self.pipeline, last + 1, hi, position, full, uid)).fetchone() or (0,)
        spooled = self.spool.write(batch_id, {t.name: self._csv(t, full, last, hi) for t in TABLES},
                                   {"pipeline": self.pipeline, "outbox_range": [last + 1, hi],
                                    "source_position": position, "full_reload": full, "batch_uid": uid})
        rows = spooled.row_counts
        conn.execute(sql.SQL("UPDATE {}.batch SET rows = %s WHERE id = %s").format(sql.Identifier(META)),
                     (json.dumps(rows), batch_id))
        conn.execute(sql.SQL("UPDATE {}.flush_state SET last_outbox_id = %s, spool_dir = %s WHERE pipeline = %s")
                     .format(sql.Identifier(META)), (hi, str(self.spool.root.resolve()), self.pipeline))
        conn.execute(sql.SQL("DELETE FROM {}.outbox WHERE id <= %s").format(sql.Identifier(META)), (hi,))
        return int(batch_id), rows, full, position

    def _csv(self, t: WTable, full: bool, last: int, hi: int) -> Iterator[bytes]:
        """The table's part of the batch as CSV, in chunks straight from PostgreSQL (started when
        the spool reads it, so one COPY at a time on the connection)."""
        query = _all_sql(t) if full else _keys_sql(t, last, hi)
        with self.conn.cursor() as cur, cur.copy(sql.SQL("COPY ({}) TO STDOUT (FORMAT csv)").format(query)) as copy:
            for chunk in copy:
                fed(self.conn)  # a reply came: the guard's clock (loader.pg.ReplyGuard) starts again
                yield bytes(chunk)

    def _advisory(self, function: str, lock: str) -> None:
        """``function`` (pg_advisory_lock / pg_advisory_unlock) of the pipeline's ``lock`` (apply:
        the writers' lock, APPLY_LOCK; flush: one loader at a time)."""
        key = APPLY_LOCK if lock == "apply" else FLUSH_LOCK
        self.conn.execute(sql.SQL("SELECT {}(" + key + ")").format(sql.Identifier(function)), (self.pipeline,))

    def _held_by(self, lock: str) -> str:
        return (f"the warehouse loader lock of pipeline {self.pipeline!r} ({lock}) was held for over"
                f" {self._lock_wait:g} s (SOFTCART_LOCK_WAIT_SECONDS) by"
                f" {holders_text(lock_holders(self.conn, FLUSH_LOCK, (self.pipeline,)))}")

    def _idle(self) -> bool:
        return not self.conn.closed and not self.conn.broken and \
            self.conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE

    @contextlib.contextmanager
    def _session_lock(self, lock: str) -> Iterator[None]:
        """The loader's session lock, waited for at most lock_wait_seconds: a loader stuck elsewhere
        is named (its session, and how to end it), never waited for without end."""
        try:
            with lock_wait_limit(self.conn, self._lock_wait, in_transaction=False):
                self._advisory("pg_advisory_lock", lock)
        except psycopg.errors.LockNotAvailable:
            raise TransientError(self._held_by(lock)) from None
        try:
            yield
        finally:
            if self._idle():
                self._advisory("pg_advisory_unlock", lock)

    def pending(self) -> list[tuple[int, str, bool]]:
        """(id, state, full reload) of the batches not loaded yet, in order."""
        return [(int(r[0]), str(r[1]), bool(r[2])) for r in self.conn.execute(
            sql.SQL("SELECT id, state, full_reload FROM {}.batch WHERE pipeline = %s AND state <> 'loaded'"
                    " ORDER BY id").format(sql.Identifier(META)), (self.pipeline,)).fetchall()]

    def batch_keys(self, batch_id: int) -> set[tuple[str, tuple[str | None, ...]]]:
        """The batch's keys as (table, key values as the CSV has them), from its spooled files
        (each row's key columns, after its op): read only when a batch failed, since only then can
        a key be held back (and never for a full reload: it holds back every later batch)."""
        batch = self.spool.find(batch_id)
        if batch is None:
            raise self._folder_missing(batch_id)
        keys: set[tuple[str, tuple[str | None, ...]]] = set()
        for t in TABLES:
            at = [1 + t.columns.index(k) for k in t.key]
            for rows in batch.row_chunks(t.name):
                keys.update((t.name, tuple(r[i] for i in at)) for r in rows)
        return keys

    def load_pending(self, on_loaded: Callable[[SpooledBatch, float], None] | None = None) -> tuple[int, int, int, int]:
        """Load pending batches in order; returns (loaded, skipped, failed, waiting). One loader at
        a time per pipeline (the daemon's flush thread, ``flush``, a reconcile): two would race on
        the same batch, and the loser's ledger conflict would look like a refused batch."""
        with self._session_lock("flush"):
            state = self._same_spool()
            if state is not None and not state[1]:
                self._renumber_pending("this staging's first load")
            try:
                return self._load_pending(on_loaded)
            except BatchIdTaken as exc:
                log.warning("batch_id_taken", error=str(exc))
                self._renumber_pending(str(exc))
                return self._load_pending(on_loaded)

    def _same_spool(self, record: bool = True) -> tuple[str | None, bool] | None:
        """The pipeline's waiting batches must be in this run's spool folder (a command run from a
        shell with a relative SOFTCART_SPOOL_DIR would record batches the daemon can't find, and
        never find the daemon's): refused, naming the folder they were written to. With none
        waiting elsewhere, this folder becomes the pipeline's (a moved spool needs nothing more).
        Returns the flush state read (see _state)."""
        mine = str(self.spool.root.resolve())
        row = self._state()
        recorded = row[0] if row else None
        waiting = self.pending()
        if waiting and self.spool.find(waiting[0][0]) is None:
            where = f"in {recorded}" if recorded and recorded != mine else "elsewhere"
            raise ConfigError(f"SOFTCART_SPOOL_DIR is {mine}, but the batches pipeline {self.pipeline!r} has waiting"
                              f" are {where}: set SOFTCART_SPOOL_DIR to the daemon's spool folder (as a service, its"
                              " state folder) for this command too")
        if record and row is not None and recorded != mine:
            self.conn.execute(sql.SQL("UPDATE {}.flush_state SET spool_dir = %s WHERE pipeline = %s")
                              .format(sql.Identifier(META)), (mine, self.pipeline))
        return row

    def _folder_missing(self, batch_id: int) -> ConfigError:
        return ConfigError(f"batch {batch_id} is recorded but its folder is not in the spool"
                           f" {self.spool.root.resolve()} (SOFTCART_SPOOL_DIR): point it at the folder the batches are"
                           " in, or restore the batch's folder there")

    def _state(self) -> tuple[str | None, bool] | None:
        """(spool folder, numbered past the ledger) of this pipeline's flush state, if it has one."""
        row = self.conn.execute(sql.SQL("SELECT spool_dir, ids_fenced FROM {}.flush_state WHERE pipeline = %s")
                                .format(sql.Identifier(META)), (self.pipeline,)).fetchone()
        return (row[0], bool(row[1])) if row else None

    def _renumber_pending(self, why: str) -> None:
        """Number the batches not loaded yet (in their order) and every later one past all that the
        warehouse's ledger and the spool hold. Needed once for a staging made anew under an
        existing warehouse, and when the ledger turns out to hold a batch number for another
        batch (staging restored from a backup older than the ledger). Each batch: a new spool
        folder (files linked, manifest renumbered), then its row, then the old folder goes; a
        crash in between leaves a folder PostgreSQL doesn't know, which is harmless."""
        conn = self.conn
        ours = {int(r[0]) for r in conn.execute(sql.SQL("SELECT id FROM {}.batch").format(sql.Identifier(META)))}
        floor = max(self.warehouse.max_batch_id(), self.spool.max_batch_id(ignore=ours))
        next_id = max(floor, *ours, 0) + 1
        moved = []
        for old_id, _, _ in self.pending():
            batch = self.spool.find(old_id)
            if batch is None:
                raise self._folder_missing(old_id)
            renumbered = self.spool.copy_as(batch, next_id)
            conn.execute(sql.SQL("UPDATE {}.batch SET id = %s WHERE id = %s").format(sql.Identifier(META)),
                         (next_id, old_id))
            self.spool.remove(batch)
            moved.append((old_id, renumbered.batch_id))
            next_id += 1
        conn.execute(sql.SQL("SELECT setval(pg_get_serial_sequence({}, 'id'), %s, false)").format(
            sql.Literal(f"{META}.batch")), (next_id,))
        conn.execute(sql.SQL("UPDATE {}.flush_state SET ids_fenced = true WHERE pipeline = %s")
                     .format(sql.Identifier(META)), (self.pipeline,))
        log.info("batches_renumbered", why=why, first_free=next_id, batches=moved)

    def _load_pending(self, on_loaded: Callable[[SpooledBatch, float], None] | None) -> tuple[int, int, int, int]:
        loaded = skipped = failed = waiting = 0
        blocked: set[tuple[str, tuple[str | None, ...]]] = set()
        everything = False  # a full reload is stuck: every later batch waits behind it
        for batch_id, state, full in self.pending():
            held = state == "failed" or everything or bool(blocked and full)
            keys: set[tuple[str, tuple[str | None, ...]]] | None = None
            if not held and blocked:
                keys = self.batch_keys(batch_id)
                held = bool(keys & blocked)
            if held:
                if not (everything or full):  # past a stuck full reload, or one itself: keys don't matter
                    blocked |= keys if keys is not None else self.batch_keys(batch_id)
                everything |= full
                waiting += state != "failed"
                continue
            batch = self.spool.find(batch_id)
            if batch is None:
                raise self._folder_missing(batch_id)
            started = time.monotonic()
            try:
                self._mark_attempt(batch_id)
                fresh = self.warehouse.load(batch)
            except (TransientError, ConfigError) as exc:
                self._note_failure(batch_id, str(exc))  # retried, and seen: attempts, since when, why
                raise
            except BatchRejected as exc:
                self._fail(batch, str(exc))
                if not full:
                    blocked |= self.batch_keys(batch_id)
                everything |= full
                failed += 1
                continue
            if self._crash_point == "after-warehouse-commit":
                os._exit(137)
            self._mark_loaded(batch)
            loaded += fresh
            skipped += not fresh
            if on_loaded is not None:
                on_loaded(batch, time.monotonic() - started)
        return loaded, skipped, failed, waiting

    def _mark_attempt(self, batch_id: int) -> None:
        self.conn.execute(sql.SQL("UPDATE {}.batch SET attempts = attempts + 1 WHERE id = %s")
                          .format(sql.Identifier(META)), (batch_id,))

    def _note_failure(self, batch_id: int, error: str) -> None:
        self.conn.execute(sql.SQL("UPDATE {}.batch SET error = %s, first_failed_at = COALESCE(first_failed_at, now())"
                                  " WHERE id = %s").format(sql.Identifier(META)), (error[:2000], batch_id))

    def _mark_loaded(self, batch: SpooledBatch) -> None:
        self.conn.execute(sql.SQL("UPDATE {}.batch SET state = 'loaded', loaded_at = now(), error = NULL,"
                                  " first_failed_at = NULL WHERE id = %s").format(sql.Identifier(META)),
                          (batch.batch_id,))
        self.spool.move(batch, "loaded")
        log.info("batch_loaded", batch=batch.batch_id, rows=batch.row_counts)

    def _fail(self, batch: SpooledBatch, error: str) -> None:
        self.conn.execute(sql.SQL("UPDATE {}.batch SET state = 'failed', error = %s WHERE id = %s")
                          .format(sql.Identifier(META)), (error, batch.batch_id))
        self.spool.move(batch, "failed", error)
        log.error("batch_failed", batch=batch.batch_id, error=error)

    def retry(self, batch_id: int) -> None:
        """Operator: put a failed batch back in line (after fixing the cause)."""
        batch = self.spool.find(batch_id)
        if batch is None:
            raise TransientError(f"batch {batch_id}: no spool folder")
        self.conn.execute(sql.SQL("UPDATE {}.batch SET state = 'pending', error = NULL WHERE id = %s")
                          .format(sql.Identifier(META)), (batch_id,))
        self.spool.move(batch, "pending")

    def flush(self) -> FlushResult:
        created = self.create_batch()
        loaded, skipped, failed, waiting = self.load_pending()
        return FlushResult(created, loaded, skipped, failed, waiting)
