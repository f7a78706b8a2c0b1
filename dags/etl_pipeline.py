"""
### etl_pipeline — named sources (JSON APIs and CSVs) into PostgreSQL, idempotently

Pulls records from each source of the catalog (param `sources`, by default the file named by
`SLUICE_SOURCES_FILE`; empty: the seed sources `api` — connection `etl_api`, param `api_endpoint` — and
`csv` — connection `etl_csv`, param `csv_endpoint`). Each source runs its own lane of mapped tasks, shown by
its name — `ingest` → `store_raw` → `normalize` → `upsert` → `checkpoint` — between `init_schema` and one
`record_run`, so one source's failure, retry or clear never touches another's. The run keeps the latest
raw payload of every record (`raw_api_data`, `raw_csv_data`, keyed by source and id),
validates and maps them into `normalized_data`, upserts only real changes, advances `etl_checkpoint` per
source and writes one `etl_runs` row per run. Bad records go to `rejected_records` with a reason; they never
stop the good ones.

**Params**: `sources` (the catalog: `[{name, kind, endpoint, conn_id, mapping, since_param, delete_missing},
...]`; `delete_missing`, default true for csv and false for api, soft-deletes the rows a whole read no longer
contains, refused beyond `SLUICE_MAX_DELETE_FRACTION` of the source's live rows; `cursor`, `window` and `every`
bound a source's reads by time: a time field after the newest value loaded, the run's data interval, a cadence),
`api_endpoint`, `csv_endpoint`, `api_mapping` / `csv_mapping` (normalized column → source field),
`api_since_param` (query parameter that asks the API for records from the checkpoint on, e.g. `id_gte`;
empty reads the API whole) — these four describe the seed sources —, `full_refresh` (ignore checkpoints
and re-normalize everything), `accept_deletes` (`{"customers": 0.9}`: after a person checked a refused drop,
this run may soft-delete up to that fraction of the source's live rows; recorded in `etl_runs`), `replay`
(`["customers"]`, or true for all: rebuild those sources' rows from their raw tables with today's mapping and
rules, fetching nothing; README, Replay from raw), `release` (`{"source": "posts", "run_id": "..."}`: after a
person looked at a batch the quality gate held back, the task `release` publishes exactly it instead of fetching
that source, recorded as released by the triggering user).

**Assets**: each source's rows are the asset `sluice.normalized_data.<source>`; each source's `upsert` emits an
event when its rows changed (its counts and the run id in the event's extra), through the alias
`sluice.normalized_data`. Schedule a downstream DAG on a source's asset to run when it changes.

**Schedule**: the finest `every` of the catalog file's sources (daily when none gives one); a scheduled run
skips the sources not due (their lanes show as skipped; `etl_runs.skipped` and `/sources` say why). Backfill
intervals run in parallel (the backfill's `max_active_runs`, 10 by default), each window source reading its own
interval.

**Failure**: an invalid catalog fails `init_schema`, before any source is read. A configuration error (a
missing connection, a mapped column absent from a CSV's header, a 401/403/404, a refused delete) fails its task
at once, without retries; network errors, 5xx, 429 and lock timeouts are retried. When one source fails,
the others still load; once every lane has finished, the run is recorded as failed with the error, naming the
source and its step. Clearing tasks of a finished run redoes them and records the run again.
Only references and counts travel through XCom; rows are staged under `SLUICE_STAGING_URL`."""

import os
from datetime import timedelta

import pendulum
from airflow.sdk import AssetAlias, DeltaDataIntervalTimetable, Param, dag, task, task_group

from sluice import airflow_edge as edge
from sluice import assets, settings, sources, timing
from sluice.lineage_task import lane_task

_settings = settings.load()
_catalog = sources.load_file(os.environ["SLUICE_SOURCES_FILE"]) if os.environ.get("SLUICE_SOURCES_FILE") else []
# a lane's step, one instance per source: shown by its source's name (airflow_edge.lane_step sets it); at most
# SLUICE_MAX_PARALLEL_SOURCES instances of each step run at once
LANE = {"map_index_template": "{{ %s }}" % edge.MAP_INDEX_KEY,
        "max_active_tis_per_dagrun": _settings.max_parallel_sources}


@dag(
    dag_id="etl_pipeline",
    doc_md=__doc__,
    # the finest `every` of the catalog file's sources (daily when none asks): each run reads the sources due
    schedule=DeltaDataIntervalTimetable(timing.schedule(_catalog)),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    # scheduled and manual runs one at a time (a source's `every` counts from the run before); Airflow 3 caps a
    # backfill's parallel runs by its own max_active_runs (10 unless given), not this, and the per-source write
    # locks serialize their writes to each source
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
        "sources": Param(_catalog, **sources.CATALOG_SCHEMA,
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
        "replay": Param(False, type=["boolean", "array"], items={"type": "string"},
                        description="Rebuild these sources' rows (a list of names; true: every source) from their "
                                    "raw tables with today's mapping and rules, fetching nothing: after a mapping "
                                    "or rules fix, or damage to normalized_data. Rows that come out the same keep "
                                    "their lineage; deletes stay; the checkpoint does not move."),
        "accept_deletes": Param({}, type="object",
                                additionalProperties={"type": "number", "minimum": 0, "maximum": 1},
                                description="After a person checked a refused drop: source → the fraction of its "
                                            "live rows this run may soft-delete, e.g. {\"customers\": 0.9}; "
                                            "recorded in the run."),
        "release": Param({}, type="object", additionalProperties=False,
                         properties={"source": {"type": "string"}, "run_id": {"type": "string"}},
                         description="After a person looked at a batch the quality gate held back: {\"source\": "
                                     "\"posts\", \"run_id\": \"<the run that held it>\"} publishes exactly it "
                                     "instead of fetching that source, recorded as released by you."),
    },
)
def etl_pipeline():
    # the catalog is checked and its entries returned (complete, no rows): one lane per source maps over them
    @task
    def init_schema(params=None):
        return edge.init_schema(params)

    # One lane per source of the catalog, any kind: each step an instance of a mapped task, shown by its source's
    # name, so one source's failure, retry or clear never touches another's. Task ids are the steps' own names.
    # @lane_task is @task whose operator reports the step's datasets to OpenLineage (sluice.lineage_task).
    @task_group(group_id="sources", prefix_group_id=False)
    def source_lane(entry):
        @lane_task(**LANE)
        def ingest(entry, params=None, run_id=None, dag_run=None, data_interval_start=None, data_interval_end=None):
            return edge.ingest(entry, params, run_id, run_type=dag_run.run_type,
                               interval=(data_interval_start, data_interval_end))

        @lane_task(**LANE)
        def store_raw(entry, ingested, run_id=None):
            return edge.store_raw(entry, ingested, run_id)

        @lane_task(**LANE)
        def normalize(entry, stored, params=None, run_id=None):
            return edge.normalize(entry, stored, params, run_id)

        # the sources are known at run time only: upsert adds its source's asset event to this alias
        @lane_task(**LANE, outlets=[AssetAlias(assets.ALIAS)])
        def upsert(entry, stored, normalized, params=None, run_id=None):
            return edge.upsert(entry, stored, normalized, params, run_id)

        @lane_task(**LANE)
        def checkpoint(entry, stored, upserted, params=None, run_id=None, data_interval_end=None):
            return edge.checkpoint(entry, stored, upserted, params, run_id, read_until=data_interval_end)

        stored = store_raw(entry, ingest(entry))
        return checkpoint(entry, stored, upsert(entry, stored, normalize(entry, stored)))

    # a held batch a person looked at (param release), published as a load is: it emits its source's event
    @task(outlets=[AssetAlias(assets.ALIAS)])
    def release(params=None, dag_run=None):
        return edge.release(params, triggered_by=getattr(dag_run, "triggering_user_name", None))

    # all_done: the run is recorded whatever failed, once every lane has finished
    @task(trigger_rule="all_done", retries=1)
    def record_run(**context):
        return edge.record_run(context)

    catalog = init_schema()
    recorded = record_run()
    source_lane.expand(entry=catalog) >> recorded
    catalog >> release() >> recorded


etl_pipeline()
