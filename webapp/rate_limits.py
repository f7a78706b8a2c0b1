"""Rate limits of the read API (issue 24): a budget per principal (per client address when there is none), a
bucket of its own for /health, and a guard that refuses an address's credentials after repeated bad ones.

Two flask-limiter extensions, because they run on either side of authentication: the guard before it, so that a
blocked address's credential is never checked, and the budget after it, which needs the principal.

Counters live in SLUICE_RATELIMIT_STORAGE_URI: memory:// counts in each process, redis://… once for every worker
and host. When Redis does not answer the API keeps serving (fail open): each worker counts in its own memory,
so the limits still hold per worker, retries Redis after 1, 2, 4 … 32 s, and says so in its log at once and every
DEGRADED_LOG_INTERVAL_SECONDS while it lasts. Failing closed would turn an outage of a counter store into an
outage of every read.
"""

import ipaddress
import logging
import math
import time
from urllib.parse import urlsplit

from flask import current_app, g, request
from flask_limiter import Limit, Limiter, RateLimitExceeded
from limits.errors import StorageError

from webapp.errors import error_response

log = logging.getLogger(__name__)

HEALTH_ENDPOINT = "health.check_health"
EXPORT_ENDPOINT = "export.export_source"
DEGRADED_LOG_INTERVAL_SECONDS = 60
# A Redis that hangs costs a request this much at most before the worker counts in memory instead.
STORAGE_TIMEOUT_SECONDS = 0.5
# The standard headers of draft-ietf-httpapi-ratelimit-headers-06 (integers, Reset in seconds), as CORS exposes them.
HEADERS = ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset", "RateLimit-Policy")


def client_address() -> str:
    """The requester's address as its limits count it: IPv4 whole, IPv6 by its /64 (one subscriber's network)."""
    remote = request.remote_addr or ""
    try:
        address = ipaddress.ip_address(remote)
    except ValueError:
        return remote[:100] or "unknown"  # a Unix socket's peer; never empty (flask-limiter skips empty keys)
    if address.version == 6 and address.ipv4_mapped:
        return str(address.ipv4_mapped)
    if address.version == 6:
        return str(ipaddress.IPv6Network((int(address) >> 64 << 64, 64)))
    return str(address)


def _principal() -> str | None:
    scope = g.get("scope")  # set by authentication; None on a route it leaves open
    return scope.principal if scope is not None else None


def _requester() -> str:
    principal = _principal()
    return f"principal:{principal}" if principal else f"address:{client_address()}"


def _budget() -> str:
    config = current_app.config
    return config["RATELIMIT_DEFAULT"] if _principal() else config["RATELIMIT_ANONYMOUS"]


def _is_health() -> bool:
    return request.endpoint == HEALTH_ENDPOINT


def _is_export() -> bool:
    return request.endpoint == EXPORT_ENDPOINT


def _presents_credential() -> bool:
    return "Authorization" in request.headers


def _credential_refused(response) -> bool:
    return response.status_code == 401 and _presents_credential()


MESSAGES = {
    "api": "too many requests from {who}: the limit is {limit}",
    "health": "too many /health requests from this address: the limit is {limit}",
    "bad-credentials": "too many refused credentials from this address ({limit}): none is checked until the "
                       "window ends",
    "export": "too many exports from {who}: the limit is {limit}",
}


def _storage_options(uri: str) -> dict:
    # StorageError for any failure of the store, whatever its client library raises
    options = {"wrap_exceptions": True}
    if uri.startswith(("redis://", "rediss://", "redis+unix://")):
        options.update(socket_connect_timeout=STORAGE_TIMEOUT_SECONDS, socket_timeout=STORAGE_TIMEOUT_SECONDS)
    return options


def _limiter(app, *limits: Limit) -> Limiter:
    uri = app.config["RATELIMIT_STORAGE_URI"]
    # The limits are passed as default limits (shared, each with its own scope): flask-limiter's own
    # RATELIMIT_DEFAULT setting, which SLUICE_RATELIMIT_DEFAULT fills, is then not read as a per-route limit.
    return Limiter(client_address, app=app, default_limits=list(limits), key_prefix="sluice", storage_uri=uri,
                   storage_options=_storage_options(uri), strategy="fixed-window", headers_enabled=False,
                   in_memory_fallback_enabled=True,
                   # an unknown path counts too: flask-limiter exempts a request without an endpoint
                   request_identifier=lambda: request.endpoint or "unrouted")


def guard_credentials(app) -> None:
    """The guard and the headers: call before authentication is registered (hooks run in that order)."""
    if not app.config["RATELIMIT_ENABLED"]:
        return
    limits = app.extensions["sluice_rate_limits"] = {"state": {"degraded": False, "logged_at": 0.0}}
    # Registered first so that it runs last: after both extensions counted this request.
    app.after_request(_write_headers)
    app.register_error_handler(RateLimitExceeded, _too_many_requests)
    # Only a request that presents a credential is checked; a 401 of a presented one costs a unit afterwards.
    limits["guard"] = _limiter(app, Limit(lambda: current_app.config["RATELIMIT_BAD_CREDENTIALS"],
                                          key_function=client_address, shared=True, scope="bad-credentials",
                                          exempt_when=lambda: not _presents_credential(),
                                          deduct_when=_credential_refused))


def limit_requests(app) -> None:
    """The budget of each principal or address, /health's and /export's: call after authentication is registered."""
    if not app.config["RATELIMIT_ENABLED"]:
        return
    budget = Limit(_budget, key_function=_requester, shared=True, scope="api", exempt_when=_is_health)
    # /health answers probes (Compose, Kubernetes): a bucket of its own, so clients cannot starve them, and a
    # flood of it is still bounded (each answer queries the warehouse)
    health = Limit(lambda: current_app.config["RATELIMIT_HEALTH"], key_function=client_address, shared=True,
                   scope="health", exempt_when=lambda: not _is_health())
    # an export reads a whole source: a budget of its own, counted beside the principal's
    export = Limit(lambda: current_app.config["RATELIMIT_EXPORT"], key_function=_requester, shared=True,
                   scope="export", exempt_when=lambda: not _is_export())
    app.extensions["sluice_rate_limits"]["budget"] = _limiter(app, budget, health, export)


def _reported_limit():
    """The limit the headers describe: a breached one, else the budget's, else the guard's (a 401 before it)."""
    limiters = [current_app.extensions["sluice_rate_limits"].get(name) for name in ("budget", "guard")]
    current = [limiter.current_limit for limiter in limiters if limiter is not None and limiter.current_limit]
    breached = [limit for limit in current if limit.breached]
    return (breached or current or [None])[0]


def _watch_storage() -> None:
    """A warning when the counters fell back to memory, again every DEGRADED_LOG_INTERVAL_SECONDS, and on recovery."""
    limits = current_app.extensions["sluice_rate_limits"]
    limiter, state = limits["budget"] if "budget" in limits else limits["guard"], limits["state"]
    degraded = limiter.limiter.storage is not limiter.storage  # flask-limiter swapped in its memory fallback
    now = time.monotonic()
    if degraded and (not state["degraded"] or now - state["logged_at"] >= DEGRADED_LOG_INTERVAL_SECONDS):
        log.warning("rate limit storage %s does not answer: each worker counts in its own memory until it does",
                    _storage_label(current_app.config["RATELIMIT_STORAGE_URI"]))
        state["logged_at"] = now
    elif state["degraded"] and not degraded:
        log.warning("rate limit storage %s answers again: limits are shared again",
                    _storage_label(current_app.config["RATELIMIT_STORAGE_URI"]))
    state["degraded"] = degraded


def _storage_label(uri: str) -> str:
    """The storage URI without its credentials (a Redis password)."""
    parts = urlsplit(uri)
    host = f"{parts.hostname}:{parts.port}" if parts.port else parts.hostname or ""
    return f"{parts.scheme}://{host}{parts.path}"


def _write_headers(response):
    _watch_storage()
    limit = _reported_limit()
    if limit is None:
        return response
    try:
        reset_at, remaining = limit.window
    except StorageError as error:  # the store failed after this request was counted; the next one falls back
        log.warning("rate limit headers left out: %s", error)
        return response
    seconds = max(0, math.ceil(reset_at - time.time()))
    response.headers["RateLimit-Limit"] = str(limit.limit.amount)
    response.headers["RateLimit-Remaining"] = str(remaining)
    response.headers["RateLimit-Reset"] = str(seconds)
    response.headers["RateLimit-Policy"] = f"{limit.limit.amount};w={limit.limit.get_expiry()}"
    if limit.breached:
        response.headers["Retry-After"] = str(max(1, seconds))
    return response


def _too_many_requests(error: RateLimitExceeded):
    who = _principal() or "this address"
    return error_response(429, MESSAGES[error.limit.scope].format(limit=error.limit.limit, who=who))
