"""The alert state machine: inactive → pending → firing → resolved, one rule at a time.

Like Prometheus, a condition must hold for ``for`` before the alert fires; unlike a bare
comparison, a firing alert resolves only past its hysteresis limit (``clear_below`` /
``clear_above``), so a value wandering inside the band neither resolves nor fires again.
An alert whose state changes more than ``flapping.changes`` times within ``flapping.within``
is held as *flapping*: one event says so, then none until it has been steady for the window.

This module only decides; :mod:`agent.rules.alerting` turns the events into notifications,
reports and actions.
"""

from __future__ import annotations

import secrets
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from agent.playbook.models.rules import ThresholdSpec

State = Literal["inactive", "pending", "firing"]
Event = Literal["firing", "resolved", "flapping", "steady"]


@dataclass
class Alert:
    """One rule's alert (per label set) and everything needed to carry on after a restart."""

    rule: str
    key: str  # host/rule[/labels]: stable across episodes (the PagerDuty dedup_key)
    state: State = "inactive"
    since: float = 0.0  # when it turned pending, then when it started firing
    alert_id: str | None = None  # one firing episode: what `opsagent alert ack` names
    value: float | None = None
    notified: list[str] = field(default_factory=list)  # notifiers told of this episode
    last_notified: float = 0.0
    changes: list[float] = field(default_factory=list)  # firing/resolved times, in the window
    flapping: bool = False
    acked: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Alert:
        known = {k: v for k, v in doc.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def step(alert: Alert, rule: ThresholdSpec, value: float, now: float) -> list[Event]:
    """Move ``alert`` on by one observed value; return what happened worth telling."""
    alert.value = value
    events: list[Event] = []
    if alert.state == "inactive" and rule.firing(value):
        alert.state, alert.since = "pending", now
    if alert.state == "pending":
        if not rule.firing(value):
            alert.state = "inactive"
        elif now - alert.since >= rule.hold:
            alert.state, alert.since = "firing", now
            alert.alert_id = secrets.token_hex(4)
            alert.acked = False
            events.extend(_transition(alert, rule, now, "firing"))
    elif alert.state == "firing" and rule.cleared(value):
        alert.state = "inactive"
        events.extend(_transition(alert, rule, now, "resolved"))
    events.extend(settle(alert, rule, now))
    return events


def settle(alert: Alert, rule: ThresholdSpec, now: float) -> list[Event]:
    """A flapping alert steady for the whole window stops flapping (time alone does it)."""
    window = rule.flapping.within
    alert.changes = [t for t in alert.changes if t > now - window]
    if alert.flapping and not alert.changes:
        alert.flapping = False
        return ["steady"]
    return []


def _transition(alert: Alert, rule: ThresholdSpec, now: float, event: Event) -> list[Event]:
    alert.changes = [t for t in alert.changes if t > now - rule.flapping.within] + [now]
    if alert.flapping:
        return []
    if len(alert.changes) > rule.flapping.changes:
        alert.flapping = True
        return ["flapping"]
    return [event]
