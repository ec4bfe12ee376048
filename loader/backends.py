"""Choose the warehouse backend from SOFTCART_WAREHOUSE_URL."""

from __future__ import annotations

from loader.db2_warehouse import DB2Warehouse
from loader.pg_warehouse import PostgresWarehouse
from loader.warehouse import Warehouse
from transform.errors import ConfigError
from transform.model import WarehouseConfig


def open_warehouse(config: WarehouseConfig | None) -> Warehouse:
    if config is None:
        raise ConfigError("SOFTCART_WAREHOUSE_URL is not set: set it to db2://... or postgresql://...")
    ep = config.endpoint
    if ep.scheme == "db2":
        return DB2Warehouse(ep, config.pipeline, config.connect_timeout_seconds, config.receive_timeout_seconds,
                            config.statement_timeout_seconds, config.schema, config.lock_wait_seconds)
    return PostgresWarehouse(ep, config.pipeline, config.connect_timeout_seconds, config.statement_timeout_seconds,
                             config.schema, config.receive_timeout_seconds, config.lock_wait_seconds)
