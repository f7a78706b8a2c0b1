-- Data quality (plugins/sluice/quality.py): the batch measures, the recorded results, holds and releases.

-- name: batch_nulls
-- The batch's records as normalize left them, before the upsert publishes anything, without parsing a payload
-- again (a second parse of every payload cost the whole DAG a tenth more time): the rows normalize wrote to normalized_stage
-- for the records this run fetched, and, for the fetched records it skipped as unchanged since they were last
-- normalized, their rows in normalized_data (the same input, so the same values). Records normalize quarantined
-- are not among them (reject_rate counts them). The records, then per field its missing values (<measures>: one
-- null_text, null_number or null_attribute fragment each). The skipped records' rows are found by a semi-join on
-- their ids (a join carrying the rows' text through the hash, and to_jsonb per value, cost 4 times as much).
select count(*) as records{measures}
from (select ns.source_id, ns.name, ns.value, ns.description, ns.attributes
      from normalized_stage ns
      where ns.run_id = %(run_id)s and ns.source = %(source)s and not ns.from_raw
      union all
      select n.source_id, n.name, n.value, n.description, n.attributes
      from normalized_data n
      where n.source = %(source)s
        and n.source_id in (select s.source_id from staged_records s
                            where s.run_id = %(run_id)s and s.source = %(source)s
                              and not exists (select from normalized_stage ns
                                              where ns.run_id = s.run_id and ns.source = s.source
                                                and ns.source_id = s.source_id)
                              and not exists (select from rejected_records r
                                              where r.run_id = s.run_id and r.source = s.source
                                                and r.source_id = s.source_id and r.stage = 'normalize'))) b

-- name: null_text
-- a mapped text column's missing values, as sluice_quality_missing judges a source's value (null, or blank)
count(*) filter (where b.{column} is null or btrim(b.{column}) = '')

-- name: null_number
count(*) filter (where b.{column} is null)

-- name: null_attribute
-- a declared field's missing values: typed attributes keep a missing value (absent, null, blank) as null, never as a
-- blank string, so one lookup per value tells (sluice_quality_missing, inlined, looked the value up four times)
count(*) filter (where coalesce(b.attributes -> {name}, 'null'::jsonb) = 'null'::jsonb)

-- name: batch_measures
-- ONE pass over the run's staged batch of the source (after store_raw's quarantine), for the checks that need
-- the records' own values (unique, freshness): the records, then per field the aggregates they need (<measures>:
-- one measure_* fragment each). Each record's payload is parsed once and each field looked up once (<lookups>).
select count(*) as records{measures}
from (select {lookups}
      from (select s.data::jsonb as data from staged_records s
            where s.run_id = %(run_id)s and s.source = %(source)s) d
      offset 0) b

-- name: measure_lookup
sluice_lookup(d.data, {path}) as {value}

-- name: measure_duplicates
-- values given more than once: the present values less the distinct ones
count(*) filter (where not sluice_quality_missing(b.{value}))
    - count(distinct case when not sluice_quality_missing(b.{value}) then b.{value} #>> '{{}}' end)

-- name: measure_age
-- seconds since the newest time of the field (null: none is a time sluice_cursor_time reads)
extract(epoch from now() - max(sluice_cursor_time(b.{value} #>> '{{}}')))::double precision

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
