"""The named queries of sql/webapp.sql: consistent filters, and search that can use the pg_trgm indexes."""

import psycopg2
from psycopg2 import sql
import pytest

from sluice import queries
from webapp.routes_data import filters_clause, like_pattern

NO_FILTER = {"source": None, "updated_since": None, "pattern": None, "include_deleted": False, "sources": None}


def where_clause(name: str) -> str:
    return queries.query("webapp.sql", name).split("\nwhere ", 1)[1].split("\norder by", 1)[0].rstrip(";").strip()


def test_count_and_estimate_filter_exactly_like_the_page():
    filters = where_clause("data_count")
    assert where_clause("data_estimate") == filters
    assert where_clause("data_page").startswith(filters + "\n  and ")


@pytest.mark.parametrize("filters, index", [
    ({**NO_FILTER, "pattern": like_pattern("organic")}, "normalized_data_name_trgm"),
    ({**NO_FILTER, "pattern": like_pattern("organic")}, "normalized_data_description_trgm"),
    ({**NO_FILTER, "source": "api"}, "normalized_data_source_updated_idx"),
    # a credential's sources (webapp.scopes): the same index, for one source or several
    ({**NO_FILTER, "sources": ["api"]}, "normalized_data_source_updated_idx"),
    ({**NO_FILTER, "sources": ["api", "csv"]}, "normalized_data_source_updated_idx"),
])
def test_filters_can_use_their_index(database_url, filters, index):
    # psycopg2 (as the app) sends values inline, so the planner sees the folded conditions
    with psycopg2.connect(database_url) as conn, conn.cursor() as cursor:
        cursor.execute("set local enable_seqscan = off")
        count = sql.SQL(queries.query("webapp.sql", "data_count")).format(
            filters=filters_clause(filters), attributes=sql.SQL("true"))
        cursor.execute(sql.SQL("explain ") + count, filters)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    conn.close()
    assert index in plan, plan
