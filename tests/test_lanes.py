"""One lane of mapped tasks per source, through Airflow (dag.test and the UI's clear, real PostgreSQL and HTTP on
127.0.0.1): a source failing in any step leaves the others loaded; clearing tasks of a finished run redoes
them and records the truth; record_run records only final states; a new kind of source is ingested."""

import contextlib
import json
import sys

import psycopg
import pytest

from sluice import sources
from sluice_devtools import sample_data
from sluice_devtools.source_server import Fault, SourceServer
from tests.pipeline_harness import Pipeline, point_airflow_at

CATALOG = [
    {"name": "posts", "kind": "api", "endpoint": "posts"},
    {"name": "items", "kind": "csv", "endpoint": "items.csv"},
    {"name": "stock", "kind": "csv", "endpoint": "stock.csv"},
]
POSTS, ITEMS, STOCK = 30, 40, 20
CONF = {"sources": CATALOG}


@pytest.fixture
def pipeline(monkeypatch, database_url, tmp_path):
    server = SourceServer().start()
    server.serve_json("posts", sample_data.posts(POSTS), page_size=10)
    server.serve_bytes("items.csv", sample_data.csv_bytes(ITEMS, bad_every=0))
    server.serve_bytes("stock.csv", sample_data.csv_bytes(STOCK, bad_every=0))
    point_airflow_at(monkeypatch, database_url, server, tmp_path / "staging")
    monkeypatch.setenv("SLUICE_LOCK_TIMEOUT", "1")
    yield Pipeline(database_url, server)
    server.stop()


@contextlib.contextmanager
def holding_the_write_lock_of(url: str, source: str):
    """Another run's transaction holding the source's write lock (sql/pipeline.sql lock_source)."""
    with psycopg.connect(url) as conn:
        conn.execute("select pg_advisory_xact_lock(hashtextextended('sluice:source:' || %s, 0))", (source,))
        yield
        conn.rollback()


def live_rows(pipeline) -> dict:
    return dict(pipeline.rows("select source, count(*) from normalized_data group by source"))


def checkpoints(pipeline) -> dict:
    return {source: (last_id, total, error) for source, last_id, total, error in pipeline.rows(
        "select source, last_processed_id, total_processed, last_error from etl_checkpoint")}


def test_a_source_failing_after_ingest_leaves_the_others_loaded_and_a_clear_of_its_lane_loads_it(pipeline):
    with holding_the_write_lock_of(pipeline.database_url, "items"):
        state, run = pipeline.run(CONF)

    assert state == "failed" and run["status"] == "failed"
    # only the locked source failed, in its own step, named by source
    assert run["error_message"].startswith("store_raw[items]: LockTimeout: items: another run holds the write lock")
    assert "posts" not in run["error_message"] and "stock" not in run["error_message"]
    assert live_rows(pipeline) == {"posts": POSTS, "stock": STOCK}
    assert run["source_counts"]["stock"]["inserted"] == STOCK and not run["source_counts"]["items"]["loaded"]
    before = checkpoints(pipeline)
    assert before["items"][2] is not None and before["posts"][2] is None and before["stock"][2] is None

    # the operator clears the failed source's store_raw (and what follows it): only that lane runs again
    state, again = pipeline.clear(run["run_id"], [("store_raw", 1)])

    assert {task for task, index in pipeline.last_cleared} == {"store_raw", "normalize", "upsert", "checkpoint",
                                                               "record_run"}
    assert {index for task, index in pipeline.last_cleared if task != "record_run"} == {1}
    assert state == "success" and again["status"] == "success" and again["error_message"] is None
    assert live_rows(pipeline) == {"posts": POSTS, "items": ITEMS, "stock": STOCK}
    # the other sources are neither redone nor counted again
    assert again["source_counts"]["stock"] == run["source_counts"]["stock"]
    assert again["source_counts"]["items"]["inserted"] == ITEMS
    after = checkpoints(pipeline)
    assert after["posts"] == before["posts"] and after["stock"] == before["stock"]
    assert after["items"][:2] == (str(ITEMS), ITEMS)


def test_a_refused_delete_fails_only_its_source_at_once_without_retries(pipeline, monkeypatch):
    monkeypatch.setenv("SLUICE_MAX_DELETE_FRACTION", "0.1")
    pipeline.run(CONF)
    pipeline.sources.serve_bytes("stock.csv", sample_data.csv_bytes(5, bad_every=0))

    state, run = pipeline.run(CONF)

    assert state == "failed" and run["error_message"].startswith(
        "upsert[stock]: DeleteRefused: stock: the read would delete 15 of 20 live rows")
    assert live_rows(pipeline) == {"posts": POSTS, "items": ITEMS, "stock": STOCK}
    # a refusal is not retried: no retry can change the read
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        upsert = session.query(TaskInstance).filter_by(run_id=run["run_id"], task_id="upsert", map_index=2).one()
        assert (str(upsert.state), upsert.try_number) == ("failed", 1)


def test_clearing_one_source_s_ingest_of_a_finished_run_refetches_it_and_recounts_only_it(pipeline):
    _, run = pipeline.run(CONF)
    before = checkpoints(pipeline)
    pipeline.sources.serve_bytes("items.csv", sample_data.csv_bytes(ITEMS + 5, bad_every=0))

    state, again = pipeline.clear(run["run_id"], [("ingest", 1)])

    assert state == "success" and again["status"] == "success" and again["id"] == run["id"]
    assert {index for task, index in pipeline.last_cleared if task != "record_run"} == {1}
    assert again["source_counts"]["items"]["fetched"] == ITEMS + 5
    assert again["source_counts"]["items"]["inserted"] == 5
    assert again["source_counts"]["posts"] == run["source_counts"]["posts"]
    assert again["source_counts"]["stock"] == run["source_counts"]["stock"]
    after = checkpoints(pipeline)
    # the run processed the source once: its second fetch replaces its first in the total
    assert after["items"][:2] == (str(ITEMS + 5), ITEMS + 5)
    assert after["posts"] == before["posts"] and after["stock"] == before["stock"]
    assert all(error is None for _, _, error in after.values())
    assert live_rows(pipeline) == {"posts": POSTS, "items": ITEMS + 5, "stock": STOCK}


@pytest.mark.parametrize("cleared", [
    pytest.param(["checkpoint"], id="checkpoint"),
    # the staged files of a finished run are gone: a redone store_raw returns what it committed
    pytest.param(["store_raw"], id="store_raw-and-after"),
    pytest.param(["record_run"], id="record_run"),
    pytest.param(["normalize"], id="normalize-and-after"),
    pytest.param(["init_schema"], id="the-whole-run"),
])
def test_clearing_tasks_of_a_finished_run_redoes_them_and_records_the_same_truth(pipeline, cleared):
    _, run = pipeline.run(CONF)
    before, rows = checkpoints(pipeline), pipeline.checksum()

    state, again = pipeline.clear(run["run_id"], cleared)

    assert state == "success" and again["status"] == "success" and again["error_message"] is None
    assert again["id"] == run["id"]
    if cleared != ["init_schema"]:
        # the redone steps return what the run committed: the same counts
        assert again["source_counts"] == run["source_counts"]
    else:
        # every source fetched again and found unchanged: the truth of the run as it was redone
        for name, counts in again["source_counts"].items():
            first = run["source_counts"][name]
            assert (counts["fetched"], counts["inserted"], counts["unchanged"]) == (first["fetched"], 0,
                                                                                  first["inserted"])
            assert counts["live_before"] == counts["live_after"] == first["live_after"]
    assert checkpoints(pipeline) == before and pipeline.checksum() == rows


def test_record_run_records_the_final_state_of_a_task_that_failed_once_and_succeeded_on_retry(pipeline):
    # both HTTP attempts of ingest's first try fail; its retry reads the file
    pipeline.sources.routes["stock.csv"].faults = [Fault(status=503), Fault(status=503)]

    state, run = pipeline.run(CONF)

    assert state == "success" and run["status"] == "success" and run["error_message"] is None
    assert run["source_counts"]["stock"]["inserted"] == STOCK
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        instances = session.query(TaskInstance).filter_by(run_id=run["run_id"]).all()
        ingest = next(ti for ti in instances if ti.task_id == "ingest" and ti.map_index == 2)
        record = next(ti for ti in instances if ti.task_id == "record_run")
        assert ingest.try_number == 2 and str(ingest.state) == "success"
        assert record.start_date >= max(ti.end_date for ti in instances if ti.task_id != "record_run")
    assert checkpoints(pipeline)["stock"][2] is None


def test_a_typo_in_the_catalog_is_recorded_once_every_task_is_final_after_one_try(pipeline):
    # the run's record used to be written while store_raw (all_done after the failed catalog) was still retrying;
    # a typo the trigger form's schema cannot see (a mapped column's name) fails init_schema
    typo = [{**CATALOG[0], "mapping": {"source_id": "id", "nmae": "title"}}]

    state, run = pipeline.run({"sources": typo})

    assert state == "failed" and run["status"] == "failed"
    assert run["error_message"].startswith("init_schema: InvalidSource: source 'posts': mapping has unknown column")
    assert "running" not in run["error_message"] and "\n" not in run["error_message"]
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        instances = session.query(TaskInstance).filter_by(run_id=run["run_id"]).all()
        record = next(ti for ti in instances if ti.task_id == "record_run")
        others = [ti for ti in instances if ti.task_id != "record_run"]
        assert {ti.task_id: str(ti.state) for ti in others}["init_schema"] == "failed"
        assert all(ti.end_date is None or ti.end_date <= record.start_date for ti in others)
        # a configuration error is not retried: no retry can fix it
        assert next(ti for ti in others if ti.task_id == "init_schema").try_number == 1


# ---- a third kind of source, added as sources.py describes it, is ingested by the DAG
def test_a_new_kind_of_source_is_ingested_by_the_dag(pipeline, monkeypatch):
    # tests.test_pipeline's stage() reads newline-delimited JSON, a kind of its own
    monkeypatch.setitem(sources.KINDS, "ndjson", "tests.test_pipeline")
    # the trigger form's schema lists the kinds the DAG file was parsed with
    monkeypatch.setattr(sources, "CATALOG_SCHEMA", sources._catalog_schema())
    monkeypatch.delitem(sys.modules, "etl_pipeline", raising=False)
    lines = [json.dumps({"key": f"k{n}", "label": f"item {n}", "amount": n}) for n in range(1, 8)]
    pipeline.sources.serve_bytes("orders.ndjson", "\n".join(lines).encode(), content_type="application/x-ndjson")
    monkeypatch.setenv("AIRFLOW_CONN_ETL_NDJSON", pipeline.sources.url)
    with psycopg.connect(pipeline.database_url) as conn:
        conn.execute("create table raw_ndjson_data (like raw_csv_data including all)")
    orders = {"name": "orders", "kind": "ndjson", "conn_id": "etl_ndjson", "endpoint": "orders.ndjson",
              "mapping": {"source_id": "key", "name": "label", "value": "amount"}}

    state, run = pipeline.run({"sources": [CATALOG[0], orders]})
    sys.modules.pop("etl_pipeline", None)

    assert state == "success", run["error_message"]
    assert run["source_counts"]["orders"]["inserted"] == 7
    assert live_rows(pipeline) == {"posts": POSTS, "orders": 7}
