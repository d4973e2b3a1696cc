"""The receiving services' documented payload formats, as JSON Schemas the tests check what
the recorders received against.

Slack incoming webhooks (api.slack.com/messaging/webhooks, block kit reference): ``text``
(the fallback) and/or ``blocks``: at most 50; a header's plain_text at most 150 characters,
a section's text at most 3,000; mrkdwn or plain_text objects.
PagerDuty Events API v2 (developer.pagerduty.com/api-reference, "Send Event"): routing_key
(32 characters in real accounts; any string here), event_action trigger|acknowledge|resolve,
dedup_key at most 255; a trigger's payload needs summary (≤ 1,024), source, severity
critical|error|warning|info; timestamp ISO 8601.
"""

from __future__ import annotations

from typing import Any

_TEXT_OBJECT: dict[str, Any] = {
    "type": "object", "required": ["type", "text"],
    "properties": {"type": {"enum": ["plain_text", "mrkdwn"]},
                   "text": {"type": "string", "minLength": 1, "maxLength": 3000}}}

SLACK: dict[str, Any] = {
    "type": "object", "required": ["text"],
    "properties": {
        "text": {"type": "string", "minLength": 1},
        "channel": {"type": "string"},
        "blocks": {"type": "array", "maxItems": 50, "items": {"oneOf": [
            {"type": "object", "required": ["type", "text"], "additionalProperties": False,
             "properties": {"type": {"const": "header"}, "text": {
                 "type": "object", "required": ["type", "text"],
                 "properties": {"type": {"const": "plain_text"},
                                "text": {"type": "string", "maxLength": 150}}}}},
            {"type": "object", "required": ["type", "text"], "additionalProperties": False,
             "properties": {"type": {"const": "section"}, "text": _TEXT_OBJECT}},
            {"type": "object", "required": ["type", "elements"], "additionalProperties": False,
             "properties": {"type": {"const": "context"},
                            "elements": {"type": "array", "maxItems": 10,
                                         "items": _TEXT_OBJECT}}}]}}}}

PAGERDUTY: dict[str, Any] = {
    "type": "object", "required": ["routing_key", "event_action"],
    "properties": {
        "routing_key": {"type": "string", "minLength": 1},
        "event_action": {"enum": ["trigger", "acknowledge", "resolve"]},
        "dedup_key": {"type": "string", "maxLength": 255},
        "client": {"type": "string"},
        "payload": {
            "type": "object", "required": ["summary", "source", "severity"],
            "properties": {
                "summary": {"type": "string", "minLength": 1, "maxLength": 1024},
                "source": {"type": "string", "minLength": 1},
                "severity": {"enum": ["critical", "error", "warning", "info"]},
                "timestamp": {"type": "string", "format": "date-time"},
                "component": {"type": "string"}, "group": {"type": "string"},
                "class": {"type": "string"}, "custom_details": {"type": "object"}}}},
    "if": {"properties": {"event_action": {"const": "trigger"}}},
    "then": {"required": ["payload"]},
    "else": {"required": ["dedup_key"]},
}
