-- The bookkeeping of versioned migrations (plugins/sluice/migrations.py). The schema itself is
-- sql/migrations/NNN_name.sql, each applied once, and sql/functions.sql, applied again when it changes.

-- name: bookkeeping_exists
-- to_regclass takes no lock: a current warehouse is recognised without waiting on anyone
select to_regclass('schema_version') is not null and to_regclass('schema_functions') is not null;

-- name: create_bookkeeping
create table if not exists schema_version (
    version integer primary key,
    -- the file name, e.g. 002_search.sql: a renamed or edited file no longer fits what was applied
    name text not null,
    checksum text not null,
    applied_at timestamptz not null default now()
);
create table if not exists schema_functions (
    file text primary key,
    checksum text not null,
    applied_at timestamptz not null default now()
);

-- name: applied_migrations
select version, name, checksum from schema_version order by version;

-- name: functions_checksum
select checksum from schema_functions where file = %(file)s;

-- name: record_migration
insert into schema_version (version, name, checksum) values (%(version)s, %(name)s, %(checksum)s);

-- name: record_functions
insert into schema_functions as f (file, checksum) values (%(file)s, %(checksum)s)
on conflict (file) do update set checksum = excluded.checksum, applied_at = now();
