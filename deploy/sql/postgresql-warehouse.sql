-- softcart-sync: a PostgreSQL database as the warehouse (what `softcart-sync warehouse init` creates).
-- Run as the database owner: psql -f postgresql-warehouse.sql

CREATE TABLE IF NOT EXISTS dimdate (dateid integer NOT NULL, date date NOT NULL, year smallint NOT NULL, quarter smallint NOT NULL, quartername varchar(2) NOT NULL, month smallint NOT NULL, monthname varchar(9) NOT NULL, day smallint NOT NULL, weekday smallint NOT NULL, weekdayname varchar(9) NOT NULL, PRIMARY KEY (dateid));
CREATE TABLE IF NOT EXISTS factsales (rowid bigint NOT NULL, dateid integer NOT NULL, product_id bigint NOT NULL, customer_id bigint, price numeric(31,4) NOT NULL, quantity bigint NOT NULL, total_price numeric(31,4) NOT NULL, PRIMARY KEY (rowid), FOREIGN KEY (dateid) REFERENCES dimdate (dateid));
CREATE TABLE IF NOT EXISTS sales_by_day (dateid integer NOT NULL, product_id bigint NOT NULL, sales_count bigint NOT NULL, quantity_total bigint NOT NULL, amount_total numeric(31,4) NOT NULL, PRIMARY KEY (dateid, product_id));
CREATE INDEX IF NOT EXISTS factsales_dateid ON factsales (dateid);
CREATE TABLE IF NOT EXISTS softcart_ledger (batch_id bigint PRIMARY KEY, pipeline text NOT NULL, rows_loaded bigint NOT NULL, loaded_at timestamptz NOT NULL DEFAULT now());
ALTER TABLE softcart_ledger ADD COLUMN IF NOT EXISTS batch_uid text;
CREATE OR REPLACE VIEW monthly_sales AS SELECT d.year, d.month, d.monthname, sum(s.amount_total) AS total_sales, sum(s.quantity_total) AS total_quantity, sum(s.sales_count) AS sales FROM sales_by_day s JOIN dimdate d ON d.dateid = s.dateid GROUP BY d.year, d.month, d.monthname;
CREATE OR REPLACE VIEW quarterly_sales AS SELECT d.year, d.quarter, d.quartername, sum(s.amount_total) AS total_sales, sum(s.quantity_total) AS total_quantity, sum(s.sales_count) AS sales FROM sales_by_day s JOIN dimdate d ON d.dateid = s.dateid GROUP BY d.year, d.quarter, d.quartername;
CREATE OR REPLACE VIEW sales_by_product AS SELECT s.product_id, d.year, sum(s.amount_total) AS total_sales, sum(s.quantity_total) AS total_quantity FROM sales_by_day s JOIN dimdate d ON d.dateid = s.dateid GROUP BY s.product_id, d.year;

-- The loader needs exactly this (replace softcart_loader with its role):
GRANT SELECT, INSERT, UPDATE, DELETE ON dimdate TO softcart_loader;
GRANT SELECT, INSERT, UPDATE, DELETE ON factsales TO softcart_loader;
GRANT SELECT, INSERT, UPDATE, DELETE ON sales_by_day TO softcart_loader;
GRANT SELECT, INSERT ON softcart_ledger TO softcart_loader;
GRANT TEMPORARY ON DATABASE CURRENT_DATABASE_NAME TO softcart_loader;  -- edit: the database's name
