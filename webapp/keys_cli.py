"""`flask --app webapp keys create|list|revoke`: API keys, managed over the owner's connection (never the API's)."""

import logging
import os
import pwd
import re
import sys
from datetime import datetime, timedelta, timezone

import click
import psycopg
import psycopg.errors
import psycopg.rows
from flask import current_app
from flask.cli import AppGroup

from sluice import queries, warehouse
from webapp import api_keys, audit

keys_cli = AppGroup("keys", help="Create, list and revoke the read API's keys (SLUICE_AUTH=keys).")
_DURATION = re.compile(r"^(\d{1,5})([dh])$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")  # the table's check: a name fits a log line and a shell


def _query(name: str) -> str:
    return queries.query(api_keys.SQL_FILE, name)


def _operator() -> str:
    """Who runs the command: the OS user (the database role is the shared owner)."""
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return f"uid {os.geteuid()}"


def _owner_connection() -> psycopg.Connection:
    """The owner's connection (SLUICE_ADMIN_DATABASE_URL, else DATABASE_URL), the schema brought up to date."""
    url = current_app.config["ADMIN_DATABASE_URL"] or current_app.config["DATABASE_URL"]
    try:
        conn = psycopg.connect(url)
    except psycopg.OperationalError as error:
        raise click.ClickException(f"cannot connect to the warehouse (SLUICE_ADMIN_DATABASE_URL): {error}") from None
    warehouse.apply_schema(conn)  # reads its rows as tuples
    conn.row_factory = psycopg.rows.dict_row
    return conn


def _audit_to_stderr() -> None:
    # under `flask` nothing configures logging: the audit line of a change must still be written somewhere
    if not audit.audit_log.hasHandlers():
        handler = logging.StreamHandler(sys.stderr)
        audit.audit_log.addHandler(handler)
    audit.audit_log.setLevel(logging.INFO)


def _lifetime(value: str | None) -> timedelta | None:
    if value is None:
        return None
    match = _DURATION.fullmatch(value)
    if not match or int(match[1]) == 0:
        raise click.BadParameter("a duration such as 90d (days) or 12h (hours)", param_hint="--expires")
    amount = int(match[1])
    return timedelta(days=amount) if match[2] == "d" else timedelta(hours=amount)


def _sources(value: str) -> list[str] | None:
    names = [name.strip() for name in value.split(",") if name.strip()]
    if names == ["*"]:
        return None
    if not names or "*" in names:
        raise click.BadParameter("source names separated by commas, or * for every source", param_hint="--sources")
    return sorted(set(names))


@keys_cli.command("create")
@click.option("--name", required=True, help="a unique name, shown in the audit trail (letters, digits, _ . -)")
@click.option("--sources", required=True, help="the sources it may read: posts,orders, or '*' for every source")
@click.option("--operations", is_flag=True, help="it may also read /runs, rejects and the sources' errors")
@click.option("--expires", help="it stops working after this long: 90d, 12h (default: never)")
def create(name: str, sources: str, operations: bool, expires: str | None) -> None:
    """Create a key and print it, once: only its hash is kept."""
    if not _NAME.fullmatch(name):
        raise click.BadParameter("letters, digits, _ . - (at most 63, starting with a letter or digit)",
                                 param_hint="--name")
    allowed, lifetime = _sources(sources), _lifetime(expires)
    key, operator = api_keys.new_key(), _operator()
    with _owner_connection() as conn:
        try:
            row = conn.execute(_query("api_key_create"), {
                "name": name, "key_hash": api_keys.key_hash(key), "sources": allowed, "operations": operations,
                "lifetime": lifetime, "created_by": operator}).fetchone()
        except psycopg.errors.UniqueViolation:
            raise click.ClickException(f"a key named {name!r} exists (revoked ones keep their name): "
                                       "choose another name") from None
    _audit_to_stderr()
    audit.key_created(name, allowed or "*", operations, row["expires_at"], operator)
    click.echo(f"key {name}: sources {', '.join(allowed) if allowed else '*'}; operations "
               f"{'yes' if operations else 'no'}; expires {row['expires_at'] or 'never'}", err=True)
    click.echo(key)
    click.echo("Keep it now: it is shown only this once. Use it as:  Authorization: Bearer <key>", err=True)


@keys_cli.command("list")
def list_keys() -> None:
    """Every key: scopes, expiry, created, last used, revoked (never the key)."""
    with _owner_connection() as conn:
        rows = conn.execute(_query("api_keys_list")).fetchall()
    now = datetime.now(timezone.utc)
    click.echo("name\tsources\toperations\tstate\texpires_at\tcreated_at\tcreated_by\tlast_used_at")
    for row in rows:
        state = ("revoked" if row["revoked_at"] else
                 "expired" if row["expires_at"] and row["expires_at"] <= now else "active")
        click.echo("\t".join(str(value) for value in (
            row["name"], ",".join(row["sources"]) if row["sources"] is not None else "*",
            "yes" if row["operations"] else "no", state, row["expires_at"] or "-", row["created_at"],
            row["created_by"], row["last_used_at"] or "-")))


@keys_cli.command("revoke")
@click.argument("name")
def revoke(name: str) -> None:
    """Revoke a key: every worker refuses it within a second."""
    operator = _operator()
    with _owner_connection() as conn:
        row = conn.execute(_query("api_key_revoke"), {"name": name, "revoked_by": operator}).fetchone()
        if row is None and not conn.execute(_query("api_key_exists"), {"name": name}).fetchone()["found"]:
            raise click.ClickException(f"no key named {name!r} (flask --app webapp keys list)")
    if row is None:
        click.echo(f"key {name} was already revoked")
        return
    _audit_to_stderr()
    audit.key_revoked(name, operator)
    click.echo(f"key {name} revoked at {row['revoked_at']}")
