"""The read API under load: gunicorn serving webapp on 127.0.0.1, wrk as the client, Postgres alone beside it.

For each endpoint: wrk's req/s and p50/p99 (bounded time, loopback only), the median of serial requests
(one client, no queueing), and what the same request's queries cost in Postgres alone: the app's own
named queries with the app's own parameters, captured by running the request once through the Flask test
client, then run directly and under EXPLAIN (ANALYZE, TIMING OFF). Serial median minus the direct run is
the web layer's share.
"""

import contextlib
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import psycopg2
import psycopg2.extras
import psycopg2.sql

from bench.child import REPO, child_env

UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}
_DURATION = re.compile(r"([\d.]+)(us|ms|s|m)\b")


@dataclass
class EndpointResult:
    label: str
    path: str
    rows: int  # rows in normalized_data behind it
    requests_per_second: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    failures: int = 0  # non-2xx/3xx responses and socket errors under wrk
    serial_ms: float | None = None
    postgres_ms: float | None = None  # the request's queries run directly, client-timed
    explain_ms: float | None = None  # the same, planning + execution from EXPLAIN (ANALYZE)
    queries: list[str] = field(default_factory=list)

    @property
    def web_ms(self) -> float | None:
        if self.serial_ms is None or self.postgres_ms is None:
            return None
        return self.serial_ms - self.postgres_ms


def ensure_wrk(echo=print) -> str | None:
    """Path of wrk; installs the Debian package when running as root and it is missing."""
    if shutil.which("wrk"):
        return shutil.which("wrk")
    if os.geteuid() == 0 and shutil.which("apt-get"):
        echo("  installing wrk (apt-get install -y wrk) …")
        for command in (["apt-get", "install", "-y", "-qq", "wrk"], ["apt-get", "update", "-qq"],
                        ["apt-get", "install", "-y", "-qq", "wrk"]):
            subprocess.run(command, capture_output=True)
            if shutil.which("wrk"):
                break
    return shutil.which("wrk")


# (label, authentication, row-level security): the first is the baseline of the others' ratios
ACCESS_MODES = (("no auth, no RLS", False, False), ("no auth, RLS", False, True), ("API key, no RLS", True, False),
                ("API key, RLS", True, True))


@dataclass
class AccessComparison:
    """One request under load served four ways in a run: without and with an API key (SLUICE_AUTH none or keys),
    as the owner (row-level security bypassed) and as the read-only role (the policies evaluated, as deployed)."""

    label: str
    path: str
    measured: dict  # ACCESS_MODES label -> requests_per_second, p50_ms, p99_ms, failures

    def ratio(self, mode: str, key: str) -> float | None:
        base, value = self.measured.get(ACCESS_MODES[0][0], {}).get(key), self.measured.get(mode, {}).get(key)
        return value / base if base and value is not None else None


# (label, metrics on, traces exported): the first is the baseline of the others' ratios
OBSERVABILITY_MODES = (("off", False, False), ("metrics", True, False), ("metrics + tracing", True, True))


@dataclass
class ObservabilityComparison:
    """One request under load with metrics and tracing off (SLUICE_METRICS_ENABLED=false, no OTLP endpoint), with
    metrics on (as deployed), and with traces exported too (OTLP/HTTP to a receiver on loopback)."""

    label: str
    path: str
    measured: dict  # OBSERVABILITY_MODES label -> requests_per_second, p50_ms, p99_ms, failures, spans

    def ratio(self, mode: str, key: str) -> float | None:
        base = self.measured.get(OBSERVABILITY_MODES[0][0], {}).get(key)
        value = self.measured.get(mode, {}).get(key)
        return value / base if base and value is not None else None


def compare_observability(db: str, endpoints: list[tuple[str, str]], options: "LoadOptions", log_path: Path,
                          echo=print) -> list[ObservabilityComparison]:
    """wrk on each endpoint in each of OBSERVABILITY_MODES, back to back per endpoint (same run, same rows); open
    access as the owner, so only what is switched differs."""
    from bench import otlp_sink

    comparisons = []
    with otlp_sink.running() as sink:
        for label, path in endpoints:
            measured = {}
            for mode, metrics_on, traced in OBSERVABILITY_MODES:
                env = {"SLUICE_METRICS_ENABLED": "true" if metrics_on else "false",
                       "OTEL_EXPORTER_OTLP_ENDPOINT": sink.url if traced else "",
                       "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": ""}
                spans_before = sink.spans()
                with gunicorn(db, workers=options.workers, log_path=log_path, env=env) as base:
                    status, _ = get(base + path)
                    if status >= 400:
                        raise RuntimeError(f"GET {path} ({mode}) answered {status}; see {log_path}")
                    measured[mode] = run_wrk(options.wrk, base + path, seconds=options.seconds,
                                             threads=options.threads, connections=options.connections)
                # counted once gunicorn has stopped: each worker flushes its last batch on the way out
                measured[mode]["spans"] = sink.spans() - spans_before
                if traced and not measured[mode]["spans"]:
                    raise RuntimeError(f"tracing on, but the OTLP receiver got no span; see {log_path}")
            comparison = ObservabilityComparison(label, path, measured)
            echo(f"  observability {label:<17} " + " | ".join(
                f"{mode}: {result['requests_per_second']:.0f} req/s p99 {result['p99_ms']:.1f} ms"
                for mode, result in measured.items()))
            comparisons.append(comparison)
    return comparisons


def reader_access(db: str) -> str:
    """The reader role's URL for db, with the scope key installed and in this process's environment, which every
    app and gunicorn the bench starts reads (the owner's app needs the key too: it signs its scope the same way)."""
    from sluice_devtools import reader_role

    environment = reader_role.api_environment(db)
    os.environ["SLUICE_SCOPE_KEY"] = environment["SLUICE_SCOPE_KEY"]
    return environment["DATABASE_URL"]


def create_key(db: str) -> str:
    """An API key for every source, made as users make one (`flask --app webapp keys create`, as db's owner)."""
    command = [str(Path(sys.executable).parent / "flask"), "--app", "webapp", "keys", "create", "--name",
               f"bench-{time.time_ns()}", "--sources", "*", "--expires", "1d"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False,
                          env=child_env({"DATABASE_URL": db, "SLUICE_ADMIN_DATABASE_URL": db}))
    if done.returncode != 0:
        raise RuntimeError(f"flask --app webapp keys create failed: {done.stderr.strip()}")
    return done.stdout.strip()


def compare_access(db: str, reader_db: str, endpoints: list[tuple[str, str]], options: "LoadOptions",
                   log_path: Path, echo=print) -> list[AccessComparison]:
    """wrk on each endpoint in each of ACCESS_MODES, back to back per endpoint (same run, same rows)."""
    key = create_key(db)
    comparisons = []
    for label, path in endpoints:
        measured = {}
        for mode, authenticated, rls in ACCESS_MODES:
            headers = {"Authorization": f"Bearer {key}"} if authenticated else {}
            with gunicorn(reader_db if rls else db, workers=options.workers, log_path=log_path,
                          auth="keys" if authenticated else "none") as base:
                status, _ = get(base + path, headers)
                if status >= 400:
                    raise RuntimeError(f"GET {path} ({mode}) answered {status}; see {log_path}")
                measured[mode] = run_wrk(options.wrk, base + path, seconds=options.seconds, threads=options.threads,
                                         connections=options.connections, headers=headers)
        comparison = AccessComparison(label, path, measured)
        echo(f"  access {label:<24} " + " | ".join(
            f"{mode}: {result['requests_per_second']:.0f} req/s p99 {result['p99_ms']:.1f} ms"
            for mode, result in measured.items()))
        comparisons.append(comparison)
    return comparisons


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def gunicorn(db: str, *, workers: int, log_path: Path, auth: str = "none", env: dict | None = None,
             with_process: bool = False):
    """`make serve`'s command against db on a free loopback port, with SLUICE_AUTH=auth and `env` on top of the
    bench's environment; yields the base URL (and the gunicorn process, with_process: the export bench reads its
    worker's memory)."""
    port = _free_port()
    command = [str(Path(sys.executable).parent / "gunicorn"), "--bind", f"127.0.0.1:{port}",
               "--workers", str(workers), "webapp.wsgi:app"]
    # open by default (SLUICE_AUTH=none): the queries' latency, as before authentication (issue 24) existed; rate
    # limits on, as deployed (their cost is in every request), with budgets wrk cannot spend
    env = child_env({"DATABASE_URL": db, "SLUICE_LOG_LEVEL": "WARNING", "SLUICE_AUTH": auth,
                     "SLUICE_RATELIMIT_ANONYMOUS": "1000000000 per hour",
                     "SLUICE_RATELIMIT_DEFAULT": "1000000000 per hour", "SLUICE_RATELIMIT_HEALTH": "1000000000 per hour",
                     **(env or {})})
    base = f"http://127.0.0.1:{port}"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_until_up(base, process, log_path)
            yield (base, process) if with_process else base
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_until_up(base: str, process, log_path: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {process.returncode}; see {log_path}")
        try:
            get(base + "/health")
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"gunicorn did not answer /health within {timeout:.0f}s; see {log_path}")


def get(url: str, headers: dict | None = None) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:  # 503 from /health is an answer too
        return error.code, error.read()


def serial_median_ms(url: str, count: int) -> float:
    times = []
    for _ in range(count):
        start = time.perf_counter()
        get(url)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def run_wrk(wrk: str, url: str, *, seconds: int, threads: int, connections: int, headers: dict | None = None) -> dict:
    command = [wrk, f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "5s",
               *(argument for name, value in (headers or {}).items() for argument in ("-H", f"{name}: {value}")), url]
    output = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60).stdout
    return parse_wrk(output)


def _ms(text: str) -> float:
    number, unit = _DURATION.search(text).groups()
    return float(number) * UNITS_MS[unit]


def parse_wrk(output: str) -> dict:
    found = {"requests_per_second": float(re.search(r"Requests/sec:\s*([\d.]+)", output).group(1))}
    for percent, key in (("50", "p50_ms"), ("99", "p99_ms")):
        found[key] = _ms(re.search(rf"^\s*{percent}%\s+(\S+)", output, re.MULTILINE).group(1))
    failures = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", output)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    found["failures"] = (int(failures.group(1)) if failures else 0) + (
        sum(int(n) for n in errors.groups()) if errors else 0)
    return found


# --- Postgres alone ----------------------------------------------------------------------------------

def captured_queries(db: str, path: str) -> list[tuple[str, dict, dict | None, str, str | None, str | None]]:
    """The (named query, parameters, {slot} fragments, SQL file, begin prelude, plan) one request to path runs,
    taken from the app."""
    from webapp import create_app
    from webapp import db as webapp_db

    app = create_app({"DATABASE_URL": db, "POOL_MIN": 0, "POOL_MAX": 2, "AUTH": "none"})
    seen: list[tuple[str, dict, dict | None, str, str | None, str | None]] = []
    original = webapp_db.fetch_all

    def recording(name, params=None, parts=None, sql_file=webapp_db.SQL_FILE, *, begin=None,
                  plan=None):  # as callers pass them
        seen.append((name, dict(params or {}), parts, sql_file, begin, plan))
        return original(name, params, parts, sql_file, begin=begin, plan=plan)

    webapp_db.fetch_all = recording
    try:
        with app.test_client() as client:
            client.get(path)
    finally:
        webapp_db.fetch_all = original
        webapp_db.warehouse(app).close()
    return seen


def postgres_costs(db: str, queries: list[tuple[str, dict, dict | None, str, str | None, str | None]],
                   repeats: int) -> tuple[float, float]:
    """(run directly, EXPLAIN ANALYZE) milliseconds of the queries summed, each the median over repeats.

    Run directly: the client's clock around each query on one connection in the app's session setup, so
    it is what the app waits for minus Flask, gunicorn and HTTP; a query the app prepares (plan) is prepared as
    the app does, on the first repeat. EXPLAIN (ANALYZE, TIMING OFF): the server's planning + execution (of the
    prepared statement's EXECUTE); its row counting makes a count(*) look dearer than run directly.
    A statement that is itself an EXPLAIN (data_estimate) is timed directly in both.
    """
    from sluice import queries as named
    from sluice import scope_key
    from webapp import db as webapp_db
    from webapp import scope_token, scopes

    options = r"-c default_transaction_read_only=on -c default_transaction_isolation=repeatable\ read -c TimeZone=UTC"
    conn = psycopg2.connect(db, options=options, connection_factory=webapp_db.WarehouseConnection)
    direct, explained = [], []
    try:
        with conn.cursor() as cursor:
            for _ in range(repeats):
                direct_ms = explain_ms = 0.0
                for name, params, parts, sql_file, begin, plan in queries:
                    statement = named.query(sql_file, name)
                    if parts is not None:  # the query as the app composed it: its {slots} filled the same way
                        statement = psycopg2.sql.SQL(statement).format(**parts).as_string(conn)
                    preparing = None
                    if plan is not None:
                        statement, params, preparing = webapp_db.as_prepared(conn, statement, params, plan)
                    conn.autocommit = begin is not None  # between statements: each path below rolls back
                    if begin is not None:  # its prelude too, in the same round trip, as the app sends it
                        token = scope_token.make(scopes.EVERYTHING, conn.get_backend_pid(),
                                                 scope_key.parse(os.environ["SLUICE_SCOPE_KEY"]))
                        params = {**params, "scope_token": token}
                        prelude = named.query(webapp_db.SQL_FILE, begin)
                    start = time.perf_counter()
                    cursor.execute(f"{prelude}\n{statement}" if begin is not None else statement, params)
                    cursor.fetchall()
                    elapsed = (time.perf_counter() - start) * 1000
                    conn.rollback()
                    if preparing is not None:
                        conn.prepared.add(preparing)
                        statement = statement.split(";\n")[-1]  # EXPLAIN takes the EXECUTE alone
                    direct_ms += elapsed
                    if statement.lstrip().lower().startswith("explain"):
                        explain_ms += elapsed
                        continue
                    if begin is not None:  # EXPLAIN takes one statement: the prelude in a transaction before it
                        conn.autocommit = False
                        cursor.execute(prelude, params)
                    cursor.execute("explain (analyze, timing off, format json) " + statement, params)
                    (plan,) = cursor.fetchone()[0]
                    conn.rollback()
                    explain_ms += plan["Planning Time"] + plan["Execution Time"]
                direct.append(direct_ms)
                explained.append(explain_ms)
    finally:
        conn.close()
    return statistics.median(direct), statistics.median(explained)


# --- the whole measurement ---------------------------------------------------------------------------

@dataclass
class LoadOptions:
    wrk: str | None  # None: no load test (serial requests and Postgres alone only)
    seconds: int = 10
    threads: int = 2
    connections: int = 32
    workers: int = 2
    serial_requests: int = 50
    explain_repeats: int = 20


def measure(db: str, endpoints: list[tuple[str, str]], rows: int, options: LoadOptions, log_path: Path,
            echo=print) -> list[EndpointResult]:
    """Serve db with gunicorn and measure each (label, path); the Postgres-alone cost comes last, unloaded."""
    results = []
    with gunicorn(db, workers=options.workers, log_path=log_path) as base:
        for label, path in endpoints:
            result = EndpointResult(label, path, rows)
            status, _ = get(base + path)
            if status >= 400 and not path.startswith("/health"):
                raise RuntimeError(f"GET {path} answered {status}; see {log_path}")
            result.serial_ms = serial_median_ms(base + path, options.serial_requests)
            if options.wrk:
                for key, value in run_wrk(options.wrk, base + path, seconds=options.seconds,
                                          threads=options.threads, connections=options.connections).items():
                    setattr(result, key, value)
            echo(f"  {label:<34} " + (f"{result.requests_per_second:8.0f} req/s  p50 {result.p50_ms:6.1f} ms  "
                                      f"p99 {result.p99_ms:6.1f} ms  " if options.wrk else "")
                 + f"serial {result.serial_ms:6.1f} ms")
            results.append(result)
    for result in results:
        captured = captured_queries(db, result.path)
        result.queries = [name for name, *_ in captured]
        result.postgres_ms, result.explain_ms = postgres_costs(db, captured, options.explain_repeats)
    return results


def cursor_at_page(db: str, page: int, page_size: int) -> str:
    """next_cursor of page - 1, asked of the app once: the keyset position where OFFSET page `page` starts."""
    from webapp import create_app
    from webapp import db as webapp_db

    app = create_app({"DATABASE_URL": db, "POOL_MIN": 0, "POOL_MAX": 2, "AUTH": "none"})
    try:
        with app.test_client() as client:
            response = client.get(f"/data?page={page - 1}&page_size={page_size}&count=none")
    finally:
        webapp_db.warehouse(app).close()
    if response.status_code != 200:
        raise RuntimeError(f"/data?page={page - 1} answered {response.status_code}: {response.get_data(as_text=True)}")
    return response.get_json()["next_cursor"]
