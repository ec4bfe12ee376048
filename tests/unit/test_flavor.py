"""MariaDB / MySQL 8.0 / MySQL 8.4 differences, decided without a server."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from cdc.capture.flavor import Flavor, mariadb_gtid_advance, mysql_gtid_advance, snapshot_position

MARIADB = Flavor.from_version("10.11.19-MariaDB-0+deb12u1-log")
MYSQL80 = Flavor.from_version("8.0.36")
MYSQL84 = Flavor.from_version("8.4.2-commercial")


def test_versions_are_read_with_their_kind() -> None:
    assert MARIADB.mariadb and MARIADB.version == (10, 11, 19)
    assert not MYSQL84.mariadb and MYSQL84.version == (8, 4, 2)
    assert MARIADB.name == "MariaDB 10.11.19"


def test_mysql_84_uses_show_binary_log_status() -> None:
    assert MYSQL84.binlog_status_sql == "SHOW BINARY LOG STATUS"
    assert MYSQL80.binlog_status_sql == "SHOW MASTER STATUS"
    assert MARIADB.binlog_status_sql == "SHOW MASTER STATUS"


def test_mysql_8_0_22_and_later_list_replicas_with_show_replicas() -> None:
    assert Flavor.from_version("9.7.4-2").replica_hosts_sql == "SHOW REPLICAS"
    assert MYSQL84.replica_hosts_sql == "SHOW REPLICAS"
    assert Flavor.from_version("8.0.21").replica_hosts_sql == "SHOW SLAVE HOSTS"
    assert MARIADB.replica_hosts_sql == "SHOW SLAVE HOSTS"


def test_mariadb_snapshot_takes_no_lock_and_mysql_only_a_brief_one() -> None:
    m = MARIADB.snapshot_statements()
    assert m.lock == () and m.unlock == ()
    assert "binlog_snapshot" in m.position
    my = MYSQL84.snapshot_statements()
    assert my.lock == ("FLUSH TABLES WITH READ LOCK",) and my.unlock == ("UNLOCK TABLES",)
    assert my.position == "SHOW BINARY LOG STATUS"
    assert "START TRANSACTION WITH CONSISTENT SNAPSHOT" in my.begin


def test_snapshot_position_parsed_for_both_kinds() -> None:
    rows: list[tuple[object, ...]] = [("Binlog_snapshot_file", "mysql-bin.000007"),
                                      ("Binlog_snapshot_position", "1234")]
    assert snapshot_position(True, rows) == ("mysql-bin.000007", 1234)
    assert snapshot_position(False, [("binlog.000002", 157, "", "", "uuid:1-5")]) == ("binlog.000002", 157)


def test_row_metadata_exists_from_mariadb_105_and_mysql_801() -> None:
    assert Flavor.from_version("10.5.0-MariaDB").has_row_metadata
    assert not Flavor.from_version("10.4.30-MariaDB").has_row_metadata
    assert MYSQL80.has_row_metadata and not Flavor.from_version("5.7.44").has_row_metadata


def test_mariadb_gtid_state_keeps_the_last_gtid_per_domain() -> None:
    state = mariadb_gtid_advance("", "0-1-5")
    state = mariadb_gtid_advance(state, "1-2-3")
    state = mariadb_gtid_advance(state, "0-1-6")
    assert state == "0-1-6,1-2-3"


def test_mysql_gtid_set_merges_adjacent_transactions() -> None:
    u = "3e11fa47-71ca-11e1-9e33-c80aa9429562"
    state = mysql_gtid_advance(f"{u}:1-5", f"{u}:6")
    assert state == f"{u}:1-6"
    state = mysql_gtid_advance(state, f"{u}:9")
    assert state == f"{u}:1-6:9"
    other = "aaaaaaaa-0000-0000-0000-000000000000"
    assert mysql_gtid_advance(state, f"{other.upper()}:1") == f"{u}:1-6:9,{other}:1"


@given(st.lists(st.integers(1, 60), max_size=40))
def test_mysql_gtid_set_holds_exactly_the_transactions_added(numbers: list[int]) -> None:
    u = "u"
    state = ""
    for n in numbers:
        state = mysql_gtid_advance(state, f"{u}:{n}")
    covered: set[int] = set()
    for part in filter(None, state.split(",")):
        for r in part.split(":")[1:]:
            lo, _, hi = r.partition("-")
            covered |= set(range(int(lo), int(hi or lo) + 1))
    assert covered == set(numbers)
