"""The alert lifecycle against a real state.db: for, hysteresis, flapping, escalation, acks,
repeats, silences, maintenance windows, grouping, and carrying on after a restart.

Time is passed in explicitly (``now``), so minutes of alert life take no time to test."""

from __future__ import annotations

from typing import Any

import pytest

from agent.notifiers.base import Notification
from agent.playbook.models import Notifier, ThresholdSpec
from agent.playbook.models.alerting import EscalationStep, MaintenanceWindow
from agent.rules import silences
from agent.rules.alerting import GROUP_WAIT_S, Alerting, Rule

T0 = 1_800_000_000.0
HOOK = Notifier.model_validate({"webhook": {"url": "http://127.0.0.1:9/x"}})
NOTIFIERS = {"slack": HOOK, "mail": HOOK, "pager": HOOK}


def rule(**kw: Any) -> Rule:
    steps = [EscalationStep.model_validate(s) for s in kw.pop("steps", [])]
    doc = {"name": "disk-root", "metric": "disk.used_percent", "above": 90.0,
           "actions": [{"notify": "slack"}], **kw}
    return Rule(ThresholdSpec.model_validate(doc), "pb", NOTIFIERS, steps)


class Harness:
    def __init__(self, state_dir: str, *rules: Rule,
                 windows: list[MaintenanceWindow] | None = None) -> None:
        self.sent: list[tuple[str, Notification]] = []
        self.reports: list[dict[str, Any]] = []
        self.actions: list[tuple[str, Any]] = []
        self.a = Alerting(state_dir, "web01", lambda n, _s, note: self.sent.append((n, note)),
                          self._report, lambda _pb, r, act, _v: self.actions.append((r, act)))
        self.a.configure(list(rules), windows or [])

    def _report(self, key: str, severity: str, message: str, **more: Any) -> None:
        self.reports.append({"key": key, "severity": severity, "message": message, **more})

    def feed(self, *points: tuple[float, float], rule_name: str = "disk-root") -> None:
        """Values at times (seconds after T0); ticks and flushes after each, as the agent."""
        for at, value in points:
            self.a.observe(rule_name, value, T0 + at)
            self.tick(at)

    def tick(self, at: float) -> None:
        """A tick at ``at``, and the one group_wait later that sends what it queued."""
        self.a.tick(T0 + at)
        self.a.tick(T0 + at + GROUP_WAIT_S)

    def states(self, notifier: str | None = None) -> list[str]:
        return [e.state for n, note in self.sent for e in note.events
                if notifier is None or n == notifier]


def test_fires_only_after_for_then_resolves_once(tmp_path: Any) -> None:
    h = Harness(str(tmp_path), rule(**{"for": "5m"}))
    h.feed((0, 95), (60, 96), (240, 97))
    assert h.sent == []  # pending for 4 minutes: nobody hears of it
    h.feed((300, 97), (360, 98), (420, 99))
    assert h.states() == ["firing"]
    (name, note), = h.sent
    assert name == "slack" and note.host == "web01"
    ev = note.events[0]
    assert ev.rule == "disk-root" and ev.value == 97 and ev.severity == "warning"
    assert ev.started_at == T0 + 300 and "above 90 for 5m" in ev.summary
    assert ev.dedup_key == "web01/disk-root"
    h.feed((480, 50), (540, 40))
    assert h.states() == ["firing", "resolved"]
    assert h.sent[1][1].events[0].alert_id == ev.alert_id
    assert [r["state"] for r in h.reports] == ["firing", "resolved"]


def test_a_dip_while_pending_starts_the_wait_again(tmp_path: Any) -> None:
    h = Harness(str(tmp_path), rule(**{"for": "5m"}))
    h.feed((0, 95), (200, 80), (250, 95), (500, 95))
    assert h.sent == []
    h.feed((550, 95))
    assert h.states() == ["firing"]


def test_wandering_inside_the_hysteresis_band_notifies_once(tmp_path: Any) -> None:
    h = Harness(str(tmp_path), rule(clear_below=80.0))
    values = [95, 85, 91, 82, 93, 81, 96, 84, 92, 83]
    h.feed(*[(i * 10.0, v) for i, v in enumerate(values)])
    assert h.states() == ["firing"]  # never below 80: never resolved, never fired again
    h.feed((200, 79))
    assert h.states() == ["firing", "resolved"]


def test_flapping_is_one_notification_then_quiet_until_steady(tmp_path: Any) -> None:
    h = Harness(str(tmp_path), rule(flapping={"changes": 4, "within": "10m"}))
    h.feed(*[(i * 10.0, 95 if i % 2 == 0 else 50) for i in range(12)])
    assert h.states() == ["firing", "resolved", "firing", "resolved", "flapping"]
    assert "flapping" in h.sent[-1][1].events[0].summary
    h.feed((200, 95))  # settles firing; steady only once the window has no changes
    assert h.states()[-1] == "flapping"
    h.tick(799)
    assert h.states()[-1] == "flapping"  # the last change was at 200
    h.tick(801)
    assert h.states() == ["firing", "resolved", "firing", "resolved", "flapping", "firing"]


def test_escalation_adds_notifiers_and_ack_stops_it(tmp_path: Any) -> None:
    steps = [{"after": "0s", "notify": ["slack", "mail"]},
             {"after": "5m", "notify": ["slack", "mail", "pager"]}]
    h = Harness(str(tmp_path), rule(actions=[], steps=steps, escalation="high"))
    h.feed((0, 95))
    assert sorted(n for n, _ in h.sent) == ["mail", "slack"]
    h.tick(200)
    assert len(h.sent) == 2
    assert h.a.next_due(T0 + 200) == pytest.approx(T0 + 300)
    h.tick(301)
    assert [n for n, _ in h.sent[2:]] == ["pager"]
    h.feed((400, 40))  # the resolve goes to all three, once each
    assert sorted(n for n, note in h.sent if note.events[0].state == "resolved") == \
        ["mail", "pager", "slack"]


def test_an_acknowledged_alert_escalates_no_further(tmp_path: Any) -> None:
    steps = [{"after": "0s", "notify": ["slack"]}, {"after": "5m", "notify": ["pager"]}]
    h = Harness(str(tmp_path), rule(actions=[], steps=steps, escalation="high"))
    h.feed((0, 95))
    alert_id = h.sent[0][1].events[0].alert_id
    silences.ack(str(tmp_path), alert_id, "alice")
    h.tick(10)
    h.tick(400)
    assert [n for n, _ in h.sent] == ["slack"]
    with pytest.raises(ValueError, match="no firing alert"):
        silences.ack(str(tmp_path), "nope", "alice")


def test_repeat_reminds_while_firing(tmp_path: Any) -> None:
    h = Harness(str(tmp_path), rule(repeat="1h"))
    h.feed((0, 95))
    h.tick(1800)
    assert h.states() == ["firing"]
    h.tick(3601)
    assert h.states() == ["firing", "repeat"]
    assert "still firing" in h.sent[-1][1].events[0].summary


def test_silence_mutes_then_the_alert_is_told_when_it_ends(tmp_path: Any) -> None:
    h = Harness(str(tmp_path), rule(actions=[{"notify": "slack"},
                                             {"run": {"argv": ["/bin/true"]}}]))
    s = silences.add(str(tmp_path), "disk-*", duration=600, until_resolved=False, by="bob",
                     now=T0 - 1)
    h.tick(0)
    h.feed((10, 95))
    assert h.sent == [] and h.actions == []  # muted: no notification, no automatic action
    assert h.reports[-1]["state"] == "firing"  # but still reported, saying who muted it
    assert h.reports[-1]["muted_by"] == f"silence {s.id}"
    assert any(r["key"] == f"silence:{s.id}" and r["state"] == "muted" for r in h.reports)
    h.tick(700)
    assert h.states() == ["firing"] and len(h.actions) == 1
    assert any(r["key"] == f"silence:{s.id}" and r["state"] == "unmuted" for r in h.reports)


def test_until_resolved_silence_ends_with_its_alert(tmp_path: Any) -> None:
    h = Harness(str(tmp_path), rule())
    s = silences.add(str(tmp_path), "disk-root", duration=None, until_resolved=True,
                     now=T0 - 1)
    h.tick(0)
    h.feed((10, 95), (20, 40))
    assert h.sent == []
    assert silences.listing(str(tmp_path), now=T0 + 30) == []
    h.feed((30, 95))
    assert h.states() == ["firing"]  # the next episode is heard again
    assert s.id not in {x.id for x in silences.listing(str(tmp_path), now=T0 + 40)}


def test_maintenance_window_mutes_only_its_rules(tmp_path: Any) -> None:
    win = MaintenanceWindow.model_validate({"name": "patching", "rules": ["disk-*"],
                                            "from": "2027-01-15T08:00:00Z",
                                            "until": "2027-01-15T09:00:00Z"})
    assert win.start is not None
    start = win.start - T0
    other = rule(name="mem-high", metric="memory.used_percent")
    h = Harness(str(tmp_path), rule(), other, windows=[win])
    h.feed((start + 60, 95))
    h.feed((start + 60, 95), rule_name="mem-high")
    assert [e.rule for _, n in h.sent for e in n.events] == ["mem-high"]
    h.tick(start + 3700)  # the window closed: the still-firing disk alert is told now
    assert [e.rule for _, n in h.sent for e in n.events] == ["mem-high", "disk-root"]
    assert any(r["key"] == "maintenance:patching" and r["state"] == "muted"
               for r in h.reports)


def test_recurring_window_is_open_for_its_duration() -> None:
    win = MaintenanceWindow.model_validate({"name": "nightly", "schedule": "0 2 * * *",
                                            "duration": "1h"})
    import datetime as dt

    def at(h: int, m: int) -> float:
        return dt.datetime(2027, 1, 15, h, m).timestamp()
    assert win.open_at(at(2, 30)) == at(2, 0)
    assert win.open_at(at(3, 1)) is None and win.open_at(at(1, 59)) is None


def test_alerts_firing_together_go_out_as_one_notification(tmp_path: Any) -> None:
    h = Harness(str(tmp_path), rule(), rule(name="inodes", metric="disk.inodes_percent"))
    h.a.observe("disk-root", 95, T0)
    h.a.observe("inodes", 99, T0 + 0.2)
    h.tick(0)
    (name, note), = h.sent
    assert name == "slack" and [e.rule for e in note.events] == ["disk-root", "inodes"]


def test_state_survives_a_restart(tmp_path: Any) -> None:
    h = Harness(str(tmp_path), rule(**{"for": "5m"}))
    h.feed((0, 95), (120, 95))
    h2 = Harness(str(tmp_path), rule(**{"for": "5m"}))  # the agent restarted
    h2.feed((310, 95))
    assert h2.states() == ["firing"]
    h3 = Harness(str(tmp_path), rule(**{"for": "5m"}))
    h3.feed((400, 95))
    assert h3.sent == []  # already firing and notified: not told twice
    h3.feed((500, 10))
    assert h3.states() == ["resolved"]
