"""Prometheus metrics of the read API: every request by route, method and status with its duration, the pool's
connections and the database errors. Under gunicorn (PROMETHEUS_MULTIPROC_DIR set, gunicorn.conf.py) each worker
writes its values to files in that folder and a scrape sums every worker's; otherwise the app's own registry is
read. Names: tools/prompts/metrics_names.md's, which the alert rules query."""

import os
import time

from flask import current_app, g, request
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess

MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"
DB_ERROR_KINDS = ("unavailable", "timeout", "refused")
POOL_STATES = ("in_use", "idle")
UNMATCHED = "unmatched"  # the route of a request no URL rule matched (404, 405): never the path itself
# HTTP methods by name; any other token a client sends (gunicorn passes them on, the app answers 405) is "other", so
# made-up methods cannot grow the label set either
METHODS = frozenset({"GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"})


class ApiMetrics:
    """The app's metrics, in a registry of its own (so that two apps in one process count apart)."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("sluice_http_requests", "Requests answered, by URL rule, method and status",
                                ("route", "method", "status"), registry=self.registry)
        self.duration = Histogram("sluice_http_request_duration_seconds",
                                  "Time from the first request hook to the response, by URL rule and method",
                                  ("route", "method"), registry=self.registry)
        # livesum: the connections of the workers alive now (a dead worker's file is dropped by child_exit)
        self.pool_connections = Gauge("sluice_db_pool_connections", "Warehouse connections of the pools, by state",
                                      ("state",), multiprocess_mode="livesum", registry=self.registry)
        self.db_errors = Counter("sluice_db_errors", "Requests' database failures answered 503, by kind",
                                 ("kind",), registry=self.registry)
        # every kind and state from the start: rate() and alerts need a series before the first error
        for kind in DB_ERROR_KINDS:
            self.db_errors.labels(kind)
        for state in POOL_STATES:
            self.pool_connections.labels(state)

    def scrape_registry(self) -> CollectorRegistry:
        """A registry for one scrape: every worker's values under gunicorn, this process's otherwise."""
        registry = CollectorRegistry()
        if os.environ.get(MULTIPROCESS_DIR):
            multiprocess.MultiProcessCollector(registry)
        else:
            registry.register(self.registry)
        return registry


def of(app=None) -> ApiMetrics:
    return (app or current_app).extensions["sluice_metrics"]


def _start_clock() -> None:
    g.metrics_started = time.perf_counter()


def _record(response):
    # request.url_rule is set by routing before any hook runs, so a refused request (401, 403, 429) still has its
    # route; only a URL no rule matches is "unmatched", so a scanner's paths cannot grow the label set
    route = request.url_rule.rule if request.url_rule is not None else UNMATCHED
    method = request.method if request.method in METHODS else "other"
    metrics = of()
    metrics.requests.labels(route, method, str(response.status_code)).inc()
    started = g.get("metrics_started")
    if started is not None:
        metrics.duration.labels(route, method).observe(time.perf_counter() - started)
    return response


def init_app(app) -> None:
    """Before every other hook: its clock starts first, and its after_request runs last, on the final status.
    SLUICE_METRICS_ENABLED=false installs no hook (the metrics stay, uncounted but for database errors)."""
    app.extensions["sluice_metrics"] = ApiMetrics()
    if not app.config["METRICS_ENABLED"]:
        return
    app.before_request(_start_clock)
    app.after_request(_record)


def pool_gauge(app):
    """The pool's gauge for the warehouse to keep, None when metrics are off (no write at each checkout)."""
    return of(app).pool_connections if app.config["METRICS_ENABLED"] else None
