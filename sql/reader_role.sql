-- The web app's login role outside Compose (docker/postgres-init/02-sluice-reader.sh is the same for Compose's
-- container): it reads the warehouse and writes nothing, and row-level security applies to it (migration 018)
-- because it neither owns the tables nor is a superuser. A role is cluster-wide: made once, reset when it
-- exists; the grants are per database. Run as the owner, a superuser (track_activities is a superuser's setting).
-- Identifiers and the password are composed with psycopg.sql (DDL takes no parameters) by
-- devtools/sluice_devtools/reader_role.py.

-- name: role_exists
select exists (select from pg_roles where rolname = %(role)s);

-- name: create_role
create role {role} login;

-- name: configure_role
-- nobypassrls: the point of the role. track_activities off: other sessions of the role cannot read its query
-- text, where a request's scope token passes (migration 018's threat model)
alter role {role} with login nosuperuser nocreatedb nocreaterole noinherit nobypassrls password {password};

-- name: role_settings
-- also what a restore gives the role it makes (sluice_devtools.backup): pg_dump keeps no role or its settings
alter role {role} set default_transaction_read_only = on;
alter role {role} set track_activities = off;

-- name: grant_database
grant connect on database {database} to {role};
grant usage on schema public to {role};
grant select on all tables in schema public to {role};
alter default privileges in schema public grant select on tables to {role};

-- name: grant_typed_views
-- schema sources (migration 012) and each source's typed view, those made later included
grant usage on schema sources to {role};
grant select on all tables in schema sources to {role};
alter default privileges in schema sources grant select on tables to {role};
