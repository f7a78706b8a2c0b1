"""webapp.wsgi under a real gunicorn: it starts, answers JSON, logs each request, leaks no version."""

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from webapp_fixtures import catalog, free_port, insert_records

REPO = Path(__file__).resolve().parents[1]


def get(url: str):
    """(status, headers, JSON body) of a GET, for error statuses too."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.headers, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, error.headers, json.load(error)


@pytest.mark.slow
def test_gunicorn_serves_the_app(database_url):
    insert_records(database_url, catalog(3))
    port = free_port()
    env = {**os.environ, "DATABASE_URL": database_url, "SLUICE_POOL_MIN": "1", "SLUICE_AUTH": "none"}
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}",
         "--workers", "1", "--threads", "4", "webapp.wsgi:app"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                status, headers, body = get(f"http://127.0.0.1:{port}/data")
                break
            except (urllib.error.URLError, ConnectionError):
                assert server.poll() is None and time.monotonic() < deadline, "gunicorn did not start"
                time.sleep(0.2)
        assert status == 200 and body["total"] == 3
        assert headers["Server"] == "gunicorn"  # no version number
        assert headers["X-Content-Type-Options"] == "nosniff"
        status, _, body = get(f"http://127.0.0.1:{port}/health")
        assert status == 503 and body["reason"] == "no ETL runs yet"
    finally:
        server.terminate()
        output, _ = server.communicate(timeout=30)
    assert '"path": "/data", "status": 200' in output
    assert '"path": "/health", "status": 503' in output
