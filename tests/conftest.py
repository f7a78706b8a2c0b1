"""Shared fixtures: a real PostgreSQL (embedded, or TEST_DATABASE_URL) and fresh databases on it."""

import os
import uuid
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from sluice import scope_key, warehouse
from sluice_devtools import embedded_pg
from sluice_devtools.source_server import SourceServer

REPO = Path(__file__).resolve().parents[1]
# The key the tests' warehouses and apps sign request scopes with (row-level security, migration 018): in the
# environment, so every app the tests make, in this process or in a gunicorn they start, reads it as deployed
SCOPE_KEY = os.environ.setdefault("SLUICE_SCOPE_KEY", "7e57" * 16)

# Every app and gunicorn a test starts runs through the rate limiter, with budgets no other test reaches:
# tests/test_rate_limits.py sets its own.
for _limit in ("DEFAULT", "ANONYMOUS", "HEALTH", "BAD_CREDENTIALS", "EXPORT"):
    os.environ.setdefault(f"SLUICE_RATELIMIT_{_limit}", "1000000 per minute")


@pytest.fixture(scope="session")
def server_url(tmp_path_factory):
    """URL of a server the tests may create databases on."""
    if os.environ.get("TEST_DATABASE_URL"):
        yield os.environ["TEST_DATABASE_URL"]
        return
    data_dir = REPO / ".sluice" / f"test-pg-{os.getpid()}"
    url = embedded_pg.start(data_dir)
    yield url
    embedded_pg.stop(data_dir)


def _with_database(url: str, dbname: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(url)
    info["dbname"] = dbname
    return psycopg.conninfo.make_conninfo(**info)


@pytest.fixture(scope="session")
def make_database(server_url):
    """Factory: a new empty database on the test server, with the schema applied unless bare=True."""
    created = []

    def make(bare: bool = False) -> str:
        name = f"sluice_test_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
        created.append(name)
        url = _with_database(server_url, name)
        if not bare:
            with psycopg.connect(url) as conn:
                warehouse.apply_schema(conn)
                scope_key.install(conn, SCOPE_KEY)
        return url

    yield make
    with psycopg.connect(server_url, autocommit=True) as admin:
        for name in created:
            admin.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))


@pytest.fixture
def database_url(make_database):
    """A fresh database with the schema applied, private to one test."""
    return make_database()


@pytest.fixture(scope="module")
def servers():
    """Two loopback sources on different origins (ports): `home`, a source's own, and `other`, elsewhere."""
    with SourceServer() as home, SourceServer() as other:
        for server in (home, other):
            # a refused page is closed unread; the server's reset on reading the next request is expected
            server.httpd.handle_error = lambda request, client_address: None
        yield home, other


@pytest.fixture
def home(servers):
    servers[0].requests.clear()
    return servers[0]


@pytest.fixture
def other(servers):
    servers[1].requests.clear()
    return servers[1]
