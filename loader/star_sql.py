"""The star schema's facts from scratch as one set-based SELECT over staging (the SQL text).

``transform.star`` decides, row by row in Python, what fact a sales row makes; building a whole
star schema that way (a snapshot, ``softcart-sync rebuild``) costs ~30 µs a row. For staging
columns of exact types the same rules are written here in SQL, so PostgreSQL computes every valid
fact in one statement; the rows it finds invalid (usually few) still go through
:func:`transform.star.try_fact` for their dead-letter reason, and ``rebuild --check`` and the
reconcile keep comparing against the Python computation.
"""

from __future__ import annotations

from decimal import Decimal

from psycopg import sql

from transform.star import MONEY_DIGITS, MONEY_SCALE

_BIGINT = 2**63
_MONEY_LIMIT = Decimal(10) ** (MONEY_DIGITS - MONEY_SCALE)  # as transform.star's DECIMAL(31,4) check

_INTEGERS = {"smallint", "integer", "bigint"}
_TIMES = {"timestamp with time zone": "({c} AT TIME ZONE %(zone)s)::date",
          "timestamp without time zone": "(({c} AT TIME ZONE 'UTC') AT TIME ZONE %(zone)s)::date",
          "date": "{c}"}


def valid_facts_sql(staging_schema: str, table: str, types: dict[str, str]) -> sql.Composed | None:
    """``SELECT rowid, dateid, product_id, customer_id, price, quantity, total_price`` of every
    staging row that makes a valid fact (parameter ``zone``: the business time zone), or None when
    a column's type is one only the Python rules handle exactly (floats, fractional quantities)."""
    def ident(c: str) -> sql.Composable:
        return sql.Identifier(c)

    t = {c: types.get(c, "") for c in ("rowid", "product_id", "customer_id", "price", "quantity", "timestamp")}
    ids = ("rowid", "product_id", "customer_id")
    if any(t[c] not in _INTEGERS | {"numeric"} for c in ids) or t["quantity"] not in _INTEGERS \
            or t["price"] not in _INTEGERS | {"numeric"} or t["timestamp"] not in _TIMES:
        return None
    day = sql.SQL(_TIMES[t["timestamp"]].format(c="{}")).format(ident("timestamp"))
    price = sql.SQL("{}::numeric").format(ident("price"))
    limit = sql.Literal(_MONEY_LIMIT)
    conditions = [sql.SQL("{} IS NOT NULL").format(ident(c)) for c in ("timestamp", "price", "quantity", "product_id")]
    conditions.append(sql.SQL("{} >= 0").format(ident("quantity")))
    for c in ids:  # a numeric(20,0) (BIGINT UNSIGNED) id may not fit the star's bigint
        if t[c] == "numeric":
            conditions.append(sql.SQL("({0} IS NULL OR ({0} >= {1} AND {0} < {2} AND {0} = trunc({0})))").format(
                ident(c), sql.Literal(-_BIGINT), sql.Literal(_BIGINT)))
    conditions.append(sql.SQL("{0} <> 'NaN' AND abs({0}) < {1} AND {0} = round({0}, {2})").format(
        price, limit, sql.Literal(MONEY_SCALE)))
    conditions.append(sql.SQL("abs({} * {}) < {}").format(price, ident("quantity"), limit))
    return sql.SQL(
        "SELECT {rowid}, (extract(year FROM d) * 10000 + extract(month FROM d) * 100 + extract(day FROM d))::integer,"
        " {product_id}, {customer_id}, {price}, {quantity}, {price} * {quantity}"
        " FROM (SELECT *, {day} AS d FROM {schema}.{table} WHERE {where}) s").format(
        rowid=ident("rowid"), product_id=ident("product_id"), customer_id=ident("customer_id"), price=price,
        quantity=ident("quantity"), day=day, schema=sql.Identifier(staging_schema), table=sql.Identifier(table),
        where=sql.SQL(" AND ").join(conditions))
