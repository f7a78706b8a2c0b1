"""Schema contracts (sluice.contracts): the fields and JSON types of each batch, found by store_raw before the raw
upsert and recorded, and what evolve, freeze and discard_undeclared do with them (real PostgreSQL)."""

import io
import json

import psycopg
import pytest

from sluice import contracts, sources, warehouse
from sluice.contracts import ContractViolation, Readers, column_name
from sluice.errors import InvalidSource
from sluice.sources import Field
from sluice.staging import StageWriter

MAPPING = {"source_id": "id", "name": "email", "value": "mrr"}


def customers(**options) -> sources.Source:
    return sources.Source(name="customers", kind="api", conn_id="etl_api", endpoint="customers", mapping=MAPPING,
                          **options)


def staged(run_id: str, records: list[dict]) -> io.BytesIO:
    out = io.BytesIO()
    writer = StageWriter(out, run_id, "customers")
    for number, record in enumerate(records, 1):
        writer.record(number, str(record["id"]), record, where=f"record {number}")
    out.seek(0)
    return out


def store(url: str, run_id: str, records: list[dict], source: sources.Source):
    """store_raw of a new fetch (a fetch number of its own, as ingest takes one)."""
    with psycopg.connect(url) as conn:
        fetch_seq = warehouse.next_fetch_seq(conn)
        return warehouse.store_raw(conn, "customers", staged(run_id, records), run_id=run_id, lock_timeout_seconds=5,
                                   kind="api", contract=source, fetch_seq=fetch_seq)


def observed(url: str) -> dict:
    with psycopg.connect(url) as conn:
        return {(field, json_type): (first, last, example_id) for field, json_type, first, last, example_id in
                conn.execute("select field, json_type, first_seen_run_id, last_seen_run_id, example_source_id "
                             "from source_observed_fields where source = 'customers'")}


def changes(url: str, run_id: str) -> set:
    with psycopg.connect(url) as conn:
        return set(conn.execute("select field, change, from_type, to_type, declared, record_id "
                                "from source_field_changes where source = 'customers' and run_id = %s", (run_id,)))


def customer(number: int, **extra) -> dict:
    return {"id": number, "email": f"c{number}@example.org", "mrr": number * 10, "seats": number, **extra}


@pytest.mark.parametrize("declared, json_type, reads", [
    ("text", "string", True), ("text", "number", True), ("text", "boolean", False), ("text", "object", False),
    ("integer", "number", True), ("integer", "string", True), ("integer", "boolean", False),
    ("numeric", "array", False), ("boolean", "boolean", True), ("boolean", "string", True),
    ("boolean", "number", False), ("timestamp", "string", True), ("timestamp", "number", False),
    ("date", "string", True), ("date", "boolean", False),
    *(("json", json_type, True) for json_type in ("string", "number", "boolean", "object", "array")),
])
def test_each_declared_type_reads_the_json_types_of_the_table(declared, json_type, reads):
    assert (json_type in contracts.READS[declared]) is reads
    assert set(contracts.READS) == set(sources.FIELD_TYPES)


def test_the_mapping_and_declared_fields_read_top_level_keys_a_dotted_path_its_first():
    source = customers(fields={"seats": "integer", "city": {"type": "text", "from": "address.city"},
                               "contact": {"type": "numeric", "from": "email"}})
    readers = Readers.of(source)
    assert set(readers.read) == {"id", "email", "mrr", "seats", "address", "address.city"}
    # a key read by two declarations must be readable by both: email is text (mapped) and numeric
    assert readers.typed["email"] == {"types": "text, numeric", "reads": ["string", "number"]}
    assert readers.typed["seats"] == {"types": "integer", "reads": ["string", "number"]}
    # the type of a dotted path's value is not the top-level key's: address is an object
    assert "address" not in readers.typed and readers.typed["address.city"]["types"] == "text"


@pytest.mark.parametrize("key, taken, name", [
    ("rating", set(), "rating"), ("userId", set(), "user_id"), ("Plan Name", set(), "plan_name"),
    ("2fa", set(), "f_2fa"), ("__", set(), "f"), ("name", {"name"}, "name_2"), ("rating", {"rating", "rating_2"},
                                                                                    "rating_3"),
    ("x" * 80, set(), "x" * 63), ("x" * 80, {"x" * 63}, "x" * 61 + "_2"),
])
def test_a_recorded_field_gets_a_column_name_as_dlt_would_name_it(key, taken, name):
    assert column_name(key, taken) == name
    assert sources.NAME.fullmatch(name)


def test_the_first_batch_records_every_field_with_its_type_and_first_record(database_url):
    source = customers(fields={"seats": "integer"})
    store(database_url, "run-1", [customer(1, note=None), customer(2, tags=["a"], note=None)], source)

    assert observed(database_url) == {
        ("id", "number"): ("run-1", "run-1", "1"), ("email", "string"): ("run-1", "run-1", "1"),
        ("mrr", "number"): ("run-1", "run-1", "1"), ("seats", "number"): ("run-1", "run-1", "1"),
        ("tags", "array"): ("run-1", "run-1", "2")}  # note is only ever null: no type, not recorded
    assert changes(database_url, "run-1") == {
        ("id", "new", None, "number", True, "1"), ("email", "new", None, "string", True, "1"),
        ("mrr", "new", None, "number", True, "1"), ("seats", "new", None, "number", True, "1"),
        ("tags", "new", None, "array", False, "2")}
    with psycopg.connect(database_url) as conn:
        (example,) = conn.execute("select example from source_observed_fields where field = 'tags'").fetchone()
    assert json.loads(example) == customer(2, tags=["a"], note=None)


def test_a_later_batch_records_new_and_retyped_fields_against_earlier_runs_and_the_declarations(database_url):
    source = customers(fields={"seats": "integer", "active": "boolean"})
    store(database_url, "run-1", [customer(1, tags=["a"], active=True), customer(2, active=False)], source)

    store(database_url, "run-2", [
        customer(1, tags=["a"], active=True),  # unchanged: not parsed again
        customer(2, active="yes", tags="b,c"),  # declared boolean as a string: readable; tags retyped
        customer(3, seats="7", active=True, rating=4.5),  # seats as a string: integer reads it; a new field
        customer(4, seats=True, active=True),  # seats a boolean: integer cannot read it
    ], source)

    assert changes(database_url, "run-2") == {
        ("tags", "retyped", "array", "string", False, "2"),
        ("rating", "new", None, "number", False, "3"),
        ("seats", "retyped", "integer", "boolean", True, "4"),
    }
    seen = observed(database_url)
    # every type a field was sent with is recorded, readable or not; a pair seen again moves its last run
    assert {key for key in seen if key[0] in ("seats", "active", "tags")} == {
        ("seats", "number"), ("seats", "string"), ("seats", "boolean"), ("active", "boolean"), ("active", "string"),
        ("tags", "array"), ("tags", "string")}
    assert seen[("seats", "number")] == ("run-1", "run-2", "1")
    # only changed and new records were parsed: tags as an array was in none of them
    assert seen[("tags", "array")] == ("run-1", "run-1", "1")


def test_a_store_raw_the_run_redoes_finds_the_same_changes_again(database_url):
    source = customers()
    store(database_url, "run-1", [customer(1)], source)
    store(database_url, "run-2", [customer(1, rating=1), customer(2, extra="x")], source)
    # the run fetched again (a cleared ingest): its store_raw forgets what its first one recorded
    store(database_url, "run-2", [customer(1, rating=2)], source)

    assert changes(database_url, "run-2") == {("rating", "new", None, "number", False, "1")}
    assert ("extra", "string") not in observed(database_url)


def test_freeze_refuses_a_batch_with_an_undeclared_or_retyped_field_naming_each_and_writes_nothing(database_url):
    source = customers(fields={"seats": "integer"}, schema_contract="freeze")
    store(database_url, "run-1", [customer(1), customer(2)], source)
    with psycopg.connect(database_url) as conn:
        before = conn.execute("select source_id, data::text from raw_api_data order by source_id").fetchall()

    with pytest.raises(ContractViolation) as raised:
        # rating comes as a number and as a string: one undeclared field, named once
        store(database_url, "run-2", [customer(1, seats=False), customer(2, rating=5), customer(3, rating="6")], source)

    message = str(raised.value)
    assert isinstance(raised.value, InvalidSource)  # a configuration error: failed at once, never retried
    assert message.startswith("customers: schema_contract freeze: the batch has 1 undeclared and 1 retyped fields: "
                              "'rating' (undeclared, a number; record id '2'), 'seats' (declared integer but a "
                              "boolean; record id '1')")
    assert "declare them under the source's fields" in message
    with psycopg.connect(database_url) as conn:
        assert conn.execute("select source_id, data::text from raw_api_data order by source_id").fetchall() == before
        assert conn.execute("select count(*) from staged_records where run_id = 'run-2'").fetchone() == (0,)
        assert conn.execute("select count(*) from etl_step_results where run_id = 'run-2'").fetchone() == (0,)
    assert changes(database_url, "run-2") == set()
    assert ("rating", "number") not in observed(database_url)


def test_freeze_loads_a_batch_whose_fields_are_all_declared_in_types_they_read(database_url):
    source = customers(fields={"seats": "integer"}, schema_contract="freeze")
    store(database_url, "run-1", [customer(1)], source)

    stored = store(database_url, "run-2", [customer(1, seats="12"), customer(2)], source)

    assert (stored.raw_inserted, stored.raw_updated) == (1, 1)
    assert changes(database_url, "run-2") == set()
    assert ("seats", "string") in observed(database_url)


def test_freeze_names_the_first_fields_and_counts_the_rest(database_url):
    source = customers(fields={"seats": "integer"}, schema_contract="freeze")
    extra = {f"field_{number:02}": number for number in range(30)}

    with pytest.raises(ContractViolation, match=r"'field_19' \(undeclared, a number; record id '1'\) and 10 more"):
        store(database_url, "run-1", [customer(1, **extra)], source)


def test_evolve_loads_every_recorded_undeclared_field_as_json_named_as_a_column(database_url):
    source = customers(fields={"seats": "integer"}, schema_contract="evolve")
    store(database_url, "run-1", [customer(1, planName="pro")], source)
    store(database_url, "run-2", [customer(2, rating=4, name="x", address={"city": "Oslo"})], source)

    with psycopg.connect(database_url) as conn:
        evolved = contracts.evolved_fields(conn, source)
        # its own transaction: the connection is left idle for the next step's
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE

    # in the order first seen; `name` is a unified column, so its field is name_2
    assert evolved == {"plan_name": Field("json", "planName"), "address": Field("json", "address"),
                       "name_2": Field("json", "name"), "rating": Field("json", "rating")}
    # a declared or mapped field is never evolved
    declared = customers(fields={"seats": "integer", "rating": "integer",
                                 "city": {"type": "text", "from": "address.city"}})
    with psycopg.connect(database_url) as conn:
        assert contracts.evolved_fields(conn, declared) == {"plan_name": Field("json", "planName"),
                                                            "name_2": Field("json", "name")}


def test_a_csv_batch_shows_its_header_in_its_first_record_and_a_new_column_is_a_new_field(database_url):
    items = sources.Source(name="items", kind="csv", conn_id="etl_csv", endpoint="items.csv",
                           mapping={"source_id": "sku", "name": "label"}, schema_contract="freeze",
                           fields={"qty": "integer"})

    def store_csv(run_id: str, header: tuple, rows: int):
        out = io.BytesIO()
        writer = StageWriter(out, run_id, "items")
        for number in range(1, rows + 1):
            writer.record(number, str(number), {name: f"{name} {number}" for name in header}, where=f"line {number}")
        out.seek(0)
        with psycopg.connect(database_url) as conn:
            return warehouse.store_raw(conn, "items", out, run_id=run_id, lock_timeout_seconds=5, kind="csv",
                                       contract=items, fetch_seq=warehouse.next_fetch_seq(conn))

    store_csv("run-1", ("sku", "label", "qty"), 3)
    with pytest.raises(ContractViolation, match=r"'colour' \(undeclared, a string; record id '1'\)"):
        store_csv("run-2", ("sku", "label", "qty", "colour"), 3)

    with psycopg.connect(database_url) as conn:
        assert set(conn.execute("select field, json_type, example_source_id from source_observed_fields")) == {
            ("sku", "string", "1"), ("label", "string", "1"), ("qty", "string", "1")}
