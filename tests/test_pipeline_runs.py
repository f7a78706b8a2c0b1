"""Whole runs of etl_pipeline (dag.test) against a real Postgres and real HTTP sources on 127.0.0.1."""

import contextlib
import csv
import importlib.util
import io
import json
import re
import threading
from pathlib import Path

import psycopg
import pytest

from sluice import warehouse
from sluice_devtools import sample_data
from sluice_devtools.source_server import Fault
from sluice.sources import SEEDS
from tests import crash_support as crash
from tests.pipeline_harness import Pipeline, point_airflow_at, start_sources

API_RECORDS, CSV_ROWS, BAD_EVERY = 100, 300, 50  # 6 bad CSV rows of 4 kinds
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def pipeline(monkeypatch, database_url, tmp_path):
    sources = start_sources(API_RECORDS, CSV_ROWS, BAD_EVERY)
    point_airflow_at(monkeypatch, database_url, sources, tmp_path / "staging")
    yield Pipeline(database_url, sources)
    sources.stop()


def test_first_run_loads_every_good_record_and_quarantines_the_bad(pipeline):
    state, run = pipeline.run()

    assert state == "success"
    assert run["status"] == "success" and run["error_message"] is None
    counts = dict(pipeline.rows("select source, count(*) from normalized_data group by 1"))
    assert counts == {"api": API_RECORDS, "csv": CSV_ROWS - 6}
    assert pipeline.value("select count(*) from raw_api_data") == API_RECORDS
    # rows without an id or with too few fields never reach raw; the other bad ones keep their raw payload
    assert pipeline.value("select count(*) from raw_csv_data") == CSV_ROWS - 3
    reasons = sorted(r for (r,) in pipeline.rows("select reason from rejected_records where source = 'csv'"))
    assert len(reasons) == 6
    # sample_data cycles through its bad-row kinds: rows 50..300 give these
    assert sum("is not a number" in r for r in reasons) == 1
    assert sum(r == "name: missing" for r in reasons) == 2
    assert sum(r.startswith("line ") and r.endswith("blank id") for r in reasons) == 2
    assert sum("expected 4 fields, got 2" in r for r in reasons) == 1
    assert (run["fetched"], run["inserted"], run["updated"], run["rejected"]) == (
        API_RECORDS + CSV_ROWS, API_RECORDS + CSV_ROWS - 6, 0, 6)
    assert run["source_counts"]["csv"]["fetched"] == CSV_ROWS
    assert run["data_interval_start"] < run["data_interval_end"]
    checkpoints = dict(pipeline.rows("select source, last_processed_id from etl_checkpoint"))
    # the CSV's last row (300) has a blank id, so the highest committed id is 299
    assert checkpoints == {"api": str(API_RECORDS), "csv": str(CSV_ROWS - 1)}


def test_mapped_values_are_converted(pipeline):
    pipeline.run()
    post = sample_data.posts(API_RECORDS)[41]
    name, value, description = pipeline.rows(
        "select name, value, description from normalized_data where source = 'api' and source_id = '42'")[0]
    assert (name, value, description) == (post["title"], float(post["userId"]), post["body"])


def test_second_run_writes_nothing_and_leaves_the_table_byte_identical(pipeline):
    pipeline.run()
    before = pipeline.checksum()
    raw_before = pipeline.value("select md5(string_agg(t::text, '|' order by id)) from raw_csv_data t")

    state, run = pipeline.run()

    assert state == "success"
    assert (run["inserted"], run["updated"]) == (0, 0)
    assert run["unchanged"] == API_RECORDS + CSV_ROWS - 6
    assert pipeline.checksum() == before
    assert pipeline.value("select md5(string_agg(t::text, '|' order by id)) from raw_csv_data t") == raw_before


def test_a_changed_source_record_updates_exactly_that_row(pipeline):
    _, first = pipeline.run()
    created_before = pipeline.value(
        "select created_at from normalized_data where source = 'api' and source_id = '7'")
    posts = sample_data.posts(API_RECORDS)
    posts[6]["title"] = "a new title"
    pipeline.sources.serve_json("posts", posts, page_size=40)

    _, second = pipeline.run()

    assert (second["inserted"], second["updated"]) == (0, 1)
    row = pipeline.rows("select name, created_at, updated_at, first_seen_run_id, last_changed_run_id"
                        " from normalized_data where source = 'api' and source_id = '7'")[0]
    assert row[0] == "a new title"
    assert row[1] == created_before and row[2] > created_before
    assert (row[3], row[4]) == (first["run_id"], second["run_id"])
    assert pipeline.value("select count(*) from normalized_data where last_changed_run_id = %s",
                          (second["run_id"],)) == 1
    assert pipeline.value("select data->>'title' from raw_api_data where source_id = '7'") == "a new title"


def test_api_answering_500_still_loads_the_csv_and_records_the_failure(pipeline):
    pipeline.run()
    checkpoint_before = pipeline.rows("select last_processed_id, total_processed, updated_at"
                                      " from etl_checkpoint where source = 'api'")
    pipeline.sources.add_faults("posts", *[Fault(status=500, body=b"boom")] * 10)
    changed_csv = sample_data.csv_bytes(CSV_ROWS + 10, bad_every=BAD_EVERY)
    pipeline.sources.serve_bytes("items.csv", changed_csv)

    state, run = pipeline.run()

    assert state == "failed"
    assert run["status"] == "failed"
    assert "ingest[api]" in run["error_message"] and "500" in run["error_message"]
    assert run["source_counts"]["csv"]["inserted"] == 10
    assert "api" not in run["source_counts"]
    assert pipeline.value("select count(*) from normalized_data where source = 'csv'") == CSV_ROWS + 10 - 6
    assert pipeline.rows("select last_processed_id, total_processed, updated_at"
                         " from etl_checkpoint where source = 'api'") == checkpoint_before


def test_csv_header_drift_fails_the_csv_part_naming_the_missing_column(pipeline):
    pipeline.sources.serve_bytes("items.csv", b"id,title,value,description\r\n1,a,2,d\r\n")

    state, run = pipeline.run()

    assert state == "failed"
    assert "ingest[csv]" in run["error_message"] and "name" in run["error_message"]
    assert "lacks column(s)" in run["error_message"]
    assert pipeline.value("select count(*) from normalized_data where source = 'csv'") == 0
    assert pipeline.value("select count(*) from normalized_data where source = 'api'") == API_RECORDS


def test_full_refresh_renormalizes_everything_without_rewriting_equal_rows(pipeline):
    pipeline.run()
    before = pipeline.checksum()

    _, run = pipeline.run({"full_refresh": True})

    assert run["status"] == "success"
    assert (run["inserted"], run["updated"]) == (0, 0)
    assert pipeline.checksum() == before


def test_a_changed_mapping_renormalizes_the_records(pipeline):
    pipeline.run()
    mapping = {"source_id": "id", "name": "body", "value": "userId", "description": "title"}

    _, run = pipeline.run({"api_mapping": mapping})

    assert run["source_counts"]["api"]["updated"] == API_RECORDS
    post = sample_data.posts(API_RECORDS)[0]
    assert pipeline.value("select name from normalized_data where source = 'api' and source_id = '1'") == post["body"]


def test_incremental_api_reads_ask_only_for_records_from_the_checkpoint(pipeline):
    conf = {"api_since_param": "id_gte"}
    pipeline.run(conf)
    pipeline.sources.serve_json("posts", sample_data.posts(API_RECORDS + 5), page_size=40)

    _, run = pipeline.run(conf)

    # the checkpoint (id 100) is re-read: at-least-once, and the unchanged record costs nothing
    assert run["source_counts"]["api"]["fetched"] == 6
    assert run["source_counts"]["api"]["inserted"] == 5
    assert pipeline.value("select last_processed_id from etl_checkpoint where source = 'api'") == "105"


def test_bad_mapping_param_fails_with_a_clear_error(pipeline):
    state, run = pipeline.run({"csv_mapping": {"name": "name"}})

    assert state == "failed"
    assert "csv_mapping must map source_id" in run["error_message"]


def test_manual_run_without_logical_date_is_recorded_with_null_interval(pipeline):
    state, run = pipeline.run(logical_date=None)

    assert state == "success"
    assert run["run_type"] == "manual"
    assert run["data_interval_start"] is None and run["data_interval_end"] is None


def test_xcom_carries_references_and_counts_not_rows(pipeline):
    state, run = pipeline.run()
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        values = [x.value for x in session.query(XComModel).filter(XComModel.run_id == run["run_id"])]
    assert values
    assert max(len(json.dumps(v)) for v in values) < 2000


BAD_BODIES = {
    "truncated": Fault(body=b'[{"id": 1, "title": "t", "userId": 1}]' * 50, truncate_to=100,
                       headers={"Content-Type": "application/json"}),
    "invalid JSON": Fault(body=b'[{"id": 1,', headers={"Content-Type": "application/json"}),
    "HTML with 200": Fault(body=b"<html><body>maintenance</body></html>", headers={"Content-Type": "text/html"}),
    "empty body": Fault(body=b"", headers={"Content-Type": "application/json"}),
}


# the checkpoint of a source: what a failed read must leave as it was (its last_error_* columns say it failed)
API_CHECKPOINT = ("select last_processed_id, last_processed_at, total_processed, row_count, last_run_id, raw_run_id,"
                  " raw_fetch_seq, updated_at, last_success_run_id, last_success_at from etl_checkpoint"
                  " where source = 'api'")


@pytest.mark.parametrize("fault", BAD_BODIES, ids=list(BAD_BODIES))
def test_a_bad_api_body_fails_that_source_only_and_loads_nothing_of_it(pipeline, fault):
    pipeline.run()
    api_before = pipeline.rows(API_CHECKPOINT)
    raw_before = pipeline.value("select md5(string_agg(t::text, '|' order by id)) from raw_api_data t")
    pipeline.sources.add_faults("posts", *[BAD_BODIES[fault]] * 10)
    pipeline.sources.serve_bytes("items.csv", sample_data.csv_bytes(CSV_ROWS + 5, bad_every=BAD_EVERY))

    state, run = pipeline.run()

    assert state == "failed" and run["status"] == "failed"
    assert "ingest[api]" in run["error_message"] and "api:" in run["error_message"]
    assert run["source_counts"]["csv"]["inserted"] == 5
    assert pipeline.rows(API_CHECKPOINT) == api_before
    error, error_run, success_run = pipeline.rows(
        "select last_error, last_error_run_id, last_success_run_id from etl_checkpoint where source = 'api'")[0]
    assert "api:" in error and error_run == run["run_id"] and success_run not in (None, run["run_id"])
    assert pipeline.value("select md5(string_agg(t::text, '|' order by id)) from raw_api_data t") == raw_before


def test_a_csv_with_only_a_header_loads_nothing_and_succeeds(pipeline):
    pipeline.sources.serve_bytes("items.csv", b"id,name,value,description\r\n")

    state, run = pipeline.run()

    assert state == "success"
    assert run["source_counts"]["csv"] == {"fetched": 0, "inserted": 0, "updated": 0, "unchanged": 0,
                                           "rejected": 0, "superseded": 0, "deleted": 0, "undeleted": 0,
                                           "deletes_skipped": None, "live_before": 0, "live_after": 0, "loaded": True}
    assert run["source_counts"]["api"]["inserted"] == API_RECORDS


def newer_sources(pipeline) -> None:
    """The same records as a later fetch would find them: every good row's name has changed."""
    posts = [{**post, "title": f"newer {post['title']}"} for post in sample_data.posts(API_RECORDS)]
    pipeline.sources.serve_json("posts", posts, page_size=40)
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(("id", "name", "value", "description"))
    for row in sample_data.csv_rows(CSV_ROWS, bad_every=BAD_EVERY):
        writer.writerow([row[0], f"newer {row[1]}", *row[2:]] if len(row) == 4 and row[1] else row)
    pipeline.sources.serve_bytes("items.csv", out.getvalue().encode("utf-8"))


def holding_both_source_locks(database_url: str) -> contextlib.ExitStack:
    """Another run holding the write locks of both sources, one connection each."""
    stack = contextlib.ExitStack()
    for source in SEEDS:
        conn = stack.enter_context(psycopg.connect(database_url))
        stack.enter_context(warehouse.source_transaction(conn, source, lock_timeout_seconds=5))
    return stack


CHECKPOINTS = "select source, last_processed_id, total_processed, row_count from etl_checkpoint order by source"


def newer_values(pipeline) -> dict:
    return dict(pipeline.rows("select source, count(*) from normalized_data where name like 'newer %' group by 1"))


def raw_checksums(pipeline) -> list:
    return [pipeline.value(f"select md5(string_agg(t::text, '|' order by id)) from {table} t")
            for table in ("raw_api_data", "raw_csv_data")]


@pytest.mark.slow
def test_a_run_that_stores_after_a_later_fetch_was_stored_rolls_nothing_back(pipeline, monkeypatch):
    # run A fetches, then cannot store (another run holds the locks) and fails; run B fetches newer records and
    # loads them; then the operator clears A's store_raw and the tasks after it, to load what A fetched
    monkeypatch.setenv("SLUICE_LOCK_TIMEOUT", "1")
    with holding_both_source_locks(pipeline.database_url):
        state, older = pipeline.run()
    assert state == "failed" and "store_raw[api]: LockTimeout" in older["error_message"]
    newer_sources(pipeline)
    state, newer = pipeline.run()
    assert state == "success" and newer_values(pipeline) == {"api": API_RECORDS, "csv": CSV_ROWS - 6}
    table, raw = pipeline.checksum(), raw_checksums(pipeline)
    checkpoints = pipeline.rows(CHECKPOINTS)

    state, older = pipeline.rerun_from_store_raw(older["run_id"])

    assert state == "success" and older["status"] == "success"
    # nothing of A's older payloads replaced B's, in raw or in normalized_data
    assert (pipeline.checksum(), raw_checksums(pipeline)) == (table, raw)
    assert pipeline.rows(CHECKPOINTS) == checkpoints
    # every record of A that B holds is reported superseded; A's rows without an id are still quarantined
    assert {source: (counts["superseded"], counts["inserted"], counts["updated"], counts["rejected"])
            for source, counts in older["source_counts"].items()} == {
        "api": (API_RECORDS, 0, 0, 0), "csv": (CSV_ROWS - 3, 0, 0, 3)}
    assert older["superseded"] == API_RECORDS + CSV_ROWS - 3


@pytest.mark.slow
def test_a_run_fetching_later_than_a_completed_one_replaces_its_values(pipeline):
    pipeline.run()
    newer_sources(pipeline)

    state, newer = pipeline.run()

    assert state == "success"
    assert newer_values(pipeline) == {"api": API_RECORDS, "csv": CSV_ROWS - 6}
    assert (newer["updated"], newer["superseded"]) == (API_RECORDS + CSV_ROWS - 6, 0)


def hold_the_csv_lock_through_one_attempt(database_url: str, once: str | None) -> crash.Task:
    """Another run takes the CSV write lock (at once, or when the query `once` is true) and lets go when a writer
    that queued behind it gave up (SLUICE_LOCK_TIMEOUT): that one attempt of a task fails, its retry does not."""
    holding = threading.Event()

    def hold():
        with psycopg.connect(database_url, autocommit=True) as monitor:
            if once:
                crash.wait_for(lambda: monitor.execute(once).fetchone()[0], what=once, timeout=120)
            with psycopg.connect(database_url) as conn, warehouse.source_transaction(conn, "csv", 5):
                holding.set()
                crash.wait_for(lambda: crash.advisory_waiters(monitor) == 1, what="a task to wait for the lock",
                               timeout=120)
                crash.wait_for(lambda: crash.advisory_waiters(monitor) == 0, what="the task to give up", timeout=30)

    other_run = crash.Task(hold)
    other_run.start()
    assert once or holding.wait(10)
    return other_run


FAIL_ONCE_AFTER = {
    "store_raw": None,  # from the start: store_raw stores the API, then waits for the CSV
    "upsert": "select count(*) > 0 from normalized_stage where source = 'csv'",  # normalize is done
}


@pytest.mark.slow
@pytest.mark.parametrize("step", FAIL_ONCE_AFTER)
def test_a_retried_step_reports_the_source_it_had_committed_as_it_was_written(pipeline, monkeypatch, step):
    monkeypatch.setenv("SLUICE_LOCK_TIMEOUT", "1")
    other_run = hold_the_csv_lock_through_one_attempt(pipeline.database_url, FAIL_ONCE_AFTER[step])

    state, run = pipeline.run()
    other_run.join(30)

    assert other_run.error is None, f"{step} never waited for the lock and gave up: {other_run.error}"
    assert state == "success" and run["error_message"] is None
    # the first attempt committed the API and failed on the CSV; the retry reports the API's rows as inserted
    assert {source: (counts["inserted"], counts["unchanged"], counts["rejected"])
            for source, counts in run["source_counts"].items()} == {
        "api": (API_RECORDS, 0, 0), "csv": (CSV_ROWS - 6, 0, 6)}
    assert dict(pipeline.rows("select source, count(*) from normalized_data group by 1")) == {
        "api": API_RECORDS, "csv": CSV_ROWS - 6}
