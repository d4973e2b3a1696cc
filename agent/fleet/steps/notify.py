"""``notify:``: a message through one of the runbook's notifiers (Slack, PagerDuty, email,
webhook), from the host the step runs on: the notifier's secrets (``*_env``, ``*_file``) are
read there, as a playbook's are."""

from __future__ import annotations

import time

from agent.fleet.models import NotifyStep
from agent.fleet.steps.base import StepContext, StepResult


def run(spec: NotifyStep, ctx: StepContext) -> StepResult:
    from agent.notifiers import channel, send
    from agent.notifiers.base import AlertEvent, Notification

    notifier = ctx.notifiers.get(spec.notifier)
    if notifier is None:
        return StepResult("failed", f"no notifier {spec.notifier!r} in the runbook")
    where = f"{spec.notifier} ({channel(notifier)})"
    if ctx.check:
        return StepResult("would-change", f"would notify {where}: {spec.message}")
    now = time.time()
    event = AlertEvent(alert_id=ctx.incident or "runbook", dedup_key=f"incident:{ctx.incident}",
                       rule=f"incident:{ctx.incident}", host=ctx.host, state="firing",
                       severity=spec.severity, summary=spec.message, started_at=now, at=now,
                       labels={"incident": ctx.incident, "by": ctx.who})
    try:
        send(notifier, Notification(ctx.host, (event,)), timeout=ctx.remaining(15))
    except Exception as e:  # DeliveryError, or a secret that is not there: the step failed
        return StepResult("failed", f"{where}: {e}")
    return StepResult("changed", f"notified {where}")
