-- Who may read what, enforced by PostgreSQL (issue 24): row-level security on every table that holds a source's
-- rows or bookkeeping, for every role but the owner. The pipeline owns the tables, so it bypasses RLS (no FORCE)
-- and pays nothing; the web app logs in as a reader role and sees only what its request's scope allows.
--
-- Threat model. The read API's routes filter by the request's scope (webapp.scopes); this is the second
-- enforcement, for when a route forgets a filter, or runs SQL nobody meant (a composed fragment gone wrong, an
-- injection): no statement the reader role runs can see rows outside the scope the app gave its transaction.
-- So the scope must be something the app can set and that SQL cannot:
--  * The app sets `sluice.scope` (sluice_enter_scope, first statement of each transaction, local to it) to a
--    token signed with HMAC-SHA256 under a key only the app's configuration and the owner know: the key lives
--    in sluice_private.scope_key, which no other role may read (grants made by default privileges are revoked
--    below), so SQL can call set_config() but cannot forge a token that verifies.
--  * A token names the backend it was made for and expires 60 s after it was made: a token seen elsewhere is
--    refused on another connection, and soon everywhere. Reader roles should not see other sessions' query
--    text (`alter role ... set track_activities = off`, sluice_devtools.reader_role): a concurrent request's
--    token is then never visible to SQL.
--  * No setting, a malformed, unsigned, forged, expired or foreign token: no rows (fail closed).
--  * Policies are for SELECT only: with RLS on, a non-owner's writes find no policy and are refused too.
-- Not covered: the owner and superusers (they bypass RLS by design); a role given BYPASSRLS or pg_read_all_data;
-- etl_runs' per-source columns (source_counts, skipped, errors: one row per run, so rows cannot be split by
-- source; the routes mask them). A new raw table (a new kind) needs the same policy in its migration.
--
-- Cost. The policies call the verifier as an initplan, `(select sluice_scope_all())`: once per statement, not
-- per row (each is about 20 µs). A user predicate whose operator is not leakproof (ilike, jsonb @>) cannot be
-- an index condition under RLS (PostgreSQL evaluates the policy first), so searches and attribute filters read
-- more rows for a reader than for the owner: bench/README.md has the measured cost.

create schema if not exists sluice_private;

-- The HMAC key as its two pads (key xor ipad, key xor opad; RFC 2104, SHA-256's 64-byte block): PostgreSQL has
-- sha256() but no hmac() without pgcrypto. One row; replaced by sluice_private.install_scope_key.
create table if not exists sluice_private.scope_key (
    singleton boolean primary key default true check (singleton),
    inner_pad bytea not null check (length(inner_pad) = 64),
    outer_pad bytea not null check (length(outer_pad) = 64),
    installed_at timestamptz not null default now()
);

-- Nobody but the owner: a reader role made earlier may hold grants on tables and schemas created later
-- (docker/postgres-init/02-sluice-reader.sh's default privileges), so revoke every grant there is, by name.
do $$
declare
    grantee text;
begin
    for grantee in
        select distinct a.grantee::regrole::text
        from pg_namespace n, aclexplode(n.nspacl) a
        where n.nspname = 'sluice_private' and a.grantee not in (0, n.nspowner)
        union
        select distinct a.grantee::regrole::text
        from pg_class c, aclexplode(c.relacl) a
        where c.oid = 'sluice_private.scope_key'::regclass and a.grantee not in (0, c.relowner)
    loop
        execute format('revoke all on schema sluice_private from %s', grantee);
        execute format('revoke all on sluice_private.scope_key from %s', grantee);
    end loop;
end
$$;
revoke all on schema sluice_private from public;
revoke all on sluice_private.scope_key from public;

-- Install (or replace) the key: 32 to 64 bytes, so that it is its own HMAC key (a longer one would be hashed).
create or replace function sluice_private.install_scope_key(key bytea) returns void
language plpgsql volatile set search_path = pg_catalog, pg_temp as $$
declare
    padded bytea;
    inner_pad bytea;
    outer_pad bytea;
begin
    if length(key) not between 32 and 64 then
        raise exception 'the scope key has % bytes; it needs 32 to 64', length(key);
    end if;
    padded := key || decode(repeat('00', 64 - length(key)), 'hex');
    inner_pad := padded;
    outer_pad := padded;
    for i in 0..63 loop
        inner_pad := set_byte(inner_pad, i, get_byte(padded, i) # 54);  -- 0x36
        outer_pad := set_byte(outer_pad, i, get_byte(padded, i) # 92);  -- 0x5c
    end loop;
    insert into sluice_private.scope_key as k (inner_pad, outer_pad) values (inner_pad, outer_pad)
    on conflict (singleton) do update
        set inner_pad = excluded.inner_pad, outer_pad = excluded.outer_pad, installed_at = now();
end
$$;
revoke all on function sluice_private.install_scope_key(bytea) from public;

-- A token, `<backend pid>|<expiry, ms since 1970>|<operations 0/1>|<sources: * or a,b,c>|<hex hmac of the rest>`
-- (webapp.scope_token makes them), checked: claims = {operations, sources} when it verifies, else problem says
-- why. Security definer: it reads the key.
create or replace function sluice_private.scope_claims(token text, out claims text[], out problem text)
language plpgsql stable security definer set search_path = pg_catalog, pg_temp as $$
declare
    parts text[];
    pads record;
begin
    if token is null or token = '' then
        problem := 'no scope is set';
        return;
    end if;
    parts := string_to_array(token, '|');
    if cardinality(parts) <> 5 or parts[2] !~ '^[0-9]{1,15}$' or parts[3] not in ('0', '1') then
        problem := 'the scope token is malformed';
        return;
    end if;
    select k.inner_pad, k.outer_pad into pads from sluice_private.scope_key k;
    if not found then
        problem := 'no scope key is installed in this warehouse (sluice.scope_key.install, as the owner)';
        return;
    end if;
    if encode(sha256(pads.outer_pad || sha256(pads.inner_pad || convert_to(array_to_string(parts[1:4], '|'), 'UTF8'))),
              'hex') <> parts[5] then
        problem := 'the scope token''s signature does not verify: the web app''s SLUICE_SCOPE_KEY is not the key '
                   'installed in this warehouse';
        return;
    end if;
    if parts[1] <> pg_backend_pid()::text then
        problem := 'the scope token was made for another connection';
        return;
    end if;
    if to_timestamp(parts[2]::bigint / 1000.0) < statement_timestamp() then
        problem := 'the scope token has expired (or the clocks of the web app and the database differ by a minute)';
        return;
    end if;
    claims := parts[3:4];
end
$$;
revoke all on function sluice_private.scope_claims(text) from public;

-- The app's first statement in each transaction: set the token, or fail loudly saying why it does not verify
-- (a wrong key would otherwise look like an empty warehouse). The policies check the setting again.
create or replace function sluice_enter_scope(token text) returns void
language plpgsql volatile security definer set search_path = pg_catalog, pg_temp as $$
declare
    problem text := (sluice_private.scope_claims(token)).problem;
begin
    if problem is not null then
        raise exception 'the warehouse refused the web app''s scope: %', problem using errcode = 'insufficient_privilege';
    end if;
    perform set_config('sluice.scope', token, true);
end
$$;

-- What the policies read, each wrapped as `(select f())` so that it is an initplan. Security definer: they call
-- sluice_private, which the caller may not use.
create or replace function sluice_scope_all() returns boolean
language sql stable security definer set search_path = pg_catalog, pg_temp as $$
    select coalesce((sluice_private.scope_claims(current_setting('sluice.scope', true))).claims[2] = '*', false)
$$;

create or replace function sluice_scope_sources() returns text[]
language sql stable security definer set search_path = pg_catalog, pg_temp as $$
    select coalesce(string_to_array(nullif(
        (sluice_private.scope_claims(current_setting('sluice.scope', true))).claims[2], ''), ','), '{}')
$$;

create or replace function sluice_scope_operations() returns boolean
language sql stable security definer set search_path = pg_catalog, pg_temp as $$
    select coalesce((sluice_private.scope_claims(current_setting('sluice.scope', true))).claims[1] = '1', false)
$$;

create or replace function sluice_scope_valid() returns boolean
language sql stable security definer set search_path = pg_catalog, pg_temp as $$
    select (sluice_private.scope_claims(current_setting('sluice.scope', true))).claims is not null
$$;

-- A source's rows and bookkeeping: only the sources in scope.
do $$
declare
    tab text;
begin
    foreach tab in array array['normalized_data', 'raw_api_data', 'raw_csv_data', 'staged_records',
                               'normalized_stage', 'etl_checkpoint', 'etl_step_results', 'etl_run_work',
                               'source_fields', 'source_declarations', 'source_observed_fields',
                               'source_field_changes']
    loop
        execute format('alter table %I enable row level security', tab);
        execute format('drop policy if exists sluice_scope on %I', tab);
        execute format('create policy sluice_scope on %I for select using '
                       '((select sluice_scope_all()) or source = any ((select sluice_scope_sources())::text[]))', tab);
    end loop;
end
$$;

-- Operations data: quarantined records need the operations flag as well as the source.
alter table rejected_records enable row level security;
drop policy if exists sluice_scope on rejected_records;
create policy sluice_scope on rejected_records for select using (
    (select sluice_scope_operations())
    and ((select sluice_scope_all()) or source = any ((select sluice_scope_sources())::text[])));

-- Runs belong to no one source: any valid scope reads them (/health, /stats); none reads nothing.
alter table etl_runs enable row level security;
drop policy if exists sluice_scope on etl_runs;
create policy sluice_scope on etl_runs for select using ((select sluice_scope_valid()));

-- The typed views (schema sources) read normalized_data as the caller, not as their owner (who bypasses RLS);
-- normalize creates new ones that way (sql/declarations.sql). Not security_barrier: RLS on the table already keeps
-- other sources' rows from any user predicate, and a barrier would keep the view's own filters from its indexes.
do $$
declare
    view regclass;
begin
    for view in select c.oid::regclass from pg_class c
                where c.relnamespace = to_regnamespace('sources') and c.relkind = 'v'
    loop
        execute format('alter view %s set (security_invoker = true)', view);
    end loop;
end
$$;
