"""Dead letters: rows that can't be applied, recorded with the reason in the transaction that
skips them, and resolved once their key applies later (a fix, a delete, a new snapshot)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import psycopg
import structlog
from psycopg import sql

from loader.ddl import META
from loader.staging_sql import key_text

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class DeadLetter:
    table: str
    key: str
    reason: str
    row: str | None
    kind: str = "value"  # 'value': no staging form, or refused by PostgreSQL; 'fact': no valid fact
    #: a later change of the same key in the same transaction applied: recorded, and resolved
    resolved: bool = False


class DeadLetters:
    """The open transaction's dead letters, saved with it (:meth:`save`), and what was saved."""

    def __init__(self, pipeline: str) -> None:
        self.pipeline = pipeline
        self.pending: list[DeadLetter] = []
        self.saved: dict[str, int] = {}  # committed dead letters by kind, for metrics

    def add(self, table: str, key: Sequence[Any] | None, reason: str, row: str | None, kind: str = "value") -> None:
        self.pending.append(DeadLetter(table, key_text(key), reason, row, kind))

    def settle(self, cur: psycopg.Cursor[Any], table: str, applied_keys: Callable[[], set[str]]) -> None:
        """Rows of ``table`` dead-lettered earlier whose key has now been applied (a later UPDATE
        fixed the value, or a DELETE removed the row): their 'value' dead letters are resolved, in
        the open transaction (``applied_keys`` leaves out keys refused or unreadable in this
        batch; it is called only when a dead letter of the table is open or pending)."""
        pending = any(d.table == table and d.kind == "value" for d in self.pending)
        cur.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {}.dead_letter WHERE source_table = %s AND pipeline = %s"
                            " AND resolved_at IS NULL AND kind = 'value')").format(sql.Identifier(META)),
                    (table, self.pipeline))
        row = cur.fetchone()
        stored = bool(row and row[0])
        if not (pending or stored):
            return
        keys = applied_keys()
        if not keys:
            return
        self.pending = [replace(d, resolved=True) if d.table == table and d.kind == "value" and d.key in keys else d
                        for d in self.pending]
        if stored:
            cur.execute(sql.SQL("UPDATE {}.dead_letter SET resolved_at = now() WHERE source_table = %s"
                                " AND pipeline = %s AND kind = 'value' AND row_key = ANY(%s::text[])"
                                " AND resolved_at IS NULL").format(sql.Identifier(META)),
                        (table, self.pipeline, sorted(keys)))

    def save(self, cur: psycopg.Cursor[Any], position: str) -> None:
        """Insert the pending dead letters; a key's newest one supersedes its older open ones."""
        if not self.pending:
            return
        newest = {(d.table, d.key): i for i, d in enumerate(self.pending) if d.kind == "value"}
        self.pending = [replace(d, resolved=True) if d.kind == "value" and newest[(d.table, d.key)] != i else d
                        for i, d in enumerate(self.pending)]
        value = [d for d in self.pending if d.kind == "value"]
        if value:
            cur.execute(sql.SQL("UPDATE {}.dead_letter d SET resolved_at = now() FROM unnest(%s::text[], %s::text[])"
                                " AS n(t, k) WHERE d.pipeline = %s AND d.kind = 'value' AND d.resolved_at IS NULL"
                                " AND d.source_table = n.t AND d.row_key = n.k").format(sql.Identifier(META)),
                        ([d.table for d in value], [d.key for d in value], self.pipeline))
        cur.executemany(
            sql.SQL("INSERT INTO {}.dead_letter (pipeline, source_table, row_key, position, reason,"
                    " row_data, kind, resolved_at) VALUES (%s, %s, %s, %s, %s, %s, %s,"
                    " CASE WHEN %s THEN now() END)").format(sql.Identifier(META)),
            [(self.pipeline, d.table, d.key, position, d.reason, d.row, d.kind, d.resolved) for d in self.pending])
        for d in self.pending:
            log.warning("row_dead_lettered", table=d.table, key=d.key, reason=d.reason, kind=d.kind,
                        position=position)
            self.saved[d.kind] = self.saved.get(d.kind, 0) + 1
