"""GET /stats on a real PostgreSQL: totals, per-source counters, the newest run, and its ETag."""

from webapp_fixtures import insert_checkpoint, insert_rejects, insert_run, make_app  # noqa: F401

REFUSED = {"source": "api", "step": "ingest", "error_class": "SourceError", "http_status": None,
           "host": "api.example.com"}
NEWEST_COUNTS = {"api": {"fetched": 100, "inserted": 3, "updated": 1, "unchanged": 96, "rejected": 0},
                 "csv": {"fetched": 10, "inserted": 2, "updated": 0, "unchanged": 5, "rejected": 3}}


def test_stats_of_an_empty_warehouse_name_no_source(make_app, database_url):
    response = make_app(database_url).test_client().get("/stats")
    assert response.status_code == 200
    assert response.json == {
        "total_records_processed": 0, "total_duration_seconds": 0.0, "run_count": 0, "last_success": None,
        "last_failure": None, "last_failure_errors": None, "rows_per_source": {},
        "deleted_per_source": {}, "deleted_total": 0, "rejects_per_source": {}, "last_run": None}


def test_stats_after_some_runs(make_app, database_url):
    insert_run(database_url, "run-1", ended_hours_ago=50, duration_seconds=10, records_processed=100,
               source_counts={"api": {"fetched": 100, "inserted": 100, "rejected": 2}})
    insert_run(database_url, "run-2", status="failed", ended_hours_ago=26, duration_seconds=5, records_processed=7,
               error_message="api: connection refused", source_counts={"csv": {"fetched": 7, "rejected": 4}},
               errors=[REFUSED])
    insert_run(database_url, "run-3", ended_hours_ago=2, duration_seconds=20.5, records_processed=110,
               source_counts=NEWEST_COUNTS)
    insert_checkpoint(database_url, "api", 103)
    insert_checkpoint(database_url, "csv", 9)
    # stored rejects are not counted again: the runs' counts are the record
    insert_rejects(database_url, "run-3", [{"source": "csv", "reason": "bad"}])
    client = make_app(database_url).test_client()
    body = client.get("/stats").json
    runs = {run["run_id"]: run for run in client.get("/runs").json["data"]}
    assert body == {
        "total_records_processed": 217, "total_duration_seconds": 35.5, "run_count": 3,
        "last_success": runs["run-3"]["ended_at"], "last_failure": runs["run-2"]["ended_at"],
        "last_failure_errors": [REFUSED],
        "rows_per_source": {"api": 103, "csv": 9}, "rejects_per_source": {"api": 2, "csv": 7},
        "deleted_per_source": {"api": 0, "csv": 0}, "deleted_total": 0,
        "last_run": {"run_id": "run-3", "status": "success", "started_at": runs["run-3"]["started_at"],
                     "ended_at": runs["run-3"]["ended_at"], "inserted": 5, "updated": 1, "unchanged": 101,
                     "rejected": 3, "source_counts": NEWEST_COUNTS}}


def test_stats_etag(make_app, database_url):
    insert_run(database_url, "run-1")
    client = make_app(database_url).test_client()
    first = client.get("/stats")
    assert client.get("/stats", headers={"If-None-Match": first.headers["ETag"]}).status_code == 304
    assert client.get("/stats", headers={"If-None-Match": '"something-else"'}).status_code == 200
    insert_run(database_url, "run-2")
    changed = client.get("/stats", headers={"If-None-Match": first.headers["ETag"]})
    assert changed.status_code == 200 and changed.json["run_count"] == 2


def test_stats_takes_no_parameters(make_app, database_url):
    response = make_app(database_url).test_client().get("/stats?source=api")
    assert response.status_code == 400 and "source" in response.json["errors"]
