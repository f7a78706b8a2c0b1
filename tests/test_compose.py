"""docker-compose.yaml, .env.example and the Dockerfile: valid, and wired the way the README says.

No Docker engine is needed: `docker-compose config` validates and resolves the file, and the checks read
its output. `make install` provides the docker-compose binary.
"""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "docker-compose.yaml"
ENV_EXAMPLE = REPO / ".env.example"

AIRFLOW_LONG_RUNNING = ("airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer")
AIRFLOW_SERVICES = ("airflow-init", *AIRFLOW_LONG_RUNNING)
LONG_RUNNING = ("postgres", *AIRFLOW_LONG_RUNNING, "webapp")
SERVICES = {"postgres", *AIRFLOW_SERVICES, "webapp"}
# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err}; $${VAR} is an escaped container-side variable.
COMPOSE_VAR = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)")


def compose_vars() -> set[str]:
    return set(COMPOSE_VAR.findall(COMPOSE_FILE.read_text()))


def env_example_vars() -> set[str]:
    lines = (line.strip() for line in ENV_EXAMPLE.read_text().splitlines())
    return {line.split("=", 1)[0] for line in lines if line and not line.startswith("#")}


def docker_compose(*args: str, env_file: Path) -> subprocess.CompletedProcess:
    """docker-compose on this repo with only `env_file` as its .env and none of its variables inherited."""
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.fail("docker-compose missing: run make install")
    env = {key: value for key, value in os.environ.items()
           if key not in compose_vars() and not key.startswith("COMPOSE_")}
    return subprocess.run(
        [binary, "--project-directory", str(REPO), "-f", str(COMPOSE_FILE), "--env-file", str(env_file), *args],
        env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def no_env_file(tmp_path_factory) -> Path:
    empty = tmp_path_factory.mktemp("compose") / "empty.env"
    empty.write_text("")
    return empty


@pytest.fixture(scope="module")
def config(no_env_file) -> dict:
    """The resolved compose file with every variable at its default (no .env)."""
    result = docker_compose("config", env_file=no_env_file)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def service(config: dict, name: str) -> dict:
    return config["services"][name]


def mount_targets(svc: dict) -> dict[str, str]:
    """Container path -> source (host path or volume name) of each volume of a service."""
    targets = {}
    for volume in svc.get("volumes", []):
        if isinstance(volume, dict):
            targets[volume["target"]] = volume.get("source", "")
        else:
            source, target = volume.split(":")[:2]
            targets[target] = source
    return targets


@pytest.mark.parametrize("env_file", ["none", ".env.example"])
def test_compose_file_validates(env_file, no_env_file):
    path = no_env_file if env_file == "none" else ENV_EXAMPLE
    result = docker_compose("config", "-q", env_file=path)
    assert result.returncode == 0, f"docker-compose config -q with {env_file}: {result.stderr}"
    assert "is not set" not in result.stderr, result.stderr  # every variable has a default


def test_expected_services_exist(config):
    assert set(config["services"]) == SERVICES


@pytest.mark.parametrize("name", LONG_RUNNING)
def test_long_running_service_has_healthcheck_and_restarts(config, name):
    svc = service(config, name)
    healthcheck = svc.get("healthcheck", {})
    assert healthcheck.get("test") and not healthcheck.get("disable"), f"{name} has no healthcheck"
    assert svc.get("restart") == "always"


def test_airflow_init_is_one_shot(config):
    # Its exit status is its health: dependants wait for service_completed_successfully.
    svc = service(config, "airflow-init")
    assert "restart" not in svc
    script = "\n".join(svc["command"])
    assert "airflow db migrate" in script
    assert "SIMPLE_AUTH_MANAGER_PASSWORDS_FILE" in script


@pytest.mark.parametrize("name", [*AIRFLOW_SERVICES, "webapp"])
def test_depends_on_healthy_postgres(config, name):
    assert service(config, name)["depends_on"]["postgres"] == {"condition": "service_healthy"}


@pytest.mark.parametrize("name", AIRFLOW_LONG_RUNNING)
def test_waits_for_airflow_init(config, name):
    assert service(config, name)["depends_on"]["airflow-init"] == {"condition": "service_completed_successfully"}


@pytest.mark.parametrize("name, command, probe", [
    ("airflow-apiserver", "api-server", "http://localhost:8080/api/v2/version"),
    ("airflow-scheduler", "scheduler", "http://localhost:8974/health"),
    ("airflow-dag-processor", "dag-processor", "--job-type DagProcessorJob"),
    ("airflow-triggerer", "triggerer", "--job-type TriggererJob"),
])
def test_airflow_command_and_probe(config, name, command, probe):
    svc = service(config, name)
    assert svc["command"] in (command, [command])
    assert probe in " ".join(svc["healthcheck"]["test"])


def test_postgres_holds_the_warehouse_and_a_separate_metadata_db(config):
    svc = service(config, "postgres")
    assert svc["image"] == "postgres:15-alpine"
    assert svc["environment"]["POSTGRES_DB"] == "etl_db"
    assert "pg_isready" in " ".join(svc["healthcheck"]["test"])
    mounts = mount_targets(svc)
    assert Path(mounts["/docker-entrypoint-initdb.d"]) == REPO / "docker" / "postgres-init"
    assert not mounts["/var/lib/postgresql/data"].startswith("/"), "data must live in a named volume"
    init_sql = "\n".join(path.read_text() for path in (REPO / "docker" / "postgres-init").iterdir())
    assert re.search(r"CREATE DATABASE\s+airflow\b", init_sql, re.IGNORECASE)


@pytest.mark.parametrize("name", AIRFLOW_SERVICES)
@pytest.mark.parametrize("variable, expected", [
    ("AIRFLOW__CORE__EXECUTOR", "LocalExecutor"),
    ("AIRFLOW__CORE__EXECUTION_API_SERVER_URL", "http://airflow-apiserver:8080/execution/"),
    ("AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK", "true"),
    ("SLUICE_STAGING_URL", "file:///opt/airflow/staging"),
    ("PYTHONPATH", "/opt/airflow/plugins:/opt/airflow"),
])
def test_airflow_environment(config, name, variable, expected):
    assert service(config, name)["environment"][variable] == expected


@pytest.mark.parametrize("name", AIRFLOW_SERVICES)
def test_metadata_and_warehouse_are_different_databases(config, name):
    env = service(config, name)["environment"]
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].endswith("@postgres:5432/airflow")
    assert env["AIRFLOW_CONN_ETL_POSTGRES"].endswith("@postgres:5432/etl_db")
    assert {"AIRFLOW_CONN_ETL_API", "AIRFLOW_CONN_ETL_CSV"} <= set(env)


def test_airflow_services_share_one_jwt_secret(config):
    secrets = {service(config, name)["environment"].get("AIRFLOW__API_AUTH__JWT_SECRET") for name in AIRFLOW_SERVICES}
    assert len(secrets) == 1 and None not in secrets and len(secrets.pop()) >= 32


@pytest.mark.parametrize("name, paths", [
    *[(name, ("dags", "plugins", "sql")) for name in AIRFLOW_SERVICES],
    ("webapp", ("webapp", "plugins", "sql")),
])
def test_code_is_mounted(config, name, paths):
    mounts = mount_targets(service(config, name))
    for path in paths:
        assert Path(mounts.get(f"/opt/airflow/{path}", "")) == REPO / path, f"{name}: ./{path} not mounted"


@pytest.mark.parametrize("name", AIRFLOW_SERVICES)
def test_staging_volume_is_shared(config, name):
    assert mount_targets(service(config, name)).get("/opt/airflow/staging") == "sluice-staging"


def test_webapp_serves_wsgi_app_and_tolerates_503_health(config):
    svc = service(config, "webapp")
    command = " ".join(svc["command"])
    assert "gunicorn" in command and "webapp.wsgi:app" in command and "--pythonpath=plugins" in command
    assert "0.0.0.0:5000" in command
    assert svc["environment"]["DATABASE_URL"].endswith("@postgres:5432/etl_db")
    probe = svc["healthcheck"]["test"]
    assert "http://localhost:5000/health" in probe
    assert "--fail" not in probe and "-f" not in probe, "/health is 503 before the first run"


def test_every_compose_variable_is_in_env_example():
    missing = compose_vars() - env_example_vars()
    assert not missing, f"add to .env.example: {sorted(missing)}"


def test_env_example_has_no_stale_variables():
    stale = env_example_vars() - compose_vars()
    assert not stale, f"not read by docker-compose.yaml: {sorted(stale)}"


def test_dockerfile_installs_the_pinned_set():
    dockerfile = (REPO / "Dockerfile").read_text()
    pin = re.search(r"^apache-airflow==(\S+)$", (REPO / "requirements.txt").read_text(), re.MULTILINE).group(1)
    assert re.search(rf"^FROM apache/airflow:{re.escape(pin)}-python3\.11\s*$", dockerfile, re.MULTILINE)
    run = " ".join(re.findall(r"^RUN (.+?)(?<!\\)$", dockerfile.replace("\\\n", " "), re.MULTILINE))
    assert "pip install --no-cache-dir" in run
    assert re.search(r"-r \S*requirements\.txt", run) and re.search(r"-c \S*constraints\.txt", run)


@pytest.mark.parametrize("pattern", [".git", ".venv", ".sluice", "bench/work", ".env"])
def test_dockerignore_keeps_local_state_out(pattern):
    lines = (REPO / ".dockerignore").read_text().splitlines()
    assert pattern in lines
