"""Row images of a binlog rows event -> staging rows, by a decoder compiled once per table map (pure).

mysql-replication decodes a row column by column through a chain of generic calls and hands back
a dict that :class:`transform.values.RowConverter` then turns into staging's form: about 11,000
row changes/s on one core here. For a table whose columns are all of the common types (integers,
floats, decimals, text, blobs, dates, datetimes, timestamps) we instead generate, once per table
map, one Python function that walks a row image with ``struct`` at fixed offsets and yields the
staging tuple directly: the same values as the library path followed by ``RowConverter`` (a
differential test on real binlogs holds them equal). A table with any other type (ENUM, SET,
JSON, BIT, YEAR, TIME, BINARY, GEOMETRY), or a row image that is not full, keeps the library path:
:func:`compile_decoder` returns None.

The walk is planned once per table map (:func:`decoder_plan`: each column's kind, widths, name
and codec) and done by one of two decoders of that plan: ``transform._rowcodec``, in C, built at
install where a C compiler is (about ten times the rows per second of the other), or else a
generated Python function. Tests run every case through both and hold them equal on arbitrary
row images; text goes through Python's codecs and decimals through ``Decimal`` in both.

A value staging can't hold (a zero date, a NUL in text, bytes invalid in the column's charset)
does not stop the walk: the row is decoded to its end, returned with the first reason, and the
caller dead-letters it.
"""

from __future__ import annotations

import datetime as dt
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from transform.schema import Table

try:
    from transform import _rowcodec as _native
except ImportError:  # not built where it was installed (no C compiler): the generated Python decoder
    _native = None  # type: ignore[assignment]

#: Whether the compiled decoder was built: compile_decoder's default.
NATIVE = _native is not None

# MySQL's binlog field type codes (include/field_types.h).
TINY, SHORT, LONG, FLOAT, DOUBLE, TIMESTAMP, LONGLONG, INT24, DATE = 1, 2, 3, 4, 5, 7, 8, 9, 10
VARCHAR, TIMESTAMP2, DATETIME2, NEWDECIMAL, BLOB, VAR_STRING, STRING = 15, 17, 18, 246, 252, 253, 254

_INT_BYTES = {TINY: 1, SHORT: 2, LONG: 4, LONGLONG: 8}
_INT_DATA_TYPES = {TINY: {"tinyint"}, SHORT: {"smallint"}, INT24: {"mediumint"}, LONG: {"int", "integer"},
                   LONGLONG: {"bigint"}}
_TEXT = {"char", "varchar", "tinytext", "text", "mediumtext", "longtext"}
_BLOBS = {"tinyblob", "blob", "mediumblob", "longblob"}
_TEXT_BLOB = {"tinytext", "text", "mediumtext", "longtext"}

_UTC = dt.UTC
_EPOCH_UTC = dt.datetime(1970, 1, 1, tzinfo=_UTC)
_ONE_SECOND = dt.timedelta(seconds=1)
_DIG2BYTES = (0, 1, 1, 2, 2, 3, 3, 4, 4, 4)


@dataclass(frozen=True)
class BinlogColumn:
    """What a table map event says about one column (the source turns the library's into these)."""

    type: int
    unsigned: bool = False
    max_length: int = 0  # VARCHAR / STRING: bytes
    length_size: int = 0  # BLOB: bytes of the length prefix
    precision: int = 0  # NEWDECIMAL
    decimals: int = 0  # NEWDECIMAL
    fsp: int = 0  # TIMESTAMP2 / DATETIME2
    encoding: str = "utf-8"  # Python codec of the column's charset; "" when Python has none


#: decode(body) -> list of (row or None, reason or None); an update's images come in pairs.
RowsDecoder = Callable[[bytes], list[tuple[tuple[Any, ...], str | None]]]


class _Bad(ValueError):
    pass


def _zero_date(name: str, shown: str) -> _Bad:
    return _Bad(f"column {name!r}: MySQL zero or invalid date {shown!r} has no PostgreSQL form")


def _text_decoder(name: str, encoding: str) -> Callable[[bytes], str]:
    def text(raw: bytes) -> str:
        try:
            s = raw.decode(encoding)
        except UnicodeDecodeError as exc:
            raise _Bad(f"column {name!r}: {exc}") from None
        if "\x00" in s:
            raise _Bad(f"column {name!r}: text contains a NUL character")
        return s

    return text


def _decimal_reader(precision: int, scale: int) -> tuple[Callable[[bytes, int], Decimal], int]:
    """MySQL's binary DECIMAL(precision, scale): a reader and the value's width in bytes. Builds
    the same digit string as mysql-replication, so the Decimal (and its exponent) is the same."""
    integral = precision - scale
    whole_int, lead = divmod(integral, 9)
    whole_frac, trail = divmod(scale, 9)
    lead_size, trail_size = _DIG2BYTES[lead], _DIG2BYTES[trail]
    width = lead_size + 4 * whole_int + 4 * whole_frac + trail_size

    def read(b: bytes, p: int) -> Decimal:
        raw = bytearray(b[p:p + width])
        negative = not raw[0] & 0x80
        raw[0] ^= 0x80
        mask = -1 if negative else 0
        parts = ["-" if negative else ""]
        q = 0
        if lead_size:
            parts.append(str(int.from_bytes(raw[q:q + lead_size], "big", signed=True) ^ mask))
            q += lead_size
        for _ in range(whole_int):
            parts.append(f"{int.from_bytes(raw[q:q + 4], 'big', signed=True) ^ mask:09d}")
            q += 4
        parts.append(".")
        for _ in range(whole_frac):
            parts.append(f"{int.from_bytes(raw[q:q + 4], 'big', signed=True) ^ mask:09d}")
            q += 4
        if trail_size:
            parts.append(f"{int.from_bytes(raw[q:q + trail_size], 'big', signed=True) ^ mask:0{trail}d}")
        return Decimal("".join(parts))

    return read, width


def _fraction(fsp: int) -> tuple[int, int, int]:
    """(bytes, divisor, multiplier) of a temporal value's fractional part."""
    size = (fsp + 1) // 2
    return size, (10 if fsp % 2 else 1), 10 ** (6 - fsp)


def _datetime2_reader(name: str, fsp: int) -> tuple[Callable[[bytes, int], dt.datetime], int]:
    fsize, div, mul = _fraction(fsp)

    def read(b: bytes, p: int) -> dt.datetime:
        packed = int.from_bytes(b[p:p + 5], "big")
        ym = (packed >> 22) & 0x1FFFF
        micro = int.from_bytes(b[p + 5:p + 5 + fsize], "big") // div * mul if fsize else 0
        try:
            return dt.datetime(ym // 13, ym % 13, (packed >> 17) & 31, (packed >> 12) & 31, (packed >> 6) & 63,
                               packed & 63, micro)
        except ValueError:
            raise _zero_date(name, "0000-00-00") from None

    return read, 5 + fsize


def _timestamp2_reader(name: str, fsp: int) -> tuple[Callable[[bytes, int], dt.datetime], int]:
    fsize, div, mul = _fraction(fsp)

    def read(b: bytes, p: int) -> dt.datetime:
        seconds = int.from_bytes(b[p:p + 4], "big")
        micro = int.from_bytes(b[p + 4:p + 4 + fsize], "big") // div * mul if fsize else 0
        if seconds == 0 and micro == 0:
            # TIMESTAMP 0 is MySQL's zero timestamp; its real range starts one second later.
            raise _zero_date(name, "0000-00-00 00:00:00")
        return _EPOCH_UTC + dt.timedelta(seconds=seconds, microseconds=micro)

    return read, 4 + fsize


def _date_reader(name: str) -> Callable[[bytes, int], dt.date]:
    def read(b: bytes, p: int) -> dt.date:
        v = b[p] | b[p + 1] << 8 | b[p + 2] << 16
        try:
            return dt.date(v >> 9, (v >> 5) & 15, v & 31)
        except ValueError:
            raise _zero_date(name, "0000-00-00") from None

    return read


#: A column's step in a decoder's plan: (kind, a, b, column name, Python codec). The kinds, and
#: what a and b are: K_INT (bytes, signed), K_FLOAT (bytes), K_DECIMAL (precision, scale), K_TEXT
#: and K_BYTES (bytes of the length prefix), K_DATE, K_DATETIME2 and K_TIMESTAMP2 (fsp).
Step = tuple[int, int, int, str, str]
K_INT, K_FLOAT, K_DECIMAL, K_TEXT, K_BYTES, K_DATE, K_DATETIME2, K_TIMESTAMP2 = range(1, 9)


#: Binlog type codes by the kind of value they decode to, and the data types of each kind: a
#: table map whose column is of another kind than the followed definition's was written under
#: another definition. Types missing here (JSON, spatial, MariaDB's UUID/INET6) make no claim.
_KINDS: dict[str, tuple[frozenset[int], frozenset[str]]] = {
    "an integer": (frozenset({TINY, SHORT, LONG, LONGLONG, INT24}),
                   frozenset({"tinyint", "smallint", "mediumint", "int", "integer", "bigint"})),
    "a decimal": (frozenset({0, NEWDECIMAL}), frozenset({"decimal", "numeric"})),
    "a floating-point number": (frozenset({FLOAT, DOUBLE}), frozenset({"float", "double", "real"})),
    "text or bytes": (frozenset({VARCHAR, VAR_STRING, STRING, 249, 250, 251, BLOB}),
                      frozenset({"char", "varchar", "binary", "varbinary", "enum", "set", *_TEXT, *_BLOBS})),
    "a date": (frozenset({DATE, 14}), frozenset({"date"})),
    "a DATETIME": (frozenset({12, DATETIME2}), frozenset({"datetime"})),
    "a TIMESTAMP": (frozenset({TIMESTAMP, TIMESTAMP2}), frozenset({"timestamp"})),
    "a TIME": (frozenset({11, 19}), frozenset({"time"})),
    "a YEAR": (frozenset({13}), frozenset({"year"})),
    "a BIT": (frozenset({16}), frozenset({"bit"})),
}


def _kind_of_code(code: int) -> str | None:
    return next((k for k, (codes, _) in _KINDS.items() if code in codes), None)


def _kind_of_type(data_type: str) -> str | None:
    return next((k for k, (_, types) in _KINDS.items() if data_type in types), None)


def written_under_another_type(table: Table, columns: Sequence[tuple[str | None, int]]) -> str | None:
    """Why rows with this table map (``columns``: each column's name, None where the binlog has no
    names, and binlog type code) were not written under ``table``'s definition, or None: a
    column of another kind (an INT in the binlog, text in the definition). After a lag across
    several ALTERs the definition read at the first is the source's current one; decoding older
    rows by it would turn integers into text (or fail). Columns are matched by name where the
    map has names, else by place (when the counts agree)."""
    if all(name is not None for name, _ in columns):
        held = {c.name: c for c in table.columns}
        pairs = [(held[name], code) for name, code in columns if name in held]
    elif len(columns) == len(table.columns):
        pairs = [(col, code) for col, (_, code) in zip(table.columns, columns, strict=True)]
    else:
        return None
    for col, code in pairs:
        written, followed = _kind_of_code(code), _kind_of_type(col.data_type)
        if written is not None and followed is not None and written != followed:
            return (f"rows of {table.name} were written when column {col.name} held {written}; the definition"
                    f" followed (read from the source after a later change) has {col.column_type}: they can't be"
                    " decoded by it")
    return None


def step_error(step: Step) -> str | None:
    """Why a plan's step is out of the ranges the decoders handle (a table map's metadata is the
    server's, read from the wire: a DECIMAL of precision 144 overflowed the compiled decoder's
    buffers), or None. Both decoders refuse such a plan; :func:`decoder_plan` leaves it to the
    library."""
    kind, a, b, _, _ = step
    ok = {K_INT: a in (1, 2, 3, 4, 8) and b in (0, 1),
          K_FLOAT: a in (4, 8) and b == 0,
          K_DECIMAL: 1 <= a <= 65 and 0 <= b <= min(a, 30),  # MySQL's and MariaDB's limits
          K_TEXT: 1 <= a <= 4, K_BYTES: 1 <= a <= 4}.get(kind, 0 <= a <= 6)  # dates: the fraction's digits
    if not K_INT <= kind <= K_TIMESTAMP2:
        return f"unknown kind {kind}"
    return None if ok else f"kind {kind} with ({a}, {b}) is out of range"


def compile_decoder(table: Table, columns: list[BinlogColumn], native: bool | None = None) -> RowsDecoder | None:
    """A decoder for the row images of one table map, or None when the library must decode them
    (a type not handled here, or a table map that doesn't match the followed definition).
    ``native``: the compiled decoder (``transform._rowcodec``, C) or the generated Python one;
    by default the compiled one where it was built (:data:`NATIVE`)."""
    plan = decoder_plan(table, columns)
    if plan is None:
        return None
    if native is None:
        native = NATIVE
    if native:
        if _native is None:
            raise RuntimeError("transform._rowcodec was not built (a C compiler and Python's headers are needed)")
        decoder: RowsDecoder = _native.Decoder(plan)
        return decoder
    return _python_decoder(table.name, plan)


def decoder_plan(table: Table, columns: list[BinlogColumn]) -> list[Step] | None:
    """Each column's step, or None when one of them is not handled here."""
    if len(columns) != len(table.columns):
        return None
    plan = []
    for col, bc in zip(table.columns, columns, strict=True):
        step = _column_step(col.name, col.data_type.lower(), col.unsigned, bc)
        if step is None or step_error(step) is not None:
            return None
        plan.append(step)
    return plan


def _python_decoder(name: str, plan: list[Step]) -> RowsDecoder:
    """The plan as one generated Python function per table map."""
    if not plan:
        raise ValueError("a plan has at least one column")
    for step in plan:
        if (why := step_error(step)) is not None:
            raise ValueError(f"column {step[3]!r}: {why}")
    env: dict[str, Any] = {"_Bad": _Bad}
    lines: list[str] = []
    for i, step in enumerate(plan):
        code = _python_code(i, step, env)
        lines.append(f"    if nulls >> {i} & 1:\n        v{i} = None\n    else:\n"
                     + "".join(f"        {s}\n" for s in code))
    n = len(plan)
    values = ", ".join(f"v{i}" for i in range(n)) + ("," if n == 1 else "")
    src = (f"def _row(b, p):\n    nulls = int.from_bytes(b[p:p + {(n + 7) // 8}], 'little')\n"
           f"    p += {(n + 7) // 8}\n    err = None\n" + "".join(lines)
           + f"    return ({values}), err, p\n")
    src += ("def decode(b):\n    out = []\n    p = 0\n    end = len(b)\n    while p < end:\n"
            "        row, err, p = _row(b, p)\n"
            "        if p > end:\n            raise ValueError('a row image runs past the end of the event')\n"
            "        out.append((row, err))\n    return out\n")
    exec(compile(src, f"<binlog decoder {name}>", "exec"), env)  # noqa: S102 - our own generated code
    decoder: RowsDecoder = env["decode"]  # an update's two images alternate: the caller pairs them
    return decoder


def _guarded(i: int, expr: str, advance: str) -> list[str]:
    """Statements that set v<i> from ``expr`` and move on, turning a refusal into the row's reason."""
    return ["try:", f"    v{i} = {expr}", "except _Bad as exc:", f"    v{i} = None",
            "    err = err or str(exc)", advance]


def _python_code(i: int, step: Step, env: dict[str, Any]) -> list[str]:
    kind, a, b, name, encoding = step
    if kind == K_INT:
        if a == 3:
            return [f"v{i} = int.from_bytes(b[p:p + 3], 'little', signed={bool(b)})", "p += 3"]
        fmt = {1: "b", 2: "h", 4: "i", 8: "q"}[a]
        env[f"_u{i}"] = struct.Struct("<" + (fmt if b else fmt.upper())).unpack_from
        return [f"v{i} = _u{i}(b, p)[0]", f"p += {a}"]
    if kind == K_FLOAT:
        env[f"_u{i}"] = struct.Struct("<f" if a == 4 else "<d").unpack_from
        return [f"v{i} = _u{i}(b, p)[0]", f"p += {a}"]
    if kind == K_DECIMAL:
        env[f"_r{i}"], width = _decimal_reader(a, b)
        return [f"v{i} = _r{i}(b, p)", f"p += {width}"]
    if kind in (K_TEXT, K_BYTES):
        length = ["n = b[p]", "p += 1"] if a == 1 else ["n = b[p] | b[p + 1] << 8", "p += 2"] if a == 2 else \
            [f"n = int.from_bytes(b[p:p + {a}], 'little')", f"p += {a}"]
        if kind == K_BYTES:
            return [*length, f"v{i} = bytes(b[p:p + n])", "p += n"]
        env[f"_t{i}"] = _text_decoder(name, encoding)
        return length + _guarded(i, f"_t{i}(b[p:p + n])", "p += n")
    if kind == K_DATE:
        env[f"_r{i}"] = _date_reader(name)
        return _guarded(i, f"_r{i}(b, p)", "p += 3")
    reader = _datetime2_reader if kind == K_DATETIME2 else _timestamp2_reader
    env[f"_r{i}"], width = reader(name, a)
    return _guarded(i, f"_r{i}(b, p)", f"p += {width}")


def _column_step(name: str, data_type: str, unsigned: bool, bc: BinlogColumn) -> Step | None:
    t = bc.type
    if t in _INT_DATA_TYPES:
        if data_type not in _INT_DATA_TYPES[t] or unsigned != bc.unsigned:
            return None
        return (K_INT, 3 if t == INT24 else _INT_BYTES[t], int(not unsigned), name, "")
    if t in (FLOAT, DOUBLE):
        if data_type != ("float" if t == FLOAT else "double"):
            return None
        return (K_FLOAT, 4 if t == FLOAT else 8, 0, name, "")
    if t == NEWDECIMAL:
        return (K_DECIMAL, bc.precision, bc.decimals, name, "") if data_type == "decimal" else None
    if t in (VARCHAR, STRING, VAR_STRING):
        if data_type not in ("char", "varchar") or not bc.encoding:
            return None
        return (K_TEXT, 2 if bc.max_length > 255 else 1, 0, name, bc.encoding)  # > 255: a 2-byte length
    if t == BLOB:
        if data_type not in _TEXT_BLOB | _BLOBS or not 1 <= bc.length_size <= 4:
            return None
        if data_type in _BLOBS:
            return (K_BYTES, bc.length_size, 0, name, "")
        return (K_TEXT, bc.length_size, 0, name, bc.encoding) if bc.encoding else None
    temporal = {DATE: ("date", K_DATE), DATETIME2: ("datetime", K_DATETIME2), TIMESTAMP2: ("timestamp", K_TIMESTAMP2)}
    if t in temporal and data_type == temporal[t][0]:
        return (temporal[t][1], bc.fsp, 0, name, "")
    return None
