-- Why a run or a source failed, as what may be stored and served (issue 22): a library's exception text can
-- quote a credential that no pattern recognises (requests quotes a header value without its name), so the
-- read API serves these summaries, never etl_runs.error_message or etl_checkpoint.last_error.
-- A summary is sluice.failures.Failure.summary(): {"source", "step", "error_class", "http_status", "host"},
-- names and numbers only. Rows written before have none (null): the API serves a summary of nulls for them.

-- the run's failures, one summary per failed step and source, in the order they happened; null: none recorded
alter table etl_runs add column if not exists errors jsonb;
-- the summary of the source's newest failure, beside last_error_run_id and last_error_at
alter table etl_checkpoint add column if not exists last_error_summary jsonb;
