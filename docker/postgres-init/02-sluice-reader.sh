#!/usr/bin/env bash
# The role the web app logs in as: it can read every table of the warehouse (etl_db), now and later, and
# write nothing. The official postgres image runs this once, as POSTGRES_USER, when its data volume is
# first initialized; for an older volume run it by hand (it is idempotent):
#   docker compose exec postgres bash /docker-entrypoint-initdb.d/02-sluice-reader.sh
# Environment: SLUICE_READER_USER (default sluice_reader), SLUICE_READER_PASSWORD, POSTGRES_USER (the
# pipeline's role, which owns the tables), POSTGRES_DB (the warehouse).
set -euo pipefail

psql --no-psqlrc -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -v reader="${SLUICE_READER_USER:-sluice_reader}" -v password="${SLUICE_READER_PASSWORD:?set SLUICE_READER_PASSWORD}" \
  -v owner="$POSTGRES_USER" -v db="$POSTGRES_DB" <<'SQL'
-- Created, or its password reset: psql variables are not expanded inside a DO block, hence \gexec.
select format('create role %I login', :'reader')
where not exists (select from pg_roles where rolname = :'reader') \gexec
-- nobypassrls: row-level security (migration 018) keeps each request to its scope's sources; that holds only for
-- a role that neither owns the tables nor is a superuser.
alter role :"reader" with login nosuperuser nocreatedb nocreaterole noinherit nobypassrls password :'password';
-- Belt and braces: even a grant made by mistake later cannot make its transactions write.
alter role :"reader" set default_transaction_read_only = on;
-- Its sessions do not show their query text to one another: a request's scope token passes there.
alter role :"reader" set track_activities = off;

grant connect on database :"db" to :"reader";
grant usage on schema public to :"reader";
grant select on all tables in schema public to :"reader";
-- The pipeline creates its tables on its first run (sql/migrations/), as POSTGRES_USER: readable too.
alter default privileges for role :"owner" in schema public grant select on tables to :"reader";
-- Each source's typed view (schema sources, made by migration 012; normalize creates and replaces the views):
-- readable too, the schema and views made after this script ran included.
select format('grant usage on schema sources to %I', :'reader') where to_regnamespace('sources') is not null \gexec
select format('grant select on all tables in schema sources to %I', :'reader')
where to_regnamespace('sources') is not null \gexec
alter default privileges for role :"owner" grant usage on schemas to :"reader";
alter default privileges for role :"owner" grant select on tables to :"reader";
-- Nobody but the owner creates objects in the warehouse: PostgreSQL 15+ already keeps PUBLIC from creating
-- in schema public, and PUBLIC may create temporary tables in any database unless revoked here.
revoke create on schema public from public;
revoke temporary on database :"db" from public;
grant temporary on database :"db" to :"owner";
-- Functions keep PostgreSQL's default EXECUTE for PUBLIC: the web app calls the pipeline's
-- SECURITY DEFINER functions (e.g. sluice_read_watermark()). Do not revoke it.
SQL
