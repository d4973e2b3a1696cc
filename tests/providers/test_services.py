"""The services provider: plan tests on captured D-Bus properties, then real systemd hosts.

The end-to-end timelines run the agent inside a `testhost` (systemd as PID 1) and check the
result with systemctl, which is only ever used here to assert, never by the agent.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
import time
import uuid

import pytest
from pydantic import ValidationError

from agent.playbook.models.services import ServiceSpec
from agent.providers import _budget, services
from agent.providers._budget import BudgetStore, decide
from agent.providers._unit_files import FileView
from agent.providers.base import RESTART, ProviderContext
from agent.providers.services import ServiceObserved, parse_status

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Captured from Properties.GetAll("") on a bookworm test host (a subset of ~400 properties),
# values unwrapped from their Variants as SystemdBus.unit_properties returns them.
SSH_ACTIVE = {
    "Id": "ssh.service", "LoadState": "loaded", "ActiveState": "active", "SubState": "running",
    "Result": "success", "UnitFileState": "enabled",
    "FragmentPath": "/lib/systemd/system/ssh.service", "MainPID": 52,
    "NeedDaemonReload": False, "DropInPaths": [], "ActiveEnterTimestamp": 1795388836088363,
    "ExecMainStatus": 0, "NRestarts": 0,
}
NOT_FOUND = {
    "Id": "nope.service", "LoadState": "not-found", "ActiveState": "inactive",
    "SubState": "dead", "Result": "success", "UnitFileState": "", "FragmentPath": "",
    "LoadError": ["org.freedesktop.systemd1.NoSuchUnit", "Unit nope.service not found."],
    "MainPID": 0,
}
FAILED = {
    "Id": "bad.service", "LoadState": "loaded", "ActiveState": "failed", "SubState": "failed",
    "Result": "exit-code", "UnitFileState": "static",
    "FragmentPath": "/etc/systemd/system/bad.service", "MainPID": 0,
    "NeedDaemonReload": False, "ExecMainStatus": 1,
}
MASKED = {
    "Id": "cron.service", "LoadState": "masked", "ActiveState": "inactive", "SubState": "dead",
    "Result": "success", "UnitFileState": "masked", "FragmentPath": "", "MainPID": 0,
}
DISABLED_STOPPED = {**SSH_ACTIVE, "ActiveState": "inactive", "SubState": "dead", "MainPID": 0,
                    "UnitFileState": "disabled"}


def spec(**fields) -> ServiceSpec:
    return ServiceSpec.model_validate({"name": "app", **fields})


def observed(props, unit="app.service", unit_file=None, dropins=None) -> ServiceObserved:
    return ServiceObserved(unit, parse_status(props), unit_file, dropins or {})


def fields(changes):
    return [(c.field, c.after) for c in changes]


# --- parsing and plan tests ------------------------------------------------------------

def test_parse_status_reads_the_properties_the_provider_uses():
    st = parse_status(SSH_ACTIVE)
    assert (st.load_state, st.active_state, st.sub_state, st.result) == (
        "loaded", "active", "running", "success")
    assert st.enabled and not st.masked and st.main_pid == 52
    assert st.text() == "active (running, pid 52)"
    assert parse_status(NOT_FOUND).load_error == "Unit nope.service not found."
    assert parse_status(NOT_FOUND).text() == "not found"
    assert parse_status(FAILED).text() == "failed (failed, Result=exit-code)"
    assert parse_status(FAILED).detail() == "ActiveState=failed SubState=failed Result=exit-code"
    assert parse_status(MASKED).masked


def test_a_running_enabled_unit_has_no_drift_and_says_why():
    s = spec(state="running", enabled=True)
    obs = observed(SSH_ACTIVE, unit="ssh.service")
    assert services.diff(s, obs) == []
    assert services.describe(s, obs) == "ssh.service is active (running, pid 52), enabled"


def test_a_stopped_unit_is_to_be_started_and_enabled():
    changes = services.diff(spec(state="running", enabled=True), observed(DISABLED_STOPPED))
    assert fields(changes) == [("enabled", True), ("state", "running")]
    assert changes[1].before == "inactive (dead)"
    assert "app.service is inactive (dead)" in changes[1].reason


def test_a_failed_unit_is_to_be_started_and_a_running_one_stopped():
    assert fields(services.diff(spec(state="running"), observed(FAILED))) == [
        ("state", "running")]
    assert fields(services.diff(spec(state="stopped", enabled=False),
                                observed(SSH_ACTIVE))) == [("state", "stopped"),
                                                           ("enabled", False)]
    # failed is not running: a stopped spec is satisfied
    assert services.diff(spec(state="stopped"), observed(FAILED)) == []


def test_unset_fields_are_unmanaged():
    assert services.diff(spec(), observed(FAILED)) == []
    assert services.diff(spec(), observed(MASKED)) == []
    assert services.diff(spec(enabled=False), observed(FAILED)) == []  # static is not enabled


def test_a_masked_unit_is_reported_and_masked_false_unmasks_it():
    obs = observed(MASKED, unit="cron.service")
    (change,) = services.diff(spec(state="running"), obs)
    assert (change.field, change.reason) == ("state", "cron.service is masked, inactive (dead)")
    assert services.describe(spec(), obs).startswith("cron.service is masked, inactive")
    assert fields(services.diff(spec(masked=False, state="running"), obs)) == [
        ("masked", False), ("state", "running")]
    assert fields(services.diff(spec(masked=True), observed(DISABLED_STOPPED))) == [
        ("masked", True)]
    assert services.diff(spec(masked=True, state="stopped"), obs) == []


def test_state_restarted_asks_for_a_restart_every_time():
    changes = services.diff(spec(state="restarted"), observed(SSH_ACTIVE))
    assert fields(changes) == [(RESTART, "restarted")]


def test_unit_file_and_dropins_are_compared_by_content():
    content = "[Service]\nExecStart=/bin/sleep 600\n"
    s = spec(unit_file=content, dropins={"env": "[Service]\nEnvironment=A=1\n", "old": None})
    same = observed(SSH_ACTIVE, unit_file=FileView("file", content),
                    dropins={"env": FileView("file", "[Service]\nEnvironment=A=1\n"),
                             "old": FileView("missing")})
    assert services.diff(s, same) == []
    assert services.describe(s, same).endswith("unit file as declared, 2 drop-ins as declared")
    drifted = observed(SSH_ACTIVE, unit_file=FileView("file", "[Service]\nExecStart=/x\n"),
                       dropins={"env": FileView("missing"), "old": FileView("file", "x")})
    changes = services.diff(s, drifted)
    assert fields(changes) == [("unit_file", services.uf.content_summary(content)),
                               ("dropins.env", services.uf.content_summary(
                                   "[Service]\nEnvironment=A=1\n")),
                               ("dropins.old", None)]
    assert changes[0].reason == "/etc/systemd/system/app.service differs"
    assert "+ExecStart=/bin/sleep 600" in changes[0].diff
    assert changes[1].reason == "/etc/systemd/system/app.service.d/env.conf does not exist"
    masked_link = observed(MASKED, unit_file=FileView("symlink", target="/dev/null"))
    assert services.diff(spec(unit_file=content), masked_link)[0].reason == (
        "/etc/systemd/system/app.service is a symlink to /dev/null")


def test_files_changed_behind_systemd_s_back_ask_for_a_daemon_reload():
    content = "[Service]\nExecStart=/bin/true\n"
    obs = observed({**SSH_ACTIVE, "NeedDaemonReload": True},
                   unit_file=FileView("file", content))
    assert fields(services.diff(spec(unit_file=content), obs)) == [("daemon_reload", "done")]
    assert services.diff(spec(), obs) == []  # files it does not own are not its business


def test_enabling_a_not_found_unit_says_so():
    (change,) = services.diff(spec(enabled=True), observed(NOT_FOUND))
    assert change.reason == "app.service has no unit file"


def test_unit_names_default_to_service_and_bad_input_is_refused():
    assert spec(name="nginx").unit == "nginx.service"
    assert spec(name="php8.2-fpm").unit == "php8.2-fpm.service"
    assert spec(name="backup.timer").unit == "backup.timer"
    assert spec(name="getty@tty1").unit == "getty@tty1.service"
    for bad in ("../etc/passwd", "a b", ".hidden", "x/y"):
        with pytest.raises(ValidationError, match="not a systemd unit name"):
            spec(name=bad)
    with pytest.raises(ValidationError, match="not a plain file name"):
        spec(dropins={"../x": "y"})
    with pytest.raises(ValidationError, match="masked: true cannot go with state: running"):
        spec(masked=True, state="running")
    with pytest.raises(ValidationError, match="unit_file"):
        spec(masked=True, unit_file="[Service]\n")
    assert spec().restart.max == 3  # automatic starts always have a budget


def test_supports_names_the_missing_systemd(monkeypatch, tmp_path):
    monkeypatch.setattr(services, "SYSTEMD_RUNTIME_DIR", str(tmp_path / "nope"))
    ctx = ProviderContext(host="t", variables={}, base_dir=".", state_dir=str(tmp_path))
    assert "systemd is not running on this host" in services.supports(ctx)
    monkeypatch.setattr(services, "SYSTEMD_RUNTIME_DIR", str(tmp_path))
    assert services.supports(ctx) is None


def test_validate_and_a_plan_without_systemd_never_import_dbus(tmp_path):
    pb = tmp_path / "pb.yaml"
    pb.write_text("name: t\nservices:\n  - {name: nginx, state: running}\n")
    code = textwrap.dedent(f"""
        import sys
        from agent.cli import main
        assert main(["validate", {str(pb)!r}]) == 0
        assert "dbus_fast" not in sys.modules, "validate imported dbus_fast"
        from agent.providers import services
        services.SYSTEMD_RUNTIME_DIR = {str(tmp_path / "no-systemd")!r}
        main(["plan", "--state-dir", {str(tmp_path / "st")!r}, {str(pb)!r}])
        assert "dbus_fast" not in sys.modules, "plan without systemd imported dbus_fast"
    """)
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stderr
    assert "skipped" in p.stdout and "systemd is not running on this host" in p.stdout


# --- the restart budget ----------------------------------------------------------------

def test_budget_allows_backs_off_and_exhausts():
    assert decide([], 3, 600, 5, now=1000).allowed
    v = decide([998], 3, 600, 5, now=1000)
    assert not v.allowed and not v.exhausted and v.wait_s == pytest.approx(3)
    assert decide([990], 3, 600, 5, now=1000).allowed  # 10s since the first: past 5s
    assert decide([980, 990], 3, 600, 5, now=1000).allowed  # doubled: 10s after the 2nd
    v = decide([985, 995], 3, 600, 5, now=1000)
    assert not v.allowed and v.wait_s == pytest.approx(5)
    assert v.message == "backing off: attempt 3 of 3 allowed in 5s (2 in 10m so far)"
    v = decide([100, 200, 300], 3, 600, 5, now=400)
    assert v.exhausted and v.message == "restart budget exhausted (3 in 10m)"
    assert v.detail == "next attempt allowed in 5m00s"  # when the attempt at 100 leaves
    assert decide([100, 200, 300], 3, 600, 5, now=701).allowed  # the window slid
    assert decide([], 0, 600, 5, now=1).exhausted


def test_budget_store_persists_attempts_privately(tmp_path):
    state = tmp_path / "state"
    store = BudgetStore(str(state))
    verdicts = [store.take("services:a.service", 2, 600, 0, now=1000 + i) for i in range(3)]
    assert [v.allowed for v in verdicts] == [True, True, False]
    assert verdicts[2].message == "restart budget exhausted (2 in 10m)"
    assert BudgetStore(str(state)).attempts("services:a.service") == [1000, 1001]
    assert BudgetStore(str(state)).take("services:b.service", 2, 600, 0, now=1002).allowed
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(state / _budget.DB_NAME).st_mode) == 0o600
    assert store.take("services:a.service", 2, 600, 0, now=1601).allowed  # window slid
    store.reset("services:a.service")
    assert store.attempts("services:a.service") == []


# --- end to end on a real systemd host -------------------------------------------------

SLEEPER = """\
[Unit]
Description=opsagent test sleeper
[Service]
ExecStart=/bin/sleep 600
[Install]
WantedBy=multi-user.target
"""


def run_agent(host, mode, playbook, *args):
    """Write the playbook into the host, run the agent there; (exit code, report)."""
    path = f"/tmp/pb-{uuid.uuid4().hex[:8]}.yaml"
    host.write_file(path, textwrap.dedent(playbook))
    res = host.opsagent(mode, path, "--json", *args)
    docs = [line for line in res.output.splitlines() if line.startswith('{"schema_version"')]
    assert docs, f"no report from opsagent {mode} (exit {res.exit_code}):\n{res.output}"
    return res.exit_code, json.loads(docs[-1])


def only(report):
    (result,) = [r for r in report["results"] if r["kind"] == "services"]
    return result


def sh(host, *argv):
    return host.exec(list(argv)).output.strip()


def prop(host, unit, name):
    return sh(host, "systemctl", "show", "-p", name, "--value", unit)


def install_sleeper(host, name="sleeper"):
    """A unit as a package ships it (so that `systemctl mask` can mask it)."""
    host.write_file(f"/lib/systemd/system/{name}.service", SLEEPER)
    host.exec(["systemctl", "daemon-reload"])


@pytest.mark.e2e
def test_a_stopped_unit_is_started_then_left_alone(testhost):
    install_sleeper(testhost)
    pb = "name: t\nservices:\n  - {name: sleeper, state: running}\n"
    code, plan = run_agent(testhost, "plan", pb)
    assert code == 3 and only(plan)["status"] == "changed"
    assert sh(testhost, "systemctl", "is-active", "sleeper") == "inactive"
    code, report = run_agent(testhost, "apply", pb)
    assert code == 0, report
    res = only(report)
    assert res["status"] == "changed"
    assert [c["field"] for c in res["changes"]] == ["state"]
    assert sh(testhost, "systemctl", "is-active", "sleeper") == "active"
    pid = prop(testhost, "sleeper", "MainPID")
    assert f"now sleeper.service is active (running, pid {pid})" in res["message"]
    code, again = run_agent(testhost, "apply", pb)
    assert code == 0 and again["summary"]["changed"] == 0
    assert only(again)["message"] == f"sleeper.service is active (running, pid {pid}), disabled"


@pytest.mark.e2e
def test_check_mode_changes_nothing(testhost):
    install_sleeper(testhost)
    pb = ("name: t\nservices:\n  - {name: sleeper, state: running, enabled: true}\n"
          "  - name: fresh\n    state: running\n    unit_file: |\n"
          + textwrap.indent(SLEEPER, "      "))
    code, report = run_agent(testhost, "apply", pb, "--check")
    assert code == 3
    assert [r["status"] for r in report["results"]] == ["changed", "changed"]
    assert all(r["outcomes"] == [] for r in report["results"])
    assert sh(testhost, "systemctl", "is-active", "sleeper") == "inactive"
    assert sh(testhost, "systemctl", "is-enabled", "sleeper") == "disabled"
    assert testhost.exec(["test", "-e", "/etc/systemd/system/fresh.service"]).exit_code == 1
    assert testhost.exec(["test", "-e", "/var/lib/opsagent/state.db"]).exit_code == 1


@pytest.mark.e2e
def test_unit_file_and_dropins_are_written_and_systemd_reloaded(testhost):
    def playbook(exec_start, env, extra=""):
        return f"""\
            name: t
            services:
              - name: web
                state: running
                unit_file: |
                  [Service]
                  ExecStart={exec_start}
                dropins:
                  env: |
                    [Service]
                    Environment=LEVEL={env}
            {extra}"""

    code, report = run_agent(testhost, "apply", playbook("/bin/sleep 600", "info"))
    assert code == 0, report
    res = only(report)
    assert [c["field"] for c in res["changes"]] == ["unit_file", "dropins.env", "state"]
    assert [o["action"] for o in res["outcomes"]] == ["write", "write", "daemon-reload", "start"]
    assert prop(testhost, "web", "FragmentPath") == "/etc/systemd/system/web.service"
    assert "ExecStart=/bin/sleep 600" in sh(testhost, "systemctl", "cat", "web")
    assert prop(testhost, "web", "Environment") == "LEVEL=info"
    assert sh(testhost, "systemctl", "is-active", "web") == "active"

    # A changed unit file and drop-in are re-written and reloaded (no restart asked for).
    code, report = run_agent(testhost, "apply", playbook("/bin/sleep 700", "debug"))
    assert code == 0, report
    assert [o["action"] for o in only(report)["outcomes"]] == ["write", "write",
                                                               "daemon-reload"]
    assert "ExecStart=/bin/sleep 700" in sh(testhost, "systemctl", "cat", "web")
    assert prop(testhost, "web", "NeedDaemonReload") == "no"
    assert prop(testhost, "web", "Environment") == "LEVEL=debug"
    assert prop(testhost, "web", "ExecStart").count("/bin/sleep 700") == 1

    # Files edited behind the agent's back are put back; a null drop-in is removed.
    testhost.write_file("/etc/systemd/system/web.service.d/old.conf",
                        "[Service]\nEnvironment=OLD=1\n")
    testhost.exec(["systemctl", "daemon-reload"])
    testhost.write_file("/etc/systemd/system/web.service", "[Service]\nExecStart=/bin/true\n")
    code, report = run_agent(testhost, "apply", playbook(
        "/bin/sleep 700", "debug").replace("  env: |", "  old: null\n                  env: |"))
    assert code == 0, report
    assert [c["field"] for c in only(report)["changes"]] == ["unit_file", "dropins.old"]
    assert testhost.exec(["test", "-e", "/etc/systemd/system/web.service.d/old.conf"]
                         ).exit_code == 1
    assert "ExecStart=/bin/sleep 700" in sh(testhost, "systemctl", "cat", "web")
    assert prop(testhost, "web", "Environment") == "LEVEL=debug"
    code, report = run_agent(testhost, "plan", playbook("/bin/sleep 700", "debug"))
    assert code == 0 and only(report)["status"] == "ok"


@pytest.mark.e2e
def test_a_new_unit_is_installed_enabled_and_started_in_one_apply(testhost):
    pb = ("name: t\nservices:\n  - name: fresh\n    state: running\n    enabled: true\n"
          "    unit_file: |\n" + textwrap.indent(SLEEPER, "      "))
    code, report = run_agent(testhost, "apply", pb)
    assert code == 0, report
    assert [o["action"] for o in only(report)["outcomes"]] == [
        "write", "daemon-reload", "enable", "daemon-reload", "start"]
    assert sh(testhost, "systemctl", "is-enabled", "fresh") == "enabled"
    assert sh(testhost, "systemctl", "is-active", "fresh") == "active"
    code, report = run_agent(testhost, "plan", pb)
    assert code == 0
    assert only(report)["message"].endswith("enabled, unit file as declared")


@pytest.mark.e2e
def test_enabled_true_and_false(testhost):
    install_sleeper(testhost)
    code, report = run_agent(testhost, "apply", "name: t\nservices: [{name: sleeper, enabled: true}]\n")
    assert code == 0, report
    assert sh(testhost, "systemctl", "is-enabled", "sleeper") == "enabled"
    assert sh(testhost, "systemctl", "is-active", "sleeper") == "inactive"  # state unmanaged
    code, report = run_agent(testhost, "apply", "name: t\nservices: [{name: sleeper, enabled: true}]\n")
    assert code == 0 and only(report)["status"] == "ok"
    code, report = run_agent(testhost, "apply", "name: t\nservices: [{name: sleeper, enabled: false}]\n")
    assert code == 0, report
    assert [o["action"] for o in only(report)["outcomes"]] == ["disable", "daemon-reload"]
    assert sh(testhost, "systemctl", "is-enabled", "sleeper") == "disabled"
    # A unit without [Install] cannot be enabled: a clear failure, not a silent no-op.
    testhost.write_file("/etc/systemd/system/plain.service", "[Service]\nExecStart=/bin/sleep 9\n")
    testhost.exec(["systemctl", "daemon-reload"])
    code, report = run_agent(testhost, "apply", "name: t\nservices: [{name: plain, enabled: true}]\n")
    assert code == 4
    assert "cannot enable plain.service: it is static" in only(report)["message"]


@pytest.mark.e2e
def test_a_masked_unit_is_reported_and_unmasked_on_request(testhost):
    install_sleeper(testhost)
    testhost.exec(["systemctl", "mask", "sleeper"])
    assert sh(testhost, "systemctl", "is-enabled", "sleeper") == "masked"
    code, report = run_agent(testhost, "apply", "name: t\nservices: [{name: sleeper, state: running}]\n")
    assert code == 4
    res = only(report)
    assert res["status"] == "failed"
    assert "cannot start sleeper.service: it is masked (masked: false unmasks it)" in res["message"]
    code, report = run_agent(testhost, "plan", "name: t\nservices: [{name: sleeper}]\n")
    assert code == 0 and only(report)["message"].startswith("sleeper.service is masked, inactive")
    code, report = run_agent(
        testhost, "apply", "name: t\nservices: [{name: sleeper, state: running, masked: false}]\n")
    assert code == 0, report
    assert [o["action"] for o in only(report)["outcomes"]] == ["unmask", "daemon-reload", "start"]
    assert sh(testhost, "systemctl", "is-enabled", "sleeper") == "disabled"
    assert sh(testhost, "systemctl", "is-active", "sleeper") == "active"
    code, report = run_agent(
        testhost, "apply", "name: t\nservices: [{name: sleeper, state: stopped, masked: true}]\n")
    assert code == 0, report
    assert [o["action"] for o in only(report)["outcomes"]] == ["stop", "mask", "daemon-reload"]
    assert sh(testhost, "systemctl", "is-enabled", "sleeper") == "masked"
    assert sh(testhost, "systemctl", "is-active", "sleeper") == "inactive"


@pytest.mark.e2e
def test_a_failing_unit_is_reported_and_its_budget_stops_retries(testhost):
    pb = """\
        name: t
        services:
          - name: broken
            state: running
            restart: {max: 3, within: 10m, backoff: 200ms}
            unit_file: |
              [Service]
              ExecStartPre=/bin/sh -c 'echo start >> /var/tmp/broken-starts; echo about to fail'
              ExecStart=/bin/false
        """
    messages = []
    for _ in range(5):
        code, report = run_agent(testhost, "apply", pb, "--unattended")
        assert code == 4
        res = only(report)
        assert res["status"] == "failed"
        messages.append(res["message"])
    starts = sh(testhost, "cat", "/var/tmp/broken-starts").splitlines()
    assert len(starts) == 3  # StartUnit was called max times, then never again
    first = messages[0]
    assert first.startswith("start of broken.service failed (job result: done); broken.service "
                            "is ActiveState=failed SubState=failed Result=exit-code")
    assert "last journal lines of broken.service:" in first
    assert "about to fail" in first
    assert "Main process exited, code=exited, status=1/FAILURE" in first
    for late in messages[3:]:
        assert late.startswith("restart budget exhausted (3 in 10m): not starting broken.service "
                               "(next attempt allowed in ")
        assert "ActiveState=failed SubState=failed Result=exit-code" in late
        assert "about to fail" in late
    assert sh(testhost, "stat", "-c", "%a", "/var/lib/opsagent") == "700"


@pytest.mark.e2e
def test_state_restarted_restarts_every_apply(testhost):
    install_sleeper(testhost)
    testhost.exec(["systemctl", "start", "sleeper"])
    pid, entered = prop(testhost, "sleeper", "MainPID"), prop(testhost, "sleeper",
                                                              "ActiveEnterTimestampMonotonic")
    pb = "name: t\nservices: [{name: sleeper, state: restarted}]\n"
    code, report = run_agent(testhost, "apply", pb)
    assert code == 0, report
    assert [o["action"] for o in only(report)["outcomes"]] == ["restart"]
    new_pid = prop(testhost, "sleeper", "MainPID")
    assert new_pid not in (pid, "0")
    assert prop(testhost, "sleeper", "ActiveEnterTimestampMonotonic") != entered
    assert sh(testhost, "systemctl", "is-active", "sleeper") == "active"


@pytest.mark.e2e
def test_notify_from_a_file_restarts_the_service_at_the_end_of_the_run(testhost):
    install_sleeper(testhost)
    install_sleeper(testhost, "idle")
    testhost.exec(["systemctl", "start", "sleeper"])
    pid = prop(testhost, "sleeper", "MainPID")
    pb = """\
        name: t
        files:
          - {path: /etc/sleeper.conf, content: "v1\\n", notify: ["services:sleeper", "services:idle"]}
        services:
          - {name: sleeper, state: running}
          - {name: idle}
        """
    code, report = run_agent(testhost, "apply", pb)
    assert code == 0, report
    res, idle = [r for r in report["results"] if r["kind"] == "services"]
    assert res["status"] == "changed"
    assert [c["field"] for c in res["changes"]] == [RESTART]
    assert "notified by files:/etc/sleeper.conf" in res["changes"][0]["reason"]
    restarted_pid = prop(testhost, "sleeper", "MainPID")
    assert restarted_pid not in (pid, "0")
    # A notified unit whose state is unmanaged is only restarted when it runs.
    assert idle["outcomes"][0]["message"] == (
        "not restarted: idle.service is inactive (dead) and its state is unmanaged")
    assert sh(testhost, "systemctl", "is-active", "idle") == "inactive"
    code, report = run_agent(testhost, "apply", pb)  # nothing changed: no restart
    assert code == 0 and report["summary"]["changed"] == 0
    assert prop(testhost, "sleeper", "MainPID") == restarted_pid


@pytest.mark.e2e
def test_stopped_stops_a_running_unit(testhost):
    install_sleeper(testhost)
    testhost.exec(["systemctl", "start", "sleeper"])
    code, report = run_agent(testhost, "apply", "name: t\nservices: [{name: sleeper, state: stopped}]\n")
    assert code == 0, report
    assert sh(testhost, "systemctl", "is-active", "sleeper") == "inactive"
    assert only(report)["message"].endswith("sleeper.service is inactive (dead), disabled")


@pytest.mark.e2e
def test_a_hung_bus_fails_the_resources_quickly_instead_of_hanging(testhost):
    testhost.exec(["sh", "-c", "kill -STOP $(pidof dbus-daemon)"])
    try:
        t0 = time.monotonic()
        code, report = run_agent(testhost, "plan", """\
            name: t
            services:
              - {name: ssh, state: running, timeout: 2s}
              - {name: cron, state: running, timeout: 2s}
            """)
        elapsed = time.monotonic() - t0
    finally:
        testhost.exec(["sh", "-c", "kill -CONT $(pidof dbus-daemon)"])
    assert code == 4
    first, second = report["results"]
    assert first["status"] == second["status"] == "failed"
    assert "systemd did not answer the properties of ssh.service within 1.6s" in first["message"]
    assert "not asking systemd again" in second["message"]
    assert elapsed < 10
    code, report = run_agent(testhost, "plan", "name: t\nservices: [{name: ssh, state: running}]\n")
    assert code == 0 and only(report)["status"] == "ok"
