"""What each resource's spec was the last time the agent converged it: tells a corrective
change (drift repaired: the spec is the same, the host moved) from an intentional one (the
playbook changed the spec). Digests only, keyed by (playbook name, KIND:NAME)."""

from __future__ import annotations

import hashlib
from typing import Any

from agent import statedb


def digest(spec: Any) -> str:
    return hashlib.sha256(spec.model_dump_json().encode()).hexdigest()[:32]


class ConvergedSpecs:
    def __init__(self, state_dir: str) -> None:
        self._state_dir = state_dir

    def digests(self, playbook: str) -> dict[str, str]:
        with statedb.connect(self._state_dir, create=False) as db:
            if db is None:
                return {}
            rows = db.execute("SELECT ref, digest FROM converged WHERE playbook = ?",
                              (playbook,)).fetchall()
        return dict(rows)

    def record(self, playbook: str, digests: dict[str, str], now: float) -> None:
        if not digests:
            return
        with statedb.connect(self._state_dir) as db:
            assert db is not None
            with statedb.transaction(db):
                db.executemany(
                    "INSERT INTO converged (playbook, ref, digest, at) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (playbook, ref) DO UPDATE SET digest = excluded.digest, "
                    "at = excluded.at", [(playbook, r, d, now) for r, d in digests.items()])
