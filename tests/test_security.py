"""Security of the read API and the code: headers on every answer, a body limit, CORS, gunicorn, bandit."""

import contextlib
import http.client
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from webapp_fixtures import catalog, closed_port_url, free_port, insert_records, make_app  # noqa: F401

from webapp import create_app, db

REPO = Path(__file__).resolve().parents[1]
LEAKS = ("Traceback", 'File "', "psycopg", "OperationalError", "werkzeug", "site-packages")


@contextlib.contextmanager
def serve_with_gunicorn(database_url: str, **env):
    """The app under a real gunicorn on 127.0.0.1 (the way `make serve` runs it); yields its port."""
    port = free_port()
    server = subprocess.Popen(
        # the one configuration (gunicorn.conf.py: limits, worker class), one small worker for a test
        [sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py",
         "--bind", f"127.0.0.1:{port}", "--workers", "1", "--threads", "4", "webapp.wsgi:app"],
        cwd=REPO, env={**os.environ, "DATABASE_URL": database_url, "SLUICE_POOL_MIN": "1", "SLUICE_AUTH": "none", **env},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                request(port, "GET", "/")
                break
            except ConnectionError:
                assert server.poll() is None and time.monotonic() < deadline, "gunicorn did not start"
                time.sleep(0.1)
        yield port
    finally:
        server.terminate()
        server.wait(timeout=30)


def request(port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    """(status, headers, body) of one request over a fresh connection."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


@pytest.fixture(scope="module")
def database(make_database):
    url = make_database()
    insert_records(url, catalog(3))
    return url


@pytest.fixture(scope="module")
def app(database):
    app = create_app({"AUTH": "none", "DATABASE_URL": database, "POOL_MIN": 1})
    yield app
    db.warehouse(app).close()


@pytest.fixture(scope="module")
def gunicorn(database):
    with serve_with_gunicorn(database) as port:
        yield port


def assert_hardened(headers, body: bytes, what: str) -> None:
    assert headers["X-Content-Type-Options"] == "nosniff", what
    directives = [directive.split() for directive in headers["Content-Security-Policy"].split(";")]
    policy = {name: sources for name, *sources in directives}
    assert policy["default-src"] == ["'none'"] and policy["frame-ancestors"] == ["'none'"], what
    assert "Access-Control-Allow-Credentials" not in headers, what
    assert "X-Powered-By" not in headers, what
    if body:
        assert headers["Content-Type"] == "application/json", what
        assert not any(leak in body.decode("utf-8", "replace") for leak in LEAKS), what


# what a client can provoke: every kind of answer the app gives
ANSWERS = [
    ("GET", "/data", {}, None, 200),
    ("GET", "/data/api/item-1", {}, None, 200),
    ("GET", "/data?page=0", {}, None, 400),
    ("GET", "/data/api/nothing", {}, None, 404),
    ("DELETE", "/data", {}, None, 405),
    ("TRACE", "/", {}, None, 405),
    ("GET", "/", {"Content-Type": "application/json"}, b"x" * 70_000, 413),
    ("OPTIONS", "/data", {}, None, 200),
    ("HEAD", "/stats", {}, None, 200),
]


@pytest.mark.parametrize("method, path, headers, body, status", ANSWERS)
def test_every_answer_is_hardened_json(app, method, path, headers, body, status):
    response = app.test_client().open(path, method=method, headers=headers, data=body)
    assert response.status_code == status
    assert_hardened(response.headers, response.get_data(), f"{method} {path}")


def test_not_modified_and_outage_answers_are_hardened(app):
    client = app.test_client()
    etag = client.get("/stats").headers["ETag"]
    response = client.get("/stats", headers={"If-None-Match": etag})
    assert response.status_code == 304
    assert_hardened(response.headers, response.get_data(), "304")
    offline = create_app({"AUTH": "none", "DATABASE_URL": closed_port_url()})
    for path in ("/data", "/health"):
        response = offline.test_client().get(path)
        assert response.status_code == 503
        assert_hardened(response.headers, response.get_data(), path)


def test_a_body_over_the_limit_is_a_413_in_the_json_shape(make_app, database):
    client = make_app(database, MAX_CONTENT_LENGTH=1024).test_client()
    assert client.get("/data", data=b"x" * 1024).status_code == 200  # at the limit: read and ignored
    response = client.get("/data", data=b"x" * 1025)
    assert response.status_code == 413
    assert response.json == {"code": 413, "status": "Request Entity Too Large", "errors": {},
                             "message": "request bodies are limited to 1024 bytes (SLUICE_MAX_CONTENT_LENGTH); "
                                        "this API reads none"}


@pytest.mark.slow
def test_under_gunicorn_no_version_leaks_and_big_bodies_are_refused(gunicorn):
    for method, path, headers, body, status in ANSWERS:
        got, response_headers, response_body = request(gunicorn, method, path, body, headers)
        assert got == status, (method, path)
        assert response_headers["Server"] == "gunicorn", (method, path)  # the name, never a version
        assert_hardened(response_headers, response_body, f"{method} {path}")
    # a chunked upload has no Content-Length: it is cut off while reading, still a JSON 413
    connection = http.client.HTTPConnection("127.0.0.1", gunicorn, timeout=10)
    try:
        connection.request("GET", "/", body=iter([b"x" * 40_000] * 3), encode_chunked=True,
                           headers={"Transfer-Encoding": "chunked"})
        response = connection.getresponse()
        assert (response.status, json.loads(response.read())["code"]) == (413, 413)
    finally:
        connection.close()


CORS = "https://good.example, https://other.example"


@pytest.mark.parametrize("origins, origin, allowed", [
    (CORS, "https://good.example", True),
    (CORS, "https://other.example", True),
    (CORS, "https://evil.example", False),
    (CORS, "https://good.example:8443", False),
    (CORS, "http://good.example", False),
    (CORS, "null", False),
    ("", "https://good.example", False),
    ("*", "https://any.example", True),
])
def test_cors_answers_only_configured_origins_and_never_with_credentials(database, origins, origin, allowed):
    app = create_app({"AUTH": "none", "DATABASE_URL": database, "CORS_ORIGINS": origins})
    client = app.test_client()
    try:
        for response in (
            client.get("/data", headers={"Origin": origin, "Cookie": "session=1"}),
            client.get("/nowhere", headers={"Origin": origin}),
            client.options("/data", headers={"Origin": origin, "Access-Control-Request-Method": "GET",
                                             "Access-Control-Request-Headers": "Authorization"}),
        ):
            assert response.headers.get("Access-Control-Allow-Origin") == (origin if allowed else None)
            assert "Access-Control-Allow-Credentials" not in response.headers
            if allowed:
                assert "Origin" in response.headers.get("Vary", "")  # caches keep one answer per origin
    finally:
        db.warehouse(app).close()


def bandit_command(*targets: str) -> list[str]:
    return [sys.executable, "-m", "bandit", "-r", "-q", "-f", "json", *targets]


def bandit_findings(*targets: str) -> list[str]:
    result = subprocess.run(bandit_command(*targets), cwd=REPO, capture_output=True, text=True, check=False)
    # 1 means findings; anything else (or no report) is bandit failing, e.g. requirements-dev.txt not installed
    assert result.returncode in (0, 1) and result.stdout, result.stderr
    report = json.loads(result.stdout)
    assert not report["errors"], report["errors"]
    return [f"{item['filename']}:{item['line_number']}: {item['test_id']} {item['issue_text']}"
            for item in report["results"]]


def test_bandit_finds_nothing_in_the_web_app_and_the_dags():
    assert bandit_findings("webapp", "dags") == []


def test_bandit_finds_nothing_in_plugins():
    assert bandit_findings("plugins") == []


def test_bandit_finds_nothing_in_the_dev_tools():
    assert bandit_findings("devtools") == []
