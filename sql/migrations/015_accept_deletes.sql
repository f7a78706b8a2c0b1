-- The larger deletes a person accepted for one run (issue 23): the DAG param accept_deletes, {source: fraction of
-- its live rows}, kept with the run so a drop that passed the guard shows that a person accepted it, and how far. Null:
-- the run accepted nothing beyond each source's max_delete_fraction.
alter table etl_runs add column if not exists accept_deletes jsonb;
