"""container (real Docker Engine), service (real systemd in a test host) and command probes."""

from __future__ import annotations

import json
import os
import textwrap
import time
import uuid

import pytest

from tests.checks.conftest import check

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# --- container --------------------------------------------------------------------------

@pytest.fixture
def containers(docker_client, busybox_image):
    made = []

    def run(cmd="sleep 600", **kwargs):
        name = f"opsagent-check-{uuid.uuid4().hex[:8]}"
        made.append(docker_client.containers.run(busybox_image, cmd.split(), name=name,
                                                 detach=True, labels={"opsagent-test": "checks"},
                                                 **kwargs))
        return made[-1]

    yield run
    for c in made:
        c.remove(force=True)


def _wait_health(container, wanted, timeout=15):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        container.reload()
        if container.attrs["State"].get("Health", {}).get("Status") == wanted:
            return
        time.sleep(0.1)
    raise AssertionError(f"{container.name} never became {wanted}: {container.attrs['State']}")


def test_running_container_is_healthy_and_stopped_one_is_not(containers):
    c = containers()
    out = check(container={"name": c.name})
    assert out.status == "healthy", out.message
    assert out.message == f"container {c.name} is running"
    c.stop(timeout=0)
    out = check(container={"name": c.name})
    assert out.status == "unhealthy"
    assert out.message == f"container {c.name} is exited, exit code 137"


def test_missing_container_is_unhealthy(docker_client):
    out = check(container={"name": "opsagent-check-does-not-exist"})
    assert out.status == "unhealthy"
    assert out.message == "no container named opsagent-check-does-not-exist"


def test_container_healthcheck_states(containers):
    second = 1_000_000_000
    starting = containers(healthcheck={"test": ["CMD", "true"], "interval": 3600 * second})
    out = check(container={"name": starting.name})
    assert out.status == "degraded", out.message
    assert "healthcheck starting" in out.message
    good = containers(healthcheck={"test": ["CMD", "true"], "interval": second // 10})
    _wait_health(good, "healthy")
    assert check(container={"name": good.name}).message.endswith("healthcheck healthy")
    bad = containers(healthcheck={"test": ["CMD", "false"], "interval": second // 10,
                                  "retries": 1})
    _wait_health(bad, "unhealthy")
    out = check(container={"name": bad.name})
    assert out.status == "unhealthy"
    assert out.message == f"container {bad.name} is running, healthcheck unhealthy"


def test_a_docker_daemon_that_is_not_there_is_unhealthy_and_asked_again_later(monkeypatch,
                                                                               tmp_path):
    from agent.checks import units

    sock = tmp_path / "docker.sock"
    monkeypatch.setenv("DOCKER_HOST", f"unix://{sock}")
    monkeypatch.setattr(units, "_docker", None)  # a fresh client, made from DOCKER_HOST
    monkeypatch.setattr(units, "_DOCKER_RETRY_S", 0.5)
    first = check(container={"name": "web"})
    assert first.status == "unhealthy"
    assert "Docker Engine is not reachable" in first.message, first.message
    again = check(container={"name": "web"})
    assert again.status == "unhealthy" and "not asked again" in again.message
    time.sleep(0.6)
    later = check(container={"name": "web"})
    assert "not asked again" not in later.message and "not reachable" in later.message


# --- service: the probe run inside a systemd test host -----------------------------------

_SERVICE_SCRIPT = textwrap.dedent("""
    import json
    from agent.checks import run_check
    from agent.playbook.models.checks import CheckSpec
    for name in ("ssh", "broken", "slowstart", "no-such-unit"):
        o = run_check(CheckSpec.model_validate({"name": "s", "service": {"name": name}}))
        print(json.dumps({"unit": name, "status": o.status, "message": o.message}))
""")

_UNITS = {
    "broken": "[Service]\nExecStart=/bin/false\n",
    "slowstart": "[Service]\nType=oneshot\nExecStart=/bin/sleep 600\n",
}


@pytest.mark.e2e
def test_service_states_over_dbus_on_a_real_systemd(testhost):
    for name, text in _UNITS.items():
        testhost.write_file(f"/etc/systemd/system/{name}.service", text)
    testhost.exec(["systemctl", "daemon-reload"])
    testhost.exec(["systemctl", "start", "broken"])
    testhost.exec(["systemctl", "start", "--no-block", "slowstart"])
    res = testhost.exec([os.path.join(ROOT, ".venv", "bin", "python"), "-c", _SERVICE_SCRIPT],
                        env={"PYTHONPATH": ROOT})
    assert res.exit_code == 0, res.output
    got = {d["unit"]: d for d in map(json.loads, res.output.splitlines())}
    assert got["ssh"]["status"] == "healthy"
    assert got["ssh"]["message"].startswith("ssh.service is active (running")
    assert got["broken"]["status"] == "unhealthy"
    assert got["broken"]["message"].startswith("broken.service is failed")
    assert got["slowstart"]["status"] == "degraded"
    assert got["slowstart"]["message"].startswith("slowstart.service is activating")
    assert got["no-such-unit"] == {"unit": "no-such-unit", "status": "unhealthy",
                                   "message": "no-such-unit.service: no such unit"}


# --- command ----------------------------------------------------------------------------

def test_command_exit_codes():
    ok = check(command={"argv": ["/bin/sh", "-c", "echo first; echo all good"]})
    assert ok.status == "healthy", ok.message
    assert ok.message == "sh exited 0: all good"
    assert ok.values["exit_code"] == 0.0
    bad = check(command={"argv": ["/bin/sh", "-c", "echo disk is full >&2; exit 1"]})
    assert bad.status == "unhealthy"
    assert bad.message == "sh exited 1 (expected 0): disk is full"
    assert bad.values["exit_code"] == 1.0
    assert check(command={"argv": ["/bin/false"], "expect_exit": 1}).status == "healthy"


def test_command_timeout_kills_it_and_its_children(tmp_path):
    marker = tmp_path / "survived"
    start = time.monotonic()
    out = check(command={"argv": ["/bin/sh", "-c", f"echo waiting; (sleep 1; touch {marker}) & "
                                                     "sleep 30"], "timeout": "300ms"})
    assert out.status == "unhealthy"
    assert out.message == "sh did not finish within 0.3s: waiting"
    assert time.monotonic() - start < 2
    time.sleep(1.3)
    assert not marker.exists()  # the background child died with its group


def test_command_arguments_are_never_interpreted_by_a_shell(tmp_path):
    out = check(command={"argv": ["/bin/echo", "$(reboot)", "; touch", str(tmp_path / "x")]})
    assert out.status == "healthy"
    assert out.message == f"echo exited 0: $(reboot) ; touch {tmp_path / 'x'}"
    assert not (tmp_path / "x").exists()


def test_command_that_cannot_run_and_long_output(tmp_path):
    out = check(command={"argv": [str(tmp_path / "missing")]})
    assert out.status == "unhealthy"
    assert out.message == f"cannot run {tmp_path / 'missing'}: No such file or directory"
    chatty = check(command={"argv": ["/bin/sh", "-c", "yes line | head -c 5000000; "
                                                      "printf '%0500d' 7"]})
    assert chatty.status == "healthy"
    assert len(chatty.message) < 260 and chatty.message.endswith("…")
