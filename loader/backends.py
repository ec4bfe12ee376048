"""Choose the warehouse backend from SOFTCART_WAREHOUSE_URL."""

from __future__ import annotations

from cdc.errors import ConfigError
from cdc.settings import Settings
from loader.db2_warehouse import DB2Warehouse
from loader.pg_warehouse import PostgresWarehouse
from loader.warehouse import Warehouse


def open_warehouse(settings: Settings) -> Warehouse:
    ep = settings.warehouse
    if ep is None:
        raise ConfigError("SOFTCART_WAREHOUSE_URL is not set: set it to db2://... or postgresql://...")
    if ep.scheme == "db2":
        return DB2Warehouse(ep, settings.pipeline_name, settings.connect_timeout_seconds,
                            settings.warehouse_receive_timeout_seconds, settings.warehouse_statement_timeout_seconds,
                            settings.warehouse_schema)
    return PostgresWarehouse(ep, settings.pipeline_name, settings.connect_timeout_seconds,
                             settings.warehouse_statement_timeout_seconds, settings.warehouse_schema,
                             settings.warehouse_receive_timeout_seconds)
