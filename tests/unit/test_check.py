"""The judgement behind `softcart-sync check`, for MariaDB and MySQL, without a server."""

from __future__ import annotations

from cdc.capture.flavor import Flavor
from cdc.ops.check import judge_binlog, judge_session_format, missing_privileges

MARIADB = Flavor.from_version("10.11.19-MariaDB")
MYSQL84 = Flavor.from_version("8.4.2")
GOOD = {"log_bin": "ON", "binlog_format": "ROW", "binlog_row_image": "FULL", "binlog_row_metadata": "FULL",
        "server_id": "1", "binlog_expire_logs_seconds": "604800"}


def failures(findings: list) -> list[str]:  # type: ignore[type-arg]
    return [f.line() for f in findings if not f.ok]


def test_good_source_passes() -> None:
    assert failures(judge_binlog(MARIADB, GOOD, 5401)) == []


def test_statement_binlog_names_the_variable_and_the_fix() -> None:
    lines = failures(judge_binlog(MARIADB, {**GOOD, "binlog_format": "MIXED"}, 5401))
    assert lines == ["FAIL  binlog_format = MIXED (need ROW): set binlog_format=ROW in [mysqld] "
                     "(and SET GLOBAL binlog_format='ROW')"]


def test_each_bad_variable_is_one_line() -> None:
    bad = {"log_bin": "OFF", "binlog_format": "ROW", "binlog_row_image": "MINIMAL", "binlog_row_metadata": "MINIMAL",
           "server_id": "5401", "expire_logs_days": "0.1"}
    lines = failures(judge_binlog(MARIADB, bad, 5401))
    assert len(lines) == 5
    for needle in ("log_bin", "binlog_row_image", "binlog_row_metadata", "SOFTCART_SERVER_ID", "retention"):
        assert any(needle in line for line in lines), needle


def test_old_server_without_row_metadata_is_not_asked_for_it() -> None:
    old = Flavor.from_version("10.4.30-MariaDB")
    v = {k: v for k, v in GOOD.items() if k != "binlog_row_metadata"}
    assert failures(judge_binlog(old, v, 5401)) == []


def test_privileges_from_grants() -> None:
    grants = ["GRANT REPLICATION SLAVE, BINLOG MONITOR ON *.* TO `cdc`@`%`",
              "GRANT SELECT ON `sales`.`sales_data` TO `cdc`@`%`"]
    assert failures(missing_privileges(MARIADB, grants, "sales", ["sales_data"])) == []
    lines = failures(missing_privileges(MARIADB, grants, "sales", ["sales_data", "other"]))
    assert lines == ["FAIL  privilege SELECT on sales.other: GRANT SELECT ON sales.other TO the daemon's user"]


def test_mysql_also_needs_reload_for_the_snapshot_lock() -> None:
    grants = ["GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO `cdc`@`%`",
              "GRANT SELECT ON `sales`.* TO `cdc`@`%`"]
    lines = failures(missing_privileges(MYSQL84, grants, "sales", ["sales_data"]))
    assert lines == ["FAIL  privilege RELOAD (snapshot lock on MySQL): GRANT RELOAD ON *.* TO the daemon's user"]


def test_all_privileges_cover_everything() -> None:
    grants = ["GRANT ALL PRIVILEGES ON *.* TO `root`@`localhost` WITH GRANT OPTION"]
    assert failures(missing_privileges(MYSQL84, grants, "sales", ["sales_data"])) == []


def test_accounts_that_may_switch_to_statement_format_are_named() -> None:
    maria = Flavor.from_version("10.11.19-MariaDB")
    rows = [("'root'@'localhost'", "SUPER"), ("'ops'@'%'", "BINLOG ADMIN"), ("'app'@'%'", "SELECT"),
            ("'root'@'localhost'", "BINLOG ADMIN")]
    f = judge_session_format(maria, rows)
    assert f.ok and not f.required
    assert "SUPER or BINLOG ADMIN): 'ops'@'%', 'root'@'localhost' (" in f.what and "'app'" not in f.what
    mysql = Flavor.from_version("8.0.36")
    f = judge_session_format(mysql, [("'etl'@'%'", "SESSION_VARIABLES_ADMIN"), ("'x'@'%'", "BINLOG ADMIN")])
    assert "'etl'@'%'" in f.what and "'x'" not in f.what
    assert "none that this account can see" in judge_session_format(maria, [("'me'@'%'", "SELECT")]).what


def test_online_copies_by_watermarks_need_to_write_the_signal_table() -> None:
    grants = ["GRANT REPLICATION SLAVE, REPLICATION CLIENT, RELOAD ON *.* TO `cdc`@`%`",
              "GRANT SELECT ON `sales`.* TO `cdc`@`%`"]
    assert failures(missing_privileges(MYSQL84, grants, "sales", ["sales_data"])) == [], "not asked without them"
    (line,) = failures(missing_privileges(MYSQL84, grants, "sales", ["sales_data"], signal=True))
    assert line.startswith("FAIL  privileges SELECT, INSERT, UPDATE on sales.softcart_signal")
    assert "CREATE TABLE sales.softcart_signal (" in line and "SOFTCART_ONLINE_COPY=off" in line
    granted = [*grants, "GRANT INSERT, UPDATE ON `sales`.`softcart_signal` TO `cdc`@`%`"]
    assert failures(missing_privileges(MYSQL84, granted, "sales", ["sales_data"], signal=True)) == []
    everything = ["GRANT ALL PRIVILEGES ON *.* TO `root`@`localhost` WITH GRANT OPTION"]
    assert failures(missing_privileges(MYSQL84, everything, "sales", ["sales_data"], signal=True)) == []


def test_commits_out_of_binlog_order_are_a_warning_for_the_watermarks() -> None:
    assert failures(judge_binlog(MYSQL84, {**GOOD, "binlog_order_commits": "ON"}, 5401)) == []
    (finding,) = [f for f in judge_binlog(MYSQL84, {**GOOD, "binlog_order_commits": "OFF"}, 5401) if not f.ok]
    assert "binlog_order_commits = OFF" in finding.what and not finding.required


def test_compressed_transactions_are_read_and_check_says_so() -> None:
    """MySQL 8's binlog_transaction_compression puts a transaction's events in one zstd payload:
    the reader reads them, so `check` passes and shows the setting."""
    assert failures(judge_binlog(MYSQL84, {**GOOD, "binlog_transaction_compression": "ON"}, 5401)) == []
    (finding,) = [f for f in judge_binlog(MYSQL84, {**GOOD, "binlog_transaction_compression": "ON"}, 5401)
                  if "binlog_transaction_compression" in f.what]
    assert finding.ok and "compressed transactions are read" in finding.what


def test_partial_json_updates_are_a_warning() -> None:
    assert failures(judge_binlog(MYSQL84, {**GOOD, "binlog_row_value_options": ""}, 5401)) == []
    (finding,) = [f for f in judge_binlog(MYSQL84, {**GOOD, "binlog_row_value_options": "PARTIAL_JSON"}, 5401)
                  if not f.ok]
    assert "stops that table" in finding.what and not finding.required
