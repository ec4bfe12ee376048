"""Online copies (#18): a table added to the settings is copied in primary-key chunks while the
stream goes on (loader/online.py, cdc/capture/online.py), exactly: changes to the keys of the
chunk being read, a restart mid-copy, a table removed and added back all end with source = staging
(= star rebuild)."""

from __future__ import annotations

import random
import threading
from typing import Any

import psycopg
import pymysql

from cdc.dev.localservers import MariaDBServer
from cdc.ops.star_ops import check_star
from cdc.settings import Settings
from tests.helpers import SALES_DDL, assert_same, execute, running_pipeline, wait_caught_up, wait_until

Conn = pymysql.connections.Connection
PG = psycopg.Connection[Any]

ITEMS = "CREATE TABLE items (id INT PRIMARY KEY, grp VARCHAR(10) NOT NULL, v INT)"


def copy_state(staging: PG, table: str) -> tuple[Any, ...] | None:
    return staging.execute("SELECT rows_copied, chunks, finished_at IS NOT NULL FROM softcart.online_copy"
                           " WHERE source_table = %s", (table,)).fetchone()


def finished(staging: PG, table: str) -> bool:
    state = copy_state(staging, table)
    return bool(state and state[2])


class Churn:
    """Changes to ``items`` and ``sales_data`` in a thread of their own, until stopped: updates,
    deletes, inserts and primary-key changes over the whole key range, so every chunk's keys
    change while it is read."""

    def __init__(self, mariadb: MariaDBServer, database: str, keys: int, seed: int) -> None:
        self.conn = pymysql.connect(host="127.0.0.1", port=mariadb.port, user="root", database=database,
                                    autocommit=True)
        self.keys, self.rnd = keys, random.Random(seed)
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.changes = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Churn:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self._thread.join(30)
        self.conn.close()
        assert not self.errors, self.errors

    def _run(self) -> None:
        r, n = self.rnd, 0
        try:
            with self.conn.cursor() as cur:
                while not self.stop.is_set():
                    k = r.randrange(1, self.keys * 2)
                    kind = r.randrange(5)
                    if kind == 0:
                        cur.execute("UPDATE items SET v = v + 1, grp = %s WHERE id = %s", (f"g{n % 7}", k))
                    elif kind == 1:
                        cur.execute("DELETE FROM items WHERE id = %s", (k,))
                    elif kind == 2:
                        cur.execute("INSERT IGNORE INTO items VALUES (%s, 'new', %s)", (k, n))
                    elif kind == 3:  # a primary-key change, inside the range or out of it
                        cur.execute("UPDATE IGNORE items SET id = %s WHERE id = %s", (r.randrange(1, self.keys * 2), k))
                    else:
                        cur.execute("INSERT INTO sales_data VALUES (%s, 1, 1, 1.00, 1, '2021-01-01 00:00:00')"
                                    " ON DUPLICATE KEY UPDATE quantity = quantity + 1", (k,))
                    n += 1
                    self.changes = n
        except BaseException as exc:
            self.errors.append(exc)


def test_a_table_added_while_changes_stream_into_it_is_copied_online_and_ends_equal(
        settings: Settings, mariadb: MariaDBServer, source: Conn, staging: PG, source_db: str) -> None:
    execute(source, SALES_DDL, ITEMS)
    with source.cursor() as cur:
        cur.executemany("INSERT INTO items VALUES (%s, %s, %s)", [(i, f"g{i % 5}", i) for i in range(1, 3001)])
    with running_pipeline(settings):  # sales_data only
        wait_caught_up(staging, source)
    added = settings.model_copy(update={"source_tables": ["sales_data", "items"], "online_copy_chunk_rows": 100,
                                        "online_copy_rows_per_second": 6000.0})
    with Churn(mariadb, source_db, 3000, seed=18) as churn, running_pipeline(added):
        wait_until(lambda: finished(staging, "items"), 120, "the online copy to finish")
        assert churn.changes > 100, "changes streamed while the copy ran"
    rows_copied, chunks, _ = copy_state(staging, "items") or (0, 0, False)
    assert chunks >= 25 and rows_copied > 2000
    with running_pipeline(added):
        wait_caught_up(staging, source)
    assert assert_same(source, staging, source_db, "items") > 2000
    assert_same(source, staging, source_db, "sales_data")
    assert check_star(added) == []
