"""Each channel against a real local server, its payload checked against the service's
documented format (tests/notifiers/schemas.py)."""

from __future__ import annotations

import hashlib
import hmac
import json
import ssl
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from agent.notifiers import send
from agent.notifiers.base import AlertEvent, DeliveryError, Notification
from agent.playbook.models import Notifier
from tests.harness.collector import free_port
from tests.harness.recorders import Answer, HttpRecorder, SmtpRecorder
from tests.harness.tls import TestCA
from tests.notifiers.schemas import PAGERDUTY, SLACK

CHECKER = jsonschema.Draft202012Validator.FORMAT_CHECKER


def event(state: str = "firing", rule: str = "disk-root", **kw: Any) -> AlertEvent:
    doc: dict[str, Any] = {
        "alert_id": "a1b2c3d4", "dedup_key": f"web01/{rule}/path=/", "rule": rule,
        "host": "web01", "state": state, "severity": "critical",
        "summary": f"{rule}: disk.used_percent on / = 93.2, above 90 for 5m",
        "started_at": time.time() - 300, "at": time.time(), "value": 93.2,
        "metric": "disk.used_percent", "labels": {"path": "/"}, **kw}
    return AlertEvent(**doc)


def note(*events: AlertEvent) -> Notification:
    return Notification("web01", events or (event(),))


def notifier(doc: dict[str, Any]) -> Notifier:
    return Notifier.model_validate(doc)


@pytest.fixture
def recorder() -> Any:
    rec = HttpRecorder()
    yield rec
    rec.close()


def test_slack_message_follows_the_incoming_webhook_format(recorder: HttpRecorder,
                                                           monkeypatch: Any) -> None:
    monkeypatch.setenv("T_SLACK", recorder.url)
    many = [event(rule=f"rule-{i}", summary="<!channel> & *" + "x" * 4000) for i in range(60)]
    send(notifier({"slack": {"webhook_url_env": "T_SLACK", "channel": "#ops"}}),
         note(*many))
    (req,) = recorder.requests
    assert req.headers["Content-Type"] == "application/json"
    body = json.loads(req.body)
    jsonschema.validate(body, SLACK)
    assert body["channel"] == "#ops" and body["text"].startswith("[FIRING:60] web01:")
    sections = [b for b in body["blocks"] if b["type"] == "section"]
    assert "&lt;!channel&gt; &amp;" in sections[0]["text"]["text"]  # shown, never a ping
    assert body["blocks"][-1]["type"] == "context"  # "and 12 more"


def test_slack_webhook_url_from_a_file(recorder: HttpRecorder, tmp_path: Path) -> None:
    (tmp_path / "hook").write_text(recorder.url + "\n")
    send(notifier({"slack": {"webhook_url_file": str(tmp_path / "hook")}}),
         note(event("resolved")))
    body = json.loads(recorder.requests[0].body)
    jsonschema.validate(body, SLACK)
    assert "RESOLVED" in body["text"]


def test_pagerduty_trigger_and_resolve_follow_events_v2(monkeypatch: Any) -> None:
    pd = HttpRecorder(status=202, body=b'{"status":"success","dedup_key":"x"}')
    monkeypatch.setenv("T_PD", "R0UT1NG")
    spec = notifier({"pagerduty": {"routing_key_env": "T_PD", "url": pd.url}})
    try:
        send(spec, note(event(summary="s" * 2000, severity="warning")))
        send(spec, note(event("resolved")))
        trigger, resolve = (json.loads(r.body) for r in pd.requests)
        for doc in (trigger, resolve):
            jsonschema.validate(doc, PAGERDUTY, format_checker=CHECKER)
        assert trigger["event_action"] == "trigger" and trigger["routing_key"] == "R0UT1NG"
        assert len(trigger["payload"]["summary"]) == 1024
        assert trigger["payload"]["severity"] == "warning"
        assert trigger["payload"]["source"] == "web01"
        assert resolve == {"routing_key": "R0UT1NG", "event_action": "resolve",
                           "dedup_key": trigger["dedup_key"]}
    finally:
        pd.close()


def test_pagerduty_400_is_not_retried_and_429_is_with_its_retry_after(monkeypatch: Any) -> None:
    monkeypatch.setenv("T_PD", "R0UT1NG")
    pd = HttpRecorder(answers=[Answer(400, b'{"status":"invalid event"}'),
                               Answer(429, b"slow down", {"Retry-After": "7"})])
    spec = notifier({"pagerduty": {"routing_key_env": "T_PD", "url": pd.url}})
    try:
        with pytest.raises(DeliveryError) as refused:
            send(spec, note())
        assert not refused.value.retry and "HTTP 400" in str(refused.value)
        with pytest.raises(DeliveryError) as limited:
            send(spec, note())
        assert limited.value.retry and limited.value.retry_after == 7
    finally:
        pd.close()


def test_webhook_body_is_signed_the_way_a_receiver_verifies_it(recorder: HttpRecorder,
                                                                tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("s3cr3t\n")
    send(notifier({"webhook": {"url": recorder.url, "secret_file": str(tmp_path / "secret"),
                               "headers": {"X-Team": "ops"}}}), note(event(), event("resolved")))
    (req,) = recorder.requests
    stamp = req.headers["X-Opsagent-Timestamp"]
    assert abs(int(stamp) - time.time()) < 60  # fresh: a receiver refuses old ones
    expected = "sha256=" + hmac.new(b"s3cr3t", stamp.encode() + b"." + req.body,
                                    hashlib.sha256).hexdigest()
    assert hmac.compare_digest(req.headers["X-Opsagent-Signature"], expected)
    forged = "sha256=" + hmac.new(b"wrong", stamp.encode() + b"." + req.body,
                                  hashlib.sha256).hexdigest()
    assert not hmac.compare_digest(req.headers["X-Opsagent-Signature"], forged)
    body = json.loads(req.body)
    assert req.headers["X-Team"] == "ops"
    assert body["host"] == "web01" and [e["state"] for e in body["events"]] == \
        ["firing", "resolved"]


def test_a_missing_secret_names_the_variable_never_a_value(recorder: HttpRecorder,
                                                           monkeypatch: Any,
                                                           tmp_path: Path) -> None:
    monkeypatch.delenv("T_MISSING", raising=False)
    with pytest.raises(DeliveryError, match="T_MISSING") as e:
        send(notifier({"slack": {"webhook_url_env": "T_MISSING"}}), note())
    assert e.value.retry
    with pytest.raises(DeliveryError, match="nope"):
        send(notifier({"webhook": {"url": recorder.url,
                                   "secret_file": str(tmp_path / "nope")}}), note())
    assert recorder.requests == []  # nothing sent unsigned


def test_webhook_error_never_shows_the_url_path(monkeypatch: Any) -> None:
    hook = HttpRecorder(status=404, body=b"no_service")
    monkeypatch.setenv("T_SLACK", hook.url.replace("/hook", "/services/T0/B0/SECRETPART"))
    try:
        with pytest.raises(DeliveryError) as e:
            send(notifier({"slack": {"webhook_url_env": "T_SLACK"}}), note())
        assert "SECRETPART" not in str(e.value) and "404" in str(e.value)
        assert not e.value.retry
    finally:
        hook.close()


def test_email_with_starttls_and_auth(tmp_path: Path, monkeypatch: Any) -> None:
    (tmp_path / "ca").mkdir()
    ca = TestCA(tmp_path / "ca")
    leaf = ca.issue("localhost", days_left=30)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(leaf.cert_file, leaf.key_file)
    port = free_port()
    smtp = SmtpRecorder(port, tls_context=ctx, users={"agent": "pw"}).start()
    monkeypatch.setenv("T_SMTP_PW", "pw")
    spec = {"email": {"to": ["ops@example.com", "dba@example.com"], "from": "agent@example.com",
                      "smtp": {"host": "localhost", "port": port, "starttls": True,
                               "ca_file": str(ca.ca_file), "username": "agent",
                               "password_env": "T_SMTP_PW"}}}
    try:
        send(notifier(spec), note(event(), event(rule="api-down")))
        (msg,) = smtp.messages
        assert smtp.logins == ["agent"]
        assert smtp.envelopes[0] == ("agent@example.com", ["ops@example.com",
                                                          "dba@example.com"])
        assert msg["Subject"] == "[FIRING:2] web01: disk-root, api-down"
        assert msg["From"] == "agent@example.com" and msg["Message-ID"]
        text = msg.get_payload(decode=True).decode()
        assert "disk.used_percent on / = 93.2" in text and "opsagent alert ack a1b2c3d4" in text
        monkeypatch.setenv("T_SMTP_PW", "wrong")
        spec["email"]["smtp"]["timeout"] = "2s"
        with pytest.raises(DeliveryError):
            send(notifier(spec), note())
        assert len(smtp.messages) == 1 and smtp.logins == ["agent"]  # refused: nothing sent
    finally:
        smtp.stop()


def test_email_to_a_server_that_is_down_is_retryable() -> None:
    port = free_port()
    spec = {"email": {"to": ["ops@example.com"], "smtp": {"host": "127.0.0.1", "port": port,
                                                           "timeout": "2s"}}}
    with pytest.raises(DeliveryError) as e:
        send(notifier(spec), note())
    assert e.value.retry


def test_smtp_auth_settings_are_checked_when_the_playbook_loads() -> None:
    with pytest.raises(ValueError, match="go together"):
        notifier({"email": {"to": ["a@b"], "smtp": {"host": "h", "password_env": "X"}}})
    with pytest.raises(ValueError, match="at most one"):
        notifier({"email": {"to": ["a@b"], "smtp": {"host": "h", "username": "u",
                                                    "password_env": "X",
                                                    "password_file": "/f"}}})
