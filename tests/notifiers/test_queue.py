"""The durable queue and its dispatcher: retries until taken, exactly once; a permanent
refusal kept aside; one notifier's outage never delays another's; a restart loses nothing."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from agent import statedb
from agent.notifiers.queue import Dispatcher, NotifyQueue
from agent.playbook.models import Notifier
from tests.harness.collector import free_port
from tests.harness.recorders import Answer, HttpRecorder, SmtpRecorder
from tests.notifiers.test_channels import event, note
from tests.service.agentproc import wait_for

LOG = logging.getLogger("test.notify")


def hook(url: str) -> Notifier:
    return Notifier.model_validate({"webhook": {"url": url}})


def dispatcher(state: Path) -> Dispatcher:
    return Dispatcher(str(state), LOG, backoff_first=0.05, backoff_cap=0.3, timeout=2.0)


def test_500_three_times_then_200_is_delivered_once(tmp_path: Path) -> None:
    rec = HttpRecorder(answers=[Answer(500), Answer(500), Answer(502), Answer(200)])
    d = dispatcher(tmp_path)
    try:
        NotifyQueue(str(tmp_path)).put("hook", hook(rec.url), note())
        d.start()
        wait_for(lambda: rec.taken(), 10, "the notification taken")
        time.sleep(0.5)
        assert [r.status for r in rec.requests] == [500, 500, 502, 200]
        assert NotifyQueue(str(tmp_path)).pending()["count"] == 0
    finally:
        d.stop()
        rec.close()


def test_a_permanent_refusal_is_kept_aside_and_not_retried(tmp_path: Path) -> None:
    rec = HttpRecorder(status=400, body=b"bad request")
    d = dispatcher(tmp_path)
    try:
        NotifyQueue(str(tmp_path)).put("hook", hook(rec.url), note())
        d.start()
        wait_for(lambda: NotifyQueue(str(tmp_path)).pending()["dead"] == 1, 10, "notify_dead")
        time.sleep(0.5)
        assert len(rec.requests) == 1
        with statedb.connect(str(tmp_path)) as db:
            assert db is not None
            reason, body = db.execute("SELECT reason, body FROM notify_dead").fetchone()
        assert "HTTP 400" in reason and json.loads(body)["host"] == "web01"
    finally:
        d.stop()
        rec.close()


def test_one_notifier_down_does_not_delay_another(tmp_path: Path) -> None:
    fine = HttpRecorder()
    port = free_port()  # nothing listens: every attempt fails
    q = NotifyQueue(str(tmp_path))
    d = dispatcher(tmp_path)
    try:
        q.put("down", hook(f"http://127.0.0.1:{port}/x"), note())
        d.start()
        time.sleep(0.3)  # the first notifier is already failing and backing off
        t0 = time.monotonic()
        for i in range(5):
            q.put("fine", hook(fine.url), note(event(rule=f"r{i}")))
            d.wake()
        wait_for(lambda: len(fine.taken()) == 5, 5, "the healthy notifier's five")
        assert time.monotonic() - t0 < 3
        rules = [json.loads(r.body)["events"][0]["rule"] for r in fine.taken()]
        assert rules == [f"r{i}" for i in range(5)]  # in order
        # the fifth is taken off the queue just after the recorder has it
        pending = wait_for(lambda: (p := q.pending())["count"] == 1 and p, 5,
                           "only the down notifier's message left")
        assert "down" in pending["by_notifier"]
        assert pending["by_notifier"]["down"]["attempts"] >= 1
    finally:
        d.stop()
        fine.close()


def test_smtp_down_then_up_delivers_once_across_a_restart(tmp_path: Path) -> None:
    port = free_port()
    spec = Notifier.model_validate({"email": {"to": ["ops@example.com"], "smtp": {
        "host": "127.0.0.1", "port": port, "timeout": "2s"}}})
    NotifyQueue(str(tmp_path)).put("mail", spec, note())
    d = dispatcher(tmp_path)
    d.start()
    wait_for(lambda: (NotifyQueue(str(tmp_path)).pending()["by_notifier"].get("mail") or {})
             .get("attempts"), 10, "a failed attempt")
    d.stop()  # the agent stops with the mail still waiting
    d.flush(0.5)
    assert NotifyQueue(str(tmp_path)).pending()["count"] == 1
    smtp = SmtpRecorder(port).start()
    d2 = dispatcher(tmp_path)  # the agent starts again
    try:
        d2.start()
        wait_for(lambda: smtp.messages, 10, "the mail")
        time.sleep(0.5)
        assert len(smtp.messages) == 1
        assert NotifyQueue(str(tmp_path)).pending()["count"] == 0
    finally:
        d2.stop()
        smtp.stop()


def test_pagerduty_notifications_are_queued_one_event_each(tmp_path: Path) -> None:
    spec = Notifier.model_validate({"pagerduty": {"routing_key_env": "X",
                                                  "url": "http://127.0.0.1:9/"}})
    q = NotifyQueue(str(tmp_path))
    q.put("pd", spec, note(event(rule="a"), event(rule="b"), event("resolved", rule="c")))
    with statedb.connect(str(tmp_path)) as db:
        assert db is not None
        bodies = [json.loads(b) for (b,) in db.execute("SELECT body FROM notify_queue")]
    assert [[e["rule"] for e in b["events"]] for b in bodies] == [["a"], ["b"], ["c"]]


def test_retry_after_is_honoured(tmp_path: Path) -> None:
    rec = HttpRecorder(answers=[Answer(429, b"", {"Retry-After": "1"}), Answer(200)])
    d = Dispatcher(str(tmp_path), LOG, backoff_first=0.05, backoff_cap=5.0, timeout=2.0)
    try:
        NotifyQueue(str(tmp_path)).put("hook", hook(rec.url), note())
        d.start()
        wait_for(lambda: rec.taken(), 10, "the notification taken")
        first, second = rec.requests
        assert second.at - first.at >= 0.95  # not the 0.05 s backoff: the service's 1 s
    finally:
        d.stop()
        rec.close()
