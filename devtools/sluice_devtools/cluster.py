"""Airflow on the CeleryExecutor on loopback, for make test-distributed: Redis (the broker), moto's S3 server
(staging), the metadata DB on a given PostgreSQL, api-server, scheduler, dag-processor and Celery workers.

Each worker has its own TMPDIR, log-server port, host name (127.0.0.N, which Airflow records on its task
instances) and queues, and may run in its own mount namespace with its local staging folder hidden under an
empty tmpfs, so a file another worker wrote there is not there. A cluster policy in the Airflow home
(airflow_local_settings.py) routes tasks to queues. Every process is started in its own session, tracked by
pid and stopped by pid (its whole process group) in stop().
"""

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess  # nosec B404 # developer tooling runs fixed argv lists, never a shell
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from sluice_devtools import local_env, stack

S3_CONN_ID = "sluice_s3"
BUCKET = "sluice-staging"
ADMIN = "admin"
# the cluster policy: each task's queue from a task id → queue mapping (SLUICE_CLUSTER_QUEUES), others to "default"
POLICY = '''"""Cluster policy of a Sluice test cluster: a queue per task id (written by sluice_devtools.cluster)."""
import contextlib
import json
import os


def task_policy(task):
    queues = json.loads(os.environ.get("SLUICE_CLUSTER_QUEUES") or "{}")
    task.queue = queues.get(task.task_id, queues.get("*", task.queue))
'''


def hostname() -> str:
    """core.hostname_callable of the cluster's processes: the name the harness gave this one."""
    return os.environ.get("SLUICE_CLUSTER_HOSTNAME") or socket.getfqdn()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Worker:
    """One Celery worker: its name (also its log file's), host name, the queues it takes and, for a worker
    in its own mount namespace, the local staging folder it must not share (an empty tmpfs over it)."""

    name: str
    hostname: str
    queues: list[str]
    private_staging: Path | None = None
    env: dict = field(default_factory=dict)  # settings of this worker's tasks (SLUICE_STAGING_URL...)
    pid: int | None = None
    log_port: int = field(default_factory=free_port)


class Cluster:
    def __init__(self, home: Path, *, metadata_url: str, warehouse_url: str, sources_url: str,
                 queues: dict[str, str], env: dict | None = None):
        self.home = home
        self.api_port, self.redis_port, self.s3_port = free_port(), free_port(), free_port()
        self.pids: dict[str, int] = {}
        self.workers: list[Worker] = []
        self.env = {
            **local_env.airflow_env(home / "airflow", warehouse_url=warehouse_url, api_url=sources_url,
                                    csv_url=sources_url),
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": sqlalchemy_url(metadata_url),
            "AIRFLOW__CELERY__BROKER_URL": f"redis://127.0.0.1:{self.redis_port}/0",
            "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + sqlalchemy_url(metadata_url),
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": "2",
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": "sluice_devtools.cluster.hostname",
            "SLUICE_CLUSTER_HOSTNAME": "127.0.0.1",
            "SLUICE_CLUSTER_QUEUES": json.dumps(queues),
            # every process signs and checks the task tokens with the same key
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(64),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.api_port),
            "AIRFLOW__API__BASE_URL": self.api_url,
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.api_url}/execution/",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN}:admin",
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
            # only the runs a caller triggers: unpausing must not add the schedule's latest run
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
            "AIRFLOW_CONN_" + S3_CONN_ID.upper(): json.dumps({
                # moto's S3 takes any key
                "conn_type": "aws", "login": "testing", "password": "testing",  # nosec B105 # not a secret
                "extra": {"endpoint_url": self.s3_url, "region_name": "us-east-1"}}),
            "SLUICE_STAGING_URL": self.s3_staging_url,
            **(env or {}),
        }

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def s3_url(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    @property
    def s3_staging_url(self) -> str:
        return f"s3://{S3_CONN_ID}@{BUCKET}/staging"

    def log_file(self, name: str) -> Path:
        return self.home / "logs" / f"{name}.log"

    def start(self) -> float:
        """Redis, the S3 server and its bucket, the metadata DB, api-server, scheduler and dag-processor;
        the seconds it took. Workers start with start_worker."""
        started = time.monotonic()
        config_dir = self.home / "airflow" / "config"
        config_dir.mkdir(parents=True, exist_ok=True)
        (config_dir / "airflow_local_settings.py").write_text(POLICY)
        self._spawn("redis", ["redis-server", "--bind", "127.0.0.1", "--port", str(self.redis_port),
                              "--save", "", "--appendonly", "no", "--dir", str(self.home)])
        self._spawn("s3", [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1",
                           "-p", str(self.s3_port)])
        local_env.airflow(["db", "migrate"], self.env, self.log_file("migrate"))
        self._spawn("api-server", ["airflow", "api-server"])
        self._spawn("scheduler", ["airflow", "scheduler"])
        self._spawn("dag-processor", ["airflow", "dag-processor"])
        self._wait_http(f"{self.s3_url}/", "s3", 30)
        self._create_bucket()
        self._wait_http(f"{self.api_url}/api/v2/version", "api-server", 120, accept=(200, 401, 403))
        return time.monotonic() - started

    def _create_bucket(self) -> None:
        request = urllib.request.Request(f"{self.s3_url}/{BUCKET}", method="PUT")
        with urllib.request.urlopen(request, timeout=10):  # nosec B310 # loopback URL we built
            pass

    def start_worker(self, worker: Worker) -> Worker:
        """A Celery worker taking worker.queues; in its own mount namespace when it has a private staging folder."""
        tmp = self.home / worker.name / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        argv = ["airflow", "celery", "worker", "--queues", ",".join(worker.queues), "--concurrency", "2",
                "--celery-hostname", f"{worker.name}@%h"]
        if worker.private_staging is not None:
            worker.private_staging.mkdir(parents=True, exist_ok=True)
            # unshare and sh exec into the worker: the pid tracked is the worker's own
            argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                    'mount -t tmpfs sluice-staging "$0" && exec "$@"', str(worker.private_staging), *argv]
        worker.pid = self._spawn(worker.name, argv, {
            "TMPDIR": str(tmp),
            "SLUICE_CLUSTER_HOSTNAME": worker.hostname,
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(worker.log_port),
            **worker.env,
        })
        self.workers.append(worker)
        return worker

    def wait_for_workers(self, timeout: float = 90) -> None:
        """Until every worker answers a Celery ping (it is connected and takes tasks)."""
        deadline = time.monotonic() + timeout
        expected = {f"{worker.name}@" for worker in self.workers if _alive(worker.pid)}
        while time.monotonic() < deadline:
            answered = self._celery_ping()
            if all(any(node.startswith(prefix) for node in answered) for prefix in expected):
                return
            time.sleep(1)
        raise TimeoutError(f"workers {sorted(expected)} did not answer a ping within {timeout:.0f}s; "
                           f"see {self.home / 'logs'}")

    def _celery_ping(self) -> list[str]:
        code = ("import json; from airflow.providers.celery.executors.celery_executor import app; "
                "print(json.dumps([n for r in (app.control.ping(timeout=2) or []) for n in r]))")
        done = subprocess.run([sys.executable, "-c", code], env={**os.environ, **self.env},  # nosec B603
                              capture_output=True, text=True, timeout=60)
        lines = done.stdout.strip().splitlines()
        return json.loads(lines[-1]) if done.returncode == 0 and lines else []

    def kill_worker(self, worker: Worker) -> None:
        """SIGKILL the worker and every process under it (task processes run in sessions of their own):
        a machine that died."""
        for pid in [worker.pid, *descendants(worker.pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _reap(worker.pid)
        self.pids.pop(worker.name, None)

    def stop_workers(self) -> None:
        for worker in self.workers:
            self._stop(worker.name)
        self.workers = []

    def stop(self) -> None:
        """Stop every process started here, newest first, by pid (its process group, then whatever it started
        in sessions of its own)."""
        for name in reversed(list(self.pids)):
            self._stop(name)

    def _stop(self, name: str) -> None:
        pid = self.pids.pop(name, None)
        if pid is None:
            return
        below = descendants(pid)
        stack._stop_group(pid, timeout=20)
        for child in below:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)

    def _spawn(self, name: str, argv: list[str], env: dict | None = None) -> int:
        self.log_file(name).parent.mkdir(parents=True, exist_ok=True)
        executable = shutil.which(argv[0], path=self.env["PATH"]) or argv[0]
        with open(self.log_file(name), "ab") as log:
            process = subprocess.Popen([executable, *argv[1:]],  # nosec B603 # argv built here from fixed parts
                                       env={**os.environ, **self.env, **(env or {})}, stdout=log,
                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                       cwd=self.home)
        self.pids[name] = process.pid
        return process.pid

    def _wait_http(self, url: str, name: str, timeout: float, accept=(200,)) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not _alive(self.pids[name]):
                raise RuntimeError(f"{name} exited while starting; see {self.log_file(name)}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:  # nosec B310 # loopback URL we built
                    if response.status in accept:
                        return
            except urllib.error.HTTPError as exc:
                if exc.code in accept:
                    return
            except OSError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"{name} did not answer {url} within {timeout:.0f}s; see {self.log_file(name)}")

    # The REST API, as a user triggers and watches runs

    def token(self) -> str:
        password = json.loads((self.home / "airflow" / "simple_auth_manager_passwords.json.generated")
                              .read_text())[ADMIN]
        return self._call("POST", "/auth/token", {"username": ADMIN, "password": password}, token=None)["access_token"]

    def api(self, method: str, path: str, body: dict | None = None) -> dict:
        return self._call(method, f"/api/v2{path}", body, token=self.token())

    def _call(self, method: str, path: str, body: dict | None, token: str | None) -> dict:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        request = urllib.request.Request(self.api_url + path, data=json.dumps(body).encode() if body else None,
                                         headers=headers, method=method)
        with urllib.request.urlopen(request, timeout=30) as response:  # nosec B310 # loopback URL we built
            return json.loads(response.read() or b"{}")

    def trigger(self, dag_id: str, conf: dict | None = None) -> str:
        """Unpause the DAG once it is parsed and start a run of it; the run's id."""
        deadline = time.monotonic() + 120
        while True:
            try:
                self.api("PATCH", f"/dags/{dag_id}", {"is_paused": False})
                break
            except urllib.error.HTTPError as exc:
                if exc.code != 404 or time.monotonic() > deadline:
                    raise
                time.sleep(1)  # the dag-processor has not parsed it yet
        return self.api("POST", f"/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": conf or {}})["dag_run_id"]

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 300) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}")["state"]
            if state in ("success", "failed"):
                return state
            time.sleep(1)
        raise TimeoutError(f"run {run_id} of {dag_id} did not finish within {timeout:.0f}s; see {self.home / 'logs'}")

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        return self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances?limit=100")["task_instances"]


def sqlalchemy_url(libpq_url: str) -> str:
    """A libpq URL (the embedded server's: a socket directory as host) as SQLAlchemy's psycopg2 URL."""
    from urllib.parse import quote

    import psycopg

    info = psycopg.conninfo.conninfo_to_dict(libpq_url)
    auth = quote(info.get("user", "postgres"), safe="")
    if info.get("password"):
        auth += ":" + quote(info["password"], safe="")
    host, port = info.get("host", "localhost"), info.get("port")
    if host.startswith("/"):  # a socket directory goes in the query
        query = f"?host={quote(host)}" + (f"&port={port}" if port else "")
        return f"postgresql+psycopg2://{auth}@/{info['dbname']}{query}"
    return f"postgresql+psycopg2://{auth}@{host}{':' + port if port else ''}/{info['dbname']}"


def descendants(pid: int) -> list[int]:
    """The pids of every process under pid (children, theirs, ...), from /proc."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                # the parent pid is the second field after the command name, which may hold spaces
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def _alive(pid: int | None) -> bool:
    return pid is not None and stack._alive(pid)


def _reap(pid: int) -> None:
    stack._reap(pid)
