"""`softcart-sync rebuild [--check]`: the star schema from scratch, next to a running daemon."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from cdc.capture.mysql import day_zone
from cdc.settings import Settings
from loader.checkpoint import lock_apply
from loader.ddl import STAGING
from loader.pg import pg_connect
from loader.star import STAR, StarSchema
from transform.errors import ConfigError
from transform.schema import Column, Table
from transform.star import DayZone


def _sales_table(conn: psycopg.Connection[Any], settings: Settings) -> StarSchema:
    """The star's source table as staging holds it (no source connection needed)."""
    name = settings.star_table
    if not name:
        raise ConfigError("SOFTCART_STAR_TABLE is empty: the star schema is turned off")
    rows = conn.execute("SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = %s"
                        " AND table_name = %s ORDER BY ordinal_position", (STAGING, name)).fetchall()
    if not rows:
        raise ConfigError(f"staging has no table {name!r} yet: run the daemon first (softcart-sync run)")
    # a DATETIME is held as a timestamp without time zone: only then is the source's zone asked for
    cols = tuple(Column(name=r[0], data_type="datetime" if r[1] == "timestamp without time zone" else "",
                        column_type="") for r in rows)
    table = Table(name, cols, ("rowid",))
    datetime = any(c.name == "timestamp" and c.data_type == "datetime" for c in cols)
    return StarSchema(table, day_zone(settings) if datetime else DayZone(settings.zone))


def rebuild_star(settings: Settings) -> tuple[int, int]:
    with pg_connect(settings.staging_config, autocommit=True) as conn:
        star = _sales_table(conn, settings)
        with conn.transaction():
            # Writers wait (the daemon's next batch blocks), readers carry on.
            lock_apply(conn, settings.pipeline_name)
            conn.execute(sql.SQL("LOCK TABLE {}.{} IN SHARE MODE").format(
                sql.Identifier(STAGING), sql.Identifier(star.table.name)))
            built = star.rebuild(conn)
        return built.facts, len(built.invalid)


def check_star(settings: Settings, limit: int = 20) -> list[str]:
    with pg_connect(settings.staging_config, autocommit=True) as conn:
        star = _sales_table(conn, settings)
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")  # rolled back below
        try:
            if conn.execute("SELECT to_regclass(%s)", (f"{STAR}.factsales",)).fetchone() == (None,):
                return ["the star schema does not exist yet: run the daemon or `softcart-sync rebuild`"]
            return star.differences(conn, limit)
        finally:
            conn.execute("ROLLBACK")
