"""What a source schema change means for staging (pure): the statements that make the staging
table follow, or the reason it can't follow safely.

Staging follows when nothing is lost: a column added (anywhere: staging matches columns by name),
dropped or renamed; a type widened (a larger integer, a DECIMAL with at least as many integer and
fraction digits, more fractional seconds, FLOAT to DOUBLE, a longer BIT); NOT NULL dropped. A
narrowing or incompatible type change, or a changed primary key, can't be followed row by row: the
table stops, and a resnapshot takes it again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from transform.fingerprint import Dialect, quote
from transform.schema import Column, Table, pg_type

_INT_RANK = {"smallint": 1, "integer": 2, "bigint": 3, "numeric(20,0)": 4}
_NUMERIC = re.compile(r"numeric\((\d+),(\d+)\)")
_SIZED = re.compile(r"(timestamp|timestamptz|interval|bit varying)\((\d+)\)")
_RENAMES = (
    re.compile(r"\bRENAME\s+COLUMN\s+`?([^`\s,]+)`?\s+TO\s+`?([^`\s,]+)`?", re.IGNORECASE),
    re.compile(r"\bCHANGE\s+(?:COLUMN\s+)?(?:IF\s+EXISTS\s+)?`?([^`\s,]+)`?\s+`?([^`\s,]+)`?", re.IGNORECASE),
)


@dataclass(frozen=True)
class SchemaPlan:
    statements: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)  # columns whose existing rows need their values
    stop: str | None = None  # why staging can't follow


def widens(old: str, new: str) -> bool:
    """Does PostgreSQL type ``new`` hold every value of ``old``?"""
    if old == new:
        return True
    if old in _INT_RANK and new in _INT_RANK:
        return _INT_RANK[new] >= _INT_RANK[old]
    if old in _INT_RANK and (m := _NUMERIC.fullmatch(new)):
        digits = {"smallint": 5, "integer": 10, "bigint": 19, "numeric(20,0)": 20}[old]
        return int(m[1]) - int(m[2]) >= digits
    mo, mn = _NUMERIC.fullmatch(old), _NUMERIC.fullmatch(new)
    if mo and mn:
        return int(mn[2]) >= int(mo[2]) and int(mn[1]) - int(mn[2]) >= int(mo[1]) - int(mo[2])
    so, sn = _SIZED.fullmatch(old), _SIZED.fullmatch(new)
    if so and sn and so[1] == sn[1]:
        return int(sn[2]) >= int(so[2])
    return (old, new) == ("real", "double precision")


def renames(statement: str) -> dict[str, str]:
    """Columns a statement renames, old -> new (RENAME COLUMN a TO b, CHANGE a b ...)."""
    out = {}
    for pattern in _RENAMES:
        for m in pattern.finditer(statement):
            if m[1] != m[2]:
                out[m[1]] = m[2]
    return out


def _names(statement: str, column: str) -> bool:
    """Does ``statement`` name ``column`` (as a word, quoted or not, any case)?"""
    return re.search(rf"(?<![\w$]){re.escape(column)}(?![\w$])", statement, re.IGNORECASE) is not None


def plan(schema: str, old: Table, new: Table, statement: str) -> SchemaPlan:
    """The staging statements that take ``old`` to ``new`` (``statement`` tells renames apart from a
    drop and an add)."""
    rel = f"{quote(schema, Dialect.POSTGRES)}.{quote(old.name, Dialect.POSTGRES)}"
    if old.primary_key != new.primary_key:
        moved = {renames(statement).get(k, k) for k in old.primary_key}
        if moved != set(new.primary_key) or len(old.primary_key) != len(new.primary_key):
            return SchemaPlan(stop=f"the primary key changed from ({', '.join(old.primary_key)}) to "
                                   f"({', '.join(new.primary_key)})")
    before = {c.name: c for c in old.columns}
    after = {c.name: c for c in new.columns}
    out: list[str] = []
    renamed = {o: n for o, n in renames(statement).items() if o in before and o not in after and n in after}
    for o, n in renamed.items():
        out.append(f"ALTER TABLE {rel} RENAME COLUMN {quote(o, Dialect.POSTGRES)} TO {quote(n, Dialect.POSTGRES)}")
    kept: dict[str, Column] = {renamed.get(name, name): col for name, col in before.items()
                               if name in after or name in renamed}
    for name in before:
        if name not in after and name not in renamed:
            out.append(f"ALTER TABLE {rel} DROP COLUMN {quote(name, Dialect.POSTGRES)}")
    added = []
    for name, col in after.items():
        q = quote(name, Dialect.POSTGRES)
        if name not in kept:
            out.append(f"ALTER TABLE {rel} ADD COLUMN {q} {pg_type(col)}")
            added.append(name)
            continue
        was, now = pg_type(kept[name]), pg_type(col)
        if was != now:
            if not widens(was, now):
                later = "" if _names(statement, name) else (
                    " (not by this statement, which doesn't name the column: the definition read here is the"
                    " source's current one, changed by a later statement not yet streamed)")
                return SchemaPlan(stop=f"column {name} changed from {kept[name].column_type} to {col.column_type},"
                                       f" which staging can't hold without losing or changing values{later}")
            out.append(f"ALTER TABLE {rel} ALTER COLUMN {q} TYPE {now}")
        if not kept[name].nullable and col.nullable:
            out.append(f"ALTER TABLE {rel} ALTER COLUMN {q} DROP NOT NULL")
    return SchemaPlan(out, added)
