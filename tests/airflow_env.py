"""Airflow for the tests: a private AIRFLOW_HOME, set before airflow is first imported."""

import functools
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
AIRFLOW_HOME = REPO / ".sluice" / f"test-airflow-{os.getpid()}"

_ENV = {
    "AIRFLOW_HOME": str(AIRFLOW_HOME),
    "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
    "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "SLUICE_RETRY_DELAY": "0",
    "SLUICE_TASK_RETRIES": "1",
    "SLUICE_HTTP_ATTEMPTS": "2",
}
os.environ.update(_ENV)


@functools.cache
def migrated() -> None:
    AIRFLOW_HOME.mkdir(parents=True, exist_ok=True)
    subprocess.run([str(Path(sys.executable).with_name("airflow")), "db", "migrate"], check=True,
                   capture_output=True, env={**os.environ})


def load_dag():
    sys.path[:0] = [p for p in (str(REPO / "dags"),) if p not in sys.path]
    import etl_pipeline

    return etl_pipeline.etl_pipeline()

