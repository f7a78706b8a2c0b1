-- The layout of every release before versioned migrations, and the conversions that bring any of those
-- layouts to it in place. Such a warehouse has no schema_version row yet, so this runs on it once: every
-- statement here tolerates what an earlier release may have left (if not exists, checks before converting).
-- sql/functions.sql is applied before any migration, so the triggers find sluice_count_rows.

create table if not exists raw_api_data (
    id bigserial primary key,
    source_id text collate "C" not null unique,
    data jsonb not null,
    content_hash text not null,
    ingested_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    run_id text not null
);

create table if not exists raw_csv_data (
    id bigserial primary key,
    source_id text collate "C" not null unique,
    data jsonb not null,
    content_hash text not null,
    ingested_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    run_id text not null
);

create table if not exists normalized_data (
    id bigserial primary key,
    source text collate "C" not null check (source in ('api', 'csv')),
    source_id text collate "C" not null,
    name text,
    value double precision,
    description text,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    first_seen_run_id text not null,
    last_changed_run_id text not null,
    -- md5 of the raw payload and the mapping that produced this row: lets normalize skip
    -- records whose input has not changed since they were last normalized.
    input_hash text not null,
    unique (source, source_id)
);
create index if not exists normalized_data_updated_idx on normalized_data (updated_at desc, id desc);
create index if not exists normalized_data_source_updated_idx on normalized_data (source, updated_at desc, id desc);

create table if not exists etl_checkpoint (
    source text collate "C" primary key check (source in ('api', 'csv')),
    last_processed_id text,
    last_processed_at timestamptz,
    total_processed bigint not null default 0,
    -- rows of this source in normalized_data, kept by a trigger so the API needs no count(*)
    row_count bigint not null default 0,
    last_run_id text,
    updated_at timestamptz not null default now(),
    -- the run whose store_raw committed last: while it is the upserting run, no raw row can be superseded
    raw_run_id text,
    -- the fetch order (sluice_fetch_seq) of the newest batch stored; null: none since fetches were ordered
    raw_fetch_seq bigint
);
alter table etl_checkpoint add column if not exists raw_run_id text;
alter table etl_checkpoint add column if not exists raw_fetch_seq bigint;

-- The order in which fetches started: an ingest task takes the next number when it starts reading its
-- source, so store_raw can tell a batch fetched before the newest one a source holds, which must not replace it.
create sequence if not exists sluice_fetch_seq;

-- etl_checkpoint.row_count follows every write to normalized_data (sluice_count_rows, sql/functions.sql).
create or replace trigger normalized_data_count_inserts after insert on normalized_data
    referencing new table as new_rows for each statement execute function sluice_count_rows();
create or replace trigger normalized_data_count_deletes after delete on normalized_data
    referencing old table as old_rows for each statement execute function sluice_count_rows();
create or replace trigger normalized_data_count_truncates after truncate on normalized_data
    for each statement execute function sluice_count_rows();

create table if not exists etl_runs (
    id bigserial primary key,
    run_id text not null unique,
    run_type text,
    data_interval_start timestamptz,
    data_interval_end timestamptz,
    started_at timestamptz,
    ended_at timestamptz,
    duration_seconds double precision,
    records_processed bigint not null default 0,
    status text not null check (status in ('success', 'failed')),
    error_message text,
    fetched bigint not null default 0,
    inserted bigint not null default 0,
    updated bigint not null default 0,
    unchanged bigint not null default 0,
    rejected bigint not null default 0,
    -- the same counts per source: {"api": {"fetched": 100, ...}, "csv": {...}}
    source_counts jsonb not null default '{}'::jsonb,
    created_at timestamptz not null default now(),
    -- records whose stored payload came from a later fetch than this run's: that fetch's run loads them
    superseded bigint not null default 0
);
alter table etl_runs add column if not exists superseded bigint not null default 0;
create index if not exists etl_runs_started_idx on etl_runs (started_at desc, id desc);

create table if not exists rejected_records (
    id bigserial primary key,
    run_id text not null,
    source text collate "C" not null check (source in ('api', 'csv')),
    source_id text collate "C",
    -- the task that quarantined it (store_raw or normalize), so a retried task replaces its own rejects
    stage text not null,
    reason text not null,
    payload jsonb,
    created_at timestamptz not null default now()
);
create index if not exists rejected_records_run_idx on rejected_records (run_id, id);

-- Work tables between tasks of one run, emptied by record_run. Logged: crash recovery empties unlogged
-- tables, and a retried task must find its run's rows after a PostgreSQL restart.
-- staged_records keeps the payload as JSON text with its md5 (computed while staging), so unchanged
-- records are recognised by hash alone and only changed ones are ever parsed as jsonb.
do $$
begin
    -- the first layout kept data as jsonb; the table only holds work in flight, so it is simply rebuilt
    if exists (select 1 from information_schema.columns
               where table_schema = current_schema() and table_name = 'staged_records'
                 and column_name = 'data' and data_type = 'jsonb') then
        drop table staged_records;
    end if;
end
$$;
create table if not exists staged_records (
    run_id text not null,
    source text collate "C" not null,
    record_no bigint not null,
    source_id text collate "C",
    data text,
    problem text,
    payload text,
    content_hash text
);

-- What store_raw and upsert committed per source, written in the same transaction: a retried task returns
-- it for a source it already committed instead of redoing it (and reporting its rows as unchanged).
create table if not exists etl_step_results (
    run_id text not null,
    source text collate "C" not null,
    step text not null,
    result jsonb not null,
    primary key (run_id, source, step)
);

create table if not exists normalized_stage (
    run_id text not null,
    source text collate "C" not null,
    source_id text collate "C" not null,
    name text,
    value double precision,
    description text,
    input_hash text not null,
    -- the raw payload's hash it came from: upsert skips a row whose raw payload a newer run replaced
    raw_hash text
);
alter table normalized_stage add column if not exists raw_hash text;
do $$
begin
    -- the first layout had unlogged work tables
    if exists (select 1 from pg_class where relname in ('staged_records', 'normalized_stage')
               and relpersistence = 'u' and relnamespace = current_schema()::regnamespace) then
        alter table staged_records set logged;
        alter table normalized_stage set logged;
    end if;
end
$$;
-- no index: every reader takes a whole run's rows, by sequential scan and hash joins
drop index if exists normalized_stage_run_idx;

-- Ids and source names compare byte by byte (collation "C"): they need no linguistic order, and building
-- and probing their indexes is about twice as fast. Earlier layouts used the database collation.
do $$
declare
    col record;
begin
    for col in
        select table_name, column_name from information_schema.columns
        where table_schema = current_schema() and collation_name is distinct from 'C'
          and (table_name, column_name) in (
              ('raw_api_data', 'source_id'), ('raw_csv_data', 'source_id'),
              ('normalized_data', 'source'), ('normalized_data', 'source_id'),
              ('rejected_records', 'source'), ('rejected_records', 'source_id'),
              ('staged_records', 'source'), ('staged_records', 'source_id'),
              ('normalized_stage', 'source'), ('normalized_stage', 'source_id'), ('etl_checkpoint', 'source'))
    loop
        execute format('alter table %I alter column %I type text collate "C"', col.table_name, col.column_name);
    end loop;
end
$$;

-- Functions of the first fast path, replaced by sluice_fast_text_ok and sluice_fast_path (sql/functions.sql).
drop function if exists sluice_fast_text(jsonb, text);
drop function if exists sluice_fast_number(jsonb);
drop function if exists sluice_fast_optional_text_ok(jsonb, text);
