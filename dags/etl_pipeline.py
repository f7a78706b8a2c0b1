"""
### etl_pipeline — named sources (JSON APIs and CSVs) into PostgreSQL, idempotently

Pulls records from each source of the catalog (param `sources`, by default the file named by
`SLUICE_SOURCES_FILE`; empty: the seed sources `api` — connection `etl_api`, param `api_endpoint` — and
`csv` — connection `etl_csv`, param `csv_endpoint`), one `ingest_api` / `ingest_csv` instance per source,
keeps the latest raw payload of every record (`raw_api_data`, `raw_csv_data`, keyed by source and id),
validates and maps them into `normalized_data`, upserts only real changes, advances `etl_checkpoint` per
source and writes one `etl_runs` row per run. Bad records go to `rejected_records` with a reason; they never
stop the good ones.

**Params**: `sources` (the catalog: `[{name, kind, endpoint, conn_id, mapping, since_param, delete_missing},
...]`; `delete_missing`, default true for csv and false for api, soft-deletes the rows a whole read no longer
contains, refused beyond `SLUICE_MAX_DELETE_FRACTION` of the source's live rows),
`api_endpoint`, `csv_endpoint`, `api_mapping` / `csv_mapping` (normalized column → source field),
`api_since_param` (query parameter that asks the API for records from the checkpoint on, e.g. `id_gte`;
empty reads the API whole) — these four describe the seed sources —, `full_refresh` (ignore checkpoints
and re-normalize everything).

**Assets**: each source's rows are the asset `sluice.normalized_data.<source>`; `upsert` emits an event
for each source whose rows changed (its counts and the run id in the event's extra), through the alias
`sluice.normalized_data`. Schedule a downstream DAG on a source's asset to run when it changes.

**Failure**: an invalid catalog fails `init_schema`, before any source is read. When one source fails,
the others still load; the run is recorded as failed with the error, naming the source.
Only references and counts travel through XCom; rows are staged under `SLUICE_STAGING_URL`."""

import os
from datetime import timedelta

import pendulum
from airflow.sdk import AssetAlias, DeltaDataIntervalTimetable, Param, dag, task

from sluice import airflow_edge as edge
from sluice import assets, settings, sources

_settings = settings.load()
# each ingest instance is shown by its source's name (airflow_edge.ingest sets it)
SOURCE_NAME = "{{ %s }}" % edge.MAP_INDEX_KEY


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
        "sources": Param(sources.load_file(os.environ["SLUICE_SOURCES_FILE"])
                         if os.environ.get("SLUICE_SOURCES_FILE") else [], type="array",
                         description="The catalog: a list of sources ({name, kind, endpoint, conn_id, mapping, "
                                     "since_param, delete_missing}); empty = the two seed sources api and csv, as the params "
                                     "below describe them. Default: the file named by SLUICE_SOURCES_FILE."),
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
    # the catalog is checked and returned per kind (complete entries, no rows)
    @task
    def init_schema(params=None):
        return edge.init_schema(params)

    # the sources of one kind, which its ingest task maps over (Airflow maps only over a whole XCom)
    @task
    def sources_of(catalog, kind):
        return catalog[kind]

    # one instance per source of the kind, with its own retries, log and XCom
    @task(max_active_tis_per_dagrun=_settings.max_parallel_sources, map_index_template=SOURCE_NAME)
    def ingest_api(source, params=None, run_id=None):
        return edge.ingest_instance(source, params, run_id)

    @task(max_active_tis_per_dagrun=_settings.max_parallel_sources, map_index_template=SOURCE_NAME)
    def ingest_csv(source, params=None, run_id=None):
        return edge.ingest_instance(source, params, run_id)

    # all_done: one failed source must not stop the others from loading.
    @task(trigger_rule="all_done")
    def store_raw(api, csv, run_id=None):
        return edge.store_raw([api, csv], run_id)

    @task
    def normalize(stored, catalog, params=None, run_id=None):
        return edge.normalize(stored, catalog, params, run_id)

    # the sources are known at run time only: upsert adds each changed source's asset event to this alias
    @task(outlets=[AssetAlias(assets.ALIAS)])
    def upsert(normalized, catalog, params=None, run_id=None):
        return edge.upsert(normalized, catalog, params, run_id)

    @task
    def checkpoint(upserted, params=None, run_id=None):
        return edge.checkpoint(upserted, params, run_id)

    # all_done: the run is recorded whatever failed; it reads the other tasks from the DAG itself.
    @task(trigger_rule="all_done", retries=1)
    def record_run(**context):
        return edge.record_run(context)

    catalog = init_schema()
    api = ingest_api.expand(source=sources_of.override(task_id="api_sources")(catalog, "api"))
    csv = ingest_csv.expand(source=sources_of.override(task_id="csv_sources")(catalog, "csv"))
    checkpoint(upsert(normalize(store_raw(api, csv), catalog), catalog)) >> record_run()

etl_pipeline()
