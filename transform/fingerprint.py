"""Row fingerprints computed inside the databases, identically on MySQL/MariaDB, PostgreSQL and DB2
(pure: this module only builds SQL text).

Every column is first turned into a canonical text that is the same on each side for equal values
and differs for different ones:

- integers, YEAR: decimal digits;
- DECIMAL(p,s): rounded to the source scale and printed with exactly ``s`` decimals, so ``1.5`` and
  ``1.50`` agree;
- FLOAT/DOUBLE: ``<17 significant digits>e<exponent>``, computed with the same IEEE operations on
  both sides (floor, log10, pow; the scaling in two steps so neither 1e-324 nor 1e308 leaves the
  double range), so the text doesn't depend on either side's float printing;
- DATE / DATETIME: ``YYYY-MM-DD[ HH:MM:SS.ffffff]`` (always six fractional digits); TIMESTAMP in UTC;
- TIME: seconds with six decimals (TIME spans -838..838 hours, an interval in PostgreSQL);
- text (any character set): the digest of its UTF-8 bytes; binary and blobs: the digest of the
  bytes (hashing first keeps a 16 MB value under MySQL's packet limit): SHA-256 between the
  source and staging (MySQL 9 has no MD5()), MD5 between the star schema and the warehouse;
- BIT(n): ``n`` binary digits; JSON: only NULL or not (MySQL and PostgreSQL print JSON differently,
  and neither can print it the other's way: a JSON-only difference is not seen, see docs/design/reconcile.md);
- NULL: ``N``; any other value is prefixed with its length, so no two rows run together alike.

A row's fingerprint is the digest of the concatenation; a segment's checksum is the count of its rows
and two sums of 60-bit slices of those fingerprints (order-independent, exact in both databases).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from transform.schema import Column


class Dialect(enum.Enum):
    MYSQL = "mysql"
    POSTGRES = "postgres"
    DB2 = "db2"

    @property
    def mark(self) -> str:
        return "?" if self is Dialect.DB2 else "%s"


class Kind(enum.Enum):
    INT = "int"
    DECIMAL = "decimal"
    FLOAT = "float"  # MySQL FLOAT: widened to DOUBLE exactly before anything else
    DOUBLE = "double"
    DATE = "date"
    DATETIME = "datetime"
    TIMESTAMP = "timestamp"
    TIME = "time"
    TEXT = "text"
    BINARY = "binary"
    BIT = "bit"
    JSON = "json"


@dataclass(frozen=True)
class Col:
    """A column as the fingerprint sees it."""

    name: str
    kind: Kind
    scale: int = 0  # DECIMAL scale
    width: int = 1  # BIT width

    @property
    def text_key(self) -> bool:
        """Keys of this kind are ordered by code point (binary collation) on both sides, so a
        segment holds the same keys on each (collations differ between databases)."""
        return self.kind is Kind.TEXT


_KINDS = {
    **dict.fromkeys(("tinyint", "smallint", "mediumint", "int", "integer", "bigint", "year"), Kind.INT),
    **dict.fromkeys(("decimal", "numeric"), Kind.DECIMAL),
    "float": Kind.FLOAT, "double": Kind.DOUBLE, "real": Kind.DOUBLE,
    "date": Kind.DATE, "datetime": Kind.DATETIME, "timestamp": Kind.TIMESTAMP, "time": Kind.TIME,
    **dict.fromkeys(("char", "varchar", "tinytext", "text", "mediumtext", "longtext", "enum", "set"), Kind.TEXT),
    **dict.fromkeys(("binary", "varbinary", "tinyblob", "blob", "mediumblob", "longblob", "geometry", "point",
                     "linestring", "polygon"), Kind.BINARY),
    "bit": Kind.BIT, "json": Kind.JSON,
}


def col_of(column: Column) -> Col:
    """The fingerprint view of a source column."""
    try:
        kind = _KINDS[column.data_type.lower()]
    except KeyError:
        raise ValueError(f"column {column.name!r}: type {column.column_type!r} can't be fingerprinted") from None
    return Col(column.name, kind, scale=column.scale or 0, width=column.precision or 1)


def quote(name: str, dialect: Dialect) -> str:
    if dialect is Dialect.MYSQL:
        return "`" + name.replace("`", "``") + "`"
    if dialect is Dialect.DB2:
        name = name.upper()
    return '"' + name.replace('"', '""') + '"'


def canonical(col: Col, dialect: Dialect, digest: str = "md5") -> str:
    """SQL for ``col``'s canonical text (NULL when the value is NULL); text and binary values are
    their ``digest`` (both sides of a comparison use the same: :data:`SHA256`, :data:`MD5`)."""
    c = quote(col.name, dialect)
    return {Dialect.MYSQL: _mysql_canonical, Dialect.POSTGRES: _pg_canonical}.get(dialect, _db2_canonical)(
        col, c, digest)


def _mysql_canonical(col: Col, c: str, digest: str) -> str:
    k = col.kind
    if k is Kind.INT:
        return f"CAST({c} AS CHAR)"
    if k is Kind.DECIMAL:
        return f"CAST(CAST({c} AS DECIMAL(65,{col.scale})) AS CHAR)"
    if k in (Kind.FLOAT, Kind.DOUBLE):
        v = f"({c} + 0E0)" if k is Kind.FLOAT else c
        e = f"FLOOR(LOG10(ABS({v})))"
        a = f"FLOOR((16 - {e}) / 2)"
        scaled = f"FLOOR({v} * POW(10, {a}) * POW(10, 16 - {e} - {a}))"
        return f"IF({v} = 0, '0', CONCAT(CAST({scaled} AS SIGNED), 'e', {e}))"
    if k is Kind.DATE:
        return f"DATE_FORMAT({c}, '%%Y-%%m-%%d')"
    if k in (Kind.DATETIME, Kind.TIMESTAMP):  # the session's time zone is UTC
        return f"DATE_FORMAT({c}, '%%Y-%%m-%%d %%H:%%i:%%s.%%f')"
    if k is Kind.TIME:
        # not TIME_TO_SEC: MySQL's drops the fraction, MariaDB's keeps it
        seconds = f"(HOUR({c}) * 3600 + MINUTE({c}) * 60 + SECOND({c}) + MICROSECOND({c}) / 1000000)"
        return f"CAST(CAST(IF({c} < 0, -{seconds}, {seconds}) AS DECIMAL(20,6)) AS CHAR)"
    if k in (Kind.TEXT, Kind.BINARY):
        value = f"CONVERT({c} USING utf8mb4)" if k is Kind.TEXT else c
        return f"SHA2({value}, 256)" if digest == "sha256" else f"MD5({value})"
    if k is Kind.BIT:
        return f"LPAD(BIN({c}), {col.width}, '0')"
    return f"IF({c} IS NULL, NULL, 'J')"


def _pg_canonical(col: Col, c: str, digest: str) -> str:
    k = col.kind
    if k is Kind.INT:
        return f"{c}::text"
    if k is Kind.DECIMAL:
        return f"round({c}, {col.scale})::text"
    if k in (Kind.FLOAT, Kind.DOUBLE):
        v = f"{c}::float8"
        e = f"floor(log(abs({v})))"
        a = f"floor((16 - {e}) / 2)"
        scaled = f"floor({v} * 10::float8 ^ {a} * 10::float8 ^ (16 - {e} - {a}))"
        return f"CASE WHEN {v} = 0 THEN '0' ELSE {scaled}::bigint::text || 'e' || {e}::bigint::text END"
    if k is Kind.DATE:
        return f"to_char({c}, 'YYYY-MM-DD')"
    if k is Kind.DATETIME:
        return f"to_char({c}, 'YYYY-MM-DD HH24:MI:SS.US')"
    if k is Kind.TIMESTAMP:
        return f"to_char({c} AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')"
    if k is Kind.TIME:
        return f"extract(epoch FROM {c})::numeric(20,6)::text"
    if k in (Kind.TEXT, Kind.BINARY):
        if digest == "sha256":
            value = c if k is Kind.BINARY else f"convert_to({c}, 'UTF8')"
            return f"encode(sha256({value}), 'hex')"
        return f"md5({c})"
    if k is Kind.BIT:
        return f"lpad({c}::text, {col.width}, '0')"
    return f"CASE WHEN {c} IS NULL THEN NULL ELSE 'J' END"


def db2_decimal_text(c: str, scale: int) -> str:
    """Db2 SQL for a DECIMAL's text as PostgreSQL's ``round(x, scale)::text`` prints it. Not
    VARCHAR(DECIMAL(...)): since Db2 9.7 that drops the leading zero (0.20 is '.20', IBM's own
    example) and, at scale 0, the decimal point. DIGITS gives the 31 digits with leading zeros and
    no sign or point (documented for every Db2 since 9.7); the integer part loses its leading
    zeros but one, the fraction keeps ``scale`` digits."""
    digits = f"DIGITS(DECIMAL({c}, 31, {scale}))"
    whole = f"COALESCE(NULLIF(TRIM(LEADING '0' FROM SUBSTR({digits}, 1, {31 - scale})), ''), '0')"
    fraction = f" || '.' || SUBSTR({digits}, {32 - scale}, {scale})" if scale else ""
    return f"(CASE WHEN {c} < 0 THEN '-' ELSE '' END || {whole}{fraction})"


def _db2_canonical(col: Col, c: str, digest: str) -> str:
    """DB2: only what the warehouse tables hold (integers, decimals, dates, short text)."""
    k = col.kind
    if k is Kind.INT:
        return f"TRIM(CHAR({c}))"
    if k is Kind.DECIMAL:
        return db2_decimal_text(c, col.scale)
    if k is Kind.DATE:
        return f"CHAR({c}, ISO)"
    if k is Kind.TEXT:
        return f"LOWER(HEX(HASH(CAST({c} AS VARCHAR(4000)), {2 if digest == 'sha256' else 0})))"
    raise ValueError(f"column {col.name!r}: {k.value} is not supported on DB2")


def _part(col: Col, dialect: Dialect, digest: str = "md5") -> str:
    t = canonical(col, dialect, digest)
    if dialect is Dialect.MYSQL:
        return f"IFNULL(CONCAT(CHAR_LENGTH({t}), ':', {t}), 'N')"
    if dialect is Dialect.POSTGRES:
        return f"COALESCE(length({t}) || ':' || {t}, 'N')"
    return f"COALESCE(TRIM(CHAR(LENGTH({t}))) || ':' || {t}, 'N')"


#: the digest a comparison's two sides compute: SHA-256 between the source and staging (MySQL
#: 9 has no MD5(); MariaDB and MySQL have SHA2() since 5.5, PostgreSQL sha256() since 11), MD5
#: between the star schema and the warehouse (Db2's HASH(..., 0))
SHA256, MD5 = "sha256", "md5"


def row_hash(cols: Sequence[Col], dialect: Dialect, digest: str = MD5) -> str:
    """SQL for the row's fingerprint: lower-case hex digits (32 of MD5, 64 of SHA-256)."""
    if digest not in (MD5, SHA256):
        raise ValueError(f"unknown digest {digest!r}")
    if dialect is Dialect.MYSQL:
        text = f"CONCAT({', '.join(_part(c, dialect, digest) for c in cols)})"
        return f"SHA2({text}, 256)" if digest == SHA256 else f"MD5({text})"
    if dialect is Dialect.POSTGRES:
        text = " || ".join(_part(c, dialect, digest) for c in cols)
        return f"encode(sha256(convert_to({text}, 'UTF8')), 'hex')" if digest == SHA256 else f"md5({text})"
    parts = " || ".join(_part(c, dialect, digest) for c in cols)
    return f"LOWER(HEX(HASH({parts}, {2 if digest == SHA256 else 0})))"


def _slice_value(h: str, start: int, dialect: Dialect) -> str:
    """The integer value of 15 hex digits (60 bits) of fingerprint ``h`` from ``start`` (1-based)."""
    if dialect is Dialect.MYSQL:
        return f"CAST(CONV(SUBSTRING({h}, {start}, 15), 16, 10) AS UNSIGNED)"
    if dialect is Dialect.POSTGRES:
        return f"('x' || substr({h}, {start}, 15))::bit(60)::bigint"
    digits = " + ".join(f"(LOCATE(SUBSTR({h}, {start + i}, 1), '0123456789abcdef') - 1)"
                        f" * DECIMAL({16 ** (14 - i)}, 31, 0)" for i in range(15))
    return f"({digits})"


def key_expr(col: Col, dialect: Dialect, alias: str = "") -> str:
    c = (alias + "." if alias else "") + quote(col.name, dialect)
    if not col.text_key:
        return c
    if dialect is Dialect.MYSQL:
        # The UTF-8 bytes, as PostgreSQL's "C" orders them: a _bin collation is PAD SPACE on
        # MariaDB and MySQL 5.7 ('a\t' < 'a'), and NO PAD ones tie otherwise (0900_ai_ci).
        return f"CAST(CONVERT({c} USING utf8mb4) AS BINARY)"
    if dialect is Dialect.POSTGRES:
        return f'({c} COLLATE "C")'
    return c


def _param(col: Col, dialect: Dialect) -> str:
    if col.text_key and dialect is Dialect.MYSQL:
        return "CAST(CONVERT(%s USING utf8mb4) AS BINARY)"
    return dialect.mark


Bound = tuple[Any, ...] | None  # a key tuple; None is open (minus or plus infinity)


def _compare(keys: Sequence[Col], op: str, dialect: Dialect) -> str:
    """``key <op> (params)`` in key order, expanded so every database (and its index) takes it."""
    exprs = [key_expr(k, dialect) for k in keys]
    params = [_param(k, dialect) for k in keys]
    if len(keys) == 1:
        return f"{exprs[0]} {op} {params[0]}"
    if dialect is not Dialect.DB2:
        return f"({', '.join(exprs)}) {op} ({', '.join(params)})"
    strict = op.rstrip("=")
    terms = []
    for i in range(len(keys)):
        eq = [f"{exprs[j]} = {params[j]}" for j in range(i)]
        last = op if i == len(keys) - 1 else strict
        terms.append("(" + " AND ".join([*eq, f"{exprs[i]} {last} {params[i]}"]) + ")")
    return "(" + " OR ".join(terms) + ")"


def _params_for(keys: Sequence[Col], bound: tuple[Any, ...], dialect: Dialect) -> list[Any]:
    if len(keys) == 1 or dialect is not Dialect.DB2:
        return list(bound)
    out: list[Any] = []
    for i in range(len(keys)):
        out += list(bound[: i + 1])
    return out


def range_where(keys: Sequence[Col], lo: Bound, hi: Bound, dialect: Dialect) -> tuple[str, list[Any]]:
    """WHERE text and parameters for lo <= key < hi."""
    terms, params = [], []
    if lo is not None:
        terms.append(_compare(keys, ">=", dialect))
        params += _params_for(keys, lo, dialect)
    if hi is not None:
        terms.append(_compare(keys, "<", dialect))
        params += _params_for(keys, hi, dialect)
    return (" AND ".join(terms) or "1 = 1"), params


@dataclass(frozen=True)
class TableSpec:
    """One table on one side: where it is and how to fingerprint it."""

    relation: str  # quoted (schema.)name
    keys: tuple[Col, ...]
    cols: tuple[Col, ...]  # all columns, keys included
    dialect: Dialect
    digest: str = MD5  # both sides of a comparison use the same

    def summary_sql(self, lo: Bound, hi: Bound) -> tuple[str, list[Any]]:
        """count, sum of slice 1, sum of slice 2 of the fingerprints in [lo, hi)."""
        d = self.dialect
        where, params = range_where(self.keys, lo, hi, d)
        h = "h"
        inner = f"SELECT {row_hash(self.cols, d, self.digest)} AS h FROM {self.relation} WHERE {where}"
        return (f"SELECT COUNT(*), COALESCE(SUM({_slice_value(h, 1, d)}), 0),"
                f" COALESCE(SUM({_slice_value(h, 16, d)}), 0) FROM ({inner}) x"), params

    def rows_sql(self, lo: Bound, hi: Bound) -> tuple[str, list[Any]]:
        """key values, canonical key texts and fingerprint of every row in [lo, hi)."""
        where, params = range_where(self.keys, lo, hi, self.dialect)
        return f"SELECT {self._key_select()} FROM {self.relation} WHERE {where}", params

    def rows_by_key_sql(self, count: int) -> str:
        """The same for ``count`` given keys (parameters: the key values, key after key)."""
        d = self.dialect
        one = "(" + " AND ".join(f"{quote(k.name, d)} = {d.mark}" for k in self.keys) + ")"
        return f"SELECT {self._key_select()} FROM {self.relation} WHERE " + " OR ".join([one] * count)

    def _key_select(self) -> str:
        d = self.dialect
        return ", ".join([*(quote(k.name, d) for k in self.keys),
                          *(f"COALESCE({canonical(k, d, self.digest)}, 'N')" for k in self.keys),
                          row_hash(self.cols, d, self.digest)])

    def split_sql(self, lo: Bound, hi: Bound, every: int) -> tuple[str, list[Any]]:
        """Keys at every ``every``-th row of [lo, hi) in key order: boundaries for sub-segments."""
        d = self.dialect
        where, params = range_where(self.keys, lo, hi, d)
        names = ", ".join(quote(k.name, d) for k in self.keys)
        order = ", ".join(key_expr(k, d) for k in self.keys)
        inner = (f"SELECT {names}, ROW_NUMBER() OVER (ORDER BY {order}) AS rn FROM {self.relation} WHERE {where}")
        return f"SELECT {names} FROM ({inner}) x WHERE MOD(rn, {int(every)}) = 0 ORDER BY rn", params
