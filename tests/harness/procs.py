"""Server processes the test harness starts, and how it ends them."""

from __future__ import annotations

import subprocess


def end(proc: subprocess.Popen[bytes] | subprocess.Popen[str] | None,
        timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it has not gone within ``timeout``; reaped either way."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
