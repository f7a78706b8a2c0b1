-- Reads bounded by time (issue 23): a time cursor per source, and per-source schedules whose skips are visible.
-- last_cursor: the newest value of the source's cursor field among the records a run loaded, spelled as the
-- source spelled it (an API compares what it is sent); it moves only forward, compared as times
-- (sluice_later_cursor), and only when the source's lane loads.
alter table etl_checkpoint add column if not exists last_cursor text;
-- read_until: the end of the newest data interval in which the source was read (its `every` counts from it);
-- null until a run with a data interval loaded it
alter table etl_checkpoint add column if not exists read_until timestamptz;
-- the newest run that skipped the source (it was not due, or had no interval to read), and why
alter table etl_checkpoint add column if not exists last_skip_run_id text;
alter table etl_checkpoint add column if not exists last_skip_at timestamptz;
alter table etl_checkpoint add column if not exists last_skip_reason text;
-- the sources a run skipped, each with why: {"reports": "not due: ..."}; {} when it read every source
alter table etl_runs add column if not exists skipped jsonb not null default '{}'::jsonb;
