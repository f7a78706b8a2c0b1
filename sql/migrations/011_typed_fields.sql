-- Typed fields per source (issue 23). A source may declare fields beyond the unified columns in its catalog
-- entry (`fields: {email: text, seats: integer, ...}`); normalize types them by the same rules object and stores
-- them in one jsonb column, so the table stays one table for every source.
-- attributes: declared field -> its typed value. text: a string; integer and numeric: a JSON number with every
-- digit (jsonb numbers are exact); boolean: true/false; timestamp: an ISO 8601 string in UTC; date: YYYY-MM-DD;
-- json: the value as the source sent it. A declared field the record lacks is null. A source that declares
-- none has {} (adding a column with a constant default rewrites nothing).
alter table normalized_data add column if not exists attributes jsonb not null default '{}';

-- The fields each source declares, as the last run that normalized it read them: what its typed view
-- (schema `sources`) shows and what the read API serves and filters on. position: the order of the catalog.
create table if not exists source_fields (
    source text collate "C" not null,
    field text collate "C" not null,
    type text not null check (type in ('text', 'integer', 'numeric', 'boolean', 'timestamp', 'date', 'json')),
    path text not null,
    required boolean not null default false,
    position integer not null,
    declared_run_id text not null,
    declared_at timestamptz not null default now(),
    primary key (source, field)
);
