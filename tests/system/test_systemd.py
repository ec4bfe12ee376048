"""The operator's path on a real, booted systemd (a container, tests/system/nspawn.py): README.md's
install lines run as written, then the service is what the README says it is.

The container shares the host's network: the daemon inside reaches this run's private MariaDB and
PostgreSQL on 127.0.0.1, and the test scrapes its metrics from outside. Test-only drop-ins shorten
two waits the shipped units make long on purpose (the watchdog's 90 s, the timer's 02:30); each
says so where it is written.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pymysql
import pytest

from cdc.dev.localservers import MariaDBServer, PostgresServer, free_port
from cdc.dev.seed import SALES_DDL
from tests.helpers import pg_database, wait_until
from tests.system.nspawn import Container, booted, why_not

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(why_not() is not None, reason=f"no booted systemd here: {why_not()}")
SOURCE_PASSWORD = "Src-Pa55-in-a-credential"
SOURCE_USER = "softcart_sys_cdc"
ETC = "/etc/softcart-sync"
CLI = "/opt/softcart-sync/bin/softcart-sync"


def readme_install_block() -> str:
    """The README's install lines, exactly as written (the block after its marker comment)."""
    text = (ROOT / "README.md").read_text()
    marker = text.index("<!-- the install, as tests/system/test_systemd.py runs it")
    block = re.search(r"```sh\n(.*?)```", text[marker:], re.S)
    assert block is not None, "the README's install block is gone"
    return block.group(1)


def with_urls(block: str, urls: dict[str, str]) -> str:
    """The block with the example URLs of its `export SOFTCART_*_URL=` lines replaced by ours."""
    for name, url in urls.items():
        block, n = re.subn(rf"^export {name}=\S+", f"export {name}={url}", block, flags=re.M)
        assert n == 1, f"the README's install block has no `export {name}=` line"
    return block


@dataclass
class Source:
    mariadb: MariaDBServer
    database: str

    def execute(self, *statements: str) -> None:
        conn = pymysql.connect(host="127.0.0.1", port=self.mariadb.port, user="root", database=self.database,
                               autocommit=True)
        with conn.cursor() as cur:
            for s in statements:
                cur.execute(s)
        conn.close()

    def rows(self) -> set[tuple[object, ...]]:
        conn = pymysql.connect(host="127.0.0.1", port=self.mariadb.port, user="root", database=self.database)
        with conn.cursor() as cur:
            cur.execute("SELECT rowid, product_id, price, quantity FROM sales_data")
            out = set(cur.fetchall())
        conn.close()
        return out

    def insert(self, first: int, count: int) -> None:
        values = ",".join(f"({i}, {i % 7}, {i % 5}, {i}.25, {i % 3 + 1}, '2026-11-{i % 28 + 1:02d} 10:00:00')"
                          for i in range(first, first + count))
        self.execute(f"INSERT INTO sales_data VALUES {values}")


def pg_rows(postgres: PostgresServer, database: str, query: str) -> set[tuple[object, ...]]:
    with psycopg.connect(postgres.url(database), autocommit=True) as conn:
        return set(conn.execute(query).fetchall())


@dataclass
class Host:
    box: Container
    source: Source
    postgres: PostgresServer
    staging: str
    warehouse: str
    metrics_port: int
    make_source: object
    make_pg: object

    def run(self, script: str, **kw: object) -> str:
        return self.box.run(script, **kw).stdout  # type: ignore[arg-type]

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.run(f"systemctl show {unit} " + " ".join(f"-p {p}" for p in props))
        return dict(line.split("=", 1) for line in out.strip().splitlines())

    def staging_rows(self, staging: str | None = None) -> set[tuple[object, ...]]:
        return pg_rows(self.postgres, staging or self.staging,
                       "SELECT rowid, product_id, price, quantity FROM staging.sales_data")

    def synced(self, source: Source | None = None, staging: str | None = None) -> bool:
        return (source or self.source).rows() == self.staging_rows(staging)


@contextlib.contextmanager
def source_database(mariadb: MariaDBServer, name: str) -> Iterator[Source]:
    conn = pymysql.connect(host="127.0.0.1", port=mariadb.port, user="root", autocommit=True)
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}`")
        # An account of our own: the MariaDB server is shared with the other tests, and one of them
        # makes a softcart_cdc with a password of its own (IF NOT EXISTS would keep that one).
        cur.execute(f"CREATE USER IF NOT EXISTS '{SOURCE_USER}'@'%%' IDENTIFIED BY %s", (SOURCE_PASSWORD,))
        cur.execute(f"ALTER USER '{SOURCE_USER}'@'%%' IDENTIFIED BY %s", (SOURCE_PASSWORD,))
        # deploy/sql/source-and-staging-grants.sql
        cur.execute(f"GRANT REPLICATION SLAVE, BINLOG MONITOR ON *.* TO '{SOURCE_USER}'@'%'")
        cur.execute(f"GRANT SELECT ON `{name}`.* TO '{SOURCE_USER}'@'%'")
    source = Source(mariadb, name)
    source.execute(SALES_DDL)
    try:
        yield source
    finally:
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        conn.close()


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return r.read().decode()


@pytest.fixture(scope="module")
def host(mariadb: MariaDBServer, postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    work = tmp_path_factory.mktemp("systemd")
    tag = os.getpid()
    with contextlib.ExitStack() as stack:
        source = stack.enter_context(source_database(mariadb, f"sys_sales_{tag}"))
        staging = stack.enter_context(pg_database(postgres, f"sys_staging_{tag}"))
        warehouse = stack.enter_context(pg_database(postgres, f"sys_dw_{tag}"))
        source.insert(1, 500)
        box = stack.enter_context(booted(ROOT, work))
        port = free_port()
        block = with_urls(readme_install_block(), {
            "SOFTCART_SOURCE_URL": f"mysql://{SOURCE_USER}@127.0.0.1:{mariadb.port}/{source.database}",
            "SOFTCART_STAGING_URL": postgres.url(staging),
            "SOFTCART_WAREHOUSE_URL": postgres.url(warehouse)})
        settings = {"SOFTCART_SERVER_ID": "7101", "SOFTCART_METRICS_LISTEN": f"127.0.0.1:{port}",
                    "SOFTCART_FLUSH_INTERVAL_SECONDS": "1", "SOFTCART_HEARTBEAT_SECONDS": "1",
                    "SOFTCART_SOURCE_PASSWORD": SOURCE_PASSWORD}
        out = box.run("set -euxo pipefail\ncd /src\n" + block, env=settings, timeout=900)
        assert "ok" in out.stdout, out.stdout + out.stderr  # the check's lines
        # The root has no C compiler (nspawn.PACKAGES): the wheel is built without the compiled row
        # decoder, the install goes on with the Python one and says so.
        assert "binlog row decoder: Python: the compiled one was not built" in out.stdout, out.stdout[-3000:]

        def make_source(name: str) -> contextlib.AbstractContextManager[Source]:
            return source_database(mariadb, f"{name}_{tag}")

        def make_pg(name: str) -> contextlib.AbstractContextManager[str]:
            return pg_database(postgres, f"{name}_{tag}")  # type: ignore[no-any-return]

        yield Host(box, source, postgres, staging, warehouse, port, make_source, make_pg)


def restarted(host: Host, before: dict[str, str]) -> bool:
    """Running again, as another process than ``before``'s, and ready (active: READY came)."""
    now = host.show("softcart-sync", "ActiveState", "MainPID")
    return now["ActiveState"] == "active" and now["MainPID"] not in ("0", before["MainPID"])

def test_the_readmes_install_runs_as_written_and_the_service_comes_up_ready_and_syncs(host: Host) -> None:
    unit = host.show("softcart-sync", "ActiveState", "SubState", "StatusText", "UnitFileState", "NRestarts")
    assert (unit["ActiveState"], unit["SubState"], unit["UnitFileState"]) == ("active", "running", "enabled"), unit
    assert unit["StatusText"], unit  # STATUS= from the daemon: snapshotting, then streaming
    wait_until(lambda: host.show("softcart-sync", "StatusText")["StatusText"].startswith("streaming at "), 60,
               "STATUS= to say it streams")
    assert unit["NRestarts"] == "0", unit
    # root-only settings and passwords; the service reads them as credentials
    assert host.run(f"stat -c '%a %U %n' {ETC} {ETC}/softcart-sync.toml {ETC}/source-password").split("\n")[:3] == [
        f"750 root {ETC}", f"640 root {ETC}/softcart-sync.toml", f"600 root {ETC}/source-password"]
    assert SOURCE_PASSWORD not in host.run(f"cat {ETC}/softcart-sync.toml")
    assert host.run("systemctl is-enabled softcart-sync-reconcile.timer").strip() == "enabled"
    metrics = scrape(host.metrics_port)
    assert "softcart_ready 1.0" in metrics and "softcart_build_info{" in metrics
    host.source.insert(501, 200)
    host.source.execute("UPDATE sales_data SET quantity = quantity + 10 WHERE rowid <= 50",
                        "DELETE FROM sales_data WHERE rowid BETWEEN 100 AND 120")
    wait_until(host.synced, 60, "staging to equal the source")
    facts = "SELECT rowid, product_id, price, quantity FROM factsales"
    wait_until(lambda: pg_rows(host.postgres, host.warehouse, facts) == host.source.rows(), 60,
               "the warehouse's facts to equal the source")
    # the command line as the README shows it, as root, finds the settings and passwords itself
    status = host.run(f"{CLI} --config {ETC}/softcart-sync.toml status")
    assert "position" in status.lower(), status


def test_sigkill_gets_it_restarted_and_nothing_is_lost(host: Host) -> None:
    before = host.show("softcart-sync", "MainPID", "NRestarts")
    host.run("systemctl kill -s KILL --kill-whom=main softcart-sync")
    host.source.insert(1001, 300)  # while it is down or coming back
    wait_until(lambda: restarted(host, before), 60, "systemd to restart the killed daemon")
    assert int(host.show("softcart-sync", "NRestarts")["NRestarts"]) == int(before["NRestarts"]) + 1
    wait_until(host.synced, 60, "staging to equal the source after the restart")


def test_sigstop_lets_the_watchdog_kill_it_and_systemd_restart_it(host: Host) -> None:
    # Test-only: the shipped WatchdogSec=90s would make this wait a minute and a half.
    host.run("mkdir -p /etc/systemd/system/softcart-sync.service.d && printf '[Service]\\nWatchdogSec=4s\\n' "
             "> /etc/systemd/system/softcart-sync.service.d/test-watchdog.conf && systemctl daemon-reload "
             "&& systemctl restart softcart-sync")
    try:
        before = host.show("softcart-sync", "MainPID", "NRestarts")
        host.run("systemctl kill -s STOP --kill-whom=main softcart-sync")
        wait_until(lambda: restarted(host, before), 60,
                   "the watchdog to end the stopped daemon and systemd to restart it")
        journal = host.run("journalctl -u softcart-sync -o cat --no-pager")
        assert "Watchdog timeout" in journal, journal[-3000:]
    finally:
        host.run("rm -f /etc/systemd/system/softcart-sync.service.d/test-watchdog.conf && systemctl daemon-reload "
                 "&& systemctl restart softcart-sync")
    host.source.insert(2001, 50)
    wait_until(host.synced, 60, "staging to equal the source after the watchdog's restart")


def test_systemctl_stop_exits_0_within_its_timeout(host: Host) -> None:
    host.source.insert(3001, 200)
    started = time.monotonic()
    host.run("systemctl stop softcart-sync")
    took = time.monotonic() - started
    unit = host.show("softcart-sync", "ActiveState", "Result", "ExecMainStatus", "TimeoutStopUSec")
    assert (unit["ActiveState"], unit["Result"], unit["ExecMainStatus"]) == ("inactive", "success", "0"), unit
    assert took < 45, took
    host.run("systemctl start softcart-sync")  # Type=notify: returns once READY
    wait_until(host.synced, 60, "staging to equal the source after the clean stop")


def test_a_wrong_setting_fails_the_start_once_names_the_setting_and_is_not_restarted(host: Host) -> None:
    wrong = host.postgres.url("no_such_database")
    host.run(f"printf 'SOFTCART_STAGING_URL={wrong}\\n' > {ETC}/softcart-sync.env")
    try:
        failed = host.box.run("systemctl restart softcart-sync", check=False)
        assert failed.returncode != 0
        unit = host.show("softcart-sync", "ActiveState", "ExecMainStatus", "NRestarts")
        assert (unit["ActiveState"], unit["ExecMainStatus"]) == ("failed", "2"), unit
        # not restarted: still failed, no restart counted, well past RestartSec=5s
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            assert host.show("softcart-sync", "ActiveState", "NRestarts") == {"ActiveState": "failed",
                                                                            "NRestarts": unit["NRestarts"]}
            time.sleep(0.5)
        errors = host.run("journalctl -u softcart-sync -p err -o cat --no-pager")
        assert "SOFTCART_STAGING_URL" in errors, errors[-3000:]  # journalctl -p err finds the error event
    finally:
        host.run(f"rm -f {ETC}/softcart-sync.env && systemctl reset-failed softcart-sync; "
                 "systemctl start softcart-sync")
    wait_until(host.synced, 60, "staging to equal the source once the setting is fixed")


def test_the_reconcile_timer_fires_and_writes_the_textfile_node_exporter_reads(host: Host) -> None:
    # Test-only: fire in a second rather than at 02:30 (plus up to 15 min of randomised delay).
    host.run("mkdir -p /etc/systemd/system/softcart-sync-reconcile.timer.d && printf '[Timer]\\nOnCalendar=\\n"
             "OnActiveSec=1s\\nRandomizedDelaySec=0\\n' > /etc/systemd/system/softcart-sync-reconcile.timer.d/t.conf"
             " && systemctl daemon-reload && systemctl restart softcart-sync-reconcile.timer")
    textfile = "/var/lib/prometheus/node-exporter/softcart_reconcile.prom"
    wait_until(lambda: host.box.run(f"test -f {textfile}", check=False).returncode == 0, 300,
               "the timer's reconcile to write its textfile")
    text = host.run(f"cat {textfile}")
    assert 'softcart_reconcile_completed{pipeline="default"} 1.0' in text, text
    assert host.run(f"stat -c '%a %U' {textfile}").strip() == "644 root"
    run = host.show("softcart-sync-reconcile.service", "Result", "ExecMainStatus")
    assert run["Result"] == "success" and run["ExecMainStatus"] in ("0", "1"), run


def test_two_template_instances_run_side_by_side(host: Host) -> None:
    with contextlib.ExitStack() as stack:
        instances = []
        for n, name in enumerate(("eu", "us")):
            source = stack.enter_context(host.make_source(f"sys_{name}"))  # type: ignore[operator]
            staging = stack.enter_context(host.make_pg(f"sys_staging_{name}"))  # type: ignore[operator]
            port = free_port()
            source.insert(1, 100 + n)
            env = {"SOFTCART_SOURCE_URL": f"mysql://{SOURCE_USER}@127.0.0.1:{source.mariadb.port}/{source.database}",
                   "SOFTCART_STAGING_URL": host.postgres.url(staging), "SOFTCART_SERVER_ID": str(7201 + n),
                   "SOFTCART_METRICS_LISTEN": f"127.0.0.1:{port}", "SOFTCART_SOURCE_PASSWORD": SOURCE_PASSWORD}
            host.box.run(f"cd /src && deploy/install.sh --instance {name}", env=env, timeout=600)
            instances.append((name, source, staging, port))
        host.run("systemctl enable --now softcart-sync@eu softcart-sync@us")
        try:
            for name, source, staging, port in instances:
                unit = host.show(f"softcart-sync@{name}", "ActiveState", "StatusText")
                assert unit["ActiveState"] == "active", unit
                source.insert(1000, 20)
                wait_until(lambda s=source, st=staging: host.synced(s, st), 60, f"instance {name} to sync")
                wait_until(lambda p=port: "softcart_ready 1.0" in scrape(p), 60, f"instance {name} to be ready")
            assert host.show("softcart-sync", "ActiveState")["ActiveState"] == "active"
            positions = pg_rows(host.postgres, instances[0][2], "SELECT pipeline FROM softcart.position")
            assert positions == {("eu",)}, positions
        finally:
            host.run("systemctl disable --now softcart-sync@eu softcart-sync@us")
