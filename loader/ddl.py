"""The PostgreSQL schemas softcart-sync owns, created and migrated idempotently at start.

- ``staging``: one table per source table, same name, same columns (in PostgreSQL types that hold
  every source value) and the same primary key.
- ``softcart``: the pipeline's own state: its position, the dead letters, the snapshot record.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from transform.schema import Column, Table, pg_type

STAGING = "staging"
META = "softcart"

META_DDL = [
    sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(STAGING)),
    sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(META)),
    sql.SQL("""CREATE TABLE IF NOT EXISTS {}.position (
        pipeline text PRIMARY KEY,
        binlog_file text NOT NULL,
        binlog_pos bigint NOT NULL,
        gtid text NOT NULL DEFAULT '',
        event_time timestamptz,
        committed_at timestamptz NOT NULL DEFAULT now())""").format(sql.Identifier(META)),
    # The server the position was read from: a binlog offset means something only there.
    sql.SQL("ALTER TABLE {}.position ADD COLUMN IF NOT EXISTS source_server_id bigint,"
            " ADD COLUMN IF NOT EXISTS source_uuid text").format(sql.Identifier(META)),
    sql.SQL("""CREATE TABLE IF NOT EXISTS {}.dead_letter (
        id bigserial PRIMARY KEY,
        pipeline text NOT NULL,
        source_table text NOT NULL,
        row_key text,
        position text NOT NULL,
        reason text NOT NULL,
        row_data text,
        created_at timestamptz NOT NULL DEFAULT now(),
        resolved_at timestamptz)""").format(sql.Identifier(META)),
    # kind: 'value' (no faithful PostgreSQL form, or refused by PostgreSQL) or 'fact' (no valid fact)
    sql.SQL("ALTER TABLE {}.dead_letter ADD COLUMN IF NOT EXISTS kind text NOT NULL DEFAULT 'value'").format(
        sql.Identifier(META)),
    sql.SQL("CREATE INDEX IF NOT EXISTS dead_letter_open ON {}.dead_letter (source_table, row_key)"
            " WHERE resolved_at IS NULL").format(sql.Identifier(META)),
    # Star-schema keys changed since the last flush (tbl '*' asks for a full reload), written in the
    # same transaction as the change; the flusher turns them into CSV batches for the warehouse.
    sql.SQL("""CREATE TABLE IF NOT EXISTS {}.outbox (
        id bigserial PRIMARY KEY,
        tbl text NOT NULL,
        k1 bigint,
        k2 bigint)""").format(sql.Identifier(META)),
    # A batch's keys of one table in one row (k1s, k2s: arrays), where a row per key cost a tenth of
    # the star schema's time in PostgreSQL; single keys (repairs, reconcile) keep k1, k2.
    # Stored uncompressed (EXTERNAL): compressing a batch's 20,000 keys cost more than writing them.
    sql.SQL("ALTER TABLE {}.outbox ADD COLUMN IF NOT EXISTS k1s bigint[], ADD COLUMN IF NOT EXISTS k2s bigint[],"
            " ALTER COLUMN k1s SET STORAGE EXTERNAL, ALTER COLUMN k2s SET STORAGE EXTERNAL")
    .format(sql.Identifier(META)),
    # Every outbox key a row, whichever way it was written: what the flush and the reconcile read.
    sql.SQL("CREATE OR REPLACE VIEW {0}.outbox_keys AS SELECT o.id, o.tbl, u.k1, u.k2 FROM {0}.outbox o"
            " CROSS JOIN LATERAL unnest(COALESCE(o.k1s, ARRAY[o.k1]),"
            " COALESCE(o.k2s, CASE WHEN o.k1s IS NULL THEN ARRAY[o.k2] END)) AS u(k1, k2)")
    .format(sql.Identifier(META)),
    sql.SQL("""CREATE TABLE IF NOT EXISTS {}.batch (
        id bigserial PRIMARY KEY,
        pipeline text NOT NULL,
        outbox_from bigint NOT NULL,
        outbox_to bigint NOT NULL,
        position text,
        state text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'loaded', 'failed')),
        full_reload boolean NOT NULL DEFAULT false,
        rows jsonb NOT NULL,
        keys jsonb NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        loaded_at timestamptz,
        attempts integer NOT NULL DEFAULT 0,
        error text)""").format(sql.Identifier(META)),
    # A batch's identity beyond its number, also in the manifest and the warehouse ledger: a ledger
    # row of the same number but another uid was written from another staging (or before a
    # restore), so the batch is not the one loaded.
    sql.SQL("ALTER TABLE {}.batch ADD COLUMN IF NOT EXISTS uid text").format(sql.Identifier(META)),
    # A batch the warehouse keeps failing for a reason that may pass (unreachable, a lock, a set-up
    # missing): since when, and (in error) the last reason; it stays pending and is retried.
    sql.SQL("ALTER TABLE {}.batch ADD COLUMN IF NOT EXISTS first_failed_at timestamptz").format(sql.Identifier(META)),
    sql.SQL("""CREATE TABLE IF NOT EXISTS {}.flush_state (
        pipeline text PRIMARY KEY,
        last_outbox_id bigint NOT NULL DEFAULT 0)""").format(sql.Identifier(META)),
    # false until this staging's batches are numbered past the warehouse ledger's and the spool's
    # (a staging made anew under an existing warehouse starts again at batch 1, which the ledger
    # holds: its batches would be skipped as loaded). The loader does it before its first load,
    # since only it talks to the warehouse. A row from before the column: true.
    sql.SQL("ALTER TABLE {}.flush_state ADD COLUMN IF NOT EXISTS ids_fenced boolean NOT NULL DEFAULT true").format(
        sql.Identifier(META)),
    # The spool folder this pipeline's batches are in: a run from elsewhere (a shell's ./spool) is
    # refused while batches wait there, instead of recording batches the daemon can't find.
    sql.SQL("ALTER TABLE {}.flush_state ADD COLUMN IF NOT EXISTS spool_dir text").format(sql.Identifier(META)),
    # Source tables the daemon stopped following (a schema change staging can't follow safely);
    # their rows are skipped until a resnapshot takes them again.
    sql.SQL("""CREATE TABLE IF NOT EXISTS {}.stopped_table (
        pipeline text NOT NULL,
        source_table text NOT NULL,
        reason text NOT NULL,
        statement text NOT NULL,
        position text NOT NULL,
        stopped_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (pipeline, source_table))""").format(sql.Identifier(META)),
    # Taken up again by an online copy (the stop is kept, for the record); NULL: still stopped.
    sql.SQL("ALTER TABLE {}.stopped_table ADD COLUMN IF NOT EXISTS taken_up_at timestamptz")
    .format(sql.Identifier(META)),
    # Stopped how many times in a row while being copied again, and when the next copy may start
    # (NULL: at once): a table stopped over and over waits longer each time.
    sql.SQL("ALTER TABLE {}.stopped_table ADD COLUMN IF NOT EXISTS stops integer NOT NULL DEFAULT 1")
    .format(sql.Identifier(META)),
    sql.SQL("ALTER TABLE {}.stopped_table ADD COLUMN IF NOT EXISTS retake_at timestamptz")
    .format(sql.Identifier(META)),
    # The source definition each staging table follows (the snapshot's, then each schema change
    # followed): at a restart the stream resumes with these, not with the source's current ones,
    # so a schema change made while the daemon was stopped is followed when its statement comes.
    sql.SQL("""CREATE TABLE IF NOT EXISTS {}.source_table (
        pipeline text NOT NULL,
        source_table text NOT NULL,
        definition jsonb NOT NULL,
        PRIMARY KEY (pipeline, source_table))""").format(sql.Identifier(META)),
    # The row changes of XA transactions prepared on the source and not yet committed or rolled
    # back (pickled tuples of RowChange, in order of id): applied at their XA COMMIT, dropped at
    # XA ROLLBACK, and kept across restarts, since the position has moved past their PREPARE.
    sql.SQL("""CREATE TABLE IF NOT EXISTS {}.xa_pending (
        id bigserial PRIMARY KEY,
        pipeline text NOT NULL,
        xid text NOT NULL,
        prepared_at text,
        changes bytea NOT NULL)""").format(sql.Identifier(META)),
    sql.SQL("""CREATE TABLE IF NOT EXISTS {}.snapshot (
        pipeline text NOT NULL,
        source_table text NOT NULL,
        rows_copied bigint NOT NULL,
        position text NOT NULL,
        finished_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (pipeline, source_table))""").format(sql.Identifier(META)),
    # A table copied online, in primary-key chunks, while the stream goes on (loader/online.py):
    # where the next chunk starts (pickled key as the source and as staging take it; NULL: the
    # start), written in the transaction that applies each chunk, so a restart resumes there.
    sql.SQL("""CREATE TABLE IF NOT EXISTS {}.online_copy (
        pipeline text NOT NULL,
        source_table text NOT NULL,
        next_key bytea,
        rows_copied bigint NOT NULL DEFAULT 0,
        rows_estimated bigint NOT NULL DEFAULT 0,
        chunks bigint NOT NULL DEFAULT 0,
        started_at timestamptz NOT NULL DEFAULT now(),
        finished_at timestamptz,
        PRIMARY KEY (pipeline, source_table))""").format(sql.Identifier(META)),
    # A table taken up again after a schema change stopped it: its staging table was made anew,
    # so the star schema built from it is rebuilt once its copy ends (rows gone meanwhile).
    sql.SQL("ALTER TABLE {}.online_copy ADD COLUMN IF NOT EXISTS rebuild_star boolean NOT NULL DEFAULT false")
    .format(sql.Identifier(META)),
]


def create_table_sql(table: Table) -> sql.Composed:
    cols = [
        sql.SQL("{} {}{}").format(sql.Identifier(c.name), sql.SQL(pg_type(c)),
                                  sql.SQL("" if c.nullable else " NOT NULL"))
        for c in table.columns
    ]
    pk = sql.SQL(", ").join(sql.Identifier(k) for k in table.primary_key)
    return sql.SQL("CREATE TABLE IF NOT EXISTS {}.{} ({}, PRIMARY KEY ({}))").format(
        sql.Identifier(STAGING), sql.Identifier(table.name), sql.SQL(", ").join(cols), pk)


def add_column_sql(table: Table, column: str) -> sql.Composed:
    col = table.column(column)
    return sql.SQL("ALTER TABLE {}.{} ADD COLUMN IF NOT EXISTS {} {}").format(
        sql.Identifier(STAGING), sql.Identifier(table.name), sql.Identifier(col.name), sql.SQL(pg_type(col)))


def ensure_schema(conn: psycopg.Connection[tuple[object, ...]], tables: dict[str, Table]) -> None:
    """Create what is missing; add columns the source gained. Safe to run at every start."""
    with conn.transaction(), conn.cursor() as cur:
        # One migrator at a time, even with two daemons started by mistake.
        cur.execute("SELECT pg_advisory_xact_lock(hashtext('softcart-sync ddl'))")
        for stmt in META_DDL:
            cur.execute(stmt)
        for table in tables.values():
            cur.execute(create_table_sql(table))
            cur.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = %s",
                (STAGING, table.name))
            existing = {r[0] for r in cur.fetchall()}
            for name in table.column_names:
                if name not in existing:
                    cur.execute(add_column_sql(table, name))


def save_definitions(cur: psycopg.Cursor[Any], pipeline: str, tables: Iterable[Table]) -> None:
    for t in tables:
        definition = {"name": t.name, "primary_key": list(t.primary_key),
                      "columns": [dataclasses.asdict(c) for c in t.columns]}
        cur.execute(sql.SQL("INSERT INTO {}.source_table (pipeline, source_table, definition) VALUES (%s, %s, %s)"
                            " ON CONFLICT (pipeline, source_table) DO UPDATE SET definition = EXCLUDED.definition")
                    .format(sql.Identifier(META)), (pipeline, t.name, Jsonb(definition)))


def forget_tables(conn: psycopg.Connection[Any], pipeline: str, names: Iterable[str]) -> None:
    """Tables no longer in the settings: what the pipeline knew of them goes (definition, snapshot
    record, stopped state), so that added back they are copied again, not resumed."""
    with conn.transaction():
        for table in ("source_table", "snapshot", "stopped_table", "online_copy"):
            conn.execute(sql.SQL("DELETE FROM {}.{} WHERE pipeline = %s AND source_table = ANY(%s)").format(
                sql.Identifier(META), sql.Identifier(table)), (pipeline, list(names)))


def request_copy(cur: psycopg.Cursor[Any], pipeline: str, table: str, rows_estimated: int = 0,
                 rebuild_star: bool = False) -> None:
    """Record an online copy of ``table`` from its start (a running one starts over), in the
    caller's transaction; the copier takes it up (cdc/capture/online.py)."""
    cur.execute(sql.SQL("INSERT INTO {}.online_copy (pipeline, source_table, rows_estimated, rebuild_star)"
                        " VALUES (%s, %s, %s, %s) ON CONFLICT (pipeline, source_table) DO UPDATE SET next_key = NULL,"
                        " rows_copied = 0, chunks = 0, rows_estimated = EXCLUDED.rows_estimated, started_at = now(),"
                        " finished_at = NULL, rebuild_star = EXCLUDED.rebuild_star"
                        # a copy asked again before it ended still rebuilds the star schema if it was to
                        " OR (online_copy.finished_at IS NULL AND online_copy.rebuild_star)")
                .format(sql.Identifier(META)), (pipeline, table, rows_estimated, rebuild_star))


def forget_copy(conn: psycopg.Connection[Any], pipeline: str, table: str) -> None:
    """An online copy asked for ``table`` is not to be made (autocommit connection)."""
    conn.execute(sql.SQL("DELETE FROM {}.online_copy WHERE pipeline = %s AND source_table = %s")
                 .format(sql.Identifier(META)), (pipeline, table))


def record_snapshot(cur: psycopg.Cursor[Any], pipeline: str, table: str, rows: int, position: str) -> None:
    """The table's copy record: how many rows, as of which position (the stream's fence for it)."""
    cur.execute(sql.SQL("INSERT INTO {}.snapshot (pipeline, source_table, rows_copied, position)"
                        " VALUES (%s, %s, %s, %s) ON CONFLICT (pipeline, source_table) DO UPDATE"
                        " SET rows_copied = EXCLUDED.rows_copied, position = EXCLUDED.position,"
                        " finished_at = now()").format(sql.Identifier(META)), (pipeline, table, rows, position))


def stopped_tables(conn: psycopg.Connection[Any], pipeline: str) -> dict[str, str]:
    """The tables staging no longer follows since a schema change, with why ({} before the schema
    exists)."""
    try:
        rows = conn.execute(sql.SQL("SELECT source_table, reason FROM {}.stopped_table WHERE pipeline = %s"
                                    " AND taken_up_at IS NULL").format(sql.Identifier(META)), (pipeline,)).fetchall()
    except psycopg.errors.UndefinedTable:
        return {}
    return {str(r[0]): str(r[1]) for r in rows}


def retakes_due(conn: psycopg.Connection[Any], pipeline: str) -> set[str]:
    """The stopped tables whose next online copy may start now (their wait, if any, is over)."""
    rows = conn.execute(sql.SQL("SELECT source_table FROM {}.stopped_table WHERE pipeline = %s AND taken_up_at IS NULL"
                                " AND (retake_at IS NULL OR retake_at <= now())").format(sql.Identifier(META)),
                        (pipeline,)).fetchall()
    return {str(r[0]) for r in rows}


def snapshot_positions(conn: psycopg.Connection[Any], pipeline: str) -> dict[str, str]:
    """Where each table was last copied (as the snapshot record writes a position)."""
    return {str(r[0]): str(r[1]) for r in conn.execute(
        sql.SQL("SELECT source_table, position FROM {}.snapshot WHERE pipeline = %s").format(sql.Identifier(META)),
        (pipeline,))}


def load_definitions(conn: psycopg.Connection[Any], pipeline: str) -> dict[str, Table]:
    """The definitions staging follows ({} before the first snapshot)."""
    if conn.execute("SELECT to_regclass('softcart.source_table')").fetchone() == (None,):
        return {}
    out = {}
    for name, d in conn.execute(sql.SQL("SELECT source_table, definition FROM {}.source_table WHERE pipeline = %s")
                                .format(sql.Identifier(META)), (pipeline,)).fetchall():
        out[str(name)] = Table(d["name"], tuple(Column(**c) for c in d["columns"]), tuple(d["primary_key"]))
    return out
