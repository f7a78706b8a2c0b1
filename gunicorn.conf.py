"""Gunicorn settings of the read API, the one place for them: `make serve`, `make up` (sluice_devtools/stack.py),
`make demo` (sluice_devtools/demo.py) and docker-compose.yaml all start `gunicorn -c gunicorn.conf.py`.

Environment: SLUICE_BIND (default 127.0.0.1:5000; comma-separated for several), SLUICE_WORKERS (processes,
default 2), SLUICE_THREADS (threads per process, default 8), SLUICE_TLS_CERT and SLUICE_TLS_KEY (PEM files: both
to serve HTTPS, with HSTS; or neither), SLUICE_FORWARDED_ALLOW_IPS (the proxies in front, below),
PROMETHEUS_MULTIPROC_DIR (below). The app reads its own SLUICE_* settings.
"""

import glob
import os
import shutil
import tempfile

# /metrics counts every worker's requests (prometheus_client's multiprocess mode): each worker writes its values to
# files in PROMETHEUS_MULTIPROC_DIR and a scrape sums them. Set before prometheus_client is imported anywhere (it
# picks its mode at import) and before the workers fork. Unset: a private folder, removed when gunicorn exits. Set:
# a folder for this gunicorn alone, emptied of the last run's files at start (their counts would be added again).
_metrics_dir_given = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
if _metrics_dir_given:
    os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)
    for _stale in glob.glob(os.path.join(os.environ["PROMETHEUS_MULTIPROC_DIR"], "*.db")):
        os.remove(_stale)
else:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="sluice-metrics-")

wsgi_app = "webapp.wsgi:app"
bind = os.environ.get("SLUICE_BIND", "127.0.0.1:5000").split(",")

# TLS served by gunicorn itself (Python's defaults: TLS 1.2 or later). Responses over it carry HSTS (webapp/hooks.py).
_tls = {"SLUICE_TLS_CERT": os.environ.get("SLUICE_TLS_CERT"), "SLUICE_TLS_KEY": os.environ.get("SLUICE_TLS_KEY")}
if any(_tls.values()) and not all(_tls.values()):
    raise RuntimeError(f"set both SLUICE_TLS_CERT and SLUICE_TLS_KEY (PEM files) to serve HTTPS, or neither; only "
                       f"{' '.join(name for name, value in _tls.items() if value)} is set")
if all(_tls.values()):
    certfile, keyfile = _tls["SLUICE_TLS_CERT"], _tls["SLUICE_TLS_KEY"]
# A TLS-terminating proxy in front: the addresses (or CIDR networks) it connects from, whose X-Forwarded-Proto
# gunicorn believes, so the app knows the client spoke HTTPS (and sends HSTS); the app believes their
# X-Forwarded-For for the client's address (webapp/proxies.py: rate limits, audit) only when the list is set.
# Anything else that can reach the port could claim either: list only the proxy. Default: this host only.
forwarded_allow_ips = os.environ.get("SLUICE_FORWARDED_ALLOW_IPS", "127.0.0.1,::1")

# Threads, not sync workers: a sync worker is held by one client that sends half a request and stalls, so
# as many slow clients as workers stop the API. A gthread worker parks idle keep-alive connections in its
# poller and gives one thread per request in progress; a stalled client costs one thread out of
# workers x threads. Keep threads <= SLUICE_POOL_MAX (10): each request holds one warehouse connection.
# 2 x 8 on 2 cores: more processes than cores cost CPU per request and served no more (bench/README.md,
# issue 28's sizing table).
# gthread, answering what gunicorn itself refuses (a URL over limit_request_line...) in the JSON error shape
worker_class = "webapp.gunicorn_worker.JsonErrorThreadWorker"
workers = int(os.environ.get("SLUICE_WORKERS", "2"))
threads = int(os.environ.get("SLUICE_THREADS", "8"))
timeout = 30  # a worker whose main loop is stuck this long is restarted
graceful_timeout = 30
keepalive = 5  # seconds an idle connection is kept

# Request limits. limit_request_line stays at gunicorn's maximum (8190): the app answers URLs over its own
# limit (4,096 bytes) with a 414 that says the limit; gunicorn refuses longer request lines with its shorter one.
limit_request_line = 8190
limit_request_fields = 100
limit_request_field_size = 8190

accesslog = "-"  # one line per request on stdout (the app logs its own JSON lines too)
# No control socket (gunicornc): nothing uses it, and every gunicorn of a user would share its default path.
control_socket_disable = True


def child_exit(server, worker):
    """A worker that exited no longer counts in the pool gauges (its counters stay: they are totals)."""
    from prometheus_client import multiprocess
    multiprocess.mark_process_dead(worker.pid)


def when_ready(server):
    server.log.info("metrics of every worker in %s", os.environ["PROMETHEUS_MULTIPROC_DIR"])


def on_exit(server):
    if not _metrics_dir_given:
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"])
