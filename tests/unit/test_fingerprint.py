"""The reconcile's pure parts: fingerprint SQL, key ranges, row diffs, settling candidates."""

from __future__ import annotations

import re
import sqlite3
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdc.ops.compare import Difference, diff_rows
from cdc.ops.reconcile import settle
from transform.fingerprint import (
    Col,
    Dialect,
    Kind,
    TableSpec,
    canonical,
    col_of,
    db2_decimal_text,
    range_where,
    row_hash,
)
from transform.schema import _INT_TYPES, _SIMPLE_TYPES, Column

KEYS = (Col("a", Kind.INT), Col("b", Kind.INT))
small = st.integers(-3, 3)
pairs = st.tuples(small, small)


@given(st.lists(pairs, unique=True, max_size=30), st.one_of(st.none(), pairs), st.one_of(st.none(), pairs))
def test_db2_range_expansion_selects_lo_to_hi_in_key_order(rows: list[tuple[int, int]], lo: Any, hi: Any) -> None:
    """DB2 has no row-value comparison: the expanded form must pick exactly lo <= (a, b) < hi.
    Checked by running it in SQLite (same ? markers) against Python's tuple order."""
    where, params = range_where(KEYS, lo, hi, Dialect.DB2)
    db = sqlite3.connect(":memory:")
    db.execute('CREATE TABLE t ("A" INTEGER, "B" INTEGER)')
    db.executemany("INSERT INTO t VALUES (?, ?)", rows)
    got = sorted(db.execute(f"SELECT * FROM t WHERE {where}", params).fetchall())
    want = sorted(r for r in rows if (lo is None or r >= lo) and (hi is None or r < hi))
    assert got == want


def test_postgres_and_mysql_ranges_use_row_values_with_binary_text_order() -> None:
    keys = (Col("region", Kind.TEXT), Col("n", Kind.INT))
    where, params = range_where(keys, ("a", 1), ("b", 2), Dialect.POSTGRES)
    assert where == '(("region" COLLATE "C"), "n") >= (%s, %s) AND (("region" COLLATE "C"), "n") < (%s, %s)'
    assert params == ["a", 1, "b", 2]
    where, _ = range_where(keys, ("a", 1), None, Dialect.MYSQL)
    assert where.startswith("(CAST(CONVERT(`region` USING utf8mb4) AS BINARY), `n`) >= (CAST(CONVERT(%s USING utf8mb4)"
                            " AS BINARY), %s)")  # bytes, as "C" orders them: no PAD SPACE, no ties
    assert range_where(keys, None, None, Dialect.MYSQL) == ("1 = 1", [])


def test_every_source_type_has_a_fingerprint_on_mysql_and_postgres() -> None:
    for t in [*_INT_TYPES, *_SIMPLE_TYPES, "decimal", "datetime", "timestamp", "time", "bit"]:
        col = col_of(Column("c", t, t))
        for d in (Dialect.MYSQL, Dialect.POSTGRES):
            assert canonical(col, d)
    with pytest.raises(ValueError, match="'c': type 'vector"):
        col_of(Column("c", "vector", "vector(3)"))


def test_db2_takes_the_warehouse_kinds_only() -> None:
    for kind in (Kind.INT, Kind.DECIMAL, Kind.DATE, Kind.TEXT):
        assert canonical(Col("x", kind, scale=4), Dialect.DB2)
    with pytest.raises(ValueError, match="not supported on DB2"):
        canonical(Col("x", Kind.FLOAT), Dialect.DB2)


def test_null_and_value_can_not_run_together() -> None:
    """Every part is NULL-marked or length-prefixed, so ('ab', NULL) and ('a', 'b') differ."""
    h = row_hash((Col("x", Kind.INT), Col("y", Kind.INT)), Dialect.POSTGRES)
    assert h.count("COALESCE(length(") == 2 and h.count(", 'N')") == 2
    spec = TableSpec('"t"', (Col("x", Kind.INT),), (Col("x", Kind.INT),), Dialect.DB2)
    text, params = spec.summary_sql((1,), None)
    assert params == [1] and "HASH(" in text and text.count("?") == 1


def test_diff_rows_kinds() -> None:
    left = {("1",): ((1,), "h1"), ("2",): ((2,), "h2"), ("3",): ((3,), "h3")}
    right = {("2",): ((2,), "h2"), ("3",): ((3,), "other"), ("4",): ((4,), "h4")}
    assert [(d.kind, d.key) for d in diff_rows(left, right)] == [("missing", (1,)), ("changed", (3,)),
                                                                 ("extra", (4,))]


def _d(k: int) -> Difference:
    return Difference((k,), (str(k),), "x", "y")


def test_settle_confirms_drift_drops_lag_and_leaves_moving_keys() -> None:
    """Key 1: drift (origin still, copy differs). Key 2: the copy caught up (lag). Key 3: changes at
    every read (unsettled). Key 4: in flight in the first round, drift in the second."""
    rounds = iter(range(100))
    origin_reads: list[int] = []

    def read_origin(keys: dict[str, list[tuple[Any, ...]]]) -> tuple[dict[str, dict[Any, str]],
                                                                     dict[str, set[Any]]]:
        n = next(rounds)
        origin_reads.append(n)
        hashes = {("1",): "a", ("2",): "b", ("3",): f"moving{n}", ("4",): "d"}
        busy = {("4",)} if n < 2 else set()
        return {"t": {c: h for c, h in hashes.items() if (int(c[0]),) in keys["t"]}}, {"t": busy}

    def read_copy(keys: dict[str, list[tuple[Any, ...]]]) -> dict[str, dict[Any, str]]:
        return {"t": {("1",): "stale", ("2",): "b", ("3",): "whatever", ("4",): "old"}}

    pending = {"t": {d.canon: d for d in map(_d, (1, 2, 3, 4))}}
    confirmed = settle(pending, read_origin, read_copy, rounds=3)
    assert [(d.key, d.left, d.right) for d in confirmed["t"]] == [((1,), "a", "stale"), ((4,), "d", "old")]
    assert list(pending["t"]) == [("3",)]  # unsettled: never repaired, reported as such
    assert len(origin_reads) == 6  # two origin reads per round, three rounds (key 3 kept it going)


def test_settle_stops_when_nothing_is_pending() -> None:
    calls = []

    def read_origin(keys: Any) -> Any:
        calls.append(keys)
        return {"t": {("1",): "a"}}, {}

    pending = {"t": {("1",): _d(1)}}
    assert settle(pending, read_origin, lambda keys: {"t": {("1",): "a"}}) == {"t": []}
    assert len(calls) == 2 and pending == {"t": {}}


def test_source_comparisons_use_functions_both_sources_have() -> None:
    """MySQL 9 has no MD5() (the reconcile failed with 'FUNCTION sales.MD5 does not exist'):
    between the source and staging every digest is SHA-256 (SHA2() on MariaDB and MySQL,
    sha256() on PostgreSQL); the star schema and the warehouse keep MD5 (Db2's HASH(..., 0))."""
    cols = (Col("id", Kind.INT), Col("name", Kind.TEXT), Col("blob", Kind.BINARY))
    for dialect in (Dialect.MYSQL, Dialect.POSTGRES):
        spec = TableSpec("t", cols[:2], cols, dialect, "sha256")
        text = spec.summary_sql(None, None)[0] + spec.rows_sql(None, None)[0]
        assert "md5" not in text.lower(), text
    assert "SHA2(CONCAT(" in TableSpec("t", cols[:1], cols, Dialect.MYSQL, "sha256").summary_sql(None, None)[0]
    assert "md5(" in TableSpec("t", cols[:1], cols, Dialect.POSTGRES).summary_sql(None, None)[0]


def _db2_eval(expr: str, c: str, value: Decimal) -> str:
    """Evaluate the SQL of db2_decimal_text for ``value`` by Db2's documented semantics of the
    functions it uses (DIGITS: the absolute value's digits, zero-padded to the precision, no sign
    or point; DECIMAL(x, 31, s): truncated to s places; TRIM LEADING; SUBSTR 1-based)."""
    scale = int(re.search(r"DECIMAL\([^,]+, 31, (\d+)\)", expr).group(1))  # type: ignore[union-attr]
    exact = value.quantize(Decimal(1).scaleb(-scale), rounding="ROUND_DOWN")
    digits = str(abs(exact).scaleb(scale).to_integral_value()).zfill(31)
    whole = digits[:31 - scale].lstrip("0") or "0"
    text = ("-" if exact < 0 else "") + whole + ("." + digits[31 - scale:] if scale else "")
    assert expr.count("DIGITS(") == (2 if scale else 1)  # the shape evaluated here
    return text


BIG = Decimal("99999999999999999999999.9999")


@given(st.decimals(min_value=-BIG, max_value=BIG, places=4, allow_nan=False, allow_infinity=False),
       st.sampled_from([0, 2, 4]))
def test_db2_decimal_text_is_postgresqls_round_text(value: Decimal, scale: int) -> None:
    """Db2's VARCHAR(DECIMAL(...)) drops the leading zero (0.20 -> '.20'): every value strictly
    between -1 and 1 differed from PostgreSQL's '0.2000' on every nightly run (#32 item 4). The
    builder's text, evaluated by the documented semantics of the functions it uses, is
    PostgreSQL's round(x, s)::text for values at the column's scale."""
    at_scale = value.quantize(Decimal(1).scaleb(-scale), rounding="ROUND_DOWN")
    expr = db2_decimal_text('"PRICE"', scale)
    assert "VARCHAR(" not in expr
    pg = f"{at_scale:.{scale}f}" if at_scale != 0 else f"{Decimal(0):.{scale}f}"
    assert _db2_eval(expr, '"PRICE"', at_scale) == pg


def test_db2_decimal_text_edges() -> None:
    for value, scale, want in [(Decimal("0.2"), 4, "0.2000"), (Decimal("-0.5"), 4, "-0.5000"),
                               (Decimal(0), 2, "0.00"), (Decimal(5), 0, "5"), (Decimal("-12.34"), 2, "-12.34"),
                               (Decimal("0.0001"), 4, "0.0001")]:
        assert _db2_eval(db2_decimal_text("c", scale), "c", value) == want
