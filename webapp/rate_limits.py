"""Rate limits of the read API (issue 24): a budget per principal (per client address when there is none), a
bucket of its own for /health and one for /export, and a guard that refuses an address's credentials after repeated
bad ones.

Each request costs one storage call (webapp/rate_counters.py), made after authentication because the budget is
the principal's: it checks the guard and counts the budgets together. Before authentication a request presenting a
credential is refused, unchecked, when this process knows its address is locked out (in memory:// it always knows;
with Redis it knows the lock-outs Redis reported to it, and the call after authentication refuses the others). A
refused credential then costs its address a unit of the guard; a 401 of an address already locked out (by another
process) becomes the guard's 429, so a locked-out client learns nothing about the credentials it tries.

Counters live in SLUICE_RATELIMIT_STORAGE_URI: memory:// counts in each process, redis://… once for every worker
and host. When Redis does not answer the API keeps serving (fail open): each worker counts in its own memory, so
the limits still hold per worker, retries Redis after 1, 2, 4 … 32 s, and says so in its log at once and every
DEGRADED_LOG_INTERVAL_SECONDS while it lasts. Failing closed would turn an outage of a counter store into an
outage of every read.
"""

import ipaddress
from dataclasses import dataclass

from flask import current_app, g, request
from limits import RateLimitItem, parse_many

from webapp import rate_counters
from webapp.errors import error_response
from webapp.rate_counters import Count, Counter

HEALTH_ENDPOINT = "health.check_health"
EXPORT_ENDPOINT = "export.export_source"
# The standard headers of draft-ietf-httpapi-ratelimit-headers-06 (integers, Reset in seconds), as CORS exposes them.
HEADERS = ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset", "RateLimit-Policy")
KEY_PREFIX = "LIMITS:sluice"

MESSAGES = {
    "api": "too many requests from {who}: the limit is {limit}",
    "health": "too many /health requests from this address: the limit is {limit}",
    "bad-credentials": "too many refused credentials from this address ({limit}): none is checked until the "
                       "window ends",
    "export": "too many exports from {who}: the limit is {limit}",
}


@dataclass(frozen=True)
class Limit:
    scope: str  # a key of MESSAGES
    item: RateLimitItem


class RateLimits:
    """The app's limits, parsed once, and its counters."""

    def __init__(self, config):
        def limits(scope: str, setting: str) -> list[Limit]:
            # the shortest window first, as flask-limiter checked them: it is the one the headers describe
            return [Limit(scope, item) for item in sorted(parse_many(config[setting]),
                                                          key=lambda item: item.get_expiry())]

        self.principal = limits("api", "RATELIMIT_DEFAULT")
        self.anonymous = limits("api", "RATELIMIT_ANONYMOUS")
        self.health = limits("health", "RATELIMIT_HEALTH")
        self.export = limits("export", "RATELIMIT_EXPORT")
        self.guard = limits("bad-credentials", "RATELIMIT_BAD_CREDENTIALS")
        self.counters = rate_counters.for_uri(config["RATELIMIT_STORAGE_URI"])


def client_address() -> str:
    """The requester's address as its limits count it: IPv4 whole, IPv6 by its /64 (one subscriber's network)."""
    remote = request.remote_addr or ""
    try:
        address = ipaddress.ip_address(remote)
    except ValueError:
        return remote[:100] or "unknown"  # a Unix socket's peer
    if address.version == 6 and address.ipv4_mapped:
        return str(address.ipv4_mapped)
    if address.version == 6:
        return str(ipaddress.IPv6Network((int(address) >> 64 << 64, 64)))
    return str(address)


def _counters(limits: list[Limit], who: str) -> list[Counter]:
    return [Counter(f"{KEY_PREFIX}/{limit.scope}/{who}/{limit.item.amount}/{limit.item.multiples}/"
                    f"{limit.item.GRANULARITY.name}", limit.item.amount, limit.item.get_expiry(), limit)
            for limit in limits]


def _principal() -> str | None:
    scope = g.get("scope")  # set by authentication; None on a route it leaves open
    return scope.principal if scope is not None else None


def _presents_credential() -> bool:
    return "Authorization" in request.headers


def _guards(limits: RateLimits) -> list[Counter]:
    return _counters(limits.guard, f"address:{client_address()}") if _presents_credential() else []


def _of_app() -> RateLimits:
    return current_app.extensions["sluice_rate_limits"]


def _refuse_locked_out():
    """before_request, ahead of authentication: a locked-out address's credential is refused unchecked."""
    limits = _of_app()
    guards = _guards(limits)
    blocked = limits.counters.blocked(guards) if guards else None
    if blocked is not None:
        return _too_many_requests(blocked)
    return None


def _count_request():
    """before_request, after authentication: the guard and this request's budgets in one storage call."""
    limits = _of_app()
    principal = _principal()
    who = f"principal:{principal}" if principal else f"address:{client_address()}"
    if request.endpoint == HEALTH_ENDPOINT:
        # /health answers probes (Compose, Kubernetes): a bucket of its own, so clients cannot starve them, and a
        # flood of it is still bounded (each answer queries the warehouse)
        counters = _counters(limits.health, f"address:{client_address()}")
    else:
        counters = _counters(limits.principal if principal else limits.anonymous, who)
        if request.endpoint == EXPORT_ENDPOINT:  # an export reads a whole source: a budget of its own beside it
            counters += _counters(limits.export, who)
        counters.sort(key=lambda counter: counter.seconds)
    answer = limits.counters.count(_guards(limits), counters)
    g.rate_limit_count = _reported(answer.counts)
    if answer.breached is not None:
        return _too_many_requests(answer.breached)
    return None


def _reported(counts: list[Count]) -> Count | None:
    """The count the headers describe: the breached one (the last), else the first (the shortest window)."""
    if not counts:
        return None
    last = counts[-1]
    return last if last.used > last.counter.amount else counts[0]


def _count_refused_credential(response):
    """after_request: a presented credential refused (401) costs its address a unit of the guard."""
    if response.status_code != 401 or not _presents_credential():
        return response
    limits = _of_app()
    answer = limits.counters.refused(_guards(limits))
    g.rate_limit_count = _reported(answer.counts)
    full = answer.blocked or answer.breached
    if full is not None:  # locked out by another process before this request: the guard's 429, not a 401
        refusal = _too_many_requests(full)
        response.status_code = 429
        response.set_data(refusal.get_data())
        response.headers["Retry-After"] = refusal.headers["Retry-After"]
        del response.headers["WWW-Authenticate"]
    return response


def _too_many_requests(count: Count):
    g.rate_limit_count = count
    limit = count.counter.label
    who = _principal() or "this address"
    response = error_response(429, MESSAGES[limit.scope].format(limit=str(limit.item), who=who))
    response.headers["Retry-After"] = str(max(1, count.reset_seconds))
    return response


def _write_headers(response):
    count = g.pop("rate_limit_count", None)
    if count is None:
        return response
    response.headers["RateLimit-Limit"] = str(count.counter.amount)
    response.headers["RateLimit-Remaining"] = str(count.remaining)
    response.headers["RateLimit-Reset"] = str(count.reset_seconds)
    response.headers["RateLimit-Policy"] = f"{count.counter.amount};w={count.counter.seconds}"
    return response


def guard_credentials(app) -> None:
    """The guard and the headers: call before authentication is registered (hooks run in that order)."""
    if not app.config["RATELIMIT_ENABLED"]:
        return
    app.extensions["sluice_rate_limits"] = RateLimits(app.config)
    app.after_request(_write_headers)  # registered first so that it runs last: after the counting below
    app.after_request(_count_refused_credential)
    app.before_request(_refuse_locked_out)


def limit_requests(app) -> None:
    """The budget of each principal or address, /health's and /export's: call after authentication is registered."""
    if not app.config["RATELIMIT_ENABLED"]:
        return
    app.before_request(_count_request)
