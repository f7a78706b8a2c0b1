"""
### etl_pipeline — a JSON API and a CSV into PostgreSQL, idempotently

Pulls records from an HTTP JSON API (connection `etl_api`, endpoint param `api_endpoint`) and a CSV
published at a URL (connection `etl_csv`, endpoint param `csv_endpoint`), keeps the latest raw payload
of every record (`raw_api_data`, `raw_csv_data`), validates and maps them into `normalized_data`,
upserts only real changes, advances `etl_checkpoint` per source and writes one `etl_runs` row per run.
Bad records go to `rejected_records` with a reason; they never stop the good ones.

**Params**: `api_endpoint`, `csv_endpoint`, `api_mapping` / `csv_mapping` (normalized column → source
field), `api_since_param` (query parameter that asks the API for records from the checkpoint on, e.g.
`id_gte`; empty reads the API whole), `full_refresh` (ignore checkpoints and re-normalize everything).

**Failure**: when one source fails, the other still loads; the run is recorded as failed with the error.
Only references and counts travel through XCom; rows are staged under `SLUICE_STAGING_URL`.
"""

import os
from datetime import timedelta

import pendulum
from airflow.sdk import DeltaDataIntervalTimetable, Param, dag, task

from sluice import airflow_edge as edge
from sluice import settings

_settings = settings.load()


@dag(
    dag_id="etl_pipeline",
    doc_md=__doc__,
    schedule=DeltaDataIntervalTimetable(timedelta(days=1)),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["sluice", "etl", "postgres"],
    default_args={
        "owner": "sluice",
        "retries": _settings.task_retries,
        "retry_delay": timedelta(seconds=_settings.retry_delay_seconds),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(minutes=10),
    },
    params={
        "api_endpoint": Param(os.environ.get("SLUICE_API_ENDPOINT", "posts"), type="string",
                              description="Path of the JSON API resource, relative to connection etl_api."),
        "csv_endpoint": Param(os.environ.get("SLUICE_CSV_ENDPOINT", "items.csv"), type="string",
                              description="Path of the CSV, relative to connection etl_csv."),
        "api_mapping": Param(settings.DEFAULT_API_MAPPING, type="object",
                             description="Normalized column → API field (dotted paths reach nested fields, "
                                         "tags.0 a list's first item)."),
        "csv_mapping": Param(settings.DEFAULT_CSV_MAPPING, type="object",
                             description="Normalized column → CSV column name."),
        "api_since_param": Param(os.environ.get("SLUICE_API_SINCE_PARAM", ""), type="string",
                                 description="Query parameter for incremental reads, e.g. id_gte; empty = read whole."),
        "full_refresh": Param(False, type="boolean",
                              description="Ignore checkpoints and re-normalize every record."),
    },
)
def etl_pipeline():
    @task
    def init_schema():
        edge.init_schema()

    @task
    def ingest_api(params=None, run_id=None):
        return edge.ingest("api", params, run_id)

    @task
    def ingest_csv(params=None, run_id=None):
        return edge.ingest("csv", params, run_id)

    # all_done: one failed source must not stop the other from loading.
    @task(trigger_rule="all_done")
    def store_raw(api, csv, run_id=None):
        return edge.store_raw([api, csv], run_id)

    @task
    def normalize(stored, params=None, run_id=None):
        return edge.normalize(stored, params, run_id)

    @task
    def upsert(normalized, run_id=None):
        return edge.upsert(normalized, run_id)

    @task
    def checkpoint(upserted, params=None, run_id=None):
        return edge.checkpoint(upserted, params, run_id)

    # all_done: the run is recorded whatever failed; it reads the other tasks from the DAG itself.
    @task(trigger_rule="all_done", retries=1)
    def record_run(**context):
        return edge.record_run(context)

    api, csv = ingest_api(), ingest_csv()
    init_schema() >> [api, csv]
    checkpoint(upsert(normalize(store_raw(api, csv)))) >> record_run()


etl_pipeline()
