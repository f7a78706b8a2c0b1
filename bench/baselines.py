"""Baselines on the same rows and database: raw COPY, the seed's row-by-row upsert, PostgresHook.insert_rows.

The step functions run in child processes (bench.child); `run_baselines` is the parent's side. The Python
baselines get their rows parsed and typed before the clock starts (bench.inputs.valid_rows), which only
flatters them. dlt runs elsewhere (bench.dlt_baseline) because it lives in its own virtualenv.
"""

from dataclasses import dataclass
from pathlib import Path

import psycopg

from bench import database
from bench.child import Children, StepFailed
from bench.inputs import valid_rows

COPY_CHUNK = 1024 * 1024
DLT_SCRIPT = Path(__file__).resolve().parent / "dlt_load.py"
TYPED_TABLE = "(id bigint primary key, name text, value double precision, description text)"
UPSERT_ROW = ("insert into {table} (id, name, value, description) values (%s, %s, %s, %s) "
              "on conflict (id) do update set name = excluded.name, value = excluded.value, "
              "description = excluded.description")


@dataclass
class Baseline:
    name: str
    rows: int  # rows the time stands for (after extrapolation)
    seconds: float  # extrapolated when measured_rows < rows
    measured_rows: int
    measured_seconds: float
    peak_rss_mb: float
    note: str = ""

    @property
    def extrapolated(self) -> bool:
        return self.measured_rows < self.rows

    @property
    def rows_per_second(self) -> float:
        return self.measured_rows / self.measured_seconds if self.measured_seconds else 0.0


def _fresh_table(db: str, table: str, columns: str) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(f"drop table if exists {table}")
        conn.execute(f"create table {table} {columns}")


# --- child steps -------------------------------------------------------------------------------------

def copy_csv(measure, *, db: str, path: str) -> dict:
    """COPY the well-formed CSV rows into a plain text table: the floor for any loader."""

    def load():
        with psycopg.connect(db) as conn:
            with open(path, "rb") as file, conn.cursor().copy(
                    "copy bench_copy from stdin with (format csv, header true)") as copy:
                while chunk := file.read(COPY_CHUNK):
                    copy.write(chunk)
            (count,) = conn.execute("select count(*) from bench_copy").fetchone()
        return count

    return {"rows": measure(load)}


def naive_executemany(measure, *, db: str, path: str, sample: int) -> dict:
    """The seed's path: psycopg2 executemany of INSERT … ON CONFLICT DO UPDATE, one statement per row."""
    import psycopg2

    rows = valid_rows(path, limit=sample)
    conn = psycopg2.connect(db)
    try:
        def load():
            with conn.cursor() as cursor:
                cursor.executemany(UPSERT_ROW.format(table="bench_naive"), rows)
            conn.commit()
        measure(load)
    finally:
        conn.close()
    return {"rows": len(rows)}


def hook_insert_rows(measure, *, sample: int, path: str) -> dict:
    """PostgresHook.insert_rows(replace=True) with its defaults (1,000-row commits), via AIRFLOW_CONN_BENCH_PG."""
    import logging

    from airflow.providers.postgres.hooks.postgres import PostgresHook

    logging.disable(logging.INFO)  # it logs a line per 1,000 rows
    rows = valid_rows(path, limit=sample or None)
    hook = PostgresHook(postgres_conn_id="bench_pg")
    measure(lambda: hook.insert_rows("bench_hook", rows, ["id", "name", "value", "description"],
                                     replace=True, replace_index="id"))
    return {"rows": len(rows)}


# --- parent side -------------------------------------------------------------------------------------

def run_baselines(children: Children, db: str, *, csv_path, copy_path, valid: int, naive_sample: int,
                  hook_sample: int, airflow_home, failures: list[str]) -> list[Baseline]:
    """Run COPY, the naive upsert and insert_rows; times of samples are scaled to `valid` rows.

    A baseline that fails is left out with its reason appended to `failures`; the run goes on.
    """
    results = []

    def measured(name, step, args, table, columns, env=None, note=""):
        _fresh_table(db, table, columns)
        database.checkpoint(db)
        try:
            out = children.run(step, args, env=env, label=f"baseline {name}")
        except StepFailed as failure:
            failures.append(f"baseline {name} failed: {str(failure).splitlines()[-1]} (log: {failure.log_path})")
            children.echo(f"  {failures[-1]}")
            return
        count = out["result"]["rows"]
        seconds = out["seconds"] * (valid / count) if 0 < count < valid else out["seconds"]
        if 0 < count < valid:
            note = f"{count:,}-row sample, extrapolated ×{valid / count:.1f}" + (f"; {note}" if note else "")
        results.append(Baseline(name, max(valid, count), seconds, count, out["seconds"], out["peak_rss_mb"], note))

    measured("COPY into a plain table", "copy_csv", {"db": db, "path": str(copy_path)}, "bench_copy",
             "(id text, name text, value text, description text)",
             note="well-formed rows only, text columns, no key")
    measured("psycopg2 executemany INSERT … ON CONFLICT (seed)", "naive_executemany",
             {"db": db, "path": str(csv_path), "sample": naive_sample}, "bench_naive", TYPED_TABLE)
    measured("PostgresHook.insert_rows(replace=True)", "hook_insert_rows",
             {"path": str(csv_path), "sample": hook_sample}, "bench_hook", TYPED_TABLE,
             env={"AIRFLOW_CONN_BENCH_PG": database.as_url(db), "AIRFLOW_HOME": str(airflow_home),
                  "AIRFLOW__CORE__LOAD_EXAMPLES": "False"})
    return results


DLT_MODES = {
    "arrow": ("dlt merge, pyarrow table (read_csv)", "extract + normalize + load, into an empty dataset"),
    "dicts": ("dlt merge, row dicts (DictReader)", "extract + normalize + load, into an empty dataset"),
    "arrow+indexes": ("dlt merge, pyarrow table, then Sluice's indexes",
                      "the pyarrow merge, then a unique key, a two-column btree and trigram GIN on name and "
                      "description built on its table"),
}


def run_dlt(children: Children, python, db: str, *, csv_path, valid: int, pipelines_dir,
            failures: list[str], modes=("arrow", "dicts")) -> list[Baseline]:
    """dlt merge on id (modes of DLT_MODES: by default with a pyarrow table, then with row dicts), in the bench
    virtualenv."""
    results = []
    for mode in modes:
        name, note = DLT_MODES[mode]
        database.checkpoint(db)
        try:
            out = children.run_command([str(python), str(DLT_SCRIPT), mode, str(csv_path), database.as_url(db),
                                        str(pipelines_dir)], f"baseline dlt {mode.replace('+', '_')}",
                                       env={"RUNTIME__DLTHUB_TELEMETRY": "false"})
        except StepFailed as failure:
            failures.append(f"baseline {name} failed: {str(failure).splitlines()[-1]} (log: {failure.log_path})")
            children.echo(f"  {failures[-1]}")
            continue
        rows = out["result"]["rows"]
        results.append(Baseline(name, rows, out["seconds"], rows, out["seconds"], out["peak_rss_mb"], note=note))
    return results
