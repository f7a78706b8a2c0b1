-- Airflow's metadata gets its own database next to the warehouse (etl_db, created from POSTGRES_DB), so
-- Airflow's tables and migrations never mix with the pipeline's. The official postgres image runs this
-- once, as POSTGRES_USER, when its data volume is first initialized; that user owns the new database.
CREATE DATABASE airflow;
