"""Private MariaDB and PostgreSQL servers started from the system binaries.

Used by ``softcart-sync demo`` and by the test suite: each server lives in a folder of its own, on a
free loopback port, and can be stopped, killed and restarted (fault tests). PostgreSQL refuses to
run as root, so when we are root it runs as the ``postgres`` user.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from transform.errors import FatalError


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_port(port: int, proc: subprocess.Popen[bytes], log: Path, deadline_s: float) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise FatalError(f"server exited with code {proc.returncode}; see {log}:\n{_tail(log)}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise FatalError(f"server did not listen on port {port} within {deadline_s}s; see {log}")


def _stop(proc: subprocess.Popen[bytes] | None, sig: int, timeout_s: float) -> None:
    """Send ``sig`` and wait; SIGKILL after ``timeout_s``."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _find_binary(name: str, *patterns: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for pattern in patterns:
        matches = sorted(glob.glob(pattern))
        if matches:
            return matches[-1]
    raise FatalError(f"cannot find the {name!r} binary; install the server package (see README)")


def _as_postgres() -> tuple[int, int] | None:
    """The uid/gid to run PostgreSQL as: the 'postgres' user when we are root, else ourselves."""
    if os.geteuid() != 0:
        return None
    try:
        pw = pwd.getpwnam("postgres")
    except KeyError as exc:
        raise FatalError("running as root needs a 'postgres' system user to run PostgreSQL") from exc
    return pw.pw_uid, pw.pw_gid


@dataclass
class _MySQLProtocolServer:
    """What a private MariaDB and a private MySQL share: a folder, a free port, the process."""

    base: Path
    port: int = field(default_factory=free_port)
    server_id: int = 1
    extra_args: tuple[str, ...] = ()
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.base / "mysqld.log"

    def url(self, user: str = "root", password: str = "", database: str = "sales") -> str:
        auth = f"{user}:{password}" if password else user
        return f"mysql://{auth}@127.0.0.1:{self.port}/{database}"

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 60.0) -> None:
        _stop(self.proc, sig, timeout_s)
        self.proc = None

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


@dataclass
class MariaDBServer(_MySQLProtocolServer):
    """A private MariaDB with the binlog on in ROW format, full row image and full metadata."""

    @property
    def datadir(self) -> Path:
        return self.base / "data"

    @property
    def socket_path(self) -> Path:
        return self.base / "mysqld.sock"

    def init(self) -> None:
        if (self.datadir / "mysql").exists():
            return
        self.base.mkdir(parents=True, exist_ok=True)
        install = _find_binary("mariadb-install-db", "/usr/bin/mysql_install_db")
        args = [install, "--no-defaults", f"--datadir={self.datadir}", "--skip-test-db",
                "--auth-root-authentication-method=normal"]
        if os.geteuid() == 0:
            args.append("--user=root")
        subprocess.run(args, check=True, capture_output=True)

    def start(self, timeout_s: float = 60.0) -> None:
        self.init()
        binary = _find_binary("mariadbd", "/usr/sbin/mariadbd", "/usr/sbin/mysqld")
        args = [
            binary, "--no-defaults", f"--datadir={self.datadir}", f"--port={self.port}",
            f"--socket={self.socket_path}", "--bind-address=127.0.0.1",
            f"--pid-file={self.base / 'mysqld.pid'}", f"--log-error={self.log}",
            f"--log-bin={self.base / 'binlog' / 'mysql-bin'}", "--binlog-format=ROW",
            "--binlog-row-image=FULL", "--binlog-row-metadata=FULL",
            f"--server-id={self.server_id}", "--skip-name-resolve",
            "--innodb-buffer-pool-size=256M", "--innodb-flush-log-at-trx-commit=2",
            "--sync-binlog=0", "--max-allowed-packet=64M", "--character-set-server=utf8mb4",
            "--collation-server=utf8mb4_general_ci", "--expire-logs-days=7",
            *self.extra_args,
        ]
        if os.geteuid() == 0:
            args.append("--user=root")
        (self.base / "binlog").mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        _wait_port(self.port, self.proc, self.log, timeout_s)


def mysql_root() -> Path:
    """The root filesystem holding MySQL (deploy/mysql-root.sh builds it, once)."""
    root = Path(os.environ.get("SOFTCART_MYSQL_ROOT", "/var/cache/softcart-sync/mysql-root"))
    if not (root / "usr/sbin/mysqld").exists():
        script = Path(__file__).resolve().parents[2] / "deploy" / "mysql-root.sh"
        if not script.exists():
            raise FatalError(f"no MySQL root at {root}: build it with deploy/mysql-root.sh (from the repository)")
        done = subprocess.run([str(script)], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise FatalError(f"building the MySQL root with {script} failed:\n{done.stderr[-2000:]}")
    return root


@dataclass
class MySQLServer(_MySQLProtocolServer):
    """A private MySQL (9.7 LTS, from Debian sid, in a root of its own run with chroot: Debian 12
    has none), with the binlog in ROW format, full metadata and GTIDs on, as a MySQL source of
    SoftCart's runs; root without a password over TCP, like the private MariaDB. Its data lives in
    the root (``/srv/softcart/<name or port>``), kept across starts until :meth:`remove`."""

    #: names its data in the root (kept across starts, as the demo's); default: the port's
    name: str = ""

    @property
    def root(self) -> Path:
        return mysql_root()

    @property
    def datadir(self) -> str:  # inside the root
        return f"/srv/softcart/{self.name or self.port}"

    def init(self) -> None:
        data = self.root / self.datadir.lstrip("/")
        if (data / "mysql").exists():
            return
        self.base.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(data, ignore_errors=True)
        data.parent.mkdir(parents=True, exist_ok=True)
        # root@'%' without a password (caching_sha2_password, MySQL's default): over TCP as the
        # private MariaDB's root
        boot = self.root / "srv/softcart" / f"init-{self.name or self.port}.sql"
        boot.write_text("CREATE USER 'root'@'%' IDENTIFIED BY ''; GRANT ALL ON *.* TO 'root'@'%' WITH GRANT OPTION;\n")
        done = subprocess.run(["chroot", str(self.root), "/usr/sbin/mysqld", "--no-defaults", "--initialize-insecure",
                               "--user=root", f"--datadir={self.datadir}", f"--init-file=/srv/softcart/{boot.name}"],
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise FatalError(f"mysqld --initialize failed: {done.stderr[-2000:]}")

    def start(self, timeout_s: float = 120.0) -> None:
        self.init()
        args = [
            "chroot", str(self.root), "/usr/sbin/mysqld", "--no-defaults", "--user=root",
            f"--datadir={self.datadir}", f"--port={self.port}", "--bind-address=127.0.0.1",
            f"--socket=/run/mysqld/{self.port}.sock", "--mysqlx=OFF", f"--pid-file=/run/mysqld/{self.port}.pid",
            f"--server-id={self.server_id}", "--log-bin=binlog", "--binlog-format=ROW", "--binlog-row-image=FULL",
            "--binlog-row-metadata=FULL", "--gtid-mode=ON", "--enforce-gtid-consistency=ON", "--skip-name-resolve",
            "--innodb-buffer-pool-size=256M", "--innodb-flush-log-at-trx-commit=2", "--sync-binlog=0",
            "--max-allowed-packet=64M", "--character-set-server=utf8mb4", "--binlog-expire-logs-seconds=604800",
            "--log-error-verbosity=2", *self.extra_args,
        ]
        self.base.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:  # chroot execs mysqld: the process is the server
            self.proc = subprocess.Popen(args, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        _wait_port(self.port, self.proc, self.log, timeout_s)

    def remove(self) -> None:
        """Stop it and delete its data (it lives in the shared root, not under ``base``)."""
        self.stop()
        shutil.rmtree(self.root / self.datadir.lstrip("/"), ignore_errors=True)
        (self.root / "srv/softcart" / f"init-{self.name or self.port}.sql").unlink(missing_ok=True)


@dataclass
class PostgresServer:
    """A private PostgreSQL cluster with trust authentication on loopback."""

    base: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    settings: tuple[str, ...] = ()  # extra "name=value" server settings (ssl=on, ...)

    @property
    def datadir(self) -> Path:
        return self.base / "data"

    @property
    def log(self) -> Path:
        return self.base / "postgres.log"

    def url(self, database: str = "postgres", user: str = "postgres") -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}"

    def _bin(self, name: str) -> str:
        return _find_binary(name, f"/usr/lib/postgresql/*/bin/{name}")

    def _chown(self, path: Path) -> None:
        ids = _as_postgres()
        if ids is not None:
            os.chown(path, *ids)

    def init(self) -> None:
        if (self.datadir / "PG_VERSION").exists():
            return
        self.base.mkdir(parents=True, exist_ok=True)
        self._chown(self.base)
        ids = _as_postgres()
        subprocess.run(
            [self._bin("initdb"), "-D", str(self.datadir), "-U", "postgres", "-A", "trust",
             "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"],
            check=True, capture_output=True, cwd="/",
            user=ids[0] if ids else None, group=ids[1] if ids else None,
        )

    def start(self, timeout_s: float = 60.0) -> None:
        self.init()
        ids = _as_postgres()
        log = open(self.log, "ab")  # noqa: SIM115 - handed to the child, closed below
        try:
            self.proc = subprocess.Popen(
                [self._bin("postgres"), "-D", str(self.datadir), "-p", str(self.port),
                 "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.base}",
                 "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                 "-c", "max_connections=200", "-c", "shared_buffers=256MB",
                 *(arg for setting in self.settings for arg in ("-c", setting))],
                stdout=log, stderr=log, cwd="/", start_new_session=True,
                user=ids[0] if ids else None, group=ids[1] if ids else None,
            )
        finally:
            log.close()
        started = time.monotonic()
        _wait_port(self.port, self.proc, self.log, timeout_s)
        # Listening is not accepting: until recovery ends, connections get "the database system is
        # starting up".
        while subprocess.run([self._bin("pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)],
                             check=False).returncode != 0:
            if time.monotonic() - started > timeout_s:
                raise FatalError(f"PostgreSQL did not accept connections within {timeout_s}s; see {self.log}")
            time.sleep(0.05)  # polling readiness, with the deadline above

    def stop(self, sig: int = signal.SIGINT, timeout_s: float = 60.0) -> None:
        """SIGINT is PostgreSQL's fast shutdown."""
        _stop(self.proc, sig, timeout_s)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL the postmaster and all its backends, and wait until none is left: a backend
        still attached to the old shared memory makes the next start refuse ("pre-existing shared
        memory block is still in use"). Backends call setsid(), so the postmaster's process group
        holds only the postmaster: they are found as its children."""
        if self.proc is not None:
            pid = self.proc.pid
            victims = {pid}
            for _ in range(3):  # the postmaster may fork between a look and the kill
                victims |= _children(pid)
                for v in victims:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(v, signal.SIGKILL)
            self.stop(signal.SIGKILL)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and any(_running(v) for v in victims):
                time.sleep(0.02)  # waiting for the kernel to end the backends, with a deadline


def _proc_stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat's fields after the command name (state, ppid, pgrp, ...), or None."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _children(ppid: int) -> set[int]:
    out = set()
    for entry in Path("/proc").glob("[0-9]*"):
        fields = _proc_stat(int(entry.name))
        if fields is not None and int(fields[1]) == ppid:
            out.add(int(entry.name))
    return out


def _running(pid: int) -> bool:
    """Alive and not a zombie (a zombie holds no memory)."""
    fields = _proc_stat(pid)
    return fields is not None and fields[0] != "Z"


