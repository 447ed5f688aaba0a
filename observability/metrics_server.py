"""`/metrics`, `/healthz` and `/readyz` for processes without a web framework (the actors), served from a
background thread so a busy event loop never makes a health check time out."""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson
from prometheus_client import REGISTRY
from prometheus_client.exposition import choose_encoder


def start_metrics_server(port: int, host: str = "127.0.0.1", ready: Callable[[], bool] | None = None,
                         service: str = "") -> int:
    """Serve metrics and health on host:port (0 picks a free port); returns the bound port. `/healthz` and
    `/readyz` name `service`, so whoever checks a port can tell that the process it meant is the one answering."""
    name = orjson.dumps(service)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
                self._send(200, encoder(REGISTRY), content_type)
            elif path == "/healthz":
                self._send(200, b'{"status":"ok","service":' + name + b"}", "application/json")
            elif path == "/readyz":
                ok = ready() if ready else True
                status = b'"ready"' if ok else b'"not ready"'
                self._send(200 if ok else 503, b'{"status":' + status + b',"service":' + name + b"}",
                           "application/json")
            else:
                self._send(404, b'{"detail":"not found"}', "application/json")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:  # scrapes every few seconds: keep logs quiet
            return

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics-server", daemon=True).start()
    return int(server.server_address[1])
