"""The store: atomic runs, the manifest, listing, the per-backup lock, verify catching a
flipped byte, picking a run by time, and failing sources leaving nothing behind."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import sys
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

from agent import __version__
from agent.backups import BackupBusy
from agent.backups.restore import pick_run, restore
from agent.backups.run import list_backups, newest_age, run_backup
from agent.backups.store import RUN_ID, hold_lock
from agent.backups.verify import verify_run
from agent.errors import UsageError
from tests.backups.specs import backup_spec

PAYLOAD = b"".join(hashlib.sha256(str(i).encode()).hexdigest().encode() + b"\n"
                   for i in range(40_000))


def echo_source(data_file):
    return {"command": [sys.executable, "-c", "import sys, shutil; shutil.copyfileobj("
                        f"open({str(data_file)!r}, 'rb'), sys.stdout.buffer)"]}


@pytest.fixture
def spec(tmp_path):
    src = tmp_path / "payload"
    src.write_bytes(PAYLOAD)
    return backup_spec(tmp_path / "dest", echo_source(src), name="app-data")


def test_a_run_is_one_directory_with_compressed_artefacts_and_a_manifest(spec, tmp_path):
    when = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)
    res = run_backup(spec, now=when)
    assert res.ok, res.error
    assert RUN_ID.match(res.run_id) and res.run_id.startswith("20261123T020000Z-")
    assert sorted(os.listdir(res.path)) == ["manifest.json", "stdout.zst"]
    doc = json.loads((pathlib.Path(res.path) / "manifest.json").read_text())
    art = doc["artefacts"][0]
    stored = (pathlib.Path(res.path) / "stdout.zst").read_bytes()
    assert art["sha256"] == hashlib.sha256(stored).hexdigest()
    assert art["sha256_raw"] == hashlib.sha256(PAYLOAD).hexdigest()
    assert art["bytes_raw"] == len(PAYLOAD) and art["bytes_stored"] == len(stored)
    assert len(stored) < 0.6 * len(PAYLOAD)  # hex digits: 4 bits of 8 carry information
    assert (art["compression"], art["encryption"], art["kind"]) == ("zstd-3", None, "command")
    assert doc["backup"] == "app-data" and doc["source"] == "command"
    assert doc["started"] == "2026-11-23T02:00:00.000Z" and doc["duration_s"] >= 0
    assert doc["opsagent_version"] == __version__ and doc["host"]
    assert {"python", "zstd", "command"} <= set(doc["tools"])
    assert oct(os.stat(res.path).st_mode & 0o777) == "0o700"
    assert oct(os.stat(os.path.join(res.path, "stdout.zst")).st_mode & 0o777) == "0o600"
    restore(spec, to=str(tmp_path / "out"), yes=True)
    assert (tmp_path / "out").read_bytes() == PAYLOAD


def test_a_flipped_byte_is_caught_by_verify_and_named(spec):
    res = run_backup(spec)
    assert verify_run(spec).ok
    path = os.path.join(res.path, "stdout.zst")
    data = bytearray(pathlib.Path(path).read_bytes())
    data[len(data) // 2] ^= 0x01
    pathlib.Path(path).write_bytes(bytes(data))
    out = verify_run(spec)
    assert not out.ok
    assert path in out.error and "sha256" in out.error
    assert list_backups(spec)[-1].verified is False
    with pytest.raises(Exception, match="sha256"):
        restore(spec, to=path + ".out", yes=True)


def test_half_written_runs_are_never_listed_and_are_removed_by_the_next_run(spec):
    bdir = os.path.join(spec.destination, spec.name)
    os.makedirs(os.path.join(bdir, ".tmp-20261122T020000Z-dead"))
    pathlib.Path(bdir, ".tmp-20261122T020000Z-dead", "stdout.zst").write_bytes(b"x")
    os.makedirs(os.path.join(bdir, "20261122T030000Z-beef"))  # no manifest: not a backup
    assert list_backups(spec) == []
    assert newest_age(spec) is None
    res = run_backup(spec)
    assert [r.run_id for r in list_backups(spec)] == [res.run_id]
    assert not [n for n in os.listdir(bdir) if n.startswith(".tmp-")]


def test_a_second_run_of_one_backup_is_refused_while_the_first_holds_the_lock(spec):
    first = run_backup(spec)
    with hold_lock(spec):
        res = run_backup(spec)
        assert res.busy and not res.ok and res.run_id is None
        assert "already running" in res.error and f"pid {os.getpid()}" in res.error
        with pytest.raises(BackupBusy):
            verify_run(spec)
    assert run_backup(spec).ok  # the lock is free again
    assert len(list_backups(spec)) == 2 and list_backups(spec)[0].run_id == first.run_id


def test_two_concurrent_runs_one_is_refused(tmp_path):
    slow = backup_spec(tmp_path / "dest", {"command": [
        sys.executable, "-c", "import time; time.sleep(1.0); print('done')"]}, name="slow")
    results = []
    threads = [threading.Thread(target=lambda: results.append(run_backup(slow)))
               for _ in range(2)]
    for t in threads:
        t.start()
        time.sleep(0.2)
    for t in threads:
        t.join()
    assert sorted(r.busy for r in results) == [False, True]
    assert sum(r.ok for r in results) == 1
    assert len(list_backups(slow)) == 1


def test_failing_and_late_sources_leave_nothing_behind(tmp_path):
    bad = backup_spec(tmp_path / "dest", {"command": [
        sys.executable, "-c", "import sys; print('partial'); sys.exit('disk on fire')"]})
    res = run_backup(bad)
    assert not res.ok and "exited 1" in res.error and "disk on fire" in res.error
    late = backup_spec(tmp_path / "dest", {"command": [
        sys.executable, "-c", "import time; print('x', flush=True); time.sleep(30)"]},
        timeout="1s")
    t0 = time.monotonic()
    res = run_backup(late)
    assert time.monotonic() - t0 < 10
    assert not res.ok and "timeout" in res.error
    missing = backup_spec(tmp_path / "dest", {"command": ["/nonexistent/tool"]})
    res = run_backup(missing)
    assert not res.ok and "cannot start" in res.error
    assert list_backups(bad) == []
    assert os.listdir(tmp_path / "dest" / "b") == [".lock"]


def test_runs_are_listed_oldest_first_and_picked_by_time(spec):
    t0 = datetime(2026, 11, 20, 2, 0, tzinfo=UTC)
    ids = [run_backup(spec, now=t0 + timedelta(days=d)).run_id for d in range(3)]
    runs = list_backups(spec)
    assert [r.run_id for r in runs] == ids
    assert pick_run(spec, None, None).run_id == ids[2]
    assert pick_run(spec, None, t0 + timedelta(days=1, hours=5)).run_id == ids[1]
    assert pick_run(spec, ids[0], None).run_id == ids[0]
    with pytest.raises(UsageError, match="no run at or before"):
        pick_run(spec, None, t0 - timedelta(hours=1))
    with pytest.raises(UsageError, match="no run nope"):
        pick_run(spec, "nope", None)
    age = newest_age(spec, now=t0 + timedelta(days=3))
    assert age is not None and 86_000 < age <= 86_400
