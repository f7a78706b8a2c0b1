-- Unchanged files (issue 28): the source's last file loaded completely, so a run that downloads the same bytes
-- under the same catalog entry stores nothing and copies that load's counts and rejects (warehouse.store_unchanged).
-- A JSON object: digest (sha256 of the entry and the file's bytes), fetch_seq (the newest fetch that read it: equal
-- to raw_fetch_seq while nothing else was stored since), run_id (the run that loaded it, whose rejects are copied),
-- live (the source's live rows after that load) and the counts that run's ingest, store_raw and normalize reported.
-- Null: no such file (any other store, a replay, a partial or superseded load clears it).
alter table etl_checkpoint add column if not exists loaded_file jsonb;
