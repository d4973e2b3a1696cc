"""Backups in the agent service: a slot missed while the agent was down is caught up once at
start, the run is stored and pruned by its retention, a backup with no fresh run raises its
max_age alert, and the job's outcome is in status.json."""

from __future__ import annotations

import json
import sqlite3
import textwrap
import time
from pathlib import Path

from tests.service.agentproc import AgentProc, wait_for


def runs(dest: Path, name: str) -> list[str]:
    d = dest / name
    return sorted(p.name for p in d.iterdir() if p.is_dir() and not p.name.startswith(".")) \
        if d.exists() else []


def test_missed_slot_caught_up_once_pruned_and_stale_alerted(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text("hello\n")
    dest = tmp_path / "backups"
    (tmp_path / "pb").mkdir()
    (tmp_path / "pb" / "b.yaml").write_text(textwrap.dedent(f"""\
        name: b
        backups:
          - name: files
            schedule: "0 3 * * *"
            source: {{paths: ["{data}"]}}
            destination: {dest}
            retention: {{keep_last: 1}}
            max_age: 26h
          - name: never
            schedule: "0 4 1 1 *"
            source: {{paths: ["{data}"]}}
            destination: {dest}
            max_age: 1h
        """))
    proc = AgentProc(tmp_path).start()
    proc.stop()
    assert runs(dest, "files") == []  # not due yet
    # two earlier runs exist, and the 03:00 slot was missed while the agent was down
    state = tmp_path / "state" / "state.db"
    for _ in range(2):
        from agent.backups.run import run_backup
        from agent.playbook import load_playbook

        spec = load_playbook(str(tmp_path / "pb" / "b.yaml")).model.backups[0]
        assert run_backup(spec).ok
        time.sleep(1.1)
    assert len(runs(dest, "files")) == 2
    with sqlite3.connect(state) as db:
        db.execute("INSERT OR REPLACE INTO job_runs (job, doc) VALUES ('backup:files', ?)",
                   (json.dumps({"due": time.time() - 3 * 86400, "schedule": "0 3 * * *"}),))
    restarted = time.time()
    proc = AgentProc(tmp_path).start()
    try:
        wait_for(lambda: ((proc.status() or {}).get("jobs", {}).get("backup:files") or {})
                 .get("last"), 30, "the catch-up run")
        last = proc.status()["jobs"]["backup:files"]["last"]  # type: ignore[index]
        assert last["ok"], last
        assert len(runs(dest, "files")) == 1, "keep_last: 1 leaves one run"
        assert "pruned 2" in last["message"]
        time.sleep(2)
        assert len(runs(dest, "files")) == 1, "caught up once, not once per missed slot"
        with sqlite3.connect(state) as db:
            alerts = db.execute("SELECT key, severity, message FROM alerts WHERE at >= ?",
                                (restarted,)).fetchall()
        stale = [a for a in alerts if a[0] == "backup:never:age"]
        assert stale and stale[0][1] == "critical" and "no complete run" in stale[0][2]
        assert not [a for a in alerts if a[0] == "backup:files:age"]
    finally:
        proc.stop()
