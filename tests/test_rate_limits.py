"""Rate limits (webapp/rate_limits.py, webapp/proxies.py): the budget per address (and per principal), /health's
own bucket, the headers and the 429, who the client is behind a proxy, Redis shared by two gunicorn workers and
Redis going away."""

import concurrent.futures
import contextlib
import http.client
import logging
import os
import re
import subprocess
import sys
import time

import pytest
import redis

from auth_fixtures import bearer, create_key, reader_role
from webapp import create_app
from webapp_fixtures import catalog, free_port, insert_records, make_app  # noqa: F401  # a fixture

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RATE_HEADERS = ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset", "RateLimit-Policy")


@pytest.fixture(scope="module")
def database(make_database):
    url = make_database()
    insert_records(url, catalog(3))
    return url


def get(client, path, address, **headers):
    return client.get(path, headers=headers, environ_base={"REMOTE_ADDR": address})


def rate_headers(response) -> dict:
    return {name: response.headers.get(name) for name in (*RATE_HEADERS, "Retry-After")}


@contextlib.contextmanager
def redis_server(port: int):
    """A real redis-server on loopback, without persistence; stopped (SIGTERM) on exit."""
    server = subprocess.Popen(["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                               "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port, socket_timeout=1)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert server.poll() is None and time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.02)
        yield client
    finally:
        client.close()
        server.terminate()
        server.wait(timeout=10)


def ours(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == "webapp.rate_limits"]


def limit_keys(client: redis.Redis) -> list[str]:
    return sorted(key.decode() for key in client.keys("LIMITS:*"))


def test_each_address_has_a_budget_for_every_route_and_a_429_that_says_when(make_app, database):
    client = make_app(database, AUTH="none", RATELIMIT_ANONYMOUS="3 per minute").test_client()
    # every route draws on one budget, an unknown path too (flask-limiter alone would not count a 404's path)
    answers = [get(client, path, "192.0.2.1") for path in ("/data", "/stats", "/no/such/path")]
    assert [answer.status_code for answer in answers] == [200, 200, 404]
    assert [answer.headers["RateLimit-Remaining"] for answer in answers] == ["2", "1", "0"]
    first = rate_headers(answers[0])
    assert first["RateLimit-Limit"] == "3" and first["RateLimit-Policy"] == "3;w=60"
    assert 0 < int(first["RateLimit-Reset"]) <= 60 and first["Retry-After"] is None

    refused = get(client, "/data", "192.0.2.1")
    assert refused.status_code == 429
    assert refused.get_json() == {"code": 429, "status": "Too Many Requests", "errors": {},
                                  "message": "too many requests from this address: the limit is 3 per 1 minute"}
    headers = rate_headers(refused)
    assert headers["RateLimit-Remaining"] == "0" and 1 <= int(headers["Retry-After"]) <= 60
    assert headers["Retry-After"] == headers["RateLimit-Reset"] or int(headers["RateLimit-Reset"]) == 0

    # another address has its own budget; an IPv6 client's is its /64, so rotating addresses does not escape
    assert get(client, "/data", "192.0.2.2").headers["RateLimit-Remaining"] == "2"
    assert [get(client, "/", f"2001:db8::{n}").status_code for n in range(1, 5)] == [200, 200, 200, 429]
    assert get(client, "/", "2001:db8:0:1::1").status_code == 200
    assert get(client, "/", "::ffff:192.0.2.2").headers["RateLimit-Remaining"] == "1"  # that IPv4 client's


def test_health_has_its_own_bucket_so_clients_cannot_starve_probes(make_app, database):
    client = make_app(database, AUTH="none", RATELIMIT_ANONYMOUS="2 per minute",
                      RATELIMIT_HEALTH="3 per minute").test_client()
    assert [get(client, "/stats", "192.0.2.9").status_code for _ in range(3)] == [200, 200, 429]
    probes = [get(client, "/health", "192.0.2.9") for _ in range(4)]  # the probe's address is spent: still served
    assert [probe.status_code for probe in probes[:3]] == [503] * 3  # no run yet: answered, not limited
    assert probes[0].headers["RateLimit-Limit"] == "3"
    assert probes[3].status_code == 429 and "/health" in probes[3].get_json()["message"]
    # and probes do not spend the API's budget
    assert [get(client, "/health", "192.0.2.10").status_code for _ in range(3)] == [503] * 3
    assert get(client, "/stats", "192.0.2.10").headers["RateLimit-Remaining"] == "1"


def test_x_forwarded_for_is_believed_only_from_the_listed_proxies(make_app, database):
    # by default a spoofed header changes nothing: every request below counts against the peer
    client = make_app(database, AUTH="none", RATELIMIT_ANONYMOUS="2 per minute").test_client()
    spoofed = [get(client, "/", "192.0.2.1", **{"X-Forwarded-For": f"198.51.100.{n}"}).status_code
               for n in range(3)]
    assert spoofed == [200, 200, 429]

    client = make_app(database, AUTH="none", RATELIMIT_ANONYMOUS="2 per minute",
                      FORWARDED_ALLOW_IPS="10.0.0.0/8").test_client()
    # from the proxy: the last entry (the one the proxy appended) is the client; what the client sent before it
    # is its own claim and changes nothing
    via_proxy = [get(client, "/", "10.1.2.3", **{"X-Forwarded-For": f"198.51.100.{n}, 203.0.113.7"}).status_code
                 for n in range(3)]
    assert via_proxy == [200, 200, 429]
    assert get(client, "/", "10.1.2.3", **{"X-Forwarded-For": "203.0.113.8"}).status_code == 200  # another client
    # a peer that is not a listed proxy cannot borrow a client's budget, nor get a fresh one
    assert get(client, "/", "192.0.2.1", **{"X-Forwarded-For": "203.0.113.9"}).headers["RateLimit-Remaining"] == "1"
    assert get(client, "/", "192.0.2.1", **{"X-Forwarded-For": "203.0.113.10"}).headers["RateLimit-Remaining"] == "0"


def test_each_key_has_its_budget_and_bad_credentials_lock_an_address_out_before_any_is_checked(
        make_app, database, caplog):
    with reader_role(database) as reader_url:
        app = make_app(reader_url, AUTH="keys", ADMIN_DATABASE_URL=database, RATELIMIT_DEFAULT="3 per minute",
                       RATELIMIT_ANONYMOUS="100 per minute", RATELIMIT_BAD_CREDENTIALS="2 per minute")
        alpha, beta = create_key(app, "alpha", "*"), create_key(app, "beta", "*")
        client = app.test_client()
        # a key's budget follows the key, from whatever address it comes
        answers = [get(client, "/stats", f"192.0.2.{n}", **bearer(alpha)) for n in range(4)]
        assert [answer.status_code for answer in answers] == [200, 200, 200, 429]
        assert answers[3].get_json()["message"] == "too many requests from key:alpha: the limit is 3 per 1 minute"
        assert get(client, "/stats", "192.0.2.0", **bearer(beta)).headers["RateLimit-Remaining"] == "2"

        # missing credentials are not guesses: they do not count
        assert [get(client, "/stats", "198.51.100.1").status_code for _ in range(3)] == [401] * 3
        wrong = bearer("sluice_" + "A" * 43)
        caplog.set_level(logging.INFO, logger="sluice.audit")
        refused = [get(client, "/stats", "198.51.100.1", **wrong) for _ in range(2)]
        assert [answer.status_code for answer in refused] == [401, 401]
        assert [answer.headers["RateLimit-Remaining"] for answer in refused] == ["1", "0"]
        checked = len([record for record in caplog.records if record.name == "sluice.audit"])
        # the address is locked out: even a good key is refused, and a bad one is not even looked up
        locked = [get(client, "/stats", "198.51.100.1", **credential) for credential in (bearer(beta), wrong)]
        assert [answer.status_code for answer in locked] == [429, 429]
        assert locked[0].get_json()["message"].startswith("too many refused credentials from this address (2 per 1")
        assert 1 <= int(locked[0].headers["Retry-After"]) <= 60
        assert len([record for record in caplog.records if record.name == "sluice.audit"]) == checked
        # what needs no credential still answers there; other addresses are not affected
        assert get(client, "/openapi.json", "198.51.100.1").status_code == 200
        assert get(client, "/stats", "198.51.100.2", **bearer(beta)).status_code == 200


@pytest.mark.parametrize("setting, value, message", [
    ("RATELIMIT_DEFAULT", "lots", "SLUICE_RATELIMIT_DEFAULT='lots' is not a rate limit like '600 per minute'"),
    ("RATELIMIT_ANONYMOUS", "0 per minute", "SLUICE_RATELIMIT_ANONYMOUS='0 per minute' is not a rate limit"),
    ("RATELIMIT_ENABLED", "yes", "SLUICE_RATELIMIT_ENABLED='yes' must be true or false"),
    ("RATELIMIT_STORAGE_URI", "mongodb://db", "SLUICE_RATELIMIT_STORAGE_URI: 'mongodb' is not one of memory://"),
    ("FORWARDED_ALLOW_IPS", "10.0.0.1,proxy", "SLUICE_FORWARDED_ALLOW_IPS: 'proxy' is not an address"),
])
def test_a_wrong_setting_stops_the_app_at_start_naming_it(setting, value, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        create_app({"DATABASE_URL": "postgresql:///x", setting: value})


def test_limits_switched_off_send_no_headers_and_no_429(make_app, database):
    client = make_app(database, AUTH="none", RATELIMIT_ENABLED=False, RATELIMIT_ANONYMOUS="1 per minute").test_client()
    answers = [get(client, "/", "192.0.2.1") for _ in range(3)]
    assert [answer.status_code for answer in answers] == [200] * 3
    assert not any(name in answer.headers for answer in answers for name in RATE_HEADERS)


def test_without_redis_each_worker_counts_in_memory_says_so_once_and_shares_again_when_it_is_back(
        make_app, database, caplog):
    port = free_port()
    app = make_app(database, AUTH="none", RATELIMIT_ANONYMOUS="3 per minute",
                   RATELIMIT_STORAGE_URI=f"redis://127.0.0.1:{port}/0")
    client = app.test_client()
    caplog.set_level(logging.WARNING, logger="webapp.rate_limits")
    with redis_server(port) as store:
        assert [get(client, "/", "192.0.2.1").status_code for _ in range(2)] == [200, 200]
        assert any("192.0.2.1" in key for key in limit_keys(store))  # counted in Redis
    # Redis is gone (stopped): fail open, but the limit still holds within this process
    started = time.monotonic()
    down = [get(client, "/", "192.0.2.1") for _ in range(5)]
    assert [answer.status_code for answer in down] == [200, 200, 200, 429, 429]
    assert time.monotonic() - started < 2  # a refused connection costs no timeout per request
    assert down[0].headers["RateLimit-Remaining"] == "2"  # memory starts counting afresh
    assert ours(caplog) == [f"rate limit storage redis://127.0.0.1:{port}/0 does not answer: each worker counts in "
                        "its own memory until it does"]  # once, not once per request
    caplog.clear()
    with redis_server(port) as store:  # back (empty): the counters try it again after 1, 2, 4 ... s
        deadline = time.monotonic() + 10
        for probe in range(10, 255):  # a new address each time: none runs out of its budget while waiting
            assert get(client, "/", f"192.0.2.{probe}").status_code == 200
            if limit_keys(store):
                break
            assert time.monotonic() < deadline, "the limits never went back to Redis"
            time.sleep(0.2)
        assert ours(caplog) == [
            f"rate limit storage redis://127.0.0.1:{port}/0 answers again: limits are shared again"]


def commands(store: redis.Redis) -> dict[str, int]:
    """Redis's count of each command it ran (INFO commandstats), INFO's own calls left out."""
    return {name.removeprefix("cmdstat_"): stats["calls"] for name, stats in store.info("commandstats").items()
            if name not in ("cmdstat_info", "cmdstat_config|resetstat")}


def test_with_redis_each_request_costs_one_script_call_that_guards_and_counts(make_app, database):
    port = free_port()
    with reader_role(database) as reader_url, redis_server(port) as store:
        app = make_app(reader_url, AUTH="keys", ADMIN_DATABASE_URL=database, RATELIMIT_DEFAULT="5 per minute",
                       RATELIMIT_STORAGE_URI=f"redis://127.0.0.1:{port}/0")
        key = bearer(create_key(app, "gamma", "*"))
        client = app.test_client()
        assert get(client, "/stats", "192.0.2.1", **key).status_code == 200  # loads the script (NOSCRIPT first)
        store.config_resetstat()
        answers = [get(client, "/stats", "192.0.2.1", **key) for _ in range(5)]
        assert [answer.status_code for answer in answers] == [200, 200, 200, 200, 429]
        assert [answer.headers["RateLimit-Remaining"] for answer in answers] == ["3", "2", "1", "0", "0"]
        # one round trip each: the guard's check, the count and the window's end in one script (Redis counts the
        # commands a script runs too: one of each per request)
        assert commands(store) == {"evalsha": 5, "get": 5, "incr": 5, "pttl": 5}, commands(store)
        # a refused credential: authentication refused it before the budget's call, so one call too, the guard's unit
        store.config_resetstat()
        assert get(client, "/stats", "192.0.2.1", **bearer("sluice_" + "A" * 43)).status_code == 401
        assert commands(store) == {"evalsha": 1, "incr": 1, "pttl": 1, "pexpire": 1}, commands(store)


def test_with_redis_an_address_locked_out_through_another_process_gets_429s_whatever_it_sends(
        make_app, database):
    """Two apps on one Redis stand for two workers: the second never saw the refused credentials, yet refuses a
    good key and a bad one alike (a 401 for the bad one would tell a guesser which was good)."""
    port = free_port()
    with reader_role(database) as reader_url, redis_server(port):
        settings = {"AUTH": "keys", "ADMIN_DATABASE_URL": database, "RATELIMIT_BAD_CREDENTIALS": "2 per minute",
                    "RATELIMIT_STORAGE_URI": f"redis://127.0.0.1:{port}/0"}
        first, second = make_app(reader_url, **settings), make_app(reader_url, **settings)
        good, wrong = bearer(create_key(first, "delta", "*")), bearer("sluice_" + "B" * 43)
        other = second.test_client()
        assert get(other, "/stats", "198.51.100.7", **good).status_code == 200
        assert [get(first.test_client(), "/stats", "198.51.100.7", **wrong).status_code for _ in range(3)] == [
            401, 401, 429]
        answers = [get(other, "/stats", "198.51.100.7", **credential) for credential in (good, wrong, good)]
        assert [answer.status_code for answer in answers] == [429, 429, 429]
        assert all(answer.get_json()["message"].startswith("too many refused credentials") for answer in answers)
        assert all("WWW-Authenticate" not in answer.headers and 1 <= int(answer.headers["Retry-After"]) <= 60
                   for answer in answers)
        assert get(other, "/stats", "198.51.100.8", **good).status_code == 200  # another address is not affected


def status_of(port: int, path: str) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)  # a fresh connection: any worker
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


@contextlib.contextmanager
def gunicorn_workers(database_url: str, logs, **env):
    """The app under gunicorn with two workers (gunicorn.conf.py), each access line "<worker pid> <status>";
    returns once both workers booted."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py", "--bind", f"127.0.0.1:{port}",
         "--workers", "2", "--threads", "4", "--access-logfile", str(logs / "access.log"),
         "--access-logformat", "%(p)s %(s)s", "--error-logfile", str(logs / "error.log"), "webapp.wsgi:app"],
        cwd=REPO, env={**os.environ, "DATABASE_URL": database_url, "SLUICE_POOL_MIN": "1", **env},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not ((logs / "error.log").exists()
                   and (logs / "error.log").read_text().count("Booting worker with pid") == 2):
            assert server.poll() is None and time.monotonic() < deadline, "gunicorn did not start two workers"
            time.sleep(0.1)
        while True:
            try:
                status_of(port, "/health")  # its own bucket: the budget under test stays whole
                break
            except ConnectionError:
                assert server.poll() is None and time.monotonic() < deadline, "gunicorn did not answer"
                time.sleep(0.1)
        yield port
    finally:
        server.terminate()
        server.wait(timeout=30)


def answers_by_worker(access_log) -> dict[str, list[str]]:
    answers = {}  # worker pid -> its statuses
    for line in access_log.read_text().splitlines():
        pid, status = line.split()
        if status in ("200", "429"):  # not the /health probe
            answers.setdefault(pid, []).append(status)
    return answers


@pytest.mark.slow
def test_two_gunicorn_workers_share_one_budget_through_redis(database, tmp_path):
    redis_port = free_port()
    with redis_server(redis_port) as store, gunicorn_workers(
            database, tmp_path, SLUICE_RATELIMIT_STORAGE_URI=f"redis://127.0.0.1:{redis_port}/0",
            SLUICE_AUTH="none", SLUICE_RATELIMIT_ANONYMOUS="20 per minute") as port:
        statuses = []
        with concurrent.futures.ThreadPoolExecutor(8) as pool:  # concurrent, so both workers take requests
            for _wave in range(5):  # the kernel may hand one worker a whole wave: another, until both answered
                statuses += pool.map(lambda _: status_of(port, "/data?page_size=1"), range(40))
                if len(answers_by_worker(tmp_path / "access.log")) == 2:
                    break
        assert statuses.count(200) == 20 and statuses.count(429) == len(statuses) - 20, statuses
        assert limit_keys(store), "the counters are in Redis"
    answers = answers_by_worker(tmp_path / "access.log")
    # Both workers answered, and one refused requests although it had served fewer than 20 itself: it counted
    # the other's (with memory:// each would serve 20 before its first 429).
    assert len(answers) == 2, answers
    assert any("429" in statuses and statuses.count("200") < 20 for statuses in answers.values()), answers
