"""The raw tables keep each record as the source sent it (issue 22): its own text, byte for byte after UTF-8
decoding, hashed as it is; normalization reads its numbers without losing a digit."""

import hashlib
import io
import shutil

import psycopg
import pytest
import requests

from sluice import api_source, http_client, queries, rules, warehouse
from sluice_devtools.source_server import SourceServer

JSON = "application/json; charset=utf-8"
POLICY = http_client.RetryPolicy(attempts=1, timeout=5.0)
# odd whitespace and key order, a number no float holds, escapes, numbers jsonb would rewrite (-0.0, 1e400)
RECORD = ('{ "id": 1,\t"b" :12345678901234567890.12 ,\n  "a": "x \\u00e9 é \\ud83d\\ude00",'
          ' "z": -0.0, "big": 1e400, "tiny": 1E-400, "n": [1.50, 2e3, {"k": null}] }')
# no number a float cannot hold: only text, spelling and digits differ from a parse and re-encode
PLAIN = '{"id": 1, "b": 12345678901234567890.12, "a": "x \\u00e9 é \\ud83d\\ude00",   "z": -0.0}'
# name from "a", value and description from the number: the description keeps its digits
MAPPING = {"source_id": "id", "name": "a", "value": "b", "description": "b"}


@pytest.fixture(scope="module")
def server():
    with SourceServer() as running:
        yield running


def stage(server, path: str, body: bytes, run_id: str) -> io.BytesIO:
    server.serve_bytes(path, body, content_type=JSON)
    out = io.BytesIO()
    with requests.Session() as session:
        api_source.fetch(session, f"{server.url}/{path}", MAPPING, out, run_id=run_id, uri="file:///s", policy=POLICY,
                         max_pages=1, max_bytes=10_000_000)
    out.seek(0)
    return out


def load(conn, staged: io.BytesIO, run_id: str) -> None:
    warehouse.store_raw(conn, "api", staged, run_id=run_id, lock_timeout_seconds=5)
    warehouse.normalize(conn, "api", rules.Normalization(MAPPING), run_id=run_id, full_refresh=False,
                        lock_timeout_seconds=5)
    warehouse.upsert(conn, "api", run_id=run_id, lock_timeout_seconds=5)


@pytest.mark.parametrize("record", [PLAIN, RECORD], ids=["plain", "1e400"])
@pytest.mark.parametrize("page", ["[%s]", '{"meta": {"n": 1.0}, "data": [\r\n%s\r\n]}'], ids=["array", "wrapped"])
def test_an_api_record_is_stored_as_its_own_text(server, database_url, page, record):
    with psycopg.connect(database_url) as conn:
        load(conn, stage(server, "odd", (page % record).encode(), "run-1"), "run-1")
        (stored,) = conn.execute("select data::text from raw_api_data where source_id = '1'").fetchone()

    assert stored == record


def test_the_content_hash_is_the_md5_of_the_stored_text(server, database_url):
    with psycopg.connect(database_url) as conn:
        load(conn, stage(server, "odd", f"[{PLAIN}]".encode(), "run-1"), "run-1")
        (content_hash,) = conn.execute("select content_hash from raw_api_data where source_id = '1'").fetchone()

    assert content_hash == hashlib.md5(PLAIN.encode()).hexdigest()


@pytest.mark.parametrize("record", [PLAIN, RECORD], ids=["plain", "1e400"])
def test_a_number_beyond_a_float_keeps_every_digit_in_a_text_column_and_rounds_once_in_value(server, database_url,
                                                                                              record):
    with psycopg.connect(database_url) as conn:
        load(conn, stage(server, "odd", f"[{record}]".encode(), "run-1"), "run-1")
        row = conn.execute("select name, value, description from normalized_data where source_id = '1'").fetchone()

    assert row == ("x é é 😀", 12345678901234567890.12, "12345678901234567890.12")


def test_a_record_the_fast_path_leaves_keeps_its_digits_through_the_schema(server, database_url):
    # a padded name is the schema's to trim: the slow path reads the record, and its numbers, as Decimal
    record = '{"id": 2, "a": " padded ", "b": 0.1000000000000000000000000001}'
    with psycopg.connect(database_url) as conn:
        load(conn, stage(server, "slow", f"[{record}]".encode(), "run-1"), "run-1")
        row = conn.execute("select name, value, description from normalized_data where source_id = '2'").fetchone()

    assert row == ("padded", 0.1, "0.1000000000000000000000000001")


def test_a_rerun_of_the_same_text_writes_no_raw_row_and_a_respelled_record_is_rewritten(server, database_url):
    with psycopg.connect(database_url) as conn:
        load(conn, stage(server, "odd", f"[{RECORD}]".encode(), "run-1"), "run-1")
        first = conn.execute("select xmin::text from raw_api_data").fetchone()
        load(conn, stage(server, "odd", f"[ {RECORD} ]".encode(), "run-2"), "run-2")
        assert conn.execute("select xmin::text from raw_api_data").fetchone() == first

        respelled = RECORD.replace("1.50", "1.5")  # the same value as json.loads reads it, spelled otherwise
        load(conn, stage(server, "odd", f"[{respelled}]".encode(), "run-3"), "run-3")
        assert conn.execute("select data::text, run_id from raw_api_data").fetchone() == (respelled, "run-3")


def test_rows_stored_as_jsonb_before_008_become_json_text_with_the_hash_of_that_text(make_database, tmp_path,
                                                                                      monkeypatch):
    earlier = tmp_path / "sql"
    shutil.copytree(queries.SQL_DIR, earlier)
    (earlier / "migrations" / "008_raw_text.sql").unlink()
    monkeypatch.setattr(queries, "SQL_DIR", earlier)
    url = make_database(bare=True)
    with psycopg.connect(url) as conn:
        warehouse.apply_schema(conn)
        conn.execute("insert into raw_api_data (source, source_id, data, content_hash, run_id)"
                     " values ('api', '1', '{\"b\": 12345678901234567890.12, \"a\": [1, 2]}', 'old', 'r')")
        conn.execute("insert into raw_csv_data (source, source_id, data, content_hash, run_id)"
                     " values ('csv', '1', '{\"name\": \"x\", \"id\": \"1\"}', 'old', 'r')")
        conn.commit()
        monkeypatch.undo()

        assert warehouse.apply_schema(conn).migrations == ("008_raw_text.sql",)

        rows = conn.execute("select pg_typeof(data)::text, data::text, content_hash = md5(data::text) from raw_api_data"
                            " union all select pg_typeof(data)::text, data::text, content_hash = md5(data::text)"
                            " from raw_csv_data").fetchall()
        # jsonb's rendering of each record (its original text was not kept), every digit there
        assert rows == [("json", '{"a": [1, 2], "b": 12345678901234567890.12}', True),
                        ("json", '{"id": "1", "name": "x"}', True)]
