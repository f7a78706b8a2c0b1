"""GET /sources/<source>/fields over a real warehouse: declared, observed and changed fields of a source as
sluice.contracts records them; an unknown source is a 404, examples are bounded and credentials masked."""

import json

import psycopg
from webapp_fixtures import make_app  # noqa: F401  # a fixture

from sluice import contracts, sources, warehouse
from tests.test_contracts import customers, staged


def store(url: str, run_id: str, records: list[dict], source: sources.Source) -> None:
    with psycopg.connect(url) as conn:
        warehouse.store_raw(conn, "customers", staged(run_id, records), run_id=run_id, lock_timeout_seconds=5,
                            kind="api", contract=source, fetch_seq=warehouse.next_fetch_seq(conn))


def test_an_unknown_source_is_a_404_and_a_malformed_name_a_400(make_app, database_url):  # noqa: F811
    client = make_app(database_url).test_client()

    missing = client.get("/sources/nobody/fields")
    assert missing.status_code == 404 and missing.json["message"] == (
        "no source named 'nobody' was loaded, declared or observed")
    assert client.get("/sources/No-Such/fields").status_code == 400
    assert client.get("/sources/customers/fields?page=2").status_code == 400


def test_examples_are_bounded_and_mask_credentials(make_app, database_url):  # noqa: F811
    source = customers()
    long_note = "n" * (contracts.EXAMPLE_CHARS + 100)
    store(database_url, "run-1", [{"id": 1, "email": "a@example.org", "mrr": 1, "api_token": "s3cr3t-value"},
                                  {"id": 2, "email": "b@example.org", "mrr": 2, "note": long_note}], source)

    body = make_app(database_url).test_client().get("/sources/customers/fields").json

    observed = {field["field"]: field for field in body["observed"]}
    assert body["declared"] == [] and body["observed_total"] == 5 and body["changes_total"] == 5
    token = observed["api_token"]
    assert "s3cr3t-value" not in token["example"] and json.loads(token["example"])["api_token"] == "***"
    note = observed["note"]
    assert note["example_truncated"] and len(note["example"]) == contracts.EXAMPLE_CHARS
    assert note["example_length"] > contracts.EXAMPLE_CHARS and note["example_record_id"] == "2"
    assert {change["field"]: (change["change"], change["declared"]) for change in body["changes"]} == {
        "id": ("new", True), "email": ("new", True), "mrr": ("new", True), "api_token": ("new", False),
        "note": ("new", False)}
