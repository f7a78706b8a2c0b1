"""Schema contracts through whole runs of etl_pipeline (dag.test, real PostgreSQL, HTTP on 127.0.0.1): a field that
appears in the second run under each contract, a retyped field under freeze, and what GET /sources/<source>/fields
shows of them."""

import importlib.util
import logging
from pathlib import Path

import pytest
import yaml
from webapp_fixtures import make_app  # noqa: F401  # a fixture

from sluice_devtools.source_server import SourceServer
from tests.pipeline_harness import Pipeline, point_airflow_at
from tests.test_task_logs import TaskLogs

REPO = Path(__file__).resolve().parents[1]
MAPPING = {"source_id": "id", "name": "email", "value": "mrr"}
CUSTOMERS = 5


def customers(count: int = CUSTOMERS, changed: dict | None = None) -> list[dict]:
    """count customers; changed: id -> extra fields of that customer."""
    return [{"id": number, "email": f"c{number}@example.org", "mrr": number * 10, "seats": number,
             **(changed or {}).get(number, {})} for number in range(1, count + 1)]


def catalog(contract: str, **fields) -> list[dict]:
    return [{"name": "customers", "kind": "api", "endpoint": "customers", "mapping": MAPPING,
             "fields": {"seats": "integer", **fields}, "schema_contract": contract}]


@pytest.fixture
def pipeline(monkeypatch, database_url, tmp_path):
    server = SourceServer().start()
    server.serve_json("customers", customers(), page_size=2)
    point_airflow_at(monkeypatch, database_url, server, tmp_path / "staging")
    yield Pipeline(database_url, server)
    server.stop()


@pytest.fixture
def logs():
    handler = TaskLogs()
    logger = logging.getLogger("sluice")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


def fields_of(make_app, url: str) -> dict:  # noqa: F811
    response = make_app(url).test_client().get("/sources/customers/fields")
    assert response.status_code == 200, response.json
    return response.json


def second_run_with_a_rating(pipeline, contract: str):
    """A first run, then a second in which customer 3 (changed) and customer 6 (new) carry a field `rating`."""
    state, first = pipeline.run({"sources": catalog(contract)})
    assert state == "success", first["error_message"]
    pipeline.sources.serve_json("customers", customers(6, {3: {"rating": 4.5}, 6: {"rating": 3}}), page_size=2)
    return first, *pipeline.run({"sources": catalog(contract)})


@pytest.mark.parametrize("contract", ["discard_undeclared", "evolve"])
def test_a_new_field_is_recorded_kept_in_raw_and_loaded_only_under_evolve(pipeline, logs, make_app, contract):  # noqa: F811
    first, state, second = second_run_with_a_rating(pipeline, contract)

    assert state == "success" and second["status"] == "success", second["error_message"]
    assert second["source_counts"]["customers"]["inserted"] == 1
    assert pipeline.value("select count(*) from normalized_data where source = 'customers'") == 6
    # the raw table keeps each record whole
    assert pipeline.value("select data->>'rating' from raw_api_data where source_id = '3'") == "4.5"
    body = fields_of(make_app, pipeline.database_url)
    assert body["changes_total"] == 5 and body["changes"][0] == {
        "run_id": second["run_id"], "field": "rating", "change": "new", "from_type": None, "to_type": "number",
        "declared": False, "record_id": "3", "detected_at": body["changes"][0]["detected_at"]}
    assert {(change["field"], change["run_id"]) for change in body["changes"][1:]} == {
        (field, first["run_id"]) for field in ("id", "email", "mrr", "seats")}
    rating = [field for field in body["observed"] if field["field"] == "rating"]
    assert [(field["json_type"], field["first_seen_run_id"], field["example_record_id"]) for field in rating] == [
        ("number", second["run_id"], "3")]
    assert '"rating": 4.5' in rating[0]["example"] and not rating[0]["example_truncated"]
    store = [line for line in logs.lines["store_raw"] if "checked the batch's fields" in line]
    assert store[-1].startswith(f"customers: checked the batch's fields ({contract}): 1 changes recorded, "
                                "1 undeclared fields")
    evolved = [line for line in logs.lines["normalize"] if "schema_contract evolve" in line]
    if contract == "evolve":
        assert evolved[-1] == "customers: schema_contract evolve loads 1 undeclared fields as json: rating (from 'rating')"
    else:
        assert evolved == []
    # evolve loads the new field into attributes, typed json; discard_undeclared leaves it in raw only
    ratings = pipeline.rows("select source_id, attributes->'rating' from normalized_data where source = 'customers' "
                            "and attributes->'rating' <> 'null'::jsonb order by source_id")
    assert ratings == ([("3", 4.5), ("6", 3)] if contract == "evolve" else [])


def test_freeze_fails_the_source_at_store_raw_naming_the_new_field_and_writes_nothing(pipeline, make_app, tmp_path):  # noqa: F811
    first, state, second = second_run_with_a_rating(pipeline, "freeze")

    assert state == "failed" and second["status"] == "failed"
    assert second["error_message"].startswith(
        "store_raw[customers]: ContractViolation: customers: schema_contract freeze: the batch has 1 undeclared and "
        "0 retyped fields: 'rating' (undeclared, a number; record id '3')")
    assert tries_of(second["run_id"], "store_raw") == 1  # a configuration error: never retried
    assert pipeline.value("select count(*) from normalized_data") == CUSTOMERS
    assert pipeline.value("select count(*) from raw_api_data where data::jsonb ? 'rating'") == 0
    assert "rating" in pipeline.value("select last_error from etl_checkpoint where source = 'customers'")
    # nothing was published, so nothing is recorded; the staged batch stays for a clear
    assert sorted(field["field"] for field in fields_of(make_app, pipeline.database_url)["observed"]) == [
        "email", "id", "mrr", "seats"]
    assert list((tmp_path / "staging").glob("*/customers.copy"))


def test_freeze_fails_on_a_declared_field_its_type_cannot_read(pipeline):
    assert pipeline.run({"sources": catalog("freeze")})[0] == "success"
    pipeline.sources.serve_json("customers", customers(changed={2: {"seats": "12"}, 4: {"seats": {"paid": 3}}}))

    state, run = pipeline.run({"sources": catalog("freeze")})

    assert state == "failed"
    assert run["error_message"].startswith(
        "store_raw[customers]: ContractViolation: customers: schema_contract freeze: the batch has 0 undeclared and "
        "1 retyped fields: 'seats' (declared integer but an object; record id '4')")
    assert pipeline.value("select data->>'seats' from raw_api_data where source_id = '4'") == "4"


def test_a_frozen_batch_loads_from_its_staged_file_once_the_field_is_declared_and_store_raw_cleared(
        pipeline, monkeypatch, tmp_path):
    dag = dag_with_catalog(monkeypatch, tmp_path, catalog("freeze"))
    assert pipeline.run(dag=dag)[0] == "success"
    pipeline.sources.serve_json("customers", customers(6, {3: {"rating": 4.5}, 6: {"rating": 3}}), page_size=2)
    state, failed = pipeline.run(dag=dag_with_catalog(monkeypatch, tmp_path, catalog("freeze")))
    assert state == "failed"
    pipeline.sources.requests.clear()

    # the declaration is fixed; init_schema reads the catalog again, and the source's store_raw is cleared
    fixed = dag_with_catalog(monkeypatch, tmp_path, catalog("freeze", rating="numeric"))
    state, run = pipeline.clear(failed["run_id"], ["init_schema", "store_raw", "normalize", "upsert", "checkpoint",
                                                   "record_run"], downstream=False, dag=fixed)

    assert state == "success" and run["status"] == "success", run["error_message"]
    assert pipeline.sources.requests == []  # loaded from the staged batch, not fetched again
    assert pipeline.value("select count(*) from normalized_data") == 6
    assert pipeline.value("select data->>'rating' from raw_api_data where source_id = '6'") == "3"


def dag_with_catalog(monkeypatch, tmp_path, entries: list):
    """etl_pipeline parsed with SLUICE_SOURCES_FILE naming a catalog (a fresh copy of the module: the params'
    defaults are read when the DAG file is parsed), as a deployment changing its catalog file does."""
    path = tmp_path / "sources.yaml"
    path.write_text(yaml.safe_dump({"sources": entries}))
    monkeypatch.setenv("SLUICE_SOURCES_FILE", str(path))
    spec = importlib.util.spec_from_file_location("etl_pipeline_with_file", REPO / "dags" / "etl_pipeline.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.etl_pipeline()


def tries_of(run_id: str, task_id: str) -> int:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        return session.scalar(select(TaskInstance.try_number).where(TaskInstance.run_id == run_id,
                                                                    TaskInstance.task_id == task_id))
