"""Thresholds turned into alerts that reach people, once per transition.

:class:`Alerting` feeds each observed value through the state machine (``alerts.step``) and
decides who hears of what:

* **firing** → the rule's ``notify`` actions plus the escalation steps already due; later
  steps are added while it keeps firing unacknowledged (``tick``); ``repeat`` reminds the
  notifiers told so far; ``opsagent alert ack ID`` stops both.
* **resolved** → everyone told of the episode (nobody else), even inside a silence.
* **flapping** → one notification saying so; **steady** → the state it settled in.
* muted (silence or maintenance window) → nobody, and no automatic action; once the mute
  ends a still-firing alert is notified then.

Events arising within ``group_wait`` of each other go out as one notification per notifier
(grouped per host). Every transition is also a report to the collector, muted or not.
Alert state lives in state.db and survives restarts (a pending ``for`` keeps counting).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent import statedb
from agent.errors import OpsAgentError
from agent.notifiers.base import AlertEvent, Notification
from agent.playbook.models import Action, Notifier, ThresholdSpec
from agent.playbook.models.alerting import EscalationStep, MaintenanceWindow
from agent.playbook.types import format_duration
from agent.rules import silences
from agent.rules.alerts import Alert, Event, settle, step

log = logging.getLogger("opsagent.alerts")

GROUP_WAIT_S = 1.0  # events this close together go out as one notification per notifier

Enqueue = Callable[[str, Notifier, Notification], None]
Report = Callable[..., None]
Act = Callable[[str, str, Action, dict[str, Any]], None]  # playbook, rule, action, vars


@dataclass
class Rule:
    spec: ThresholdSpec
    playbook: str
    notifiers: dict[str, Notifier]
    steps: list[EscalationStep] = field(default_factory=list)

    @property
    def first(self) -> list[str]:
        return [a.notify for a in self.spec.actions if a.notify is not None]

    @property
    def labels(self) -> dict[str, str]:
        labels = dict(self.spec.labels or {})
        if self.spec.path:
            labels.setdefault("path", self.spec.path)
        return labels

    def targets(self, firing_for: float, acked: bool, notified: list[str]) -> list[str]:
        """Who should know by now: the first notifiers and every escalation step due."""
        names = list(self.first)
        for s in self.steps:
            if s.after <= firing_for:
                names.extend(s.notify)
        if acked:  # acknowledged: nobody new
            names = [n for n in names if n in notified]
        return list(dict.fromkeys(n for n in names if n in self.notifiers))


class Alerting:
    def __init__(self, state_dir: str, host: str, enqueue: Enqueue, report: Report,
                 act: Act | None = None) -> None:
        self.state_dir = state_dir
        self.host = host
        self.enqueue = enqueue
        self.report = report
        self.act = act
        self.rules: dict[str, Rule] = {}
        self.alerts: dict[str, Alert] = self._load()
        self.mutes = silences.Mutes(state_dir)
        self.active_mutes: dict[str, str] | None = None
        self.outgoing: dict[str, list[AlertEvent]] = {}
        self.outgoing_since: float | None = None

    # --- configuration ------------------------------------------------------------------

    def configure(self, rules: list[Rule], windows: list[MaintenanceWindow]) -> None:
        """A new playbook revision: rules no longer declared are forgotten."""
        self.rules = {r.spec.name: r for r in rules}
        self.mutes.windows = windows
        self._refresh_mutes(time.time())  # a silence set before the start mutes at once
        for name in [k for k, a in self.alerts.items() if a.rule not in self.rules]:
            del self.alerts[name]
            self._forget(name)

    # --- values in ----------------------------------------------------------------------

    def observe(self, rule_name: str, value: float, now: float | None = None) -> None:
        rule = self.rules.get(rule_name)
        if rule is None:
            return
        now = time.time() if now is None else now
        alert = self._alert(rule)
        before = (alert.state, alert.flapping, alert.value)
        for event in step(alert, rule.spec, value, now):
            self._on_event(rule, alert, event, now)
        if (alert.state, alert.flapping) != before[:2]:
            self._save(alert)

    def tick(self, now: float | None = None) -> None:
        """Time-driven work: mutes starting or ending, acks, escalation, reminders, flapping
        settling, and sending what ``group_wait`` held back."""
        now = time.time() if now is None else now
        self._refresh_mutes(now)
        acked = silences.acked(self.state_dir) if self.alerts else set()
        for alert in list(self.alerts.values()):
            rule = self.rules.get(alert.rule)
            if rule is None:
                continue
            changed = False
            for event in settle(alert, rule.spec, now):
                self._on_event(rule, alert, event, now)
                changed = True
            if alert.state == "firing" and alert.alert_id in acked and not alert.acked:
                alert.acked = changed = True
                log.info("alert %s (%s) acknowledged", alert.alert_id, alert.rule)
            if alert.state == "firing" and not alert.flapping:
                changed |= self._escalate(rule, alert, now)
            if changed:
                self._save(alert)
        self.flush(now)

    def next_due(self, now: float) -> float | None:
        """Epoch time ``tick`` has something to do (an escalation step, a reminder, a group
        to send, a window to open or close); None when only new values can change things."""
        due: list[float] = []
        if self.outgoing_since is not None:
            due.append(self.outgoing_since + GROUP_WAIT_S)
        for alert in self.alerts.values():
            rule = self.rules.get(alert.rule)
            if rule is None:
                continue
            if alert.flapping and alert.changes:
                due.append(alert.changes[-1] + rule.spec.flapping.within)
            if alert.state != "firing" or alert.flapping:
                continue
            if not alert.acked:
                due.extend(alert.since + s.after for s in rule.steps
                           if alert.since + s.after > now)
                if alert.notified and rule.spec.repeat:
                    due.append(alert.last_notified + rule.spec.repeat)
        if self.mutes.windows or self.mutes.silences or self.alerts:
            due.append(now + 5.0)  # silences come from the command line: look every 5 s
        return min(due) if due else None

    # --- deciding -----------------------------------------------------------------------

    def _on_event(self, rule: Rule, alert: Alert, event: Event, now: float) -> None:
        muted = self.mutes.muted_by(rule.spec.name, rule.labels, now)
        if event == "steady":
            event = "firing" if alert.state == "firing" else "resolved"
            if event == "firing":
                alert.notified = []  # tell again, as for a fresh firing
        self._report(rule, alert, event, muted)
        if event == "resolved":
            self._notify(rule, alert, "resolved", alert.notified, now)
            alert.notified = []
            ended = self.mutes.resolved(rule.spec.name, rule.labels, now)
            for sid in ended:
                log.info("silence %s ended: its alert %s resolved", sid, rule.spec.name)
            return
        if muted:
            log.info("%s %s, muted by %s", rule.spec.name, event, muted)
            return
        targets = rule.targets(now - alert.since, alert.acked, alert.notified)
        if event == "flapping":
            self._notify(rule, alert, "flapping", targets, now)
            alert.notified = list(dict.fromkeys([*alert.notified, *targets]))
            return
        self._notify(rule, alert, "firing", targets, now)
        alert.notified = targets
        self._run_actions(rule, alert)

    def _escalate(self, rule: Rule, alert: Alert, now: float) -> bool:
        if self.mutes.muted_by(rule.spec.name, rule.labels, now):
            return False
        targets = rule.targets(now - alert.since, alert.acked, alert.notified)
        new = [n for n in targets if n not in alert.notified]
        if new:
            first = not alert.notified
            self._notify(rule, alert, "firing", new, now)
            alert.notified = [*alert.notified, *new]
            if first:  # it fired inside a mute that has ended: act now
                self._run_actions(rule, alert)
            return True
        if (alert.notified and rule.spec.repeat and not alert.acked
                and now - alert.last_notified >= rule.spec.repeat):
            self._notify(rule, alert, "repeat", alert.notified, now)
            return True
        return False

    def _run_actions(self, rule: Rule, alert: Alert) -> None:
        if self.act is None:
            return
        variables = {"value": alert.value, "metric": rule.spec.metric, "host": self.host,
                     "severity": rule.spec.severity,
                     "threshold": rule.spec.above if rule.spec.above is not None
                     else rule.spec.below}
        for action in rule.spec.actions:
            if action.notify is None:
                try:
                    self.act(rule.playbook, rule.spec.name, action, variables)
                except Exception:  # one action's failure must not stop alerting
                    log.exception("%s: action failed", rule.spec.name)

    # --- telling ------------------------------------------------------------------------

    def _notify(self, rule: Rule, alert: Alert, state: str, names: list[str],
                now: float) -> None:
        if not names:
            return
        event = AlertEvent(
            alert_id=alert.alert_id or "", dedup_key=alert.key, rule=rule.spec.name,
            host=self.host, state=state,  # type: ignore[arg-type]
            severity=rule.spec.severity, summary=self._summary(rule, alert, state),
            started_at=alert.since, at=now, value=alert.value, metric=rule.spec.metric,
            labels=rule.labels)
        for name in names:
            self.outgoing.setdefault(name, []).append(event)
        if self.outgoing_since is None:
            self.outgoing_since = now
        alert.last_notified = now

    def flush(self, now: float, *, force: bool = False) -> None:
        """Queue what waited ``group_wait``: one notification per notifier."""
        if self.outgoing_since is None or (not force and now < self.outgoing_since
                                           + GROUP_WAIT_S):
            return
        outgoing, self.outgoing, self.outgoing_since = self.outgoing, {}, None
        specs = {n: r.notifiers[n] for r in self.rules.values() for n in r.notifiers}
        for name, events in outgoing.items():
            spec = specs.get(name)
            if spec is None:
                continue
            try:
                self.enqueue(name, spec, Notification(host=self.host, events=tuple(events)))
            except OpsAgentError as e:
                log.error("cannot queue a notification for %s: %s", name, e)

    def _report(self, rule: Rule, alert: Alert, event: str, muted: str | None) -> None:
        self.report(f"threshold:{rule.spec.name}", rule.spec.severity,
                    self._summary(rule, alert, event), state=event, alert_id=alert.alert_id,
                    value=alert.value, muted_by=muted)

    def _refresh_mutes(self, now: float) -> None:
        try:
            active = self.mutes.refresh(now)
        except OpsAgentError as e:
            log.warning("cannot read silences: %s", e)
            return
        before = self.active_mutes
        self.active_mutes = active
        if before is None:
            before = {}
        for key in active.keys() - before.keys():
            self.report(key, "info", active[key] + " began", state="muted")
        for key in before.keys() - active.keys():
            self.report(key, "info", before[key] + " ended", state="unmuted")

    def _summary(self, rule: Rule, alert: Alert, state: str) -> str:
        s = rule.spec
        value = "no value" if alert.value is None else f"{alert.value:.4g}"
        where = f" on {s.path}" if s.path else ""
        if state == "resolved":
            return f"{s.name} resolved: {s.metric}{where} = {value}"
        if state == "flapping":
            return (f"{s.name} is flapping: {len(alert.changes)} state changes within "
                    f"{format_duration(s.flapping.within)}; held until steady")
        limit = f"above {s.above:g}" if s.above is not None else f"below {s.below:g}"
        held = f" for {format_duration(s.hold)}" if s.hold else ""
        again = " (still firing)" if state == "repeat" else ""
        return f"{s.name}: {s.metric}{where} = {value}, {limit}{held}{again}"

    # --- state.db -----------------------------------------------------------------------

    def _alert(self, rule: Rule) -> Alert:
        key = "/".join([self.host, rule.spec.name,
                        *(f"{k}={v}" for k, v in sorted(rule.labels.items()))])
        if key not in self.alerts:
            self.alerts[key] = Alert(rule=rule.spec.name, key=key)
        return self.alerts[key]

    def _load(self) -> dict[str, Alert]:
        try:
            with statedb.connect(self.state_dir) as db:
                assert db is not None
                rows = db.execute("SELECT key, doc FROM alert_state").fetchall()
        except OpsAgentError as e:
            log.error("cannot read alert state: %s", e)
            return {}
        return {k: Alert.from_json(json.loads(doc)) for k, doc in rows}

    def _save(self, alert: Alert) -> None:
        try:
            with statedb.connect(self.state_dir) as db:
                assert db is not None
                db.execute("INSERT OR REPLACE INTO alert_state (key, doc) VALUES (?, ?)",
                           (alert.key, json.dumps(alert.to_json())))
        except OpsAgentError as e:
            log.error("cannot save alert state of %s: %s", alert.rule, e)

    def _forget(self, key: str) -> None:
        try:
            with statedb.connect(self.state_dir) as db:
                assert db is not None
                db.execute("DELETE FROM alert_state WHERE key = ?", (key,))
        except OpsAgentError as e:
            log.error("cannot forget alert state %s: %s", key, e)

    def snapshot(self) -> list[dict[str, Any]]:
        """For status.json and /health: every alert not inactive."""
        return [{"rule": a.rule, "state": "flapping" if a.flapping else a.state,
                 "alert_id": a.alert_id, "since": a.since, "value": a.value,
                 "acked": a.acked, "notified": a.notified,
                 "severity": self.rules[a.rule].spec.severity if a.rule in self.rules else None}
                for a in self.alerts.values() if a.state != "inactive" or a.flapping]
