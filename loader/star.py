"""The star schema in PostgreSQL (schema ``star``): kept current inside each micro-batch, rebuilt
or checked from scratch on demand. What to write is computed by ``transform.star``; this module
only runs set-based statements (one per table and batch, with arrays as parameters)."""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from loader.ddl import META, STAGING
from transform.changes import NetChanges
from transform.errors import ConfigError, FatalError
from transform.schema import Table
from transform.star import (
    SALES_COLUMNS,
    DayZone,
    Fact,
    ScratchBuilder,
    StarDelta,
    date_of,
    dim_date,
    star_delta,
    try_fact,
)
from transform.star_shape import AGGREGATES, DIMDATE, FACTSALES, SALES_BY_DAY, StarTable, staging_types
from transform.star_shape import FACT_INDEX as INDEX
from transform.star_shape import TABLES as SHAPE
from transform.star_sql import (
    FACT_COLS,
    RowStatements,
    SqlRules,
    aggregate_from,
    batch_statements,
    key_match,
    row_statements,
    sql_rules,
    temp,
)
from transform.star_sql import ids as _ids

STAR = "star"
Cursor = psycopg.Cursor[Any]

def _staging_ddl(t: StarTable) -> str:
    """The staging star schema's table, from the shape (transform/star_shape.py)."""
    parts = [f"{c.name} {c.staging}" + ("" if c.nullable else " NOT NULL") for c in t.schema]
    parts += [*t.staging_extra, f"PRIMARY KEY ({', '.join(t.key)})", *(f"UNIQUE ({u})" for u in t.unique)]
    parts += [f"FOREIGN KEY ({r.column}) REFERENCES {STAR}.{r.table} ({r.target})" for r in t.references]
    return f"CREATE TABLE IF NOT EXISTS {STAR}.{t.name} ({', '.join(parts)})"


_INDEX, _INDEXED, _INDEX_COLUMN = INDEX
FACT_INDEX = f"CREATE INDEX IF NOT EXISTS {_INDEX} ON {STAR}.{_INDEXED} ({_INDEX_COLUMN})"
STAR_DDL = [f"CREATE SCHEMA IF NOT EXISTS {STAR}", *(_staging_ddl(t) for t in SHAPE), FACT_INDEX]
#: A staging star schema made before the aggregates' grains changed has sales_by_day per (day,
#: product): it is dropped, made anew and rebuilt (with a full reload of the warehouse).
OLD_GRAIN = (f"SELECT EXISTS (SELECT FROM information_schema.columns WHERE table_schema = '{STAR}'"
             " AND table_name = 'sales_by_day' AND column_name = 'product_id')")

DIMDATE_COLS = DIMDATE.columns
#: (table, columns compared, key) of the star schema's tables, in load order.
STAR_TABLES = tuple((t.name, t.columns, t.key) for t in SHAPE)
_TYPES = staging_types()


def _drop_keys(cur: Cursor) -> list[tuple[str, str, str]]:
    """For a bulk load: the keys, foreign key first, and the fact index dropped, to be made again
    once at the end as the catalog had them (``_restore_keys``): a key built from sorted rows and a
    foreign key validated by one join cost a fraction of their upkeep row by row (1,000,000 facts:
    5.3 s -> 3 s)."""
    keys = cur.execute(
        "SELECT conrelid::regclass::text, quote_ident(conname), pg_get_constraintdef(oid) FROM pg_constraint"
        " WHERE conrelid = ANY(%s::regclass[]) AND contype IN ('f', 'p') ORDER BY contype, conname",
        ([f"{STAR}.{t.name}" for t in (FACTSALES, *AGGREGATES)],)).fetchall()
    for table, name, _ in keys:
        cur.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(sql.SQL(table), sql.SQL(name)))
    cur.execute(sql.SQL("DROP INDEX IF EXISTS {}.{}").format(sql.Identifier(STAR), sql.Identifier(_INDEX)))
    return [(str(t), str(n), str(d)) for t, n, d in keys]


def _restore_keys(cur: Cursor, keys: list[tuple[str, str, str]]) -> None:
    cur.execute(FACT_INDEX)
    for table, name, definition in reversed(keys):
        cur.execute(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(
            sql.SQL(table), sql.SQL(name), sql.SQL(definition)))


def _unnest(cols: tuple[str, ...]) -> sql.Composed:
    """``SELECT * FROM unnest(%s::t1[], %s::t2[], ...) AS u(c1, c2, ...)``: many rows, one parameter
    per column, one round trip."""
    arrays = sql.SQL(", ").join(sql.SQL("%s::{}[]").format(sql.SQL(_TYPES[c])) for c in cols)
    return sql.SQL("SELECT * FROM unnest({}) AS u({})").format(
        arrays, sql.SQL(", ").join(sql.Identifier(c) for c in cols))


def _columns(rows: list[tuple[Any, ...]], width: int) -> list[list[Any]]:
    return [[r[i] for r in rows] for i in range(width)]


UPSERT_DIMDATE = sql.SQL("INSERT INTO {}.dimdate ({}) {} ON CONFLICT (dateid) DO NOTHING RETURNING dateid").format(
    sql.Identifier(STAR), _ids(DIMDATE_COLS), _unnest(DIMDATE_COLS))
DELETE_FACTS = sql.SQL("DELETE FROM {}.factsales WHERE rowid = ANY(%s::bigint[])").format(sql.Identifier(STAR))
#: The batch statements both ways of computing a delta run (transform.star_sql).
BATCH = batch_statements(STAR, META)
OUTBOX_FULL = sql.SQL("INSERT INTO {}.outbox (tbl) VALUES ('*')").format(sql.Identifier(META))


RESOLVE_DEAD_LETTERS = sql.SQL(
    "UPDATE {}.dead_letter SET resolved_at = now() WHERE kind = 'fact' AND source_table = %s"
    " AND row_key = ANY(%s::text[]) AND resolved_at IS NULL").format(sql.Identifier(META))


@dataclass(frozen=True)
class Applied:
    """What a batch did to the star schema: facts upserted and deleted, and the rows that make no
    fact with Python's reason (rowid -> reason)."""

    upserts: int
    deletes: int
    invalid: Mapping[Any, str]

    @classmethod
    def of(cls, delta: StarDelta) -> Applied:
        return cls(len(delta.fact_upserts), len(delta.fact_deletes), delta.invalid)


@dataclass
class Built:
    """A from-scratch build: facts made, and the rows that make none with the reason."""

    facts: int = 0
    invalid: list[tuple[Any, str]] = field(default_factory=list)


def sql_rules_for(conn: psycopg.Connection[Any], table: str, zone: DayZone) -> SqlRules | None:
    """transform.star_sql's rules for the staging table's column types (None: not Python's, or no such zone)."""
    types = dict(conn.execute(
        "SELECT attname, atttypid::regtype::text FROM pg_attribute WHERE attrelid = %s::regclass"
        " AND attnum > 0 AND NOT attisdropped", (f"{STAGING}.{table}",)).fetchall())
    known = conn.execute("SELECT EXISTS (SELECT FROM pg_timezone_names WHERE name = %s)", (zone.key,)).fetchone()
    return sql_rules(types, zone) if known and known[0] else None  # (a row of false was taken for a known zone)


class StarSchema:
    """Maintains ``star`` from the changes of one staging table (``sales_data``)."""

    def __init__(self, table: Table, zone: DayZone, deltas_in_sql: bool = True) -> None:
        missing = [c for c in SALES_COLUMNS if c not in table.column_names]
        if missing:
            raise FatalError(f"the star schema needs columns {', '.join(missing)} in {table.name} "
                             "(set SOFTCART_STAR_TABLE to the sales table, or to an empty value to turn it off)")
        if table.primary_key != ("rowid",):
            raise FatalError(f"the star schema needs {table.name} to have the primary key (rowid)")
        if why := zone.refusal(table.name, table.column("timestamp").data_type):
            raise ConfigError(why)
        self.table = table
        self.zone = zone
        #: per-batch deltas computed inside PostgreSQL where the column types allow (SOFTCART_STAR_DELTAS)
        self.deltas_in_sql = deltas_in_sql
        self._rules: SqlRules | bool | None = False  # False: not looked up yet
        self._delta: tuple[str, RowStatements] | None = None
        self._values = operator.itemgetter(*(table.column_names.index(c) for c in SALES_COLUMNS))

    def ensure_schema(self, cur: Cursor) -> bool:
        """Create the star schema if missing; True when it was missing or its aggregates were made
        anew at their new grains (either way it needs a build)."""
        cur.execute("SELECT to_regclass('star.factsales') IS NULL")
        row = cur.fetchone()
        cur.execute(OLD_GRAIN)
        old = cur.fetchone()
        if old and old[0]:
            cur.execute(sql.SQL("DROP TABLE {}.sales_by_day").format(sql.Identifier(STAR)))
        for stmt in STAR_DDL:
            cur.execute(stmt)
        return bool(row and row[0]) or bool(old and old[0])

    def values(self, row: tuple[Any, ...]) -> tuple[Any, ...]:
        """A staging row's values in SALES_COLUMNS order."""
        values: tuple[Any, ...] = self._values(row)
        return values

    def read_old(self, cur: Cursor, rowids: list[Any]) -> dict[int, Fact]:
        """The facts of ``rowids`` as factsales holds them before the batch (only valid rows have one)."""
        if not rowids:
            return {}
        cur.execute(sql.SQL("SELECT rowid, dateid, product_id, customer_id, price, quantity, total_price"
                            " FROM {}.factsales WHERE rowid = ANY(%s::bigint[])").format(sql.Identifier(STAR)),
                    (rowids,))
        return {r[0]: Fact(rowid=r[0], dateid=r[1], date=date_of(r[1]), product_id=r[2], customer_id=r[3],
                           price=r[4], quantity=r[5], total_price=r[6]) for r in cur.fetchall()}

    def apply(self, cur: Cursor, old: Mapping[int, Fact], net: NetChanges) -> StarDelta:
        """Apply what ``net`` (already applied to staging) does to the star schema."""
        changes: list[tuple[int, Fact | None, tuple[Any, ...] | None]] = []
        for key, row in net.upserts.items():
            changes.append((key[0], old.get(key[0]), self.values(row)))
        for key in net.deletes:
            changes.append((key[0], old.get(key[0]), None))
        delta = star_delta(changes, self.zone)
        self.write(cur, delta)
        return delta

    def sql_delta(self, conn: psycopg.Connection[Any], rows: str) -> RowStatements | None:
        """The per-batch delta's statements over the staging apply's temporary table ``rows``, or
        None where the Python rules apply (turned off, or column types the SQL can't vouch for)."""
        if not self.deltas_in_sql:
            return None
        if self._rules is False:
            self._rules = sql_rules_for(conn, self.table.name, self.zone)
        if not isinstance(self._rules, SqlRules):
            return None
        if self._delta is None or self._delta[0] != rows:
            self._delta = (rows, row_statements(self._rules, rows, SALES_COLUMNS))
        return self._delta[1]

    def apply_in_sql(self, cur: Cursor, st: RowStatements, net: NetChanges) -> Applied:
        """What ``net`` (already applied to staging; its upserted rows in the statements' temporary
        table) does to the star schema, computed inside PostgreSQL: the same as :meth:`apply`, by
        the rows the SQL rules vouch for, Python judging the others."""
        keys = [k[0] for k in net.keys]
        params = {"keys": keys}
        cur.execute(BATCH.clear)
        invalid: dict[Any, str] = {}
        upserts = 0
        if net.upserts:
            cur.execute(st.new_facts)
            upserts = max(0, cur.rowcount)
            # The rows the rules didn't vouch for, if any (the temporary table holds the batch's upserts)
            odd_rows = cur.execute(st.odd_rows).fetchall() if upserts < len(net.upserts) else []
            odd = []
            for row in odd_rows:
                fact, reason = try_fact(tuple(row), self.zone)
                if fact is not None:
                    odd.append(fact)
                elif reason is not None:
                    invalid[row[0]] = reason
            if invalid:  # keyed as the batch has them (1, not numeric 1): the dead letters' key text
                ours = {k[0]: k[0] for k in net.upserts}
                invalid = {ours.get(k, k): reason for k, reason in invalid.items()}
            if odd:
                _copy(cur, sql.Identifier("_star_factsales"), FACT_COLS, (f.row() for f in odd))
                upserts += len(odd)
        cur.execute(BATCH.aggregate_deltas, params)
        days = [r[0] for r in cur.execute(BATCH.new_dates).fetchall()] if upserts else []
        if days:
            cur.execute(UPSERT_DIMDATE, _columns([dim_date(date_of(d)).row() for d in days], len(DIMDATE_COLS)))
        cur.execute(BATCH.delete_facts, params)
        if upserts:
            cur.execute(BATCH.upsert_facts)
        cur.execute(BATCH.add_aggregates)
        cur.execute(BATCH.drop_empty_aggregates)
        cur.execute(BATCH.drop_unused_dates)
        settled = [k for k in keys if k not in invalid]
        if settled and self._open_fact_dead_letters(cur):
            cur.execute(RESOLVE_DEAD_LETTERS, (self.table.name, [f"[{r}]" for r in settled]))
        if keys:
            cur.execute(BATCH.outbox, {**params, "dates": days})
        return Applied(upserts, len(keys) - upserts, invalid)

    def prepare_session(self, cur: Cursor) -> None:
        """Create this session's temporary tables, outside any transaction (so no rollback to a
        savepoint can take them away)."""
        for t in (FACTSALES, *AGGREGATES):
            cur.execute(sql.SQL("CREATE TEMP TABLE IF NOT EXISTS {} ON COMMIT DELETE ROWS AS SELECT {} FROM {}.{}"
                                " WITH NO DATA").format(temp(t), _ids(t.columns), sql.Identifier(STAR),
                                                        sql.Identifier(t.name)))

    def _staged(self, cur: Cursor, t: StarTable, rows: Iterable[tuple[Any, ...]]) -> None:
        """COPY ``rows`` into the session's temporary ``_star_<t>`` (psycopg's C dumpers make COPY
        several times cheaper than array parameters for wide rows)."""
        cur.execute(sql.SQL("TRUNCATE {}").format(temp(t)))
        _copy(cur, temp(t), t.columns, rows)

    def write(self, cur: Cursor, delta: StarDelta) -> None:
        """Set-based: facts and aggregate deltas COPYed into session temp tables, merged with one
        statement each; the outbox keys are taken from those temp tables in SQL."""
        self._staged(cur, FACTSALES, (f.row() for f in delta.fact_upserts.values()))
        for t in AGGREGATES:
            self._staged(cur, t, ((*k, a.sales, a.quantity, a.amount) for k, a in delta.aggregates[t.name].items()))
        changed = any(delta.aggregates.values())
        added: list[int] = []
        if delta.dates:
            cur.execute(UPSERT_DIMDATE, _columns([d.row() for d in delta.dates.values()], len(DIMDATE_COLS)))
            added = sorted(r[0] for r in cur.fetchall())
        deleted = list(delta.fact_deletes)
        if deleted:
            cur.execute(DELETE_FACTS, (deleted,))
        if delta.fact_upserts:
            cur.execute(BATCH.upsert_facts)
        if changed:
            cur.execute(BATCH.add_aggregates)
        if delta.shrinking:
            cur.execute(BATCH.drop_empty_aggregates)
            cur.execute(BATCH.drop_unused_dates)
        if delta.settled and self._open_fact_dead_letters(cur):
            cur.execute(RESOLVE_DEAD_LETTERS, (self.table.name, [f"[{r}]" for r in delta.settled]))
        if delta.fact_upserts or deleted or changed:
            cur.execute(BATCH.outbox, {"keys": [*deleted, *delta.fact_upserts], "dates": added})

    def _open_fact_dead_letters(self, cur: Cursor) -> bool:
        cur.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {}.dead_letter WHERE kind = 'fact' AND source_table = %s"
                            " AND resolved_at IS NULL)").format(sql.Identifier(META)), (self.table.name,))
        row = cur.fetchone()
        return bool(row and row[0])

    # From scratch ----------------------------------------------------------------------------

    def build_into(self, conn: psycopg.Connection[Any], schema: str, temp: bool = False,
                   in_sql: bool = False) -> Built:
        """Compute the star schema from staging into ``schema``'s (empty) tables, or into
        temporary tables named ``scratch_*`` when ``temp`` (they have no foreign key). ``in_sql``:
        facts and aggregates by set-based statements inside PostgreSQL where the staging column
        types allow (the rows those statements can't vouch for, and dimdate, still go through
        ``transform.star``); otherwise every row through ``transform.star`` (the reference
        ``rebuild --check`` uses)."""
        def target(name: str) -> sql.Composable:
            return sql.Identifier(f"scratch_{name}") if temp else sql.Identifier(schema, name)

        rules = sql_rules_for(conn, self.table.name, self.zone) if in_sql else None
        if rules is None:
            return self._build_in_python(conn, target)
        built = Built()
        staging = sql.SQL("{}.{}").format(sql.Identifier(STAGING), sql.Identifier(self.table.name))
        with conn.cursor() as cur:
            # The facts' keys sorted, and the aggregates hashed, in memory, not spilled (the
            # settings end with the transaction).
            cur.execute("SET LOCAL work_mem = '128MB'")
            cur.execute("SET LOCAL maintenance_work_mem = '256MB'")
            keys = [] if temp else _drop_keys(cur)
            cur.execute(sql.SQL("INSERT INTO {} ({}) SELECT rowid, {}, product_id, customer_id, price, quantity,"
                                " price * quantity FROM {} WHERE {}").format(
                target("factsales"), _ids(FACT_COLS), rules.dateid, staging, rules.valid))
            vouched = cur.rowcount
            # The rows the rules don't vouch for (NULLs, overflows...), if any: Python judges them.
            total = cur.execute(sql.SQL("SELECT count(*) FROM {}").format(staging)).fetchone()
            odd = []
            if total is None or vouched < total[0]:
                cur.execute(sql.SQL("SELECT {} FROM {} WHERE NOT COALESCE({}, false)").format(
                    _ids(SALES_COLUMNS), staging, rules.valid))
                for row in cur.fetchall():
                    fact, reason = try_fact(tuple(row), self.zone)
                    if fact is not None:
                        odd.append(fact)
                    elif reason is not None:
                        built.invalid.append((row[0], reason))
            built.facts = vouched + len(odd)
            _copy(cur, target("factsales"), FACT_COLS, (f.row() for f in odd))
            for t in AGGREGATES:
                cur.execute(sql.SQL("INSERT INTO {} ({}) {}").format(
                    target(t.name), _ids(t.columns), aggregate_from(t, target("factsales"))))
            # The dates from the aggregate (the facts' foreign key is added after them).
            days = [r[0] for r in cur.execute(sql.SQL("SELECT DISTINCT dateid FROM {} ORDER BY 1").format(
                target("sales_by_day")))]
            _copy(cur, target("dimdate"), DIMDATE_COLS, (dim_date(date_of(d)).row() for d in days))
            if not temp:
                _restore_keys(cur, keys)
        return built

    def _build_in_python(self, conn: psycopg.Connection[Any], target: Callable[[str], sql.Composable]) -> Built:
        builder = ScratchBuilder(self.zone)
        facts = 0
        with conn.cursor(name="softcart_star_scan") as scan, conn.cursor() as cur:
            scan.itersize = 20000
            scan.execute(sql.SQL("SELECT {} FROM {}.{}").format(
                _ids(SALES_COLUMNS), sql.Identifier(STAGING), sql.Identifier(self.table.name)))
            pending: list[tuple[Any, ...]] = []
            for row in scan:
                fact = builder.add(tuple(row))
                if fact is not None:
                    pending.append(fact.row())
                    facts += 1
            # dimdate first: factsales references it
            _copy(cur, target("dimdate"), DIMDATE_COLS, builder.dimdate())
            _copy(cur, target("factsales"), FACT_COLS, pending)
            for t in AGGREGATES:
                _copy(cur, target(t.name), t.columns, builder.aggregate(t.name))
        return Built(facts, builder.invalid)

    def rebuild(self, conn: psycopg.Connection[Any]) -> Built:
        """Replace the star schema with a from-scratch computation (inside the caller's transaction)."""
        with conn.cursor() as cur:
            self.ensure_schema(cur)
            cur.execute(sql.SQL("TRUNCATE {}").format(sql.SQL(", ").join(
                sql.Identifier(STAR, t.name) for t in reversed(SHAPE))))
            cur.execute(OUTBOX_FULL)  # the warehouse follows with a full reload
        return self.build_into(conn, STAR, in_sql=True)

    def _build_scratch(self, conn: psycopg.Connection[Any]) -> None:
        """The from-scratch star schema in temporary ``scratch_*`` tables (dropped at commit)."""
        with conn.cursor() as cur:
            for name in (t.name for t in SHAPE):
                cur.execute(sql.SQL(
                    "CREATE TEMP TABLE IF NOT EXISTS {} (LIKE {}.{} INCLUDING DEFAULTS) ON COMMIT DROP").format(
                    sql.Identifier(f"scratch_{name}"), sql.Identifier(STAR), sql.Identifier(name)))
                cur.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(f"scratch_{name}")))
        self.build_into(conn, STAR, temp=True)

    def differing_keys(self, conn: psycopg.Connection[Any]) -> dict[str, list[tuple[str, tuple[Any, ...]]]]:
        """Per star table, the keys where the incremental tables differ from a from-scratch
        computation, as (kind, key): ``missing`` (only in the rebuild), ``extra`` (only in the
        incremental) or ``changed``. One FULL JOIN per table, inside PostgreSQL."""
        self._build_scratch(conn)
        out: dict[str, list[tuple[str, tuple[Any, ...]]]] = {}
        for name, cols, keys in STAR_TABLES:
            on = key_match(keys, "a", "b")
            rest = [c for c in cols if c not in keys]
            query = sql.SQL(
                "SELECT {coalesced}, a.{k} IS NULL, b.{k} IS NULL FROM {star} a FULL JOIN {scratch} b ON {on}"
                " WHERE a.{k} IS NULL OR b.{k} IS NULL OR ({ra}) IS DISTINCT FROM ({rb}) ORDER BY 1").format(
                coalesced=sql.SQL(", ").join(sql.SQL("COALESCE(a.{0}, b.{0})").format(sql.Identifier(k))
                                             for k in keys),
                k=sql.Identifier(keys[0]), star=sql.Identifier(STAR, name),
                scratch=sql.Identifier(f"scratch_{name}"), on=on,
                ra=sql.SQL(", ").join(sql.SQL("a.{}").format(sql.Identifier(c)) for c in rest),
                rb=sql.SQL(", ").join(sql.SQL("b.{}").format(sql.Identifier(c)) for c in rest))
            n = len(keys)
            out[name] = [("missing" if r[n] else "extra" if r[n + 1] else "changed", tuple(r[:n]))
                         for r in conn.execute(query).fetchall()]
        return out

    def repair(self, cur: Cursor, rowids: list[int], agg_keys: Mapping[str, Iterable[tuple[Any, ...]]],
               dateids: list[int]) -> None:
        """Put these keys right, computed afresh from staging, inside the caller's transaction (which
        holds the apply lock): facts from their staging rows, aggregates (``agg_keys``: keys per
        aggregate table) recounted from the facts, dates from the facts; every key touched goes to
        the outbox for the warehouse."""
        rows = cur.execute(sql.SQL("SELECT {} FROM {}.{} WHERE rowid = ANY(%s::bigint[])").format(
            _ids(SALES_COLUMNS), sql.Identifier(STAGING), sql.Identifier(self.table.name)), (rowids,)).fetchall()
        facts = [f for f in (try_fact(tuple(r), self.zone)[0] for r in rows) if f is not None]
        old = self.read_old(cur, rowids)
        days = {f.dateid: dim_date(f.date) for f in facts}
        if days:
            cur.execute(UPSERT_DIMDATE, _columns([d.row() for d in days.values()], len(DIMDATE_COLS)))
        cur.execute(DELETE_FACTS, (rowids,))
        self._staged(cur, FACTSALES, (f.row() for f in facts))
        cur.execute(BATCH.upsert_facts)
        touched: list[tuple[str, tuple[Any, ...]]] = []
        for i, t in enumerate(AGGREGATES):
            keys = {tuple(k) for k in agg_keys.get(t.name, ())} | {f.agg_keys()[i] for f in (*old.values(), *facts)}
            _recount(cur, t, sorted(keys))
            touched += [(t.name, k) for k in keys]
        all_days = sorted(set(dateids) | {k[0] for name, k in touched if name == SALES_BY_DAY.name})
        used = {r[0] for r in cur.execute(sql.SQL(
            "SELECT DISTINCT dateid FROM {}.factsales WHERE dateid = ANY(%s::integer[])").format(
            sql.Identifier(STAR)), (all_days,)).fetchall()}
        cur.execute(sql.SQL("DELETE FROM {}.dimdate WHERE dateid = ANY(%s::integer[])").format(sql.Identifier(STAR)),
                    ([d for d in all_days if d not in used],))
        right = [dim_date(date_of(d)).row() for d in sorted(used)]
        if right:
            cur.execute(sql.SQL("INSERT INTO {}.dimdate ({}) {} ON CONFLICT (dateid) DO UPDATE SET {}").format(
                sql.Identifier(STAR), _ids(DIMDATE_COLS), _unnest(DIMDATE_COLS),
                sql.SQL(", ").join(sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c))
                                   for c in DIMDATE_COLS[1:])), _columns(right, len(DIMDATE_COLS)))
        enqueue(cur, [("factsales", (r,)) for r in rowids] + touched + [("dimdate", (d,)) for d in all_days])

    def differences(self, conn: psycopg.Connection[Any], limit: int = 20) -> list[str]:
        """Rows where the incremental star schema differs from a from-scratch computation."""
        self._build_scratch(conn)
        out: list[str] = []
        with conn.cursor() as cur:
            for name, cols, _ in STAR_TABLES:
                for label, a, b in (("only in the incremental", sql.Identifier(STAR, name),
                                     sql.Identifier(f"scratch_{name}")),
                                    ("only in the rebuild", sql.Identifier(f"scratch_{name}"),
                                     sql.Identifier(STAR, name))):
                    cur.execute(sql.SQL("SELECT {c} FROM {a} EXCEPT SELECT {c} FROM {b} ORDER BY 1 LIMIT %s").format(
                        c=_ids(cols), a=a, b=b), (limit,))
                    out += [f"{name} {label}: {dict(zip(cols, r, strict=True))}" for r in cur.fetchall()]
        return out


def _recount(cur: Cursor, t: StarTable, keys: list[tuple[Any, ...]]) -> None:
    """The aggregate ``t``'s rows of ``keys`` recounted from the facts (gone where none is left)."""
    keyed = sql.SQL("({}) IN ({})").format(_ids(t.key), _unnest(t.key))
    arrays = _columns(keys, len(t.key))
    cur.execute(sql.SQL("DELETE FROM {} WHERE {}").format(sql.Identifier(STAR, t.name), keyed), arrays)
    facts = sql.SQL("(SELECT * FROM {} WHERE ({}) IN ({})) f").format(
        sql.Identifier(STAR, "factsales"), sql.SQL(", ").join(sql.SQL(g) for g in t.grouping), _unnest(t.key))
    cur.execute(sql.SQL("INSERT INTO {} ({}) {}").format(
        sql.Identifier(STAR, t.name), _ids(t.columns), aggregate_from(t, facts)), arrays)


def enqueue(cur: Cursor, keys: Iterable[tuple[str, tuple[Any, ...]]]) -> int:
    """Put star keys in the outbox, so the next flush sends their current rows to the warehouse."""
    rows = [(t, k[0], k[1] if len(k) > 1 else None) for t, k in keys]
    if rows:
        cur.executemany(sql.SQL("INSERT INTO {}.outbox (tbl, k1, k2) VALUES (%s, %s, %s)").format(
            sql.Identifier(META)), rows)
    return len(rows)


def _copy(cur: Cursor, target: sql.Composable, cols: tuple[str, ...], rows: Iterable[tuple[Any, ...]]) -> None:
    with cur.copy(sql.SQL("COPY {} ({}) FROM STDIN").format(target, _ids(cols))) as copy:
        for r in rows:
            copy.write_row(r)
