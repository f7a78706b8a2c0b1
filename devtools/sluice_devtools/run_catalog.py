"""`make run SOURCES=catalog.yaml`: your own catalog once, locally — the embedded PostgreSQL (or DATABASE_URL), one
real run of etl_pipeline (`airflow dags test`) against your sources, then the read API on 127.0.0.1 until Ctrl-C.

Connections come from the environment (AIRFLOW_CONN_<ID>, README "Your own sources"), so nothing here needs a
password written anywhere. The warehouse is the database `sluice_local` of the embedded server, apart from the
demo's, so /data shows your sources only.
"""

import os
import signal
import sys
from pathlib import Path

from sluice_devtools import demo, local_env

DATABASE = "sluice_local"
USAGE = "usage: make run SOURCES=path/to/catalog.yaml  (or python -m sluice_devtools.run_catalog CATALOG)"


def home() -> Path:
    """Where the run keeps Airflow's home and its log (SLUICE_RUN_HOME, default .sluice/run)."""
    return Path(os.environ.get("SLUICE_RUN_HOME") or local_env.STATE / "run")


def check(path: Path) -> list:
    """The catalog's sources, checked as init_schema checks them, before anything starts."""
    from sluice import sources

    return sources.catalog({"sources": sources.load_file(str(path))})


def connections(found: list) -> list[str]:
    """One line per connection the catalog uses: whether the environment defines it (never its value)."""
    lines = []
    for conn_id in dict.fromkeys(source.conn_id for source in found):
        variable = f"AIRFLOW_CONN_{conn_id.upper()}"
        users = ", ".join(source.name for source in found if source.conn_id == conn_id)
        state = "set" if os.environ.get(variable) else (
            f"NOT SET: export {variable}=http://HOST[:PORT]/https (https://HOST) or http://HOST[:PORT]")
        lines.append(f"  {conn_id} ({users}): {variable} {state}")
    return lines


def last_run(url: str) -> tuple | None:
    """(id, status) of the newest etl_runs row; None before the first run made the table."""
    import psycopg

    with psycopg.connect(url) as conn:
        if conn.execute("select to_regclass('etl_runs')").fetchone()[0] is None:
            return None
        return conn.execute("select id, status from etl_runs order by id desc limit 1").fetchone()


def main(argv: list[str]) -> int:
    from sluice.errors import InvalidSource

    if len(argv) != 1 or not argv[0]:
        print(USAGE, file=sys.stderr)
        return 2
    path = Path(argv[0]).resolve()
    try:
        found = check(path)
    except InvalidSource as exc:
        print(f"{path}: {exc}", file=sys.stderr)
        return 2
    url = demo.warehouse_url(DATABASE)
    log = home() / "run.log"
    env = local_env.airflow_env(home() / "airflow", warehouse_url=url, api_url=None, csv_url=None)
    env["SLUICE_SOURCES_FILE"] = str(path)
    print(f"catalog:   {path} ({', '.join(f'{s.name} ({s.kind})' for s in found)})\nwarehouse: {url}\n"
          "connections (from the environment):\n" + "\n".join(connections(found)))
    local_env.migrate(env, log)
    before = last_run(url)
    print(f"running etl_pipeline with `airflow dags test` (log: {log}) ...", flush=True)
    exit_code = local_env.airflow(["dags", "test", "etl_pipeline"], env, log, check=False)
    run = last_run(url)
    if run is None or run == before:  # Airflow stopped before the run was recorded (the DAG did not parse...)
        print(f"airflow dags test exited {exit_code} without recording a run; see {log}:\n{local_env.tail(log)}",
              file=sys.stderr)
        return 1
    print(demo.summary(url))
    if run[1] != "success":
        print(f"\nthe run failed: fix what its error says (above), then run `make run SOURCES={argv[0]}` again",
              file=sys.stderr)
        return 1
    port = int(os.environ.get("SLUICE_API_PORT") or 5000)
    api, base = demo.start_api(url, port=port, log=log)
    first = found[0].name
    print(f"\nthe read API (gunicorn) serves {url.split('?')[0]} on {base} until Ctrl-C:\n"
          f"  curl '{base}/data?source={first}&page_size=5'\n  curl {base}/sources\n  curl {base}/runs\n"
          f"({demo.OPEN_NOTICE})", flush=True)
    # a `kill` stops it as Ctrl-C does: the API with it. SIGINT too, explicitly: a process started in the
    # background of a script inherits SIGINT ignored, and Python then never raises KeyboardInterrupt
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        api.wait()
    except KeyboardInterrupt:
        print("stopping the API")
    finally:
        api.terminate()
        api.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
