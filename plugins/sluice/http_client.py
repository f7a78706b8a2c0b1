"""GET with bounded retries: 429 honours Retry-After, 5xx and connection errors back off with jitter.

Requests stay on the connection's origin: redirects are followed here, not by requests (which keeps a
connection's custom headers, API keys among them, on a redirect to any host), and another origin is
reached only when SLUICE_API_ALLOWED_HOSTS lists it, then without the connection's credentials.
"""

import email.utils
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import requests

from sluice.errors import ConfigError, SourceError, SourceRefused
from sluice.redact import redact

log = logging.getLogger(__name__)

# answers a later request may not get: 408 (the server gave up waiting) and the server errors. 429 waits for
# its Retry-After. Any other 4xx is the configuration's (an endpoint, a credential): SourceRefused, at once.
RETRYABLE_STATUSES = frozenset({408, 500, 502, 503, 504})
# how to fix a refusal, by status
_REFUSAL_FIXES = {
    401: "check the login, password or headers of its Airflow connection",
    403: "check that the credentials of its Airflow connection may read this endpoint",
    404: "check the source's endpoint and its connection's base URL",
    410: "check the source's endpoint and its connection's base URL",
}
CHUNK_BYTES = 1024 * 1024
MAX_REDIRECTS = 10
DEFAULT_PORTS = {"http": 80, "https": 443}
_DEADLINE_ATTRIBUTE = "sluice_deadline"


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    timeout: float = 30.0
    backoff_base: float = 1.0
    backoff_max: float = 30.0
    # A Retry-After longer than this fails the source now instead of stalling the task.
    retry_after_max: float = 300.0
    # Seconds one request may take from sending it to the last byte of its body: the timeout above
    # bounds each read, so a server that drips a byte at a time would otherwise hold the task for hours.
    deadline: float = 600.0


def origin_of(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an http(s) URL; None for any other URL, or one without a usable host or port."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        return None
    if scheme not in DEFAULT_PORTS or not parts.hostname:
        return None
    return scheme, parts.hostname, port or DEFAULT_PORTS[scheme]


@dataclass(frozen=True)
class Origins:
    """Where the requests of one source may go: its connection's origin, with the session's credentials,
    and hosts listed in SLUICE_API_ALLOWED_HOSTS ((host, port or None for the scheme's default)), without."""

    home: tuple[str, str, int]
    allowed: frozenset[tuple[str, int | None]] = frozenset()

    @classmethod
    def of(cls, url: str, allowed: Iterable[tuple[str, int | None]] = ()) -> "Origins":
        home = origin_of(url)
        if home is None:
            raise ConfigError(f"the connection's URL {url!r} is not an http(s) URL with a host: nothing can be "
                              "fetched from it. Give the connection an http:// or https:// URL with a host")
        return cls(home, frozenset(allowed))

    def own(self, url: str) -> bool:
        return origin_of(url) == self.home

    def allows(self, url: str) -> bool:
        origin = origin_of(url)
        if origin is None:
            return False
        scheme, host, port = origin
        return origin == self.home or (host, port) in self.allowed or (
            port == DEFAULT_PORTS[scheme] and (host, None) in self.allowed)

    def refusal(self, url: str) -> str:
        scheme, host, port = self.home
        return (f"{url}, which is not on the connection's origin ({scheme}://{host}:{port}); not followed. "
                "List its host[:port] in SLUICE_API_ALLOWED_HOSTS to allow it "
                "(it then gets none of the connection's credentials)")


def _retry_after_seconds(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _backoff(attempt: int, policy: RetryPolicy) -> float:
    # Full jitter: spreads the retries of many workers hitting the same failing source.
    ceiling = min(policy.backoff_max, policy.backoff_base * 2 ** (attempt - 1))
    return random.uniform(ceiling / 2, ceiling)  # nosec B311 # retry jitter, not a secret


def get(
    session: requests.Session,
    url: str,
    *,
    source: str,
    policy: RetryPolicy,
    params: dict | None = None,
    sleep: Callable[[float], None] = time.sleep,
    origins: Origins | None = None,
) -> requests.Response:
    """GET url (streamed), following redirects within `origins` (by default url's own origin), and return
    the final response, or raise SourceError. The body must be read with iter_body (which keeps the deadline)."""
    origins = origins or Origins.of(url)
    for _ in range(MAX_REDIRECTS + 1):
        response, started = _get_from(session, url, origins, source=source, policy=policy, params=params, sleep=sleep)
        if not response.is_redirect:
            setattr(response, _DEADLINE_ATTRIBUTE, _Deadline(response, started, policy.deadline))
            return response
        target = urljoin(response.url, response.headers["Location"])
        response.close()
        if not origins.allows(target):
            raise SourceError(f"{source}: GET {url} redirects to {origins.refusal(target)}")
        url, params = target, None  # the Location carries its own query
    raise SourceError(f"{source}: GET {url}: more than {MAX_REDIRECTS} redirects")


def _get_from(session: requests.Session, url: str, origins: Origins, **kwargs) -> tuple[requests.Response, float]:
    """The connection's session for its own origin; a bare one, without its auth and headers, for any other."""
    if origins.own(url):
        return _get_retried(session, url, **kwargs)
    with requests.Session() as bare:  # closing it leaves the streamed response readable, as in requests.get
        return _get_retried(bare, url, **kwargs)


def _get_retried(
    session: requests.Session,
    url: str,
    *,
    source: str,
    policy: RetryPolicy,
    params: dict | None,
    sleep: Callable[[float], None],
) -> tuple[requests.Response, float]:
    """(the first response below 400, when its request was sent), or SourceError after bounded attempts."""
    last_problem = ""
    for attempt in range(1, policy.attempts + 1):
        started = time.monotonic()
        try:
            response = session.get(url, params=params, stream=True, allow_redirects=False,
                                   timeout=(policy.timeout, policy.timeout))
        except requests.ConnectTimeout as exc:  # nothing was sent: as safe to retry as a refused connection
            last_problem = f"connect timed out after {policy.timeout:g}s ({exc})"
            wait = _backoff(attempt, policy)
        except requests.Timeout as exc:
            raise SourceError(f"{source}: GET {url} timed out after {policy.timeout:g}s ({exc})") from exc
        except requests.ConnectionError as exc:
            last_problem = f"connection failed ({exc})"
            wait = _backoff(attempt, policy)
        else:
            if response.status_code < 400:
                return response, started
            response.close()
            reason = f"{response.status_code} {response.reason}"
            if response.status_code == 429:
                retry_after = _retry_after_seconds(response.headers.get("Retry-After"))
                if retry_after is not None and retry_after > policy.retry_after_max:
                    raise SourceError(
                        f"{source}: GET {response.url} answered {reason} with Retry-After "
                        f"{retry_after:.0f}s, longer than the {policy.retry_after_max:.0f}s this task waits"
                    )
                wait = retry_after if retry_after is not None else _backoff(attempt, policy)
            elif response.status_code in RETRYABLE_STATUSES:
                wait = _backoff(attempt, policy)
            elif response.status_code >= 500:  # 501, 505...: not asked again here; the task's retry asks again
                raise SourceError(f"{source}: GET {response.url} answered {reason}; not retried")
            else:
                fix = _REFUSAL_FIXES.get(response.status_code, "check the source's endpoint, parameters and "
                                                                "connection")
                raise SourceRefused(f"{source}: GET {response.url} answered {reason}: the source cannot be read, "
                                    f"and a retry would get the same answer (not retried). To fix it, {fix}")
            last_problem = f"answered {reason}"
        if attempt < policy.attempts:
            # the problem can quote the URL, with its query, and headers: masked like the error it may become
            log.warning("%s", redact(f"{source}: GET {url} {last_problem}; retrying in {wait:.1f} s "
                                     f"(attempt {attempt + 1} of {policy.attempts})"))
            sleep(wait)
    raise SourceError(f"{source}: GET {url} failed after {policy.attempts} attempts: {last_problem}")


class _Deadline:
    """Shuts the response's socket when its request's deadline passes, so a read blocked on it returns."""

    def __init__(self, response: requests.Response, started: float, seconds: float):
        self.seconds = seconds
        self.expired = False
        self._response = response
        self._timer = threading.Timer(max(0.0, started + seconds - time.monotonic()), self._expire)
        self._timer.daemon = True
        self._timer.start()

    def _expire(self) -> None:
        self.expired = True
        try:
            self._response.raw.shutdown()
        except (ValueError, RuntimeError, OSError):
            pass  # the response is already closed or its connection released: nothing is left to interrupt

    def cancel(self) -> None:
        self._timer.cancel()


def iter_body(response: requests.Response, *, source: str, limit: int, already: int = 0) -> Iterator[bytes]:
    """Yield the body in chunks; fail on truncation, read timeouts, the deadline and on passing `limit` bytes in all."""
    deadline: _Deadline | None = getattr(response, _DEADLINE_ATTRIBUTE, None)
    total = already
    try:
        for chunk in response.iter_content(CHUNK_BYTES):
            _check_deadline(deadline, response, source)
            total += len(chunk)
            if total > limit:
                raise SourceError(f"{source}: {response.url} exceeds SLUICE_MAX_BYTES ({limit} bytes)")
            yield chunk
        _check_deadline(deadline, response, source)  # a body without a length, cut by it, ends like a whole one
    except requests.exceptions.ChunkedEncodingError as exc:
        _check_deadline(deadline, response, source)
        raise SourceError(
            f"{source}: {response.url} body truncated: the connection closed before the whole body arrived ({exc})"
        ) from exc
    except requests.exceptions.ConnectionError as exc:
        _check_deadline(deadline, response, source)
        # requests reports a read timeout in the middle of a streamed body as a ConnectionError.
        raise SourceError(f"{source}: {response.url} stopped sending: read timed out or reset ({exc})") from exc
    finally:
        if deadline is not None:
            deadline.cancel()
        response.close()


def expected_bytes(response: requests.Response) -> int | None:
    """The body's size as announced (Content-Length), or None when it is not announced or is the size of an
    encoded body that requests decodes while reading it (gzip)."""
    length = response.headers.get("Content-Length", "")
    if not length.isdigit() or response.headers.get("Content-Encoding", "identity").lower() != "identity":
        return None
    return int(length)


def discard(response: requests.Response) -> None:
    """Close a response whose body will not be read."""
    deadline: _Deadline | None = getattr(response, _DEADLINE_ATTRIBUTE, None)
    if deadline is not None:
        deadline.cancel()
    response.close()


def _check_deadline(deadline: "_Deadline | None", response: requests.Response, source: str) -> None:
    if deadline is not None and deadline.expired:
        raise SourceError(f"{source}: {response.url} took longer than SLUICE_HTTP_DEADLINE ({deadline.seconds:g}s) "
                          "to send its whole body; stopped")
