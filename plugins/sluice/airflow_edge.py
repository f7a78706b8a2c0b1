"""The Airflow edge: turns connections, params, settings, staging paths and context into the plain values
sluice.pipeline takes, and its results into XCom and back.

Each task of dags/etl_pipeline.py is one call here. Settings are read here, once per task, and passed in.
Heavy imports stay inside the functions so the DAG file parses in milliseconds.
"""

import contextlib
import functools
import graphlib
import time
from collections.abc import Callable, Iterator

from sluice import settings

WAREHOUSE_CONN_ID = "etl_postgres"


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


def http_source(source):
    """(requests session, URL) for a source, from its HTTP connection (base URL, auth, headers)."""
    from airflow.providers.http.hooks.http import HttpHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    from sluice.errors import SourceError

    hook = HttpHook(method="GET", http_conn_id=source.conn_id)
    try:
        session = hook.get_conn()
    except AirflowNotFoundException:
        # no fallback host: a typo or an unset variable must fail, not read (and load) someone else's data
        raise SourceError(f"{source.name}: Airflow connection {source.conn_id!r} is not defined") from None
    return session, hook.url_from_endpoint(source.endpoint)


def staging_dir(run_id: str, config: settings.Settings):
    from airflow.sdk import ObjectStoragePath

    from sluice import staging

    return ObjectStoragePath(config.staging_url) / staging.run_folder_name(run_id)


def open_staged(uri: str, mode: str):
    """The pipeline's Opener for SLUICE_STAGING_URL: any scheme ObjectStoragePath knows (file, s3, ...)."""
    from airflow.sdk import ObjectStoragePath

    return ObjectStoragePath(uri).open(mode)


def sweep_staging(run_id: str, config: settings.Settings) -> None:
    """Remove this run's downloads, and other runs' staged files and downloads older than the retention."""
    from sluice import staging

    own = staging.download_dir(run_id)
    if own.exists():
        staging.remove_tree(own)
    now = time.time()
    for root in (staging_dir(run_id, config).parent, staging.download_root()):
        staging.sweep(root, older_than_seconds=config.staging_retention_hours * 3600, now=now,
                      keep=staging.run_folder_name(run_id))


def run_sources(params: dict, names) -> dict:
    """The Source values of the named sources, from the DAG params."""
    from sluice import sources

    return {name: sources.from_params(params, name) for name in names}


@reports_error
def init_schema() -> None:
    from sluice import pipeline

    with warehouse() as conn:
        pipeline.init_schema(conn, settings=settings.load())


@reports_error
def ingest(name: str, params: dict, run_id: str) -> dict:
    """Stream one source into staging; return a reference and counts (never rows) for XCom."""
    from sluice import pipeline, sources

    config = settings.load()
    source = sources.from_params(params, name)
    session, url = http_source(source)
    target = staging_dir(run_id, config) / f"{source.name}.copy"
    target.parent.mkdir(parents=True, exist_ok=True)
    with warehouse() as conn:
        return pipeline.ingest(conn, source, session, url, str(target), open_staged, run_id=run_id, settings=config,
                               full_refresh=bool(params.get("full_refresh"))).to_xcom()


@reports_error
def store_raw(ingested: list[dict | None], run_id: str) -> dict:
    from sluice import pipeline
    from sluice.results import Ingested

    config = settings.load()
    # a source whose ingest failed has no result
    staged = [Ingested.from_xcom(result) for result in ingested if result]
    with warehouse() as conn:
        return pipeline.store_raw(conn, staged, open_staged, run_id=run_id, settings=config).to_xcom()


@reports_error
def normalize(stored: dict, params: dict, run_id: str) -> dict:
    from sluice import pipeline
    from sluice.results import Stored

    config = settings.load()
    stored = Stored.from_xcom(stored)
    with warehouse() as conn:
        return pipeline.normalize(conn, stored, run_sources(params, stored.sources), run_id=run_id, settings=config,
                                  full_refresh=bool(params.get("full_refresh"))).to_xcom()


@reports_error
def upsert(normalized: dict, run_id: str) -> dict:
    from sluice import pipeline
    from sluice.results import Normalized

    config = settings.load()
    with warehouse() as conn:
        return pipeline.upsert(conn, Normalized.from_xcom(normalized), run_id=run_id, settings=config).to_xcom()


@reports_error
def checkpoint(upserted: dict, params: dict, run_id: str) -> dict:
    from sluice import pipeline
    from sluice.results import Upserted

    config = settings.load()
    with warehouse() as conn:
        return pipeline.checkpoint(conn, Upserted.from_xcom(upserted), run_id=run_id, settings=config,
                                   full_refresh=bool(params.get("full_refresh"))).to_xcom()


def record_run(context) -> dict:
    """Write the run's etl_runs row from the states and results of every other task of the DAG; fail the run
    if any of them did not succeed. The tasks are the DAG's own: a renamed or added task is covered."""
    from airflow.sdk.exceptions import AirflowFailException

    from sluice import pipeline, results, runs

    ti, dag_run = context["ti"], context["dag_run"]
    task_ids = [task_id for task_id in in_order(context["dag"]) if task_id != ti.task_id]
    states = ti.get_task_states(dag_id=ti.dag_id, run_ids=[ti.run_id], task_ids=task_ids)[ti.run_id]
    errors = []
    for task_id in task_ids:
        state = states.get(task_id)
        if state == "failed":
            errors.append(f"{task_id}: {ti.xcom_pull(task_ids=task_id, key='error') or 'failed (see its log)'}")
        elif state != "success":
            errors.append(f"{task_id}: {state}")
    outcome = runs.RunOutcome.of(
        (results.from_xcom(ti.xcom_pull(task_ids=task_id)) for task_id in task_ids),
        run_id=ti.run_id,
        run_type=str(getattr(dag_run.run_type, "value", dag_run.run_type)),
        started_at=dag_run.start_date,
        data_interval_start=dag_run.data_interval_start,
        data_interval_end=dag_run.data_interval_end,
        errors=errors,
    )
    with warehouse() as conn:
        recorded = pipeline.record_run(conn, outcome)
    config = settings.load()
    # a failed run's staged files stay for a look until the retention passes; this sweep removes older ones
    sweep_staging(ti.run_id, config)
    if outcome.errors:
        raise AirflowFailException("run recorded as failed: " + " | ".join(outcome.errors))
    staging_dir(ti.run_id, config).rmdir(recursive=True)
    return recorded.to_xcom()


def in_order(dag) -> list[str]:
    """The DAG's task ids, each after its upstream tasks (ties by name): the order errors are listed in."""
    sorter = graphlib.TopologicalSorter({task.task_id: task.upstream_task_ids for task in dag.tasks})
    sorter.prepare()
    order = []
    while sorter.is_active():
        ready = sorted(sorter.get_ready())
        order += ready
        sorter.done(*ready)
    return order
