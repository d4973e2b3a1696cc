"""A JSON webhook: ``POST`` the notification (``{"host", "events": [...], "sent_at"}``).

With a secret, the body is signed so the receiver can tell it came from the agent and is
fresh: ``X-Opsagent-Timestamp: <unix seconds>`` and ``X-Opsagent-Signature: sha256=<hex>``,
the HMAC-SHA256 of ``<timestamp>.<body>`` with the secret. A receiver recomputes it over the
raw body, compares with ``hmac.compare_digest`` and refuses timestamps older than a few
minutes (replays)."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

from agent.notifiers.base import Notification, secret
from agent.notifiers.http import post_json


def sign(key: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(key.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def send(spec: Any, note: Notification, timeout: float) -> None:
    now = time.time()
    body = json.dumps({**note.to_json(), "sent_at": now}).encode()
    headers = dict(spec.headers or {})
    if spec.secret_env is not None or spec.secret_file is not None:
        stamp = str(int(now))
        headers["X-Opsagent-Timestamp"] = stamp
        headers["X-Opsagent-Signature"] = sign(secret(spec, "secret"), stamp, body)
    post_json(spec.url, None, timeout, headers=headers, body=body)
