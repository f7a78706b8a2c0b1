-- API keys of the read API (issue 24). Only a key's SHA-256 is kept: the key is shown once, when it is created.
-- sources null: every source (`*`); operations: may read /runs, rejects and the sources' errors. Managed by the
-- owner's connection (flask --app webapp keys ...); the API's read-only role only reads this table, and records
-- a key's use through sluice_touch_api_key() below.
create table if not exists api_keys (
    id bigint generated always as identity primary key,
    name text not null unique check (name ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$'),
    key_hash bytea not null unique check (length(key_hash) = 32),
    sources text[] check (sources is null or cardinality(sources) > 0),
    operations boolean not null default false,
    expires_at timestamptz,
    created_at timestamptz not null default now(),
    created_by text not null,
    last_used_at timestamptz,
    revoked_at timestamptz,
    revoked_by text
);

-- The API's role cannot write api_keys, yet a key's last use is worth knowing (which keys are safe to revoke):
-- this function, run with its owner's rights, can only move last_used_at of one key forward to now(), and at
-- most once a minute per key, so a busy key costs one row version a minute rather than one per request. The
-- caller must know the key's hash, that is the key. The API calls it in a short read-write transaction of its own.
create or replace function sluice_touch_api_key(hash bytea) returns void
language sql volatile security definer set search_path = pg_catalog, pg_temp as $$
    update public.api_keys set last_used_at = now()
    where key_hash = hash and revoked_at is null
      and (last_used_at is null or last_used_at < now() - interval '1 minute');
$$;
grant execute on function sluice_touch_api_key(bytea) to public;
