"""http_client: bounded retries against a real loopback server that answers 429s, 5xx, stalls and cut bodies."""

import email.utils
import socket
import time

import pytest
import requests

from sluice import http_client
from sluice_devtools.source_server import Fault, SourceServer
from sluice.errors import ConfigError, SourceError, SourceRefused

# Waits go to a recording fake sleep, so realistic backoff numbers cost no time.
POLICY = http_client.RetryPolicy(attempts=4, timeout=5.0, backoff_base=1.0, backoff_max=30.0, retry_after_max=60.0)
BODY = b'[{"id": 1}]'


class RecordingSleep:
    def __init__(self):
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


@pytest.fixture(scope="module")
def shared_server():
    with SourceServer() as running:
        # Clients here hang up on purpose (timeouts, SLUICE_MAX_BYTES); the server's BrokenPipe on its
        # late write is expected, and its traceback would otherwise land in some later test's output.
        running.httpd.handle_error = lambda request, client_address: None
        yield running


@pytest.fixture
def server(shared_server):
    """The module's server with a fresh `items` route: no faults queued, no hits counted."""
    shared_server.serve_bytes("items", BODY, content_type="application/json")
    return shared_server


@pytest.fixture
def session():
    with requests.Session() as opened:
        yield opened


@pytest.fixture
def sleep():
    return RecordingSleep()


def get(session, url, sleep, policy=POLICY):
    response = http_client.get(session, url, source="api", policy=policy, sleep=sleep)
    return b"".join(http_client.iter_body(response, source="api", limit=10_000))


def hits(server, path="items") -> int:
    return len(server.routes[path].hits)


@pytest.mark.parametrize("retry_after, expected_wait", [("3", 3.0), ("0", 0.0), (" 45 ", 45.0)])
def test_429_waits_the_seconds_retry_after_asks_for(server, session, sleep, retry_after, expected_wait):
    server.add_faults("items", Fault(429, headers={"Retry-After": retry_after}))
    assert get(session, f"{server.url}/items", sleep) == BODY
    assert sleep.waits == [expected_wait]
    assert hits(server) == 2


def test_429_waits_until_an_http_date_retry_after(server, session, sleep):
    in_20_seconds = email.utils.formatdate(time.time() + 20, usegmt=True)
    server.add_faults("items", Fault(429, headers={"Retry-After": in_20_seconds}))
    assert get(session, f"{server.url}/items", sleep) == BODY
    [wait] = sleep.waits
    assert 18.5 <= wait <= 20  # an HTTP-date has whole-second resolution


def test_429_with_http_date_in_the_past_retries_at_once(server, session, sleep):
    server.add_faults("items", Fault(429, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}))
    assert get(session, f"{server.url}/items", sleep) == BODY
    assert sleep.waits == [0.0]


@pytest.mark.parametrize("retry_after", [None, "soon", "-5", "1.5"])
def test_429_without_usable_retry_after_backs_off(server, session, sleep, retry_after):
    headers = {} if retry_after is None else {"Retry-After": retry_after}
    server.add_faults("items", Fault(429, headers=headers), Fault(429, headers=headers))
    assert get(session, f"{server.url}/items", sleep) == BODY
    assert len(sleep.waits) == 2
    assert 0.5 <= sleep.waits[0] <= 1.0 and 1.0 <= sleep.waits[1] <= 2.0


@pytest.mark.parametrize("retry_after", ["61", "3600", "Fri, 31 Dec 2100 23:59:59 GMT"])
def test_429_with_retry_after_beyond_the_limit_fails_at_once(server, session, sleep, retry_after):
    server.add_faults("items", Fault(429, headers={"Retry-After": retry_after}))
    with pytest.raises(SourceError) as excinfo:
        get(session, f"{server.url}/items", sleep)
    message = str(excinfo.value)
    assert message.startswith(f"api: GET {server.url}/items answered 429 Too Many Requests with Retry-After ")
    assert message.endswith("longer than the 60s this task waits")
    assert sleep.waits == []
    assert hits(server) == 1


def test_429_with_retry_after_at_the_limit_is_waited_for(server, session, sleep):
    server.add_faults("items", Fault(429, headers={"Retry-After": "60"}))
    assert get(session, f"{server.url}/items", sleep) == BODY
    assert sleep.waits == [60.0]


@pytest.mark.parametrize("status", [408, 500, 502, 503, 504])
def test_408_and_5xx_are_retried_with_growing_backoff_then_succeed(server, session, sleep, status):
    server.add_faults("items", Fault(status, body=b"oops"), Fault(status), Fault(status))
    assert get(session, f"{server.url}/items", sleep) == BODY
    assert hits(server) == 4
    low_high = [(0.5, 1.0), (1.0, 2.0), (2.0, 4.0)]  # full jitter in [ceiling/2, ceiling], ceiling doubling
    assert len(sleep.waits) == 3
    assert all(low <= wait <= high for wait, (low, high) in zip(sleep.waits, low_high))


def test_backoff_is_capped_by_backoff_max(server, session, sleep):
    policy = http_client.RetryPolicy(attempts=6, backoff_base=1.0, backoff_max=3.0)
    server.add_faults("items", *[Fault(503)] * 5)
    assert get(session, f"{server.url}/items", sleep, policy) == BODY
    assert max(sleep.waits) <= 3.0
    assert all(wait >= 1.5 for wait in sleep.waits[2:])


@pytest.mark.parametrize("attempts", [1, 3])
def test_attempts_are_bounded(server, session, sleep, attempts):
    policy = http_client.RetryPolicy(attempts=attempts, backoff_base=0.01)
    server.add_faults("items", *[Fault(503)] * 5)
    with pytest.raises(SourceError) as excinfo:
        get(session, f"{server.url}/items", sleep, policy)
    assert str(excinfo.value) == (
        f"api: GET {server.url}/items failed after {attempts} attempts: answered 503 Service Unavailable")
    assert hits(server) == attempts
    assert len(sleep.waits) == attempts - 1  # no pointless wait after the last attempt


def test_repeated_429_also_ends_after_the_attempts(server, session, sleep):
    server.add_faults("items", *[Fault(429, headers={"Retry-After": "1"})] * 4)
    with pytest.raises(SourceError, match=r"failed after 4 attempts: answered 429 Too Many Requests$"):
        get(session, f"{server.url}/items", sleep)
    assert hits(server) == 4
    assert sleep.waits == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("status, reason, fix", [
    (400, "Bad Request", "check the source's endpoint, parameters and connection"),
    (401, "Unauthorized", "check the login, password or headers of its Airflow connection"),
    (403, "Forbidden", "check that the credentials of its Airflow connection may read this endpoint"),
    (404, "Not Found", "check the source's endpoint and its connection's base URL"),
    (410, "Gone", "check the source's endpoint and its connection's base URL"),
])
def test_an_answer_no_retry_can_change_is_a_config_error_naming_the_fix(server, session, sleep, status, reason,
                                                                       fix):
    server.add_faults("items", Fault(status))
    with pytest.raises(SourceRefused) as excinfo:
        get(session, f"{server.url}/items?page=2", sleep)
    assert str(excinfo.value) == (f"api: GET {server.url}/items?page=2 answered {status} {reason}: the source "
                                  f"cannot be read, and a retry would get the same answer (not retried). To fix it, "
                                  f"{fix}")
    assert hits(server) == 1
    assert sleep.waits == []


def test_a_server_error_that_is_not_retried_here_is_left_to_the_task_s_retry(server, session, sleep):
    server.add_faults("items", Fault(501))
    with pytest.raises(SourceError) as excinfo:
        get(session, f"{server.url}/items", sleep)
    assert str(excinfo.value) == f"api: GET {server.url}/items answered 501 Not Implemented; not retried"
    # not a configuration error: the task's retry asks again
    assert not isinstance(excinfo.value, ConfigError)
    assert hits(server) == 1


def test_unknown_path_names_url_and_status(server, session, sleep):
    with pytest.raises(SourceRefused, match=rf"^api: GET {server.url}/nope answered 404 Not Found: the source"):
        get(session, f"{server.url}/nope", sleep)


@pytest.fixture
def refused_url():
    with socket.socket() as probe:  # a port that was free a moment ago and has no listener now
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/items"


def test_connection_refused_is_retried_then_fails(session, sleep, refused_url):
    policy = http_client.RetryPolicy(attempts=3, backoff_base=0.01)
    with pytest.raises(SourceError) as excinfo:
        get(session, refused_url, sleep, policy)
    message = str(excinfo.value)
    assert message.startswith(f"api: GET {refused_url} failed after 3 attempts: connection failed (")
    assert len(sleep.waits) == 2


def test_stalled_server_times_out(server, session, sleep):
    server.add_faults("items", Fault(stall_seconds=0.5))
    policy = http_client.RetryPolicy(attempts=3, timeout=0.1)
    started = time.monotonic()
    with pytest.raises(SourceError) as excinfo:
        get(session, f"{server.url}/items", sleep, policy)
    assert time.monotonic() - started < 0.4
    assert str(excinfo.value).startswith(f"api: GET {server.url}/items timed out after 0.1s")
    assert hits(server) == 1


def test_truncated_body_is_an_error(server, session, sleep):
    server.add_faults("items", Fault(200, body=b"x" * 5000, truncate_to=1200))
    with pytest.raises(SourceError) as excinfo:
        get(session, f"{server.url}/items", sleep)
    assert str(excinfo.value).startswith(
        f"api: {server.url}/items body truncated: the connection closed before the whole body arrived")


@pytest.mark.parametrize("limit, already, fails", [
    (len(BODY), 0, False),
    (len(BODY) - 1, 0, True),
    (len(BODY) + 100, 100, False),
    (len(BODY) + 100, 101, True),
])
def test_body_over_max_bytes_is_an_error(server, session, sleep, limit, already, fails):
    response = http_client.get(session, f"{server.url}/items", source="api", policy=POLICY, sleep=sleep)
    body = http_client.iter_body(response, source="api", limit=limit, already=already)
    if fails:
        with pytest.raises(SourceError) as excinfo:
            b"".join(body)
        assert str(excinfo.value) == f"api: {server.url}/items exceeds SLUICE_MAX_BYTES ({limit} bytes)"
    else:
        assert b"".join(body) == BODY


def test_large_body_over_max_bytes_stops_early(server, session, sleep):
    server.serve_bytes("big", b"y" * (3 * http_client.CHUNK_BYTES), content_type="text/csv")
    response = http_client.get(session, f"{server.url}/big", source="csv", policy=POLICY, sleep=sleep)
    received = []
    with pytest.raises(SourceError, match=r"exceeds SLUICE_MAX_BYTES \(1500000 bytes\)"):
        for chunk in http_client.iter_body(response, source="csv", limit=1_500_000):
            received.append(chunk)
    assert sum(map(len, received)) <= 1_500_000


@pytest.fixture
def unanswered_url():
    """A listener whose accept queue is full: the next connect gets no answer and times out."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = []
        try:
            while True:  # Linux queues backlog + 1 connections; later SYNs are dropped
                filler = socket.socket()
                fillers.append(filler)
                filler.settimeout(0.3)
                filler.connect(("127.0.0.1", port))
        except TimeoutError:
            pass
        yield f"http://127.0.0.1:{port}/items"
        for filler in fillers:
            filler.close()


def test_connect_timeout_is_retried_like_a_refused_connection(session, sleep, unanswered_url):
    policy = http_client.RetryPolicy(attempts=3, timeout=0.2, backoff_base=0.01)
    with pytest.raises(SourceError) as excinfo:
        get(session, unanswered_url, sleep, policy)
    assert str(excinfo.value).startswith(
        f"api: GET {unanswered_url} failed after 3 attempts: connect timed out after 0.2s (")
    assert len(sleep.waits) == 2


def test_slow_drip_body_fails_at_the_deadline(server, session, sleep):
    """Each byte comes well within the read timeout; only the request's deadline stops the drip."""
    server.add_faults("items", Fault(200, body=b"x" * 1000, drip_seconds=0.2))
    policy = http_client.RetryPolicy(attempts=3, timeout=5.0, deadline=1.0)
    started = time.monotonic()
    with pytest.raises(SourceError) as excinfo:
        get(session, f"{server.url}/items", sleep, policy)
    assert 1.0 <= time.monotonic() - started < 2.5
    assert str(excinfo.value) == (f"api: {server.url}/items took longer than SLUICE_HTTP_DEADLINE (1s) "
                                  "to send its whole body; stopped")
    assert hits(server) == 1


def test_a_body_within_the_deadline_is_read_whole(server, session, sleep):
    server.add_faults("items", Fault(200, body=BODY, drip_seconds=0.01))
    policy = http_client.RetryPolicy(attempts=3, timeout=5.0, deadline=5.0)
    assert get(session, f"{server.url}/items", sleep, policy) == BODY
