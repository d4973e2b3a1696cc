"""Slack incoming webhooks: ``POST`` ``{"text", "blocks"}`` to the webhook URL (a secret,
from ``webhook_url_env``/``_file``). ``text`` is the notification's fallback (push and
screen readers); ``blocks`` holds a section per event, within Slack's limits (50 blocks,
3,000 characters of section text). Slack answers 200 ``ok``."""

from __future__ import annotations

from typing import Any

from agent.notifiers.base import Notification, event_line, headline, render_text, secret
from agent.notifiers.http import post_json

MAX_BLOCKS = 50
SECTION_MAX = 3000
TEXT_MAX = 3000
EMOJI = {"firing": ":red_circle:", "repeat": ":red_circle:", "flapping": ":warning:",
         "resolved": ":large_green_circle:"}


def payload(spec: Any, note: Notification) -> dict[str, Any]:
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": headline(note)[:150]}}]
    events = list(note.events)
    shown = events[: MAX_BLOCKS - 2]
    for e in shown:
        text = f"{EMOJI[e.state]} *{e.rule}* on `{e.host}`\n{_escape(event_line(e))}"
        if e.alert_id and e.state != "resolved":
            text += f"\n_ack:_ `opsagent alert ack {e.alert_id}`"
        blocks.append({"type": "section", "text": {"type": "mrkdwn",
                                                   "text": text[:SECTION_MAX]}})
    if len(events) > len(shown):
        blocks.append({"type": "context", "elements": [
            {"type": "mrkdwn", "text": f"and {len(events) - len(shown)} more"}]})
    doc: dict[str, Any] = {"text": render_text(note)[:TEXT_MAX], "blocks": blocks}
    if spec.channel:
        doc["channel"] = spec.channel
    return doc


def _escape(text: str) -> str:
    """Slack's three control characters, so a summary is shown and never parsed."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def send(spec: Any, note: Notification, timeout: float) -> None:
    post_json(secret(spec, "webhook_url"), payload(spec, note), timeout)
