-- Declared fields are typed by ingest (issue 23; rules.AttributeTyper, the schema's own fields): each staged line
-- carries its record's attributes as JSON text (null when the schema is to judge the record), which normalize loads
-- as they are. Text, as data is: parsed only for the records whose input changed.
alter table staged_records add column if not exists attributes text;

-- The SQL that typed them in normalize (a second definition of the types beside rules.py) is gone.
drop function if exists sluice_fast_attribute(jsonb, text, text, text, text);
drop function if exists sluice_fast_timestamp(text);
drop function if exists sluice_fast_time(text, text, text);
drop function if exists sluice_utc_text(timestamp);
drop function if exists sluice_fast_date_ok(text);
drop function if exists sluice_days_in_month(integer, integer);
