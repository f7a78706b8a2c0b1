"""Backup and restore of the warehouse (sluice_devtools.backup, make backup / make restore): whole DAG runs against
real PostgreSQL and loopback sources, a backup restored into a FRESH server, and the run after it."""

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from sluice import scope_key
from sluice_devtools import backup, embedded_pg, local_env, reader_role, sample_data
from tests import auth_fixtures
from tests.conftest import SCOPE_KEY
from tests.pipeline_harness import Pipeline, point_airflow_at, start_sources
from webapp import create_app, db

pytestmark = pytest.mark.slow

API_RECORDS, CSV_ROWS, BAD_EVERY = 100, 300, 50
# what a source user sees of a row; the lineage columns name runs, which differ between the two servers
DATA_COLUMNS = ("select source, source_id, name, value, description, attributes, deleted_at is null as live "
                "from normalized_data order by source, source_id")
COUNTS = ("fetched", "inserted", "updated", "unchanged", "rejected", "deleted")


def table_digests(url: str) -> dict[str, str]:
    """md5 of every table's and view's sorted rows (the scope key's rows left out: no backup holds them)."""
    with psycopg.connect(url) as conn:
        relations = conn.execute(
            "select schemaname, tablename from pg_tables where schemaname in ('public', 'sluice_private', 'sources')"
            " union all select schemaname, viewname from pg_views where schemaname = 'sources'").fetchall()
        digests = {}
        for schema, name in relations:
            if (schema, name) == ("sluice_private", "scope_key"):
                continue
            digests[f"{schema}.{name}"] = conn.execute(sql.SQL(
                "select count(*) || ':' || md5(coalesce(string_agg(t::text, '|' order by t::text), '')) from {} t"
            ).format(sql.Identifier(schema, name))).fetchone()[0]
        return digests


def source_digest(url: str, source: str) -> str:
    with psycopg.connect(url) as conn:
        return conn.execute("select md5(coalesce(string_agg(t::text, '|' order by source_id), '')) "
                            "from normalized_data t where source = %s", (source,)).fetchone()[0]


def change_sources(sources) -> None:
    """The sources after the backup: 20 new posts, 5 retitled; 30 new CSV rows (one bad)."""
    posts = sample_data.posts(API_RECORDS + 20)
    for post in posts[:5]:
        post["title"] = f"retitled {post['id']}"
    sources.serve_json("posts", posts, page_size=40)
    sources.serve_bytes("items.csv", sample_data.csv_bytes(CSV_ROWS + 30, bad_every=BAD_EVERY))


def per_source(run: dict) -> dict:
    return {source: {name: counts[name] for name in COUNTS} for source, counts in run["source_counts"].items()}


@pytest.fixture
def fresh_server():
    """A PostgreSQL server of its own, never used before: a database `restored` on it, as a disaster's target."""
    data_dir = local_env.STATE / f"test-restore-pg-{time.monotonic_ns()}"
    url = embedded_pg.start(data_dir)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("create database restored")
    yield psycopg.conninfo.make_conninfo(url, dbname="restored")
    embedded_pg.stop(data_dir)
    shutil.rmtree(data_dir)


@pytest.fixture
def sources():
    server = start_sources(API_RECORDS, CSV_ROWS, BAD_EVERY)
    yield server
    server.stop()


def test_a_backup_between_two_runs_restores_every_table_and_the_next_run_loads_only_what_changed(
        monkeypatch, database_url, fresh_server, sources, tmp_path):
    original = Pipeline(database_url, sources)
    point_airflow_at(monkeypatch, database_url, sources, tmp_path / "staging")
    assert original.run()[0] == "success"
    # the API's role and a key, as deployed: both must work on the restored server
    reader_role.ensure(database_url, "original-reader-pw", SCOPE_KEY)
    admin = create_app({"AUTH": "keys", "DATABASE_URL": database_url, "ADMIN_DATABASE_URL": database_url,
                        "TESTING": True})
    key = auth_fixtures.create_key(admin, "restored-consumer", "api,csv")
    db.warehouse(admin).close()

    dump = backup.backup(database_url, tmp_path / "between.dump")
    assert dump.stat().st_mode & 0o777 == 0o600  # every row of the warehouse: its owner's only
    at_backup = table_digests(database_url)

    change_sources(sources)
    state, second = original.run()
    assert state == "success"
    assert per_source(second)["api"] == {"fetched": 120, "inserted": 20, "updated": 5, "unchanged": 95,
                                         "rejected": 0, "deleted": 0}
    after_second = original.rows(DATA_COLUMNS)
    checkpoints_after_second = original.rows(
        "select source, last_processed_id, total_processed from etl_checkpoint order by source")

    # the file holds no secret: no scope key rows, no API key (its hash only), no reader password
    listing = subprocess.run([backup.pg_tool("pg_restore"), "--file=-", str(dump)], capture_output=True, text=True,
                             check=True).stdout
    assert key not in listing and "original-reader-pw" not in listing
    assert "COPY sluice_private.scope_key" not in listing

    backup.restore(dump, fresh_server)
    restored = Pipeline(fresh_server, sources)
    assert table_digests(fresh_server) == at_backup  # every table and typed view: etl_runs, checkpoints, raw...
    assert restored.value("select count(*) from etl_runs") == 1
    with psycopg.connect(fresh_server) as conn:
        assert not conn.execute(backup.q("scope_key_installed")).fetchone()[0]
        # the search operators are leakproof again (migration 019 changes pg_catalog, which no dump holds)
        assert conn.execute("select bool_and(proleakproof) from pg_proc "
                            "where proname in ('texticlike', 'jsonb_contains')").fetchone()[0]
        conn.execute(sql.SQL("alter role {} login password {}").format(
            sql.Identifier(reader_role.ROLE), sql.Literal("restored-reader-pw")))
        scope_key.install(conn, SCOPE_KEY)
    reader_url = psycopg.conninfo.make_conninfo(fresh_server, user=reader_role.ROLE, password="restored-reader-pw")
    # the grants and row-level security came with the dump: without a scope the reader sees no row, with the
    # restored key's it sees its sources, and it writes nothing
    with psycopg.connect(reader_url) as conn:
        assert conn.execute("select count(*) from normalized_data").fetchone()[0] == 0
        assert conn.execute("show default_transaction_read_only").fetchone()[0] == "on"
        assert conn.execute("show track_activities").fetchone()[0] == "off"
        conn.rollback()
        conn.execute("set transaction read write")  # past its read-only default, the grants still refuse
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("delete from normalized_data")
    app = create_app({"AUTH": "keys", "DATABASE_URL": reader_url, "TESTING": True})
    try:
        answer = app.test_client().get("/data?source=api", headers=auth_fixtures.bearer(key))
        assert answer.status_code == 200, answer.json
        assert answer.json["total"] == API_RECORDS
    finally:
        db.warehouse(app).close()

    # the run after the restore reads the changed sources: exactly what run 2 loaded, nothing twice
    point_airflow_at(monkeypatch, fresh_server, sources, tmp_path / "staging-restored")
    state, after_restore = restored.run()
    assert state == "success"
    assert per_source(after_restore) == per_source(second)
    assert restored.rows(DATA_COLUMNS) == after_second
    assert restored.rows("select source, last_processed_id, total_processed from etl_checkpoint "
                         "order by source") == checkpoints_after_second
    assert restored.value("select count(*) from etl_runs") == 2


def test_a_backup_taken_while_a_run_writes_restores_what_had_committed(monkeypatch, database_url, fresh_server,
                                                                       sources, tmp_path):
    original = Pipeline(database_url, sources)
    point_airflow_at(monkeypatch, database_url, sources, tmp_path / "staging")
    assert original.run()[0] == "success"
    before = {source: source_digest(database_url, source) for source in ("api", "csv")}
    checkpoints_before = original.rows("select source, last_processed_id, total_processed from etl_checkpoint")
    runs_before = {run_id for (run_id,) in original.rows("select run_id from etl_runs")}
    change_sources(sources)
    taken = {}

    def back_up_mid_write():
        """Hold csv's upsert inside its transaction, after it wrote normalized_data and before it commits (an
        uncommitted row of the step result it records last), take the backup there, then let it go on."""
        with psycopg.connect(database_url) as holder, psycopg.connect(database_url, autocommit=True) as watcher:
            run_id = None
            while run_id is None:  # the run's first committed step names it
                found = watcher.execute("select run_id from etl_step_results where step = 'store_raw' "
                                        "and not (run_id = any(%s))", (list(runs_before),)).fetchone()
                run_id = found and found[0]
                time.sleep(0.01)
            holder.execute("insert into etl_step_results (run_id, source, step, result) "
                           "values (%s, 'csv', 'upsert', '{}')", (run_id,))
            # the upsert waits on the held row, its transaction having written (it has a transaction id)
            while not watcher.execute("select exists (select from pg_stat_activity where wait_event_type = 'Lock' "
                                      "and query like 'insert into etl_step_results%%' "
                                      "and backend_xid is not null)").fetchone()[0]:
                time.sleep(0.05)
            taken["digests"] = table_digests(database_url)
            taken["sources"] = {source: source_digest(database_url, source) for source in ("api", "csv")}
            taken["dump"] = backup.backup(database_url, tmp_path / "mid-write.dump")
            holder.rollback()

    helper = threading.Thread(target=back_up_mid_write, daemon=True)
    helper.start()
    state, second = original.run()
    helper.join(timeout=30)
    assert state == "success" and "dump" in taken
    after = {source: source_digest(database_url, source) for source in ("api", "csv")}
    assert after["csv"] != before["csv"]

    backup.restore(taken["dump"], fresh_server)
    assert table_digests(fresh_server) == taken["digests"]
    # csv's half-written upsert is absent; api is there wholly, or not at all
    assert source_digest(fresh_server, "csv") == before["csv"]
    assert source_digest(fresh_server, "api") in (before["api"], after["api"])
    restored = Pipeline(fresh_server, sources)
    # no checkpoint ahead of its rows: the run never reached a checkpoint, nor recorded itself
    assert sorted(restored.rows("select source, last_processed_id, total_processed from etl_checkpoint")) == \
        sorted(checkpoints_before)
    assert restored.value("select count(*) from etl_runs") == 1

    point_airflow_at(monkeypatch, fresh_server, sources, tmp_path / "staging-restored")
    state, after_restore = restored.run()
    assert state == "success"
    assert after_restore["source_counts"]["csv"]["inserted"] == second["source_counts"]["csv"]["inserted"]
    assert restored.rows(DATA_COLUMNS) == original.rows(DATA_COLUMNS)
    assert restored.rows("select source, last_processed_id, total_processed from etl_checkpoint order by 1") == \
        original.rows("select source, last_processed_id, total_processed from etl_checkpoint order by 1")


def test_make_backup_and_restore_round_trip_and_a_restore_never_touches_a_database_in_use(make_database, tmp_path):
    source, target = make_database(), make_database(bare=True)
    with psycopg.connect(source) as conn:
        conn.execute("insert into etl_runs (run_id, status) values ('kept', 'success')")
    dump = tmp_path / "cli.dump"

    def cli(action: str, url: str) -> subprocess.CompletedProcess:
        # what make backup / make restore run, pointed at a warehouse by DATABASE_URL
        return subprocess.run([sys.executable, "-m", "sluice_devtools.backup", action, str(dump)], capture_output=True,
                              text=True, env={**os.environ, "DATABASE_URL": url}, timeout=120)

    assert cli("backup", source).returncode == 0
    restored = cli("restore", target)
    assert restored.returncode == 0, restored.stderr
    with psycopg.connect(target) as conn:
        assert conn.execute("select run_id from etl_runs").fetchall() == [("kept",)]
        assert conn.execute(backup.q("scope_key_installed")).fetchone()[0]  # SLUICE_SCOPE_KEY, from the environment
    before = table_digests(source)
    refused = cli("restore", source)
    assert refused.returncode != 0 and "is not empty: a backup is restored into an empty database only" in refused.stderr
    assert table_digests(source) == before
