"""Settings of the read API: defaults, and a check that fails at startup instead of on some request."""

import ipaddress
import os
import re

from limits import parse_many

from sluice import scope_key

# Each key is also read from the environment with the SLUICE_ prefix (SLUICE_POOL_MAX=30).
DEFAULTS = {
    "POOL_MIN": 5,  # connections opened at first use; more as concurrent requests need them, all kept (db.py)
    "POOL_MAX": 20,  # connections at most; one more concurrent request gets a 503
    "STATEMENT_TIMEOUT_MS": 5000,
    "CONNECT_TIMEOUT_SECONDS": 2,  # libpq's minimum: a database that is down costs a request at most this
    "CORS_ORIGINS": "",  # comma-separated exact origins; empty sends no CORS headers; "*" allows any
    "MAX_STALENESS_HOURS": 26,  # a daily pipeline plus slack before /health says stale
    "MAX_CONTENT_LENGTH": 64 * 1024,  # the API takes no bodies; refuse big ones early
    # GET /export: exports streaming at once in one process (gunicorn worker); one more is a 503 with Retry-After.
    # Each holds a request thread, a copy thread, a connection and about a core (its backend and the copy): two
    # of a worker's 8 threads, so the other requests keep 6 (README, Export)
    "EXPORT_CONCURRENCY": 2,
    "EXPORT_STATEMENT_TIMEOUT_MS": 3_600_000,  # one export's COPY, a slow reader's time included
    # Rate limits (webapp/rate_limits.py), each "<n> per <second|minute|hour|day>", several joined by ";"
    # /metrics and the per-request counting; false: neither (the bench's baseline for what metrics cost)
    "METRICS_ENABLED": True,
    "RATELIMIT_ENABLED": True,
    "RATELIMIT_DEFAULT": "600 per minute",  # per principal (an API key, an OIDC subject), all routes together
    "RATELIMIT_ANONYMOUS": "120 per minute",  # per client address, for requests without a principal
    "RATELIMIT_HEALTH": "120 per minute",  # /health, per client address, apart from the API's budget
    "RATELIMIT_BAD_CREDENTIALS": "10 per minute",  # 401s per client address before its credentials are refused
    "RATELIMIT_EXPORT": "60 per hour",  # GET /export per principal (address without one), beside the budget above
    "RATELIMIT_STORAGE_URI": "memory://",  # counters of one process; redis://host:6379/1 shared by every worker
    # peers whose X-Forwarded-For is believed (addresses or networks, comma-separated; "*" any); empty: none
    "FORWARDED_ALLOW_IPS": "",
    # Who may read (webapp/auth.py): "keys" (API keys, the default wherever the API is deployed), "oidc" (JWTs of
    # an OpenID Connect issuer) or "none" (everyone reads everything: local demos and tests only)
    "AUTH": "keys",
    "ADMIN_DATABASE_URL": "",  # the owner's connection, for `flask --app webapp keys` only; never the API's
    "OIDC_ISSUER": "",  # https://issuer.example.com: its /.well-known/openid-configuration names the JWKS
    "OIDC_AUDIENCE": "",  # the aud a token must carry: this API's identifier at the issuer
    "OIDC_SCOPE_CLAIM": "scope",  # the claim holding sluice:read:<source>, sluice:read:*, sluice:operations
    "OIDC_LEEWAY_SECONDS": 30,  # clock skew allowed on exp, nbf and iat
    "OIDC_JWKS_MIN_REFRESH_SECONDS": 60,  # an unknown kid refetches the JWKS at most this often
    "OIDC_JWKS_MAX_AGE_SECONDS": 3600,  # the JWKS is fetched again after this long, so removed keys go
}
RATE_LIMITS = ("RATELIMIT_DEFAULT", "RATELIMIT_ANONYMOUS", "RATELIMIT_HEALTH", "RATELIMIT_BAD_CREDENTIALS",
               "RATELIMIT_EXPORT")
STORAGE_SCHEMES = ("memory", "redis", "rediss", "redis+unix")
AUTH_MODES = ("keys", "oidc", "none")
# A token from a plain-http issuer could be forged by anyone on the path to its JWKS: loopback only (tests).
_LOOPBACK_ISSUER = re.compile(r"^http://(127\.0\.0\.1|localhost|\[::1\])(:\d+)?(/|$)")
_ORIGIN = re.compile(r"^https?://[^/\s*?\\^$()\[\]]+$")


def defaults() -> dict:
    """DEFAULTS plus DATABASE_URL from the environment, read now rather than at import."""
    return {**DEFAULTS, "DATABASE_URL": os.environ.get("DATABASE_URL"), "SCOPE_KEY": None}


def _integer(config, key: str, minimum: int) -> int:
    value = config[key]
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"SLUICE_{key}={value!r} is not an integer") from None
    if isinstance(value, float) and number != value or number < minimum:
        raise ValueError(f"SLUICE_{key}={value!r} must be a whole number of at least {minimum}")
    return number


def _origins(value) -> list[str]:
    origins = [item.strip() for item in value.split(",")] if isinstance(value, str) else list(value or [])
    origins = [origin.rstrip("/") for origin in origins if origin]
    for origin in origins:
        if origin != "*" and not _ORIGIN.match(origin):
            raise ValueError(f"SLUICE_CORS_ORIGINS: {origin!r} is not an origin like https://example.com")
    return origins


def _rate_limit(config, key: str) -> str:
    value = config[key]
    try:
        if not isinstance(value, str) or not all(item.amount >= 1 for item in parse_many(value)):
            raise ValueError  # "0 per minute" parses, and would refuse every request
    except ValueError:
        raise ValueError(f"SLUICE_{key}={value!r} is not a rate limit like '600 per minute' "
                         "(several joined by ';')") from None
    return value


def _storage_uri(value) -> str:
    scheme = str(value).partition("://")[0]
    if scheme not in STORAGE_SCHEMES or "://" not in str(value):
        raise ValueError(f"SLUICE_RATELIMIT_STORAGE_URI: {scheme!r} is not one of "
                         f"{', '.join(f'{name}://' for name in STORAGE_SCHEMES)}")
    return value


def _proxies(value) -> tuple:
    """Addresses and networks as ip_network objects, or ("*",) for any peer; the syntax of gunicorn's list."""
    entries = [item.strip() for item in value.split(",")] if isinstance(value, str) else list(value or [])
    networks = []
    for entry in filter(None, entries):
        if entry == "*":
            return ("*",)
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise ValueError(f"SLUICE_FORWARDED_ALLOW_IPS: {entry!r} is not an address or a network") from None
    return tuple(networks)


def check(config) -> None:
    """Normalize the settings in place (types, lists); ValueError naming the setting when one is wrong."""
    if not config.get("DATABASE_URL"):
        raise ValueError("DATABASE_URL (or SLUICE_DATABASE_URL) is not set: the API needs the warehouse URL")
    key = config.get("SCOPE_KEY")
    if key is not None and not isinstance(key, (str, bytes)):
        # from_prefixed_env read a key of digits alone as a JSON number: take the text as it was set
        key = os.environ.get("SLUICE_SCOPE_KEY")
    # the key that signs each request's scope for row-level security (webapp.scope_token)
    config["SCOPE_KEY"] = key if isinstance(key, bytes) else scope_key.parse(key)
    config["POOL_MIN"] = _integer(config, "POOL_MIN", 0)
    config["POOL_MAX"] = _integer(config, "POOL_MAX", max(1, config["POOL_MIN"]))
    config["STATEMENT_TIMEOUT_MS"] = _integer(config, "STATEMENT_TIMEOUT_MS", 1)
    config["EXPORT_CONCURRENCY"] = _integer(config, "EXPORT_CONCURRENCY", 0)
    config["EXPORT_STATEMENT_TIMEOUT_MS"] = _integer(config, "EXPORT_STATEMENT_TIMEOUT_MS", 1)
    config["CONNECT_TIMEOUT_SECONDS"] = _integer(config, "CONNECT_TIMEOUT_SECONDS", 2)  # libpq reads 1 as 2, 0 as never
    config["MAX_CONTENT_LENGTH"] = _integer(config, "MAX_CONTENT_LENGTH", 0)
    config["CORS_ORIGINS"] = _origins(config["CORS_ORIGINS"])
    try:
        hours = float(config["MAX_STALENESS_HOURS"])
    except (TypeError, ValueError):
        raise ValueError(f"SLUICE_MAX_STALENESS_HOURS={config['MAX_STALENESS_HOURS']!r} is not a number") from None
    if not hours > 0:
        raise ValueError(f"SLUICE_MAX_STALENESS_HOURS={hours!r} must be more than 0")
    config["MAX_STALENESS_HOURS"] = hours
    for switch in ("METRICS_ENABLED", "RATELIMIT_ENABLED"):
        if not isinstance(config[switch], bool):
            raise ValueError(f"SLUICE_{switch}={config[switch]!r} must be true or false")
    for key in RATE_LIMITS:
        config[key] = _rate_limit(config, key)
    config["RATELIMIT_STORAGE_URI"] = _storage_uri(config["RATELIMIT_STORAGE_URI"])
    config["FORWARDED_ALLOW_IPS"] = _proxies(config["FORWARDED_ALLOW_IPS"])
    _check_auth(config)


def _check_auth(config) -> None:
    mode = str(config["AUTH"]).strip().lower()
    if mode not in AUTH_MODES:
        raise ValueError(f"SLUICE_AUTH={config['AUTH']!r} must be one of {', '.join(AUTH_MODES)}")
    config["AUTH"] = mode
    config["OIDC_LEEWAY_SECONDS"] = _integer(config, "OIDC_LEEWAY_SECONDS", 0)
    config["OIDC_JWKS_MIN_REFRESH_SECONDS"] = _integer(config, "OIDC_JWKS_MIN_REFRESH_SECONDS", 0)
    config["OIDC_JWKS_MAX_AGE_SECONDS"] = _integer(config, "OIDC_JWKS_MAX_AGE_SECONDS", 1)
    if mode != "oidc":
        return
    issuer = str(config["OIDC_ISSUER"] or "")  # as tokens spell it in iss: a trailing slash counts
    if not (issuer.startswith("https://") or _LOOPBACK_ISSUER.match(issuer)):
        raise ValueError(f"SLUICE_AUTH=oidc needs SLUICE_OIDC_ISSUER, an https:// URL (got {issuer!r})")
    if not config["OIDC_AUDIENCE"]:
        raise ValueError("SLUICE_AUTH=oidc needs SLUICE_OIDC_AUDIENCE, the aud its tokens carry")
    if not config["OIDC_SCOPE_CLAIM"]:
        raise ValueError("SLUICE_OIDC_SCOPE_CLAIM is empty: name the claim that holds the sluice:... scopes")
