"""An OTLP/HTTP trace receiver for tests: spans exported by the mesh's processes, decoded with
opentelemetry-proto, kept for assertions."""

from __future__ import annotations

import gzip
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest, ExportTraceServiceResponse

KINDS = {0: "UNSPECIFIED", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}
STATUS = {0: "UNSET", 1: "OK", 2: "ERROR"}


def _value(v: Any) -> Any:
    which = v.WhichOneof("value")
    if which == "array_value":
        return [_value(x) for x in v.array_value.values]
    if which == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, which) if which else None


def _attributes(attrs: Any) -> dict[str, Any]:
    return {a.key: _value(a.value) for a in attrs}


def _strings(value: Any) -> list[str]:
    """Every string inside an attribute value (arrays and key-value lists included; bytes decoded)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, bytes):
        return [value.decode("utf-8", "replace")]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (k, *_strings(v))]
    return []


@dataclass
class Span:
    trace_id: str
    span_id: str
    parent_id: str
    name: str
    kind: str
    service: str
    attributes: dict[str, Any] = field(default_factory=dict)
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    status_code: str = "UNSET"
    status_message: str = ""
    resource: dict[str, Any] = field(default_factory=dict)

    def texts(self) -> list[str]:
        """Every string the span exports: its name, attribute keys and values, event names and attributes,
        its status message, and its resource's attributes."""
        out = [self.name, self.status_message, *_strings(self.attributes), *_strings(self.resource)]
        for name, attrs in self.events:
            out += [name, *_strings(attrs)]
        return out


class OTLPReceiver:
    """`with OTLPReceiver() as r:` serves POST /v1/traces on 127.0.0.1:<r.port>."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path == "/v1/traces":
                    receiver._store(ExportTraceServiceRequest.FromString(body))
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def _store(self, request: ExportTraceServiceRequest) -> None:
        spans = []
        for rs in request.resource_spans:
            resource = _attributes(rs.resource.attributes)
            service = resource.get("service.name", "")
            for ss in rs.scope_spans:
                for s in ss.spans:
                    spans.append(Span(s.trace_id.hex(), s.span_id.hex(), s.parent_span_id.hex(), s.name,
                                      KINDS.get(s.kind, str(s.kind)), service, _attributes(s.attributes),
                                      [(e.name, _attributes(e.attributes)) for e in s.events],
                                      STATUS.get(s.status.code, str(s.status.code)), s.status.message,
                                      resource))
        with self._lock:
            self.spans.extend(spans)

    def traces(self) -> dict[str, list[Span]]:
        """Spans grouped by trace id."""
        out: dict[str, list[Span]] = defaultdict(list)
        with self._lock:
            for s in self.spans:
                out[s.trace_id].append(s)
        return out

    def wait_for(self, predicate: Any, timeout: float = 20.0) -> bool:
        """Wait until predicate(self) is true."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self):
                return True
            time.sleep(0.2)
        return False

    def __enter__(self) -> OTLPReceiver:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
