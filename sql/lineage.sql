-- Queries of the OpenLineage datasets (plugins/sluice/lineage.py), run only when OpenLineage is on.

-- name: table_columns
-- a table's columns, in order, in the schema the pipeline writes to (the search_path's first): the dataset's
-- schema facet. One row even for a table that is not there (no columns), so the schema is always known.
select current_schema() as table_schema,
       coalesce(json_agg(json_build_array(column_name, data_type) order by ordinal_position), '[]') as columns
from information_schema.columns
where table_schema = current_schema() and table_name = %(table)s
