"""Security audits inside the agent service: each playbook audit on its own ``interval`` in a
small worker pool (audits walk trees: they never hold up the loop).

A run's findings are compared with the previous run's by ``Finding.key``: each new finding is
an alert (``audit:NAME``, the finding's severity, reported to the collector) and a
notification to the audit's ``notify`` list; a finding gone is reported resolved. An audit
that cannot run raises an alert of its own — it is not "all clear". ``audit.NAME.findings``
is the number of current findings, a metric thresholds can read. The previous findings are
kept in state.db, so a restart does not announce old findings again.
"""

from __future__ import annotations

import heapq
import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from agent import statedb
from agent.playbook import LoadedPlaybook

log = logging.getLogger("opsagent.audits")

Alert = Callable[..., None]
Enqueue = Callable[[str, Any, Any], None]


class Auditor:
    def __init__(self, state_dir: str, host: str, alert: Alert, enqueue: Enqueue,
                 wake: Callable[[], None]) -> None:
        self.state_dir = state_dir
        self.host = host
        self._alert, self._enqueue, self._wake = alert, enqueue, wake
        self.pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="opsagent-audit")
        self.specs: dict[str, tuple[Any, str, dict[str, Any]]] = {}  # name -> spec, pb, notifiers
        self.queue: list[tuple[float, str]] = []
        self.running: set[str] = set()
        self.finished: list[tuple[Any, Any]] = []
        self.counts: dict[str, int] = {}
        self.lock = threading.Lock()

    def configure(self, playbooks: list[LoadedPlaybook]) -> None:
        specs = {a.name: (a, pb.model.name, dict(pb.model.notifiers))
                 for pb in playbooks for a in pb.model.audits}
        now = time.monotonic()
        keep = {n for n, (s, _, _) in specs.items() if n in self.specs and self.specs[n][0] == s}
        self.queue = [(t, n) for t, n in self.queue if n in keep]
        queued = {n for _, n in self.queue}
        self.queue += [(now + 5.0, n) for n in specs if n not in queued]  # after start-up
        heapq.heapify(self.queue)
        self.specs = specs

    def next_due(self) -> float | None:
        due = [self.queue[0][0]] if self.queue else []
        if self.finished:
            due.append(time.monotonic())
        return min(due) if due else None

    def run_due(self) -> None:
        with self.lock:
            done, self.finished = self.finished, []
        for spec, result in done:
            self.running.discard(spec.name)
            if self.specs.get(spec.name, (None,))[0] == spec:
                self._judge(spec, result)
        now = time.monotonic()
        while self.queue and self.queue[0][0] <= now:
            _, name = heapq.heappop(self.queue)
            if name not in self.specs or name in self.running:
                continue
            spec = self.specs[name][0]
            self.running.add(name)
            heapq.heappush(self.queue, (now + spec.interval, name))
            self.pool.submit(self._run, spec)

    def _run(self, spec: Any) -> None:
        from agent.audits import run_audit

        result = run_audit(spec)
        with self.lock:
            self.finished.append((spec, result))
        self._wake()  # judged by the loop's thread

    def _judge(self, spec: Any, result: Any) -> None:
        name = spec.name
        if result.error:
            self._alert(f"audit:{name}", "warning", f"audit {name} could not run: "
                        f"{result.error}", state="firing")
            return
        before = self._load(name)
        now_keys = {json.dumps(list(f.key)): f for f in result.findings}
        new = [f for k, f in now_keys.items() if k not in before]
        gone = [k for k in before if k not in now_keys]
        self.counts[name] = len(now_keys)
        for f in new[:50]:  # a first run on a messy host: the rest are in the summary
            self._alert(f"audit:{name}", f.severity, f"{f.subject}: {f.detail}",
                        state="firing")
        if len(new) > 50:
            self._alert(f"audit:{name}", spec.severity, f"{len(new) - 50} more new findings "
                        f"(opsagent audit shows all)", state="firing")
        for k in gone[:50]:
            self._alert(f"audit:{name}", "info", f"fixed: {json.loads(k)[2]}",
                        state="resolved")
        if new:
            log.warning("audit %s: %d new findings (%d in all)", name, len(new), len(now_keys),
                        extra={"audit": name})
            self._notify(spec, new)
        self._save(name, sorted(now_keys))

    def _notify(self, spec: Any, new: list[Any]) -> None:
        from agent.notifiers.base import AlertEvent, Notification

        _, _, notifiers = self.specs[spec.name]
        at = time.time()
        events = tuple(AlertEvent(alert_id=f"audit-{spec.name}-{int(at)}-{i}",
                                  dedup_key=f"{self.host}/audit:{spec.name}/{f.subject}",
                                  rule=f"audit:{spec.name}", host=self.host, state="firing",
                                  severity=f.severity, summary=f"{f.subject}: {f.detail}",
                                  started_at=at, at=at, labels={"kind": f.kind})
                       for i, f in enumerate(new[:20]))
        for n in spec.notify or []:
            if n in notifiers:
                self._enqueue(n, notifiers[n], Notification(self.host, events))

    def _load(self, name: str) -> set[str]:
        with statedb.connect(self.state_dir) as db:
            assert db is not None
            row = db.execute("SELECT keys FROM audit_findings WHERE audit = ?",
                             (name,)).fetchone()
        return set(json.loads(row[0])) if row else set()

    def _save(self, name: str, keys: list[str]) -> None:
        with statedb.connect(self.state_dir) as db:
            assert db is not None
            db.execute("INSERT INTO audit_findings (audit, keys) VALUES (?, ?) ON CONFLICT "
                       "(audit) DO UPDATE SET keys = excluded.keys", (name, json.dumps(keys)))

    def values(self) -> dict[str, float]:
        return {f"audit.{n}.findings": float(c) for n, c in self.counts.items()}

    def stop(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
