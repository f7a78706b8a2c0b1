"""What the rate limits cost a request in-process: `python -m bench.rate_limit_cost redis://127.0.0.1:6379/0`.

GET / (no database) through Flask's test client, 1,000 requests a round, 5 rounds interleaved: limits off,
`memory://`, `redis://` (the URL given; a redis-server on loopback). Prints the medians of wall and CPU time
(this process's, time.process_time) per request. Run it with another checkout first on PYTHONPATH to compare code.
"""

import os
import statistics
import sys
import tempfile
import time

ROUNDS, REQUESTS = 5, 1000


def main(redis_uri: str) -> None:
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="sluice-metrics-"))
    os.environ.setdefault("SLUICE_SCOPE_KEY", "00" * 32)  # signs nothing here: no route below reads the warehouse
    from webapp import create_app

    variants = {"limits off": {"RATELIMIT_ENABLED": False}, "memory://": {},
                "redis://": {"RATELIMIT_STORAGE_URI": redis_uri}}
    apps = {name: create_app({"DATABASE_URL": "postgresql:///unused", "AUTH": "none",
                              "RATELIMIT_ANONYMOUS": "1000000000 per hour", **config})
            for name, config in variants.items()}
    wall, cpu = {name: [] for name in apps}, {name: [] for name in apps}
    for _ in range(ROUNDS):
        for name, app in apps.items():
            client = app.test_client()
            for _ in range(50):
                client.get("/")
            started, used = time.perf_counter(), time.process_time()
            for _ in range(REQUESTS):
                if client.get("/").status_code != 200:
                    raise RuntimeError(f"GET / failed with {name}")
            wall[name].append((time.perf_counter() - started) * 1000 / REQUESTS)
            cpu[name].append((time.process_time() - used) * 1000 / REQUESTS)
    for name in apps:
        print(f"{name:<11} {statistics.median(wall[name]):.3f} ms wall, {statistics.median(cpu[name]):.3f} ms CPU "
              "per request")


if __name__ == "__main__":
    main(sys.argv[1])
