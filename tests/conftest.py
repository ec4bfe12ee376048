"""Shared fixtures: one private MariaDB, one private MySQL (started when a test asks for it) and
one private PostgreSQL per test run, fresh databases per test.

The source of a test is ``source_server``: MariaDB, and MySQL too for a test marked
``both_sources`` (run once on each; its id ends in ``[mariadb]`` / ``[mysql]``). A test of a
feature one server has alone asks for ``mariadb`` (or ``mysql``) by name."""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pymysql
import pytest
from hypothesis import settings as hypothesis_settings

from cdc.dev.localservers import MariaDBServer, MySQLServer, PostgresServer
from cdc.settings import Settings, load_settings
from tests.helpers import Daemon, Daemons, pg_database

# No time limit per example: a test asserts what happens, never how fast (speed is the benchmarks'
# job), and a cold first example on a busy two-core machine took over hypothesis's 200 ms once.
hypothesis_settings.register_profile("softcart", deadline=None)
hypothesis_settings.load_profile("softcart")

# What the default spool folder (cdc.settings.default_spool) resolves to in this run: never the
# user's own ~/.local/state, nor a systemd unit's state folder.
os.environ["XDG_STATE_HOME"] = tempfile.mkdtemp(prefix="softcart-test-state-")
os.environ.pop("STATE_DIRECTORY", None)

_counter = itertools.count(1)


@pytest.fixture(scope="session")
def server_root() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="softcart-test-"))
    root.chmod(0o755)  # PostgreSQL runs as 'postgres' when we are root
    yield root
    if not os.environ.get("SOFTCART_TEST_KEEP"):
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def mariadb(server_root: Path) -> Iterator[MariaDBServer]:
    server = MariaDBServer(server_root / "mariadb")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mysql(server_root: Path) -> Iterator[MySQLServer]:
    server = MySQLServer(server_root / "mysql")
    server.start()
    yield server
    server.remove()


Source = MariaDBServer | MySQLServer


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "source_server" in metafunc.fixturenames and metafunc.definition.get_closest_marker("both_sources"):
        metafunc.parametrize("source_server", ["mariadb", "mysql"], indirect=True)


@pytest.fixture
def source_server(request: pytest.FixtureRequest) -> Source:
    """The test's source server: ``mariadb``, or ``mysql`` for the second run of a test marked
    ``both_sources``."""
    server: Source = request.getfixturevalue(getattr(request, "param", "mariadb"))
    return server


@pytest.fixture(scope="session")
def postgres(server_root: Path) -> Iterator[PostgresServer]:
    server = PostgresServer(server_root / "postgres")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def source_db(source_server: Source) -> Iterator[str]:
    """A fresh, empty source database."""
    name = f"sales_t{next(_counter)}_{os.getpid()}"

    def run(statement: str) -> None:
        # A connection each time: a fault test may have restarted the server in between.
        conn = pymysql.connect(host="127.0.0.1", port=source_server.port, user="root", autocommit=True)
        with conn.cursor() as cur:
            cur.execute(statement)
        conn.close()

    run(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    yield name
    run(f"DROP DATABASE IF EXISTS `{name}`")


@pytest.fixture
def staging_db(postgres: PostgresServer) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for staging."""
    with pg_database(postgres, f"staging_t{next(_counter)}_{os.getpid()}") as name:
        yield name


@pytest.fixture
def server_id() -> int:
    """A replica id no other test's daemon uses (MariaDB drops a duplicate's older connection)."""
    return 1000 + next(_counter)


@pytest.fixture
def settings_env(source_server: Source, postgres: PostgresServer, source_db: str, staging_db: str,
                 server_id: int, tmp_path: Path) -> dict[str, str]:
    """The environment a daemon subprocess needs for this test's databases (a spool of its own:
    the default folder is the same for every command, so tests would share it)."""
    return {
        "SOFTCART_SOURCE_URL": source_server.url(database=source_db),
        "SOFTCART_SPOOL_DIR": str(tmp_path / "spool"),
        "SOFTCART_STAGING_URL": postgres.url(staging_db),
        "SOFTCART_SERVER_ID": str(server_id),
        "SOFTCART_METRICS_LISTEN": "127.0.0.1:0",
        "SOFTCART_BATCH_MAX_SECONDS": "0.2",
        "SOFTCART_HEARTBEAT_SECONDS": "1",
    }


@pytest.fixture
def settings(settings_env: dict[str, str]) -> Settings:
    return load_settings(environ={}, **{k.removeprefix("SOFTCART_").lower(): v for k, v in settings_env.items()})


@pytest.fixture
def source(source_server: Source, source_db: str) -> Iterator[pymysql.connections.Connection]:
    conn = pymysql.connect(host="127.0.0.1", port=source_server.port, user="root", database=source_db,
                           autocommit=True, charset="utf8mb4")
    with conn.cursor() as cur:
        cur.execute("SET SESSION time_zone = '+00:00'")
    yield conn
    with contextlib.suppress(pymysql.err.MySQLError):
        conn.close()


@pytest.fixture
def staging(postgres: PostgresServer, staging_db: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    conn = psycopg.connect(postgres.url(staging_db), autocommit=True)
    yield conn
    conn.close()


@pytest.fixture
def warehouse_db(postgres: PostgresServer, staging_db: str) -> Iterator[str]:
    with pg_database(postgres, staging_db + "_wh") as name:
        yield name


@pytest.fixture
def wh_env(settings_env: dict[str, str], postgres: PostgresServer, warehouse_db: str,
           tmp_path: Path) -> dict[str, str]:
    return {**settings_env, "SOFTCART_WAREHOUSE_URL": postgres.url(warehouse_db),
            "SOFTCART_SPOOL_DIR": str(tmp_path / "spool")}


@pytest.fixture
def wh_settings(wh_env: dict[str, str]) -> Settings:
    return load_settings(environ={}, **{k.removeprefix("SOFTCART_").lower(): v for k, v in wh_env.items()})


@pytest.fixture
def warehouse(postgres: PostgresServer, warehouse_db: str) -> Iterator[psycopg.Connection[Any]]:
    conn = psycopg.connect(postgres.url(warehouse_db), autocommit=True)
    yield conn
    conn.close()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The fault-injection suite's figures: every fault test, what it injected, rows compared,
    rows lost and rows duplicated (both must be 0)."""
    from tests.helpers import FAULT_FIGURES

    if not FAULT_FIGURES:
        return
    tr = terminalreporter
    tr.section("fault injection: figures")
    tr.write_line(f"{'test':<58} {'faults injected':<34} {'rows':>8} {'lost':>5} {'dup':>5}")
    for test, faults, rows, lost, extra in FAULT_FIGURES:
        tr.write_line(f"{test[:58]:<58} {faults[:34]:<34} {rows:>8} {lost:>5} {extra:>5}")
    total = [sum(f[i] for f in FAULT_FIGURES) for i in (2, 3, 4)]  # type: ignore[misc]
    tr.write_line(f"{'total':<58} {len(FAULT_FIGURES):<34} {total[0]:>8} {total[1]:>5} {total[2]:>5}")


@pytest.fixture
def daemons() -> Iterator[Daemons]:
    """Makes daemons (``daemons(env, log)``, started by the test) and kills, at the end of the
    test, every one still running: a failing test leaves no process behind."""
    made: list[Daemon] = []

    def make(env: dict[str, str], log: Path) -> Daemon:
        made.append(Daemon(env, log))
        return made[-1]

    yield make
    for daemon in made:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.kill()
