"""A real OTLP/HTTP endpoint on loopback for the tests: POST /v1/traces and /v1/metrics with protobuf bodies, kept
as sent, answered as a collector answers."""

import gzip
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (ExportMetricsServiceRequest,
                                                                          ExportMetricsServiceResponse)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (ExportTraceServiceRequest,
                                                                      ExportTraceServiceResponse)

REPLIES = {"/v1/traces": ExportTraceServiceResponse, "/v1/metrics": ExportMetricsServiceResponse}


class OtlpReceiver(ThreadingHTTPServer):
    def __init__(self):
        super().__init__(("127.0.0.1", 0), _OtlpHandler)
        self.bodies: list[bytes] = []  # span exports only, as test_tracing reads them
        self.metric_bodies: list[bytes] = []
        self.paths: list[str] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def spans(self) -> list[tuple[dict, object]]:
        """(resource attributes, span) of every span received."""
        found = []
        for body in self.bodies:
            export = ExportTraceServiceRequest.FromString(body)
            for resource_spans in export.resource_spans:
                resource = attributes(resource_spans.resource)
                found.extend((resource, span) for scope in resource_spans.scope_spans for span in scope.spans)
        return found

    def metrics(self) -> list[tuple[dict, object]]:
        """(resource attributes, metric) of every metric of every export received."""
        found = []
        for body in self.metric_bodies:
            export = ExportMetricsServiceRequest.FromString(body)
            for resource_metrics in export.resource_metrics:
                resource = attributes(resource_metrics.resource)
                found.extend((resource, metric) for scope in resource_metrics.scope_metrics
                             for metric in scope.metrics)
        return found


class _OtlpHandler(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        reply = REPLIES.get(self.path)
        if reply is None:
            self.send_error(404)
            return
        with self.server.lock:
            self.server.paths.append(self.path)
            (self.server.bodies if self.path == "/v1/traces" else self.server.metric_bodies).append(body)
        answer = reply().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass  # the test reads what was received, not the receiver's own log


def attributes(item) -> dict:
    """An OTLP span's, resource's or data point's attributes as a plain dict."""
    return {a.key: getattr(a.value, a.value.WhichOneof("value")) for a in item.attributes}


@pytest.fixture
def receiver():
    server = OtlpReceiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
