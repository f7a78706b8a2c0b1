"""GET with bounded retries: 429 honours Retry-After, 5xx and connection errors back off with jitter."""

import email.utils
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import requests

from sluice.errors import SourceError

RETRYABLE_STATUSES = frozenset({500, 502, 503, 504})
CHUNK_BYTES = 1024 * 1024


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    timeout: float = 30.0
    backoff_base: float = 1.0
    backoff_max: float = 30.0
    # A Retry-After longer than this fails the source now instead of stalling the task.
    retry_after_max: float = 300.0


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
) -> requests.Response:
    """GET url (streamed) and return the 2xx response, or raise SourceError after bounded attempts."""
    last_problem = ""
    for attempt in range(1, policy.attempts + 1):
        try:
            response = session.get(url, params=params, stream=True, timeout=(policy.timeout, policy.timeout))
        except requests.Timeout as exc:
            raise SourceError(f"{source}: GET {url} timed out after {policy.timeout:g}s ({exc})") from exc
        except requests.ConnectionError as exc:
            last_problem = f"connection failed ({exc})"
            wait = _backoff(attempt, policy)
        else:
            if response.status_code < 400:
                return response
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
            else:
                raise SourceError(f"{source}: GET {response.url} answered {reason}; not retried")
            last_problem = f"answered {reason}"
        if attempt < policy.attempts:
            sleep(wait)
    raise SourceError(f"{source}: GET {url} failed after {policy.attempts} attempts: {last_problem}")


def iter_body(response: requests.Response, *, source: str, limit: int, already: int = 0) -> Iterator[bytes]:
    """Yield the body in chunks; fail on truncation, read timeouts, and on passing `limit` bytes in all."""
    total = already
    try:
        for chunk in response.iter_content(CHUNK_BYTES):
            total += len(chunk)
            if total > limit:
                raise SourceError(f"{source}: {response.url} exceeds SLUICE_MAX_BYTES ({limit} bytes)")
            yield chunk
    except requests.exceptions.ChunkedEncodingError as exc:
        raise SourceError(
            f"{source}: {response.url} body truncated: the connection closed before the whole body arrived ({exc})"
        ) from exc
    except requests.exceptions.ConnectionError as exc:
        # requests reports a read timeout in the middle of a streamed body as a ConnectionError.
        raise SourceError(f"{source}: {response.url} stopped sending: read timed out or reset ({exc})") from exc
    finally:
        response.close()
