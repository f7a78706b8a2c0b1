"""sluice.pipeline without Airflow: each step called with plain values, against a real PostgreSQL and sources
served on 127.0.0.1."""

import io
import json
import socket
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import psycopg
import pytest
import requests

from sluice import http_client, pipeline, results, rules, runs, settings, sources, warehouse
from sluice_devtools import sample_data
from sluice_devtools.source_server import SourceServer
from sluice.errors import InvalidSource, MappingError, StagedFileMissing
from sluice.failures import Failure
from sluice.staging import StageCounts, StageWriter

REPO = Path(__file__).resolve().parents[1]
API_RECORDS, CSV_ROWS, BAD_EVERY = 40, 120, 50  # two bad CSV rows: a text value, a missing name
RUN_ID = "manual__pipeline"


@pytest.fixture
def served():
    with SourceServer() as server:
        server.serve_json("posts", sample_data.posts(API_RECORDS), page_size=15)
        server.serve_bytes("items.csv", sample_data.csv_bytes(CSV_ROWS, bad_every=BAD_EVERY))
        yield server


@pytest.fixture
def config(monkeypatch):
    """The Settings a caller reads once; the steps must never read their own (settings.load then fails)."""
    loaded = settings.load()

    def refuse():
        raise AssertionError("a pipeline step read the settings itself instead of taking the caller's")

    monkeypatch.setattr(settings, "load", refuse)
    return loaded


NO_DELETES = {"deleted": 0, "undeleted": 0, "deletes_skipped": None}
SEEDS = {"api": sources.seed("api", endpoint="posts"), "csv": sources.seed("csv", endpoint="items.csv")}


def run_all_steps(url: str, served: SourceServer, staging_dir: Path, config, run_sources=SEEDS) -> list:
    """Every step of one run, each source's lane in the DAG's order, each step on its own connection as each
    task has; the results (every source's lane, then the run's record)."""
    with psycopg.connect(url) as conn:
        pipeline.init_schema(conn, settings=config)
    steps = []
    for source in run_sources.values():
        with psycopg.connect(url) as conn, requests.Session() as session:
            steps.append(pipeline.ingest(conn, source, session, f"{served.url}/{source.endpoint}",
                                         str(staging_dir / f"{source.name}.copy"), run_id=RUN_ID, settings=config))
        steps += run_lane(url, source, steps[-1], config)
    with psycopg.connect(url) as conn:
        outcome = runs.RunOutcome.of(steps, run_id=RUN_ID, run_type="manual", started_at=datetime.now(timezone.utc))
        return [*steps, pipeline.record_run(conn, outcome, settings=config)]


def run_lane(url: str, source, ingested, config, run_id: str = RUN_ID) -> list:
    """store_raw → normalize → upsert → checkpoint of one source, each on its own connection."""
    with psycopg.connect(url) as conn:
        stored = pipeline.store_raw(conn, ingested, run_id=run_id, settings=config)
    with psycopg.connect(url) as conn:
        normalized = pipeline.normalize(conn, source, stored, run_id=run_id, settings=config)
    with psycopg.connect(url) as conn:
        upserted = pipeline.upsert(conn, source, stored, normalized, run_id=run_id, settings=config)
    with psycopg.connect(url) as conn:
        return [stored, normalized, upserted, pipeline.checkpoint(conn, stored, upserted, run_id=run_id,
                                                                  settings=config)]


def test_the_steps_load_the_two_seed_sources_and_record_the_run(database_url, served, tmp_path, config):
    steps = run_all_steps(database_url, served, tmp_path, config)

    with psycopg.connect(database_url) as conn:
        counts = dict(conn.execute("select source, count(*) from normalized_data group by 1").fetchall())
        run = conn.execute("select status, fetched, inserted, rejected, source_counts from etl_runs"
                           " where run_id = %s", (RUN_ID,)).fetchone()
        checkpoints = dict(conn.execute("select source, last_processed_id from etl_checkpoint").fetchall())
    assert counts == {"api": API_RECORDS, "csv": CSV_ROWS - 2}
    assert run[:4] == ("success", API_RECORDS + CSV_ROWS, API_RECORDS + CSV_ROWS - 2, 2)
    assert run[4] == {
        "api": {"fetched": API_RECORDS, "inserted": API_RECORDS, "updated": 0, "unchanged": 0, "superseded": 0,
                "rejected": 0, **NO_DELETES, "live_before": 0, "live_after": API_RECORDS, "loaded": True},
        "csv": {"fetched": CSV_ROWS, "inserted": CSV_ROWS - 2, "updated": 0, "unchanged": 0, "superseded": 0,
                "rejected": 2, **NO_DELETES, "live_before": 0, "live_after": CSV_ROWS - 2, "loaded": True},
    }
    assert checkpoints == {"api": str(API_RECORDS), "csv": str(CSV_ROWS)}
    assert steps[-1] == results.Recorded(steps[-1].etl_run_id, "success", run[4])


def test_a_rerun_of_the_steps_writes_nothing(database_url, served, tmp_path, config):
    run_all_steps(database_url, served, tmp_path, config)

    *steps, recorded = run_all_steps(database_url, served, tmp_path, config)

    upserted = {step.source: (step.inserted, step.updated) for step in steps if isinstance(step, results.Upserted)}
    assert upserted == {"api": (0, 0), "csv": (0, 0)}
    assert recorded.sources["csv"]["unchanged"] == CSV_ROWS - 2


def test_every_step_result_survives_its_xcom_round_trip_as_json(database_url, served, tmp_path, config):
    steps = run_all_steps(database_url, served, tmp_path, config)

    lane = ["Ingested", "Stored", "Normalized", "Upserted", "Checkpointed"]
    assert [type(step).__name__ for step in steps] == [*lane, *lane, "Recorded"]
    for step in steps:
        value = json.loads(json.dumps(step.to_xcom()))
        assert type(step).from_xcom(value) == step
        assert results.from_xcom(value) == step  # known by its step, whatever task returned it
        assert value["step"] == type(step).STEP
        assert len(json.dumps(value)) < 2000  # counts and references, never rows
    assert results.from_xcom(None) is None



@pytest.mark.parametrize(("ids", "ascending", "duplicates"), [
    pytest.param([1, 2, 3, 10, 11], True, 0, id="sorted-export"),
    pytest.param([1, 3, 2, 3, 11], False, 1, id="unsorted-with-a-duplicate"),
])
def test_a_batch_in_ascending_id_order_is_known_free_of_duplicates_and_any_other_is_checked(
        database_url, served, tmp_path, config, ids, ascending, duplicates):
    served.serve_bytes("ids.csv", b"id,name,value,description\n" + b"".join(
        b"%d,item %d,%d.5,row %d\n" % (i, i, i, row) for row, i in enumerate(ids)))
    source = sources.seed("csv", endpoint="ids.csv")
    with psycopg.connect(database_url) as conn, requests.Session() as session:
        pipeline.init_schema(conn, settings=config)
        ingested = pipeline.ingest(conn, source, session, f"{served.url}/ids.csv", str(tmp_path / "ids.copy"),
                                   run_id=RUN_ID, settings=config)
        ingested = results.Ingested.from_xcom(json.loads(json.dumps(ingested.to_xcom())))
        stored = pipeline.store_raw(conn, ingested, run_id=RUN_ID, settings=config)

    assert ingested.ids_ascending is ascending
    assert (stored.stored, stored.rejected) == (len(set(ids)), duplicates)

def test_the_run_outcome_is_built_from_the_step_results_and_its_counts_add_up():
    ingested = [results.Ingested("api", "file:///a.copy", records=9, problems=1, fetch_seq=4, kind="api"),
                results.Ingested("csv", "file:///c.copy", records=5, kind="csv")]
    outcome = runs.RunOutcome.of(
        [*ingested, results.Stored("api", stored=8, rejected=2, superseded=0),
         results.Normalized("api", staged=8, valid=6, rejected=1, skipped_unchanged=1),
         results.Upserted("api", inserted=4, updated=1, unchanged=0, superseded=1), None],
        run_id="r", run_type="manual", started_at=datetime.now(timezone.utc),
        failures=[Failure.of(StagedFileMissing("csv: gone"), step="store_raw", source="csv")])

    counts = outcome.source_counts()

    assert counts["api"] == {"fetched": 10, "inserted": 4, "updated": 1, "unchanged": 1, "rejected": 3,
                             "superseded": 1, **NO_DELETES, "live_before": 0, "live_after": 0, "loaded": True}
    assert counts["api"]["fetched"] == sum(counts["api"][name] for name in runs.COUNTS[1:])
    # a source that ingested but never reached upsert: fetched, not loaded
    assert counts["csv"] == {"fetched": 5, "inserted": 0, "updated": 0, "unchanged": 0, "rejected": 0,
                             "superseded": 0, **NO_DELETES, "live_before": 0, "live_after": 0, "loaded": False}
    assert outcome.status == "failed"
    assert outcome.error_lines() == ["store_raw[csv]: StagedFileMissing: csv: gone"]
    assert outcome.source_statuses() == {"api": ("api", None), "csv": ("csv", outcome.failures[0])}
    assert outcome.summaries() == [{"source": "csv", "step": "store_raw", "error_class": "StagedFileMissing",
                                    "http_status": None, "host": None}]
    with pytest.raises(ValueError, match="source 'api' has two upsert results"):
        runs.RunOutcome.of([results.Upserted("api"), results.Upserted("api")], run_id="r", run_type="manual",
                           started_at=datetime.now(timezone.utc))


# ---- a third kind of source: this module is its reader (sources.KINDS names a module with stage())

def stage(source, request, out) -> StageCounts:
    """Newline-delimited JSON: one object per line of the response body."""
    response = http_client.get(request.session, request.url, source=source.name, policy=request.policy,
                               origins=http_client.Origins.of(request.url))
    writer = StageWriter(out, request.run_id, source.name)
    counts = StageCounts(source=source.name, uri=request.uri, pages=1)
    for number, line in enumerate(response.iter_lines(), start=1):
        record = json.loads(line)
        writer.record(number, str(record[source.mapping["source_id"]]), record, where=f"line {number}")
        counts.bytes += len(line) + 1
    counts.records = writer.records
    return counts


def test_a_third_kind_of_source_is_one_module_that_ingest_uses(database_url, served, tmp_path, config, monkeypatch):
    monkeypatch.setitem(sources.KINDS, "ndjson", __name__)
    lines = [json.dumps({"key": f"k{n}", "label": f"item {n}", "amount": n * 1.5}) for n in range(1, 8)]
    served.serve_bytes("items.ndjson", "\n".join(lines).encode(), content_type="application/x-ndjson")
    ndjson = sources.Source(name="orders", kind="ndjson", conn_id="etl_ndjson", endpoint="items.ndjson",
                            mapping={"source_id": "key", "name": "label", "value": "amount"})
    # and its raw table, which a new kind's migration creates
    with psycopg.connect(database_url) as conn:
        conn.execute("create table raw_ndjson_data (like raw_csv_data including all)")

    steps = run_all_steps(database_url, served, tmp_path, config, {"api": SEEDS["api"], "orders": ndjson})

    assert steps[5] == results.Ingested("orders", str(tmp_path / "orders.copy"), records=7, pages=1,
                                        bytes=steps[5].bytes, fetch_seq=steps[5].fetch_seq, kind="ndjson",
                                        staged_by=socket.getfqdn())
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("select source_id, name, value from normalized_data where source = 'orders'"
                            " order by value").fetchall()
        assert conn.execute("select source, count(*) from raw_ndjson_data group by source").fetchall() == [
            ("orders", 7)]
    assert rows == [(f"k{n}", f"item {n}", n * 1.5) for n in range(1, 8)]
    assert steps[-1].sources["orders"]["inserted"] == 7


@pytest.mark.parametrize("fields, message", [
    ({"name": "API"}, "source 'API': the name must match"),
    ({"kind": "ftp"}, "source 'orders': kind 'ftp' is not one of api, csv"),
    ({"conn_id": ""}, "source 'orders': conn_id must be a non-empty string"),
    ({"mapping": {"name": "title"}}, "source 'orders': mapping must map source_id"),
    ({"mapping": {"source_id": "id", "colour": "c"}}, "source 'orders': mapping has unknown column(s) colour"),
])
def test_a_source_is_checked_when_it_is_built_naming_the_source_and_field(fields, message):
    given = {"name": "orders", "kind": "api", "conn_id": "etl_api", "endpoint": "orders",
             "mapping": {"source_id": "id"}, **fields}
    with pytest.raises((InvalidSource, MappingError)) as failure:
        sources.Source(**given)
    assert message in str(failure.value)


def test_the_dag_params_describe_the_two_seed_sources():
    params = {"api_endpoint": "posts", "csv_endpoint": "items.csv", "api_since_param": "id_gte",
              "api_mapping": settings.DEFAULT_API_MAPPING, "csv_mapping": {"source_id": "id", "name": "n"}}

    api, csv = (sources.from_params(params, name) for name in ("api", "csv"))

    assert (api.kind, api.conn_id, api.endpoint, api.since_param) == ("api", "etl_api", "posts", "id_gte")
    assert (csv.kind, csv.conn_id, csv.endpoint, csv.since_param) == ("csv", "etl_csv", "items.csv", "")
    with pytest.raises(MappingError, match="source 'csv': csv_mapping must map source_id"):
        sources.from_params({**params, "csv_mapping": {"name": "n"}}, "csv")


def test_the_normalization_rules_of_a_mapping_are_one_object():
    mapping = {"source_id": "id", "name": "title", "value": "userId"}
    normalization = rules.Normalization(mapping)

    assert normalization.normalize({"id": 3, "title": " t ", "userId": "2"}) == (("3", "t", 2.0, None, {}), None)
    assert normalization.normalize({"id": 3, "userId": 1}) == (None, "name (field 'title'): missing")
    assert normalization.input_key == rules.input_key(mapping)
    assert normalization.input_key != rules.Normalization({**mapping, "value": "id"}).input_key
    assert normalization.fast_path_params["description_field"] is None
    assert sources.seed("api", endpoint="p", mapping=mapping).normalization.input_key == normalization.input_key


def test_a_bulk_load_rebuilds_indexes_with_the_memory_its_caller_gives(database_url, config):
    staged = io.BytesIO()
    writer = StageWriter(staged, RUN_ID, "api")
    for number, post in enumerate(sample_data.posts(30), start=1):
        writer.record(number, str(post["id"]), post, where=f"record {number}")
    with psycopg.connect(database_url) as conn:
        # below PostgreSQL's minimum (64kB): the server refuses the value the caller gave, not one read elsewhere
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="maintenance_work_mem"):
            warehouse.store_raw(conn, "api", io.BytesIO(staged.getvalue()), run_id=RUN_ID, lock_timeout_seconds=5,
                                bulk_rows=10, index_build_memory="1kB")
        stored = warehouse.store_raw(conn, "api", io.BytesIO(staged.getvalue()), run_id=RUN_ID,
                                     lock_timeout_seconds=5, bulk_rows=10, index_build_memory="2MB")
    assert stored.raw_inserted == 30


def test_the_pipeline_core_imports_no_airflow():
    code = ("import sys; import sluice.pipeline, sluice.sources, sluice.results, sluice.runs;"
            "print([m for m in sys.modules if m.split('.')[0] == 'airflow'])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO,
                            env={"PATH": ""})
    assert result.stdout.strip() == "[]"

