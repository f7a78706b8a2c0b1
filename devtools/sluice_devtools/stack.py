"""`make up` / `make down`: the whole stack on one machine, every process tracked by a pid file.

up: embedded Postgres (unless DATABASE_URL is set), the sample sources on 127.0.0.1, `airflow standalone`
(api-server with the UI, scheduler, dag-processor, triggerer) on this checkout's dags/ and plugins/,
and the Flask API under gunicorn. down: stops exactly those processes, by pid.
"""

import json
import os
import signal
import subprocess  # nosec B404 # developer tooling runs fixed argv lists, never a shell
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from sluice_devtools import demo, embedded_pg, local_env

LOCAL_BUNDLE = "airflow.dag_processing.bundles.local.LocalDagBundle"


@dataclass(frozen=True)
class StackConfig:
    home: Path
    ui_port: int = 8080
    api_port: int = 5000
    samples_port: int = 8765
    # a second DAG folder beside dags/ (the tests' downstream DAGs); None: dags/ only
    extra_dags: Path | None = None

    @classmethod
    def from_env(cls) -> "StackConfig":
        return cls(
            home=Path(os.environ.get("SLUICE_STACK_HOME", local_env.STATE / "stack")),
            ui_port=int(os.environ.get("SLUICE_UI_PORT", 8080)),
            api_port=int(os.environ.get("SLUICE_API_PORT", 5000)),
            samples_port=int(os.environ.get("SLUICE_SAMPLES_PORT", 8765)),
        )

    @property
    def airflow_home(self) -> Path:
        return self.home / "airflow"

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.ui_port}"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def pid_file(self, name: str) -> Path:
        return self.home / "pids" / f"{name}.pid"

    def log_file(self, name: str) -> Path:
        return self.home / "logs" / f"{name}.log"


def _spawn(config: StackConfig, name: str, argv: list[str], env: dict) -> int:
    """Start a process in its own session (so down can stop its children too) and record its pid."""
    for path in (config.pid_file(name), config.log_file(name)):
        path.parent.mkdir(parents=True, exist_ok=True)
    with open(config.log_file(name), "ab") as log:
        process = subprocess.Popen(argv,  # nosec B603 # argv built here from fixed parts
                                   env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True, cwd=local_env.REPO)
    config.pid_file(name).write_text(str(process.pid))
    return process.pid


def _wait_http(url: str, name: str, config: StackConfig, timeout: float, accept=(200,)) -> float:
    started = time.monotonic()
    pid = int(config.pid_file(name).read_text())
    while time.monotonic() - started < timeout:
        if not _alive(pid):
            raise RuntimeError(f"{name} exited while starting; see {config.log_file(name)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # nosec B310 # loopback http URL we built
                if response.status in accept:
                    return time.monotonic() - started
        except urllib.error.HTTPError as exc:
            if exc.code in accept:
                return time.monotonic() - started
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{name} did not answer {url} within {timeout:.0f}s; see {config.log_file(name)}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie child of this process still answers kill(0); waitpid tells it has exited
    try:
        return os.waitpid(pid, os.WNOHANG) == (0, 0)
    except ChildProcessError:
        return True


def admin_password(config: StackConfig) -> str:
    path = config.airflow_home / "simple_auth_manager_passwords.json.generated"
    return json.loads(path.read_text())["admin"]


def up(config: StackConfig) -> dict:
    started = time.monotonic()
    if any(config.pid_file(name).exists() for name in ("airflow", "webapp", "samples")):
        raise RuntimeError(f"a stack is already running from {config.home}; run `make down` first")
    embedded_was_running = (local_env.STATE / "pg" / "postmaster.pid").exists()
    warehouse = demo.warehouse_url()
    if not os.environ.get("DATABASE_URL") and not embedded_was_running:
        config.pid_file("postgres").parent.mkdir(parents=True, exist_ok=True)
        config.pid_file("postgres").write_text((local_env.STATE / "pg" / "postmaster.pid").read_text().split()[0])
    bin_dir = Path(sys.executable).parent
    samples = f"http://127.0.0.1:{config.samples_port}"
    _spawn(config, "samples", [sys.executable, "-m", "sluice_devtools.serve_samples", str(config.samples_port)], {})
    env = local_env.airflow_env(config.airflow_home, warehouse_url=warehouse, api_url=samples, csv_url=samples)
    env.update({
        "AIRFLOW__API__PORT": str(config.ui_port),
        "AIRFLOW__API__HOST": "127.0.0.1",
        # each LocalExecutor worker is a ~150 MB process; a laptop stack needs few
        "AIRFLOW__CORE__PARALLELISM": os.environ.get("AIRFLOW__CORE__PARALLELISM", "4"),
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__API__BASE_URL": config.ui_url,
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{config.ui_url}/execution/",
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
        "SLUICE_RETRY_DELAY": os.environ.get("SLUICE_RETRY_DELAY", "10"),
        # standalone starts its components as `airflow …` from PATH
        "PATH": os.pathsep.join([str(bin_dir), os.environ.get("PATH", "")]),
    })
    if config.extra_dags:
        env["AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST"] = json.dumps([
            {"name": "dags-folder", "classpath": LOCAL_BUNDLE, "kwargs": {}},
            {"name": "extra-dags", "classpath": LOCAL_BUNDLE, "kwargs": {"path": str(config.extra_dags)}}])
    config.airflow_home.mkdir(parents=True, exist_ok=True)
    _spawn(config, "airflow", [str(bin_dir / "airflow"), "standalone"], env)
    _spawn(config, "webapp", demo.gunicorn_argv(),
           {"DATABASE_URL": warehouse, "SLUICE_BIND": f"127.0.0.1:{config.api_port}", **demo.LOCAL_AUTH})
    _wait_http(f"{samples}/posts", "samples", config, 20)
    _wait_http(f"{config.api_url}/", "webapp", config, 30)
    _wait_http(f"{config.ui_url}/api/v2/version", "airflow", config, 180, accept=(200, 401, 403))
    return {"seconds": time.monotonic() - started, "warehouse": warehouse}


def down(config: StackConfig) -> list[str]:
    """Stop the processes up started (their whole sessions), newest first; then the embedded server it used."""
    stopped = []
    for name in ("webapp", "airflow", "samples"):
        pid_file = config.pid_file(name)
        if not pid_file.exists():
            continue
        pid = int(pid_file.read_text())
        _stop_group(pid)
        pid_file.unlink()
        stopped.append(f"{name} (pid {pid})")
    if config.pid_file("postgres").exists():
        embedded_pg.stop(local_env.STATE / "pg")
        stopped.append(f"embedded postgres (pid {config.pid_file('postgres').read_text()})")
        config.pid_file("postgres").unlink()
    return stopped


def _stop_group(pid: int, timeout: float = 30) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(pid)
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    os.killpg(pid, signal.SIGKILL)
    _reap(pid)


def _reap(pid: int) -> None:
    # when this process started the group (make up in the same process, the e2e test), its leader stays a
    # zombie until waited for, and a zombie still counts as a live group member for killpg(pid, 0)
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass  # not our child: `make down` runs in another process than `make up`


def check_catalog(path: Path, config: StackConfig) -> bool:
    """make up SOURCES=…: the catalog checked before anything starts (the DAG would not parse), and which
    connections the environment defines; False, saying why, when it is invalid."""
    from sluice.errors import InvalidSource

    from sluice_devtools import run_catalog

    try:
        found = run_catalog.check(path)
    except InvalidSource as exc:
        print(f"{path}: {exc}", file=sys.stderr)
        return False
    print(f"catalog: {path} ({', '.join(source.name for source in found)}); connections (from the environment, or "
          f"`AIRFLOW_HOME={config.airflow_home} airflow connections add …` while the stack runs):\n"
          + "\n".join(run_catalog.connections(found)))
    return True


def main(argv: list[str]) -> int:
    config = StackConfig.from_env()
    if argv == ["up"]:
        if os.environ.get("SLUICE_SOURCES_FILE") and not check_catalog(Path(os.environ["SLUICE_SOURCES_FILE"]),
                                                                        config):
            return 2
        info = up(config)
        print(f"Sluice is up in {info['seconds']:.0f}s\n"
              f"  Airflow UI: {config.ui_url}  (login admin / {admin_password(config)})\n"
              f"  Flask API:  {config.api_url}/data  (/health, /stats, /openapi.json; {demo.OPEN_NOTICE})\n"
              f"  warehouse:  {info['warehouse']}\n"
              f"  logs:       {config.home / 'logs'}\n"
              f"Trigger etl_pipeline in the UI, then: curl {config.api_url}/data\n"
              f"Stop with: make down")
        return 0
    if argv == ["down"]:
        stopped = down(config)
        print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
        return 0
    print("usage: python -m sluice_devtools.stack up|down", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
