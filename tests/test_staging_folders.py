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
        assert staging.RUN_FOLDER_NAME.fullmatch(name)  # the shape the sweep looks for


def test_run_folder_names_are_unique_per_run_id_and_stable():
    names = [staging.run_folder_name(run_id) for run_id in RUN_IDS]
    assert len(set(names)) == len(RUN_IDS)
    assert names == [staging.run_folder_name(run_id) for run_id in RUN_IDS]


def test_run_folder_name_stays_readable():
    assert staging.run_folder_name("manual__2026-11-23T16:32:00+00:00").startswith(
        "manual__2026-11-23T16_32_00_00_00-")


def age(path: Path, hours_old: float) -> None:
    stamp = time.time() - hours_old * HOUR
    for entry in [*path.rglob("*"), path] if path.is_dir() else [path]:
        os.utime(entry, (stamp, stamp))


def run_folder(root: Path, run_id: str, hours_old: float, *, marked: bool = True,
               newest_file_hours_old: float | None = None) -> Path:
    """A run's folder as a run leaves it (made by make_run_folder, so marked), or a look-alike (marked=False)."""
    folder = root / staging.run_folder_name(run_id)
    if marked:
        staging.make_run_folder(folder)
    (folder / "sub").mkdir(parents=True)
    files = [folder / "api.copy", folder / "sub" / "csv.copy"]
    for file in files:
        file.write_bytes(b"staged")
    age(folder, hours_old)
    if newest_file_hours_old is not None:
        fresh = time.time() - newest_file_hours_old * HOUR
        os.utime(files[1], (fresh, fresh))
    return folder


def foreign(root: Path) -> dict[str, bytes]:
    """What other people keep under a shared root, 80 hours old, as {relative path: content}: a folder, a
    file, and a folder whose name has the run-folder shape (issue #22)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "customer_exports" / "2026").mkdir(parents=True)
    (root / "customer_exports" / "2026" / "march.csv").write_bytes(b"id,total\n1,10\n")
    (root / "report.csv").write_bytes(b"not a folder")
    look_alike = root / staging.run_folder_name("scheduled__2026-01-01")
    look_alike.mkdir()
    (look_alike / "notes.txt").write_bytes(b"a run-shaped name, but nobody's run")
    for entry in root.iterdir():
        age(entry, 80)
    return contents(root)


def copied_markers(root: Path) -> dict[str, bytes]:
    """A folder holding a copy of a run folder's marker, and a renamed copy of a run folder with its marker,
    80 hours old: neither is a run folder make_run_folder made."""
    copied = staging.make_run_folder(root / staging.run_folder_name("copied-run"))
    (root / "backup").mkdir()
    (root / "backup" / staging.RUN_FOLDER_MARKER).write_bytes((copied / staging.RUN_FOLDER_MARKER).read_bytes())
    copied.rename(root / staging.run_folder_name("renamed-run"))
    for name in ("backup", staging.run_folder_name("renamed-run")):
        age(root / name, 80)
    return contents(root)


def contents(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


@pytest.fixture(params=["pathlib", "object-storage"])
def as_root(request):
    """The sweep takes a local path (downloads) or an ObjectStoragePath (SLUICE_STAGING_URL)."""
    if request.param == "pathlib":
        return lambda path: path
    from airflow.sdk import ObjectStoragePath

    return lambda path: ObjectStoragePath(f"file://{path}")


def test_sweep_never_touches_what_is_not_a_marked_run_folder(tmp_path, as_root):
    # a root shared with other people's data (a bucket's root, /data): issue #22
    before = foreign(tmp_path)

    assert staging.sweep(as_root(tmp_path), older_than_seconds=RETENTION, now=time.time()) == []
    assert contents(tmp_path) == before


def test_sweep_leaves_copies_of_a_marker_outside_the_folder_it_was_made_for(tmp_path, as_root):
    foreign(tmp_path)
    before = copied_markers(tmp_path)

    assert staging.sweep(as_root(tmp_path), older_than_seconds=RETENTION, now=time.time()) == []
    assert contents(tmp_path) == before


def test_sweep_does_not_look_inside_foreign_folders(tmp_path, as_root, monkeypatch):
    foreign(tmp_path)
    copied_markers(tmp_path)
    opened = []
    is_marked = staging.is_marked
    monkeypatch.setattr(staging, "is_marked", lambda folder: opened.append(folder.name) or is_marked(folder))
    monkeypatch.setattr(staging, "last_change", lambda folder: opened.append(folder.name) or time.time())

    staging.sweep(as_root(tmp_path), older_than_seconds=RETENTION, now=time.time())

    # only the folders whose names have the run-folder shape are opened, to find the marker
    assert sorted(set(opened)) == sorted(staging.run_folder_name(run) for run in (
        "scheduled__2026-01-01", "renamed-run"))


def test_sweep_removes_marked_run_folders_older_than_the_retention_and_keeps_the_rest(tmp_path, as_root):
    foreign(tmp_path)
    before = copied_markers(tmp_path)
    failed = run_folder(tmp_path, "failed-run", hours_old=80)
    recent = run_folder(tmp_path, "recent-failure", hours_old=70)
    writing = run_folder(tmp_path, "long-run-still-writing", hours_old=200, newest_file_hours_old=0.1)
    this = run_folder(tmp_path, "this-run", hours_old=100)
    look_alike = run_folder(tmp_path, "unmarked-run", hours_old=100, marked=False)

    removed = staging.sweep(as_root(tmp_path), older_than_seconds=RETENTION, now=time.time(), keep=this.name)

    assert removed == [failed.name]
    assert not failed.exists()
    assert all(folder.exists() for folder in (recent, writing, this, look_alike))
    left = contents(tmp_path)
    assert {path: left[path] for path in before} == before


def test_make_run_folder_marks_the_folder_once(tmp_path, as_root):
    folder = as_root(tmp_path) / "staging" / staging.run_folder_name("manual__2026-11-23T16:32:00+00:00")
    assert staging.make_run_folder(folder) == folder
    assert staging.make_run_folder(folder) == folder  # every ingest of the run makes it; the marker stays
    assert staging.is_marked(folder)
    assert [path.name for path in (tmp_path / "staging" / folder.name).iterdir()] == [staging.RUN_FOLDER_MARKER]


def test_sweep_keeps_a_folder_whose_age_it_cannot_tell(tmp_path, as_root):
    # object stores may report no time (0) for folders and files: such a folder may belong to a run in progress
    folder = run_folder(tmp_path, "undated", hours_old=1)
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
        "airflow_edge.ingest.__wrapped__({'name': 'csv', 'kind': 'csv', 'endpoint': 'items.csv'}, {}, sys.argv[1])")
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
