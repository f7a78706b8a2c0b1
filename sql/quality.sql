-- Data quality (plugins/sluice/quality.py): the batch measures, the recorded results, holds and releases.

-- name: batch_rows
-- The batch's records as normalize left them, before the upsert publishes anything, without parsing a payload
-- again (a second parse of every payload cost the whole DAG a tenth more time): the rows normalize wrote to
-- normalized_stage for the records this run fetched, and, for the fetched records it skipped as unchanged since they
-- were last normalized, their rows in normalized_data (the same input, so the same values; <skipped>: one of the
-- skipped_* fragments below, or none when normalize skipped nothing). Records normalize quarantined are not among
-- them (reject_rate counts them).
select ns.source_id, ns.name, ns.value, ns.description, ns.attributes, false as skipped
from normalized_stage ns
where ns.run_id = %(run_id)s and ns.source = %(source)s and not ns.from_raw
{skipped}

-- name: batch_nulls
-- over batch_rows (<rows>): the records, the skipped ones found, then per field its missing values (<measures>: one
-- null_column or null_attribute fragment each)
select count(*) as records, count(*) filter (where b.skipped) as skipped{measures}
from ({rows}) b

-- name: batch_values
-- the values the row-level warn checks read, record by record (sluice.quality counts the records failing each)
select b.source_id, b.name, b.value, b.description, b.attributes::text from ({rows}) b

-- name: skipped_by_scan
-- The skipped records of a read that brought (nearly) every record the source holds, the usual whole read: the
-- source's live rows that normalize neither staged nor quarantined in this run, in one scan without the batch's ids
-- (hashing a million staged ids cost 1.5-1.9 s of a 17 s unchanged rerun), and the deleted rows whose records the
-- read brought back unchanged (from the partial index of deleted rows; nothing when there are none). Every skipped
-- record has a row among them, so when they are as many as normalize skipped they are exactly those (the gate
-- counts them); otherwise (a record missing from the read, another run's row since) skipped_by_ids measures.
union all
select n.source_id, n.name, n.value, n.description, n.attributes, true
from normalized_data n
where n.source = %(source)s and n.deleted_at is null
  and not exists (select from normalized_stage ns
                  where ns.run_id = %(run_id)s and ns.source = %(source)s and ns.source_id = n.source_id)
  and not exists (select from rejected_records r
                  where r.run_id = %(run_id)s and r.source = %(source)s and r.stage = 'normalize'
                    and r.source_id = n.source_id)
union all
select d.source_id, d.name, d.value, d.description, d.attributes, true
from normalized_data d
where d.source = %(source)s and d.deleted_at is not null
  and exists (select from normalized_data x where x.source = %(source)s and x.deleted_at is not null)
  and d.source_id in (select s.source_id from staged_records s where s.run_id = %(run_id)s and s.source = %(source)s)
  and not exists (select from normalized_stage ns
                  where ns.run_id = %(run_id)s and ns.source = %(source)s and ns.source_id = d.source_id)
  and not exists (select from rejected_records r
                  where r.run_id = %(run_id)s and r.source = %(source)s and r.stage = 'normalize'
                    and r.source_id = d.source_id)

-- name: skipped_by_ids
-- The skipped records of any read (an incremental one, a part of the source): their rows found by a semi-join on
-- the batch's ids (a join carrying the rows' text through the hash, and to_jsonb per value, cost 4 times as much).
union all
select n.source_id, n.name, n.value, n.description, n.attributes, true
from normalized_data n
where n.source = %(source)s
  and n.source_id in (select s.source_id from staged_records s
                      where s.run_id = %(run_id)s and s.source = %(source)s
                        and not exists (select from normalized_stage ns
                                        where ns.run_id = s.run_id and ns.source = s.source
                                          and ns.source_id = s.source_id)
                        and not exists (select from rejected_records r
                                        where r.run_id = s.run_id and r.source = s.source
                                          and r.source_id = s.source_id and r.stage = 'normalize'))

-- name: null_column
-- a mapped column's missing values: normalize never writes a blank text (the schema trims it, and a blank one is
-- missing, null; the fast path leaves edge whitespace to the schema and writes '' as null), so null is all there is
-- to count, and no btrim of every value (a third of the statement's time at 1M rows)
count(*) filter (where b.{column} is null)

-- name: null_attribute
-- a declared field's missing values: typed attributes keep a missing value (absent, null, blank) as null, never as a
-- blank string, so one lookup per value tells (sluice_quality_missing, inlined, looked the value up four times)
count(*) filter (where coalesce(b.attributes -> {name}, 'null'::jsonb) = 'null'::jsonb)

-- name: batch_measures
-- ONE pass over the run's staged batch of the source (after store_raw's quarantine), for the freshness checks, which
-- need the records' own values: the records, then per field the newest time (<measures>: one measure_age fragment
-- each). Each record's payload is parsed once and each field looked up once (<lookups>).
select count(*) as records{measures}
from (select {lookups}
      from (select s.data::jsonb as data from staged_records s
            where s.run_id = %(run_id)s and s.source = %(source)s) d
      offset 0) b

-- name: measure_lookup
sluice_lookup(d.data, {path}) as {value}

-- name: measure_age
-- seconds since the newest time of the field (null: none is a time sluice_cursor_time reads)
extract(epoch from now() - max(sluice_cursor_time(b.{value} #>> '{{}}')))::double precision

-- name: duplicates
-- unique on a field within the source, after the merge and the deletes (in the savepoint a held batch rolls back):
-- the source's live rows as they would be published, each value (<value>: unique_column or unique_attribute; a
-- missing one is no value) held by more than one of them and by at least one record of the batch (a staged record
-- normalize did not quarantine), counted as its occurrences beyond the first. A value only records outside the batch repeat is an
-- earlier run's; a record the batch replaces or deletes no longer holds its old value. One hash join of the live
-- rows with the batch's ids and one aggregate: 2.6-4.3 s at 1M rows here, only for a source declaring it.
select coalesce(sum(d.occurrences - 1), 0)::bigint
from (select count(*) as occurrences
      from (select {value} as v, n.source_id from normalized_data n
            where n.source = %(source)s and n.deleted_at is null) l
      left join (select s.source_id from staged_records s
                 where s.run_id = %(run_id)s and s.source = %(source)s
                   and not exists (select from rejected_records r
                                   where r.run_id = s.run_id and r.source = s.source
                                     and r.source_id = s.source_id and r.stage = 'normalize')) b
             on b.source_id = l.source_id
      where l.v is not null
      group by l.v
      having count(*) > 1 and count(b.source_id) > 0) d;

-- name: unique_column
-- a mapped column's value as normalize left it (a text trimmed; never blank, see null_column)
n.{column}

-- name: unique_attribute
case when not sluice_quality_missing(n.attributes -> {name}) then n.attributes -> {name} end

-- name: check_rejects
-- records this run's normalize quarantined for a row-level check: its reason names it (checks.validators)
select count(*) from rejected_records
where run_id = %(run_id)s and source = %(source)s and stage = 'normalize' and strpos(reason, %(marker)s) > 0;

-- name: history
-- the measures of the source's newest runs whose batch was published (or released), newest first
select measures from quality_runs
where source = %(source)s and status in ('published', 'released') and run_id <> %(run_id)s
order by recorded_at desc
limit %(runs)s;

-- name: forget_results
delete from quality_results where run_id = %(run_id)s and source = %(source)s;

-- name: record_result
insert into quality_results (run_id, source, check_name, kind, severity, measured, threshold, verdict, detail)
values (%(run_id)s, %(source)s, %(check_name)s, %(kind)s, %(severity)s, %(measured)s, %(threshold)s, %(verdict)s,
        %(detail)s);

-- name: record_quality_run
insert into quality_runs as q (run_id, source, status, score, measures, source_entry, released_by, released_at)
values (%(run_id)s, %(source)s, %(status)s, %(score)s, %(measures)s, %(source_entry)s, %(released_by)s,
        case when %(released_by)s::text is not null then now() end)
on conflict (run_id, source) do update
set status = excluded.status, score = excluded.score, measures = excluded.measures,
    source_entry = excluded.source_entry, recorded_at = now(), released_by = excluded.released_by,
    released_at = excluded.released_at, superseded_by = null;

-- name: supersede_holds
-- a later batch of the source reached the gate: the older held batches are replaced by its fetch, never published
update quality_runs set status = 'superseded', superseded_by = %(run_id)s
where source = %(source)s and status = 'held' and run_id <> %(run_id)s
returning run_id;

-- name: held_batch
select status, source_entry, superseded_by, released_by, released_at from quality_runs
where run_id = %(run_id)s and source = %(source)s
for update;

-- name: run_warnings
-- the run's failed warn checks, for the alerts of record_run
select source, check_name, measured, threshold, detail from quality_results
where run_id = %(run_id)s and verdict = 'fail' and severity = 'warn'
order by source, check_name;
