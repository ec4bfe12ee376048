"""TLS to MariaDB and PostgreSQL, verified on private servers with a throwaway CA: the stream runs
over TLS; required mode refuses a server without TLS; verify mode refuses a certificate signed by
another CA. Each refusal is one clear error naming the setting."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pymysql
import pytest

from cdc.capture import mysql
from cdc.dev.localservers import MariaDBServer, MySQLServer, PostgresServer
from cdc.settings import Settings, load_settings
from loader.pg import pg_connect
from tests.helpers import SALES_DDL, assert_same, cli, execute, pg_database, running_pipeline, wait_caught_up
from transform.errors import ConfigError


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.pem",
             "-days", "2", "-subj", f"/CN={name}", cwd=folder)
    return folder / f"{name}.pem"


def make_server_cert(folder: Path, ca: str) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, signed by ``ca``."""
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
             "-subj", "/CN=localhost", cwd=folder)
    (folder / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
             "-out", "server.pem", "-days", "2", "-extfile", "san.ext", cwd=folder)
    return folder / "server.pem", folder / "server.key"


@pytest.fixture(scope="module")
def certs(server_root: Path) -> dict[str, Path]:
    folder = server_root / "tls"
    ca = make_ca(folder, "test-ca")
    other = make_ca(folder, "other-ca")
    cert, key = make_server_cert(folder, "test-ca")
    if os.geteuid() == 0:  # PostgreSQL (run as postgres) reads them, and wants its key private
        import pwd

        pw = pwd.getpwnam("postgres")
        for f in (cert, key, ca):
            os.chown(f, pw.pw_uid, pw.pw_gid)
    key.chmod(0o600)
    folder.chmod(0o755)
    return {"ca": ca, "other": other, "cert": cert, "key": key}


@pytest.fixture(scope="module")
def tls_mariadb(server_root: Path, certs: dict[str, Path]) -> Iterator[MariaDBServer]:
    server = MariaDBServer(server_root / "mariadb-tls", extra_args=(
        f"--ssl-ca={certs['ca']}", f"--ssl-cert={certs['cert']}", f"--ssl-key={certs['key']}"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tls_postgres(server_root: Path, certs: dict[str, Path]) -> Iterator[PostgresServer]:
    server = PostgresServer(server_root / "postgres-tls", settings=(
        "ssl=on", f"ssl_cert_file={certs['cert']}", f"ssl_key_file={certs['key']}"))
    server.start()
    yield server
    server.stop()


def _settings(**env: str) -> Settings:
    return load_settings(environ={}, **{k.removeprefix("SOFTCART_").lower(): v for k, v in env.items()})


def test_the_stream_runs_over_verified_tls(tls_mariadb: MariaDBServer, tls_postgres: PostgresServer,
                                           certs: dict[str, Path], server_id: int, tmp_path: Path) -> None:
    root = pymysql.connect(host="127.0.0.1", port=tls_mariadb.port, user="root", autocommit=True)
    execute(root, "CREATE DATABASE IF NOT EXISTS tls_sales", "USE tls_sales", SALES_DDL,
            "INSERT INTO sales_data VALUES (1, 1, 1, 9.99, 1, '2024-01-01 10:00:00')")
    with pg_database(tls_postgres, "tls_staging") as db:
        env = {"SOFTCART_SOURCE_URL": tls_mariadb.url(database="tls_sales"),
               "SOFTCART_STAGING_URL": tls_postgres.url(db), "SOFTCART_SERVER_ID": str(server_id),
               "SOFTCART_SOURCE_TLS": "verify-identity", "SOFTCART_SOURCE_TLS_CA": str(certs["ca"]),
               "SOFTCART_STAGING_TLS": "verify-full", "SOFTCART_STAGING_TLS_CA": str(certs["ca"]),
               "SOFTCART_HEARTBEAT_SECONDS": "1", "SOFTCART_SPOOL_DIR": str(tmp_path)}
        settings = _settings(**env)
        conn = mysql.connect(settings)
        with conn.cursor() as cur:
            cur.execute("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
            assert cur.fetchone()[1]  # type: ignore[index]
        conn.close()
        staging = pg_connect(settings.staging_config, autocommit=True)
        assert staging.pgconn.ssl_in_use
        with running_pipeline(settings):
            execute(root, "INSERT INTO tls_sales.sales_data VALUES (2, 2, 2, 1.50, 3, '2024-01-02 10:00:00')")
            wait_caught_up(staging, root)
            assert_same(root, staging, "tls_sales", "sales_data")
        assert cli("check", env=env).returncode == 0
        staging.close()
    root.close()


def test_required_tls_refuses_servers_without_it(mariadb: MariaDBServer, postgres: PostgresServer,
                                                 settings_env: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="does not offer TLS, but SOFTCART_SOURCE_TLS=required"):
        mysql.connect(_settings(**settings_env, SOFTCART_SOURCE_TLS="required"))
    with pytest.raises(ConfigError, match="does not offer TLS, but SOFTCART_STAGING_TLS=require"):
        pg_connect(_settings(**settings_env, SOFTCART_STAGING_TLS="require").staging_config)
    out = cli("check", env={**settings_env, "SOFTCART_SOURCE_TLS": "required"})
    assert out.returncode != 0 and "SOFTCART_SOURCE_TLS" in out.stdout + out.stderr


def test_verify_refuses_a_certificate_from_another_ca(tls_mariadb: MariaDBServer, tls_postgres: PostgresServer,
                                                      certs: dict[str, Path]) -> None:
    env = {"SOFTCART_SOURCE_URL": tls_mariadb.url(database="mysql"),
           "SOFTCART_STAGING_URL": tls_postgres.url("postgres")}
    with pytest.raises(ConfigError, match=r"TLS certificate is not trusted.*SOFTCART_SOURCE_TLS_CA"):
        mysql.connect(_settings(**env, SOFTCART_SOURCE_TLS="verify-ca", SOFTCART_SOURCE_TLS_CA=str(certs["other"])))
    with pytest.raises(ConfigError, match=r"TLS certificate is not trusted.*SOFTCART_STAGING_TLS_CA"):
        pg_connect(_settings(**env, SOFTCART_STAGING_TLS="verify-ca",
                             SOFTCART_STAGING_TLS_CA=str(certs["other"])).staging_config)
    # The right CA passes; without verification any certificate does (and it is still TLS).
    mysql.connect(_settings(**env, SOFTCART_SOURCE_TLS="verify-ca", SOFTCART_SOURCE_TLS_CA=str(certs["ca"]))).close()
    assert pg_connect(_settings(**env, SOFTCART_STAGING_TLS="require").staging_config).pgconn.ssl_in_use


def test_verify_without_a_ca_is_a_settings_error(settings_env: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="SOFTCART_SOURCE_TLS=verify-ca needs SOFTCART_SOURCE_TLS_CA"):
        _settings(**settings_env, SOFTCART_SOURCE_TLS="verify-ca")
    with pytest.raises(ConfigError, match="SOFTCART_STAGING_TLS_CA: no such file"):
        _settings(**settings_env, SOFTCART_STAGING_TLS="verify-full", SOFTCART_STAGING_TLS_CA="/nonexistent.pem")


def test_mysql_caching_sha2_password_without_tls_signs_in(mysql: MySQLServer, settings_env: dict[str, str]) -> None:
    """MySQL's default authentication (caching_sha2_password) without TLS exchanges the password
    under the server's RSA key the first time: pymysql needs the 'cryptography' package for that,
    and without it `check` died with a raw traceback (#31 item 5). It is a dependency now."""
    name = f"cs2_{settings_env['SOFTCART_SERVER_ID']}"
    root = pymysql.connect(host="127.0.0.1", port=mysql.port, user="root", autocommit=True)
    execute(root, f"CREATE DATABASE IF NOT EXISTS {name}", f"CREATE USER '{name}'@'%' IDENTIFIED BY 's3cret!'",
            f"GRANT SELECT, RELOAD, REPLICATION CLIENT, REPLICATION SLAVE ON *.* TO '{name}'@'%'",
            f"CREATE TABLE {name}.sales_data (rowid INT PRIMARY KEY)")
    try:
        out = cli("check", env={**settings_env, "SOFTCART_SOURCE_URL": mysql.url(name, "s3cret!", name),
                                "SOFTCART_SOURCE_TLS": "disabled", "SOFTCART_STAR_TABLE": ""})
        text = out.stdout + out.stderr
        assert "Traceback" not in text and "cryptography" not in text, text
        assert "ok    connected to the source: MySQL" in text, text
        assert "s3cret" not in text
    finally:
        execute(root, f"DROP USER '{name}'@'%'", f"DROP DATABASE {name}")
        root.close()
