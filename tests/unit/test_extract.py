"""The snapshot's COPY-text rendering (transform.extract), without a database."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from transform.extract import copy_text_select, refusal, unescape
from transform.schema import Column, Table


def escape(text: str) -> str:
    """What the SELECT's REPLACE chain does to a string, in Python."""
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


@given(st.text())
def test_unescape_undoes_the_copy_escaping(text: str) -> None:
    escaped = escape(text)
    assert "\t" not in escaped and "\n" not in escaped
    assert unescape(escaped) == text


def test_null_marker_is_not_a_string() -> None:
    assert unescape("\\N") is None
    assert unescape(escape("\\N")) == "\\N"


def table(*cols: Column) -> Table:
    return Table("t", (Column("id", "int", "int(11)", False), *cols), ("id",))


def test_tables_with_types_not_rendered_keep_the_library_reader() -> None:
    assert copy_text_select(table(Column("d", "decimal", "decimal(10,2)"))) is not None
    for col in (Column("t", "time", "time"), Column("e", "enum", "enum('a')"), Column("j", "json", "json"),
                Column("f", "float", "float"), Column("y", "year", "year(4)"), Column("b", "bit", "bit(3)"),
                Column("s", "varchar", "varchar(9)", charset="utf16"), Column("n", "binary", "binary(4)")):
        assert copy_text_select(table(col)) is None, col


def test_flag_is_there_only_when_a_value_can_be_refused() -> None:
    assert copy_text_select(table(Column("n", "bigint", "bigint(20)"))) == (
        "SELECT 'G', IFNULL(`id`, '\\\\N'), IFNULL(`n`, '\\\\N') FROM `t`")
    with_date = copy_text_select(table(Column("d", "date", "date")))
    assert with_date is not None and with_date.startswith("SELECT IF(IFNULL((YEAR(`d`) = 0")


def test_refusal_names_the_column_and_the_value_as_printed() -> None:
    t = table(Column("v", "varchar", "varchar(9)", charset="utf8mb4"), Column("ts", "timestamp", "timestamp"))
    assert refusal(t, ["1", "a\x00b", None]) == "column 'v': text contains a NUL character"
    assert refusal(t, ["1", "ok", "0000-00-00 00:00:00+00"]) == (
        "column 'ts': MySQL zero or invalid date '0000-00-00 00:00:00' has no PostgreSQL form")
