"""A throw-away Redis server for the tests: Debian's redis-server on a free 127.0.0.1 port,
in the foreground as a child process, nothing persisted (no RDB snapshot, no AOF)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from typing import Any

from tests.harness.collector import free_port
from tests.harness.procs import end


class RedisServer:
    def __init__(self, *options: str, password: str | None = None) -> None:
        """``options`` are extra redis-server arguments, e.g. ("--maxmemory", "2mb");
        ``password`` sets requirepass (and is what ``client()`` logs in with)."""
        self.port = free_port()
        self.password = password
        self.options = (*options, "--requirepass", password) if password else options
        self.dir = tempfile.mkdtemp(prefix="opsagent-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15.0) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise AssertionError("redis-server is not installed (apt-get install redis-server); "
                                 "scripts/test.sh installs it")
        self.log = os.path.join(self.dir, "redis.log")
        with open(self.log, "wb") as log:  # a file, not a pipe nobody drains
            self.proc = subprocess.Popen(
                [binary, "--port", str(self.port), "--daemonize", "no", "--save", "",
                 "--appendonly", "no", "--bind", "127.0.0.1", "--dir", self.dir, *self.options],
                stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                with open(self.log, errors="replace") as f:
                    out = f.read()
                raise AssertionError(f"redis-server exited {self.proc.returncode}:\n{out}")
            try:
                if self.client().ping():
                    return self
            except Exception:  # not listening yet
                time.sleep(0.05)
        self.stop()
        raise AssertionError(f"redis-server on port {self.port} did not answer in {timeout}s")

    def client(self, **kwargs: Any) -> Any:
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5,
                           password=self.password, **kwargs)

    def stop(self) -> None:
        end(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)
