"""Chaos: random faults from the fault list during a mixed load; at the end source = staging =
star rebuild = warehouse. A short run is part of the default suite; the long one is marked slow
(`.venv/bin/pytest -m slow`). Both print their figures."""

from __future__ import annotations

import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg
import pymysql
import pytest

from cdc.dev.localservers import MariaDBServer, MySQLServer, PostgresServer
from cdc.ops.star_ops import check_star
from cdc.settings import load_settings
from tests.helpers import SALES_DDL, Daemons, OutageLoad, execute, pg_database, source_rows, staging_rows, wait_until

Conn = pymysql.connections.Connection


class SalesLoad:
    """Inserts, counter-like quantity bumps, price changes and deletes on sales_data, some with
    partial row images: one transaction of an :class:`OutageLoad`."""

    def __init__(self, seed: int) -> None:
        self.rnd = random.Random(seed)
        self.next_id = 100_000

    def __call__(self, cur: Any) -> None:
        r = self.rnd
        # another client's row images: some transactions write only the columns they set
        cur.execute(f"SET SESSION binlog_row_image = '{r.choice(['FULL', 'MINIMAL'])}'")
        for _ in range(r.randint(1, 5)):
            kind = r.choices(["insert", "bump", "reprice", "delete"], [50, 30, 10, 10])[0]
            lo = r.randint(1, self.next_id)
            if kind == "insert":
                self.next_id += 10  # taken before the commit, whose answer an outage may lose
                cur.executemany("INSERT INTO sales_data VALUES (%s, %s, %s, %s, %s, %s)", [
                    (self.next_id - 10 + i, r.randint(1, 40), r.randint(1, 500), r.randint(100, 9999) / 100,
                     r.randint(1, 5), f"2021-{r.randint(1, 12):02d}-{r.randint(1, 28):02d} 12:00:00")
                    for i in range(r.randint(1, 10))])
            elif kind == "bump":
                cur.execute("UPDATE sales_data SET quantity = quantity + 1, timestamp = timestamp"
                            " WHERE rowid BETWEEN %s AND %s", (lo, lo + 50))
            elif kind == "reprice":
                cur.execute("UPDATE sales_data SET price = price + 1 WHERE rowid BETWEEN %s AND %s", (lo, lo + 20))
            else:
                cur.execute("DELETE FROM sales_data WHERE rowid BETWEEN %s AND %s", (lo, lo + 3))


@pytest.mark.parametrize(("source_server", "seconds"), [
    pytest.param("mariadb", 20, id="short"), pytest.param("mariadb", 180, id="long", marks=pytest.mark.slow),
    pytest.param("mysql", 15, id="short-mysql", marks=pytest.mark.slow)], indirect=["source_server"])  # #31
def test_random_faults_under_load_end_with_every_copy_equal(
        seconds: int, source_server: MariaDBServer | MySQLServer, postgres: PostgresServer, source_db: str,
        staging_db: str, settings_env: dict[str, str], tmp_path: Path, daemons: Daemons) -> None:
    mariadb = source_server  # the source: MariaDB, or MySQL in the short MySQL run
    mysql = isinstance(source_server, MySQLServer)
    seeder = pymysql.connect(host="127.0.0.1", port=mariadb.port, user="root", database=source_db, autocommit=True)
    execute(seeder, SALES_DDL)
    with seeder.cursor() as cur:
        cur.executemany("INSERT INTO sales_data VALUES (%s, %s, 1, 9.99, 1, '2021-06-01 08:00:00')",
                        [(i, i % 40) for i in range(1, 5001)])
    seeder.close()
    rnd = random.Random(20261129 + seconds)
    with pg_database(postgres, staging_db + "_chaos_wh") as wh_db:
        env = {**settings_env, "SOFTCART_WAREHOUSE_URL": postgres.url(wh_db),
               "SOFTCART_SPOOL_DIR": str(tmp_path / "spool"), "SOFTCART_FLUSH_INTERVAL_SECONDS": "1",
               "SOFTCART_RETRY_MAX_SECONDS": "2", "SOFTCART_CHUNK_ROWS": "300"}
        settings = load_settings(environ={}, **{k.removeprefix("SOFTCART_").lower(): v for k, v in env.items()})
        from loader.backends import open_warehouse

        wh = open_warehouse(settings.warehouse_config)
        wh.init()
        wh.close()
        daemon = daemons(env, tmp_path / "daemon.log")
        daemon.start()
        load = OutageLoad(mariadb.port, source_db, SalesLoad(seed=seconds), pause=0.01).start()
        faults: Counter[str] = Counter()
        ends = time.monotonic() + seconds
        try:
            while time.monotonic() < ends:
                time.sleep(rnd.uniform(0.5, 3.0))  # a random moment, not a synchronisation
                fault = rnd.choice(["daemon", "daemon", "source", "postgres"])
                if fault == "daemon":
                    daemon.kill()
                    daemon.start()
                elif fault == "source":
                    mariadb.kill()
                    mariadb.start()
                else:
                    postgres.kill()
                    postgres.start()
                faults[fault] += 1
            load.finish()
            source = pymysql.connect(host="127.0.0.1", port=mariadb.port, user="root", database=source_db,
                                     autocommit=True)
            staging = psycopg.connect(postgres.url(staging_db), autocommit=True)
            warehouse = psycopg.connect(postgres.url(wh_db), autocommit=True)
            daemon.wait_streaming(120)

            def all_equal() -> bool:
                from tests.helpers import assert_warehouse_equals_star

                with source.cursor() as cur:
                    cur.execute("SHOW BINARY LOG STATUS" if mysql else "SHOW MASTER STATUS")  # MySQL 8.4 renamed it
                    file, pos = cur.fetchone()[:2]
                row = staging.execute("SELECT binlog_file, binlog_pos FROM softcart.position").fetchone()
                if row is None or (row[0], row[1]) < (file, pos):
                    return False
                try:
                    assert_warehouse_equals_star(staging, warehouse)
                except AssertionError:
                    return False
                return True

            wait_until(all_equal, 180, "staging and the warehouse to settle")
            assert daemon.stop(30) == 0
            from cdc.capture.mysql import read_table

            want = source_rows(source, source_db, "sales_data")
            got = staging_rows(staging, read_table(source, source_db, "sales_data"))
            lost = len(set(want) - set(got))
            extra = len(set(got) - set(want))
            differences = check_star(settings)
            from tests.helpers import FAULT_FIGURES

            label = f"chaos, {seconds} s" + (", MySQL" if mysql else "")
            FAULT_FIGURES.append((label, ", ".join(f"{k} {v}" for k, v in faults.items()), len(want),
                                  lost, extra))
            print(f"\nchaos ({seconds} s): faults injected {dict(faults)}, {load.committed} source transactions,"
                  f" {len(want)} rows compared, rows lost {lost}, rows duplicated or wrong {extra},"
                  f" star differences {len(differences)}")
            assert lost == 0 and extra == 0 and differences == []
            # the partial images were read whole, from the source, under the faults too
            assert "absent_columns_filled" in (tmp_path / "daemon.log").read_text()
            source.close()
            staging.close()
            warehouse.close()
        finally:
            load.finish()
            for server in (mariadb, postgres):
                if server.proc is None:
                    server.start()
