"""A real collector (`opsagent server`) as a child process on a free 127.0.0.1 port."""

from __future__ import annotations

import gzip
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def opsagent(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.cli", *args], cwd=REPO, text=True,
                          capture_output=True, check=check, timeout=60)


class CollectorProc:
    """``opsagent server --db DB`` on its own port; start, stop, kill -9 and start again."""

    def __init__(self, db: str, log: Path, port: int | None = None, workers: int = 1,
                 stale_after: str = "5m", extra: tuple[str, ...] = (),
                 verify: str | bool = True) -> None:
        self.db = db
        self.log = log
        self.port = port or free_port()
        self.workers = workers
        self.stale_after = stale_after
        self.extra = extra
        self.verify = verify  # a CA file when the server speaks TLS
        tls = "--tls-cert" in extra
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> CollectorProc:
        out = open(self.log, "ab")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "server", "--db", self.db, "--listen",
             f"127.0.0.1:{self.port}", "--workers", str(self.workers),
             "--stale-after", self.stale_after, *self.extra],
            cwd=REPO, stdout=out, stderr=out, start_new_session=True)
        out.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"collector exited {self.proc.returncode}:\n"
                                     + self.log.read_text(errors="replace"))
            try:
                if self._up():
                    return self
            except (httpx.HTTPError, OSError):
                pass
            time.sleep(0.05)
        raise AssertionError("collector did not answer:\n" + self.log.read_text(errors="replace"))

    def _up(self) -> bool:
        if "--tls-client-ca" in self.extra:  # needs a client certificate: the port is enough
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        return httpx.get(self.url + "/healthz", timeout=1, verify=self.verify
                         ).status_code == 200

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=20)
                raise AssertionError("the collector ignored SIGTERM for 20 s") from None
        self.proc = None

    def token(self, host: str) -> str:
        return opsagent("server", "token", "add", host, "--db", self.db).stdout.strip()

    def post(self, token: str, reports: list[Any], *, gzipped: bool = True) -> httpx.Response:
        body = json.dumps({"reports": [json.loads(r.model_dump_json()) if hasattr(
            r, "model_dump_json") else r for r in reports]}).encode()
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        if gzipped:
            body = gzip.compress(body)
            headers["Content-Encoding"] = "gzip"
        return httpx.post(self.url + "/api/v1/reports", content=body, headers=headers,
                          timeout=30)

    def stored(self, host: str | None = None) -> list[dict[str, Any]]:
        """Every report the collector stored (for host), read from its SQLite database."""
        import sqlite3

        query, args = "SELECT body FROM reports", ()
        if host is not None:
            query, args = query + " WHERE host = ?", (host,)
        with sqlite3.connect(self.db) as conn:
            return [json.loads(b) for (b,) in conn.execute(query, args)]

    def get(self, path: str) -> Any:
        r = httpx.get(self.url + path, timeout=30)
        r.raise_for_status()
        return r.json()
