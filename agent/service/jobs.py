"""What the agent service schedules from the playbooks: backups and database maintenance
(agent.service.scheduling runs them), and the watch on backups older than their ``max_age``.

A backup job runs the backup (verified when ``verify:`` says so), then applies its
``retention`` to the local store, then copies the run offsite and applies the retention
there; the outcome says what happened at each step and fails when any step failed (a backup
that was stored but could not be copied offsite is a failure: the copy is part of the job).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from agent.playbook import LoadedPlaybook
from agent.service.scheduling import Job, Outcome

log = logging.getLogger("opsagent.jobs")


def jobs_of(playbooks: list[LoadedPlaybook], host: str) -> list[Job]:
    jobs: list[Job] = []
    for pb in playbooks:
        for b in pb.model.backups:
            jobs.append(Job(f"backup:{b.name}", b.schedule, _backup_job(b, host), spec=b))
        windows = list(pb.model.maintenance)
        for d in pb.model.db_maintenance:
            if d.schedule is not None:
                jobs.append(Job(f"db:{d.name}", d.schedule, _db_job(d, windows), spec=d))
    return jobs


def _backup_job(spec: Any, host: str) -> Callable[[], Outcome]:
    def run() -> Outcome:
        from agent.backups.prune import prune_local
        from agent.backups.run import run_backup

        result = run_backup(spec, host=host)
        details: dict[str, Any] = {"backup": result.as_dict()}
        if not result.ok:
            return Outcome(False, f"backup {spec.name} failed: {result.error}", details)
        steps = [f"backup {spec.name}: run {result.run_id}, {len(result.artefacts)} "
                 f"artefacts, {result.bytes_stored} bytes stored"
                 + (", verified" if result.verified else "")]
        ok = True
        if spec.retention is not None:
            try:
                pruned = prune_local(spec)
                details["pruned"] = pruned.removed
                if pruned.removed:
                    steps.append(f"pruned {len(pruned.removed)}")
            except Exception as e:  # the backup itself is safe: say so and go on
                ok = False
                steps.append(f"pruning failed: {e}")
        if spec.offsite is not None and result.path:
            ok &= _offsite(spec, result.path, steps, details)
        return Outcome(ok, "; ".join(steps), details)
    return run


def _offsite(spec: Any, run_dir: str, steps: list[str], details: dict[str, Any]) -> bool:
    from datetime import UTC, datetime
    from pathlib import Path

    from agent.backups.offsite import copy_run, prune_remote

    copied = copy_run(spec, Path(run_dir))
    details["offsite"] = [{"kind": t.target, "url": t.url, "ok": t.ok, "error": t.error}
                          for t in copied.targets]
    for t in copied.targets:
        steps.append(f"copied to {t.url}" if t.ok else f"copy to {t.url} failed: {t.error}")
    if not copied.ok:
        return False
    plans = prune_remote(spec, datetime.now(UTC))
    for p in plans:
        if p.error:
            steps.append(f"offsite pruning failed: {p.error}")
            return False
        if p.deleted:
            steps.append(f"pruned {len(p.deleted)} offsite")
    return True


def _db_job(spec: Any, windows: list[Any]) -> Callable[[], Outcome]:
    def run() -> Outcome:
        from agent.dbmaint import open_windows
        from agent.dbmaint.tasks import run_maintenance

        result = run_maintenance(spec, in_window=open_windows(windows))
        return Outcome(result.ok, f"db {spec.name}: {result.summary()}", result.as_dict())
    return run


class StaleBackups:
    """Alerts when a backup's newest run is older than its ``max_age`` (the RPO), once per
    episode, and resolves when a fresh run lands. Looked at every ``every_s``."""

    def __init__(self, alert: Callable[..., None], running: Callable[[str], bool],
                 every_s: float = 60.0) -> None:
        self._alert = alert
        self._running = running  # a backup being written (and pruned) is judged after
        self.every_s = every_s
        self.specs: list[Any] = []
        self.stale: set[str] = set()
        self.next_at = 0.0

    def configure(self, playbooks: list[LoadedPlaybook]) -> None:
        self.specs = [b for pb in playbooks for b in pb.model.backups if b.max_age]
        self.next_at = 0.0

    def check(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if now < self.next_at or not self.specs:
            return
        self.next_at = now + self.every_s
        from agent.backups.run import newest_age

        for spec in self.specs:
            if self._running(f"backup:{spec.name}"):
                self.next_at = min(self.next_at, now + 1.0)
                continue
            try:
                age = newest_age(spec)
            except OSError as e:
                log.warning("backup %s: cannot read its runs: %s", spec.name, e)
                continue
            key = f"backup:{spec.name}:age"
            if age is None or age > spec.max_age:
                if spec.name not in self.stale:
                    self.stale.add(spec.name)
                    what = "has no complete run" if age is None else \
                        f"newest run is {age / 3600:.1f} h old"
                    self._alert(key, "critical", f"backup {spec.name} {what} (max_age "
                                f"{spec.max_age / 3600:g} h)", state="firing",
                                value=age)
            elif spec.name in self.stale:
                self.stale.discard(spec.name)
                self._alert(key, "info", f"backup {spec.name} is fresh again",
                            state="resolved", value=age)
