"""UnitWatcher against a real systemd: a script runs the watcher inside a test host and
reports, step by step, which units it was told about and how long after the step began.

The steps (commands to run in the host, an optional new watched set, the units expected,
and a quiet time after them) are passed to the script as JSON; every call the watcher made
during a step is in its report, so "nothing else called back" is checked too.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from agent.service.watch_systemd import match_rules, unit_path
from tests.harness.testhost import REPO

SLEEP = "[Service]\nExecStart=/bin/sleep 1000\n"
PROBE = "[Service]\nType=oneshot\nExecStart=/bin/sleep 0.2\n"
BAD = "[Service]\nType=oneshot\nExecStart=/bin/false\n"
NEEDS_BAD = "[Unit]\nRequires=bad.service\nAfter=bad.service\n" + SLEEP

SCRIPT = r'''
import json, logging, subprocess, sys, threading, time
from agent.service.watch_systemd import UnitWatcher

logging.basicConfig(level=logging.DEBUG, stream=sys.stdout,
                    format="LOG %(relativeCreated)6.0fms %(levelname)s %(message)s")
logging.getLogger("asyncio").setLevel(logging.WARNING)
got, cond = [], threading.Condition()

def on_change(unit):
    with cond:
        got.append((time.monotonic(), unit))
        cond.notify_all()

def seen(since):
    return {u for t, u in got if t >= since}

def wait(units, since, timeout):
    deadline = time.monotonic() + timeout
    with cond:
        while not set(units) <= seen(since) and time.monotonic() < deadline:
            cond.wait(max(0.0, deadline - time.monotonic()))

def run(argv):
    return subprocess.run(argv, capture_output=True, text=True).returncode

watched, steps = json.loads(sys.argv[1]), json.loads(sys.argv[2])
w = UnitWatcher(on_change)
w.watch(set(watched))
# The watcher connects on its own thread: start the (watched) probe until it is heard.
for attempt in range(60):
    mark = time.monotonic()
    run(["systemctl", "start", "probe.service"])
    wait(["probe.service"], mark, 0.5)
    if "probe.service" in seen(mark):
        break
print("READY", json.dumps({"attempts": attempt + 1}), flush=True)
time.sleep(0.5)  # the probe's last signals
for step in steps:
    if "watch" in step:
        w.watch(set(step["watch"]))
        time.sleep(0.5)  # let the new match rules in
    mark = time.monotonic()
    rcs = [run(argv) for argv in step.get("run", [])]
    wait(step.get("expect", []), mark, step.get("within", 10))
    time.sleep(step.get("settle", 1.0))
    with cond:
        calls = [[u, round(t - mark, 3)] for t, u in got if t >= mark]
    print("STEP", json.dumps({"name": step["name"], "rcs": rcs, "calls": calls}), flush=True)
t = time.monotonic()
w.close()
print("CLOSED", json.dumps({"seconds": round(time.monotonic() - t, 3),
                            "alive": w._thread.is_alive()}), flush=True)
'''


def setup_units(host: Any, **units: str) -> None:
    for name, text in units.items():
        host.write_file(f"/etc/systemd/system/{name}.service", text)
    host.exec(["systemctl", "daemon-reload"])


def run_steps(host: Any, watched: list[str], steps: list[dict[str, Any]]
              ) -> tuple[dict[str, Any], str]:
    """Run the watcher script in the host; ({step name: report}, the whole output)."""
    host.write_file("/tmp/watch_units.py", SCRIPT)
    res = host.exec([os.path.join(REPO, ".venv", "bin", "python"), "/tmp/watch_units.py",
                     json.dumps(watched), json.dumps(steps)], timeout=240,
                    env={"PYTHONPATH": REPO})
    out = res.output
    assert res.exit_code == 0, out
    assert "READY" in out, f"the watcher never reported the probe:\n{out}"
    reports: dict[str, Any] = {}
    for line in out.splitlines():
        if line.startswith("STEP "):
            doc = json.loads(line[5:])
            reports[doc["name"]] = doc
        elif line.startswith("CLOSED "):
            reports["closed"] = json.loads(line[7:])
    return reports, out


def units_of(report: dict[str, Any]) -> list[str]:
    return sorted({u for u, _ in report["calls"]})


def first(report: dict[str, Any], unit: str) -> float:
    return float(min(t for u, t in report["calls"] if u == unit))


def test_unit_paths_and_match_rules():
    assert unit_path("ssh.service") == "/org/freedesktop/systemd1/unit/ssh_2eservice"
    assert unit_path("getty@tty1.service").endswith("/getty_40tty1_2eservice")
    assert unit_path("-.mount").endswith("/_2d_2emount")
    assert unit_path("1x.service").endswith("/_31x_2eservice")  # a leading digit is escaped
    assert unit_path("a1.service").endswith("/a1_2eservice")
    rules = match_rules(frozenset({"w1.service"}))
    assert ("type='signal',sender='org.freedesktop.systemd1',"
            "interface='org.freedesktop.DBus.Properties',member='PropertiesChanged',"
            "arg0='org.freedesktop.systemd1.Unit',"
            "path='/org/freedesktop/systemd1/unit/w1_2eservice'") in rules
    assert any("member='JobRemoved',arg2='w1.service'" in r for r in rules)
    assert len(rules) == 2
    many = match_rules(frozenset(f"u{i}.service" for i in range(101)))
    assert len(many) == 2
    assert any("path_namespace='/org/freedesktop/systemd1/unit'" in r for r in many)
    ends = sorted(r.rsplit(",", 1)[1] for r in match_rules(frozenset({"it's"})))
    assert ends == ["arg2='it'\\''s'", "path='/org/freedesktop/systemd1/unit/it_27s'"]


@pytest.mark.e2e
def test_unit_paths_agree_with_systemd(testhost):
    setup_units(testhost, w1=SLEEP)
    for unit in ("w1.service", "getty@tty1.service", "-.mount", "dbus.socket",
                 "systemd-journald.service"):
        out = testhost.exec(["busctl", "call", "--", "org.freedesktop.systemd1",
                             "/org/freedesktop/systemd1", "org.freedesktop.systemd1.Manager",
                             "LoadUnit", "s", unit]).output.strip()
        assert out == f'o "{unit_path(unit)}"', (unit, out)


@pytest.mark.e2e
def test_state_changes_of_watched_units_are_reported_and_nothing_else(testhost):
    setup_units(testhost, w1=SLEEP, u2=SLEEP, probe=PROBE, bad=BAD, needsbad=NEEDS_BAD)
    testhost.exec(["systemctl", "start", "w1.service", "u2.service"])
    reports, out = run_steps(testhost, ["w1.service", "probe.service", "needsbad.service"], [
        {"name": "kill", "run": [["systemctl", "kill", "-s", "KILL", "w1.service"]],
         "expect": ["w1.service"]},
        {"name": "unwatched", "run": [["systemctl", "stop", "u2.service"],
                                      ["systemctl", "start", "u2.service"]]},
        {"name": "reload", "run": [["systemctl", "daemon-reload"]], "settle": 1.5},
        {"name": "start", "run": [["systemctl", "start", "w1.service"]],
         "expect": ["w1.service"]},
        {"name": "stop", "run": [["systemctl", "stop", "w1.service"]],
         "expect": ["w1.service"]},
        # Its dependency fails: the unit stays inactive (dead), its job ends "dependency".
        {"name": "dependency", "run": [["systemctl", "start", "needsbad.service"]],
         "expect": ["needsbad.service"]},
        {"name": "rewatch", "watch": ["u2.service"],
         "run": [["systemctl", "start", "w1.service"], ["systemctl", "stop", "u2.service"]],
         "expect": ["u2.service"]},
        # Past PER_UNIT_RULES_UP_TO: one namespace-wide rule, still only watched units.
        {"name": "many", "watch": ["w1.service"] + [f"none{i}.service" for i in range(120)],
         "run": [["systemctl", "kill", "-s", "KILL", "w1.service"],
                 ["systemctl", "start", "u2.service"]],
         "expect": ["w1.service"]},
    ])
    kill = reports["kill"]
    assert units_of(kill) == ["w1.service"], out
    assert first(kill, "w1.service") < 2.0, out
    assert reports["unwatched"]["calls"] == [], out
    assert reports["reload"]["calls"] == [], out  # same states re-sent: not a change
    assert units_of(reports["start"]) == ["w1.service"], out
    assert units_of(reports["stop"]) == ["w1.service"], out
    assert reports["dependency"]["rcs"] != [0], out
    assert units_of(reports["dependency"]) == ["needsbad.service"], out
    assert units_of(reports["rewatch"]) == ["u2.service"], out  # w1 is no longer watched
    assert units_of(reports["many"]) == ["w1.service"], out
    assert reports["closed"] == {"seconds": reports["closed"]["seconds"], "alive": False}
    assert reports["closed"]["seconds"] < 2.0, out


@pytest.mark.e2e
def test_after_the_bus_or_systemd_comes_back_every_watched_unit_is_reported(testhost):
    setup_units(testhost, w1=SLEEP, probe=PROBE)
    testhost.exec(["systemctl", "start", "w1.service"])
    reports, out = run_steps(testhost, ["w1.service", "probe.service"], [
        # dbus-daemon restarts: every client is disconnected and must come back.
        {"name": "bus restart", "run": [["systemctl", "restart", "dbus.service"]],
         "expect": ["w1.service", "probe.service"], "within": 30},
        {"name": "kill after", "run": [["systemctl", "kill", "-s", "KILL", "w1.service"]],
         "expect": ["w1.service"]},
        {"name": "start", "run": [["systemctl", "start", "w1.service"]],
         "expect": ["w1.service"]},
        # systemd re-executes itself (as on an upgrade): it leaves the bus and comes back.
        {"name": "reexec", "run": [["systemctl", "daemon-reexec"]],
         "expect": ["w1.service", "probe.service"], "within": 30},
        {"name": "stop after", "run": [["systemctl", "stop", "w1.service"]],
         "expect": ["w1.service"]},
    ])
    assert units_of(reports["bus restart"]) == ["probe.service", "w1.service"], out
    assert "watching systemd units again" in out
    assert units_of(reports["kill after"]) == ["w1.service"], out
    assert units_of(reports["reexec"]) == ["probe.service", "w1.service"], out
    assert units_of(reports["stop after"]) == ["w1.service"], out
    assert reports["closed"]["alive"] is False, out
