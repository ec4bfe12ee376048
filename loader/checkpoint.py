"""The per-pipeline apply lock and the saved source position (with the server it was read from),
both in staging: every transaction that writes staging takes the lock, and saves the position it
reached in the same transaction (the restart point)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import psycopg
from psycopg import sql

from loader.ddl import META
from loader.pg import holders_text, lock_holders, lock_wait_limit
from transform.errors import TransientError
from transform.model import Position

Conn = psycopg.Connection[tuple[Any, ...]]


#: The per-pipeline apply lock: every transaction that writes staging, the star schema or the
#: outbox holds it (``pg_advisory_xact_lock``), so they run one after the other; a flush holds it
#: (session-level) for the instant it reads the outbox's top id, when no writer is in flight.
APPLY_LOCK = "hashtext('softcart-sync apply ' || %s)"


def lock_apply(conn: Conn, pipeline: str, wait_seconds: float = 0.0) -> None:
    """Take the pipeline's apply lock for the rest of the open transaction; with ``wait_seconds``,
    waiting at most that long (TransientError naming the session that holds it)."""
    if not wait_seconds:
        conn.execute(f"SELECT pg_advisory_xact_lock({APPLY_LOCK})", (pipeline,))
        return
    try:
        with lock_wait_limit(conn, wait_seconds, in_transaction=True):
            conn.execute(f"SELECT pg_advisory_xact_lock({APPLY_LOCK})", (pipeline,))
    except psycopg.errors.LockNotAvailable:
        raise TransientError(f"the apply lock of pipeline {pipeline!r} was held for over {wait_seconds:g} s"
                             f" (SOFTCART_LOCK_WAIT_SECONDS) by {_apply_lock_holder(conn, pipeline)} (a rebuild, a"
                             " reconcile's repair, or a session left behind); retrying") from None


def _apply_lock_holder(conn: Conn, pipeline: str) -> str:
    """Who holds the apply lock, read on a connection of its own (``conn``'s transaction failed)."""
    try:
        with psycopg.connect(conn.info.dsn, password=conn.info.password or None, autocommit=True,
                             connect_timeout=10) as other:
            holders = lock_holders(other, APPLY_LOCK, (pipeline,))
    except psycopg.Error:
        return "a session that could not be asked about"
    return holders_text(holders) + "".join(f" [running {h.query!r}]" for h in holders[:1] if h.query)


def save_position(cur: psycopg.Cursor[Any], pipeline: str, position: Position, event_time: float | None,
                  source: tuple[int, str] | None = None) -> None:
    """The position, with the server it was read from (``source``: server_id, server_uuid; None
    keeps the one saved)."""
    ts = dt.datetime.fromtimestamp(event_time, dt.UTC) if event_time else None
    sid, uuid = source if source is not None else (None, None)
    cur.execute(
        sql.SQL("INSERT INTO {0}.position (pipeline, binlog_file, binlog_pos, gtid, event_time, committed_at,"
                " source_server_id, source_uuid) VALUES (%s, %s, %s, %s, %s, now(), %s, %s)"
                " ON CONFLICT (pipeline) DO UPDATE SET"
                " binlog_file = EXCLUDED.binlog_file, binlog_pos = EXCLUDED.binlog_pos, gtid = EXCLUDED.gtid,"
                " event_time = COALESCE(EXCLUDED.event_time, {0}.position.event_time),"
                " source_server_id = COALESCE(EXCLUDED.source_server_id, {0}.position.source_server_id),"
                " source_uuid = COALESCE(EXCLUDED.source_uuid, {0}.position.source_uuid),"
                " committed_at = now()").format(sql.Identifier(META)),
        (pipeline, position.file, position.pos, position.gtid, ts, sid, uuid))


def load_source(conn: Conn, pipeline: str) -> tuple[int, str] | None:
    """The server the saved position was read from (None: saved before identities were kept)."""
    row = conn.execute(sql.SQL("SELECT source_server_id, source_uuid FROM {}.position WHERE pipeline = %s")
                       .format(sql.Identifier(META)), (pipeline,)).fetchone()
    return (int(row[0]), str(row[1] or "")) if row and row[0] is not None else None


def load_position(conn: Conn, pipeline: str) -> Position | None:
    with conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT binlog_file, binlog_pos, gtid FROM {}.position WHERE pipeline = %s")
                    .format(sql.Identifier(META)), (pipeline,))
        row = cur.fetchone()
    return Position(row[0], int(row[1]), row[2]) if row else None
