-- softcart-sync: grants on the source and on staging (least privileges).

-- MariaDB source (the daemon's user):
CREATE USER 'softcart_cdc'@'%' IDENTIFIED BY 'change-me';
GRANT REPLICATION SLAVE, BINLOG MONITOR ON *.* TO 'softcart_cdc'@'%';
GRANT SELECT ON sales.sales_data TO 'softcart_cdc'@'%';
-- Optional (MariaDB): lets `check` and `run` see whether another replica uses the same server_id.
-- GRANT REPLICATION MASTER ADMIN ON *.* TO 'softcart_cdc'@'%';
-- MySQL 8 source: REPLICATION CLIENT instead of BINLOG MONITOR, and RELOAD for the snapshot's brief lock:
-- GRANT REPLICATION SLAVE, REPLICATION CLIENT, RELOAD ON *.* TO 'softcart_cdc'@'%';
-- Online copies by watermarks (MySQL 8 with SOFTCART_ONLINE_COPY=auto, or =signal on either server): the
-- daemon writes its watermarks in a small table of its own on the source. Without CREATE on the database
-- it can't make it: make it here, and let it write it:
-- CREATE TABLE sales.softcart_signal (pipeline VARCHAR(63) NOT NULL, kind VARCHAR(4) NOT NULL, watermark CHAR(32) NOT NULL, written_at DATETIME(6) NOT NULL, PRIMARY KEY (pipeline, kind)) ENGINE=InnoDB;
-- GRANT SELECT, INSERT, UPDATE ON sales.softcart_signal TO 'softcart_cdc'@'%';

-- PostgreSQL staging (the daemon creates and owns its schemas staging, star and softcart):
CREATE ROLE softcart LOGIN PASSWORD 'change-me';
GRANT CREATE, TEMPORARY ON DATABASE softcart TO softcart;
