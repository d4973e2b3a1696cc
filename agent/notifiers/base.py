"""What a notifier is asked to deliver: alert events, grouped per host.

A channel module (``slack``, ``pagerduty``, ``email``, ``webhook``) exposes
``send(spec, note, timeout) -> None`` and raises :class:`DeliveryError` when the service did
not take it; the queue (``queue.py``) keeps the notification and tries again later.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

EventState = Literal["firing", "resolved", "flapping", "repeat"]


@dataclass(frozen=True)
class AlertEvent:
    """One alert's transition (or a reminder while it keeps firing)."""

    alert_id: str  # stable for one firing episode (``opsagent alert ack ID``)
    dedup_key: str  # stable for rule + labels + host across episodes (PagerDuty dedup_key)
    rule: str
    host: str
    state: EventState
    severity: Literal["info", "warning", "critical"]
    summary: str  # one line a human reads first
    started_at: float  # epoch seconds the alert started firing
    at: float  # epoch seconds of this event
    value: float | None = None
    metric: str | None = None
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Notification:
    """What one notifier receives at once: the events of one host that arose together."""

    host: str
    events: tuple[AlertEvent, ...]

    def to_json(self) -> dict[str, Any]:
        return {"host": self.host, "events": [asdict(e) for e in self.events]}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Notification:
        return cls(host=doc["host"], events=tuple(
            AlertEvent(**{**e, "labels": dict(e.get("labels") or {})}) for e in doc["events"]))


class DeliveryError(Exception):
    """The service did not take the notification. ``retry`` is false for answers that will
    never change (a 4xx other than 408/429); ``retry_after`` is the service's own hint."""

    def __init__(self, message: str, *, retry: bool = True,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry = retry
        self.retry_after = retry_after


def secret(spec: Any, name: str) -> str:
    """The secret ``name`` of a notifier spec, from ``<name>_env`` or ``<name>_file``, read
    when sending (a rotated secret is picked up). Errors name the variable or file, never a
    value; they are retried, since an operator can fix them without restarting anything."""
    from agent.secrets import read_secret

    return read_secret(spec, name, DeliveryError)


def when(t: float) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


def iso(t: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat()


STATE_WORD = {"firing": "FIRING", "resolved": "RESOLVED", "flapping": "FLAPPING",
              "repeat": "STILL FIRING"}


def headline(note: Notification) -> str:
    """`[FIRING:2] web01: disk-root, api-down` (the most urgent state first)."""
    order = ["firing", "repeat", "flapping", "resolved"]
    states = sorted({e.state for e in note.events}, key=order.index)
    word = STATE_WORD[states[0]]
    rules = ", ".join(dict.fromkeys(e.rule for e in note.events))
    return f"[{word}:{len(note.events)}] {note.host}: {rules}"


def event_line(e: AlertEvent) -> str:
    since = f" (since {when(e.started_at)})" if e.state != "resolved" else ""
    return f"{STATE_WORD[e.state]} [{e.severity}] {e.summary}{since}"


def render_text(note: Notification) -> str:
    """The plain-text body: one line per event, then its alert id for `opsagent alert ack`."""
    lines = [headline(note), ""]
    for e in note.events:
        lines.append(event_line(e))
        if e.state != "resolved" and e.alert_id:
            lines.append(f"    host {e.host}, alert {e.alert_id}: opsagent alert ack "
                         f"{e.alert_id}")
    return "\n".join(lines)
