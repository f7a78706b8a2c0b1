"""The whole DAG measured as users run it (#16): `airflow dags test etl_pipeline` as a subprocess, per server.

Per server, in order: a tiny run (a --whole-dag-tiny-rows cut of the CSV + the posts, into its own fresh
warehouse) whose wall time is Airflow's fixed start-up (with --whole-dag-tiny-runs N, the median of N such
runs, each on a fresh warehouse: on a busy machine one start-up can vary by seconds); then on a fresh warehouse the first load, the
unchanged rerun and the 1% changed file, with no VACUUM or CHECKPOINT between them (autovacuum and
checkpoints are part of the cost). With --whole-dag-rounds N, N such rounds, each on its own fresh
warehouse: the targets take the median of the rounds (a DAG run's wall time varies by a second or two).
Pipeline time = wall time − the fixed start-up. Per-task durations come from the run's task instances in
Airflow's metadata database (a database on the same server); rows written from the run's etl_runs row.
Peak RSS is the `airflow` process's own (wait4's ru_maxrss, which also covers any child it waited for):
Airflow 3's `dags test` runs every task in that process (`run_task_in_process`). Then dlt's pyarrow-fed merge of the same CSV, bare and followed by Sluice's
indexes, on a fresh database of the same server.
"""

import itertools
import json
from collections.abc import Callable
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from bench import baselines, database, inputs
from bench.child import Children, StepFailed
from bench.pipeline import served_files
from sluice_devtools import local_env
from sluice_devtools.source_server import SourceServer

REPO = Path(__file__).resolve().parents[1]
API_RECORDS = 100  # the posts, as the issue measures
API_PAGE_SIZE = 1000
PASSES = ("first", "rerun", "changed")  # after the tiny runs
PASS_NAMES = {"tiny": "tiny (fixed start-up)", "first": "first load", "rerun": "unchanged rerun",
              "changed": "1% changed", "scale": "scale first load"}
SCALE = "scale"  # the opt-in first load at --scale-rows, after the rounds (issue 28: 10M rows)
TASKS = ("init_schema", "ingest", "store_raw", "normalize", "upsert", "checkpoint", "record_run")


@dataclass
class DagRun:
    name: str
    wall_seconds: float
    peak_rss_mb: float
    state: str  # the dag run's state in the metadata DB: `airflow dags test` exits 0 even when a run fails
    task_seconds: dict[str, float]  # task_id -> duration (mapped instances summed)
    etl_run: dict  # the run's etl_runs row: status, fetched, inserted, updated, unchanged, rejected, source_counts
    span_seconds: float | None  # the first ingest's start to record_run's end, Airflow's work between tasks included
    pipeline_seconds: float | None = None  # wall − the fixed start-up (the tiny runs' median wall)
    statements: list = field(default_factory=list)  # (task, statement, seconds) of the run (bench.dag_profile)

    @property
    def written(self) -> int:
        return self.etl_run.get("inserted", 0) + self.etl_run.get("updated", 0)


@dataclass
class ServerResult:
    label: str  # embedded | pg15 | bench_database_url
    server: str  # its description: version, where, settings
    rows: int
    tiny_rows: int
    expected_changed: int
    runs: dict[str, DagRun] = field(default_factory=dict)
    scale_rows: int = 0  # rows of the scale first load (runs[SCALE]); 0: not asked (--scale-rows)
    dlt: list = field(default_factory=list)  # baselines.Baseline: bare, then followed by the indexes
    notes: list[str] = field(default_factory=list)

    @property
    def startup_seconds(self) -> float:
        return statistics.median(run.wall_seconds for name, run in self.runs.items() if name.startswith("tiny"))

    def rounds(self) -> list[dict[str, DagRun]]:
        """The rounds' runs, in order, each {pass: run} for the passes of PASSES it has."""
        found = []
        for number in itertools.count(1):
            runs = {name: self.runs[run_name(name, number)] for name in PASSES if run_name(name, number) in self.runs}
            if not runs:
                return found
            found.append(runs)

    def dlt_seconds(self, indexed: bool) -> float | None:
        name = baselines.DLT_MODES["arrow+indexes" if indexed else "arrow"][0]
        return next((b.seconds for b in self.dlt if b.name == name), None)


class Airflow:
    """An AIRFLOW_HOME of its own with the metadata database on the server being measured."""

    def __init__(self, home: Path, metadata_db: str, log: Path):
        self.home, self.metadata_db, self.log = home, metadata_db, log
        shutil.rmtree(home, ignore_errors=True)
        home.mkdir(parents=True)
        self.env = {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": database.sqlalchemy_url(metadata_db),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "SLUICE_TASK_RETRIES": "0",  # a failure ends the run at once instead of waiting out retry delays
        }
        self._run(["db", "migrate"], {})

    def _command(self, args: list[str], profile: Path | None) -> list[str]:
        if profile is not None:
            return [sys.executable, "-m", "bench.dag_profile", str(profile), *args]
        return [str(Path(sys.executable).with_name("airflow")), *args]

    def _run(self, args: list[str], env: dict, profile: Path | None = None) -> tuple[float, float]:
        """(wall seconds, peak RSS MB) of one airflow command; raise with its log's tail when it fails. With a
        profile path, the command runs under bench.dag_profile, which writes its tasks' statement times there."""
        with open(self.log, "ab") as log:
            log.write(f"\n==== airflow {' '.join(args)}\n".encode())
            log.flush()
            started = time.perf_counter()
            process = subprocess.Popen(self._command(args, profile), env={**os.environ, **self.env, **env}, cwd=REPO,
                                       stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            _, status, usage = os.wait4(process.pid, 0)
            wall = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            tail = self.log.read_text(errors="replace").splitlines()[-25:]
            raise RuntimeError(f"airflow {' '.join(args)} exited {process.returncode}; {self.log}:\n" + "\n".join(tail))
        return wall, usage.ru_maxrss / 1024

    def dags_test(self, name: str, env: dict, warehouse: str) -> DagRun:
        before = self._last_run_key()
        profile = self.home / f"statements-{name}.json"
        wall, rss = self._run(["dags", "test", "etl_pipeline"], env, profile)
        with psycopg.connect(self.metadata_db, autocommit=True) as conn:
            found = conn.execute("select id, run_id, state from dag_run where dag_id = 'etl_pipeline' and id > %s "
                                 "order by id desc limit 1", (before,)).fetchone()
            if found is None:
                raise RuntimeError(f"airflow dags test ({name}) left no dag run; see {self.log}")
            _, run_id, state = found
            tasks: dict[str, float] = {}
            for task_id, seconds in conn.execute(
                    "select task_id, extract(epoch from end_date - start_date) from task_instance "
                    "where dag_id = 'etl_pipeline' and run_id = %s and start_date is not null", (run_id,)):
                tasks[task_id] = tasks.get(task_id, 0.0) + float(seconds or 0)
            (span,) = conn.execute(
                "select extract(epoch from max(end_date) filter (where task_id = 'record_run')"
                " - min(start_date) filter (where task_id like 'ingest%%')) from task_instance"
                " where dag_id = 'etl_pipeline' and run_id = %s", (run_id,)).fetchone()
        return DagRun(name, wall, rss, state, tasks, etl_run(warehouse, run_id),
                      None if span is None else float(span), statements=json.loads(profile.read_text()))

    def _last_run_key(self) -> int:
        with psycopg.connect(self.metadata_db, autocommit=True) as conn:
            return conn.execute("select coalesce(max(id), 0) from dag_run").fetchone()[0]


def run_name(name: str, number: int) -> str:
    """A run's name: the pass's or tiny's, and its number from the second on (first, first2, …; tiny, tiny2, …)."""
    return name if number == 1 else f"{name}{number}"


def pass_name(name: str) -> str:
    """A run's name in the report: its pass's report name, and its number from the second on."""
    base = name.rstrip("0123456789")
    number = name.removeprefix(base)
    return f"{PASS_NAMES[base]} {number}" if number else PASS_NAMES[base]


def etl_run(warehouse: str, run_id: str) -> dict:
    with psycopg.connect(warehouse, autocommit=True) as conn:
        row = conn.execute("select status, fetched, inserted, updated, unchanged, rejected, source_counts, "
                           "error_message from etl_runs where run_id = %s", (run_id,)).fetchone()
    if row is None:
        return {}
    keys = ("status", "fetched", "inserted", "updated", "unchanged", "rejected", "source_counts", "error_message")
    return dict(zip(keys, row))


def run_server(server: database.Server, label: str, *, children: Children, work_dir: Path, stamp: str,
               csv_input: inputs.CsvInput, tiny_input: inputs.CsvInput, bench_python: Path | None,
               tiny_runs: int = 1, rounds: int = 1, scale_input: inputs.CsvInput | None = None,
               echo=print) -> ServerResult:
    """The tiny runs and `rounds` rounds of the three passes of the DAG, then (scale_input) one first load of a
    larger CSV on its own fresh warehouse, then the dlt baselines, on one server."""
    api_input = inputs.api_records(API_RECORDS)
    result = ServerResult(label, server.describe(), csv_input.rows, tiny_input.rows,
                          expected_changed=csv_input.changed + api_input.changed)
    prefix = f"bench_{stamp}_dag_{label}"
    echo(f"whole DAG on {label}: airflow db migrate (metadata database on the same server)")
    airflow = Airflow(work_dir / "airflow-dag" / f"{stamp}-{label}", server.create_database(f"{prefix}_airflow"),
                      children.log_dir / f"airflow-{label}.log")
    tiny = [run_name("tiny", n) for n in range(1, tiny_runs + 1)]
    full = [run_name("wh", n) for n in range(1, rounds + 1)]
    scale = [SCALE] if scale_input is not None else []
    warehouses = {name: server.create_database(f"{prefix}_{name}") for name in [*tiny, *full, *scale]}
    staging = work_dir / "staging-dag" / label
    plan = {name: (tiny_input.path, "posts", name) for name in tiny}
    for number, warehouse in enumerate(full, start=1):
        plan |= {run_name("first", number): (csv_input.path, "posts", warehouse),
                 run_name("rerun", number): (csv_input.path, "posts", warehouse),
                 run_name("changed", number): (csv_input.changed_path, "posts-changed", warehouse)}
    if scale_input is not None:
        # served from the same folder (inputs.write_csvs puts every size in one)
        plan[SCALE] = (scale_input.path, "posts", SCALE)
        result.scale_rows = scale_input.rows
    passes = [name for name in plan if name not in tiny]
    try:
        with SourceServer() as api, served_files(csv_input.path.parent) as files:
            api.serve_json("posts", api_input.records, page_size=API_PAGE_SIZE)
            api.serve_json("posts-changed", api_input.changed_records, page_size=API_PAGE_SIZE)
            for name in [*tiny, *passes]:
                csv_path, route, warehouse = plan[name]
                env = {**local_env.airflow_env(airflow.home, warehouse_url=warehouses[warehouse], api_url=api.url,
                                               csv_url=files),
                       "SLUICE_STAGING_URL": f"file://{staging}", "SLUICE_CSV_ENDPOINT": csv_path.name,
                       "SLUICE_API_ENDPOINT": route}
                run = airflow.dags_test(name, env, warehouses[warehouse])
                result.runs[name] = run
                if name in passes:
                    run.pipeline_seconds = run.wall_seconds - result.startup_seconds
                echo(f"  dags test {pass_name(name):<24} {run.wall_seconds:7.2f} s  {run.state}, "
                     f"{run.written:,} rows written, peak RSS {run.peak_rss_mb:.0f} MB")
                if run.state != "success" or run.etl_run.get("status") != "success":
                    result.notes.append(f"{label} {pass_name(name)}: dag run {run.state}, etl_runs "
                                        f"{run.etl_run.get('status')}: {run.etl_run.get('error_message')}")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(airflow.home, ignore_errors=True)
    if bench_python is None:
        result.notes.append("dlt baselines not run here (--no-dlt, or the bench virtualenv is missing)")
        return result
    dlt_db = server.create_database(f"{prefix}_dlt")
    with psycopg.connect(dlt_db, autocommit=True) as conn:
        conn.execute("create extension if not exists pg_trgm")  # the indexes' operator class, as Sluice's schema
    pipelines_dir = work_dir / "dlt" / f"{stamp}-{label}"
    try:
        result.dlt = baselines.run_dlt(children, bench_python, dlt_db, csv_path=csv_input.path,
                                       valid=csv_input.valid, pipelines_dir=pipelines_dir, failures=result.notes,
                                       modes=("arrow", "arrow+indexes"))
    except StepFailed as failure:
        result.notes.append(f"dlt on {label}: {failure}")
    finally:
        shutil.rmtree(pipelines_dir, ignore_errors=True)
    return result


@dataclass
class Comparison:
    """An A/B comparison of the whole DAG on one server: runs[(variant, pass)] holds each round's DagRun."""

    label: str
    rows: int
    variants: tuple[str, ...]
    passes: tuple[str, ...]
    runs: dict[tuple[str, str], list] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def __post_init__(self):
        for key in itertools.product(self.variants, self.passes):
            self.runs.setdefault(key, [])

    def median(self, variant: str, name: str) -> float | None:
        spans = [run.span_seconds for run in self.runs[(variant, name)] if run.span_seconds is not None]
        return statistics.median(spans) if spans else None

    def ratio(self, name: str) -> float | None:
        """The second variant's median span over the first's, for one pass."""
        base, other = self.median(self.variants[0], name), self.median(self.variants[1], name)
        return other / base if base and other else None

    def task_medians(self, variant: str, name: str) -> dict[str, float]:
        """Each task's median duration over the rounds (mapped instances summed per run)."""
        runs = self.runs[(variant, name)]
        tasks = sorted({task for run in runs for task in run.task_seconds})
        return {task: statistics.median(run.task_seconds.get(task, 0.0) for run in runs) for task in tasks}

    def task_differences(self, name: str) -> list[str]:
        """A table of each task's median duration per variant and their difference, for one pass: where the
        difference in span goes, read from Airflow's task instances rather than from one noisy span."""
        base, other = (self.task_medians(variant, name) for variant in self.variants[:2])
        tasks = [task for task in TASKS if task in base or task in other]
        tasks += sorted((set(base) | set(other)) - set(tasks))
        if not tasks:
            return []
        lines = [f"| {name}: task (median s) | {self.variants[0]} | {self.variants[1]} | difference |",
                 "|---|---|---|---|"]
        for task in tasks:
            a, b = base.get(task, 0.0), other.get(task, 0.0)
            lines.append(f"| {task} | {a:.2f} | {b:.2f} | {b - a:+.2f} |")
        return lines


def compare(server: database.Server, label: str, topic: str, *, variants: tuple[str, ...], passes: tuple[str, ...],
            catalog: Callable[[Path, str, Path], Path], csv_path: Path, rows: int, log_dir: Path, work_dir: Path,
            stamp: str, rounds: int, echo=print) -> Comparison:
    """The whole DAG over one CSV source in each variant of its catalog (catalog(csv_path, variant, directory)
    writes it), `rounds` rounds on the embedded server, with `airflow dags test` as users run it (Airflow).

    Each round gives every variant a fresh warehouse and runs the passes in order on it (a later pass sees what the
    earlier ones loaded), interleaving the variants pass by pass and alternating which goes first each round, so a
    machine warming up, slowing down or busy for a minute favours neither. The time compared is each run's span from
    the first ingest's start to record_run's end (Airflow's fixed start-up is in neither)."""
    result = Comparison(label, rows, variants, passes)
    prefix = f"bench_{stamp}_{topic}_{label}"
    echo(f"{topic} on {label}: airflow db migrate (metadata database on the same server)")
    airflow = Airflow(work_dir / f"airflow-{topic}" / f"{stamp}-{label}", server.create_database(f"{prefix}_airflow"),
                      log_dir / f"airflow-{topic}-{label}.log")
    staging = work_dir / f"staging-{topic}" / label
    try:
        with served_files(csv_path.parent) as files:
            for number in range(1, rounds + 1):
                order = variants if number % 2 else tuple(reversed(variants))
                envs = {}
                for variant in order:
                    slug = variant.replace(" ", "-")
                    warehouse = server.create_database(f"{prefix}_{number}_{slug.replace('-', '_')}")
                    envs[variant] = (warehouse, {
                        **local_env.airflow_env(airflow.home, warehouse_url=warehouse, api_url=None, csv_url=files),
                        "SLUICE_STAGING_URL": f"file://{staging}",
                        "SLUICE_SOURCES_FILE": str(catalog(csv_path, variant, airflow.home))})
                for name in passes:
                    for variant in order:
                        warehouse, env = envs[variant]
                        run = airflow.dags_test(f"{topic}-{variant.replace(' ', '-')}-{name.replace(' ', '-')}-"
                                                f"{number}", env, warehouse)
                        result.runs[(variant, name)].append(run)
                        echo(f"  dags test {variant:<12} {name:<15} round {number}: ingest→record_run "
                             f"{run.span_seconds or 0:7.2f} s (wall {run.wall_seconds:.2f} s), {run.state}, "
                             f"{run.written:,} rows written")
                        if run.state != "success" or run.etl_run.get("status") != "success":
                            result.notes.append(f"{label} {variant} {name} round {number}: dag run {run.state}: "
                                                f"{run.etl_run.get('error_message')}")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(airflow.home, ignore_errors=True)
    return result
