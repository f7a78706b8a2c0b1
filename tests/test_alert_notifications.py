"""Alerts that reach a person: whole runs of etl_pipeline posting to a real webhook receiver on 127.0.0.1
(connection etl_alerts), and a receiver that fails never changing the run's outcome."""

import json
import logging
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote

import pytest
import requests

from sluice import alerts, settings
from sluice_devtools import sample_data
from sluice_devtools.source_server import Fault
from sluice.failures import Failure
from tests.pipeline_harness import Pipeline, point_airflow_at, start_sources

SECRETS = ("s3cret", "abc123", "hunter2")
BASE_URL = "https://airflow.example.com/ui"


class Receiver:
    """A webhook receiver: records each POST's JSON body; answers `status` after `delay` seconds."""

    def __init__(self, status: int = 200, delay: float = 0, endless: bool = False):
        self.bodies, self.status, self.delay, self.endless = [], status, delay, endless
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                receiver.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                time.sleep(receiver.delay)
                self.send_response(receiver.status)
                self.send_header("Content-Length", str(10**9 if receiver.endless else 0))
                self.end_headers()
                while receiver.endless:  # a byte every 0.1 s: no read timeout ever fires
                    self.wfile.write(b" ")
                    self.wfile.flush()
                    time.sleep(0.1)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hooks/team-etl"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class Lines(logging.Handler):
    """The lines of one logger, whatever Airflow's logging setup does with its output (dag.test reconfigures it)."""

    def __init__(self, name: str):
        super().__init__()
        self.lines, self.logger = [], logging.getLogger(name)

    def emit(self, record):
        self.lines.append(record.getMessage())

    def __enter__(self):
        self.logger.addHandler(self)
        return self.lines

    def __exit__(self, *exc):
        self.logger.removeHandler(self)


def webhook(monkeypatch, url: str) -> None:
    # the JSON form of a connection: a host holding the whole URL is HttpHook's base URL, path included
    monkeypatch.setenv("AIRFLOW_CONN_ETL_ALERTS", json.dumps({"conn_type": "http", "host": url}))


@pytest.fixture
def pipeline(monkeypatch, database_url, tmp_path):
    sources = start_sources(api_records=10, csv_rows=10, bad_every=50)
    point_airflow_at(monkeypatch, database_url, sources, tmp_path / "staging")
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", BASE_URL)
    monkeypatch.setenv("SLUICE_ALERT_TIMEOUT", "0.5")
    # the api source's first page links to a next page whose URL carries a login, a token and a password
    host = sources.url.removeprefix("http://")
    first_page = Fault(body=json.dumps(sample_data.posts(10)).encode(), headers={
        "Content-Type": "application/json",
        "Link": f'<http://user:s3cret@{host}/gone?token=abc123&password=hunter2>; rel="next"'})
    sources.add_faults("posts", first_page, first_page)  # the task's retry reads it again
    yield Pipeline(database_url, sources)
    sources.stop()


@pytest.mark.slow
def test_a_failing_source_sends_one_webhook_naming_source_step_masked_error_run_link_and_staleness(
        pipeline, monkeypatch):
    receiver = Receiver()
    webhook(monkeypatch, receiver.url)
    # api loaded last 30 hours ago (more than SLUICE_MAX_STALENESS_HOURS' 26): it fails now, so it is stale too
    pipeline.rows("insert into etl_checkpoint (source, last_success_at) values ('api', now() - interval '30 hours')"
                  " returning source")
    try:
        state, run = pipeline.run()
    finally:
        receiver.stop()

    assert state == "failed" and run["status"] == "failed"
    assert len(receiver.bodies) == 1, receiver.bodies
    body = receiver.bodies[0]
    assert body["run_url"] == f"{BASE_URL}/dags/etl_pipeline/runs/{quote(run['run_id'], safe='')}"
    assert [(a["kind"], a["source"], a["step"]) for a in body["alerts"]] == [
        ("failed", "api", "ingest"), ("stale", "api", None)]  # csv loaded: no alert for it
    host = pipeline.sources.url.removeprefix("http://")
    assert f"GET http://{host}/gone answered 404" in body["alerts"][0]["error"]
    assert "more than 26 hours" in body["alerts"][1]["error"]
    assert "failed: api, step ingest:" in body["text"] and body["run_url"] in body["text"]
    leaked = [secret for secret in SECRETS if secret in json.dumps(body)]
    assert not leaked, f"{leaked} in {body}"


@pytest.mark.slow
@pytest.mark.parametrize("receiver_fails", ["answers 500", "is down", "is slow", "is not configured"])
def test_a_webhook_that_fails_leaves_the_run_as_it_was_and_says_so(pipeline, monkeypatch, receiver_fails):
    receiver = Receiver(status=500 if receiver_fails == "answers 500" else 200,
                        delay=3 if receiver_fails == "is slow" else 0)
    if receiver_fails != "is not configured":
        webhook(monkeypatch, receiver.url)
    if receiver_fails == "is down":
        receiver.stop()
    try:
        with Lines("sluice.airflow_edge") as lines:
            state, run = pipeline.run()
    finally:
        if receiver_fails != "is down":
            receiver.stop()

    # the run's own outcome: api failed, csv loaded, recorded as failed by record_run, not by the notifier
    assert state == "failed" and run["status"] == "failed"
    assert run["error_message"].startswith("ingest[api]: ") and run["source_counts"]["csv"]["loaded"]
    expected = {"answers 500": "1 alerts NOT sent to connection etl_alerts (answered 500)",
                "is down": "1 alerts NOT sent to connection etl_alerts (ConnectionError)",
                # it would answer 200 after 3 s: SLUICE_ALERT_TIMEOUT (0.5 s) gave up first
                "is slow": "1 alerts NOT sent to connection etl_alerts (ReadTimeout)",
                "is not configured": "1 alerts, not sent: connection etl_alerts is not defined"}[receiver_fails]
    assert expected + ("; the run's outcome is unchanged" if "NOT" in expected else "") in lines


def test_alerts_of_a_run_name_refused_deletes_apart_from_failures():
    failures = [Failure(step="upsert", source="customers", error_class="DeleteRefused", message="DeleteRefused: 90%"),
                Failure(step="ingest", source="api", error_class="SourceError", message="SourceError: 503")]
    stale = [("csv", datetime(2026, 12, 1, 6, tzinfo=timezone.utc))]

    found = alerts.of_run(failures, stale, staleness_hours=26)

    assert [(a.kind, a.source, a.step) for a in found] == [
        ("deletes_refused", "customers", "upsert"), ("failed", "api", "ingest"), ("stale", "csv", None)]
    assert found[2].error == "no successful load since 2026-12-01T06:00:00+00:00, more than 26 hours " \
                             "(SLUICE_MAX_STALENESS_HOURS)"
    assert alerts.run_url("http://h:8080/", "etl_pipeline", "manual__2026-12-07T10:00:00+00:00") == \
        "http://h:8080/dags/etl_pipeline/runs/manual__2026-12-07T10%3A00%3A00%2B00%3A00"


@pytest.mark.parametrize("name", ["SLUICE_ALERT_TIMEOUT", "SLUICE_MAX_STALENESS_HOURS"])
@pytest.mark.parametrize("value", ["0", "-1", "soon"])
def test_an_alert_setting_that_is_not_a_positive_number_is_refused_naming_it(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=name):
        settings.load()


def test_a_receiver_that_answers_forever_does_not_hold_the_sender():
    receiver = Receiver(endless=True)
    sender = threading.Thread(target=alerts.send, args=(requests.Session(), receiver.url, {"text": "x"}),
                              kwargs={"timeout": 0.5}, daemon=True)
    try:
        sender.start()
        sender.join(timeout=3)
        assert not sender.is_alive(), "send is still reading an answer that never ends"
    finally:
        receiver.endless = False
        receiver.stop()
    assert receiver.bodies == [{"text": "x"}]
