"""The one settings model. Built once in the entry point and passed down; nothing else reads the
environment.

Precedence: environment variables (``SOFTCART_*``) override the TOML file given by ``--config``,
which overrides the defaults. Passwords may sit in the URL, in ``SOFTCART_*_PASSWORD`` or in a file
named by ``SOFTCART_*_PASSWORD_FILE`` (systemd credentials); they are ``SecretStr`` throughout and
never printed.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import unquote, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from transform.errors import ConfigError
from transform.model import ApplyConfig, Endpoint, StagingConfig, WarehouseConfig
from transform.star import zone_of

ENV_PREFIX = "SOFTCART_"
#: Environment variables with our prefix that are not settings (test harness knobs).
_NOT_SETTINGS = ("SOFTCART_TEST_",)


_DEFAULT_PORTS = {"mysql": 3306, "mariadb": 3306, "postgresql": 5432, "postgres": 5432, "db2": 50000}


def parse_url(field: str, url: str, schemes: tuple[str, ...]) -> Endpoint:
    """Parse ``scheme://user:password@host:port/database``; errors name ``field`` but never the URL
    itself, since it may hold a password."""
    env = ENV_PREFIX + field.upper()
    parts = urlsplit(url)
    if parts.scheme not in schemes:
        raise ConfigError(f"{env}: the URL must start with {' or '.join(s + '://' for s in schemes)}"
                          f" (got scheme {parts.scheme!r})")
    try:
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"{env}: the port is not a number between 1 and 65535") from exc
    if not parts.hostname:
        raise ConfigError(f"{env}: the URL has no host (expected {parts.scheme}://user:password@host:port/database)")
    database = unquote(parts.path.lstrip("/"))
    if not database or "/" in database:
        raise ConfigError(f"{env}: the URL must name one database after the host, as in .../sales")
    if not parts.username:
        raise ConfigError(f"{env}: the URL has no user name (expected {parts.scheme}://user@host/database)")
    return Endpoint(
        scheme=parts.scheme, host=parts.hostname, port=port or _DEFAULT_PORTS[parts.scheme],
        user=unquote(parts.username), password=SecretStr(unquote(parts.password or "")),
        database=database, query=parts.query,
    )


def _split_list(v: Any) -> Any:
    if isinstance(v, str):
        return [p.strip() for p in v.split(",") if p.strip()]
    return v


def default_spool(pipeline: str, environ: Mapping[str, str] | None = None) -> Path:
    """The spool folder when SOFTCART_SPOOL_DIR is not set, whatever folder a command runs in (it
    was ./spool, so a `reconcile` run elsewhere wrote batches the daemon never saw): under systemd
    the unit's state folder (StateDirectory=, the path the units always used), otherwise per
    pipeline under $XDG_STATE_HOME (~/.local/state)."""
    env = os.environ if environ is None else environ
    state = env.get("STATE_DIRECTORY", "").split(":")[0]
    if state:
        return Path(state) / "spool"
    base = Path(env["XDG_STATE_HOME"]) if env.get("XDG_STATE_HOME") else Path.home() / ".local" / "state"
    return base / "softcart-sync" / pipeline / "spool"


class Settings(BaseSettings):
    """Every setting, with its environment variable ``SOFTCART_<NAME>`` and TOML key ``<name>``."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", validate_default=True,
                                      case_sensitive=False)

    source_url: SecretStr = Field(description="mysql://user:password@host:port/database of the source")
    source_password: SecretStr | None = Field(None, description="source password (overrides the URL's)")
    source_password_file: Path | None = Field(None, description="file holding the source password")
    source_tables: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["sales_data"], description="comma-separated source tables to sync")
    source_tls: Literal["disabled", "preferred", "required", "verify-ca", "verify-identity"] = Field(
        "preferred", description="TLS to the source: preferred uses it when offered; required refuses a server "
        "without it; verify-ca also checks the certificate against source_tls_ca; verify-identity also the host name")
    source_tls_ca: Path | None = Field(None, description="CA certificate (PEM) that signed the source's certificate")
    staging_url: SecretStr = Field(description="postgresql://user:password@host:port/database of staging")
    staging_tls: Literal["disable", "prefer", "require", "verify-ca", "verify-full"] = Field(
        "prefer", description="TLS to staging (libpq's sslmode): verify-ca checks the certificate against "
        "staging_tls_ca, verify-full also the host name")
    staging_tls_ca: Path | None = Field(None, description="CA certificate (PEM) that signed staging's certificate")
    staging_password: SecretStr | None = Field(None, description="staging password (overrides the URL's)")
    staging_password_file: Path | None = Field(None, description="file holding the staging password")
    warehouse_url: SecretStr | None = Field(
        None, description="db2://user:password@host:port/DATABASE or postgresql://... of the warehouse "
        "(unset: no flush)")
    warehouse_password: SecretStr | None = Field(None, description="warehouse password (overrides the URL's)")
    warehouse_password_file: Path | None = Field(None, description="file holding the warehouse password")
    flush_interval_seconds: float = Field(60.0, gt=0,
                                          description="how often the star schema is flushed to the warehouse")
    flush_rows: int = Field(50000, ge=1, description="flush sooner once this many star keys are pending in the outbox")
    server_id: int = Field(5401, ge=1, le=4294967295,
                           description="replica server id the daemon uses; unique among the source's replicas")
    pipeline_name: str = Field("default", min_length=1, max_length=63,
                               description="name under which the position is stored (one per source database)")
    spool_dir: Path = Field(
        default_factory=lambda data: default_spool(data.get("pipeline_name", "default")),
        description="folder of the CSV batches (pending/, loaded/, failed/); by default the same whatever folder a"
        " command runs in: under systemd the unit's state folder ($STATE_DIRECTORY/spool), otherwise"
        " $XDG_STATE_HOME/softcart-sync/<pipeline>/spool (~/.local/state/...)")
    metrics_listen: str = Field("127.0.0.1:9401", description="host:port of /metrics, /healthz, /readyz")
    batch_max_rows: int = Field(20000, ge=1, description="rows per PostgreSQL transaction (micro-batch), soft;"
                                " also the rows held before they are written to staging")
    batch_max_seconds: float = Field(0.5, gt=0, description="longest a micro-batch stays open")
    chunk_rows: int = Field(5000, ge=1, description="rows per slice of a source transaction in the queue")
    queue_chunks: int = Field(16, ge=1, description="capacity of the reader->writer queue, in slices")
    snapshot_chunk_rows: int = Field(50000, ge=1, description="rows per COPY chunk during the snapshot")
    online_copy: Literal["auto", "signal", "off"] = Field(
        "auto", description="a table added to SOURCE_TABLES (or named by `resnapshot TABLE`) is copied online, in "
        "chunks, while the stream goes on. auto: on MariaDB by snapshot positions (no write on the source), on MySQL "
        "by watermarks; signal: by watermarks, rows the daemon writes in the source table softcart_signal (it makes "
        "it, or says what to grant); off: copied before the stream resumes")
    online_copy_chunk_rows: int = Field(2000, ge=1, description="rows per chunk of an online copy (the stream"
                                        " waits for each chunk's apply: smaller keeps it fresher)")
    online_copy_rows_per_second: float = Field(0.0, ge=0, description="throttle of an online copy (0: none)")
    retake_backoff_seconds: float = Field(
        30.0, ge=0, description="a table stopped again while its online copy ran (a client that keeps writing it in "
        "STATEMENT format, say) waits this long before its next copy, twice as long each time up to an hour, so "
        "its copy and the stream do not start over for ever (0: no wait)")
    reader: Literal["thread", "process"] = Field(
        "thread", description="where the binlog is decoded: thread (in the daemon's process) or process (a child "
        "process on its own core: faster catch-up when the daemon has the CPU to itself)")
    binlog_decoding: Literal["fast", "library"] = Field(
        "fast", description="how binlog events and rows are read: fast (TABLE_MAP and rows events from the "
        "packet's bytes, rows by the compiled decoder; anything else by mysql-replication) or library "
        "(mysql-replication for everything: slower; a way around a binlog the fast path ever reads wrongly)")
    snapshot_reader: Literal["auto", "client", "pymysql"] = Field(
        "auto", description="how the snapshot reads the source: client = the mariadb command-line client piped "
        "into COPY (several times faster; MariaDB without TLS, common column types), pymysql = the Python "
        "client, auto = client where it applies")
    heartbeat_seconds: float = Field(5.0, gt=0, le=3600, description="source heartbeat period when idle")
    connect_timeout_seconds: float = Field(10.0, gt=0, description="timeout of every connect")
    read_timeout_seconds: float = Field(30.0, gt=0, description="silence from the source before reconnecting; the"
                                        " longest one reply from staging may take, by the daemon's own clock")
    warehouse_schema: str = Field(
        "", pattern=r"^([A-Za-z_][A-Za-z0-9_]{0,127})?$",
        description="the warehouse schema the tables are in (warehouse init, the loader, the reconcile): Db2's "
        "CURRENT SCHEMA (upper-cased, as Db2 folds names), PostgreSQL's search_path; empty: the user's default "
        "(Db2: the user's own schema)")
    warehouse_receive_timeout_seconds: float = Field(
        3600.0, gt=0, le=32767, description="longest wait for one reply from the warehouse (at most 32767, the Db2"
        " CLI's limit): a silent one is an error after "
        "this; sized for a MERGE or a full reload's DELETE of millions of rows (Db2 ReceiveTimeout; PostgreSQL "
        "keepalives notice a dead peer sooner, a guard cuts a connection whose peer acks but never answers)")
    warehouse_lock_wait_seconds: float = Field(
        60.0, ge=1, le=32767, description="longest wait for a lock in the warehouse (a dashboard's or a DBA's): a"
        " load queued behind one gives up after this and is retried, and seen (Db2 LockTimeout, which otherwise"
        " waits for ever; PostgreSQL lock_timeout)")
    warehouse_statement_timeout_seconds: float = Field(
        0.0, ge=0, description="longest one statement may run in the warehouse, 0 for no limit (Db2 "
        "QueryTimeout, PostgreSQL statement_timeout); a statement cut off is retried, and seen")
    retry_max_seconds: float = Field(30.0, gt=0, description="cap of the exponential backoff between retries")
    lock_wait_seconds: float = Field(
        120.0, gt=0, description="longest wait for the warehouse loader's lock (held by another flush, a reconcile, "
        "`batches retry`): past it the flush fails naming the session that holds it, and is retried")
    stall_seconds: float = Field(60.0, gt=0, description="no progress for this long is a stall (/readyz,"
                                 " softcart_stage_stalled); not turning for this long is a hang (the watchdog stops)")
    auto_resnapshot: bool = Field(False, description="when the saved position was purged from the source's "
                                  "binlog, take a new snapshot instead of stopping")
    shutdown_timeout_seconds: float = Field(30.0, gt=0, description="longest a clean shutdown may take")
    star_table: str = Field("sales_data", description="source table the star schema is built from ('' turns it off)")
    business_timezone: str = Field("UTC", description="IANA time zone that decides a sale's date (DimDate)")
    source_datetime_zone: str = Field(
        "source", description="the zone the source's DATETIME values are wall-clock times in, for a sale's date:"
        " `source` (the source server's time zone, as NOW() uses it), an IANA name, or an offset such as +05:30"
        " (TIMESTAMPs carry their instant and need none)")
    star_deltas: Literal["sql", "python"] = Field(
        "sql", description="where each batch's star-schema delta is computed: sql (set-based inside PostgreSQL,"
        " where the column types allow) or python (row by row, the reference rules)")
    reconcile_segment_rows: int = Field(10000, ge=2, description="reconcile: rows per top-level segment checksum")
    reconcile_fanout: int = Field(16, ge=2, le=1000, description="reconcile: parts a differing segment is cut into")
    reconcile_fetch_rows: int = Field(1000, ge=1, description="reconcile: at most this many rows in a differing "
                                      "segment, fetch their fingerprints instead of cutting it again")
    reconcile_wait_seconds: float = Field(300.0, gt=0, description="reconcile: longest wait for the daemon to "
                                          "apply up to the source position a comparison was read at")
    reconcile_textfile: Path | None = Field(None, description="reconcile: write its metrics to this .prom file "
                                            "(node_exporter's textfile collector)")
    reconcile_pushgateway: str = Field("", description="reconcile: push its metrics to this Pushgateway URL")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="log level")
    log_format: Literal["auto", "json", "console"] = Field(
        "auto", description="auto: JSON lines unless stdout is a terminal")

    @field_validator("source_tables", mode="before")
    @classmethod
    def _tables(cls, v: Any) -> Any:
        return _split_list(v)

    @field_validator("source_tables")
    @classmethod
    def _tables_nonempty(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("name at least one table")
        if len(set(v)) != len(v):
            raise ValueError("a table is listed twice")
        return v

    @field_validator("business_timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r}; use an IANA name such as UTC or Europe/Berlin") from None
        return v

    @field_validator("source_datetime_zone")
    @classmethod
    def _wall_zone(cls, v: str) -> str:
        if v != "source":
            zone_of(v)  # ValueError names what is accepted
        return v

    @model_validator(mode="after")
    def _tls_ca(self) -> Settings:
        for side, mode, ca in (("source", self.source_tls, self.source_tls_ca),
                               ("staging", self.staging_tls, self.staging_tls_ca)):
            if mode.startswith("verify") and ca is None:
                raise ValueError(f"SOFTCART_{side.upper()}_TLS={mode} needs SOFTCART_{side.upper()}_TLS_CA, the CA "
                                 "certificate to verify the server with")
            if ca is not None and not ca.is_file():
                raise ValueError(f"SOFTCART_{side.upper()}_TLS_CA: no such file: {ca}")
        return self

    @field_validator("metrics_listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        host, sep, port = v.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError("expected host:port, as in 127.0.0.1:9401")
        return v

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml = settings_cls.model_config.get("toml_file")
        if toml:
            sources.append(TomlConfigSettingsSource(settings_cls))
        return tuple(sources)

    # Parsed views -----------------------------------------------------------------------------

    @property
    def source(self) -> Endpoint:
        return _with_password(parse_url("source_url", self.source_url.get_secret_value(),
                                        ("mysql", "mariadb")),
                              self.source_password, self.source_password_file, "source")

    @property
    def staging(self) -> Endpoint:
        return _with_password(parse_url("staging_url", self.staging_url.get_secret_value(),
                                        ("postgresql", "postgres")),
                              self.staging_password, self.staging_password_file, "staging")

    @property
    def warehouse(self) -> Endpoint | None:
        if self.warehouse_url is None:
            return None
        return _with_password(parse_url("warehouse_url", self.warehouse_url.get_secret_value(),
                                        ("db2", "postgresql", "postgres")),
                              self.warehouse_password, self.warehouse_password_file, "warehouse")

    @property
    def staging_config(self) -> StagingConfig:
        """What the loader needs of these settings to reach staging."""
        return StagingConfig(self.staging, self.connect_timeout_seconds, self.read_timeout_seconds,
                             self.staging_tls, self.staging_tls_ca)

    @property
    def apply_config(self) -> ApplyConfig:
        """What the applier (the micro-batch loop) needs of these settings."""
        return ApplyConfig(self.staging_config, self.pipeline_name, self.batch_max_rows, self.batch_max_seconds,
                           self.chunk_rows, self.stall_seconds, self.lock_wait_seconds)

    @property
    def warehouse_config(self) -> WarehouseConfig | None:
        """What the loader needs of these settings to reach the warehouse (None: none configured)."""
        ep = self.warehouse
        if ep is None:
            return None
        return WarehouseConfig(ep, self.pipeline_name, self.connect_timeout_seconds,
                               self.warehouse_receive_timeout_seconds, self.warehouse_statement_timeout_seconds,
                               self.warehouse_schema, self.warehouse_lock_wait_seconds)

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.business_timezone)

    @property
    def metrics_address(self) -> tuple[str, int]:
        host, _, port = self.metrics_listen.rpartition(":")
        return host.strip("[]"), int(port)


def _with_password(ep: Endpoint, password: SecretStr | None, password_file: Path | None,
                   prefix: str) -> Endpoint:
    if password_file is not None:
        try:
            text = password_file.read_text().rstrip("\r\n")
        except OSError as exc:
            raise ConfigError(f"{ENV_PREFIX}{prefix.upper()}_PASSWORD_FILE: cannot read "
                              f"{password_file}: {exc.strerror}") from exc
        if text:  # an empty file (a unit's credential with nothing to say): the URL's password, if any
            password = SecretStr(text)
    if password is None:
        return ep
    return Endpoint(ep.scheme, ep.host, ep.port, ep.user, password, ep.database, ep.query)


def _unknown_env(environ: Mapping[str, str]) -> list[str]:
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    return sorted(k for k in environ if k.upper().startswith(ENV_PREFIX)
                  and k.upper() not in known and not k.upper().startswith(_NOT_SETTINGS))


def load_settings(config: Path | None = None, environ: Mapping[str, str] | None = None,
                  **overrides: Any) -> Settings:
    """Build the settings, or raise :class:`ConfigError` naming every bad setting and the fix."""
    environ = os.environ if environ is None else environ
    unknown = _unknown_env(environ)
    if unknown:
        raise ConfigError("unknown setting(s): " + ", ".join(f"{u}{_near(u)}" for u in unknown)
                          + " (`softcart-sync settings` lists them all)")
    cls: type[Settings] = Settings
    if config is not None:
        if not config.is_file():
            raise ConfigError(f"--config: no such file {config}")
        cls = type("FileSettings", (Settings,), {
            "model_config": SettingsConfigDict(**{**Settings.model_config, "toml_file": config})})
    try:
        settings = cls(**overrides)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
    except Exception as exc:  # noqa: BLE001 - the TOML parser and pydantic-settings raise their own types
        raise ConfigError(f"--config {config}: {exc}") from None
    settings.source  # noqa: B018 - parse the URLs now, so a bad one fails at start
    settings.staging  # noqa: B018
    settings.warehouse  # noqa: B018
    return settings


def _describe(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        name = ".".join(str(p) for p in err["loc"])
        env = ENV_PREFIX + name.upper()
        if not name:  # a rule across settings names them itself
            lines.append(str(err["msg"]).removeprefix("Value error, "))
        elif err["type"] == "missing":
            lines.append(f"{env} (or `{name}` in the config file) is required")
        elif err["type"] == "extra_forbidden":
            lines.append(f"unknown setting `{name}` in the config file{_near(name)}")
        else:
            lines.append(f"{env} (`{name}`): {str(err['msg']).removeprefix('Value error, ')}")
    return "; ".join(lines)


def _near(name: str) -> str:
    """`` (did you mean X?)`` for a setting name close to a real one (an environment variable's
    form for one, a config key's for the other)."""
    env = name.upper().startswith(ENV_PREFIX)
    key = name.upper().removeprefix(ENV_PREFIX).lower() if env else name.lower()
    close = difflib.get_close_matches(key, list(Settings.model_fields), n=1, cutoff=0.75)
    if not close:
        return ""
    return f" (did you mean {ENV_PREFIX + close[0].upper() if env else close[0]}?)"


def shown(value: Any) -> str:
    """A setting's value as an operator writes it (never a Python repr; a secret never shown)."""
    if isinstance(value, SecretStr):
        return "(secret)" if value.get_secret_value() else "(empty)"
    if value is None:
        return "(none)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def settings_help(only: tuple[str, ...] = ()) -> str:
    """The list of settings for `softcart-sync settings` (``only``: those, for `--help`)."""
    rows = []
    for name, f in Settings.model_fields.items():
        if only and name not in only:
            continue
        default = "required" if f.is_required() else \
            f"default {shown(f.get_default(call_default_factory=True, validated_data={}))}"
        rows.append(f"  {ENV_PREFIX + name.upper():<36} {f.description} ({default})")
    return "\n".join(rows)


#: Settings a settings file never holds: passwords (files holding them may be named).
_NOT_IN_FILE = ("source_password", "staging_password", "warehouse_password")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)  # a JSON string is a TOML basic string


def as_toml(settings: Settings) -> str:
    """The settings in force as a settings file (`softcart-sync settings --toml`): those that differ
    from their defaults as keys, the others commented out with their default and meaning. URLs
    lose their password; passwords are never written (files holding them may be named)."""
    urls = {"source_url": settings.source, "staging_url": settings.staging, "warehouse_url": settings.warehouse}
    lines = ["# softcart-sync settings (TOML), written by `softcart-sync settings --toml`. Keys are the",
             "# SOFTCART_* environment variables in lower case without the prefix; an environment variable",
             "# overrides its key. Passwords are not here: they belong in files (*_password_file; the units",
             "# hand the same files over as credentials).", ""]
    for name, f in Settings.model_fields.items():
        if name in _NOT_IN_FILE:
            continue
        value = getattr(settings, name)
        ep = urls.get(name)
        if ep is not None:
            value = ep.display + (f"?{ep.query}" if ep.query else "")
        elif isinstance(value, SecretStr):
            value = value.get_secret_value()
        default = None if f.is_required() else f.get_default(
            call_default_factory=True, validated_data={"pipeline_name": settings.pipeline_name})
        if isinstance(default, SecretStr):
            default = default.get_secret_value()
        if value is None or (value == default and not f.is_required()):
            shown_default = "(none)" if default is None else _toml_value(default)
            lines.append(f"# {name} = {shown_default}    # {f.description}")
        else:
            lines.append(f"{name} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def effective(settings: Settings) -> dict[str, str]:
    """Every setting as in force, for the start's log line: URLs without their password, secrets
    as '(secret)'."""
    out = {name: shown(getattr(settings, name)) for name in Settings.model_fields}
    for name, ep in (("source_url", settings.source), ("staging_url", settings.staging),
                     ("warehouse_url", settings.warehouse)):
        if ep is not None:
            out[name] = ep.display
    return out
