"""Restart budgets: how many automatic (re)starts a resource had lately, kept across runs.

A budget is ``max`` attempts within a sliding window of ``within`` seconds, with a backoff
before each retry that doubles every time (``backoff``, ``2*backoff``, ...). Attempts are
recorded *before* the action runs, so an attempt that hangs or kills the agent still counts.

The store is one table in ``STATE_DIR/state.db`` (SQLite: atomic, and safe when an operator's
``opsagent apply`` runs next to the agent service). ``take`` decides and records in one
write transaction, so two agents cannot both spend the last attempt. Keys are free text:
``services:nginx.service``, ``containers:api``.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from agent.errors import ProviderError
from agent.playbook.types import format_duration

DB_NAME = "state.db"
_SCHEMA = """CREATE TABLE IF NOT EXISTS restart_attempts (
    key TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS restart_attempts_key ON restart_attempts (key, at);"""


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether an automatic action may run now; when not, why and for how long."""

    allowed: bool
    used: int  # attempts inside the window, this one included when allowed
    wait_s: float  # backoff left before the next attempt may run (0: none)
    exhausted: bool
    message: str  # "restart budget exhausted (3 in 10m)", "attempt 2 of 3 in 10m", ...
    detail: str = ""  # when an exhausted budget allows the next attempt


def decide(attempts: Sequence[float], max_: int, within: float, backoff: float,
           now: float) -> Verdict:
    """Pure: the verdict for one more attempt at ``now``, given earlier attempt times."""
    recent = sorted(t for t in attempts if now - within < t <= now)
    spent = f"{len(recent)} in {format_duration(within)}"
    if len(recent) >= max_:
        if max_ > 0:  # allowed again once enough of the oldest attempts leave the window
            free_at = recent[len(recent) - max_] + within
            when = f"next attempt allowed in {_human(free_at - now)}"
        else:
            when = "max is 0: no automatic attempts"
        return Verdict(False, len(recent), 0.0, True,
                       f"restart budget exhausted ({max_} in {format_duration(within)})", when)
    if recent:
        wait = backoff * 2 ** (len(recent) - 1) - (now - recent[-1])
        if wait > 0:
            return Verdict(False, len(recent), wait, False,
                           f"backing off: attempt {len(recent) + 1} of {max_} allowed in "
                           f"{_human(wait)} ({spent} so far)")
    return Verdict(True, len(recent) + 1, 0.0, False,
                   f"attempt {len(recent) + 1} of {max_} in {format_duration(within)}")


def _human(seconds: float) -> str:
    seconds = max(seconds, 0.0)
    if seconds < 1:
        return f"{max(round(seconds * 1000), 1)}ms"
    s = round(seconds)
    if s < 120:
        return f"{s}s"
    return f"{s // 60}m{s % 60:02d}s" if s < 7200 else f"{s // 3600}h{s % 3600 // 60:02d}m"


class BudgetStore:
    """Attempt times by key in ``state_dir``/state.db (the directory is created 0700)."""

    def __init__(self, state_dir: str) -> None:
        self.path = os.path.join(state_dir, DB_NAME)
        self._state_dir = state_dir

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        try:
            if not os.path.isdir(self._state_dir):
                os.makedirs(self._state_dir, mode=0o700, exist_ok=True)
            fresh = not os.path.exists(self.path)
            conn = sqlite3.connect(self.path, timeout=5.0, isolation_level=None)
        except (OSError, sqlite3.Error) as e:
            raise ProviderError(f"cannot open the restart budget store {self.path}: {e}") from e
        try:
            if fresh:
                os.chmod(self.path, 0o600)
            conn.executescript(_SCHEMA)
            yield conn
        except (OSError, sqlite3.Error) as e:
            raise ProviderError(f"restart budget store {self.path}: {e}") from e
        finally:
            conn.close()

    def attempts(self, key: str) -> list[float]:
        with self._db() as db:
            rows = db.execute("SELECT at FROM restart_attempts WHERE key = ? ORDER BY at",
                              (key,)).fetchall()
        return [float(r[0]) for r in rows]

    def take(self, key: str, max_: int, within: float, backoff: float, now: float) -> Verdict:
        """Decide on one more attempt at ``now`` and, when allowed, record it (atomically)."""
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute("DELETE FROM restart_attempts WHERE key = ? AND at <= ?",
                           (key, now - within))
                rows = db.execute("SELECT at FROM restart_attempts WHERE key = ?",
                                  (key,)).fetchall()
                verdict = decide([float(r[0]) for r in rows], max_, within, backoff, now)
                if verdict.allowed:
                    db.execute("INSERT INTO restart_attempts (key, at) VALUES (?, ?)",
                               (key, now))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return verdict

    def reset(self, key: str) -> None:
        """Forget a key's attempts (an operator's explicit reset)."""
        with self._db() as db:
            db.execute("DELETE FROM restart_attempts WHERE key = ?", (key,))
