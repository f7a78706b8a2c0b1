"""The read API's levers (issue 28), measured side by side in one run: `python -m bench.api_levers --database URL`.

Each variant is the API as deployed (gunicorn with gunicorn.conf.py, an API key on every request, the read-only role
under row-level security) with one thing changed: the rate limits' storage, a checkout of other code (`--checkout
LABEL=PATH`, e.g. main's), gunicorn's workers × threads. Rounds interleave the variants, so a machine busy with
other work slows them alike. Per request it reports wrk's req/s and p99 and the CPU the request cost: user + system
time from /proc of gunicorn's process tree and of the warehouse server's (every backend, those that exited between
the readings too), divided by the requests wrk counted, and the connections the app opened meanwhile. On 2 cores,
1,000 req/s leaves 2 ms of CPU per request for everything, wrk included.
"""

import argparse
import contextlib
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

import psycopg

from bench import api_load
from bench.child import REPO

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
DATA_PAGE_SIZE = 10


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return None


def tree_cpu_seconds(pid: int) -> float:
    """User + system time of a process, of its children that exited (cutime, cstime: a backend or a worker that
    came and went between two readings counts too) and of its live children, recursively."""
    fields = _stat(pid)
    if fields is None:
        return 0.0
    own = sum(int(value) for value in fields[11:15]) / CLOCK_TICKS
    children = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):
            children += [int(child) for child in (task / "children").read_text().split()]
    return own + sum(tree_cpu_seconds(child) for child in children)


def postmaster(admin_url: str) -> tuple[int, int]:
    """The warehouse server's postmaster pid (the parent of a backend) and the sessions it has begun so far."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        (backend, sessions) = conn.execute("select pg_backend_pid(), (select sum(sessions) from pg_stat_database)"
                                           ).fetchone()
        return int(_stat(backend)[1]), int(sessions)  # read while the backend lives


@contextlib.contextmanager
def serving(db: str, checkout: Path, env: dict, log_path: Path):
    """gunicorn from checkout's own code and gunicorn.conf.py on a free port; yields (base URL, master pid)."""
    port = api_load._free_port()
    command = [str(Path(sys.executable).parent / "gunicorn"), "--bind", f"127.0.0.1:{port}", "webapp.wsgi:app"]
    path = os.pathsep.join(str(checkout / part) for part in ("", "plugins", "devtools"))
    environment = {**os.environ, "DATABASE_URL": db, "SLUICE_LOG_LEVEL": "WARNING", "PYTHONPATH": path,
                   "SLUICE_SQL_DIR": str(checkout / "sql"), **env}
    base = f"http://127.0.0.1:{port}"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(command, cwd=checkout, env=environment, stdout=log, stderr=subprocess.STDOUT)
        try:
            api_load._wait_until_up(base, process, log_path)
            yield base, process.pid
        finally:
            process.terminate()
            process.wait(timeout=30)


def wrk(url: str, seconds: int, connections: int, headers: dict) -> dict:
    command = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "5s",
               *(argument for name, value in headers.items() for argument in ("-H", f"{name}: {value}")), url]
    output = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60).stdout
    found = api_load.parse_wrk(output)
    found["requests"] = int(re.search(r"(\d+) requests in", output).group(1))
    return found


def measure(db: str, admin_url: str, checkout: Path, env: dict, paths: list[str], headers: dict, seconds: int,
            connections: int, log_path: Path) -> dict:
    """path -> req/s, p99 and CPU ms per request (app, warehouse) under wrk."""
    measured = {}
    with serving(db, checkout, env, log_path) as (base, master):
        for path in paths:
            status, _ = api_load.get(base + path, headers)
            if status >= 400:
                raise RuntimeError(f"GET {path} answered {status}; see {log_path}")
            wrk(base + path, 1, connections, headers)  # warm: every worker's pool and caches
            server, sessions_before = postmaster(admin_url)
            before = tree_cpu_seconds(master), tree_cpu_seconds(server)
            result = wrk(base + path, seconds, connections, headers)
            after = tree_cpu_seconds(master), tree_cpu_seconds(server)
            requests = max(1, result["requests"])
            result["app_cpu_ms"] = (after[0] - before[0]) * 1000 / requests
            result["db_cpu_ms"] = (after[1] - before[1]) * 1000 / requests
            # connections the app opened meanwhile (one is this reading's own)
            result["connects"] = postmaster(admin_url)[1] - sessions_before - 1
            measured[path] = result
    return measured


def parse_variant(text: str) -> tuple[str, Path, dict]:
    """LABEL[@CHECKOUT][:NAME=VALUE,...]: a variant's label, its code and its environment."""
    head, _, settings = text.partition(":")
    label, _, checkout = head.partition("@")
    env = dict(item.split("=", 1) for item in settings.split(",") if item)
    return label, Path(checkout) if checkout else REPO, env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.api_levers", description=__doc__.splitlines()[0])
    parser.add_argument("--database", required=True, help="a warehouse the pipeline loaded (its owner's URL)")
    parser.add_argument("--variant", action="append", required=True,
                        help="LABEL[@CHECKOUT][:SLUICE_X=value,...], e.g. 'redis:SLUICE_RATELIMIT_STORAGE_URI="
                             "redis://127.0.0.1:6379/0' or 'main@/work/main' (repeat: one per variant)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=int, default=4)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--search", default="12345")
    parser.add_argument("--log", type=Path, default=REPO / "bench" / "work" / "api_levers.log")
    args = parser.parse_args(argv)

    reader_db = api_load.reader_access(args.database)
    key = api_load.create_key(args.database)
    headers = {"Authorization": f"Bearer {key}"}
    with psycopg.connect(args.database) as conn:
        (rows,) = conn.execute("select count(*) from normalized_data").fetchone()
        (source,) = conn.execute("select source from etl_checkpoint order by row_count desc limit 1").fetchone()
    page = max(2, min(10_000, rows // DATA_PAGE_SIZE))
    cursor = api_load.cursor_at_page(args.database, page, DATA_PAGE_SIZE)
    paths = {"first page": f"/data?page_size={DATA_PAGE_SIZE}",
             f"cursor {page * DATA_PAGE_SIZE:,} deep": f"/data?cursor={cursor}&page_size={DATA_PAGE_SIZE}",
             "search": f"/data?search={args.search}",
             "source=": f"/data?source={source}&page_size={DATA_PAGE_SIZE}"}
    variants = [parse_variant(text) for text in args.variant]
    budgets = {f"SLUICE_RATELIMIT_{name}": "1000000000 per hour" for name in ("DEFAULT", "ANONYMOUS", "HEALTH")}
    print(f"{rows:,} rows; load average {os.getloadavg()[0]:.1f} at start; wrk -t2 -c{args.connections} "
          f"-d{args.seconds}s, {args.rounds} rounds", flush=True)
    results: dict[tuple[str, str], list[dict]] = {}
    for round_number in range(args.rounds):
        for label, checkout, env in variants:
            measured = measure(reader_db, args.database, checkout, {"SLUICE_AUTH": "keys", **budgets, **env},
                               list(paths.values()), headers, args.seconds, args.connections, args.log)
            for name, path in paths.items():
                result = measured[path]
                results.setdefault((label, name), []).append(result)
                print(f"round {round_number + 1} {label:<24} {name:<20} {result['requests_per_second']:6.0f} req/s "
                      f"p99 {result['p99_ms']:6.1f} ms  CPU app {result['app_cpu_ms']:.2f} + db "
                      f"{result['db_cpu_ms']:.2f} ms/request  {result['connects']} connects  failures {result['failures']}",
                      flush=True)
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end\n")
    print("| variant | request | req/s (rounds) | p99 ms | CPU ms per request: app + warehouse (median) | connects |")
    print("|---|---|---|---|---|---|")
    for (label, name), rounds in results.items():
        rates = " / ".join(f"{r['requests_per_second']:.0f}" for r in rounds)
        p99s = " / ".join(f"{r['p99_ms']:.1f}" for r in rounds)
        print(f"| {label} | {name} | {rates} | {p99s} | "
              f"{statistics.median(r['app_cpu_ms'] for r in rounds):.2f} + "
              f"{statistics.median(r['db_cpu_ms'] for r in rounds):.2f} | "
              f"{' / '.join(str(r['connects']) for r in rounds)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
