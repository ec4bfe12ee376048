"""A server_id another replica already uses is one clear message naming SOFTCART_SERVER_ID and a
non-zero exit (the source would otherwise keep dropping one of the two connections), from
`check` and from `run`; the daemon's own earlier registration is not a clash."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pymysql
import pytest
from pymysqlreplication import BinLogStreamReader

from cdc.capture.flavor import Flavor
from cdc.dev.localservers import MariaDBServer, MySQLServer
from tests.helpers import SALES_DDL, Daemons, cli, execute, wait_until

pytestmark = pytest.mark.both_sources  # MySQL 8.4 and later know SHOW REPLICAS only


@pytest.fixture
def other_replica(source_server: MariaDBServer | MySQLServer, server_id: int) -> Iterator[int]:
    """Another replica, registered (SHOW SLAVE HOSTS, SHOW REPLICAS) with ``server_id``, streaming."""
    reader = BinLogStreamReader(
        connection_settings={"host": "127.0.0.1", "port": source_server.port, "user": "root", "passwd": ""},
        server_id=server_id, blocking=True, report_slave="replica-7.internal")
    stop = threading.Event()

    def read() -> None:
        try:
            for _ in reader:
                if stop.is_set():
                    return
        except Exception:
            return

    t = threading.Thread(target=read, daemon=True)
    t.start()
    root = pymysql.connect(host="127.0.0.1", port=source_server.port, user="root")
    with root.cursor() as cur:
        cur.execute("SELECT VERSION()")
        listing = Flavor.from_version(str((cur.fetchone() or ("",))[0])).replica_hosts_sql

    def registered() -> bool:
        with root.cursor() as cur:
            cur.execute(listing)
            return any(int(r[0]) == server_id for r in cur.fetchall())

    wait_until(registered, 30, "the other replica to register")
    yield server_id
    stop.set()
    with root.cursor() as cur:  # end its blocking read from the server's side
        cur.execute("KILL %s", (reader._stream_connection.thread_id(),))
    t.join(30)
    root.close()


def test_check_and_run_refuse_a_server_id_in_use(other_replica: int, settings_env: dict[str, str],
                                                 source: pymysql.connections.Connection, tmp_path: Path,
                                                 daemons: Daemons) -> None:
    execute(source, SALES_DDL)
    checked = cli("check", env=settings_env)
    assert checked.returncode == 1
    assert (f"FAIL  server_id {other_replica} is not used by another replica: server_id {other_replica} is already"
            " used by the replica at replica-7.internal") in checked.stdout
    assert "SOFTCART_SERVER_ID" in checked.stdout
    daemon = daemons(settings_env, tmp_path / "daemon.log")
    daemon.start()
    assert daemon.proc is not None
    assert daemon.proc.wait(60) != 0
    assert "set SOFTCART_SERVER_ID to an id no server or replica uses" in (tmp_path / "daemon.log").read_text()


def test_the_daemons_own_registration_is_not_a_clash(settings_env: dict[str, str],
                                                      source: pymysql.connections.Connection,
                                                      tmp_path: Path, daemons: Daemons) -> None:
    execute(source, SALES_DDL)
    daemon = daemons(settings_env, tmp_path / "daemon.log")
    daemon.start()
    try:
        daemon.wait_streaming()
        out = cli("check", env=settings_env)  # our daemon is registered under its own name
        assert "is not used by another replica" in out.stdout and out.returncode == 0, out.stdout
        daemon.kill()  # its registration lingers for a moment
        daemon.start()
        daemon.wait_streaming()
    finally:
        assert daemon.stop() == 0
