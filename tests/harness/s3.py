"""A throw-away S3-compatible server for the tests: moto's standalone server
(``python -m moto.server``) on a free 127.0.0.1 port, state in memory, gone when stopped."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from tests.harness.collector import free_port
from tests.harness.procs import end

REGION = "us-east-1"


class S3Server:
    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = Path(tempfile.mkstemp(prefix="opsagent-moto-", suffix=".log")[1])
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> S3Server:
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"moto.server exited {self.proc.returncode}:\n"
                                     f"{self.log.read_text(errors='replace')}")
            try:
                httpx.get(f"{self.url}/moto-api/", timeout=1)
                return self
            except httpx.HTTPError:
                time.sleep(0.1)
        self.stop()
        raise AssertionError(f"moto.server on port {self.port} did not answer in {timeout}s")

    def client(self, access_key: str = "test", secret_key: str = "test") -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.url, region_name=REGION,
                            aws_access_key_id=access_key, aws_secret_access_key=secret_key,
                            config=Config(s3={"addressing_style": "path"},
                                          connect_timeout=5, read_timeout=10))

    def stop(self) -> None:
        end(self.proc)
        self.log.unlink(missing_ok=True)
