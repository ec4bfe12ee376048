"""Applies micro-batches to PostgreSQL staging: rows, dead letters and the position, in one
transaction.

A batch is reduced to its net effect per primary key (``transform.changes``): the deleted keys
go in one ``DELETE ... USING unnest(key arrays)``, the final rows are COPYed into a temporary table
and merged with one ``INSERT ... ON CONFLICT DO UPDATE`` per table, so the cost per row is
set-based. If PostgreSQL rejects the set (a value it
can't store), the set is rolled back to its savepoint and applied row by row to find the rows at
fault, which go to the dead-letter table; the rest lands.
"""

from __future__ import annotations

import pickle
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Sequence
from functools import partial
from typing import Any

import psycopg
import structlog
from psycopg import sql

from loader.checkpoint import lock_apply, save_position
from loader.ddl import META, STAGING, create_table_sql, save_definitions, stopped_tables
from loader.dead_letters import DeadLetter, DeadLetters
from loader.staging_sql import (
    delete_one_sql,
    delete_sql,
    ident_list,
    key_text,
    select_by_keys_sql,
    upsert_one_sql,
    upsert_sql,
)
from loader.star import Applied, StarSchema
from loader.stops import recopy_if_asked_none, record_stop
from transform.changes import Key, NetChanges, Row, net_changes
from transform.ddl import SchemaPlan
from transform.ddl import plan as ddl_plan
from transform.errors import FatalError
from transform.model import Position, RowChange, SchemaChange
from transform.schema import Table

log = structlog.get_logger(__name__)

Conn = psycopg.Connection[tuple[Any, ...]]


class StagingWriter:
    """Owns one PostgreSQL connection and the open micro-batch transaction on it."""

    def __init__(self, conn: Conn, tables: dict[str, Table], pipeline: str, star: StarSchema | None = None) -> None:
        if not conn.autocommit:
            raise ValueError("StagingWriter needs a connection in autocommit mode (it says BEGIN itself)")
        self.conn = conn
        self.tables = tables
        self.pipeline = pipeline
        self.star = star
        self.star_rows_changed = 0  # committed fact upserts and deletes, for metrics
        self._star_pending = 0
        self._temps: dict[str, str] = {}  # source table -> its session's upsert temp table
        self._temp_seq = 0
        self.stopped = stopped_tables(conn, pipeline)  # source table -> why it is no longer followed
        #: the server the rows come from (server_id, server_uuid), saved with every position
        self.source: tuple[int, str] | None = None
        #: longest wait for the apply lock (0: no limit, for a caller that has its own)
        self.lock_wait = 0.0
        # The session's temporary tables, created now, outside any transaction: a rollback to a
        # savepoint can't take them away. ON COMMIT DELETE ROWS empties them after each batch.
        with conn.cursor() as cur:
            for table in tables.values():
                self._temp_tables(cur, table)
            if star is not None:
                star.prepare_session(cur)
        self._letters = DeadLetters(pipeline)
        self._open = False
        self.unlabeled_held = 0  # chunks of the XA transaction being read, kept in this transaction
        #: a table stopped by a schema change is copied online again (its request recorded with the stop)
        self.recopy_stopped = False
        #: the first wait before copying again a table stopped while its copy ran (doubles each time;
        #: the pipeline sets it from SOFTCART_RETAKE_BACKOFF_SECONDS)
        self.retake_backoff = 0.0

    # Transaction control ---------------------------------------------------------------------

    def begin(self) -> None:
        """Open the micro-batch transaction. The connection is in autocommit mode and we say BEGIN
        ourselves, so every ``conn.transaction()`` inside it is a savepoint, never a commit.

        Every transaction that writes staging takes the pipeline's apply lock first, so the daemon's
        batches and a reconcile's repairs run one after the other, never interleaved: a repair sees
        a position no batch is about to move."""
        if not self._open:
            self.conn.execute("BEGIN")
            self._open = True
            lock_apply(self.conn, self.pipeline, self.lock_wait)

    def rollback(self) -> None:
        self._letters.pending.clear()
        self._star_pending = 0
        self.unlabeled_held = 0
        if self._open:
            self._open = False
            if not self.conn.closed:
                self.conn.execute("ROLLBACK")

    def commit(self, position: Position | None, event_time: float | None = None, origin: str = "reconcile") -> None:
        """Save the position and the dead letters with the rows they cover, then commit. Without a
        position (a reconcile repair: it read the source at or past the saved one; a table added
        and copied) the position stays as it is and the dead letters say ``origin``."""
        self.begin()
        with self.conn.cursor() as cur:
            self._letters.save(cur, str(position) if position is not None else origin)
            if position is not None:
                save_position(cur, self.pipeline, position, event_time, self.source)
        assert self.conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        self.conn.execute("COMMIT")
        self.star_rows_changed += self._star_pending
        self._star_pending = 0
        self._open = False
        self._letters.pending.clear()

    # Applying ---------------------------------------------------------------------------------

    def apply(self, changes: Sequence[RowChange]) -> int:
        """Apply changes (any tables, in order) inside the open transaction; returns rows applied."""
        self.begin()
        by_table: dict[str, list[RowChange]] = defaultdict(list)
        for ch in changes:
            if ch.table in self.stopped:
                continue
            if ch.error is not None:
                self._letters.add(ch.table, ch.key, ch.error, ch.raw)
            else:
                by_table[ch.table].append(ch)
        last_bad = self._last_bad(changes) if len(self._letters.pending) else set()
        applied = 0
        for name, table_changes in by_table.items():
            table = self.tables[name]
            net = net_changes(table_changes, table.key_indexes())
            refused = len(self._letters.pending)
            applied += self._apply_net(table, net)
            refused_keys = {d.key for d in self._letters.pending[refused:] if d.kind == "value"}  # refused just now
            skipped = {k for t, k in last_bad if t == name} | refused_keys
            with self.conn.cursor() as cur:
                self._letters.settle(cur, name, partial(_applied_keys, net, skipped))
        return applied

    def _last_bad(self, changes: Sequence[RowChange]) -> set[tuple[str, str]]:
        """Keys whose last change in ``changes`` can't be applied (worked out only when a change
        here was dead-lettered: key_text per change is not free)."""
        last_bad: set[tuple[str, str]] = set()
        for ch in changes:
            if ch.table in self.stopped:
                continue
            if ch.error is not None:
                last_bad.add((ch.table, key_text(ch.key)))
                continue
            picks = self.tables[ch.table].key_indexes()
            for image in (ch.before, ch.after):  # both keys of a key change
                if image is not None:
                    last_bad.discard((ch.table, key_text([image[i] for i in picks])))
        return last_bad

    def rows_by_key(self, name: str, keys: Sequence[Key]) -> dict[Key, Row]:
        """Staging's rows of table ``name`` with ``keys`` (in the open transaction), by key."""
        table = self.tables[name]
        self.begin()
        picks = table.key_indexes()
        with self.conn.cursor() as cur:
            cur.execute(select_by_keys_sql(table), [[k[i] for k in keys] for i in range(len(picks))])
            return {tuple(r[i] for i in picks): tuple(r) for r in cur.fetchall()}

    def _temp_tables(self, cur: psycopg.Cursor[Any], table: Table) -> str:
        if table.name not in self._temps:
            n = self._temp_seq = self._temp_seq + 1
            up = f"_softcart_up_{n}"
            cur.execute(sql.SQL("CREATE TEMP TABLE IF NOT EXISTS {} (LIKE {}.{}) ON COMMIT DELETE ROWS").format(
                sql.Identifier(up), sql.Identifier(STAGING), sql.Identifier(table.name)))
            self._temps[table.name] = up
        return self._temps[table.name]

    def _star_for(self, table: Table) -> StarSchema | None:
        return self.star if self.star is not None and self.star.table.name == table.name else None

    def _apply_net(self, table: Table, net: NetChanges) -> int:
        star = self._star_for(table)
        try:
            with self.conn.transaction(), self.conn.cursor() as cur:
                in_sql = star.sql_delta(self.conn, self._temp_tables(cur, table)) if star else None
                old = star.read_old(cur, [k[0] for k in net.keys]) if star and in_sql is None else {}
                self._apply_set(cur, table, net)
                delta: Applied | None = None
                if star is not None:
                    delta = star.apply_in_sql(cur, in_sql, net) if in_sql is not None \
                        else Applied.of(star.apply(cur, old, net))
        except (psycopg.errors.DataError, psycopg.errors.IntegrityError) as exc:
            log.warning("batch_rejected_isolating_rows", table=table.name, error=_pg_error(exc))
            self._apply_rows(table, net)
            return len(net.upserts) + len(net.deletes)
        if delta is not None:
            self._invalid_facts(table, net, delta)
        return len(net.upserts) + len(net.deletes)

    def _invalid_facts(self, table: Table, net: NetChanges, delta: Applied) -> None:
        self._star_pending += delta.upserts + delta.deletes
        for rowid, reason in delta.invalid.items():
            row = net.upserts[(rowid,)]
            self._letters.add(table.name, (rowid,), f"no valid fact: {reason}",
                              repr(dict(zip(table.column_names, row, strict=True)))[:10000], "fact")

    def _apply_set(self, cur: psycopg.Cursor[Any], table: Table, net: NetChanges) -> None:
        up = self._temp_tables(cur, table)
        if net.deletes:
            keys = list(net.deletes)
            cur.execute(delete_sql(table), [[k[i] for k in keys] for i in range(len(table.primary_key))])
        if net.upserts:
            cur.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(up)))
            with cur.copy(sql.SQL("COPY {} ({}) FROM STDIN").format(
                    sql.Identifier(up), ident_list(table.column_names))) as copy:
                for row in net.upserts.values():
                    copy.write_row(row)
            cur.execute(upsert_sql(table, up))

    def _apply_rows(self, table: Table, net: NetChanges) -> None:
        """Slow path: one savepoint per row, so only the rows PostgreSQL refuses are dead-lettered.

        When every row of a batch of several fails the same way, the fault is not in the rows but
        in the schema (or in us): that is fatal, never a batch of dead letters."""
        star = self._star_for(table)
        ops: list[tuple[Key, Row | None]] = [(k, None) for k in net.deletes]
        ops += list(net.upserts.items())
        refused: list[DeadLetter] = []
        causes: set[str] = set()
        for key, row in ops:
            one = NetChanges({key: row} if row is not None else {}, {key} if row is None else set())
            try:
                with self.conn.transaction(), self.conn.cursor() as cur:
                    old = star.read_old(cur, [key[0]]) if star else {}
                    if row is None:
                        cur.execute(delete_one_sql(table), key)
                    else:
                        cur.execute(upsert_one_sql(table), row)
                    delta = Applied.of(star.apply(cur, old, one)) if star else None
                if delta is not None:
                    self._invalid_facts(table, one, delta)
            except (psycopg.errors.DataError, psycopg.errors.IntegrityError) as exc:
                causes.add(f"{exc.diag.sqlstate}: {exc.diag.message_primary}")
                refused.append(DeadLetter(table.name, key_text(key), f"PostgreSQL refused the row: "
                                          f"{_pg_error(exc)}", repr(row)[:10000] if row else None))
        if len(ops) > 1 and len(refused) == len(ops) and len(causes) == 1:
            raise FatalError(f"every one of {len(ops)} changes to {table.name} failed the same way "
                             f"({causes.pop()}): a schema problem, not bad rows; fix it and restart")
        self._letters.pending.extend(refused)

    # Schema changes -----------------------------------------------------------------------------

    def follow(self, tables: Iterable[Table], taken_up: bool = False) -> None:
        """Staging follows ``tables`` (again) from the open transaction on: stopped ones no longer
        (``taken_up``: their stop is kept on record, marked taken up), their definitions saved."""
        tables = list(tables)
        names = [t.name for t in tables]
        self.begin()
        with self.conn.cursor() as cur:
            cur.execute(sql.SQL("UPDATE {}.stopped_table SET taken_up_at = now() WHERE pipeline = %s"
                                " AND source_table = ANY(%s) AND taken_up_at IS NULL" if taken_up else
                                "DELETE FROM {}.stopped_table WHERE pipeline = %s AND source_table = ANY(%s)")
                        .format(sql.Identifier(META)), (self.pipeline, names))
            save_definitions(cur, self.pipeline, tables)
        for name in names:
            self.stopped.pop(name, None)

    def replace_table(self, new: Table) -> None:
        """A stopped table taken up again with ``new`` (the source's definition now), in the open
        transaction: its staging table made anew, empty (an online copy fills it); the star schema
        follows the new definition of its table. Raises FatalError, before any change, where the
        star schema can't."""
        star = self.star
        if star is not None and star.table.name == new.name:
            star = StarSchema(new, star.zone, star.deltas_in_sql)
        self.begin()
        with self.conn.cursor() as cur:
            cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(STAGING, new.name)))
            cur.execute(create_table_sql(new))
            if new.name in self._temps:
                cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(self._temps.pop(new.name))))
        self.tables[new.name] = new
        self.star = star
        log.info("staging_table_made_anew", table=new.name, columns=list(new.column_names))

    def apply_schema_change(self, change: SchemaChange) -> list[tuple[Table, list[str]]]:
        """Make staging follow ``change`` inside the open transaction (the caller commits it with
        the statement's position); returns the tables and columns added, whose existing rows need
        their values from the source."""
        self.begin()
        backfill: list[tuple[Table, list[str]]] = []
        unusable = dict(change.unusable)
        with self.conn.cursor() as cur:
            for name, new in change.tables:
                old = self.tables.get(name)
                if old is None:
                    continue
                if change.emptied():
                    # The statement says the source's rows are gone (a table renamed away or
                    # dropped is empty to us; one renamed into this name brings rows the binlog
                    # never showed): staging's go too, stopped or not.
                    self._empty(cur, name)
                if name in self.stopped:
                    if new is not None and self.recopy_stopped:
                        recopy_if_asked_none(cur, self.pipeline, name)
                    continue
                if change.kind == "rename" and new is not None:
                    self._stop(cur, name, f"another table was renamed into {name}: its rows are not in the binlog",
                               change)
                    continue
                if new is None:
                    if name in unusable:
                        self._stop(cur, name, unusable[name], change, recopy=False)
                    elif not change.emptied():
                        self._stop(cur, name, "its definition after this statement could not be read: the table is"
                                   " no longer in the source (a later statement dropped or renamed it away); its rows"
                                   " are kept as they were", change, recopy=False)
                    continue
                p = ddl_plan(STAGING, old, new, change.statement)
                if p.stop is None and self.star is not None and self.star.table.name == name:
                    try:
                        star = StarSchema(new, self.star.zone, self.star.deltas_in_sql)
                    except FatalError as exc:
                        p = SchemaPlan(stop=str(exc))
                if p.stop is not None:
                    self._stop(cur, name, p.stop, change)
                    continue
                for stmt in p.statements:
                    cur.execute(stmt.encode())
                self.tables[name] = new
                save_definitions(cur, self.pipeline, [new])
                if self.star is not None and self.star.table.name == name:
                    self.star = star
                if name in self._temps:
                    cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(self._temps.pop(name))))
                if p.added:
                    backfill.append((new, p.added))
                log.info("staging_followed_ddl", table=name, statements=p.statements, position=str(change.position))
        return backfill

    def _empty(self, cur: psycopg.Cursor[Any], name: str) -> None:
        cur.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(STAGING, name)))
        if self.star is not None and self.star.table.name == name:
            self.star.rebuild(self.conn)

    def _stop(self, cur: psycopg.Cursor[Any], name: str, reason: str, change: SchemaChange,
              recopy: bool = True) -> None:
        self._stop_table(cur, name, reason, change.statement, change.position, recopy)

    def _stop_table(self, cur: psycopg.Cursor[Any], name: str, reason: str, statement: str,
                    position: Position, recopy: bool = True) -> None:
        """``recopy``: with online copies on, is the table to be copied again now, or only once
        the source's definition can be followed again (see ``loader.stops``)?"""
        policy = "off" if not self.recopy_stopped else "now" if recopy else "when_followable"
        record_stop(cur, self.pipeline, name, reason, statement, position, policy, self.retake_backoff)
        self.stopped[name] = reason

    def stop_tables(self, stops: Iterable[tuple[str, str, str]], position: Position) -> None:
        """Stop following tables (table, reason, statement) from the transaction ending at
        ``position`` on, in the open transaction."""
        self.begin()
        with self.conn.cursor() as cur:
            for name, reason, statement in stops:
                if name in self.tables and name not in self.stopped:
                    self._stop_table(cur, name, reason, statement, position)

    # XA transactions prepared but not yet decided ----------------------------------------------

    def hold(self, changes: Sequence[RowChange]) -> None:
        """Keep a prepared XA transaction's changes in staging (not applied), in the open
        transaction; they get their xid at the prepare (:meth:`label_held`)."""
        self.begin()
        self.conn.execute(sql.SQL("INSERT INTO {}.xa_pending (pipeline, xid, changes) VALUES (%s, '', %s)")
                          .format(sql.Identifier(META)), (self.pipeline, pickle.dumps(tuple(changes))))
        self.unlabeled_held += 1

    def label_held(self, xid: str, position: Position) -> None:
        self.begin()
        n = self.conn.execute(sql.SQL("UPDATE {}.xa_pending SET xid = %s, prepared_at = %s WHERE pipeline = %s"
                                      " AND xid = ''").format(sql.Identifier(META)),
                              (xid, str(position), self.pipeline)).rowcount
        self.unlabeled_held = 0
        log.info("xa_prepared_held", xid=xid, chunks=n, position=str(position))

    def apply_held(self, xid: str, skip: Collection[str] = (),
                   keep: Callable[[tuple[RowChange, ...]], tuple[RowChange, ...]] | None = None) -> int:
        """Apply the changes kept for ``xid`` (its XA COMMIT; ``''``: the transaction just read,
        committed in one phase), in order, in the open transaction, but those of the tables in
        ``skip`` (their copy has them already) and those ``keep`` leaves out (an online copy's
        chunk has them); returns rows applied."""
        self.begin()
        meta = sql.Identifier(META)
        ids = [r[0] for r in self.conn.execute(sql.SQL("SELECT id FROM {}.xa_pending WHERE pipeline = %s AND"
                                                       " xid = %s ORDER BY id").format(meta), (self.pipeline, xid))]
        if not ids and xid:
            log.error("xa_commit_without_prepare", xid=xid,
                      reason="its XA PREPARE came before this pipeline's start (snapshot) position, so its rows "
                             "were neither in the snapshot nor held", fix="run `softcart-sync reconcile`")
        applied = 0
        for i in ids:
            row = self.conn.execute(sql.SQL("DELETE FROM {}.xa_pending WHERE id = %s RETURNING changes").format(meta),
                                    (i,)).fetchone()
            assert row is not None
            changes = pickle.loads(row[0])  # noqa: S301 - written by us, in our own schema
            if keep is not None:
                changes = keep(tuple(changes))
            applied += self.apply([c for c in changes if c.table not in skip] if skip else changes)
        self.unlabeled_held = 0
        if xid:
            log.info("xa_committed_applied", xid=xid, chunks=len(ids), rows=applied)
        return applied

    def drop_held(self, xid: str) -> None:
        self.begin()
        n = self.conn.execute(sql.SQL("DELETE FROM {}.xa_pending WHERE pipeline = %s AND xid = %s")
                              .format(sql.Identifier(META)), (self.pipeline, xid)).rowcount
        log.info("xa_rolled_back_dropped", xid=xid, chunks=n)

    def backfill(self, table: Table, columns: list[str], rows: Iterable[Row]) -> int:
        """Set ``columns`` of existing staging rows from (key..., column...) rows, in the open
        transaction (a column added to the source has values in its existing rows)."""
        self.begin()
        keys = list(table.primary_key)
        temp = sql.Identifier(f"_softcart_fill_{self._temp_seq + 1}")
        n = 0
        with self.conn.cursor() as cur:
            cur.execute(sql.SQL("CREATE TEMP TABLE {} ON COMMIT DROP AS SELECT {} FROM {}.{} WITH NO DATA").format(
                temp, ident_list(keys + columns), sql.Identifier(STAGING), sql.Identifier(table.name)))
            with cur.copy(sql.SQL("COPY {} FROM STDIN").format(temp)) as copy:
                for r in rows:
                    copy.write_row(r)
                    n += 1
            cur.execute(sql.SQL("UPDATE {}.{} t SET {} FROM {} f WHERE {}").format(
                sql.Identifier(STAGING), sql.Identifier(table.name),
                sql.SQL(", ").join(sql.SQL("{0} = f.{0}").format(sql.Identifier(c)) for c in columns), temp,
                sql.SQL(" AND ").join(sql.SQL("t.{0} = f.{0}").format(sql.Identifier(k)) for k in keys)))
        return n

    def copy_rows(self, table: Table, rows: Iterable[Row]) -> int:
        """Snapshot path: COPY rows straight into the (just emptied) staging table."""
        self.begin()
        n = 0
        with self.conn.cursor() as cur, cur.copy(sql.SQL("COPY {}.{} ({}) FROM STDIN").format(
                sql.Identifier(STAGING), sql.Identifier(table.name), ident_list(table.column_names))) as copy:
            for row in rows:
                copy.write_row(row)
                n += 1
        return n

    @property
    def pending_dead_letters(self) -> int:
        return len(self._letters.pending)

    def forget_dead_letters(self, since: int) -> None:
        """Drop the dead letters recorded after the first ``since`` (their rows were rolled back)."""
        del self._letters.pending[since:]

    def dead_letter(self, table: str, key: Sequence[Any] | None, reason: str, row: str | None,
                    kind: str = "value") -> None:
        self._letters.add(table, key, reason, row, kind)

    @property
    def dead_letters(self) -> dict[str, int]:
        """Committed dead letters by kind, for metrics."""
        return self._letters.saved


def _pg_error(exc: psycopg.Error) -> str:
    diag = exc.diag
    return f"{diag.sqlstate}: {diag.message_primary}" if diag.message_primary else str(exc).strip()


def _applied_keys(net: NetChanges, skipped: set[str]) -> set[str]:
    """The keys a table's net changes applied, as dead letters store them, less ``skipped``."""
    return {key_text(k) for k in (*net.upserts, *net.deletes)} - skipped
