"""Whole runs of etl_pipeline with a catalog of named sources: two APIs on one connection, two CSVs with their own
headers, each source its own keys, checkpoint and ingest task instance (real PostgreSQL, HTTP on 127.0.0.1)."""

import csv
import importlib.util
import io
import time
from pathlib import Path

import pytest
import yaml

from sluice import sources
from sluice.errors import InvalidSource
from sluice_devtools import sample_data
from sluice_devtools.source_server import Fault, SourceServer
from tests.pipeline_harness import Pipeline, point_airflow_at

REPO = Path(__file__).resolve().parents[1]
POSTS, COMMENTS, ITEMS, STOCK = 60, 80, 50, 40
COMMENTS_MAPPING = {"source_id": "id", "name": "email", "value": "postId", "description": "body"}
STOCK_MAPPING = {"source_id": "sku", "name": "label", "value": "qty", "description": "notes"}
CATALOG = [
    {"name": "posts", "kind": "api", "endpoint": "posts"},
    {"name": "comments", "kind": "api", "endpoint": "comments", "mapping": COMMENTS_MAPPING},
    {"name": "items", "kind": "csv", "endpoint": "items.csv"},
    {"name": "stock", "kind": "csv", "endpoint": "stock.csv", "mapping": STOCK_MAPPING},
]
ROWS = {"posts": POSTS, "comments": COMMENTS, "items": ITEMS, "stock": STOCK}


def comments(count: int) -> list[dict]:
    # ids 1..count: the same ids as the posts'
    return [{"id": number, "postId": 1 + (number - 1) // 4, "email": f"reader{number}@example.org",
             "body": f"comment {number}"} for number in range(1, count + 1)]


def stock_csv(count: int) -> bytes:
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(("sku", "label", "qty", "notes"))
    writer.writerows((number, f"part {number}", number * 3, "in stock") for number in range(1, count + 1))
    return buffer.getvalue().encode()


@pytest.fixture
def pipeline(monkeypatch, database_url, tmp_path):
    server = SourceServer().start()
    server.serve_json("posts", sample_data.posts(POSTS), page_size=25)
    server.serve_json("comments", comments(COMMENTS), page_size=25)
    server.serve_bytes("items.csv", sample_data.csv_bytes(ITEMS))
    server.serve_bytes("stock.csv", stock_csv(STOCK))
    point_airflow_at(monkeypatch, database_url, server, tmp_path / "staging")
    yield Pipeline(database_url, server)
    server.stop()


def rows_per_source(pipeline) -> dict:
    return dict(pipeline.rows("select source, count(*) from normalized_data group by source"))


def requested(pipeline) -> set[str]:
    return {path.split("?")[0].lstrip("/") for path, _ in pipeline.sources.requests}


def test_four_sources_load_side_by_side_and_a_rerun_writes_nothing(pipeline):
    started = time.monotonic()
    state, run = pipeline.run({"sources": CATALOG})
    first_seconds = time.monotonic() - started

    assert state == "success" and run["status"] == "success", run["error_message"]
    assert rows_per_source(pipeline) == ROWS
    # overlapping ids: each source keeps its own row, raw and normalized
    assert pipeline.rows("select source, name from normalized_data where source_id = '1' order by source") == [
        ("comments", "reader1@example.org"), ("items", pipeline.value(
            "select data->>'name' from raw_csv_data where source = 'items' and source_id = '1'")),
        ("posts", sample_data.posts(1)[0]["title"]), ("stock", "part 1")]
    assert dict(pipeline.rows("select source, count(*) from raw_api_data group by source")) == {
        "posts": POSTS, "comments": COMMENTS}
    assert dict(pipeline.rows("select source, count(*) from raw_csv_data group by source")) == {
        "items": ITEMS, "stock": STOCK}
    assert dict(pipeline.rows("select source, last_processed_id from etl_checkpoint")) == {
        name: str(count) for name, count in ROWS.items()}
    assert {name: counts["inserted"] for name, counts in run["source_counts"].items()} == ROWS
    checksum = pipeline.checksum()

    started = time.monotonic()
    state, rerun = pipeline.run({"sources": CATALOG})
    rerun_seconds = time.monotonic() - started

    assert state == "success"
    assert pipeline.checksum() == checksum
    assert {name: (c["fetched"], c["inserted"], c["updated"], c["unchanged"])
            for name, c in rerun["source_counts"].items()} == {name: (n, 0, 0, n) for name, n in ROWS.items()}
    print(f"\nfour sources, {sum(ROWS.values())} records: first run {first_seconds:.1f} s "
          f"(etl_runs {run['duration_seconds']:.1f} s), rerun {rerun_seconds:.1f} s "
          f"(etl_runs {rerun['duration_seconds']:.1f} s); counts {run['source_counts']}")


def test_each_source_reads_incrementally_from_its_own_checkpoint(pipeline):
    catalog = [{**source, "since_param": "id_gte"} for source in CATALOG[:2]]
    assert pipeline.run({"sources": catalog})[0] == "success"
    pipeline.sources.requests.clear()

    state, run = pipeline.run({"sources": catalog})

    assert state == "success"
    firsts = {path.split("?")[0].lstrip("/"): path for path, _ in reversed(pipeline.sources.requests)}
    assert f"id_gte={POSTS}" in firsts["posts"] and f"id_gte={COMMENTS}" in firsts["comments"]
    assert {name: counts["fetched"] for name, counts in run["source_counts"].items()} == {"posts": 1, "comments": 1}


def test_a_source_removed_from_the_catalog_keeps_its_rows_and_is_not_read(pipeline):
    assert pipeline.run({"sources": CATALOG})[0] == "success"
    pipeline.sources.requests.clear()

    state, run = pipeline.run({"sources": [source for source in CATALOG if source["name"] != "comments"]})

    assert state == "success"
    assert "comments" not in requested(pipeline) and "comments" not in run["source_counts"]
    assert rows_per_source(pipeline) == ROWS


def test_a_kind_without_sources_maps_to_no_ingest_and_the_run_succeeds(pipeline):
    state, run = pipeline.run({"sources": CATALOG[:2]})

    assert state == "success" and run["error_message"] is None
    assert set(run["source_counts"]) == {"posts", "comments"}
    assert requested(pipeline) == {"posts", "comments"}


def test_one_failing_source_does_not_stop_the_other_three(pipeline):
    pipeline.sources.add_faults("comments", *[Fault(status=500, body=b"boom")] * 10)

    state, run = pipeline.run({"sources": CATALOG})

    assert state == "failed" and run["status"] == "failed"
    assert run["error_message"].startswith("ingest[comments]: SourceError") and "500" in run["error_message"]
    assert "posts" not in run["error_message"].split(":")[0]
    assert rows_per_source(pipeline) == {name: n for name, n in ROWS.items() if name != "comments"}
    # the failed source has no checkpoint, and its error is what /sources shows
    checkpoints = {name: (last_id, error) for name, last_id, error in
                   pipeline.rows("select source, last_processed_id, last_error from etl_checkpoint")}
    assert checkpoints["comments"][0] is None and "500" in checkpoints["comments"][1]
    assert all(checkpoints[name][1] is None for name in ("posts", "items", "stock"))


@pytest.mark.parametrize("entry, named", [
    ({"name": "comments", "kind": "api", "endpoint": "comments", "mapping": {"name": "email"}},
     "source 'comments': mapping must map source_id"),
    ({"name": "posts", "kind": "csv", "endpoint": "x.csv"}, "source 'posts': name is given twice"),
])
def test_an_invalid_catalog_fails_init_schema_naming_the_source_and_field_before_anything_is_fetched(
        pipeline, entry, named):
    state, run = pipeline.run({"sources": [*CATALOG[:1], entry]})

    assert state == "failed"
    assert run["error_message"].startswith(f"init_schema: InvalidSource: {named}")
    assert pipeline.sources.requests == []
    assert pipeline.value("select count(*) from normalized_data") == 0


@pytest.mark.parametrize("entries, message", [
    ([CATALOG[0], {**CATALOG[1], "name": "posts"}], "source 'posts': name is given twice (sources[0] and sources[1])"),
    ([{**CATALOG[0], "kind": "ftp"}], "source 'posts': kind 'ftp' is not one of api, csv"),
    ([{**CATALOG[1], "mapping": {"name": "email"}}], "source 'comments': mapping must map source_id"),
    ([{**CATALOG[2], "delimter": ";"}], "source 'items': unknown field 'delimter'"),
    ([{**CATALOG[0], "name": "Posts"}], "source 'Posts': the name must match"),
    ([{"kind": "api", "endpoint": "x"}], "sources[0]: field 'name' is required"),
    ([{**CATALOG[0], "since_param": 5}], "source 'posts': since_param must be a string"),
])
def test_the_catalog_names_the_source_and_field_of_each_mistake(entries, message):
    with pytest.raises(InvalidSource) as raised:
        sources.catalog({"sources": entries})
    assert str(raised.value).startswith(message)


def test_an_empty_catalog_means_the_two_seed_sources_of_todays_params():
    params = {"sources": [], "api_endpoint": "comments", "csv_endpoint": "other.csv", "api_mapping": COMMENTS_MAPPING,
              "csv_mapping": STOCK_MAPPING, "api_since_param": "id_gte"}

    api, csv_ = sources.catalog(params)

    assert (api.name, api.kind, api.conn_id, api.endpoint, api.mapping, api.since_param) == (
        "api", "api", "etl_api", "comments", COMMENTS_MAPPING, "id_gte")
    assert (csv_.name, csv_.kind, csv_.conn_id, csv_.endpoint, csv_.mapping) == (
        "csv", "csv", "etl_csv", "other.csv", STOCK_MAPPING)
    # an entry gets its kind's connection and mapping unless it gives them
    assert sources.from_entry({"name": "x", "kind": "csv", "endpoint": "x.csv"}) == sources.Source(
        name="x", kind="csv", conn_id="etl_csv", endpoint="x.csv", mapping=sources.DEFAULT_CSV_MAPPING)


def dag_with_sources_file(monkeypatch, tmp_path, catalog: list):
    """etl_pipeline parsed with SLUICE_SOURCES_FILE pointing at a YAML catalog (a fresh copy of the module:
    the params' defaults are read when the DAG file is parsed)."""
    path = tmp_path / "sources.yaml"
    path.write_text(yaml.safe_dump({"sources": catalog}))
    monkeypatch.setenv("SLUICE_SOURCES_FILE", str(path))
    spec = importlib.util.spec_from_file_location("etl_pipeline_with_file", REPO / "dags" / "etl_pipeline.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.etl_pipeline()


def test_the_sources_file_is_the_catalog_by_default(pipeline, monkeypatch, tmp_path):
    dag = dag_with_sources_file(monkeypatch, tmp_path, CATALOG[1:3])
    assert dag.params.dump()["sources"] == CATALOG[1:3]

    state, run = pipeline.run(dag=dag)

    assert state == "success"
    assert rows_per_source(pipeline) == {"comments": COMMENTS, "items": ITEMS}


def test_ingests_run_in_parallel_up_to_the_limit(monkeypatch, tmp_path):
    monkeypatch.setenv("SLUICE_MAX_PARALLEL_SOURCES", "3")
    dag = dag_with_sources_file(monkeypatch, tmp_path, CATALOG)
    assert {dag.task_dict[task].max_active_tis_per_dagrun
            for task in ("ingest", "store_raw", "normalize", "upsert", "checkpoint")} == {3}
