"""A warehouse created by the first release's schema keeps its rows and works after today's schema is applied."""

from pathlib import Path

import psycopg

from sluice import warehouse
from tests.test_warehouse import load

V1_SCHEMA = Path(__file__).parent / "fixtures" / "schema_v1.sql"


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

        warehouse.apply_schema(conn)
        warehouse.apply_schema(conn)  # and again: every run applies it

        assert set(collations(conn).values()) == {"C"} and len(collations(conn)) == 12
        assert conn.execute("select source_id, name from normalized_data").fetchall() == [("1", "old")]
        assert conn.execute("select row_count from etl_checkpoint where source = 'csv'").fetchone() == (1,)
        functions = {name for (name,) in conn.execute(
            "select proname from pg_proc where proname like 'sluice_fast%'")}
        assert functions == {"sluice_fast_path", "sluice_fast_text_ok"}
        assert conn.execute("select to_regclass('normalized_stage_run_idx')").fetchone() == (None,)
        conn.commit()

        counts = load(conn, tmp_path, "v2-run", 50)

        assert counts["inserted"] == 49 and counts["updated"] == 1
        assert conn.execute("select name from normalized_data where source_id = '1'").fetchone() != ("old",)
        assert conn.execute("select count(*), min(row_count) from normalized_data, etl_checkpoint"
                            " where etl_checkpoint.source = 'csv'").fetchone() == (50, 50)
