"""Per-request hooks: one access log line per request (with its trace and span ids when traced) and the security
headers of every response (HSTS over HTTPS)."""

import json
import logging
import time

from flask import current_app, g, request
from werkzeug.exceptions import RequestEntityTooLarge, RequestURITooLarge

from webapp import tracing

access_log = logging.getLogger("webapp.access")

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    # JSON only: nothing may load, run or frame anything from these responses
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
}
# Below gunicorn's request-line limit (limit_request_line = 8190, gunicorn.conf.py), so an over-long URL gets
# this app's 414 that names the limit rather than gunicorn's shorter one. Every valid request fits: a source_id is at most 1,000
# UTF-8 bytes (3,000 percent-escaped), a search 200 characters (2,400 escaped).
MAX_URL_BYTES = 4096


def _start_clock() -> None:
    g.request_started = time.perf_counter()


def _refuse_long_urls() -> None:
    """414 in the JSON error shape for a path and query string over MAX_URL_BYTES, before any parameter is read."""
    # RAW_URI: the request target as sent (gunicorn and werkzeug set it), percent-escapes and all
    length = len(request.environ.get("RAW_URI") or request.full_path)
    if length > MAX_URL_BYTES:
        raise RequestURITooLarge(f"URLs (path and query string) are limited to {MAX_URL_BYTES} bytes; "
                                 f"this one has {length}")


def _refuse_large_bodies() -> None:
    """413 for a body over MAX_CONTENT_LENGTH: Flask checks only when a view reads the body, and none does."""
    if request.content_length or request.environ.get("wsgi.input_terminated"):
        try:
            # Past the limit werkzeug raises: at once for a Content-Length, on the read after the limit for a
            # chunked body (get_data() would stop quietly at the limit instead).
            while request.stream.read(64 * 1024):
                pass
        except RequestEntityTooLarge:
            raise RequestEntityTooLarge(
                f"request bodies are limited to {current_app.config['MAX_CONTENT_LENGTH']} bytes "
                "(SLUICE_MAX_CONTENT_LENGTH); this API reads none") from None


# Over HTTPS only (RFC 6797: a browser ignores it over HTTP): two years, this host only (not its subdomains,
# which this API does not own).
STRICT_TRANSPORT_SECURITY = "max-age=63072000"


def _finish(response):
    response.headers.update(SECURITY_HEADERS)
    if request.is_secure:  # gunicorn serving TLS, or a trusted proxy's X-Forwarded-Proto (gunicorn.conf.py)
        response.headers["Strict-Transport-Security"] = STRICT_TRANSPORT_SECURITY
    # Health, errors and lists change all the time; /data and /stats opt into revalidation with an ETag.
    response.headers.setdefault("Cache-Control", "no-store")
    started = g.get("request_started")
    duration_ms = round((time.perf_counter() - started) * 1000, 2) if started is not None else None
    fields = {"method": request.method, "path": request.path, "status": response.status_code,
              "duration_ms": duration_ms, **tracing.log_ids()}
    # JSON, so a path with spaces or quotes cannot break the line apart for log parsers
    access_log.info(json.dumps(fields), extra=fields)
    return response


def register(app) -> None:
    app.before_request(_start_clock)
    app.before_request(_refuse_long_urls)
    app.before_request(_refuse_large_bodies)
    app.after_request(_finish)
