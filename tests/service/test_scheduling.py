"""Cron jobs in the service, with explicit time: due on their slot, a missed slot caught up
once after a restart (not once per slot), never two runs of one job at a time."""

from __future__ import annotations

import threading
import time
from datetime import datetime
from pathlib import Path

from agent.service.scheduling import Job, Outcome, Scheduler


def at(hh: int, mm: int, ss: int = 0) -> float:
    return datetime(2026, 11, 23, hh, mm, ss).timestamp()


class Recorder:
    def __init__(self, gate: threading.Event | None = None) -> None:
        self.runs = 0
        self.gate = gate
        self.done = threading.Event()

    def __call__(self) -> Outcome:
        self.runs += 1
        if self.gate is not None:
            self.gate.wait(10)
        self.done.set()
        return Outcome(True, f"run {self.runs}", {})


def settle(s: Scheduler, rec: Recorder, now: float) -> None:
    assert rec.done.wait(10)
    rec.done.clear()
    deadline = time.monotonic() + 10
    while not s.finished and time.monotonic() < deadline:
        time.sleep(0.01)
    s.run_due(now)


def test_slots_catch_up_once_and_no_overlap(tmp_path: Path) -> None:
    alerts: list[tuple[str, str, str]] = []
    state = str(tmp_path / "state")

    def alert(key: str, severity: str, text: str, **_: object) -> None:
        alerts.append((key, severity, text))

    s = Scheduler(state, alert, lambda: None)
    rec = Recorder()
    s.configure([Job("backup:db", "0 2 * * *", rec)], now=at(1, 30))
    assert s.next_due() == at(2, 0)
    s.run_due(at(1, 59))
    assert rec.runs == 0
    s.run_due(at(2, 0, 1))
    settle(s, rec, at(2, 0, 2))
    assert rec.runs == 1 and alerts[-1] == ("backup:db", "info", "run 1")
    assert s.next_due() == at(2, 0) + 86400

    # the agent was down for three days: one catch-up run at start, then the normal slot
    s2 = Scheduler(state, alert, lambda: None)
    rec2 = Recorder()
    s2.configure([Job("backup:db", "0 2 * * *", rec2)], now=at(2, 0) + 3 * 86400 + 3600)
    assert s2.next_due() == at(2, 0) + 3 * 86400 + 3600
    s2.run_due(at(2, 0) + 3 * 86400 + 3600)
    settle(s2, rec2, at(2, 0) + 3 * 86400 + 3601)
    assert rec2.runs == 1
    assert s2.next_due() == at(2, 0) + 4 * 86400

    # restarted again right after: that slot ran, nothing to catch up
    s3 = Scheduler(state, alert, lambda: None)
    s3.configure([Job("backup:db", "0 2 * * *", Recorder())], now=at(2, 0) + 3 * 86400 + 7200)
    assert s3.next_due() == at(2, 0) + 4 * 86400


def test_a_slot_while_the_last_run_goes_on_is_skipped(tmp_path: Path) -> None:
    gate = threading.Event()
    rec = Recorder(gate)
    s = Scheduler(str(tmp_path / "state"), lambda *a, **k: None, lambda: None)
    s.configure([Job("db:app", "* * * * *", rec)], now=at(3, 0, 30))
    s.run_due(at(3, 1, 0))
    time.sleep(0.2)
    s.run_due(at(3, 2, 0))  # the first run still holds the gate
    gate.set()
    settle(s, rec, at(3, 2, 1))
    time.sleep(0.2)
    assert rec.runs == 1
    assert s.status()["db:app"]["last"]["ok"] is True
