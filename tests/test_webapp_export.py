"""GET /export/<source> on a real PostgreSQL as the read-only role under row-level security: CSV and NDJSON equal
to /data paged end to end, resume, filters, scopes, slots and the audit line; under gunicorn (slow), a client
that drops the connection cancels the query at once while other requests keep being answered."""

import csv
import decimal
import io
import json
import logging
import os
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from auth_fixtures import bearer, create_key
from webapp_fixtures import (BASE_TIME, declare_fields, free_port, insert_checkpoint, insert_records,  # noqa: F401
                             make_app, record)

REPO = Path(__file__).resolve().parents[1]
FIELDS = {"email": "text", "seats": "integer", "mrr": "numeric", "active": "boolean", "signup": "timestamp",
          "birthday": "date", "tags": "json"}
TRICKY_TEXT = ['comma, "quotes" and\nnewline', "ÆRØ ünïcødé ✓ 𝄞", "line\r\nbreak", "back\\slash\ttab", ""]


def customers() -> list[dict]:
    rows = []
    for number in range(1, 41):
        text = TRICKY_TEXT[number % len(TRICKY_TEXT)]
        attributes = {"email": f"c{number}@example.com" if number % 7 else None,
                      "seats": number * 10**15 if number % 3 else None,
                      "mrr": f"1234567890123456789{number}.10", "active": number % 2 == 0,
                      "signup": f"2026-01-{number % 28 + 1:02d}T10:00:00.5Z" if number % 4 else None,
                      "birthday": "1990-02-28", "tags": {"plan": text, "n": [number, 1.50]}}
        rows.append(record(
            source="customers", source_id=f"c{number}", name=text if number % 5 else None, value=number / 3,
            description=text, updated_at=BASE_TIME + timedelta(seconds=number, microseconds=0 if number % 2 else 7),
            attributes=json.dumps({key: value for key, value in attributes.items() if value is not None})
            .replace('"mrr": "', '"mrr": ').replace('.10"', ".10")))  # mrr a JSON number with all its digits
    return rows


@pytest.fixture(scope="module")
def warehouse(make_database):
    url = make_database()
    rows = insert_records(url, customers() + [record(source="other", source_id=f"o{n}") for n in range(3)])
    declare_fields(url, "customers", FIELDS)
    insert_checkpoint(url, "customers", 40)
    insert_checkpoint(url, "other", 3)
    # more declared fields than one SQL function call takes (100 arguments: 50 fields)
    wide = {f"f{number}": "integer" for number in range(60)}
    insert_records(url, [record(source="wide", source_id=f"w{n}", attributes=json.dumps(
        {name: n * 100 + position for position, name in enumerate(wide) if position % (n + 2)})) for n in range(3)])
    declare_fields(url, "wide", wide)
    insert_checkpoint(url, "wide", 3)
    with psycopg.connect(url) as conn:  # two soft-deleted rows
        conn.execute("update normalized_data set deleted_at = %s where source_id in ('c3', 'c4')", (BASE_TIME,))
    return url, rows


@pytest.fixture
def client(warehouse, make_app):
    return make_app(warehouse[0]).test_client()


def exact(body: bytes | str):
    return json.loads(body, parse_float=decimal.Decimal)


def data_pages(client, query: str) -> list[dict]:
    """/data?source=customers paged by cursor to the end, items parsed with every digit."""
    body = exact(client.get(f"/data?source=customers&page_size=7&{query}").get_data())
    items = body["data"]
    while body["has_more"]:
        body = exact(client.get(f"/data?source=customers&page_size=7&{query}&cursor={body['next_cursor']}")
                     .get_data())
        items += body["data"]
    return sorted(items, key=lambda item: item["id"])


def ndjson(response) -> tuple[list[dict], dict]:
    lines = response.get_data().split(b"\n")
    assert lines[-1] == b"", "the body ends with a newline"
    *records, last = [exact(line) for line in lines[:-1]]
    return records, last


def csv_cell(value) -> str:
    """What a CSV field holds for a JSON value of /data: its text, JSON text for an object or a list."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return value  # compared as JSON below
    return str(value)


@pytest.mark.parametrize("query", ["", "include_deleted=true", "updated_since=2024-05-01T12:00:20Z"])
def test_csv_and_ndjson_equal_data_paged(client, warehouse, query):
    expected = data_pages(client, query)
    assert len(expected) == {"": 38, "include_deleted=true": 40}.get(query, 21)

    response = client.get(f"/export/customers?format=ndjson&{query}", buffered=True)
    assert response.status_code == 200 and response.mimetype == "application/x-ndjson"
    records, last = ndjson(response)
    assert records == expected  # every value, typed attributes and exact numerics included
    assert last == {"_watermark": response.headers["Sluice-Watermark"]}

    response = client.get(f"/export/customers?{query}", buffered=True)  # csv by default
    assert response.status_code == 200 and response.content_type == "text/csv; charset=utf-8"
    assert response.headers["Content-Disposition"] == 'attachment; filename="customers.csv"'
    table = list(csv.reader(io.StringIO(response.get_data(as_text=True), newline="")))
    header, rows = table[0], table[1:]
    assert header == ["id", "source", "source_id", "name", "value", "description", "created_at", "updated_at",
                      "deleted_at", *FIELDS]
    assert len(rows) == len(expected)
    for row, item in zip(rows, expected):
        cells = dict(zip(header, row))
        assert decimal.Decimal(cells.pop("value")) == item["value"]
        assert exact(cells.pop("tags")) == item["attributes"]["tags"]
        wanted = {**{key: csv_cell(value) for key, value in item.items() if key != "attributes"},
                  **{key: csv_cell(value) for key, value in item["attributes"].items() if key != "tags"}}
        del wanted["value"]
        assert cells == wanted
    # an empty text is "" and a null an empty field: CSV keeps them apart
    assert b',"",' in response.get_data() and b",," in response.get_data()


def test_sixty_declared_fields(client):
    records, _ = ndjson(client.get("/export/wide?format=ndjson", buffered=True))
    data = exact(client.get("/data?source=wide").get_data())["data"]
    assert records == sorted(data, key=lambda item: item["id"]) and len(records[0]["attributes"]) == 60
    header = client.get("/export/wide", buffered=True).get_data(as_text=True).splitlines()[0]
    assert header.endswith(",f58,f59") and header.count(",") == 8 + 60


def test_resume_fields_and_watermark(client, warehouse):
    everything, _ = ndjson(client.get("/export/customers", headers={"Accept": "application/x-ndjson"},
                                      buffered=True))
    cut = everything[9]["id"]
    rest, _ = ndjson(client.get(f"/export/customers?format=ndjson&after={cut}", buffered=True))
    assert rest == everything[10:]

    response = client.get("/export/customers?fields=mrr,source_id,deleted_at&after=" + str(cut), buffered=True)
    table = list(csv.reader(io.StringIO(response.get_data(as_text=True), newline="")))
    assert table[0] == ["id", "source_id", "deleted_at", "mrr"]  # id first: where a resume starts
    assert table[1] == [str(rest[0]["id"]), rest[0]["source_id"], "", str(rest[0]["attributes"]["mrr"])]
    lines, _ = ndjson(client.get("/export/customers?format=ndjson&fields=source_id", buffered=True))
    assert lines[0] == {"id": everything[0]["id"], "source_id": everything[0]["source_id"]}

    head = client.head("/export/customers?format=ndjson")  # what a GET answers, without running the export
    assert (head.status_code, head.mimetype, head.get_data()) == (200, "application/x-ndjson", b"")
    bad = client.get("/export/customers?fields=source_id,password", buffered=True)
    assert bad.status_code == 400 and "'password' is neither a column" in bad.json["errors"]["fields"][0]
    assert client.get("/export/customers?format=xml", buffered=True).status_code == 400

    # export, then poll /data from the export's watermark: a change committed after the export is there
    watermark = client.get("/export/customers", buffered=True).headers["Sluice-Watermark"]
    insert_records(warehouse[0], [record(source="customers", source_id="late", updated_at=BASE_TIME)])
    with psycopg.connect(warehouse[0]) as conn:
        conn.execute("update normalized_data set updated_at = now() where source_id = 'late'")
    polled = client.get("/data", query_string={"source": "customers", "updated_since": watermark}).json["data"]
    assert [item["source_id"] for item in polled] == ["late"]
    with psycopg.connect(warehouse[0]) as conn:
        conn.execute("delete from normalized_data where source_id = 'late'")


def test_scopes_audit_rate_limit_and_slots(warehouse, make_app, caplog):
    app = make_app(warehouse[0], AUTH="keys", EXPORT_CONCURRENCY=1, RATELIMIT_EXPORT="5 per hour")
    key = create_key(app, "exporter", "customers")
    client = app.test_client()
    # another source's export is the 404 of a source that does not exist; no credential is a 401
    for source in ("other", "nosuch"):
        response = client.get(f"/export/{source}", headers=bearer(key), buffered=True)
        assert response.status_code == 404 and response.json["message"] == f"no source named {source!r}"
    assert client.get("/export/customers", buffered=True).status_code == 401

    caplog.set_level(logging.INFO, logger="sluice.audit")
    streaming = client.get("/export/customers?format=ndjson", headers=bearer(key))
    assert streaming.status_code == 200
    busy = client.get("/export/customers", headers=bearer(key), buffered=True)  # the one slot is taken
    assert busy.status_code == 503 and busy.headers["Retry-After"] == "30"
    assert busy.json["message"].startswith("1 exports are already running in this process")
    assert client.get("/data?source=customers", headers=bearer(key)).status_code == 200  # reads go on
    assert len(b"".join(streaming.response).splitlines()) == 39  # 38 rows and the watermark
    streaming.close()
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "sluice.audit"]
    exports = [line for line in lines if line["event"] == "export"]
    assert [(line["principal"], line["source"], line["rows"], line["complete"]) for line in exports] == [
        ("key:exporter", "customers", 38, True)]

    # the slot is free again
    assert client.get("/export/customers", headers=bearer(key), buffered=True).status_code == 200
    limited = client.get("/export/customers", headers=bearer(key), buffered=True)  # the sixth export request this hour, refused ones included
    assert limited.status_code == 429 and "too many exports from key:exporter" in limited.json["message"]


def active_copies(url: str) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute("select count(*) from pg_stat_activity where state = 'active' and query like '%%copy (%%'"
                            " and pid <> pg_backend_pid()").fetchone()[0]


def status_of(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


@pytest.mark.slow
def test_dropped_client_cancels_the_query_while_other_requests_answer(make_database):
    url = make_database()
    with psycopg.connect(url) as conn:  # enough rows that the export is still streaming when the client leaves
        conn.execute("insert into normalized_data (source, source_id, name, description, created_at, updated_at,"
                     " first_seen_run_id, last_changed_run_id, input_hash)"
                     " select 'big', 'b' || n, 'name ' || n, repeat('x', 200), now(), now(), 'run-1', 'run-1', 'h'"
                     " from generate_series(1, 200000) n")
    insert_checkpoint(url, "big", 200000)
    port = free_port()
    # the owner's connection, so that pg_stat_activity shows the query's text (the reader role's sessions hide it)
    env = {**os.environ, "DATABASE_URL": url, "SLUICE_AUTH": "none", "SLUICE_BIND": f"127.0.0.1:{port}",
           "SLUICE_WORKERS": "1", "SLUICE_THREADS": "4", "SLUICE_POOL_MIN": "1", "SLUICE_EXPORT_CONCURRENCY": "1"}
    server = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py"], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                status_of(f"{base}/health")
                break
            except (urllib.error.URLError, ConnectionError):
                assert server.poll() is None and time.monotonic() < deadline, "gunicorn did not start"
                time.sleep(0.2)
        export = socket.create_connection(("127.0.0.1", port))
        export.sendall(b"GET /export/big?format=ndjson HTTP/1.1\r\nHost: x\r\n\r\n")
        received = b""
        while len(received) < 8192:
            received += export.recv(4096)
        assert received.startswith(b"HTTP/1.1 200") and b"Transfer-Encoding: chunked" in received
        assert active_copies(url) == 1  # the export's query runs, held back by its reader
        started = time.monotonic()
        assert status_of(f"{base}/data?page_size=1") == 200  # other requests are answered meanwhile
        assert status_of(f"{base}/health") == 503  # (no run yet: it answers, and says so)
        assert status_of(f"{base}/export/big") == 503  # the one export slot is taken
        assert time.monotonic() - started < 2

        export.close()
        closed = time.monotonic()
        while active_copies(url) and time.monotonic() - closed < 2:
            time.sleep(0.05)
        assert active_copies(url) == 0, "the export's query outlived its client by 2 s"
        freed_after = time.monotonic() - closed
        # the slot is free again within the same 2 s (its thread gives it back once it has seen the cancellation,
        # a moment after the query ends): a whole export streams to the end
        while True:
            try:
                with urllib.request.urlopen(f"{base}/export/big?fields=source_id", timeout=60) as response:
                    assert sum(1 for _ in response) == 200001  # the header and every row
                break
            except urllib.error.HTTPError as error:
                if error.code != 503 or time.monotonic() - closed >= 2:
                    raise
                time.sleep(0.05)
    finally:
        server.terminate()
        try:
            output, _ = server.communicate(timeout=40)
        except subprocess.TimeoutExpired as e:
            server.kill(); print(server.communicate()[0]); raise
    print(f"the query ended {freed_after * 1000:.0f} ms after the client left")
    assert "Traceback" not in output, output


def test_an_export_blocked_by_a_load_is_a_quick_503_and_frees_its_slot(warehouse, make_app):
    client = make_app(warehouse[0], STATEMENT_TIMEOUT_MS=300, EXPORT_CONCURRENCY=1).test_client()
    with psycopg.connect(warehouse[0]) as blocker:
        blocker.execute("lock table normalized_data in access exclusive mode")  # as a bulk load holds it
        started = time.monotonic()
        response = client.get("/export/customers", buffered=True)
        assert time.monotonic() - started < 1.5
        assert response.status_code == 503 and response.headers["Retry-After"] == "5"
        assert response.json["message"] == "the query waited longer than 300 ms for a lock (a load is writing)"
        blocker.rollback()
    assert len(client.get("/export/customers", buffered=True).get_data().splitlines()) > 38  # the slot is free
