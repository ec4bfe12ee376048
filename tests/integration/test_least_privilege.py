"""The daemon, its flush and the reconcile work with exactly the grants `deploy/sql/` documents,
and no more: the statements of those files, run as they are (names and passwords substituted)."""

from __future__ import annotations

import re
from pathlib import Path

import psycopg
import pymysql

from cdc.dev.localservers import MariaDBServer, PostgresServer
from tests.helpers import ROOT, SALES_DDL, Daemons, cli, execute, wait_until

SQL = ROOT / "deploy" / "sql"


def _statements(path: Path) -> list[str]:
    """The file's statements as psql runs them: split at each ';' outside a $$-quoted body (the
    warehouse file's upgrade step is a DO block)."""
    text = "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("--"))
    out, current = [], ""
    for i, part in enumerate(text.split("$$")):
        if i % 2:  # inside $$ ... $$
            current += f"$${part}$$"
            continue
        first, *rest = part.split(";")
        current += first
        for piece in rest:
            out.append(current)
            current = piece
    out.append(current)
    return [s.strip() for s in out if s.strip()]


def test_daemon_flush_and_reconcile_run_with_the_documented_grants_only(
        mariadb: MariaDBServer, postgres: PostgresServer, source_db: str, staging_db: str, warehouse_db: str,
        source: pymysql.connections.Connection, server_id: int, tmp_path: Path, daemons: Daemons) -> None:
    execute(source, SALES_DDL, "INSERT INTO sales_data VALUES (1, 1, 1, 9.99, 2, '2024-01-01 10:00:00')")
    grants = _statements(SQL / "source-and-staging-grants.sql")
    mysql_part = [s.replace("'change-me'", "'cdc-pw'").replace("sales.sales_data", f"`{source_db}`.sales_data")
                  for s in grants if "'softcart_cdc'" in s]
    pg_part = [s.replace("'change-me'", "'stg-pw'").replace("DATABASE softcart ", f'DATABASE "{staging_db}" ')
               for s in grants if "softcart_cdc" not in s]
    assert len(mysql_part) == 3 and len(pg_part) == 2
    execute(source, *mysql_part)
    with psycopg.connect(postgres.url(staging_db), autocommit=True) as pg:
        for stmt in pg_part:
            pg.execute(stmt.encode())
    # The warehouse: tables made by its owner (the file), the loader granted what the file says.
    with psycopg.connect(postgres.url(warehouse_db), autocommit=True) as wh:
        wh.execute("CREATE ROLE softcart_loader LOGIN PASSWORD 'wh-pw'")
        for stmt in _statements(SQL / "postgresql-warehouse.sql"):
            wh.execute(stmt.replace("CURRENT_DATABASE_NAME", f'"{warehouse_db}"').encode())
    env = {
        "SOFTCART_SOURCE_URL": f"mysql://softcart_cdc:cdc-pw@127.0.0.1:{mariadb.port}/{source_db}",
        "SOFTCART_STAGING_URL": f"postgresql://softcart:stg-pw@127.0.0.1:{postgres.port}/{staging_db}",
        "SOFTCART_WAREHOUSE_URL": f"postgresql://softcart_loader:wh-pw@127.0.0.1:{postgres.port}/{warehouse_db}",
        "SOFTCART_SPOOL_DIR": str(tmp_path / "spool"), "SOFTCART_SERVER_ID": str(server_id),
        "SOFTCART_METRICS_LISTEN": "127.0.0.1:0", "SOFTCART_HEARTBEAT_SECONDS": "1",
        "SOFTCART_FLUSH_INTERVAL_SECONDS": "1", "SOFTCART_BATCH_MAX_SECONDS": "0.2",
    }
    checked = cli("check", env=env)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    daemon = daemons(env, tmp_path / "daemon.log")
    daemon.start()
    try:
        daemon.wait_streaming()
        execute(source, "INSERT INTO sales_data VALUES (2, 2, 2, 5.00, 3, '2024-01-02 10:00:00')",
                "UPDATE sales_data SET quantity = 4 WHERE rowid = 1")
        with psycopg.connect(postgres.url(warehouse_db), autocommit=True) as wh:
            wait_until(lambda: wh.execute("SELECT rowid, quantity FROM factsales ORDER BY 1").fetchall()
                       == [(1, 4), (2, 3)], 60, "both sales in the warehouse")
        report = cli("reconcile", env=env)
        assert report.returncode == 0, report.stdout + report.stderr
    finally:
        assert daemon.stop() == 0
    assert "permission denied" not in (tmp_path / "daemon.log").read_text().lower()
    # And no more than that: the daemon's user can't read the rest of the source.
    execute(source, "CREATE TABLE secret (id INT PRIMARY KEY)")
    denied = pymysql.connect(host="127.0.0.1", port=mariadb.port, user="softcart_cdc", password="cdc-pw",
                             database=source_db)
    try:
        with denied.cursor() as cur:
            cur.execute("SELECT * FROM secret")
        raise AssertionError("the daemon's user could read a table it was not granted")
    except pymysql.err.OperationalError as exc:
        assert re.search(r"denied", str(exc))
    finally:
        denied.close()
