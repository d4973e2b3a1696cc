"""packaging/opsagent.service installed in a real systemd test host: READY, STATUS, a kill -9
answered under the unit, SIGHUP via `systemctl reload`, and the watchdog restarting a hung
agent."""

from __future__ import annotations

import json
import os
import time

import pytest

from tests.harness.testhost import REPO

pytestmark = pytest.mark.e2e

PLAYBOOK = """\
name: unit-demo
files:
  - {path: /var/tmp/unit-demo.conf, content: "managed\\n", mode: "0600"}
processes:
  - name: napper
    match: {pidfile: /run/napper.pid}
    start: [/usr/bin/python3, -c, "import time; time.sleep(10**6)", napper-under-unit]
    pidfile: /run/napper.pid
    restart: {max: 10, within: 1m, backoff: 0s}
services:
  - name: w1
    state: running
    unit_file: |
      [Service]
      ExecStart=/bin/sleep 100000
    restart: {max: 10, within: 1m, backoff: 0s}
"""


def show(host, *props: str) -> dict[str, str]:
    out = host.exec(["systemctl", "show", "opsagent.service",
                     *[f"--property={p}" for p in props]]).output
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def wait(host, pred, timeout=20.0, what="condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(0.2)
    logs = host.exec(["journalctl", "-u", "opsagent", "--no-pager", "-n", "40"]).output
    raise AssertionError(f"timed out waiting for {what} (last: {last!r}); journal:\n{logs}")


def show_unit(host, unit: str, prop: str) -> str:
    return host.exec(["systemctl", "show", unit, f"--property={prop}", "--value"]).output.strip()


def resource(host, ref: str) -> dict:
    out = host.opsagent("status", "--json").output
    try:
        return json.loads(out)["status"]["resources"].get(ref) or {}
    except (ValueError, KeyError):
        return {}


def napper_pid(host) -> int:
    text = host.exec(["cat", "/run/napper.pid"]).output.strip()
    return int(text) if text.isdigit() else 0


@pytest.fixture
def unit_host(testhost):
    with open(os.path.join(REPO, "packaging", "opsagent.service")) as f:
        testhost.write_file("/etc/systemd/system/opsagent.service", f.read())
    testhost.exec(["ln", "-sf", os.path.join(REPO, ".venv", "bin", "opsagent"),
                   "/usr/local/bin/opsagent"])
    testhost.write_file("/etc/opsagent/agent.yaml",
                        "playbooks: [/etc/opsagent/playbooks]\nlog_format: json\n")
    testhost.write_file("/etc/opsagent/playbooks/demo.yaml", PLAYBOOK)
    assert testhost.exec(["systemctl", "daemon-reload"]).exit_code == 0
    yield testhost
    testhost.exec(["systemctl", "stop", "opsagent"])
    testhost.exec(["pkill", "-f", "napper-under-unit"])
    testhost.exec(["systemctl", "stop", "w1"])


def test_the_unit_reaches_ready_reports_status_and_enforces(unit_host):
    host = unit_host
    res = host.exec(["systemctl", "start", "opsagent"], timeout=60)  # returns on READY=1
    assert res.exit_code == 0, res.output
    props = show(host, "ActiveState", "SubState", "StatusText", "MainPID", "WatchdogUSec")
    assert props["ActiveState"] == "active" and props["SubState"] == "running"
    assert props["StatusText"].startswith("enforcing dir:") and "3 resources" in props[
        "StatusText"]
    assert props["WatchdogUSec"] in ("30s", "30000000")
    wait(host, lambda: host.exec(["cat", "/var/tmp/unit-demo.conf"]).output == "managed\n",
         what="the managed file")
    first = wait(host, lambda: napper_pid(host), what="the supervised process")
    wait(host, lambda: f"pid {first}" in resource(host, "processes:napper").get("message", ""),
         what="the agent to have verified its start")  # a kill during that is a failed start
    host.exec(["kill", "-9", str(first)])
    wait(host, lambda: napper_pid(host) not in (0, first)
         and host.exec(["kill", "-0", str(napper_pid(host))]).exit_code == 0,
         what="a restart of the killed process")
    # a unit killed behind the agent's back: the D-Bus signal wakes it, it starts the unit
    wait(host, lambda: host.exec(["systemctl", "is-active", "w1"]).output.strip() == "active",
         what="w1 started by the agent")
    wait(host, lambda: resource(host, "services:w1").get("status") in ("ok", "changed"),
         what="w1 reconciled")
    time.sleep(1.5)  # the agent subscribes, then looks once more (WATCH_SETTLE_S)
    before_kill = show_unit(host, "w1", "ExecMainStartTimestampMonotonic")
    host.exec(["systemctl", "kill", "-s", "KILL", "w1"])
    t0 = time.monotonic()
    wait(host, lambda: host.exec(["systemctl", "is-active", "w1"]).output.strip() == "active"
         and show_unit(host, "w1", "ExecMainStartTimestampMonotonic") != before_kill,
         what="w1 started again")
    assert time.monotonic() - t0 < 10  # the event, not the 60 s full reconcile
    wait(host, lambda: "(after: unit w1.service changed state)" in host.exec(
        ["journalctl", "-u", "opsagent", "--no-pager", "-o", "cat"]).output,
         what="the D-Bus event in the agent's log")

    status = host.opsagent("status")
    assert status.exit_code == 0, status.output
    assert f"agent: running (pid {props['MainPID']})" in status.output
    assert "processes:napper" in status.output
    assert host.exec(["stat", "-c", "%a", "/var/lib/opsagent"]).output.strip() == "700"

    # systemctl reload = SIGHUP: a new playbook revision is enforced without a restart
    host.write_file("/etc/opsagent/playbooks/demo.yaml",
                    PLAYBOOK.replace('content: "managed\\n"', 'content: "v2\\n"'))
    assert host.exec(["systemctl", "reload", "opsagent"]).exit_code == 0
    wait(host, lambda: host.exec(["cat", "/var/tmp/unit-demo.conf"]).output == "v2\n",
         what="the reloaded playbook")
    assert show(host, "MainPID")["MainPID"] == props["MainPID"]

    # stop: graceful, and the supervised program outlives the agent (KillMode=process)
    pid = napper_pid(host)
    assert host.exec(["systemctl", "stop", "opsagent"], timeout=60).exit_code == 0
    assert show(host, "ActiveState")["ActiveState"] == "inactive"
    assert host.exec(["kill", "-0", str(pid)]).exit_code == 0
    journal = host.exec(["journalctl", "-u", "opsagent", "--no-pager", "-o", "cat"]).output
    assert '"msg": "agent stopped"' in journal


def test_the_watchdog_restarts_a_hung_agent(unit_host):
    host = unit_host
    host.write_file("/etc/systemd/system/opsagent.service.d/fast-watchdog.conf",
                    "[Service]\nWatchdogSec=2s\nTimeoutStopSec=3s\nRestartSec=100ms\n")
    host.exec(["systemctl", "daemon-reload"])
    assert host.exec(["systemctl", "start", "opsagent"], timeout=60).exit_code == 0
    before = show(host, "MainPID", "NRestarts")
    time.sleep(3)  # pings at half of WatchdogSec keep a healthy agent alive
    assert show(host, "MainPID", "NRestarts") == before
    host.exec(["kill", "-STOP", before["MainPID"]])  # hung: no more WATCHDOG=1
    after = wait(host, lambda: (p := show(host, "MainPID", "NRestarts", "ActiveState"))
                 ["MainPID"] not in ("0", before["MainPID"]) and p["ActiveState"] == "active"
                 and p, 30, "the watchdog restart")
    assert int(after["NRestarts"]) == int(before["NRestarts"]) + 1
    journal = host.exec(["journalctl", "-u", "opsagent", "--no-pager"]).output
    assert "Watchdog timeout" in journal
