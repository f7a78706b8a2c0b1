"""The bench harness end to end on 1,000 rows, with its slow parts (dlt, wrk) switched off."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STAGES = ("ingest", "store_raw", "normalize", "upsert", "checkpoint", "record_run (all sources)")
PASSES = ("first load", "unchanged rerun", "1% changed")


@pytest.mark.slow
def test_bench_reports_every_stage_of_every_pass(server_url, tmp_path):
    command = [sys.executable, "-m", "bench", "--rows", "1000", "--api-rows", "200", "--memory-check-rows", "500",
               "--small-rows", "200", "--no-dlt", "--no-wrk", "--no-checkpoint",
               "--results-dir", str(tmp_path / "results"), "--work-dir", str(tmp_path / "work")]
    env = {**os.environ, "BENCH_DATABASE_URL": server_url}
    started = time.monotonic()
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - started

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
    # every target gets a verdict line; the exact-count ones do not depend on speed
    assert "PASS  1% changed writes exactly those rows" in out
    assert "SKIP  CSV store_raw→normalize→upsert faster than dlt pyarrow merge: not measured" in out
    assert out.count("\nPASS  ") + out.count("\nMISS  ") + out.count("\nSKIP  ") == 10

    results = list((tmp_path / "results").iterdir())
    assert sorted(path.suffix for path in results) == [".md", ".png"]
    png = next(path for path in results if path.suffix == ".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert elapsed < 30, f"the smoke run took {elapsed:.0f} s"
