"""`python -m bench.dag_profile OUT.json dags test etl_pipeline`: Airflow's own command line, with every
warehouse statement of the run timed, so the whole-DAG bench reports where each task's time goes.

`airflow dags test` runs every task in its own process (Airflow 3's run_task_in_process), so timing psycopg's
execute and copy here (bench.statements) sees every statement of every task, as the DAG run issues them: no
VACUUM, no CHECKPOINT, the order and the connections of a real run. Each statement is attributed to the task
whose sluice.pipeline function issued it (found on the call stack); statements of Airflow's own metadata database
are not under such a function and are left out. OUT.json gets [[task, statement, seconds], ...].
"""

import json
import sys
from pathlib import Path

from bench import statements

# sluice.pipeline's step functions, named as the DAG's tasks; ingest is ingest_<kind of its source>
STEPS = {"init_schema", "ingest", "store_raw", "normalize", "upsert", "checkpoint", "record_run"}


def current_task() -> str | None:
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_globals.get("__name__") == "sluice.pipeline" and frame.f_code.co_name in STEPS:
            if frame.f_code.co_name == "ingest":
                return f"ingest_{frame.f_locals['source'].kind}"
            return frame.f_code.co_name
        frame = frame.f_back
    return None


class TaskStatements(list):
    """What statements.timed appends, (statement, seconds), kept as (task, statement, seconds) for tasks' only."""

    def append(self, item) -> None:
        task = current_task()
        if task is not None:
            super().append((task, *item))


def main() -> None:
    out, sys.argv = Path(sys.argv[1]), ["airflow", *sys.argv[2:]]
    timed = TaskStatements()
    from airflow.__main__ import main as airflow_main

    try:
        with statements.timed(timed):
            airflow_main()
    finally:
        out.write_text(json.dumps(timed))


if __name__ == "__main__":
    main()
