"""The command line as a user meets it: help, check, setup-source, bad settings, the demo."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymysql
import pytest
from prometheus_client import generate_latest

from cdc.dev.localservers import MariaDBServer
from cdc.dev.seed import generate
from cdc.metrics import Metrics, version
from tests.helpers import cli, execute

Conn = pymysql.connections.Connection
CANARY = "Canary-Pa55word-7731"


def test_help_explains_commands_settings_and_exit_codes() -> None:
    out = cli("--help")
    assert out.returncode == 0
    for needle in ("demo", "check", "setup-source", "run", "SOFTCART_SOURCE_URL", "SOFTCART_STAGING_URL",
                   "exit codes", "--config"):
        assert needle in out.stdout, needle
    assert cli("run", "--help").returncode == 0
    # the fifty-odd settings are `softcart-sync settings`'s to list, not --help's (#33 item 5)
    assert "softcart-sync settings` lists all" in out.stdout and "SOFTCART_RECONCILE_FANOUT" not in out.stdout
    assert "SOFTCART_RECONCILE_FANOUT" in cli("settings").stdout


def test_bad_setting_exits_2_naming_it_without_the_password(settings_env: dict[str, str]) -> None:
    env = {**settings_env, "SOFTCART_SOURCE_URL": f"mysql://u:{CANARY}@127.0.0.1:notaport/sales"}
    out = cli("run", env=env)
    assert out.returncode == 2
    assert "SOFTCART_SOURCE_URL" in out.stderr and CANARY not in out.stderr + out.stdout
    out = cli("run", env={**settings_env, "SOFTCART_BATCH_MAX_ROWS": "many"})
    assert out.returncode == 2 and "SOFTCART_BATCH_MAX_ROWS" in out.stderr



def test_a_wrong_setting_found_while_running_exits_2_so_systemd_does_not_restart_it(
        settings_env: dict[str, str], source: Conn) -> None:
    # The settings parse, but staging's database does not exist: found once the daemon connects
    # (in its pipeline thread). The unit's RestartPreventExitStatus=2 relies on this exit code.
    execute(source, "CREATE TABLE sales_data (rowid INT PRIMARY KEY, price DECIMAL(10,2))")
    staging = settings_env["SOFTCART_STAGING_URL"].rsplit("/", 1)[0] + "/no_such_database"
    out = cli("run", env={**settings_env, "SOFTCART_STAGING_URL": staging}, timeout=60)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "SOFTCART_STAGING_URL" in out.stdout + out.stderr

def test_check_passes_on_a_ready_source(settings_env: dict[str, str], source: Conn) -> None:
    execute(source, "CREATE TABLE sales_data (rowid INT PRIMARY KEY, price DECIMAL(10,2))")
    out = cli("check", env=settings_env)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines and all(line.startswith("ok") for line in lines), out.stdout
    assert any("binlog_format = ROW" in line for line in lines)


def test_check_names_a_table_without_primary_key(settings_env: dict[str, str], source: Conn) -> None:
    execute(source, "CREATE TABLE sales_data (rowid INT, price DECIMAL(10,2))")
    out = cli("check", env=settings_env)
    assert out.returncode == 1
    assert re.search(r"FAIL .*sales_data has no primary key", out.stdout), out.stdout


def test_check_covers_the_warehouse_and_names_what_to_run(wh_env: dict[str, str], source: Conn) -> None:
    from cdc.dev.localservers import free_port

    execute(source, "CREATE TABLE sales_data (rowid INT PRIMARY KEY, price DECIMAL(10,2))")
    out = cli("check", env=wh_env)  # reachable, but never initialised
    assert out.returncode == 1
    assert re.search(r"FAIL  warehouse table dimdate: run `softcart-sync warehouse init`", out.stdout), out.stdout
    assert cli("warehouse", "init", env=wh_env).returncode == 0
    out = cli("check", env=wh_env)
    assert out.returncode == 0, out.stdout
    for needle in ("ok    connected to the warehouse", "ok    warehouse table factsales (SELECT,INSERT,UPDATE,DELETE)",
                   "ok    warehouse table softcart_ledger (SELECT,INSERT)", "ok    warehouse ledger has batch_uid",
                   "ok    warehouse: temporary tables allowed (TEMP)"):
        assert needle in out.stdout, out.stdout
    down = {**wh_env, "SOFTCART_WAREHOUSE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/dw",
            "SOFTCART_CONNECT_TIMEOUT_SECONDS": "2"}
    out = cli("check", env=down)
    assert out.returncode == 1 and re.search(r"FAIL  connect to the warehouse .*SOFTCART_WAREHOUSE_URL", out.stdout)
    # the cause, on one line (the line kept only libpq's hint, after a tab: #33 item 5)
    line = next(x for x in out.stdout.splitlines() if "connect to the warehouse" in x)
    assert "Connection refused" in line and "\t" not in line, line


@pytest.fixture
def statement_binlog(mariadb: MariaDBServer) -> Iterator[None]:
    conn = pymysql.connect(host="127.0.0.1", port=mariadb.port, user="root", autocommit=True)
    execute(conn, "SET GLOBAL binlog_format = 'STATEMENT'")
    try:
        yield
    finally:
        execute(conn, "SET GLOBAL binlog_format = 'ROW'")
        conn.close()


def test_source_without_row_binlog_is_refused_with_the_variable_to_set(
        settings_env: dict[str, str], source: Conn, statement_binlog: None) -> None:
    execute(source, "CREATE TABLE sales_data (rowid INT PRIMARY KEY)")
    out = cli("check", env=settings_env)
    assert out.returncode == 1
    assert "FAIL  binlog_format = STATEMENT (need ROW): set binlog_format=ROW" in out.stdout
    out = cli("run", env=settings_env)
    assert out.returncode == 1
    assert "binlog_format = STATEMENT (need ROW)" in out.stdout + out.stderr


def test_wrong_password_is_named_and_never_shown(mariadb: MariaDBServer, settings_env: dict[str, str],
                                                 source_db: str) -> None:
    root = pymysql.connect(host="127.0.0.1", port=mariadb.port, user="root", autocommit=True)
    execute(root, "CREATE USER IF NOT EXISTS 'cdc_pw'@'%' IDENTIFIED BY 'right-one'")
    env = {**settings_env, "SOFTCART_SOURCE_URL": f"mysql://cdc_pw:{CANARY}@127.0.0.1:{mariadb.port}/{source_db}"}
    out = cli("check", env=env)
    assert out.returncode == 1
    assert "access denied" in out.stdout and "SOFTCART_SOURCE_PASSWORD" in out.stdout
    assert CANARY not in out.stdout + out.stderr


def count(source: Conn) -> int:
    with source.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM sales_data")
        return int(cur.fetchone()[0])


def test_setup_source_loads_both_files_once(settings_env: dict[str, str], source: Conn, tmp_path: Path) -> None:
    old, new = tmp_path / "old.csv", tmp_path / "new.csv"
    generate(old, new, 300, 40)
    out = cli("setup-source", str(old), str(new), env=settings_env)
    assert out.returncode == 0, out.stderr
    assert count(source) == 340
    again = cli("setup-source", str(old), str(new), env=settings_env)
    assert again.returncode == 0 and count(source) == 340
    assert "0 new rows" in again.stdout
    with source.cursor() as cur:
        cur.execute("SELECT timestamp FROM sales_data WHERE rowid = 1")
        first = cur.fetchone()[0]
        cur.execute("SELECT COUNT(*) FROM sales_data WHERE rowid > 300"
                    " AND timestamp > UTC_TIMESTAMP() - INTERVAL 1 HOUR")
        stamped = cur.fetchone()[0]
    assert first.strftime("%Y-%m-%d %H:%M") == old.read_text().splitlines()[0].split(",")[5]
    assert stamped == 40, "the server stamps the new rows with the load time"


def test_malformed_line_is_named_and_nothing_of_the_file_loads(settings_env: dict[str, str], source: Conn,
                                                                tmp_path: Path) -> None:
    old, new = tmp_path / "old.csv", tmp_path / "new.csv"
    generate(old, new, 10, 5)
    lines = new.read_text().splitlines()
    lines[3] = lines[3] + ",extra"
    new.write_text("\n".join(lines) + "\n")
    out = cli("setup-source", str(old), str(new), env=settings_env)
    assert out.returncode == 1
    assert f"{new}:4" in out.stderr and "expected 5" in out.stderr
    with source.cursor() as cur:
        cur.execute("SHOW TABLES LIKE 'sales_data'")
        assert cur.fetchone() is None or count(source) == 0


def _demo(folder: Path, *extra: str) -> None:
    out = cli("demo", "--dir", str(folder), "--rows", "2000", "--rate", "30", "--duration", "8", *extra,
              timeout=240)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    rows = [line.split() for line in out.stdout.splitlines() if re.match(r"\s+\d+\s+\d+\s+\d+\s", line)]
    assert rows, out.stdout
    # after the last change staging meets the source: counts read while changes go on meet only by
    # luck (a clean clone's CI missed every one of four)
    assert re.search(r"staging caught up: source (\d+) rows = staging \1 rows", out.stdout), out.stdout[-3000:]
    assert int(rows[-1][3].split("/")[0]) > 0, "the change generator made inserts"
    assert "Stopped." in out.stdout
    # what to point the everyday commands at, from a second terminal (#33 item 2)
    for name in ("SOURCE_URL", "STAGING_URL", "WAREHOUSE_URL", "SPOOL_DIR", "METRICS_LISTEN"):
        assert f"export SOFTCART_{name}=" in out.stdout, out.stdout[:3000]
    assert re.search(r"metrics: http://127\.0\.0\.1:\d+/metrics", out.stdout), out.stdout[:3000]


def test_demo_runs_and_staging_follows_the_source_and_a_second_run_carries_on(tmp_path: Path) -> None:
    """The README says the folder is kept: a second run in it carries on from the data it finds
    (its change generator died on a duplicate key, and the demo printed frozen counters and
    exited 0, #33 item 1)."""
    _demo(tmp_path / "demo")
    _demo(tmp_path / "demo")


@pytest.mark.slow  # the default run has the demo on MariaDB; the MySQL stream is tested throughout
def test_demo_runs_on_mysql(tmp_path: Path) -> None:
    _demo(tmp_path / "demo", "--source", "mysql")




def test_status_reads_postgresql_with_or_without_the_daemon(settings_env: dict[str, str], settings: Any,
                                                            source: Conn) -> None:
    from tests.helpers import running_pipeline, wait_until

    before = cli("status", env=settings_env)
    assert before.returncode == 0 and "not started" in before.stdout
    execute(source, "CREATE TABLE sales_data (rowid INT PRIMARY KEY, product_id INT, customer_id INT,"
                    " price DECIMAL(10,2), quantity INT, timestamp TIMESTAMP NULL)",
            "INSERT INTO sales_data VALUES (1, 1, 1, 1.00, 1, NULL)")
    with running_pipeline(settings) as p:
        wait_until(lambda: p.state.streaming, 60, "streaming")
    out = cli("status", "--json", env=settings_env)
    assert out.returncode == 0, out.stderr
    status = json.loads(out.stdout)
    assert status["position"]["file"].startswith("mysql-bin.")
    assert status["dead_letters"] == {"fact": {"open": 1, "total": 1}}
    assert status["snapshot"][0]["table"] == "sales_data" and status["snapshot"][0]["rows"] == 1
    human = cli("status", env=settings_env).stdout
    assert "position       mysql-bin." in human and "fact: 1 open of 1" in human
    from cdc.dev.localservers import free_port

    port = free_port()
    alone = cli("status", env={**settings_env, "SOFTCART_METRICS_LISTEN": f"127.0.0.1:{port}"}).stdout
    assert f"daemon         not answering at 127.0.0.1:{port}" in alone and "SOFTCART_METRICS_LISTEN" in alone
    assert "lag " not in alone, alone  # one lag, /readyz's (#33 item 5)


def test_unreachable_hosts_and_missing_privileges_are_one_clear_line_each(
        settings_env: dict[str, str], source: Conn, mariadb: MariaDBServer) -> None:
    from cdc.dev.localservers import free_port

    execute(source, "CREATE TABLE sales_data (rowid INT PRIMARY KEY)")
    closed = free_port()
    out = cli("check", env={**settings_env,
                            "SOFTCART_SOURCE_URL": f"mysql://root@127.0.0.1:{closed}/x",
                            "SOFTCART_STAGING_URL": f"postgresql://postgres@127.0.0.1:{closed}/x"})
    assert out.returncode == 1
    assert ("FAIL  connect to the source: " in out.stdout
            and "check the host and port in SOFTCART_SOURCE_URL" in out.stdout), out.stdout
    assert "check the host and port in SOFTCART_STAGING_URL" in out.stdout, out.stdout
    execute(source, "CREATE USER IF NOT EXISTS 'weak'@'%' IDENTIFIED BY 'weak-pw'",
            f"GRANT SELECT ON `{source.db.decode()}`.* TO 'weak'@'%'")
    url = settings_env["SOFTCART_SOURCE_URL"].replace("mysql://root@", "mysql://weak:weak-pw@")
    out = cli("check", env={**settings_env, "SOFTCART_SOURCE_URL": url})
    assert out.returncode == 1
    assert "FAIL  privilege REPLICATION SLAVE: GRANT REPLICATION SLAVE ON *.* TO the daemon's user" in out.stdout
    assert "weak-pw" not in out.stdout + out.stderr


def test_a_metrics_port_in_use_names_the_setting_and_version_and_build_info_say_what_runs(
        settings_env: dict[str, str]) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        port = taken.getsockname()[1]
        out = cli("run", env={**settings_env, "SOFTCART_METRICS_LISTEN": f"127.0.0.1:{port}"}, timeout=60)
        assert out.returncode == 2, out.stdout + out.stderr
        assert f"SOFTCART_METRICS_LISTEN 127.0.0.1:{port}: Address already in use" in out.stderr
        assert "give each instance a port of its own" in out.stderr and "Traceback" not in out.stderr
    finally:
        taken.close()
    shown = cli("--version")
    assert shown.returncode == 0 and shown.stdout.strip() == f"softcart-sync {version()}" and version()[0].isdigit()
    assert 'softcart_build_info{python="' in generate_latest(Metrics().registry).decode()
    assert f'version="{version()}"' in generate_latest(Metrics().registry).decode()


def test_urls_pointing_at_the_other_kind_of_server_are_named(settings_env: dict[str, str], mariadb: MariaDBServer,
                                                             postgres: Any) -> None:
    env = {**settings_env, "SOFTCART_SOURCE_URL": f"mysql://root@127.0.0.1:{postgres.port}/sales",
           "SOFTCART_STAGING_URL": f"postgresql://postgres@127.0.0.1:{mariadb.port}/staging",
           "SOFTCART_CONNECT_TIMEOUT_SECONDS": "2", "SOFTCART_READ_TIMEOUT_SECONDS": "3"}  # the greeting's wait
    out = cli("check", env=env, timeout=60)
    assert out.returncode == 1
    assert re.search(r"FAIL .*sent no MySQL/MariaDB greeting within 2 s .*stopped or overloaded, or another kind of"
                     r" server .*SOFTCART_SOURCE_URL", out.stdout), out.stdout  # a frozen MariaDB says the same
    assert re.search(r"FAIL .*does not speak PostgreSQL's protocol .*SOFTCART_STAGING_URL", out.stdout), out.stdout


def test_an_unresolvable_host_is_named_with_its_setting() -> None:
    env = {"SOFTCART_SOURCE_URL": "mysql://u@no-such-host.invalid/sales",
           "SOFTCART_STAGING_URL": "postgresql://u@no-such-host.invalid/db", "SOFTCART_CONNECT_TIMEOUT_SECONDS": "3"}
    out = cli("check", env=env, timeout=60)
    assert out.returncode == 1
    lines = out.stdout.splitlines()
    source = next(ln for ln in lines if "connect to the source" in ln)
    staging = next(ln for ln in lines if "connect to staging" in ln)
    assert source.startswith("FAIL") and "SOFTCART_SOURCE_URL" in source, source
    assert staging.startswith("FAIL") and "SOFTCART_STAGING_URL" in staging, staging


def test_run_with_a_table_that_does_not_exist_is_a_settings_error(settings_env: dict[str, str],
                                                                    source: Conn) -> None:
    """Exit 2, like any wrong setting: systemd's unit doesn't restart it (it exited 1 and was
    restarted five times, #33)."""
    out = cli("run", env={**settings_env, "SOFTCART_SOURCE_TABLES": "nope"}, timeout=60)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "nope does not exist" in out.stdout + out.stderr


def test_the_demo_can_be_looked_at_from_a_second_terminal(tmp_path: Path) -> None:
    """With the settings it prints, `status` answers from the demo's own metrics endpoint while
    it runs (it served none, and `status` said 'not answering', #33 item 2)."""
    import os
    import subprocess
    import sys

    from tests.helpers import ROOT, wait_until

    base = {k: v for k, v in os.environ.items() if not k.startswith("SOFTCART_")}
    proc = subprocess.Popen([sys.executable, "-m", "cdc", "demo", "--dir", str(tmp_path / "demo"), "--rows", "500",
                             "--duration", "40"], env=base, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    exports: dict[str, str] = {}
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            m = re.match(r"\s+export (SOFTCART_\w+)=(.*)", line)
            if m:
                exports[m.group(1)] = m.group(2)
            if "METRICS_LISTEN" in line:
                break
        assert "SOFTCART_METRICS_LISTEN" in exports, exports

        def status_answers() -> str:
            out = cli("status", env=exports)
            return out.stdout if out.returncode == 0 and "streaming at " in out.stdout else ""  # the daemon's line

        shown = wait_until(status_answers, 90, "status to read the demo's daemon")
        assert "not answering" not in shown, shown
        # one lag, /readyz's: staging's commit delay (whole binlog seconds) was shown beside it (#33 item 5)
        assert len(re.findall(r"\blag\b", shown)) == 1 and "commit delay" not in shown, shown
    finally:
        proc.terminate()
        proc.wait(60)
