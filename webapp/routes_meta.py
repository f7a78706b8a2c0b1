"""/ and /openapi.json: what the service is and how to call it."""

from flask import Blueprint, current_app, request

import sluice
from webapp import openapi
from webapp.openapi import documented
from webapp.schemas import index_schema, load_query, no_query_schema

blueprint = Blueprint("meta", __name__)


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
@documented(responses={200: {"type": "object", "description": "an OpenAPI 3.1 document"}}, errors=(400,))
def openapi_document():
    """This API described as OpenAPI 3.1."""
    load_query(no_query_schema, request.args)
    # the routes are fixed once the app is built, so one document serves every later request
    if "sluice_openapi" not in current_app.extensions:
        current_app.extensions["sluice_openapi"] = openapi.build(current_app)
    return current_app.extensions["sluice_openapi"]
