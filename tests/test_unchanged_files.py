"""Unchanged files (issue 28): a CSV whose bytes equal the source's last complete load costs a download and a hash,
and reports what a read of it would, without giving up rejects, deletes or the fetch order of overlapping runs."""

import shutil

import psycopg
import pytest
import requests

from sluice import pipeline, queries, settings, sources
from sluice_devtools import sample_data
from sluice_devtools.source_server import SourceServer
from tests.pipeline_harness import Pipeline, point_airflow_at, start_sources

API_RECORDS, CSV_ROWS, BAD_EVERY = 100, 300, 50  # 6 bad CSV rows of 4 kinds
# what a user compares between runs: every count of the source's etl_runs entry
COUNTED = ("fetched", "inserted", "updated", "unchanged", "superseded", "rejected", "deleted", "undeleted",
           "deletes_skipped", "live_before", "live_after", "loaded")
# the quality gate's judgement of the batch: the same records, so the same measures and verdicts
QUALITY = ("select check_name, severity, measured, verdict from quality_results where run_id = %s and source = 'csv' "
           "order by 1")
REJECTS = ("select source_id, stage, reason, payload::text from rejected_records where run_id = %s and source = 'csv' "
           "order by 1, 2, 3, 4")
SKIPPED = ("select (result ->> 'unchanged')::boolean from etl_step_results where run_id = %s and source = 'csv' "
           "and step = 'store_raw'")
# the newest row version of each table: a run that writes no row leaves them as they were
ROW_VERSIONS = ("select (select max(xmin::text::bigint) from raw_csv_data), "
                "(select max(xmin::text::bigint) from normalized_data), (select count(*) from staged_records)")


def one_byte_changed(body: bytes) -> bytes:
    """The CSV with the first letter of record 1's name upper-cased: one byte."""
    at = body.index(b"\n1,") + 3
    return body[:at] + body[at:at + 1].upper() + body[at + 1:]


@pytest.fixture
def dag(monkeypatch, database_url, tmp_path):
    served = start_sources(API_RECORDS, CSV_ROWS, BAD_EVERY)
    point_airflow_at(monkeypatch, database_url, served, tmp_path / "staging")
    yield Pipeline(database_url, served)
    served.stop()


def csv_counts(run: dict) -> dict:
    return {name: run["source_counts"]["csv"].get(name) for name in COUNTED}


def test_an_unchanged_rerun_writes_nothing_and_reports_what_a_read_of_the_file_would(dag):
    state, first = dag.run()
    assert state == "success" and dag.value("select loaded_file is not null from etl_checkpoint where source = 'csv'")
    # the same file read as before this change (no file recorded): the reference of what a read reports
    dag.rows("update etl_checkpoint set loaded_file = null returning source")
    state, read = dag.run()
    assert state == "success" and csv_counts(read)["unchanged"] == CSV_ROWS - 6
    versions = dag.rows(ROW_VERSIONS)
    fetched_before = dag.value("select raw_fetch_seq from etl_checkpoint where source = 'csv'")

    state, skipped = dag.run()

    assert state == "success" and skipped["status"] == "success"
    assert dag.value(SKIPPED, (skipped["run_id"],)) and not dag.value(SKIPPED, (read["run_id"],))
    assert csv_counts(skipped) == csv_counts(read)
    assert (skipped["fetched"], skipped["rejected"], skipped["inserted"], skipped["updated"]) == (
        read["fetched"], read["rejected"], 0, 0)
    assert dag.rows(REJECTS, (skipped["run_id"],)) == dag.rows(REJECTS, (read["run_id"],))
    assert dag.rows(QUALITY, (skipped["run_id"],)) == dag.rows(QUALITY, (read["run_id"],))
    assert len(dag.rows(QUALITY, (skipped["run_id"],))) > 1
    assert len(dag.rows(REJECTS, (skipped["run_id"],))) == 6
    # no raw or normalized row version, no staged row: nothing was written
    assert dag.rows(ROW_VERSIONS) == versions
    # its fetch is the newest the source holds, as a read's would be
    fetch_seq, loaded = dag.rows("select raw_fetch_seq, (loaded_file ->> 'fetch_seq')::bigint from etl_checkpoint "
                                 "where source = 'csv'")[0]
    assert fetch_seq == loaded and fetch_seq > fetched_before
    assert first["run_id"] != skipped["run_id"]


def test_a_one_byte_change_reads_the_file(dag):
    assert dag.run()[0] == "success"
    dag.sources.serve_bytes("items.csv", one_byte_changed(sample_data.csv_bytes(CSV_ROWS, bad_every=BAD_EVERY)))

    state, run = dag.run()

    assert state == "success" and not dag.value(SKIPPED, (run["run_id"],))
    counts = csv_counts(run)
    assert (counts["updated"], counts["unchanged"], counts["rejected"]) == (1, CSV_ROWS - 7, 6)
    name = dag.value("select name from normalized_data where source = 'csv' and source_id = '1'")
    assert name[0].isupper()


def test_a_cleared_skipped_run_reports_the_same_once(dag):
    assert dag.run()[0] == "success"
    state, skipped = dag.run()
    assert state == "success" and skipped["unchanged"] == API_RECORDS + CSV_ROWS - 6

    # store_raw and what follows again: each returns what it committed; ingest again: a new fetch, skipped again
    for tasks in (["store_raw"], ["ingest"]):
        state, again = dag.clear(skipped["run_id"], tasks)
        assert state == "success", tasks
        assert csv_counts(again) == csv_counts(skipped) and dag.value(SKIPPED, (skipped["run_id"],)), tasks
        assert len(dag.rows(REJECTS, (skipped["run_id"],))) == 6, tasks


# ---- overlapping runs, step by step (sluice.pipeline without Airflow)

@pytest.fixture
def lanes(database_url, tmp_path):
    server = SourceServer().start()
    source = sources.Source(name="items", kind="csv", conn_id="etl_csv", endpoint="items.csv",
                            mapping=settings.DEFAULT_CSV_MAPPING)
    config = settings.load()

    class Lanes:
        def ingest(self, run_id: str, body: bytes):
            server.serve_bytes("items.csv", body)
            with psycopg.connect(database_url) as conn, requests.Session() as session:
                return pipeline.ingest(conn, source, session, f"{server.url}/items.csv",
                                       str(tmp_path / f"{run_id}.copy"), run_id=run_id, settings=config)

        def load(self, run_id: str, ingested):
            with psycopg.connect(database_url) as conn:
                stored = pipeline.store_raw(conn, ingested, run_id=run_id, settings=config, source=source)
                normalized = pipeline.normalize(conn, source, stored, run_id=run_id, settings=config)
                upserted = pipeline.upsert(conn, source, stored, normalized, run_id=run_id, settings=config)
                pipeline.checkpoint(conn, stored, upserted, run_id=run_id, settings=config)
                return stored, upserted

        def replay(self, run_id: str):
            with psycopg.connect(database_url) as conn:
                return pipeline.store_replay(conn, source, run_id=run_id, settings=config)

        def name(self, source_id: str) -> str:
            with psycopg.connect(database_url) as conn:
                return conn.execute("select name from normalized_data where source = 'items' and source_id = %s",
                                    (source_id,)).fetchone()[0]

    yield Lanes()
    server.stop()


ORIGINAL = sample_data.csv_bytes(40, bad_every=BAD_EVERY)
CHANGED = one_byte_changed(ORIGINAL)


def test_an_older_fetch_storing_after_a_newer_skipped_one_does_not_roll_it_back(lanes):
    lanes.load("run-0", lanes.ingest("run-0", ORIGINAL))
    name = lanes.name("1")
    older = lanes.ingest("run-a", CHANGED)  # A read record 1 changed, then the source went back
    newer = lanes.ingest("run-b", ORIGINAL)
    assert newer.unchanged and not older.unchanged

    stored_b, upserted_b = lanes.load("run-b", newer)
    stored_a, upserted_a = lanes.load("run-a", older)

    assert stored_b.unchanged and upserted_b.written == 0
    # the skipped newer fetch wins: the older one's records are superseded, as if B had stored them again
    assert stored_a.superseded == stored_a.stored + stored_a.superseded and stored_a.written == 0
    assert upserted_a.written == 0 and lanes.name("1") == name


def test_a_newer_skipped_fetch_storing_after_an_older_change_reads_its_file(lanes):
    lanes.load("run-0", lanes.ingest("run-0", ORIGINAL))
    name = lanes.name("1")
    older = lanes.ingest("run-a", CHANGED)
    newer = lanes.ingest("run-b", ORIGINAL)  # ingest saw the source as run-0 left it
    assert newer.unchanged

    lanes.load("run-a", older)
    assert lanes.name("1") != name
    stored_b, upserted_b = lanes.load("run-b", newer)

    # run-a changed the source meanwhile: store_raw stages B's file and stores it as any newer fetch
    assert not stored_b.unchanged and stored_b.raw_updated == 1 and upserted_b.updated == 1
    assert lanes.name("1") == name
    # and B's file is now the one recorded: a third read of it is skipped
    stored_c, upserted_c = lanes.load("run-c", lanes.ingest("run-c", ORIGINAL))
    assert stored_c.unchanged and upserted_c.written == 0 and upserted_c.live_after == upserted_b.live_after


def test_a_replay_forgets_the_file(lanes):
    lanes.load("run-0", lanes.ingest("run-0", ORIGINAL))
    assert lanes.ingest("run-1", ORIGINAL).unchanged

    lanes.replay("run-2")

    assert not lanes.ingest("run-3", ORIGINAL).unchanged


def test_an_upgrade_of_sluice_reads_the_unchanged_file_again(lanes, monkeypatch, tmp_path):
    """A release whose reader or rules parse, stage or quarantine differently must not be hidden behind a file that
    did not change: the code's digest is part of the file's."""
    first = lanes.ingest("run-0", ORIGINAL)
    lanes.load("run-0", first)
    assert lanes.ingest("run-1", ORIGINAL).unchanged

    upgraded = tmp_path / "sql"
    shutil.copytree(queries.SQL_DIR, upgraded)
    with open(upgraded / "functions.sql", "a", encoding="utf-8") as sql:
        sql.write("\n-- a later release\n")
    monkeypatch.setattr(queries, "SQL_DIR", upgraded)
    pipeline._code_version.cache_clear()
    try:
        again = lanes.ingest("run-2", ORIGINAL)
    finally:
        pipeline._code_version.cache_clear()
    assert not again.unchanged and (again.records, again.problems) == (first.records, first.problems)
