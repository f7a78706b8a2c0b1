"""The local stack as users run it (`make up`): trigger through the REST API, read through the Flask API."""

import json
import socket
import time
import urllib.error
import urllib.request
from urllib.parse import quote

import psycopg
import pytest

from sluice import assets
from sluice_devtools import stack

pytestmark = pytest.mark.slow
DOWNSTREAM = "csv_changed"
# a DAG scheduled on the seed csv source's asset, as a user would write one (README, "Assets")
DOWNSTREAM_DAG = """
import pendulum
from airflow.sdk import Asset, dag, task

CHANGED = Asset(name={name!r}, uri={uri!r})


@dag(schedule=CHANGED, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), catchup=False)
def {dag_id}():
    @task
    def report(triggering_asset_events=None):
        for event in triggering_asset_events[CHANGED]:
            print("run", event.extra["run_id"], "inserted", event.extra["inserted"], "updated", event.extra["updated"])

    report()


{dag_id}()
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def call(method: str, url: str, body=None, token: str | None = None) -> tuple[int, dict]:
    """One request; a 5xx is retried a few times: standalone's SQLite metadata DB answers 'database is
    locked' (a 500) when a scheduled run writes at the same moment."""
    for _ in range(5):
        status, answer = _call_once(method, url, body, token)
        if status < 500:
            break
        time.sleep(2)
    return status, answer


def _call_once(method: str, url: str, body, token: str | None) -> tuple[int, dict]:
    request = urllib.request.Request(url, method=method, data=None if body is None else json.dumps(body).encode())
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def wait_for(what: str, probe, timeout: float, interval: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = probe()
        if result:
            return result
        time.sleep(interval)
    raise TimeoutError(f"{what} within {timeout:.0f}s")


@pytest.fixture(scope="module")
def running_stack(tmp_path_factory, make_database):
    database_url = make_database(bare=True)
    extra_dags = tmp_path_factory.mktemp("dags")
    (extra_dags / f"{DOWNSTREAM}.py").write_text(DOWNSTREAM_DAG.format(
        dag_id=DOWNSTREAM, name=assets.name("csv"), uri=csv_asset_uri(database_url)))
    config = stack.StackConfig(home=tmp_path_factory.mktemp("stack"), ui_port=free_port(),
                               api_port=free_port(), samples_port=free_port(), extra_dags=extra_dags)
    patch = pytest.MonkeyPatch()
    patch.setenv("DATABASE_URL", database_url)
    try:
        info = stack.up(config)
        status, body = call("POST", f"{config.ui_url}/auth/token",
                            {"username": "admin", "password": stack.admin_password(config)})
        assert status == 201, body
        token = body["access_token"]
        # its asset must be known to the scheduler before etl_pipeline emits an event on it
        wait_for(f"{DOWNSTREAM} is parsed", lambda: call("GET", f"{config.ui_url}/api/v2/dags/{DOWNSTREAM}",
                                                          token=token)[0] == 200, 120)
        yield config, token, database_url, info
    finally:
        stack.down(config)
        patch.undo()
    for name in ("airflow", "webapp", "samples"):
        assert not config.pid_file(name).exists()


def csv_asset_uri(database_url: str) -> str:
    """The seed csv source's asset URI: the warehouse as the etl_postgres connection reaches it."""
    with psycopg.connect(database_url) as conn:
        return assets.uri(assets.Warehouse(conn.info.host, conn.info.port, conn.info.dbname), "csv")


def dag_runs(config, token, dag_id: str = "etl_pipeline", **filters) -> list[dict]:
    query = "&".join(f"{k}={v}" for k, v in filters.items())
    status, body = call("GET", f"{config.ui_url}/api/v2/dags/{dag_id}/dagRuns?{query}", token=token)
    assert status == 200, body
    return body["dag_runs"]


def test_trigger_with_conf_through_rest_then_read_through_the_flask_api(running_stack):
    config, token, database_url, _ = running_stack
    wait_for("the DAG is parsed", lambda: call("GET", f"{config.ui_url}/api/v2/dags/etl_pipeline",
                                               token=token)[0] == 200, 90)
    status, dag = call("GET", f"{config.ui_url}/api/v2/dags/etl_pipeline", token=token)
    assert dag["is_paused"] is False
    assert {tag["name"] for tag in dag["tags"]} >= {"sluice", "etl"}

    status, run = call("POST", f"{config.ui_url}/api/v2/dags/etl_pipeline/dagRuns",
                       {"logical_date": None, "conf": {"full_refresh": True}}, token=token)
    assert status == 200, run
    run_id = run["dag_run_id"]

    def finished():
        status, body = call("GET", f"{config.ui_url}/api/v2/dags/etl_pipeline/dagRuns/{run_id}", token=token)
        return body if body.get("state") in ("success", "failed") else None

    final = wait_for(f"run {run_id} finished", finished, 150, interval=2)
    assert final["state"] == "success"
    assert final["conf"] == {"full_refresh": True}

    status, data = call("GET", f"{config.api_url}/data?source=csv&page_size=5")
    assert status == 200 and data["total"] > 900 and len(data["data"]) == 5
    status, record = call("GET", f"{config.api_url}/data/api/1")
    assert status == 200 and record["source_id"] == "1"
    with psycopg.connect(database_url) as conn:
        row = conn.execute("select run_type, status, data_interval_start from etl_runs where run_id = %s",
                           (run_id,)).fetchone()
    assert row == ("manual", "success", None)

    # a real worker's task log carries Sluice's lines (the standard logging module, forwarded by Airflow)
    # each lane step is mapped over the catalog: the seed csv is its second source, map index 1
    expected = (("ingest", 1, "csv: staged "), ("store_raw", 1, "csv: stored "),
                ("record_run", -1, " recorded as success"))
    for task_id, map_index, line in expected:
        status, log = call("GET", f"{config.ui_url}/api/v2/dags/etl_pipeline/dagRuns/{quote(run_id)}/taskInstances/"
                                  f"{task_id}/logs/1?map_index={map_index}", token=token)
        assert status == 200 and line in json.dumps(log), (task_id, line)


def test_the_run_that_loaded_the_csv_source_triggers_a_dag_scheduled_on_its_asset(running_stack):
    config, token, database_url, _ = running_stack

    def triggered():
        runs = dag_runs(config, token, DOWNSTREAM)
        return runs if runs and all(run["state"] in ("success", "failed") for run in runs) else None

    # the runs above (the manual one, and a scheduled one if the scheduler made it first) loaded the csv once
    [run] = wait_for(f"{DOWNSTREAM} triggered and finished", triggered, 90, interval=2)
    assert run["run_type"] == "asset_triggered" and run["state"] == "success"
    status, body = call("GET", f"{config.ui_url}/api/v2/dags/{DOWNSTREAM}/dagRuns/{quote(run['dag_run_id'])}/"
                               "upstreamAssetEvents", token=token)
    assert status == 200, body
    [event] = body["asset_events"]
    assert (event["name"], event["uri"]) == (assets.name("csv"), csv_asset_uri(database_url))
    assert (event["source_dag_id"], event["source_task_id"]) == ("etl_pipeline", "upsert")
    with psycopg.connect(database_url) as conn:
        counts = conn.execute("select source_counts->'csv' from etl_runs where run_id = %s",
                              (event["source_run_id"],)).fetchone()[0]
    assert event["extra"]["run_id"] == event["source_run_id"] and counts["inserted"] > 900
    assert {name: event["extra"][name] for name in ("inserted", "updated", "unchanged")} == {
        name: counts[name] for name in ("inserted", "updated", "unchanged")}
    # the downstream task reads the event as the README shows
    status, log = call("GET", f"{config.ui_url}/api/v2/dags/{DOWNSTREAM}/dagRuns/{quote(run['dag_run_id'])}/"
                              "taskInstances/report/logs/1?map_index=-1", token=token)
    assert status == 200
    assert f"run {event['source_run_id']} inserted {counts['inserted']} updated {counts['updated']}" in json.dumps(log)


def test_backfill_of_two_intervals_records_two_runs_and_changes_nothing(running_stack):
    config, token, database_url, _ = running_stack
    with psycopg.connect(database_url) as conn:
        before = conn.execute("select md5(string_agg(t::text, '|' order by id)) from normalized_data t").fetchone()

    status, backfill = call("POST", f"{config.ui_url}/api/v2/backfills", {
        "dag_id": "etl_pipeline", "from_date": "2026-01-01T00:00:00Z", "to_date": "2026-01-02T00:00:00Z",
        "max_active_runs": 1, "reprocess_behavior": "none", "dag_run_conf": {}}, token=token)
    assert status == 200, backfill

    def both_done():
        runs = dag_runs(config, token, run_type="backfill")
        return runs if len(runs) == 2 and all(r["state"] in ("success", "failed") for r in runs) else None

    runs = wait_for("two backfill runs finished", both_done, 150, interval=2)
    assert [r["state"] for r in runs] == ["success", "success"]
    with psycopg.connect(database_url) as conn:
        recorded = conn.execute(
            "select status, data_interval_start::date::text, data_interval_end::date::text from etl_runs"
            " where run_type = 'backfill' order by data_interval_start").fetchall()
        after = conn.execute("select md5(string_agg(t::text, '|' order by id)) from normalized_data t").fetchone()
    assert recorded == [("success", "2026-01-01", "2026-01-02"), ("success", "2026-01-02", "2026-01-03")]
    assert after == before
