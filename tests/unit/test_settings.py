"""Settings: precedence, clear errors naming the setting, secrets never shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from cdc.settings import Settings, load_settings
from transform.errors import ConfigError

CANARY = "Canary-Pa55word-7731"
BASE = {"SOFTCART_SOURCE_URL": f"mysql://repl:{CANARY}@db.example:3307/sales",
        "SOFTCART_STAGING_URL": "postgresql://etl@pg.example/warehouse"}


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for k, v in BASE.items():
        monkeypatch.setenv(k, v)
    return monkeypatch


def test_urls_are_parsed_with_defaults(env: pytest.MonkeyPatch) -> None:
    s = load_settings()
    assert (s.source.host, s.source.port, s.source.user, s.source.database) == ("db.example", 3307, "repl", "sales")
    assert s.source.password.get_secret_value() == CANARY
    assert s.staging.port == 5432 and s.source_tables == ["sales_data"]


def test_password_never_appears_in_repr_or_display(env: pytest.MonkeyPatch) -> None:
    s = load_settings()
    assert CANARY not in repr(s) and CANARY not in str(s)
    assert CANARY not in s.source.display and CANARY not in repr(s.source)


def test_tables_are_comma_separated(env: pytest.MonkeyPatch) -> None:
    env.setenv("SOFTCART_SOURCE_TABLES", "sales_data, customers")
    assert load_settings().source_tables == ["sales_data", "customers"]


def test_environment_overrides_config_file(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cfg = tmp_path / "softcart.toml"
    cfg.write_text('server_id = 77\nbatch_max_rows = 10\nsource_tables = ["a", "b"]\n')
    env.setenv("SOFTCART_SERVER_ID", "78")
    s = load_settings(cfg)
    assert (s.server_id, s.batch_max_rows, s.source_tables) == (78, 10, ["a", "b"])


def test_password_file_wins_and_is_read_without_newline(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    f = tmp_path / "pw"
    f.write_text("from-file\n")
    env.setenv("SOFTCART_SOURCE_PASSWORD_FILE", str(f))
    assert load_settings().source.password.get_secret_value() == "from-file"


@pytest.mark.parametrize(("name", "value", "message"), [
    ("SOFTCART_SERVER_ID", "abc", "SOFTCART_SERVER_ID"),
    ("SOFTCART_SERVER_ID", "0", "SOFTCART_SERVER_ID"),
    ("SOFTCART_METRICS_LISTEN", "9401", "SOFTCART_METRICS_LISTEN"),
    ("SOFTCART_SOURCE_URL", f"http://u:{CANARY}@h/db", "SOFTCART_SOURCE_URL: the URL must start with mysql://"),
    ("SOFTCART_SOURCE_URL", f"mysql://u:{CANARY}@h:99999/db", "SOFTCART_SOURCE_URL: the port"),
    ("SOFTCART_SOURCE_URL", f"mysql://u:{CANARY}@h:3306/", "SOFTCART_SOURCE_URL: the URL must name one database"),
    ("SOFTCART_STAGING_URL", "postgresql:///db", "SOFTCART_STAGING_URL: the URL has no host"),
    ("SOFTCART_SERVRE_ID", "5", "unknown setting(s): SOFTCART_SERVRE_ID"),
    ("SOFTCART_SOURCE_TABLES", " , ", "SOFTCART_SOURCE_TABLES"),
])
def test_bad_setting_is_named_and_secret_kept(env: pytest.MonkeyPatch, name: str, value: str, message: str) -> None:
    env.setenv(name, value)
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert message in str(err.value)
    assert CANARY not in str(err.value)


def test_missing_required_setting_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOFTCART_STAGING_URL", BASE["SOFTCART_STAGING_URL"])
    with pytest.raises(ConfigError, match=r"SOFTCART_SOURCE_URL .* is required"):
        load_settings()


def test_unknown_key_in_config_file_is_named(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cfg = tmp_path / "softcart.toml"
    cfg.write_text("batch_rows = 5\n")
    with pytest.raises(ConfigError, match="unknown setting `batch_rows` in the config file"):
        load_settings(cfg)


def test_unreadable_password_file_is_named(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env.setenv("SOFTCART_STAGING_PASSWORD_FILE", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="SOFTCART_STAGING_PASSWORD_FILE: cannot read"):
        load_settings()


def test_an_unknown_setting_suggests_the_near_name_and_points_to_a_command_that_exists(
        env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env.setenv("SOFTCART_SERVRE_ID", "5")
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert "SOFTCART_SERVRE_ID (did you mean SOFTCART_SERVER_ID?)" in str(err.value)
    assert "`softcart-sync settings` lists them all" in str(err.value) and "--help-settings" not in str(err.value)
    env.delenv("SOFTCART_SERVRE_ID")
    cfg = tmp_path / "softcart.toml"
    cfg.write_text("batch_max_row = 5\n")
    with pytest.raises(ConfigError, match=r"`batch_max_row` in the config file \(did you mean batch_max_rows\?\)"):
        load_settings(cfg)


def test_a_refused_value_is_said_without_pydantics_prefix(env: pytest.MonkeyPatch) -> None:
    env.setenv("SOFTCART_BUSINESS_TIMEZONE", "Mars/Olympus")
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert "SOFTCART_BUSINESS_TIMEZONE (`business_timezone`): unknown time zone 'Mars/Olympus'" in str(err.value)
    assert "Value error" not in str(err.value)


def test_settings_are_listed_and_logged_as_an_operator_writes_them_and_never_with_a_secret(
        env: pytest.MonkeyPatch) -> None:
    from cdc.settings import effective, settings_help

    listed = settings_help()
    assert "PosixPath" not in listed and "SecretStr" not in listed and "default None" not in listed
    from cdc.settings import default_spool

    assert "SOFTCART_SPOOL_DIR" in listed and f"(default {default_spool('default')})" in listed, listed
    env.setenv("SOFTCART_SOURCE_URL", f"mysql://u:{CANARY}@db.example:3307/sales")
    env.setenv("SOFTCART_STAGING_PASSWORD", CANARY)
    shown = effective(load_settings())
    assert shown["source_url"] == "mysql://u@db.example:3307/sales" and shown["staging_password"] == "(secret)"
    assert shown["source_tables"] == "sales_data" and shown["auto_resnapshot"] == "false"
    assert CANARY not in repr(shown)


def test_config_may_come_after_the_command_at_every_level() -> None:
    from cdc.cli import build_parser

    p = build_parser()
    assert p.parse_args(["run", "--config", "a.toml"]).config == Path("a.toml")
    assert p.parse_args(["--config", "b.toml", "run"]).config == Path("b.toml")
    assert p.parse_args(["warehouse", "init", "--config", "c.toml"]).config == Path("c.toml")
    assert p.parse_args(["check"]).config is None


def test_an_empty_password_file_leaves_the_urls_password(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    empty = tmp_path / "pw"
    empty.write_text("\n")  # the units always hand over the three credentials; unused ones are empty
    env.setenv("SOFTCART_SOURCE_PASSWORD_FILE", str(empty))
    assert load_settings().source.password.get_secret_value() == CANARY


def test_settings_as_toml_hold_what_differs_and_load_back_the_same_without_a_secret(
        env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import tomllib

    from cdc.settings import as_toml

    env.setenv("SOFTCART_STAGING_URL", f"postgresql://etl:{CANARY}@pg.example/warehouse?sslmode=require")
    env.setenv("SOFTCART_WAREHOUSE_PASSWORD", CANARY)
    env.setenv("SOFTCART_SOURCE_TABLES", "sales_data,returns")
    env.setenv("SOFTCART_AUTO_RESNAPSHOT", "true")
    env.setenv("SOFTCART_FLUSH_INTERVAL_SECONDS", "7.5")
    env.setenv("SOFTCART_BUSINESS_TIMEZONE", 'Europe/Berlin')
    before = load_settings()
    text = as_toml(before)
    assert CANARY not in text
    keys = tomllib.loads(text)
    assert keys == {"source_url": "mysql://repl@db.example:3307/sales",
                    "staging_url": "postgresql://etl@pg.example:5432/warehouse?sslmode=require",
                    "source_tables": ["sales_data", "returns"], "flush_interval_seconds": 7.5,
                    "auto_resnapshot": True, "business_timezone": "Europe/Berlin"}
    assert "# batch_max_rows = 20000" in text  # the defaults are there to edit, commented out
    cfg = tmp_path / "s.toml"
    cfg.write_text(text)
    for name in BASE | {"SOFTCART_STAGING_URL": "", "SOFTCART_WAREHOUSE_PASSWORD": "", "SOFTCART_SOURCE_TABLES": "",
                        "SOFTCART_AUTO_RESNAPSHOT": "", "SOFTCART_FLUSH_INTERVAL_SECONDS": "",
                        "SOFTCART_BUSINESS_TIMEZONE": ""}:
        env.delenv(name)
    after = load_settings(cfg)
    assert as_toml(after) == text
    assert (after.source_tables, after.auto_resnapshot, after.staging.query) == (
        before.source_tables, True, "sslmode=require")


def test_every_setting_is_in_the_readme() -> None:
    """The README's settings table is where an operator looks: a setting missing from it fails here."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert [n for n in Settings.model_fields if f"`SOFTCART_{n.upper()}`" not in readme] == []


def test_the_warehouse_receive_timeout_stays_within_what_the_db2_cli_accepts(env: pytest.MonkeyPatch) -> None:
    """The Db2 CLI's ReceiveTimeout takes 0..32767 seconds (#32 item 7)."""
    env.setenv("SOFTCART_WAREHOUSE_RECEIVE_TIMEOUT_SECONDS", "32767")
    assert load_settings().warehouse_receive_timeout_seconds == 32767
    env.setenv("SOFTCART_WAREHOUSE_RECEIVE_TIMEOUT_SECONDS", "40000")
    with pytest.raises(ConfigError, match=r"SOFTCART_WAREHOUSE_RECEIVE_TIMEOUT_SECONDS.*32767"):
        load_settings()


def test_the_default_spool_is_the_same_whatever_folder_a_command_runs_in() -> None:
    """#33 item 3: it was ./spool, so a `reconcile` run from another folder wrote batches the daemon
    never saw. Under systemd the unit's state folder (the path the units always used: their working
    directory was it); otherwise per pipeline under $XDG_STATE_HOME (~/.local/state)."""
    from pathlib import Path

    from cdc.settings import default_spool

    unit = {"STATE_DIRECTORY": "/var/lib/softcart-sync"}
    assert default_spool("default", unit) == Path("/var/lib/softcart-sync/spool")
    assert default_spool("x", {"STATE_DIRECTORY": "/var/lib/a:/var/lib/b"}) == Path("/var/lib/a/spool")
    xdg = {"XDG_STATE_HOME": "/home/u/.state"}
    assert default_spool("shop2", xdg) == Path("/home/u/.state/softcart-sync/shop2/spool")
    assert default_spool("shop2", {}) == Path.home() / ".local/state/softcart-sync/shop2/spool"
    assert default_spool("default", {}).is_absolute()


def test_the_reconcile_table_keeps_its_columns_and_explains_counts_read_while_changes_go_on() -> None:
    """#33 item 5: sales_by_month_product (22 characters) pushed its row out of line, and "55183
    vs 55182, 0 differ" under a live source said nothing of why."""
    from cdc.ops.reconcile_report import Report, TableReport

    report = Report(dry_run=True, levels=("source", "star"), tables=[
        TableReport("source", "sales_data", 55183, 55182, 6), TableReport("star", "sales_by_month_product", 9, 9, 1)])
    lines = report.text().splitlines()
    header, first, second = lines[1], lines[2], lines[3]
    for column in ("origin rows", "copy rows", "differ", "seconds"):
        end = header.index(column) + len(column)
        assert first[end - 1] != " " and second[end - 1] != " ", (column, lines)  # right-aligned under it
    assert any("counted while changes went on" in line for line in lines)
    assert not any("counted while" in line for line in Report(dry_run=True, levels=("source",), tables=[
        TableReport("source", "sales_data", 5, 5, 1)]).text().splitlines())


def test_status_shows_one_lag_the_daemons_and_names_stagings_commit_delay_for_what_it_is() -> None:
    """#33 item 5: "lag 0.9 s at the last commit" (binlog time, whole seconds) beside /readyz's
    "lag 0.0 s": two lags, two definitions."""
    from cdc.ops.status import render

    status = {"pipeline": "default", "state": "streaming position stored", "last_commit": "2026-12-07T10:00:00",
              "position": {"file": "mysql-bin.000001", "pos": 4, "gtid": ""}, "seconds_since_last_commit": 1.0,
              "lag_at_last_commit_seconds": 0.9, "dead_letters": {}, "batches": {}, "snapshot": []}
    answering = render({**status, "daemon": {"answering": True, "ready": True, "at": "127.0.0.1:9401",
                                             "says": "streaming at mysql-bin.000001:4; lag 0.0 s; 5 rows applied"}})
    assert answering.count("lag") == 1 and "commit delay" not in answering, answering
    alone = render({**status, "daemon": {"answering": False, "at": "127.0.0.1:9401", "why": "refused"}})
    assert "commit delay   0.9 s from the source's last event to staging's last commit" in alone, alone
    assert "lag" not in alone.replace("not answering", ""), alone
