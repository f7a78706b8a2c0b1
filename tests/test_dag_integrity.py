"""The DAG file: imports cleanly and fast, has the contract's ids, edges, params and defaults."""

import copy
import subprocess
import sys

import pytest

from tests.airflow_env import load_dag

LANE = ("ingest", "store_raw", "normalize", "upsert", "checkpoint")
EDGES = {
    # the catalog's entries: each lane step takes its source's entry
    "init_schema": {*LANE, "release"},
    # a held batch the run's param release names, published instead of fetching its source
    "release": {"record_run"},
    "ingest": {"store_raw"},
    # the stored batch (its fetch order and last id) goes to every later step of the lane
    "store_raw": {"normalize", "upsert", "checkpoint"},
    "normalize": {"upsert"},
    "upsert": {"checkpoint"},
    "checkpoint": {"record_run"},
    "record_run": set(),
}


@pytest.fixture(scope="module")
def dag():
    return load_dag()


def test_dag_id_and_exact_edges(dag):
    assert dag.dag_id == "etl_pipeline"
    assert {task.task_id: set(task.downstream_task_ids) for task in dag.tasks} == EDGES


def test_schedule_has_real_daily_intervals_and_no_surprise_backfill(dag):
    from datetime import timedelta

    assert type(dag.timetable).__name__ == "DeltaDataIntervalTimetable"
    assert dag.timetable.delta == timedelta(days=1)
    assert dag.catchup is False
    assert dag.max_active_runs == 1
    assert dag.start_date.year == 2026 and dag.start_date.tzinfo is not None


def test_every_task_retries_with_exponential_backoff(dag):
    for task in dag.tasks:
        assert task.retries >= 1, task.task_id
        assert task.retry_exponential_backoff, task.task_id


def test_failure_tolerant_trigger_rules(dag):
    """A lane stops at its first failed step; record_run waits for every lane to finish, whatever failed."""
    rules = {task.task_id: task.trigger_rule for task in dag.tasks}
    assert rules["record_run"] == "all_done"
    assert {rules[step] for step in LANE} == {"all_success"}


def test_params_have_defaults_for_the_trigger_form(dag):
    params = dag.params.dump()
    assert params["api_endpoint"] == "posts"
    assert params["api_mapping"] == {"source_id": "id", "name": "title", "value": "userId", "description": "body"}
    assert set(params["csv_mapping"]) == {"source_id", "name", "value", "description"}
    assert params["full_refresh"] is False
    assert {"csv_endpoint", "api_since_param"} <= set(params)


def test_doc_md_and_tags(dag):
    assert "etl_pipeline" in dag.doc_md and "rejected_records" in dag.doc_md
    assert "sluice" in dag.tags


def test_dag_file_imports_no_database_or_http_libraries_and_parses_fast():
    """Nothing heavy at import: no psycopg, requests, providers or marshmallow in the DAG module's imports."""
    code = (
        "import sys, time; sys.path[:0] = ['dags']; t = time.perf_counter();"
        "import etl_pipeline; print(time.perf_counter() - t);"
        "heavy = [m for m in ('psycopg', 'psycopg2', 'marshmallow', 'airflow.providers.postgres.hooks.postgres',"
        " 'airflow.providers.http.hooks.http', 'sluice.warehouse') if m in sys.modules]; print(heavy)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    seconds, heavy = result.stdout.strip().splitlines()[-2:]
    assert heavy == "[]"
    # Airflow's own import dominates; the DAG module itself adds little. Generous bound, not a benchmark.
    assert float(seconds) < 30


def test_the_catalog_param_defaults_to_the_seed_sources_and_each_lane_step_is_mapped_four_at_a_time(dag):
    # an empty catalog: the seed sources api and csv, as the params above describe them
    assert dag.params.dump()["sources"] == []
    group = dag.task_group_dict["sources"]
    assert type(group).__name__ == "MappedTaskGroup"
    for task_id in LANE:
        task = dag.task_dict[task_id]
        assert task.task_group is group, task_id
        assert task.max_active_tis_per_dagrun == 4
        assert task.map_index_template == "{{ sluice_source }}"
    assert dag.task_dict["init_schema"].task_group is not group and dag.task_dict["record_run"].task_group is not group


@pytest.mark.parametrize("catalog, problem", [
    ([{"name": "orders", "kind": "api", "endpoint": "orders", "colour": "red"}], "'colour' is not one of"),
    ([{"name": "Orders", "kind": "api", "endpoint": "orders"}], "does not match"),
    ([{"name": "orders", "kind": "ftp", "endpoint": "orders"}], "is not one of"),
    ([{"name": "orders", "kind": "csv"}], "'endpoint' is a required property"),
    ({"name": "orders"}, "is not of type 'array'"),
])
def test_the_trigger_form_refuses_a_malformed_catalog(dag, catalog, problem):
    from airflow.sdk.exceptions import ParamValidationError

    params = copy.deepcopy(dag.params)  # the DAG's own Params are shared by every DAG object of the module
    with pytest.raises(ParamValidationError, match=problem):  # as the trigger form sets it
        params["sources"] = catalog


def test_the_trigger_form_takes_a_catalog_of_any_kind_with_every_field(dag):
    from sluice import sources

    entry = sources.to_entry(sources.from_entry({"name": "orders", "kind": "api", "endpoint": "orders",
                                                 "pagination": {"type": "page_param", "param": "page",
                                                                "page_size": 50}}))
    params = copy.deepcopy(dag.params)
    params["sources"] = [entry, {"name": "stock", "kind": "csv", "endpoint": "stock.csv", "delimiter": ";"}]
    assert params.validate()["sources"][0]["name"] == "orders"
    assert dag.params.dump()["sources"] == []


def test_upsert_and_release_declare_the_alias_their_asset_events_go_through_and_no_other_task_has_outlets(dag):
    from airflow.sdk import AssetAlias

    for task_id in ("upsert", "release"):  # a released batch is published as a load is
        assert dag.task_dict[task_id].outlets == [AssetAlias("sluice.normalized_data")]
    assert sorted(task.task_id for task in dag.tasks if task.outlets) == ["release", "upsert"]
