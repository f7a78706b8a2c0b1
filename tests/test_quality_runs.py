"""Whole runs of etl_pipeline (dag.test, real PostgreSQL, HTTP on 127.0.0.1) through the quality gate: a steady
history with one-row changes raises nothing, a warn check records and loads, a batch of 30% of the usual rows is
held back while the other source loads, the API says why, and a release from the DAG's param publishes exactly the
held batch."""

import psycopg
import pytest

from sluice import pipeline, settings
from sluice.errors import ReleaseRefused
from sluice_devtools import sample_data
from sluice_devtools.source_server import SourceServer
from tests.pipeline_harness import Pipeline, point_airflow_at
from tests.test_asset_events import all_asset_events
from tests.webapp_fixtures import make_app  # noqa: F401 (a fixture)

CATALOG = [{"name": "posts", "kind": "api", "endpoint": "posts", "anomalies": {"severity": "error"},
            "checks": [{"check": "row_count", "min": 1}, {"check": "unique", "field": "source_id"}]},
           {"name": "items", "kind": "csv", "endpoint": "items.csv",
            "checks": [{"check": "row_count", "max": 10, "severity": "warn"},
                       {"check": "range", "field": "value", "max": 0, "severity": "warn"}]}]
# the items whose value a warn range check finds above 0: loaded all the same
ABOVE_ZERO = sum(float(row[2]) > 0 for row in sample_data.csv_rows(20))
POSTS_ROWS = "select source_id, name, value, description from normalized_data where source = 'posts' order by 1"


def quality(url: str, run_id: str, source: str) -> dict:
    with psycopg.connect(url) as conn:
        rows = conn.execute("select check_name, severity, measured, verdict from quality_results "
                            "where run_id = %s and source = %s", (run_id, source)).fetchall()
    return {name: (severity, measured, verdict) for name, severity, measured, verdict in rows}


@pytest.fixture
def pipeline_run(monkeypatch, database_url, tmp_path):
    server = SourceServer().start()
    server.serve_bytes("items.csv", sample_data.csv_bytes(20, bad_every=0))
    point_airflow_at(monkeypatch, database_url, server, tmp_path / "staging")
    yield Pipeline(database_url, server)
    server.stop()


@pytest.mark.slow
def test_a_steady_source_then_30_percent_of_its_rows_is_held_and_released_deliberately(pipeline_run, database_url,
                                                                                       make_app):  # noqa: F811
    posts = sample_data.posts(101)
    # six steady runs whose row counts differ by one: no anomaly once there is history (5 runs) to judge by
    for number in range(6):
        pipeline_run.sources.serve_json("posts", posts[:100 + number % 2], page_size=50)
        state, run = pipeline_run.run({"sources": CATALOG})
        assert state == "success", run["error_message"]
    steady = quality(database_url, run["run_id"], "posts")
    assert steady["anomaly:row_count"][1:] == (101, "pass")
    assert {verdict for _, _, verdict in steady.values()} == {"pass"}, steady
    # the type mix of the API source's fields is measured (a CSV source's values are all text: it has none)
    assert steady["anomaly:type_mix:value"][1:] == (0, "pass")
    items = quality(database_url, run["run_id"], "items")
    assert not [name for name in items if "type_mix" in name]
    # a failed warn check is recorded, and the source loads all the same; a row-level one counts its records
    assert items["row_count"] == ("warn", 20, "fail")
    assert items["range:value"] == ("warn", ABOVE_ZERO, "fail") and 0 < ABOVE_ZERO < 20
    assert run["source_counts"]["items"]["fetched"] == 20 and run["source_counts"]["items"]["rejected"] == 0

    with psycopg.connect(database_url) as conn:
        before = conn.execute(POSTS_ROWS).fetchall()
    # 30% of the rows, each changed: nothing of it may reach normalized_data
    shrunk = [{**post, "title": f"changed {post['id']}"} for post in posts[:30]]
    pipeline_run.sources.serve_json("posts", shrunk, page_size=50)
    pipeline_run.sources.serve_bytes("items.csv", sample_data.csv_bytes(21, bad_every=0))
    state, run = pipeline_run.run({"sources": CATALOG})
    held_run = run["run_id"]
    assert state == "failed"
    assert "posts: the quality gate held the batch back: anomaly:row_count 30" in run["error_message"]
    with psycopg.connect(database_url) as conn:
        assert conn.execute(POSTS_ROWS).fetchall() == before
        (checkpoint_run,) = conn.execute("select last_success_run_id from etl_checkpoint where source = 'posts'"
                                         ).fetchone()
        assert checkpoint_run != held_run
        (items,) = conn.execute("select count(*) from normalized_data where source = 'items'").fetchone()
    assert items == 21  # the other source loaded
    assert quality(database_url, held_run, "posts")["anomaly:row_count"] == ("error", 30, "fail")
    # the API says why: /sources shows the held batch and its failing checks, the run's quality every check
    client = make_app(database_url).test_client()
    shown = {source["name"]: source["quality"] for source in client.get("/sources").json["data"]}
    assert (shown["posts"]["run_id"], shown["posts"]["status"]) == (held_run, "held")
    assert "anomaly:row_count" in {check["check"] for check in shown["posts"]["failing"]}
    assert (shown["items"]["status"], sorted(check["check"] for check in shown["items"]["failing"])) == (
        "published", ["range:value", "row_count"])
    batches = {batch["source"]: batch for batch in client.get(f"/runs/{held_run}/quality").json["data"]}
    checks = {check["check"]: check for check in batches["posts"]["checks"]}
    assert (checks["anomaly:row_count"]["measured"], checks["anomaly:row_count"]["verdict"]) == (30, "fail")
    assert checks["row_count"]["verdict"] == "pass" and batches["posts"]["score"] < 100
    # the asset event of the source that loaded carries its score
    (event,) = [extra for name, _, _, extra in all_asset_events(held_run) if name.endswith(".items")]
    assert event["quality_score"] == batches["items"]["score"]

    # released from the Airflow UI: the param release publishes the held batch instead of fetching posts again
    state, released = pipeline_run.run({"sources": CATALOG, "release": {"source": "posts", "run_id": held_run}})
    assert state == "success", released["error_message"]
    assert set(released["source_counts"]) == {"items"}  # posts was not fetched
    (event,) = [extra for name, _, _, extra in all_asset_events(released["run_id"]) if name.endswith(".posts")]
    assert (event["run_id"], event["inserted"], event["updated"], event["deleted"]) == (held_run, 0, 30, 0)
    with psycopg.connect(database_url) as conn:
        after = conn.execute(POSTS_ROWS).fetchall()
        status, by, at = conn.execute("select status, released_by, released_at from quality_runs where run_id = %s "
                                      "and source = 'posts'", (held_run,)).fetchone()
        # the triggering user Airflow records: dag.test() triggers as "dag_test"
        assert (status, by) == ("released", "dag_test") and at is not None
        (checkpoint_run,) = conn.execute("select last_success_run_id from etl_checkpoint where source = 'posts'"
                                         ).fetchone()
        assert checkpoint_run == held_run
        # the command line's release is the same path: the batch is released once
        with pytest.raises(ReleaseRefused, match="dag_test released it"):
            pipeline.release(conn, "posts", held_run, released_by="bob", settings=settings.load())
    shown = {source["name"]: source["quality"] for source in client.get("/sources").json["data"]}
    assert (shown["posts"]["run_id"], shown["posts"]["status"], shown["posts"]["released_by"]) == (
        held_run, "released", "dag_test")
    # exactly the held batch: its 30 rows changed, every other row as it was
    assert {row for row in after if row not in before} == {
        (str(post["id"]), f"changed {post['id']}", float(post["userId"]), post["body"]) for post in shrunk}
    assert len(after) == len(before)
