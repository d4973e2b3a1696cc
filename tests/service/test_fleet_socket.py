"""The agent service answers fleet runs' requests on STATE_DIR/fleet.sock
(agent.fleet.service_socket): `opsagent fleet-exec` hands the request over when the service
listens and runs it in its own process when not, or when the request says so."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from agent.fleet.service_socket import FleetSocket, ask, socket_path
from tests.service.agentproc import REPO, AgentProc, wait_for

PLAYBOOK = """name: host
files:
  - path: {root}/managed.txt
    content: "managed\\n"
"""


@pytest.fixture
def root():
    # short: a Unix socket path is at most 107 bytes, pytest's tmp_path can be longer
    path = Path(tempfile.mkdtemp(prefix="oa-fs-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def agent(root: Path, extra: str = "") -> AgentProc:
    (root / "pb").mkdir()
    (root / "pb" / "host.yaml").write_text(PLAYBOOK.format(root=root))
    return AgentProc(root, config="playbooks: [pb]\nstate_dir: state\nlog_format: json\n"
                     + extra)


def request(root: Path, marker: str, **more: object) -> dict:
    return {"op": "remediate", "host": "h1", "incident": "inc-7", "who": "alice@laptop",
            "check": False, "on_failure": "stop", "notifiers": {},
            "steps": [{"name": "marker", "run": {"argv": ["touch", str(root / marker)]}}],
            "indices": [0], "undo_log": [], "state_dir": str(root / "state"), **more}


def fleet_exec(req: dict | bytes) -> tuple[int, dict]:
    raw = req if isinstance(req, bytes) else json.dumps(req).encode()
    p = subprocess.run([sys.executable, "-m", "agent.cli", "fleet-exec"], input=raw,
                       capture_output=True, cwd=REPO, timeout=60)
    return p.returncode, json.loads(p.stdout)


def test_the_service_runs_the_request_and_a_process_does_once_it_is_gone(root):
    a = agent(root).start()
    try:
        sock = root / "state" / "fleet.sock"
        mode = os.stat(sock).st_mode
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
        code, answer = fleet_exec(request(root, "one"))
        assert code == 0 and answer["ok"] is True
        assert answer["served_by"] == f"agent service (pid {a.proc.pid})"
        assert answer["run"]["outcomes"][0]["status"] == "changed"
        assert (root / "one").exists()
        log = a.log_text()
        assert "fleet request from pid" in log
        assert "remediate for incident inc-7 by alice@laptop answered in" in log
    finally:
        assert a.stop() == 0
    assert not sock.exists()  # removed on the way out
    code, answer = fleet_exec(request(root, "two"))
    assert code == 0 and answer["served_by"] == "process"
    assert (root / "two").exists()


def test_a_request_that_opts_out_runs_in_a_process_beside_a_listening_service(root):
    a = agent(root).start()
    try:
        code, answer = fleet_exec(request(root, "three", agent_service=False))
        assert code == 0 and answer["served_by"] == "process"
        assert (root / "three").exists()
        assert "fleet request" not in a.log_text()
    finally:
        a.stop()


def test_a_bad_request_is_refused_by_the_service_which_stays_up(root):
    a = agent(root).start()
    try:
        # parseable by the client but not a valid step list: the service refuses it
        code, answer = fleet_exec(request(root, "x", steps="not a list"))
        assert code == 2 and answer["ok"] is False
        assert answer["error"].startswith(("TypeError", "ValueError", "KeyError"))
        raw = ask(str(root / "state" / "fleet.sock"), b"{not json")
        assert raw is not None and json.loads(raw)["ok"] is False
        assert "refused" in a.log_text()
        assert a.proc.poll() is None
        code, answer = fleet_exec(request(root, "four"))
        assert code == 0 and answer["served_by"].startswith("agent service")
    finally:
        a.stop()


def test_fleet_requests_false_serves_nothing(root):
    a = agent(root, "fleet_requests: false\n").start()
    try:
        assert not (root / "state" / "fleet.sock").exists()
        code, answer = fleet_exec(request(root, "five"))
        assert code == 0 and answer["served_by"] == "process"
    finally:
        a.stop()


def test_nobody_listening_means_nothing_was_handed_over(root):
    assert ask(str(root / "absent.sock"), b"{}") is None
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(root / "stale.sock"))  # bound, never listening: a dead agent's file
    stale.close()
    assert ask(str(root / "stale.sock"), b"{}") is None


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as another user")
def test_a_peer_of_another_user_is_refused(root):
    os.chmod(root, 0o755)
    seen = []
    fs = FleetSocket(str(root), lambda raw, pid: seen.append(raw) or b'{"ok": true}', 1024)
    assert fs.start()
    try:
        os.chmod(fs.path, 0o666)  # past the file mode: SO_PEERCRED is what stops it
        code = ("import sys; from agent.fleet.service_socket import ask; "
                f"sys.stdout.write(ask({fs.path!r}, b'{{}}').decode())")
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           cwd=REPO, timeout=30, user=65534, group=65534,
                           env={**os.environ, "PYTHONPATH": str(REPO)})
        assert p.returncode == 0, p.stderr
        assert json.loads(p.stdout) == {"ok": False, "error": "only uid 0 may ask this agent"}
        assert seen == []
    finally:
        fs.stop()


def test_stopping_lets_the_request_in_hand_finish(root):
    started = threading.Event()

    def slow(raw: bytes, pid: int) -> bytes:
        started.set()
        time.sleep(1.0)
        return b'{"ok": true, "slow": true}'

    fs = FleetSocket(str(root), slow, 1024)
    assert fs.start()
    got: list[bytes | None] = []
    t = threading.Thread(target=lambda: got.append(ask(socket_path(str(root)), b"{}")))
    t.start()
    assert started.wait(10)
    fs.stop()
    t.join(10)
    assert got == [b'{"ok": true, "slow": true}']
    assert not os.path.exists(fs.path)


def test_a_socket_path_too_long_is_not_served(root, caplog):
    deep = root / ("d" * 120)
    deep.mkdir()
    fs = FleetSocket(str(deep), lambda raw, pid: b"", 1024)
    assert fs.start() is False
    assert "too long for a Unix socket path" in caplog.text
    wait_for(lambda: not os.path.exists(fs.path), 1, "no socket")


def test_what_would_wait_on_the_service_itself_is_left_to_a_process():
    from agent.fleet.remote import declined

    def remediate(*steps):
        return {"op": "remediate", "steps": list(steps)}

    unit = "opsagent.service"
    assert declined({"op": "apply"}, unit) == "apply may restart the agent itself"
    assert declined({"op": "plan"}, unit) is None
    assert declined(remediate({"restart": {"service": "opsagent"}}), unit) == (
        "a step names the agent's own unit opsagent.service")
    assert declined(remediate({"run": {"argv": ["systemctl", "restart", "opsagent.service"]}}),
                    unit)
    assert declined(remediate({"run": {"argv": ["sh", "-c", "systemctl restart opsagent"]}}),
                    unit)
    assert declined(remediate({"run": {"argv": ["/usr/local/bin/opsagent", "blocks"]}}), unit)
    assert declined(remediate({"restart": {"service": "nginx"}},
                              {"run": {"argv": ["echo", "opsagent-ish", "x.opsagent",
                                                "opsagent2", "opsagent@1.service"]}}),
                    unit) is None
    assert declined(remediate({"restart": {"service": "opsagent"}}), None) is None
    assert declined({**remediate({"restart": {"service": "opsagent"}}), "check": True},
                    unit) is None  # a dry run changes nothing


def test_an_apply_handed_to_the_service_runs_in_a_process(root):
    import base64

    a = agent(root).start()
    try:
        pb = f"name: site\nfiles:\n  - path: {root}/applied.txt\n    content: \"x\\n\"\n"
        req = {"op": "apply", "host": "h1", "extra_vars": {}, "state_dir": str(root / "state"),
               "playbooks": [{"path": "site.yaml", "name": "site.yaml",
                              "files": {"site.yaml": base64.b64encode(pb.encode()).decode()}}]}
        code, answer = fleet_exec(req)
        assert code == 0 and answer["ok"] is True and answer["exit"] == 0
        assert answer["served_by"] == "process"
        assert (root / "applied.txt").read_text() == "x\n"
        assert "apply left to a process of its own: apply may restart the agent itself" in (
            a.log_text())
    finally:
        a.stop()


def test_fleet_exec_finds_the_service_where_the_agent_config_puts_it():
    from agent.fleet import remote
    from agent.service.config import DEFAULT_CONFIG, AgentConfig

    # kept apart so fleet-exec need not import the config's models: they must agree
    assert remote.DEFAULT_CONFIG == DEFAULT_CONFIG
    assert AgentConfig.model_fields["state_dir"].default == remote.DEFAULT_STATE_DIR
    assert remote._state_dir({"state_dir": "/srv/agent"}) == "/srv/agent"


def test_the_host_variable_turns_the_service_off_as_ansible_reads_booleans():
    from agent.fleet.orchestrate import HostState, where

    def use(value):
        return where(HostState("h", {"opsagent_agent_service": value}))["agent_service"]

    assert [use(v) for v in (False, "no", "off", "0", "False")] == [False] * 5
    assert [use(v) for v in (True, "yes", "on", 1)] == [True] * 4
    assert where(HostState("h", {}))["agent_service"] is True
