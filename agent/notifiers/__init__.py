"""Notifiers: Slack, PagerDuty, email and a signed JSON webhook, behind one ``send``.

Channel modules are imported when first used, so loading a playbook never imports httpx or
smtplib. What is sent goes through the durable queue in ``queue.py`` first.
"""

from __future__ import annotations

import importlib

from agent.notifiers.base import Notification
from agent.playbook.models import Notifier

CHANNELS = ("slack", "pagerduty", "email", "webhook")


def channel(spec: Notifier) -> str:
    return next(c for c in CHANNELS if getattr(spec, c) is not None)


def send(spec: Notifier, note: Notification, timeout: float = 10.0) -> None:
    """Deliver ``note`` through the notifier's channel; DeliveryError when not taken."""
    name = channel(spec)
    module = importlib.import_module(f"agent.notifiers.{name}")
    module.send(getattr(spec, name), note, timeout)
