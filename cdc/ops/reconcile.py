"""`softcart-sync reconcile`: prove that source, staging, star schema and warehouse agree, and
repair them where they don't, while the daemon keeps running.

Three levels, in this order (a repair at one level flows into the next):

1. **source → staging**, per configured table, segment checksums inside MySQL and PostgreSQL
   (``cdc.ops.compare``). The source is read in a consistent snapshot at binlog position R; staging is
   read only once the daemon has applied up to R (its saved position), in a REPEATABLE READ
   snapshot. A difference found that way is only a candidate: the row may have changed after R.
2. **star schema → a from-scratch computation from staging**, inside PostgreSQL, in one snapshot
   (the daemon writes staging and star in the same transaction, so no fence is needed).
3. **warehouse → star schema**, segment checksums inside both. In-flight keys (in the outbox or in
   a batch not loaded yet) are not differences; the reconcile flushes first.

Candidates of levels 1 and 3 are settled by re-reading them: origin, copy, origin again. A key is
drift only when the origin held the same row at both reads (it didn't move meanwhile), the copy
was read after the daemon had passed the first read (level 1) or with nothing in flight for it
(level 3), and the copy still differs. A key that keeps moving is reported as unsettled, never
repaired; the stream will bring it.

Repairs go through the daemon's own paths: level 1 re-reads the source rows and applies them with
the ``StagingWriter`` (staging upsert/delete, star deltas, outbox, dead letters), in a transaction
holding the pipeline's apply lock, so no batch runs meanwhile and the row read is at or past the
saved position; level 2 recomputes the differing keys from staging under the same lock; level 3
puts the keys in the outbox and flushes. Every repair reaches the warehouse through the outbox.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import psycopg
import pymysql
import structlog
from psycopg import sql

from cdc.capture import mysql
from cdc.capture.snapshot import open_snapshot, quote_mysql, select_list
from cdc.ops.compare import CanonKey, Comparison, Difference, Limits, Side, compare_table
from cdc.ops.reconcile_report import Report, TableReport, explain
from cdc.settings import Settings
from loader.checkpoint import load_position, lock_apply
from loader.ddl import META, STAGING, stopped_tables
from loader.flush import Flusher
from loader.pg import pg_connect
from loader.staging import StagingWriter
from loader.star import STAR, STAR_TABLES, StarSchema, enqueue
from loader.warehouse import TABLES as WAREHOUSE_TABLES
from loader.warehouse import Warehouse
from transform.changes import deletion
from transform.errors import ConfigError, SoftcartError, TransientError
from transform.fingerprint import SHA256, Col, Dialect, TableSpec, canonical, col_of, quote
from transform.model import Op, Position, RowChange
from transform.schema import Table
from transform.star_shape import AGGREGATES, fingerprint_kind
from transform.values import RowConverter, Unrepresentable

log = structlog.get_logger(__name__)

LEVELS = ("source", "star", "warehouse")
SETTLE_ROUNDS = 4
REPAIR_CHUNK = 200

Hashes = dict[str, dict[CanonKey, str]]  # table -> canonical key -> fingerprint
Keys = dict[str, list[tuple[Any, ...]]]  # table -> key values


def _key_list(key: tuple[Any, ...]) -> list[Any]:
    return [v if isinstance(v, int | str) or v is None else str(v) for v in key]


# Fetching on each kind of connection ------------------------------------------------------------

def _mysql_fetch(conn: pymysql.connections.Connection) -> Callable[[str, Any], list[tuple[Any, ...]]]:
    def fetch(text: str, params: Any) -> list[tuple[Any, ...]]:
        with conn.cursor() as cur:
            cur.execute(text, list(params))
            return list(cur.fetchall())

    return fetch


def _pg_fetch(conn: psycopg.Connection[Any]) -> Callable[[str, Any], list[tuple[Any, ...]]]:
    def fetch(text: str, params: Any) -> list[tuple[Any, ...]]:
        return conn.execute(text.encode(), list(params)).fetchall()  # bytes: a composed query, not a literal

    return fetch


@contextmanager
def _pg_snapshot(conn: psycopg.Connection[Any], read_only: bool = True) -> Iterator[None]:
    conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY" if read_only
                 else "BEGIN ISOLATION LEVEL REPEATABLE READ")  # the star level writes temporary tables
    try:
        yield
    finally:
        if not conn.closed:
            conn.execute("ROLLBACK")


# Settling candidates ----------------------------------------------------------------------------

def settle(pending: dict[str, dict[CanonKey, Difference]],
           read_origin: Callable[[Keys], tuple[Hashes, dict[str, set[CanonKey]]]],
           read_copy: Callable[[Keys], Hashes], rounds: int = SETTLE_ROUNDS) -> dict[str, list[Difference]]:
    """Re-read candidate keys (origin, copy, origin again) until each is either drift (the origin
    held still and the copy differs) or agrees; ``read_origin`` also returns keys in flight, which
    can't be judged this round. Returns the drift; what is left in ``pending`` is unsettled."""
    confirmed: dict[str, list[Difference]] = {t: [] for t in pending}
    for _ in range(rounds):
        if not any(pending.values()):
            break
        keys = {t: [d.key for d in diffs.values()] for t, diffs in pending.items() if diffs}
        first, busy1 = read_origin(keys)
        copy = read_copy(keys)
        second, busy2 = read_origin(keys)
        for t, diffs in pending.items():
            for canon, d in list(diffs.items()):
                h1, h2 = first.get(t, {}).get(canon), second.get(t, {}).get(canon)
                if h1 != h2 or canon in busy1.get(t, set()) or canon in busy2.get(t, set()):
                    continue  # moving: look again next round
                del diffs[canon]
                hc = copy.get(t, {}).get(canon)
                if hc != h1:
                    confirmed[t].append(Difference(d.key, canon, h1, hc))
    return confirmed


# The reconcile ----------------------------------------------------------------------------------

class Reconciler:
    def __init__(self, settings: Settings, dry_run: bool = False, levels: tuple[str, ...] = LEVELS) -> None:
        self.s = settings
        self.dry_run = dry_run
        self.levels = levels
        self.limits = Limits(settings.reconcile_segment_rows, settings.reconcile_fanout, settings.reconcile_fetch_rows)
        self.report = Report(dry_run, levels)

    def run(self) -> Report:
        started = time.monotonic()
        try:
            with ThreadPoolExecutor(2, thread_name_prefix="reconcile") as pool:
                self.pool = pool
                if "source" in self.levels:
                    self._source_level()
                if "star" in self.levels:
                    self._star_level()
                if "warehouse" in self.levels:
                    self._warehouse_level()
        except (SoftcartError, psycopg.Error, pymysql.MySQLError, OSError) as exc:
            self.report.error = _message(exc)
            log.error("reconcile_incomplete", error=self.report.error)
        self.report.seconds = time.monotonic() - started
        return self.report

    def _add(self, level: str, comp: Comparison, drift: list[Difference], unsettled: int) -> TableReport:
        rep = TableReport(level, comp.table, comp.rows_left, comp.rows_right, comp.segments,
                          [{"kind": d.kind, "key": _key_list(d.key), "what": explain(level, d.kind)} for d in drift],
                          unsettled=unsettled, seconds=comp.seconds)
        self.report.tables.append(rep)
        for d in drift:
            log.warning("reconcile_difference", level=level, table=comp.table, kind=d.kind, key=_key_list(d.key))
        return rep

    # Level 1: source -> staging ---------------------------------------------------------------

    def _source_level(self) -> None:
        src = mysql.connect(self.s)
        pg = pg_connect(self.s.staging_config, autocommit=True)
        watch = pg_connect(self.s.staging_config, autocommit=True)
        try:
            flavor = mysql.flavor(src)
            stopped = stopped_tables(pg, self.s.pipeline_name)
            for t, reason in stopped.items():
                self.report.notes.append(f"{t} is not followed since a schema change ({reason}): not compared; "
                                         "`softcart-sync resnapshot` takes it again")
            copying = _being_copied(pg, self.s.pipeline_name)
            for t in sorted(copying):
                self.report.notes.append(f"{t} is being copied online: not compared until its copy is done"
                                         " (`softcart-sync status`)")
            tables = {t: mysql.read_table(src, self.s.source.database, t) for t in self.s.source_tables
                      if t not in stopped and t not in copying}
            sides = {t: self._source_sides(src, pg, table) for t, table in tables.items()}
            _require_staging(pg, tables)
            fence: list[Position] = []

            def source_snapshot() -> None:
                src.commit()
                fence[:] = [open_snapshot(src, flavor)]

            source_snapshot()
            self._wait_applied(watch, fence[0])
            comps: dict[str, Comparison] = {}
            with _pg_snapshot(pg):
                for t, (left, right) in sides.items():
                    comps[t] = compare_table(t, left, right, self.limits, self.pool)
            src.commit()
            pending = {t: {d.canon: d for d in c.differences} for t, c in comps.items()}

            def read_origin(keys: Keys) -> tuple[Hashes, dict[str, set[CanonKey]]]:
                source_snapshot()
                try:
                    return _hashes(sides, keys, 0), {}
                finally:
                    src.commit()

            def read_copy(keys: Keys) -> Hashes:
                self._wait_applied(watch, fence[0])
                with _pg_snapshot(pg):
                    return _hashes(sides, keys, 1)

            drift = settle(pending, read_origin, read_copy)
            reports = {t: self._add("source", comps[t], drift[t], len(pending[t])) for t in tables}
            if not self.dry_run and any(drift.values()):
                self._repair_source(src, tables, drift, reports)
        finally:
            for c in (src, pg, watch):
                c.close()

    def _source_sides(self, src: pymysql.connections.Connection, pg: psycopg.Connection[Any],
                      table: Table) -> tuple[Side, Side]:
        try:
            cols = tuple(col_of(c) for c in table.columns)
        except ValueError as exc:
            raise ConfigError(f"table {table.name}: {exc}") from None
        keys = tuple(cols[i] for i in table.key_indexes())
        left = TableSpec(quote(table.name, Dialect.MYSQL), keys, cols, Dialect.MYSQL, SHA256)
        right = TableSpec(f"{quote(STAGING, Dialect.POSTGRES)}.{quote(table.name, Dialect.POSTGRES)}", keys, cols,
                          Dialect.POSTGRES, SHA256)
        return Side("source", left, _mysql_fetch(src)), Side("staging", right, _pg_fetch(pg))

    def _wait_applied(self, watch: psycopg.Connection[Any], target: Position) -> None:
        """Until the daemon's saved position is at or past ``target``."""
        deadline = time.monotonic() + self.s.reconcile_wait_seconds
        while True:
            at = load_position(watch, self.s.pipeline_name)
            if at is not None and (at.file, at.pos) >= (target.file, target.pos):
                return
            if time.monotonic() >= deadline:
                raise TransientError(
                    f"staging has applied up to {at or 'nothing'} but the source is at {target} after waiting "
                    f"{self.s.reconcile_wait_seconds:.0f} s (SOFTCART_RECONCILE_WAIT_SECONDS): the daemon is "
                    "stopped or far behind; start it (systemctl start softcart-sync) or let it catch up, then retry")
            time.sleep(0.1)  # polling the daemon's progress, with the deadline above

    def _repair_source(self, src: pymysql.connections.Connection, tables: dict[str, Table],
                       drift: dict[str, list[Difference]], reports: dict[str, TableReport]) -> None:
        from cdc.pipeline import star_schema

        with pg_connect(self.s.staging_config, autocommit=True) as pg:
            writer = StagingWriter(pg, tables, self.s.pipeline_name, star_schema(self.s, tables))
            for t, diffs in drift.items():
                table = tables[t]
                conv = RowConverter(table)
                for i in range(0, len(diffs), REPAIR_CHUNK):
                    part = diffs[i:i + REPAIR_CHUNK]
                    writer.begin()  # the apply lock: no batch moves the position until we commit
                    try:
                        changes = _current_rows(src, table, conv, part)
                        writer.apply(changes)
                        writer.commit(None)  # the position stays: the source was read at or past it
                    except BaseException:
                        writer.rollback()
                        raise
                    reports[t].repaired += len(part)
                    log.info("reconcile_repaired", level="source", table=t, rows=len(part))

    # Level 2: star schema -> rebuild from staging ---------------------------------------------

    def _star_level(self) -> None:
        if not self.s.star_table:
            self.report.notes.append("the star schema is turned off (SOFTCART_STAR_TABLE is empty): level skipped")
            return
        from cdc.ops.star_ops import _sales_table

        with pg_connect(self.s.staging_config, autocommit=True) as pg:
            star = _sales_table(pg, self.s)
            started = time.monotonic()
            with _pg_snapshot(pg, read_only=False):
                diffs = star.differing_keys(pg)
                counts = {name: _count(pg, STAR, name) for name, _, _ in STAR_TABLES}
            seconds = time.monotonic() - started
            reports = {}
            for name, _, _ in STAR_TABLES:
                drift = [_difference(kind, k) for kind, k in diffs[name]]
                comp = Comparison(name, counts[name], counts[name], 0, 0, [], seconds / len(STAR_TABLES))
                reports[name] = self._add("star", comp, drift, 0)
            if not self.dry_run and any(diffs.values()):
                self._repair_star(pg, star, diffs, reports)

    def _repair_star(self, pg: psycopg.Connection[Any], star: StarSchema,
                     diffs: dict[str, list[tuple[str, tuple[Any, ...]]]], reports: dict[str, TableReport]) -> None:
        writer = StagingWriter(pg, {}, self.s.pipeline_name, star)
        writer.begin()
        try:
            with pg.cursor() as cur:
                star.repair(cur, [k[0] for _, k in diffs["factsales"]],
                            {t.name: [k for _, k in diffs[t.name]] for t in AGGREGATES},
                            [k[0] for _, k in diffs["dimdate"]])
            writer.commit(None)  # the position stays: the source was read at or past it
        except BaseException:
            writer.rollback()
            raise
        for name, rep in reports.items():
            rep.repaired = len(diffs[name])
        log.info("reconcile_repaired", level="star", keys={n: len(d) for n, d in diffs.items()})

    # Level 3: warehouse -> star schema ----------------------------------------------------------

    def _warehouse_level(self) -> None:
        if self.s.warehouse is None:
            self.report.notes.append("no warehouse configured (SOFTCART_WAREHOUSE_URL): level skipped")
            return
        if not self.s.star_table:
            return
        from cdc.flushing import open_flusher

        flusher = open_flusher(self.s)
        warehouse = flusher.warehouse
        try:
            pg = pg_connect(self.s.staging_config, autocommit=True)
        except BaseException:
            flusher.close()
            raise
        try:
            flusher.flush()  # what is in flight now, first
            sides = _warehouse_sides(pg, warehouse)
            comps: dict[str, Comparison] = {}
            with _pg_snapshot(pg):
                busy = _in_flight(pg, self.s.pipeline_name)
                for name, (left, right) in sides.items():
                    comps[name] = compare_table(name, left, right, self.limits, self.pool)
            pending = {n: {d.canon: d for d in c.differences if d.canon not in busy.get(n, set())}
                       for n, c in comps.items()}

            def read_origin(keys: Keys) -> tuple[Hashes, dict[str, set[CanonKey]]]:
                with _pg_snapshot(pg):
                    return _hashes(sides, keys, 0), _in_flight(pg, self.s.pipeline_name)

            def read_copy(keys: Keys) -> Hashes:
                flusher.flush()
                return _hashes(sides, keys, 1)

            drift = settle(pending, read_origin, read_copy)
            reports = {n: self._add("warehouse", comps[n], drift[n], len(pending[n])) for n in comps}
            if not self.dry_run and any(drift.values()):
                self._repair_warehouse(flusher, drift, lambda ds: settle(ds, read_origin, read_copy))
                for n, ds in drift.items():
                    reports[n].repaired = len(ds)
        finally:
            flusher.close()
            pg.close()


    def _repair_warehouse(self, flusher: Flusher, drift: dict[str, list[Difference]],
                          settled: Callable[[dict[str, dict[CanonKey, Difference]]], dict[str, list[Difference]]]
                          ) -> None:
        """The drifted keys into the outbox (as every outbox writer, under the apply lock) and
        flushed; repaired only if a second look agrees (a batch skipped as already loaded, or a load
        that changed nothing, must not be reported as a repair)."""
        conn = flusher.conn
        with conn.transaction(), conn.cursor() as cur:
            lock_apply(conn, self.s.pipeline_name)
            enqueue(cur, [(n, d.key) for n, ds in drift.items() for d in ds])
        result = flusher.flush()
        if result.failed or result.waiting:
            raise TransientError(f"the warehouse refused the repair batch {result.created}: see "
                                 "`softcart-sync batches list`")
        again = settled({n: {d.canon: d for d in ds} for n, ds in drift.items()})
        still = {n: len(ds) for n, ds in again.items() if ds}
        if still:
            raise TransientError(f"the warehouse repair batch {result.created} was loaded but the warehouse"
                                 f" still differs from the star schema ({still}): see"
                                 " `softcart-sync batches list` and the warehouse's softcart_ledger")
        log.info("reconcile_repaired", level="warehouse", keys={n: len(d) for n, d in drift.items()})


def _warehouse_sides(pg: psycopg.Connection[Any], warehouse: Warehouse) -> dict[str, tuple[Side, Side]]:
    """Each warehouse table beside the star schema's, as the comparison reads them."""
    dialect = warehouse.dialect
    sides: dict[str, tuple[Side, Side]] = {}
    for t in WAREHOUSE_TABLES:
        cols = tuple(Col(c, *_WAREHOUSE_KINDS[c]) for c in t.columns)
        keys = tuple(c for c in cols if c.name in t.key)
        star_spec = TableSpec(f"{quote(STAR, Dialect.POSTGRES)}.{quote(t.name, Dialect.POSTGRES)}", keys,
                              cols, Dialect.POSTGRES)
        wh_spec = TableSpec(quote(t.name, dialect), keys, cols, dialect)
        sides[t.name] = (Side("star", star_spec, _pg_fetch(pg)), Side("warehouse", wh_spec, warehouse.fetch))
    return sides


#: Each warehouse column's fingerprint, from the star schema's shape.
_WAREHOUSE_KINDS = {c.name: fingerprint_kind(c) for t in WAREHOUSE_TABLES for c in t.schema}


def _being_copied(pg: psycopg.Connection[Any], pipeline: str) -> set[str]:
    """Tables whose online copy is not done: staging has only part of them, by design."""
    if pg.execute("SELECT to_regclass(%s)", (f"{META}.online_copy",)).fetchone() == (None,):
        return set()
    return {str(r[0]) for r in pg.execute(sql.SQL("SELECT source_table FROM {}.online_copy WHERE pipeline = %s"
                                                  " AND finished_at IS NULL").format(sql.Identifier(META)),
                                          (pipeline,)).fetchall()}


def _difference(kind: str, key: tuple[Any, ...]) -> Difference:
    """A difference known by its kind only (the star level compares rows, not fingerprints)."""
    left, right = {"missing": ("row", None), "extra": (None, "row"), "changed": ("row", "other")}[kind]
    return Difference(key, tuple(str(v) for v in key), left, right)


def _hashes(sides: dict[str, tuple[Side, Side]], keys: Keys, which: int) -> Hashes:
    return {t: {c: h for c, (_, h) in sides[t][which].rows_by_key(ks).items()} for t, ks in keys.items()}


def _in_flight(pg: psycopg.Connection[Any], pipeline: str) -> dict[str, set[CanonKey]]:
    """Star keys on their way to the warehouse: in the outbox, or in a batch not loaded yet."""
    out: dict[str, set[CanonKey]] = {}
    for tbl, k1, k2 in pg.execute(sql.SQL("SELECT tbl, k1, k2 FROM {}.outbox_keys").format(sql.Identifier(META))):
        out.setdefault(tbl, set()).add(tuple(str(k) for k in (k1, k2) if k is not None))
    for (keys,) in pg.execute(sql.SQL("SELECT keys FROM {}.batch WHERE pipeline = %s AND state <> 'loaded'")
                              .format(sql.Identifier(META)), (pipeline,)):
        for tbl, ks in keys.items():
            out.setdefault(tbl, set()).update(tuple(str(v) for v in k) for k in ks)
    return out


def _count(pg: psycopg.Connection[Any], schema: str, name: str) -> int:
    row = pg.execute(sql.SQL("SELECT count(*) FROM {}.{}").format(sql.Identifier(schema), sql.Identifier(name)))
    return int(row.fetchone()[0])  # type: ignore[index]


def _require_staging(pg: psycopg.Connection[Any], tables: dict[str, Table]) -> None:
    for t in tables:
        if pg.execute("SELECT to_regclass(%s)", (f'{STAGING}."{t}"',)).fetchone() == (None,):
            raise ConfigError(f"staging has no table {t!r} yet: run the daemon first (softcart-sync run)")


def _current_rows(src: pymysql.connections.Connection, table: Table, conv: RowConverter,
                  diffs: list[Difference]) -> list[RowChange]:
    """The source's current rows for the keys of ``diffs`` as changes: an upsert where the row
    exists, a delete where it doesn't, a dead letter where it has no PostgreSQL form. Rows are
    matched to keys by canonical key text, as the comparison saw them."""
    key_idx = table.key_indexes()
    cols = [col_of(c) for c in table.columns]
    canon = ", ".join(f"COALESCE({canonical(cols[i], Dialect.MYSQL, SHA256)}, 'N')" for i in key_idx)
    where = " OR ".join(["(" + " AND ".join(f"{quote_mysql(k)} = %s" for k in table.primary_key) + ")"] * len(diffs))
    with src.cursor() as cur:
        cur.execute(f"SELECT {select_list(table)}, {canon} FROM {quote_mysql(table.name)} WHERE {where}",
                    [v for d in diffs for v in d.key])
        raws = list(cur.fetchall())
    width = len(table.columns)
    seen = {tuple(str(v) for v in r[width:]) for r in raws}
    changes: list[RowChange] = []
    for r in raws:
        raw = r[:width]
        try:
            changes.append(RowChange(table.name, Op.INSERT, None, conv.from_snapshot(raw)))
        except Unrepresentable as exc:
            changes.append(RowChange(table.name, Op.INSERT, None, None, error=str(exc), raw=repr(raw)[:10000],
                                     key=tuple(raw[i] for i in key_idx)))
    changes += [deletion(table, d.key) for d in diffs if d.canon not in seen]
    return changes


def _message(exc: BaseException) -> str:
    if isinstance(exc, SoftcartError):
        return str(exc)
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
