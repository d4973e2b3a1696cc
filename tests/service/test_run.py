"""`opsagent run` as a real process: events, budgets, reloads, signals, status and reset."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import uuid

import psutil
import pytest

from tests.service.agentproc import REPO, AgentProc, alive, read_pid, wait_for


@pytest.fixture
def agents():
    started: list[AgentProc] = []
    yield started
    for a in started:
        if a.proc is not None and a.proc.poll() is None:
            a.proc.kill()
            a.proc.wait()


def playbook(root, text: str, name: str = "p.yaml") -> None:
    (root / "pb").mkdir(exist_ok=True)
    (root / "pb" / name).write_text(textwrap.dedent(text))


def sleeper(root, mark, budget="{max: 5, within: 1m, backoff: 0s}", extra=""):
    return textwrap.dedent(f"""\
        name: svc
        processes:
          - name: sleeper
            match: {{pidfile: {root}/sleeper.pid}}
            start: [{sys.executable}, -c, "import time; time.sleep(10**6)", {mark}]
            pidfile: {root}/sleeper.pid
            restart: {budget}
        """) + textwrap.dedent(extra)


def test_kill_9_of_a_supervised_process_is_answered_by_a_restart(tmp_path, mark, agents):
    playbook(tmp_path, sleeper(tmp_path, mark))
    agent = AgentProc(tmp_path)
    agents.append(agent)
    agent.start()
    pidfile = tmp_path / "sleeper.pid"
    first = wait_for(lambda: read_pid(pidfile), what="the first start")
    assert alive(first)
    for _ in range(3):
        pid = read_pid(pidfile)  # the agent has verified the start (it waits a moment)
        wait_for(lambda p=pid: f"pid {p}" in agent.resource("processes:sleeper")["message"])
        old = read_pid(pidfile)
        os.kill(old, signal.SIGKILL)
        t0 = time.monotonic()
        new = wait_for(lambda o=old: (p := read_pid(pidfile)) != o and alive(p) and p, 5,
                       "a replacement process")
        assert time.monotonic() - t0 < 5  # an event, not the 60 s full reconcile
        assert mark in " ".join(psutil.Process(new).cmdline())
    assert f"pid {first} exited" in agent.log_text()
    st = wait_for(lambda: (r := agent.resource("processes:sleeper"))["status"] == "changed"
                  and f"now running, pid {new}" in r["message"] and r)
    assert st["message"].startswith("changed state")
    assert agent.stop() == 0


def test_a_flapping_process_exhausts_its_budget_is_left_alone_and_raises_an_alert(
        tmp_path, mark, agents):
    starts = tmp_path / "starts"
    code = f"open({str(starts)!r}, 'a').write('x'); import time; time.sleep(0.5)"
    playbook(tmp_path, f"""\
        name: svc
        processes:
          - name: flappy
            match: {{cmdline: {mark}}}
            start: [{sys.executable}, -c, "{code}", {mark}]
            start_timeout: 2s
            restart: {{max: 3, within: 10m, backoff: 0s}}
        """)
    agent = AgentProc(tmp_path)
    agents.append(agent)
    agent.start()
    wait_for(lambda: agent.resource("processes:flappy").get("status") == "failed", 15,
             "the budget to run out")
    time.sleep(1.5)  # would be two more starts if the agent kept acting
    assert starts.read_text() == "xxx"
    st = agent.resource("processes:flappy")
    assert st["message"].startswith("restart budget exhausted (3 in 10m): not starting flappy")
    db = sqlite3.connect(tmp_path / "state" / "state.db")
    alerts = db.execute("SELECT key, severity, message FROM alerts").fetchall()
    assert [(k, s) for k, s, _ in alerts] == [("processes:flappy", "critical")]  # raised once
    assert "opsagent reset processes:flappy" in alerts[0][2]
    assert any(e.get("alert") == "budget_exhausted" for e in agent.logs())

    out = subprocess.run([sys.executable, "-m", "agent.cli", "status", "--config",
                          str(agent.config)], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "processes:flappy" in out.stdout and "budget exhausted" in out.stdout
    assert "recent alerts:" in out.stdout

    # an operator's reset gives the budget back and the agent acts at once
    out = subprocess.run([sys.executable, "-m", "agent.cli", "reset", "processes:flappy",
                          "--config", str(agent.config)], cwd=REPO, capture_output=True,
                         text=True)
    assert out.returncode == 0 and "asked the agent" in out.stdout, out.stderr
    wait_for(lambda: len(starts.read_text()) >= 4, 5, "a start after the reset")
    assert agent.stop() == 0


def test_sighup_reloads_and_a_bad_edit_is_refused_while_the_last_good_is_enforced(
        tmp_path, mark, agents):
    playbook(tmp_path, sleeper(tmp_path, mark))
    agent = AgentProc(tmp_path)
    agents.append(agent)
    agent.start()
    rev1 = agent.status()["revision"]
    conf = tmp_path / "extra.conf"
    playbook(tmp_path, sleeper(tmp_path, mark, extra=f"""\
        files:
          - {{path: {conf}, content: "v2\\n"}}
        """))
    agent.signal(signal.SIGHUP)
    wait_for(lambda: conf.exists() and conf.read_text() == "v2\n", 10, "the reloaded playbook")
    rev2 = agent.status()["revision"]
    assert rev2 != rev1

    playbook(tmp_path, sleeper(tmp_path, mark).replace("restart:", "restrat:"))
    agent.signal(signal.SIGHUP)
    wait_for(lambda: agent.status().get("rejected"), 10, "the refusal")
    rejected = agent.status()["rejected"]
    assert rejected["revision"].startswith("dir:sha256:")
    assert "p.yaml:" in rejected["message"] and "restrat" in rejected["message"]
    assert agent.status()["revision"] == rev2  # still enforcing the last good revision
    conf.write_text("edited\n")
    wait_for(lambda: conf.read_text() == "v2\n", 5, "the old revision to repair the file")
    old = read_pid(tmp_path / "sleeper.pid")
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: alive(read_pid(tmp_path / "sleeper.pid"))
             and read_pid(tmp_path / "sleeper.pid") != old, 5, "a restart under the old revision")
    assert "refused; still enforcing" in agent.log_text()
    assert agent.stop() == 0


def test_sigterm_is_graceful_and_one_agent_runs_per_state_dir(tmp_path, mark, agents):
    playbook(tmp_path, sleeper(tmp_path, mark))
    agent = AgentProc(tmp_path)
    agents.append(agent)
    agent.start()
    second = subprocess.run([sys.executable, "-m", "agent.cli", "run", "--config",
                             str(agent.config)], cwd=REPO, capture_output=True, text=True,
                            timeout=30)
    assert second.returncode == 2
    assert f"another agent (pid {agent.proc.pid}) is running" in second.stderr
    pid = read_pid(tmp_path / "sleeper.pid")
    assert agent.stop() == 0
    assert alive(pid)  # supervised programs outlive the agent (it is not their init)
    assert "agent stopped" in agent.log_text()
    out = subprocess.run([sys.executable, "-m", "agent.cli", "status", "--json", "--config",
                          str(agent.config)], cwd=REPO, capture_output=True, text=True)
    doc = json.loads(out.stdout)
    assert out.returncode == 4 and doc["running"] is False
    assert doc["status"]["resources"]["processes:sleeper"]["status"] in ("ok", "changed")
    # a new agent takes the state directory over and adopts the running process
    again = AgentProc(tmp_path)
    agents.append(again)
    again.start()
    assert read_pid(tmp_path / "sleeper.pid") == pid
    assert again.resource("processes:sleeper")["status"] == "ok"
    assert again.stop() == 0


def test_a_changed_managed_file_is_repaired_by_its_inotify_event(tmp_path, agents):
    target = tmp_path / "etc" / "app.conf"
    playbook(tmp_path, f"""\
        name: files
        files:
          - {{path: {target.parent}, state: directory}}
          - {{path: {target}, content: "port = 80\\n", mode: "0600"}}
        """)
    agent = AgentProc(tmp_path)
    agents.append(agent)
    agent.start()
    assert target.read_text() == "port = 80\n"
    target.write_text("port = 8080\n")
    t0 = time.monotonic()
    wait_for(lambda: target.read_text() == "port = 80\n", 5, "the repair")
    assert time.monotonic() - t0 < 5  # an event, not the 60 s full reconcile
    os.chmod(target, 0o644)
    wait_for(lambda: os.stat(target).st_mode & 0o777 == 0o600, 5, "the mode repair")
    target.unlink()
    wait_for(lambda: target.exists(), 5, "the file to come back")
    assert agent.stop() == 0


def test_a_bad_agent_config_is_refused_with_a_located_error(tmp_path):
    cfg = tmp_path / "agent.yaml"
    cfg.write_text("playbooks: [pb]\nreconcile_interval: 60\nstate_dir: s\n")
    out = subprocess.run([sys.executable, "-m", "agent.cli", "run", "--config", str(cfg)],
                         cwd=REPO, capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert f"{cfg}:2:21: reconcile_interval: " in out.stderr
    assert not (tmp_path / "s").exists()


def test_a_killed_container_is_started_again_from_its_docker_event(tmp_path, agents,
                                                                   docker_client, busybox_image):
    name = f"opsagent-svc-{uuid.uuid4().hex[:8]}"
    playbook(tmp_path, f"""\
        name: ct
        containers:
          - name: {name}
            image: '{busybox_image}'
            command: [sleep, '100000']
            restart: {{max: 5, within: 1m, backoff: 0s}}
        """)
    agent = AgentProc(tmp_path)
    agents.append(agent)
    try:
        agent.start()
        c = docker_client.containers.get(name)
        assert c.status == "running"
        started = c.attrs["State"]["StartedAt"]
        time.sleep(0.6)  # past the first look after subscribing
        c.kill()
        t0 = time.monotonic()
        wait_for(lambda: (x := docker_client.containers.get(name)).status == "running"
                 and x.attrs["State"]["StartedAt"] != started, 15, "the container to run again")
        assert time.monotonic() - t0 < 10  # the event, not the 60 s full reconcile
        assert f"container {name} changed" in agent.log_text()
        assert agent.stop() == 0
    finally:
        with contextlib.suppress(Exception):
            docker_client.containers.get(name).remove(force=True)


def test_above_its_memory_limit_the_agent_restarts_itself_in_place(tmp_path, agents):
    small = f"""\
        name: mem
        files:
          - {{path: {tmp_path}/big.txt, content: "small\\n"}}
        """
    playbook(tmp_path, small)
    agent = AgentProc(tmp_path, config="""\
        playbooks: [pb]
        state_dir: state
        log_format: json
        memory_limit: 80MiB
        """)
    agents.append(agent)
    agent.start()
    started = agent.status()["started_at"]
    # A new revision holding 60 MB of file content takes the agent above its limit.
    playbook(tmp_path, small.replace('"small\\n"', "\"{{ 'x' * 60000000 }}\""))
    agent.signal(signal.SIGHUP)
    wait_for(lambda: (tmp_path / "big.txt").stat().st_size == 60_000_000, 20, "the big file")
    wait_for(lambda: (agent.status() or {}).get("started_at", started) != started, 20,
             "the agent to restart itself")
    assert agent.proc.poll() is None  # the same process (exec), as systemd's MainPID stays
    assert agent.status()["pid"] == agent.proc.pid
    text = agent.log_text()
    assert "above memory_limit 80 MiB: restarting cleanly" in text
    # the fresh agent needs that much to hold the revision: it says so instead of looping
    wait_for(lambda: "below the agent's own start-up size" in agent.log_text(), 20,
             "the warning of the restarted agent")
    assert agent.log_text().count("restarting cleanly") == 1
    assert agent.stop() == 0


def test_the_shipped_agent_config_is_valid():
    from agent.service.config import load_config

    cfg = load_config(str(REPO / "packaging" / "agent.yaml"))
    assert cfg.playbooks == ["/etc/opsagent/playbooks"]
    assert cfg.reconcile_interval == 60.0 and cfg.memory_limit == 256 * 2**20
