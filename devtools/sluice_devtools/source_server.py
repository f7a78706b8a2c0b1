"""A real HTTP server on 127.0.0.1 that serves sample sources and, on request, faults.

Routes map a path to a Route; json-server style pagination (`?_page=&_limit=` with a Link header, or
`?_start=&_limit=`) and `<field>_gte` filters are built in, so the same server plays JSONPlaceholder in the
demo, the tests and the bench. Faults (429, 5xx, truncation, stalls, bad bodies) are queued per path and served first.
"""

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlsplit


_COMPARE = {">=": str.__ge__, ">": str.__gt__, "<": str.__lt__, "<=": str.__le__}


@dataclass
class Fault:
    status: int = 200
    body: bytes = b""
    headers: dict = field(default_factory=dict)
    truncate_to: int | None = None  # close after this many bytes while announcing the full length
    stall_seconds: float = 0.0  # accept, then answer nothing for this long
    drip_seconds: float = 0.0  # send the body a byte at a time, pausing this long before each


@dataclass
class Route:
    body: bytes | None = None
    records: list | None = None  # JSON records; paginated and filtered like json-server
    content_type: str = "application/json"
    page_size: int | None = None  # paginate even without _page (like a real paginated API)
    # misbehaving paginations (issue #22): a cap on _limit (6 when 7 is asked), _limit ignored (page_size or
    # everything instead), the last page served again for every page after it, X-Total-Count left out
    max_page_size: int | None = None
    ignore_size: bool = False
    repeat_last_page: bool = False
    total_count: bool = True
    # query parameter -> (record field, ">=" | ">" | "<" | "<="): the records whose field compares so with the
    # parameter's value (as text: ISO times of one spelling compare as times), like a time cursor or window API
    filters: dict = field(default_factory=dict)
    faults: list[Fault] = field(default_factory=list)
    hits: list[float] = field(default_factory=list)


class SourceServer:
    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self.routes: dict[str, Route] = {}
        # (path with query, headers) of every request, to check what reached this host (credentials)
        self.requests: list[tuple[str, dict]] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                try:
                    server._serve(self)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout or a size limit under test): nothing to answer

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "SourceServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def serve_json(self, path: str, records: list, page_size: int | None = None, **behaviour) -> Route:
        """records at path, paginated like json-server; behaviour: the Route fields of a misbehaving one."""
        self.routes[path] = Route(records=records, page_size=page_size, **behaviour)
        return self.routes[path]

    def serve_bytes(self, path: str, body: bytes, content_type: str = "text/csv; charset=utf-8") -> Route:
        self.routes[path] = Route(body=body, content_type=content_type)
        return self.routes[path]

    def add_faults(self, path: str, *faults: Fault) -> None:
        with self._lock:
            self.routes[path].faults.extend(faults)

    def _serve(self, request: BaseHTTPRequestHandler) -> None:
        with self._lock:
            self.requests.append((request.path, dict(request.headers)))
        parts = urlsplit(request.path)
        route = self.routes.get(parts.path.lstrip("/"))
        if route is None:
            self._send(request, 404, b'{"error": "not found"}', {"Content-Type": "application/json"})
            return
        with self._lock:
            route.hits.append(time.monotonic())
            fault = route.faults.pop(0) if route.faults else None
        if fault is not None:
            self._send_fault(request, fault)
            return
        if route.records is None:
            self._send(request, 200, route.body, {"Content-Type": route.content_type})
            return
        body, headers = self._json_page(route, parts.path, parse_qs(parts.query))
        self._send(request, 200, body, headers)

    def _json_page(self, route: Route, path: str, query: dict) -> tuple[bytes, dict]:
        records = route.records
        for key, values in query.items():
            if key.endswith("_gte"):
                name, bound = key[:-4], float(values[0])
                records = [r for r in records if isinstance(r.get(name), (int, float)) and r[name] >= bound]
            elif key in route.filters:
                name, op = route.filters[key]
                records = [r for r in records if _COMPARE[op](str(r.get(name)), values[0])]
        headers = {"Content-Type": "application/json; charset=utf-8"}
        if route.total_count:
            headers["X-Total-Count"] = str(len(records))
        limit = route.page_size or 0 if route.ignore_size else int(query.get("_limit", [route.page_size or 0])[0])
        if route.max_page_size:
            limit = min(limit or route.max_page_size, route.max_page_size)
        if "_start" in query:  # json-server's offset paging: `_start` records skipped, `_limit` (or all) returned
            start = int(query["_start"][0])
            if route.repeat_last_page and records and start >= len(records):
                start = (len(records) - 1) // limit * limit if limit else 0  # the last page's window again
            return json.dumps(records[start: start + limit if limit else None]).encode(), headers
        if not limit:
            return json.dumps(records).encode(), headers
        page = int(query.get("_page", ["1"])[0])
        last = max(1, -(-len(records) // limit))
        if route.repeat_last_page:
            page = min(page, last)
        base = {k: v[0] for k, v in query.items() if k not in ("_page", "_limit")}

        def link(number):
            return f"<{self.url}{path}?{urlencode({**base, '_page': number, '_limit': limit})}>"

        links = [f'{link(1)}; rel="first"']
        if page < last:
            links.append(f'{link(page + 1)}; rel="next"')
        links.append(f'{link(last)}; rel="last"')
        headers["Link"] = ", ".join(links)
        return json.dumps(records[(page - 1) * limit: page * limit]).encode(), headers

    @staticmethod
    def _send(request, status: int, body: bytes, headers: dict) -> None:
        request.send_response(status)
        for name, value in headers.items():
            request.send_header(name, value)
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)

    def _send_fault(self, request, fault: Fault) -> None:
        if fault.stall_seconds:
            time.sleep(fault.stall_seconds)
        request.send_response(fault.status)
        for name, value in fault.headers.items():
            request.send_header(name, value)
        request.send_header("Content-Length", str(len(fault.body)))
        request.end_headers()
        if fault.drip_seconds:
            for byte in fault.body:
                time.sleep(fault.drip_seconds)
                request.wfile.write(bytes([byte]))
                request.wfile.flush()
            return
        if fault.truncate_to is not None:
            request.wfile.write(fault.body[: fault.truncate_to])
            request.wfile.flush()
            request.close_connection = True
            request.connection.shutdown(2)
            return
        request.wfile.write(fault.body)
