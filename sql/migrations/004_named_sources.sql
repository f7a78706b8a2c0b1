-- Many named sources (issue 14): a source is a name, no longer one of 'api' and 'csv'. Raw tables stay one per
-- kind (raw_api_data, raw_csv_data) and hold every source of that kind, keyed by (source, source_id): two
-- sources of one kind whose ids overlap keep a row each. The rows of a warehouse loaded before named sources
-- belong to the seed sources named after their kinds, `api` and `csv`.

-- PostgreSQL's default names of the checks 001 declared inline; 003 drops them too, whichever runs first
alter table normalized_data drop constraint if exists normalized_data_source_check;
alter table etl_checkpoint drop constraint if exists etl_checkpoint_source_check;
alter table rejected_records drop constraint if exists rejected_records_source_check;

alter table raw_api_data add column if not exists source text collate "C" not null default 'api';
alter table raw_api_data alter column source drop default;
alter table raw_api_data drop constraint if exists raw_api_data_source_id_key;
alter table raw_api_data add constraint raw_api_data_source_source_id_key unique (source, source_id);

alter table raw_csv_data add column if not exists source text collate "C" not null default 'csv';
alter table raw_csv_data alter column source drop default;
alter table raw_csv_data drop constraint if exists raw_csv_data_source_id_key;
alter table raw_csv_data add constraint raw_csv_data_source_source_id_key unique (source, source_id);
