"""Runs writing at once: the per-source advisory lock serializes each write step without deadlocks, rows are
neither lost nor doubled, and a writer kept waiting past SLUICE_LOCK_TIMEOUT fails saying why."""

import io
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from sluice import rules, warehouse
from sluice.errors import LockTimeout
from sluice.staging import StageWriter
from tests import crash_support as crash
from tests.pipeline_harness import Pipeline, point_airflow_at, start_sources

RUN_A, RUN_B = "manual__run-a", "manual__run-b"
CSV_A, CSV_B, API_RECORDS = 10_000, 15_000, 1_000  # run B's CSV is run A's plus 5,000 more rows
DEADLOCK_WAIT = 120.0


@dataclass
class Inputs:
    csv_a: Path
    csv_b: Path
    api_a: Path
    api_b: Path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Inputs:
    directory = tmp_path_factory.mktemp("concurrency-inputs")
    return Inputs(csv_a=crash.write_staged(directory, CSV_A, run_id=RUN_A),
                  csv_b=crash.write_staged(directory, CSV_B, run_id=RUN_B),
                  api_a=crash.write_staged_api(directory, API_RECORDS, run_id=RUN_A),
                  api_b=crash.write_staged_api(directory, API_RECORDS, run_id=RUN_B))


@pytest.fixture(scope="module")
def clean(make_database, inputs) -> crash.Snapshot:
    """Run B alone: what the warehouse must hold after A and B, whose rows agree, both ran."""
    url = make_database()
    crash.load(url, inputs.api_b, RUN_B, source="api")
    crash.load(url, inputs.csv_b, RUN_B)
    return crash.snapshot(url, RUN_B)


def run_steps(url: str, run_id: str, staged: dict[str, Path], order: tuple[str, ...]) -> dict:
    """One run's write steps in DAG order (each step over its sources in `order`); results by source."""
    results = {source: {} for source in order}
    for source in order:
        results[source]["store_raw"] = crash.store_raw(url, staged[source], run_id, source=source)
    for source in order:
        results[source]["normalize"] = crash.normalize(url, run_id, source=source)
    for source in order:
        results[source]["upsert"] = crash.upsert(url, run_id, source=source)
    for source in order:
        processed = results[source]["normalize"]["staged"]
        results[source]["checkpoint"] = crash.checkpoint(url, run_id, processed, source=source)
    return results


def assert_counts_add_up(result: dict) -> None:
    """Every record a run stored is inserted, updated, unchanged or rejected: none lost, none counted twice."""
    normalized, upserted = result["normalize"], result["upsert"]
    assert normalized["staged"] == result["store_raw"]["stored"]
    assert (upserted["inserted"] + upserted["updated"] + upserted["unchanged"] + upserted["superseded"]
            + normalized["skipped_unchanged"] + normalized["rejected"]) == normalized["staged"]


@pytest.mark.slow
def test_two_runs_writing_both_sources_at_once_neither_deadlock_nor_lose_or_double_a_row(
        database_url, inputs, clean):
    # the runs take the sources in opposite orders, the classic recipe for a deadlock
    run_a = crash.Task(run_steps, database_url, RUN_A, {"csv": inputs.csv_a, "api": inputs.api_a}, ("csv", "api"))
    run_b = crash.Task(run_steps, database_url, RUN_B, {"csv": inputs.csv_b, "api": inputs.api_b}, ("api", "csv"))
    with psycopg.connect(database_url, autocommit=True) as monitor, psycopg.connect(database_url) as gate:
        # a third writer holds the CSV lock until both runs queue behind it, so they surely overlap
        with warehouse.source_transaction(gate, "csv", lock_timeout_seconds=5):
            run_a.start()
            run_b.start()
            crash.wait_for(lambda: crash.advisory_waiters(monitor) == 2, what="both runs to wait for the CSV lock")
        run_a.join(DEADLOCK_WAIT)
        run_b.join(DEADLOCK_WAIT)

    assert not run_a.is_alive() and not run_b.is_alive(), f"a run is still blocked after {DEADLOCK_WAIT:g}s"
    assert (run_a.error, run_b.error) == (None, None)
    snapshot = crash.snapshot(database_url, RUN_B)  # also checks row_count against the rows
    assert snapshot.normalized == clean.normalized
    assert snapshot.raw == clean.raw
    assert snapshot.rejected == clean.rejected
    a, b = run_a.result, run_b.result
    for source in ("api", "csv"):
        assert_counts_add_up(a[source])
        assert_counts_add_up(b[source])
        # the runs agree on every shared row, so neither changes or supersedes the other's
        for run in (a, b):
            assert (run[source]["upsert"]["updated"], run[source]["upsert"]["superseded"]) == (0, 0)
        # each row was inserted by exactly one of the runs
        assert a[source]["upsert"]["inserted"] + b[source]["upsert"]["inserted"] == crash.count(
            database_url, "select count(*) from normalized_data where source = %s", (source,))
        ends = {run[source]["checkpoint"]["last_processed_id"] for run in (a, b)}
        assert snapshot.checkpoint[source][0] in ends
        crash.assert_checkpoint_within_committed(database_url, source)
    # each run reports the bad rows it read, once
    assert crash.count(database_url, "select count(*) from rejected_records where run_id = %s",
                       (RUN_A,)) == CSV_A // crash.BAD_EVERY


BLOCKED_STEPS = {
    "store_raw": lambda url, inputs, timeout: crash.store_raw(url, inputs.csv_a, RUN_A, timeout),
    "normalize": lambda url, inputs, timeout: crash.normalize(url, RUN_A, timeout),
    "upsert": lambda url, inputs, timeout: crash.upsert(url, RUN_A, timeout),
    "checkpoint": lambda url, inputs, timeout: crash.checkpoint(url, RUN_A, 0, timeout),
}


@pytest.mark.parametrize("step", BLOCKED_STEPS)
def test_a_write_step_kept_waiting_past_the_lock_timeout_fails_saying_another_run_holds_the_lock(
        database_url, inputs, step):
    with psycopg.connect(database_url) as other_run, warehouse.source_transaction(other_run, "csv", 5):
        started = time.monotonic()
        with pytest.raises(LockTimeout) as raised:
            BLOCKED_STEPS[step](database_url, inputs, 0.3)
        waited = time.monotonic() - started

    assert str(raised.value) == ("csv: another run holds the write lock of this source; waited 0.3s "
                                 "(SLUICE_LOCK_TIMEOUT)")
    assert 0.3 <= waited < 5
    nothing = crash.snapshot(database_url, RUN_A)
    assert nothing.normalized[0] == 0 and nothing.raw["csv"][0] == 0 and nothing.rejected == []
    assert nothing.checkpoint == {"api": None, "csv": None}
    assert crash.count(database_url, "select count(*) from staged_records") == 0


def test_a_write_step_given_time_waits_for_the_other_run_and_then_succeeds(database_url, inputs):
    hold = 0.5
    store = crash.Task(crash.store_raw, database_url, inputs.csv_a, RUN_A, 30)
    with psycopg.connect(database_url, autocommit=True) as monitor, psycopg.connect(database_url) as other_run:
        with warehouse.source_transaction(other_run, "csv", 5):
            started = time.monotonic()
            store.start()
            crash.wait_for(lambda: crash.advisory_waiters(monitor) == 1, what="store_raw to wait for the lock")
            time.sleep(hold)
            assert store.is_alive()
        store.join(60)
        waited = time.monotonic() - started

    assert store.error is None
    assert store.result["stored"] == crash.count(database_url, "select count(*) from raw_csv_data")
    assert waited >= hold


def staged_csv(run_id: str, names: str, rows: int = 200) -> io.BytesIO:
    out = io.BytesIO()
    writer = StageWriter(out, run_id, "csv")
    for number in range(1, rows + 1):
        record = {"id": str(number), "name": f"{names} {number}", "value": str(number), "description": "d"}
        writer.record(number, str(number), record, where=f"line {number + 1}")
    out.seek(0)
    return out


def stored_old_then_new(database_url: str, upsert_order: tuple[str, str]) -> dict:
    """Run A stores older data, then run B newer data of the same ids; then each normalizes, upserts and
    checkpoints in upsert_order. Returns each run's upsert counts."""
    with psycopg.connect(database_url) as conn:
        for run_id, names in ((RUN_A, "old"), (RUN_B, "new")):
            warehouse.store_raw(conn, "csv", staged_csv(run_id, names), run_id=run_id, lock_timeout_seconds=5)
    upserted = {}
    for run_id in upsert_order:
        normalized = crash.normalize(database_url, run_id)
        upserted[run_id] = crash.upsert(database_url, run_id)
        crash.checkpoint(database_url, run_id, normalized["staged"])
    return upserted


def test_interleaved_runs_leave_every_normalized_row_matching_its_stored_raw_payload(database_url):
    # regression: the lock serializes each step, not each run. In this order, which the lock allows when
    # run A (older data) and run B (newer data) overlap, A's upsert used to write its stale values last.
    upserted = stored_old_then_new(database_url, (RUN_B, RUN_A))

    assert crash.count(database_url, "select count(*) from raw_csv_data where data->>'name' like 'new %'") == 200
    stale = crash.count(database_url, """
        select count(*) from normalized_data n join raw_csv_data r using (source_id)
        where n.source = 'csv' and n.name is distinct from r.data->>'name'""")
    assert stale == 0, f"{stale} normalized rows hold an older run's values, not the stored raw payload"
    assert (upserted[RUN_B]["inserted"], upserted[RUN_B]["superseded"]) == (200, 0)
    assert (upserted[RUN_A]["inserted"], upserted[RUN_A]["updated"], upserted[RUN_A]["superseded"]) == (0, 0, 200)



def test_an_older_first_load_upserted_before_the_newer_one_inserts_none_of_the_replaced_payloads(database_url):
    # the source's first upsert takes the insert-only path (no rows to join): it must still skip the rows whose
    # raw payload the newer run replaced, which the newer run's upsert then inserts
    upserted = stored_old_then_new(database_url, (RUN_A, RUN_B))

    assert (upserted[RUN_A]["inserted"], upserted[RUN_A]["superseded"]) == (0, 200)
    assert (upserted[RUN_B]["inserted"], upserted[RUN_B]["updated"], upserted[RUN_B]["superseded"]) == (200, 0, 0)
    assert crash.count(database_url, "select count(*) from normalized_data where name like 'new %'") == 200

@pytest.fixture
def pipeline(monkeypatch, database_url, tmp_path):
    sources = start_sources(api_records=100, csv_rows=300, bad_every=50)
    point_airflow_at(monkeypatch, database_url, sources, tmp_path / "staging")
    yield Pipeline(database_url, sources)
    sources.stop()


def hold_csv_lock_until_a_writer_waits(url: str, then_hold: float) -> crash.Task:
    """Another run holding the CSV write lock: it lets go `then_hold` seconds after a writer queues behind it."""
    holding = threading.Event()

    def hold():
        with psycopg.connect(url) as conn, psycopg.connect(url, autocommit=True) as monitor:
            with warehouse.source_transaction(conn, "csv", 5):
                holding.set()
                crash.wait_for(lambda: crash.advisory_waiters(monitor) >= 1, what="a DAG task to wait for the lock")
                time.sleep(then_hold)

    other_run = crash.Task(hold)
    other_run.start()
    assert holding.wait(10)
    return other_run


@pytest.mark.slow
def test_a_dag_run_meeting_another_runs_lock_fails_with_that_error_or_waits_when_given_time(
        pipeline, monkeypatch):
    monkeypatch.setenv("SLUICE_LOCK_TIMEOUT", "1")
    with psycopg.connect(pipeline.database_url) as other_run, warehouse.source_transaction(other_run, "csv", 5):
        state, run = pipeline.run()

    assert state == "failed" and run["status"] == "failed"
    assert ("store_raw[csv]: LockTimeout: csv: another run holds the write lock of this source; waited 1s "
            "(SLUICE_LOCK_TIMEOUT)") in run["error_message"]
    # only the locked source failed: the api, in its own lane, loaded and moved its checkpoint
    assert dict(pipeline.rows("select source, count(*) from normalized_data group by 1")) == {"api": 100}
    assert pipeline.rows("select source from etl_checkpoint where last_processed_id is not null") == [("api",)]

    monkeypatch.setenv("SLUICE_LOCK_TIMEOUT", "60")
    other = hold_csv_lock_until_a_writer_waits(pipeline.database_url, then_hold=0.5)
    state, run = pipeline.run()
    other.join(10)

    assert other.error is None, f"the DAG run never waited for the lock: {other.error}"
    assert state == "success" and run["status"] == "success"
    assert dict(pipeline.rows("select source, count(*) from normalized_data group by 1")) == {"api": 100, "csv": 294}
    assert dict(pipeline.rows("select source, last_processed_id from etl_checkpoint")) == {"api": "100", "csv": "299"}


def test_a_run_checkpointing_after_a_newer_one_never_moves_the_checkpoint_back(database_url):
    # run A read 200 rows, run B later 210: B's checkpoint committed first, then A's, which used to win
    with psycopg.connect(database_url) as conn:
        for run_id, rows in ((RUN_A, 200), (RUN_B, 210)):
            warehouse.store_raw(conn, "csv", staged_csv(run_id, "same", rows), run_id=run_id, lock_timeout_seconds=5)
    checkpoints = {}
    for run_id in (RUN_B, RUN_A):
        normalized = crash.normalize(database_url, run_id)
        crash.upsert(database_url, run_id)
        checkpoints[run_id] = crash.checkpoint(database_url, run_id, normalized["staged"])["last_processed_id"]

    assert checkpoints == {RUN_B: "210", RUN_A: "210"}
    assert crash.count(database_url, "select total_processed from etl_checkpoint where source = 'csv'") == 410
    # numbers compare as numbers, other ids byte by byte
    assert crash.count(database_url, "select array[sluice_later_id('99', '100'), sluice_later_id('b-9', 'b-10'),"
                                     " sluice_later_id(null, '7'), sluice_later_id('7', null)]") == [
        "100", "b-9", "7", "7"]


def test_a_full_refresh_sets_the_checkpoint_even_behind_the_last_one(database_url):
    # the source was reset upstream: a full refresh reads it whole, and its position is the new truth
    with psycopg.connect(database_url) as conn:
        for run_id, rows, full_refresh in ((RUN_A, 210, False), (RUN_B, 150, True)):
            stored = warehouse.store_raw(conn, "csv", staged_csv(run_id, "same", rows), run_id=run_id,
                                         lock_timeout_seconds=5)
            warehouse.normalize(conn, "csv", rules.Normalization(crash.MAPPINGS["csv"]), run_id=run_id, full_refresh=full_refresh,
                                lock_timeout_seconds=5)
            warehouse.upsert(conn, "csv", run_id=run_id, lock_timeout_seconds=5)
            warehouse.advance_checkpoint(conn, "csv", run_id=run_id, processed=stored.stored,
                                         lock_timeout_seconds=5, full_refresh=full_refresh)

    assert crash.count(database_url, "select last_processed_id from etl_checkpoint where source = 'csv'") == "150"


def test_a_batch_fetched_before_the_newest_stored_one_replaces_none_of_its_rows(database_url):
    # the older fetch saw names that changed upstream and changed back before the newer fetch, which therefore
    # found its records unchanged and rewrote nothing: still, the older batch must not replace them
    with psycopg.connect(database_url) as conn:
        warehouse.store_raw(conn, "csv", staged_csv("manual__first", "original"), run_id="manual__first",
                            lock_timeout_seconds=5)
        older, newer = warehouse.next_fetch_seq(conn), warehouse.next_fetch_seq(conn)
        unchanged = warehouse.store_raw(conn, "csv", staged_csv(RUN_B, "original"), run_id=RUN_B,
                                        lock_timeout_seconds=5, fetch_seq=newer)
        late = warehouse.store_raw(conn, "csv", staged_csv(RUN_A, "interim", rows=210), run_id=RUN_A,
                                   lock_timeout_seconds=5, fetch_seq=older)

    assert (unchanged.raw_updated, unchanged.superseded) == (0, 0)
    # its 200 records the source holds are superseded; the 10 it does not hold are stored
    assert (late.superseded, late.stored, late.raw_inserted, late.raw_updated) == (200, 10, 10, 0)
    assert crash.count(database_url, "select count(*) from raw_csv_data where data->>'name' like 'original %'") == 200
    assert crash.count(database_url, "select count(*) from staged_records where run_id = %s", (RUN_A,)) == 10


def test_a_run_that_fetches_again_stores_its_new_fetch_not_the_result_of_its_old_one(database_url):
    # the whole run cleared before record_run emptied its work (e.g. marked failed while waiting for a lock):
    # its ingest fetches again with a new number, and that fetch must be stored and upserted, not the old
    # step results replayed over it
    mapping = {"source_id": "id", "name": "name", "value": "value", "description": "description"}
    with psycopg.connect(database_url) as conn:
        first, again = warehouse.next_fetch_seq(conn), warehouse.next_fetch_seq(conn)
        warehouse.store_raw(conn, "csv", staged_csv(RUN_A, "old"), run_id=RUN_A, lock_timeout_seconds=5,
                            fetch_seq=first)
        warehouse.normalize(conn, "csv", rules.Normalization(mapping), run_id=RUN_A, full_refresh=False, lock_timeout_seconds=5)
        warehouse.upsert(conn, "csv", run_id=RUN_A, lock_timeout_seconds=5)

        stored = warehouse.store_raw(conn, "csv", staged_csv(RUN_A, "new", rows=210), run_id=RUN_A,
                                     lock_timeout_seconds=5, fetch_seq=again)
        retried = warehouse.store_raw(conn, "csv", staged_csv(RUN_A, "new", rows=210), run_id=RUN_A,
                                      lock_timeout_seconds=5, fetch_seq=again)
        warehouse.normalize(conn, "csv", rules.Normalization(mapping), run_id=RUN_A, full_refresh=False, lock_timeout_seconds=5)
        upserted = warehouse.upsert(conn, "csv", run_id=RUN_A, lock_timeout_seconds=5)

    assert (stored.stored, stored.raw_inserted, stored.raw_updated) == (210, 10, 200)
    assert retried == stored  # a retry of the same fetch still returns what it stored
    assert (upserted.inserted, upserted.updated) == (10, 200)
    assert crash.count(database_url, "select count(*) from normalized_data where name like 'new %'") == 210


def test_a_run_that_fetches_again_moves_the_checkpoint_to_its_new_fetch_and_counts_the_source_once(database_url):
    with psycopg.connect(database_url) as conn:
        first, again = warehouse.next_fetch_seq(conn), warehouse.next_fetch_seq(conn)
        warehouse.store_raw(conn, "csv", staged_csv(RUN_A, "old"), run_id=RUN_A, lock_timeout_seconds=5,
                            fetch_seq=first)
        before = warehouse.advance_checkpoint(conn, "csv", run_id=RUN_A, processed=200, lock_timeout_seconds=5)
        retried = warehouse.advance_checkpoint(conn, "csv", run_id=RUN_A, processed=200, lock_timeout_seconds=5)
        warehouse.store_raw(conn, "csv", staged_csv(RUN_A, "new", rows=210), run_id=RUN_A, lock_timeout_seconds=5,
                            fetch_seq=again)
        after = warehouse.advance_checkpoint(conn, "csv", run_id=RUN_A, processed=210, lock_timeout_seconds=5)

    assert (before.last_processed_id, before.total_processed) == ("200", 200)
    assert retried == before
    # the run processed the source once: its new fetch's records replace its old fetch's in the total
    assert (after.last_processed_id, after.total_processed, after.processed) == ("210", 210, 210)


def test_a_lock_timeout_of_0_does_not_wait_where_postgresql_s_own_0_would_wait_forever(database_url):
    with psycopg.connect(database_url) as other_run, warehouse.source_transaction(other_run, "csv", 5):
        started = time.monotonic()
        with psycopg.connect(database_url) as conn, pytest.raises(LockTimeout, match="waited 0s"):
            with warehouse.source_transaction(conn, "csv", 0):
                pass
        assert time.monotonic() - started < 5
