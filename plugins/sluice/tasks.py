"""The Airflow edge: turns hooks, params and context into the plain arguments the sluice modules take.

Each function here is the body of one task of dags/etl_pipeline.py. Heavy imports stay inside the
functions so the DAG file parses in milliseconds.
"""

import contextlib
import functools
import time
from collections.abc import Callable, Iterator

from sluice import settings
from sluice.settings import SOURCES

WAREHOUSE_CONN_ID = "etl_postgres"
HTTP_CONN_IDS = {"api": "etl_api", "csv": "etl_csv"}
TASK_IDS = ("init_schema", "ingest_api", "ingest_csv", "store_raw", "normalize", "upsert", "checkpoint")


def reports_error(function: Callable) -> Callable:
    """Push the exception text, credentials masked, as XCom 'error' before re-raising (record_run says why
    the run failed with it; the API serves it)."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except Exception as exc:
            from airflow.sdk import get_current_context

            from sluice.redact import redact

            get_current_context()["ti"].xcom_push(key="error", value=redact(f"{type(exc).__name__}: {exc}")[:4000])
            raise

    return wrapper


@contextlib.contextmanager
def warehouse() -> Iterator:
    """A psycopg 3 connection to the warehouse from connection etl_postgres, closed afterwards."""
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    conn = PostgresHook(postgres_conn_id=WAREHOUSE_CONN_ID).get_conn()
    try:
        yield conn
    finally:
        conn.close()


def http_source(source: str, endpoint: str):
    """(requests session, URL) for a source, from its HTTP connection (base URL, auth, headers)."""
    from airflow.providers.http.hooks.http import HttpHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    from sluice.errors import SourceError

    conn_id = HTTP_CONN_IDS[source]
    hook = HttpHook(method="GET", http_conn_id=conn_id)
    try:
        session = hook.get_conn()
    except AirflowNotFoundException:
        # no fallback host: a typo or an unset variable must fail, not read (and load) someone else's data
        raise SourceError(f"{source}: Airflow connection {conn_id!r} is not defined") from None
    return session, hook.url_from_endpoint(endpoint)


def staging_dir(run_id: str):
    from airflow.sdk import ObjectStoragePath

    from sluice import staging

    return ObjectStoragePath(settings.load().staging_url) / staging.run_folder_name(run_id)


def sweep_staging(run_id: str, retention_hours: float) -> None:
    """Remove this run's downloads, and other runs' staged files and downloads older than the retention."""
    from sluice import staging

    own = staging.download_dir(run_id)
    if own.exists():
        staging.remove_tree(own)
    now = time.time()
    for root in (staging_dir(run_id).parent, staging.download_root()):
        staging.sweep(root, older_than_seconds=retention_hours * 3600, now=now, keep=staging.run_folder_name(run_id))


@reports_error
def init_schema() -> None:
    from sluice import warehouse as wh

    with warehouse() as conn:
        wh.apply_schema(conn)


@reports_error
def ingest(source: str, params: dict, run_id: str) -> dict:
    """Stream one source into staging; return a reference and counts (never rows) for XCom."""
    from sluice import api_source, csv_source, http_client, mapping, staging
    from sluice import warehouse as wh

    config = settings.load()
    field_map = mapping.validate(params[f"{source}_mapping"], f"{source}_mapping")
    session, url = http_source(source, params[f"{source}_endpoint"])
    policy = http_client.RetryPolicy(attempts=config.http_attempts, timeout=config.http_timeout,
                                     deadline=config.http_deadline)
    target = staging_dir(run_id) / f"{source}.copy"
    target.parent.mkdir(parents=True, exist_ok=True)
    since_param = (params.get("api_since_param") or "") if source == "api" else ""
    since = None
    with warehouse() as conn:
        # taken before reading: store_raw never lets a batch replace what a later fetch stored
        fetch_seq = wh.next_fetch_seq(conn)
        if since_param and not params.get("full_refresh"):
            since = wh.read_checkpoint(conn, "api")
    with target.open("wb") as out:
        if source == "api":
            counts = api_source.fetch(
                session, url, field_map, out, run_id=run_id, uri=str(target), policy=policy,
                max_pages=config.max_pages, max_bytes=config.max_bytes,
                params={since_param: since} if since is not None else None, allowed_hosts=config.api_allowed_hosts,
            )
        else:
            workdir = staging.download_dir(run_id)
            workdir.mkdir(parents=True, exist_ok=True)
            counts = csv_source.fetch(
                session, url, field_map, out, run_id=run_id, uri=str(target), policy=policy,
                max_bytes=config.max_bytes, workdir=str(workdir), allowed_hosts=config.api_allowed_hosts,
            )
    return {**counts.as_xcom(), "fetch_seq": fetch_seq}


@reports_error
def store_raw(ingested: list[dict | None], run_id: str) -> dict:
    from airflow.sdk import ObjectStoragePath

    from sluice import warehouse as wh

    staged = [result for result in ingested if result]
    if not staged:
        raise RuntimeError("no source was ingested; nothing to store (see the ingest tasks' errors)")
    config = settings.load()
    results = {}
    with warehouse() as conn:
        for result in staged:
            with ObjectStoragePath(result["uri"]).open("rb") as file:
                # a run ingested before fetches were ordered has no fetch_seq: its batch counts as fetched now
                results[result["source"]] = wh.store_raw(
                    conn, result["source"], file, run_id=run_id, lock_timeout_seconds=config.lock_timeout_seconds,
                    fetch_seq=result.get("fetch_seq"))
    return {"sources": results}


@reports_error
def normalize(stored: dict, params: dict, run_id: str) -> dict:
    from sluice import mapping
    from sluice import warehouse as wh

    config = settings.load()
    results = {}
    with warehouse() as conn:
        for source in stored["sources"]:
            field_map = mapping.validate(params[f"{source}_mapping"], f"{source}_mapping")
            results[source] = wh.normalize(conn, source, field_map, run_id=run_id,
                                           full_refresh=bool(params.get("full_refresh")),
                                           lock_timeout_seconds=config.lock_timeout_seconds,
                                           expected_staged=stored["sources"][source]["stored"])
    return {"sources": results}


@reports_error
def upsert(normalized: dict, run_id: str) -> dict:
    from sluice import warehouse as wh

    config = settings.load()
    results = {}
    with warehouse() as conn:
        for source, counts in normalized["sources"].items():
            results[source] = wh.upsert(conn, source, run_id=run_id, lock_timeout_seconds=config.lock_timeout_seconds,
                                        expected_staged=counts["valid"])
            results[source]["processed"] = counts["staged"]
    return {"sources": results}


@reports_error
def checkpoint(upserted: dict, params: dict, run_id: str) -> dict:
    from sluice import warehouse as wh

    config = settings.load()
    with warehouse() as conn:
        return {"sources": {
            source: wh.advance_checkpoint(conn, source, run_id=run_id, processed=counts["processed"],
                                          lock_timeout_seconds=config.lock_timeout_seconds,
                                          full_refresh=bool(params.get("full_refresh")))
            for source, counts in upserted["sources"].items()
        }}


def record_run(context) -> dict:
    """Write the run's etl_runs row from its tasks' states and results; fail the run if any task failed."""
    from airflow.sdk.exceptions import AirflowFailException

    from sluice import runs

    ti, dag_run = context["ti"], context["dag_run"]
    states = ti.get_task_states(dag_id=ti.dag_id, run_ids=[ti.run_id], task_ids=list(TASK_IDS))[ti.run_id]
    pull = ti.xcom_pull
    errors = []
    for task_id in TASK_IDS:
        state = states.get(task_id)
        if state == "failed":
            errors.append(f"{task_id}: {pull(task_ids=task_id, key='error') or 'failed (see its log)'}")
        elif state != "success":
            errors.append(f"{task_id}: {state}")
    outcome = runs.RunOutcome(
        run_id=ti.run_id,
        run_type=str(getattr(dag_run.run_type, "value", dag_run.run_type)),
        started_at=dag_run.start_date,
        data_interval_start=dag_run.data_interval_start,
        data_interval_end=dag_run.data_interval_end,
        ingested={source: pull(task_ids=f"ingest_{source}") for source in SOURCES},
        stored=pull(task_ids="store_raw"),
        normalized=pull(task_ids="normalize"),
        upserted=pull(task_ids="upsert"),
        errors=errors,
    )
    with warehouse() as conn:
        row_id = runs.record(conn, outcome)
    # a failed run's staged files stay for a look until the retention passes; this sweep removes older ones
    sweep_staging(ti.run_id, settings.load().staging_retention_hours)
    if outcome.errors:
        raise AirflowFailException("run recorded as failed: " + " | ".join(outcome.errors))
    staging_dir(ti.run_id).rmdir(recursive=True)
    return {"etl_run_id": row_id, "status": outcome.status, "sources": outcome.source_counts()}
