"""A warehouse created by any earlier release keeps its rows and works after init_schema migrated it in place."""

import subprocess
from pathlib import Path

import psycopg
import pytest

from sluice import migrations, queries, warehouse
from tests.test_warehouse import load

REPO = Path(__file__).resolve().parents[1]
V1_SCHEMA = Path(__file__).parent / "fixtures" / "schema_v1.sql"
# the last commit whose sql/schema.sql was the whole schema, applied on every run (no schema_version yet)
LAST_UNVERSIONED = "a8a9476"
MIGRATIONS = tuple(sorted(path.name for path in (queries.SQL_DIR / "migrations").glob("*.sql")))


def applied(conn) -> tuple[str, ...]:
    return tuple(name for (name,) in conn.execute("select name from schema_version order by version"))


def layout(conn) -> dict[str, set]:
    """The warehouse's tables, columns, indexes, constraints, triggers and functions, as a catalog shows them."""
    queries_by_kind = {
        "columns": "select table_name, column_name, data_type, collation_name, is_nullable, column_default"
                   " from information_schema.columns where table_schema = current_schema()",
        "relations": "select relname, relkind, relpersistence from pg_class"
                     " where relnamespace = current_schema()::regnamespace",
        "indexes": "select indexname, indexdef from pg_indexes where schemaname = current_schema()",
        "constraints": "select conname, pg_get_constraintdef(oid) from pg_constraint"
                       " where connamespace = current_schema()::regnamespace",
        "triggers": "select tgname, pg_get_triggerdef(oid) from pg_trigger where not tgisinternal",
        "functions": "select proname, pg_get_function_identity_arguments(oid), prosrc, prosecdef, proacl::text"
                     " from pg_proc where pronamespace = current_schema()::regnamespace",
    }
    return {kind: set(conn.execute(query)) for kind, query in queries_by_kind.items()}


def earlier_releases() -> list[str]:
    """Every commit that changed the unversioned sql/schema.sql, when this checkout has its history."""
    try:
        log = subprocess.run(["git", "-C", str(REPO), "log", "--format=%h", LAST_UNVERSIONED, "--", "sql/schema.sql"],
                             capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        return []
    return log.stdout.split() if log.returncode == 0 else []


def collations(conn) -> dict:
    return {(table, column): collation for table, column, collation in conn.execute(
        "select table_name, column_name, coalesce(collation_name, 'default') from information_schema.columns"
        " where table_schema = current_schema() and column_name in ('source', 'source_id')"
        "   and table_name not like 'pg_%'")}


def test_the_first_release_schema_upgrades_in_place(make_database, tmp_path):
    url = make_database(bare=True)
    with psycopg.connect(url) as conn:
        conn.execute(V1_SCHEMA.read_text())
        conn.commit()
        # rows written by the first release's statements
        conn.execute("insert into raw_csv_data (source_id, data, content_hash, run_id)"
                     " values ('1', '{\"id\": \"1\"}', 'old-hash', 'v1-run')")
        conn.execute("insert into normalized_data (source, source_id, name, value, description,"
                     " first_seen_run_id, last_changed_run_id, input_hash)"
                     " values ('csv', '1', 'old', 1, null, 'v1-run', 'v1-run', 'old-input')")
        conn.commit()
        assert set(collations(conn).values()) == {"default"}

        assert warehouse.apply_schema(conn).migrations == MIGRATIONS
        assert warehouse.apply_schema(conn) == migrations.Changes()  # and again: nothing left to apply

        # 12 source and source_id columns, and the source of each raw table (named sources)
        # etl_run_work's too, source_fields' (011), source_declarations' (012), source_observed_fields' and
        # source_field_changes' (013)
        assert set(collations(conn).values()) == {"C"} and len(collations(conn)) == 21
        # the rows of the release before named sources belong to the seed sources named after their kinds
        assert conn.execute("select source, source_id from raw_csv_data").fetchall() == [("csv", "1")]
        assert conn.execute("select source_id, name from normalized_data").fetchall() == [("1", "old")]
        assert conn.execute("select row_count from etl_checkpoint where source = 'csv'").fetchone() == (1,)
        # 003: the seed's sources are named after their kind; any source name is allowed from now on
        assert conn.execute("select kind from etl_checkpoint where source = 'csv'").fetchone() == ("csv",)
        with conn.transaction(force_rollback=True):
            conn.execute("insert into normalized_data (source, source_id, first_seen_run_id, last_changed_run_id,"
                         " input_hash) values ('orders', '1', 'r', 'r', 'h')")
            conn.execute("insert into rejected_records (run_id, source, stage, reason)"
                         " values ('r', 'orders', 's', 'x')")
        functions = {name for (name,) in conn.execute(
            "select proname from pg_proc where proname like 'sluice_fast%'")}
        # the first fast path's functions are gone, and so are the declared fields' (023: ingest types them)
        assert functions == {"sluice_fast_path", "sluice_fast_text_ok"}
        assert conn.execute("select to_regclass('normalized_stage_run_idx')").fetchone() == (None,)
        assert applied(conn) == MIGRATIONS
        conn.commit()

        counts = load(conn, tmp_path, "v2-run", 50)

        assert counts.inserted == 49 and counts.updated == 1
        assert conn.execute("select name from normalized_data where source_id = '1'").fetchone() != ("old",)
        assert conn.execute("select count(*), min(row_count) from normalized_data, etl_checkpoint"
                            " where etl_checkpoint.source = 'csv'").fetchone() == (50, 50)
        assert conn.execute("select source, count(*) from raw_csv_data group by source").fetchall() == [("csv", 50)]
        checksum = conn.execute("select md5(string_agg(t::text, '|' order by id)) from normalized_data t").fetchone()

        rerun = load(conn, tmp_path, "v3-run", 50)

        assert (rerun.inserted, rerun.updated, rerun.unchanged) == (0, 0, 0)
        assert conn.execute("select md5(string_agg(t::text, '|' order by id)) from normalized_data t"
                            ).fetchone() == checksum


@pytest.mark.parametrize("release", earlier_releases() or [pytest.param(None, marks=pytest.mark.skip(
    reason=f"no git history of sql/schema.sql up to {LAST_UNVERSIONED} in this checkout"))])
def test_every_earlier_release_upgrades_to_the_layout_of_a_fresh_warehouse(make_database, release):
    old_schema = subprocess.run(["git", "-C", str(REPO), "show", f"{release}:sql/schema.sql"],
                                capture_output=True, text=True, check=True).stdout
    with psycopg.connect(make_database()) as fresh:
        expected = layout(fresh)
    with psycopg.connect(make_database(bare=True)) as conn:
        conn.execute(old_schema.split("-- name: apply_schema", 1)[1])
        conn.execute("insert into normalized_data (source, source_id, name, first_seen_run_id, last_changed_run_id,"
                     " input_hash) values ('csv', '1', 'kept', 'old-run', 'old-run', 'old-input')")
        conn.commit()

        assert warehouse.apply_schema(conn) == migrations.Changes(MIGRATIONS, functions_replaced=True)

        assert layout(conn) == expected
        assert conn.execute("select name from normalized_data").fetchall() == [("kept",)]
        assert applied(conn) == MIGRATIONS
