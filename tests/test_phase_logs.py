"""The long phases report progress with their totals, and bulk loads and retries say so: real HTTP on
127.0.0.1 and a real PostgreSQL. The 10-second rule itself is tested with a clock in test_progress.py;
here it is set to 0 so that every check logs a line."""

import gzip
import io
import logging
import re

import psycopg
import pytest
import requests

from sluice import api_source, csv_source, http_client, progress, rules, settings, warehouse
from sluice_devtools import sample_data
from sluice_devtools.source_server import Fault, SourceServer

POLICY = http_client.RetryPolicy(attempts=2, timeout=5.0, backoff_base=0.01, backoff_max=0.01)
ROWS = 60_000  # a 3 MB CSV: several 1 MB chunks to download and to COPY, and several checks while staging


@pytest.fixture
def server():
    with SourceServer() as running:
        yield running


@pytest.fixture
def lines(caplog, monkeypatch):
    monkeypatch.setattr(progress, "INTERVAL", 0)
    caplog.set_level(logging.INFO, logger="sluice")
    return lambda pattern: [m for m in (re.search(pattern, r.getMessage()) for r in caplog.records) if m]


def percents(matches) -> list[int]:
    return [int(m["percent"]) for m in matches]


def fetch_csv(server, tmp_path, out) -> None:
    with requests.Session() as session:
        csv_source.fetch(session, f"{server.url}/items.csv", settings.DEFAULT_CSV_MAPPING, out, run_id="run-1",
                         uri="file:///s", policy=POLICY, max_bytes=10**9, workdir=str(tmp_path), sleep=lambda s: None)


def test_download_and_staging_report_progress_out_of_the_files_size(server, tmp_path, lines):
    body = sample_data.csv_bytes(ROWS)
    server.serve_bytes("items.csv", body)
    total = progress.size(len(body))

    fetch_csv(server, tmp_path, io.BytesIO())

    assert lines(rf"^csv: downloading http://127\.0\.0\.1:\d+/items\.csv \({total}\)$")
    downloading = lines(rf"^csv: downloading, [\d.]+ MB of {total} \((?P<percent>\d+) %\) after [\d.]+ s$")
    assert len(downloading) == -(-len(body) // http_client.CHUNK_BYTES)  # one check per chunk
    assert percents(downloading) == sorted(percents(downloading)) and percents(downloading)[-1] == 100
    assert len(lines(rf"^csv: downloaded {total} in [\d.]+ s$")) == 1
    staging = lines(rf"^csv: staging, .+ of {total} \((?P<percent>\d+) %\), (?P<records>[\d,]+) records staged, "
                    rf"0 quarantined after")
    # the clock is read every CHECK_EVERY rows, not every row
    assert len(staging) == ROWS // progress.CHECK_EVERY + 1
    assert [int(m["records"].replace(",", "")) for m in staging][1:3] == [progress.CHECK_EVERY,
                                                                          2 * progress.CHECK_EVERY]
    assert percents(staging) == sorted(percents(staging))
    assert len(lines(rf"^csv: staged {ROWS:,} records, quarantined 0 in [\d.]+ s$")) == 1


def test_a_gzipped_download_reports_progress_without_a_total_it_cannot_compare(server, tmp_path, lines):

    body = sample_data.csv_bytes(ROWS)
    server.serve_bytes("items.csv", body)
    # served once compressed: the Content-Length counts gzip bytes, the download counts decoded ones
    server.add_faults("items.csv", Fault(body=gzip.compress(body), headers={"Content-Type": "text/csv",
                                                                            "Content-Encoding": "gzip"}))

    fetch_csv(server, tmp_path, io.BytesIO())

    assert lines(r"^csv: downloading http://127\.0\.0\.1:\d+/items\.csv$")
    assert lines(r"^csv: downloading, [\d.]+ MB so far after")
    assert not lines(r"^csv: downloading, .* of ")
    assert lines(rf"^csv: downloaded {progress.size(len(body))} in")


def test_the_copy_into_postgresql_reports_progress_out_of_the_staged_files_size(server, tmp_path, lines,
                                                                                database_url):
    server.serve_bytes("items.csv", sample_data.csv_bytes(ROWS))
    staged = io.BytesIO()
    fetch_csv(server, tmp_path, staged)
    staged.seek(0)
    total = progress.size(len(staged.getvalue()))

    with psycopg.connect(database_url) as conn:
        warehouse.store_raw(conn, "csv", staged, run_id="run-1", lock_timeout_seconds=5)

    copying = lines(rf"^csv: copying the staged file into PostgreSQL, [\d.]+ MB of {total} \((?P<percent>\d+) %\)")
    assert len(copying) == -(-len(staged.getvalue()) // warehouse.COPY_CHUNK)
    assert percents(copying)[-1] == 100
    assert len(lines(rf"^csv: copied the staged file \({total}\) into PostgreSQL in [\d.]+ s$")) == 1
    assert lines(rf"^csv: stored {ROWS:,} staged records in raw_csv_data: {ROWS:,} inserted, 0 updated, 0 unchanged")


def test_a_bulk_load_logs_its_index_drop_and_rebuild(tmp_path, lines, database_url):
    path = tmp_path / "items.csv"
    path.write_bytes(sample_data.csv_bytes(500))
    staged = io.BytesIO()
    csv_source.stage_file(str(path), settings.DEFAULT_CSV_MAPPING, staged, run_id="run-1", uri="s", where="csv")
    staged.seek(0)
    with psycopg.connect(database_url) as conn:
        count = "select count(*) from pg_indexes where tablename = %s"
        raw_indexes, normalized_indexes = (conn.execute(count, (t,)).fetchone()[0]
                                           for t in ("raw_csv_data", "normalized_data"))
        conn.rollback()
        warehouse.store_raw(conn, "csv", staged, run_id="run-1", lock_timeout_seconds=5, bulk_rows=100)
        warehouse.normalize(conn, "csv", rules.Normalization(settings.DEFAULT_CSV_MAPPING), run_id="run-1", full_refresh=False,
                            lock_timeout_seconds=5)
        warehouse.upsert(conn, "csv", run_id="run-1", lock_timeout_seconds=5, bulk_rows=100)

    for table, indexes in (("raw_csv_data", raw_indexes), ("normalized_data", normalized_indexes)):
        assert lines(rf"^bulk load into {table}: dropped {indexes} indexes \(rebuilt after the load\) in [\d.]+ s$")
        assert lines(rf"^bulk load into {table}: rebuilt {indexes} indexes in [\d.]+ s$")


def test_api_fetching_reports_records_and_pages_so_far(server, lines):
    server.serve_json("posts", sample_data.posts(3 * progress.CHECK_EVERY), page_size=5000)

    with requests.Session() as session:
        api_source.fetch(session, f"{server.url}/posts", settings.DEFAULT_API_MAPPING, io.BytesIO(), run_id="run-1",
                         uri="s", policy=POLICY, max_pages=100, max_bytes=10**9, params={"userId_gte": 1},
                         sleep=lambda s: None)

    assert lines(r"^api: fetching http://127\.0\.0\.1:\d+/posts with userId_gte=1$")
    fetching = [m.group(1) for m in lines(r"^api: fetching, ([\d,]+ records so far, \d+ pages), ")]
    assert fetching[:3] == ["4,096 records so far, 1 pages", "5,000 records so far, 1 pages",
                            "8,192 records so far, 2 pages"]
    assert lines(rf"^api: fetched 3 pages \([\d.]+ MB\), staged {3 * progress.CHECK_EVERY:,} records, "
                 rf"quarantined 0 in [\d.]+ s$")


def test_a_retry_is_logged_as_a_warning_without_the_query(server, tmp_path, lines, caplog):
    server.serve_bytes("items.csv", sample_data.csv_bytes(3))
    server.add_faults("items.csv", Fault(503))

    with requests.Session() as session:
        csv_source.fetch(session, f"{server.url}/items.csv?token=s3cr3t", settings.DEFAULT_CSV_MAPPING,
                         io.BytesIO(), run_id="run-1", uri="s", policy=POLICY, max_bytes=10**9,
                         workdir=str(tmp_path), sleep=lambda s: None)

    retried = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "sluice.http_client"]
    assert [r.getMessage() for r in retried] == [
        f"csv: GET {server.url}/items.csv answered 503 Service Unavailable; retrying in 0.0 s (attempt 2 of 2)"]
    assert "s3cr3t" not in caplog.text
