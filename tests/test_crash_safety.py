"""Crash safety of the write steps: a task SIGKILLed mid-statement, and PostgreSQL crashing mid-load.

Each write step is one transaction per source, so whatever dies in the middle must leave nothing behind,
and running the step again (an Airflow retry: the same run id) must end exactly like a run that was
never interrupted. "Exactly" is compared on what a user sees: normalized values, raw ids and payload
hashes, the run's quarantined records and the checkpoint, with ids, timestamps and run ids left out.
"""

from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from sluice import warehouse
from tests import crash_support as crash
from tests.crash_support import Snapshot

# Big enough that the COPY and the INSERT run long enough to be killed in the middle, and that the run's
# new rows (past those of a small earlier run) take upsert's bulk path.
ROWS = 110_000
PRIOR_ROWS = 5_000  # the earlier run: the checkpoint has a committed value that must not move
BULK_ROWS = 100_000  # warehouse.upsert's default: drop the trigram indexes, insert, rebuild them
UPSERT_CRASH_ROWS = 30_000  # crashing the server mid-upsert needs only an INSERT under way
PRIOR_RUN = "scheduled__2026-01-01T00:00:00+00:00"
RUN = "scheduled__2026-01-02T00:00:00+00:00"


@dataclass
class Inputs:
    prior: Path
    full: Path
    medium: Path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Inputs:
    """Staged files as ingest_csv leaves them: a small earlier run and the large run under test."""
    directory = tmp_path_factory.mktemp("crash-inputs")
    return Inputs(prior=crash.write_staged(directory, PRIOR_ROWS, run_id=PRIOR_RUN),
                  full=crash.write_staged(directory, ROWS, run_id=RUN),
                  medium=crash.write_staged(directory, UPSERT_CRASH_ROWS, run_id=RUN))


@pytest.fixture(scope="module")
def clean(make_database, inputs) -> tuple[dict, Snapshot]:
    """The reference: the same two runs into a fresh database, nothing interrupted."""
    url = make_database()
    crash.load(url, inputs.prior, PRIOR_RUN)
    results = crash.load(url, inputs.full, RUN)
    return results, crash.snapshot(url, RUN)


@pytest.fixture
def private_server(tmp_path):
    """A PostgreSQL of this test's own, which it may crash: never the session server other tests use."""
    server = crash.PrivateServer(tmp_path / "pg")
    server.start()
    with psycopg.connect(server.url) as conn:
        warehouse.apply_schema(conn)
    yield server
    server.stop()


def staged_rows(url: str) -> int:
    return crash.count(url, "select count(*) from staged_records where run_id = %s", (RUN,))


@pytest.mark.slow
def test_task_killed_mid_copy_in_store_raw_leaves_nothing_and_its_retry_equals_a_clean_run(
        database_url, inputs, clean):
    crash.load(database_url, inputs.prior, PRIOR_RUN)
    before = crash.snapshot(database_url, RUN)

    with psycopg.connect(database_url, autocommit=True) as monitor:
        task = crash.StepProcess(database_url, "store_raw", RUN, inputs.full)
        backend, rows_read = crash.kill_mid_copy(monitor, task, after_rows=ROWS // 4)
        crash.wait_until_backend_gone(monitor, backend)

    assert ROWS // 4 <= rows_read < ROWS, "the task was not killed in the middle of its COPY"
    # the server rolled the killed transaction back: not one staged, raw or quarantined row of it remains
    assert crash.snapshot(database_url, RUN) == before
    assert staged_rows(database_url) == 0
    crash.assert_checkpoint_within_committed(database_url)

    retried = crash.load(database_url, inputs.full, RUN)

    clean_results, clean_snapshot = clean
    assert retried == clean_results
    assert crash.snapshot(database_url, RUN) == clean_snapshot
    crash.assert_checkpoint_within_committed(database_url)


@pytest.mark.slow
def test_upsert_killed_mid_insert_then_mid_index_rebuild_leaves_nothing_and_its_retry_equals_a_clean_run(
        database_url, inputs, clean):
    crash.load(database_url, inputs.prior, PRIOR_RUN)
    stored = crash.store_raw(database_url, inputs.full, RUN)
    normalized = crash.normalize(database_url, RUN)
    assert normalized["valid"] >= BULK_ROWS, "the run must be big enough for upsert's bulk path"
    before = crash.snapshot(database_url, RUN)

    with psycopg.connect(database_url, autocommit=True) as monitor:
        heap = crash.relation_file(monitor, "normalized_data")
        start = crash.file_size(heap)
        task = crash.StepProcess(database_url, "upsert", RUN)
        backend, grown = crash.kill_mid_insert(monitor, task, "normalized_data", file=heap, start_size=start,
                                               after_bytes=4 << 20)
        crash.wait_until_backend_gone(monitor, backend)
        assert heap is None or grown >= 4 << 20

        # megabytes of rows written into the table's file with its search indexes dropped, none committed:
        # nothing is visible, the indexes are back, row_count and the checkpoint did not move, and the run's
        # normalized rows wait for the retry
        assert_rolled_back(database_url, before, normalized)

        task = crash.StepProcess(database_url, "upsert", RUN)
        backend, phase = crash.kill_mid_index_build(monitor, task)
        crash.wait_until_backend_gone(monitor, backend)
        # every row inserted, the first index half rebuilt: still nothing
        assert_rolled_back(database_url, before, normalized)

    upserted = crash.upsert(database_url, RUN)
    checkpointed = crash.checkpoint(database_url, RUN, normalized["staged"])

    clean_results, clean_snapshot = clean
    assert upserted == clean_results["upsert"]
    assert checkpointed == clean_results["checkpoint"]
    assert crash.snapshot(database_url, RUN) == clean_snapshot
    assert crash.count(database_url, crash.SEARCH_INDEXES) == 2
    crash.assert_checkpoint_within_committed(database_url)


def assert_rolled_back(url: str, before: Snapshot, normalized: dict) -> None:
    assert crash.snapshot(url, RUN) == before
    assert before.checkpoint["csv"][0] == str(PRIOR_ROWS)
    assert crash.count(url, crash.SEARCH_INDEXES) == 2
    assert crash.count(url, "select count(*) from normalized_stage where run_id = %s", (RUN,)) == normalized["valid"]
    crash.assert_checkpoint_within_committed(url)


def under_way(task: crash.Task, progress):
    """progress() once it is truthy, failing at once if the task ends first (the input is too small)."""
    def check():
        assert task.is_alive(), f"the task ended before the crash: result {task.result!r}, error {task.error!r}"
        return progress()
    return check


def assert_lost_connection(task: crash.Task) -> None:
    """The task failed with libpq's plain account of a server that went away, as Airflow would log it."""
    task.join(timeout=60)
    assert not task.is_alive()
    assert isinstance(task.error, psycopg.OperationalError), f"expected a lost connection, got {task.error!r}"
    assert "server closed the connection unexpectedly" in str(task.error), repr(task.error)


@pytest.mark.slow
def test_postgres_crash_mid_store_raw_fails_the_task_clearly_and_its_retry_stores_each_row_once(
        private_server, inputs, clean):
    url = private_server.url
    crash.load(url, inputs.prior, PRIOR_RUN)
    before = crash.snapshot(url, RUN)

    task = crash.Task(crash.store_raw, url, inputs.full, RUN)
    with psycopg.connect(url, autocommit=True) as monitor:
        task.start()
        crash.wait_for(under_way(task, lambda: crash.copy_in_progress(monitor, ROWS // 4)),
                       what="store_raw's COPY to be under way")
        private_server.crash()
    assert_lost_connection(task)

    private_server.start()  # the same data directory: the server replays its WAL first
    assert "automatic recovery in progress" in private_server.log()
    assert crash.snapshot(url, RUN) == before
    assert staged_rows(url) == 0
    crash.assert_checkpoint_within_committed(url)

    retried = crash.store_raw(url, inputs.full, RUN)  # Airflow's retry of the failed store_raw task

    # each record stored and each bad one quarantined once, as by a clean run's store_raw
    # (the rest of a run after a killed store_raw is the test above)
    clean_results, clean_snapshot = clean
    assert retried == clean_results["store_raw"]
    after = crash.snapshot(url, RUN)
    assert after.raw == clean_snapshot.raw
    assert after.rejected == [reject for reject in clean_snapshot.rejected if reject[1] == "store_raw"]
    assert staged_rows(url) == retried["stored"]
    assert after.checkpoint == before.checkpoint
    crash.assert_checkpoint_within_committed(url)


@pytest.mark.slow
def test_postgres_crash_mid_upsert_then_the_retried_upsert_loads_every_row(private_server, inputs):
    # regression: the work tables were unlogged, so crash recovery emptied them and the retried upsert
    # "succeeded" with 0 of the run's rows
    url = private_server.url
    stored = crash.store_raw(url, inputs.medium, RUN)
    normalized = crash.normalize(url, RUN)

    task = crash.Task(crash.upsert, url, RUN)
    with psycopg.connect(url, autocommit=True) as monitor:
        heap = crash.relation_file(monitor, "normalized_data")
        start = crash.file_size(heap)
        task.start()
        crash.wait_for(under_way(task, lambda: crash.insert_in_progress(
            monitor, "normalized_data", file=heap, start_size=start, after_bytes=1 << 20)),
            what="upsert's INSERT to be under way")
        private_server.crash()
    assert_lost_connection(task)

    private_server.start()
    assert "automatic recovery in progress" in private_server.log()
    assert crash.count(url, "select count(*) from normalized_data") == 0
    crash.assert_checkpoint_within_committed(url)

    retried = crash.upsert(url, RUN)  # Airflow's retry of the upsert task
    crash.checkpoint(url, RUN, normalized["staged"])

    assert retried["inserted"] == normalized["valid"], (
        f"the retried upsert inserted {retried['inserted']} of the run's {normalized['valid']} rows")
    assert crash.count(url, "select count(*) from normalized_data") == normalized["valid"]
    crash.assert_checkpoint_within_committed(url)
