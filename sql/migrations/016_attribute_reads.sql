-- Reads over declared fields (issue 23): /data filters on attributes, and /data/<source>/<id> says why a record
-- it does not hold was rejected.
--
-- Equality filters (eq, in, is.null, is.true/false) are written as containment, `attributes @> '{"plan":"pro"}'`,
-- so one GIN index serves every field of every source: fields are declared at run time, so no fixed expression
-- index could. jsonb_path_ops rather than the default jsonb_ops: it serves only `@>` (and jsonpath), all the API
-- asks of it, at two thirds of the size, built in less than half the time (25 MB and 2.0 s against 38 MB and
-- 4.6 s over 200k rows). Over 67k rows per source it answers a rare value in 5 ms where a scan takes 135 ms.
-- Ranges (gt, gte, lt, lte), neq, like and the order by a field cannot use it: they read the source's rows
-- (about 100 ms a page ordered by a field at 67k rows per source; README). A source that needs a fast range
-- or order on one field adds an expression index of the form the API queries with, e.g. `create index on
-- normalized_data (((attributes ->> 'seats')::numeric) desc nulls last, id desc) where source = 'customers'`
-- (text, integer, numeric and boolean fields; a text -> timestamptz cast is not immutable).
-- Partial: rows of sources that declare no fields ({}) cost it nothing. Its price is paid on writes: a bulk
-- load rebuilds it with the table's other indexes (about 9 s per million rows with five declared fields here),
-- smaller loads add to its pending list.
create index if not exists normalized_data_attributes_idx on normalized_data using gin (attributes jsonb_path_ops)
    where attributes <> '{}'::jsonb;

-- A record's latest rejection: rejected_records only grows, so this lookup must not scan it.
create index if not exists rejected_records_record_idx on rejected_records (source, source_id, id);
