-- Deletes that are seen (issue 14): a record a whole read of its source no longer contains is soft-deleted,
-- not removed. deleted_at null is a live row; deleted_run_id is the run whose read found it gone. A record
-- that comes back is undeleted (both null again). The rows of a warehouse loaded before this are all live.
alter table normalized_data add column if not exists deleted_at timestamptz;
alter table normalized_data add column if not exists deleted_run_id text;

-- the deleted rows of a source, and only those: counting them (live rows = etl_checkpoint.row_count less these)
-- and finding the ones that come back never reads a live row
create index if not exists normalized_data_deleted_idx on normalized_data (source, source_id)
    where deleted_at is not null;
