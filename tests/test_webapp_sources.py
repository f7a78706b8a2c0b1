"""The read API for any source name: /data, /stats and GET /sources over a warehouse holding sources beyond the
seed's api and csv, with each source's status as record_run writes it (sluice.pipeline, real PostgreSQL)."""

import json
from datetime import datetime, timezone

import psycopg
import pytest
from webapp_fixtures import insert_records, make_app, record, set_source_error  # noqa: F401

from sluice import pipeline, runs, settings
from sluice.errors import LockTimeout, SourceError
from sluice.failures import Failure
from sluice.results import Ingested, Upserted

ROWS = {"api": 2, "csv": 1, "orders": 3, "comments": 4}
# what a failed ingest's task error says; the URL's userinfo and query and the header value are credentials
LEAKY = ("SourceError: comments: GET https://reader:hunter2@feeds.example.com/comments?token=abc123 answered 500; "
         "Authorization: Bearer s3cr3t")
STARTED = datetime(2024, 5, 1, 12, tzinfo=timezone.utc)


def record_run(url: str, run_id: str, loaded: dict[str, str], failed: list[Failure]) -> None:
    """pipeline.record_run for a run that loaded `loaded` (name: kind) and in which the `failed` sources failed."""
    outcome = runs.RunOutcome.of(
        [*(Ingested(source=name, uri=f"file:///{name}", records=ROWS[name], kind=kind) for name, kind in loaded.items()),
         *(Upserted(source=name, inserted=ROWS[name]) for name in loaded)],
        run_id=run_id, run_type="manual", started_at=STARTED, failures=failed,
        kinds={"comments": "csv"})
    with psycopg.connect(url) as conn:
        pipeline.record_run(conn, outcome, settings=settings.load())


@pytest.fixture
def warehouse_url(database_url):
    insert_records(database_url, [record(source=name) for name, count in ROWS.items() for _ in range(count)])
    record_run(database_url, "run-1", {"api": "api", "csv": "csv", "orders": "api", "comments": "csv"}, [])
    record_run(database_url, "run-2", {"api": "api", "orders": "api"},
               [Failure.of(SourceError(LEAKY), step="ingest", source="comments")])
    return database_url


@pytest.fixture
def client(make_app, warehouse_url):
    return make_app(warehouse_url).test_client()


def test_data_of_a_named_source_returns_its_records(client):
    body = client.get("/data?source=orders").json
    assert body["total"] == 3 and {row["source"] for row in body["data"]} == {"orders"}
    one = body["data"][0]
    detail = client.get(f"/data/orders/{one['source_id']}")
    assert detail.status_code == 200 and detail.json["source"] == "orders"


def test_an_unknown_source_is_a_400_that_lists_the_known_ones(client):
    response = client.get("/data?source=invoices")
    assert response.status_code == 400
    assert response.json["code"] == 400 and response.json["message"] == "invalid source"
    (problem,) = response.json["errors"]["source"]
    assert "'invoices'" in problem and "api, comments, csv, orders" in problem


def test_a_source_runs_add_is_known_on_the_next_request(client, warehouse_url):
    assert client.get("/data?source=invoices").status_code == 400
    insert_records(warehouse_url, [record(source="invoices")])
    assert client.get("/data?source=invoices").json["total"] == 1


@pytest.mark.parametrize("name", ["Orders", "1orders", "or-ders", "o" * 64, ""])
def test_a_malformed_source_name_is_a_400(client, name):
    response = client.get(f"/data?source={name}")
    assert response.status_code == 400 and "source" in response.json["errors"]


def test_a_record_of_an_unknown_source_is_a_404(client):
    response = client.get("/data/invoices/1")
    assert response.status_code == 404 and "invoices" in response.json["message"]


def test_stats_reports_every_source(client):
    body = client.get("/stats").json
    assert body["rows_per_source"] == ROWS
    assert body["rejects_per_source"] == dict.fromkeys(ROWS, 0)


def test_sources_lists_each_with_kind_rows_checkpoint_and_last_loads(client):
    response = client.get("/sources")
    assert response.status_code == 200
    sources = {source["name"]: source for source in response.json["data"]}
    assert [source["name"] for source in response.json["data"]] == sorted(ROWS)
    assert {name: (source["kind"], source["row_count"]) for name, source in sources.items()} == {
        "api": ("api", 2), "csv": ("csv", 1), "orders": ("api", 3), "comments": ("csv", 4)}
    assert sources["orders"]["checkpoint"] == {"last_processed_id": None, "last_processed_at": None,
                                                  "last_cursor": None, "read_until": None}
    assert sources["orders"]["last_success"]["run_id"] == "run-2" and sources["orders"]["last_error"] is None
    # csv was not part of run-2: its last load stays run-1's
    assert sources["csv"]["last_success"]["run_id"] == "run-1"


def test_a_source_s_last_error_is_shown_as_a_summary_and_kept_after_a_success(client, warehouse_url):
    body = client.get("/sources").get_data(as_text=True)
    for secret in ("hunter2", "abc123", "s3cr3t"):
        assert secret not in body
    comments = next(source for source in json.loads(body)["data"] if source["name"] == "comments")
    error = comments["last_error"]
    assert error["run_id"] == "run-2" and comments["last_success"]["run_id"] == "run-1"
    assert set(error["error"]) == {"source", "step", "error_class", "http_status", "host"}
    with psycopg.connect(warehouse_url) as conn:  # masked when written, not only when served
        assert "hunter2" not in conn.execute("select last_error from etl_checkpoint where source = 'comments'"
                                             ).fetchone()[0]

    record_run(warehouse_url, "run-3", {"comments": "csv"}, {})
    comments = next(source for source in client.get("/sources").json["data"] if source["name"] == "comments")
    assert comments["last_success"]["run_id"] == "run-3" and comments["last_error"]["run_id"] == "run-2"
    assert comments["last_success"]["at"] > comments["last_error"]["at"]


def test_an_error_stored_unmasked_is_never_served(client, warehouse_url):
    set_source_error(warehouse_url, "orders", "old", LEAKY)  # a row written before summaries existed
    body = client.get("/sources").get_data(as_text=True)
    assert "hunter2" not in body and "s3cr3t" not in body and "abc123" not in body
    orders = next(source for source in json.loads(body)["data"] if source["name"] == "orders")
    assert orders["last_error"]["run_id"] == "old"
    assert orders["last_error"]["error"] == {"source": None, "step": None, "error_class": None, "http_status": None,
                                             "host": None}


def test_a_source_s_stored_summary_is_served(client, warehouse_url):
    summary = {"source": "orders", "step": "ingest", "error_class": "HTTPError", "http_status": 401,
               "host": "feeds.example.com"}
    set_source_error(warehouse_url, "orders", "run-9", LEAKY, summary)
    body = client.get("/sources").get_data(as_text=True)
    assert "hunter2" not in body and "s3cr3t" not in body
    orders = next(source for source in json.loads(body)["data"] if source["name"] == "orders")
    assert orders["last_error"]["error"] == summary and orders["last_error"]["run_id"] == "run-9"


def test_a_source_that_did_not_load_gets_the_run_s_errors_not_another_source_s(warehouse_url, client):
    with psycopg.connect(warehouse_url) as conn:
        pipeline.record_run(conn, runs.RunOutcome.of(
            [Ingested(source="orders", uri="file:///orders", records=3, kind="api")],
            run_id="run-4", run_type="manual", started_at=STARTED, kinds={"comments": "csv"},
            failures=[Failure.of(LockTimeout("waited"), step="init_schema", source=None),
                      Failure.of(SourceError("comments: refused"), step="ingest", source="comments")]),
            settings=settings.load())
    sources = {source["name"]: source for source in client.get("/sources").json["data"]}
    assert sources["orders"]["last_error"]["run_id"] == "run-4"
    assert sources["comments"]["last_error"]["run_id"] == "run-4"
    assert sources["comments"]["kind"] == "csv"


def test_sources_takes_no_parameters_and_sends_an_etag(client):
    assert client.get("/sources?kind=api").status_code == 400
    first = client.get("/sources")
    assert client.get("/sources", headers={"If-None-Match": first.headers["ETag"]}).status_code == 304


def test_sources_of_an_empty_warehouse(make_app, database_url):
    assert make_app(database_url).test_client().get("/sources").json == {"data": []}
