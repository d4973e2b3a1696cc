"""The local ``/health`` endpoint (``health_listen: 127.0.0.1:9110``): 200 when every check
is healthy, 503 otherwise, with each check's status, message, latency and recent history as
JSON — what a load balancer or an uptime monitor polls."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Source = Callable[[], tuple[str, dict[str, Any]]]


def serve(host: str, port: int, source: Source, agent_host: str) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        server_version = "opsagent"

        def do_GET(self) -> None:  # noqa: N802 (the http.server API)
            path = self.path.split("?", 1)[0]
            if path not in ("/health", "/health/"):
                self._send(404, {"error": "not found; try /health"})
                return
            status, checks = source()
            self._send(200 if status == "healthy" else 503,
                       {"status": status, "host": agent_host, "at": time.time(),
                        "checks": checks})

        def _send(self, code: int, doc: dict[str, Any]) -> None:
            body = json.dumps(doc, default=str).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Cache-Control", "no-store")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass  # polled every few seconds: not worth a log line each

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="opsagent-health", daemon=True).start()
    return server
