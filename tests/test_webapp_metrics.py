"""/metrics (issue 25): every request counted by URL rule, method and status, refusals included; the operations scope
needed under API keys; the pool and database errors; the pipeline's gauges equal to what /sources and /runs say
after real runs of etl_pipeline (one refused by the delete guard); every gunicorn worker counted."""

import os
import re
import subprocess
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import promql_names
import pytest
from auth_fixtures import bearer, create_key
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from test_deletes import items_csv, pipeline_run  # noqa: F401
from webapp_fixtures import catalog, closed_port_url, free_port, insert_records, make_app  # noqa: F401

from sluice_devtools import demo, sample_data
from webapp import metrics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def samples(text: str, name: str) -> dict[tuple, float]:
    """The samples of one metric (a counter's _total, a histogram's _count...) by their labels' values."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def requests_by_route(text: str) -> dict[tuple, float]:
    counted = samples(text, "sluice_http_requests_total")
    return {(labels["route"], labels["method"], labels["status"]): value
            for labels, value in ((dict(key), value) for key, value in counted.items())}


def test_requests_are_counted_per_route_and_status_and_metrics_need_the_operations_scope(make_app, database_url):
    insert_records(database_url, catalog(3))
    app = make_app(database_url, AUTH="keys", RATELIMIT_HEALTH="2 per minute")
    reader = bearer(create_key(app, "reader", "*"))
    scraper = bearer(create_key(app, "prometheus", "*", "--operations"))
    client = app.test_client()
    sent = Counter()

    def send(path: str, headers: dict, status: int, route: str) -> None:
        assert client.get(path, headers=headers).status_code == status, path
        sent[(route, "GET", str(status))] += 1

    for _ in range(3):
        send("/data", reader, 200, "/data")
    send("/data/api/item-1", reader, 200, "/data/<source>/<id:source_id>")
    send("/data/api/no-such-id", reader, 404, "/data/<source>/<id:source_id>")
    send("/data?page_size=0", reader, 400, "/data")
    send("/data", {}, 401, "/data")
    send("/runs", reader, 403, "/runs")
    send("/no/such/path", reader, 404, "unmatched")  # never the path: a scanner cannot grow the label set
    send("/metrics", {}, 401, "/metrics")
    send("/health", {}, 503, "/health")  # no run yet
    send("/health", {}, 503, "/health")
    send("/health", {}, 429, "/health")  # over its budget
    for made_up in ("BREW", "BREW2", "X" * 20):  # nor a made-up method
        assert client.open("/data", method=made_up, headers=reader).status_code == 405
    sent[("unmatched", "other", "405")] += 3
    send("/metrics", reader, 403, "/metrics")  # a key without the operations scope

    response = client.get("/metrics", headers=scraper)

    assert response.status_code == 200
    assert response.content_type == "text/plain; version=0.0.4; charset=utf-8"
    text = response.get_data(as_text=True)
    assert requests_by_route(text) == dict(sent)  # the scrape itself is counted once it has answered
    durations = samples(text, "sluice_http_request_duration_seconds_count")
    assert durations[(("method", "GET"), ("route", "/data"))] == 5
    # the scrape's own connection is lent out; the rest of the POOL_MIN (5) opened at first use wait
    assert samples(text, "sluice_db_pool_connections") == {(("state", "in_use"),): 1, (("state", "idle"),): 4}
    assert set(samples(text, "sluice_db_errors_total").values()) == {0}
    assert "reader" not in text and "prometheus" not in text  # no principal, key or path in any label
    again = client.get("/metrics", headers=scraper).get_data(as_text=True)
    assert requests_by_route(again)[("/metrics", "GET", "200")] == 1


def test_metrics_switched_off_count_nothing_and_serve_no_metrics(make_app, database_url):
    # SLUICE_METRICS_ENABLED=false: the bench's baseline for what counting costs, and a deployment without Prometheus
    insert_records(database_url, catalog(3))
    app = make_app(database_url, METRICS_ENABLED=False)
    client = app.test_client()
    assert client.get("/data").status_code == 200

    response = client.get("/metrics")

    assert response.status_code == 404 and response.is_json
    text = generate_latest(metrics.of(app).registry).decode()
    assert requests_by_route(text) == {}
    assert set(samples(text, "sluice_db_pool_connections").values()) == {0}  # the pool's checkouts not kept either
    with pytest.raises(ValueError, match="SLUICE_METRICS_ENABLED='yes' must be true or false"):
        make_app(database_url, METRICS_ENABLED="yes")


def test_a_warehouse_that_cannot_be_reached_is_counted_and_metrics_still_answer(make_app):
    client = make_app(closed_port_url()).test_client()
    assert client.get("/data").status_code == 503

    response = client.get("/metrics")

    assert response.status_code == 200  # the API's own metrics, without the pipeline's gauges
    text = response.get_data(as_text=True)
    assert requests_by_route(text) == {("/data", "GET", "503"): 1}
    errors = samples(text, "sluice_db_errors_total")
    assert errors == {(("kind", "unavailable"),): 2, (("kind", "refused"),): 0, (("kind", "timeout"),): 0}
    assert "sluice_source_" not in text and "sluice_last_run" not in text


ITEMS = {"name": "items", "kind": "csv", "endpoint": "items.csv"}
POSTS = {"name": "posts", "kind": "api", "endpoint": "posts"}


def test_pipeline_gauges_equal_sources_and_runs_after_real_runs(pipeline_run, make_app):  # noqa: F811
    pipeline = pipeline_run
    state, first = pipeline.run({"sources": [ITEMS, POSTS]})
    assert state == "success", first["error_message"]
    pipeline.sources.serve_bytes("items.csv", items_csv(range(1, 4)))  # 7 of 10 gone: the delete guard refuses
    pipeline.sources.serve_json("posts", sample_data.posts(12), page_size=4)  # 2 new posts
    state, second = pipeline.run({"sources": [ITEMS, POSTS]})
    assert state == "failed" and "DeleteRefused" in second["error_message"]
    client = make_app(pipeline.database_url, MAX_STALENESS_HOURS=2).test_client()
    sources = {source["name"]: source for source in client.get("/sources").json["data"]}
    runs = client.get("/runs").json["data"]

    text = client.get("/metrics").get_data(as_text=True)

    def gauge(name: str) -> dict:
        return {dict(labels)["source"]: value for labels, value in samples(text, name).items()}

    assert gauge("sluice_source_live_rows") == {name: source["row_count"] for name, source in sources.items()}
    assert gauge("sluice_source_live_rows") == {"items": 10, "posts": 12}
    assert gauge("sluice_source_last_success_timestamp_seconds") == pytest.approx(
        {name: _epoch(source["last_success"]["at"]) for name, source in sources.items()})
    assert gauge("sluice_source_last_run_failed") == {"items": 1, "posts": 0}
    assert gauge("sluice_source_deletes_refused") == {"items": 1, "posts": 0}
    assert gauge("sluice_source_staleness_limit_seconds") == {"items": 7200, "posts": 7200}
    rows = {(dict(labels)["source"], dict(labels)["outcome"]): value
            for labels, value in samples(text, "sluice_source_last_run_rows").items()}
    newest = runs[0]["source_counts"]
    assert rows == {(source, outcome): newest[source][outcome] for source in ("items", "posts")
                    for outcome in ("fetched", "inserted", "updated", "unchanged", "rejected", "deleted")}
    assert rows[("posts", "inserted")] == 2 and rows[("items", "fetched")] == 3 and rows[("items", "deleted")] == 0
    assert samples(text, "sluice_last_run_success") == {(): 0}
    assert samples(text, "sluice_last_run_duration_seconds") == {(): pytest.approx(runs[0]["duration_seconds"])}

    # every Sluice series an alert rule or a dashboard panel queries is one the API exports, once it has served
    # requests (a renamed metric would silence its alert or blank its panel); Airflow's: test_airflow_telemetry
    families = list(text_string_to_metric_families(text))  # a histogram's name and its _bucket series both count
    exported = {family.name for family in families} | {sample.name for family in families for sample in family.samples}
    for name, expressions in promql_names.every_expression().items():
        queried = {metric for metric in promql_names.queried(expressions) if metric.startswith("sluice_")}
        assert queried and not promql_names.unexported(queried, exported), (name, promql_names.unexported(queried, exported))
    renamed = (promql_names.DASHBOARDS / "api-traffic.json").read_text().replace(
        "sluice_db_pool_connections", "sluice_db_pool_connection")
    assert promql_names.unexported(promql_names.queried(promql_names.dashboard_expressions(renamed)), exported) == [
        "sluice_db_pool_connection"]


def _epoch(at: str) -> float:
    return datetime.fromisoformat(at.replace("Z", "+00:00")).timestamp()


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


@pytest.mark.slow
def test_every_gunicorn_worker_is_counted(database_url, tmp_path):
    insert_records(database_url, catalog(3))
    port = free_port()
    env = {**os.environ, "DATABASE_URL": database_url, "SLUICE_BIND": f"127.0.0.1:{port}", "SLUICE_WORKERS": "2",
           "SLUICE_POOL_MIN": "1", "SLUICE_AUTH": "none"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # gunicorn.conf.py makes a private folder
    log = tmp_path / "gunicorn.log"
    with open(log, "w") as output:
        server = subprocess.Popen(demo.gunicorn_argv(), cwd=REPO, env=env, stdout=output, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                _get(f"{base}/openapi.json")
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "gunicorn did not start"
                time.sleep(0.2)
        sent = Counter({("/openapi.json", "GET", "200"): 1})
        requests = [("/data", "/data", 200)] * 40 + [("/data?page_size=0", "/data", 400)] * 7 \
            + [("/stats", "/stats", 200)] * 11 + [("/nowhere", "unmatched", 404)] * 5
        # 8 at a time, each on a connection of its own: both workers take some
        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(lambda request: _get(f"{base}{request[0]}")[0], requests))
        assert statuses == [status for _, _, status in requests]
        sent.update((route, "GET", str(status)) for _, route, status in requests)
        folder = re.search(r"metrics of every worker in (\S+)", log.read_text()).group(1)
        workers = {re.search(r"_(\d+)\.db$", name).group(1) for name in os.listdir(folder)
                   if name.startswith("counter_")}
        assert len(workers) == 2, f"one worker took every request: {workers}"

        scrapes = [_get(f"{base}/metrics")[1] for _ in range(4)]

        for earlier, text in enumerate(scrapes):  # whichever worker answers, it counts both workers' requests
            counted = requests_by_route(text)
            assert counted.pop(("/metrics", "GET", "200"), 0) == earlier
            assert counted == dict(sent)
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert "Traceback" not in log.read_text(), log.read_text()
    assert not os.path.exists(folder)  # the private folder goes with gunicorn
