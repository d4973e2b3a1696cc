"""Checks, thresholds and alerts inside the agent service.

Checks run on their own intervals in a small thread pool (a slow or hanging probe never
holds up the loop or another check; a check still running is not started again). The loop
works in ticks of ``TICK_S``: due checks are started together and finished results taken
together, so 500 checks every 10 s wake the loop 4 times a second, not 100. Each result
becomes metrics
(``check.NAME.KEY``) and is fed to the thresholds that read it; thresholds on host metrics
sample them on their own ``interval``. Alerts go to :class:`agent.rules.alerting.Alerting`,
notifications to the durable queue in state.db that a dispatcher thread delivers, and the
aggregate health is what ``/health`` answers.
"""

from __future__ import annotations

import heapq
import logging
import math
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from agent.checks.base import Health, Outcome, worst
from agent.playbook import LoadedPlaybook
from agent.playbook.models import CheckSpec
from agent.rules import metrics
from agent.rules.alerting import GROUP_WAIT_S, Act, Alerting, Rule

log = logging.getLogger("opsagent.checks")

TICK_S = 0.25  # checks start and results are taken on this grid
HISTORY = 10  # results kept per check for /health and `opsagent status`
FIRST_SPREAD_S = 5.0  # first runs are spread over this much (a stable offset per check)


@dataclass
class CheckState:
    spec: CheckSpec
    playbook: str
    outcome: Outcome | None = None
    at: float | None = None
    history: deque[tuple[float, Health, float | None, str]] = field(
        default_factory=lambda: deque(maxlen=HISTORY))

    def doc(self, history: bool = True) -> dict[str, Any]:
        """The latest result; with ``history`` (for /health) the last few as well."""
        o = self.outcome
        doc: dict[str, Any] = {
            "playbook": self.playbook, "probe": self.spec.probe,
            "status": o.status if o else "pending",
            "message": o.message if o else "not run yet",
            "latency_ms": o.latency_ms if o else None, "at": self.at,
            "values": dict(o.values) if o else {}}
        if history:
            doc["history"] = [{"at": at, "status": s, "latency_ms": lat, "message": m}
                              for at, s, lat, m in self.history]
        return doc


class Observer:
    def __init__(self, state_dir: str, host: str, report: Callable[..., None], act: Act,
                 workers: int = 8) -> None:
        from agent.notifiers.queue import Dispatcher, NotifyQueue

        self.finished: deque[tuple[CheckSpec, Outcome, float]] = deque()  # from workers
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="opsagent-check")
        self.checks: dict[str, CheckState] = {}
        self.queue: list[tuple[float, str]] = []  # (monotonic due, check name), a heap
        self.running: set[str] = set()
        self.by_check: dict[str, list[Rule]] = {}  # check name -> rules reading its metrics
        self.host_rules: dict[str, tuple[Rule, float]] = {}  # rule -> (rule, monotonic due)
        self.notify_queue = NotifyQueue(state_dir)
        self.dispatcher = Dispatcher(state_dir, log)
        self.alerting = Alerting(state_dir, host, self.notify_queue_put, report, act)
        self.next_tick = 0.0
        self.lock = threading.Lock()  # /health reads from its own thread

    def start(self) -> None:
        self.dispatcher.start()

    def notify_queue_put(self, name: str, spec: Any, note: Any) -> None:
        self.notify_queue.put(name, spec, note)
        self.dispatcher.wake()

    def stop(self, flush_s: float = 2.0) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.alerting.flush(time.time(), force=True)
        self.dispatcher.stop()
        self.dispatcher.flush(flush_s)  # what is still unsent waits in state.db

    # --- configuration ------------------------------------------------------------------

    def configure(self, playbooks: list[LoadedPlaybook]) -> None:
        """A new revision: unchanged checks keep their schedule and history."""
        now = time.monotonic()
        old = self.checks
        checks: dict[str, CheckState] = {}
        rules: list[Rule] = []
        windows = []
        for pb in playbooks:
            m = pb.model
            for c in m.checks:
                if c.name in checks:
                    log.warning("check %s is declared by playbooks %s and %s; %s's is used",
                                c.name, checks[c.name].playbook, m.name, m.name)
                prev = old.get(c.name)
                checks[c.name] = (prev if prev is not None and prev.spec == c
                                  else CheckState(c, m.name))
            steps_of = m.escalations
            rules.extend(Rule(t, m.name, dict(m.notifiers),
                              list(steps_of.get(t.escalation, [])) if t.escalation else [])
                         for t in m.thresholds)
            windows.extend(m.maintenance)
        with self.lock:
            self.checks = checks
        self.queue = [(due, n) for due, n in self.queue if n in checks and old.get(n) is
                      checks[n]]
        queued = {n for _, n in self.queue}
        for name, st in checks.items():
            if name not in queued and name not in self.running:
                offset = (zlib.crc32(name.encode()) % 1000) / 1000 * min(st.spec.interval,
                                                                        FIRST_SPREAD_S)
                self.queue.append((now + offset, name))
        heapq.heapify(self.queue)
        self.by_check = {}
        self.host_rules = {}
        for r in rules:
            if r.spec.metric.startswith("check."):
                name = r.spec.metric[len("check."):].rpartition(".")[0]
                self.by_check.setdefault(name, []).append(r)
            else:
                self.host_rules[r.spec.name] = (r, now)
        self.alerting.configure(rules, windows)
        self.next_tick = now

    # --- the loop's side ----------------------------------------------------------------

    @property
    def active(self) -> bool:
        """Anything declared to check or evaluate."""
        return bool(self.checks or self.host_rules or self.by_check)

    def next_due(self) -> float | None:
        """Monotonic time something is due (a check, a host metric, alerting's own work)."""
        due = [self.next_tick]
        if self.queue:
            due.append(math.ceil(self.queue[0][0] / TICK_S) * TICK_S)
        if self.running or self.finished:
            due.append(math.floor(time.monotonic() / TICK_S + 1) * TICK_S)
        due.extend(t for _, t in self.host_rules.values())
        return min(due) if (self.checks or self.host_rules or self.alerting.alerts) else None

    def run_due(self) -> None:
        while self.finished:
            self.on_result(self.finished.popleft())
        now = time.monotonic()
        while self.queue and self.queue[0][0] <= now:
            _, name = heapq.heappop(self.queue)
            st = self.checks.get(name)
            if st is None or name in self.running:
                continue
            self.running.add(name)
            self.pool.submit(self._run_one, st.spec)
        wall = time.time()
        for name, (rule, due) in list(self.host_rules.items()):
            if due <= now:
                self.host_rules[name] = (rule, now + rule.spec.interval)
                value = metrics.sample(rule.spec.metric, rule.spec.path)
                if value is None:
                    log.warning("%s: cannot read %s%s", name, rule.spec.metric,
                                f" on {rule.spec.path}" if rule.spec.path else "")
                else:
                    self.alerting.observe(name, value, wall)
        self._soon(now)
        if now >= self.next_tick:
            self.alerting.tick(wall)
            nxt = self.alerting.next_due(wall)
            self.next_tick = now + (max(0.05, nxt - wall) if nxt is not None else 60.0)

    def _run_one(self, spec: CheckSpec) -> None:
        from agent.checks import run_check

        try:
            outcome = run_check(spec)
        except Exception as e:  # run_check grades probe errors; this is a bug of ours
            log.exception("check %s crashed", spec.name)
            outcome = Outcome("unhealthy", f"internal error: {e}")
        self.finished.append((spec, outcome, time.time()))  # taken at the next tick

    def on_result(self, value: tuple[CheckSpec, Outcome, float]) -> None:
        spec, outcome, at = value
        self.running.discard(spec.name)
        st = self.checks.get(spec.name)
        if st is None or st.spec is not spec:
            return  # the check was changed or removed while it ran
        prev = st.outcome.status if st.outcome else None
        with self.lock:
            st.outcome, st.at = outcome, at
            st.history.append((at, outcome.status, outcome.latency_ms, outcome.message))
        if prev != outcome.status:
            level = logging.INFO if outcome.status == "healthy" else logging.WARNING
            log.log(level, "check %s: %s: %s", spec.name, outcome.status, outcome.message,
                    extra={"check": spec.name, "health": outcome.status})
        heapq.heappush(self.queue, (time.monotonic() + spec.interval, spec.name))
        values = metrics.of_check(spec.name, outcome)
        for rule in self.by_check.get(spec.name, []):
            v = values.get(rule.spec.metric)
            if v is None:
                log.debug("%s: check %s gave no %s", rule.spec.name, spec.name, rule.spec.metric)
                continue
            self.alerting.observe(rule.spec.name, v, at)
        self._soon(time.monotonic())

    def _soon(self, now: float) -> None:
        """Events waiting for ``group_wait``: make sure the next tick sends them."""
        if self.alerting.outgoing_since is not None:
            self.next_tick = min(self.next_tick, now + GROUP_WAIT_S)

    # --- what others read ---------------------------------------------------------------

    def health(self, history: bool = True) -> tuple[Health, dict[str, Any]]:
        """The aggregate (worst of every check that has run) and the per-check detail."""
        with self.lock:
            detail = {n: st.doc(history) for n, st in self.checks.items()}
        states = [d["status"] for d in detail.values() if d["status"] != "pending"]
        status: Health = worst(*states) if states else "healthy"
        return status, detail

    def status(self) -> dict[str, Any]:
        health, detail = self.health(history=False)  # status.json: small, written often
        return {"health": health, "checks": detail, "alerts": self.alerting.snapshot(),
                "notifications": self.notify_queue.pending()}
