"""Airflow's own metrics and its DAG-run and task traces, with the settings docker-compose.yaml gives Airflow under
SLUICE_OBSERVE=true, sent by a real etl_pipeline run to a real OTLP/HTTP receiver on loopback: every task traced
under its run's span, every task's outcome counted with bounded labels, and every Airflow metric a dashboard
queries among those Airflow sent (under the name the collector gives it in Prometheus)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import promql_names
import pytest
import yaml
from otlp_receiver import attributes, receiver  # noqa: F401 (receiver is a fixture)
from test_deletes import pipeline_run  # noqa: F401 (a fixture)

from tests import airflow_env

REPO = Path(__file__).resolve().parents[1]
SOURCES = [{"name": "items", "kind": "csv", "endpoint": "items.csv"}, {"name": "posts", "kind": "api", "endpoint": "posts"}]
# labels that would make a series per run or per job: Airflow drops them by default (statsd_disabled_tags)
UNBOUNDED = {"run_id", "job_id", "ti_id", "try_number"}


def compose_telemetry_environment(endpoint: str) -> dict[str, str]:
    """The telemetry settings of docker-compose.yaml's Airflow services as SLUICE_OBSERVE=true sets them, with the
    collector's endpoint replaced by `endpoint`."""
    compose = yaml.safe_load((REPO / "docker-compose.yaml").read_text())
    environment = compose["x-airflow-common"]["environment"]
    chosen = {key: str(value) for key, value in environment.items()
              if key.startswith(("AIRFLOW__METRICS__", "AIRFLOW__TRACES__", "OTEL_"))}
    assert chosen.pop("OTEL_EXPORTER_OTLP_ENDPOINT") == "http://otel-collector:4318"
    assert chosen["AIRFLOW__METRICS__OTEL_ON"] == chosen["AIRFLOW__TRACES__OTEL_ON"] == "${SLUICE_OBSERVE:-false}"
    return {**chosen, "AIRFLOW__METRICS__OTEL_ON": "true", "AIRFLOW__TRACES__OTEL_ON": "true",
            "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint}


def prometheus_name(metric) -> str | None:
    """The name the collector's prometheus exporter (ops/otel-collector/config.yaml, add_metric_suffixes) gives an
    OTLP metric: characters outside [a-zA-Z0-9_:] become "_" (runs collapsed), a monotonic sum gets "_total".
    None for an exponential histogram: a classic Prometheus scrape has no series for it, so no panel may use it."""
    kind = metric.WhichOneof("data")
    if kind == "exponential_histogram":
        return None
    assert not metric.unit, f"{metric.name} has a unit ({metric.unit}): the collector would add its suffix"
    name = re.sub(r"_+", "_", re.sub(r"[^a-zA-Z0-9_:]", "_", metric.name))
    return name + "_total" if kind == "sum" and metric.sum.is_monotonic else name


def test_airflow_sends_its_metrics_and_traces_and_the_dashboards_query_only_what_it_sends(pipeline_run, receiver):  # noqa: F811
    pipeline = pipeline_run
    env = {**os.environ, **compose_telemetry_environment(receiver.url)}
    done = subprocess.run([sys.executable, str(REPO / "tests" / "observed_dag_run.py"), json.dumps({"sources": SOURCES})],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    state, run_id = re.search(r"^state (\S+) run_id (\S+)$", done.stdout, re.MULTILINE).groups()
    assert state == "success" and pipeline.etl_run(run_id)["status"] == "success"
    tasks = set(airflow_env.load_dag().task_ids)

    # traces: one span for the run, one per task instance under it, in one trace
    spans = [span for resource, span in receiver.spans() if resource.get("service.name") == "airflow"]
    (run_span,) = [span for span in spans if span.name == "dag_run.etl_pipeline"]
    assert attributes(run_span)["airflow.dag_run.run_id"] == run_id
    task_spans = [span for span in spans if span.name.startswith("task_run.")]
    assert {attributes(span)["airflow.task_id"] for span in task_spans} == tasks
    assert {span.trace_id for span in task_spans} == {run_span.trace_id}
    assert {span.parent_span_id for span in task_spans} == {run_span.span_id}
    assert {attributes(span)["airflow.task_instance.state"] for span in task_spans} == {"success"}

    # metrics: each task's outcome counted, labelled by dag, task and state, never by run
    metrics = [metric for resource, metric in receiver.metrics() if resource.get("service.name") == "airflow"]
    assert metrics, done.stderr[-3000:]
    finished = {(point_labels["task_id"], point_labels["state"])
                for metric in metrics if metric.name == "airflow.ti.finish"
                for point_labels in (attributes(point) for point in metric.sum.data_points)}
    assert finished == {(task, "success") for task in tasks}
    for metric in metrics:
        points = getattr(metric, metric.WhichOneof("data")).data_points
        labels = {key for point in points for key in attributes(point)}
        assert not labels & UNBOUNDED, f"{metric.name} is labelled by {labels & UNBOUNDED}"
        assert run_id not in metric.name and "etl_pipeline" not in metric.name  # no legacy names with ids in them

    # every Airflow metric a dashboard or rule queries is one Airflow sent; a renamed one is caught
    exported = {prometheus_name(metric) for metric in metrics} - {None}
    queried = airflow_names([expression for expressions in promql_names.every_expression().values()
                             for expression in expressions])
    assert queried, "no dashboard shows Airflow's metrics"
    assert not promql_names.unexported(queried, exported), (promql_names.unexported(queried, exported), sorted(exported))
    renamed = (promql_names.DASHBOARDS / "pipeline-health.json").read_text().replace(
        "airflow_ti_finish_total", "airflow_ti_finished_total")
    assert promql_names.unexported(airflow_names(promql_names.dashboard_expressions(renamed)), exported) == [
        "airflow_ti_finished_total"]


def airflow_names(expressions: list[str]) -> set[str]:
    return {name for name in promql_names.queried(expressions) if name.startswith("airflow_")}


@pytest.mark.parametrize("name, kind, monotonic, expected", [
    ("airflow.ti.finish", "sum", True, "airflow_ti_finish_total"),
    ("airflow.dagrun.dependency-check", "exponential_histogram", None, None),
    ("airflow.executor.open_slots", "gauge", None, "airflow_executor_open_slots"),
    ("airflow.pool.running_slots.default_pool", "sum", False, "airflow_pool_running_slots_default_pool"),
])
def test_prometheus_names_follow_the_collectors_rule(name, kind, monotonic, expected):
    from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric

    metric = Metric(name=name)
    getattr(metric, kind).SetInParent()
    if monotonic is not None:
        metric.sum.is_monotonic = monotonic
    assert prometheus_name(metric) == expected
