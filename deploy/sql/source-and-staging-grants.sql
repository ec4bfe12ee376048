-- softcart-sync: grants on the source and on staging (least privileges).

-- MariaDB source (the daemon's user):
CREATE USER 'softcart_cdc'@'%' IDENTIFIED BY 'change-me';
GRANT REPLICATION SLAVE, BINLOG MONITOR ON *.* TO 'softcart_cdc'@'%';
GRANT SELECT ON sales.sales_data TO 'softcart_cdc'@'%';
-- Optional (MariaDB): lets `check` and `run` see whether another replica uses the same server_id.
-- GRANT REPLICATION MASTER ADMIN ON *.* TO 'softcart_cdc'@'%';
-- MySQL 8 source: REPLICATION CLIENT instead of BINLOG MONITOR, and RELOAD for the snapshot's brief lock:
-- GRANT REPLICATION SLAVE, REPLICATION CLIENT, RELOAD ON *.* TO 'softcart_cdc'@'%';

-- PostgreSQL staging (the daemon creates and owns its schemas staging, star and softcart):
CREATE ROLE softcart LOGIN PASSWORD 'change-me';
GRANT CREATE, TEMPORARY ON DATABASE softcart TO softcart;
