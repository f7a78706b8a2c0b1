-- Restoring a pg_dump of the warehouse (sluice_devtools/backup.py). pg_dump dumps no roles (they are
-- cluster-wide) and no change to pg_catalog: a restore makes the first, and reapplies migration 019 for the second.

-- name: is_empty
-- a restore goes into an empty database only: pg_restore would fail half-way on the first table that exists
select not exists (select from pg_class c join pg_namespace n on n.oid = c.relnamespace
                   where n.nspname not in ('pg_catalog', 'information_schema', 'pg_toast')
                     and n.nspname not like 'pg_temp%' and n.nspname not like 'pg_toast_temp%');

-- name: role_exists
select exists (select from pg_roles where rolname = %(role)s);

-- name: create_role_without_login
-- the dump's grants name the reader role: it must exist before them. It cannot log in until its password is set
-- (make up, reader_role.ensure, or Compose's 02-sluice-reader.sh do), so nothing is opened by the restore.
create role {role} nologin;

-- name: scope_key_installed
select exists (select from sluice_private.scope_key);
