"""/data over declared fields on a realistic table: the plans and the latency of filters and orders, with and
without the GIN index of migration 016 (the figures in the README's "Declared fields").

    .venv/bin/python -m bench.api_fields [--rows 200000] [--repeat 7]

Rows are spread over three sources with six declared fields each; timings are medians of requests through the
app (Flask test client) against the embedded PostgreSQL, or BENCH_DATABASE_URL's server.
"""

import argparse
import statistics
import time
from pathlib import Path

import psycopg
import psycopg2
from psycopg2 import sql

from bench.database import Server
from sluice import queries, scope_key, warehouse
from webapp import attributes, create_app, db, routes_data

SOURCES = ("customers", "orders", "events")
FIELDS = {"email": "text", "plan": "text", "seats": "integer", "mrr": "numeric", "active": "boolean",
          "signup": "timestamp"}
REQUESTS = ["plan=eq.plan7", "plan=eq.plan7&count=none", "plan=in.(plan7,plan8)", "plan=eq.plan7&active=is.true",
            "email=eq.user3000@example.com", "seats=gte.990", "seats=gte.990&count=none",
            "signup=lt.2025-01-02", "order=seats.desc&count=none", "order=mrr.asc&plan=eq.plan7&count=none"]
INDEX = "normalized_data_attributes_idx"
# the read API signs its scopes with a key the warehouse keeps (migration 018): one per bench run
SCOPE_KEY = scope_key.generate()


def fill(url: str, rows: int) -> None:
    with psycopg.connect(url) as conn:
        warehouse.apply_schema(conn)
        scope_key.install(conn, SCOPE_KEY)
    with psycopg2.connect(url) as conn, conn.cursor() as cursor:
        cursor.execute(
            "insert into normalized_data (source, source_id, created_at, updated_at, first_seen_run_id,"
            " last_changed_run_id, input_hash, attributes)"
            " select (%(sources)s::text[])[n %% 3 + 1], 'r' || n, now(), now() - make_interval(secs => n), 'run-1',"
            " 'run-1', 'bench', jsonb_build_object('email', 'user' || n || '@example.com', 'plan', 'plan' || (n %% 50),"
            " 'seats', n %% 1000, 'mrr', (n %% 9973) * 1.25, 'active', n %% 2 = 0, 'signup',"
            " to_char((timestamptz '2025-01-01' + make_interval(secs => n * 37)) at time zone 'UTC',"
            " 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'))"
            " from generate_series(1, %(rows)s) as n", {"sources": list(SOURCES), "rows": rows})
        for source in SOURCES:  # (the schema's triggers count each source's rows in etl_checkpoint)
            cursor.executemany(
                "insert into source_fields (source, field, type, path, position, declared_run_id)"
                " values (%s, %s, %s, %s, %s, 'run-1')",
                [(source, name, kind, name, position) for position, (name, kind) in enumerate(FIELDS.items())])
    vacuum(url)


def vacuum(url: str) -> None:
    conn = psycopg2.connect(url)
    conn.autocommit = True  # VACUUM cannot run in a transaction; it merges the GIN pending list as autovacuum does
    with conn.cursor() as cursor:
        cursor.execute("vacuum analyze normalized_data")
    conn.close()


def plan(url: str, request: str) -> str:
    """The scans and the execution time of data_page for a request's filters and order."""
    filters, order = {}, None
    for pair in request.split("&"):
        name, _, value = pair.partition("=")
        if name == "order":
            order = value
        elif name != "count":
            filters.setdefault(name, []).append(value)
    query = attributes.parse(FIELDS, "customers", None, order, filters)
    params = {"source": "customers", "updated_since": None, "pattern": None, "include_deleted": False,
              "sources": None, "limit": 11, "offset": 0}
    parts = {"filters": routes_data.filters_clause(params), "attributes": attributes.where(query, params)}
    parts["after"], parts["order"] = attributes.keyset(query, None, params)
    statement = sql.SQL(queries.query("webapp.sql", "data_page")).format(**parts)
    with psycopg2.connect(url) as conn, conn.cursor() as cursor:
        cursor.execute(sql.SQL("explain (analyze, costs off) ") + statement, params)
        lines = [row[0].strip() for row in cursor.fetchall()]
    conn.close()
    return "; ".join(line for line in lines if "Scan on" in line or "Scan using" in line or "Execution" in line)


def latencies(url: str, repeat: int) -> dict[str, float]:
    app = create_app({"DATABASE_URL": url, "STATEMENT_TIMEOUT_MS": 60_000, "AUTH": "none",  # the queries' cost
                      "SCOPE_KEY": SCOPE_KEY})
    client = app.test_client()
    result = {}
    for request in REQUESTS:
        times = []
        for _ in range(repeat):
            started = time.perf_counter()
            response = client.get(f"/data?source=customers&page_size=10&{request}")
            times.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200, response.json
        result[request] = statistics.median(times)
    db.warehouse(app).close()
    return result


def run(url: str, rows: int, repeat: int) -> list[str]:
    """The report's lines: per request, the latency with and without the index, and the plan with it."""
    fill(url, rows)
    with_index = latencies(url, repeat)
    plans = {request: plan(url, request) for request in REQUESTS}
    with psycopg2.connect(url) as conn, conn.cursor() as cursor:
        cursor.execute(sql.SQL("drop index {}").format(sql.Identifier(INDEX)))
    conn.close()
    without = latencies(url, repeat)
    lines = [f"{rows:,} rows over {len(SOURCES)} sources; median of {repeat} requests, with / without {INDEX}"]
    for request in REQUESTS:
        lines.append(f"{with_index[request]:7.1f} / {without[request]:7.1f} ms  /data?source=customers&{request}")
        lines.append(f"          {plans[request]}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    server = Server(Path(__file__).resolve().parent / "work" / "pg")
    try:
        url = server.create_database("sluice_bench_api_fields")
        print("\n".join(run(url, args.rows, args.repeat)))
    finally:
        server.close(keep_databases=False)


if __name__ == "__main__":
    main()
