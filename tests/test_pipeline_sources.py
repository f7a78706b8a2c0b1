"""Whole runs (dag.test) about where sources come from and what runs leave on disk."""

import os
import socket
import tempfile
import threading
import time

import pytest

from sluice import staging
from tests.pipeline_harness import Pipeline, point_airflow_at, start_sources

API_RECORDS, CSV_ROWS, BAD_EVERY = 30, 60, 50  # one bad CSV row


@pytest.fixture
def pipeline(monkeypatch, database_url, tmp_path):
    sources = start_sources(API_RECORDS, CSV_ROWS, BAD_EVERY)
    point_airflow_at(monkeypatch, database_url, sources, tmp_path / "staging")
    # the run's downloads go under the temp dir; a private one shows what the run leaves there
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    yield Pipeline(database_url, sources)
    sources.stop()


@pytest.fixture
def outside_world(monkeypatch):
    """Every request for a host other than 127.0.0.1 goes through this proxy, which records who called."""
    listener = socket.create_server(("127.0.0.1", 0))
    calls = []

    def accept():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return  # closed at teardown
            with conn:
                calls.append(conn.recv(200).decode("latin-1"))

    threading.Thread(target=accept, daemon=True).start()
    proxy = f"http://127.0.0.1:{listener.getsockname()[1]}"
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(name, proxy)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    yield calls
    listener.close()


def test_without_the_etl_api_connection_the_api_fails_naming_it_and_the_csv_still_loads(
        pipeline, monkeypatch, outside_world):
    monkeypatch.delenv("AIRFLOW_CONN_ETL_API")

    state, run = pipeline.run()

    assert state == "failed" and run["status"] == "failed"
    assert ("ingest[api]: MissingConnection: connection etl_api is not defined: source api cannot be read. Define it "
            "with `airflow connections add etl_api --conn-uri http://files.example.com/https` (for "
            "https://files.example.com) or the environment variable AIRFLOW_CONN_ETL_API=http://files.example.com/https"
            ) in run["error_message"]
    assert pipeline.value("select count(*) from raw_api_data") == 0
    counts = dict(pipeline.rows("select source, count(*) from normalized_data group by 1"))
    assert counts == {"csv": CSV_ROWS - 1}
    assert outside_world == []  # no request left for a host nobody configured


def age(folder, hours: float) -> None:
    stamp = time.time() - hours * 3600
    for path in [*folder.rglob("*"), folder]:
        os.utime(path, (stamp, stamp))


def leftover(root, name: str, hours_old: float):
    """A run folder (made and marked as a run makes it) left by an earlier run, `hours_old` hours ago."""
    folder = staging.make_run_folder(root / staging.run_folder_name(name))
    (folder / "csv.copy").write_bytes(b"left by a killed run")
    age(folder, hours_old)
    return folder


def test_a_run_sweeps_what_older_runs_left_and_removes_its_own_files(pipeline, tmp_path):
    staging_root, download_root = tmp_path / "staging", tmp_path / "tmp" / "sluice-downloads"
    old = [leftover(staging_root, "failed-last-week", 24 * 7), leftover(download_root, "killed-last-week", 24 * 7)]
    recent = [leftover(staging_root, "failed-yesterday", 24), leftover(download_root, "killed-yesterday", 24)]

    state, run = pipeline.run()

    assert state == "success" and run["status"] == "success"
    assert not any(folder.exists() for folder in old)
    assert all(folder.exists() for folder in recent)
    assert sorted(os.listdir(staging_root)) == [staging.run_folder_name("failed-yesterday")]
    assert sorted(os.listdir(download_root)) == [staging.run_folder_name("killed-yesterday")]
    assert staging.run_folder_name(run["run_id"]) not in os.listdir(staging_root)
