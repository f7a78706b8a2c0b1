"""Every parameter of every endpoint probed with hostile values: a 400 in the JSON error shape or a correct 200.

SQL metacharacters, LIKE wildcards, 3 KB values, invalid UTF-8, bad percent-encoding, NUL, negative and huge
integers, timestamps PostgreSQL cannot compare and repeated parameters go through Flask's test client (longer
URLs are a JSON 414); raw bytes that no client library will send go over a socket to a real werkzeug server
and to gunicorn on 127.0.0.1. Never a 500, never a traceback.
Last, a database too slow to answer: every endpoint that reads it gives a quick 503 and recovers by itself
(a database that is down or restarts is covered by test_webapp_db.py).
"""

import base64
import csv
import http.client
import io
import json
import socket
import threading
import time
from datetime import datetime, timedelta, timezone
from urllib.parse import quote

import psycopg
import pytest
from test_security import LEAKS, serve_with_gunicorn
from webapp_fixtures import insert_records, insert_rejects, insert_run, make_app, record  # noqa: F401
from werkzeug.serving import make_server

from webapp import create_app, db, openapi
from webapp.hooks import MAX_URL_BYTES
from webapp.schemas import OUT_OF_RANGE, data_page_schema, data_query_schema

jsonschema = pytest.importorskip("jsonschema")  # an Airflow dependency, pinned in constraints.txt

RUN_ID = "scheduled__2024-05-01T00:00:00+00:00"
ERROR_KEYS = {"code", "status", "message", "errors"}
# The query parameters of each endpoint (a test checks this against /openapi.json, so new ones get probed).
QUERY_PARAMETERS = {
    "/": [], "/openapi.json": [], "/health": [], "/stats": [], "/sources": [], "/data/api/item-1": ["include_deleted"],
    "/data": ["page", "page_size", "source", "search", "updated_since", "cursor", "count", "include_deleted", "fields",
              "order"],
    "/runs": ["page", "page_size"], "/sources/api/fields": [],
    f"/runs/{quote(RUN_ID)}/rejects": ["page", "page_size", "source"], "/metrics": [],
    f"/runs/{quote(RUN_ID)}/quality": [],
    "/export/api": ["format", "updated_since", "include_deleted", "fields", "after"],
}
TEXT_PROBES = [
    "'", "' OR '1'='1", "1; drop table normalized_data; --", "'); select pg_sleep(10); --", '"', "%", "_", "\\",
    "%_\\", "*", "$1", "%(source)s", "{}", "[]", "null", "", " ", "-1", "0", "-99999999999999999999",
    str(10**30), "1e3", "1.5", "NaN", "Infinity", "0x10", "١٢", "a" * 3_000, "9" * 3_000,
    "2024-05-01T12:00:00+00:00", "99999-01-01T00:00:00Z", "api", "exact",
    # parsed by Python, refused or overflowed by PostgreSQL: offsets of 16 hours or more, years out of range in UTC
    "0291-05-12T17:10:11.3-19:08", "2024-05-01T12:00:00+16:00", "2024-05-01T12:00:00-23:59:59.999999",
    "0001-01-01T00:00:00+00:01", "9999-12-31T23:59:59-00:01", "2024-05-01T12:00:00+15:59", "0001-01-01T00:00:00Z",
]
RAW_PROBES = ["%ff", "%zz", "%", "%c3%28", "%00", "a%00b", "%e2%82", "a%2", "%u0041", "%ed%a0%80", "%ef%bb%bf",
              "%0d%0aSet-Cookie:%20x=1", "+", "%2B1", "%2F..%2F"]
PROBES = [quote(text, safe="") for text in TEXT_PROBES] + RAW_PROBES
# Rows whose source_id and name hold the metacharacters, so a LIKE or an injection would show in the answer.
HOSTILE_IDS = ["'", "%", "1; drop table normalized_data; --", "a/b", "/leading-slash", "double//slash/",
               "line\nbreak\r\n"]
RAW_BYTES = [b"\xff", b"\xc3\x28", b"caf\xc3\xa9", b"\xed\xa0\x80", b"\x00", b"\x01", b"\x7f", b"%ff\xfe"]


@pytest.fixture(scope="module")
def database(make_database):
    url = make_database()
    rows = [record(source="api" if n % 2 else "csv", source_id=f"item-{n}", name=f"Item {n}", value=n,
                   description=f"entry {n}") for n in range(1, 6)]
    rows += [record(source="api", source_id=source_id, name=f"100% {source_id} _x_ \\ 'q'", value=1.0,
                    description="hostile") for source_id in HOSTILE_IDS]
    insert_records(url, rows)
    insert_run(url, RUN_ID, source_counts={"api": {"fetched": 9, "inserted": 9}})
    insert_rejects(url, RUN_ID, [{"source": "api", "source_id": "x", "reason": "bad", "payload": {"id": "x"}}])
    return url, rows


@pytest.fixture(scope="module")
def app(database):
    app = create_app({"AUTH": "none", "DATABASE_URL": database[0], "POOL_MIN": 1})
    yield app
    db.warehouse(app).close()


@pytest.fixture(scope="module")
def document(app):
    return app.test_client().get("/openapi.json").json


def decoded(app, url: str) -> tuple[dict, dict]:
    """(query args, path args) exactly as the app will see them for url."""
    with app.test_request_context(url) as context:
        return context.request.args, context.request.view_args or {}


def problems_with(app, document, rows, url: str, response, name: str, statuses) -> list[str]:
    """What is wrong with the answer to url: [] for a JSON 400 naming the parameter, a correct 200, or a 404
    in the error shape where statuses allows one (a path value that names nothing)."""
    body_text = response.get_data(as_text=True)
    found = []
    if response.status_code not in statuses:
        found.append(f"status {response.status_code}")
    if any(leak in body_text for leak in LEAKS):
        found.append("leaks internals")
    if response.status_code == 200 and response.mimetype in ("text/csv", "application/x-ndjson"):
        return found + export_problems(response)
    if response.content_type != "application/json":
        return found + [f"content type {response.content_type}"]
    body = response.json
    if response.status_code != 200:
        if set(body) != ERROR_KEYS or body["code"] != response.status_code:
            found.append(f"not the error shape: {body_text[:200]}")
        elif response.status_code == 400 and name not in body["errors"]:
            found.append(f"400 does not name {name!r}: {body_text[:200]}")
        return found
    return schema_problems(app, document, url, body) + wrong_answer(app, rows, url, body)


def export_problems(response) -> list[str]:
    """An export of the api source parses as its format and holds the api source's rows only."""
    text = response.get_data(as_text=True)
    if response.mimetype == "text/csv":
        rows = list(csv.DictReader(io.StringIO(text, newline="")))
    else:
        *rows, last = [json.loads(line) for line in text.splitlines()]
        if set(last) != {"_watermark"}:
            return [f"the last NDJSON line is not the watermark: {last}"]
    return [f"exported another source's row: {row}" for row in rows if row.get("source", "api") != "api"]


def schema_problems(app, document, url: str, body) -> list[str]:
    rule, _ = app.url_map.bind("localhost").match(url.split("?")[0], return_rule=True)
    documented = document["paths"][openapi.openapi_path(rule)]["get"]["responses"]["200"]
    schema = {**documented["content"]["application/json"]["schema"], "components": document["components"]}
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(body))
    return [f"200 body breaks its schema: {error.message}"] if error else []


def wrong_answer(app, rows, url: str, body) -> list[str]:
    """A 200 must mean what the parameter says: a literal search, the page asked for, the source asked for."""
    args, view_args = decoded(app, url)
    if "source_id" in view_args:
        return [] if body["source_id"] == view_args["source_id"] else [f"answered {body['source_id']!r}"]
    found = []
    if "search" in args:
        needle = args["search"].lower()
        expected = sum(needle in (row["name"] or "").lower() or needle in (row["description"] or "").lower()
                       for row in rows)
        if body["total"] != expected:
            found.append(f"search {args['search']!r} matched {body['total']} rows, expected {expected}")
    for name in ("page", "page_size"):
        if name in args and body[name] != int(args[name]):
            found.append(f"{name} {args[name]!r} answered as {body[name]!r}")
    if "source" in args and any(row["source"] != args["source"] for row in body["data"]):
        found.append(f"source {args['source']!r} answered other sources")
    if "updated_since" in args:
        since = datetime.fromisoformat(args["updated_since"])
        since = since if since.tzinfo else since.replace(tzinfo=timezone.utc)
        expected = sum(row["updated_at"] >= since for row in rows)
        if body["total"] != expected:
            found.append(f"updated_since {args['updated_since']!r} matched {body['total']} rows, expected {expected}")
    return found


@pytest.fixture(scope="module")
def probe(app, document, database):
    """probe(urls, name, statuses): the problems of every answer, [] when each is right."""
    client = app.test_client()

    def probe(urls, name: str, statuses=(200, 400)) -> list[str]:
        return [f"{url[:120]}: {problem}" for url in urls
                for problem in problems_with(app, document, database[1], url, client.get(url, buffered=True), name,
                                             statuses)]

    return probe


def test_the_probed_parameters_are_every_documented_one(document):
    documented = {path: sorted(p["name"] for p in item["get"]["parameters"] if p["in"] == "query")
                  for path, item in document["paths"].items()}
    probed = {path: sorted(names) for path, names in QUERY_PARAMETERS.items()}
    assert documented == {
        openapi_path: probed[concrete] for concrete, openapi_path in [
            ("/", "/"), ("/openapi.json", "/openapi.json"), ("/health", "/health"), ("/stats", "/stats"),
            ("/sources", "/sources"), ("/data", "/data"), ("/data/api/item-1", "/data/{source}/{source_id}"), ("/runs", "/runs"),
            ("/sources/api/fields", "/sources/{source}/fields"), (f"/runs/{quote(RUN_ID)}/rejects", "/runs/{run_id}/rejects"),
            ("/metrics", "/metrics"), (f"/runs/{quote(RUN_ID)}/quality", "/runs/{run_id}/quality"),
            ("/export/api", "/export/{source}")]}


@pytest.mark.parametrize("path, name", [(path, name) for path, names in QUERY_PARAMETERS.items()
                                        for name in names or ["q"]])
def test_query_parameter_probes(probe, path, name):
    assert probe([f"{path}?{name}={value}" for value in PROBES], name) == []


@pytest.mark.parametrize("path", list(QUERY_PARAMETERS))
def test_hostile_parameter_names_are_a_400(app, path):
    client = app.test_client()
    for name in ("%27", "%ff", "%00", "a" * 3_000, "page%00", "%20page", "PAGE", "page[]", "page.x"):
        response = client.get(f"{path}?{name}=1")
        assert response.status_code == 400, name
        assert set(response.json) == ERROR_KEYS and len(response.json["errors"]) == 1, name


@pytest.mark.parametrize("template, name", [
    ("/data/api/{}", "source_id"), ("/data/csv/{}", "source_id"), ("/data/{}/item-1", "source"),
    ("/runs/{}/rejects", "run_id"),
])
def test_path_parameter_probes(probe, template, name):
    values = PROBES + [quote(source_id, safe="") for source_id in HOSTILE_IDS]
    assert probe([template.format(value) for value in values], name, statuses=(200, 400, 404)) == []


def test_hostile_ids_are_found_exactly_not_as_patterns(app):
    client = app.test_client()
    for source_id in HOSTILE_IDS:
        for path in (quote(source_id, safe=""), quote(source_id)):  # slashes encoded, and sent as they are
            assert client.get(f"/data/api/{path}").json["source_id"] == source_id, path
    for pattern in ("_", "%25%25", "item-_", "item-%25"):
        assert client.get(f"/data/api/{pattern}").status_code == 404, pattern


def test_an_id_with_a_line_break_reaches_the_query_checks(app):
    # schemathesis found it: the id converter did not match a newline, so the query went unchecked (a 404)
    response = app.test_client().get("/runs/a%0Ab/rejects?page=0")
    assert response.status_code == 400 and list(response.json["errors"]) == ["page"]


VALID_VALUES = {"page": "1", "page_size": "10", "source": "api", "search": "item", "count": "exact",
                "updated_since": "2024-01-01T00:00:00Z", "include_deleted": "true", "q": "1", "format": "csv",
                "after": "1"}


@pytest.mark.parametrize("path, name", [(path, name) for path, names in QUERY_PARAMETERS.items()
                                        for name in names or ["q"]])
def test_a_repeated_parameter_is_a_400_naming_it(app, path, name):
    client = app.test_client()
    value = VALID_VALUES.get(name) or client.get("/data?page_size=1").json["next_cursor"]
    for query in (f"{name}={value}&{name}={value}", f"{name}={value}&{name}=other"):
        response = client.get(f"{path}?{query}")
        assert response.status_code == 400, query
        assert response.json["errors"][name] == ["Given more than once; pass it once."]


# What schemathesis found (issue #12): timestamps Python parses and PostgreSQL refuses, and over-long URLs.

def test_the_timestamp_postgresql_refused_is_a_400_naming_updated_since(app):
    response = app.test_client().get(
        "/data?page=378&search=%F0%9F%98%8D%60&count=none&updated_since=0291-05-12T17%3A10%3A11.3-19%3A08",
        headers={"If-None-Match": "*"})
    assert response.status_code == 400
    assert response.json["errors"] == {"updated_since": [OUT_OF_RANGE]}


@pytest.mark.parametrize("since, expected", [
    ("2024-05-01T12:00:00-16:00", 400), ("2024-05-01T12:00:00+16:00", 400), ("2024-05-01T12:00:00+15:59:01", 400),
    ("0001-01-01T00:00:00+00:01", 400), ("9999-12-31T23:59:59.999999-00:01", 400),
    ("2024-05-01T12:00:00-15:59", 200), ("2024-05-01T12:00:00+15:59", 200), ("0291-05-12T17:10:11.3-09:08", 200),
    ("0001-01-01T00:00:00-00:01", 200), ("9999-12-31T23:59:59.999999+00:01", 200),
])
def test_updated_since_is_refused_exactly_where_postgresql_could_not_compare_it(probe, app, since, expected):
    url = f"/data?updated_since={quote(since)}"
    assert app.test_client().get(url).status_code == expected
    assert probe([url], "updated_since") == []  # a 400 names the field; a 200 counts the right rows


@pytest.mark.parametrize("moment", ["0291-05-12T17:10:11.3-19:08", "0001-01-01T00:00:00+01:00",
                                    "9999-12-31T23:59:59-01:00"])
def test_a_forged_cursor_postgresql_cannot_compare_is_a_400(app, moment):
    cursor = base64.urlsafe_b64encode(json.dumps([moment, 1]).encode()).decode().rstrip("=")
    response = app.test_client().get(f"/data?cursor={cursor}")
    assert response.status_code == 400
    assert list(response.json["errors"]) == ["cursor"]


def test_a_cursor_with_another_offset_pages_like_the_utc_one(app):
    client = app.test_client()
    cursor = client.get("/data?page_size=3").json["next_cursor"]
    updated_at, row_id, _ = data_query_schema.load({"cursor": cursor})["cursor"]
    far_west = updated_at.astimezone(timezone(-timedelta(hours=15, minutes=59)))
    shifted = data_page_schema.dump({"next_cursor": (far_west, row_id)})["next_cursor"]
    assert shifted != cursor
    assert client.get(f"/data?cursor={shifted}").json["data"] == client.get(f"/data?cursor={cursor}").json["data"]


# what schemathesis sent: repeats (7,999 bytes), more than gunicorn's default 4,094-byte request line allows
LONG_QUERY = "&".join(["page_size=10&page=1"] * 400)


def long_urls() -> list[str]:
    """A URL over MAX_URL_BYTES on every endpoint, by query string and, where the path takes an id, by path."""
    urls = [f"{path}?{LONG_QUERY}" for path in QUERY_PARAMETERS]
    long_id = "x" * MAX_URL_BYTES
    return urls + [f"/data/api/{long_id}", f"/runs/{long_id}/rejects", f"/{long_id}"]


def assert_json_414(status, content_type, body: dict, what: str) -> None:
    what = f"{what[:60]}… ({len(what)} bytes)"
    assert (status, content_type) == (414, "application/json"), what
    assert set(body) == ERROR_KEYS and body["code"] == 414 and body["errors"] == {}, what
    assert f"limited to {MAX_URL_BYTES} bytes" in body["message"], what


@pytest.mark.parametrize("url", long_urls(), ids=lambda url: url[:20])
def test_an_over_long_url_is_a_json_414(app, url):
    assert_json_414(*answer(app.test_client().get(url)), url)


def test_a_url_of_exactly_the_limit_reaches_the_parameter_checks(app):
    url = "/data?search=" + "a" * (MAX_URL_BYTES - len("/data?search="))
    response = app.test_client().get(url)
    assert response.status_code == 400 and list(response.json["errors"]) == ["search"]
    assert_json_414(*answer(app.test_client().get(url + "a")), url + "a")


def answer(response) -> tuple:
    return response.status_code, response.content_type, response.json


# Raw bytes over a socket: what a hostile client sends, not what a client library would encode.

def raw_get(port: int, target: bytes) -> tuple[int, str, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, response.getheader("Content-Type") or "", response.read()


def raw_targets() -> list[bytes]:
    targets = []
    for raw in RAW_BYTES:
        targets += [b"/data?search=" + raw, b"/data?page=" + raw, b"/data?" + raw + b"=1", b"/data/api/" + raw,
                    b"/runs/" + raw + b"/rejects", b"/" + raw]
    return targets


def raw_answers(port: int) -> tuple[list[str], set[bytes]]:
    """(problems, targets the app answered): each raw target is answered without a 500 or a leak, in JSON
    unless the HTTP server itself refused the request line with a 400 before the app saw it."""
    failures, reached_app = [], set()
    for target in raw_targets():
        status, content_type, body = raw_get(port, target)
        text = body.decode("utf-8", "replace")
        if status >= 500 or any(leak in text for leak in LEAKS):
            failures.append(f"{target!r}: {status} {text[:160]}")
        elif content_type == "application/json":
            reached_app.add(target)
            if status not in (200, 400, 404):
                failures.append(f"{target!r}: status {status}")
        elif status != 400:
            failures.append(f"{target!r}: {status} {content_type} {text[:160]}")
    return failures, reached_app


def test_raw_bytes_reach_the_app_through_werkzeug_and_get_json(app):
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        failures, reached_app = raw_answers(server.server_port)
    finally:
        server.shutdown()
        server.server_close()
    assert failures == []
    # http.server splits the request line on any Unicode space (0xa0 and 0x85 in Latin-1) and refuses it;
    # every other target gets to the app
    assert reached_app == {target for target in raw_targets()
                           if not any(char.isspace() for char in target.decode("latin-1"))}


@pytest.mark.slow
def test_raw_bytes_and_percent_escapes_under_gunicorn(database):
    with serve_with_gunicorn(database[0]) as port:
        # gunicorn refuses a request line with raw non-ASCII or control bytes before the app, in JSON too
        assert raw_answers(port) == ([], set(raw_targets()))
        for target in (b"/data?search=%00", b"/data?search=%ff", b"/data/api/%00", b"/runs/a%00b/rejects",
                       b"/data?page=" + str(10**30).encode(), b"/data?page=-1&page=2"):
            status, content_type, body = raw_get(port, target)
            assert (status, content_type) in ((200, "application/json"), (400, "application/json")), target


@pytest.mark.slow
def test_over_long_urls_get_the_json_414_under_gunicorn(database):
    with serve_with_gunicorn(database[0]) as port:
        for url in long_urls():
            status, content_type, body = raw_get(port, url.encode())
            assert_json_414(status, content_type, json.loads(body), url)
        # past gunicorn's own limit (8,190 bytes) gunicorn refuses it before the app: the same JSON shape
        status, content_type, body = raw_get(port, b"/data?" + b"x" * 8190)
        assert (status, content_type) == (414, "application/json")
        assert json.loads(body) == {"code": 414, "status": "Request-URI Too Long", "errors": {},
                                    "message": "Request Line is too large (8209 > 8190)"}


def raw_request(port: int, data: bytes) -> tuple[int, dict, dict]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, dict(response.getheaders()), json.loads(response.read())


@pytest.mark.slow
def test_what_gunicorn_refuses_before_the_app_is_json_with_the_apps_headers(database):
    refused = {  # request → (status, what the message says)
        b"GET /data HTTP/1.1\r\nHost: x\r\nX-Big: " + b"y" * 9000 + b"\r\n\r\n": (431, "limit request headers fields size"),
        b"GET /data HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(101)) + b"\r\n":
            (431, "limit request headers fields"),
        b"GET /data HTTP/9.9\r\nHost: x\r\n\r\n": (400, "Invalid HTTP Version"),
        b"G\x00T /data HTTP/1.1\r\nHost: x\r\n\r\n": (400, "Invalid Method"),
    }
    with serve_with_gunicorn(database[0]) as port:
        for data, (code, says) in refused.items():
            status, headers, body = raw_request(port, data)
            assert (status, headers["Content-Type"]) == (code, "application/json"), data[:40]
            assert set(body) == ERROR_KEYS and body["code"] == code and says in body["message"], body
            assert headers["Connection"] == "close" and headers["X-Content-Type-Options"] == "nosniff"
            assert headers["Cache-Control"] == "no-store"


# A database too slow to answer (here: another session holds every table the API reads).

DATABASE_ENDPOINTS = ["/data", "/data?count=estimated&search=item", "/data/api/item-1", "/stats", "/runs",
                      f"/runs/{quote(RUN_ID)}/rejects", "/health"]
LOCK_EVERYTHING = "lock table normalized_data, etl_runs, etl_checkpoint, rejected_records in access exclusive mode"


def test_every_endpoint_answers_503_within_the_statement_timeout_and_recovers(make_app, database):
    timeout_ms = 300
    client = make_app(database[0], STATEMENT_TIMEOUT_MS=timeout_ms, POOL_MIN=1, POOL_MAX=2).test_client()
    assert [client.get(path).status_code for path in DATABASE_ENDPOINTS] == [200] * len(DATABASE_ENDPOINTS)
    with psycopg.connect(database[0]) as blocker:
        blocker.execute(LOCK_EVERYTHING)
        for path in DATABASE_ENDPOINTS:
            started = time.monotonic()
            response = client.get(path)
            elapsed = time.monotonic() - started
            assert response.status_code == 503, path
            assert elapsed < timeout_ms / 1000 + 1.0, f"{path} took {elapsed:.2f}s"
            assert response.headers["X-Content-Type-Options"] == "nosniff"
            if path == "/health":
                assert response.json["status"] == "unavailable"
                assert "statement timeout" in response.json["reason"]
            else:
                assert response.json == {"code": 503, "status": "Service Unavailable", "errors": {},
                                         "message": f"the query took longer than the {timeout_ms} ms statement timeout"}
                assert response.headers["Retry-After"] == "5"
        # what needs no database still answers
        assert [client.get(path).status_code for path in ("/", "/openapi.json")] == [200, 200]
        blocker.rollback()
    # the pooled connections were rolled back, not lost: every endpoint answers again at once
    assert [client.get(path).status_code for path in DATABASE_ENDPOINTS] == [200] * len(DATABASE_ENDPOINTS)
