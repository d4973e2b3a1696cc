"""`opsagent backup run|list|verify|restore` end to end: exit codes, --json, confirmation."""

from __future__ import annotations

import json
import os
import pathlib
import pty
import select
import subprocess
import sys
import time

import pytest

from tests.backups.specs import write_playbook

ROOT = pathlib.Path(__file__).resolve().parents[2]


def opsagent(*args, stdin=subprocess.DEVNULL):
    return subprocess.run([sys.executable, "-m", "agent.cli", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, stdin=stdin,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))


@pytest.fixture
def book(tmp_path):
    data = tmp_path / "data.txt"
    data.write_text("".join(f"line {i}\n" for i in range(20000)))
    cat = [sys.executable, "-c", f"import sys; sys.stdout.write(open({str(data)!r}).read())"]
    return write_playbook(
        tmp_path / "backups.yaml",
        {"name": "notes", "schedule": "@daily", "source": {"command": cat},
         "destination": str(tmp_path / "dest"), "verify": {}},
        {"name": "broken", "schedule": "@daily",
         "source": {"command": [sys.executable, "-c", "import sys; sys.exit('no disk')"]},
         "destination": str(tmp_path / "dest")},
        {"name": "slow", "schedule": "@daily",
         "source": {"command": [sys.executable, "-c", "import time; time.sleep(2)"]},
         "destination": str(tmp_path / "dest")})


def test_run_list_verify_and_their_exit_codes(book, tmp_path):
    r = opsagent("backup", "run", "notes", "-p", book, "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["ok"] and doc["verified"] is True and doc["bytes_raw"] == (tmp_path / "data.txt").stat().st_size
    run_id = doc["run_id"]

    r = opsagent("backup", "list", "-p", book, "--json")
    assert r.returncode == 0
    listing = {b["backup"]: b for b in json.loads(r.stdout)}
    assert [x["run_id"] for x in listing["notes"]["runs"]] == [run_id]
    assert listing["broken"]["runs"] == [] and listing["broken"]["newest_age_s"] is None
    assert listing["notes"]["runs"][0]["verified"] is True
    r = opsagent("backup", "list", "notes", "-p", book)
    assert r.returncode == 0 and run_id in r.stdout and "verified" in r.stdout

    r = opsagent("backup", "verify", "notes", "-p", book)
    assert r.returncode == 0 and "verified" in r.stdout
    stored = tmp_path / "dest" / "notes" / run_id / "stdout.zst"
    data = bytearray(stored.read_bytes())
    data[100] ^= 0xFF
    stored.write_bytes(bytes(data))
    r = opsagent("backup", "verify", "notes", "-p", book, "--json")
    assert r.returncode == 4 and str(stored) in r.stderr
    assert json.loads(r.stdout)["ok"] is False

    r = opsagent("backup", "run", "broken", "-p", book)
    assert r.returncode == 4 and "no disk" in r.stderr
    assert opsagent("backup", "run", "nope", "-p", book).returncode == 2
    assert "no backup named 'nope'" in opsagent("backup", "list", "nope", "-p", book).stderr
    assert opsagent("backup", "verify", "broken", "-p", book).returncode == 4


def test_restore_refuses_without_a_terminal_or_yes_and_over_existing_files(book, tmp_path):
    assert opsagent("backup", "run", "notes", "-p", book).returncode == 0
    target = tmp_path / "restored.txt"

    r = opsagent("backup", "restore", "notes", "-p", book, "--to", target)
    assert r.returncode == 2 and "not a terminal" in r.stderr and not target.exists()

    r = opsagent("backup", "restore", "notes", "-p", book, "--to", target, "--yes", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["applied"] is True
    assert target.read_text() == (tmp_path / "data.txt").read_text()

    target.write_text("changed")
    r = opsagent("backup", "restore", "notes", "-p", book, "--to", target, "--yes")
    assert r.returncode == 2 and "--force" in r.stderr and target.read_text() == "changed"
    r = opsagent("backup", "restore", "notes", "-p", book, "--to", target, "--yes", "--force")
    assert r.returncode == 0 and target.read_text() == (tmp_path / "data.txt").read_text()

    for bad in (["--at", "yesterday-ish"], ["--run", "20000101T000000Z-0000"],
                ["--at", "2000-01-01T00:00"], ["--at", "1h"]):  # nothing an hour ago
        r = opsagent("backup", "restore", "notes", "-p", book, "--to", target, "--yes", *bad)
        assert r.returncode == 2, (bad, r.stderr)
    r = opsagent("backup", "restore", "notes", "-p", book, "--to", tmp_path / "x", "--yes",
                 "--at", "2099-01-01T00:00:00+00:00")
    assert r.returncode == 0, r.stderr


def run_on_terminal(args, answer):
    """The CLI on a pseudo-terminal; type ``answer`` at its question; (exit code, output)."""
    main, sub = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "agent.cli", *map(str, args)], cwd=ROOT,
                            stdin=sub, stdout=sub, stderr=sub,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    os.close(sub)
    out = b""
    deadline = time.monotonic() + 60
    while b"Type yes" not in out and time.monotonic() < deadline:
        if select.select([main], [], [], 0.5)[0]:
            out += os.read(main, 4096)
    os.write(main, answer.encode() + b"\n")
    while proc.poll() is None or select.select([main], [], [], 0.1)[0]:
        try:
            if select.select([main], [], [], 0.5)[0]:
                out += os.read(main, 4096)
        except OSError:
            break
    proc.wait(30)
    os.close(main)
    return proc.returncode, out.decode(errors="replace")


def test_restore_on_a_terminal_asks_first(book, tmp_path):
    assert opsagent("backup", "run", "notes", "-p", book).returncode == 0
    target = tmp_path / "t.txt"
    code, out = run_on_terminal(["backup", "restore", "notes", "-p", book, "--to", target],
                                "no")
    assert code == 2 and "write stdout" in out and "nothing was restored" in out
    assert not target.exists()
    code, out = run_on_terminal(["backup", "restore", "notes", "-p", book, "--to", target],
                                "yes")
    assert code == 0 and "restored" in out and target.exists()


def test_two_concurrent_runs_of_one_backup_one_is_refused(book):
    cmd = [sys.executable, "-m", "agent.cli", "backup", "run", "slow", "-p", str(book)]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    first = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    lock = pathlib.Path(book).parent / "dest" / "slow"
    deadline = time.monotonic() + 30
    while not list(lock.glob(".tmp-*")) and time.monotonic() < deadline:
        time.sleep(0.02)
    second = opsagent("backup", "run", "slow", "-p", book)
    assert second.returncode == 4 and "already running" in second.stderr
    out, err = first.communicate(timeout=60)
    assert first.returncode == 0, err
    r = opsagent("backup", "list", "slow", "-p", book, "--json")
    assert len(json.loads(r.stdout)[0]["runs"]) == 1
