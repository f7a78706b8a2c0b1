-- Named queries of a source's declaration: the input key it was last normalized with, its declared fields
-- (source_fields) and its typed view in schema `sources` (plugins/sluice/declarations.py). Identifiers and the
-- view's constants are filled in with psycopg.sql (DDL takes no parameters); every other value is a parameter.

-- name: stored_key
select input_key, declared_run_id from source_declarations where source = %(source)s;

-- name: record_key
insert into source_declarations as d (source, input_key, declared_run_id) values (%(source)s, %(input_key)s, %(run_id)s)
on conflict (source) do update
    set input_key = excluded.input_key, declared_run_id = excluded.declared_run_id, declared_at = now();

-- name: source_has_rows
select exists (select from normalized_data where source = %(source)s);

-- name: stored_fields
select field, type, path, required from source_fields where source = %(source)s order by position;

-- name: view_exists
select to_regclass(%(view)s) is not null;

-- name: forget_fields
delete from source_fields where source = %(source)s;

-- name: record_field
insert into source_fields (source, field, type, path, required, position, declared_run_id)
values (%(source)s, %(field)s, %(type)s, %(path)s, %(required)s, %(position)s, %(run_id)s);

-- name: view_dependents
-- the views, materialized views and rules built on the view: dropping it would need CASCADE, which takes them too
select distinct dependent.oid::regclass::text
from pg_depend d
join pg_rewrite r on r.oid = d.objid
join pg_class dependent on dependent.oid = r.ev_class
where d.refobjid = to_regclass(%(view)s) and dependent.oid <> d.refobjid
order by 1;

-- name: drop_view
-- never CASCADE: an object built on the view is a person's, not the pipeline's
drop view if exists {view};

-- name: create_view
-- live rows only; each declared field as its SQL type (<columns>: one typed_column or json_column each; a json
-- field's missing value, JSON null in attributes, is SQL null here as every other type's). security_invoker: the
-- view reads normalized_data as its caller, so row-level security applies to readers (migration 018)
create view {view} with (security_invoker = true) as
select source_id, name, value, description, {columns} updated_at, last_changed_run_id
from normalized_data
where source = {source} and deleted_at is null;

-- name: typed_column
(attributes ->> {key})::{type} as {column},

-- name: json_column
nullif(attributes -> {key}, 'null'::jsonb) as {column},
