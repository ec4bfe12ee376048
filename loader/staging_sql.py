"""The statements that apply a batch's net changes to a staging table (pure: text from a table's
definition), and the text forms of keys and values the dead-letter table stores."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from psycopg import sql

from loader.ddl import STAGING
from transform.schema import Table, pg_type


def ident_list(names: Iterable[str]) -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier(n) for n in names)


def _conflict_action(table: Table) -> sql.Composable:
    non_key = [c for c in table.column_names if c not in table.primary_key]
    if not non_key:
        return sql.SQL("DO NOTHING")
    return sql.SQL("DO UPDATE SET ") + sql.SQL(", ").join(
        sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c)) for c in non_key)


def upsert_sql(table: Table, temp: str) -> sql.Composed:
    cols = ident_list(table.column_names)
    action = _conflict_action(table)
    return sql.SQL("INSERT INTO {}.{} ({}) SELECT {} FROM {} ON CONFLICT ({}) {}").format(
        sql.Identifier(STAGING), sql.Identifier(table.name), cols, cols, sql.Identifier(temp),
        ident_list(table.primary_key), action)


def delete_sql(table: Table) -> sql.Composed:
    """Delete the rows whose keys come as one array parameter per key column: one round trip, and
    ``unnest`` of parameters is planned as a few rows, so each key is an index probe (a temporary
    table of keys, without statistics, got joined by a sequential scan of the whole table)."""
    types = {c.name: pg_type(c) for c in table.columns}
    arrays = sql.SQL(", ").join(sql.SQL("%s::{}[]").format(sql.SQL(types[k])) for k in table.primary_key)
    cond = sql.SQL(" AND ").join(
        sql.SQL("t.{0} = d.{0}").format(sql.Identifier(k)) for k in table.primary_key)
    return sql.SQL("DELETE FROM {}.{} t USING unnest({}) AS d({}) WHERE {}").format(
        sql.Identifier(STAGING), sql.Identifier(table.name), arrays, ident_list(table.primary_key), cond)


def upsert_one_sql(table: Table) -> sql.Composed:
    cols = ident_list(table.column_names)
    action = _conflict_action(table)
    return sql.SQL("INSERT INTO {}.{} ({}) VALUES ({}) ON CONFLICT ({}) {}").format(
        sql.Identifier(STAGING), sql.Identifier(table.name), cols,
        sql.SQL(", ").join(sql.Placeholder() for _ in table.column_names),
        ident_list(table.primary_key), action)


def delete_one_sql(table: Table) -> sql.Composed:
    cond = sql.SQL(" AND ").join(sql.SQL("{} = %s").format(sql.Identifier(k)) for k in table.primary_key)
    return sql.SQL("DELETE FROM {}.{} WHERE {}").format(
        sql.Identifier(STAGING), sql.Identifier(table.name), cond)


def key_text(key: Sequence[Any] | None) -> str:
    return json.dumps([jsonable(v) for v in key] if key is not None else None)


def jsonable(v: Any) -> Any:
    if isinstance(v, int | float | str | bool) or v is None:
        return v
    if isinstance(v, bytes):
        return v.hex()
    return str(v)


def select_by_keys_sql(table: Table) -> sql.Composed:
    """Staging's rows (every column, in the definition's order) whose keys come as one array
    parameter per key column, as :func:`delete_sql` takes them."""
    types = {c.name: pg_type(c) for c in table.columns}
    arrays = sql.SQL(", ").join(sql.SQL("%s::{}[]").format(sql.SQL(types[k])) for k in table.primary_key)
    cond = sql.SQL(" AND ").join(
        sql.SQL("t.{0} = d.{0}").format(sql.Identifier(k)) for k in table.primary_key)
    return sql.SQL("SELECT {} FROM {}.{} t JOIN unnest({}) AS d({}) ON {}").format(
        sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in table.column_names),
        sql.Identifier(STAGING), sql.Identifier(table.name), arrays, ident_list(table.primary_key), cond)
