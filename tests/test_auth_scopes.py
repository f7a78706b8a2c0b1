"""Scopes in every route: a key that reads one source sees only that source everywhere (/data with every filter,
records, /stats, /sources, fields, the OpenAPI document, ETags); operations data needs the operations scope."""

import pytest
from auth_fixtures import bearer, create_key
from webapp_fixtures import (catalog, declare_fields, insert_checkpoint, insert_records, insert_rejects, insert_run,
                             record, set_source_error)

from webapp import create_app, db

FAILED_RUN = "scheduled__2024-05-02T00:00:00+00:00"
GOOD_RUN = "scheduled__2024-05-01T00:00:00+00:00"


@pytest.fixture(scope="module")
def api(make_database):
    """Two sources, api and csv, with runs, rejects, errors and declared fields; keys of four scopes."""
    url = make_database()
    insert_records(url, catalog(10) + [
        record(source="api", source_id="a-plan", name="shared needle", attributes='{"plan": "pro"}'),
        record(source="csv", source_id="c-plan", name="shared needle", attributes='{"plan": "pro"}')])
    for source in ("api", "csv"):
        insert_checkpoint(url, source, 6)
        declare_fields(url, source, {"plan": "text"})
    insert_run(url, GOOD_RUN, ended_hours_ago=2, records_processed=12,
               source_counts={"api": {"fetched": 5, "inserted": 5}, "csv": {"fetched": 7, "inserted": 7}})
    insert_run(url, FAILED_RUN, status="failed", ended_hours_ago=1, records_processed=3,
               source_counts={"api": {"fetched": 3, "unchanged": 3}, "csv": {"fetched": 0, "rejected": 2}},
               errors=[{"source": "csv", "step": "ingest", "error_class": "SourceError", "host": "files.internal"}])
    set_source_error(url, "csv", FAILED_RUN, "csv failed", {"source": "csv", "step": "ingest",
                                                           "error_class": "SourceError"})
    insert_rejects(url, FAILED_RUN, [
        {"source": "csv", "source_id": "c-bad", "reason": "csv secret reason", "payload": {"x": 1}},
        {"source": "api", "source_id": "a-bad", "reason": "api reason", "payload": {"y": 2}}])
    app = create_app({"DATABASE_URL": url, "AUTH": "keys", "POOL_MIN": 0})
    keys = {"api": create_key(app, "api-reader", "api"),
            "api+ops": create_key(app, "api-operator", "api", "--operations"),
            "all": create_key(app, "everything", "*", "--operations"),
            "all-again": create_key(app, "everything-too", "*", "--operations"),
            "none1": create_key(app, "ghost-one", "nosuch1"),
            "none2": create_key(app, "ghost-two", "nosuch2")}
    yield app.test_client(), keys
    db.warehouse(app).close()


def get(api, key: str, path: str, **headers):
    client, keys = api
    return client.get(path, headers={**bearer(keys[key]), **headers})


@pytest.mark.parametrize("query", ["", "search=needle", "updated_since=2024-05-01T12:02:00Z", "include_deleted=true",
                                   "source=api&plan=eq.pro", "order=plan.asc&source=api"])
def test_data_shows_only_the_keys_sources_with_every_filter(api, query):
    everything = get(api, "all", f"/data?page_size=100&count=exact&{query}").json
    expected = [row for row in everything["data"] if row["source"] == "api"]
    scoped = get(api, "api", f"/data?page_size=100&count=exact&{query}").json
    assert scoped["data"] == expected and expected
    assert scoped["total"] == len(expected) < everything["total"] or "source=api" in query
    estimated = get(api, "api", f"/data?count=estimated&{query}")
    assert estimated.status_code == 200
    second_page = get(api, "api", f"/data?page=2&page_size=2&{query}").json["data"]
    assert second_page == expected[2:4]


def test_another_sources_name_is_unknown_and_its_records_do_not_exist(api):
    refused = get(api, "api", "/data?source=csv")
    assert refused.status_code == 400
    assert refused.json["errors"] == {"source": ["Unknown source 'csv'; the known sources are: api."]}
    existing, missing = get(api, "api", "/data/csv/item-2"), get(api, "api", "/data/csv/item-999")
    rejected = get(api, "api", "/data/csv/c-bad")  # its rejection (reason, run) is not told either
    assert existing.status_code == missing.status_code == rejected.status_code == 404
    assert existing.json["message"] == "no csv record with source_id 'item-2'"
    assert set(rejected.json) == set(missing.json) == {"code", "status", "message", "errors"}
    assert get(api, "api", "/data/api/item-1").status_code == 200
    assert get(api, "all", "/data/csv/item-2").status_code == 200
    fields_of_other, fields_of_none = get(api, "api", "/sources/csv/fields"), get(api, "api", "/sources/zzz/fields")
    assert fields_of_other.status_code == fields_of_none.status_code == 404
    assert fields_of_other.json["message"] == "no source named 'csv' was loaded, declared or observed"
    assert get(api, "api", "/sources/api/fields").status_code == 200


def test_stats_and_sources_count_only_the_keys_sources(api):
    stats = get(api, "api", "/stats").json
    assert (stats["rows_per_source"], stats["deleted_per_source"], stats["rejects_per_source"]) == (
        {"api": 6}, {"api": 0}, {"api": 0})
    assert stats["total_records_processed"] == 5 + 3  # api's fetched records, not the runs' totals (15)
    assert stats["last_run"]["source_counts"] == {"api": {"fetched": 3, "unchanged": 3}}
    assert (stats["last_run"]["unchanged"], stats["last_run"]["rejected"]) == (3, 0)
    assert stats["last_failure_errors"] is None  # why runs failed is operations data
    everything = get(api, "all", "/stats").json
    assert set(everything["rows_per_source"]) == {"api", "csv"} and everything["total_records_processed"] == 15
    assert everything["last_failure_errors"][0]["source"] == "csv"

    sources = get(api, "api", "/sources").json["data"]
    assert [source["name"] for source in sources] == ["api"]
    assert get(api, "all", "/sources").json["data"][1]["last_error"]["error"]["error_class"] == "SourceError"
    assert all(source["last_error"] is None for source in get(api, "api", "/sources").json["data"])


def test_operations_data_needs_the_operations_scope(api):
    for path in ("/runs", f"/runs/{FAILED_RUN}/rejects", "/runs/no-such-run/rejects"):
        refused = get(api, "api", path)
        assert refused.status_code == 403, path
        assert refused.json["message"].startswith("this credential may not read operations data")
        assert "insufficient_scope" in refused.headers["WWW-Authenticate"]
    runs = get(api, "api+ops", "/runs").json["data"]
    failed = next(run for run in runs if run["run_id"] == FAILED_RUN)
    assert failed["source_counts"] == {"api": {"fetched": 3, "unchanged": 3}}
    assert (failed["fetched"], failed["rejected"], failed["errors"]) == (3, 0, [])  # csv's failure is not its
    rejects = get(api, "api+ops", f"/runs/{FAILED_RUN}/rejects").json
    assert [(row["source"], row["reason"]) for row in rejects["data"]] == [("api", "api reason")]
    assert rejects["total"] == 1
    assert get(api, "api+ops", f"/runs/{FAILED_RUN}/rejects?source=csv").status_code == 400
    assert get(api, "all", f"/runs/{FAILED_RUN}/rejects").json["total"] == 2


def test_etags_are_never_shared_across_scopes(api):
    for path in ("/data", "/stats", "/sources"):
        scoped, everything = get(api, "api", path), get(api, "all", path)
        assert scoped.headers["ETag"] != everything.headers["ETag"], path
        # another key of the same scope may revalidate; another scope's ETag gets the full answer
        assert get(api, "all-again", path, **{"If-None-Match": everything.headers["ETag"]}).status_code == 304
        assert get(api, "api", path, **{"If-None-Match": everything.headers["ETag"]}).status_code == 200, path
        assert "Authorization" in scoped.headers["Vary"]
    # equal bodies (two keys of sources with no rows) and still two ETags
    first, second = get(api, "none1", "/data"), get(api, "none2", "/data")
    assert first.json["data"] == second.json["data"] == []
    assert first.headers["ETag"] != second.headers["ETag"]


def test_the_openapi_document_names_only_the_callers_sources(api):
    client, _ = api

    def schemas(response):
        return {name for name in response.json["components"]["schemas"] if name.startswith("Attributes_")}
    assert schemas(client.get("/openapi.json")) == set()  # no credential: no source named
    assert schemas(get(api, "api", "/openapi.json")) == {"Attributes_api"}
    assert schemas(get(api, "all", "/openapi.json")) == {"Attributes_api", "Attributes_csv"}


def test_a_key_of_sources_with_no_rows_reads_nothing_and_no_route_errs(api):
    for path in ("/data", "/stats", "/sources"):
        assert get(api, "none1", path).status_code == 200, path
    assert get(api, "none1", "/data").json["total"] == 0
    assert get(api, "none1", "/stats").json["rows_per_source"] == {}
