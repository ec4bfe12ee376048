"""Source table definitions and their PostgreSQL staging form (pure)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Column:
    """One source column as INFORMATION_SCHEMA.COLUMNS describes it."""

    name: str
    data_type: str  # lower-case MySQL data type: int, varchar, decimal, ...
    column_type: str  # full MySQL type text: "int(10) unsigned", "enum('a','b')", ...
    nullable: bool = True
    precision: int | None = None  # numeric precision
    scale: int | None = None  # numeric scale
    fsp: int | None = None  # fractional seconds precision
    char_length: int | None = None  # character or byte length
    charset: str | None = None

    @property
    def unsigned(self) -> bool:
        return "unsigned" in self.column_type.lower()


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...]

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def key_indexes(self) -> tuple[int, ...]:
        names = self.column_names
        return tuple(names.index(k) for k in self.primary_key)

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)


_INT_TYPES = {
    # (signed, unsigned) PostgreSQL types wide enough for every value
    "tinyint": ("smallint", "smallint"),
    "smallint": ("smallint", "integer"),
    "mediumint": ("integer", "integer"),
    "int": ("integer", "bigint"),
    "integer": ("integer", "bigint"),
    "bigint": ("bigint", "numeric(20,0)"),
}

_SIMPLE_TYPES = {
    "float": "real",
    "double": "double precision",
    "real": "double precision",
    "date": "date",
    "year": "smallint",
    "char": "text",
    "varchar": "text",
    "tinytext": "text",
    "text": "text",
    "mediumtext": "text",
    "longtext": "text",
    "enum": "text",
    "set": "text",
    "json": "jsonb",
    "binary": "bytea",
    "varbinary": "bytea",
    "tinyblob": "bytea",
    "blob": "bytea",
    "mediumblob": "bytea",
    "longblob": "bytea",
    "geometry": "bytea",
    "point": "bytea",
    "linestring": "bytea",
    "polygon": "bytea",
}


class UnsupportedType(ValueError):
    """A source column type we have no staging form for."""


def pg_type(col: Column) -> str:
    """The PostgreSQL type that holds every value of ``col`` faithfully."""
    t = col.data_type.lower()
    if t in _INT_TYPES:
        signed, unsigned = _INT_TYPES[t]
        return unsigned if col.unsigned else signed
    if t in ("decimal", "numeric"):
        return f"numeric({col.precision or 10},{col.scale or 0})"
    if t == "datetime":
        return f"timestamp({col.fsp or 0})"
    if t == "timestamp":
        return f"timestamptz({col.fsp or 0})"
    if t == "time":
        # MySQL TIME spans -838:59:59 .. 838:59:59, which only an interval holds.
        return f"interval({col.fsp or 0})"
    if t == "bit":
        return f"bit varying({col.precision or 1})"
    if t in _SIMPLE_TYPES:
        return _SIMPLE_TYPES[t]
    raise UnsupportedType(f"column {col.name!r} has type {col.column_type!r}, which is not supported")
