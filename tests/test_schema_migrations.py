"""init_schema applies each migration once, in order, under the schema lock, and on a current warehouse
takes no lock on any table: readers and runs holding the tables never wait for it, nor it for them."""

import shutil
import time
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
from psycopg import sql

from sluice import migrations, queries, warehouse
from sluice.errors import LockTimeout

# the migration bookkeeping: reading it (AccessShare) is all a run on a current warehouse locks
BOOKKEEPING = {"schema_version", "schema_version_pkey", "schema_functions", "schema_functions_pkey"}
RUNS = 50


def relation_locks(conn) -> set[tuple[str, str]]:
    """(relation, mode) of every lock this session holds on a relation of the warehouse's schema."""
    return set(conn.execute(
        "select c.relname, l.mode from pg_locks l join pg_class c on c.oid = l.relation"
        " where l.pid = pg_backend_pid() and l.locktype = 'relation'"
        "   and c.relnamespace = current_schema()::regnamespace"))


def data_tables(conn) -> list[str]:
    return [name for (name,) in conn.execute(
        "select relname from pg_class where relkind = 'r' and relnamespace = current_schema()::regnamespace"
        " order by relname") if name not in BOOKKEEPING]


def migration_names() -> tuple[str, ...]:
    return tuple(sorted(path.name for path in (queries.SQL_DIR / "migrations").glob("*.sql")))


@pytest.fixture
def hold_every_table(database_url):
    """Another session holding ACCESS EXCLUSIVE on every data table, as a bulk load or a migration would."""
    with psycopg.connect(database_url) as holder:
        tables = data_tables(holder)
        holder.execute(sql.SQL("lock table {} in access exclusive mode").format(
            sql.SQL(", ").join(map(sql.Identifier, tables))))
        yield tables
        holder.rollback()


@pytest.fixture
def sql_dir(tmp_path, monkeypatch):
    """A copy of the SQL folder that a test may edit, used in place of the real one."""
    copy = tmp_path / "sql"
    shutil.copytree(queries.SQL_DIR, copy)
    monkeypatch.setattr(queries, "SQL_DIR", copy)
    return copy


def test_init_on_a_current_warehouse_locks_no_table(database_url):
    locked_runs, seconds = [], []
    with psycopg.connect(database_url) as conn:
        for _ in range(RUNS):
            with conn.transaction():  # the run's locks stay held until this outer transaction ends
                start = time.perf_counter()
                changes = warehouse.apply_schema(conn, lock_timeout_seconds=1)
                seconds.append(time.perf_counter() - start)
                locks = relation_locks(conn)
            assert changes == migrations.Changes() and str(changes) == "the warehouse schema is current"
            assert {mode for _, mode in locks} <= {"AccessShareLock"}
            locked_runs += [locks] if {name for name, _ in locks} - BOOKKEEPING else []
    assert locked_runs == [], f"{len(locked_runs)} of {RUNS} runs locked a table: {locked_runs[0]}"
    print(f"{RUNS} runs on a current warehouse, none locked a table; median {sorted(seconds)[RUNS // 2] * 1000:.1f} ms")


def test_init_on_a_current_warehouse_goes_through_while_another_session_holds_every_table(
        database_url, hold_every_table):
    assert {"normalized_data", "raw_api_data", "raw_csv_data", "etl_checkpoint", "etl_runs"} <= set(hold_every_table)
    # a run on today's main would queue behind the holder here (ALTER TABLE ... ADD COLUMN IF NOT EXISTS)
    with psycopg.connect(database_url, options="-c lock_timeout=2s") as conn:
        started = time.monotonic()
        assert warehouse.apply_schema(conn, lock_timeout_seconds=1) == migrations.Changes()
        assert time.monotonic() - started < 1


def test_a_fresh_database_gets_every_migration_once_in_order(make_database):
    with psycopg.connect(make_database(bare=True)) as conn:
        changes = warehouse.apply_schema(conn)

        assert changes.migrations == migration_names() and changes.migrations[0] == "001_baseline.sql"
        assert changes.functions_replaced
        assert str(changes) == f"applied {', '.join(migration_names())}; replaced the functions of functions.sql"
        rows = conn.execute("select version, name from schema_version order by applied_at, version").fetchall()
        assert rows == [(int(name[:3]), name) for name in migration_names()]
        assert warehouse.apply_schema(conn) == migrations.Changes()


def test_the_work_tables_are_never_autovacuumed(make_database):
    """record_run empties them; an autovacuum of a staged batch made its lock wait 1 s for the cancellation."""
    with psycopg.connect(make_database(bare=True)) as conn:
        warehouse.apply_schema(conn)
        options = dict(conn.execute(
            "select c.relname, c.reloptions || coalesce(t.reloptions, '{}') from pg_class c"
            " left join pg_class t on t.oid = c.reltoastrelid"
            " where c.relname in ('staged_records', 'normalized_stage', 'normalized_data')"
            "   and c.relnamespace = current_schema()::regnamespace").fetchall())
    assert options["staged_records"] == options["normalized_stage"] == ["autovacuum_enabled=false"] * 2
    assert options["normalized_data"] in (None, [])  # published data is vacuumed as usual


def init_on(url: str) -> migrations.Changes:
    with psycopg.connect(url) as conn:
        return warehouse.apply_schema(conn, lock_timeout_seconds=30)


def test_concurrent_inits_on_an_empty_database_apply_each_migration_once(make_database):
    url = make_database(bare=True)
    with psycopg.connect(url) as holder, ThreadPoolExecutor(2) as pool:
        # both runs find the database empty and queue on the schema lock, then race for each migration
        holder.execute(queries.query("pipeline.sql", "lock_schema"))
        futures = [pool.submit(init_on, url) for _ in range(2)]
        while holder.execute("select count(*) from pg_locks where locktype = 'advisory' and not granted"
                             "   and database = (select oid from pg_database where datname = current_database())"
                             ).fetchone() != (2,):
            assert not any(future.done() for future in futures), [future.result() for future in futures]
            time.sleep(0.05)
        holder.commit()
        results = [future.result(timeout=60) for future in futures]
    assert sorted(results[0].migrations + results[1].migrations) == list(migration_names())
    assert sorted(changes.functions_replaced for changes in results) == [False, True]
    with psycopg.connect(url) as conn:
        assert [name for (name,) in conn.execute("select name from schema_version order by version")] == list(
            migration_names())


def test_a_migration_edited_after_it_was_applied_fails_naming_the_file(database_url, sql_dir):
    baseline = sql_dir / "migrations" / "001_baseline.sql"
    baseline.write_text(baseline.read_text() + "create index raw_api_data_run_idx on raw_api_data (run_id);\n")
    with psycopg.connect(database_url) as conn:
        with pytest.raises(migrations.MigrationError, match=(
                f"^{baseline} was changed after it was applied to this warehouse; restore it and make the change "
                f"a new migration$")):
            warehouse.apply_schema(conn)
        conn.rollback()
        assert conn.execute("select to_regclass('raw_api_data_run_idx')").fetchone() == (None,)


def test_a_warehouse_migrated_by_newer_code_fails_clearly(database_url):
    with psycopg.connect(database_url) as conn:
        conn.execute("insert into schema_version (version, name, checksum) values (999, '999_future.sql', 'x')")
        conn.commit()
        with pytest.raises(migrations.MigrationError, match=(
                "^the warehouse has migration 999_future.sql applied, which .*/migrations does not have: "
                "a newer Sluice migrated it; run that version or a later one$")):
            warehouse.apply_schema(conn)


def test_a_misnamed_migration_file_fails_naming_it(database_url, sql_dir):
    (sql_dir / "migrations" / "3_probe.sql").write_text("select 1;\n")
    with psycopg.connect(database_url) as conn, pytest.raises(migrations.MigrationError, match=(
            "3_probe.sql: a migration file is named NNN_name.sql")):
        warehouse.apply_schema(conn)


def test_a_failing_migration_names_its_file_and_leaves_nothing_of_itself(database_url, sql_dir):
    broken = sql_dir / "migrations" / "900_broken.sql"
    broken.write_text("create table probe (x integer);\nalter table no_such_table add column y integer;\n")
    with psycopg.connect(database_url) as conn:
        with pytest.raises(migrations.MigrationError, match=(
                f'^{broken} failed, nothing of it was applied: relation "no_such_table" does not exist$')):
            warehouse.apply_schema(conn)
        conn.rollback()
        assert conn.execute("select to_regclass('probe'), count(*) from schema_version where version = 900"
                            ).fetchone() == (None, 0)


def test_a_changed_functions_file_is_applied_on_the_next_run_without_a_table_lock(
        database_url, sql_dir, hold_every_table):
    functions = sql_dir / "functions.sql"
    functions.write_text(functions.read_text().replace(
        "-- a code point that cannot be whitespace",
        "create or replace function sluice_probe() returns text language sql as $$ select 'v2' $$;\n\n"
        "-- a code point that cannot be whitespace"))
    with psycopg.connect(database_url) as conn:
        with conn.transaction():
            changes = warehouse.apply_schema(conn, lock_timeout_seconds=1)
            locks = relation_locks(conn)

        assert changes == migrations.Changes(functions_replaced=True)
        assert {name for name, _ in locks} <= BOOKKEEPING
        assert conn.execute("select sluice_probe()").fetchone() == ("v2",)
        assert warehouse.apply_schema(conn, lock_timeout_seconds=1) == migrations.Changes()


def test_a_new_migration_waits_for_a_long_reader_at_most_the_lock_timeout_then_applies(database_url, sql_dir):
    probe = sql_dir / "migrations" / "900_probe.sql"
    probe.write_text("alter table normalized_data add column probe integer;\n")
    with psycopg.connect(database_url) as reader, psycopg.connect(database_url) as conn:
        reader.execute("select count(*) from normalized_data").fetchone()  # its transaction stays open

        started = time.monotonic()
        with pytest.raises(LockTimeout, match=f"^{probe}: waited more than 0.5s for a lock another session holds"):
            warehouse.apply_schema(conn, lock_timeout_seconds=0.5)
        assert time.monotonic() - started < 5
        assert conn.execute("select count(*) from schema_version where version = 900").fetchone() == (0,)
        conn.rollback()

        reader.rollback()
        assert warehouse.apply_schema(conn, lock_timeout_seconds=0.5) == migrations.Changes(("900_probe.sql",))
        assert conn.execute("select probe from normalized_data").fetchall() == []
