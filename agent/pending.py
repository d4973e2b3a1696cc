"""Handler notifications that are owed: written before the handler runs, removed after.

A resource that changed and ``notify:``s a handler records the notification here at once.
If the agent crashes, is stopped or the run is cut short before the handler ran, the next
run of the same playbook (the service's, or an operator's ``opsagent apply``) finds it and
runs the handler: a changed config file is never left without its restart. Keyed by the
playbook's name, so a playbook checked out at a new git revision keeps what is owed.
"""

from __future__ import annotations

from agent import statedb


class PendingHandlers:
    def __init__(self, state_dir: str) -> None:
        self._state_dir = state_dir

    def add(self, playbook: str, refs: list[str], notifier: str, now: float) -> None:
        """``notifier`` changed: each of ``refs`` is owed a restart."""
        with statedb.connect(self._state_dir) as db:
            assert db is not None
            with statedb.transaction(db):
                db.executemany(
                    "INSERT OR IGNORE INTO pending_handlers (playbook, ref, notifier, at) "
                    "VALUES (?, ?, ?, ?)", [(playbook, ref, notifier, now) for ref in refs])

    def owed(self, playbook: str) -> dict[str, list[str]]:
        """ref -> the notifiers it is owed for (oldest first); reading never creates state."""
        with statedb.connect(self._state_dir, create=False) as db:
            if db is None:
                return {}
            rows = db.execute("SELECT ref, notifier FROM pending_handlers WHERE playbook = ? "
                              "ORDER BY at, ref", (playbook,)).fetchall()
        out: dict[str, list[str]] = {}
        for ref, notifier in rows:
            out.setdefault(ref, []).append(notifier)
        return out

    def done(self, playbook: str, ref: str) -> None:
        with statedb.connect(self._state_dir) as db:
            assert db is not None
            db.execute("DELETE FROM pending_handlers WHERE playbook = ? AND ref = ?",
                       (playbook, ref))
