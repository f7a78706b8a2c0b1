"""Hostile review of unchanged files (issue 28): orders of runs and inputs that could make the skip of a CSV equal
to the source's last complete load give a wrong result. Each test drives sluice.pipeline's steps by hand, as
tests/test_unchanged_files.py's lanes do, against real PostgreSQL and a loopback source."""

import dataclasses
import gzip
from datetime import datetime, timedelta, timezone

import psycopg
import pytest
import requests

from sluice import pipeline, settings, sources
from sluice.errors import DeleteRefused, QualityHeld
from sluice_devtools import sample_data
from sluice_devtools.source_server import SourceServer

ROWS, BAD_EVERY = 60, 10  # bad rows of several kinds, each quarantined with its reason
ORIGINAL = sample_data.csv_bytes(ROWS, bad_every=BAD_EVERY)


def without(body: bytes, *ids: str) -> bytes:
    """The CSV without the records of these ids."""
    head, *lines = body.split(b"\r\n")
    kept = [line for line in lines if line and line.split(b",", 1)[0].decode() not in ids]
    return b"\r\n".join([head, *kept, b""])


# the file without the records a read quarantines without an id (blank ids, the short row 30), which skip deletes;
# its other bad records are still rejected
DELETABLE = without(ORIGINAL, "", "30")
REJECTS = ("select source_id, stage, reason from rejected_records where run_id = %s and source = 'items' "
           "order by 1, 2, 3")


@pytest.fixture
def lanes(database_url, tmp_path):
    server = SourceServer().start()
    config = settings.load()

    class Lanes:
        url = database_url
        source = sources.Source(name="items", kind="csv", conn_id="etl_csv", endpoint="items.csv",
                                mapping=settings.DEFAULT_CSV_MAPPING)

        def serve(self, body: bytes, content_type: str = "text/csv; charset=utf-8"):
            server.serve_bytes("items.csv", body, content_type)

        def ingest(self, run_id: str, body: bytes | None = None, *, full_refresh: bool = False, **serve):
            if body is not None:
                self.serve(body, **serve)
            with psycopg.connect(database_url) as conn, requests.Session() as session:
                return pipeline.ingest(conn, self.source, session, f"{server.url}/items.csv",
                                       str(tmp_path / f"{run_id}-{id(session)}.copy"), run_id=run_id, settings=config,
                                       full_refresh=full_refresh)

        def store(self, run_id: str, ingested):
            with psycopg.connect(database_url) as conn:
                return pipeline.store_raw(conn, ingested, run_id=run_id, settings=config, source=self.source,
                                          cursor_field=self.source.cursor and self.source.cursor.field)

        def finish(self, run_id: str, stored):
            return self.load(run_id, None, stored=stored)[1:]

        def load(self, run_id: str, ingested, *, full_refresh: bool = False, accept_deletes: float | None = None,
                 stored=None):
            stored = stored or self.store(run_id, ingested)
            with psycopg.connect(database_url) as conn:
                normalized = pipeline.normalize(conn, self.source, stored, run_id=run_id, settings=config,
                                                full_refresh=full_refresh)
                upserted = pipeline.upsert(conn, self.source, stored, normalized, run_id=run_id, settings=config,
                                           full_refresh=full_refresh, accept_deletes=accept_deletes)
                pipeline.checkpoint(conn, stored, upserted, run_id=run_id, settings=config,
                                    full_refresh=full_refresh)
                return stored, normalized, upserted

        def run(self, run_id: str, body: bytes | None = None, **kwargs):
            serve = {key: kwargs.pop(key) for key in ("content_type",) if key in kwargs}
            ingested = self.ingest(run_id, body, full_refresh=kwargs.get("full_refresh", False), **serve)
            return (ingested, *self.load(run_id, ingested, **kwargs))

        def replay(self, run_id: str):
            with psycopg.connect(database_url) as conn:
                return pipeline.store_replay(conn, self.source, run_id=run_id, settings=config)

        def rows(self, query: str, params=None) -> list:
            with psycopg.connect(database_url) as conn:
                return conn.execute(query, params).fetchall()

        def live(self) -> set:
            return {row[0] for row in self.rows("select source_id from normalized_data where source = 'items' "
                                                "and deleted_at is null")}

        def rejects(self, run_id: str) -> list:
            return self.rows(REJECTS, (run_id,))

    yield Lanes()
    server.stop()


def counts(stored, normalized, upserted) -> dict:
    return {"stored": stored.stored, "rejected": stored.rejected + normalized.rejected,
            "staged": normalized.staged, "unchanged": normalized.skipped_unchanged + upserted.unchanged,
            "written": upserted.written, "deleted": upserted.deleted, "undeleted": upserted.undeleted,
            "live_after": upserted.live_after}


# ---- retries: the run that loaded the file fetches again


def test_an_ingest_retry_of_the_run_that_loaded_the_file_keeps_its_rejects(lanes):
    ingested, stored, normalized, upserted = lanes.run("run-0", ORIGINAL)
    rejects = lanes.rejects("run-0")
    assert rejects and not ingested.unchanged

    # the operator clears run-0's ingest: a new fetch of the same file, which the run itself loaded
    again = lanes.ingest("run-0")
    assert again.unchanged
    stored_again, normalized_again, _ = lanes.load("run-0", again)

    assert stored_again.rejected + normalized_again.rejected == stored.rejected + normalized.rejected
    assert lanes.rejects("run-0") == rejects
    # and the next run, skipped, copies them from run-0
    later = lanes.run("run-1")
    assert later[1].unchanged and lanes.rejects("run-1") == rejects


def test_a_retry_of_a_skipped_run_keeps_the_loaded_runs_rejects(lanes):
    lanes.run("run-0", ORIGINAL)
    rejects = lanes.rejects("run-0")
    _, stored, _, _ = lanes.run("run-1")
    assert stored.unchanged and lanes.rejects("run-1") == rejects

    _, again, _, _ = lanes.run("run-1")  # ingest of run-1 cleared: a new fetch, skipped again
    assert again.unchanged and lanes.rejects("run-1") == rejects and lanes.rejects("run-0") == rejects


# ---- a gzipped CSV: the digest is the decompressed file's


def test_the_same_file_gzipped_is_skipped_and_reports_what_a_read_would(lanes):
    read = lanes.run("run-0", gzip.compress(DELETABLE), content_type="application/gzip")
    lanes.rows("update etl_checkpoint set loaded_file = null where source = 'items' returning source")
    reference = lanes.run("run-1", DELETABLE)  # a plain read of the same records, every one unchanged
    assert not reference[1].unchanged and read[0].records == reference[0].records

    skipped = lanes.run("run-2", gzip.compress(DELETABLE), content_type="application/gzip")

    assert skipped[1].unchanged
    assert counts(*skipped[1:]) == counts(*reference[1:])
    assert lanes.rejects("run-2") == lanes.rejects("run-1")


def test_a_gzipped_file_skipped_at_ingest_but_changed_meanwhile_is_staged_from_the_decompressed_file(lanes):
    lanes.run("run-0", DELETABLE)
    hinted = lanes.ingest("run-b", gzip.compress(DELETABLE), content_type="application/gzip")
    assert hinted.unchanged
    lanes.run("run-a", without(DELETABLE, "5"))  # a newer change lands first: row 5 deleted
    assert "5" not in lanes.live()

    stored, _, upserted = lanes.load("run-b", hinted)

    # run-b's fetch is older than run-a's: staged from the file, then superseded; nothing rolls back
    assert not stored.unchanged and stored.written == 0 and upserted.written == 0
    assert "5" not in lanes.live()


# ---- deletes: rows soft-deleted, the same file again, rows coming back


def test_soft_deleted_rows_stay_deleted_when_the_same_file_comes_again_and_come_back_with_the_old_file(lanes):
    lanes.run("run-0", DELETABLE)
    live = lanes.live()
    smaller = without(DELETABLE, "3", "4")
    deleting = lanes.run("run-1", smaller)
    assert deleting[3].deleted == 2 and lanes.live() == live - {"3", "4"}

    skipped = lanes.run("run-2", smaller)
    assert skipped[1].unchanged
    assert (skipped[3].deleted, skipped[3].undeleted, skipped[3].written) == (0, 0, 0)
    assert lanes.live() == live - {"3", "4"}

    back = lanes.run("run-3", DELETABLE)  # the rows come back: the old file is not the last one loaded
    assert not back[1].unchanged and back[3].undeleted == 2 and lanes.live() == live
    # and the old file is now the last one loaded: skipped, nothing deleted again
    again = lanes.run("run-4", DELETABLE)
    assert again[1].unchanged and again[3].deleted == 0 and lanes.live() == live


def test_a_delete_guard_refusal_then_the_old_file_reads_it_and_keeps_every_row(lanes):
    lanes.run("run-0", DELETABLE)
    live = lanes.live()
    with pytest.raises(DeleteRefused):
        lanes.run("run-1", without(DELETABLE, *[str(n) for n in range(1, 50)]))
    assert lanes.live() == live

    again = lanes.run("run-2", DELETABLE)
    # run-1 stored the raw batch: run-0's file no longer stands for the source, so it is read
    assert not again[1].unchanged and again[3].deleted == 0 and lanes.live() == live
    assert lanes.rejects("run-2") == lanes.rejects("run-0")


def test_a_refused_drop_accepted_on_the_same_file_deletes_once(lanes):
    lanes.run("run-0", DELETABLE)
    dropped = without(DELETABLE, *[str(n) for n in range(1, 50)])
    with pytest.raises(DeleteRefused):
        lanes.run("run-1", dropped)

    accepted = lanes.run("run-2", dropped, accept_deletes=1.0)
    assert not accepted[1].unchanged and accepted[3].deleted > 0
    live = lanes.live()
    # the same file again: skipped, nothing deleted twice, nothing undeleted
    again = lanes.run("run-3", dropped)
    assert again[1].unchanged and (again[3].deleted, again[3].undeleted) == (0, 0) and lanes.live() == live


def test_turning_delete_missing_on_reads_the_same_file_again(lanes):
    lanes.source = dataclasses.replace(lanes.source, delete_missing=False)
    lanes.run("run-0", DELETABLE)
    smaller = without(DELETABLE, "7")
    lanes.run("run-1", smaller)
    assert "7" in lanes.live()  # not deleted: delete_missing is off

    lanes.source = dataclasses.replace(lanes.source, delete_missing=True)
    turned_on = lanes.run("run-2", smaller)

    assert not turned_on[1].unchanged and turned_on[3].deleted == 1 and "7" not in lanes.live()


def test_a_changed_mapping_reads_the_same_file_again(lanes):
    lanes.run("run-0", DELETABLE)
    mapping = {key: value for key, value in settings.DEFAULT_CSV_MAPPING.items() if key != "description"}
    lanes.source = dataclasses.replace(lanes.source, mapping=mapping)

    assert not lanes.ingest("run-1", DELETABLE).unchanged


def test_a_newly_declared_field_reads_the_same_file_again_and_loads_it(lanes):
    body = timed_csv(datetime(2026, 12, 1, tzinfo=timezone.utc))
    lanes.run("run-0", body)
    lanes.source = dataclasses.replace(lanes.source, fields={"updated": {"type": "timestamp", "from": "updated"}})

    again = lanes.run("run-1", body)

    assert not again[1].unchanged
    assert lanes.rows("select count(*) from normalized_data where source = 'items' "
                      "and attributes ->> 'updated' is not null")[0][0] == 20


# ---- full refresh and replay


def test_a_full_refresh_reads_the_file_and_records_it(lanes):
    lanes.run("run-0", DELETABLE)
    refreshed = lanes.run("run-1", DELETABLE, full_refresh=True)
    assert not refreshed[0].unchanged and not refreshed[1].unchanged

    after = lanes.run("run-2", DELETABLE)
    assert after[1].unchanged and lanes.rejects("run-2") == lanes.rejects("run-1")


def test_a_replay_between_ingest_and_store_stages_the_file(lanes):
    lanes.run("run-0", DELETABLE)
    live = lanes.live()
    hinted = lanes.ingest("run-1")
    assert hinted.unchanged
    lanes.replay("run-r")

    stored, normalized, upserted = lanes.load("run-1", hinted)

    assert not stored.unchanged and stored.stored + stored.rejected == DELETABLE.count(b"\r\n") - 1
    assert lanes.live() == live and lanes.rejects("run-1") == lanes.rejects("run-0")


# ---- overlapping runs of the same file


def test_two_skipped_fetches_of_the_same_file_in_either_order_roll_nothing_back(lanes):
    lanes.run("run-0", DELETABLE)
    live = lanes.live()
    older, newer = lanes.ingest("run-a"), lanes.ingest("run-b")
    assert older.unchanged and newer.unchanged

    stored_b, _, upserted_b = lanes.load("run-b", newer)
    stored_a, _, upserted_a = lanes.load("run-a", older)

    assert stored_b.unchanged and upserted_b.written == 0
    # the older fetch stores after the newer one: superseded, nothing written or deleted
    assert not stored_a.unchanged and stored_a.written == 0 and upserted_a.written == 0
    assert upserted_a.deleted == 0 and lanes.live() == live


def test_a_superseded_older_fetch_keeps_the_file_recorded(lanes):
    lanes.run("run-0", DELETABLE)
    older, newer = lanes.ingest("run-a"), lanes.ingest("run-b")
    lanes.load("run-b", newer)
    lanes.load("run-a", older)

    assert lanes.ingest("run-c").unchanged


def test_a_newer_change_stored_between_a_skip_and_its_upsert_wins(lanes):
    lanes.run("run-0", DELETABLE)
    stored_b = lanes.store("run-b", lanes.ingest("run-b"))
    assert stored_b.unchanged
    lanes.run("run-a", without(DELETABLE, "5"))  # a newer fetch, a change: row 5 deleted
    live = lanes.live()
    assert "5" not in live

    _, upserted_b = lanes.finish("run-b", stored_b)

    assert upserted_b.written == 0 and upserted_b.undeleted == 0 and lanes.live() == live
    # run-a's file is the last one loaded now; the original is read again, and brings row 5 back
    back = lanes.run("run-c", DELETABLE)
    assert not back[1].unchanged and back[3].undeleted == 1 and "5" in lanes.live()


# ---- the quality gate holds a skipped batch; a person releases it


def test_a_held_skipped_batch_is_released_without_touching_a_row(lanes):
    """Four runs of a 600-row file, then the 57-row one (published: too little history for a verdict, recorded),
    then the same 57-row file again: skipped, and held as a read would be (its row count against the history).
    The release publishes exactly it: no row written or deleted, the batch released, the checkpoint advanced."""
    lanes.source = dataclasses.replace(lanes.source, delete_missing=False, anomalies={"severity": "error"})
    big = sample_data.csv_bytes(600)
    for run in range(4):
        lanes.run(f"big-{run}", big)
    published = lanes.run("run-5", DELETABLE)
    assert not published[1].unchanged
    live = lanes.live()
    total = lanes.rows("select total_processed from etl_checkpoint where source = 'items'")[0][0]

    hinted = lanes.ingest("run-6")
    assert hinted.unchanged
    with pytest.raises(QualityHeld):
        lanes.load("run-6", hinted)
    assert lanes.live() == live
    assert lanes.rows("select status from quality_runs where run_id = 'run-6'") == [("held",)]

    with psycopg.connect(lanes.url) as conn:
        released = pipeline.release(conn, "items", "run-6", released_by="reviewer", settings=settings.load())

    assert released.written == 0 and released.deleted == 0 and lanes.live() == live
    assert lanes.rows("select status, released_by from quality_runs where run_id = 'run-6'") == [
        ("released", "reviewer")]
    assert lanes.rows("select total_processed from etl_checkpoint where source = 'items'")[0][0] > total
    assert lanes.rejects("run-6") == lanes.rejects("run-5")


# ---- declared checks, a freshness check, a time cursor

def timed_csv(updated: datetime, rows: int = 20) -> bytes:
    lines = ["id,name,value,description,updated"]
    lines += [f"{n},name {n},{n}.5,row {n},{(updated - timedelta(minutes=n)).isoformat()}" for n in range(1, rows + 1)]
    return ("\r\n".join(lines) + "\r\n").encode()


FRESHNESS = "select measured, verdict from quality_results where run_id = %s and check_name like 'freshness%%'"


def test_a_source_with_a_freshness_check_is_read_every_time_so_a_stale_file_fails_it_again(lanes):
    lanes.source = dataclasses.replace(
        lanes.source, fields={"updated": {"type": "timestamp", "from": "updated"}},
        checks=[{"check": "freshness", "field": "updated", "max_age": "1d", "severity": "warn"}])
    stale = timed_csv(datetime.now(timezone.utc) - timedelta(days=3))
    lanes.run("run-0", stale)
    (age_0, verdict_0), = lanes.rows(FRESHNESS, ("run-0",))
    assert verdict_0 == "fail"

    again = lanes.run("run-1", stale)

    # not skipped: the check is judged on the file's times now, older than at run-0
    assert not again[0].unchanged and not again[1].unchanged
    (age_1, verdict_1), = lanes.rows(FRESHNESS, ("run-1",))
    assert verdict_1 == "fail" and age_1 >= age_0


def test_a_cursor_source_whose_server_ignores_the_bound_skips_and_keeps_its_cursor(lanes):
    lanes.source = dataclasses.replace(
        lanes.source, fields={"updated": {"type": "timestamp", "from": "updated"}},
        cursor={"field": "updated", "param": "since", "lookback": "1h"})
    body = timed_csv(datetime(2026, 12, 1, tzinfo=timezone.utc))
    lanes.run("run-0", body)
    cursor = lanes.rows("select last_cursor from etl_checkpoint where source = 'items'")[0][0]
    live = lanes.live()

    skipped = lanes.run("run-1", body)

    assert skipped[1].unchanged and skipped[3].written == 0 and lanes.live() == live
    assert skipped[1].last_cursor == cursor
    assert lanes.rows("select last_cursor from etl_checkpoint where source = 'items'")[0][0] == cursor


# ---- the same retry through Airflow: an operator clears the loading run's ingest


@pytest.fixture
def dag(monkeypatch, database_url, tmp_path):
    from tests.pipeline_harness import Pipeline, point_airflow_at, start_sources

    served = start_sources(100, 300, 50)  # the CSV of tests/test_unchanged_files.py: 6 bad rows of 4 kinds
    point_airflow_at(monkeypatch, database_url, served, tmp_path / "staging")
    yield Pipeline(database_url, served)
    served.stop()


DAG_REJECTS = "select count(*) from rejected_records where run_id = %s and source = 'csv'"


def test_clearing_the_ingest_of_the_loading_run_keeps_its_rejects(dag):
    state, first = dag.run()
    assert state == "success"
    rejected = first["source_counts"]["csv"]["rejected"]
    assert rejected and dag.value(DAG_REJECTS, (first["run_id"],)) == rejected

    state, again = dag.clear(first["run_id"], ["ingest"])

    assert state == "success" and again["source_counts"]["csv"]["rejected"] == rejected
    assert dag.value(DAG_REJECTS, (first["run_id"],)) == rejected
    state, later = dag.run()
    assert state == "success" and dag.value(DAG_REJECTS, (later["run_id"],)) == rejected
