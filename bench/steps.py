"""The pipeline's stages as bench steps: each calls the real sluice function once, inside `measure`.

They run in child processes (bench.child) and take plain JSON arguments, the way tasks.py feeds the
same functions from Airflow; setup (connecting, opening files) stays outside the measured call.
"""

import datetime as dt

import psycopg
import requests

from sluice import api_source, csv_source, http_client, queries, runs, settings, warehouse

LOCK_TIMEOUT_SECONDS = 60

# The fork server imports this module once per bench run, and every step is forked from it: reading the SQL
# files here too keeps each run on one version of code and SQL even while someone edits sql/ mid-run.
for _sql_file in ("schema.sql", "pipeline.sql"):
    queries.load(_sql_file)
MAPPINGS = {"csv": settings.DEFAULT_CSV_MAPPING, "api": settings.DEFAULT_API_MAPPING}


def apply_schema(measure, *, db: str) -> None:
    """sql/schema.sql as it is on disk now, read in a fresh process like the stages that follow."""
    with psycopg.connect(db) as conn:
        measure(lambda: warehouse.apply_schema(conn))


def ingest_csv(measure, *, path: str, staged: str, run_id: str) -> dict:
    with open(staged, "wb") as out:
        counts = measure(lambda: csv_source.stage_file(
            path, MAPPINGS["csv"], out, run_id=run_id, uri=staged, where=f"csv: {path}"))
    return counts.as_xcom()


def ingest_api(measure, *, url: str, staged: str, run_id: str, max_pages: int) -> dict:
    with requests.Session() as session, open(staged, "wb") as out:
        counts = measure(lambda: api_source.fetch(
            session, url, MAPPINGS["api"], out, run_id=run_id, uri=staged, policy=http_client.RetryPolicy(),
            max_pages=max_pages, max_bytes=settings.load().max_bytes))
    return counts.as_xcom()


def store_raw(measure, *, db: str, source: str, staged: str, run_id: str) -> dict:
    with psycopg.connect(db) as conn, open(staged, "rb") as file:
        return measure(lambda: warehouse.store_raw(
            conn, source, file, run_id=run_id, lock_timeout_seconds=LOCK_TIMEOUT_SECONDS))


def normalize(measure, *, db: str, source: str, run_id: str) -> dict:
    with psycopg.connect(db) as conn:
        return measure(lambda: warehouse.normalize(
            conn, source, MAPPINGS[source], run_id=run_id, full_refresh=False,
            lock_timeout_seconds=LOCK_TIMEOUT_SECONDS))


def upsert(measure, *, db: str, source: str, run_id: str) -> dict:
    with psycopg.connect(db) as conn:
        return measure(lambda: warehouse.upsert(conn, source, run_id=run_id, lock_timeout_seconds=LOCK_TIMEOUT_SECONDS))


def checkpoint(measure, *, db: str, source: str, run_id: str, processed: int) -> dict:
    with psycopg.connect(db) as conn:
        return measure(lambda: warehouse.advance_checkpoint(
            conn, source, run_id=run_id, processed=processed, lock_timeout_seconds=LOCK_TIMEOUT_SECONDS))


def record_run(measure, *, db: str, run_id: str, started_at: str, ingested: dict, stored: dict,
               normalized: dict, upserted: dict) -> dict:
    """The etl_runs row (what /health and /stats read) and the cleanup of the run's work tables."""
    outcome = runs.RunOutcome(
        run_id=run_id, run_type="bench", started_at=dt.datetime.fromisoformat(started_at), ingested=ingested,
        stored={"sources": stored}, normalized={"sources": normalized}, upserted={"sources": upserted})
    with psycopg.connect(db) as conn:
        row_id = measure(lambda: runs.record(conn, outcome))
    return {"etl_run_id": row_id, "sources": outcome.source_counts()}
