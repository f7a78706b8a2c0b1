"""Whole runs of etl_pipeline over sources that declare typed fields (issue 23): typed values in
normalized_data.attributes and in each source's typed view (schema `sources`), rejects naming the field, a changed
declaration re-normalizing rows the run did not fetch, and a view others depend on never dropped silently."""

import csv
import datetime
import decimal
import io
import json
import logging

import pytest

from sluice_devtools.source_server import SourceServer
from tests.pipeline_harness import Pipeline, point_airflow_at
from webapp_fixtures import make_app  # noqa: F401  # a fixture

CUSTOMERS_CSV = """id,email,signup,seats,mrr,active,tags
1,ann@example.org,2026-01-01T10:00:00+05:30,12,12345678901234567890.12,true,"[""a"", ""b""]"
2,bob@example.org,2026-02-01 08:30:00,3,0.10,FALSE,vip
3,bad@example.org,2026-02-30T00:00:00Z,x,1,yes,
4,,2026-03-01T00:00:00Z,,,,
5,cy@example.org,,,,,
""".encode()
CUSTOMERS = {"name": "customers", "kind": "csv", "endpoint": "customers.csv",
             "mapping": {"source_id": "id"},  # no name, no value: a customers file has no number to give
             "fields": {"email": {"type": "text", "required": True}, "signup": "timestamp", "seats": "integer",
                        "mrr": "numeric", "active": "boolean", "tags": "json"}}


@pytest.fixture
def pipeline(monkeypatch, database_url, tmp_path):
    server = SourceServer().start()
    server.serve_bytes("customers.csv", CUSTOMERS_CSV)
    server.serve_json("accounts", [account(n) for n in range(1, 31)], page_size=50)
    point_airflow_at(monkeypatch, database_url, server, tmp_path / "staging")
    yield Pipeline(database_url, server)
    server.stop()


def account(n: int) -> dict:
    return {"id": n, "title": f"account {n}", "userId": n % 7, "plan": "pro" if n % 2 else "free", "seats": str(n)}


def test_a_csv_without_numbers_loads_its_typed_fields_into_attributes_and_the_typed_view(pipeline, make_app):  # noqa: F811
    state, run = pipeline.run({"sources": [CUSTOMERS]})

    assert state == "success", run["error_message"]
    assert run["source_counts"]["customers"]["inserted"] == 3
    assert pipeline.rows("select source_id, reason from rejected_records where source = 'customers' order by 1") == [
        ("3", "signup: '2026-02-30T00:00:00Z' is not a valid date-time; seats: 'x' is not an integer; "
              "active: 'yes' is not true or false"),
        ("4", "email: missing")]
    attributes = dict(pipeline.rows("select source_id, attributes::text from normalized_data order by 1"))
    assert attributes["1"] == ('{"mrr": 12345678901234567890.12, "tags": "[\\"a\\", \\"b\\"]", "email": '
                               '"ann@example.org", "seats": 12, "active": true, "signup": "2026-01-01T04:30:00Z"}')
    assert attributes["5"] == ('{"mrr": null, "tags": null, "email": "cy@example.org", "seats": null, "active": null, '
                               '"signup": null}')
    assert pipeline.rows("select distinct name, value from normalized_data") == [(None, None)]

    view = pipeline.rows("select * from sources.customers order by source_id")
    assert [row[:10] for row in view] == [
        ("1", None, None, None, "ann@example.org", datetime.datetime(2026, 1, 1, 4, 30, tzinfo=datetime.UTC), 12,
         decimal.Decimal("12345678901234567890.12"), True, '["a", "b"]'),
        ("2", None, None, None, "bob@example.org", datetime.datetime(2026, 2, 1, 8, 30, tzinfo=datetime.UTC), 3,
         decimal.Decimal("0.10"), False, "vip"),
        ("5", None, None, None, "cy@example.org", None, None, None, None, None)]
    assert pipeline.rows("select column_name, data_type from information_schema.columns where table_schema = 'sources' "
                         "and table_name = 'customers' order by ordinal_position") == [
        ("source_id", "text"), ("name", "text"), ("value", "double precision"), ("description", "text"),
        ("email", "text"), ("signup", "timestamp with time zone"), ("seats", "bigint"), ("mrr", "numeric"),
        ("active", "boolean"), ("tags", "jsonb"), ("updated_at", "timestamp with time zone"),
        ("last_changed_run_id", "text")]
    assert pipeline.rows("select field, type, path, required, position, declared_run_id from source_fields "
                         "order by position") == [
        ("email", "text", "email", True, 0, run["run_id"]), ("signup", "timestamp", "signup", False, 1, run["run_id"]),
        ("seats", "integer", "seats", False, 2, run["run_id"]), ("mrr", "numeric", "mrr", False, 3, run["run_id"]),
        ("active", "boolean", "active", False, 4, run["run_id"]), ("tags", "json", "tags", False, 5, run["run_id"])]

    # the read API serves the typed values, filters and sorts on them, and says why record 3 is missing
    client = make_app(pipeline.database_url).test_client()
    answer = client.get("/data?source=customers&fields=email,seats,mrr,signup&order=signup.desc")
    page = json.loads(answer.data, parse_float=decimal.Decimal)["data"]  # every digit, as served
    assert [(item["source_id"], item["attributes"]) for item in page] == [
        ("2", {"email": "bob@example.org", "seats": 3, "mrr": decimal.Decimal("0.10"), "signup": "2026-02-01T08:30:00Z"}),
        ("1", {"email": "ann@example.org", "seats": 12, "mrr": decimal.Decimal("12345678901234567890.12"),
               "signup": "2026-01-01T04:30:00Z"}),
        ("5", {"email": "cy@example.org", "seats": None, "mrr": None, "signup": None})]
    assert b'"mrr":12345678901234567890.12' in client.get("/data?source=customers&seats=gte.10&fields=mrr").data
    assert [item["source_id"] for item in client.get("/data?source=customers&seats=gte.10").json["data"]] == ["1"]
    missing = client.get("/data/customers/3")
    assert missing.status_code == 404 and missing.json["rejection"]["run_id"] == run["run_id"]
    assert missing.json["rejection"]["reason"].startswith("signup: '2026-02-30T00:00:00Z' is not a valid date-time")

    # unchanged: nothing written, the view and its declaration stay
    state, again = pipeline.run({"sources": [CUSTOMERS]})
    assert state == "success" and again["inserted"] == again["updated"] == 0
    assert pipeline.value("select declared_run_id from source_fields where field = 'email'") == run["run_id"]


ACCOUNTS = {"name": "accounts", "kind": "api", "endpoint": "accounts", "since_param": "id_gte",
            "mapping": {"source_id": "id", "name": "title", "value": "userId"}, "fields": {"plan": "text"}}


def test_a_changed_declaration_renormalizes_stored_rows_the_run_did_not_fetch(pipeline):
    state, first = pipeline.run({"sources": [ACCOUNTS]})
    assert state == "success", first["error_message"]
    pipeline.sources.routes["accounts"].records.extend(account(n) for n in range(31, 36))
    pipeline.sources.requests.clear()

    declared = {**ACCOUNTS, "fields": {"plan": "text", "seats": {"type": "integer", "required": True}}}
    state, second = pipeline.run({"sources": [declared]})

    assert state == "success", second["error_message"]
    # the incremental read fetched from its checkpoint on: ids 30..35, not the 29 stored before
    assert [path for path, _ in pipeline.sources.requests] == ["/accounts?id_gte=30"]
    counts = second["source_counts"]["accounts"]
    assert (counts["fetched"], counts["inserted"], counts["updated"]) == (6, 5, 1)
    assert (counts["renormalized"], counts["renormalized_updated"], counts["renormalized_rejected"]) == (29, 29, 0)
    assert pipeline.rows("select count(*), min(seats), max(seats), count(distinct last_changed_run_id) "
                         "from sources.accounts") == [(35, 1, 35, 1)]
    assert pipeline.value("select max(last_changed_run_id) from normalized_data") == second["run_id"]

    # the next run of the same declaration re-normalizes nothing
    state, third = pipeline.run({"sources": [declared]})
    assert state == "success" and "renormalized" not in third["source_counts"]["accounts"]


def test_a_removed_field_is_reported_and_a_view_built_on_the_typed_view_stops_the_run(pipeline, caplog):
    declared = {**ACCOUNTS, "fields": {"plan": "text", "seats": "integer"}}
    state, first = pipeline.run({"sources": [declared]})
    assert state == "success", first["error_message"]
    with pipeline_connection(pipeline) as conn:
        conn.execute("create view pro_seats as select source_id, seats from sources.accounts where plan = 'pro'")

    state, failed = pipeline.run({"sources": [ACCOUNTS]})  # seats no longer declared

    assert state == "failed"
    assert "normalize[accounts]" in failed["error_message"]
    assert ("accounts: the declared fields changed, so the typed view sources.accounts must be replaced, but "
            "pro_seats depends on it and would be dropped with it. Nothing of accounts was normalized. Drop it "
            "(recreate after the run), or restore the previous declaration, then run again") in failed["error_message"]
    assert pipeline.value("select count(*) from pro_seats") == 15  # untouched, as the typed view
    assert pipeline.value("select count(*) from source_fields where field = 'seats'") == 1

    with pipeline_connection(pipeline) as conn:
        conn.execute("drop view pro_seats")
    with caplog.at_level(logging.WARNING, logger="sluice"):
        state, fixed = pipeline.run({"sources": [ACCOUNTS]})
    assert state == "success", fixed["error_message"]
    assert "accounts: field 'seats' is no longer declared" in caplog.text
    assert [name for (name,) in pipeline.rows(
        "select column_name from information_schema.columns where table_schema = 'sources' "
        "and table_name = 'accounts' order by ordinal_position")] == [
        "source_id", "name", "value", "description", "plan", "updated_at", "last_changed_run_id"]


def pipeline_connection(pipeline):
    import psycopg

    return psycopg.connect(pipeline.database_url, autocommit=True)


def test_rows_renormalized_from_raw_are_not_part_of_the_read_for_deletes(pipeline):
    header = "id,email,seats\n"
    pipeline.sources.serve_bytes("customers.csv", (header + "1,a@x,1\n2,b@x,2\n3,c@x,3\n4,d@x,4\n5,e@x,\n").encode())
    plain = {**CUSTOMERS, "fields": {"email": "text"}}
    state, first = pipeline.run({"sources": [plain]})
    assert state == "success", first["error_message"]

    # record 5 leaves the file as seats becomes required, which its stored record lacks
    pipeline.sources.serve_bytes("customers.csv", (header + "1,a@x,1\n2,b@x,2\n3,c@x,3\n4,d@x,4\n").encode())
    state, second = pipeline.run({"sources": [{**plain, "fields": {"email": "text",
                                                                     "seats": {"type": "integer", "required": True}}}]})

    assert state == "success", second["error_message"]
    counts = second["source_counts"]["customers"]
    assert (counts["fetched"], counts["updated"], counts["deleted"]) == (4, 4, 1)
    assert (counts["renormalized"], counts["renormalized_rejected"]) == (0, 1)
    assert pipeline.rows("select source_id, stage, reason from rejected_records where run_id = %s",
                         (second["run_id"],)) == [("5", "normalize", "seats: missing")]
    # its reject does not make it part of the read: the record left the file, so its row is soft-deleted
    assert pipeline.rows("select source_id from normalized_data where deleted_at is not null") == [("5",)]
    assert pipeline.rows("select source_id, seats from sources.customers order by 1") == [
        ("1", 1), ("2", 2), ("3", 3), ("4", 4)]


VARIED_FIELDS = {"signup": "timestamp", "mrr": "numeric", "active": "boolean", "seats": "integer", "note": "text",
                 "day": "date"}


def varied_csv(rows: int) -> bytes:
    """A CSV whose declared fields hold varied spellings (tests.test_fast_path.varied): offsets, fractions, exponents,
    commas, booleans in any case, blanks and padding; one field a row, the others blank, so that each value decides
    its record."""
    from tests.test_fast_path import varied

    columns = {name: varied(kind, rows, seed=index) for index, (name, kind) in enumerate(VARIED_FIELDS.items())}
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(["id", "name", *VARIED_FIELDS])
    for n in range(rows):
        writer.writerow([n + 1, f"item {n + 1}", *(columns[name][n] if index == n % len(VARIED_FIELDS) else ""
                                  for index, name in enumerate(VARIED_FIELDS))])
    return out.getvalue().encode()


def test_ingest_typed_attributes_are_the_schemas_own_on_a_whole_run(pipeline):
    """A run types the declared fields at ingest (rules.AttributeTyper) and loads them; a replay from raw sends every
    record through the schema instead. Both write the same rows and the same rejects."""
    pipeline.sources.serve_bytes("varied.csv", varied_csv(600))
    source = {"name": "varied", "kind": "csv", "endpoint": "varied.csv", "mapping": {"source_id": "id", "name": "name"},
              "fields": VARIED_FIELDS}
    state, first = pipeline.run({"sources": [source]})
    assert state == "success", first["error_message"]
    rows = "select source_id, attributes::text, last_changed_run_id from normalized_data order by source_id"
    rejects = "select source_id, reason from rejected_records where run_id = %s and stage = 'normalize' order by 1"
    loaded, rejected = pipeline.rows(rows), pipeline.rows(rejects, (first["run_id"],))
    counts = first["source_counts"]["varied"]
    # varied values of every kind: both outcomes are there in numbers
    assert counts["inserted"] >= 200 and counts["rejected"] >= 100 and counts["inserted"] + counts["rejected"] == 600
    normalized = "select (result->>'fast_path')::int from etl_step_results where run_id = %s and step = 'normalize'"
    assert pipeline.value(normalized, (first["run_id"],)) == counts["inserted"]  # every valid record typed by ingest

    state, replayed = pipeline.run({"sources": [source], "replay": True})

    assert state == "success", replayed["error_message"]
    counts = replayed["source_counts"]["varied"]
    assert (counts["renormalized_inserted"], counts["renormalized_updated"]) == (0, 0)
    assert pipeline.rows(rows) == loaded  # not one row rewritten: the same attributes to the byte
    assert pipeline.rows(rejects, (replayed["run_id"],)) == rejected
    assert pipeline.value(normalized, (replayed["run_id"],)) == 0  # the schema judged every record
