"""The connection pool against a real PostgreSQL that goes away, stalls and comes back."""

import concurrent.futures
import time

import psycopg
import psycopg2
import psycopg2.errors
import pytest
from webapp_fixtures import (PausableProxy, catalog, closed_port_url, insert_records, make_app,  # noqa: F401
                             missing_socket_url)

from webapp import create_app, db

LEAKS = ("Traceback", "psycopg2", 'File "', "OperationalError", "connection to server")


@pytest.fixture(params=["closed port", "missing socket"])
def unreachable_url(request, tmp_path):
    return closed_port_url() if request.param == "closed port" else missing_socket_url(tmp_path)


def test_create_app_does_not_connect(unreachable_url):
    app = create_app({"AUTH": "none", "DATABASE_URL": unreachable_url})
    assert app.test_client().get("/").status_code == 200  # no route that skips the database needs it


@pytest.mark.parametrize("path", ["/data", "/data/api/1", "/stats", "/runs", "/runs/r1/rejects"])
def test_unreachable_database_is_a_quick_503_without_details(make_app, unreachable_url, path):
    client = make_app(unreachable_url).test_client()
    started = time.monotonic()
    response = client.get(path)
    assert time.monotonic() - started < 3
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    assert response.json == {"code": 503, "status": "Service Unavailable", "message": "database unreachable",
                             "errors": {}}
    assert not any(leak in response.get_data(as_text=True) for leak in LEAKS)


def test_unreachable_database_makes_health_503(make_app, unreachable_url):
    response = make_app(unreachable_url).test_client().get("/health")
    assert response.status_code == 503
    assert response.json == {"status": "unavailable", "db_connected": False, "last_etl_run": None,
                             "etl_status": None, "reason": "database unreachable"}


def test_pool_recovers_when_the_database_comes_back(make_app, server_url, database_url):
    insert_records(database_url, catalog(3))
    proxy = PausableProxy(server_url)
    proxy.start()
    try:
        client = make_app(proxy.url(psycopg.conninfo.conninfo_to_dict(database_url)["dbname"])).test_client()
        assert client.get("/data").status_code == 200
        proxy.stop()
        assert [client.get("/data").status_code for _ in range(3)] == [503] * 3
        assert client.get("/health").json["db_connected"] is False
        proxy.start()
        assert client.get("/data").json["total"] == 3
        assert client.get("/stats").status_code == 200
    finally:
        proxy.stop()


def test_a_server_restart_costs_no_failed_request(make_app, database_url):
    insert_records(database_url, catalog(3))
    client = make_app(database_url).test_client()
    assert client.get("/data").status_code == 200
    with psycopg.connect(database_url, autocommit=True) as admin:
        killed = admin.execute("select count(pg_terminate_backend(pid)) from pg_stat_activity"
                               " where application_name = 'sluice-webapp'").fetchone()[0]
    assert killed >= 1
    time.sleep(0.2)
    # every pooled connection is now dead; each request still gets an answer from a fresh one
    assert [client.get("/data").status_code for _ in range(3)] == [200] * 3


def test_statement_timeout_is_a_503_and_the_connection_stays_usable(make_app, database_url):
    insert_records(database_url, catalog(3))
    client = make_app(database_url, STATEMENT_TIMEOUT_MS=300, POOL_MIN=1, POOL_MAX=1).test_client()
    with psycopg.connect(database_url) as blocker:
        blocker.execute("lock table normalized_data in access exclusive mode")
        started = time.monotonic()
        response = client.get("/data")
        assert time.monotonic() - started < 3
        blocker.rollback()
    assert response.status_code == 503
    assert response.json["message"] == "the query took longer than the 300 ms statement timeout"
    assert client.get("/data").json["total"] == 3  # the one pooled connection was rolled back, not lost


def test_pool_settings_come_from_config(make_app, database_url):
    app = make_app(database_url, POOL_MIN=2, POOL_MAX=3, STATEMENT_TIMEOUT_MS=1234)
    with app.app_context():
        cursor = db.get_db().cursor()
        cursor.execute("select current_setting('statement_timeout'), current_setting('transaction_read_only'),"
                       " current_setting('transaction_isolation'), current_setting('TimeZone')")
        assert cursor.fetchone() == ("1234ms", "on", "repeatable read", "UTC")
        pool = db.warehouse(app).pool()
        assert (pool.minconn, pool.maxconn) == (2, 3)


def test_connections_are_read_only(make_app, database_url):
    app = make_app(database_url)
    with app.app_context():
        cursor = db.get_db().cursor()
        with pytest.raises(psycopg2.errors.ReadOnlySqlTransaction):
            cursor.execute("delete from normalized_data")


def test_a_full_pool_is_a_503(make_app, database_url):
    app = make_app(database_url, POOL_MIN=1, POOL_MAX=1)
    held = db.warehouse(app).checkout()  # the only connection, busy with a slow request
    response = app.test_client().get("/runs")
    db.warehouse(app).give_back(held, broken=False)
    assert app.test_client().get("/runs").status_code == 200
    assert response.status_code == 503
    assert response.json["message"] == "all 1 database connections are in use"


def test_connections_go_back_to_the_pool(make_app, database_url):
    app = make_app(database_url, POOL_MIN=2, POOL_MAX=2)
    client = app.test_client()
    for _ in range(5):  # more requests than connections: each one returned its connection
        assert client.get("/runs").status_code == 200
    with psycopg.connect(database_url) as conn:
        (count,) = conn.execute("select count(*) from pg_stat_activity where application_name = 'sluice-webapp'"
                                " and datname = current_database()").fetchone()
    assert count <= 2


def test_connections_opened_for_concurrent_requests_are_kept_not_opened_again(make_app, database_url):
    """More requests at once than POOL_MIN: psycopg2's own pool closed each connection given back while POOL_MIN
    were idle, so under load a share of requests paid a new backend each; the pool keeps them (up to POOL_MAX)."""
    insert_records(database_url, catalog(3))
    app = make_app(database_url, POOL_MIN=1, POOL_MAX=6)

    def wave() -> set[int]:
        def client_requests(_):
            client = app.test_client()
            return [client.get("/data?page_size=1").status_code for _ in range(40)]

        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            assert all(status == 200 for statuses in pool.map(client_requests, range(6)) for status in statuses)
        with psycopg.connect(database_url) as conn:
            return {pid for (pid,) in conn.execute(
                "select pid from pg_stat_activity where application_name = 'sluice-webapp'"
                " and datname = current_database()").fetchall()}

    first = wave()
    assert 1 < len(first) <= 6  # requests overlapped, and what they opened is still open
    assert first <= wave()  # the next wave found them: none was closed and opened again


def prepared_statements(app) -> list[tuple]:
    """(generic plans, custom plans, is a search) of each statement the app's one pooled connection prepared."""
    with app.app_context():
        cursor = db.get_db().cursor()
        cursor.execute("select generic_plans, custom_plans, statement like '%ilike%' from pg_prepared_statements"
                       " order by 3, 1 desc")
        return cursor.fetchall()


def test_data_statements_are_prepared_once_per_connection_and_planned_as_their_filters_need(make_app,
                                                                                           database_url):
    """The first page is planned once (a generic plan) and then only executed; a search and a poll since a moment
    are planned with their values every time, since a plan made without them reads the whole table."""
    insert_records(database_url, catalog(30))
    app = make_app(database_url, POOL_MIN=1, POOL_MAX=1)
    client = app.test_client()
    since = client.get("/data?page_size=5").json["data"][-1]["updated_at"]
    for _ in range(3):
        assert len(client.get("/data?page_size=5").json["data"]) == 5
        assert client.get("/data?search=item 2").json["total"] == 11  # Item 2, Item 20 to 29
        # a poll since a moment: how many rows follow it decides the plan, as for a search
        assert len(client.get("/data", query_string={"updated_since": since}).json["data"]) >= 5
    assert prepared_statements(app) == [(4, 0, False), (0, 3, False), (0, 3, True)]


def test_a_connection_prepares_at_most_max_prepared_statements_and_still_answers_the_rest(make_app, database_url,
                                                                                         monkeypatch):
    insert_records(database_url, catalog(30))
    monkeypatch.setattr(db, "MAX_PREPARED", 1)
    app = make_app(database_url, POOL_MIN=1, POOL_MAX=1)
    client = app.test_client()
    for _ in range(2):
        assert client.get("/data?page_size=5").json["total"] == 30
        assert client.get("/data?search=item 2").json["total"] == 11
    assert prepared_statements(app) == [(2, 0, False)]


def test_a_schema_change_under_a_prepared_statement_costs_no_failed_request(make_app, database_url):
    """A migration that changes a column's type invalidates what a session prepared before it ("cached plan must
    not change result type"): the connection is replaced and the request answered."""
    insert_records(database_url, catalog(3))
    app = make_app(database_url, POOL_MIN=1, POOL_MAX=2)
    client = app.test_client()
    assert client.get("/data").status_code == 200
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute("alter table normalized_data alter column source_id type varchar(2000)")
    response = client.get("/data")
    assert response.status_code == 200
    assert response.json["total"] == 3
