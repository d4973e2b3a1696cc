"""backup step: a playbook's files backup run now, as the scheduled job runs it (stored,
verified, pruned by its retention), proven by restoring it; check mode, clear failures."""

from __future__ import annotations

import os
import time

import yaml

from agent.backups.restore import restore
from agent.backups.run import find_spec, list_backups
from agent.backups.verify import verify_run
from agent.fleet.models import BackupStep
from agent.fleet.steps import backup
from agent.fleet.steps.base import StepContext
from agent.playbook import load_playbook


def setup(tmp_path, **extra):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("alpha\n")
    (src / "sub" / "b.bin").write_bytes(os.urandom(200_000))
    dest = tmp_path / "dest"
    pb = tmp_path / "pb.yaml"
    pb.write_text(yaml.safe_dump({"name": "files", "backups": [
        {"name": "files-now", "schedule": "0 2 * * *", "source": {"paths": [str(src)]},
         "destination": str(dest), "verify": {}, "retention": {"keep_last": 2}, **extra},
        {"name": "other", "schedule": "0 3 * * *", "source": {"paths": [str(src)]},
         "destination": str(dest)}]}))
    return src, dest, pb


def ctx_of(tmp_path, check=False):
    return StepContext(host="test", state_dir=str(tmp_path / "state"), check=check,
                       deadline=time.monotonic() + 120)


def test_check_run_restore_and_retention(tmp_path):
    src, dest, pb = setup(tmp_path)
    r = backup.run(BackupStep(name="files-now", playbook=str(pb)), ctx_of(tmp_path, check=True))
    assert (r.status, r.undo) == ("would-change", None)
    assert r.message == (f"would back up files-now (paths: {src}) to {dest}, then verify it "
                         "and apply its retention")
    assert not dest.exists()

    r = backup.run(BackupStep(name="files-now", playbook=str(pb)), ctx_of(tmp_path))
    assert r.status == "changed", r.message
    assert r.undo is None
    spec = find_spec(list(load_playbook(str(pb)).model.backups), "files-now")
    runs = list_backups(spec)
    assert [x.run_id for x in runs] == [r.evidence["run_id"]]
    assert r.evidence["archive"] == runs[0].path and os.path.isdir(r.evidence["archive"])
    assert r.evidence["bytes_stored"] == runs[0].bytes_stored > 0
    assert r.message.startswith(f"backed up files-now: run {runs[0].run_id} in {runs[0].path}, ")
    assert r.message.endswith(", verified")
    assert runs[0].verified is True and verify_run(spec).ok

    out = tmp_path / "restored"
    restore(spec, to=str(out), yes=True)
    restored = out / str(src).lstrip("/")
    assert (restored / "a.txt").read_text() == "alpha\n"
    assert (restored / "sub" / "b.bin").read_bytes() == (src / "sub" / "b.bin").read_bytes()

    for _ in range(2):
        r = backup.run(BackupStep(name="files-now", playbook=str(pb)), ctx_of(tmp_path))
        assert r.status == "changed", r.message
    assert r.message.endswith("; pruned 1 older runs")
    assert len(list_backups(spec)) == 2


def test_unknown_backup_or_playbook_and_a_failing_backup(tmp_path):
    src, dest, pb = setup(tmp_path)
    r = backup.run(BackupStep(name="nope", playbook=str(pb)), ctx_of(tmp_path))
    assert (r.status, r.message) == (
        "failed", f"no backup named nope in {pb} (there are: files-now, other)")
    r = backup.run(BackupStep(name="nope", playbook=str(tmp_path / "missing.yaml")),
                   ctx_of(tmp_path))
    assert r.status == "failed" and r.message.startswith("cannot load the playbook")
    assert "cannot read" in r.message

    src, dest, pb = setup(tmp_path / "t2", source={"paths": [str(tmp_path / "gone")]})
    r = backup.run(BackupStep(name="files-now", playbook=str(pb)), ctx_of(tmp_path))
    assert r.status == "failed", r.message
    assert r.message.startswith("backup files-now failed: ")
    assert str(tmp_path / "gone") in r.message
    assert r.evidence is None  # nothing was stored
    assert list_backups(find_spec(list(load_playbook(str(pb)).model.backups), "files-now")) == []


def test_the_run_is_bounded_by_the_step_time(tmp_path):
    src, dest, pb = setup(tmp_path, source={"command": ["sleep", "30"]})
    ctx = StepContext(host="test", state_dir=str(tmp_path / "state"),
                      deadline=time.monotonic() + 1.5)
    t0 = time.monotonic()
    r = backup.run(BackupStep(name="files-now", playbook=str(pb)), ctx)
    assert r.status == "failed", r.message
    assert time.monotonic() - t0 < 10
