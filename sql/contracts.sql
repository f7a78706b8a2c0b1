-- Named queries of schema contracts (sluice.contracts): the top-level fields of a batch and their JSON types, found
-- in store_raw's transaction before the raw upsert, compared with what the catalog declares and with what earlier
-- runs recorded (source_observed_fields), and recorded. Every value is a named parameter.

-- name: drop_batch_fields
drop table if exists sluice_batch_fields;

-- name: collect_batch_fields
-- One row per field and JSON type of the batch (sluice_batch_fields): first_record, the first staged record carrying
-- it, whose id and text example_batch_fields fetches when they are needed; the other columns are filled by the
-- queries below. declared: the mapping or a declared field reads it. change: 'new' (no earlier run recorded the
-- field), 'retyped' (see classify_batch_fields) or null.
-- The one pass over the batch: each staged record's text parsed as json (not jsonb: json_each reads the text as a
-- stream and builds no tree), its top-level keys and the types of their values; nulls carry no type. Only the
-- records whose text differs from the stored one (new or changed): an unchanged record brings no field or type
-- that its stored text did not bring when it was stored, and skipping it keeps a rerun from parsing every record;
-- the anti-join on the stored hash comes before the parsing (a left join filtered afterwards had an unchanged
-- million parsed whole). create table as, not insert: its select runs in parallel workers (twice as fast here).
create temporary table sluice_batch_fields on commit drop as
select e.key collate "C" as field, json_typeof(e.value) as json_type, min(s.record_no) as first_record,
       null::boolean as declared, null::text[] as earlier_types, null::boolean as seen_before, null::text as change,
       null::text as from_type, null::text as record_id, null::text as example, null::integer as example_length
from staged_records s
cross join lateral json_each(s.data::json) e
where s.run_id = %(run_id)s and s.source = %(source)s
  and not exists (select 1 from {raw_table} r
                  where r.source = s.source and r.source_id = s.source_id and r.content_hash = s.content_hash)
  and json_typeof(e.value) <> 'null'
group by 1, 2;

-- name: collect_uniform_batch_fields
-- A kind whose records all have the same fields with the same types (csv: the header's, each a string) shows
-- them in any one record, the example of them all: the first the scan meets, so a million-row CSV costs
-- milliseconds instead of a million parses (about 7 s here).
create temporary table sluice_batch_fields on commit drop as
select e.key collate "C" as field, json_typeof(e.value) as json_type, s.record_no as first_record,
       null::boolean as declared, null::text[] as earlier_types, null::boolean as seen_before, null::text as change,
       null::text as from_type, s.source_id as record_id, left(s.data, %(example_chars)s) as example,
       length(s.data) as example_length
from (select record_no, source_id, data from staged_records
      where run_id = %(run_id)s and source = %(source)s
      limit 1) s
cross join lateral json_each(s.data::json) e
where json_typeof(e.value) <> 'null';

-- name: recall_batch_fields
-- declared: read by the mapping or a declared field (%(read)s: the top-level keys they read). earlier_types: the
-- JSON types earlier runs recorded for the field (by its primary key). Earlier: recorded by another run, so a
-- store_raw this run redoes (a new fetch after a clear) finds the same changes again.
update sluice_batch_fields b
set declared = b.field = any(%(read)s),
    earlier_types = (select array_agg(o.json_type order by o.json_type) from source_observed_fields o
                     where o.source = %(source)s and o.field = b.field and o.first_seen_run_id <> %(run_id)s);

-- name: classify_batch_fields
-- A field whose values its readers' types cannot all read (%(typed)s: key -> {types: "integer", reads: [JSON
-- types]}) is 'retyped' from its declared type; otherwise an undeclared field whose JSON type earlier runs did not
-- record for it is 'retyped' from the types they did; a field no earlier run recorded is 'new'. A declared field's
-- type is its declaration's: a new JSON type that the declaration reads is recorded, not a change.
update sluice_batch_fields b
set seen_before = coalesce(b.json_type = any(b.earlier_types), false),
    change = case
        when unreadable.types is not null then 'retyped'
        when b.earlier_types is null then 'new'
        when not b.declared and not b.json_type = any(b.earlier_types) then 'retyped'
    end,
    from_type = case
        when unreadable.types is not null then unreadable.types
        when not b.declared and not b.json_type = any(b.earlier_types) then array_to_string(b.earlier_types, ', ')
    end
from (select b2.field, b2.json_type,
             case when not (%(typed)s::jsonb -> b2.field -> 'reads') ? b2.json_type
                  then %(typed)s::jsonb -> b2.field ->> 'types' end as types
      from sluice_batch_fields b2) unreadable
where unreadable.field = b.field and unreadable.json_type = b.json_type;

-- name: example_batch_fields
-- the id and text of the first record carrying each field and type that needs them: a pair no earlier run recorded
-- (its example), or any pair when the batch breaks a frozen contract (the error names a record of each field).
-- One scan of the run's staged records, only when some pair needs it.
update sluice_batch_fields b
set record_id = s.source_id, example = left(s.data, %(example_chars)s), example_length = length(s.data)
from staged_records s
where s.run_id = %(run_id)s and s.source = %(source)s and s.record_no = b.first_record
  and b.record_id is null and (%(all)s or not b.seen_before);

-- name: batch_fields_summary
-- pairs needing an example (new ones, and any when the batch breaks a frozen contract); undeclared fields; retyped
-- declared fields
select count(*) filter (where record_id is null and not seen_before),
       count(*) filter (where record_id is null),
       count(distinct field) filter (where not declared),
       count(distinct field) filter (where declared and change = 'retyped')
from sluice_batch_fields;

-- name: contract_violations
-- what a frozen source refuses: every undeclared field, and every declared field with a type its declaration
-- cannot read; the first %(limit)s of them by name (each once, with its first such type), for the error
select distinct on (field) field, json_type, declared, from_type, record_id
from sluice_batch_fields
where not declared or change = 'retyped'
order by field, json_type
limit %(limit)s;

-- name: forget_run_fields
-- a store_raw this run redoes records its batch again
with changes as (
    delete from source_field_changes where source = %(source)s and run_id = %(run_id)s
)
delete from source_observed_fields where source = %(source)s and first_seen_run_id = %(run_id)s;

-- name: record_field_changes
insert into source_field_changes (source, run_id, field, change, from_type, to_type, declared, record_id)
select %(source)s, %(run_id)s, field, change, from_type, json_type, declared, record_id
from sluice_batch_fields
where change is not null;

-- name: record_observed_fields
insert into source_observed_fields as o (source, field, json_type, first_seen_run_id, last_seen_run_id,
                                         example_source_id, example, example_length)
select %(source)s, field, json_type, %(run_id)s, %(run_id)s, record_id, example, example_length
from sluice_batch_fields
on conflict (source, field, json_type) do update
    set last_seen_run_id = excluded.last_seen_run_id, last_seen_at = now();

-- name: observed_field_names
-- a source's recorded fields, each once, in the order they were first seen (so a field seen later never takes an
-- earlier one's column name)
select field from source_observed_fields where source = %(source)s
group by field
order by min(first_seen_at), field;
