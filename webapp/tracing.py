"""OpenTelemetry traces of the read API, exported over OTLP/HTTP when OTEL_EXPORTER_OTLP_ENDPOINT (or
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) is set: a server span per request, a child span per warehouse statement.

Unset, nothing is installed: no hook, no provider, no exporter thread. The spans are made here with the
OpenTelemetry SDK rather than by opentelemetry-instrumentation-flask/-psycopg2: those pin
opentelemetry-semantic-conventions 0.66b1, while the SDK that Airflow's pins bring (1.45.2) needs 0.66b2.
Owning the spans also decides what they hold: the route, the path, the status and SQL with its placeholders;
never a header (Authorization), the query string or a statement's parameters.
"""

import contextlib
import os

from flask import current_app, g, request
from opentelemetry import context, propagate, trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
DEFAULT_SERVICE_NAME = "sluice-api"
EXTENSION = "sluice_tracing"


def enabled() -> bool:
    return any(os.environ.get(name) for name in ENDPOINT_VARIABLES)


def init_app(app) -> None:
    """Trace the app's requests when an OTLP endpoint is set. Call before any other before_request hook, so a
    request refused by one (414, 401, 429) is traced too.

    Gunicorn loads the app in each worker after the fork (gunicorn.conf.py sets no preload_app), so each worker
    has one provider and its batch thread; the SDK restarts that thread in a forked child anyway."""
    if not enabled():
        return
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME") or DEFAULT_SERVICE_NAME})
    provider = TracerProvider(resource=resource)  # the sampler from OTEL_TRACES_SAMPLER, parent-based by default
    # The exporter reads the endpoint, its headers (a collector's token: never logged here) and timeout from env.
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    app.extensions[EXTENSION] = provider.get_tracer("webapp")
    app.extensions[EXTENSION + "_provider"] = provider
    app.before_request(_start_server_span)
    app.after_request(_record_status)
    app.teardown_request(_end_server_span)


def provider(app):
    """The app's TracerProvider (to flush or shut down), None when tracing is off."""
    return app.extensions.get(EXTENSION + "_provider")


def _start_server_span() -> None:
    rule = request.url_rule.rule if request.url_rule else None
    # A caller's W3C traceparent makes this request part of its trace (OTEL_PROPAGATORS, tracecontext by default).
    parent = propagate.extract(request.headers)
    span = current_app.extensions[EXTENSION].start_span(
        f"{request.method} {rule}" if rule else request.method, context=parent, kind=SpanKind.SERVER,
        attributes={"http.request.method": request.method, "url.scheme": request.scheme,
                    "url.path": request.path, **({"http.route": rule} if rule else {})})
    g.trace_span = span
    g.trace_token = context.attach(trace.set_span_in_context(span, parent))


def _record_status(response):
    span = g.get("trace_span")
    if span is not None:
        span.set_attribute("http.response.status_code", response.status_code)
        if response.status_code >= 500:
            span.set_status(Status(StatusCode.ERROR))
    return response


def _end_server_span(_error=None) -> None:
    span = g.pop("trace_span", None)
    if span is None:
        return
    context.detach(g.pop("trace_token"))
    span.end()


def database_span(name: str, statement, conn):
    """A client span around one statement of the named query `name`: db.statement is the SQL as sent to
    psycopg2, placeholders and all (the values travel apart and are not recorded). A no-op when tracing is off."""
    tracer = current_app.extensions.get(EXTENSION)
    if tracer is None:
        return contextlib.nullcontext()
    return _database_span(tracer, name, statement, conn)


@contextlib.contextmanager
def _database_span(tracer, name: str, statement, conn):
    text = statement if isinstance(statement, str) else statement.as_string(conn)
    attributes = {"db.system": "postgresql", "db.system.name": "postgresql", "db.statement": text,
                  "db.query.text": text, "db.operation.name": name, "db.name": conn.info.dbname,
                  "server.port": conn.info.port}
    # record_exception off: a driver's message may quote a value; the error's type says enough
    with tracer.start_as_current_span(f"postgresql {name}", kind=SpanKind.CLIENT, attributes=attributes,
                                      record_exception=False, set_status_on_exception=False) as span:
        try:
            yield span
        except Exception as error:
            span.set_attribute("error.type", type(error).__qualname__)
            span.set_status(Status(StatusCode.ERROR))
            raise


def log_ids() -> dict:
    """The active span's trace and span ids for a JSON log line; {} outside a traced request."""
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return {}
    return {"trace_id": trace.format_trace_id(span_context.trace_id),
            "span_id": trace.format_span_id(span_context.span_id)}
