-- When each step result was written: record_run sweeps the work rows of a run abandoned before its record_run
-- (killed, or marked failed by hand) once its newest step result is older than SLUICE_STAGING_RETENTION_HOURS.
-- Rows already there get the time of this migration (a constant default: no rewrite of the table), and so age
-- out one window later. The index finds the old results at no cost when there are none.
alter table etl_step_results add column if not exists created_at timestamptz not null default now();
create index if not exists etl_step_results_created_idx on etl_step_results (created_at);
