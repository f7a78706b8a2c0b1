"""Warehouse steps called directly against real Postgres: the bulk path of upsert and the run counts."""

import datetime as dt
import io

import psycopg
import pytest

from sluice import csv_source, results, rules, runs, settings, warehouse
from sluice.failures import Failure
from sluice_devtools import sample_data

MAPPING = settings.DEFAULT_CSV_MAPPING


def staged_csv(tmp_path, run_id: str, rows: int) -> io.BytesIO:
    """The sample CSV of `rows` rows, staged as ingest_csv stages it."""
    path = tmp_path / f"{run_id}.csv"
    path.write_bytes(sample_data.csv_bytes(rows))
    staged = io.BytesIO()
    csv_source.stage_file(str(path), MAPPING, staged, run_id=run_id, uri=str(path), where="csv")
    staged.seek(0)
    return staged


def load(conn, tmp_path, run_id: str, rows: int, *, bulk_rows: int = warehouse.BULK_ROWS) -> dict:
    """store_raw, normalize and upsert of the sample CSV; returns upsert's counts."""
    staged = staged_csv(tmp_path, run_id, rows)
    warehouse.store_raw(conn, "csv", staged, run_id=run_id, lock_timeout_seconds=5, bulk_rows=bulk_rows)
    warehouse.normalize(conn, "csv", rules.Normalization(MAPPING), run_id=run_id, full_refresh=False, lock_timeout_seconds=5)
    return warehouse.upsert(conn, "csv", run_id=run_id, lock_timeout_seconds=5, bulk_rows=bulk_rows)


def search_indexes(conn) -> set[str]:
    return {name for (name,) in conn.execute(
        "select indexname from pg_indexes where tablename = 'normalized_data' and indexname like '%trgm'")}


def indexes(conn) -> set[tuple]:
    """Every index and constraint of the written tables, as PostgreSQL would rebuild them."""
    return set(conn.execute(
        "select tablename, indexname, indexdef from pg_indexes"
        " where tablename in ('normalized_data', 'raw_csv_data')"
        " union all select conrelid::regclass::text, conname, pg_get_constraintdef(oid) from pg_constraint"
        " where conrelid in ('normalized_data'::regclass, 'raw_csv_data'::regclass)"))


def test_a_first_bulk_load_rebuilds_every_index_and_constraint_and_they_answer(database_url, tmp_path):
    with psycopg.connect(database_url) as conn:
        before = indexes(conn)
        conn.rollback()
        counts = load(conn, tmp_path, "run-1", 500, bulk_rows=100)

        assert counts == results.Upserted("csv", inserted=500, processed=500, live_after=500)
        assert indexes(conn) == before and len(before) >= 10
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute("insert into normalized_data (source, source_id, first_seen_run_id, last_changed_run_id,"
                         " input_hash) values ('csv', '1', 'x', 'x', 'x')")
        conn.rollback()
        assert search_indexes(conn) == {"normalized_data_name_trgm", "normalized_data_description_trgm"}
        conn.execute("set enable_seqscan = off")
        plan = "\n".join(r for (r,) in conn.execute(
            "explain select id from normalized_data where name ilike '%zürich 1%'"))
        assert "normalized_data_name_trgm" in plan
        hits = conn.execute("select count(*) from normalized_data where name ilike '%zürich 1%'").fetchone()[0]
        expected = sum(1 for row in sample_data.csv_rows(500) if row[1].lower().startswith("zürich 1"))
        assert hits == expected > 0


def test_a_load_that_does_not_double_the_table_updates_the_indexes_in_place(database_url, tmp_path):
    with psycopg.connect(database_url) as conn:
        load(conn, tmp_path, "run-1", 500, bulk_rows=100)
        (oid_before,) = conn.execute("select 'normalized_data_name_trgm'::regclass::oid").fetchone()

        counts = load(conn, tmp_path, "run-2", 600, bulk_rows=50)

        assert counts.inserted == 100
        (oid_after,) = conn.execute("select 'normalized_data_name_trgm'::regclass::oid").fetchone()
        assert oid_after == oid_before
        assert conn.execute("select row_count from etl_checkpoint where source = 'csv'").fetchone() == (600,)


def test_row_counters_follow_every_insert_delete_and_truncate(database_url, tmp_path):
    with psycopg.connect(database_url) as conn:
        load(conn, tmp_path, "run-1", 300, bulk_rows=10_000)
        conn.execute("delete from normalized_data where source_id::int <= 100")
        counters = dict(conn.execute("select source, row_count from etl_checkpoint"))
        assert counters == {"csv": 200} == dict(conn.execute(
            "select source, count(*) from normalized_data group by source"))
        conn.execute("truncate normalized_data")
        assert dict(conn.execute("select source, row_count from etl_checkpoint")) == {"csv": 0}


def test_a_rerun_of_the_same_rows_keeps_the_raw_indexes_and_writes_nothing(database_url, tmp_path):
    with psycopg.connect(database_url) as conn:
        load(conn, tmp_path, "run-1", 500, bulk_rows=100)
        (oid_before,) = conn.execute("select 'raw_csv_data_source_source_id_key'::regclass::oid").fetchone()
        conn.rollback()

        counts = load(conn, tmp_path, "run-2", 500, bulk_rows=100)

        (oid_after,) = conn.execute("select 'raw_csv_data_source_source_id_key'::regclass::oid").fetchone()
        assert oid_after == oid_before
        assert (counts.inserted, counts.updated, counts.unchanged) == (0, 0, 0)


@pytest.mark.parametrize("bulk", [True, False])
def test_a_first_load_into_a_table_analyzed_empty_plans_hash_joins_not_a_quadratic_nested_loop(
        database_url, tmp_path, bulk):
    # regression: a raw table that ANALYZE saw empty got a nested loop that rescanned the growing table for
    # every incoming row, with its indexes dropped (a bulk load) or not (100,000 rows took 215 s)
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute("vacuum (analyze) raw_csv_data")
    staged = staged_csv(tmp_path, "run-1", 2000)
    with psycopg.connect(database_url) as conn:
        with conn.cursor().copy(warehouse.q("copy_staged")) as copy:
            copy.write(staged.getvalue())
        conn.execute(warehouse.q("analyze_staged"))
        with warehouse._load_into(conn, "raw_csv_data", grows=True, bulk=bulk,
                                  index_build_memory=settings.INDEX_BUILD_MEMORY):
            upsert = psycopg.sql.SQL("explain " + warehouse.q("upsert_raw")).format(
                raw_table=psycopg.sql.Identifier("raw_csv_data"))
            plan = "\n".join(row for (row,) in conn.execute(upsert, {"run_id": "run-1", "source": "csv"}))
        conn.rollback()
    assert "Nested Loop" not in plan and "Hash" in plan, plan


def index_files(conn) -> dict:
    """Each index of normalized_data and the file holding it: a rebuilt index gets a new one."""
    files = dict(conn.execute("select indexrelid::regclass::text, pg_relation_filenode(indexrelid) from pg_index"
                              " where indrelid = 'normalized_data'::regclass"))
    conn.rollback()
    return files


RENORMALIZE = {
    "full_refresh": {"mapping": MAPPING, "full_refresh": True},
    "mapping change": {"mapping": {**MAPPING, "name": "description", "description": "name"}, "full_refresh": False},
}


@pytest.mark.parametrize("renormalize", RENORMALIZE)
def test_renormalizing_every_row_of_an_unchanged_warehouse_keeps_the_indexes_in_place(
        database_url, tmp_path, renormalize):
    # regression: the bulk decision counted the rows upsert compares, not those it inserts, so a no-op full
    # refresh dropped and rebuilt normalized_data's indexes, holding readers off under an exclusive lock
    with psycopg.connect(database_url) as conn:
        load(conn, tmp_path, "run-1", 500, bulk_rows=100)
        before = index_files(conn)
        warehouse.store_raw(conn, "csv", staged_csv(tmp_path, "run-2", 500), run_id="run-2",
                            lock_timeout_seconds=5, bulk_rows=100)
        normalized = warehouse.normalize(conn, "csv", rules.Normalization(RENORMALIZE[renormalize]["mapping"]), run_id="run-2",
                                         full_refresh=RENORMALIZE[renormalize]["full_refresh"],
                                         lock_timeout_seconds=5)

        counts = warehouse.upsert(conn, "csv", run_id="run-2", lock_timeout_seconds=5, bulk_rows=100)

        assert normalized.valid == 500
        assert counts.inserted == 0
        assert counts.updated == (500 if renormalize == "mapping change" else 0)
        assert index_files(conn) == before and len(before) >= 5


def test_the_checkpoint_advances_to_the_id_store_raw_recorded_without_reading_the_staged_records(
        database_url, tmp_path):
    # #16: the checkpoint cost a scan of the run's staged records (2.2 s at 1M rows); store_raw, which reads them
    # anyway, records their highest id (numeric order: 120, not "99") and the checkpoint reads only that
    with psycopg.connect(database_url) as conn:
        load(conn, tmp_path, "manual__a", 120)
        conn.execute("delete from staged_records where run_id = 'manual__a'")
        conn.commit()
        advanced = warehouse.advance_checkpoint(conn, "csv", run_id="manual__a", processed=120,
                                                lock_timeout_seconds=5)

    assert advanced.last_processed_id == "120"


def work_files(conn) -> tuple:
    """The files of the work tables: a truncate gives each a new one, a delete keeps them."""
    return conn.execute("select pg_relation_filenode('staged_records'), pg_relation_filenode('normalized_stage')"
                        ).fetchone()


def record(conn, run_id: str, **options) -> None:
    """record_run of a run whose csv source loaded (its checkpoint committed): its work rows are not needed."""
    runs.record(conn, runs.RunOutcome.of([results.Checkpointed("csv")], run_id=run_id, run_type="manual",
                                         started_at=dt.datetime.now(dt.timezone.utc)), **options)


WORK_LEFT = ("select (select count(*) from staged_records) + (select count(*) from normalized_stage)"
             " + (select count(*) from etl_run_work)")


def test_record_run_empties_the_work_tables_whole_when_no_other_run_has_rows_there(database_url, tmp_path):
    # #16: deleting a million work rows cost record_run 1.6 s; alone in the tables, the run's rows go by a
    # truncate (new files), whose cost does not grow with them
    with psycopg.connect(database_url) as conn:
        load(conn, tmp_path, "manual__a", 50)
        before = work_files(conn)
        record(conn, "manual__a")
        after = work_files(conn)
        left = conn.execute(WORK_LEFT).fetchone()[0]
        # kept, so that a task of the run cleared after it was recorded returns what it committed
        steps = {row[0] for row in conn.execute("select step from etl_step_results where run_id = 'manual__a'")}

    assert left == 0 and steps == {"store_raw", "normalize", "upsert"}
    assert after[0] != before[0] and after[1] != before[1]


def test_record_run_keeps_the_work_rows_of_its_sources_that_did_not_load(database_url, tmp_path):
    # a clear of the failed source's step redoes it from them; the retention sweeps them if nobody does
    with psycopg.connect(database_url) as conn:
        load(conn, tmp_path, "manual__a", 50)
        before = work_files(conn)
        runs.record(conn, runs.RunOutcome.of([results.Stored("csv")], run_id="manual__a", run_type="manual",
                                             started_at=dt.datetime.now(dt.timezone.utc),
                                             failures=[Failure(step="upsert", source="csv", error_class="LockTimeout",
                                                               message="LockTimeout: csv")]))
        left = dict(conn.execute("select run_id, count(*) from staged_records group by 1").fetchall())
        work = conn.execute("select run_id, source from etl_run_work").fetchall()
        after = work_files(conn)

    assert left == {"manual__a": 50} and work == [("manual__a", "csv")] and after == before


def test_record_run_deletes_only_its_own_work_rows_while_another_run_has_some(database_url, tmp_path):
    with psycopg.connect(database_url) as conn:
        load(conn, tmp_path, "manual__a", 50)
        warehouse.store_raw(conn, "csv", staged_csv(tmp_path, "manual__b", 60), run_id="manual__b",
                            lock_timeout_seconds=5)
        before = work_files(conn)
        record(conn, "manual__a")
        left = dict(conn.execute("select run_id, count(*) from staged_records group by 1").fetchall())
        work = {row[0] for row in conn.execute("select run_id from etl_run_work")}
        after = work_files(conn)

    assert left == {"manual__b": 60} and work == {"manual__b"}
    assert after == before


def test_record_run_deletes_its_rows_one_by_one_when_another_transaction_keeps_the_work_tables(
        database_url, tmp_path, monkeypatch):
    # a transaction of another run reading the work tables is not waited for long: record_run deletes instead
    monkeypatch.setattr(runs, "WORK_LOCK_TIMEOUT_SECONDS", 0.2)
    with psycopg.connect(database_url) as conn, psycopg.connect(database_url) as reader:
        load(conn, tmp_path, "manual__a", 50)
        reader.execute("select count(*) from staged_records").fetchone()  # its transaction stays open
        before = work_files(conn)
        record(conn, "manual__a")
        left = conn.execute("select count(*) from staged_records").fetchone()[0]
        after = work_files(conn)
        reader.rollback()

    assert left == 0 and after == before


def age_steps(conn, run_id: str, hours: float, step: str | None = None) -> None:
    """Date the run's step results (or one step's) `hours` back, as a run abandoned that long ago left them; its
    work rows, registered by its store_raw, with them."""
    conn.execute("update etl_step_results set created_at = now() - make_interval(secs => %s * 3600)"
                 " where run_id = %s and (%s::text is null or step = %s)", (hours, run_id, step, step))
    if step in (None, "store_raw"):
        conn.execute("update etl_run_work set created_at = now() - make_interval(secs => %s * 3600)"
                     " where run_id = %s", (hours, run_id))
    conn.commit()


def test_record_run_sweeps_the_work_rows_of_runs_abandoned_before_the_retention_and_truncates(
        database_url, tmp_path, caplog):
    # a run killed (or marked failed by hand) before its record_run left its rows behind: every later record_run
    # deleted row by row. Once its newest step result is older than the retention, its rows go and the next
    # record_run, alone again, truncates
    with psycopg.connect(database_url) as conn:
        load(conn, tmp_path, "manual__killed", 40)
        warehouse.store_raw(conn, "csv", staged_csv(tmp_path, "manual__dropped", 30), run_id="manual__dropped",
                            lock_timeout_seconds=5)
        age_steps(conn, "manual__killed", 25)
        age_steps(conn, "manual__dropped", 100)
        load(conn, tmp_path, "manual__a", 50)
        before = work_files(conn)
        with caplog.at_level("INFO", logger="sluice.runs"):
            record(conn, "manual__a", retention_hours=24)
        after = work_files(conn)
        left = conn.execute(WORK_LEFT).fetchone()[0]
        steps = {row[0] for row in conn.execute("select run_id from etl_step_results")}

    assert left == 0 and steps == {"manual__a"}
    assert after[0] != before[0] and after[1] != before[1]
    assert "swept the work rows of 2 sources of runs abandoned more than 24 h ago: csv of manual__dropped (stored " \
        in caplog.text and "csv of manual__killed (stored " in caplog.text


def test_a_run_whose_newest_step_result_is_within_the_retention_keeps_its_work_rows(database_url, tmp_path):
    # a run retried or cleared within the retention may still need its rows: record_run deletes only its own
    with psycopg.connect(database_url) as conn:
        load(conn, tmp_path, "manual__b", 60)
        age_steps(conn, "manual__b", 23)
        age_steps(conn, "manual__b", 30, step="store_raw")  # older, but not its newest
        load(conn, tmp_path, "manual__a", 50)
        before = work_files(conn)
        record(conn, "manual__a", retention_hours=24)
        left = dict(conn.execute("select run_id, count(*) from staged_records group by 1").fetchall())
        steps = {row[0] for row in conn.execute("select run_id from etl_step_results")}
        after = work_files(conn)

    assert left == {"manual__b": 60} and steps == {"manual__a", "manual__b"}
    assert after == before
