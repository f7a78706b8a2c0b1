"""etl_pipeline on two Celery workers (make test-distributed; not part of make test): staged files cross
machines through S3, local staging cannot, and a worker killed mid-task is survived.

The cluster (sluice_devtools.cluster) runs on loopback: Redis, moto's S3 server, the metadata DB on the
tests' PostgreSQL, api-server, scheduler, dag-processor. Its policy pins every ingest to queue q1 and every
other task to q2; worker 1 (127.0.0.2) takes q1, worker 2 (127.0.0.3) q2.
"""

import json
import os
import time
import urllib.request
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from sluice_devtools.cluster import BUCKET, Cluster, Worker
from sluice_devtools.source_server import Fault
from tests import pipeline_harness
from tests.pipeline_harness import Pipeline

pytestmark = [pytest.mark.distributed, pytest.mark.skipif(os.geteuid() != 0, reason="mount namespaces need root")]

DAG = "etl_pipeline"
WORKER_1, WORKER_2 = "127.0.0.2", "127.0.0.3"
QUEUES = {"ingest": "q1", "*": "q2"}
# the seed catalog is api, then csv: each lane step's instance for the csv source
CSV_LANE = 1
# what a run leaves in the warehouse, per source, free of run ids and times
FINGERPRINT = """
    select source, count(*), md5(string_agg(concat_ws('|', source_id, name, value, description, input_hash),
                                            E'\\n' order by source_id))
    from normalized_data group by source order by source"""
REJECTED = "select source, count(*) from rejected_records group by source order by source"


def fingerprint(url: str) -> list:
    with psycopg.connect(url) as conn:
        return [*conn.execute(FINGERPRINT).fetchall(), *conn.execute(REJECTED).fetchall()]


def recreate(server_url: str, url: str) -> None:
    """An empty database under the cluster's warehouse URL (its connection is fixed when the cluster starts)."""
    name = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))
        admin.execute(sql.SQL("create database {}").format(sql.Identifier(name)))


@pytest.fixture(scope="module")
def sources():
    server = pipeline_harness.start_sources()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def warehouse_url(make_database):
    return make_database(bare=True)


@pytest.fixture(scope="module")
def cluster(make_database, warehouse_url, sources):
    # under the checkout, not pytest's tmp (which other pytest sessions prune): the logs stay for a look
    home = Path(__file__).resolve().parents[2] / ".sluice" / f"cluster-{os.getpid()}"
    home.mkdir(parents=True)
    made = Cluster(home, metadata_url=make_database(bare=True), warehouse_url=warehouse_url,
                   sources_url=sources.url, queues=QUEUES, env={
                       "SLUICE_TASK_RETRIES": "1", "SLUICE_RETRY_DELAY": "1",
                       # a killed worker's task instance is failed (and retried) this soon
                       "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "15",
                       "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "2",
                   })
    try:
        print(f"\ncluster up in {made.start():.1f}s (logs: {home / 'logs'})")
        yield made
    finally:
        made.stop()


@pytest.fixture(scope="module")
def single_machine(tmp_path_factory, make_database, sources):
    """The same sources run on one machine (dag.test, local staging) into a database of its own: the
    warehouse a distributed run must equal."""
    url = make_database(bare=True)
    with pytest.MonkeyPatch.context() as monkeypatch:
        pipeline_harness.point_airflow_at(monkeypatch, url, sources, tmp_path_factory.mktemp("staging"))
        started = time.monotonic()
        state, run = Pipeline(url, sources).run()
        print(f"\nsingle-machine run (dag.test): {time.monotonic() - started:.1f}s")
    assert state == "success", run
    return fingerprint(url)


def workers(cluster: Cluster, *specs: Worker) -> list[Worker]:
    cluster.stop_workers()
    started = [cluster.start_worker(spec) for spec in specs]
    cluster.wait_for_workers()
    return started


def run(cluster: Cluster, label: str) -> tuple[str, str]:
    started = time.monotonic()
    run_id = cluster.trigger(DAG)
    state = cluster.wait_for_run(DAG, run_id)
    print(f"{label}: {state} in {time.monotonic() - started:.1f}s from trigger")
    return run_id, state


def staged_objects(cluster: Cluster) -> list[str]:
    with urllib.request.urlopen(f"{cluster.s3_url}/{BUCKET}?list-type=2") as response:  # nosec B310
        listing = response.read().decode()
    return [part.split("</Key>")[0] for part in listing.split("<Key>")[1:]]


def test_tasks_run_on_their_pinned_workers_and_stage_through_s3(cluster, warehouse_url, single_machine):
    workers(cluster, Worker("worker1", WORKER_1, ["q1"]), Worker("worker2", WORKER_2, ["q2"]))
    run_id, state = run(cluster, "distributed run (2 workers, S3 staging)")
    instances = cluster.task_instances(DAG, run_id)
    assert state == "success", [(ti["task_id"], ti["state"]) for ti in instances]
    placed = {(ti["task_id"], ti["queue"], ti["hostname"]) for ti in instances}
    assert {(task, queue, host) for task, queue, host in placed if task == "ingest"} == {("ingest", "q1", WORKER_1)}
    assert {(queue, host) for task, queue, host in placed if task != "ingest"} == {("q2", WORKER_2)}
    assert fingerprint(warehouse_url) == single_machine
    # record_run removed the run's staged objects
    assert staged_objects(cluster) == []


def test_local_staging_fails_store_raw_when_the_file_is_on_another_worker(cluster, warehouse_url, server_url):
    recreate(server_url, warehouse_url)
    local = cluster.home / "local-staging"
    env = {"SLUICE_STAGING_URL": f"file://{local}"}
    workers(cluster, Worker("worker1", WORKER_1, ["q1"], private_staging=local, env=env),
            Worker("worker2", WORKER_2, ["q2"], private_staging=local, env=env))
    run_id, state = run(cluster, "local staging across workers (negative control)")
    assert state == "failed"
    states = {}
    for ti in cluster.task_instances(DAG, run_id):
        states.setdefault(ti["task_id"], set()).add(ti["state"])
    # every source's lane: ingested on worker 1, its store_raw on worker 2 cannot read the file
    assert states["ingest"] == {"success"} and states["store_raw"] == {"failed"}
    with psycopg.connect(warehouse_url) as conn:
        error = conn.execute("select error_message from etl_runs where run_id = %s", (run_id,)).fetchone()[0]
    assert f"the staged file file://{local}/" in error
    assert f"is not on this worker ({WORKER_2}); {WORKER_1} wrote it" in error


def test_a_killed_worker_s_task_is_retried_on_the_survivor(cluster, warehouse_url, server_url, sources,
                                                          single_machine):
    recreate(server_url, warehouse_url)
    # the CSV answers only after a while the first time: long enough to kill the worker that reads it
    sources.add_faults("items.csv", Fault(status=200, body=sources.routes["items.csv"].body, stall_seconds=40,
                                          headers={"Content-Type": "text/csv"}))
    both = ["q1", "q2"]
    pool = workers(cluster, Worker("worker1", WORKER_1, both), Worker("worker2", WORKER_2, both))
    hits = sources.routes["items.csv"].hits
    asked_before = len(hits)
    started = time.monotonic()
    run_id = cluster.trigger(DAG)
    reader = wait_for_running(cluster, run_id, "ingest", CSV_LANE)
    wait_for(lambda: len(hits) > asked_before, "the csv source's ingest to request the CSV")
    victim = next(worker for worker in pool if worker.hostname == reader["hostname"])
    cluster.kill_worker(victim)
    state = cluster.wait_for_run(DAG, run_id)
    print(f"worker-kill run: {state} in {time.monotonic() - started:.1f}s from trigger")
    instances = cluster.task_instances(DAG, run_id)
    assert state == "success", [(ti["task_id"], ti["state"], ti["try_number"], ti["hostname"]) for ti in instances]
    csv = [ti for ti in instances if ti["task_id"] == "ingest" and ti["map_index"] == CSV_LANE]
    assert csv[0]["try_number"] == 2 and csv[0]["hostname"] != victim.hostname
    assert fingerprint(warehouse_url) == single_machine


def wait_for_running(cluster: Cluster, run_id: str, task_id: str, map_index: int, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for ti in cluster.task_instances(DAG, run_id):
            if (ti["task_id"], ti["map_index"]) == (task_id, map_index) and ti["state"] == "running" \
                    and ti["hostname"]:
                return ti
        time.sleep(0.5)
    raise TimeoutError(f"{task_id} of {run_id} was not running within {timeout:.0f}s")


def wait_for(condition, what: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout:.0f}s for {what}")
        time.sleep(0.2)
