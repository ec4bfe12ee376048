"""Stopped tables: a table the stream can't follow from some statement on is recorded with the
reason, the statement and the position (``softcart.stopped_table``), and, with online copies on,
copied again: at once, or once its definition can be followed again."""

from __future__ import annotations

from typing import Any

import psycopg
import structlog
from psycopg import sql

from loader.ddl import META, request_copy
from transform.model import Position
from transform.progress import retake_delay

log = structlog.get_logger(__name__)


def record_stop(cur: psycopg.Cursor[Any], pipeline: str, name: str, reason: str, statement: str,
                position: Position, recopy: str, backoff: float) -> None:
    """Record the stop in the caller's transaction and say it at error. ``recopy``: 'off' (online
    copies off: a resnapshot takes it again), 'now' (copied again with its new definition), or
    'when_followable' (the source's definition can't be followed as it is: no key, a type staging
    can't hold, gone; the statement that makes it followable asks the copy: :func:`recopy_if_asked_none`).
    A table stopped again while its copy ran continues a streak, and the next copy waits."""
    cur.execute(sql.SQL("SELECT (SELECT stops FROM {0}.stopped_table WHERE pipeline = %s AND source_table = %s),"
                        " EXISTS (SELECT 1 FROM {0}.online_copy WHERE pipeline = %s AND source_table = %s"
                        " AND finished_at IS NULL)").format(sql.Identifier(META)), (pipeline, name) * 2)
    before, copying = cur.fetchone() or (None, False)
    stops = (before or 0) + 1 if copying else 1
    wait = retake_delay(stops, backoff) if recopy != "off" else 0.0
    cur.execute(sql.SQL("INSERT INTO {}.stopped_table (pipeline, source_table, reason, statement, position, stops,"
                        " retake_at) VALUES (%s, %s, %s, %s, %s, %s, now() + %s * interval '1 second')"
                        " ON CONFLICT (pipeline, source_table) DO UPDATE SET reason = EXCLUDED.reason,"
                        " statement = EXCLUDED.statement, position = EXCLUDED.position, stopped_at = now(),"
                        " taken_up_at = NULL, stops = EXCLUDED.stops, retake_at = EXCLUDED.retake_at")
                .format(sql.Identifier(META)),
                (pipeline, name, reason, statement, str(position), stops, wait))
    said = {"table": name, "reason": reason, "statement": statement[:500], "position": str(position)}
    if recopy == "when_followable":
        log.error("table_stopped", **said,
                  fix="the other tables keep streaming; staging keeps this one's rows as they were. Make the source"
                      " table fit (a primary key, supported types): the statement that does so is seen in the"
                      " stream and the table is copied online again")
        return
    if recopy == "off":
        log.error("table_stopped", **said,
                  fix="the other tables keep streaming; `softcart-sync resnapshot` takes this one again")
        return
    request_copy(cur, pipeline, name)
    fix = "the other tables keep streaming; this one is copied online again with its new definition"
    if wait:
        fix += (f" in {wait:.0f} s: stopped {stops} times in a row while its copy ran, so each next copy waits"
                " twice as long (up to an hour); the statement shows which client keeps stopping it")
    log.error("table_stopped", **said, stops_in_a_row=stops, fix=fix)


def recopy_if_asked_none(cur: psycopg.Cursor[Any], pipeline: str, name: str) -> None:
    """A stopped table whose definition can be followed again (a primary key back, say): its copy
    is asked now, if its stop asked none."""
    cur.execute(sql.SQL("SELECT 1 FROM {}.online_copy WHERE pipeline = %s AND source_table = %s"
                        " AND finished_at IS NULL").format(sql.Identifier(META)), (pipeline, name))
    if cur.fetchone() is None:
        request_copy(cur, pipeline, name)
        log.warning("stopped_table_followable", table=name, note="its definition can be followed again: copied"
                    " online again")
