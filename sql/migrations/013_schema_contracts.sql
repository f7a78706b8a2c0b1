-- Schema evolution and contracts (issue 23): what each source's records carry at their top level, as store_raw
-- finds it in each batch before the raw upsert (sluice.contracts), whatever the source's schema_contract.
-- One row per field and JSON type (string, number, boolean, object, array; a null carries no type, so a
-- field seen only as null is not recorded, as dlt creates no column for it): a field sent as a number by one
-- record and as a string by another has two rows. example: the text of the first record that carried the field
-- with that type (as staged: the record's own text), its first 4,096 characters; example_length: the whole
-- text's. last_seen_run_id: the last run that stored a new or changed record carrying it (a csv source: any
-- record, every one has its header's fields). A batch a frozen source refused records nothing here: it was not
-- published.
create table if not exists source_observed_fields (
    source text collate "C" not null,
    field text collate "C" not null,
    json_type text not null check (json_type in ('string', 'number', 'boolean', 'object', 'array')),
    first_seen_run_id text not null,
    first_seen_at timestamptz not null default now(),
    last_seen_run_id text not null,
    last_seen_at timestamptz not null default now(),
    example_source_id text,
    example text,
    example_length integer,
    primary key (source, field, json_type)
);

-- What changed per run: a field no earlier batch carried ('new'), or a field whose type is not the one recorded
-- for it before ('retyped': from_type is the JSON type(s) recorded for an undeclared field, or the declared type of
-- a declared or mapped field whose values it cannot read). record_id: the id of a record carrying it.
create table if not exists source_field_changes (
    source text collate "C" not null,
    run_id text not null,
    field text collate "C" not null,
    change text not null check (change in ('new', 'retyped')),
    from_type text,
    to_type text not null,
    declared boolean not null,
    record_id text,
    detected_at timestamptz not null default now(),
    primary key (source, run_id, field, to_type)
);
create index if not exists source_field_changes_recent_idx on source_field_changes (source, detected_at desc);
