"""Targets for checks and alerts: an HTTP(S) service in a thread whose answer the test
switches, and a small tmpfs the test fills."""

from __future__ import annotations

import contextlib
import http.server
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit


class _Handler(http.server.BaseHTTPRequestHandler):
    """/health: status from server.state, a JSON body; /slow?ms=N: answers after N ms;
    /headers: the request's headers as JSON; /big: 3 MiB of text."""

    protocol_version = "HTTP/1.1"
    server: _Server

    def do_GET(self) -> None:  # noqa: N802
        url = urlsplit(self.path)
        status, body = 200, b""
        if url.path == "/health":
            status = self.server.state["status"]
            body = json.dumps({"status": "healthy" if status == 200 else "down",
                               "db": {"status": self.server.state["db"]}, "version": 3}).encode()
        elif url.path == "/slow":
            time.sleep(int(parse_qs(url.query)["ms"][0]) / 1000)
            body = b'{"status": "healthy"}'
        elif url.path == "/headers":
            body = json.dumps(dict(self.headers.items())).encode()
        elif url.path == "/big":
            body = b"x" * (3 << 20) + b"END"
        else:
            status = 404
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    state: dict[str, Any]


class HttpTarget:
    def __init__(self, ctx: Any = None) -> None:
        self.server = _Server(("127.0.0.1", 0), _Handler)
        self.server.state = {"status": 200, "db": "ok"}
        if ctx is not None:
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.scheme = "https" if ctx is not None else "http"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"{self.scheme}://{host}:{self.port}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()



@contextlib.contextmanager
def mounted_tmpfs(mountpoint: Path, options: str = "size=4m") -> Iterator[Path]:
    """A tmpfs mounted for the test (tests run as root), unmounted after it."""
    mountpoint.mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mountpoint)],
                   check=True, capture_output=True)
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=True, capture_output=True)
