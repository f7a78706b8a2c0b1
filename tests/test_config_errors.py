"""Configuration errors fail at once, without retries, saying the cause, what it stops and how to fix it; what can
heal (a 503) is still retried. Whole runs of etl_pipeline (dag.test, real PostgreSQL, HTTP on 127.0.0.1)."""

import sys
import time

import pytest

from sluice_devtools import sample_data
from sluice_devtools.source_server import Fault, SourceServer
from tests.pipeline_harness import Pipeline, point_airflow_at

CATALOG = [
    {"name": "customers", "kind": "csv", "conn_id": "etl_files", "endpoint": "customers.csv"},
    {"name": "posts", "kind": "api", "endpoint": "posts"},
    {"name": "items", "kind": "csv", "endpoint": "items.csv",
     "mapping": {"source_id": "sku", "name": "name", "value": "value"}},
    {"name": "stock", "kind": "csv", "endpoint": "stock.csv"},
    {"name": "orders", "kind": "csv", "endpoint": "orders.csv"},
]
RETRIES = 2


@pytest.fixture
def pipeline(monkeypatch, database_url, tmp_path):
    server = SourceServer().start()
    server.serve_json("posts", sample_data.posts(5))
    server.serve_bytes("items.csv", sample_data.csv_bytes(5, bad_every=0))
    server.serve_bytes("stock.csv", sample_data.csv_bytes(5, bad_every=0))
    server.serve_bytes("orders.csv", sample_data.csv_bytes(5, bad_every=0))
    point_airflow_at(monkeypatch, database_url, server, tmp_path / "staging")
    monkeypatch.delenv("AIRFLOW_CONN_ETL_FILES", raising=False)
    # retries configured as in production (with a short delay): the DAG file reads them when it is parsed
    monkeypatch.setenv("SLUICE_TASK_RETRIES", str(RETRIES))
    monkeypatch.setenv("SLUICE_RETRY_DELAY", "1")
    monkeypatch.delitem(sys.modules, "etl_pipeline", raising=False)
    yield Pipeline(database_url, server)
    sys.modules.pop("etl_pipeline", None)
    server.stop()


def ingest_instances(run_id: str) -> dict:
    """source -> (state, try_number, seconds its last try took) of each ingest instance of the run."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        found = session.query(TaskInstance).filter_by(run_id=run_id, task_id="ingest").all()
        return {CATALOG[ti.map_index]["name"]: (str(ti.state), ti.try_number,
                                                (ti.end_date - ti.start_date).total_seconds()) for ti in found}


def test_config_errors_fail_their_lane_in_one_try_saying_how_to_fix_them_while_a_503_is_retried(pipeline):
    url = pipeline.sources.url
    # a wrong credential answers 401 however often it is asked
    pipeline.sources.add_faults("posts", *[Fault(401)] * 10)
    # a server that is down for now answers 503: worth asking again
    pipeline.sources.add_faults("stock.csv", *[Fault(503)] * 50)

    started = time.monotonic()
    state, run = pipeline.run({"sources": CATALOG})
    took = time.monotonic() - started

    assert state == "failed" and run["status"] == "failed"
    lines = run["error_message"].splitlines()
    assert (
        "ingest[customers]: MissingConnection: connection etl_files is not defined: source customers cannot be "
        "read. Define it with `airflow connections add etl_files --conn-uri http://files.example.com/https` (for "
        "https://files.example.com) or the environment variable AIRFLOW_CONN_ETL_FILES=http://files.example.com/https"
    ) in lines
    assert (
        f"ingest[posts]: SourceRefused: posts: GET {url}/posts answered 401 Unauthorized: the source cannot be read, "
        "and a retry would get the same answer (not retried). To fix it, check the login, password or headers of "
        "its Airflow connection"
    ) in lines
    assert any(line.startswith(
        f"ingest[items]: HeaderMismatch: items: {url}/items.csv: the header lacks column(s) named in csv_mapping: "
        "sku (header: id,name,value,description): no record of the file can be loaded. Map the source's columns "
        "by the names in its header") for line in lines), lines
    assert any(line.startswith(f"ingest[stock]: SourceError: stock: GET {url}/stock.csv failed after 2 attempts: "
                               "answered 503") for line in lines), lines
    # the served summaries carry each error's class
    assert {summary["source"]: summary["error_class"] for summary in run["errors"]} == {
        "customers": "MissingConnection", "posts": "SourceRefused", "items": "HeaderMismatch", "stock": "SourceError"}
    assert run["source_counts"]["orders"]["inserted"] == 5  # the healthy source loaded

    instances = ingest_instances(run["run_id"])
    for source in ("customers", "posts", "items"):
        state_, tries, seconds = instances[source]
        assert (state_, tries) == ("failed", 1), (source, instances[source])
        assert seconds < 5, (source, instances[source])
    assert instances["stock"][:2] == ("failed", 1 + RETRIES)  # the 503 was asked again on every retry
    assert instances["orders"][:2] == ("success", 1)
    # 401 is asked once: no retry, in the task or by Airflow
    assert [path for path, _ in pipeline.sources.requests].count("/posts") == 1
    print(f"run with config errors and a retried 503 took {took:.1f} s; ingest per source (state, tries, seconds of "
          f"the last try): {instances}")
