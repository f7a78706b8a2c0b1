-- Named queries of the read API (webapp/). Every value is a named parameter; optional filters are
-- written `(%(x)s is null or ...)`: psycopg2 sends the values inline, so the planner folds the unused
-- branches away and still picks the (source, updated_at, id) and pg_trgm indexes. Soft-deleted rows
-- (deleted_at set) are left out unless include_deleted.
-- The filters of data_page, data_count and data_estimate must stay identical (a test checks it).
-- {attributes}, {after} and {order} are filled by webapp/attributes.py (psycopg2.sql) with the fragments named
-- attribute_* and data_* below: filters on declared fields, the keyset position and the order. Values are
-- always named parameters; only a whitelisted operator, direction or type name is composed in.
-- %(sources)s: the sources the request's credential may read (webapp/scopes.py), null for every source; a query
-- over several sources filters by it (row-level security enforces the same for the API's role).

-- name: enter_scope
-- the first statement of every transaction, in the same round trip as the route's (webapp.db): the request's
-- signed scope, which row-level security reads (migration 018); a token that does not verify is an error
select sluice_enter_scope(%(scope_token)s);

-- name: data_begin
-- /data's round trip begins here (webapp.db.fetch_all_after_watermark, autocommit: one implicit transaction for
-- the whole query string). Read committed, so the statement after this one takes its snapshot after the watermark
-- is read (sql/functions.sql); the request's scope as enter_scope sets it; and, for this transaction only, how
-- the prepared statement that follows is planned (webapp.db.PLAN_CACHE_MODES)
set transaction isolation level read committed;
select sluice_enter_scope(%(scope_token)s), set_config('sluice.watermark', sluice_read_watermark()::text, true),
       set_config('plan_cache_mode', %(plan_cache_mode)s, true);

-- name: data_answer
-- /data in one statement, so in one snapshot: the page (slot page: data_page), its total (slot total: data_count,
-- data_count_all or null) and the watermark data_begin read. Always one row at least: an empty page is one row
-- whose page columns are null. The page's order is its ordinal's
select w.watermark, t.total, p.*
from (select current_setting('sluice.watermark')::timestamptz as watermark) w
cross join (select {total} as total) t
left join ({page}) p on true
order by p.ordinal;

-- name: data_total_none
null::bigint

-- name: data_page
-- {filters}: the data_filter_* fragments of the filters the request has (routes_data.filters_clause), so a generic
-- plan (a prepared statement's) has no `x is null or` branch it cannot fold
select id, source, source_id, name, value, description, created_at, updated_at, deleted_at, attributes,
       -- the position in the page, which data_answer orders by (the same sort as the order by below, not another)
       row_number() over (order by {order}) as ordinal
from normalized_data
where {filters}
  and {attributes}
  and {after}
order by {order}
limit %(limit)s offset %(offset)s;

-- name: data_filter_source
source = %(source)s

-- name: data_filter_sources
-- the credential's sources (webapp.scopes); row-level security says the same, this lets the planner use the index
source = any(%(sources)s::text[])

-- name: data_filter_updated_since
updated_at >= %(updated_since)s::timestamptz

-- name: data_filter_search
(name ilike %(pattern)s escape '\' or description ilike %(pattern)s escape '\')

-- name: data_filter_live
deleted_at is null

-- name: data_no_attribute_filter
true

-- name: data_attribute_contains
-- eq, in and is: containment, which the GIN index normalized_data_attributes_idx (jsonb_path_ops) answers; it
-- holds only rows with attributes, and the document is never empty, so saying so changes no answer and lets
-- the planner use that partial index
(attributes @> {document}::jsonb and attributes <> '{{}}'::jsonb)

-- name: data_attribute_value
-- a declared field's typed value; JSON null and a missing key are both SQL null. The form an expression index
-- must repeat to be used: (attributes ->> 'seats')::numeric
(attributes ->> {field})::{type}

-- name: data_attribute_compare
{value} {operator} {parameter}::{type}

-- name: data_attribute_like
{value} {operator} {parameter}::text

-- name: data_after_updated
-- the default order's keyset: the rows after the cursor's (updated_at, id)
(updated_at, id) < (%(after_updated_at)s::timestamptz, %(after_id)s::bigint)

-- name: data_order_updated
updated_at desc, id desc

-- name: data_after_value
-- the rows after (v, id) in `value <direction> nulls last, id <direction>` (beyond: > for asc, < for desc):
-- further values, then v's further ids, then every null
({value} {beyond} %(after_value)s::{type}
 or ({value} = %(after_value)s::{type} and id {beyond} %(after_id)s::bigint)
 or {value} is null)

-- name: data_after_null
-- after a null: only the nulls with further ids (nulls come last in either direction)
({value} is null and id {beyond} %(after_id)s::bigint)

-- name: data_order_value
{value} {direction} nulls last, id {direction}

-- name: data_count
select count(*) as total
from normalized_data
where {filters}
  and {attributes};

-- name: data_count_all
-- exact and cheap: the per-source counters the schema's triggers keep, less the deleted rows unless they are
-- asked for (counted from the partial index normalized_data_deleted_idx, never a live row)
select (select coalesce(sum(row_count), 0)::bigint from etl_checkpoint
        where (%(source)s::text is null or source = %(source)s)
          and (%(sources)s::text[] is null or source = any(%(sources)s)))
       - case when %(include_deleted)s then 0
              else (select count(*) from normalized_data
                    where (%(source)s::text is null or source = %(source)s)
                      and (%(sources)s::text[] is null or source = any(%(sources)s))
                      and deleted_at is not null) end
       as total;

-- name: data_estimate
-- the planner's row estimate: no scan, so it stays cheap on any table size
explain (format json)
select 1
from normalized_data
where {filters}
  and {attributes};

-- name: data_record
select id, source, source_id, name, value, description, created_at, updated_at, deleted_at, attributes,
       first_seen_run_id, last_changed_run_id, deleted_run_id
from normalized_data
where source = %(source)s and source_id = %(source_id)s and (%(include_deleted)s or deleted_at is null);

-- name: last_run
-- the newest run, in the order of /runs
select run_id, status, started_at, ended_at,
       extract(epoch from now() - ended_at) / 3600 as hours_since_end
from etl_runs
order by started_at desc, id desc
limit 1;

-- name: runs_page
-- errors, never error_message: the stored text may quote a credential no pattern recognised (issue 22)
select run_id, run_type, data_interval_start, data_interval_end, started_at, ended_at,
       duration_seconds, records_processed, status,
       case when errors is not null then errors
            -- a failure recorded before summaries existed (text only): one summary of nulls, never its text
            when status = 'failed' or error_message is not null then '[{}]'::jsonb
            else '[]'::jsonb end as errors,
       fetched, inserted, updated, unchanged, superseded, rejected, source_counts, skipped,
       coalesce(accept_deletes, '{}'::jsonb) as accept_deletes
from etl_runs
order by started_at desc, id desc
limit %(limit)s offset %(offset)s;

-- name: runs_count
-- etl_runs holds one row per run, so counting it stays cheap
select count(*) as total from etl_runs;

-- name: run_exists
-- a run in progress has no etl_runs row yet but may already have quarantined records
select exists (select 1 from etl_runs where run_id = %(run_id)s)
       or exists (select 1 from rejected_records where run_id = %(run_id)s) as found;

-- name: rejects_page
-- A page stays small whatever was rejected: a payload whose JSON text is longer than max_payload
-- characters comes as a JSON string of its first max_payload characters (payload_truncated), and only
-- those leave the server.
select r.source, left(r.source_id, %(max_text)s) as source_id, r.stage, left(r.reason, %(max_text)s) as reason,
       case when doc_size.chars > %(max_payload)s then to_jsonb(left(doc.text, %(max_payload)s))
            else r.payload end as payload,
       coalesce(doc_size.chars > %(max_payload)s, false) as payload_truncated,
       doc_size.chars as payload_length,
       r.created_at
from rejected_records r
cross join lateral (select r.payload::text as text) as doc
cross join lateral (select length(doc.text) as chars) as doc_size
where r.run_id = %(run_id)s and (%(source)s::text is null or r.source = %(source)s)
  and (%(sources)s::text[] is null or r.source = any(%(sources)s))
order by r.id
limit %(limit)s offset %(offset)s;

-- name: rejects_count
select count(*) as total
from rejected_records
where run_id = %(run_id)s and (%(source)s::text is null or source = %(source)s)
  and (%(sources)s::text[] is null or source = any(%(sources)s));

-- name: record_rejection
-- why a record has no row: its latest rejection (rejected_records_record_idx), only when no row of it exists,
-- live or deleted. Never its payload: /runs/<run_id>/rejects serves that, masked and bounded.
select r.run_id, r.stage, left(r.reason, %(max_text)s) as reason, r.created_at as at
from rejected_records r
where r.source = %(source)s and r.source_id = %(source_id)s
  and not exists (select 1 from normalized_data n where n.source = r.source and n.source_id = r.source_id)
order by r.id desc
limit 1;

-- name: source_fields
-- the fields each source declares, in catalog order: what /data serves, filters and sorts on, and the
-- per-source schemas of /openapi.json; one source's, or every source's when source is null
select source, field, type
from source_fields
where (%(source)s::text is null or source = %(source)s)
  and (%(sources)s::text[] is null or source = any(%(sources)s))
order by source, position, field;

-- name: stats_totals
-- records processed: every run's, or for a credential limited to some sources the records fetched from those
select coalesce(sum(case when %(sources)s::text[] is null then records_processed
                         else (select coalesce(sum((counts.value ->> 'fetched')::bigint), 0)
                               from jsonb_each(etl_runs.source_counts) as counts
                               where jsonb_typeof(counts.value) = 'object'
                                 and counts.key = any(%(sources)s)) end), 0)::bigint as total_records_processed,
       coalesce(sum(duration_seconds), 0)::double precision as total_duration_seconds,
       count(*) as run_count
from etl_runs;

-- name: stats_last_of_status
-- when the newest run of one status ended (started, for a row without an end), and its failures' summaries
select coalesce(ended_at, started_at) as at,
       case when errors is not null then errors
            -- a failure recorded before summaries existed (text only): one summary of nulls, never its text
            when status = 'failed' or error_message is not null then '[{}]'::jsonb
            else '[]'::jsonb end as errors
from etl_runs
where status = %(status)s
order by started_at desc, id desc
limit 1;

-- name: stats_rows_per_source
-- live rows (those /data shows) and soft-deleted ones, per source; the deleted ones from the partial index
select c.source, c.row_count - coalesce(d.deleted, 0) as row_count, coalesce(d.deleted, 0) as deleted
from etl_checkpoint c
left join (select source, count(*) as deleted from normalized_data where deleted_at is not null group by source) d
    on d.source = c.source
where %(sources)s::text[] is null or c.source = any(%(sources)s);

-- name: stats_rejects_per_source
-- from the runs' own counts, so no count(*) over the ever-growing rejected_records
select counts.key as source, sum((counts.value ->> 'rejected')::bigint) as rejected
from etl_runs, jsonb_each(etl_runs.source_counts) as counts
where jsonb_typeof(counts.value) = 'object'
  and (%(sources)s::text[] is null or counts.key = any(%(sources)s))
group by counts.key;

-- name: stats_last_run
select run_id, status, started_at, ended_at, inserted, updated, unchanged, rejected, source_counts
from etl_runs
order by started_at desc, id desc
limit 1;

-- name: data_watermark
-- read in a transaction of its own, before the one that reads the rows (see sql/functions.sql)
select sluice_read_watermark() as watermark;

-- name: source_fields_known
-- a source the warehouse knows (loaded, declared or observed): GET /sources/<source>/fields of another is a 404
select exists (select 1 from etl_checkpoint where source = %(source)s)
       or exists (select 1 from source_fields where source = %(source)s)
       or exists (select 1 from source_observed_fields where source = %(source)s) as found;

-- name: source_declared_fields
select field, type, path, required, declared_run_id, declared_at
from source_fields where source = %(source)s order by position, field;

-- name: source_observed_fields
-- at most %(limit)s fields, in the order first seen; field names and ids cut at %(max_text)s characters
select left(field, %(max_text)s) as field, json_type, first_seen_run_id, first_seen_at, last_seen_run_id,
       last_seen_at, left(example_source_id, %(max_text)s) as example_record_id, example,
       coalesce(example_length > length(example), false) as example_truncated, example_length
from source_observed_fields where source = %(source)s
order by first_seen_at, field, json_type
limit %(limit)s;

-- name: source_observed_count
select count(*) as total from source_observed_fields where source = %(source)s;

-- name: source_field_changes
-- the newest %(limit)s changes (source_field_changes_recent_idx)
select run_id, left(field, %(max_text)s) as field, change, from_type, to_type, declared,
       left(record_id, %(max_text)s) as record_id, detected_at
from source_field_changes where source = %(source)s
order by detected_at desc, field, to_type
limit %(limit)s;

-- name: source_field_changes_count
select count(*) as total from source_field_changes where source = %(source)s;

-- name: known_sources
-- every source the warehouse knows: each has its etl_checkpoint row from its first load on
select source from etl_checkpoint
where %(sources)s::text[] is null or source = any(%(sources)s)
order by source;

-- name: sources
select c.source as name, c.kind, c.row_count - coalesce(d.deleted, 0) as row_count,
       coalesce(d.deleted, 0) as deleted_count, c.last_processed_id, c.last_processed_at,
       c.last_success_run_id, c.last_success_at, c.last_error_run_id, c.last_error_at,
       c.last_cursor, c.read_until, c.last_skip_run_id, c.last_skip_at, c.last_skip_reason,
       -- a failure recorded before summaries existed (text only) has a summary of nulls; the text is never read
       case when c.last_error_summary is not null then c.last_error_summary
            when c.last_error_run_id is not null or c.last_error is not null then '{}'::jsonb end
           as last_error_summary,
       q.run_id as quality_run_id, q.status as quality_status, q.score as quality_score,
       q.recorded_at as quality_at, q.released_by, q.released_at, q.failing
from etl_checkpoint c
left join (select source, count(*) as deleted from normalized_data where deleted_at is not null group by source) d
    on d.source = c.source
-- the newest batch the quality gate judged (quality_runs_source_idx), with the checks it failed
left join lateral (
    select qr.run_id, qr.status, qr.score, qr.recorded_at, qr.released_by, qr.released_at,
           (select coalesce(jsonb_agg(jsonb_build_object('check', r.check_name, 'severity', r.severity,
                                                         'measured', r.measured, 'threshold', r.threshold)
                                      order by r.check_name), '[]'::jsonb)
            from quality_results r
            where r.run_id = qr.run_id and r.source = qr.source and r.verdict = 'fail') as failing
    from quality_runs qr where qr.source = c.source
    order by qr.recorded_at desc limit 1) q on true
where %(sources)s::text[] is null or c.source = any(%(sources)s)
order by c.source;

-- name: run_quality
-- every source's batch of the run that the quality gate judged, within the caller's sources
select source, status, score, recorded_at, released_by, released_at, superseded_by
from quality_runs
where run_id = %(run_id)s and (%(sources)s::text[] is null or source = any(%(sources)s))
order by source;

-- name: run_quality_results
select source, check_name, kind, severity, measured, threshold, verdict, detail
from quality_results
where run_id = %(run_id)s and (%(sources)s::text[] is null or source = any(%(sources)s))
order by source, kind, check_name;

-- name: metrics_sources
-- per source, for /metrics at scrape time: its etl_checkpoint row (live rows as /sources counts them: the kept
-- row_count less the deleted rows, counted on their partial index, never a live row) and its counts in the newest
-- run that fetched it (one walk of etl_runs_started_idx per source, stopping at the first run that has it).
-- Its latest run failed when its newest error is newer than its newest success; last_error_class says why (the
-- summary's class name, never the error's text).
select c.source, c.row_count - coalesce(d.deleted, 0) as live_rows,
       extract(epoch from c.last_success_at)::double precision as last_success_at,
       coalesce(c.last_error_at > c.last_success_at, c.last_error_at is not null) as failed,
       c.last_error_summary ->> 'error_class' as last_error_class,
       r.counts
from etl_checkpoint c
left join (select source, count(*) as deleted from normalized_data where deleted_at is not null group by source) d
    on d.source = c.source
left join lateral (select runs.source_counts -> c.source as counts
                   from etl_runs runs
                   where jsonb_typeof(runs.source_counts -> c.source) = 'object'
                   order by runs.started_at desc, runs.id desc
                   limit 1) r on true
where %(sources)s::text[] is null or c.source = any(%(sources)s)
order by c.source;

-- name: metrics_last_run
-- the newest finished run, in the order of /runs
select duration_seconds, status = 'success' as success
from etl_runs
where ended_at is not null
order by started_at desc, id desc
limit 1;

-- name: export_begin
-- GET /export/<source> (webapp/routes_export.py): one source's rows in id order, streamed by COPY, in a
-- transaction of its own begun by this statement (after enter_scope, in the same round trip): the snapshot is
-- taken here, and the statement timeout of a whole export replaces the request's; a lock it waits for (a bulk
-- load's) is waited for as long as a request's statement, so a blocked export is a quick 503, not a held slot.
-- The rows' columns are composed by webapp/export.py from the export_* fragments: whitelisted columns, each
-- declared field's name a parameter
select set_config('statement_timeout', %(statement_timeout)s, true) as statement_timeout,
       set_config('lock_timeout', %(lock_timeout)s, true) as lock_timeout;

-- name: export_rows
select {columns}
from normalized_data
where source = %(source)s
  and (%(updated_since)s::timestamptz is null or updated_at >= %(updated_since)s)
  and (%(include_deleted)s or deleted_at is null)
  and (%(after)s::bigint is null or id > %(after)s)
-- after: the last id a consumer received, to resume an export cut short
order by id

-- name: export_csv
-- COPY's CSV: a null is an empty field, an empty text a quoted "" (so they stay apart); quotes, commas and
-- newlines inside a field are quoted as RFC 4180 says
copy ({rows}) to stdout with (format csv, header true)

-- name: export_ndjson
-- one JSON document per line, as written: CSV with a quote and a delimiter that JSON text never holds raw (the
-- JSON writer escapes every control character as \u00XX, newlines too), so COPY quotes and escapes nothing
copy ({rows}) to stdout with (format csv, quote e'\x01', delimiter e'\x02')

-- name: export_time
-- a timestamptz spelled as /data spells it (Python's isoformat in UTC): microseconds only when not zero
to_char({column} at time zone 'UTC',
        case when mod(date_part('microseconds', {column})::bigint, 1000000) = 0
             then 'YYYY-MM-DD"T"HH24:MI:SS"+00:00"' else 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"' end)

-- name: export_attribute_text
-- a declared field in a CSV column: a JSON scalar as its text (a string unquoted, a number with every digit)
attributes ->> {field}

-- name: export_attribute_json
-- a json field in a CSV column, or any declared field in an NDJSON line: its JSON value
attributes -> {field}

-- name: export_json_lines
-- NDJSON: each row as one JSON object, its keys the columns' names (row_to_json: about twice as fast here as
-- json_build_object over the same columns); the rows' order is the subquery's, which the outer order by keeps
-- without sorting again
select row_to_json(line)::text from ({rows}) as line order by line.id

-- name: export_json_attributes
-- the declared fields of an NDJSON line (a field a record lacks is null, as in /data): json, whose text
-- row_to_json copies (about 15% faster than jsonb here, which it would print again); a function takes at most 100
-- arguments, so a source with more than 50 fields joins several objects as jsonb with ||
json_build_object({pairs})
