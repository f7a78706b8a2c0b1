"""Run folders: a safe, unique folder per run id; the sweep of what failed or killed runs left behind."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sluice import settings, staging
from sluice_devtools import local_env, sample_data
from sluice_devtools.source_server import Fault, SourceServer

HOUR = 3600
RETENTION = 72 * HOUR

RUN_IDS = [".", "..", "...", "/", "a/b", "../../etc", "a\\b", "a:b", "a_b", "a?b", "", " ", "\x00", "运行-1", "ü",
           "u\u0308", "x" * 5000, "x" * 5001, "manual__2026-11-23T16:32:00+00:00", "manual__2026-11-23T16_32_00_00_00"]


def test_run_folder_names_are_single_safe_segments():
    for run_id in RUN_IDS:
        name = staging.run_folder_name(run_id)
        assert re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,119}", name), (run_id[:20], name)
        assert (Path("/staging") / name).parent == Path("/staging")


def test_run_folder_names_are_unique_per_run_id_and_stable():
    names = [staging.run_folder_name(run_id) for run_id in RUN_IDS]
    assert len(set(names)) == len(RUN_IDS)
    assert names == [staging.run_folder_name(run_id) for run_id in RUN_IDS]


def test_run_folder_name_stays_readable():
    assert staging.run_folder_name("manual__2026-11-23T16:32:00+00:00").startswith(
        "manual__2026-11-23T16_32_00_00_00-")


def make_run_folder(root: Path, name: str, hours_old: float, *, newest_file_hours_old: float | None = None) -> Path:
    folder = root / name
    (folder / "sub").mkdir(parents=True)
    files = [folder / "api.copy", folder / "sub" / "csv.copy"]
    for file in files:
        file.write_bytes(b"staged")
    stamp = time.time() - hours_old * HOUR
    for path in [*files, folder / "sub", folder]:
        os.utime(path, (stamp, stamp))
    if newest_file_hours_old is not None:
        fresh = time.time() - newest_file_hours_old * HOUR
        os.utime(files[1], (fresh, fresh))
    return folder


@pytest.fixture(params=["pathlib", "object-storage"])
def as_root(request):
    """The sweep takes a local path (downloads) or an ObjectStoragePath (SLUICE_STAGING_URL)."""
    if request.param == "pathlib":
        return lambda path: path
    from airflow.sdk import ObjectStoragePath

    return lambda path: ObjectStoragePath(f"file://{path}")


def test_sweep_removes_run_folders_older_than_the_retention_and_keeps_the_rest(tmp_path, as_root):
    make_run_folder(tmp_path, "failed-run", hours_old=80)
    make_run_folder(tmp_path, "recent-failure", hours_old=70)
    make_run_folder(tmp_path, "long-run-still-writing", hours_old=200, newest_file_hours_old=0.1)
    make_run_folder(tmp_path, "this-run", hours_old=100)
    (tmp_path / "not-a-run-folder.txt").write_text("left alone")

    removed = staging.sweep(as_root(tmp_path), older_than_seconds=RETENTION, now=time.time(), keep="this-run")

    assert removed == ["failed-run"]
    assert sorted(os.listdir(tmp_path)) == [
        "long-run-still-writing", "not-a-run-folder.txt", "recent-failure", "this-run"]


def test_sweep_keeps_a_folder_whose_age_it_cannot_tell(tmp_path, as_root):
    # object stores may report no time (0) for folders and files: such a folder may belong to a run in progress
    folder = make_run_folder(tmp_path, "undated", hours_old=1)
    for entry in (folder, *folder.rglob("*")):
        os.utime(entry, (0, 0))

    assert staging.sweep(as_root(tmp_path), older_than_seconds=RETENTION, now=time.time()) == []
    assert folder.exists()


@pytest.mark.parametrize("hours", ["0", "-5", "0.5"])
def test_a_retention_under_an_hour_is_refused_naming_the_setting(monkeypatch, hours):
    monkeypatch.setenv("SLUICE_STAGING_RETENTION_HOURS", hours)
    with pytest.raises(ValueError, match="SLUICE_STAGING_RETENTION_HOURS"):
        settings.load()


def test_sweep_of_a_missing_root_removes_nothing(tmp_path, as_root):
    assert staging.sweep(as_root(tmp_path / "never-created"), older_than_seconds=RETENTION, now=time.time()) == []


def test_csv_download_of_a_killed_ingest_is_in_the_swept_download_folder(tmp_path, database_url):
    """SIGKILL ingest_csv mid-download: its temp file stays, in the run's download folder, until a sweep."""
    run_id = "manual__2026-01-02T03:04:05+00:00"
    temp = tmp_path / "tmp"
    temp.mkdir()
    child_code = (
        "import sys; from sluice import airflow_edge; "
        "airflow_edge.ingest({'name': 'csv', 'kind': 'csv', 'endpoint': 'items.csv'}, {}, sys.argv[1])")
    with SourceServer() as server:
        server.httpd.handle_error = lambda request, client_address: None  # the killed client resets
        server.serve_bytes("items.csv", b"")
        server.add_faults("items.csv", Fault(200, body=sample_data.csv_bytes(100), drip_seconds=0.05,
                                             headers={"Content-Type": "text/csv"}))
        # ingest takes its fetch number from the warehouse before it downloads
        env = {**os.environ, "TMPDIR": str(temp), "AIRFLOW_CONN_ETL_CSV": server.url,
               "AIRFLOW_CONN_ETL_POSTGRES": local_env.airflow_conn_uri(database_url),
               "SLUICE_STAGING_URL": f"file://{tmp_path / 'staging'}"}
        child = subprocess.Popen([sys.executable, "-c", child_code, run_id], env=env)
        try:
            downloads = wait_for(lambda: list(temp.rglob("sluice-csv-*")), seconds=120, alive=child)
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
    assert [path.parent for path in downloads] == [temp / "sluice-downloads" / staging.run_folder_name(run_id)]

    swept_root = temp / "sluice-downloads"
    assert staging.sweep(swept_root, older_than_seconds=RETENTION, now=time.time()) == []
    assert staging.sweep(swept_root, older_than_seconds=RETENTION, now=time.time() + RETENTION + 60) == [
        staging.run_folder_name(run_id)]
    assert not downloads[0].exists()


def wait_for(found, *, seconds: float, alive: subprocess.Popen):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if alive.poll() is not None:
            raise AssertionError(f"the ingest ended (exit {alive.returncode}) before its download appeared")
        result = found()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"nothing appeared within {seconds}s")
