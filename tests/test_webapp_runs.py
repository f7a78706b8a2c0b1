"""GET /runs and /runs/<run_id>/rejects on a real PostgreSQL."""

import json
from datetime import datetime, timezone
from urllib.parse import quote

import psycopg
import pytest
from webapp_fixtures import insert_rejects, insert_run

from sluice import results, runs
from webapp import create_app, db
from webapp.schemas import MAX_REJECT_PAYLOAD_CHARS, MAX_REJECT_TEXT_CHARS

AIRFLOW_RUN_ID = "scheduled__2024-05-01T00:00:00+00:00"
# what /runs serves for a failure recorded before summaries existed: its text stays unserved
NULL_SUMMARY = {"source": None, "step": None, "error_class": None, "http_status": None, "host": None}
COUNTS = {"api": {"fetched": 10, "inserted": 3, "updated": 1, "unchanged": 5, "rejected": 1},
          "csv": {"fetched": 4, "inserted": 0, "updated": 0, "unchanged": 2, "rejected": 2}}


@pytest.fixture(scope="module")
def client(make_database):
    url = make_database()
    # run-0 is the oldest; AIRFLOW_RUN_ID the newest
    for number in range(12):
        insert_run(url, f"run-{number}", ended_hours_ago=100 - number)
    insert_run(url, AIRFLOW_RUN_ID, status="failed", ended_hours_ago=1, error_message="csv: HTTP 500",
               source_counts=COUNTS, records_processed=14)
    insert_rejects(url, AIRFLOW_RUN_ID, [
        {"source": "csv", "source_id": f"c{number}", "reason": f"value 'x{number}' is not a number",
         "payload": {"id": f"c{number}", "value": f"x{number}", "note": "Ærø"}}
        for number in range(25)])
    insert_rejects(url, "run-3", [{"source": "api", "source_id": None, "reason": "no id", "payload": None}])
    insert_rejects(url, "manual__in-progress", [{"source": "api", "source_id": "a1", "reason": "bad", "payload": [1]}])
    app = create_app({"AUTH": "none", "DATABASE_URL": url})
    yield app.test_client()
    db.warehouse(app).close()


def test_runs_newest_first_with_all_fields(client):
    body = client.get("/runs?page_size=3").json
    assert [run["run_id"] for run in body["data"]] == [AIRFLOW_RUN_ID, "run-11", "run-10"]
    assert (body["total"], body["page"], body["page_size"], body["has_more"]) == (13, 1, 3, True)
    newest = body["data"][0]
    assert {key: newest[key] for key in ("status", "errors", "fetched", "inserted", "updated", "unchanged",
                                         "rejected", "records_processed", "source_counts", "duration_seconds",
                                         "run_type")} == {
        "status": "failed", "errors": [NULL_SUMMARY], "fetched": 14, "inserted": 3, "updated": 1,
        "unchanged": 7, "rejected": 3, "records_processed": 14, "source_counts": COUNTS, "duration_seconds": 60.0,
        "run_type": "scheduled"}
    assert newest["started_at"] < newest["ended_at"]
    assert "error_message" not in newest and "HTTP 500" not in json.dumps(body)  # the stored text is never served
    assert body["data"][1]["errors"] == []  # a run that did not fail


@pytest.mark.parametrize("page, page_size, expected, has_more", [
    (1, 13, [AIRFLOW_RUN_ID] + [f"run-{n}" for n in range(11, -1, -1)], False),
    (2, 5, [f"run-{n}" for n in range(7, 2, -1)], True),
    (3, 5, ["run-2", "run-1", "run-0"], False),  # last page
    (4, 5, [], False),  # past the end
])
def test_runs_pages(client, page, page_size, expected, has_more):
    body = client.get(f"/runs?page={page}&page_size={page_size}").json
    assert [run["run_id"] for run in body["data"]] == expected
    assert body["has_more"] is has_more and body["total"] == 13


@pytest.mark.parametrize("path", [
    f"/runs/{AIRFLOW_RUN_ID}/rejects",  # ':' and '+' as they are
    f"/runs/{quote(AIRFLOW_RUN_ID, safe='')}/rejects",  # percent-encoded
])
def test_rejects_of_an_airflow_run_id(client, path):
    body = client.get(f"{path}?page_size=10&page=3").json
    assert (body["total"], body["page"], body["has_more"]) == (25, 3, False)
    assert [item["source_id"] for item in body["data"]] == [f"c{n}" for n in range(20, 25)]
    assert body["data"][0] == {
        "source": "csv", "source_id": "c20", "stage": "normalize", "reason": "value 'x20' is not a number",
        "payload": {"id": "c20", "value": "x20", "note": "Ærø"}, "payload_truncated": False,
        "payload_length": len('{"id": "c20", "note": "Ærø", "value": "x20"}'), "created_at": body["data"][0]["created_at"]}


@pytest.mark.parametrize("run_id, expected", [
    ("run-3", [{"source_id": None, "payload": None, "reason": "no id"}]),
    ("run-4", []),  # a run without rejects
    ("manual__in-progress", [{"source_id": "a1", "payload": [1], "reason": "bad"}]),  # no etl_runs row yet
])
def test_rejects_of_other_runs(client, run_id, expected):
    response = client.get(f"/runs/{run_id}/rejects")
    assert response.status_code == 200
    found = [{key: item[key] for key in ("source_id", "payload", "reason")} for item in response.json["data"]]
    assert found == expected


@pytest.mark.parametrize("url, status, field", [
    ("/runs/no-such-run/rejects", 404, None),
    ("/runs/a/b/rejects", 404, None),  # a run id with a slash that does not exist
    ("/runs?page=0", 400, "page"),
    ("/runs?page_size=500", 400, "page_size"),
    ("/runs?status=failed", 400, "status"),
    (f"/runs/{AIRFLOW_RUN_ID}/rejects?page=x", 400, "page"),
    ("/runs/no-such-run/rejects?page=x", 400, "page"),
])
def test_runs_errors(client, url, status, field):
    response = client.get(url)
    assert response.status_code == status and response.json["code"] == status
    if field:
        assert field in response.json["errors"]
    else:
        assert "no run with run_id" in response.json["message"]


def test_a_run_shows_the_records_a_later_fetch_superseded(make_database):
    # the run fetched 10 API records; a later fetch had already stored 7 of them, and replaced 1 more in raw
    # before this run's upsert: 8 superseded, 2 inserted
    outcome = runs.RunOutcome.of(
        [results.Ingested("api", "file:///staged/api.copy", records=10, kind="api"),
         results.Stored("api", stored=3, superseded=7), results.Normalized("api", staged=3, valid=3),
         results.Upserted("api", inserted=2, superseded=1)],
        run_id="manual__older", run_type="manual", started_at=datetime.now(timezone.utc))
    url = make_database()
    with psycopg.connect(url) as conn:
        runs.record(conn, outcome)
    app = create_app({"AUTH": "none", "DATABASE_URL": url})

    run = app.test_client().get("/runs").json["data"][0]
    db.warehouse(app).close()

    assert (run["fetched"], run["inserted"], run["superseded"]) == (10, 2, 8)
    assert run["source_counts"]["api"]["superseded"] == 8


HUGE_RUN = "manual__huge-rejects"
HUGE_FIELD = 200_000  # characters of one payload's field: 100 of them make a 20 MB page unbounded


@pytest.fixture(scope="module")
def huge_client(make_database):
    url = make_database()
    insert_run(url, HUGE_RUN, status="failed")
    insert_rejects(url, HUGE_RUN, [
        {"source": "api", "source_id": f"h{number}", "reason": "too big", "payload": {"body": "x" * HUGE_FIELD}}
        for number in range(100)])
    insert_rejects(url, HUGE_RUN, [
        {"source": "csv", "source_id": "edge", "reason": "fits", "payload": "y" * (MAX_REJECT_PAYLOAD_CHARS - 2)},
        {"source": "csv", "source_id": "over", "reason": "one more", "payload": "z" * (MAX_REJECT_PAYLOAD_CHARS - 1)},
        {"source": "csv", "source_id": "i" * 50_000, "reason": "r" * 50_000, "payload": None},
    ])
    app = create_app({"AUTH": "none", "DATABASE_URL": url})
    yield app.test_client()
    db.warehouse(app).close()


def test_a_page_of_huge_rejects_stays_bounded_and_says_what_was_cut(huge_client):
    response = huge_client.get(f"/runs/{HUGE_RUN}/rejects?page_size=100")
    assert response.status_code == 200
    # 100 payloads of 200,000 characters: unbounded this is a 20 MB answer
    assert len(response.data) < 100 * (MAX_REJECT_PAYLOAD_CHARS + 2 * MAX_REJECT_TEXT_CHARS + 500)
    body = response.json
    assert (body["total"], len(body["data"]), body["has_more"]) == (103, 100, True)
    first = body["data"][0]
    full_text = json.dumps({"body": "x" * HUGE_FIELD})
    assert first["payload_truncated"] is True and first["payload_length"] == len(full_text)
    assert first["payload"] == full_text[:MAX_REJECT_PAYLOAD_CHARS]  # the start of its JSON text


def test_payloads_up_to_the_limit_come_whole_and_long_text_is_cut(huge_client):
    items = huge_client.get(f"/runs/{HUGE_RUN}/rejects?page=2&page_size=100").json["data"]
    edge, over, long_text = items
    assert (edge["payload"], edge["payload_truncated"]) == ("y" * (MAX_REJECT_PAYLOAD_CHARS - 2), False)
    assert edge["payload_length"] == MAX_REJECT_PAYLOAD_CHARS
    assert over["payload_truncated"] is True and over["payload_length"] == MAX_REJECT_PAYLOAD_CHARS + 1
    assert over["payload"] == '"' + "z" * (MAX_REJECT_PAYLOAD_CHARS - 1)
    assert long_text["source_id"] == "i" * MAX_REJECT_TEXT_CHARS and long_text["reason"] == "r" * MAX_REJECT_TEXT_CHARS
    assert (long_text["payload"], long_text["payload_truncated"], long_text["payload_length"]) == (None, False, None)


def test_the_openapi_document_states_the_bounds(huge_client):
    reject = huge_client.get("/openapi.json").json["components"]["schemas"]["Reject"]["properties"]
    assert f"{MAX_REJECT_PAYLOAD_CHARS:,} characters" in reject["payload"]["description"]
    assert {"payload_truncated", "payload_length"} <= set(reject)


# Issue #22: rejects carry the raw text of a record, but never a value under a credential-shaped key.
SECRET_RUN = "manual__secret-rejects"
LEAKED = ("hunter2", "tok-123", "k3y", "s3ss", "pr1v", "Basic ZXRs", "nested-pw", "in-raw-text", "cut-pw")


@pytest.fixture(scope="module")
def secret_rejects(make_database):
    url = make_database()
    insert_run(url, SECRET_RUN, status="success")
    record = {"id": "s1", "value": "not a number", "Password": "hunter2", "access_token": "tok-123",
              "headers": {"X-Api-Key": ["k3y"], "Cookie": "sid=s3ss", "Authorization": "Basic ZXRs"},
              "account": {"private_key": "pr1v", "auth": {"user": "u", "pass": "nested-pw"}},
              "token_count": 5, "pwd_id": 7}
    insert_rejects(url, SECRET_RUN, [
        {"source": "api", "source_id": "s1", "reason": "value is not a number", "payload": record},
        # a record that was not JSON, kept as its raw text
        {"source": "api", "source_id": "s2", "reason": "not JSON", "payload": '{"id": "s2", "password": "in-raw-text"'},
        # longer than the bound: served as the start of its JSON text, cut inside a credential's value
        {"source": "api", "source_id": "s3", "reason": "too big",
         "payload": {"note": "n" * (MAX_REJECT_PAYLOAD_CHARS - 30), "secret": "cut-pw" + "x" * 100}},
    ])
    app = create_app({"AUTH": "none", "DATABASE_URL": url})
    yield app.test_client()
    db.warehouse(app).close()


def test_rejects_mask_every_value_under_a_credential_shaped_key_and_keep_the_rest(secret_rejects):
    body = secret_rejects.get(f"/runs/{SECRET_RUN}/rejects").get_data(as_text=True)
    leaked = [value for value in LEAKED if value in body]
    assert not leaked, leaked
    first, raw, cut = json.loads(body)["data"]
    assert first["payload"] == {
        "id": "s1", "value": "not a number", "Password": "***", "access_token": "***",
        "headers": {"X-Api-Key": "***", "Cookie": "***", "Authorization": "***"},
        "account": {"private_key": "***", "auth": "***"}, "token_count": 5, "pwd_id": 7}
    assert raw["payload"] == '{"id": "s2", "password": "***"'
    assert cut["payload_truncated"] is True and cut["payload"].endswith('"secret": "***"')
    assert cut["payload"].startswith('{"note": "nnn')


def test_the_openapi_document_says_rejects_carry_raw_source_text(client):
    reject = client.get("/openapi.json").json["components"]["schemas"]["Reject"]["properties"]
    assert "raw source text" in reject["payload"]["description"]
    assert "credential" in reject["payload"]["description"]


def test_runs_serve_the_stored_failure_summaries_never_the_text(make_database):
    url = make_database()
    summary = {"source": "api", "step": "ingest", "error_class": "InvalidHeader", "http_status": None,
               "host": "api.example.com:8443"}
    insert_run(url, "manual__summarised", status="failed", error_message="in header value: 'Basic ZXRsOmh1bnRlcjI='",
               errors=[summary, {"source": "csv", "step": "upsert", "error_class": "SourceError", "http_status": 503,
                                 "host": None, "message": "a field nobody serves: hunter2"}])
    app = create_app({"AUTH": "none", "DATABASE_URL": url})
    body = app.test_client().get("/runs").get_data(as_text=True)
    db.warehouse(app).close()
    assert "ZXRsOmh1bnRlcjI" not in body and "hunter2" not in body
    assert json.loads(body)["data"][0]["errors"] == [summary, {
        "source": "csv", "step": "upsert", "error_class": "SourceError", "http_status": 503, "host": None}]
