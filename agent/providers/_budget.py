"""Restart budgets: how many automatic (re)starts a resource had lately, kept across runs.

A budget is ``max`` attempts within a sliding window of ``within`` seconds, with a backoff
before each retry that doubles every time (``backoff``, ``2*backoff``, ...). Attempts are
recorded *before* the action runs, so an attempt that hangs or kills the agent still counts.

The store is one table in ``STATE_DIR/state.db`` (``agent.statedb``: SQLite, atomic, and safe
when an operator's ``opsagent apply`` runs next to the agent service). ``take`` decides and
records in one write transaction, so two agents cannot both spend the last attempt. Keys are
the resources' KIND:NAME (``services:nginx``, ``containers:api``), as ``opsagent reset`` takes.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agent import statedb
from agent.playbook.types import format_duration

if TYPE_CHECKING:
    from agent.playbook.models.base import RestartBudget
    from agent.providers.base import ProviderContext

DB_NAME = statedb.DB_NAME


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether an automatic action may run now; when not, why and for how long."""

    allowed: bool
    used: int  # attempts inside the window, this one included when allowed
    wait_s: float  # backoff left before the next attempt may run (0: none)
    exhausted: bool
    message: str  # "restart budget exhausted (3 in 10m)", "attempt 2 of 3 in 10m", ...
    detail: str = ""  # when an exhausted budget allows the next attempt

    @property
    def note(self) -> str:
        """" (attempt 1 of 3 in 10m)" for an outcome message; "" for an operator's action."""
        return f" ({self.message})" if self.message else ""


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


BY_HAND = Verdict(True, 0, 0.0, False, "")  # an operator's action: nothing to say


def spend(ctx: ProviderContext, key: str, budget: RestartBudget, inline_limit: float) -> Verdict:
    """Spend one attempt of ``budget`` for an automatic action, waiting out a backoff of up
    to ``inline_limit`` seconds first. Actions an operator asks for (``ctx.automatic`` false:
    ``opsagent apply`` by hand, ``opsagent reset``) neither spend nor need a budget."""
    if not ctx.automatic:
        return BY_HAND
    store = BudgetStore(ctx.state_dir)
    verdict = store.take(key, budget.max, budget.within, budget.backoff, ctx.clock())
    if not verdict.allowed and not verdict.exhausted and verdict.wait_s <= inline_limit:
        ctx.log.info("%s: %s", key, verdict.message)
        time.sleep(verdict.wait_s)
        verdict = store.take(key, budget.max, budget.within, budget.backoff, ctx.clock())
    return verdict


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
        self.path = statedb.path_of(state_dir)
        self._state_dir = state_dir

    def _db(self) -> contextlib.AbstractContextManager[sqlite3.Connection | None]:
        return statedb.connect(self._state_dir)

    def attempts(self, key: str) -> list[float]:
        with statedb.connect(self._state_dir, create=False) as db:
            if db is None:
                return []
            rows = db.execute("SELECT at FROM restart_attempts WHERE key = ? ORDER BY at",
                              (key,)).fetchall()
        return [float(r[0]) for r in rows]

    def keys(self) -> list[str]:
        """Every key with attempts on record (for ``opsagent status``)."""
        with statedb.connect(self._state_dir, create=False) as db:
            if db is None:
                return []
            return [r[0] for r in db.execute(
                "SELECT DISTINCT key FROM restart_attempts ORDER BY key").fetchall()]

    def take(self, key: str, max_: int, within: float, backoff: float, now: float) -> Verdict:
        """Decide on one more attempt at ``now`` and, when allowed, record it (atomically)."""
        with self._db() as conn:
            assert conn is not None
            with statedb.transaction(conn) as db:
                db.execute("DELETE FROM restart_attempts WHERE key = ? AND at <= ?",
                           (key, now - within))
                rows = db.execute("SELECT at FROM restart_attempts WHERE key = ?",
                                  (key,)).fetchall()
                verdict = decide([float(r[0]) for r in rows], max_, within, backoff, now)
                if verdict.allowed:
                    db.execute("INSERT INTO restart_attempts (key, at) VALUES (?, ?)",
                               (key, now))
        return verdict

    def reset(self, key: str) -> None:
        """Forget a key's attempts (an operator's explicit reset)."""
        with self._db() as db:
            assert db is not None
            db.execute("DELETE FROM restart_attempts WHERE key = ?", (key,))
