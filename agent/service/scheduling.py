"""Cron-scheduled jobs inside the agent service: backups and database maintenance.

Each job has a cron ``schedule`` (croniter, local time). The last time a job was due and
started is kept in state.db (``job_runs``), so a run missed while the agent was down is
caught up **once** at start (not once per missed slot), and a restart does not run a job
again for a slot it already ran. A job never runs twice at the same time: a slot that comes
while the previous run is still going is skipped and logged. Jobs run in a small worker
pool, never in the loop's thread; each outcome is logged and reported to the collector (an
alert ``backup:NAME``/``db:NAME``: info when it worked, critical when it failed).
"""

from __future__ import annotations

import heapq
import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from agent import statedb

log = logging.getLogger("opsagent.jobs")

WORKERS = 2


@dataclass(frozen=True)
class Outcome:
    ok: bool
    message: str
    details: dict[str, Any]


@dataclass
class Job:
    key: str                      # "backup:db-daily", "db:app-db"
    schedule: str
    run: Callable[[], Outcome]    # blocking; raises nothing it can report as an Outcome
    spec: Any = None              # what the job was made from (a changed spec is a new job)


class Scheduler:
    def __init__(self, state_dir: str, alert: Callable[..., None],
                 wake: Callable[[], None]) -> None:
        self.state_dir = state_dir
        self._alert, self._wake = alert, wake
        self.jobs: dict[str, Job] = {}
        self.queue: list[tuple[float, str]] = []  # (epoch due, key), a heap
        self.running: set[str] = set()
        self.finished: list[tuple[Job, float, Outcome, float]] = []
        self.last: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()
        self.pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="opsagent-job")

    def configure(self, jobs: list[Job], now: float | None = None) -> None:
        """The jobs of a new revision; unchanged ones keep their schedule."""
        now = time.time() if now is None else now
        self.jobs = {j.key: j for j in jobs}
        self.queue = []
        for job in jobs:
            heapq.heappush(self.queue, (self._first_due(job, now), job.key))

    def _first_due(self, job: Job, now: float) -> float:
        from croniter import croniter

        state = self._load(job.key)
        if state is None or state.get("schedule") != job.schedule:
            return float(croniter(job.schedule, now).get_next(float))
        missed = float(croniter(job.schedule, state["due"]).get_next(float))
        return now if missed <= now else missed  # caught up once, at start

    def next_due(self) -> float | None:
        """Epoch seconds something is due (a job, or a finished one to report)."""
        if self.finished:
            return time.time()
        return self.queue[0][0] if self.queue else None

    def run_due(self, now: float | None = None) -> None:
        from croniter import croniter

        with self.lock:
            done, self.finished = self.finished, []
        for finished, due, outcome, took in done:
            self.running.discard(finished.key)
            self._report(finished, due, outcome, took)
        now = time.time() if now is None else now
        while self.queue and self.queue[0][0] <= now:
            due, key = heapq.heappop(self.queue)
            if key not in self.jobs:
                continue
            job = self.jobs[key]
            heapq.heappush(self.queue, (float(croniter(job.schedule, max(due, now))
                                              .get_next(float)), key))
            if key in self.running:
                log.warning("%s: still running from the previous slot; this one is skipped",
                            key, extra={"job": key})
                continue
            self.running.add(key)
            self._save(key, {"due": due, "schedule": job.schedule, "started": now})
            self.pool.submit(self._run, job, due)

    def run_now(self, key: str) -> bool:
        """Start a job at once (not waiting for its slot); False when unknown or running."""
        job = self.jobs.get(key)
        if job is None or key in self.running:
            return False
        self.running.add(key)
        self.pool.submit(self._run, job, time.time())
        return True

    def _run(self, job: Job, due: float) -> None:
        started = time.monotonic()
        try:
            outcome = job.run()
        except Exception as e:  # a bug of ours: reported like any failure
            log.exception("%s crashed", job.key)
            outcome = Outcome(False, f"internal error: {e}", {})
        with self.lock:
            self.finished.append((job, due, outcome, time.monotonic() - started))
        self._wake()

    def _report(self, job: Job, due: float, outcome: Outcome, took: float) -> None:
        self.last[job.key] = {"ok": outcome.ok, "message": outcome.message, "at": time.time(),
                              "duration_s": round(took, 3)}
        level = logging.INFO if outcome.ok else logging.ERROR
        log.log(level, "%s: %s (%.1f s)", job.key, outcome.message, took,
                extra={"job": job.key, "ok": outcome.ok})
        self._alert(job.key, "info" if outcome.ok else "critical", outcome.message,
                    state="resolved" if outcome.ok else "firing")

    def status(self) -> dict[str, Any]:
        due = {k: t for t, k in self.queue}
        return {k: {"schedule": j.schedule, "next": due.get(k), "running": k in self.running,
                    "last": self.last.get(k)} for k, j in self.jobs.items()}

    def stop(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    def _load(self, key: str) -> dict[str, Any] | None:
        with statedb.connect(self.state_dir) as db:
            assert db is not None
            row = db.execute("SELECT doc FROM job_runs WHERE job = ?", (key,)).fetchone()
        return dict(json.loads(row[0])) if row else None

    def _save(self, key: str, doc: dict[str, Any]) -> None:
        with statedb.connect(self.state_dir) as db:
            assert db is not None
            db.execute("INSERT INTO job_runs (job, doc) VALUES (?, ?) ON CONFLICT (job) DO "
                       "UPDATE SET doc = excluded.doc", (key, json.dumps(doc)))
