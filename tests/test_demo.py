"""The shipped demo playbook end to end: a sandbox and a worker process, kept right."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time

import psutil
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEMO = ROOT / "playbooks" / "demo.yaml"


def opsagent(sandbox, *args):
    return subprocess.run([sys.executable, "-m", "agent.cli", *args, str(DEMO),
                           "-e", f"sandbox={sandbox}"], capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, PYTHONPATH=str(ROOT)))


def worker_pid(sandbox):
    pid = int((sandbox / "run" / "demo-worker.pid").read_text())
    assert psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    return pid


def wait_for(pred, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def sandbox(tmp_path):
    box = tmp_path / "demo"
    yield box
    opsagent(box, "apply", "-e", "worker_state=absent")
    for p in psutil.process_iter(["cmdline"]):
        if f"{box}/etc/demo.conf" in " ".join(p.info["cmdline"] or []):
            p.kill()


def test_demo_converges_repairs_and_restarts_its_worker(sandbox):
    plan = opsagent(sandbox, "plan")
    assert plan.returncode == 3, plan.stdout + plan.stderr
    assert not sandbox.exists()

    first = opsagent(sandbox, "apply")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "skipped=2" in first.stdout  # the disk check and the memory threshold
    pid = worker_pid(sandbox)
    assert wait_for(lambda: "hello from opsagent" in
                    (sandbox / "run" / "heartbeat").read_text(errors="replace")
                    if (sandbox / "run" / "heartbeat").exists() else False)
    assert oct(os.stat(sandbox / "etc" / "secret.env").st_mode & 0o777) == "0o600"

    again = opsagent(sandbox, "apply")
    assert again.returncode == 0 and "changed=0" in again.stdout
    assert worker_pid(sandbox) == pid

    os.kill(pid, signal.SIGKILL)
    os.chmod(sandbox / "etc" / "secret.env", 0o644)
    assert wait_for(lambda: not psutil.pid_exists(pid) or
                    psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    repair = opsagent(sandbox, "apply")
    assert repair.returncode == 0, repair.stdout
    assert "changed=2" in repair.stdout
    new_pid = worker_pid(sandbox)
    assert new_pid != pid
    assert oct(os.stat(sandbox / "etc" / "secret.env").st_mode & 0o777) == "0o600"

    # a new greeting changes the rendered config, whose handler restarts the worker
    greet = opsagent(sandbox, "apply", "-e", "greeting=bonjour")
    assert greet.returncode == 0, greet.stdout
    assert "restart" in greet.stdout
    assert worker_pid(sandbox) != new_pid
    assert "greeting = bonjour" in (sandbox / "etc" / "demo.conf").read_text()

    stop = opsagent(sandbox, "apply", "-e", "greeting=bonjour", "-e", "worker_state=absent")
    assert stop.returncode == 0, stop.stdout
    assert opsagent(sandbox, "plan", "-e", "greeting=bonjour",
                    "-e", "worker_state=absent").returncode == 0


def test_the_readme_first_command_runs_the_service_on_the_demo(tmp_path):
    box = tmp_path / "demo"
    try:
        p = subprocess.run(["bash", str(ROOT / "scripts" / "demo.sh")], capture_output=True,
                           text=True, timeout=300,
                           env=dict(os.environ, OPSAGENT_DEMO_DIR=str(box)))
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
        out = p.stdout
        assert "agent: running (pid " in out
        assert "processes:demo-worker: changed state; now running" in out  # after kill -9
        assert "etc/secret.env: changed mode" in out  # inotify repair
        assert "processes:demo-worker: changed restart" in out  # the handler
        assert "agent stopped" in out
        # the embedded collector got the runs, with the repairs labelled corrective
        assert "host demo-host:" in out and "corrective" in out
        assert "dashboard: http://127.0.0.1:" in out
        assert (box / "etc" / "secret.env").stat().st_mode & 0o777 == 0o600
        assert worker_pid(box)  # left running on purpose
    finally:
        opsagent(box, "apply", "-e", "worker_state=absent", "--state-dir",
                 f"{box}.agent/state")
        for proc in psutil.process_iter(["cmdline"]):
            if f"{box}/etc/demo.conf" in " ".join(proc.info["cmdline"] or []):
                proc.kill()
