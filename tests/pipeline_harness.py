"""Whole runs of etl_pipeline with dag.test() against real Postgres and loopback sources."""

import os
import time
from dataclasses import dataclass

import psycopg

from sluice_devtools import local_env, sample_data
from sluice_devtools.source_server import SourceServer
from tests import airflow_env

CHECKSUM = "select md5(coalesce(string_agg(t::text, '|' order by id), '')) from normalized_data t"
# where each record a run fetched of a source ends up: exactly one of these
OUTCOMES = ("inserted", "updated", "unchanged", "superseded", "rejected")


@dataclass
class Pipeline:
    database_url: str
    sources: SourceServer

    def run(self, conf: dict | None = None, dag=None, **kwargs):
        """One run of etl_pipeline (or of `dag`); returns (Airflow run state, its etl_runs row as a dict), whose
        counts add up."""
        dag_run = (dag or airflow_env.load_dag()).test(run_conf=conf or {}, **kwargs)
        return str(dag_run.state), self._finished(dag_run.run_id)

    def rerun_from_store_raw(self, run_id: str):
        """What an operator does to a failed run: clear store_raw and every task after it, and the scheduler runs
        them again in the same run. The ingest tasks keep their results (the staged files and their place in the
        fetch order). dag.test() cannot: it replaces the run, and the ingest results with it."""
        return self.clear(run_id, ["store_raw"])

    def clear(self, run_id: str, tasks: list, *, downstream: bool = True, dag=None):
        """Clear tasks of a run as the Airflow UI does (its REST endpoint's code: a task id clears every instance,
        (task id, map index) one source's; downstream adds the relatives, in a mapped group those of the same
        source), then run what is ready, as the scheduler would, until the run is finished. dag: the DAG as parsed
        now (default: etl_pipeline), whose tasks run: a changed catalog file reaches a cleared init_schema."""
        from airflow.models.dagrun import DagRun
        from airflow.models.taskinstance import clear_task_instances, find_relevant_relatives
        from airflow.serialization.serialized_objects import DagSerialization
        from airflow.utils.session import create_session
        from airflow.utils.state import DagRunState
        from sqlalchemy import select

        dag = dag or airflow_env.load_dag()
        serialized = DagSerialization.deserialize_dag(DagSerialization.serialize_dag(dag))
        with create_session() as session:
            normal = {task for task in tasks if not isinstance(task, tuple)}
            mapped = {task for task in tasks if isinstance(task, tuple)}
            if downstream:
                relatives = find_relevant_relatives(normal, mapped, dag=serialized, run_id=run_id,
                                                    direction="downstream", session=session)
                normal.update(task for task in relatives if not isinstance(task, tuple))
                mapped.update(task for task in relatives if isinstance(task, tuple))
            markers = [*normal, *((task, index) for task, index in mapped if task not in normal)]
            cleared = serialized.clear(dry_run=True, task_ids=markers, run_id=run_id, session=session)
            clear_task_instances(cleared, session, DagRunState.QUEUED)
            session.commit()
            dag_run = session.scalar(select(DagRun).where(DagRun.run_id == run_id))
            dag_run.state = DagRunState.RUNNING
            session.commit()
            dag_run.dag = serialized
            _drive(dag, dag_run, session)
            state = str(dag_run.state)
            self.last_cleared = sorted((ti.task_id, ti.map_index) for ti in cleared)
        return state, self._finished(run_id)

    def run_scheduled(self, conf: dict | None, interval: tuple, dag=None):
        """One scheduled run of etl_pipeline over the data interval (start, end), as the scheduler creates it
        (dag.test() creates manual runs only); returns (Airflow run state, its etl_runs row)."""
        from airflow.models.dagrun import DagRun
        from airflow.serialization.serialized_objects import DagSerialization
        from airflow.utils.session import create_session
        from airflow.utils.state import DagRunState
        from airflow.utils.types import DagRunTriggeredByType, DagRunType
        from sqlalchemy import select

        dag = dag or airflow_env.load_dag()
        _sync_dags()
        serialized = DagSerialization.deserialize_dag(DagSerialization.serialize_dag(dag))
        start, end = interval
        with create_session() as session:
            # as dag.test() does: an earlier run of this logical date (of this or another test) makes way
            for earlier in session.scalars(select(DagRun).where(DagRun.dag_id == dag.dag_id,
                                                                DagRun.logical_date == start)):
                session.delete(earlier)
            session.commit()
            dag_run = serialized.create_dagrun(
                run_id=f"scheduled__{start.isoformat()}", logical_date=start, data_interval=(start, end),
                run_after=end, conf=conf or {}, run_type=DagRunType.SCHEDULED, state=DagRunState.RUNNING,
                triggered_by=DagRunTriggeredByType.TEST, triggering_user_name="tests", start_date=end,
                session=session)
            session.commit()
            dag_run.dag = serialized
            _drive(dag, dag_run, session)
            state, run_id = str(dag_run.state), dag_run.run_id
        return state, self._finished(run_id)

    def _finished(self, run_id: str) -> dict:
        run = self.etl_run(run_id)
        assert_counts_add_up(run)
        return run

    def etl_run(self, run_id: str) -> dict | None:
        with psycopg.connect(self.database_url, row_factory=psycopg.rows.dict_row) as conn:
            return conn.execute("select * from etl_runs where run_id = %s", (run_id,)).fetchone()

    def rows(self, query: str, params=None) -> list:
        with psycopg.connect(self.database_url) as conn:
            return conn.execute(query, params).fetchall()

    def value(self, query: str, params=None):
        return self.rows(query, params)[0][0]

    def checksum(self) -> str:
        return self.value(CHECKSUM)


def _sync_dags() -> None:
    """Write the DAG files' DAGs to the metadata DB, as dag.test() does before it creates its run."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import BundleDagBag, sync_bag_to_db
    from airflow.utils.session import create_session

    manager = DagBundlesManager()
    with create_session() as session:
        manager.sync_bundles_to_db(session=session)
    for bundle in manager.get_all_dag_bundles():
        if not bundle.is_initialized:
            bundle.initialize()
        sync_bag_to_db(BundleDagBag(dag_folder=bundle.path, bundle_path=bundle.path, bundle_name=bundle.name),
                       bundle.name, bundle.version)


def _drive(dag, dag_run, session) -> None:
    """dag.test()'s loop: schedule what is ready, run it here, until the run is finished."""
    from airflow.sdk.definitions.dag import _run_task
    from airflow.utils.state import DagRunState, TaskInstanceState

    while dag_run.state == DagRunState.RUNNING:
        session.expire_all()
        ready, _ = dag_run.update_state(session=session)
        for ti in ready:
            ti.try_number += 1
            ti.state = TaskInstanceState.SCHEDULED
        session.commit()
        for ti in ready:
            _run_task(ti=ti, task=dag.task_dict[ti.task_id])
        if not ready:  # a retry whose delay has not passed yet
            time.sleep(0.2)


def assert_counts_add_up(run: dict) -> None:
    """Each record fetched of a source the run loaded has exactly one outcome, its live rows after the run are
    those before, plus the inserted, less the deleted, plus the undeleted; each total is the sum over the
    sources."""
    for source, counts in run["source_counts"].items():
        if counts["loaded"]:
            assert counts["fetched"] == sum(counts[name] for name in OUTCOMES), f"{source} counts: {counts}"
            assert counts["live_after"] == (counts["live_before"] + counts["inserted"]
                                            + counts.get("renormalized_inserted", 0) - counts["deleted"]
                                            + counts["undeleted"]), f"{source} rows: {counts}"
    for name in ("fetched", *OUTCOMES):
        assert run[name] == sum(counts[name] for counts in run["source_counts"].values()), \
            f"etl_runs.{name} {run[name]} is not the sum of the per-source counts {run['source_counts']}"


def start_sources(api_records: int = 100, csv_rows: int = 300, bad_every: int = 50) -> SourceServer:
    server = SourceServer().start()
    server.serve_json("posts", sample_data.posts(api_records), page_size=40)
    server.serve_bytes("items.csv", sample_data.csv_bytes(csv_rows, bad_every=bad_every))
    return server


def point_airflow_at(monkeypatch, database_url: str, sources: SourceServer, staging_dir) -> None:
    airflow_env.migrated()
    monkeypatch.setenv("AIRFLOW_CONN_ETL_POSTGRES", local_env.airflow_conn_uri(database_url))
    monkeypatch.setenv("AIRFLOW_CONN_ETL_API", sources.url)
    monkeypatch.setenv("AIRFLOW_CONN_ETL_CSV", sources.url)
    monkeypatch.setenv("SLUICE_STAGING_URL", f"file://{staging_dir}")
    assert os.environ["SLUICE_HTTP_ATTEMPTS"] == "2"
