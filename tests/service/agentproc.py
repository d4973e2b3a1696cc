"""Run `opsagent run` as a real child process in a scratch directory, and wait on it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def wait_for(pred: Any, timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None


def alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


class AgentProc:
    def __init__(self, root: Path, config: str | None = None, interval: str = "60s") -> None:
        self.root = root
        self.state = root / "state"
        self.config = root / "agent.yaml"
        self.log = root / "agent.log"
        self.config.write_text(textwrap.dedent(config or f"""\
            playbooks: [pb]
            state_dir: state
            reconcile_interval: {interval}
            log_format: json
            """))
        self.proc: subprocess.Popen[bytes] | None = None

    def spawn(self, *extra: str, env: dict[str, str] | None = None) -> AgentProc:
        """Start the agent and return at once (start() waits for its first reconcile)."""
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "agent.cli", "run", "--config", str(self.config), "-v",
                 *extra], cwd=REPO, stdout=subprocess.DEVNULL, stderr=log,
                env={**os.environ, **(env or {})})
        return self

    def start(self, *extra: str, env: dict[str, str] | None = None) -> AgentProc:
        self.spawn(*extra, env=env)

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"the agent exited ({self.proc.returncode}):\n"
                                     + self.log.read_text()[-3000:])
            st = self.status() or {}
            return bool(st.get("pid") == self.proc.pid and st.get("last_full_reconcile"))

        wait_for(ready, 20, "the first full reconcile")
        return self

    def status(self) -> dict[str, Any] | None:
        try:
            doc: dict[str, Any] = json.loads((self.state / "status.json").read_text())
            return doc
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def resource(self, ref: str) -> dict[str, Any]:
        st = self.status() or {}
        return dict((st.get("resources") or {}).get(ref) or {})

    def logs(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log.read_text().splitlines():
            if line.startswith("{"):
                out.append(json.loads(line))
        return out

    def log_text(self) -> str:
        return "\n".join(e["msg"] for e in self.logs())

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 20) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)
