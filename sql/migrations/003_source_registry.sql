-- Sources are named (issue 14): `source` is any source name, no longer only 'api' or 'csv', and
-- etl_checkpoint, which holds one row per source, also says what kind it is and how its last loads went,
-- for GET /sources. The checks had their default names in every release (inline `check (...)`).
alter table normalized_data drop constraint if exists normalized_data_source_check;
alter table etl_checkpoint drop constraint if exists etl_checkpoint_source_check;
alter table rejected_records drop constraint if exists rejected_records_source_check;

-- kind: api or csv (sluice.sources.KINDS), set by record_run; null until a run records it
alter table etl_checkpoint add column if not exists kind text;
-- the newest run that loaded the source (record_run: its counts say it loaded)
alter table etl_checkpoint add column if not exists last_success_run_id text;
alter table etl_checkpoint add column if not exists last_success_at timestamptz;
-- the newest run in which the source failed, and why (credentials masked); kept after a later success, so
-- compare last_error_at with last_success_at to tell whether it still fails
alter table etl_checkpoint add column if not exists last_error text;
alter table etl_checkpoint add column if not exists last_error_run_id text;
alter table etl_checkpoint add column if not exists last_error_at timestamptz;

-- until now the only sources were the seed's two, each named after its kind
update etl_checkpoint set kind = source where kind is null and source in ('api', 'csv');
