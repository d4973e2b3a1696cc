"""PagerDuty Events API v2: one event per alert event, ``trigger`` while it fires (again on
a reminder: PagerDuty folds it into the open incident by ``dedup_key``) and ``resolve`` when
it recovers. The ``dedup_key`` is stable per host, rule and labels. PagerDuty answers 202;
400 means the event is malformed (no retry), 429 and 5xx are retried."""

from __future__ import annotations

from typing import Any

from agent.notifiers.base import AlertEvent, Notification, iso, secret
from agent.notifiers.http import post_json

SUMMARY_MAX = 1024


def event(routing_key: str, e: AlertEvent) -> dict[str, Any]:
    if e.state == "resolved":
        return {"routing_key": routing_key, "event_action": "resolve",
                "dedup_key": e.dedup_key}
    details: dict[str, Any] = {"state": e.state, "alert_id": e.alert_id,
                               "started_at": iso(e.started_at), "value": e.value,
                               "metric": e.metric, "ack": f"opsagent alert ack {e.alert_id}"}
    details.update({f"label_{k}": v for k, v in e.labels.items()})
    return {
        "routing_key": routing_key, "event_action": "trigger", "dedup_key": e.dedup_key,
        "payload": {"summary": f"{e.host}: {e.summary}"[:SUMMARY_MAX], "source": e.host,
                    "severity": e.severity, "timestamp": iso(e.at),
                    "component": e.labels.get("path") or e.metric or e.rule,
                    "group": e.rule, "class": e.metric or "threshold",
                    "custom_details": details},
        "client": "opsagent",
    }


def send(spec: Any, note: Notification, timeout: float) -> None:
    key = secret(spec, "routing_key")
    for e in note.events:
        post_json(spec.url, event(key, e), timeout)
