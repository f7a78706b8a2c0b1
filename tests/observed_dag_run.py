"""One run of etl_pipeline with Airflow's OpenTelemetry metrics and traces as configured by the environment, in a
process of its own (tests/test_airflow_telemetry.py): Airflow sets its tracer provider when it is imported, and a
test process shares one.

dag.test() runs each task in this process, skipping the start-up of Airflow's task runner and executor, which is
where those initialize the metrics backend: this does what they do, with the same calls, then runs the DAG.
Usage: python tests/observed_dag_run.py '<run conf as JSON>'; prints `state <state> run_id <run id>`. The meter
and tracer providers flush their last batch when the process exits (the SDK's own atexit shutdown).
"""

import json
import sys
from pathlib import Path

DAGS = Path(__file__).resolve().parents[1] / "dags"


def main(conf: str) -> None:
    from airflow.configuration import conf as airflow_conf
    from airflow.observability import stats as core_stats
    from airflow.observability.metrics import stats_utils as core_stats_utils
    from airflow.sdk.observability import stats as task_stats
    from airflow.sdk.observability.metrics import stats_utils as task_stats_utils

    legacy = airflow_conf.getboolean("metrics", "legacy_names_on")
    # the scheduler's and executor's side (DagRun, TaskInstance) and the task runner's (the Task SDK)
    core_stats.initialize(factory=core_stats_utils.get_stats_factory(), export_legacy_names=legacy)
    task_stats.initialize(factory=task_stats_utils.get_stats_factory(), export_legacy_names=legacy)
    sys.path.insert(0, str(DAGS))
    import etl_pipeline

    dag_run = etl_pipeline.etl_pipeline().test(run_conf=json.loads(conf))
    print(f"state {dag_run.state} run_id {dag_run.run_id}")


if __name__ == "__main__":
    main(sys.argv[1])
