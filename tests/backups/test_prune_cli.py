"""`opsagent backup prune NAME [--check] [--explain]`: the retention policy on real runs."""

from __future__ import annotations

import json
import sys
import time

from tests.backups.specs import write_playbook
from tests.backups.test_cli_backup import opsagent


def test_prune_check_explain_then_prune(tmp_path):
    cat = [sys.executable, "-c", "print('hello')"]
    book = write_playbook(tmp_path / "b.yaml",
                          {"name": "notes", "schedule": "@daily", "source": {"command": cat},
                           "destination": str(tmp_path / "dest"),
                           "retention": {"keep_last": 2}})
    for _ in range(4):
        assert opsagent("backup", "run", "notes", "-p", book).returncode == 0
        time.sleep(1.05)  # runs a second apart: keep_last orders them by time
    runs = sorted(p.name for p in (tmp_path / "dest" / "notes").iterdir()
                  if not p.name.startswith("."))
    assert len(runs) == 4

    check = opsagent("backup", "prune", "notes", "-p", book, "--check", "--explain")
    assert check.returncode == 0, check.stderr
    assert "would prune 2 of 4 local runs" in check.stdout
    assert check.stdout.count("keep_last #") == 2 and check.stdout.count("\n  prune ") == 2
    assert sorted(p.name for p in (tmp_path / "dest" / "notes").iterdir()
                  if not p.name.startswith(".")) == runs, "--check deleted something"

    done = opsagent("backup", "prune", "notes", "-p", book, "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert sorted(doc["removed"]) == runs[:2]
    left = sorted(p.name for p in (tmp_path / "dest" / "notes").iterdir()
                  if not p.name.startswith("."))
    assert left == runs[2:]
    listed = json.loads(opsagent("backup", "list", "notes", "-p", book, "--json").stdout)
    assert [r["run_id"] for r in listed[0]["runs"]] == runs[2:]


def test_prune_without_retention_is_refused(tmp_path):
    book = write_playbook(tmp_path / "b.yaml",
                          {"name": "notes", "schedule": "@daily",
                           "source": {"command": [sys.executable, "-c", "print(1)"]},
                           "destination": str(tmp_path / "dest")})
    r = opsagent("backup", "prune", "notes", "-p", book)
    assert r.returncode == 2 and "no retention" in r.stderr
