"""Retention applied to the local store (agent.backups.retention decides, this deletes).

``prune_local(spec, now, check)`` lists the complete runs, asks ``retention.plan`` which to
keep, and — unless ``check`` — removes the others under the backup's lock (a run being
written is never listed, so never pruned). A run is removed by renaming it to a ``.tmp-``
name first, so a crash halfway leaves nothing that looks like a complete backup.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime

from agent.backups.retention import Backup, Decision, plan
from agent.backups.store import TMP_PREFIX, hold_lock, list_runs
from agent.playbook.models.backups import BackupSpec


@dataclass(frozen=True)
class PruneResult:
    decisions: list[Decision]
    removed: list[str]          # run ids deleted (empty with check)

    @property
    def to_remove(self) -> list[str]:
        return [d.backup.id for d in self.decisions if not d.keep]


def prune_local(spec: BackupSpec, *, now: datetime | None = None,
                check: bool = False) -> PruneResult:
    now = now or datetime.now(UTC)
    if spec.retention is None:
        return PruneResult([Decision(Backup(r.run_id, r.started), True, ("no retention",), ())
                            for r in reversed(list_runs(spec))], [])
    with hold_lock(spec):
        runs = {r.run_id: r for r in list_runs(spec)}
        decisions = plan([Backup(r.run_id, r.started) for r in runs.values()], spec.retention,
                         now)
        removed: list[str] = []
        if not check:
            for d in decisions:
                if d.keep:
                    continue
                path = runs[d.backup.id].path
                doomed = os.path.join(os.path.dirname(path), f"{TMP_PREFIX}pruned-{d.backup.id}")
                os.rename(path, doomed)
                shutil.rmtree(doomed, ignore_errors=True)
                removed.append(d.backup.id)
    return PruneResult(decisions, removed)
