"""Traces of the read API (webapp/tracing.py), received by a real OTLP/HTTP endpoint on loopback: a server span per
request with child database spans, its ids in the access and audit lines, no secret in any span; nothing at all
when no endpoint is set."""

import json
import logging
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from auth_fixtures import bearer, create_key
from otlp_receiver import attributes, receiver  # noqa: F401 (receiver is a fixture)
from webapp_fixtures import catalog, free_port, insert_records, make_app  # noqa: F401 (make_app is a fixture)

from webapp import tracing

REPO = Path(__file__).resolve().parents[1]
CLIENT_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN_ID = "00f067aa0ba902b7"
QUERY_SECRET = "s3cr3t-in-a-query-string"


def exporter_threads() -> list[str]:
    return [thread.name for thread in threading.enumerate() if thread.name.startswith("OtelBatch")]


def test_a_data_request_is_traced_into_the_database_and_logged_with_its_trace_id(
        make_app, database_url, receiver, monkeypatch, caplog):  # noqa: F811
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
    caplog.set_level(logging.INFO)
    insert_records(database_url, catalog(5))
    app = make_app(database_url, AUTH="keys")
    key = create_key(app, "reporting", "api")
    client = app.test_client()
    try:
        # the caller's traceparent: the request joins the caller's trace
        answered = client.get("/data?page_size=2", headers={
            **bearer(key), "traceparent": f"00-{CLIENT_TRACE_ID}-{CLIENT_SPAN_ID}-01"})
        refused = client.get(f"/data?api_key={QUERY_SECRET}", headers=bearer(key))
        tracing.provider(app).force_flush()
    finally:
        tracing.provider(app).shutdown()
    assert (answered.status_code, refused.status_code) == (200, 400)

    assert set(receiver.paths) == {"/v1/traces"}
    received = receiver.spans()
    assert {resource["service.name"] for resource, _ in received} == {"sluice-api"}
    spans = [span for _, span in received]
    servers = [span for span in spans if span.kind == span.SPAN_KIND_SERVER]
    assert len(servers) == 2
    data = next(span for span in servers if attributes(span)["http.response.status_code"] == 200)
    assert data.name == "GET /data"
    assert {k: attributes(data)[k] for k in ("http.request.method", "http.route", "url.path")} == {
        "http.request.method": "GET", "http.route": "/data", "url.path": "/data"}
    assert (data.trace_id.hex(), data.parent_span_id.hex()) == (CLIENT_TRACE_ID, CLIENT_SPAN_ID)

    queries = [span for span in spans if span.parent_span_id == data.span_id]
    # the key's lookup and its last use (unless cached), then /data's one round trip: no other statement
    assert [attributes(query)["db.operation.name"] for query in queries][-1:] == ["data_answer"]
    assert {attributes(query)["db.operation.name"] for query in queries} <= {
        "api_key_by_hash", "api_key_touch", "data_answer"}
    for query in queries:
        assert query.kind == query.SPAN_KIND_CLIENT and query.trace_id == data.trace_id
        assert attributes(query)["db.system"] == "postgresql"
        assert query.start_time_unix_nano >= data.start_time_unix_nano
        assert query.end_time_unix_nano <= data.end_time_unix_nano
    # the watermark, the page and its total in one statement
    (page,) = [query for query in queries if attributes(query)["db.operation.name"] == "data_answer"]
    statement = attributes(page)["db.statement"]
    assert "sluice_read_watermark()" in statement and "from normalized_data" in statement
    assert "%(scope_token)s" in statement  # placeholders, no values

    # the refused request is traced too, under its route, without its query string
    (bad,) = [span for span in servers if span is not data]
    assert (attributes(bad)["http.route"], attributes(bad)["http.response.status_code"]) == ("/data", 400)
    everything = b"".join(receiver.bodies)
    for secret in (key.encode(), key[len("sluice_"):].encode(), QUERY_SECRET.encode(), b"Bearer"):
        assert secret not in everything

    access = [json.loads(r.getMessage()) for r in caplog.records if r.name == "webapp.access"]
    audit = [json.loads(r.getMessage()) for r in caplog.records if r.name == "sluice.audit"]
    assert (access[0]["trace_id"], access[0]["span_id"]) == (CLIENT_TRACE_ID, data.span_id.hex())
    assert access[1]["trace_id"] == bad.trace_id.hex()
    (read, _) = [line for line in audit if line["event"] == "request"]
    assert (read["trace_id"], read["span_id"]) == (CLIENT_TRACE_ID, data.span_id.hex())


def test_without_an_endpoint_nothing_is_traced_and_no_exporter_thread_starts(
        make_app, database_url, monkeypatch, caplog):  # noqa: F811
    for name in tracing.ENDPOINT_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    caplog.set_level(logging.INFO, logger="webapp.access")
    threads_before = exporter_threads()
    app = make_app(database_url)
    response = app.test_client().get("/data", headers={"traceparent": f"00-{CLIENT_TRACE_ID}-{CLIENT_SPAN_ID}-01"})
    assert response.status_code == 200
    assert tracing.provider(app) is None and exporter_threads() == threads_before
    (line,) = [json.loads(r.getMessage()) for r in caplog.records if r.name == "webapp.access"]
    assert "trace_id" not in line and "span_id" not in line  # a caller's traceparent is not taken up


@pytest.mark.slow
def test_gunicorn_workers_export_their_spans_and_flush_them_on_shutdown(database_url, receiver):
    insert_records(database_url, catalog(3))
    port = free_port()
    # A batch delay longer than the test: whatever arrives was flushed by the workers' shutdown.
    env = {**os.environ, "DATABASE_URL": database_url, "SLUICE_POOL_MIN": "1", "SLUICE_AUTH": "none",
           "SLUICE_BIND": f"127.0.0.1:{port}", "SLUICE_WORKERS": "2", "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
           "OTEL_BSP_SCHEDULE_DELAY": "600000"}
    server = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py"], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/data", timeout=5) as response:
                    assert response.status == 200
                break
            except (urllib.error.URLError, ConnectionError):
                assert server.poll() is None and time.monotonic() < deadline, "gunicorn did not start"
                time.sleep(0.2)
        for _ in range(5):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/data?page_size=1", timeout=5) as response:
                assert response.status == 200
        assert receiver.bodies == []  # nothing yet: the batch waits
    finally:
        server.terminate()
        output, _ = server.communicate(timeout=30)
    logged = {json.loads(line[line.index("{"):])["trace_id"] for line in output.splitlines()
              if "webapp.access" in line}
    servers = [span for _, span in receiver.spans() if span.kind == span.SPAN_KIND_SERVER]
    assert len(logged) == 6 and {span.trace_id.hex() for span in servers} == logged
