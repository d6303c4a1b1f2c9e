"""An OTLP/HTTP receiver for the tests (tests/suite/otel.rs).

Listens on 127.0.0.1 (an ephemeral port, written to --port-file), decodes
what is POSTed to /v1/traces and /v1/metrics with the official protocol
definitions (opentelemetry-proto from PyPI), and appends one JSON line per
span and per metric data point to --out. Answers like a collector: 200 with
the Export*ServiceResponse, 415 for a body that is not protobuf, 400 for one
that does not decode, 404 for other paths. Stops by itself after
--max-seconds.

    python scripts/otlp_receiver.py --out otlp.jsonl --port-file port [--max-seconds 600]
"""

import argparse
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

LOCK = threading.Lock()


def any_value(v):
    which = v.WhichOneof("value")
    return getattr(v, which) if which else None


def attributes(kvs):
    return {kv.key: any_value(kv.value) for kv in kvs}


def spans(body, headers):
    request = ExportTraceServiceRequest.FromString(body)
    for rs in request.resource_spans:
        resource = attributes(rs.resource.attributes)
        for ss in rs.scope_spans:
            for span in ss.spans:
                yield {
                    "signal": "span",
                    "name": span.name,
                    "trace_id": span.trace_id.hex(),
                    "span_id": span.span_id.hex(),
                    "parent_span_id": span.parent_span_id.hex(),
                    "start": span.start_time_unix_nano,
                    "end": span.end_time_unix_nano,
                    "attributes": attributes(span.attributes),
                    "resource": resource,
                    "headers": headers,
                }


def points(body, headers):
    request = ExportMetricsServiceRequest.FromString(body)
    for rm in request.resource_metrics:
        resource = attributes(rm.resource.attributes)
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                kind = metric.WhichOneof("data")
                data = getattr(metric, kind)
                for p in data.data_points:
                    out = {
                        "signal": "metric",
                        "name": metric.name,
                        "kind": kind,
                        "attributes": attributes(p.attributes),
                        "time": p.time_unix_nano,
                        "resource": resource,
                        "headers": headers,
                    }
                    if kind in ("sum", "gauge"):
                        out["value"] = p.as_double if p.HasField("as_double") else p.as_int
                    if kind == "sum":
                        out["monotonic"] = data.is_monotonic
                    if kind == "histogram":
                        out["count"] = p.count
                        out["sum"] = p.sum
                        out["bounds"] = list(p.explicit_bounds)
                        out["buckets"] = list(p.bucket_counts)
                    yield out


class Handler(BaseHTTPRequestHandler):
    out = None

    def answer(self, code, body=b"", content_type="text/plain"):
        self.send_response(code)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length)
        routes = {
            "/v1/traces": (spans, ExportTraceServiceResponse),
            "/v1/metrics": (points, ExportMetricsServiceResponse),
        }
        if self.path not in routes:
            self.answer(404, b"unknown path")
            return
        if self.headers.get("content-type") != "application/x-protobuf":
            self.answer(415, b"expected application/x-protobuf")
            return
        decode, response = routes[self.path]
        headers = {"x-test": self.headers.get("x-test")}
        try:
            records = list(decode(body, headers))
        except DecodeError as error:
            self.answer(400, str(error).encode())
            return
        with LOCK, open(self.out, "a", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record) + "\n")
        self.answer(200, response().SerializeToString(), "application/x-protobuf")

    def log_message(self, *args):
        pass


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--port-file", required=True)
    parser.add_argument("--max-seconds", type=float, default=600)
    args = parser.parse_args()
    Handler.out = args.out
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    tmp = args.port_file + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(str(server.server_address[1]))
    os.replace(tmp, args.port_file)
    threading.Timer(args.max_seconds, server.shutdown).start()
    server.serve_forever()


if __name__ == "__main__":
    main()
