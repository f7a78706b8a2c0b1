"""gunicorn.conf.py under a real gunicorn: clients that send half a request and stall do not stop the API,
and every launcher (make serve, make up, make demo, compose) starts gunicorn with that file."""

import os
import re
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from webapp_fixtures import catalog, free_port, insert_records

from sluice_devtools import demo

REPO = Path(__file__).resolve().parents[1]
WORKERS = 2
SLOW_CLIENTS = 3 * WORKERS  # with sync workers, WORKERS of them already stop every answer


class Gunicorn:
    """gunicorn started as the launchers start it (demo.gunicorn_argv), on a free loopback port; its
    output is in .output once the block ends."""

    def __init__(self, database_url: str, cwd: Path, *extra: str):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.output = ""
        self._env = {**os.environ, "DATABASE_URL": database_url, "SLUICE_BIND": f"127.0.0.1:{self.port}",
                     "SLUICE_WORKERS": str(WORKERS), "SLUICE_POOL_MIN": "1", "SLUICE_AUTH": "none"}
        self._argv, self._cwd = [*demo.gunicorn_argv(), *extra], cwd

    def __enter__(self) -> "Gunicorn":
        self._process = subprocess.Popen(self._argv, cwd=self._cwd, env=self._env, stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 30
        while True:
            try:
                get(f"{self.base}/", timeout=2)
                return self
            except OSError:
                if self._process.poll() is not None or time.monotonic() > deadline:
                    self.__exit__()
                    raise AssertionError(f"gunicorn did not start:\n{self.output}") from None
                time.sleep(0.2)

    def __exit__(self, *exc) -> None:
        self._process.terminate()
        self.output, _ = self._process.communicate(timeout=60)


def get(url: str, timeout: float) -> int:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        response.read()
        return response.status


def stall(port: int, count: int) -> list[socket.socket]:
    """Clients that send half a request line and headers, then nothing."""
    clients = []
    for _ in range(count):
        client = socket.create_connection(("127.0.0.1", port))
        client.sendall(b"GET /data HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        clients.append(client)
    time.sleep(0.5)  # every worker has taken its slow clients in
    return clients


def timed_get(url: str, timeout: float = 3.0) -> tuple[int | None, float]:
    started = time.monotonic()
    try:
        status = get(url, timeout)
    except (TimeoutError, urllib.error.URLError):
        status = None
    return status, time.monotonic() - started


@pytest.mark.slow
def test_slow_clients_do_not_stall_the_api(database_url, tmp_path):
    insert_records(database_url, catalog(3))
    # started from elsewhere than the checkout: the config finds plugins/ and webapp/ by itself
    with Gunicorn(database_url, tmp_path) as server:
        clients = stall(server.port, SLOW_CLIENTS)
        try:
            answers = [timed_get(f"{server.base}/data?page_size=1") for _ in range(5)]
        finally:
            for client in clients:
                client.close()
    assert all(status == 200 for status, _ in answers), answers
    assert max(seconds for _, seconds in answers) < 2.0, answers  # stalled, it would be never
    assert '"GET /data?page_size=1 HTTP/1.1" 200' in server.output  # the access log goes to stdout
    assert "Using worker: webapp.gunicorn_worker.JsonErrorThreadWorker" in server.output and "Control socket" not in server.output


@pytest.mark.slow
def test_the_same_slow_clients_stop_sync_workers(database_url, tmp_path):
    # the control, so the test above means something: the command line before gunicorn.conf.py ran sync
    # workers, and WORKERS stalled clients kept every request waiting
    with Gunicorn(database_url, tmp_path, "--worker-class", "sync", "--threads", "1") as server:
        clients = stall(server.port, WORKERS)
        try:
            status, seconds = timed_get(f"{server.base}/data?page_size=1")
        finally:
            for client in clients:
                client.close()
    assert status is None and seconds >= 3.0


def test_every_launcher_starts_gunicorn_with_the_config():
    config = REPO / "gunicorn.conf.py"
    assert demo.gunicorn_argv()[1:] == ["--config", str(config)]  # make demo, and make up (stack.py)
    stack = (REPO / "devtools" / "sluice_devtools" / "stack.py").read_text()
    assert "demo.gunicorn_argv()" in stack and "--workers" not in stack
    serve = re.search(r"^serve:.*?(?=^\S)", (REPO / "Makefile").read_text(), re.MULTILINE | re.DOTALL).group(0)
    assert "gunicorn --config gunicorn.conf.py" in serve and "--workers" not in serve
    # docker-compose.yaml: tests/test_compose.py::test_webapp_runs_gunicorn_with_the_config
