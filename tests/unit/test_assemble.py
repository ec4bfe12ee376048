"""Transaction boundaries by the server's rules, on recorded event sequences (pure).

MariaDB 10.11 sequences are as its binlog holds them (recorded here with the library's reader);
MySQL 8.0 sequences are its documented forms (GTID event, then BEGIN or XA START; XA PREPARE and
XA COMMIT ... ONE PHASE as an XA_PREPARE event with ``one_phase``), which no server here can write.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from cdc.capture.assemble import FL_COMPLETED_XA, FL_PREPARED_XA, FL_STANDALONE, Assembler, Ddl, xid_text
from transform.model import Op, Position, RowChange, TxnChunk

MARIA_TXN = 4 | 8  # FL_TRANSACTIONAL | FL_ALLOW_PARALLEL
MARIA_DDL = FL_STANDALONE | 8 | 32


def ins(table: str, k: int) -> RowChange:
    return RowChange(table, Op.INSERT, None, (k,))


def at(pos: int) -> Position:
    return Position("bin.000001", pos)


def run(asm: Assembler, events: list[tuple[Any, ...]]) -> list[TxnChunk | Ddl]:
    """Feed events: ("gtid", flags|None), ("rows", table, *keys), ("q", text[, default_db]),
    ("xid",), ("xa_prepare", xid, one_phase), ("partial_json", table); positions count up."""
    out: list[TxnChunk | Ddl] = []
    for n, ev in enumerate(events, 1):
        kind = ev[0]
        if kind == "gtid":
            out += asm.gtid(ev[1])
        elif kind == "rows":
            out += asm.rows([ins(ev[1], k) for k in ev[2:]], float(n), at(n))
        elif kind == "q":
            out += asm.query(ev[1], ev[2] if len(ev) > 2 else "sales", at(n), float(n))
        elif kind == "xid":
            out += asm.xid(at(n), float(n))
        elif kind == "xa_prepare":
            out += asm.xa_prepare(ev[1], ev[2], at(n), float(n))
        elif kind == "partial_json":
            out += asm.unreadable(ev[1], "partial JSON", at(n))
    return out


def assembler(**kw: Any) -> Assembler:
    args: dict[str, Any] = {"chunk_rows": 100, "hold_rows": 1000, "nontransactional": {"m"}} | kw
    return Assembler("sales", ["t", "m", "sales_data"], **args)


def keys(items: list[TxnChunk | Ddl]) -> list[tuple[list[int], Position | None]]:
    return [([c.after[0] for c in i.changes if c.after], i.commit) for i in items if isinstance(i, TxnChunk)]


def test_mariadb_savepoint_stays_inside_the_transaction() -> None:
    # BEGIN; INSERT 1; SAVEPOINT s1; INSERT 2; ROLLBACK TO s1; INSERT 3; COMMIT  (InnoDB only:
    # the server drops row 2 itself and logs no ROLLBACK TO)
    out = run(assembler(), [("gtid", MARIA_TXN), ("rows", "t", 1), ("q", "SAVEPOINT `s1`"), ("rows", "t", 3),
                            ("xid",)])
    assert keys(out) == [([1, 3], at(5))]


def test_mariadb_rollback_to_savepoint_with_a_nontransactional_table() -> None:
    # recorded: InnoDB t and MyISAM m; ROLLBACK TO s1 is logged, t's row 2 must go, m's stays
    out = run(assembler(), [
        ("gtid", MARIA_TXN), ("rows", "t", 1), ("q", "SAVEPOINT `s1`"), ("rows", "t", 2), ("rows", "m", 2),
        ("q", "ROLLBACK TO `s1`"), ("rows", "t", 3), ("xid",)])
    assert len(out) == 1 and isinstance(out[0], TxnChunk)
    assert [(c.table, c.after) for c in out[0].changes] == [("t", (1,)), ("m", (2,)), ("t", (3,))]
    assert out[0].commit == at(8) and out[0].stops == ()


def test_nested_savepoints_and_release() -> None:
    out = run(assembler(), [
        ("q", "BEGIN"), ("rows", "t", 1), ("q", "SAVEPOINT a"), ("rows", "t", 2), ("q", "SAVEPOINT b"),
        ("rows", "t", 3), ("q", "ROLLBACK TO SAVEPOINT a"), ("rows", "t", 4), ("q", "SAVEPOINT c"),
        ("q", "RELEASE SAVEPOINT c"), ("rows", "t", 5), ("q", "ROLLBACK TO b"),  # b went with a's rollback
        ("q", "COMMIT")])
    assert keys(out) == [([1, 4, 5], at(13))]


def test_rollback_query_drops_the_transactional_rows_only() -> None:
    out = run(assembler(), [("q", "BEGIN"), ("rows", "t", 1), ("rows", "m", 9), ("rows", "t", 2), ("q", "ROLLBACK")])
    assert keys(out) == [([9], at(5))]


def test_huge_transaction_goes_out_in_slices_and_a_late_rollback_stops_its_tables() -> None:
    asm = assembler(chunk_rows=2, hold_rows=4)
    out = run(asm, [("q", "BEGIN"), ("rows", "t", 1, 2, 3), ("q", "SAVEPOINT s"), ("rows", "t", 4, 5),
                    ("q", "ROLLBACK TO s"), ("rows", "t", 6), ("xid",)])
    # 5 rows > 4 held: sent in slices of 2; the rollback can't take back 4 and 5 any more
    assert [len(c.changes) for c in out if isinstance(c, TxnChunk)] == [2, 2, 1, 1]
    # each slice says where it was read: its transaction ends by any boundary after that (#30 item 5)
    assert [c.read_at for c in out if isinstance(c, TxnChunk) and c.commit is None] == [at(4)] * 3
    last = out[-1]
    assert isinstance(last, TxnChunk) and last.commit == at(7)
    assert [s[0] for s in last.stops] == ["t"] and "ROLLBACK TO SAVEPOINT s" in last.stops[0][1]
    # a transaction under the limit is held whole and rolls back exactly
    out = run(asm, [("q", "BEGIN"), ("rows", "t", 1, 2), ("q", "SAVEPOINT s"), ("rows", "t", 3),
                    ("q", "ROLLBACK TO s"), ("xid",)])
    assert keys(out) == [([1, 2], at(6))] and out[-1].stops == ()  # type: ignore[union-attr]


def test_mariadb_xa_prepare_then_rollback_and_commit() -> None:
    x1, x2 = xid_text(b"x1", b"", 1), xid_text(b"x2", b"", 1)
    out = run(assembler(), [
        ("gtid", MARIA_TXN | FL_PREPARED_XA), ("rows", "t", 1), ("q", "XA END X'7831',X'',1"),
        ("xa_prepare", x1, False),
        ("gtid", MARIA_TXN | FL_STANDALONE | FL_COMPLETED_XA), ("q", "XA ROLLBACK X'7831',X'',1"),
        ("gtid", MARIA_TXN | FL_PREPARED_XA), ("rows", "t", 2), ("q", "XA END X'7832',X'',1"),
        ("xa_prepare", x2, False),
        ("gtid", MARIA_TXN), ("rows", "t", 9), ("xid",),  # another transaction between
        ("gtid", MARIA_TXN | FL_STANDALONE | FL_COMPLETED_XA), ("q", "XA COMMIT X'7832',X'',1"),
    ])
    chunks = [c for c in out if isinstance(c, TxnChunk)]
    assert [(c.hold, c.xa_prepared, c.xa_commit, c.xa_rollback) for c in chunks] == [
        (True, x1, "", ""), (False, "", "", x1), (True, x2, "", ""), (False, "", "", ""), (False, "", x2, "")]
    assert [c.commit for c in chunks] == [at(4), at(6), at(10), at(13), at(15)]
    assert x1 == "X'7831',X'',1"


def test_mariadb_xa_one_phase_is_an_ordinary_transaction() -> None:
    out = run(assembler(), [("gtid", MARIA_TXN), ("rows", "t", 3), ("xid",)])
    assert keys(out) == [([3], at(3))] and not out[0].hold  # type: ignore[union-attr]


def test_mysql8_forms() -> None:
    x = xid_text(b"g", b"b", 7)
    out = run(assembler(), [
        ("gtid", None), ("q", "BEGIN"), ("rows", "t", 1), ("xid",),
        ("gtid", None), ("q", "XA START X'67',X'62',7"), ("rows", "t", 2), ("q", "XA END X'67',X'62',7"),
        ("xa_prepare", x, False),
        ("gtid", None), ("q", "XA COMMIT X'67',X'62',7"),
        ("gtid", None), ("q", "XA START X'68',X'',1"), ("rows", "t", 3), ("q", "XA END X'68',X'',1"),
        ("xa_prepare", xid_text(b"h", b"", 1), True),  # XA COMMIT ... ONE PHASE
        ("gtid", None), ("q", "ALTER TABLE t ADD c INT"),
    ])
    chunks = [c for c in out if isinstance(c, TxnChunk)]
    assert [([ch.after[0] for ch in c.changes if ch.after], c.hold, c.xa_prepared,
             c.xa_commit) for c in chunks] == [([1], False, "", ""), ([2], True, x, ""), ([], False, "", x),
                                               ([3], False, "", "")]
    assert isinstance(out[-1], Ddl) and out[-1].kind == "alter" and out[-1].tables == ("t",)


def test_statement_format_dml_stops_the_table_at_the_commit() -> None:
    out = run(assembler(), [
        ("gtid", MARIA_TXN), ("q", "UPDATE t SET v = 2 WHERE id = 1"), ("rows", "sales_data", 5), ("xid",),
        ("gtid", MARIA_TXN), ("q", "INSERT INTO t VALUES (1, 1)", "scratch"), ("xid",),  # scratch.t: not ours
    ])
    first, second = out
    assert isinstance(first, TxnChunk) and [s[0] for s in first.stops] == ["t"]
    assert "STATEMENT binlog format" in first.stops[0][1] and first.stops[0][2].startswith("UPDATE t")
    assert keys([first]) == [([5], at(4))]
    assert isinstance(second, TxnChunk) and second.stops == ()


def test_ddl_of_other_databases_is_not_ours_and_moves_the_position() -> None:
    out = run(assembler(), [("gtid", MARIA_DDL), ("q", "CREATE TABLE t (id INT PRIMARY KEY)", "scratch"),
                            ("gtid", MARIA_DDL), ("q", "DROP TABLE `t` /* generated by server */", "scratch"),
                            ("gtid", MARIA_DDL), ("q", "CREATE OR REPLACE TABLE sales.t (id INT)", "scratch")])
    assert [type(i).__name__ for i in out] == ["TxnChunk", "TxnChunk", "Ddl"]
    assert all(not i.changes for i in out if isinstance(i, TxnChunk))
    assert isinstance(out[2], Ddl) and out[2].kind == "replace" and out[2].position == at(6)


@given(st.lists(st.sampled_from(["rows_t", "rows_m", "savepoint", "rollback_to", "release"]), max_size=30),
       st.sampled_from(["commit", "rollback"]), st.integers(1, 5), st.integers(1, 12))
def test_savepoints_match_a_model_of_the_server(ops: list[str], end: str, chunk: int, hold: int) -> None:
    """Against a direct model: the transactional rows that survive are those no rollback undid;
    non-transactional rows always survive. When rows were sent past the hold limit and a rollback
    needed them back, the table stops instead (never a wrong row silently)."""
    asm = assembler(chunk_rows=chunk, hold_rows=hold)
    events: list[tuple[Any, ...]] = [("q", "BEGIN")]
    model: list[tuple[str, int]] = []
    points: list[tuple[str, int]] = []
    for n, op in enumerate(ops):
        if op.startswith("rows"):
            table = op[-1]
            events.append(("rows", table, n))
            model.append((table, n))
        elif op == "savepoint":
            points = [p for p in points if p[0] != f"s{n % 3}"] + [(f"s{n % 3}", len(model))]
            events.append(("q", f"SAVEPOINT s{n % 3}"))
        elif points and op == "rollback_to":
            name, idx = points[-1 - n % len(points)]
            points = points[:points.index((name, idx)) + 1]
            model = model[:idx] + [r for r in model[idx:] if r[0] == "m"]
            events.append(("q", f"ROLLBACK TO {name}"))
        elif points and op == "release":
            name, idx = points[n % len(points)]
            points = points[:points.index((name, idx))]
            events.append(("q", f"RELEASE SAVEPOINT {name}"))
    if end == "rollback":
        model = [r for r in model if r[0] == "m"]
    events.append(("q", end.upper()))
    out = run(asm, events)
    got = [(c.table, c.after[0]) for i in out if isinstance(i, TxnChunk) for c in i.changes if c.after]
    last = out[-1]
    assert isinstance(last, TxnChunk) and last.commit is not None
    if last.stops:
        assert {s[0] for s in last.stops} == {"t"}
        assert len([r for r in got if r[0] == "t"]) > hold or any(len(i.changes) for i in out[:-1])  # type: ignore[union-attr]
    else:
        assert got == model
    assert all(len(i.changes) <= chunk for i in out if isinstance(i, TxnChunk))


# Fences: a table copied at a position past the stream's start ----------------------------------

def test_a_fenced_tables_events_up_to_its_copy_are_left_out_and_the_others_kept() -> None:
    asm = assembler(fences={"t": at(4)})
    out = run(asm, [("gtid", MARIA_TXN), ("rows", "t", 1), ("rows", "m", 2), ("xid",),  # 1-4: in t's copy
                    ("gtid", MARIA_TXN), ("rows", "t", 3), ("xid",),  # 5-7: after it
                    ("q", "TRUNCATE TABLE t")])
    assert keys(out) == [([2], at(4)), ([3], at(7))]
    assert [i.tables for i in out if isinstance(i, Ddl)] == [("t",)]


def test_a_fenced_tables_ddl_and_statement_format_dml_before_its_copy_are_left_out() -> None:
    asm = assembler(fences={"t": at(5)})
    out = run(asm, [("q", "ALTER TABLE t ADD COLUMN c INT"),  # 1: the copy has the new definition
                    ("gtid", MARIA_TXN), ("q", "UPDATE t SET v = 1", "sales"), ("rows", "m", 1), ("xid",),  # 2-5
                    ("gtid", MARIA_TXN), ("q", "UPDATE t SET v = 2", "sales"), ("xid",)])  # 6-8
    assert not [i for i in out if isinstance(i, Ddl)]
    stops = [i.stops for i in out if isinstance(i, TxnChunk) and i.stops]
    assert [[s[0] for s in st] for st in stops] == [["t"]] and out[-1].commit == at(8)


def test_xa_rows_of_a_fenced_table_wait_for_the_decision_which_says_whether_the_copy_has_them() -> None:
    x = xid_text(b"x", b"", 1)
    committed_in_copy = run(assembler(fences={"t": at(9)}), [
        ("gtid", MARIA_TXN | FL_PREPARED_XA), ("q", f"XA START {x}"), ("rows", "t", 1), ("q", f"XA END {x}"),
        ("xa_prepare", x, False), ("gtid", MARIA_TXN | FL_COMPLETED_XA), ("q", f"XA COMMIT {x}")])
    assert committed_in_copy[0].hold and keys(committed_in_copy)[0] == ([1], at(5))
    assert committed_in_copy[-1].xa_commit == x and committed_in_copy[-1].xa_skip == ("t",)
    committed_after = run(assembler(fences={"t": at(6)}), [
        ("gtid", MARIA_TXN | FL_PREPARED_XA), ("q", f"XA START {x}"), ("rows", "t", 1), ("q", f"XA END {x}"),
        ("xa_prepare", x, False), ("gtid", MARIA_TXN | FL_COMPLETED_XA), ("q", f"XA COMMIT {x}")])
    assert committed_after[-1].xa_commit == x and committed_after[-1].xa_skip == ()


def test_positions_order_by_file_number_then_offset() -> None:
    assert Position("bin.999999", 900).order() < Position("bin.1000000", 4).order()
    assert Position("bin.000002", 4).order() > Position("bin.000001", 99999).order()
    p = Position("mysql-bin.000009", 5727, "0-1-9066")
    assert Position.parse(str(p)) == p and Position.parse("b.000001:4") == Position("b.000001", 4)


def test_mysql8_partial_json_update_stops_its_table_at_the_commit_unless_its_copy_has_it() -> None:
    """MySQL's binlog_row_value_options=PARTIAL_JSON writes an update's JSON columns as changes to
    the documents: no row image to apply. Like a statement-format change, the table stops at the
    transaction's commit (the other rows apply), and not where its copy has the change already."""
    out = run(assembler(), [("gtid", None), ("q", "BEGIN"), ("partial_json", "t"), ("rows", "sales_data", 5),
                            ("xid",), ("gtid", None), ("q", "BEGIN"), ("rows", "t", 6), ("xid",)])
    first, second = out
    assert isinstance(first, TxnChunk) and first.stops == (("t", "partial JSON", ""),)
    assert keys(out) == [([5], at(5)), ([6], at(9))] and isinstance(second, TxnChunk) and second.stops == ()
    fenced = run(assembler(fences={"t": at(4)}), [("gtid", None), ("q", "BEGIN"), ("partial_json", "t"), ("xid",),
                                                  ("gtid", None), ("q", "BEGIN"), ("partial_json", "t"), ("xid",)])
    assert [i.stops for i in fenced if isinstance(i, TxnChunk)] == [(), (("t", "partial JSON", ""),)]
