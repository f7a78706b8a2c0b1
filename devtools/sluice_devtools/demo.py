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


def get(url: str, key: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # nosec B310 # loopback http URL we built
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def gunicorn_argv() -> list[str]:
    """gunicorn with the repository's gunicorn.conf.py, the one configuration every launcher uses."""
    return [str(Path(sys.executable).with_name("gunicorn")), "--config", str(local_env.REPO / "gunicorn.conf.py")]


# Budgets show_api's latency loop (600 requests in seconds) fits in; the rate limits stay on.
DEMO_RATE_LIMITS = {"SLUICE_RATELIMIT_DEFAULT": "6000 per minute", "SLUICE_RATELIMIT_ANONYMOUS": "6000 per minute"}
# make run and make up serve the API open, on 127.0.0.1 only; make serve, Compose and the
# image keep the default, API keys (README, Authentication).
LOCAL_AUTH = {"SLUICE_AUTH": "none"}
# make demo shows them: its API asks for keys, which it makes as a user does
DEMO_AUTH = {"SLUICE_AUTH": "keys"}
OPEN_NOTICE = ("the API runs open here (SLUICE_AUTH=none, loopback only); deployments ask for API keys: "
               "flask --app webapp keys create --name NAME --sources '*' (README, Authentication)")


def api_env(url: str, port: int, auth: dict) -> dict[str, str]:
    """The environment of a local API on url's warehouse: the read-only role (row-level security applies to it, not
    to url's owner) for the API, url itself for its key commands (SLUICE_ADMIN_DATABASE_URL)."""
    return {**DEMO_RATE_LIMITS, **os.environ, **reader_role.api_environment(url), "SLUICE_ADMIN_DATABASE_URL": url,
            "SLUICE_BIND": f"127.0.0.1:{port}", "SLUICE_LOG_LEVEL": "WARNING", **auth}


def start_api(url: str, port: int | None = None, log: Path = LOG,
              env: dict | None = None) -> tuple[subprocess.Popen, str]:
    """gunicorn serving webapp on a loopback port (default: a free one) with env (default: api_env, open);
    returns once it answers."""
    env = env or api_env(url, port or free_port(), LOCAL_AUTH)
    port = int(env["SLUICE_BIND"].rsplit(":", 1)[1])
    process = subprocess.Popen(gunicorn_argv(), env=env,  # nosec B603 # our own gunicorn, fixed argv
                               stdout=open(log, "ab"), stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            get(base + "/openapi.json")  # open whatever the mode
            return process, base
        except OSError:
            time.sleep(0.2)
    process.terminate()
    raise RuntimeError(f"gunicorn did not answer on {base}; see {log}")


def create_key(env: dict, name: str, *options: str) -> str:
    """A new API key made as a user makes one, with `flask --app webapp keys create` (printed once, on stdout), in
    the API's environment (api_env: the owner's connection is its SLUICE_ADMIN_DATABASE_URL)."""
    command = [str(Path(sys.executable).with_name("flask")), "--app", "webapp", "keys", "create", "--name", name,
               *options]
    done = subprocess.run(command, env=env, cwd=local_env.REPO,  # nosec B603 # fixed argv
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"flask --app webapp keys create failed: {done.stderr.strip()}")
    return done.stdout.strip()


def show_api(base: str, key: str) -> None:
    for path in ("/health", "/data?page_size=3", "/data?source=csv&search=z%C3%BCrich&page_size=2&count=exact",
                 "/data?source=comments&page_size=1", "/stats", "/sources"):
        status, body = get(base + path, key)
        text = json.dumps(json.loads(body), ensure_ascii=False, indent=1)
        lines = text.splitlines()
        print(f"\nGET {path} -> {status}\n" + "\n".join(lines[:40]) + ("\n ..." if len(lines) > 40 else ""))
    for path in ("/data", "/stats"):
        timings = []
        for _ in range(300):
            started = time.perf_counter()
            get(base + path, key)
            timings.append((time.perf_counter() - started) * 1000)
        timings.sort()
        print(f"latency GET {path} over 300 sequential requests (with the key): median "
              f"{statistics.median(timings):.1f} ms, p99 {timings[296]:.1f} ms")


def show_scopes(env: dict, base: str) -> None:
    """What a key of one source sees, and what no key gets."""
    reader = create_key(env, f"demo-csv-{time.strftime('%Y%m%d%H%M%S')}", "--sources", "csv", "--expires", "1h")
    status, body = get(base + "/stats", reader)
    print(f"\na key for the csv source alone (--sources csv): GET /stats -> {status}, rows per source "
          f"{json.loads(body).get('rows_per_source')}; GET /data?source=posts -> {get(base + '/data?source=posts', reader)[0]};"
          f" GET /runs -> {get(base + '/runs', reader)[0]} (operations data needs --operations)")
    status, body = get(base + "/data")
    print(f"no key: GET /data -> {status} {json.loads(body)['message']}")


def show_metrics(base: str, key: str) -> None:
    """Where Prometheus scrapes (README, Operations: metrics), and a few of the series it finds there."""
    status, body = get(base + "/metrics", key)
    wanted = ('sluice_http_requests_total{method="GET",route="/data",status="200"}', "sluice_source_live_rows{",
              "sluice_source_last_run_failed{")
    lines = [line for line in body.decode().splitlines() if line.startswith(wanted)]
    print(f"\nmetrics for Prometheus: GET {base}/metrics (a key with --operations) -> {status}, for example:\n  "
          + "\n  ".join(lines))


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
    env = api_env(url, free_port(), DEMO_AUTH)  # once: each call may install a new scope key
    api, base = start_api(url, env=env)
    try:
        name = f"demo-{time.strftime('%Y%m%d%H%M%S')}"
        key = create_key(env, name, "--sources", "*", "--operations", "--expires", "1h")
        print(f"\nFlask API (gunicorn) on {base}, with API keys (SLUICE_AUTH=keys) over the read-only role; a key for "
              f"every source, made with `flask --app webapp keys create --name {name} --sources '*' --operations "
              f"--expires 1h`; every request below sends it, as this curl does while the demo's API runs:\n"
              f"  curl -H 'Authorization: Bearer {key}' '{base}/data?page_size=3'")
        show_api(base, key)
        show_scopes(env, base)
        show_metrics(base, key)
    finally:
        api.terminate()
        api.wait(timeout=30)
    print(f"demo took {time.monotonic() - started:.1f}s; run `make demo` again: the second run inserts and updates 0 rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
