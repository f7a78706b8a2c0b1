"""Gunicorn's own refusals in the API's JSON error shape: a request line or header over its limits, malformed HTTP.

They never reach the app, so without this a client that reads every error as `{"code", "status", "message",
"errors"}` gets gunicorn's HTML page instead (a 414 for a URL over 8,190 bytes, a 431, a 400).
"""

import json
from http import HTTPStatus

from gunicorn import util
from gunicorn.workers.gthread import ThreadWorker

from webapp.hooks import SECURITY_HEADERS
from webapp.schemas import error_schema

INTERNAL_ERROR = "internal server error; the details are in the server log"


def write_json_error(sock, status_int: int, reason: str, mesg: str) -> None:
    """What gunicorn.util.write_error writes, as JSON: same status, Connection: close, the app's headers."""
    phrase = HTTPStatus(status_int).phrase  # the app's phrase for the same code, not gunicorn's spelling
    message = mesg if status_int < 500 else INTERNAL_ERROR  # gunicorn logs the details of a 500 itself
    body = json.dumps(error_schema.dump({"code": status_int, "status": phrase, "message": message or reason,
                                         "errors": {}})).encode()
    headers = {"Connection": "close", "Content-Type": "application/json", "Content-Length": str(len(body)),
               "Cache-Control": "no-store", **SECURITY_HEADERS}
    head = f"HTTP/1.1 {status_int} {phrase}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    util.write_nonblock(sock, head.encode("latin-1") + body)


class JsonErrorThreadWorker(ThreadWorker):
    """gunicorn's gthread worker, answering what it refuses in JSON.

    Gunicorn has no hook for its error page: Worker.handle_error builds the status and message and hands them
    to util.write_error, its only caller. The worker process replaces that function once, after the fork.
    """

    def init_process(self):
        util.write_error = write_json_error
        super().init_process()
