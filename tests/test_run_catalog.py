"""`make run SOURCES=catalog.yaml` end to end: its entry point runs a user's catalog (a CSV on a loopback HTTP
server, its connection from the environment) through a real DAG run, then serves the read API until stopped."""

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from sluice_devtools import demo, local_env
from sluice_devtools.source_server import SourceServer

CUSTOMERS = b"customer_id,company,seats,notes\nc1,Acme,12,pays yearly\nc2,Globex,3,\nc3,Initech,40,trial\n"
CATALOG = """\
sources:
  - name: customers
    kind: csv
    conn_id: etl_files
    endpoint: exports/customers.csv
    mapping: {source_id: customer_id, name: company, value: seats, description: notes}
"""


def lines_until(process: subprocess.Popen, marker: str, timeout: float) -> list[str]:
    """The process's output lines up to the first holding marker; fails with them when it exits or times out."""
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in iter(process.stdout.readline, "")] + [lines.put(None)],
                     daemon=True).start()
    seen, deadline = [], time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            break
        if line is None:
            pytest.fail(f"make run exited {process.wait()} before {marker!r}:\n" + "".join(seen))
        seen.append(line)
        if marker in line:
            return seen
    pytest.fail(f"no {marker!r} within {timeout:.0f}s:\n" + "".join(seen))


@pytest.fixture
def files():
    with SourceServer() as server:
        server.serve_bytes("exports/customers.csv", CUSTOMERS)
        yield server


def run_catalog(catalog, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "sluice_devtools.run_catalog", str(catalog)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=local_env.REPO)


def test_make_run_loads_a_users_csv_catalog_and_serves_it_until_stopped(files, database_url, tmp_path):
    catalog = tmp_path / "my_sources.yaml"
    catalog.write_text(CATALOG)
    port = demo.free_port()
    env = {**os.environ, "DATABASE_URL": database_url, "SLUICE_RUN_HOME": str(tmp_path / "run"),
           "SLUICE_STAGING_URL": f"file://{tmp_path / 'staging'}", "SLUICE_API_PORT": str(port),
           "AIRFLOW_CONN_ETL_FILES": files.url}
    # what the tests set for their own Airflow: make run uses its own home
    for name in ("AIRFLOW_HOME", "AIRFLOW_CONN_ETL_API", "AIRFLOW_CONN_ETL_CSV", "AIRFLOW_CONN_ETL_POSTGRES"):
        env.pop(name, None)

    process = run_catalog(catalog, env)
    try:
        output = "".join(lines_until(process, "until Ctrl-C", timeout=300))
        assert "etl_files (customers): AIRFLOW_CONN_ETL_FILES set" in output
        assert files.url not in output  # a connection's value is never printed
        assert "status=success" in output and "customers=3" in output
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/data?source=customers&page_size=5") as response:
            body = json.load(response)
        assert sorted((row["source_id"], row["name"], row["value"]) for row in body["data"]) == [
            ("c1", "Acme", 12.0), ("c2", "Globex", 3.0), ("c3", "Initech", 40.0)]
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
    with pytest.raises(OSError):  # the API stopped with it
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)


def test_make_run_refuses_a_catalog_with_a_typo_before_anything_starts(tmp_path):
    catalog = tmp_path / "my_sources.yaml"
    catalog.write_text(CATALOG.replace("endpoint:", "endpiont:"))
    started = time.monotonic()

    result = subprocess.run([sys.executable, "-m", "sluice_devtools.run_catalog", str(catalog)],
                            capture_output=True, text=True, env={**os.environ, "SLUICE_RUN_HOME": str(tmp_path)})

    assert result.returncode == 2 and time.monotonic() - started < 30
    assert f"{catalog}: source 'customers': unknown field 'endpiont'" in result.stderr
    assert not (tmp_path / "airflow").exists()  # nothing was started


def test_make_run_of_a_source_without_its_connection_fails_saying_how_to_define_it(database_url, tmp_path):
    catalog = tmp_path / "my_sources.yaml"
    catalog.write_text(CATALOG)
    env = {**os.environ, "DATABASE_URL": database_url, "SLUICE_RUN_HOME": str(tmp_path / "run"),
           "SLUICE_STAGING_URL": f"file://{tmp_path / 'staging'}"}
    for name in ("AIRFLOW_HOME", "AIRFLOW_CONN_ETL_FILES", "AIRFLOW_CONN_ETL_POSTGRES"):
        env.pop(name, None)

    result = subprocess.run([sys.executable, "-m", "sluice_devtools.run_catalog", str(catalog)],
                            capture_output=True, text=True, env=env, cwd=local_env.REPO, timeout=300)

    assert result.returncode == 1, result.stdout + result.stderr
    assert "AIRFLOW_CONN_ETL_FILES NOT SET: export AIRFLOW_CONN_ETL_FILES=" in result.stdout
    assert ("ingest[customers]: MissingConnection: connection etl_files is not defined: source customers cannot be "
            "read. Define it with `airflow connections add etl_files") in result.stdout
    assert "the run failed" in result.stderr



def test_make_up_with_a_catalog_with_a_typo_starts_nothing(tmp_path, monkeypatch, capsys):
    from sluice_devtools import stack

    catalog = tmp_path / "my_sources.yaml"
    catalog.write_text(CATALOG.replace("endpoint:", "endpiont:"))
    monkeypatch.setenv("SLUICE_SOURCES_FILE", str(catalog))
    monkeypatch.setenv("SLUICE_STACK_HOME", str(tmp_path / "stack"))

    assert stack.main(["up"]) == 2

    assert f"{catalog}: source 'customers': unknown field 'endpiont'" in capsys.readouterr().err
    assert not (tmp_path / "stack").exists()  # no process was started, no pid file written
