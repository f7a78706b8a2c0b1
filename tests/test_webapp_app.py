"""The app factory: configuration, the one error shape, security headers, CORS, the access log, the index."""

import json
import logging

import pytest
from webapp_fixtures import closed_port_url

import sluice
from webapp import create_app, db

LEAKS = ("Traceback", 'File "', "secret detail", "RuntimeError")


@pytest.fixture
def offline_app():
    """An app whose database is down: enough for everything that does not read the warehouse."""
    app = create_app({"AUTH": "none", "DATABASE_URL": closed_port_url()})
    yield app
    db.warehouse(app).close()


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for name in ("DATABASE_URL", "SLUICE_DATABASE_URL", "SLUICE_POOL_MIN", "SLUICE_POOL_MAX",
                 "SLUICE_CORS_ORIGINS", "SLUICE_STATEMENT_TIMEOUT_MS", "SLUICE_MAX_STALENESS_HOURS"):
        monkeypatch.delenv(name, raising=False)


def test_defaults():
    config = create_app({"AUTH": "none", "DATABASE_URL": "postgresql:///x"}).config
    assert {key: config[key] for key in ("POOL_MIN", "POOL_MAX", "STATEMENT_TIMEOUT_MS", "CONNECT_TIMEOUT_SECONDS",
                                         "CORS_ORIGINS", "MAX_STALENESS_HOURS", "MAX_CONTENT_LENGTH")} == {
        "POOL_MIN": 5, "POOL_MAX": 20, "STATEMENT_TIMEOUT_MS": 5000, "CONNECT_TIMEOUT_SECONDS": 2,
        "CORS_ORIGINS": [], "MAX_STALENESS_HOURS": 26.0, "MAX_CONTENT_LENGTH": 65536}


def test_environment_then_config_argument(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql:///plain")
    assert create_app().config["DATABASE_URL"] == "postgresql:///plain"
    monkeypatch.setenv("SLUICE_DATABASE_URL", "postgresql:///prefixed")
    monkeypatch.setenv("SLUICE_POOL_MIN", "2")
    monkeypatch.setenv("SLUICE_POOL_MAX", "7")
    monkeypatch.setenv("SLUICE_CORS_ORIGINS", "https://a.example, https://b.example/")
    config = create_app().config
    assert (config["DATABASE_URL"], config["POOL_MIN"], config["POOL_MAX"], config["CORS_ORIGINS"]) == (
        "postgresql:///prefixed", 2, 7, ["https://a.example", "https://b.example"])
    config = create_app({"AUTH": "none", "DATABASE_URL": "postgresql:///argument", "POOL_MAX": "9"}).config
    assert (config["DATABASE_URL"], config["POOL_MAX"]) == ("postgresql:///argument", 9)


@pytest.mark.parametrize("config, named", [
    ({}, "DATABASE_URL"),
    ({"POOL_MIN": "many"}, "SLUICE_POOL_MIN"),
    ({"POOL_MIN": 5, "POOL_MAX": 2}, "SLUICE_POOL_MAX"),
    ({"POOL_MAX": 2.5}, "SLUICE_POOL_MAX"),
    ({"STATEMENT_TIMEOUT_MS": 0}, "SLUICE_STATEMENT_TIMEOUT_MS"),
    ({"MAX_STALENESS_HOURS": "soon"}, "SLUICE_MAX_STALENESS_HOURS"),
    ({"MAX_STALENESS_HOURS": -1}, "SLUICE_MAX_STALENESS_HOURS"),
    ({"CORS_ORIGINS": "example.com"}, "SLUICE_CORS_ORIGINS"),
    ({"CORS_ORIGINS": "https://*.example.com"}, "SLUICE_CORS_ORIGINS"),
])
def test_bad_settings_fail_at_startup(config, named):
    with pytest.raises(ValueError, match=named):
        create_app({"AUTH": "none", "DATABASE_URL": "postgresql:///x", **config} if named != "DATABASE_URL" else config)


def test_index_lists_every_endpoint(offline_app):
    response = offline_app.test_client().get("/")
    assert response.status_code == 200
    body = response.json
    assert (body["service"], body["version"]) == ("sluice", sluice.__version__)
    assert {endpoint["path"] for endpoint in body["endpoints"]} == {
        "/", "/openapi.json", "/health", "/data", "/data/{source}/{source_id}", "/stats", "/runs",
        "/runs/{run_id}/rejects", "/sources", "/sources/{source}/fields", "/metrics", "/export/{source}"}
    assert all(endpoint["methods"] == ["GET"] and endpoint["summary"] for endpoint in body["endpoints"])


@pytest.mark.parametrize("method, path, code, status", [
    ("GET", "/nowhere", 404, "Not Found"),
    ("GET", "/data/", 404, "Not Found"),
    ("GET", "/data/api", 404, "Not Found"),
    ("POST", "/data", 405, "Method Not Allowed"),
    ("DELETE", "/data/api/1", 405, "Method Not Allowed"),
    ("PUT", "/", 405, "Method Not Allowed"),
    ("GET", "/?verbose=1", 400, "Bad Request"),
])
def test_errors_are_json(offline_app, method, path, code, status):
    response = offline_app.test_client().open(path, method=method)
    assert response.status_code == code
    assert response.content_type == "application/json"
    body = response.json
    assert set(body) == {"code", "status", "message", "errors"}
    assert (body["code"], body["status"]) == (code, status)
    assert body["message"]
    if code == 405:
        assert set(response.headers["Allow"].split(", ")) == {"GET", "HEAD", "OPTIONS"}


def test_unexpected_errors_are_a_json_500_without_details(caplog):
    app = create_app({"AUTH": "none", "DATABASE_URL": closed_port_url()})

    def explode():
        raise RuntimeError("secret detail")

    app.add_url_rule("/explode", view_func=explode)
    with caplog.at_level(logging.ERROR, logger="webapp.errors"):
        response = app.test_client().get("/explode")
    assert response.status_code == 500
    assert response.json == {"code": 500, "status": "Internal Server Error",
                             "message": "internal server error; the details are in the server log", "errors": {}}
    assert not any(leak in response.get_data(as_text=True) for leak in LEAKS)
    assert "secret detail" in caplog.text  # the operator still gets the traceback


@pytest.mark.parametrize("path", ["/", "/nowhere", "/health", "/openapi.json"])
def test_security_headers_on_every_response(offline_app, path):
    headers = offline_app.test_client().get(path).headers
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Content-Security-Policy"] == "default-src 'none'; frame-ancestors 'none'"
    assert "Server" not in headers  # the WSGI server adds its own, without a version under gunicorn


def test_one_access_log_line_per_request(offline_app, caplog):
    client = offline_app.test_client()
    with caplog.at_level(logging.INFO, logger="webapp.access"):
        client.get("/")
        client.get("/nowhere")
    lines = [record for record in caplog.records if record.name == "webapp.access"]
    assert [(json.loads(line.getMessage())["path"], line.status) for line in lines] == [("/", 200), ("/nowhere", 404)]
    first = json.loads(lines[0].getMessage())
    assert set(first) == {"method", "path", "status", "duration_ms"}
    assert first["method"] == "GET" and first["duration_ms"] >= 0


CORS_CONFIG = {"DATABASE_URL": "postgresql:///x", "CORS_ORIGINS": "https://good.example,https://other.example"}


@pytest.mark.parametrize("config, origin, allowed", [
    (CORS_CONFIG, "https://good.example", "https://good.example"),
    (CORS_CONFIG, "https://other.example", "https://other.example"),
    (CORS_CONFIG, "https://evil.example", None),
    (CORS_CONFIG, "https://good.example.evil", None),
    ({"DATABASE_URL": "postgresql:///x"}, "https://good.example", None),  # CORS off by default
    ({"DATABASE_URL": "postgresql:///x", "CORS_ORIGINS": "*"}, "https://any.example", "https://any.example"),
])
def test_cors(config, origin, allowed):
    client = create_app(config).test_client()
    headers = client.get("/", headers={"Origin": origin}).headers
    assert headers.get("Access-Control-Allow-Origin") == allowed
    assert "Access-Control-Allow-Credentials" not in headers  # never, so "*" never pairs with cookies
    preflight = client.options("/data", headers={"Origin": origin, "Access-Control-Request-Method": "GET"})
    assert preflight.headers.get("Access-Control-Allow-Origin") == allowed
    if allowed:
        assert "GET" in preflight.headers["Access-Control-Allow-Methods"]
        assert "POST" not in preflight.headers["Access-Control-Allow-Methods"]
        assert "ETag" in headers["Access-Control-Expose-Headers"]
