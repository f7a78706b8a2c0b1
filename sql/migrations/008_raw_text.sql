-- The raw tables keep each record's own text (issue 22): `data` becomes json, which stores its input as given
-- (key order, whitespace, the spelling and every digit of a number), where jsonb reordered keys and a parse and
-- re-encode in Python had turned 12345678901234567890.12 into 1.2345678901234567e+19. normalize reads the staged
-- text and casts it to jsonb once per record, so nothing parses json's text again per field.
-- A stored row's original text is gone: it keeps jsonb's rendering of it, and its content_hash becomes the md5 of
-- that text, as every hash is of the stored text; the next read of the record stores it as the source sends it.
-- One rewrite of each table (both columns in one statement; USING reads the row as it was).
alter table raw_api_data
    alter column data type json using data::json,
    alter column content_hash type text using md5(data::text);
alter table raw_csv_data
    alter column data type json using data::json,
    alter column content_hash type text using md5(data::text);
