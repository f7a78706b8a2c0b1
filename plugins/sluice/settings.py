"""Runtime settings from environment variables, with the defaults documented in README."""

import os
import tempfile
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from sluice.errors import InvalidSetting

DEFAULT_API_MAPPING = {"source_id": "id", "name": "title", "value": "userId", "description": "body"}
DEFAULT_CSV_MAPPING = {"source_id": "id", "name": "name", "value": "value", "description": "description"}
# maintenance_work_mem while a bulk load rebuilds indexes (PostgreSQL units: 512MB, 1GB)
INDEX_BUILD_MEMORY = "512MB"
# SLUICE_MAX_DELETE_FRACTION's default: a read may soft-delete at most half of a source's live rows
MAX_DELETE_FRACTION = 0.5
# what a bad setting stops and how to fix it, after what is wrong with it
UNSET_FIX = ": no task can run until it is fixed, or unset for its default (README, Environment)"
# hours before a later run sweeps what a failed or killed run left: staged files, downloads, work rows
STAGING_RETENTION_HOURS = 72
# a daily pipeline plus slack (the read API's /health default, webapp/config.py)
MAX_STALENESS_HOURS = 26
ALERT_TIMEOUT = 10


def _number(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw in (None, ""):
        return default
    try:
        return float(raw)
    except ValueError:
        raise InvalidSetting(f"environment variable {name}={raw!r} is not a number{UNSET_FIX}") from None


def _hosts(name: str) -> frozenset[tuple[str, int | None]]:
    """Comma-separated host[:port] entries as (host, port); no port means the scheme's default one."""
    hosts = set()
    for entry in (os.environ.get(name) or "").split(","):
        entry = entry.strip()
        if not entry:
            continue
        parts = urlsplit(f"//{entry}")
        try:
            port = parts.port
        except ValueError:
            port = -1
        if not parts.hostname or port == -1 or parts.netloc != entry or "@" in entry:
            raise InvalidSetting(f"environment variable {name}: {entry!r} is not a host or host:port{UNSET_FIX}")
        hosts.add((parts.hostname, port))
    return frozenset(hosts)


@dataclass(frozen=True)
class Settings:
    staging_url: str
    http_timeout: float
    http_attempts: int
    max_pages: int
    max_bytes: int
    lock_timeout_seconds: float
    task_retries: int
    retry_delay_seconds: float
    index_build_memory: str
    http_deadline: float
    api_allowed_hosts: frozenset[tuple[str, int | None]]
    staging_retention_hours: float
    max_parallel_sources: int
    # the most of a source's live rows one read may soft-delete (0..1); more is refused as a truncated read
    max_delete_fraction: float = MAX_DELETE_FRACTION
    # a source whose newest successful load is older than this is stale (an alert); the read API's /health uses it too
    max_staleness_hours: float = MAX_STALENESS_HOURS
    # seconds an alert's webhook may take to connect, and between bytes of its answer
    alert_timeout: float = ALERT_TIMEOUT
    # the read API's scope key (hex), installed by init_schema for row-level security; never shown
    scope_key: str | None = field(default=None, repr=False)


def load() -> Settings:
    return Settings(
        staging_url=os.environ.get("SLUICE_STAGING_URL") or f"file://{tempfile.gettempdir()}/sluice-staging",
        http_timeout=_number("SLUICE_HTTP_TIMEOUT", 30),
        http_attempts=int(_number("SLUICE_HTTP_ATTEMPTS", 5)),
        max_pages=int(_number("SLUICE_MAX_PAGES", 1000)),
        max_bytes=int(_number("SLUICE_MAX_BYTES", 2 * 1024**3)),
        lock_timeout_seconds=_number("SLUICE_LOCK_TIMEOUT", 300),
        task_retries=int(_number("SLUICE_TASK_RETRIES", 2)),
        retry_delay_seconds=_number("SLUICE_RETRY_DELAY", 30),
        index_build_memory=os.environ.get("SLUICE_INDEX_BUILD_MEMORY") or INDEX_BUILD_MEMORY,
        # seconds one request may take from sending it to its body's last byte (a whole CSV download)
        http_deadline=_number("SLUICE_HTTP_DEADLINE", 600),
        # hosts besides the connection's own that API next links and redirects may lead to, without its credentials
        api_allowed_hosts=_hosts("SLUICE_API_ALLOWED_HOSTS"),
        # staged and downloaded files of runs that did not clean up after themselves go after this long
        staging_retention_hours=_at_least("SLUICE_STAGING_RETENTION_HOURS", STAGING_RETENTION_HOURS, minimum=1),
        # ingest task instances (one per source) of one run running at once
        max_parallel_sources=int(_at_least("SLUICE_MAX_PARALLEL_SOURCES", 4, minimum=1)),
        max_delete_fraction=_fraction("SLUICE_MAX_DELETE_FRACTION", MAX_DELETE_FRACTION),
        scope_key=os.environ.get("SLUICE_SCOPE_KEY") or None,
        max_staleness_hours=_positive("SLUICE_MAX_STALENESS_HOURS", MAX_STALENESS_HOURS),
        alert_timeout=_positive("SLUICE_ALERT_TIMEOUT", ALERT_TIMEOUT),
    )


def _fraction(name: str, default: float) -> float:
    value = _number(name, default)
    if not 0 <= value <= 1:  # also refuses nan
        raise InvalidSetting(f"environment variable {name}={value:g} must be between 0 and 1{UNSET_FIX}")
    return value


def _at_least(name: str, default: float, *, minimum: float) -> float:
    # a retention of 0 would sweep the folder of a run still between its ingest and its store_raw
    value = _number(name, default)
    if value < minimum:
        raise InvalidSetting(f"environment variable {name}={value:g} must be at least {minimum:g}{UNSET_FIX}")
    return value


def _positive(name: str, default: float) -> float:
    value = _number(name, default)
    if not value > 0:  # also refuses nan
        raise InvalidSetting(f"environment variable {name}={value:g} must be more than 0{UNSET_FIX}")
    return value
