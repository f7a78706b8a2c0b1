"""The audit trail: JSON lines on the logger `sluice.audit`, apart from the access log, so deployments ship it
separately. Who read what (key name or token subject, route, sources, status, rows, duration), each refused
credential (why, from where; never the credential: at most the first 8 hex digits of a key's hash), and each key
created or revoked (by which OS user). No line holds a secret."""

import json
import logging
import time
from datetime import datetime, timezone

from flask import g, request

from webapp import tracing

audit_log = logging.getLogger("sluice.audit")


def _emit(event: str, **fields) -> None:
    line = {"event": event, "at": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), **fields,
            **tracing.log_ids()}
    audit_log.info(json.dumps(line, sort_keys=True, default=str))


def records(sources, rows: int) -> None:
    """What the route served: the sources it read (names, or None for every source) and how many rows."""
    g.audit_read = (None if sources is None else sorted(set(sources)), rows)


def refused(reason: str, key_id: str | None = None, name: str | None = None, subject: str | None = None) -> None:
    _emit("credential_refused", reason=reason, client=request.remote_addr, method=request.method,
          path=request.path, key_id=key_id, key_name=name, subject=subject)


def key_created(name: str, sources, operations: bool, expires_at, by: str) -> None:
    _emit("key_created", key_name=name, sources=sources, operations=operations, expires_at=expires_at, by=by)


def key_revoked(name: str, by: str) -> None:
    _emit("key_revoked", key_name=name, by=by)


def export_finished(principal: str | None, source: str, output: str, rows: int | None, sent_bytes: int,
                    complete: bool, client: str | None, duration_ms: float) -> None:
    """An export's end, after its last byte (its request line was written when it began): rows is None when it
    was cut short (the client went away, or the warehouse failed)."""
    if principal is None:
        return
    _emit("export", principal=principal, source=source, format=output, rows=rows, bytes=sent_bytes,
          complete=complete, client=client, duration_ms=duration_ms)


def request_served(response):
    """after_request: one line per request an authenticated principal made."""
    scope = g.get("scope")
    if scope is None or scope.principal is None:
        return response
    sources, rows = g.get("audit_read", ([], 0))  # a route that answered an error read nothing
    started = g.get("request_started")
    _emit("request", principal=scope.principal, method=request.method,
          route=request.url_rule.rule if request.url_rule else None, path=request.path, sources=sources,
          status=response.status_code, rows=rows, client=request.remote_addr,
          duration_ms=round((time.perf_counter() - started) * 1000, 2) if started is not None else None)
    return response
