"""What a statement in the binlog does to tables (pure): which tables it names as its targets, in
which database, and what kind of change it is.

The binlog carries statements next to row events: DDL (always as a statement), transaction control,
and DML from sessions that log in STATEMENT (or MIXED) format. A statement names tables with or
without a database; an unqualified name is in the event's default database (``USE``), which is
what scopes it, never the name alone. Comments, strings and quoted identifiers are read as MySQL
reads them, so ``/* sales_data */`` or a column called ``sales_data`` name no table.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

_TOKEN = re.compile(
    r"""(?P<ws>\s+)
      | (?P<comment>/\*(?!!).*?\*/|--(?:\s[^\n]*)?$|\#[^\n]*$)
      | (?P<exec>/\*!\d*|\*/)
      | (?P<quoted>`(?:[^`]|``)*`)
      | (?P<string>'(?:[^'\\]|\\.|'')*'|"(?:[^"\\]|\\.|"")*")
      | (?P<word>[A-Za-z0-9_$\u0080-\uffff]+)
      | (?P<punct>.)""",
    re.VERBOSE | re.DOTALL | re.MULTILINE)


@dataclass(frozen=True)
class Token:
    text: str  # as written; an identifier without its backticks
    quoted: bool = False
    word: bool = False

    def kw(self, *words: str) -> bool:
        return self.word and not self.quoted and self.text.upper() in words


def tokens(statement: str) -> list[Token]:
    """The statement's tokens; comments dropped, ``/*!50100 ... */`` read as its content (MySQL
    executes it), strings kept as one opaque token."""
    out: list[Token] = []
    for m in _TOKEN.finditer(statement):
        kind = m.lastgroup
        text = m.group()
        if kind in ("ws", "comment", "exec"):
            continue
        if kind == "quoted":
            out.append(Token(text[1:-1].replace("``", "`"), quoted=True, word=True))
        elif kind == "word":
            out.append(Token(text, word=True))
        elif kind == "string":
            out.append(Token("'"))
        else:
            out.append(Token(text))
    return out


@dataclass(frozen=True)
class TableName:
    database: str | None  # None: the statement's default database
    name: str


@dataclass(frozen=True)
class Statement:
    """``kind``: alter, truncate, drop, rename, create, replace (CREATE OR REPLACE), drop_database,
    dml (INSERT, REPLACE, UPDATE, DELETE, LOAD DATA as a statement); ``tables`` the tables it may
    change (for DML every table it names before its WHERE: a multi-table UPDATE or DELETE may write
    any of them), ``database`` the database a DROP DATABASE drops."""

    kind: str
    tables: tuple[TableName, ...] = ()
    database: str | None = None


def _name_at(toks: Sequence[Token], i: int) -> tuple[TableName, int] | None:
    """A (possibly qualified) name starting at token ``i``, and the index after it."""
    if i >= len(toks) or not toks[i].word:
        return None
    first = toks[i]
    if i + 2 < len(toks) and toks[i + 1].text == "." and toks[i + 2].word:
        return TableName(first.text, toks[i + 2].text), i + 3
    return TableName(None, first.text), i + 1


def _skip(toks: Sequence[Token], i: int, *words: str) -> int:
    while i < len(toks) and toks[i].kw(*words):
        i += 1
    return i


def _names_list(toks: Sequence[Token], i: int) -> list[TableName]:
    """name, name, ... (DROP TABLE, TRUNCATE)."""
    out: list[TableName] = []
    while (got := _name_at(toks, i)) is not None:
        name, i = got
        out.append(name)
        if i < len(toks) and toks[i].text == ",":
            i += 1
            continue
        break
    return out


def _alter(toks: Sequence[Token], i: int) -> Statement | None:
    got = _name_at(toks, i)
    if got is None:
        return None
    name, i = got
    depth = 0
    for j in range(i, len(toks)):
        t = toks[j]
        depth += (t.text == "(") - (t.text == ")")
        if depth == 0 and t.kw("RENAME") and (j == i or toks[j - 1].text == ","):
            k = j + 1
            if k < len(toks) and toks[k].kw("COLUMN", "INDEX", "KEY"):
                continue
            k = _skip(toks, k, "TO", "AS")
            target = _name_at(toks, k)
            if target is not None:
                return Statement("rename", (name, target[0]))
    return Statement("alter", (name,))


def _dml_targets(toks: Sequence[Token], i: int, stop: Iterable[str]) -> tuple[TableName, ...]:
    """Every name at depth 0 from ``i`` up to one of ``stop`` (conservative: aliases and joined
    tables count too; a false name only makes us look at a table that was not written)."""
    out: list[TableName] = []
    depth = 0
    stops = set(stop)
    while i < len(toks):
        t = toks[i]
        if t.text == "(":
            depth += 1
        elif t.text == ")":
            depth -= 1
        elif depth == 0 and t.kw(*stops):
            break
        elif depth == 0 and t.word and not (t.kw(*_NOT_NAMES)):
            got = _name_at(toks, i)
            assert got is not None
            out.append(got[0])
            i = got[1]
            continue
        i += 1
    return tuple(out)


_NOT_NAMES = ("LOW_PRIORITY", "QUICK", "IGNORE", "FROM", "USING", "JOIN", "INNER", "LEFT", "RIGHT", "OUTER",
              "CROSS", "STRAIGHT_JOIN", "NATURAL", "ON", "AS", "PARTITION")


def _dml(toks: Sequence[Token]) -> Statement | None:
    head = toks[0]
    if head.kw("INSERT", "REPLACE"):
        i = _skip(toks, 1, "LOW_PRIORITY", "DELAYED", "HIGH_PRIORITY", "IGNORE", "INTO")
        got = _name_at(toks, i)
        return Statement("dml", (got[0],)) if got else None
    if head.kw("UPDATE"):
        return Statement("dml", _dml_targets(toks, 1, ("SET",)))
    if head.kw("DELETE"):
        return Statement("dml", _dml_targets(toks, 1, ("WHERE", "ORDER", "LIMIT", "RETURNING")))
    if head.kw("LOAD"):
        for j, t in enumerate(toks):
            if t.kw("INTO") and j + 1 < len(toks) and toks[j + 1].kw("TABLE"):
                got = _name_at(toks, j + 2)
                return Statement("dml", (got[0],)) if got else None
    return None


def classify(statement: str) -> Statement | None:
    """What ``statement`` does to tables, or None when it changes no table's rows or definition
    (transaction control, GRANT, CREATE INDEX ..., temporary tables)."""
    toks = tokens(statement)
    if not toks:
        return None
    head = toks[0]
    if head.kw("ALTER"):
        i = _skip(toks, 1, "ONLINE", "OFFLINE", "IGNORE")
        if i < len(toks) and toks[i].kw("TABLE"):
            return _alter(toks, _skip(toks, i + 1, "IF", "EXISTS"))
        return None
    if head.kw("TRUNCATE"):
        names = _names_list(toks, _skip(toks, 1, "TABLE"))
        return Statement("truncate", tuple(names)) if names else None
    if head.kw("DROP"):
        i = 1
        if i < len(toks) and toks[i].kw("DATABASE", "SCHEMA"):
            got = _name_at(toks, _skip(toks, i + 1, "IF", "EXISTS"))
            return Statement("drop_database", database=got[0].name) if got else None
        if i < len(toks) and toks[i].kw("TEMPORARY"):
            return None
        if i < len(toks) and toks[i].kw("TABLE", "TABLES"):
            names = _names_list(toks, _skip(toks, i + 1, "IF", "EXISTS"))
            return Statement("drop", tuple(names)) if names else None
        return None
    if head.kw("RENAME"):
        if len(toks) < 2 or not toks[1].kw("TABLE", "TABLES"):
            return None
        renamed: list[TableName] = []
        i = 2
        while (got := _name_at(toks, i)) is not None:
            renamed.append(got[0])
            i = _skip(toks, got[1], "TO", "WAIT", "NOWAIT")
            if i < len(toks) and toks[i].text == ",":
                i += 1
        return Statement("rename", tuple(renamed)) if renamed else None
    if head.kw("CREATE"):
        i = 1
        replace = i + 1 < len(toks) and toks[i].kw("OR") and toks[i + 1].kw("REPLACE")
        i = _skip(toks, i + 2 if replace else i, "DEFINER")
        if i < len(toks) and toks[i].kw("TEMPORARY"):
            return None
        if i < len(toks) and toks[i].kw("TABLE"):
            got = _name_at(toks, _skip(toks, i + 1, "IF", "NOT", "EXISTS"))
            if got is not None:
                return Statement("replace" if replace else "create", (got[0],))
        return None
    return _dml(toks)


def ours(statement: Statement, default_db: str | None, database: str, tables: Iterable[str],
         fold_case: bool = False) -> list[str]:
    """Which of ``tables`` (in ``database``) the statement names, scoped by its default database.
    Names compare as the server compares them: exactly, or case-folded where it runs with
    ``lower_case_table_names`` other than 0 (``fold_case``)."""
    def norm(name: str | None) -> str | None:
        return name.lower() if fold_case and name is not None else name

    db = norm(database)
    if statement.kind == "drop_database":
        return list(tables) if norm(statement.database) == db else []
    named = {norm(t.name) for t in statement.tables if norm(t.database if t.database is not None else default_db) == db}
    return [t for t in tables if norm(t) in named]
