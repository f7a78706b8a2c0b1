"""/export/<source>: every row of one source streamed as CSV or NDJSON from one snapshot, by COPY, with bounded
memory; at most EXPORT_CONCURRENCY at once per process, and a client that goes away cancels the query at once."""

import itertools
import json
import logging
import threading
import time

from flask import Blueprint, Response, current_app, request
from psycopg2.errors import LockNotAvailable
from werkzeug.exceptions import NotFound, ServiceUnavailable

from webapp import audit, auth, db, export, scopes
from webapp.copy_stream import CopyStream
from webapp.openapi import documented
from webapp.routes_data import WATERMARK_HEADER
from webapp.source_catalog import declared_fields
from webapp.schemas import export_query_schema, load_query, source_path_schema

blueprint = Blueprint("export", __name__)
log = logging.getLogger(__name__)
RETRY_AFTER_SECONDS = 30  # an export takes seconds to minutes: asking again sooner would only be refused again
BODY_SCHEMA = {"type": "string", "description": (
    "csv (text/csv): a header line of the column names, then one line per record, as RFC 4180 quotes them; a null "
    "is an empty field, an empty text \"\"; times as /data writes them, numbers with every digit; a declared field "
    "of type json as its JSON text. ndjson (application/x-ndjson): one JSON object per line, each the record as "
    "/data serves it (declared fields in attributes), then a last line {\"_watermark\": \"…\"}; a body without "
    "that line was cut short")}


def init_app(app) -> None:
    app.extensions["sluice_export_slots"] = threading.BoundedSemaphore(app.config["EXPORT_CONCURRENCY"]) \
        if app.config["EXPORT_CONCURRENCY"] else None


def _output(args: dict) -> str:
    if "output" in args:
        return args["output"]
    best = request.accept_mimetypes.best_match(list(export.FORMATS.values()), default=export.FORMATS["csv"])
    return "ndjson" if best == export.FORMATS["ndjson"] else "csv"


def _take_slot():
    """One of this process's export slots, or a 503 with Retry-After: exports must leave threads to the rest."""
    slots = current_app.extensions["sluice_export_slots"]
    if slots is None or not slots.acquire(blocking=False):
        raise ServiceUnavailable(
            f"{current_app.config['EXPORT_CONCURRENCY']} exports are already running in this process, the most it "
            f"runs at once; try again later", retry_after=RETRY_AFTER_SECONDS)
    return slots


@blueprint.get("/export/<source>")
@documented(path=source_path_schema, query=export_query_schema, responses={200: BODY_SCHEMA},
            errors=(400, 404, 503), media_type=tuple(export.FORMATS.values()),
            headers={WATERMARK_HEADER: "the watermark of the export's snapshot: poll /data?updated_since=<it> next "
                                       "(ndjson repeats it on its last line)"})
def export_source(source):
    """Every row of one source, in id order, from one snapshot: CSV or NDJSON, streamed."""
    auth.require_sources()
    name = source_path_schema.load({"source": source})["source"]
    args = load_query(export_query_schema, request.args)
    output = _output(args)
    known = {row["source"] for row in db.fetch_all("known_sources", {"sources": scopes.current().source_list()})}
    if name not in known:  # a source the credential may not read is answered as one that does not exist
        raise NotFound(f"no source named {name!r}")
    selection = export.select(name, declared_fields(name), args.get("field_names"))
    if request.method == "HEAD":  # what a GET would answer, without running the export
        return Response(mimetype=export.FORMATS[output])
    slots = _take_slot()
    try:
        # before the snapshot, as /data: every change the export misses commits later, stamped at or after it
        watermark = db.fetch_one_before_snapshot("data_watermark")["watermark"].isoformat()
        config = current_app.config
        db.fetch_one("export_begin", {"statement_timeout": str(config["EXPORT_STATEMENT_TIMEOUT_MS"]),
                                      "lock_timeout": str(config["STATEMENT_TIMEOUT_MS"])})
        params = {"source": name, "updated_since": args.get("updated_since"),
                  "include_deleted": args["include_deleted"], "after": args.get("after")}
        statement = export.statement(output, selection, params)
        conn = db.get_db()
        with conn.cursor() as cursor:
            # the driver's own interpolation (execute does the same): COPY takes no parameters
            copy = cursor.mogrify(statement.as_string(conn), params)
        stream = CopyStream(conn, copy)
    except BaseException:
        slots.release()
        raise
    # from here the response owns the connection and the slot: whatever ends it gives both back
    return _stream(stream, db.detach(), slots, name, output, watermark)


def _stream(stream: CopyStream, conn, slots, source: str, output: str, watermark: str) -> Response:
    """The response streaming the COPY; its first block is read here, so a statement that fails at once answers
    a 503 in the error shape. Whatever ends it, closing it gives back the connection and the slot."""
    store, principal = db.warehouse(), scopes.current().principal
    client, started, sent = request.remote_addr, time.perf_counter(), [0]
    config = current_app.config

    def finish():
        complete = False
        try:
            stream.close()
            complete = stream.complete
        finally:
            # a COPY cut short leaves the connection mid-protocol: closed, and the pool opens another
            store.give_back(conn, broken=not complete)
            slots.release()
            audit.export_finished(principal, source, output, stream.rows if complete else None, sent[0], complete,
                                  client, round((time.perf_counter() - started) * 1000, 2))

    try:
        first = next(stream, b"")
    except Exception as error:
        finish()
        timeout_ms = config["STATEMENT_TIMEOUT_MS" if isinstance(error, LockNotAvailable) else
                            "EXPORT_STATEMENT_TIMEOUT_MS"]
        raise db.statement_failure(error, f"export_{output}", timeout_ms) from error

    def body():
        try:
            for chunk in itertools.chain((first,), stream):
                sent[0] += len(chunk)
                yield chunk
        except Exception:
            log.warning("export of %s cut short after %d bytes: the warehouse failed", source, sent[0], exc_info=True)
            raise
        if output == "ndjson":
            yield json.dumps({"_watermark": watermark}).encode() + b"\n"

    audit.records([source], 0)  # the request's line; the export's own line counts the rows once it ended
    response = Response(body(), mimetype=export.FORMATS[output])  # text/csv gets "; charset=utf-8"
    response.call_on_close(finish)
    response.headers[WATERMARK_HEADER] = watermark
    response.headers["Content-Disposition"] = f'attachment; filename="{source}.{output}"'
    response.headers["Cache-Control"] = "no-store"
    return response
