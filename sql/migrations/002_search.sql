-- Trigram search for the web API when the server offers pg_trgm; plain ILIKE still works without it.
-- A server without the extension records this migration all the same (search works without the indexes):
-- indexes for a server that gains pg_trgm later take a new migration, as this one never runs again.
do $$
begin
    if exists (select 1 from pg_available_extensions where name = 'pg_trgm') then
        create extension if not exists pg_trgm;
        execute 'create index if not exists normalized_data_name_trgm on normalized_data using gin (name gin_trgm_ops)';
        execute 'create index if not exists normalized_data_description_trgm on normalized_data using gin (description gin_trgm_ops)';
    end if;
end
$$;
