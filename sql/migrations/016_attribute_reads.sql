-- Reads over declared fields (issue 23): /data filters on attributes, and /data/<source>/<id> says why a record
-- it does not hold was rejected.
--
-- Equality filters (eq, in, is.null, is.true/false) are written as containment, `attributes @> '{"plan":"pro"}'`,
-- so one GIN index serves every field of every source: fields are declared at run time, so no fixed expression
-- index could. jsonb_path_ops rather than the default jsonb_ops: it indexes only `@>` (and jsonpath) but is about
-- a third of the size and faster to build and search, and the API asks nothing else of it. Ranges (gt, gte, lt,
-- lte), neq, like and the order by a field cannot use it: they scan the source's rows through the (source,
-- updated_at, id) index (measured in the README: tens of milliseconds per page at 70k rows per source). A
-- source that needs a fast range or order on one field adds an expression index of the same form the API
-- queries with, e.g. `create index on normalized_data (((attributes ->> 'seats')::numeric)) where source =
-- 'customers'` (text, integer, numeric and boolean fields; a text -> timestamptz cast is not immutable).
-- Partial: rows of sources that declare no fields ({}) cost it nothing. Its price is paid on writes: a bulk
-- load rebuilds it with the table's other indexes (about 9 s per million rows with five declared fields here),
-- smaller loads add to its pending list.
create index if not exists normalized_data_attributes_idx on normalized_data using gin (attributes jsonb_path_ops)
    where attributes <> '{}'::jsonb;

-- A record's latest rejection: rejected_records only grows, so this lookup must not scan it.
create index if not exists rejected_records_record_idx on rejected_records (source, source_id, id);
