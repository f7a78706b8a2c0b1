"""An OTLP/HTTP trace endpoint on loopback for the bench: it answers as a collector does and counts the spans it
received, so the "metrics + tracing" variant pays for real export (serialization, HTTP) and shows it happened."""

import contextlib
import gzip
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (ExportTraceServiceRequest,
                                                                      ExportTraceServiceResponse)

_REPLY = ExportTraceServiceResponse().SerializeToString()


class OtlpSink(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.bodies: list[bytes] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def spans(self) -> int:
        """Spans received so far (parsed here, not while the load runs)."""
        with self.lock:
            bodies = list(self.bodies)
        return sum(len(scope.spans) for body in bodies
                   for resource in ExportTraceServiceRequest.FromString(body).resource_spans
                   for scope in resource.scope_spans)


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        with self.server.lock:
            self.server.bodies.append(body)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(_REPLY)))
        self.end_headers()
        self.wfile.write(_REPLY)

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def running():
    sink = OtlpSink()
    thread = threading.Thread(target=sink.serve_forever, daemon=True)
    thread.start()
    try:
        yield sink
    finally:
        sink.shutdown()
        sink.server_close()
