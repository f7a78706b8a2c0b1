"""Per-request hooks: one access log line per request and the security headers of every response."""

import json
import logging
import time

from flask import current_app, g, request
from werkzeug.exceptions import RequestEntityTooLarge

access_log = logging.getLogger("webapp.access")

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    # JSON only: nothing may load, run or frame anything from these responses
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
}


def _start_clock() -> None:
    g.request_started = time.perf_counter()


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


def _finish(response):
    response.headers.update(SECURITY_HEADERS)
    # Health, errors and lists change all the time; /data and /stats opt into revalidation with an ETag.
    response.headers.setdefault("Cache-Control", "no-store")
    started = g.get("request_started")
    duration_ms = round((time.perf_counter() - started) * 1000, 2) if started is not None else None
    fields = {"method": request.method, "path": request.path, "status": response.status_code,
              "duration_ms": duration_ms}
    # JSON, so a path with spaces or quotes cannot break the line apart for log parsers
    access_log.info(json.dumps(fields), extra=fields)
    return response


def register(app) -> None:
    app.before_request(_start_clock)
    app.before_request(_refuse_large_bodies)
    app.after_request(_finish)
