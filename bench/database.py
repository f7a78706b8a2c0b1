"""The bench's PostgreSQL: the embedded server (or BENCH_DATABASE_URL) and a fresh database per run."""

import os
import time
from pathlib import Path
from urllib.parse import quote

import psycopg
from psycopg import sql

from sluice_devtools import embedded_pg

FLUSH_BEFORE_STEPS = True  # python -m bench --no-checkpoint turns it off
AUTOVACUUM_WAIT_SECONDS = 60


class Server:
    """A server the bench may create databases on; stops the embedded one at close() if it started it."""

    def __init__(self, pg_dir: Path):
        self.pg_dir = pg_dir
        self.started_here = False
        self.url = os.environ.get("BENCH_DATABASE_URL")
        if not self.url:
            self.started_here = not (pg_dir / "postmaster.pid").exists()
            self.url = embedded_pg.start(pg_dir)
        self.created: list[str] = []

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.url, autocommit=True) as admin:
            admin.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))
            admin.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
        self.created.append(name)
        return with_database(self.url, name)

    def describe(self) -> str:
        with psycopg.connect(self.url, autocommit=True) as conn:
            settings = {name: conn.execute(sql.SQL("show {}").format(sql.Identifier(name))).fetchone()[0]
                        for name in ("server_version", "shared_buffers", "fsync", "synchronous_commit")}
        where = "BENCH_DATABASE_URL" if os.environ.get("BENCH_DATABASE_URL") else f"embedded ({self.pg_dir})"
        return f"PostgreSQL {settings.pop('server_version')} {where}; " + ", ".join(
            f"{name}={value}" for name, value in settings.items())

    def close(self, keep_databases: bool) -> None:
        if not keep_databases:
            with psycopg.connect(self.url, autocommit=True) as admin:
                for name in self.created:
                    admin.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))
        if self.started_here:
            embedded_pg.stop(self.pg_dir)


def with_database(url: str, dbname: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(url)
    info["dbname"] = dbname
    return psycopg.conninfo.make_conninfo(**info)


def as_url(conninfo: str) -> str:
    """A postgresql:// URL for clients that parse URLs themselves (Airflow connections, dlt).

    A socket directory becomes a percent-encoded host; a missing password becomes a dummy one, because
    dlt insists on a password even when the server trusts local connections.
    """
    info = psycopg.conninfo.conninfo_to_dict(conninfo)
    host = quote(info.get("host") or "localhost", safe="")
    user = quote(info.get("user") or "postgres", safe="")
    password = quote(info.get("password") or "unused", safe="")
    port = f":{info['port']}" if info.get("port") else ""
    return f"postgresql://{user}:{password}@{host}{port}/{quote(info.get('dbname') or 'postgres', safe='')}"


def checkpoint(url: str) -> None:
    """Before a timed step, pay the debts of the one before it: the vacuum and analyze its rows would get
    from autovacuum (on 2 cores an autovacuum of a million fresh rows starting mid-step changes the step's
    time by seconds), then a flush of dirty buffers."""
    if not FLUSH_BEFORE_STEPS:
        return
    with psycopg.connect(url, autocommit=True) as conn:
        deadline = time.monotonic() + AUTOVACUUM_WAIT_SECONDS
        while time.monotonic() < deadline and conn.execute(
                "select count(*) from pg_stat_activity where backend_type = 'autovacuum worker'"
                " and datname = current_database()").fetchone()[0]:
            time.sleep(0.2)
        conn.execute("vacuum (analyze)")  # a role that does not own a table gets a warning, not an error
        try:
            conn.execute("checkpoint")
        except psycopg.errors.InsufficientPrivilege:
            pass  # a BENCH_DATABASE_URL role without pg_checkpoint: the timings are just noisier
