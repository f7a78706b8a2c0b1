-- Typed fields in the pipeline (issue 23). normalize writes each record's typed attributes to normalized_stage
-- with its unified columns, and upsert compares them; a row re-normalized from the raw table because its source's
-- declaration changed (not fetched by the run) is marked from_raw, so the run's counts of what it fetched stay
-- those records' own.
alter table normalized_stage add column if not exists attributes jsonb not null default '{}';
alter table normalized_stage add column if not exists from_raw boolean not null default false;

-- The input key (rules.input_key: mapping, declared fields, rules) each source was last normalized with: when the
-- key a run brings differs, its normalize re-normalizes the source's stored raw rows, not only the ones it fetched.
create table if not exists source_declarations (
    source text collate "C" primary key,
    input_key text not null,
    declared_run_id text not null,
    declared_at timestamptz not null default now()
);

-- One typed view per source (sources.<source>): created and replaced by normalize (sluice.declarations).
create schema if not exists sources;
