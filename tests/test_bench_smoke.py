"""The bench harness end to end at tiny sizes, with its slow parts (dlt, wrk, PostgreSQL 15) switched off."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from bench import database

REPO = Path(__file__).resolve().parents[1]
STAGES = ("ingest", "store_raw", "normalize", "upsert", "checkpoint", "record_run (all sources)")
PASSES = ("first load", "unchanged rerun", "1% changed")


@pytest.mark.slow
def test_bench_reports_every_stage_of_every_pass(server_url, tmp_path):
    command = [sys.executable, "-m", "bench", "--rows", "1000", "--api-rows", "200", "--memory-check-rows", "500",
               "--small-rows", "200", "--no-dlt", "--no-wrk", "--no-checkpoint", "--no-whole-dag", "--no-attributes",
               "--no-quality",
               "--results-dir", str(tmp_path / "results"), "--work-dir", str(tmp_path / "work")]
    env = {**os.environ, "BENCH_DATABASE_URL": server_url}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)

    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    out = done.stdout
    for source in ("csv", "api"):
        assert f"## Pipeline stages: {source} source" in out
    for pass_name in PASSES:
        for stage in STAGES:
            assert f"| {pass_name} | {stage} |" in out, f"no row for {pass_name} / {stage}"
        assert f"| {pass_name} | **store_raw→normalize→upsert** |" in out
        assert f"| {pass_name} | **end to end** (ingest→checkpoint) |" in out
    for baseline in ("COPY into a plain table", "psycopg2 executemany", "PostgresHook.insert_rows"):
        assert f"| {baseline}" in out
    assert "| `/data?page_size=10` |" in out and "| `/health` |" in out
    assert "### Export: GET /export against psql \\copy" in out
    assert re.search(r"^  csv +[\d.]+ s .* = [\d.]+x psql \\copy of its own select", out, re.M), out
    # every target gets a verdict line; the exact-count ones do not depend on speed
    assert "PASS  1% changed writes exactly those rows" in out
    assert "SKIP  CSV store_raw→normalize→upsert faster than dlt pyarrow merge: not measured" in out
    assert re.search(r"^(PASS|MISS)  API source first load ≥ 50,000 records/s through ingest → upsert: 200 records "
                     r"in \d+\.\d\d s = [\d,]+ records/s \(ingest [\d.]+ s, store_raw", out, re.M), out
    assert out.count("\nPASS  ") + out.count("\nMISS  ") + out.count("\nSKIP  ") == 14

    results = list((tmp_path / "results").iterdir())
    assert sorted(path.suffix for path in results) == [".md", ".png"]
    png = next(path for path in results if path.suffix == ".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_bench_whole_dag_mode_reports_each_dag_run(tmp_path):
    """`airflow dags test` on the embedded server: every pass, every task, rows written, peak RSS; and the opt-in
    scale first load (--scale-rows, issue 28's 10M rows, here 3,000) judged against the rounds' first loads."""
    # the embedded server's data lives under .sluice/ as the other tests' servers do: pytest's temporary
    # folders are pruned by concurrent pytest runs, which would pull the data directory from under the server
    work_dir = REPO / ".sluice" / f"bench-smoke-{os.getpid()}"
    command = [sys.executable, "-m", "bench", "--whole-dag-only", "--rows", "2000", "--no-dlt", "--no-pg15", "--no-attributes",
               "--no-quality", "--whole-dag-tiny-runs", "1", "--whole-dag-rounds", "2",
               "--scale-rows", "3000", "--results-dir", str(tmp_path / "results"), "--work-dir", str(work_dir)]
    env = {key: value for key, value in os.environ.items() if key != "BENCH_DATABASE_URL"}
    try:
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)

    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    out = done.stdout
    assert "## Whole DAG: `airflow dags test etl_pipeline`, 2,000 CSV rows + 100 posts" in out
    header = next(line for line in out.splitlines()
                  if line.startswith("| pass | wall s | pipeline s | ingest→record_run s |"))
    for task in ("init_schema", "ingest", "store_raw", "normalize", "upsert", "checkpoint", "record_run"):
        assert f" {task} |" in header
    rows = {line.split(" | ")[0][2:]: line for line in out.splitlines()
            if line.startswith(("| tiny", "| first load", "| unchanged rerun", "| 1% changed", "| scale"))}
    assert set(rows) == {"tiny (fixed start-up)", "first load", "unchanged rerun", "1% changed", "first load 2",
                         "unchanged rerun 2", "1% changed 2", "scale first load"}
    # its own warehouse: the scale CSV's 2,970 good rows (1% are bad) and the 100 posts
    assert "| 3,070 + 0 |" in rows["scale first load"], rows["scale first load"]
    assert all(line.endswith("| success |") for line in rows.values()), rows
    # the counts come from each run's etl_runs row: 2,080 new rows, then none, then exactly the 21 changed;
    # the second round loads its own fresh warehouse
    for round_ in ("", " 2"):
        assert "| 2,080 + 0 |" in rows[f"first load{round_}"] and "| 0 + 0 | 2,080 |" in rows[f"unchanged rerun{round_}"]
        assert "| 0 + 21 | 2,059 |" in rows[f"1% changed{round_}"]
    # the targets take the rounds' medians (at 2,000 rows a pipeline time may be ≤ 0: a SKIP, still with both)
    assert re.search(r"^(PASS|MISS|SKIP)  whole DAG unchanged rerun .*: (-?\d+\.\d\d) \(median of "
                     r"-?\d+\.\d\d, -?\d+\.\d\d\) s vs ", out, re.M), out
    # the DAG runs' own statements, by task (sql/*.sql names), timed in the airflow process
    # (at 2,000 rows which statements reach 5% of their task varies: one of the loading steps' does)
    assert re.search(r"^\| (store_raw|normalize|upsert) \| first load \| `[a-z_]+` \| \d+\.\d\d \| \d+% \|$",
                     out, re.M), out
    assert "PASS  whole DAG peak RSS at 2,000 rows within 100 MB of 1,000 [embedded]" in out
    assert "SKIP  whole DAG first load ≤ 1× dlt pyarrow merge + Sluice's indexes (aim 0.67×) [embedded]" in out
    assert re.search(r"^(PASS|MISS|SKIP)  whole DAG first load at 3,000 rows ≤ 1.575× the 2,000-row first load "
                     r"\[embedded\]", out, re.M), out
    assert "PASS  whole DAG peak RSS flat 1,000 → 3,000 rows (within 100 MB) [embedded]" in out
    assert out.count("\nPASS  ") + out.count("\nMISS  ") + out.count("\nSKIP  ") == 6
    assert [path.suffix for path in (tmp_path / "results").iterdir()] == [".md"]


@pytest.mark.slow
def test_bench_compares_the_whole_dag_with_and_without_declared_fields(tmp_path):
    """--attributes-only on 2,000 rows: one round of each variant, both loading every row, and the ratio."""
    work_dir = REPO / ".sluice" / f"bench-attributes-{os.getpid()}"
    command = [sys.executable, "-m", "bench", "--attributes-only", "--attributes-rows", "2000",
               "--attributes-rounds", "1", "--no-dlt", "--results-dir", str(tmp_path / "results"),
               "--work-dir", str(work_dir)]
    env = {key: value for key, value in os.environ.items() if key != "BENCH_DATABASE_URL"}
    try:
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)

    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    out = done.stdout
    assert "## Declared fields: the whole DAG over 2,000 CSV rows, five fields against none [embedded]" in out
    for variant in ("no fields", "five fields"):
        assert re.search(rf"^\| {variant} \| 1 \| \d+\.\d\d \| \d+\.\d\d \| \d+\.\d\d \| 2,000 \| success \|$",
                         out, re.M), out
    assert re.search(r"^(PASS|MISS)  declared fields cost at most 15% more time: five fields \d+\.\d\d s vs none "
                     r"\d+\.\d\d s \(medians of 1 rounds\) = \d\.\d{3}× \[embedded\]$", out, re.M), out


@pytest.mark.slow
def test_bench_compares_the_whole_dag_with_and_without_the_quality_gate(tmp_path):
    """--quality-only on 2,000 rows: one round of each variant, first load and rerun, and a ratio per pass."""
    work_dir = REPO / ".sluice" / f"bench-quality-{os.getpid()}"
    command = [sys.executable, "-m", "bench", "--quality-only", "--quality-rows", "2000", "--quality-rounds", "1",
               "--no-dlt", "--results-dir", str(tmp_path / "results"), "--work-dir", str(work_dir)]
    env = {key: value for key, value in os.environ.items() if key != "BENCH_DATABASE_URL"}
    try:
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)

    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    out = done.stdout
    assert "## Quality gate: the whole DAG over 2,000 CSV rows, default gate against none [embedded]" in out
    for variant in ("gate off", "default gate"):
        assert re.search(rf"^\| {variant} \| first load \| 1 \| \d+\.\d\d \| \d+\.\d\d \| 1,980 \| success \|$",
                         out, re.M), out
        assert re.search(rf"^\| {variant} \| unchanged rerun \| 1 \| \d+\.\d\d \| \d+\.\d\d \| 0 \| success \|$",
                         out, re.M), out
    for pass_name in ("first load", "unchanged rerun"):
        assert re.search(rf"^(PASS|MISS)  the default gate costs at most 10% more time \({pass_name}\): \d+\.\d\d s "
                         r"vs gate off \d+\.\d\d s \(medians of 1 rounds\) = \d\.\d{3}× \[embedded\]$", out, re.M), out
    # the per-task medians, the gate's own time (the upsert task's difference) and its statements, named as
    # quality.sql names them, in the default gate's DAG runs
    for pass_name in ("first load", "unchanged rerun"):
        assert re.search(rf"^- {pass_name}: the gate's own time, the upsert task's median difference: [+-]\d+\.\d\d s, "
                         r"-?\d+\.\d% of the gate-off span \d+\.\d\d s$", out, re.M), out
        assert re.search(rf"^\| {pass_name}: task \(median s\) \| gate off \| default gate \| difference \|$\n"
                         r"\|---\|---\|---\|---\|\n\| init_schema \| \d+\.\d\d \| \d+\.\d\d \| [+-]\d+\.\d\d \|$", out,
                         re.M), out
    assert re.search(r"^- first load: the gate's statements .*`batch_nulls` \d+\.\d{3} s", out, re.M), out


@pytest.mark.skipif(not database.DEBIAN_PG15.exists(), reason="no Debian PostgreSQL 15 binaries")
def test_the_throwaway_postgresql_15_cluster_is_stopped_and_deleted():
    """The whole DAG's second server: fsync off as #16 measures; close() ends its postmaster and its files."""
    directory = REPO / ".sluice" / f"bench-pg15-{os.getpid()}"
    cluster = database.DebianCluster(directory)
    try:
        pid = cluster.pid
        db = cluster.create_database("bench_probe")
        with psycopg.connect(db) as conn:
            assert conn.execute("show server_version").fetchone()[0].startswith("15.")
            assert conn.execute("show fsync").fetchone()[0] == "off"
    finally:
        cluster.close(keep_databases=False)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not directory.exists()
