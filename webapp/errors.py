"""One JSON error shape for every failure: {"code", "status", "message", "errors"}; never HTML or tracebacks."""

import logging
from http import HTTPStatus

from flask import jsonify, request
from marshmallow import ValidationError
from werkzeug.exceptions import HTTPException

from webapp.db import DatabaseUnavailable
from webapp.schemas import error_schema

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 5


def error_response(code: int, message: str, errors: dict | None = None, extra: dict | None = None):
    """The one error shape; extra: details an operation documents beside it (a rejected record's rejection)."""
    body = error_schema.dump({"code": code, "status": HTTPStatus(code).phrase, "message": message,
                              "errors": errors or {}})
    body.update(extra or {})
    response = jsonify(body)
    response.status_code = code
    return response


def _http_error(error: HTTPException):
    if error.code is None or error.code < 400:
        return error  # a routing redirect (e.g. 308), not an error
    response = error_response(error.code, error.description or HTTPStatus(error.code).phrase)
    # keep the headers the error itself defines: Allow on 405, Retry-After, WWW-Authenticate...
    for name, value in error.get_headers(request.environ):
        if name.lower() != "content-type":
            response.headers[name] = value
    return response


def _invalid_parameters(error: ValidationError):
    messages = error.messages if isinstance(error.messages, dict) else {"_schema": error.messages}
    return error_response(400, f"invalid {', '.join(sorted(messages))}", messages)


def _database_unavailable(error: DatabaseUnavailable):
    response = error_response(503, str(error))
    response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


def _unexpected(error: Exception):
    # The traceback goes to the log for the operator; the client learns only that it was our fault.
    log.error("unhandled error on %s %s", request.method, request.path, exc_info=error)
    return error_response(500, "internal server error; the details are in the server log")


def register(app) -> None:
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(ValidationError, _invalid_parameters)
    app.register_error_handler(DatabaseUnavailable, _database_unavailable)
    app.register_error_handler(Exception, _unexpected)
