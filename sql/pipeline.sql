-- Named queries of the etl_pipeline tasks. {raw_table} is an identifier filled in with
-- psycopg.sql.Identifier: the raw table of the source's kind (raw_api_data or raw_csv_data), which holds
-- every source of that kind keyed by (source, source_id); every value is a named parameter.

-- name: lock_schema
select pg_advisory_xact_lock(hashtextextended('sluice:schema', 0));

-- name: set_lock_timeout
select set_config('lock_timeout', %(timeout)s, true);

-- name: install_scope_key
-- the key that signs the read API's scopes (sluice.scope_key; migration 018): only the owner may call this
select sluice_private.install_scope_key(%(key)s);

-- name: set_work_mem
select set_config('work_mem', %(work_mem)s, true);

-- name: set_maintenance_work_mem
select set_config('maintenance_work_mem', %(work_mem)s, true);

-- name: lock_source
select pg_advisory_xact_lock(hashtextextended('sluice:source:' || %(source)s, 0));

-- name: delete_staged
delete from staged_records where run_id = %(run_id)s and source = %(source)s;

-- name: copy_staged
copy staged_records (run_id, source, record_no, source_id, data, problem, payload, content_hash, attributes)
from stdin;

-- name: delete_rejects_of_stage
delete from rejected_records where run_id = %(run_id)s and source = %(source)s and stage = %(stage)s;

-- name: quarantine_problems
with gone as (
    delete from staged_records
    where run_id = %(run_id)s and source = %(source)s and problem is not null
    returning source_id, record_no, problem, payload
)
insert into rejected_records (run_id, source, source_id, stage, reason, payload)
select %(run_id)s, %(source)s, source_id, 'store_raw', problem,
       jsonb_build_object('record_no', record_no, 'raw', payload)
from gone;

-- name: quarantine_duplicates
with duplicated as (
    select source_id, max(record_no) as kept
    from staged_records
    where run_id = %(run_id)s and source = %(source)s
    group by source_id
    having count(*) > 1
), gone as (
    delete from staged_records s
    using duplicated d
    where s.run_id = %(run_id)s and s.source = %(source)s
      and s.source_id = d.source_id and s.record_no < d.kept
    returning s.source_id, s.record_no, s.data, d.kept
)
insert into rejected_records (run_id, source, source_id, stage, reason, payload)
select %(run_id)s, %(source)s, source_id, 'store_raw',
       'duplicate source_id ' || source_id || ' in this batch: record ' || record_no
           || ' is overridden by record ' || kept || ', the last occurrence',
       data::jsonb
from gone;

-- name: next_fetch_seq
select nextval('sluice_fetch_seq');

-- name: newest_fetch_seq
-- the fetch order of the newest batch stored for the source; 0 when none was stored since fetches were ordered
select coalesce((select raw_fetch_seq from etl_checkpoint where source = %(source)s), 0);

-- name: remove_superseded
-- A batch fetched before the newest one the source holds replaces none of its stored rows: a full read
-- (the CSV, the API without api_since_param) sees every record, so each stored row is at least as new as
-- this batch's, whether the newer read changed it or found it unchanged (an unchanged row is never
-- rewritten, so no per-row stamp could tell which records the newer read saw). The batch's records the
-- source does not hold yet are still stored. After an incremental API read, a record it did not cover
-- keeps its stored payload until a read covers it again.
delete from staged_records s
using {raw_table} r
where s.run_id = %(run_id)s and s.source = %(source)s and r.source = s.source and r.source_id = s.source_id;

-- name: raw_table_estimate
-- the raw table's size as the planner estimates it (no count(*) of a big table)
select greatest(reltuples, 0)::bigint from pg_class where oid = %(raw_table)s::regclass;

-- name: upsert_raw
-- The raw tables' data is json: the record's own text, as staged (json checks it and keeps it as given).
-- Only records whose hash differs from the stored one are parsed and written. One join of the staged records with
-- the stored ones finds the changed and the new (a rerun at 1M rows: 0.7 s, against 1.4 s for an update join plus
-- an insert anti-join); changed ids are updated and new ones inserted from it, not by INSERT ... ON CONFLICT,
-- which costs about twice as much per row: the source's advisory lock is what keeps another writer from
-- inserting the same id meanwhile. A stored payload that only a held batch fetched (the quality gate held it, or a
-- later fetch superseded it) becomes this fetch's own even when unchanged: raw_candidates never publishes a held
-- batch's payload, and this fetch's is published with it.
with changes as materialized (
    select s.source_id, s.data, s.content_hash, r.id as raw_id
    from staged_records s
    left join {raw_table} r on r.source = s.source and r.source_id = s.source_id
    where s.run_id = %(run_id)s and s.source = %(source)s
      and (r.content_hash is distinct from s.content_hash
           or r.run_id in (select h.run_id from quality_runs h
                           where h.source = %(source)s and h.status in ('held', 'superseded')))
), updated as (
    update {raw_table} r
    set data = c.data::json, content_hash = c.content_hash, updated_at = now(), run_id = %(run_id)s
    from changes c
    where c.raw_id is not null and r.id = c.raw_id
    returning 1
), inserted as (
    insert into {raw_table} (source, source_id, data, content_hash, run_id)
    select %(source)s, c.source_id, c.data::json, c.content_hash, %(run_id)s
    from changes c
    where c.raw_id is null
    returning 1
)
select (select count(*) from inserted), (select count(*) from updated);

-- name: mark_raw_writer
-- raw_fetch_seq: the newest fetch the source holds (remove_superseded, delete_scope), whether or not the batch
-- changed a payload. raw_run_id: the run of the last batch that wrote raw rows (raw_written_since); a batch that
-- wrote none (unchanged, or superseded by a newer fetch) replaced no payload, so it leaves the writer as it was.
-- loaded_file: a stored batch changes what the source's last complete load left, so its file no longer stands for
-- the source's state (upsert records this batch's file once it is published, store_unchanged).
insert into etl_checkpoint as c (source, raw_run_id, raw_fetch_seq)
values (%(source)s, case when %(wrote)s then %(run_id)s end, %(fetch_seq)s)
on conflict (source) do update
    set raw_run_id = case when %(wrote)s then excluded.raw_run_id else c.raw_run_id end,
        raw_fetch_seq = greatest(c.raw_fetch_seq, excluded.raw_fetch_seq),
        -- a batch that wrote nothing and is older than the newest fetch stored (superseded) leaves it standing
        loaded_file = case when %(wrote)s or excluded.raw_fetch_seq > c.raw_fetch_seq then null
                           else c.loaded_file end;

-- name: unchanged_file
-- The source's last complete load when it read a file of this digest (the same bytes under the same catalog entry)
-- and nothing changed the source since: no other fetch stored (raw_fetch_seq is still the one that read the file,
-- and older than this one: a newer fetch stored after this one was taken wins, so this batch takes the usual
-- path), and its live rows are those that load left (a release, a hand edit). Whatever else changes the source
-- (any store, a replay, a load whose upsert did not publish) cleared loaded_file. Null: take the usual path.
select c.loaded_file
from etl_checkpoint c
where c.source = %(source)s and c.loaded_file ->> 'digest' = %(digest)s
  and c.raw_fetch_seq = (c.loaded_file ->> 'fetch_seq')::bigint and c.raw_fetch_seq < %(fetch_seq)s
  and c.row_count - (select count(*) from normalized_data n where n.source = c.source and n.deleted_at is not null)
      = (c.loaded_file ->> 'live')::bigint;

-- name: mark_unchanged_fetch
-- store_unchanged: this fetch read the file the source holds, so it is the newest fetch stored (a fetch older than
-- it that stores later is superseded by it, as if it had stored the records again), and the file's fetch moves
-- with it; it wrote no raw row, so the writer stays (raw_written_since).
update etl_checkpoint
set raw_fetch_seq = %(fetch_seq)s, loaded_file = jsonb_set(loaded_file, '{fetch_seq}', to_jsonb(%(fetch_seq)s::bigint))
where source = %(source)s;

-- name: copy_loaded_rejects
-- store_unchanged: the records the load of the same file rejected (while staging, as duplicates, by normalize) are
-- this run's rejects too, as a read of the file would find them again
insert into rejected_records (run_id, source, source_id, stage, reason, payload)
select %(run_id)s, r.source, r.source_id, r.stage, r.reason, r.payload
from rejected_records r
where r.run_id = %(loaded_run_id)s and r.source = %(source)s and r.stage in ('store_raw', 'normalize')
order by r.id;

-- name: record_loaded_file
-- upsert published a whole, newest batch read from a file: that file now stands for the source's state
update etl_checkpoint set loaded_file = %(loaded_file)s
where source = %(source)s and raw_fetch_seq = %(fetch_seq)s;

-- name: forget_loaded_file
-- a replay: the rows no longer stand for the last file loaded, so the next read of it takes the usual path
update etl_checkpoint set loaded_file = null where source = %(source)s and loaded_file is not null;

-- name: forget_loaded_file_unless_newer
-- a published batch that does not stand for the source's state: unless a newer fetch was stored since (its own
-- batch, which superseded this one, decides the record)
update etl_checkpoint set loaded_file = null
where source = %(source)s and loaded_file is not null and raw_fetch_seq <= %(fetch_seq)s;

-- name: raw_written_since
-- whether another run has written raw payloads of the source since this run stored its batch (mark_raw_writer),
-- or this run's batch wrote none and another run's was the last to: only then can a row of this run's be
-- superseded. A batch older than the newest stored one keeps only records the source did not hold, which it
-- stores itself. Which read decides deletes is the fetch order's (delete_scope), not this.
select coalesce((select raw_run_id is distinct from %(run_id)s from etl_checkpoint where source = %(source)s), true);

-- name: suspend_indexes
-- before a bulk load: drop the table's indexes and the constraints they back, remembering their DDL
select sluice_suspend_indexes(%(table)s::regclass);

-- name: prefer_hash_joins
-- for a load that may double a table: a nested loop over a table the planner believes (nearly) empty would
-- scan it once per incoming row, and the rows the statement itself inserts make each scan longer: quadratic
select set_config('enable_nestloop', 'off', true);

-- name: restore_indexes
-- after it: build them again, each in one pass (in parallel when the server allows) instead of row by row
select sluice_restore_indexes(%(table)s::regclass);

-- name: analyze_loaded
-- after a bulk load, in its transaction (ANALYZE counts the transaction's own new rows): the next run's plans see the
-- table as it now is. Left to autovacuum, a run that came right after a first load (an unchanged rerun takes seconds
-- now) planned nested loops over a table its statistics still called empty: a 1% change's upsert took 146 s, not 2.
analyze {table};

-- name: analyze_staged
-- fresh statistics after a bulk load, so the joins that follow get hash plans, not nested loops: of the columns
-- the steps filter and join on only (the payloads' and attributes' statistics would cost their sampling, unused)
analyze staged_records (run_id, source, source_id, problem, content_hash);

-- name: analyze_normalized_stage
analyze normalized_stage (run_id, source, source_id, raw_hash, from_raw);

-- name: count_staged
select count(*) from staged_records where run_id = %(run_id)s and source = %(source)s;

-- name: staged_summary
-- the run's staged records left after quarantine, and the latest id among them in the order of sluice_later_id
-- (its highest integer, spelled as staged, else its last text id in byte order), which its checkpoint advances
-- to: one pass over rows store_raw reads anyway, so the checkpoint never rescans them
select count(*), coalesce(sluice_integer_id(max(sluice_integer_id_key(source_id))), max(source_id collate "C"))
from staged_records where run_id = %(run_id)s and source = %(source)s;

-- name: staged_cursor
-- the newest value of the source's cursor field among the run's staged records left after quarantine, compared
-- as times (sluice_cursor_time), spelled as staged; null when none is a time. Only a source with a cursor asks.
-- Values of one length, one character between date and time and one UTC offset order as text does as times
-- (ISO 8601's fields are fixed-width; epoch seconds of one length too), so each such group's text maximum is its
-- newest, and only those few are read as times: casting every value took 25 s at 1M rows here. A top-level
-- field is read from the json text (cheaper than jsonb), once per record (offset 0: not once per use).
select v from (
    select max(v collate "C") as v
    from (select case when strpos(%(field)s, '.') = 0 then data::json ->> %(field)s
                      else sluice_lookup(data::jsonb, %(field)s) #>> '{}' end as v
          from staged_records where run_id = %(run_id)s and source = %(source)s
          offset 0) cursor_values
    where v is not null
    group by length(v), substr(v, 11, 1),
             case when substr(v, length(v) - 5, 1) in ('+', '-') then right(v, 6)
                  when substr(v, length(v) - 4, 1) in ('+', '-') then right(v, 5)
                  when substr(v, length(v) - 2, 1) in ('+', '-') then right(v, 3) end
) newest_of_each_group
where sluice_cursor_time(v) is not null
order by sluice_cursor_time(v) desc, v collate "C" desc
limit 1;

-- name: delete_normalized_stage
delete from normalized_stage where run_id = %(run_id)s and source = %(source)s;

-- name: create_slow_candidates
create temporary table if not exists sluice_slow_candidates (
    source_id text collate "C", data jsonb, input_hash text, raw_hash text, from_raw boolean
) on commit drop;

-- name: normalize_fast
-- Candidates (<candidates>: staged_candidates, or raw_candidates after a changed declaration) are records whose
-- input (payload hash + mapping + declared fields + rules) differs from what produced their current row; unchanged
-- records are never parsed. One pass decides each candidate (offset 0: its payload is parsed once, not once per
-- use): the set-based fast path's rows go to normalized_stage with their attributes, the records it cannot decide
-- (their payload kept only for them) to sluice_slow_candidates for the marshmallow schema. No anti-join of the
-- candidates against the fast rows: a `not in` of the fast ids is hashed only while they fit in work_mem, and past
-- it (10M records) rescans them for every candidate. Declared fields are not typed here: ingest typed them
-- (rules.AttributeTyper, the schema's own fields) into the staged attributes, which a record of a source that
-- declares fields needs to be fast; null ones (a value ingest left to the schema, staged attributes of other
-- rules, a record from the raw table) go to the schema.
-- Returns the fast path's count.
with decided as (
    select c.source_id, c.input_hash, c.content_hash, f.source_id as fast_id, f.name, f.value, f.description,
           case when f.source_id is not null and %(declares_fields)s then c.attributes end as attributes,
           case when f.source_id is null then c.data end as data
    from ({candidates} offset 0) c
    left join lateral (
        select * from sluice_fast_path(c.data, %(source_id_field)s, %(name_field)s, %(value_field)s,
                                       %(description_field)s, %(edge_space)s)
        -- off for a source with row-level checks (rules.Normalization.fast_path): they are the schema's rules
        where %(fast_path)s and (not %(declares_fields)s or c.attributes is not null)
    ) f on true
), fast as (
    insert into normalized_stage (run_id, source, source_id, name, value, description, attributes, input_hash,
                                  raw_hash, from_raw)
    -- the fast path accepts only ids without edge whitespace, so its id is the staged (stripped) id
    select %(run_id)s, %(source)s, d.fast_id, d.name, d.value, d.description,
           case when %(declares_fields)s then d.attributes::jsonb else '{{}}'::jsonb end, d.input_hash,
           d.content_hash, %(from_raw)s
    from decided d
    where d.fast_id is not null
    returning source_id
), slow as (
    insert into sluice_slow_candidates (source_id, data, input_hash, raw_hash, from_raw)
    select d.source_id, d.data, d.input_hash, d.content_hash, %(from_raw)s
    from decided d
    where d.fast_id is null
    returning 1
)
select count(*) from fast;

-- name: staged_candidates
-- the run's staged records whose input changed (or all, on a full refresh); their attributes when ingest typed them
-- with the rules normalize brings (staged_attributes)
select s.source_id, s.data::jsonb as data, s.content_hash, md5(s.content_hash || %(input_key)s) as input_hash,
       case when %(staged_attributes)s then s.attributes end as attributes
from staged_records s
left join normalized_data n on n.source = s.source and n.source_id = s.source_id
where s.run_id = %(run_id)s and s.source = %(source)s
  and (%(full_refresh)s or n.input_hash is distinct from md5(s.content_hash || %(input_key)s))

-- name: raw_candidates
-- after a changed declaration: the source's stored raw records this run did not fetch whose row (or reject) came
-- from another input, so an incremental source is re-normalized whole without refetching; on a replay (sluice.replay)
-- every one, since a damaged row may keep its input's hash. <raw_table> is the source's; every one is the newest
-- payload stored, so the fetch order holds. A payload a held batch stored (the quality gate held it back, or a later
-- fetch superseded it) was never published: only its release or a later fetch of the record publishes it, so its
-- row keeps what it had until then, on a replay too.
select r.source_id, r.data::jsonb as data, r.content_hash, md5(r.content_hash || %(input_key)s) as input_hash,
       null::text as attributes
from {raw_table} r
left join normalized_data n on n.source = r.source and n.source_id = r.source_id
where r.source = %(source)s
  and (%(replay)s or n.input_hash is distinct from md5(r.content_hash || %(input_key)s))
  and not exists (select from staged_records s
                  where s.run_id = %(run_id)s and s.source = %(source)s and s.source_id = r.source_id)
  and not exists (select from quality_runs h
                  where h.run_id = r.run_id and h.source = r.source and h.status in ('held', 'superseded'))

-- name: select_slow_candidates
-- data as text, which rules.Normalization reads with its numbers as Decimal: jsonb keeps every digit, psycopg's
-- json loader would make floats of them
select source_id, data::text, input_hash, raw_hash, from_raw from sluice_slow_candidates;

-- name: copy_normalized_stage
copy normalized_stage (run_id, source, source_id, name, value, description, attributes, input_hash, raw_hash,
                       from_raw) from stdin;

-- name: copy_rejects
copy rejected_records (run_id, source, source_id, stage, reason, payload) from stdin;

-- name: upsert_normalized
-- Only rows whose raw payload is still the stored one are written: when another run has stored raw
-- payloads since this one did, it may have replaced some. Existing rows are updated where something
-- differs (attributes included), new ones inserted; joins instead of ON CONFLICT, under the source's advisory lock
-- (see upsert_raw). Counts: (inserted, updated, rows after that filter) of the run's fetched records, then
-- (inserted, updated) of the rows re-normalized from raw (from_raw).
with current as materialized (
    select ns.source, ns.source_id, ns.name, ns.value, ns.description, ns.attributes, ns.input_hash, ns.run_id,
           ns.from_raw
    from normalized_stage ns
    where ns.run_id = %(run_id)s and ns.source = %(source)s
      and (not %(raw_written_since)s
           or (ns.source_id, ns.raw_hash) in (select r.source_id, r.content_hash from {raw_table} r
                                              where r.source = %(source)s))
), updated as (
    update normalized_data n
    set name = c.name,
        value = c.value,
        description = c.description,
        attributes = c.attributes,
        input_hash = c.input_hash,
        updated_at = case when (n.name, n.value, n.description, n.attributes)
                               is distinct from (c.name, c.value, c.description, c.attributes)
                          then now() else n.updated_at end,
        last_changed_run_id = case when (n.name, n.value, n.description, n.attributes)
                                        is distinct from (c.name, c.value, c.description, c.attributes)
                                   then c.run_id else n.last_changed_run_id end
    from current c
    where n.source = c.source and n.source_id = c.source_id
      and (n.name, n.value, n.description, n.attributes, n.input_hash)
          is distinct from (c.name, c.value, c.description, c.attributes, c.input_hash)
    returning n.updated_at = now() as changed, c.from_raw
), inserted as (
    insert into normalized_data
        (source, source_id, name, value, description, attributes, first_seen_run_id, last_changed_run_id, input_hash)
    select c.source, c.source_id, c.name, c.value, c.description, c.attributes, c.run_id, c.run_id, c.input_hash
    from current c
    where not exists (select 1 from normalized_data n where n.source = c.source and n.source_id = c.source_id)
    returning 1
), new_from_raw as (
    -- rows re-normalized from raw that had no row (rejected before): the statement's snapshot predates the insert
    select count(*) as n
    from current c
    where %(renormalized)s and c.from_raw
      and not exists (select 1 from normalized_data n where n.source = c.source and n.source_id = c.source_id)
)
select (select count(*) from inserted) - r.n,
       (select count(*) filter (where changed and not from_raw) from updated),
       (select count(*) filter (where not from_raw) from current),
       r.n,
       (select count(*) filter (where changed and from_raw) from updated)
from new_from_raw r;

-- name: source_has_rows
select exists (select 1 from normalized_data where source = %(source)s);

-- name: insert_normalized_new
-- upsert_normalized for a source without a row in normalized_data (its first load): every row is new, so each is
-- inserted without joining rows the source does not have (1M rows: 1.3 s against 1.8-2.7 s). Same filter on
-- replaced raw payloads, same result: (inserted, updated, rows after that filter) of fetched records, then
-- (inserted, updated) of rows re-normalized from raw.
with inserted as (
    insert into normalized_data
        (source, source_id, name, value, description, attributes, first_seen_run_id, last_changed_run_id, input_hash)
    select ns.source, ns.source_id, ns.name, ns.value, ns.description, ns.attributes, ns.run_id, ns.run_id,
           ns.input_hash
    from normalized_stage ns
    where ns.run_id = %(run_id)s and ns.source = %(source)s
      and (not %(raw_written_since)s
           or (ns.source_id, ns.raw_hash) in (select r.source_id, r.content_hash from {raw_table} r
                                              where r.source = %(source)s))
    returning 1
), from_raw as (
    -- the rows re-normalized from raw among them (a first load after a changed declaration)
    select count(*) as n
    from normalized_stage ns
    -- renormalized false (nearly always): folded away, no second scan of the stage
    where %(renormalized)s and ns.run_id = %(run_id)s and ns.source = %(source)s and ns.from_raw
      and (not %(raw_written_since)s
           or (ns.source_id, ns.raw_hash) in (select r.source_id, r.content_hash from {raw_table} r
                                              where r.source = %(source)s))
)
select (select count(*) from inserted) - f.n, 0, (select count(*) from inserted) - f.n, f.n, 0
from from_raw f;

-- name: live_rows
-- the source's live rows: its rows (kept by a trigger) less its deleted ones, which the partial index
-- normalized_data_deleted_idx alone counts
select coalesce((select row_count from etl_checkpoint where source = %(source)s), 0)
       - (select count(*) from normalized_data where source = %(source)s and deleted_at is not null);

-- name: delete_scope
-- whether this run's batch (fetch_seq) is the newest fetch stored for the source, whichever batch stored last,
-- and how many records its store_raw quarantined without an id (any row's record may be among them)
select coalesce((select raw_fetch_seq = %(fetch_seq)s from etl_checkpoint where source = %(source)s), false),
       (select count(*) from rejected_records
        where run_id = %(run_id)s and source = %(source)s and stage = 'store_raw' and source_id is null);

-- name: soft_delete_missing
-- the source's live rows whose record this run's read did not contain: neither staged nor quarantined (a bad
-- record is still at the source); hash anti-joins of whole sets. They are soft-deleted only when they are at most
-- max_deletes (the guard): a refused read writes no row version, so an emptied source costs one read of its rows,
-- not an update of each that is rolled back and leaves them all dead. updated_at moves, so a client syncing by
-- updated_since sees the tombstone (with include_deleted=true). Returns (missing, deleted).
with missing as materialized (
    select n.id
    from normalized_data n
    where n.source = %(source)s and n.deleted_at is null
      and not exists (select 1 from staged_records s
                      where s.run_id = %(run_id)s and s.source = %(source)s and s.source_id = n.source_id)
      and not exists (select 1 from rejected_records r
                      where r.run_id = %(run_id)s and r.source = %(source)s and r.stage = 'store_raw'
                        and r.source_id = n.source_id)
), deleted as (
    update normalized_data n
    set deleted_at = now(), deleted_run_id = %(run_id)s, updated_at = now()
    from missing m
    where n.id = m.id and (select count(*) from missing) <= %(max_deletes)s
    returning 1
)
select (select count(*) from missing), (select count(*) from deleted);

-- name: undelete_returned
-- deleted rows whose record this run's read contains are live again, changed or not (normalize skips an
-- unchanged record, so the staged ids decide, not normalized_stage). The deleted rows come from the partial
-- index; the read's ids are one hashed set.
update normalized_data n
set deleted_at = null, deleted_run_id = null, updated_at = now()
where n.source = %(source)s and n.deleted_at is not null
  -- a source without deleted rows (nearly always) never reads the staged ids: hashing them costs 0.7 s at 1M
  and exists (select from normalized_data d where d.source = %(source)s and d.deleted_at is not null)
  and n.source_id in (select s.source_id from staged_records s
                      where s.run_id = %(run_id)s and s.source = %(source)s
                      union all
                      select r.source_id from rejected_records r
                      where r.run_id = %(run_id)s and r.source = %(source)s and r.stage = 'store_raw');

-- name: bulk_load_size
-- rows this run brings for the source, rows the table holds now (kept by a trigger, no count(*)), and how
-- many of the rows it brings are new at least: its records that normalize passed, changed or unchanged (one
-- per id), less every row the source holds (each may be one of them)
select (select count(*) from normalized_stage where run_id = %(run_id)s and source = %(source)s),
       (select coalesce(sum(row_count), 0) from etl_checkpoint),
       (select count(*) from staged_records where run_id = %(run_id)s and source = %(source)s)
           - (select count(*) from rejected_records
              where run_id = %(run_id)s and source = %(source)s and stage = 'normalize')
           - (select coalesce(sum(row_count), 0) from etl_checkpoint where source = %(source)s);

-- name: select_checkpoint
select last_processed_id, last_processed_at, total_processed, row_count, last_run_id
from etl_checkpoint where source = %(source)s;

-- name: advance_checkpoint
-- last_id: the highest id this run stored, as store_raw found it (staged_summary); processed: what this run
-- adds to the total (a redo adds only the difference, warehouse.advance_checkpoint). The position only moves forward,
-- so a run finishing after a newer one cannot take it back; a full refresh read the source whole and sets it.
insert into etl_checkpoint as c (source, last_processed_id, last_processed_at, total_processed, last_run_id)
values (%(source)s, %(last_id)s, now(), %(processed)s, %(run_id)s)
on conflict (source) do update
    set last_processed_id = case when %(full_refresh)s then coalesce(excluded.last_processed_id, c.last_processed_id)
                                 else sluice_later_id(c.last_processed_id, excluded.last_processed_id) end,
        last_processed_at = excluded.last_processed_at,
        total_processed = c.total_processed + excluded.total_processed,
        last_run_id = excluded.last_run_id,
        updated_at = now()
returning last_processed_id;

-- name: select_time_bounds
-- what a read bounded by time starts from: the cursor's newest value loaded, and the end of the newest interval
-- the source was read in
select last_cursor, read_until from etl_checkpoint where source = %(source)s;

-- name: advance_time_bounds
-- in advance_checkpoint's transaction, after the source's lane loaded: both only move forward, so a retry, a
-- clear or a run that finishes after a newer one never takes them back (a null leaves them as they are)
update etl_checkpoint
set last_cursor = sluice_later_cursor(last_cursor, %(last_cursor)s),
    read_until = greatest(read_until, %(read_until)s)
where source = %(source)s
returning last_cursor, read_until;

-- name: record_skip
-- a run skipped the source (it was not due): GET /sources shows the newest skip and why; a source never read
-- gets its row here, with its kind
insert into etl_checkpoint as c (source, kind, last_skip_run_id, last_skip_at, last_skip_reason)
values (%(source)s, %(kind)s, %(run_id)s, now(), %(reason)s)
on conflict (source) do update
    set kind = coalesce(c.kind, excluded.kind),
        last_skip_run_id = excluded.last_skip_run_id,
        last_skip_at = excluded.last_skip_at,
        last_skip_reason = excluded.last_skip_reason;

-- name: record_run
insert into etl_runs (run_id, run_type, data_interval_start, data_interval_end, started_at, ended_at,
                      duration_seconds, records_processed, status, error_message, errors,
                      fetched, inserted, updated, unchanged, superseded, rejected, source_counts, accept_deletes,
                      skipped)
values (%(run_id)s, %(run_type)s, %(data_interval_start)s, %(data_interval_end)s, %(started_at)s, now(),
        extract(epoch from now() - %(started_at)s), %(records_processed)s, %(status)s, %(error_message)s, %(errors)s,
        %(fetched)s, %(inserted)s, %(updated)s, %(unchanged)s, %(superseded)s, %(rejected)s, %(source_counts)s,
        %(accept_deletes)s, %(skipped)s)
on conflict (run_id) do update
    set run_type = excluded.run_type,
        data_interval_start = excluded.data_interval_start,
        data_interval_end = excluded.data_interval_end,
        started_at = excluded.started_at,
        ended_at = excluded.ended_at,
        duration_seconds = excluded.duration_seconds,
        records_processed = excluded.records_processed,
        status = excluded.status,
        error_message = excluded.error_message,
        errors = excluded.errors,
        fetched = excluded.fetched,
        inserted = excluded.inserted,
        updated = excluded.updated,
        unchanged = excluded.unchanged,
        superseded = excluded.superseded,
        rejected = excluded.rejected,
        source_counts = excluded.source_counts,
        accept_deletes = excluded.accept_deletes,
        skipped = excluded.skipped
returning id;

-- name: record_source_status
-- how the source fared in a run, for GET /sources: error null is a success. A success leaves the last error
-- (last_error_at before last_success_at says it is over); a null kind keeps the one recorded. updated_at is the
-- checkpoint's and stays.
insert into etl_checkpoint as c (source, kind, last_success_run_id, last_success_at,
                                 last_error, last_error_summary, last_error_run_id, last_error_at)
values (%(source)s, %(kind)s,
        case when %(error)s::text is null then %(run_id)s end,
        case when %(error)s::text is null then now() end,
        %(error)s, %(summary)s, case when %(error)s::text is not null then %(run_id)s end,
        case when %(error)s::text is not null then now() end)
on conflict (source) do update
    set kind = coalesce(excluded.kind, c.kind),
        last_success_run_id = coalesce(excluded.last_success_run_id, c.last_success_run_id),
        last_success_at = coalesce(excluded.last_success_at, c.last_success_at),
        last_error = coalesce(excluded.last_error, c.last_error),
        last_error_summary = case when excluded.last_error is not null then excluded.last_error_summary
                                  else c.last_error_summary end,
        last_error_run_id = coalesce(excluded.last_error_run_id, c.last_error_run_id),
        last_error_at = coalesce(excluded.last_error_at, c.last_error_at);

-- name: register_work
-- store_raw's source now has rows in the work tables (in the transaction that copies them): record_run removes
-- them, or the sweep once the run is abandoned
insert into etl_run_work (run_id, source) values (%(run_id)s, %(source)s)
on conflict (run_id, source) do update set created_at = now();

-- name: sweep_old_steps
-- the step results of other runs whose newest one is older than the retention: a task of theirs cleared
-- after that redoes its work instead of returning what it committed. Only the older results are read (by
-- created_at's index, nothing when there are none).
with old as (
    select run_id from etl_step_results
    where run_id in (select run_id from etl_step_results where created_at < now() - %(retention)s)
      and run_id <> %(run_id)s
    group by run_id
    having max(created_at) < now() - %(retention)s
)
delete from etl_step_results s using old o where s.run_id = o.run_id;

-- name: sweep_abandoned_work
-- the work rows of other runs' sources registered longer ago than the retention, whose run wrote no step result
-- since: runs killed, or marked failed by hand, before their record_run, and failed sources a clear could have
-- redone. Returns (run_id, source, registered at); the caller deletes their rows with this run's.
delete from etl_run_work w
where w.created_at < now() - %(retention)s and w.run_id <> %(run_id)s
  and not exists (select 1 from etl_step_results s
                  where s.run_id = w.run_id and s.created_at >= now() - %(retention)s)
returning w.run_id, w.source, w.created_at;

-- name: work_of_others
-- whether any run's source other than the given sources of this run has rows in the work tables: every
-- store_raw registers its source in the transaction that writes them (register_work)
select exists (select 1 from etl_run_work where run_id <> %(run_id)s or not (source = any(%(sources)s)));

-- name: lock_work_tables
-- waits for every transaction that reads or writes the work tables, so work_of_others, asked again under
-- it, sees every run whose rows they hold
lock table staged_records, normalized_stage in access exclusive mode;

-- name: truncate_work
-- the work tables hold only the rows being removed: emptied whole, at no cost per row
truncate staged_records, normalized_stage;

-- name: delete_work_of
-- other runs have rows in the work tables: only the rows of the (run_id, source) pairs given go, by a scan of
-- each table
with pairs as (select * from unnest(%(run_ids)s::text[], %(sources)s::text[]) as p(run_id, source)),
     staged as (delete from staged_records s using pairs p where s.run_id = p.run_id and s.source = p.source)
delete from normalized_stage n using pairs p where n.run_id = p.run_id and n.source = p.source;

-- name: unregister_work
delete from etl_run_work w
using unnest(%(run_ids)s::text[], %(sources)s::text[]) as p(run_id, source)
where w.run_id = p.run_id and w.source = p.source;

-- name: recorded_step
select result from etl_step_results where run_id = %(run_id)s and source = %(source)s and step = %(step)s;

-- name: record_step
insert into etl_step_results (run_id, source, step, result) values (%(run_id)s, %(source)s, %(step)s, %(result)s);

-- name: forget_step
delete from etl_step_results where run_id = %(run_id)s and source = %(source)s and step = %(step)s;

-- name: stale_sources
-- the run's sources whose newest successful load is older than the limit; one never loaded is not stale (its
-- failure, if any, is the alert). One indexed row per source: etl_checkpoint is keyed by source.
select source, last_success_at from etl_checkpoint
where source = any(%(sources)s) and last_success_at < now() - make_interval(secs => %(limit_seconds)s)
order by source;
