"""Fleet runs end to end: opsagent on this machine reaching three systemd test hosts over real
SSH (paramiko, known_hosts checked), the agent running on each, real systemd and nftables
there. Hosts: th1, th2 (group web), th3 (group db); see tests/harness/fleet.py."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e
BLOCKED = "203.0.113.77"


def opsagent(*args, timeout=240):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "agent.cli", *map(str, args)],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=timeout, env=env)


def remediate(fleet, runbook, *args, inventory=None, state=None):
    p = opsagent("remediate", runbook, "-i", inventory or fleet.inventory, "--known-hosts",
                 fleet.known_hosts, "--state-dir", state or fleet.dir / "controller", "--json",
                 "--connect-timeout", "5s", *args)
    doc = json.loads(p.stdout) if p.stdout.strip().startswith("{") else None
    return p, doc


def write(tmp_path, text, name="rb.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def outcome(doc, host, step):
    return [o for o in doc["outcomes"] if o["host"] == host and o["step"] == step]


def host_status(doc):
    return {h["name"]: h["status"] for h in doc["hosts"]}


def nft_has(fleet, name, addr):
    r = fleet.host(name).exec(["nft", "-j", "list", "set", "inet", "opsagent", "blocked4"])
    return r.exit_code == 0 and addr in r.output


def started(fleet, name):
    return fleet.unit_property(name, "ActiveEnterTimestampMonotonic")


SERVICE_AND_BLOCK = """\
    name: restart-and-block
    hosts: web
    params:
      unit: {type: string, pattern: '^[a-z0-9@._-]+$'}
      ip: {type: ip}
    steps:
      - name: down?
        check: {service: {name: "{{ unit }}"}}
        on_failure: continue
      - name: restart
        restart: {service: "{{ unit }}"}
      - name: up
        check: {service: {name: "{{ unit }}"}, retries: 5, delay: 1s}
      - name: block
        block_ip: {ip: "{{ ip }}", duration: 1h}
    """


def test_a_runbook_restarts_a_failed_unit_on_a_groups_hosts_and_blocks_an_address(
        fleet, tmp_path):
    rb = write(tmp_path, SERVICE_AND_BLOCK)
    for name in ("th1", "th2"):
        fleet.host(name).exec(["systemctl", "kill", "--signal=KILL", "demo.service"])
    th3_before = started(fleet, "th3")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(
            fleet.unit_property(n, "ActiveState") == "active" for n in ("th1", "th2")):
        time.sleep(0.1)
    assert fleet.unit_property("th1", "ActiveState") == "failed"
    try:
        p, doc = remediate(fleet, rb, "-e", "unit=demo", "-e", f"ip={BLOCKED}")
        assert p.returncode == 0, p.stderr + p.stdout
        assert host_status(doc) == {"th1": "changed", "th2": "changed"}
        for name in ("th1", "th2"):
            assert outcome(doc, name, 0)[0]["status"] == "failed"  # it was down: continue
            assert outcome(doc, name, 1)[0]["status"] == "changed"
            assert fleet.unit_property(name, "ActiveState") == "active"
            assert nft_has(fleet, name, BLOCKED)
        # th3 is not in web: untouched
        assert started(fleet, "th3") == th3_before
        assert not nft_has(fleet, "th3", BLOCKED)
        # the incident is kept by the controller, with every host's every step
        listed = opsagent("incident", "show", doc["id"], "--state-dir", fleet.dir / "controller",
                          "--json")
        assert listed.returncode == 0, listed.stderr
        kept = json.loads(listed.stdout)
        assert kept["status"] == "succeeded" and len(kept["outcomes"]) == 8
        report = opsagent("incident", "report", doc["id"], "--state-dir",
                          fleet.dir / "controller")
        assert report.returncode == 0 and doc["id"] in report.stdout
        assert BLOCKED in report.stdout
    finally:
        for name in ("th1", "th2"):
            fleet.host(name).exec(["nft", "delete", "table", "inet", "opsagent"])
            fleet.host(name).exec([fleet.opsagent_path, "blocks", "remove", BLOCKED])
            fleet.start_unit(name)


def test_check_changes_nothing_on_any_host(fleet, tmp_path):
    rb = write(tmp_path, SERVICE_AND_BLOCK)
    before = {n: started(fleet, n) for n in ("th1", "th2")}
    p, doc = remediate(fleet, rb, "-e", "unit=demo", "-e", f"ip={BLOCKED}", "--check")
    assert p.returncode == 0, p.stderr + p.stdout
    assert doc["status"] == "checked"
    for name in ("th1", "th2"):
        assert outcome(doc, name, 1)[0]["status"] == "would-change"
        assert outcome(doc, name, 1)[0]["message"].startswith("would restart demo.service")
        assert outcome(doc, name, 3)[0]["message"] == f"would block {BLOCKED} for 1h"
        assert started(fleet, name) == before[name]
        assert fleet.host(name).exec(["nft", "list", "table", "inet", "opsagent"]).exit_code != 0


def test_a_wrongly_typed_parameter_is_refused_before_anything_runs(fleet, tmp_path):
    rb = write(tmp_path, SERVICE_AND_BLOCK)
    before = {n: started(fleet, n) for n in ("th1", "th2")}
    state = tmp_path / "controller"
    p, doc = remediate(fleet, rb, "-e", "unit=demo", "-e", "ip=203.0.113.7;reboot",
                       state=state)
    assert p.returncode == 2 and doc is None
    assert "params.ip: -e ip: '203.0.113.7;reboot' is not an IP address" in p.stderr
    assert "nothing was changed" in p.stderr
    assert {n: started(fleet, n) for n in ("th1", "th2")} == before
    assert not state.exists()  # not even an incident was opened


MARK = """\
    name: mark
    hosts: all
    {serial}
    steps:
      - run: {{argv: [touch, /tmp/fleet-mark]}}
      - run: {{argv: [test, -e, /etc/{gate}]}}
    """


def test_serial_and_max_fail_percentage_stop_a_bad_change_at_the_canary(fleet, tmp_path):
    rb = write(tmp_path, MARK.format(serial="serial: [1, 2]\n    max_fail_percentage: 0",
                                     gate="no-such-file"))
    for fh in fleet.hosts:
        fh.exec(["rm", "-f", "/tmp/fleet-mark"])
    p, doc = remediate(fleet, rb)
    assert p.returncode == 4
    assert host_status(doc) == {"th1": "failed", "th2": "skipped", "th3": "skipped"}
    assert any("stopped after wave 1: 1 of 1 hosts failed" in e["event"]
               for e in doc["timeline"])
    assert doc["status"] == "aborted"
    assert fleet.host("th1").exec(["test", "-e", "/tmp/fleet-mark"]).exit_code == 0
    for name in ("th2", "th3"):  # the later waves never ran
        assert fleet.host(name).exec(["test", "-e", "/tmp/fleet-mark"]).exit_code != 0


def test_without_max_fail_percentage_waves_go_on_until_a_whole_wave_fails(fleet, tmp_path):
    rb = write(tmp_path, MARK.format(serial="serial: 2", gate="fleet-gate"))
    for name in ("th1", "th3"):  # th2 fails the gate: half of wave 1, not all of it
        fleet.host(name).exec(["touch", "/etc/fleet-gate"])
    try:
        p, doc = remediate(fleet, rb)
    finally:
        for name in ("th1", "th3"):
            fleet.host(name).exec(["rm", "/etc/fleet-gate"])
    assert p.returncode == 4
    assert host_status(doc) == {"th1": "changed", "th2": "failed", "th3": "changed"}


def test_an_unreachable_host_and_a_changed_host_key_are_reported_and_hold_up_nothing(
        fleet, tmp_path):
    rb = write(tmp_path, MARK.format(serial="", gate="hostname"))
    fleet.make_unreachable("th2", "drop")
    fleet.change_host_key("th3")
    try:
        t0 = time.monotonic()
        p, doc = remediate(fleet, rb)
        took = time.monotonic() - t0
    finally:
        fleet.make_reachable("th2")
        fleet.write_known_hosts()
    assert p.returncode == 4, p.stderr
    assert host_status(doc) == {"th1": "changed", "th2": "unreachable", "th3": "unreachable"}
    msgs = {h["name"]: h["message"] for h in doc["hosts"]}
    assert msgs["th2"].startswith("th2 (") and "no TCP connection within 5s" in msgs["th2"]
    assert "host key" in msgs["th3"] and "CHANGED" in msgs["th3"]
    assert took < 45  # th2's connect gives up after --connect-timeout 5s


def test_sudo_for_a_non_root_login(fleet, tmp_path):
    rb = write(tmp_path, """\
        name: whoami
        steps:
          - run: {argv: [touch, /root/sudo-mark]}
        """)
    inv = fleet.inventory.read_text().replace("user: root", "user: deploy")
    deploy = write(tmp_path, inv, "deploy.yaml")
    ops = write(tmp_path, inv.replace("user: deploy", "user: ops"), "ops.yaml")
    p, doc = remediate(fleet, rb, "--limit", "th1", inventory=deploy)
    assert p.returncode == 0, p.stderr + p.stdout
    assert fleet.host("th1").exec(["test", "-e", "/root/sudo-mark"]).exit_code == 0
    p, doc = remediate(fleet, rb, "--limit", "th2", inventory=ops)
    assert p.returncode == 4
    assert host_status(doc) == {"th2": "unreachable"}
    assert "sudo" in doc["hosts"][0]["message"]
    assert fleet.host("th2").exec(["test", "-e", "/root/sudo-mark"]).exit_code != 0


def test_fleet_plan_and_apply_of_a_playbook(fleet, tmp_path):
    pb = write(tmp_path, """\
        name: motd
        hosts: web
        files:
          - path: /etc/motd-opsagent
            template: motd.j2
            mode: "0644"
        """, "site.yaml")
    (tmp_path / "motd.j2").write_text("Welcome to {{ inventory_hostname }}\n")
    common = ["-i", fleet.inventory, "--known-hosts", fleet.known_hosts]
    plan = opsagent("plan", pb, *common, "--json")
    assert plan.returncode == 3, plan.stderr + plan.stdout
    hosts = {h["name"]: h for h in json.loads(plan.stdout)["hosts"]}
    assert set(hosts) == {"th1", "th2"}
    assert all(h["status"] == "would-change" for h in hosts.values())
    assert fleet.host("th1").exec(["test", "-e", "/etc/motd-opsagent"]).exit_code != 0
    apply = opsagent("apply", pb, *common)
    assert apply.returncode == 0, apply.stderr + apply.stdout
    assert "RECAP" in apply.stdout
    for name in ("th1", "th2"):
        r = fleet.host(name).exec(["cat", "/etc/motd-opsagent"])
        assert r.output == f"Welcome to {name}\n"
    assert fleet.host("th3").exec(["test", "-e", "/etc/motd-opsagent"]).exit_code != 0
    # the hosts' own outboxes hold the run reports for their agents to deliver
    q = fleet.host("th1").exec(["python3", "-c", "import sqlite3;print(sqlite3.connect("
                                "'/var/lib/opsagent/state.db').execute('select count(*) from "
                                "outbox').fetchone()[0])"])
    assert q.exit_code == 0 and int(q.output) >= 2, q.output
    again = opsagent("plan", pb, *common)
    assert again.returncode == 0, again.stdout
    for name in ("th1", "th2"):
        fleet.host(name).exec(["rm", "-f", "/etc/motd-opsagent"])


def test_the_hosts_agent_services_run_the_steps_when_they_listen(fleet, tmp_path):
    """As production hosts run it: packaging/opsagent.service on each host; the runbook's
    parts are handed to it over its fleet socket, through sudo as well; a host whose
    variables say opsagent_agent_service: false starts a process of its own."""
    rb = write(tmp_path, """\
        name: service-mark
        hosts: all
        steps:
          - restart: {service: demo.service}
          - block_ip: {ip: 203.0.113.78, duration: 10m}
          - run: {argv: [touch, /root/service-mark]}
        """)
    inv = fleet.inventory.read_text().replace(
        "  th3: {address:", "  th3: {vars: {opsagent_agent_service: false}, address:")
    assert "opsagent_agent_service" in inv
    mixed = write(tmp_path, inv, "mixed.yaml")
    deploy = write(tmp_path, fleet.inventory.read_text().replace("user: root", "user: deploy"),
                   "deploy.yaml")
    fleet.start_agent_services()
    try:
        pids = {fh.name: fleet.host(fh.name).exec(
            ["systemctl", "show", "--value", "-p", "MainPID", "opsagent.service"]).output.strip()
            for fh in fleet.hosts}
        before = {n: started(fleet, n) for n in fleet.names}
        p, doc = remediate(fleet, rb, inventory=mixed)
        assert p.returncode == 0, p.stderr + p.stdout
        assert host_status(doc) == {"th1": "changed", "th2": "changed", "th3": "changed"}
        served = {h["name"]: h.get("served_by") for h in doc["hosts"]}
        assert served == {"th1": f"agent service (pid {pids['th1']})",
                          "th2": f"agent service (pid {pids['th2']})", "th3": "process"}
        for name in fleet.names:  # the steps took effect either way
            assert started(fleet, name) != before[name]
            assert nft_has(fleet, name, "203.0.113.78")
            assert fleet.host(name).exec(["test", "-e", "/root/service-mark"]).exit_code == 0
        log = fleet.agent_log("th1")
        assert f"remediate for incident {doc['id']} by " in log and "answered in" in log
        assert doc["id"] not in fleet.agent_log("th3")
        shown = opsagent("incident", "show", doc["id"], "--state-dir", fleet.dir / "controller")
        assert f"[ran in the agent service (pid {pids['th1']})]" in shown.stdout
        # a sudo login reaches the root-only socket through sudo
        p, doc = remediate(fleet, rb, "--limit", "th2", inventory=deploy)
        assert p.returncode == 0, p.stderr + p.stdout
        assert doc["hosts"][0]["served_by"] == f"agent service (pid {pids['th2']})"
        # plan is handed over too
        pb = write(tmp_path, """\
            name: motd2
            files:
              - path: /etc/motd-service
                content: "hello\\n"
            """, "motd2.yaml")
        plan = opsagent("plan", pb, "-i", fleet.inventory, "--known-hosts", fleet.known_hosts,
                        "--limit", "th1", "--json")
        assert plan.returncode == 3, plan.stderr + plan.stdout
        assert json.loads(plan.stdout)["hosts"][0]["served_by"].startswith("agent service")
        # what would wait on the service itself runs in a process: apply, and a step naming
        # its own unit (restarting the service would end the request it runs)
        apply = opsagent("apply", pb, "-i", fleet.inventory, "--known-hosts",
                         fleet.known_hosts, "--limit", "th1", "--json")
        assert apply.returncode == 0, apply.stderr + apply.stdout
        assert json.loads(apply.stdout)["hosts"][0]["served_by"] == "process"
        itself = write(tmp_path, """\
            name: restart-agent
            steps:
              - restart: {service: opsagent.service}
            """, "itself.yaml")
        p, doc = remediate(fleet, itself, "--limit", "th1")
        assert p.returncode == 0, p.stderr + p.stdout
        assert doc["hosts"][0]["served_by"] == "process"
        new_pid = fleet.host("th1").exec(
            ["systemctl", "show", "--value", "-p", "MainPID", "opsagent.service"]).output.strip()
        assert new_pid not in ("0", pids["th1"])
        assert "a step names the agent's own unit opsagent.service" in fleet.agent_log("th1")
    finally:
        fleet.stop_agent_services()
        for name in fleet.names:
            fleet.host(name).exec(["nft", "delete", "table", "inet", "opsagent"])
            fleet.host(name).exec([fleet.opsagent_path, "blocks", "remove", "203.0.113.78"])
            fleet.host(name).exec(["rm", "-f", "/root/service-mark", "/etc/motd-service"])
            fleet.start_unit(name)
