"""The star schema's rules as set-based SQL (pure: statements built from the staging column types).

``transform.star`` (Python) stays the reference; these statements vouch only for the rows where
they make the very fact Python makes (:attr:`SqlRules.valid`), and leave every other row to it.
They serve the from-scratch build (``loader.star.StarSchema.build_into``) and the per-batch delta
(:func:`batch_statements`, :func:`row_statements`): a batch's facts, aggregate deltas, dates, deletes and outbox keys
computed inside PostgreSQL from the rows the staging apply just wrote, instead of row by row in
Python. ``tests/integration/test_star_sql.py`` holds the delta equal to the Python rules,
differentially, for the column types and time zones the from-scratch build's test uses.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from psycopg import sql

from transform.star import MONEY_DIGITS, MONEY_SCALE, DayZone
from transform.star_shape import AGGREGATES, FACTSALES, MEASURES, SALES_BY_DAY, StarTable

_BIGINT_RANGE = sql.SQL("BETWEEN -9223372036854775808 AND 9223372036854775807")
_INTEGERS = ("smallint", "integer", "bigint")
FACT_COLS = FACTSALES.columns


def ids(cols: Iterable[str]) -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier(c) for c in cols)


@dataclass(frozen=True)
class SqlRules:
    """``transform.star.fact_from_values`` as SQL over a relation with the sales table's columns:
    ``valid`` holds only where the Python rule makes a fact with these very values, ``dateid`` is
    the sale's date in the business time zone."""

    valid: sql.Composable
    dateid: sql.Composable


def sql_rules(types: Mapping[str, str], zone: DayZone) -> SqlRules | None:
    """The rules for the staging columns' PostgreSQL types (``types``: name -> regtype text), or
    None where they'd differ from Python's (a float price is exact binary in Python; a DATETIME
    written in a zone with clock changes, other than the business one: the hour a clock goes back
    is read as its first pass by Python, its second by PostgreSQL). ``zone.key`` must be one
    PostgreSQL knows (the caller asks pg_timezone_names)."""
    numbers = (*_INTEGERS, "numeric")
    if any(types.get(c) not in numbers for c in ("rowid", "product_id", "customer_id", "price", "quantity")):
        return None
    ts, tz = sql.Identifier("timestamp"), sql.Literal(zone.key)
    day: sql.Composable
    instant: sql.Composable | None = None  # a DATETIME's UTC instant, where Python computes one
    if types.get("timestamp") == "timestamp with time zone":
        day = sql.SQL("({} AT TIME ZONE {})::date").format(ts, tz)
    elif types.get("timestamp") == "timestamp without time zone":  # a DATETIME: a wall-clock time in zone.wall
        offset = zone.wall_offset()
        if zone.wall_is_business():
            day = sql.SQL("{}::date").format(ts)
        elif offset is not None:  # its instant is the wall time less the offset (an interval: exact)
            instant = sql.SQL("({} - {}::interval)").format(ts, sql.Literal(f"{int(offset.total_seconds())} seconds"))
            day = sql.SQL("({} AT TIME ZONE 'UTC' AT TIME ZONE {})::date").format(instant, tz)
        else:
            return None
    elif types.get("timestamp") == "date":
        day = ts
    else:
        return None
    checks = [sql.SQL("{} IS NOT NULL").format(ts), sql.SQL("isfinite({})").format(ts),
              sql.SQL("product_id IS NOT NULL"), sql.SQL("price IS NOT NULL"), sql.SQL("quantity IS NOT NULL"),
              sql.SQL("quantity >= 0"),
              sql.SQL("abs(price) < {}").format(sql.Literal(10 ** (MONEY_DIGITS - MONEY_SCALE))),
              sql.SQL("price = round(price, {})").format(sql.Literal(MONEY_SCALE)),
              sql.SQL("abs(price * quantity) < {}").format(sql.Literal(10 ** (MONEY_DIGITS - MONEY_SCALE)))]
    for c in ("rowid", "product_id", "customer_id", "quantity"):
        if types[c] == "numeric":
            checks.append(sql.SQL("({0} IS NULL OR ({0} {1} AND {0} = trunc({0})))").format(
                sql.Identifier(c), _BIGINT_RANGE))
    checks.append(sql.SQL("{} BETWEEN '0001-01-01' AND '9999-12-31'").format(day))  # Python's dates
    if instant is not None:  # Python's datetimes: past them its astimezone overflows (the row goes to Python)
        checks.append(sql.SQL("{} BETWEEN '0001-01-01' AND '9999-12-31 23:59:59.999999'").format(instant))
    dateid = sql.SQL("(date_part('year', {0}) * 10000 + date_part('month', {0}) * 100"
                     " + date_part('day', {0}))::integer").format(day)
    return SqlRules(sql.SQL(" AND ").join(checks), dateid)


@dataclass(frozen=True)
class BatchStatements:
    """The statements of one batch's star-schema delta that read the session's temporary tables
    (``_star_factsales``: the batch's new facts; ``_star_<aggregate>``: its deltas to each
    aggregate), whoever filled them: the SQL rules (:class:`RowStatements` and ``aggregate_deltas``)
    or the Python rules (loader.star COPYs them). ``%(keys)s``: rowids whose facts may be gone
    (every rowid the batch changed; those with a new fact are left alone); ``%(dates)s``: the dates
    the batch added to dimdate. Statements over every aggregate are one statement each (writable
    CTEs): one round trip whatever the number of aggregates. The outbox's fact keys are
    ``%(keys)s``: every rowid the batch changed (its new facts' among them)."""

    clear: sql.Composed  # empties the temporary tables
    aggregate_deltas: sql.Composed  # new facts minus the old ones of %(keys)s, per aggregate key, nonzero
    new_dates: sql.Composed  # the new facts' dateids dimdate lacks (rows made by transform.star.dim_date)
    delete_facts: sql.Composed  # the facts of %(keys)s that have no new one
    upsert_facts: sql.Composed
    add_aggregates: sql.Composed
    drop_empty_aggregates: sql.Composed  # only aggregates that lost sales can be empty now
    drop_unused_dates: sql.Composed  # and only their dates unused
    outbox: sql.Composed  # the warehouse keys the batch changed


def temp(t: StarTable) -> sql.Identifier:
    """The session's temporary table of a batch's rows (facts) or deltas (aggregates) of ``t``."""
    return sql.Identifier(f"_star_{t.name}")


def changed_dates(day_deltas: sql.Composable) -> sql.Composed:
    """The dimdate keys a batch changed: the dates it added (``%(dates)s``) and the dates whose
    sales_by_day lost sales (only those can have gone). Every other date of the batch was in
    dimdate, and in the warehouse, already: sending it again cost an outbox row and a warehouse
    upsert per date of every batch (sales over two years: about 700 dates a batch of 2,000)."""
    return sql.SQL("SELECT unnest(%(dates)s::integer[]) AS dateid UNION SELECT dateid FROM {}"
                   " WHERE sales_count < 0").format(day_deltas)


def _each(statements: Sequence[sql.Composable], before: tuple[tuple[str, sql.Composable], ...] = ()) -> sql.Composed:
    """Several data-modifying statements as one (all but the last as writable CTEs, after the
    CTEs ``before``: (name, query))."""
    ctes = [*before, *((f"_s{i}", st) for i, st in enumerate(statements[:-1]))]
    if not ctes:
        return sql.Composed([statements[-1]])
    return sql.SQL("WITH {} {}").format(
        sql.SQL(", ").join(sql.SQL("{} AS ({})").format(sql.Identifier(n), q) for n, q in ctes), statements[-1])


def key_match(key: Sequence[str], left: str, right: str) -> sql.Composed:
    """``left.k1 = right.k1 AND ...`` over the key columns: two relations of a star table joined."""
    return sql.SQL(" AND ").join(sql.SQL("{0}.{2} = {1}.{2}").format(sql.Identifier(left), sql.Identifier(right),
                                                                      sql.Identifier(k)) for k in key)


def aggregate_from(t: StarTable, source: sql.Composable, n: str = "1", q: str = "quantity",
                   a: str = "total_price") -> sql.Composed:
    """``SELECT`` ``t``'s rows (key, then measures) grouped from ``source`` (a relation with
    factsales' columns, or with ``n``, ``q``, ``a`` summed instead of a count, the quantities and
    the amounts)."""
    keys = sql.SQL(", ").join(sql.SQL("{} AS {}").format(sql.SQL(g), sql.Identifier(k))
                              for g, k in zip(t.grouping, t.key, strict=True))
    count = sql.SQL("count(*)") if n == "1" else sql.SQL("sum({})").format(sql.Identifier(n))
    return sql.SQL("SELECT {keys}, {n}, sum({q}), sum({a}) FROM {src} GROUP BY {by}").format(
        keys=keys, n=count, q=sql.Identifier(q), a=sql.Identifier(a), src=source,
        by=sql.SQL(", ").join(sql.Literal(i + 1) for i in range(len(t.key))))


def _keys_row(table: str, key: tuple[str, ...], source: sql.Composable) -> sql.Composed:
    """The outbox row of a batch's keys of ``table`` (none when it has none): its key columns in
    ``source``, aggregated into the arrays k1s (and k2s for a two-column key)."""
    arrays: list[sql.Composable] = [sql.SQL("array_agg({})::bigint[]").format(sql.Identifier(k)) for k in key]
    arrays += [sql.SQL("NULL::bigint[]")] * (2 - len(key))
    return sql.SQL("SELECT {}, {} FROM {} HAVING count(*) > 0").format(
        sql.Literal(table), sql.SQL(", ").join(arrays), source)


def batch_statements(star: str, meta: str) -> BatchStatements:
    s, m = sql.Identifier(star), sql.Identifier(meta)
    facts = temp(FACTSALES)
    nonzero = sql.SQL(" HAVING sum(n) <> 0 OR sum(q) <> 0 OR sum(a) <> 0")
    # The batch's delta at the finest grain any aggregate needs, read once, then grouped per aggregate.
    fine = sql.SQL(
        "SELECT dateid, product_id, sum(n) AS n, sum(q) AS q, sum(a) AS a FROM ("
        "SELECT dateid, product_id, 1 AS n, quantity AS q, total_price AS a FROM {facts}"
        " UNION ALL SELECT dateid, product_id, -1, -quantity, -total_price FROM {s}.factsales"
        " WHERE rowid = ANY(%(keys)s::bigint[])) u GROUP BY dateid, product_id").format(facts=facts, s=s)
    deltas = [sql.SQL("INSERT INTO {} ({}) {}{}").format(
        temp(t), ids(t.columns), aggregate_from(t, sql.Identifier("_fine"), "n", "q", "a"), nonzero)
        for t in AGGREGATES]
    adds = [sql.SQL("INSERT INTO {s}.{t} AS t ({cols}) SELECT {cols} FROM {d} ON CONFLICT ({key}) DO UPDATE SET {set}")
            .format(s=s, t=sql.Identifier(t.name), cols=ids(t.columns), d=temp(t), key=ids(t.key),
                    set=sql.SQL(", ").join(sql.SQL("{0} = t.{0} + EXCLUDED.{0}").format(sql.Identifier(c))
                                           for c in MEASURES)) for t in AGGREGATES]
    # Only an aggregate that lost sales can be empty now, and only its date unused: looking at
    # every touched date instead scanned each one's products (13 ms a batch).
    drops = [sql.SQL("DELETE FROM {}.{} t USING {} d WHERE {} AND d.sales_count < 0 AND t.sales_count = 0").format(
        s, sql.Identifier(t.name), temp(t), key_match(t.key, "t", "d")) for t in AGGREGATES]
    keys = [_keys_row(t.name, t.key, temp(t)) for t in AGGREGATES]
    return BatchStatements(
        clear=sql.SQL("TRUNCATE {}").format(sql.SQL(", ").join(temp(t) for t in (FACTSALES, *AGGREGATES))),
        aggregate_deltas=_each(deltas, before=(("_fine", fine),)),
        new_dates=sql.SQL("SELECT DISTINCT dateid FROM {} f WHERE NOT EXISTS (SELECT 1 FROM {}.dimdate d"
                          " WHERE d.dateid = f.dateid) ORDER BY 1").format(facts, s),
        delete_facts=sql.SQL("DELETE FROM {}.factsales WHERE rowid = ANY(%(keys)s::bigint[])"
                             " AND rowid NOT IN (SELECT rowid FROM {})").format(s, facts),
        upsert_facts=sql.SQL(
            "INSERT INTO {0}.factsales ({1}) SELECT {1} FROM {2} ON CONFLICT (rowid) DO UPDATE SET {3},"
            " updated_at = now()").format(
            s, ids(FACT_COLS), facts,
            sql.SQL(", ").join(sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c)) for c in FACT_COLS[1:])),
        add_aggregates=_each(adds),
        drop_empty_aggregates=_each(drops),
        drop_unused_dates=sql.SQL(
            "DELETE FROM {0}.dimdate dd WHERE dd.dateid IN (SELECT dateid FROM {1} WHERE sales_count < 0)"
            " AND NOT EXISTS (SELECT 1 FROM {0}.sales_by_day t WHERE t.dateid = dd.dateid)").format(
            s, temp(SALES_BY_DAY)),
        outbox=sql.SQL("INSERT INTO {m}.outbox (tbl, k1s, k2s) {facts} UNION ALL {aggs} UNION ALL {dates}").format(
            m=m, aggs=sql.SQL(" UNION ALL ").join(keys),
            facts=sql.SQL("SELECT 'factsales', k, NULL::bigint[] FROM (SELECT %(keys)s::bigint[]) AS f (k)"
                          " WHERE cardinality(k) > 0"),
            dates=_keys_row("dimdate", ("dateid",), sql.SQL("({}) d").format(changed_dates(temp(SALES_BY_DAY))))),
    )


@dataclass(frozen=True)
class RowStatements:
    """The statements that read the batch's upserted rows (the staging apply's temporary table),
    by the SQL rules: the facts they vouch for go to ``_star_factsales``, the others to Python."""

    new_facts: sql.Composed
    odd_rows: sql.Composed


def row_statements(rules: SqlRules, rows: str, sales_columns: tuple[str, ...]) -> RowStatements:
    """The statements for the upserted rows in the relation ``rows`` (the staging apply's
    temporary table of the batch's new rows, with the sales table's columns)."""
    up = sql.Identifier(rows)
    return RowStatements(
        new_facts=sql.SQL("INSERT INTO {} ({}) SELECT rowid, {}, product_id, customer_id, price, quantity,"
                          " price * quantity FROM {} WHERE {}").format(
            sql.Identifier("_star_factsales"), ids(FACT_COLS), rules.dateid, up, rules.valid),
        odd_rows=sql.SQL("SELECT {} FROM {} WHERE NOT COALESCE({}, false)").format(
            ids(sales_columns), up, rules.valid),
    )
