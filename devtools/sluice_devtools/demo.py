"""`make demo`: the whole job offline — embedded Postgres, sample sources on loopback, one real DAG run."""

import json
import os
import socket
import statistics
import subprocess  # nosec B404 # developer tooling runs fixed argv lists, never a shell
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psycopg
from psycopg import sql

from sluice_devtools import embedded_pg, local_env, reader_role, serve_samples

LOG = local_env.STATE / "logs" / "demo.log"
# the demo's catalog of sources: the posts and comments of the sample API, and the sample CSV
SOURCES_FILE = Path(__file__).with_name("demo_sources.yaml")


def warehouse_url(database: str = "sluice") -> str:
    """DATABASE_URL when set, else the database `database` on the embedded server under .sluice/pg."""
    if os.environ.get("DATABASE_URL"):
        return os.environ["DATABASE_URL"]
    server = embedded_pg.start(local_env.STATE / "pg")
    with psycopg.connect(server, autocommit=True) as conn:
        if not conn.execute("select 1 from pg_database where datname = %s", (database,)).fetchone():
            conn.execute(sql.SQL("create database {}").format(sql.Identifier(database)))
    info = psycopg.conninfo.conninfo_to_dict(server)
    return psycopg.conninfo.make_conninfo(**{**info, "dbname": database})


def summary(url: str) -> str:
    with psycopg.connect(url) as conn:
        run = conn.execute(
            "select run_id, status, fetched, inserted, updated, unchanged, rejected, duration_seconds, error_message"
            " from etl_runs order by id desc limit 1").fetchone()
        rows = conn.execute("select source, count(*) from normalized_data group by 1 order by 1").fetchall()
        rejects = conn.execute(
            "select source, coalesce(source_id, '-'), reason from rejected_records where run_id = %s order by id",
            (run[0],)).fetchall()
        checkpoints = conn.execute(
            "select source, last_processed_id, total_processed from etl_checkpoint order by 1").fetchall()
    lines = [f"etl_runs: {run[0]}  status={run[1]}  fetched={run[2]} inserted={run[3]} updated={run[4]}"
             f" unchanged={run[5]} rejected={run[6]}  ({run[7]:.2f}s)"]
    if run[8]:
        lines.append(f"  error: {run[8]}")
    lines.append("normalized_data rows: " + ", ".join(f"{source}={count}" for source, count in rows))
    lines.append("checkpoints: " + ", ".join(f"{s} last_id={i} total={t}" for s, i, t in checkpoints))
    lines.append(f"rejected this run ({len(rejects)}):")
    lines += [f"  {source} id={source_id}: {reason}" for source, source_id, reason in rejects[:12]]
    if len(rejects) > 12:
        lines.append(f"  ... and {len(rejects) - 12} more")
    return "\n".join(lines)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:  # nosec B310 # loopback http URL we built
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def gunicorn_argv() -> list[str]:
    """gunicorn with the repository's gunicorn.conf.py, the one configuration every launcher uses."""
    return [str(Path(sys.executable).with_name("gunicorn")), "--config", str(local_env.REPO / "gunicorn.conf.py")]


# Budgets show_api's latency loop (600 requests in seconds) fits in; the rate limits stay on.
DEMO_RATE_LIMITS = {"SLUICE_RATELIMIT_DEFAULT": "6000 per minute", "SLUICE_RATELIMIT_ANONYMOUS": "6000 per minute"}
# The local tools (make demo, make run, make up) serve the API open, on 127.0.0.1 only; make serve, Compose and the
# image keep the default, API keys (README, Authentication).
LOCAL_AUTH = {"SLUICE_AUTH": "none"}
OPEN_NOTICE = ("the API runs open here (SLUICE_AUTH=none, loopback only); deployments ask for API keys: "
               "flask --app webapp keys create --name NAME --sources '*' (README, Authentication)")


def start_api(url: str, port: int | None = None, log: Path = LOG) -> tuple[subprocess.Popen, str]:
    """gunicorn serving webapp open (LOCAL_AUTH) on a loopback port (default: a free one), logged in as the read-only
    role (row-level security applies to it, not to url's owner); returns once it answers."""
    port = port or free_port()
    process = subprocess.Popen(  # nosec B603 # our own gunicorn, fixed argv
        gunicorn_argv(),
        env={**DEMO_RATE_LIMITS, **os.environ, **reader_role.api_environment(url), "SLUICE_BIND": f"127.0.0.1:{port}",
             "SLUICE_LOG_LEVEL": "WARNING", **LOCAL_AUTH},
        stdout=open(log, "ab"), stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            get(base + "/")
            return process, base
        except OSError:
            time.sleep(0.2)
    process.terminate()
    raise RuntimeError(f"gunicorn did not answer on {base}; see {log}")


def show_api(base: str) -> None:
    for path in ("/health", "/data?page_size=3", "/data?source=csv&search=z%C3%BCrich&page_size=2&count=exact",
                 "/data?source=comments&page_size=1", "/stats", "/sources"):
        status, body = get(base + path)
        text = json.dumps(json.loads(body), ensure_ascii=False, indent=1)
        lines = text.splitlines()
        print(f"\nGET {path} -> {status}\n" + "\n".join(lines[:40]) + ("\n ..." if len(lines) > 40 else ""))
    for path in ("/data", "/stats"):
        timings = []
        for _ in range(300):
            started = time.perf_counter()
            get(base + path)
            timings.append((time.perf_counter() - started) * 1000)
        timings.sort()
        print(f"latency GET {path} over 300 sequential requests: median {statistics.median(timings):.1f} ms,"
              f" p99 {timings[296]:.1f} ms")


def main() -> int:
    started = time.monotonic()
    url = warehouse_url()
    with serve_samples.serve() as sources:
        env = local_env.airflow_env(local_env.STATE / "airflow", warehouse_url=url,
                                    api_url=sources.url, csv_url=sources.url)
        env["SLUICE_SOURCES_FILE"] = str(SOURCES_FILE)
        print(f"warehouse: {url}\nsources:   {sources.url}/posts, {sources.url}/comments and {sources.url}/items.csv"
              f" (catalog {SOURCES_FILE.relative_to(local_env.REPO)})")
        local_env.migrate(env, LOG)
        print(f"running etl_pipeline with `airflow dags test` (log: {LOG.relative_to(local_env.REPO)}) ...")
        local_env.airflow(["dags", "test", "etl_pipeline"], env, LOG)
    print(summary(url))
    api, base = start_api(url)
    try:
        print(f"\nFlask API (gunicorn) on {base}; {OPEN_NOTICE}:")
        show_api(base)
    finally:
        api.terminate()
        api.wait(timeout=30)
    print(f"demo took {time.monotonic() - started:.1f}s; run `make demo` again: the second run inserts and updates 0 rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
