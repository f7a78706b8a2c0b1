-- Replay from raw (sluice.replay): what a replayed source's store_raw reads instead of a staged batch.

-- name: replay_position
-- the source's newest fetch stored and its checkpoint: the replay's stored batch claims both, so upsert treats it
-- as the newest read (it undeletes and deletes nothing: no id was read) and the checkpoint stays where it is
select raw_fetch_seq, last_processed_id from etl_checkpoint where source = %(source)s;
