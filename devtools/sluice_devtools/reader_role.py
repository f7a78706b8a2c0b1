"""The web app's read-only database role (sql/reader_role.sql), for the demo, make run/up, the tests and the bench.

Superusers and the tables' owner bypass row-level security, so the API must log in as such a role for the
warehouse to enforce each request's scope. The scope key is installed alongside (sluice.scope_key).
"""

import os
import secrets

import psycopg
from psycopg import sql

from sluice import queries, scope_key, warehouse

ROLE = "sluice_reader"


def q(name: str, **parts) -> sql.Composed:
    return sql.SQL(queries.query("reader_role.sql", name)).format(**parts)


def ensure(owner_url: str, password: str, key_hex: str, role: str = ROLE) -> str:
    """Make (or reset) the role, grant it the warehouse at owner_url (migrated), install the scope key; return the
    role's URL for that database."""
    with psycopg.connect(owner_url, autocommit=True) as conn:
        if not conn.execute(queries.query("reader_role.sql", "role_exists"), {"role": role}).fetchone()[0]:
            try:
                conn.execute(q("create_role", role=sql.Identifier(role)))
            except psycopg.errors.DuplicateObject:
                pass  # another process made it between the check and now: reset it below like any existing one
        conn.execute(q("configure_role", role=sql.Identifier(role), password=sql.Literal(password)))
        settings(conn, role)
        database = sql.Identifier(conn.info.dbname)
        conn.execute(q("grant_database", role=sql.Identifier(role), database=database))
        conn.execute(q("grant_typed_views", role=sql.Identifier(role)))
        scope_key.install(conn, key_hex)
    return psycopg.conninfo.make_conninfo(owner_url, user=role, password=password)


def settings(conn, role: str = ROLE) -> None:
    """The role's own settings: its sessions are read-only and cannot read one another's query text."""
    conn.execute(q("role_settings", role=sql.Identifier(role)))


def api_environment(owner_url: str) -> dict[str, str]:
    """What a local API process needs to read the warehouse at owner_url as the reader role: its DATABASE_URL and
    SLUICE_SCOPE_KEY (from the environment, or new ones). Migrates the warehouse first (nothing when current), so an
    API started before the first run (make up) finds the policies and the key in place."""
    key = os.environ.get("SLUICE_SCOPE_KEY") or scope_key.generate()
    password = os.environ.get("SLUICE_READER_PASSWORD") or secrets.token_urlsafe(24)
    with psycopg.connect(owner_url) as conn:
        warehouse.apply_schema(conn)
    return {"DATABASE_URL": ensure(owner_url, password, key), "SLUICE_SCOPE_KEY": key}
