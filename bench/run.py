"""`python -m bench`: make the inputs, run the pipeline and the baselines, load the API, report.

Steps, in order: inputs (bench/work/inputs) → the whole DAG as users run it (`airflow dags test`, per server:
whole_dag.py) → a fresh database → three pipeline passes (first load,
unchanged rerun, 1% changed) → the same first load at --memory-check-rows → baselines (COPY, executemany,
PostgresHook.insert_rows, dlt) → the read API under wrk at full size and at --small-rows → the report
(bench/results/<date>.md and .png) with a PASS/MISS line per target.
"""

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from bench import (api_export, api_load, attributes, baselines, benchenv, database, inputs, plot, quality_gate, report,
                   targets, whole_dag)
from bench.child import REPO, Children, StepFailed
from bench.pipeline import LOAD_STAGES, STAGES, PassResult, Source, run_pass, served_files
from sluice_devtools.source_server import SourceServer

API_PAGE_SIZE = 1000
DATA_PAGE_SIZE = 10
DEEP_PAGE = 10_000


@dataclass
class BenchResults:
    options: list[str]
    rows: int
    api_rows: int
    memory_rows: int
    started: dt.datetime
    server: str = ""
    machine: str = ""
    passes: dict[str, PassResult] = field(default_factory=dict)
    expected_changed: dict[str, int] = field(default_factory=dict)
    memory_pass: PassResult | None = None
    baselines: list = field(default_factory=list)
    api: list = field(default_factory=list)
    api_small: list = field(default_factory=list)
    api_access: list = field(default_factory=list)  # api_load.AccessComparison: /data without and with auth and RLS
    api_observability: list = field(default_factory=list)  # api_load.ObservabilityComparison: metrics, tracing
    api_export: object = None  # api_export.ExportResult: /export against psql \copy, worker RSS
    api_workers: int = 2
    wrk_spec: str = ""
    notes: list[str] = field(default_factory=list)
    wall_seconds: float = 0.0
    flushed: bool = True  # a CHECKPOINT before each timed step
    whole_dag: list = field(default_factory=list)  # whole_dag.ServerResult per server
    attributes: list = field(default_factory=list)  # whole_dag.Comparison (bench.attributes)
    quality: list = field(default_factory=list)  # whole_dag.Comparison (bench.quality_gate)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--rows", type=int, default=1_000_000, help="CSV rows (default 1,000,000)")
    add("--api-rows", type=int, default=100_000, help="API records (default 100,000)")
    add("--memory-check-rows", type=int, default=100_000,
        help="also run the first load at this size to compare peak RSS per stage (0: skip)")
    add("--naive-sample", type=int, default=20_000, help="rows for the executemany baseline, extrapolated")
    add("--hook-sample", type=int, default=200_000,
        help="rows for the PostgresHook.insert_rows baseline, extrapolated (0: all rows)")
    add("--no-dlt", action="store_true", help="skip the dlt baselines (and the bench virtualenv)")
    add("--no-wrk", action="store_true", help="no load test: the API gets serial requests and Postgres timings only")
    add("--no-api", action="store_true", help="skip the read API entirely")
    add("--wrk-seconds", type=int, default=10)
    add("--wrk-threads", type=int, default=2)
    add("--wrk-connections", type=int, default=8,
        help="requests in flight (default 8). By Little's law the mean latency is connections ÷ req/s: the "
             "p99 < 25 ms at ≥ 1,000 req/s target leaves room for at most 25, and 32 cannot meet it on any server")
    add("--api-workers", type=int, default=2, help="gunicorn workers (as `make serve`)")
    add("--no-export", action="store_true", help="skip GET /export against psql \\copy (bench/api_export.py)")
    add("--export-rounds", type=int, default=3, help="rounds of the export comparison; it reports medians")
    add("--small-rows", type=int, default=10_000, help="table size for the /stats and /health comparison")
    add("--search", default="12345", help="the /data?search= term")
    add("--results-dir", type=Path, default=REPO / "bench" / "results")
    add("--work-dir", type=Path, default=REPO / "bench" / "work")
    add("--no-checkpoint", action="store_true",
        help="skip the VACUUM (ANALYZE) and CHECKPOINT before each timed step (faster, noisier timings)")
    add("--keep-databases", action="store_true", help="do not drop the run's databases at the end")
    add("--whole-dag-only", action="store_true",
        help="only the whole-DAG mode (airflow dags test per server, and its dlt baselines)")
    add("--no-whole-dag", action="store_true", help="skip the whole-DAG mode")
    add("--whole-dag-tiny-rows", type=int, default=1000,
        help="CSV rows of the tiny DAG run whose wall time is Airflow's fixed start-up (default 1,000)")
    add("--whole-dag-tiny-runs", type=int, default=3,
        help="tiny DAG runs per server; the fixed start-up is the median of their wall times (default 3)")
    add("--whole-dag-rounds", type=int, default=3,
        help="rounds of the first load, unchanged rerun and 1%% changed per server, each on a fresh warehouse; "
             "the targets take the median of the rounds (default 3)")
    add("--scale-rows", type=int, default=0,
        help="after the whole DAG's rounds on the embedded server, one first load of this many CSV rows on a fresh "
             "warehouse (issue 28: 10000000), judged against the rounds' first loads (linear + 5%%) and its peak RSS "
             "against the tiny run's; 0 (default): not run, its targets SKIP")
    add("--no-attributes", action="store_true", help="skip the declared fields' comparison")
    add("--attributes-only", action="store_true",
        help="only the declared fields' comparison: the whole DAG over --attributes-rows CSV rows with five "
             "declared fields against none, on the embedded server")
    add("--attributes-rows", type=int, default=1_000_000, help="CSV rows of that comparison (default 1,000,000)")
    add("--attributes-rounds", type=int, default=2, help="rounds of that comparison; the ratio is of medians")
    add("--no-quality", action="store_true", help="skip the quality gate's comparison")
    add("--quality-only", action="store_true",
        help="only the quality gate's comparison: the whole DAG over --quality-rows CSV rows with the default gate "
             "against anomalies: false, first load and unchanged rerun, on the embedded server")
    add("--quality-rows", type=int, default=1_000_000, help="CSV rows of that comparison (default 1,000,000)")
    add("--quality-rounds", type=int, default=3, help="rounds of that comparison (default 3, variants interleaved "
        "pass by pass); the ratios are of medians")
    add("--no-pg15", action="store_true",
        help="whole DAG on the embedded server only: no BENCH_DATABASE_URL server, no Debian PostgreSQL 15 cluster")
    add("--api-only", action="store_true",
        help="the read API's measurements and targets (issue 28) only: the pipeline passes load --rows, then the "
             "API (and the small table for /stats and /health); no dlt, whole-DAG, declared-fields, quality, "
             "memory-check or export runs")
    args = parser.parse_args(argv)
    if args.whole_dag_only:  # as its help says: the declared fields' and the quality gate's comparisons are other modes
        args.no_attributes = args.no_quality = True
    if args.api_only:
        args.no_dlt = args.no_whole_dag = args.no_attributes = args.no_quality = args.no_pg15 = args.no_export = True
        args.memory_check_rows = 0
    return args


_STARTED = time.monotonic()


def echo(text: str = "") -> None:
    """Progress lines carry the seconds since start; the report itself is printed bare."""
    print(f"[{time.monotonic() - _STARTED:6.1f}s] {text}" if text else "", flush=True)


def machine() -> str:
    memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024 ** 3
    # other work on the machine skews every number: say how busy it was when the run began
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    return (f"{os.cpu_count()} cores, {memory_gb:.0f} GB RAM, Python {platform.python_version()}, "
            f"load average {load} at start")


def new_database(server: database.Server, children: Children, name: str) -> str:
    """A fresh database with the schema applied by a child, which reads sql/ as the stages will."""
    db = server.create_database(name)
    children.run("apply_schema", {"db": db}, label=f"schema {name}", quiet=True)
    return db


def run_whole_dag(args, results: BenchResults, children: Children, stamp: str, csv_input) -> Path | None:
    """`airflow dags test` passes and dlt's baselines on the embedded server, then on PostgreSQL 15
    (BENCH_DATABASE_URL's server, else a throwaway cluster from Debian's binaries when they exist)."""
    python = None
    if args.no_dlt:
        results.notes.append("whole DAG: dlt baselines skipped (--no-dlt)")
    else:
        python, why = benchenv.ensure(args.work_dir / ".venv-bench", echo=echo)
        if python is None:
            results.notes.append(f"whole DAG: dlt could not be installed here, so its baselines are missing: {why}")
    tiny = inputs.write_csvs(args.work_dir / "inputs", args.whole_dag_tiny_rows, with_variants=False)
    # streamed to disk row by row (inputs.write_csvs), only the one file a first load reads
    scale = (inputs.write_csvs(args.work_dir / "inputs", args.scale_rows, with_variants=False)
             if args.scale_rows else None)
    common = {"children": children, "work_dir": args.work_dir, "stamp": stamp, "csv_input": csv_input,
              "tiny_input": tiny, "bench_python": python, "tiny_runs": max(1, args.whole_dag_tiny_runs),
              "rounds": max(1, args.whole_dag_rounds), "echo": echo}
    servers = [("embedded", lambda: database.Server(args.work_dir / "pg", from_env=False))]
    if args.no_pg15:
        results.notes.append("whole DAG: embedded server only (--no-pg15)")
    elif os.environ.get("BENCH_DATABASE_URL"):
        servers.append(("bench_database_url", lambda: database.Server(args.work_dir / "pg")))
    elif database.DEBIAN_PG15.exists():
        servers.append(("pg15", lambda: database.DebianCluster(args.work_dir / f"pg15-{stamp}")))
    else:
        results.notes.append(f"whole DAG: no PostgreSQL 15 ({database.DEBIAN_PG15} missing, no BENCH_DATABASE_URL)")
    for label, start in servers:
        server = start()
        try:
            # the scale load runs on the embedded server only: its time is the issue's target, not PostgreSQL 15's
            results.whole_dag.append(whole_dag.run_server(server, label, **common,
                                                          scale_input=scale if label == "embedded" else None))
        finally:
            server.close(keep_databases=args.keep_databases)
    return python


def run_attributes(args, results: BenchResults, children: Children, stamp: str) -> None:
    """The declared fields' cost (bench.attributes) on the embedded server."""
    server = database.Server(args.work_dir / "pg", from_env=False)
    try:
        results.attributes.append(attributes.run_server(
            server, "embedded", log_dir=children.log_dir, work_dir=args.work_dir, stamp=stamp,
            rows=args.attributes_rows, rounds=max(1, args.attributes_rounds), echo=echo))
    finally:
        server.close(keep_databases=args.keep_databases)


def run_quality(args, results: BenchResults, children: Children, stamp: str) -> None:
    """The quality gate's cost (bench.quality_gate) on the embedded server."""
    server = database.Server(args.work_dir / "pg", from_env=False)
    try:
        results.quality.append(quality_gate.run_server(
            server, "embedded", log_dir=children.log_dir, work_dir=args.work_dir, stamp=stamp,
            rows=args.quality_rows, rounds=max(1, args.quality_rounds), echo=echo))
    finally:
        server.close(keep_databases=args.keep_databases)


def run_pipeline(args, results: BenchResults, server, children: Children, stamp: str, csv_input, api_input):
    """The three passes on the main database, and the first load again at the memory-check size."""
    db = new_database(server, children, f"bench_{stamp}")
    staging = args.work_dir / "staging"
    max_pages = args.api_rows // API_PAGE_SIZE + 10
    # both sources are read over HTTP on 127.0.0.1, as the DAG reads them
    with SourceServer() as api, served_files(args.work_dir / "inputs") as files:
        api.serve_json("posts", api_input.records, page_size=API_PAGE_SIZE)
        api.serve_json("posts-changed", api_input.changed_records, page_size=API_PAGE_SIZE)
        for name, csv_path, route in (("first", csv_input.path, "posts"), ("rerun", csv_input.path, "posts"),
                                      ("changed", csv_input.changed_path, "posts-changed")):
            echo(f"pass: {report.PASS_NAMES[name]}")
            results.passes[name] = run_pass(children, db, name, [
                Source("csv", args.rows, url=f"{files}/{csv_path.name}"),
                Source("api", args.api_rows, url=f"{api.url}/{route}", max_pages=max_pages),
            ], staging)
        if args.memory_check_rows:
            small_csv = inputs.write_csvs(args.work_dir / "inputs", args.memory_check_rows, with_variants=False)
            echo(f"pass: first load at {args.memory_check_rows:,} rows (peak RSS comparison)")
            results.memory_pass = run_pass(
                children, new_database(server, children, f"bench_{stamp}_memory"), "memory",
                [Source("csv", args.memory_check_rows, url=f"{files}/{small_csv.path.name}")], staging)
    results.expected_changed = {"csv": csv_input.changed, "api": api_input.changed}
    kept = results.passes["first"].of("normalize", "csv").result["valid"]
    if kept != csv_input.valid:
        results.notes.append(f"Sluice kept {kept:,} CSV rows; the baselines load the {csv_input.valid:,} rows "
                             "bench.inputs.typed keeps")
    return db


def run_baselines(args, results: BenchResults, children: Children, db: str, csv_input) -> Path | None:
    """COPY, executemany, insert_rows, then dlt; returns the bench venv's python when it is ready."""
    echo("baselines")
    results.baselines += baselines.run_baselines(
        children, db, csv_path=csv_input.path, copy_path=csv_input.copy_path, valid=csv_input.valid,
        naive_sample=min(args.naive_sample, csv_input.valid), hook_sample=args.hook_sample,
        airflow_home=args.work_dir / "airflow", failures=results.notes)
    venv = args.work_dir / ".venv-bench"
    if args.no_dlt:
        results.notes.append("dlt baselines skipped (--no-dlt)")
        python = venv / "bin" / "python"
        return python if (venv / ".installed").exists() and python.exists() else None
    python, why = benchenv.ensure(venv, echo=echo)
    if python is None:
        results.notes.append(f"dlt could not be installed here, so its baselines are missing: {why}")
        return None
    pipelines_dir = args.work_dir / "dlt" / children.log_dir.name
    try:
        results.baselines += baselines.run_dlt(children, python, db, csv_path=csv_input.path,
                                               valid=csv_input.valid, pipelines_dir=pipelines_dir,
                                               failures=results.notes)
    finally:
        shutil.rmtree(pipelines_dir, ignore_errors=True)  # dlt's state and load packages: ~150 MB a run
    return python


def run_api(args, results: BenchResults, server, children: Children, stamp: str, db: str) -> None:
    wrk = None
    if not args.no_wrk:
        wrk = api_load.ensure_wrk(echo=echo)
        if wrk is None:
            results.notes.append("wrk is not installed and could not be installed: API measured without load")
    options = api_load.LoadOptions(wrk=wrk, seconds=args.wrk_seconds, threads=args.wrk_threads,
                                   connections=args.wrk_connections, workers=args.api_workers)
    results.api_workers = args.api_workers
    results.wrk_spec = (f"-t{args.wrk_threads} -c{args.wrk_connections} -d{args.wrk_seconds}s --latency"
                        if wrk else "not run")
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("vacuum (analyze) normalized_data")  # what autovacuum does soon after a big load
        (rows,) = conn.execute("select count(*) from normalized_data").fetchone()
    reader_db = api_load.reader_access(db)
    page = max(2, min(DEEP_PAGE, rows // DATA_PAGE_SIZE))
    cursor = api_load.cursor_at_page(db, page, DATA_PAGE_SIZE)
    endpoints = [
        ("/data first page", f"/data?page_size={DATA_PAGE_SIZE}"),
        (f"/data page {page:,} (OFFSET)", f"/data?page={page}&page_size={DATA_PAGE_SIZE}"),
        (f"/data cursor at page {page:,}", f"/data?cursor={cursor}&page_size={DATA_PAGE_SIZE}"),
        ("/data search", f"/data?search={args.search}"),
        ("/stats", "/stats"),
        ("/health", "/health"),
    ]
    echo(f"read API on {rows:,} rows")
    results.api = api_load.measure(db, endpoints, rows, options, children.log_dir / "gunicorn.log", echo=echo)
    if wrk:  # what authentication and row-level security cost: the same requests with and without each
        results.api_access = api_load.compare_access(db, reader_db, endpoints[:1] + endpoints[2:4], options,
                                                     children.log_dir / "gunicorn-access.log", echo=echo)
        # what metrics and tracing cost: /data's first page with both off, metrics on, both on
        results.api_observability = api_load.compare_observability(
            db, endpoints[:1], options, children.log_dir / "gunicorn-observability.log", echo=echo)
    if not args.no_export:
        echo(f"GET /export/csv on {rows:,} rows against psql \\copy")
        results.api_export = api_export.measure(db, "csv", children.log_dir / "gunicorn-export.log",
                                                rounds=args.export_rounds, echo=echo)
    if args.small_rows:
        small_csv = inputs.write_csvs(args.work_dir / "inputs", args.small_rows, with_variants=False)
        small_db = new_database(server, children, f"bench_{stamp}_small")
        echo(f"pass: first load at {args.small_rows:,} rows (for /stats and /health)")
        with served_files(small_csv.path.parent) as files:
            run_pass(children, small_db, "small",
                     [Source("csv", args.small_rows, url=f"{files}/{small_csv.path.name}")], args.work_dir / "staging")
        with psycopg.connect(small_db, autocommit=True) as conn:
            conn.execute("vacuum (analyze) normalized_data")
            (small_rows,) = conn.execute("select count(*) from normalized_data").fetchone()
        api_load.reader_access(small_db)  # its scope key: every app signs its scope, the owner's too
        echo(f"read API on {small_rows:,} rows")
        results.api_small = api_load.measure(small_db, [("/stats", "/stats"), ("/health", "/health")], small_rows,
                                             options, children.log_dir / "gunicorn-small.log", echo=echo)


def run_stages(args, results: BenchResults, children: Children, stamp: str, csv_input, api_input) -> Path | None:
    """The stage mode: pipeline passes step by step, the baselines, the read API; returns the bench venv's python."""
    server = database.Server(args.work_dir / "pg")
    try:
        results.server = server.describe()
        db = run_pipeline(args, results, server, children, stamp, csv_input, api_input)
        bench_python = run_baselines(args, results, children, db, csv_input)
        if args.no_api:
            results.notes.append("read API skipped (--no-api)")
        else:
            try:
                run_api(args, results, server, children, stamp, db)
            except (StepFailed, RuntimeError, OSError, psycopg.Error, subprocess.SubprocessError) as failure:
                # keep the minutes of measurements above: report what was measured, and why the rest is missing
                results.notes.append(f"read API measurement stopped: {str(failure).splitlines()[0]}")
                echo(f"read API measurement stopped: {failure}")
    finally:
        server.close(keep_databases=args.keep_databases)
    return bench_python


def draw_plot(results: BenchResults, bench_python: Path | None, data_path: Path, png_path: Path) -> str:
    sluice = results.passes["first"].seconds("csv", LOAD_STAGES)
    data = {
        "title": f"Sluice bench {results.started:%Y-%m-%d}: {results.rows:,} CSV rows",
        "passes": {report.PASS_NAMES[name]: {**{stage: run.of(stage, "csv").seconds for stage in STAGES},
                                             "record_run": run.of("record_run", "all").seconds}
                   for name, run in results.passes.items()},
        "loads": {"Sluice store_raw→normalize→upsert": sluice,
                  **{b.name + (" (extrapolated)" if b.extrapolated else ""): b.seconds for b in results.baselines}},
    }
    data_path.write_text(json.dumps(data, indent=1))
    if bench_python is not None:
        drawn = subprocess.run([str(bench_python), str(Path(plot.__file__)), str(data_path), str(png_path)],
                               capture_output=True, text=True)
        if drawn.returncode == 0:
            return drawn.stdout.strip()
        results.notes.append(f"matplotlib plot failed ({drawn.stderr.strip().splitlines()[-1:]}); plain PNG instead")
    return plot.draw(data, str(png_path))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    database.FLUSH_BEFORE_STEPS = not args.no_checkpoint
    wall = time.monotonic()
    started = dt.datetime.now(dt.timezone.utc)
    stamp = f"{started:%Y%m%d_%H%M%S}_{os.getpid()}"  # database names: unique even for concurrent runs
    results = BenchResults(argv, args.rows, args.api_rows, args.memory_check_rows, started, machine=machine(),
                           flushed=not args.no_checkpoint)
    children = Children(args.work_dir / "logs" / stamp, echo=echo)
    echo(f"inputs: {args.rows:,} CSV rows, {args.api_rows:,} API records (in {args.work_dir / 'inputs'})")
    one_comparison = args.attributes_only or args.quality_only
    csv_input = None if one_comparison else inputs.write_csvs(args.work_dir / "inputs", args.rows)
    api_input = inputs.api_records(args.api_rows)
    bench_python = None
    if not args.no_whole_dag and not one_comparison:
        bench_python = run_whole_dag(args, results, children, stamp, csv_input)
    if not args.no_attributes and not args.quality_only:
        run_attributes(args, results, children, stamp)
    if not args.no_quality and not args.attributes_only:
        run_quality(args, results, children, stamp)
    if not args.whole_dag_only and not one_comparison:
        bench_python = run_stages(args, results, children, stamp, csv_input, api_input)
    results.wall_seconds = time.monotonic() - wall
    judged = targets.evaluate(results)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    stem = args.results_dir / f"{started:%Y-%m-%d}"
    plot_name, how = None, "no"  # the plot shows the stage mode's passes
    if results.passes:
        how = draw_plot(results, bench_python, children.log_dir / "plot.json", stem.with_suffix(".png"))
        plot_name = stem.with_suffix(".png").name
    text = report.render(results, judged, plot_name, how)
    for result in results.attributes:
        text += "\n" + "\n".join(attributes.section(result)) + "\n"
    for result in results.quality:
        text += "\n" + "\n".join(quality_gate.section(result)) + "\n"
    stem.with_suffix(".md").write_text(text, encoding="utf-8")
    print("\n" + text, flush=True)
    echo(f"written: {stem.with_suffix('.md')}" + (f" and {plot_name} ({how} plot)" if plot_name else "")
         + f"; logs in {children.log_dir}")
    return 0
