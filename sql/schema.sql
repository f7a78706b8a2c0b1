-- Idempotent DDL applied by the init_schema task (and by the tests and the web app's fixtures).
-- One named block: it runs as a whole, under an advisory lock so concurrent runs cannot race on it.

-- name: apply_schema
create table if not exists raw_api_data (
    id bigserial primary key,
    source_id text not null unique,
    data jsonb not null,
    content_hash text not null,
    ingested_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    run_id text not null
);

create table if not exists raw_csv_data (
    id bigserial primary key,
    source_id text not null unique,
    data jsonb not null,
    content_hash text not null,
    ingested_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    run_id text not null
);

create table if not exists normalized_data (
    id bigserial primary key,
    source text not null check (source in ('api', 'csv')),
    source_id text not null,
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
    source text primary key check (source in ('api', 'csv')),
    last_processed_id text,
    last_processed_at timestamptz,
    total_processed bigint not null default 0,
    -- rows of this source in normalized_data, kept by a trigger so the API needs no count(*)
    row_count bigint not null default 0,
    last_run_id text,
    updated_at timestamptz not null default now()
);

-- Statement-level triggers keep etl_checkpoint.row_count equal to the rows of each source, whoever writes.
create or replace function sluice_count_rows() returns trigger language plpgsql as $$
begin
    if tg_op = 'INSERT' then
        insert into etl_checkpoint as c (source, row_count)
        select source, count(*) from new_rows group by source
        on conflict (source) do update set row_count = c.row_count + excluded.row_count, updated_at = now();
    elsif tg_op = 'DELETE' then
        update etl_checkpoint c set row_count = c.row_count - gone.n, updated_at = now()
        from (select source, count(*) as n from old_rows group by source) gone
        where c.source = gone.source;
    else
        update etl_checkpoint set row_count = 0, updated_at = now();
    end if;
    return null;
end
$$;
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
    created_at timestamptz not null default now()
);
create index if not exists etl_runs_started_idx on etl_runs (started_at desc, id desc);

create table if not exists rejected_records (
    id bigserial primary key,
    run_id text not null,
    source text not null check (source in ('api', 'csv')),
    source_id text,
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
    source text not null,
    record_no bigint not null,
    source_id text,
    data text,
    problem text,
    payload text,
    content_hash text
);

create table if not exists normalized_stage (
    run_id text not null,
    source text not null,
    source_id text not null,
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
create index if not exists normalized_stage_run_idx on normalized_stage (run_id, source, source_id);

-- The set-based fast path of normalize (plugins/sluice/rules.py is the definition of the rules).
-- Each function returns null when it cannot decide; such records go through the marshmallow schema,
-- so a record the fast path accepts is one the schema accepts with the same values (tests/test_fast_path.py).
create or replace function sluice_lookup(data jsonb, field text) returns jsonb
language sql immutable parallel safe as $$
    select case when field is null then null
                when data ? field then data -> field
                else data #> string_to_array(field, '.') end
$$;

create or replace function sluice_fast_text(x jsonb, edge_space text) returns text
language sql immutable parallel safe as $$
    select case
        when jsonb_typeof(x) = 'string' and (x #>> '{}') <> '' and (x #>> '{}') !~ edge_space then x #>> '{}'
        when jsonb_typeof(x) = 'number' and x::text ~ '^-?[0-9]{1,18}$' then x::text
    end
$$;

create or replace function sluice_fast_number(x jsonb) returns double precision
language sql immutable parallel safe as $$
    select case
        when jsonb_typeof(x) in ('string', 'number')
             and (x #>> '{}') ~ '^[+-]?([0-9]{1,15}(\.[0-9]{0,15})?|\.[0-9]{1,15})$'
        then (x #>> '{}')::double precision
    end
$$;

create or replace function sluice_fast_optional_text_ok(x jsonb, edge_space text) returns boolean
language sql immutable parallel safe as $$
    select x is null or jsonb_typeof(x) = 'null' or x = '""'::jsonb or sluice_fast_text(x, edge_space) is not null
$$;

-- Trigram search for the web API when the server offers pg_trgm; plain ILIKE still works without it.
do $$
begin
    if exists (select 1 from pg_available_extensions where name = 'pg_trgm') then
        create extension if not exists pg_trgm;
        execute 'create index if not exists normalized_data_name_trgm on normalized_data using gin (name gin_trgm_ops)';
        execute 'create index if not exists normalized_data_description_trgm on normalized_data using gin (description gin_trgm_ops)';
    end if;
end
$$;
