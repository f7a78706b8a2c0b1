-- The work tables hold a run's batches from store_raw until record_run empties them (truncate): an autovacuum of a
-- million staged rows is work thrown away, it takes a core from the load, and record_run's lock of the tables
-- waited deadlock_timeout (1 s) for it to be cancelled (bench: the quality comparison's record_run, 0.3 -> 1.3 s
-- whenever one had started). The pipeline analyzes the columns its plans use itself (pipeline.sql analyze_*);
-- vacuums against transaction id wraparound still run.
alter table staged_records set (autovacuum_enabled = false, toast.autovacuum_enabled = false);
alter table normalized_stage set (autovacuum_enabled = false, toast.autovacuum_enabled = false);
