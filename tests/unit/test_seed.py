"""The seed's CSV shape: parsing, clear errors with file and line, and the generator."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cdc.dev.seed import MalformedLine, generate, read_sales


def test_old_and_new_lines_parse(tmp_path: Path) -> None:
    old = tmp_path / "old.csv"
    old.write_text("1,10,20,19.99,2,2020-09-05 16:20\n2,11,21,5,1,2020-09-05 16:21:30\n")
    new = tmp_path / "new.csv"
    new.write_text("3,12,22,7.5,3\n")
    a, b = read_sales(old, True)
    assert a.price == Decimal("19.99") and a.timestamp == dt.datetime(2020, 9, 5, 16, 20)
    assert b.timestamp == dt.datetime(2020, 9, 5, 16, 21, 30)
    assert read_sales(new, False)[0].timestamp is None


@pytest.mark.parametrize(("content", "line", "needle"), [
    ("1,10,20,19.99,2,2020-09-05 16:20\n2,11,21,5,1\n", 2, "expected 6"),
    ("1,10,20,abc,2,2020-09-05 16:20\n", 1, "price"),
    ("1,10,x,1,2,2020-09-05 16:20\n", 1, "customer_id"),
    ("1,10,20,1,2,2020-13-05 16:20\n", 1, "not a real date"),
    ("1,10,20,1,2,05/09/2020\n", 1, "timestamp must look like"),
    ("1,10,20,1,2,2020-09-05 16:20\n1,10,20,1,2,2020-09-05 16:20\n", 2, "already on line 1"),
])
def test_malformed_line_names_file_and_line(tmp_path: Path, content: str, line: int, needle: str) -> None:
    f = tmp_path / "old.csv"
    f.write_text(content)
    with pytest.raises(MalformedLine) as err:
        read_sales(f, True)
    assert f"{f}:{line}" in str(err.value) and needle in str(err.value)


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 300), st.integers(0, 50), st.integers(0, 10))
def test_generated_files_have_the_seed_shape(tmp_path_factory: pytest.TempPathFactory, n_old: int, n_new: int,
                                             seed: int) -> None:
    d = tmp_path_factory.mktemp("gen")
    generate(d / "old.csv", d / "new.csv", n_old, n_new, seed)
    old_text = (d / "old.csv").read_bytes()
    assert b"\r" not in old_text and (old_text == b"" or old_text.endswith(b"\n"))
    old = read_sales(d / "old.csv", True)
    new = read_sales(d / "new.csv", False)
    assert [s.rowid for s in old + new] == list(range(1, n_old + n_new + 1))
    assert all(len(line.split(",")) == 6 for line in old_text.decode().splitlines())
