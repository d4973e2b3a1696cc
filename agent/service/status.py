"""What the running agent tells ``opsagent status``: STATE_DIR/status.json (written
atomically after every reconcile), the restart budgets in state.db and the lock holder."""

from __future__ import annotations

import json
import os
import tempfile
import time
from typing import Any

from agent import statedb

STATUS_NAME = "status.json"


def write(state_dir: str, doc: dict[str, Any]) -> None:
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".status.", dir=state_dir)
    try:
        with os.fdopen(fd, "w") as f:  # dumps: the C encoder (dump's is pure Python)
            f.write(json.dumps(doc, separators=(",", ":"), default=str))
        os.replace(tmp, os.path.join(state_dir, STATUS_NAME))
    except BaseException:
        os.unlink(tmp)
        raise


def read(state_dir: str) -> dict[str, Any] | None:
    try:
        with open(os.path.join(state_dir, STATUS_NAME)) as f:
            doc: dict[str, Any] = json.load(f)
            return doc
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def raise_alert(state_dir: str, key: str, severity: str, message: str) -> None:
    """Record an alert event (the collector and notifiers pick them up from here)."""
    with statedb.connect(state_dir) as db:
        assert db is not None
        db.execute("INSERT INTO alerts (at, key, severity, message) VALUES (?, ?, ?, ?)",
                   (time.time(), key, severity, message))


def alerts(state_dir: str, limit: int = 20) -> list[dict[str, Any]]:
    with statedb.connect(state_dir, create=False) as db:
        if db is None:
            return []
        rows = db.execute("SELECT at, key, severity, message FROM alerts ORDER BY id DESC "
                          "LIMIT ?", (limit,)).fetchall()
    return [{"at": at, "key": k, "severity": s, "message": m} for at, k, s, m in rows]
