"""Silences (``opsagent silence add``) and maintenance windows: what mutes an alert now.

A silence matches a rule name (a glob) and, optionally, labels; it lasts until its end, or
— with ``until_resolved`` — until an alert it matches resolves. Both live in state.db, so the
command line and the running agent share them without talking to each other. Maintenance
windows come from the playbooks. Muted means: no notification, no automatic action; the
alert still moves through its states and is still reported to the collector.
"""

from __future__ import annotations

import fnmatch
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from agent import statedb
from agent.errors import UsageError
from agent.playbook.models.alerting import MaintenanceWindow


@dataclass(frozen=True)
class Silence:
    id: str
    rule: str
    starts: float
    ends: float | None
    until_resolved: bool
    comment: str
    by: str
    labels: dict[str, str] = field(default_factory=dict)

    def matches(self, rule: str, labels: dict[str, str]) -> bool:
        return fnmatch.fnmatchcase(rule, self.rule) and all(
            labels.get(k) == v for k, v in self.labels.items())

    def active(self, now: float) -> bool:
        return self.starts <= now and (self.ends is None or now < self.ends)

    def describe(self) -> str:
        until = "until its alert resolves" if self.until_resolved else (
            "until " + time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(self.ends))
            if self.ends is not None else "")
        who = f" by {self.by}" if self.by else ""
        why = f": {self.comment}" if self.comment else ""
        return f"silence {self.id} on {self.rule}{who} {until}{why}".replace("  ", " ")


def add(state_dir: str, rule: str, *, duration: float | None, until_resolved: bool,
        comment: str = "", by: str = "", labels: dict[str, str] | None = None,
        now: float | None = None) -> Silence:
    if duration is None and not until_resolved:
        raise UsageError("a silence needs --for DURATION or --until-resolved")
    if duration is not None and duration <= 0:
        raise UsageError("--for must be a positive duration (expected e.g. 2h)")
    now = time.time() if now is None else now
    s = Silence(id=secrets.token_hex(4), rule=rule, starts=now,
                ends=None if duration is None else now + duration,
                until_resolved=until_resolved, comment=comment, by=by, labels=labels or {})
    with statedb.connect(state_dir) as db:
        assert db is not None
        db.execute("INSERT INTO silences (id, rule, labels, starts, ends, until_resolved, "
                   "comment, by, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   (s.id, s.rule, json.dumps(s.labels), s.starts, s.ends, int(until_resolved),
                    comment, by, now))
    return s


def expire(state_dir: str, silence_id: str, now: float | None = None) -> bool:
    """End a silence now; False when there is no such active silence."""
    now = time.time() if now is None else now
    with statedb.connect(state_dir) as db:
        assert db is not None
        cur = db.execute("UPDATE silences SET ends = ? WHERE id = ? AND (ends IS NULL OR "
                         "ends > ?)", (now, silence_id, now))
        return cur.rowcount > 0


def listing(state_dir: str, *, include_ended: bool = False,
            now: float | None = None) -> list[Silence]:
    now = time.time() if now is None else now
    with statedb.connect(state_dir, create=False) as db:
        if db is None:
            return []
        rows = db.execute("SELECT id, rule, labels, starts, ends, until_resolved, comment, by "
                          "FROM silences ORDER BY created").fetchall()
    found = [Silence(id=r[0], rule=r[1], labels=json.loads(r[2]), starts=r[3], ends=r[4],
                     until_resolved=bool(r[5]), comment=r[6], by=r[7]) for r in rows]
    return [s for s in found if include_ended or s.active(now)]


class Mutes:
    """What mutes which rule right now: active silences plus open maintenance windows."""

    def __init__(self, state_dir: str) -> None:
        self.state_dir = state_dir
        self.windows: list[MaintenanceWindow] = []
        self.silences: list[Silence] = []

    def refresh(self, now: float) -> dict[str, str]:
        """Re-read the silences; return every active mute as id -> description."""
        self.silences = listing(self.state_dir, now=now)
        active = {f"silence:{s.id}": s.describe() for s in self.silences}
        for w in self.windows:
            opened = w.open_at(now)
            if opened is not None:
                rules = ", ".join(w.rules)
                active[f"maintenance:{w.name}"] = (
                    f"maintenance window {w.name} open since "
                    f"{time.strftime('%H:%M:%S', time.localtime(opened))} (rules: {rules})")
        return active

    def muted_by(self, rule: str, labels: dict[str, str], now: float) -> str | None:
        for s in self.silences:
            if s.active(now) and s.matches(rule, labels):
                return f"silence {s.id}"
        for w in self.windows:
            if w.open_at(now) is not None and any(fnmatch.fnmatchcase(rule, p) for p in w.rules):
                return f"maintenance window {w.name}"
        return None

    def resolved(self, rule: str, labels: dict[str, str], now: float) -> list[str]:
        """An alert resolved: end the ``until_resolved`` silences that matched it."""
        ended = [s.id for s in self.silences
                 if s.until_resolved and s.active(now) and s.matches(rule, labels)]
        for sid in ended:
            expire(self.state_dir, sid, now)
        return ended


def ack(state_dir: str, alert_id: str, by: str, comment: str = "") -> dict[str, Any]:
    """Acknowledge a firing alert: escalation and reminders stop for this episode."""
    with statedb.connect(state_dir, create=False) as db:
        if db is None:
            raise UsageError(f"no alert {alert_id}: the agent has recorded no alerts here")
        for key, doc in db.execute("SELECT key, doc FROM alert_state").fetchall():
            alert = json.loads(doc)
            if alert.get("alert_id") == alert_id and alert.get("state") == "firing":
                db.execute("INSERT OR REPLACE INTO alert_acks (alert_id, at, by, comment) "
                           "VALUES (?, ?, ?, ?)", (alert_id, time.time(), by, comment))
                return {"key": key, **alert}
    raise UsageError(f"no firing alert with id {alert_id} (see `opsagent alert list`)")


def acked(state_dir: str) -> set[str]:
    with statedb.connect(state_dir, create=False) as db:
        if db is None:
            return set()
        return {r[0] for r in db.execute("SELECT alert_id FROM alert_acks").fetchall()}
