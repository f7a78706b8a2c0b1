-- Functions that are code, not data: each run of init_schema applies this file whole (create or replace)
-- when its checksum differs from the one recorded in schema_functions, without locking any table.
-- It is applied before the missing migrations, so a migration's trigger finds its function here. A SQL-language
-- function is checked when created: one that reads a table must not be here before a migration creates the
-- table (write it in PL/pgSQL, checked when called, or create it in that migration). A function whose
-- arguments or result change is dropped by a migration first (create or replace cannot change them).

-- The order of source ids, in which a checkpoint moves forward. An id of ASCII digits only is an integer and
-- compares by its value, the same value spelled with fewer leading zeros later ('007' < '07' < '7'); every other
-- id (' 7', '-3', '+4', '1e3', 'b-10') compares by its bytes, before every integer: a stray text id never takes
-- the checkpoint past a source's integers, and one total order holds for a batch (staged_summary) and for two
-- checkpoints (sluice_later_id) alike. A checkpoint is always one of the ids, spelled as it was: it is sent as is
-- to an API that may compare text, where '0012' is not '12'.
--
-- An integer's key: its value * 10000 + 9999 - its length (ids are at most 1,000 bytes, staging.MAX_ID_BYTES),
-- null for any other id. Keys order as above, and value and length together are the spelling, which
-- sluice_integer_id gives back, so store_raw finds a batch's latest id in the one max() it took before, over
-- every staged row. No limit on digits but the length's: the cast is exact.
create or replace function sluice_integer_id_key(id text) returns numeric language sql immutable parallel safe as $$
    select case when id <> '' and ltrim(id, '0123456789') = '' and length(id) <= 9999
                then id::numeric * 10000 + (9999 - length(id)) end
$$;

-- the id a key of sluice_integer_id_key was made of, byte for byte (div truncates; / would round)
create or replace function sluice_integer_id(key numeric) returns text language sql immutable parallel safe as $$
    select lpad(div(key, 10000)::text, (9999 - mod(key, 10000))::integer, '0')
$$;

-- The later of two checkpoint positions in that order; null is no position.
create or replace function sluice_later_id(a text, b text) returns text language sql immutable parallel safe as $$
    select case when a is null then b
                when b is null then a
                when (coalesce(sluice_integer_id_key(b), -1), b collate "C")
                     > (coalesce(sluice_integer_id_key(a), -1), a collate "C") then b
                else a end
$$;

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
-- Bulk loads drop a table's indexes (primary key included) and build them again afterwards, one pass
-- each, which is several times cheaper than updating them row by row. The DDL to rebuild them is kept
-- in a temporary table of the transaction, so a failed load rolls back the drops with everything else.
create or replace function sluice_suspend_indexes(tbl regclass) returns integer language plpgsql as $$
declare
    ix record;
    n integer := 0;
begin
    create temporary table if not exists sluice_suspended_indexes (table_oid oid, position integer, ddl text)
        on commit drop;
    for ix in
        select i.indexrelid, c.conname, c.oid as constraint_oid
        from pg_index i
        left join pg_constraint c on c.conindid = i.indexrelid and c.conrelid = i.indrelid
        where i.indrelid = tbl
        order by i.indisprimary desc, i.indexrelid
    loop
        n := n + 1;
        if ix.conname is not null then
            insert into sluice_suspended_indexes values (tbl, n, format('alter table %s add constraint %I %s',
                tbl, ix.conname, pg_get_constraintdef(ix.constraint_oid)));
            execute format('alter table %s drop constraint %I', tbl, ix.conname);
        else
            insert into sluice_suspended_indexes values (tbl, n, pg_get_indexdef(ix.indexrelid));
            execute format('drop index %s', ix.indexrelid::regclass);
        end if;
    end loop;
    return n;
end
$$;

create or replace function sluice_restore_indexes(tbl regclass) returns integer language plpgsql as $$
declare
    suspended record;
    n integer := 0;
begin
    for suspended in select ddl from sluice_suspended_indexes where table_oid = tbl order by position loop
        execute suspended.ddl;
        n := n + 1;
    end loop;
    delete from sluice_suspended_indexes where table_oid = tbl;
    return n;
end
$$;

-- The set-based fast path of normalize (plugins/sluice/rules.py is the definition of the rules).
-- sluice_fast_path returns the normalized row of a record it can decide, and no row otherwise: such records
-- go through the marshmallow schema, so a record the fast path accepts is one the schema accepts with the
-- same values (tests/test_fast_path.py calls this very function). Built for speed at a million rows: each
-- field is looked up and typed once, and the checks are plain comparisons (regular expressions with
-- bounded repeats, like [0-9]{1,15}, cost four times as much).

-- The value a mapping field names, SQL null when absent, by the rule of mapping.lookup (see its docstring):
-- a top-level key, else a dotted path through objects and lists, a list indexed only by a plain non-negative
-- integer (tags.0; tags.-1 and tags.01 are absent). sluice_walk follows that rule segment by segment.
create or replace function sluice_walk(data jsonb, path text[]) returns jsonb
language plpgsql immutable parallel safe as $$
declare
    part text;
begin
    foreach part in array path loop
        data := case jsonb_typeof(data)
            when 'object' then data -> part
            -- nine digits at most, as in mapping.lookup: a jsonb array holds fewer than 2**28 items
            when 'array' then case when part ~ '^(0|[1-9][0-9]{0,8})$' then data -> part::integer end
        end;
        exit when data is null;
    end loop;
    return data;
end
$$;

create or replace function sluice_lookup(data jsonb, field text) returns jsonb
language sql immutable parallel safe as $$
    select case when field is null then null
                when data ? field then data -> field
                -- #> reads a segment on an array as strtol does: -1 from the end, ' 1', '+1' and '01' as 1. A path
                -- with such a segment (digits after neither letters nor digits, or after a leading 0) takes the
                -- walk; #> reads any other path as mapping.lookup does, in C. With the mapping a query parameter,
                -- the planner folds this test away: it costs a record nothing.
                when field !~ '(^|\.)([^.[:alnum:]]+[0-9]+|0[0-9]+)(\.|$)' then data #> string_to_array(field, '.')
                else sluice_walk(data, string_to_array(field, '.')) end
$$;

-- a code point that cannot be whitespace at the edge of a value (every ASCII whitespace is <= 32);
-- edge_space: the characters str.strip() removes
create or replace function sluice_edge_ok(code integer, edge_space text) returns boolean
language sql immutable parallel safe as $$
    select code between 33 and 127 or (code > 127 and strpos(edge_space, chr(code)) = 0)
$$;

-- text the schema keeps as is: a non-empty string without edge whitespace, or a plain integer
create or replace function sluice_fast_text_ok(kind text, value text, edge_space text) returns boolean
language sql immutable parallel safe as $$
    select case kind
        when 'string' then value <> '' and sluice_edge_ok(ascii(value), edge_space)
                           and sluice_edge_ok(ascii(right(value, 1)), edge_space)
        when 'number' then length(value) <= 18 and value ~ '^-?[0-9]+$'
        else false
    end
$$;

create or replace function sluice_fast_path(data jsonb, source_id_field text, name_field text, value_field text,
                                            description_field text, edge_space text)
returns table (source_id text, name text, value double precision, description text)
language sql immutable parallel safe as $$
    select t.source_id, t.name, t.value::double precision,
           case when t.description_kind in ('string', 'number') and t.description <> '' then t.description end
    from (select jsonb_typeof(f.source_id) as source_id_kind, f.source_id #>> '{}' as source_id,
                 jsonb_typeof(f.name) as name_kind, f.name #>> '{}' as name,
                 jsonb_typeof(f.value) as value_kind, f.value #>> '{}' as value,
                 jsonb_typeof(f.description) as description_kind, f.description #>> '{}' as description
          from (select sluice_lookup(data, source_id_field) as source_id,
                       sluice_lookup(data, name_field) as name,
                       sluice_lookup(data, value_field) as value,
                       sluice_lookup(data, description_field) as description
                offset 0) f
          offset 0) t
    where sluice_fast_text_ok(t.source_id_kind, t.source_id, edge_space)
      -- a name or value the mapping does not map is null, as the schema has it (a customers file has no value)
      and (name_field is null or sluice_fast_text_ok(t.name_kind, t.name, edge_space))
      -- a plain decimal of at most 32 characters: PostgreSQL and Python both round it to the same double
      and (value_field is null
           or (t.value_kind in ('string', 'number') and length(t.value) <= 32
               and t.value ~ '^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)$'))
      and (t.description_kind is null or t.description_kind = 'null'
           or (t.description_kind = 'string' and t.description = '')
           or sluice_fast_text_ok(t.description_kind, t.description, edge_space))
$$;

-- The watermark of the read API's /data: a time at or before the updated_at of every change not yet committed.
-- Writers stamp updated_at = now(), the start of their transaction, so a change that commits later carries a
-- time no older than the oldest transaction open now, or (begun later) no older than the clock now. The API
-- reads it before it reads the rows, in a transaction of its own: whatever the rows miss commits later.
-- SECURITY DEFINER: pg_stat_activity shows when a session's transaction began only to the session's own role
-- (or pg_read_all_stats); as the schema's owner this sees the pipeline's writers whatever role reads the API.
create or replace function sluice_read_watermark() returns timestamptz
language plpgsql volatile security definer set search_path = pg_catalog, pg_temp as $$
declare
    -- before the activity is read: a transaction that does not show there yet begins after this
    clock constant timestamptz := clock_timestamp();
    oldest timestamptz;
begin
    -- the sessions as they are now, not as this transaction may have cached them
    perform pg_stat_clear_snapshot();
    -- a session running a statement outside a transaction is about to begin one at query_start
    select min(least(a.xact_start, a.query_start)) into oldest
    from pg_stat_activity a
    where a.datname = current_database() and a.pid <> pg_backend_pid() and a.state <> 'idle'
      and a.backend_type <> 'autovacuum worker';
    -- A backend takes now() when a statement arrives and shows it here a few instructions later: the
    -- second covers a backend descheduled in between, and small steps of the system clock. A watermark
    -- too early only repeats rows; too late would skip them.
    return least(clock, oldest) - interval '1 second';
end
$$;
grant execute on function sluice_read_watermark() to public;

-- A time cursor's value as a time (issue 23), null when it is not one: epoch seconds (a JSON number, or its
-- digits in a CSV), or ISO 8601, a date or a date and time, UTC when it has no offset (whatever the session's
-- TimeZone). sluice.timing.cursor_time is its Python twin. The patterns keep nearly every non-time from the
-- cast; the handler catches the rest (month 13, 30 February), which a source's bad record must not fail on.
create or replace function sluice_cursor_time(value text) returns timestamptz
language plpgsql immutable parallel safe as $$
begin
    if value ~ '^\s*-?[0-9]{1,12}(\.[0-9]+)?\s*$' then
        return to_timestamp(value::double precision);
    elsif value !~ '^\s*[0-9]{4}-[0-9]{2}-[0-9]{2}([T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,9})?)?)?\s*(Z|z|[+-][0-9]{2}(:?[0-9]{2})?)?\s*$' then
        return null;
    elsif value ~ '([Zz]|[+-][0-9]{2}(:?[0-9]{2})?)\s*$' and value ~ '[T ]' then
        return value::timestamptz;  -- its own offset: the session's TimeZone plays no part
    end if;
    return value::timestamp at time zone 'UTC';
exception when datetime_field_overflow or invalid_datetime_format or numeric_value_out_of_range then
    return null;
end
$$;

-- The later of two cursor values compared as times, spelled as given; a value that is not a time never
-- replaces one that is, and null is no value. The checkpoint's cursor only moves forward through it.
create or replace function sluice_later_cursor(a text, b text) returns text
language sql immutable parallel safe as $$
    select case when b is null or sluice_cursor_time(b) is null then a
                when a is null or sluice_cursor_time(a) is null then b
                when sluice_cursor_time(b) > sluice_cursor_time(a) then b
                else a end
$$;

-- A value the quality checks count as null (sluice.quality): absent, JSON null, or a string empty after trimming,
-- as the rules read a missing field (mapping.is_missing, rules.Text)
create or replace function sluice_quality_missing(v jsonb) returns boolean language sql immutable parallel safe as $$
    select v is null or v = 'null'::jsonb or (jsonb_typeof(v) = 'string' and btrim(v #>> '{}') = '')
$$;
