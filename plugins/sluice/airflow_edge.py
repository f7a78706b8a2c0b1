"""The Airflow edge: turns connections, params, settings, staging paths and context into the plain values
sluice.pipeline takes, and its results into XCom and back.

Each task of dags/etl_pipeline.py is one call here. Settings are read here, once per task, and passed in.
Heavy imports stay inside the functions so the DAG file parses in milliseconds.
"""

import contextlib
import functools
import graphlib
import logging
import time
from collections.abc import Callable, Iterator

from sluice import settings

WAREHOUSE_CONN_ID = "etl_postgres"
# the context entry an ingest instance sets to its source's name: the DAG's map_index_template shows it
MAP_INDEX_KEY = "sluice_source"

log = logging.getLogger(__name__)


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


# Staged files stream through a buffer of this size: an object store gets a multipart upload of parts this
# big (S3's minimum part is 5 MiB, its maximum count 10,000: files up to 160 GB) and ranged reads of it;
# s3fs's default of 50 MiB would hold that much of every staged file in a task's memory.
STAGING_BLOCK_BYTES = 16 * 1024 * 1024


def open_staged(uri: str, mode: str):
    """The pipeline's Opener for SLUICE_STAGING_URL: any scheme ObjectStoragePath knows (file, s3, ...)."""
    from airflow.sdk import ObjectStoragePath

    return ObjectStoragePath(uri).open(mode, block_size=STAGING_BLOCK_BYTES)


def worker_name() -> str:
    """This worker's name as Airflow records it on task instances (core.hostname_callable)."""
    from airflow.utils.net import get_hostname

    return get_hostname()


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


@reports_error
def init_schema(params: dict) -> dict:
    """Check the run's catalog of sources, then create or upgrade the warehouse. Returns the catalog per kind
    (sources.by_kind: complete entries, no rows), which the ingest tasks map over and the later steps read."""
    from sluice import pipeline, sources

    # an invalid catalog fails here, before any source is read
    found = sources.catalog(params)
    log.info("catalog: %d sources: %s", len(found), ", ".join(f"{s.name} ({s.kind})" for s in found))
    with warehouse() as conn:
        pipeline.init_schema(conn, settings=settings.load())
    return sources.by_kind(found)


def ingest_instance(entry: dict, params: dict, run_id: str) -> dict:
    """ingest as one instance of a mapped task: named by its source in the UI (the DAG's map_index_template)
    and in record_run's errors (XCom 'source')."""
    from airflow.sdk import get_current_context

    context = get_current_context()
    context[MAP_INDEX_KEY] = entry["name"]
    context["ti"].xcom_push(key="source", value=entry["name"])
    return ingest(entry, params, run_id)


@reports_error
def ingest(entry: dict, params: dict, run_id: str) -> dict:
    """Stream one source (a catalog entry) into staging; return a reference and counts (never rows) for XCom."""
    from sluice import pipeline, sources

    config = settings.load()
    source = sources.from_entry(entry)
    session, url = http_source(source)
    target = staging_dir(run_id, config) / f"{source.name}.copy"
    target.parent.mkdir(parents=True, exist_ok=True)
    with warehouse() as conn:
        return pipeline.ingest(conn, source, session, url, str(target), open_staged, run_id=run_id, settings=config,
                               full_refresh=bool(params.get("full_refresh")), worker=worker_name()).to_xcom()


@reports_error
def store_raw(ingested: list, run_id: str) -> dict:
    """Store the sources that were ingested (ingested: the results of each ingest task, one per source)."""
    from sluice import pipeline
    from sluice.results import Ingested

    config = settings.load()
    # a source whose ingest failed has no result; a kind without sources has none at all
    staged = [Ingested.from_xcom(result) for results in ingested for result in (results or []) if result]
    with warehouse() as conn:
        return pipeline.store_raw(conn, staged, open_staged, run_id=run_id, settings=config,
                                  worker=worker_name()).to_xcom()


@reports_error
def normalize(stored: dict, catalog: dict, params: dict, run_id: str) -> dict:
    from sluice import pipeline, sources
    from sluice.results import Stored

    config = settings.load()
    with warehouse() as conn:
        return pipeline.normalize(conn, Stored.from_xcom(stored), sources.by_name(catalog), run_id=run_id,
                                  settings=config,
                                  full_refresh=bool(params.get("full_refresh"))).to_xcom()


@reports_error
def upsert(normalized: dict, catalog: dict, params: dict, run_id: str) -> dict:
    """Upsert every normalized source, then emit an asset event (through the task's outlet alias) for each
    source whose rows changed."""
    from sluice import assets, pipeline, sources
    from sluice.results import Normalized

    config = settings.load()
    with warehouse() as conn:
        upserted = pipeline.upsert(conn, Normalized.from_xcom(normalized), sources.by_name(catalog), run_id=run_id,
                                   settings=config, full_refresh=bool(params.get("full_refresh")))
        # where the connection really went (libpq's defaults applied), never its login or password
        location = assets.Warehouse(host=conn.info.host, port=conn.info.port, database=conn.info.dbname)
    emit(assets.events(upserted, location, run_id=run_id))
    return upserted.to_xcom()


def emit(events: list) -> None:
    """Add each event (sluice.assets.Event) to the running task's outlet alias; Airflow records them, and
    triggers the DAGs scheduled on their assets, when the task succeeds."""
    from airflow.sdk import Asset, AssetAlias, get_current_context

    from sluice import assets

    outlet = get_current_context()["outlet_events"][AssetAlias(assets.ALIAS)]
    for event in events:
        log.info("asset event %s (%s): %s", event.name, event.uri, assets.described(event))
        outlet.add(Asset(name=event.name, uri=event.uri), extra=event.extra)


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

    ti, dag_run, dag = context["ti"], context["dag_run"], context["dag"]
    task_ids = [task_id for task_id in in_order(dag) if task_id != ti.task_id]
    states = ti.get_task_states(dag_id=ti.dag_id, run_ids=[ti.run_id], task_ids=task_ids)[ti.run_id]
    errors, failed_sources = [], {}
    for task_id in task_ids:
        for map_index, state in instances(task_id, dag.task_dict[task_id].is_mapped, states):
            if state == "success":
                continue
            why = instance_error(ti, task_id, map_index, state)
            source = instance_source(ti, task_id, map_index)
            if source is None:
                errors.append(f"{task_id}{'' if map_index is None else f'[{map_index}]'}: {why}")
            else:  # a mapped ingest instance: its source failed, the others may have loaded
                failed_sources[source] = runs.SourceFailure(task_id, why, catalog_kinds(ti).get(source))
    outcome = runs.RunOutcome.of(
        # every instance's result: a mapped task has one per source
        (results.from_xcom(value) for value in ti.xcom_pull(task_ids=task_ids) if value is not None),
        run_id=ti.run_id,
        run_type=str(getattr(dag_run.run_type, "value", dag_run.run_type)),
        started_at=dag_run.start_date,
        data_interval_start=dag_run.data_interval_start,
        data_interval_end=dag_run.data_interval_end,
        errors=errors,
        failed_sources=failed_sources,
    )
    config = settings.load()
    with warehouse() as conn:
        recorded = pipeline.record_run(conn, outcome, settings=config)
    # a failed run's staged files stay for a look until the retention passes; this sweep removes older ones
    sweep_staging(ti.run_id, config)
    if outcome.status == "failed":
        raise AirflowFailException("run recorded as failed: " + " | ".join(outcome.error_lines()))
    staging_dir(ti.run_id, config).rmdir(recursive=True)
    return recorded.to_xcom()


def instances(task_id: str, mapped: bool, states: dict) -> list[tuple[int | None, str | None]]:
    """(map index, state) of each instance of a task in the run's states, which name a mapped task's instances
    <task_id>_<map index>; (None, state) for a task that is not mapped. A mapped task over nothing (a kind
    without sources: Airflow skips it) has no instances."""
    if not mapped:
        return [(None, states.get(task_id))]
    if states.get(task_id) == "skipped":
        return []
    found = []
    for key, state in states.items():
        prefix, _, index = key.rpartition("_")
        if prefix == task_id and index.isdigit():
            found.append((int(index), state))
    # not expanded at all (init_schema failed): the task's one state says why
    return sorted(found) or [(None, states.get(task_id))]


def instance_error(ti, task_id: str, map_index: int | None, state: str | None) -> str:
    """Why one task instance did not succeed: its error, or its state when it did not run to a failure."""
    if state != "failed":
        return str(state)
    instance = {} if map_index is None else {"map_indexes": map_index}
    return ti.xcom_pull(task_ids=task_id, key="error", **instance) or "failed (see its log)"


def instance_source(ti, task_id: str, map_index: int | None) -> str | None:
    """The source a mapped instance handled (an ingest instance says, XCom 'source'); None for any other."""
    if map_index is None:
        return None
    return ti.xcom_pull(task_ids=task_id, key="source", map_indexes=map_index)


def catalog_kinds(ti) -> dict[str, str]:
    """Each source's kind, from the catalog init_schema returned (sources.by_kind); empty when it failed."""
    catalog = ti.xcom_pull(task_ids="init_schema") or {}
    return {entry["name"]: kind for kind, entries in catalog.items() for entry in entries}


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
