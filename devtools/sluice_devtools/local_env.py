"""Environment for running Airflow on this checkout: AIRFLOW_HOME, folders and connections under .sluice/."""

import os
import subprocess  # nosec B404 # developer tooling runs fixed argv lists, never a shell
import sys
from pathlib import Path

from sluice_devtools import embedded_pg

# The checkout these tools drive: devtools/sluice_devtools/ is installed editable, so __file__ stays in it.
REPO = Path(__file__).resolve().parents[2]
STATE = REPO / ".sluice"


def airflow_env(airflow_home: Path, *, warehouse_url: str, api_url: str | None, csv_url: str | None) -> dict:
    """Variables that point Airflow at this repo's dags/ and plugins/ and define the three connections."""
    env = {
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "SLUICE_STAGING_URL": os.environ.get("SLUICE_STAGING_URL", f"file://{STATE / 'staging'}"),
        "AIRFLOW_CONN_ETL_POSTGRES": airflow_conn_uri(warehouse_url),
        "SLUICE_RETRY_DELAY": os.environ.get("SLUICE_RETRY_DELAY", "2"),
        # set, so no library of Airflow's processes warns that it is not
        "XDG_RUNTIME_DIR": embedded_pg.runtime_dir(),
    }
    if api_url:
        env["AIRFLOW_CONN_ETL_API"] = api_url
    if csv_url:
        env["AIRFLOW_CONN_ETL_CSV"] = csv_url
    return env


def migrate(env: dict, log: Path) -> None:
    """Create or upgrade Airflow's metadata DB (SQLite under AIRFLOW_HOME) once."""
    marker = Path(env["AIRFLOW_HOME"]) / ".migrated"
    if marker.exists():
        return
    Path(env["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)
    airflow(["db", "migrate"], env, log)
    marker.touch()


def airflow(args: list[str], env: dict, log: Path, *, check: bool = True) -> int:
    """Run the airflow CLI of this venv, its output appended to log; raise with the log's tail on failure, unless
    check is false (`airflow dags test` exits 1 when the run fails: its record says why); return its exit code."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        argv = [str(Path(sys.executable).with_name("airflow")), *args]
        result = subprocess.run(argv,  # nosec B603 # our own airflow CLI, fixed argv
                                env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT)
    if check and result.returncode != 0:
        raise RuntimeError(f"airflow {' '.join(args)} exited {result.returncode}; see {log}:\n" + tail(log))
    return result.returncode


def tail(log: Path, lines: int = 30) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def airflow_conn_uri(libpq_url: str) -> str:
    """A libpq URL as an Airflow connection URI: a socket directory goes percent-encoded in the host part."""
    from urllib.parse import quote

    import psycopg

    info = psycopg.conninfo.conninfo_to_dict(libpq_url)
    auth = quote(info.get("user", "postgres"), safe="")
    if info.get("password"):
        auth += ":" + quote(info["password"], safe="")
    host = quote(info.get("host", "localhost"), safe="")
    port = f":{info['port']}" if info.get("port") else ""
    return f"postgresql://{auth}@{host}{port}/{quote(info.get('dbname', 'postgres'), safe='')}"
