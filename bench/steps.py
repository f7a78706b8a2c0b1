"""The pipeline's steps as bench steps: each calls one sluice.pipeline function once, inside `measure`.

They run in child processes (bench.child) and take plain JSON arguments — the previous step's result in its
XCom form, as the Airflow edge passes it — and return their result in that form. Setup (connecting, the
settings, an HTTP session) stays outside the measured call.
"""

import dataclasses
import datetime as dt

import psycopg
import requests

from sluice import pipeline, queries, results, runs, settings, sources

LOCK_TIMEOUT_SECONDS = 60

# The fork server imports this module once per bench run, and every step is forked from it: reading the SQL
# files here too keeps each run on one version of code and SQL even while someone edits sql/ mid-run.
for _sql_file in ("schema.sql", "pipeline.sql"):
    queries.load(_sql_file)


def _settings(**changes) -> settings.Settings:
    # the bench is a caller like the Airflow edge: it reads the settings and passes them in
    return dataclasses.replace(settings.load(), lock_timeout_seconds=LOCK_TIMEOUT_SECONDS, **changes)


def _sources(names) -> dict[str, sources.Source]:
    """The seed sources with their default mappings (the endpoint is the URL each ingest is given)."""
    return {name: sources.seed(name, endpoint="") for name in names}


def apply_schema(measure, *, db: str) -> None:
    """The schema as it is on disk now, applied in a fresh process like the stages that follow."""
    with psycopg.connect(db) as conn:
        measure(lambda: pipeline.init_schema(conn, settings=_settings()))


def ingest(measure, *, db: str, source: str, url: str, staged: str, run_id: str, max_pages: int) -> dict:
    config = _settings(max_pages=max_pages)
    with psycopg.connect(db) as conn, requests.Session() as session:
        result = measure(lambda: pipeline.ingest(conn, _sources([source])[source], session, url, staged,
                                                 run_id=run_id, settings=config))
    return result.to_xcom()


def store_raw(measure, *, db: str, ingested: dict, run_id: str) -> dict:
    config = _settings()
    with psycopg.connect(db) as conn:
        return measure(lambda: pipeline.store_raw(conn, results.Ingested.from_xcom(ingested), run_id=run_id,
                                                  settings=config)).to_xcom()


def normalize(measure, *, db: str, stored: dict, run_id: str) -> dict:
    config, stored = _settings(), results.Stored.from_xcom(stored)
    with psycopg.connect(db) as conn:
        return measure(lambda: pipeline.normalize(conn, _sources([stored.source])[stored.source], stored,
                                                  run_id=run_id, settings=config)).to_xcom()


def upsert(measure, *, db: str, stored: dict, normalized: dict, run_id: str) -> dict:
    config = _settings()
    stored, normalized = results.Stored.from_xcom(stored), results.Normalized.from_xcom(normalized)
    with psycopg.connect(db) as conn:
        return measure(lambda: pipeline.upsert(conn, _sources([stored.source])[stored.source], stored, normalized,
                                               run_id=run_id, settings=config)).to_xcom()


def checkpoint(measure, *, db: str, stored: dict, upserted: dict, run_id: str) -> dict:
    config = _settings()
    with psycopg.connect(db) as conn:
        return measure(lambda: pipeline.checkpoint(conn, results.Stored.from_xcom(stored),
                                                   results.Upserted.from_xcom(upserted), run_id=run_id,
                                                   settings=config)).to_xcom()


def record_run(measure, *, db: str, run_id: str, started_at: str, step_results: list[dict]) -> dict:
    """The etl_runs row (what /health and /stats read) and the cleanup of the run's work tables."""
    outcome = runs.RunOutcome.of([results.from_xcom(value) for value in step_results], run_id=run_id,
                                 run_type="bench", started_at=dt.datetime.fromisoformat(started_at))
    with psycopg.connect(db) as conn:
        return measure(lambda: pipeline.record_run(conn, outcome, settings=_settings())).to_xcom()
