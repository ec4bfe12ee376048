"""SELECTs that make the source print its rows as PostgreSQL COPY text (pure).

The snapshot's fast reader runs the ``mariadb`` client (C) in batch mode and pipes its output into
``COPY ... FROM STDIN`` untouched: every value is rendered by the source in SQL, in the text form
PostgreSQL reads for the staging column (escaped for COPY, ``\\N`` for NULL). Each line starts
with ``G`` (a row staging can hold) or ``B`` (a value it can't: a zero or invalid date, a NUL in
text), so the caller COPYs the first and dead-letters the second, from the same snapshot.

Only tables of these types are read this way (others keep the client-library reader):
integers, decimals, text in utf8/utf8mb4/latin1/ascii, blobs and varbinary, date, datetime,
timestamp (the session time zone must be UTC).
"""

from __future__ import annotations

from transform.fingerprint import Dialect, quote
from transform.schema import Column, Table

INTEGER_TYPES = {"tinyint", "smallint", "mediumint", "int", "integer", "bigint"}
_TEXT = {"char", "varchar", "tinytext", "text", "mediumtext", "longtext"}
_BYTES = {"tinyblob", "blob", "mediumblob", "longblob", "varbinary"}
_DATES = {"date", "datetime", "timestamp"}
_CHARSETS = {"utf8mb4", "utf8mb3", "utf8", "latin1", "ascii"}


def _escaped(expr: str) -> str:
    """COPY text escaping of a string value: backslash first, then the separators."""
    for raw, esc in (("\\\\", "\\\\\\\\"), ("\\t", "\\\\t"), ("\\n", "\\\\n"), ("\\r", "\\\\r")):
        expr = f"REPLACE({expr}, '{raw}', '{esc}')"
    return expr


def _value(col: Column) -> tuple[str, str | None] | None:
    """(SQL printing the COPY text of a non-NULL value, SQL that is true when the value can't be
    held) for one column, or None when the column's type is not read this way."""
    c = quote(col.name, Dialect.MYSQL)
    t = col.data_type.lower()
    if t in INTEGER_TYPES or t in ("decimal", "numeric"):
        return c, None
    if t in _TEXT:
        if (col.charset or "").lower() not in _CHARSETS:
            return None
        return _escaped(c), f"LOCATE(X'00', CAST({c} AS BINARY)) > 0"
    if t in _BYTES:
        return f"CONCAT('\\\\\\\\x', HEX({c}))", None
    if t in _DATES:
        bad = f"(YEAR({c}) = 0 OR MONTH({c}) = 0 OR DAYOFMONTH({c}) = 0)"
        if t == "timestamp":
            return f"CONCAT({c}, '+00')", bad
        return f"CAST({c} AS CHAR)", bad
    return None


def copy_text_select(table: Table) -> str | None:
    """The SELECT printing ``G|B <tab> value <tab> ...`` per row, or None when a column's type
    isn't read this way."""
    values: list[str] = []
    bad: list[str] = []
    for col in table.columns:
        v = _value(col)
        if v is None:
            return None
        expr, refuse = v
        values.append(f"IFNULL({expr}, '\\\\N')")
        if refuse is not None:
            bad.append(f"IFNULL({refuse}, FALSE)")
    flag = f"IF({' OR '.join(bad)}, 'B', 'G')" if bad else "'G'"
    return f"SELECT {flag}, {', '.join(values)} FROM {quote(table.name, Dialect.MYSQL)}"


def unescape(field: str) -> str | None:
    """A COPY text field back to its value (None for ``\\N``): for the rows dead-lettered."""
    if field == "\\N":
        return None
    out = []
    i = 0
    while i < len(field):
        ch = field[i]
        if ch == "\\" and i + 1 < len(field):
            nxt = field[i + 1]
            out.append({"t": "\t", "n": "\n", "r": "\r", "\\": "\\"}.get(nxt, nxt))
            i += 2
            continue
        out.append(ch)
        i += 1
    return "".join(out)


def refusal(table: Table, values: list[str | None]) -> str:
    """Why staging can't hold this row (values unescaped, in column order), in the words of
    :mod:`transform.values`."""
    for col, v in zip(table.columns, values, strict=True):
        if v is None:
            continue
        t = col.data_type.lower()
        if t in _TEXT and "\x00" in v:
            return f"column {col.name!r}: text contains a NUL character"
        if t in _DATES and (v.startswith("0000") or "-00" in v[:10]):
            shown = v.removesuffix("+00")  # as the server prints it
            return f"column {col.name!r}: MySQL zero or invalid date {shown!r} has no PostgreSQL form"
    return "a value staging can't hold"
