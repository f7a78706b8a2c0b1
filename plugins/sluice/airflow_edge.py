"""The Airflow edge: turns connections, params, settings, staging paths and context into the plain values
sluice.pipeline takes, and its results into XCom and back.

Each task of dags/etl_pipeline.py is one call here. Settings are read here, once per task, and passed in.
Heavy imports stay inside the functions so the DAG file parses in milliseconds.
"""

import contextlib
import functools
import logging
import time
from collections.abc import Callable, Iterator

import requests

from sluice import settings

WAREHOUSE_CONN_ID = "etl_postgres"
# the webhook that alerts reach a person through (an HTTP connection); not defined: no alerts
ALERTS_CONN_ID = "etl_alerts"
# the context entry an ingest instance sets to its source's name: the DAG's map_index_template shows it
MAP_INDEX_KEY = "sluice_source"

log = logging.getLogger(__name__)


# the steps of each source's lane, in order: one mapped task group per catalog entry runs them
LANE_STEPS = ("ingest", "store_raw", "normalize", "upsert", "checkpoint")
# the task that publishes a held batch when the run's param release names one
RELEASE_TASK = "release"
# task instance states after which nothing more happens to it
FINISHED = frozenset({"success", "failed", "skipped", "upstream_failed", "removed"})


def reports_failure(function: Callable, *, lane: bool = False) -> Callable:
    """Push the task's failure (sluice.failures.Failure: its message masked by the known values of the task's
    connections, and by patterns) as XCom 'failure' before re-raising: record_run records it and the read API
    serves its summary; the exception goes on with that masked text (sluice.errors.TaskFailed), because the task
    log renders an exception's text unmasked. An error that a retry cannot heal (sluice.errors.ConfigError: an
    invalid catalog, a missing connection, a refused delete...) fails the task at once instead of waiting out its
    retries. lane: the function is a lane step, its first argument the source's catalog entry (the instance is
    named by the source, whose connection's values are masked too)."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        from airflow.sdk import get_current_context

        from sluice.errors import ConfigError, TaskFailed
        from sluice.failures import Failure

        context = get_current_context()
        entry = args[0] if lane else None
        if entry:
            context[MAP_INDEX_KEY] = entry["name"]
            # what this try reports to OpenLineage (report_lineage), never what an earlier try of the instance did
            context["task"].sluice_lineage = None
        # registered with the task log's masker before anything is logged, and kept for the failure's message
        secrets = known_secrets([WAREHOUSE_CONN_ID, *([entry["conn_id"]] if entry else [])])
        try:
            return function(*args, **kwargs)
        except Exception as exc:
            from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException

            if isinstance(exc, AirflowSkipException):  # a source not due: skipped, not failed
                raise

            failure = Failure.of(exc, step=context["ti"].task_id, source=entry and entry["name"], secrets=secrets)
            context["ti"].xcom_push(key="failure", value=failure.to_json())
            if isinstance(exc, AirflowException):  # Airflow's own control flow (its messages are Airflow's)
                raise
            # the task log renders the exception and its chain unmasked: only the masked text, same traceback
            masked = AirflowFailException if isinstance(exc, ConfigError) else TaskFailed
            raise masked(failure.message).with_traceback(exc.__traceback__) from None

    return wrapper


# a step of a source's lane (one instance of a mapped task, its first argument the source's catalog entry):
# shown by its source's name in the UI (the DAG's map_index_template), its failure reported naming the source
lane_step = functools.partial(reports_failure, lane=True)


def known_secrets(conn_ids: list[str]):
    """The secret values of the given Airflow connections (password, login:password and its Base64, every value
    of the extra: headers...), registered with Airflow's masker of task logs; a connection that is not defined
    has none (its absence is the task's error)."""
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException
    from airflow.sdk.log import mask_secret

    from sluice.redact import Secrets

    found = Secrets()
    for conn_id in dict.fromkeys(conn_ids):
        try:
            connection = BaseHook.get_connection(conn_id)
        except AirflowNotFoundException:
            continue
        secrets = Secrets.of_connection(connection.login, connection.password, connection.extra)
        for value in secrets.values:
            mask_secret(value)
        found = found.union(secrets)
    return found


@contextlib.contextmanager
def warehouse() -> Iterator:
    """A psycopg 3 connection to the warehouse from connection etl_postgres, closed afterwards."""
    from airflow.providers.postgres.hooks.postgres import PostgresHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    from sluice.errors import MissingConnection

    try:
        conn = PostgresHook(postgres_conn_id=WAREHOUSE_CONN_ID).get_conn()
    except AirflowNotFoundException:
        raise MissingConnection.of(WAREHOUSE_CONN_ID, "the warehouse cannot be reached, so no source is loaded",
                                   "postgresql://user:password@host:5432/database") from None
    try:
        yield conn
    finally:
        conn.close()


def http_source(source):
    """(requests session, URL) for a source, from its HTTP connection (base URL, auth, headers)."""
    from airflow.providers.http.hooks.http import HttpHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    from sluice.errors import MissingConnection

    hook = HttpHook(method="GET", http_conn_id=source.conn_id)
    try:
        session = hook.get_conn()
    except AirflowNotFoundException:
        # no fallback host: a typo or an unset variable must fail, not read (and load) someone else's data
        # an HTTP connection's URI carries the scheme as its path: http://host/https reads https://host
        raise MissingConnection.of(source.conn_id, f"source {source.name} cannot be read",
                                   "http://files.example.com/https", "for https://files.example.com") from None
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


@reports_failure
def init_schema(params: dict) -> list[dict]:
    """Check the run's catalog of sources, then create or upgrade the warehouse. Returns the catalog's entries
    (complete, no rows), which the lanes map over, one per source; a source whose held batch the run releases
    (param release) is not fetched."""
    from sluice import delete_guard, pipeline, release, replay, sources

    # an invalid catalog fails here, before any source is read; so does an accept_deletes or a replay naming no
    # source of it, or a malformed release
    found = sources.catalog(params)
    delete_guard.accepted(params.get(delete_guard.PARAM), [source.name for source in found])
    replay.selected(params, [source.name for source in found])
    released = release.asked(params.get(release.PARAM))
    if released is not None:
        log.info("%s: not fetched, this run releases its held batch of run %s", *released)
        found = [source for source in found if source.name != released[0]]
    log.info("catalog: %d sources: %s", len(found), ", ".join(f"{s.name} ({s.kind})" for s in found))
    with warehouse() as conn:
        pipeline.init_schema(conn, settings=settings.load())
    return [sources.to_entry(source) for source in found]


# the XCom in which a skipped ingest says why: record_run writes it to etl_runs.skipped
SKIPPED_KEY = "skipped"


@lane_step
def ingest(entry: dict, params: dict, run_id: str, *, run_type=None, interval: tuple | None = None) -> dict:
    """Stream one source (a catalog entry, any kind) into staging; return a reference and counts (never rows).
    A source this run does not read (pipeline.skip_reason: not due) is skipped, and with it the rest of its lane;
    interval: the run's data interval (start, end), None when it has none (a manual run without a logical date)."""
    from airflow.sdk import get_current_context
    from airflow.sdk.exceptions import AirflowSkipException

    from sluice import lineage, pipeline, replay, sources, staging

    config = settings.load()
    source = sources.from_entry(entry)
    if replay.replays(params, source.name):  # rebuilt from raw: no connection, no request, whether due or not
        log.info("%s: replayed from raw: nothing is fetched", source.name)
        return replay.ingested(source).to_xcom()
    full_refresh = bool(params.get("full_refresh"))
    interval = interval if interval and None not in interval else None
    with warehouse() as conn:
        reason = pipeline.skip_reason(conn, source, run_type=str(getattr(run_type, "value", run_type)),
                                      interval=interval, full_refresh=full_refresh)
        if reason is not None:
            pipeline.record_skip(conn, source, run_id=run_id, reason=reason)
            get_current_context()["ti"].xcom_push(key=SKIPPED_KEY, value=reason)
            log.info("%s: skipped, %s", source.name, reason)
            raise AirflowSkipException(f"{source.name}: {reason}")
        session, url = http_source(source)
        report_lineage(lambda: lineage.StepLineage(inputs=(lineage.of_url(url),)))
        target = staging.make_run_folder(staging_dir(run_id, config)) / f"{source.name}.copy"
        return pipeline.ingest(conn, source, session, url, str(target), open_staged, run_id=run_id, settings=config,
                               full_refresh=full_refresh, worker=worker_name(), interval=interval).to_xcom()


@lane_step
def store_raw(entry: dict, ingested: dict, run_id: str) -> dict:
    from sluice import lineage, pipeline, sources, warehouse as tables
    from sluice.results import Ingested

    source = sources.from_entry(entry)
    batch = Ingested.from_xcom(ingested)
    raw = tables.raw_table(source.name, batch.kind)

    def read_and_written(rows=None):
        return lineage.StepLineage(inputs=(lineage.of_url(http_source(source)[1]),),
                                   outputs=(lineage.warehouse_table(conn, raw, rows=rows),))

    with warehouse() as conn:
        if batch.replay:  # nothing is read from the source: the raw table is the input, already stored
            return pipeline.store_replay(conn, source, run_id=run_id, settings=settings.load()).to_xcom()
        report_lineage(read_and_written)
        stored = pipeline.store_raw(conn, batch, open_staged, run_id=run_id, settings=settings.load(),
                                    worker=worker_name(), source=source,
                                    cursor_field=source.cursor and source.cursor.field)
        report_lineage(lambda: read_and_written(stored.written))
    return stored.to_xcom()


@lane_step
def normalize(entry: dict, stored: dict, params: dict, run_id: str) -> dict:
    from sluice import lineage, pipeline, replay, sources, warehouse as tables
    from sluice.results import Stored

    source = sources.from_entry(entry)
    with warehouse() as conn:
        report_lineage(lambda: lineage.StepLineage(
            inputs=(lineage.warehouse_table(conn, tables.raw_table(source.name, source.kind)),)))
        return pipeline.normalize(conn, source, Stored.from_xcom(stored), run_id=run_id,
                                  settings=settings.load(), full_refresh=bool(params.get("full_refresh")),
                                  replay=replay.replays(params, entry["name"])).to_xcom()


@lane_step
def upsert(entry: dict, stored: dict, normalized: dict, params: dict, run_id: str) -> dict:
    """Upsert the source, then emit its asset event (through the task's outlet alias) when its rows changed."""
    from sluice import assets, delete_guard, lineage, pipeline, replay, sources, warehouse as tables
    from sluice.results import Normalized, Stored

    # checked against the catalog by init_schema
    accepted = delete_guard.accepted(params.get(delete_guard.PARAM)).get(entry["name"])
    source = sources.from_entry(entry)

    def read_and_written(rows=None):
        return lineage.StepLineage(
            inputs=(lineage.warehouse_table(conn, tables.raw_table(source.name, source.kind)),),
            outputs=(lineage.warehouse_table(conn, lineage.NORMALIZED_TABLE, rows=rows, declared=source.fields),))

    with warehouse() as conn:
        report_lineage(read_and_written)
        upserted = pipeline.upsert(conn, source, Stored.from_xcom(stored),
                                   Normalized.from_xcom(normalized), run_id=run_id, settings=settings.load(),
                                   full_refresh=bool(params.get("full_refresh")), accept_deletes=accepted,
                                   replay=replay.replays(params, entry["name"]))
        report_lineage(lambda: read_and_written(upserted.written))
        # where the connection really went (libpq's defaults applied), never its login or password
        location = assets.Warehouse(host=conn.info.host, port=conn.info.port, database=conn.info.dbname)
    emit(assets.events(upserted, location, run_id=run_id))
    return upserted.to_xcom()


def lineage_enabled() -> bool:
    """Whether OpenLineage sends events: the provider is off until a transport is configured
    (AIRFLOW__OPENLINEAGE__TRANSPORT, OPENLINEAGE_URL, a config file...)."""
    from airflow.providers.openlineage import conf

    return not conf.is_disabled()


def report_lineage(step: Callable) -> None:
    """Hand the running lane step's datasets (step(): a sluice.lineage.StepLineage) to its operator
    (sluice.lineage_task), which the OpenLineage provider asks for them when the task finishes or fails. With
    OpenLineage off, step is not called: no connection looked up, no query run."""
    from airflow.sdk import get_current_context

    if not lineage_enabled():
        return
    try:
        found = step()
    except Exception as exc:  # lineage is an observer: it never fails the step it describes; the log says so
        # the class only: the text may quote a URL whose credentials are no connection's known secret
        log.warning("OpenLineage: this step's datasets are not reported (%s)", type(exc).__name__)
        return
    get_current_context()["task"].sluice_lineage = found


@reports_failure
def release(params: dict, *, triggered_by: str | None) -> dict | None:
    """Publish exactly the held batch the run's release param names (sluice.pipeline.release: judged again, its
    checkpoint advanced), recorded as released by the user who triggered the run (else "airflow"), and emit its
    source's asset event as a load does. A run that releases nothing succeeds doing nothing (not skipped: a good
    run's tasks all succeed, which is what users and their checks look for)."""
    from sluice import assets, pipeline
    from sluice import release as releases

    asked = releases.asked(params.get(releases.PARAM))
    if asked is None:
        log.info("this run releases no held batch (param release): nothing to do")
        return None
    source, held_run = asked
    with warehouse() as conn:
        upserted = pipeline.release(conn, source, held_run, released_by=triggered_by or "airflow",
                                    settings=settings.load())
        location = assets.Warehouse(host=conn.info.host, port=conn.info.port, database=conn.info.dbname)
    emit(assets.events(upserted, location, run_id=held_run))
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


@lane_step
def checkpoint(entry: dict, stored: dict, upserted: dict, params: dict, run_id: str, read_until=None) -> dict:
    """read_until: the run's data interval end (None without one), from which the source's `every` counts; a
    replay read nothing, so its source's next read stays due."""
    from sluice import pipeline, replay
    from sluice.results import Stored, Upserted

    if replay.replays(params, entry["name"]):
        read_until = None

    with warehouse() as conn:
        return pipeline.checkpoint(conn, Stored.from_xcom(stored), Upserted.from_xcom(upserted), run_id=run_id,
                                   settings=settings.load(), full_refresh=bool(params.get("full_refresh")),
                                   read_until=read_until).to_xcom()


def record_run(context) -> dict:
    """Write the run's etl_runs row from the final states and results of every other task of the run: once all
    of them are finished (it fails, to be retried, if one is not); fail the run if any of them did not succeed.
    A source's lane that did not finish names its first step that did not succeed."""
    from airflow.sdk.exceptions import AirflowFailException

    from sluice import alerts, pipeline, results, runs
    from sluice.alerts_notifier import AlertsNotifier

    ti, dag_run = context["ti"], context["dag_run"]
    states = ti.get_task_states(dag_id=ti.dag_id, run_ids=[ti.run_id],
                                task_ids=["init_schema", RELEASE_TASK, *LANE_STEPS])[ti.run_id]
    unfinished = {key: state for key, state in states.items() if state not in FINISHED}
    if unfinished:
        raise RuntimeError("record_run ran before every task of the run finished ("
                           + ", ".join(f"{key}: {state}" for key, state in sorted(unfinished.items()))
                           + "); it records only final states, and is retried")
    failures = []
    if states.get("init_schema") != "success":
        failures.append(instance_failure(ti, "init_schema", None, states.get("init_schema"), None))
    if states.get(RELEASE_TASK) == "failed":  # its message names the source and the batch
        failures.append(instance_failure(ti, RELEASE_TASK, None, "failed", None))
    catalog = ti.xcom_pull(task_ids="init_schema") or []
    # a lane whose ingest skipped (not due) skipped after it: neither failed nor loaded, and without results
    skipped = {entry["name"]: ti.xcom_pull(task_ids="ingest", key=SKIPPED_KEY, map_indexes=index) or "skipped"
               for index, entry in enumerate(catalog) if states.get(f"ingest_{index}") == "skipped"}
    indexes = [index for index, entry in enumerate(catalog) if entry["name"] not in skipped]
    found = []
    for step in LANE_STEPS:
        values = ti.xcom_pull(task_ids=step, map_indexes=indexes) if indexes else []
        found += [results.from_xcom(value) for value in values if value is not None]
    for index in indexes:
        entry = catalog[index]
        for step in LANE_STEPS:
            state = states.get(f"{step}_{index}")
            if state != "success":
                failures.append(instance_failure(ti, step, index, state, entry["name"]))
                break
    outcome = runs.RunOutcome.of(
        found,
        run_id=ti.run_id,
        run_type=str(getattr(dag_run.run_type, "value", dag_run.run_type)),
        started_at=dag_run.start_date,
        data_interval_start=dag_run.data_interval_start,
        data_interval_end=dag_run.data_interval_end,
        failures=failures,
        kinds={entry["name"]: entry["kind"] for entry in catalog},
        accept_deletes=recorded_acceptance(context["params"]),
        skipped=skipped,
    )
    config = settings.load()
    with warehouse() as conn:
        recorded = pipeline.record_run(conn, outcome, settings=config)
        stale = pipeline.stale_sources(conn, [entry["name"] for entry in catalog], limit_hours=config.max_staleness_hours)
        warnings = pipeline.quality_warnings(conn, ti.run_id)
    remove_staged(ti.run_id, outcome, config)
    AlertsNotifier(alerts.of_run(failures, stale, staleness_hours=config.max_staleness_hours)
                   + alerts.of_quality(warnings), timeout=config.alert_timeout)(context)
    if outcome.status == "failed":
        raise AirflowFailException("run recorded as failed: " + " | ".join(outcome.error_lines()))
    return recorded.to_xcom()


def notify(found: list, *, dag_id: str, run_id: str, timeout: float) -> None:
    """Send the run's alerts (sluice.alerts) to the webhook of connection etl_alerts, if it is defined. A webhook
    that is down, slow or answers an error never changes the run's outcome: the task log says it was not sent,
    naming the error's class or status only (its text may quote the webhook's URL, whose path is often its key)."""
    from airflow.configuration import conf
    from airflow.providers.http.hooks.http import HttpHook
    from airflow.sdk.exceptions import AirflowNotFoundException
    from airflow.sdk.log import mask_secret

    from sluice import alerts

    if not found:
        return
    hook = HttpHook(method="POST", http_conn_id=ALERTS_CONN_ID)
    try:
        session = hook.get_conn()
    except AirflowNotFoundException:
        log.info("%d alerts, not sent: connection %s is not defined", len(found), ALERTS_CONN_ID)
        return
    known_secrets([ALERTS_CONN_ID])  # masked in the task log from here on
    url = alerts.run_url(conf.get("api", "base_url", fallback=None) or "http://localhost:8080", dag_id, run_id)
    body = alerts.message(found, dag_id=dag_id, run_id=run_id, url=url)
    target = hook.url_from_endpoint(None)
    mask_secret(target)  # a webhook's path is often its key: masked wherever the task log would show it
    try:
        alerts.send(session, target, body, timeout=timeout)
    except requests.RequestException as exc:
        status = getattr(exc.response, "status_code", None)
        log.warning("%d alerts NOT sent to connection %s (%s); the run's outcome is unchanged", len(found),
                    ALERTS_CONN_ID, f"answered {status}" if status else type(exc).__name__)
        return
    log.info("%d alerts sent to connection %s: %s", len(found), ALERTS_CONN_ID,
             "; ".join(alert.line() for alert in found))


def recorded_acceptance(params) -> dict | None:
    """The run's accept_deletes as its record keeps it; None when init_schema refused it (its failure says why)."""
    from sluice import delete_guard
    from sluice.errors import InvalidSource

    try:
        return delete_guard.accepted(params.get(delete_guard.PARAM))
    except InvalidSource:
        return None


def remove_staged(run_id: str, outcome, config: settings.Settings) -> None:
    """Remove the staged files of the sources that loaded (the whole run folder when all did) and this run's
    downloads; a failed source's file stays for a clear of its store_raw to redo it, or for a look, until the
    sweep (of other runs' folders older than the retention) removes it."""
    from sluice import staging

    folder = staging_dir(run_id, config)
    # gone when a record_run of this run ran before (cleared and run again)
    if folder.exists() and outcome.status == "success":
        folder.rmdir(recursive=True)
    elif folder.exists():
        for name in outcome.done_sources():
            staged = folder / f"{name}.copy"
            if staged.exists():
                staged.unlink()
    sweep_staging(run_id, config)


def instance_failure(ti, task_id: str, map_index: int | None, state: str | None, source: str | None):
    """Why one task instance did not succeed: the failure it reported, or its state when it did not run to a
    failure (upstream_failed, a task killed before it could report)."""
    from sluice.failures import Failure

    if state == "failed":
        instance = {} if map_index is None else {"map_indexes": map_index}
        reported = ti.xcom_pull(task_ids=task_id, key="failure", **instance)
        if reported:
            return Failure.from_json(reported)
    return Failure(step=task_id, source=source, error_class=f"Task{str(state).title().replace('_', '')}",
                   message=f"{state} (see the task's log)" if state == "failed" else str(state))
