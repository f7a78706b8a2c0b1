"""/ and /openapi.json: what the service is and how to call it."""

import logging

from flask import Blueprint, current_app, request

import sluice
from webapp import db, openapi, scopes
from webapp.openapi import documented
from webapp.responses import conditional_json
from webapp.schemas import index_schema, load_query, no_query_schema

blueprint = Blueprint("meta", __name__)
log = logging.getLogger(__name__)


@blueprint.get("/")
@documented(responses={200: index_schema}, errors=(400,))
def index():
    """Service name, version and the list of endpoints."""
    load_query(no_query_schema, request.args)
    endpoints = [{"path": openapi.openapi_path(rule), "methods": openapi.public_methods(rule),
                  "summary": openapi.operation_of(current_app, rule).summary}
                 for rule in sorted(current_app.url_map.iter_rules(), key=lambda rule: rule.rule)]
    return index_schema.dump({"service": "sluice", "version": sluice.__version__, "endpoints": endpoints})


@blueprint.get("/openapi.json")
@documented(responses={200: {"type": "object", "description": "an OpenAPI 3.1 document"}}, errors=(400,),
            etag="strong", open_access=True)
def openapi_document():
    """This API described as OpenAPI 3.1."""
    load_query(no_query_schema, request.args)
    # the routes are fixed once the app is built, so that part is built once; the sources' declared fields change
    # with runs, so they are read on every request (one small query) and the ETag tells a client when they did
    if "sluice_openapi" not in current_app.extensions:
        current_app.extensions["sluice_openapi"] = openapi.build(current_app)
    document = current_app.extensions["sluice_openapi"]
    try:
        # only the sources this request's credential may read (none without one): names of the others stay hidden
        declared = db.fetch_all("source_fields", {"source": None, "sources": scopes.current().source_list()})
    except db.DatabaseUnavailable:
        # the routes are still worth knowing while the warehouse is away: served without the per-source schemas
        log.warning("/openapi.json without the sources' declared fields: the warehouse is unavailable")
        return document
    return conditional_json(openapi.with_sources(document, declared))
