"""OpenLineage events of a whole run of etl_pipeline, written by the provider's file transport: loopback HTTP
sources, real PostgreSQL; and the naming of a source's dataset, which never carries a credential."""

import json
import logging
import os

import pytest

from sluice import lineage
from sluice_devtools import sample_data
from sluice_devtools.source_server import Fault
from tests.pipeline_harness import Pipeline, point_airflow_at, start_sources

SECRETS = ("s3cret", "abc123", "hunter2")
DECLARED = {"label": {"type": "text", "from": "description"}}
CATALOG = [{"name": "api", "kind": "api", "conn_id": "etl_api", "endpoint": "posts"},
           {"name": "items", "kind": "csv", "conn_id": "etl_csv", "endpoint": "items.csv", "fields": DECLARED}]


@pytest.mark.parametrize("url, namespace, name", [
    ("https://user:s3cret@files.example.com/exports/a.csv?token=abc123#x", "https://files.example.com:443",
     "/exports/a.csv"),
    ("http://127.0.0.1:8765/posts?password=hunter2", "http://127.0.0.1:8765", "/posts"),
    ("http://[::1]:8000/", "http://[::1]:8000", "/"),
    ("s3://key:s3cret@bucket/exports/a.csv?versionId=abc123", "s3://bucket", "exports/a.csv"),
    ("file:///srv/exports/a.csv", "file", "/srv/exports/a.csv"),
])
def test_a_source_dataset_is_scheme_host_port_and_path_without_userinfo_or_query(url, namespace, name):
    assert lineage.of_url(url) == lineage.Dataset(namespace, name)


@pytest.fixture
def pipeline(monkeypatch, database_url, tmp_path):
    sources = start_sources(api_records=10, csv_rows=20, bad_every=0)
    point_airflow_at(monkeypatch, database_url, sources, tmp_path / "staging")
    # the CSV's connection carries a login and password in its URL: never in a dataset's namespace
    host = sources.url.removeprefix("http://")
    monkeypatch.setenv("AIRFLOW_CONN_ETL_CSV", json.dumps({"conn_type": "http", "host": f"http://user:s3cret@{host}"}))
    # the API's first page links to a next page (404) whose URL carries a login, a token and a password
    first_page = Fault(body=json.dumps(sample_data.posts(10)).encode(), headers={
        "Content-Type": "application/json",
        "Link": f'<http://user:s3cret@{host}/gone?token=abc123&password=hunter2>; rel="next"'})
    sources.add_faults("posts", first_page, first_page)  # the task's retry reads it again
    yield Pipeline(database_url, sources)
    sources.stop()


@pytest.fixture
def events_file(monkeypatch, tmp_path):
    """OpenLineage on, to the provider's file transport (one event a line). The provider's plugin gives Airflow
    its listener only if a transport is set when the plugin is imported, and Airflow's two listener managers
    (DAG runs: airflow.listeners; tasks: the Task SDK's) take the plugins' listeners once a process: in a process
    that ran Airflow before, the listener is added to each here, and removed after the test."""
    from airflow.listeners.listener import get_listener_manager as dag_run_listeners
    from airflow.providers.openlineage.plugins.listener import OpenLineageListener
    from airflow.sdk.listener import get_listener_manager as task_listeners

    path = tmp_path / "lineage.ndjson"
    monkeypatch.setenv("AIRFLOW__OPENLINEAGE__TRANSPORT", json.dumps(
        {"type": "file", "log_file_path": str(path), "append": True}))
    listener, added = OpenLineageListener(), []
    for manager in (dag_run_listeners(), task_listeners()):
        if not any(isinstance(plugin, OpenLineageListener) for plugin in manager.pm.get_plugins()):
            manager.add_listener(listener)
            added.append(manager)
    yield path
    for manager in added:
        manager.pm.unregister(listener)


def task_events(path) -> dict:
    """{(task id, source, event type): the event}, each sent once (a task's job name is <dag>.<task>)."""
    found = {}
    for line in path.read_text().splitlines():
        event = json.loads(line)
        task = event["job"]["name"].removeprefix("etl_pipeline.")
        index = event["run"]["facets"].get("airflow", {}).get("taskInstance", {}).get("map_index")
        key = (task, CATALOG[index]["name"] if index is not None and index >= 0 else None, event["eventType"])
        assert key not in found, f"{key} sent twice"
        found[key] = event
    return found


def by_name(datasets: list) -> dict:
    return {(d["namespace"], d["name"]): d for d in datasets}


@pytest.mark.slow
def test_a_run_emits_each_lanes_datasets_row_counts_schemas_and_a_masked_fail_for_the_failing_source(
        pipeline, events_file):
    state, run = pipeline.run({"sources": CATALOG})

    assert state == "failed" and run["error_message"].startswith("ingest[api]: ")
    text = events_file.read_text()
    leaked = [secret for secret in SECRETS if secret in text]
    assert not leaked, f"{leaked} in the events"
    events = task_events(events_file)
    server = pipeline.sources.url  # http://127.0.0.1:<port>
    database = pipeline.value("select current_database()")
    warehouse = next(iter(by_name(events[("upsert", "items", "COMPLETE")]["outputs"])))[0]
    assert warehouse.startswith("postgres://") and warehouse.rsplit(":", 1)[1].isdigit()
    raw, normalized = (warehouse, f"{database}.public.raw_csv_data"), (warehouse, f"{database}.public.normalized_data")
    source = (server, "/items.csv")

    # the good lane: each step STARTs and COMPLETEs; the source read, the raw table and normalized_data written
    for step in ("ingest", "store_raw", "normalize", "upsert", "checkpoint"):
        assert {(step, "items", "START"), (step, "items", "COMPLETE")} <= set(events), step
    assert list(by_name(events[("ingest", "items", "COMPLETE")]["inputs"])) == [source]
    stored = events[("store_raw", "items", "COMPLETE")]
    assert list(by_name(stored["inputs"])) == [source] and list(by_name(stored["outputs"])) == [raw]
    assert list(by_name(events[("normalize", "items", "COMPLETE")]["inputs"])) == [raw]
    upserted = events[("upsert", "items", "COMPLETE")]
    assert list(by_name(upserted["inputs"])) == [raw] and list(by_name(upserted["outputs"])) == [normalized]

    # row counts: what the run wrote (a fresh database: every row of the source is this run's)
    raw_rows = pipeline.value("select count(*) from raw_csv_data where source = 'items'")
    loaded = run["source_counts"]["items"]
    assert raw_rows == 20 and loaded["inserted"] == 20
    assert stored["outputs"][0]["outputFacets"]["outputStatistics"]["rowCount"] == raw_rows
    assert upserted["outputs"][0]["outputFacets"]["outputStatistics"]["rowCount"] == loaded["inserted"]

    # schema facets: each table's columns; normalized_data's declared fields under attributes
    def columns(dataset):
        return {f["name"]: f for f in dataset["facets"]["schema"]["fields"]}

    def table_columns(table):
        return pipeline.rows("select column_name, data_type from information_schema.columns "
                             "where table_name = %s order by ordinal_position", (table,))

    assert [(f["name"], f["type"]) for f in columns(stored["outputs"][0]).values()] == table_columns("raw_csv_data")
    normalized_columns = columns(upserted["outputs"][0])
    assert [(f["name"], f["type"]) for f in normalized_columns.values()] == table_columns("normalized_data")
    assert [(f["name"], f["type"]) for f in normalized_columns["attributes"]["fields"]] == [("label", "text")]

    # the failing lane: ingest FAILs naming its source's dataset and the masked error; its lane stops there
    assert ("ingest", "api", "START") in events
    failed = events[("ingest", "api", "FAIL")]
    assert list(by_name(failed["inputs"])) == [(server, "/posts")]
    host = server.removeprefix("http://")
    assert f"GET http://{host}/gone answered 404" in failed["run"]["facets"]["errorMessage"]["message"]
    assert not {key for key in events if key[1] == "api" and key[0] != "ingest" and key[2] != "START"}


@pytest.fixture
def lineage_settings(monkeypatch):
    """The provider's settings read afresh (it caches them once a process), with no OpenLineage variable set; read
    afresh again after the test, so a later run in this process sees its own."""
    from airflow.providers.openlineage import conf

    def forget():
        for value in vars(conf).values():
            if hasattr(value, "cache_clear"):
                value.cache_clear()

    for name in [name for name in os.environ if "OPENLINEAGE" in name]:
        monkeypatch.delenv(name)
    forget()
    yield forget
    monkeypatch.undo()
    forget()


def test_lineage_off_asks_a_step_for_nothing_and_a_lineage_error_never_fails_the_step(
        lineage_settings, monkeypatch, caplog):
    from sluice import airflow_edge

    asked = []

    def collect():  # as a step's datasets would fail: a URL with a password in the error's text
        asked.append(True)
        raise RuntimeError("GET http://user:s3cret@files.example.com/a.csv failed")

    airflow_edge.report_lineage(collect)  # off: no transport configured
    assert asked == []
    monkeypatch.setenv("AIRFLOW__OPENLINEAGE__TRANSPORT", json.dumps({"type": "console"}))
    lineage_settings()
    with caplog.at_level(logging.WARNING, logger=airflow_edge.log.name):
        airflow_edge.report_lineage(collect)  # returns: the step it describes goes on
    assert asked == [True]
    assert "not reported (RuntimeError)" in caplog.text and "s3cret" not in caplog.text
